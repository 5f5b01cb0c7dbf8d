//! The rate-limit wire format checked against the real generated types of
//! `envoy.service.ratelimit.v3` (the `envoy-types` crate, built from Envoy's
//! protos), not only against the hand-declared messages of `rls::pb`: a
//! wrong field number or type cannot hide behind a matching mistake.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration;
use mcp_ratelimit::config::Config;
use mcp_ratelimit::flow::{Counter, Flow, Host, Step};
use mcp_ratelimit::rls::{self, Descriptor, Verdict};
use prost::Message;

/// A descriptor as sent: its entries and its `hits_addend`, if any.
type Sent = (Vec<(String, String)>, Option<u64>);

fn entries(req: &RateLimitRequest) -> Vec<Sent> {
    req.descriptors
        .iter()
        .map(|d| {
            (
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect(),
                d.hits_addend.as_ref().map(|h| h.value),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn requests_decode_with_the_generated_types() {
    let long = "é".repeat(200);
    let descriptors = vec![
        Descriptor {
            entries: vec![
                ("user", Cow::Borrowed("alice")),
                ("tool", Cow::Borrowed("search_docs")),
            ],
            hits: 1,
        },
        Descriptor {
            entries: vec![("tool", Cow::Owned(long.clone()))],
            hits: 3,
        },
        Descriptor {
            entries: vec![("generic_key", Cow::Borrowed("mcp"))],
            hits: 1 << 40,
        },
    ];
    let bytes = rls::encode_request(&rls::encode_domain("mcp-domain"), &descriptors);
    let req = RateLimitRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(req.domain, "mcp-domain");
    // The request-level addend is left unset (read as 1 by the service).
    assert_eq!(req.hits_addend, 0);
    assert_eq!(
        entries(&req),
        vec![
            (pairs(&[("user", "alice"), ("tool", "search_docs")]), None),
            (vec![("tool".to_owned(), long)], Some(3)),
            (pairs(&[("generic_key", "mcp")]), Some(1 << 40)),
        ]
    );
    for d in &req.descriptors {
        assert!(d.limit.is_none());
    }
}

/// A host with a fixed set of request headers.
#[derive(Default)]
struct Headers {
    headers: HashMap<String, Vec<u8>>,
    counts: RefCell<HashMap<Counter, u64>>,
}

impl Host for Headers {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.headers.get(name).cloned()
    }
    fn metadata(&self, _namespace: &str, _path: &[String]) -> Option<Vec<u8>> {
        None
    }
    fn count(&self, counter: Counter) {
        *self.counts.borrow_mut().entry(counter).or_default() += 1;
    }
    fn any_repeated(&self, _names: &[String]) -> bool {
        false
    }
}

#[test]
fn what_the_filter_sends_for_a_batch_decodes_with_the_generated_types() {
    let cfg = Config::parse(
        br#"{"domain":"mcp","rls_cluster":"r","descriptors":[
            [{"key":"user","header":"x-user"},{"key":"tool","mcp":"tool"}],
            [{"key":"generic_key","value":"all"}]]}"#,
    )
    .unwrap();
    let mut host = Headers::default();
    for (k, v) in [
        (":method", "POST"),
        ("content-type", "application/json"),
        ("x-user", "alice"),
    ] {
        host.headers.insert(k.into(), v.as_bytes().to_vec());
    }
    let body = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}},
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"a"}}},
        {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"b"}}]"#;
    let mut flow = Flow::new(Rc::new(cfg));
    assert_eq!(flow.on_request_headers(false, &host), Step::Pause);
    assert_eq!(
        flow.on_request_body(body.len(), true, &host),
        Step::ReadBody {
            start: 0,
            len: body.len()
        }
    );
    let Step::Dispatch(bytes) = flow.on_body(body, &host) else {
        panic!("no rate-limit call")
    };
    let req = RateLimitRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(req.domain, "mcp");
    assert_eq!(
        entries(&req),
        vec![
            (pairs(&[("user", "alice"), ("tool", "a")]), Some(2)),
            (pairs(&[("generic_key", "all")]), Some(3)),
            (pairs(&[("user", "alice"), ("tool", "b")]), None),
        ]
    );
}

fn status(code: Code, secs: i64, nanos: i32) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: "per tool".into(),
            requests_per_unit: 3,
            unit: 2,
        }),
        limit_remaining: 0,
        duration_until_reset: Some(Duration {
            seconds: secs,
            nanos,
        }),
        ..Default::default()
    }
}

#[test]
fn replies_built_with_the_generated_types_decode() {
    let over = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            status(Code::Ok, 3000, 0),
            status(Code::OverLimit, 12, 250_000_000),
            status(Code::OverLimit, 7, 0),
        ],
        response_headers_to_add: vec![HeaderValue {
            key: "x-ratelimit-limit".into(),
            value: "3".into(),
            ..Default::default()
        }],
        raw_body: b"ignored".to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(
        rls::decode_response(&over, rls::Reading::default()),
        Ok(Verdict::OverLimit {
            retry_after: 13,
            retry_after_ms: 12_250,
            response_headers: vec![("x-ratelimit-limit".to_owned(), "3".to_owned())],
            shadow_over: vec![],
            denied_by: None,
            statuses: vec![],
        })
    );
    let ok = RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: vec![status(Code::Ok, 10, 0)],
        request_headers_to_add: vec![HeaderValue {
            key: "x-checked".into(),
            value: String::new(),
            raw_value: b"yes".to_vec(),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(
        rls::decode_response(&ok, rls::Reading::default()),
        Ok(Verdict::Ok {
            request_headers: vec![("x-checked".to_owned(), "yes".to_owned())],
            response_headers: vec![],
            shadow_over: vec![],
            statuses: vec![],
        })
    );
}
