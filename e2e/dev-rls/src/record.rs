//! Recording of received requests, for introspection by end-to-end tests.

use std::collections::VecDeque;

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use serde::Serialize;

/// How many requests [`crate::DevRls::requests`] keeps (the most recent ones).
pub const MAX_RECORDED_REQUESTS: usize = 1000;

/// One descriptor entry as received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordedEntry {
    /// Entry key.
    pub key: String,
    /// Entry value.
    pub value: String,
}

/// One descriptor as received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordedDescriptor {
    /// The descriptor's entries, in order.
    pub entries: Vec<RecordedEntry>,
    /// The descriptor's own `hits_addend` when set (it overrides the request's).
    pub hits_addend: Option<u64>,
}

/// One ShouldRateLimit call as received, with the overall answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordedRequest {
    /// Request domain.
    pub domain: String,
    /// Request descriptors, in order.
    pub descriptors: Vec<RecordedDescriptor>,
    /// The request-level `hits_addend` as sent (0 means 1).
    pub hits_addend: u32,
    /// `"OK"`, `"OVER_LIMIT"`, or `"ERROR"` when the call was refused (e.g. empty domain).
    pub overall_code: String,
}

impl RecordedRequest {
    pub(crate) fn from_request(request: &RateLimitRequest, overall_code: &str) -> Self {
        RecordedRequest {
            domain: request.domain.clone(),
            descriptors: request
                .descriptors
                .iter()
                .map(|d| RecordedDescriptor {
                    entries: d
                        .entries
                        .iter()
                        .map(|e| RecordedEntry {
                            key: e.key.clone(),
                            value: e.value.clone(),
                        })
                        .collect(),
                    hits_addend: d.hits_addend.as_ref().map(|h| h.value),
                })
                .collect(),
            hits_addend: request.hits_addend,
            overall_code: overall_code.to_owned(),
        }
    }
}

/// Counts of calls since start (or the last reset) and the last request received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Total ShouldRateLimit calls.
    pub calls: u64,
    /// Calls answered with overall code OVER_LIMIT.
    pub over_limit: u64,
    /// The most recent request, or `None` before the first.
    pub last_request: Option<RecordedRequest>,
}

#[derive(Debug, Default)]
pub(crate) struct Recorder {
    calls: u64,
    over_limit: u64,
    requests: VecDeque<RecordedRequest>,
}

impl Recorder {
    pub(crate) fn record(&mut self, request: RecordedRequest) {
        self.calls += 1;
        if request.overall_code == "OVER_LIMIT" {
            self.over_limit += 1;
        }
        if self.requests.len() == MAX_RECORDED_REQUESTS {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            calls: self.calls,
            over_limit: self.over_limit,
            last_request: self.requests.back().cloned(),
        }
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.iter().cloned().collect()
    }

    pub(crate) fn clear(&mut self) {
        *self = Recorder::default();
    }
}
