//! The rate-limit decision logic and its gRPC binding.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit as ProtoRateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tonic::{Request, Response, Status};

use crate::clock::{Clock, SystemClock};
use crate::config::{MatchedLimit, RateLimit, RateLimitConfig, Unit};
use crate::counters::Counters;
use crate::fault::{Fault, FaultInjection, GARBAGE};
use crate::record::{RecordedRequest, Recorder, Stats};

/// The development rate-limit service: configuration, counters and request log.
///
/// Cheap to clone; clones share all state. Use [`DevRls::should_rate_limit`] directly, or
/// [`DevRls::grpc_service`] / [`crate::serve`] to expose it over gRPC.
#[derive(Clone)]
pub struct DevRls {
    inner: Arc<Inner>,
}

struct Inner {
    config: RwLock<Arc<RateLimitConfig>>,
    counters: Counters,
    recorder: Mutex<Recorder>,
    clock: Arc<dyn Clock>,
    verbose: bool,
    fault: RwLock<Fault>,
    /// Garbage payloads sent since the fault was last set (for the rotation).
    garbage_sent: AtomicUsize,
    /// gRPC calls answered with an injected fault since start or the last reset.
    faulted: AtomicU64,
}

impl std::fmt::Debug for DevRls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevRls")
            .field("domains", &self.config().domains())
            .field("verbose", &self.inner.verbose)
            .finish_non_exhaustive()
    }
}

/// Builder for [`DevRls`].
pub struct DevRlsBuilder {
    config: RateLimitConfig,
    clock: Arc<dyn Clock>,
    verbose: bool,
}

impl DevRlsBuilder {
    /// Uses `clock` instead of the system clock (e.g. a [`crate::ManualClock`] in tests).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Logs every call to stderr (domain, descriptors, verdict).
    pub fn verbose(mut self, verbose: bool) -> Self {
        self.verbose = verbose;
        self
    }

    /// Builds the service.
    pub fn build(self) -> Result<DevRls, crate::Error> {
        let counters = Counters::new(self.clock.as_manual().is_none())
            .map_err(|e| crate::Error::Counter(e.0))?;
        Ok(DevRls {
            inner: Arc::new(Inner {
                config: RwLock::new(Arc::new(self.config)),
                counters,
                recorder: Mutex::new(Recorder::default()),
                clock: self.clock,
                verbose: self.verbose,
                fault: RwLock::new(Fault::None),
                garbage_sent: AtomicUsize::new(0),
                faulted: AtomicU64::new(0),
            }),
        })
    }
}

/// What was decided for one descriptor before counting.
enum Applied {
    /// No limit applies (no match, unknown domain, or replaced): OK, uncounted.
    None,
    /// `unlimited: true`: OK, uncounted.
    Unlimited,
    /// Count against this limit.
    Limit {
        limit: Arc<RateLimit>,
        unit: Unit,
        share_patterns: Vec<Option<String>>,
    },
}

impl DevRls {
    /// A service for `config` with the system clock and quiet logging.
    pub fn new(config: RateLimitConfig) -> Result<Self, crate::Error> {
        Self::builder(config).build()
    }

    /// A builder for a service over `config`.
    pub fn builder(config: RateLimitConfig) -> DevRlsBuilder {
        DevRlsBuilder {
            config,
            clock: Arc::new(SystemClock),
            verbose: false,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> Arc<RateLimitConfig> {
        self.inner
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the configuration (counters are kept, as on a reference config reload).
    pub fn set_config(&self, config: RateLimitConfig) {
        *self
            .inner
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
    }

    fn recorder(&self) -> MutexGuard<'_, Recorder> {
        self.inner
            .recorder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The service's current time, since the Unix epoch.
    pub fn now(&self) -> Duration {
        self.inner.clock.now()
    }

    /// Whether the clock is a [`crate::ManualClock`] (e.g. frozen by `--clock-at`), which
    /// stands still until [`DevRls::advance_clock`] moves it.
    pub fn clock_is_manual(&self) -> bool {
        self.inner.clock.as_manual().is_some()
    }

    /// Moves a manual clock forward by `by` and returns the new time; `None` (and no
    /// change) when the clock follows real time.
    pub fn advance_clock(&self, by: Duration) -> Option<Duration> {
        let clock = self.inner.clock.as_manual()?;
        let now = clock.advance_by(by);
        if self.inner.verbose {
            eprintln!(
                "dev-rls: clock moved to {}",
                crate::clock::format_unix_time(now)
            );
        }
        Some(now)
    }

    /// Call counts and the last request received.
    pub fn stats(&self) -> Stats {
        self.recorder().stats()
    }

    /// The most recent requests received (at most [`crate::MAX_RECORDED_REQUESTS`]), oldest first.
    pub fn requests(&self) -> Vec<crate::RecordedRequest> {
        self.recorder().requests()
    }

    /// Clears every counter, the recorded requests and the call counts (including
    /// [`DevRls::faulted`]). The fault mode is kept.
    pub fn reset(&self) {
        let mut recorder = self.recorder();
        self.inner.counters.clear();
        recorder.clear();
        self.inner.faulted.store(0, Ordering::SeqCst);
    }

    /// Makes the gRPC service answer every following call with `fault` (see
    /// [`crate::fault`]); [`Fault::None`] restores normal answers. The `garbage` rotation
    /// starts again from its first payload.
    pub fn set_fault(&self, fault: Fault) {
        let mut current = self
            .inner
            .fault
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.inner.garbage_sent.store(0, Ordering::SeqCst);
        *current = fault;
    }

    /// The fault mode in force.
    pub fn fault(&self) -> Fault {
        *self
            .inner
            .fault
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// gRPC calls answered with an injected fault (every mode but `slow`) since start or
    /// the last [`DevRls::reset`].
    pub fn faulted(&self) -> u64 {
        self.inner.faulted.load(Ordering::SeqCst)
    }

    fn count_fault(&self) {
        self.inner.faulted.fetch_add(1, Ordering::SeqCst);
        if self.inner.verbose {
            eprintln!("dev-rls: answered with injected fault {}", self.fault());
        }
    }

    /// Counts a garbage answer and says which payload of [`GARBAGE`] it sends.
    pub(crate) fn next_garbage(&self, pinned: Option<usize>) -> usize {
        self.count_fault();
        let sent = self.inner.garbage_sent.fetch_add(1, Ordering::SeqCst);
        pinned.unwrap_or(sent % GARBAGE.len())
    }

    /// A tonic service for `RateLimitService/ShouldRateLimit` backed by this instance,
    /// applying the fault set with [`DevRls::set_fault`].
    pub fn grpc_service(&self) -> FaultInjection<RateLimitServiceServer<GrpcService>> {
        FaultInjection::new(
            RateLimitServiceServer::new(GrpcService { rls: self.clone() }),
            self.clone(),
        )
    }

    /// Answers one ShouldRateLimit request, counting its hits, and records it.
    pub fn should_rate_limit(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        let result = self.decide(request);
        let code = match &result {
            Ok(response) if response.overall_code == Code::OverLimit as i32 => "OVER_LIMIT",
            Ok(_) => "OK",
            Err(_) => "ERROR",
        };
        if self.inner.verbose {
            eprintln!("{}", describe_call(request, &result));
        }
        self.recorder()
            .record(RecordedRequest::from_request(request, code));
        result
    }

    fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        if request.domain.is_empty() {
            return Err(Status::unknown("rate limit domain must not be empty"));
        }
        if request.descriptors.is_empty() {
            return Err(Status::unknown(
                "rate limit descriptor list must not be empty",
            ));
        }
        let config = self.config();
        let applied = limits_to_apply(&config, request)?;
        let now = self.inner.clock.now();

        let mut overall = Code::Ok;
        let mut statuses = Vec::with_capacity(applied.len());
        for (descriptor, applied) in request.descriptors.iter().zip(applied) {
            let status = match applied {
                Applied::None => DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                },
                Applied::Unlimited => DescriptorStatus {
                    code: Code::Ok as i32,
                    limit_remaining: u32::MAX,
                    ..Default::default()
                },
                Applied::Limit {
                    limit,
                    unit,
                    share_patterns,
                } => self.count(request, descriptor, &limit, unit, &share_patterns, now)?,
            };
            if status.code == Code::OverLimit as i32 {
                overall = Code::OverLimit;
            }
            statuses.push(status);
        }
        Ok(RateLimitResponse {
            overall_code: overall as i32,
            statuses,
            ..Default::default()
        })
    }

    fn count(
        &self,
        request: &RateLimitRequest,
        descriptor: &RateLimitDescriptor,
        limit: &RateLimit,
        unit: Unit,
        share_patterns: &[Option<String>],
        now: Duration,
    ) -> Result<DescriptorStatus, Status> {
        let hits = match &descriptor.hits_addend {
            Some(h) => h.value,
            None => u64::from(request.hits_addend.max(1)),
        };
        let window = unit.seconds();
        // Windows are aligned on whole seconds, as in the reference.
        let seconds = now.as_secs();
        let window_start = seconds - seconds % window;
        let key = counter_key(descriptor, share_patterns);
        let hit = self
            .inner
            .counters
            .hit(
                &request.domain,
                &key,
                window_start,
                window,
                limit.requests_per_unit,
                hits,
            )
            .map_err(|e| Status::internal(format!("counter storage failed: {}", e.0)))?;
        // shadow_mode and quota_mode limits are counted and report remaining 0 when
        // exceeded, but their code stays OK (the reference rewrites it after the check).
        let over = hit.over_limit && !limit.shadow_mode && !limit.quota_mode;
        Ok(DescriptorStatus {
            code: if over { Code::OverLimit } else { Code::Ok } as i32,
            current_limit: Some(ProtoRateLimit {
                name: limit.name.clone(),
                requests_per_unit: limit.requests_per_unit,
                unit: unit.proto(),
            }),
            limit_remaining: u32::try_from(hit.remaining).unwrap_or(u32::MAX),
            duration_until_reset: Some(until_reset(now, window_start + window)),
            quota: None,
        })
    }
}

/// The time from `now` to the window end `end_seconds` (after `now`): whole seconds with
/// the system clock, as the reference sends; with a clock set to a fraction of a second
/// (`--clock-at 1767225600.25`) the nanoseconds too, as the RLS API allows and other
/// services send.
fn until_reset(now: Duration, end_seconds: u64) -> ProtoDuration {
    let left = Duration::from_secs(end_seconds).saturating_sub(now);
    ProtoDuration {
        seconds: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(left.subsec_nanos()).unwrap_or_default(),
    }
}

/// Resolves the limit of every descriptor, then applies `unlimited` and `replaces`.
fn limits_to_apply(
    config: &RateLimitConfig,
    request: &RateLimitRequest,
) -> Result<Vec<Applied>, Status> {
    let known_domain = config.has_domain(&request.domain);
    let mut matched: Vec<Option<MatchedLimit>> = Vec::with_capacity(request.descriptors.len());
    for descriptor in &request.descriptors {
        if !known_domain {
            matched.push(None);
            continue;
        }
        if let Some(over) = &descriptor.limit {
            // A per-request override replaces the configured limit (never shadow mode).
            let unit = Unit::from_proto(over.unit).ok_or_else(|| {
                Status::invalid_argument(format!("invalid rate limit override unit {}", over.unit))
            })?;
            matched.push(Some(MatchedLimit {
                limit: Arc::new(RateLimit {
                    requests_per_unit: over.requests_per_unit,
                    unit: Some(unit),
                    unlimited: false,
                    name: String::new(),
                    replaces: Vec::new(),
                    shadow_mode: false,
                    quota_mode: false,
                    detailed_metric: false,
                    full_key: String::new(),
                }),
                share_patterns: vec![None; descriptor.entries.len()],
            }));
            continue;
        }
        let entries: Vec<(&str, &str)> = descriptor
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        matched.push(config.get_limit(&request.domain, &entries));
    }

    let replaced: HashSet<&str> = matched
        .iter()
        .flatten()
        .flat_map(|m| m.limit.replaces.iter().map(String::as_str))
        .collect();

    Ok(matched
        .iter()
        .map(|m| match m {
            None => Applied::None,
            Some(m) if m.limit.unlimited => Applied::Unlimited,
            Some(m) if !m.limit.name.is_empty() && replaced.contains(m.limit.name.as_str()) => {
                Applied::None
            }
            Some(m) => match m.limit.unit {
                Some(unit) => Applied::Limit {
                    limit: m.limit.clone(),
                    unit,
                    share_patterns: m.share_patterns.clone(),
                },
                None => Applied::None,
            },
        })
        .collect())
}

/// The counter identity for a descriptor: its entries' keys and values (or the shared
/// wildcard pattern for `share_threshold` entries), encoded unambiguously.
fn counter_key(descriptor: &RateLimitDescriptor, share_patterns: &[Option<String>]) -> String {
    let parts: Vec<[&str; 2]> = descriptor
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let value = share_patterns
                .get(i)
                .and_then(Option::as_deref)
                .unwrap_or(e.value.as_str());
            [e.key.as_str(), value]
        })
        .collect();
    serde_json::to_string(&parts).unwrap_or_default()
}

fn describe_call(request: &RateLimitRequest, result: &Result<RateLimitResponse, Status>) -> String {
    let mut line = format!("dev-rls: domain={:?}", request.domain);
    if request.hits_addend != 0 {
        let _ = write!(line, " hits_addend={}", request.hits_addend);
    }
    for d in &request.descriptors {
        let entries: Vec<String> = d
            .entries
            .iter()
            .map(|e| format!("{}={}", e.key, e.value))
            .collect();
        let _ = write!(line, " [{}]", entries.join(","));
        if let Some(h) = &d.hits_addend {
            let _ = write!(line, "+{}", h.value);
        }
    }
    match result {
        Ok(response) => {
            let code = |c: i32| Code::try_from(c).unwrap_or(Code::Unknown).as_str_name();
            let statuses: Vec<String> = response
                .statuses
                .iter()
                .map(|s| match &s.current_limit {
                    Some(l) => format!(
                        "{}({} left of {}/{})",
                        code(s.code),
                        s.limit_remaining,
                        l.requests_per_unit,
                        Unit::from_proto(l.unit).map_or("?", Unit::as_str)
                    ),
                    None => code(s.code).to_owned(),
                })
                .collect();
            let _ = write!(
                line,
                " -> {} [{}]",
                code(response.overall_code),
                statuses.join(", ")
            );
        }
        Err(status) => {
            let _ = write!(line, " -> error: {}", status.message());
        }
    }
    line
}

/// The typed tonic service inside [`DevRls::grpc_service`]: decides, or applies the
/// injected fault (all but `garbage`, which the layer in front answers).
#[derive(Clone, Debug)]
pub struct GrpcService {
    rls: DevRls,
}

#[tonic::async_trait]
impl RateLimitService for GrpcService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        match self.rls.fault() {
            // Answered by the FaultInjection layer in front; decide normally if this
            // service is used without it.
            Fault::None | Fault::Garbage(_) => {}
            Fault::Slow(delay) => tokio::time::sleep(delay).await,
            Fault::Unavailable => {
                self.rls.count_fault();
                return Err(Status::unavailable("dev-rls: injected fault"));
            }
            Fault::Internal => {
                self.rls.count_fault();
                return Err(Status::internal("dev-rls: injected fault"));
            }
            Fault::UnknownCode(code) => {
                self.rls.count_fault();
                return Ok(Response::new(RateLimitResponse {
                    overall_code: code,
                    ..Default::default()
                }));
            }
        }
        self.rls
            .should_rate_limit(request.get_ref())
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::ManualClock;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;

    fn one_key(unit: &str, rpu: u32) -> RateLimitConfig {
        RateLimitConfig::from_yaml(
            "c.yaml",
            &format!("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: {unit}, requests_per_unit: {rpu}}}\n"),
        )
        .unwrap()
    }

    fn call_k(rls: &DevRls) -> DescriptorStatus {
        let request = RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "k".into(),
                    value: "v".into(),
                }],
                ..Default::default()
            }],
            hits_addend: 0,
        };
        rls.should_rate_limit(&request).unwrap().statuses.remove(0)
    }

    #[test]
    fn a_fractional_clock_gives_the_reset_in_nanoseconds() {
        // 47.75 s into a minute: 12.25 s left.
        let rls = DevRls::builder(one_key("minute", 1))
            .clock(ManualClock::at(Duration::new(1_767_225_647, 750_000_000)))
            .build()
            .unwrap();
        let reset = |s: &DescriptorStatus| {
            let d = s.duration_until_reset.unwrap();
            (d.seconds, d.nanos)
        };
        let first = call_k(&rls);
        assert_eq!(first.code, Code::Ok as i32);
        assert_eq!(reset(&first), (12, 250_000_000));
        // 0.3 s before the boundary, still the same window.
        assert_eq!(
            rls.advance_clock(Duration::from_millis(11_950)),
            Some(Duration::new(1_767_225_659, 700_000_000))
        );
        let second = call_k(&rls);
        assert_eq!(second.code, Code::OverLimit as i32);
        assert_eq!(reset(&second), (0, 300_000_000));
        // At the boundary: a new window, a whole minute left.
        rls.advance_clock(Duration::from_millis(300));
        let third = call_k(&rls);
        assert_eq!(third.code, Code::Ok as i32);
        assert_eq!(reset(&third), (60, 0));
    }

    #[test]
    fn the_system_clock_cannot_be_moved() {
        let rls = DevRls::new(one_key("day", 1)).unwrap();
        assert!(!rls.clock_is_manual());
        assert_eq!(rls.advance_clock(Duration::from_secs(1)), None);
        let reset = call_k(&rls).duration_until_reset.unwrap();
        assert_eq!(reset.nanos, 0, "whole seconds, as the reference");
        assert!((1..=86_400).contains(&reset.seconds), "{reset:?}");
    }

    #[test]
    fn a_manual_window_outlasts_limitadors_real_time_expiry() {
        // limitador would expire a 1 s counter 1 s of real time after its first hit; the
        // manual clock has not moved, so the window, and its count, must go on.
        let rls = DevRls::builder(one_key("second", 1))
            .clock(ManualClock::new(1_767_225_600))
            .build()
            .unwrap();
        assert_eq!(call_k(&rls).code, Code::Ok as i32);
        std::thread::sleep(Duration::from_millis(1_200));
        assert_eq!(call_k(&rls).code, Code::OverLimit as i32);
    }

    #[test]
    fn verbose_line_names_domain_descriptors_and_verdict() {
        let config = RateLimitConfig::from_yaml(
            "v.yaml",
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n",
        )
        .unwrap();
        let rls = DevRls::builder(config)
            .clock(ManualClock::new(60))
            .build()
            .unwrap();
        let request = RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "k".into(),
                    value: "v".into(),
                }],
                ..Default::default()
            }],
            hits_addend: 2,
        };
        let result = rls.should_rate_limit(&request);
        let line = describe_call(&request, &result);
        assert_eq!(
            line,
            "dev-rls: domain=\"d\" hits_addend=2 [k=v] -> OVER_LIMIT [OVER_LIMIT(0 left of 1/MINUTE)]"
        );
        let err = rls.should_rate_limit(&RateLimitRequest::default());
        assert!(describe_call(&RateLimitRequest::default(), &err)
            .ends_with("-> error: rate limit domain must not be empty"));
    }
}
