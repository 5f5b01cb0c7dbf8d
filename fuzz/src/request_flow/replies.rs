//! What the flow sends: every local reply is a JSON-RPC error in valid
//! JSON with the status, code, message and ids that the configuration, the
//! verdict and the request call for; every call is a `RateLimitRequest` of
//! the configured domain and descriptors.

use mcp_ratelimit::config::{McpField, Source};
use mcp_ratelimit::jsonrpc::{self, Body, Target};
use mcp_ratelimit::reply::LocalReply;
use mcp_ratelimit::rls::pb;
use prost::Message;
use serde_json::Value;

use super::drive::{Outcome, Run};

impl Run<'_> {
    /// A reply from the header callback: only what the headers alone show.
    pub(super) fn check_header_reply(&self, r: &LocalReply) {
        match r.detail {
            "mcp_ratelimit_unsupported_encoding" => assert!(self.req.compressed),
            "mcp_ratelimit_header_mismatch" => {
                assert!(self.req.repeats_mcp_header(&self.cfg));
                assert!(self.cfg.validate_mcp_headers);
            }
            "mcp_ratelimit_body_too_large" => {
                // Bodies of other types are refused only once known to be
                // JSON-shaped.
                assert!(self.req.declared_too_large && self.req.is_json);
            }
            other => panic!("{other} from the headers"),
        }
    }

    pub(super) fn check_reply(&self, r: &LocalReply, from_body: bool) {
        assert!((200..=599).contains(&r.status));
        let content_types = r
            .headers
            .iter()
            .filter(|(k, _)| k == "content-type")
            .count();
        assert_eq!(content_types, 1);
        for (k, v) in &r.headers {
            assert!(!k.is_empty() && *k == k.to_ascii_lowercase());
            assert!(!v.contains(['\r', '\n', '\0']), "header value {v:?}");
        }
        serde_json::from_str::<serde::de::IgnoredAny>(&r.body)
            .expect("a local reply is valid JSON");
        // serde_json's `Value` refuses numbers beyond f64 (`1e999`) and
        // nesting past 128, both valid JSON that an id may hold.
        let Ok(v) = serde_json::from_str::<Value>(&r.body) else {
            return;
        };
        let objects: Vec<&Value> = match &v {
            Value::Array(list) => {
                assert!(!list.is_empty());
                list.iter().collect()
            }
            other => vec![other],
        };
        for o in &objects {
            let o = o.as_object().expect("each reply is a JSON-RPC object");
            assert_eq!(o.get("jsonrpc"), Some(&Value::from("2.0")));
            assert!(!o.contains_key("result"));
            let err = o["error"].as_object().expect("error object");
            assert!(err["code"].is_i64());
            assert!(err["message"].is_string());
        }
        let code = |o: &Value| o["error"]["code"].as_i64().unwrap_or_default();
        if self.read_failed {
            assert_eq!(
                r.detail, "mcp_ratelimit_unreadable_body",
                "a body the host did not hand over is refused as unreadable"
            );
        }
        let max = self.cfg.max_body_bytes;
        match r.detail {
            "mcp_ratelimit_over_limit" => {
                let Some(Outcome::OverLimit(retry)) = self.outcome else {
                    panic!("over-limit reply with outcome {:?}", self.outcome)
                };
                assert_eq!(r.status, self.cfg.over_limit.http_status);
                let retry_header = r.headers.iter().find(|(k, _)| k == "retry-after");
                assert_eq!(
                    retry_header.map(|(_, v)| v.as_str()),
                    Some(retry.to_string().as_str())
                );
                for o in &objects {
                    assert_eq!(code(o), self.cfg.over_limit.code);
                    assert_eq!(o["error"]["message"], self.cfg.over_limit.message.as_str());
                    assert_eq!(o["error"]["data"]["retryAfterSeconds"], retry);
                }
                self.check_ids(&v, from_body);
            }
            "mcp_ratelimit_rls_failure" => {
                assert_eq!(self.outcome, Some(Outcome::Failed));
                assert!(self.cfg.failure_mode_deny);
                assert_eq!(r.status, self.cfg.rls_failure.http_status);
                for o in &objects {
                    assert_eq!(code(o), self.cfg.rls_failure.code);
                    assert_eq!(o["error"]["message"], self.cfg.rls_failure.message.as_str());
                }
                self.check_ids(&v, from_body);
            }
            "mcp_ratelimit_body_too_large" => {
                assert_eq!(r.status, 413);
                let seen = &self.body_seen;
                let whitespace_to_cap = self.req.sniffed(&self.cfg)
                    && seen.len() >= max
                    && seen[..max].iter().all(u8::is_ascii_whitespace);
                assert!(
                    self.req.declared_too_large || seen.len() > max || whitespace_to_cap,
                    "413 for a body within the cap"
                );
                assert_eq!(code(&v), -32600);
                assert_eq!(v["error"]["data"]["maxBodyBytes"], max);
                assert_eq!(self.dispatches, 0);
            }
            "mcp_ratelimit_bad_request" => {
                assert_eq!(r.status, 400);
                assert!(matches!(code(&v), -32700 | -32600 | -32602));
                assert!(self.dispatches == 0 && from_body);
            }
            "mcp_ratelimit_header_mismatch" => {
                assert_eq!(r.status, 400);
                assert_eq!(code(&v), -32020);
                assert!(self.cfg.validate_mcp_headers);
                assert!(
                    self.dispatches == 0 && (from_body || self.req.repeats_mcp_header(&self.cfg))
                );
            }
            "mcp_ratelimit_unsupported_encoding" => {
                assert_eq!(r.status, 415);
                assert_eq!(code(&v), -32600);
                assert!(self.req.compressed && self.dispatches == 0);
            }
            "mcp_ratelimit_unreadable_body" => {
                assert_eq!(r.status, 500);
                assert_eq!(code(&v), -32603);
                assert_eq!(v["id"], Value::Null);
                assert!(
                    self.read_failed,
                    "unreadable, but the host handed the body over"
                );
                assert!(from_body);
            }
            other => panic!("unknown reply {other}"),
        }
    }

    /// A denial answers the ids of the request, as sent; a denial decided
    /// on the headers whose body is over the cap answers `"id": null`
    /// without reading the body.
    fn check_ids(&self, reply: &Value, from_body: bool) {
        let got: Vec<Value> = match reply {
            Value::Array(list) => list.iter().map(|o| o["id"].clone()).collect(),
            o => o.get("id").cloned().into_iter().collect(),
        };
        let max = self.cfg.max_body_bytes;
        if self.read_failed {
            // Not read: checked as a refusal of its own.
            return;
        }
        if !self.dispatched_from_body && self.buffered.len() > max {
            assert!(!from_body, "a body over the cap was read for its ids");
            assert_eq!(
                got,
                vec![Value::Null],
                "an oversized body's denial has id null"
            );
            return;
        }
        let ids: Vec<Value> = match jsonrpc::parse(&self.buffered, &self.cfg.spec()) {
            Ok(body) => body
                .requests()
                .iter()
                .filter_map(|r| r.id)
                .map(|id| serde_json::from_str(id.get()).unwrap_or(Value::Null))
                .collect(),
            Err(_) => {
                assert!(
                    !self.dispatched_from_body,
                    "a call for a body that does not parse"
                );
                // Read on the fast path, not parsable: id null.
                assert_eq!(got, vec![Value::Null]);
                return;
            }
        };
        // A batch without ids still gets one error object, without an id.
        let batch_without_ids = ids.is_empty() && got.is_empty();
        assert!(
            batch_without_ids || got == ids,
            "reply ids {got:?}, request ids {ids:?}"
        );
    }

    pub(super) fn check_payload(&self, payload: &[u8], from_body: bool) {
        let req = pb::RateLimitRequest::decode(payload).expect("the payload is a RateLimitRequest");
        assert_eq!(req.domain, self.cfg.domain);
        assert_eq!(req.hits_addend, 0);
        assert!(!req.descriptors.is_empty(), "a call without descriptors");
        for (i, d) in req.descriptors.iter().enumerate() {
            let keys: Vec<&str> = d.entries.iter().map(|e| e.key.as_str()).collect();
            assert!(
                self.cfg
                    .descriptors
                    .iter()
                    .any(|c| c.entries.iter().map(|e| e.key.as_str()).eq(keys.iter().copied())),
                "descriptor keys {keys:?} are not configured"
            );
            if let Some(h) = &d.hits_addend {
                assert!(h.value >= 2, "hits_addend is sent only above 1");
            }
            assert!(
                !req.descriptors[..i].iter().any(|o| o.entries == d.entries),
                "identical descriptors are merged"
            );
        }
        // Under per-tool descriptors, a single message is counted against
        // exactly the tool the parser resolves.
        let per_tool = matches!(
            self.cfg.descriptors.as_slice(),
            [d] if matches!(d.entries.as_slice(), [e] if e.source == Source::Mcp(McpField::Tool))
        );
        if from_body && per_tool {
            if let Ok(Body::Single(r)) = jsonrpc::parse(&self.buffered, &self.cfg.spec()) {
                let Some(Target::Tool(t)) = &r.target else {
                    panic!("a call for a message without a tool: {r:?}");
                };
                assert_eq!(req.descriptors.len(), 1);
                assert_eq!(req.descriptors[0].entries.len(), 1);
                assert_eq!(req.descriptors[0].entries[0].value, *t);
                assert_eq!(req.descriptors[0].hits_addend, None);
            }
        }
    }
}
