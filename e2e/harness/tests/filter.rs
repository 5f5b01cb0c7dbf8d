//! The filter end to end: the real Envoy 1.40 binary loading the built
//! `.wasm` with the shipped Envoy config (ports and plugin configuration
//! substituted), dev-rls as the rate-limit service and mcp-upstream as the
//! MCP server, all on free loopback ports.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use e2e::fixtures::{limits, tools_call};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use e2e::stack::Stack;
use e2e::{render, stack, DevRls, Envoy, Paths, Request, Response, RlsClock, CLOCK_AT};
use serde_json::{json, Value};

/// Limits used by most tests. dev-rls runs on a frozen clock (the harness's
/// default, at `CLOCK_AT`), so no window rolls over during a test: the counts
/// are exact at any time of day, and every denial says the same Retry-After.
static LIMITS: LazyLock<String> = LazyLock::new(|| limits(3, 1000));

const PLUGIN: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000}"#;

/// Seconds from the frozen `CLOCK_AT` to the end of its UTC day: the
/// Retry-After of every denial under a day limit.
const DAY_LEFT: u64 = 86_400 - CLOCK_AT % 86_400;

fn shipped(name: &str) -> String {
    stack::shipped(name).unwrap()
}

fn wasm_path() -> String {
    stack::wasm_path().unwrap()
}

/// Renders a shipped Envoy config for this test: free ports, the built
/// module, and `plugin` as the filter's configuration.
fn render_config(
    template: &str,
    rls_port: u16,
    upstream_port: u16,
    plugin: &str,
    extra: &[(&str, String)],
) -> String {
    stack::render_config(template, rls_port, upstream_port, plugin, extra).unwrap()
}

/// Starts the usual stack with this test file's limits.
fn start(plugin: &str) -> Stack {
    Stack::start(plugin, LIMITS.as_str())
}

/// A `tools/call` of `tool` through the stack.
fn call(s: &Stack, id: u64, tool: &str) -> Response {
    s.post(&tools_call(id, tool))
}

fn via_call_tool(id: &str, inner: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"call_tool","arguments":{{"tool_name":"{inner}","parameters":{{"query":"q"}}}}}}}}"#
    )
}

/// Asserts the exact denial a client sees.
fn assert_denied(resp: &Response, id: Value) {
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("x-envoy-ratelimited"), Some("true"));
    let retry: u64 = resp
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert_eq!(retry, DAY_LEFT, "retry-after");
    let mut want = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": 429, "message": "Rate limit exceeded", "data": {"retryAfterSeconds": retry}}
    });
    if want["id"].is_null() {
        want.as_object_mut().unwrap().remove("id");
    }
    assert_eq!(resp.json(), want);
}

#[test]
fn limit_is_enforced_per_tool_with_a_json_rpc_429() {
    let s = start(PLUGIN);
    for i in 1..=3 {
        let resp = call(&s, i, "search_docs");
        assert_eq!(resp.status, 200, "call {i}: {resp:?}");
        assert_eq!(resp.json()["id"], i);
    }
    let denied = call(&s, 4, "search_docs");
    assert_denied(&denied, json!(4));
    // The exact bytes of the body, as documented in the README.
    let retry = denied.header("retry-after").unwrap();
    assert_eq!(
        denied.text(),
        format!(
            r#"{{"jsonrpc":"2.0","id":4,"error":{{"code":429,"message":"Rate limit exceeded","data":{{"retryAfterSeconds":{retry}}}}}}}"#
        )
    );
    // The upstream saw the three allowed calls and nothing of the fourth.
    assert_eq!(s.up.calls("search_docs").unwrap(), 3);
    assert_eq!(s.up.requests().unwrap(), 3);
    // A notification is counted too; its denial has no id.
    let note = r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"search_docs"}}"#;
    assert_denied(&s.post(note), Value::Null);
    assert!(!s.post(note).text().contains("\"id\""));
    // Another tool has its own bucket.
    let resp = call(&s, 5, "get_weather");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(s.up.calls("get_weather").unwrap(), 1);
    // What the service was asked, and the counters: each denial came from
    // the service or again from the over-limit cache (the notifications,
    // within a second of the first denial), without a call.
    let sent = s.rls_requests();
    let cached = s.stat("over_limit_cached");
    assert!(cached <= 2);
    assert_eq!(sent.len() as u64 + cached, 7);
    assert_eq!(sent[0]["domain"], "mcp");
    assert_eq!(
        sent[3]["descriptors"],
        json!([{"entries": [{"key": "tool", "value": "search_docs"}], "hits_addend": null}])
    );
    assert_eq!(s.stat("checked"), 7 - cached);
    assert_eq!(s.stat("ok"), 4);
    assert_eq!(s.stat("over_limit"), 3 - cached);
    assert_eq!(s.stat("error"), 0);
    assert_eq!(s.envoy.stat("http.mcp.downstream_rq_4xx"), 3);
}

#[test]
fn denial_status_code_and_message_are_configurable() {
    let s = start(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,
            "over_limit":{"http_status":200,"code":-32023,"message":"Too many calls"}}"#,
    );
    for i in 1..=3 {
        assert_eq!(call(&s, i, "search_docs").status, 200);
    }
    let resp = call(&s, 4, "search_docs");
    assert_eq!(resp.status, 200, "{resp:?}");
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(
        resp.json(),
        json!({"jsonrpc":"2.0","id":4,"error":{"code":-32023,"message":"Too many calls","data":{"retryAfterSeconds":retry}}})
    );
    assert_eq!(s.up.requests().unwrap(), 3);
}

#[test]
fn call_tool_consumes_the_inner_tools_bucket() {
    let s = start(PLUGIN);
    assert_eq!(call(&s, 1, "search_docs").status, 200);
    assert_eq!(s.post(&via_call_tool("\"a\"", "search_docs")).status, 200);
    assert_eq!(s.post(&via_call_tool("\"b\"", "search_docs")).status, 200);
    // Both ways in now find the bucket empty.
    assert_denied(&s.post(&via_call_tool("\"c\"", "search_docs")), json!("c"));
    assert_denied(&call(&s, 2, "search_docs"), json!(2));
    // The inner tool can also be under `parameters`.
    let nested = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"call_tool","arguments":{"parameters":{"tool_name":"search_docs"}}}}"#;
    assert_denied(&s.post(nested), json!(3));
    assert_eq!(s.up.calls("search_docs").unwrap(), 3);
    // call_tool of another tool is counted against that tool.
    assert_eq!(s.post(&via_call_tool("4", "get_weather")).status, 200);
    let sent = s.rls_requests();
    assert_eq!(
        sent.last().unwrap()["descriptors"][0]["entries"][0]["value"],
        "get_weather"
    );
    assert!(sent
        .iter()
        .all(|r| r["descriptors"][0]["entries"][0]["value"] != "call_tool"));
}

#[test]
fn methods_without_a_tool_make_no_rls_call() {
    let s = start(PLUGIN);
    let bodies = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#,
    ];
    for body in bodies {
        let resp = s.post(body);
        assert!(resp.status == 200 || resp.status == 202, "{body}: {resp:?}");
    }
    // GET (SSE stream) and DELETE (end session) pass untouched.
    assert_eq!(
        Request::get("/mcp")
            .header("accept", "text/event-stream")
            .send(s.addr)
            .unwrap()
            .status,
        405
    );
    assert_eq!(
        Request::new("DELETE", "/mcp").send(s.addr).unwrap().status,
        200
    );
    assert_eq!(s.rls.calls().unwrap(), 0);
    assert_eq!(s.stat("checked"), 0);
    assert_eq!(s.stat("inspected"), 4);
    assert_eq!(s.up.requests().unwrap(), 4);
}

#[test]
fn rls_down_fail_open_lets_requests_through() {
    let mut s = start(PLUGIN);
    s.rls.stop().unwrap();
    for i in 1..=5 {
        let resp = call(&s, i, "search_docs");
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    assert_eq!(s.up.calls("search_docs").unwrap(), 5);
    assert_eq!(s.stat("error"), 5);
    assert_eq!(s.stat("failure_mode_allowed"), 5);
}

#[test]
fn rls_down_fail_closed_denies_with_a_json_rpc_error() {
    let mut s = start(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"failure_mode_deny":true}"#,
    );
    assert_eq!(call(&s, 1, "search_docs").status, 200);
    s.rls.stop().unwrap();
    let resp = s.post(&via_call_tool("\"x\"", "search_docs"));
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.json(),
        json!({"jsonrpc":"2.0","id":"x","error":{"code":-32603,"message":"Rate limit service unavailable"}})
    );
    assert_eq!(s.up.requests().unwrap(), 1);
    assert_eq!(s.stat("error"), 1);
    assert_eq!(s.stat("failure_mode_allowed"), 0);
    // Methods without a descriptor never needed the service.
    assert_eq!(
        s.post(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#)
            .status,
        200
    );
}

#[test]
fn rls_timeout_follows_the_failure_mode_within_the_timeout() {
    let mut s = start(r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":200}"#);
    assert_eq!(call(&s, 1, "get_weather").status, 200);
    s.rls.proc().pause().unwrap();
    let started = Instant::now();
    let resp = call(&s, 2, "get_weather");
    let took = started.elapsed();
    s.rls.proc().resume().unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        // Envoy's timer has millisecond granularity.
        took >= Duration::from_millis(180),
        "answered in {took:?}, before the timeout"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(s.stat("error"), 1);
    assert_eq!(s.stat("failure_mode_allowed"), 1);
}

#[test]
fn bad_plugin_configuration_is_refused_naming_the_key() {
    let cases = [
        (
            r#"{"domain":"mcp","rls_cluster":"ratelimit","timout_ms":5}"#,
            "timout_ms",
        ),
        (
            r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":0}"#,
            "timeout_ms",
        ),
        (r#"{"rls_cluster":"ratelimit"}"#, "domain"),
        (
            r#"{"domain":"mcp","rls_cluster":"ratelimit","descriptors":[[{"key":"tool","mcp":"tools"}]]}"#,
            "descriptors",
        ),
    ];
    for (plugin, key) in cases {
        let yaml = render_config(&shipped("envoy.yaml"), 1, 1, plugin, &[]);
        let (ok, output) = Envoy::validate(&yaml).unwrap();
        assert!(!ok, "validate accepted {plugin}");
        assert!(output.contains("invalid plugin configuration"), "{output}");
        assert!(
            output.contains(key),
            "{plugin}: output does not name {key}:\n{output}"
        );
        let logs = Envoy::try_start_expect_failure(&yaml, Duration::from_secs(20)).unwrap();
        assert!(logs.contains(key), "{logs}");
    }
}

#[test]
fn shipped_configs_validate() {
    for name in ["envoy.yaml", "envoy-buffer-filter.yaml"] {
        let yaml = render(
            &shipped(name),
            &[(
                "filename: target/mcp_ratelimit.wasm",
                format!("filename: {}", wasm_path()),
            )],
        )
        .unwrap();
        let (ok, output) = Envoy::validate(&yaml).unwrap();
        assert!(ok, "{name}:\n{output}");
        assert!(
            output.contains("mcp-ratelimit configured"),
            "{name}: filter not configured:\n{output}"
        );
    }
    // The shipped limits file is accepted by the rate-limit service.
    let limits = Paths::discover().root.join("envoy/ratelimit.yaml");
    assert_eq!(DevRls::check(&limits).unwrap(), "ok");
}

#[test]
fn buffer_filter_variant_keeps_denied_requests_from_the_upstream() {
    let s = Stack::start_with(
        "envoy-buffer-filter.yaml",
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"hold_headers":false}"#,
        LIMITS.as_str(),
        &[],
    );
    for i in 1..=3 {
        assert_eq!(call(&s, i, "search_docs").status, 200);
    }
    assert_denied(&call(&s, 4, "search_docs"), json!(4));
    // A body sent slowly in pieces is judged whole, and nothing reached the
    // upstream early.
    let body = tools_call(5, "search_docs");
    let pieces: Vec<Vec<u8>> = body.as_bytes().chunks(7).map(<[u8]>::to_vec).collect();
    let resp = Request::post("/mcp")
        .header("content-type", "application/json")
        .chunks(pieces)
        .chunk_delay(Duration::from_millis(5))
        .send(s.addr)
        .unwrap();
    assert_denied(&resp, json!(5));
    assert_eq!(s.up.requests().unwrap(), 3);
}

#[test]
fn body_in_many_chunks_and_with_trailers_is_judged_whole() {
    let s = start(PLUGIN);
    for i in 1..=4u64 {
        let body = tools_call(i, "search_docs");
        let pieces: Vec<Vec<u8>> = body.as_bytes().chunks(5).map(<[u8]>::to_vec).collect();
        let mut req = Request::post("/mcp")
            .header("content-type", "application/json")
            .chunks(pieces)
            .chunk_delay(Duration::from_millis(2));
        if i % 2 == 0 {
            req = req.trailer("x-trailer", "t");
        }
        let resp = req.send(s.addr).unwrap();
        if i <= 3 {
            assert_eq!(resp.status, 200, "{resp:?}");
        } else {
            assert_denied(&resp, json!(4));
        }
    }
    assert_eq!(s.up.calls("search_docs").unwrap(), 3);
}

#[test]
fn bad_bodies_get_json_rpc_errors_and_never_reach_the_upstream() {
    let s = start(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"max_body_bytes":2048}"#,
    );
    let resp = s.post("{not json");
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["code"], -32700);
    assert_eq!(resp.json()["id"], Value::Null);
    let resp = s.post("");
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(resp.json()["error"]["code"], -32700);
    let resp =
        s.post(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"arguments":{}}}"#);
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["code"], -32602);
    assert_eq!(resp.json()["id"], 7);
    let resp = s.post(r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","method":"tools/list","params":{"name":"search_docs"}}"#);
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["code"], -32600);
    // Over the cap, declared or chunked: 413 with a JSON-RPC error.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"search_docs","arguments":{{"q":"{}"}}}}}}"#,
        "x".repeat(4096)
    );
    let resp = s.post(&big);
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(resp.json()["error"]["data"]["maxBodyBytes"], 2048);
    let pieces: Vec<Vec<u8>> = big.as_bytes().chunks(1000).map(<[u8]>::to_vec).collect();
    let resp = Request::post("/mcp")
        .header("content-type", "application/json")
        .chunks(pieces)
        .send(s.addr)
        .unwrap();
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(s.up.requests().unwrap(), 0);
    assert_eq!(s.rls.calls().unwrap(), 0);
    assert_eq!(s.stat("parse_error"), 4);
    assert_eq!(s.stat("body_too_large"), 2);
    // The filter keeps serving.
    assert_eq!(call(&s, 10, "search_docs").status, 200);
}

#[test]
fn batch_counts_every_call_in_one_rls_request() {
    let s = start(PLUGIN);
    let batch = |a: u64, b: u64| {
        format!(
            r#"[{},{},{{"jsonrpc":"2.0","method":"notifications/progress"}}]"#,
            tools_call(a, "search_docs"),
            via_call_tool(&b.to_string(), "search_docs")
        )
    };
    let resp = s.post(&batch(1, 2));
    assert_eq!(resp.status, 200, "{resp:?}");
    let sent = s.rls_requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0]["descriptors"],
        json!([{"entries": [{"key": "tool", "value": "search_docs"}], "hits_addend": 2}])
    );
    // 2 used, 1 left: a batch of 2 more is over the limit as a whole.
    let resp = s.post(&batch(3, 4));
    assert_eq!(resp.status, 429, "{resp:?}");
    let body = resp.json();
    let ids: Vec<Value> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(3), json!(4)]);
    assert_eq!(body[0]["error"]["code"], 429);
    assert_eq!(s.up.calls("search_docs").unwrap(), 2);
}

#[test]
fn descriptors_from_headers_and_dynamic_metadata() {
    let limits = r#"
domain: mcp
descriptors:
  - key: user
    descriptors:
      - key: tool
        rate_limit: {unit: day, requests_per_unit: 2}
  - key: tenant
    value: acme
    rate_limit: {unit: day, requests_per_unit: 3}
"#;
    let plugin = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"descriptors":[
        [{"key":"user","header":"x-user"},{"key":"tool","mcp":"tool"}],
        [{"key":"tenant","metadata":{"namespace":"tenants","path":["id"]}}]]}"#;
    // header_to_metadata moves x-tenant into dynamic metadata (and removes
    // the header) before the wasm filter runs.
    let h2m = r#"          http_filters:
          - name: envoy.filters.http.header_to_metadata
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config
              request_rules:
              - header: x-tenant
                on_header_present: {metadata_namespace: tenants, key: id, type: STRING}
                remove: true
"#;
    let s = Stack::start_with(
        "envoy.yaml",
        plugin,
        limits,
        &[("          http_filters:\n", h2m.to_owned())],
    );
    let as_user = |id: u64, user: &str, tenant: &str| {
        s.post_with(
            &tools_call(id, "search_docs"),
            &[("x-user", user), ("x-tenant", tenant)],
        )
    };
    assert_eq!(as_user(1, "alice", "other").status, 200);
    assert_eq!(as_user(2, "alice", "other").status, 200);
    assert_denied(&as_user(3, "alice", "other"), json!(3));
    assert_eq!(as_user(4, "bob", "other").status, 200);
    let sent = s.rls_requests();
    assert_eq!(
        sent[0]["descriptors"],
        json!([
            {"entries": [{"key": "user", "value": "alice"}, {"key": "tool", "value": "search_docs"}], "hits_addend": null},
            {"entries": [{"key": "tenant", "value": "other"}], "hits_addend": null}
        ])
    );
    // The tenant limit comes from metadata only (the header was removed).
    assert_eq!(as_user(5, "carol", "acme").status, 200);
    assert_eq!(as_user(6, "dave", "acme").status, 200);
    assert_eq!(as_user(7, "erin", "acme").status, 200);
    assert_denied(&as_user(8, "frank", "acme"), json!(8));
    assert_eq!(s.up.requests().unwrap(), 6);
    // Without either source no descriptor can be built: no call at all.
    let before = s.rls.calls().unwrap();
    assert_eq!(s.post(&tools_call(9, "search_docs")).status, 200);
    assert_eq!(s.rls.calls().unwrap(), before);
}

/// The filter rounds `duration_until_reset` up to whole seconds, at least 1,
/// for both `Retry-After` and `retryAfterSeconds`. dev-rls frozen at a
/// fraction of a second answers with nanoseconds, as the RLS API allows.
#[test]
fn retry_after_rounds_a_sub_second_reset_up() {
    let limits = r#"
domain: mcp
descriptors:
  - key: tool
    rate_limit: {unit: minute, requests_per_unit: 1}
"#;
    // 47.75 s into a minute: the window ends in 12.25 s.
    let clock = RlsClock::FrozenAt(format!("{}.75", CLOCK_AT + 47));
    let rls = DevRls::start_with_clock(clock, 0, &[limits]).unwrap();
    // The test moves the service's clock, not Envoy's: each denial must come
    // from the service, not from the over-limit cache.
    let plugin =
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"over_limit_cache":false}"#;
    let s = Stack::start_on(rls, "envoy.yaml", plugin, &[]);
    let denied_with = |id: u64| {
        let resp = call(&s, id, "search_docs");
        assert_eq!(resp.status, 429, "{resp:?}");
        let header = resp.header("retry-after").unwrap().to_owned();
        let body = resp.json()["error"]["data"]["retryAfterSeconds"].clone();
        (header, body)
    };
    assert_eq!(call(&s, 1, "search_docs").status, 200);
    assert_eq!(denied_with(2), ("13".to_owned(), json!(13)));
    // 0.3 s left in the same window: 1, not 0.
    assert_eq!(
        s.rls.advance_clock(11_950).unwrap(),
        format!("{}.7", CLOCK_AT + 59)
    );
    assert_eq!(denied_with(3), ("1".to_owned(), json!(1)));
    // At the boundary the next window opens with a full minute.
    s.rls.advance_clock(300).unwrap();
    assert_eq!(call(&s, 4, "search_docs").status, 200);
    assert_eq!(denied_with(5), ("60".to_owned(), json!(60)));
    assert_eq!(s.up.calls("search_docs").unwrap(), 2);
    assert_eq!(s.stat("over_limit"), 3);
}
