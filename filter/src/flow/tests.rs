use super::*;
use crate::rls::pb;
use prost::Message;
use std::cell::RefCell;
use std::collections::HashMap;

mod controls;
mod hardening;
mod local;

#[derive(Default)]
struct MockHost {
    headers: HashMap<String, Vec<u8>>,
    metadata: HashMap<String, Vec<u8>>,
    repeated: Vec<String>,
    counts: RefCell<HashMap<Counter, u64>>,
    /// How often each header and metadata value was asked for.
    lookups: RefCell<HashMap<String, u32>>,
    /// Envoy's shared data (with `shared_on`), and the clock.
    shared_on: bool,
    shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    cas: std::cell::Cell<u32>,
    now: std::cell::Cell<u64>,
    /// The body `drive` buffered, for the reads that follow a verdict.
    body: RefCell<Vec<u8>>,
}

impl MockHost {
    fn post_json() -> Self {
        let mut h = MockHost::default();
        h.headers.insert(":method".into(), b"POST".to_vec());
        h.headers
            .insert("content-type".into(), b"application/json".to_vec());
        h
    }
    fn with(mut self, k: &str, v: &str) -> Self {
        self.headers.insert(k.into(), v.as_bytes().to_vec());
        self
    }
    fn count_of(&self, c: Counter) -> u64 {
        self.counts.borrow().get(&c).copied().unwrap_or(0)
    }
    fn lookups_of(&self, name: &str) -> u32 {
        self.lookups.borrow().get(name).copied().unwrap_or(0)
    }
}

impl Host for MockHost {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        *self
            .lookups
            .borrow_mut()
            .entry(name.to_owned())
            .or_default() += 1;
        self.headers.get(name).cloned()
    }
    fn metadata(&self, namespace: &str, path: &[String]) -> Option<Vec<u8>> {
        let key = format!("{namespace}/{}", path.join("/"));
        *self.lookups.borrow_mut().entry(key.clone()).or_default() += 1;
        self.metadata.get(&key).cloned()
    }
    fn count(&self, counter: Counter) {
        *self.counts.borrow_mut().entry(counter).or_default() += 1;
    }
    fn any_repeated(&self, names: &[String]) -> bool {
        names.iter().any(|n| self.repeated.contains(n))
    }
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.borrow().get(key).cloned()
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        if !self.shared_on {
            return false;
        }
        let mut d = self.shared.borrow_mut();
        if cas != 0 && d.get(key).map(|e| e.1) != Some(cas) {
            return false;
        }
        self.cas.set(self.cas.get() + 1);
        d.insert(key.to_owned(), (value.to_vec(), self.cas.get()));
        true
    }
    fn now_ms(&self) -> u64 {
        self.now.get()
    }
}

fn cfg(json: &str) -> Rc<Config> {
    Rc::new(Config::parse(json.as_bytes()).unwrap())
}

const BASIC: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit"}"#;

fn call(tool: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
    )
}

/// Follows `ReadBody` steps as the glue does, reading from the buffered
/// `body`; adds the number of bytes read to `read`.
fn follow(flow: &mut Flow, host: &MockHost, body: &[u8], mut step: Step, read: &mut usize) -> Step {
    while let Step::ReadBody { start, len } = step {
        let bytes = body
            .get(start..start + len)
            .expect("a read within the buffered body");
        *read += len;
        step = flow.on_body(bytes, host);
    }
    step
}

/// Drives headers + one body chunk; returns the step after the body.
fn drive(flow: &mut Flow, host: &MockHost, body: &str) -> Step {
    *host.body.borrow_mut() = body.as_bytes().to_vec();
    assert_eq!(flow.on_request_headers(false, host), Step::Pause);
    match flow.on_request_body(body.len(), true, host) {
        Step::ReadBody { start: 0, len: n } => {
            assert_eq!(n, body.len());
            flow.on_body(body.as_bytes(), host)
        }
        other => other,
    }
}

impl Flow {
    /// [`Flow::on_rls_response`], then the reads of the buffered body the
    /// glue would do (a denial reads the ids it answers).
    fn answer_rls(
        &mut self,
        token: u32,
        status: u32,
        reply: Option<&[u8]>,
        host: &MockHost,
    ) -> Step {
        let step = self.on_rls_response(token, status, reply, host);
        let body = host.body.borrow().clone();
        follow(self, host, &body, step, &mut 0)
    }
}

/// A descriptor's status in a reply, with its reset in whole seconds.
fn status(code: i32, secs: i64) -> pb::DescriptorStatus {
    pb::DescriptorStatus {
        code,
        current_limit: None,
        limit_remaining: 0,
        duration_until_reset: Some(pb::Duration {
            seconds: secs,
            nanos: 0,
        }),
    }
}

/// A `tools/call` of `tool` with this id.
fn call_id(id: u64, tool: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
    )
}

fn sent(step: &Step) -> pb::RateLimitRequest {
    match step {
        Step::Dispatch(p) => pb::RateLimitRequest::decode(p.as_slice()).unwrap(),
        other => panic!("expected a dispatch, got {other:?}"),
    }
}

fn entries(req: &pb::RateLimitRequest) -> Vec<Vec<(String, String)>> {
    req.descriptors
        .iter()
        .map(|d| {
            d.entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect()
        })
        .collect()
}

fn reply_bytes(code: i32, secs: i64) -> Vec<u8> {
    pb::RateLimitResponse {
        overall_code: code,
        statuses: vec![pb::DescriptorStatus {
            code,
            current_limit: None,
            limit_remaining: 0,
            duration_until_reset: Some(pb::Duration {
                seconds: secs,
                nanos: 0,
            }),
        }],
        response_headers_to_add: vec![],
        request_headers_to_add: vec![],
    }
    .encode_to_vec()
}

#[test]
fn allowed_tool_call() {
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    let step = drive(&mut flow, &host, &call("search_docs"));
    let req = sent(&step);
    assert_eq!(req.domain, "mcp");
    assert_eq!(
        entries(&req),
        vec![vec![("tool".to_owned(), "search_docs".to_owned())]]
    );
    flow.on_dispatched(9, &host);
    assert_eq!(flow.awaiting(), Some(9));
    let step = flow.on_rls_response(9, 0, Some(&reply_bytes(rls::CODE_OK, 0)), &host);
    assert_eq!(step, Step::Continue(vec![]));
    assert_eq!(host.count_of(Counter::Inspected), 1);
    assert_eq!(host.count_of(Counter::Checked), 1);
    assert_eq!(host.count_of(Counter::Ok), 1);
}

#[test]
fn over_limit_denies_with_json_rpc_error() {
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    let body = r#"{"jsonrpc":"2.0","id":"req-1","method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs"}}}"#;
    let req = sent(&drive(&mut flow, &host, body));
    assert_eq!(
        entries(&req),
        vec![vec![("tool".to_owned(), "search_docs".to_owned())]]
    );
    flow.on_dispatched(1, &host);
    let Step::Reply(r) = flow.answer_rls(1, 0, Some(&reply_bytes(rls::CODE_OVER_LIMIT, 37)), &host)
    else {
        panic!()
    };
    assert_eq!(r.status, 429);
    assert_eq!(
        r.body,
        r#"{"jsonrpc":"2.0","id":"req-1","error":{"code":429,"message":"Rate limit exceeded","data":{"retryAfterSeconds":37}}}"#
    );
    assert!(r
        .headers
        .contains(&("retry-after".to_owned(), "37".to_owned())));
    assert_eq!(host.count_of(Counter::OverLimit), 1);
    assert_eq!(flow.response_headers(), vec![]);
}

#[test]
fn non_tool_methods_make_no_call_under_the_default() {
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    ] {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(BASIC));
        assert_eq!(
            drive(&mut flow, &host, body),
            Step::Continue(vec![]),
            "{body}"
        );
        assert_eq!(host.count_of(Counter::Inspected), 1);
        assert_eq!(host.count_of(Counter::Checked), 0);
    }
}

#[test]
fn only_posts_are_inspected() {
    let cases = [
        MockHost::default()
            .with(":method", "GET")
            .with("accept", "text/event-stream"),
        MockHost::default().with(":method", "DELETE"),
        MockHost::default()
            .with(":method", "post")
            .with("content-type", "application/json"),
    ];
    for host in cases {
        let mut flow = Flow::new(cfg(BASIC));
        assert_eq!(
            flow.on_request_headers(false, &host),
            Step::Continue(vec![])
        );
        assert_eq!(
            flow.on_request_body(10, true, &host),
            Step::Continue(vec![])
        );
    }
    // A POST without a body and without a JSON type has nothing to judge.
    let host = MockHost::default().with(":method", "POST");
    let mut flow = Flow::new(cfg(BASIC));
    assert_eq!(flow.on_request_headers(true, &host), Step::Continue(vec![]));
}

/// Drives a POST of another content type through the sniffing path.
fn sniff(flow: &mut Flow, host: &MockHost, chunks: &[&str]) -> Step {
    sniff_counting(flow, host, chunks, &mut 0)
}

/// [`sniff`], adding the body bytes read to `read`.
fn sniff_counting(flow: &mut Flow, host: &MockHost, chunks: &[&str], read: &mut usize) -> Step {
    assert_eq!(flow.on_request_headers(false, host), Step::Pause);
    let mut body = String::new();
    let mut step = Step::Pause;
    for (i, chunk) in chunks.iter().enumerate() {
        body.push_str(chunk);
        let last = i + 1 == chunks.len();
        let s = flow.on_request_body(body.len(), last, host);
        step = follow(flow, host, body.as_bytes(), s, read);
        if step != Step::Pause {
            return step;
        }
    }
    step
}

#[test]
fn json_shaped_bodies_of_other_types_are_judged_too() {
    for ct in [
        Some("text/plain"),
        None,
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut host = MockHost::default().with(":method", "POST");
        if let Some(ct) = ct {
            host = host.with("content-type", ct);
        }
        // JSON-shaped: limited like any MCP request, even when the
        // first chunk is only whitespace.
        let mut flow = Flow::new(cfg(BASIC));
        let body = call("search_docs");
        let req = sent(&sniff(
            &mut flow,
            &host,
            &["  \n", &body[..10], &body[10..]],
        ));
        assert_eq!(
            entries(&req),
            vec![vec![("tool".to_owned(), "search_docs".to_owned())]],
            "{ct:?}"
        );
        // Not JSON-shaped: passed untouched after the first bytes.
        let mut flow = Flow::new(cfg(BASIC));
        assert_eq!(
            sniff(&mut flow, &host, &["a=1&b=2", "..."]),
            Step::Continue(vec![])
        );
        assert_eq!(
            flow.on_request_body(100, true, &host),
            Step::Continue(vec![])
        );
        // Malformed JSON-shaped bodies are refused, not passed.
        let mut flow = Flow::new(cfg(BASIC));
        let Step::Reply(r) = sniff(&mut flow, &host, &["{\"method\":"]) else {
            panic!()
        };
        assert_eq!(r.status, 400);
    }
    // Turned off: other types pass without being read.
    let host = MockHost::default()
        .with(":method", "POST")
        .with("content-type", "text/plain");
    let mut flow = Flow::new(cfg(
        r#"{"domain":"mcp","rls_cluster":"r","sniff_bodies":false}"#,
    ));
    assert_eq!(
        flow.on_request_headers(false, &host),
        Step::Continue(vec![])
    );
    assert_eq!(
        flow.on_request_body(10, true, &host),
        Step::Continue(vec![])
    );
}

#[test]
fn oversized_bodies_of_other_types_are_decided_by_their_start() {
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":16}"#);
    let host = MockHost::default()
        .with(":method", "POST")
        .with("content-type", "application/octet-stream");
    let mut flow = Flow::new(c.clone());
    assert_eq!(
        sniff(
            &mut flow,
            &host,
            &["\x00binary upload, much larger than the cap"]
        ),
        Step::Continue(vec![])
    );
    let mut flow = Flow::new(c);
    let Step::Reply(r) = sniff(
        &mut flow,
        &host,
        &["{\"jsonrpc\":\"2.0\",\"method\":\"tools/call\"", "}"],
    ) else {
        panic!()
    };
    assert_eq!(r.status, 413);
}

#[test]
fn oversized_json_shaped_body_in_one_chunk_is_refused() {
    // Its first max_body_bytes bytes alone could pass for a tools/list.
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":64}"#);
    let host = MockHost::default()
        .with(":method", "POST")
        .with("content-type", "text/plain");
    let mut body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_owned();
    body.push_str(&" ".repeat(64 - body.len()));
    body.push_str(
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search_docs"}}"#,
    );
    let mut flow = Flow::new(c);
    assert_eq!(flow.on_request_headers(false, &host), Step::Pause);
    assert_eq!(
        flow.on_request_body(body.len(), true, &host),
        Step::ReadBody { start: 0, len: 64 }
    );
    let Step::Reply(r) = flow.on_body(&body.as_bytes()[..64], &host) else {
        panic!()
    };
    assert_eq!(r.status, 413);
}

#[test]
fn compressed_bodies_are_refused() {
    for encoding in ["gzip", "br", "deflate", "identity, gzip", "GZIP"] {
        let host = MockHost::post_json().with("content-encoding", encoding);
        let mut flow = Flow::new(cfg(BASIC));
        let Step::Reply(r) = flow.on_request_headers(false, &host) else {
            panic!("{encoding}")
        };
        assert_eq!(r.status, 415);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["code"], -32600);
        assert_eq!(host.count_of(Counter::ParseError), 1);
    }
    for encoding in ["identity", "", "Identity"] {
        let host = MockHost::post_json().with("content-encoding", encoding);
        let mut flow = Flow::new(cfg(BASIC));
        assert_eq!(
            flow.on_request_headers(false, &host),
            Step::Pause,
            "{encoding}"
        );
    }
}

#[test]
fn batches_can_be_refused() {
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(
        r#"{"domain":"mcp","rls_cluster":"r","refuse_batches":true}"#,
    ));
    let Step::Reply(r) = drive(&mut flow, &host, &format!("[{}]", call("a"))) else {
        panic!()
    };
    assert_eq!(r.status, 400);
    assert!(r.body.contains("batches are not accepted"), "{}", r.body);
}

#[test]
fn json_content_type_variants() {
    for ct in [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        " application/json ;x=y",
        "application/json-rpc",
        "application/vnd.api+json",
    ] {
        assert!(is_json(ct.as_bytes()), "{ct}");
    }
    for ct in ["application/jsonx", "text/json", "text/plain", ""] {
        assert!(!is_json(ct.as_bytes()), "{ct}");
    }
}

#[test]
fn headers_go_on_when_not_held() {
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","hold_headers":false}"#);
    let host = MockHost::post_json();
    let mut flow = Flow::new(c);
    assert_eq!(
        flow.on_request_headers(false, &host),
        Step::Continue(vec![])
    );
    assert_eq!(flow.on_request_body(10, false, &host), Step::Pause);
    assert_eq!(
        flow.on_request_body(20, true, &host),
        Step::ReadBody { start: 0, len: 20 }
    );
}

#[test]
fn body_is_read_only_at_the_end() {
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    assert_eq!(flow.on_request_headers(false, &host), Step::Pause);
    assert_eq!(flow.on_request_body(10, false, &host), Step::Pause);
    assert_eq!(flow.on_request_body(20, false, &host), Step::Pause);
    assert_eq!(
        flow.on_request_body(30, true, &host),
        Step::ReadBody { start: 0, len: 30 }
    );
}

#[test]
fn trailers_end_the_body() {
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    flow.on_request_headers(false, &host);
    assert_eq!(flow.on_request_body(42, false, &host), Step::Pause);
    assert_eq!(
        flow.on_request_trailers(&host),
        Step::ReadBody { start: 0, len: 42 }
    );
}

#[test]
fn too_large_bodies_are_refused() {
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":100}"#);
    let host = MockHost::post_json();
    let mut flow = Flow::new(c.clone());
    flow.on_request_headers(false, &host);
    assert_eq!(flow.on_request_body(60, false, &host), Step::Pause);
    let Step::Reply(r) = flow.on_request_body(101, false, &host) else {
        panic!()
    };
    assert_eq!(r.status, 413);
    assert_eq!(flow.on_request_body(150, true, &host), Step::Pause);
    // Declared too large: refused at the headers, nothing buffered.
    let host = MockHost::post_json().with("content-length", "101");
    let mut flow = Flow::new(c);
    let Step::Reply(r) = flow.on_request_headers(false, &host) else {
        panic!()
    };
    assert_eq!(r.status, 413);
    assert_eq!(host.count_of(Counter::BodyTooLarge), 1);
}

#[test]
fn malformed_bodies_get_json_rpc_errors() {
    let cases = [
        ("not json", 400, -32700),
        ("", 400, -32700),
        (r#"{"id":4,"method":"tools/call","params":{}}"#, 400, -32602),
        (
            r#"{"id":4,"method":"tools/call","method":"x","params":{"name":"a"}}"#,
            400,
            -32600,
        ),
    ];
    for (body, status, code) in cases {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(BASIC));
        let Step::Reply(r) = drive(&mut flow, &host, body) else {
            panic!("{body}")
        };
        assert_eq!(r.status, status);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["code"], code, "{body}");
        assert_eq!(host.count_of(Counter::ParseError), 1);
    }
}

#[test]
fn empty_body_at_headers_end_is_read() {
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    assert_eq!(
        flow.on_request_headers(true, &host),
        Step::ReadBody { start: 0, len: 0 }
    );
    let Step::Reply(r) = flow.on_body(b"", &host) else {
        panic!()
    };
    assert_eq!(r.status, 400);
}

#[test]
fn failure_mode_allow_and_deny() {
    for (deny, grpc, body) in [
        (false, 14, None),
        (true, 14, None),
        (false, 0, Some(&b"\xff\xff"[..])),
        (true, 0, Some(&b""[..])),
    ] {
        let c = cfg(&format!(
            r#"{{"domain":"mcp","rls_cluster":"r","failure_mode_deny":{deny}}}"#
        ));
        let host = MockHost::post_json();
        let mut flow = Flow::new(c);
        drive(&mut flow, &host, &call("a"));
        flow.on_dispatched(3, &host);
        let step = flow.answer_rls(3, grpc, body, &host);
        assert_eq!(host.count_of(Counter::Error), 1);
        if deny {
            let Step::Reply(r) = step else { panic!() };
            assert_eq!(r.status, 503);
            assert_eq!(
                r.body,
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"Rate limit service unavailable"}}"#
            );
            assert_eq!(host.count_of(Counter::FailureModeAllowed), 0);
        } else {
            assert_eq!(step, Step::Continue(vec![]));
            assert_eq!(host.count_of(Counter::FailureModeAllowed), 1);
        }
    }
}

#[test]
fn dispatch_failure_follows_the_failure_mode() {
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    drive(&mut flow, &host, &call("a"));
    assert_eq!(flow.on_dispatch_failed(&host), Step::Continue(vec![]));
    assert_eq!(host.count_of(Counter::FailureModeAllowed), 1);
}

#[test]
fn replies_with_another_token_are_ignored() {
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    drive(&mut flow, &host, &call("a"));
    flow.on_dispatched(5, &host);
    assert_eq!(
        flow.on_rls_response(6, 0, Some(&reply_bytes(rls::CODE_OVER_LIMIT, 1)), &host),
        Step::Pause
    );
    assert_eq!(flow.awaiting(), Some(5));
    assert_eq!(host.count_of(Counter::OverLimit), 0);
}

#[test]
fn ok_reply_headers_reach_request_and_response() {
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    drive(&mut flow, &host, &call("a"));
    flow.on_dispatched(1, &host);
    let bytes = pb::RateLimitResponse {
        overall_code: rls::CODE_OK,
        response_headers_to_add: vec![pb::HeaderValue {
            key: "x-ratelimit-remaining".into(),
            value: "3".into(),
            raw_value: vec![],
        }],
        request_headers_to_add: vec![pb::HeaderValue {
            key: "x-rl".into(),
            value: "ok".into(),
            raw_value: vec![],
        }],
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(
        flow.on_rls_response(1, 0, Some(&bytes), &host),
        Step::Continue(vec![("x-rl".into(), "ok".into())])
    );
    assert_eq!(
        flow.response_headers(),
        vec![("x-ratelimit-remaining".to_owned(), "3".to_owned())]
    );
}

#[test]
fn descriptor_sources() {
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","descriptors":[
        [{"key":"user","header":"x-user"},{"key":"tool","mcp":"tool"}],
        [{"key":"sub","metadata":{"namespace":"jwt","path":["payload","sub"]}}],
        [{"key":"generic_key","value":"mcp"},{"key":"method","mcp":"method"}],
        [{"key":"prompt","mcp":"prompt"}]
    ]}"#);
    let mut host = MockHost::post_json().with("x-user", "alice");
    host.metadata
        .insert("jwt/payload/sub".into(), b"u-1".to_vec());
    let mut flow = Flow::new(c.clone());
    let req = sent(&drive(&mut flow, &host, &call("search_docs")));
    assert_eq!(
        entries(&req),
        vec![
            vec![
                ("user".to_owned(), "alice".to_owned()),
                ("tool".to_owned(), "search_docs".to_owned())
            ],
            vec![("sub".to_owned(), "u-1".to_owned())],
            vec![
                ("generic_key".to_owned(), "mcp".to_owned()),
                ("method".to_owned(), "tools/call".to_owned())
            ],
        ]
    );
    // Absent sources skip their descriptor only.
    let host = MockHost::post_json();
    let mut flow = Flow::new(c);
    let req = sent(&drive(
        &mut flow,
        &host,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    ));
    assert_eq!(
        entries(&req),
        vec![vec![
            ("generic_key".to_owned(), "mcp".to_owned()),
            ("method".to_owned(), "tools/list".to_owned())
        ]]
    );
}

#[test]
fn non_utf8_header_values_still_count() {
    let c = cfg(
        r#"{"domain":"mcp","rls_cluster":"r","descriptors":[[{"key":"user","header":"x-user"}]]}"#,
    );
    let mut host = MockHost::post_json();
    host.headers.insert("x-user".into(), vec![b'a', 0xff]);
    let mut flow = Flow::new(c);
    let req = sent(&drive(&mut flow, &host, &call("t")));
    assert_eq!(
        entries(&req),
        vec![vec![("user".to_owned(), "a\u{fffd}".to_owned())]]
    );
}

#[test]
fn batch_counts_each_call_in_one_request() {
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    let body = r#"[
        {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}},
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"a"}}},
        {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"b"}},
        {"jsonrpc":"2.0","method":"notifications/progress"}
    ]"#;
    let req = sent(&drive(&mut flow, &host, body));
    assert_eq!(req.descriptors.len(), 2);
    assert_eq!(req.descriptors[0].entries[0].value, "a");
    assert_eq!(
        req.descriptors[0].hits_addend,
        Some(pb::UInt64Value { value: 2 })
    );
    assert_eq!(req.descriptors[1].entries[0].value, "b");
    assert_eq!(req.descriptors[1].hits_addend, None);
    flow.on_dispatched(1, &host);
    let Step::Reply(r) = flow.answer_rls(1, 0, Some(&reply_bytes(rls::CODE_OVER_LIMIT, 2)), &host)
    else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let ids: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![
            serde_json::json!(1),
            serde_json::json!(2),
            serde_json::json!(3)
        ]
    );
}

#[test]
fn late_callbacks_after_a_reply_do_nothing() {
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    let Step::Reply(_) = drive(&mut flow, &host, "{") else {
        panic!()
    };
    assert_eq!(flow.on_request_body(5, true, &host), Step::Pause);
    assert_eq!(flow.on_request_trailers(&host), Step::Pause);
    assert_eq!(flow.on_rls_response(1, 0, None, &host), Step::Pause);
    assert_eq!(flow.response_headers(), vec![]);
}

const MODERN: &str = "2026-07-28";

fn modern_call(host: MockHost, tool: &str) -> MockHost {
    host.with("mcp-protocol-version", MODERN)
        .with("mcp-method", "tools/call")
        .with("mcp-name", tool)
}

#[test]
fn header_body_mismatch_is_refused_before_the_service() {
    let cases = [
        MockHost::post_json().with("mcp-method", "tools/list"),
        MockHost::post_json().with("mcp-name", "get_weather"),
        MockHost::post_json().with("mcp-name", "=?base64?not base64?="),
        MockHost::post_json()
            .with("mcp-protocol-version", MODERN)
            .with("mcp-method", "tools/call"),
    ];
    for host in cases {
        let mut flow = Flow::new(cfg(BASIC));
        let Step::Reply(r) = drive(&mut flow, &host, &call("search_docs")) else {
            panic!("{:?}", host.headers)
        };
        assert_eq!(r.status, 400);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["code"], -32020);
        assert_eq!(v["id"], 1);
        assert_eq!(host.count_of(Counter::HeaderMismatch), 1);
        assert_eq!(host.count_of(Counter::Checked), 0);
    }
}

#[test]
fn repeated_routing_headers_are_refused() {
    let mut host = modern_call(MockHost::post_json(), "search_docs");
    host.repeated.push("mcp-name".into());
    let mut flow = Flow::new(cfg(BASIC));
    let Step::Reply(r) = flow.on_request_headers(false, &host) else {
        panic!()
    };
    assert_eq!(r.status, 400);
    assert!(r.body.contains("-32020"), "{}", r.body);
    assert_eq!(host.count_of(Counter::HeaderMismatch), 1);
}

#[test]
fn matching_headers_are_fine_and_validation_can_be_turned_off() {
    let host = modern_call(MockHost::post_json(), "search_docs");
    let mut flow = Flow::new(cfg(BASIC));
    assert!(matches!(
        drive(&mut flow, &host, &call("search_docs")),
        Step::Dispatch(_)
    ));
    let host = MockHost::post_json().with("mcp-name", "other");
    let mut flow = Flow::new(cfg(
        r#"{"domain":"mcp","rls_cluster":"r","validate_mcp_headers":false}"#,
    ));
    assert!(matches!(
        drive(&mut flow, &host, &call("search_docs")),
        Step::Dispatch(_)
    ));
}

#[test]
fn batches_follow_the_protocol_version() {
    let batch = format!("[{}]", call("a"));
    for (version, allowed) in [
        (None, true),
        (Some("2025-03-26"), true),
        (Some("2025-06-18"), false),
        (Some("2025-11-25"), false),
    ] {
        let mut host = MockHost::post_json();
        if let Some(v) = version {
            host = host.with("mcp-protocol-version", v);
        }
        let mut flow = Flow::new(cfg(BASIC));
        let step = drive(&mut flow, &host, &batch);
        assert_eq!(
            matches!(step, Step::Dispatch(_)),
            allowed,
            "{version:?}: {step:?}"
        );
    }
}

const FAST: &str = r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":96,"header_fast_path":true,
    "param_headers":[{"tool":"call_tool","argument":"tool_name","header":"ToolName"}]}"#;

#[test]
fn fast_path_calls_the_service_from_the_headers() {
    let host = modern_call(MockHost::post_json(), "search_docs").with("content-length", "100000");
    let mut flow = Flow::new(cfg(FAST));
    let step = flow.on_request_headers(false, &host);
    assert_eq!(
        entries(&sent(&step)),
        vec![vec![("tool".to_owned(), "search_docs".to_owned())]]
    );
    assert_eq!(host.count_of(Counter::FastPath), 1);
    flow.on_dispatched(4, &host);
    // The body is held, never read, while the service decides...
    assert_eq!(flow.on_request_body(50_000, false, &host), Step::Pause);
    let ok = reply_bytes(rls::CODE_OK, 0);
    assert_eq!(
        flow.on_rls_response(4, 0, Some(&ok), &host),
        Step::Continue(vec![])
    );
    // ...and then flows, whatever its size.
    assert_eq!(
        flow.on_request_body(100_000, true, &host),
        Step::Continue(vec![])
    );
    assert_eq!(host.count_of(Counter::Inspected), 0);
    assert_eq!(host.count_of(Counter::BodyTooLarge), 0);
}

#[test]
fn fast_path_unwraps_the_meta_tool_from_its_param_header() {
    let host =
        modern_call(MockHost::post_json(), "call_tool").with("mcp-param-toolname", "get_weather");
    let mut flow = Flow::new(cfg(FAST));
    let step = flow.on_request_headers(false, &host);
    assert_eq!(
        entries(&sent(&step)),
        vec![vec![("tool".to_owned(), "get_weather".to_owned())]]
    );
}

#[test]
fn fast_path_falls_back_to_the_body() {
    let cases = [
        // Meta-tool without the header carrying its inner tool.
        modern_call(MockHost::post_json(), "call_tool"),
        // Older protocol version: headers are not validated upstream.
        MockHost::post_json()
            .with("mcp-protocol-version", "2025-11-25")
            .with("mcp-method", "tools/call")
            .with("mcp-name", "a"),
        // No routing headers.
        MockHost::post_json().with("mcp-protocol-version", MODERN),
        // tools/call without Mcp-Name.
        MockHost::post_json()
            .with("mcp-protocol-version", MODERN)
            .with("mcp-method", "tools/call"),
    ];
    for host in cases {
        let mut flow = Flow::new(cfg(FAST));
        assert_eq!(
            flow.on_request_headers(false, &host),
            Step::Pause,
            "{:?}",
            host.headers
        );
        assert_eq!(host.count_of(Counter::FastPath), 0);
    }
    // Disabled by default.
    let host = modern_call(MockHost::post_json(), "search_docs");
    let mut flow = Flow::new(cfg(BASIC));
    assert_eq!(flow.on_request_headers(false, &host), Step::Pause);
}

#[test]
fn fast_path_without_descriptors_passes_at_once() {
    let host = MockHost::post_json()
        .with("mcp-protocol-version", MODERN)
        .with("mcp-method", "tools/list");
    let mut flow = Flow::new(cfg(FAST));
    assert_eq!(
        flow.on_request_headers(false, &host),
        Step::Continue(vec![])
    );
    assert_eq!(
        flow.on_request_body(10, true, &host),
        Step::Continue(vec![])
    );
}

#[test]
fn fast_path_denial_answers_with_the_body_id() {
    let body =
        r#"{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{"name":"search_docs"}}"#;
    let over = reply_bytes(rls::CODE_OVER_LIMIT, 9);
    // The verdict comes before the end of the body...
    let host = modern_call(MockHost::post_json(), "search_docs");
    let mut flow = Flow::new(cfg(FAST));
    assert!(matches!(
        flow.on_request_headers(false, &host),
        Step::Dispatch(_)
    ));
    flow.on_dispatched(1, &host);
    assert_eq!(flow.on_request_body(10, false, &host), Step::Pause);
    assert_eq!(flow.on_rls_response(1, 0, Some(&over), &host), Step::Pause);
    assert_eq!(
        flow.on_request_body(body.len(), true, &host),
        Step::ReadBody {
            start: 0,
            len: body.len()
        }
    );
    let Step::Reply(r) = flow.on_body(body.as_bytes(), &host) else {
        panic!()
    };
    assert_eq!(r.status, 429);
    assert!(r.body.contains(r#""id":"abc""#), "{}", r.body);
    // ...or after it.
    let mut flow = Flow::new(cfg(FAST));
    flow.on_request_headers(false, &host);
    flow.on_dispatched(2, &host);
    assert_eq!(flow.on_request_body(body.len(), true, &host), Step::Pause);
    assert_eq!(
        flow.on_rls_response(2, 0, Some(&over), &host),
        Step::ReadBody {
            start: 0,
            len: body.len()
        }
    );
    let Step::Reply(r) = flow.on_body(body.as_bytes(), &host) else {
        panic!()
    };
    assert!(r.body.contains(r#""id":"abc""#), "{}", r.body);
    // Trailers end the body too.
    let mut flow = Flow::new(cfg(FAST));
    flow.on_request_headers(false, &host);
    flow.on_dispatched(3, &host);
    flow.on_rls_response(3, 0, Some(&over), &host);
    assert_eq!(
        flow.on_request_trailers(&host),
        Step::ReadBody { start: 0, len: 0 }
    );
}

#[test]
fn session_and_protocol_version_descriptors() {
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","descriptors":[
        [{"key":"session","mcp":"session_id"},{"key":"tool","mcp":"tool"}],
        [{"key":"version","mcp":"protocol_version"}]]}"#);
    let host = MockHost::post_json()
        .with("mcp-session-id", "s-1")
        .with("mcp-protocol-version", "2025-06-18");
    let mut flow = Flow::new(c.clone());
    let req = sent(&drive(&mut flow, &host, &call("t")));
    assert_eq!(
        entries(&req),
        vec![
            vec![
                ("session".to_owned(), "s-1".to_owned()),
                ("tool".to_owned(), "t".to_owned())
            ],
            vec![("version".to_owned(), "2025-06-18".to_owned())],
        ]
    );
    let host = MockHost::post_json();
    let mut flow = Flow::new(c);
    assert_eq!(drive(&mut flow, &host, &call("t")), Step::Continue(vec![]));
}
