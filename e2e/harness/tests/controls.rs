//! Operator controls through the real Envoy: descriptor objects with
//! `on_missing` and entry defaults, call costs, shadow descriptors and
//! bounded tool names, in front of dev-rls (clock frozen at `CLOCK_AT`, so
//! counts are exact).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use e2e::fixtures::{assert_called, assert_rate_limited, tools_call, DAY_LEFT};
use e2e::stack::Stack;
use e2e::Response;
use serde_json::{json, Value};

fn assert_passed(resp: &Response, id: u64, tool: &str) {
    assert_called(resp, id, tool);
}

fn assert_denied(resp: &Response, id: u64) {
    assert_rate_limited(resp, id, DAY_LEFT);
}

fn as_user(s: &Stack, id: u64, tool: &str, user: Option<&str>) -> Response {
    match user {
        Some(u) => s.post_with(&tools_call(id, tool), &[("x-user-id", u)]),
        None => s.post(&tools_call(id, tool)),
    }
}

const PER_USER_LIMITS: &str = "
domain: mcp
descriptors:
  - key: user
    descriptors:
      - key: tool
        rate_limit: {unit: day, requests_per_unit: 2}
";

/// `on_missing: refuse`: a call without the identity is refused before the
/// service and the server, with the request's id; with the default
/// (`skip`), the same call escapes the per-user limit.
#[test]
fn a_missing_identity_is_refused_not_let_through() {
    let refuse = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"descriptors":[
        {"name":"per_user_tool","on_missing":"refuse",
         "entries":[{"key":"user","header":"x-user-id"},{"key":"tool","mcp":"tool"}]}]}"#;
    let s = Stack::start(refuse, PER_USER_LIMITS);
    assert_passed(
        &as_user(&s, 1, "search_docs", Some("alice")),
        1,
        "search_docs",
    );
    assert_passed(
        &as_user(&s, 2, "search_docs", Some("alice")),
        2,
        "search_docs",
    );
    assert_denied(&as_user(&s, 3, "search_docs", Some("alice")), 3);
    let calls = s.rls_requests().len();
    let resp = as_user(&s, 4, "search_docs", None);
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(
        resp.json(),
        json!({"jsonrpc":"2.0","id":4,"error":{"code":-32600,"message":"Invalid Request",
            "data":{"reason":"the request lacks a value descriptor per_user_tool needs"}}})
    );
    assert_eq!(s.rls_requests().len(), calls, "the service was asked");
    assert_eq!(s.up.calls("search_docs").unwrap(), 2);
    assert_eq!(s.stat("missing_source"), 1);
    // A message without a tool is not what the descriptor is about.
    let list = s.post(r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#);
    assert_eq!(list.status, 200, "{list:?}");

    // The list form (skip): without the header, no descriptor, no limit.
    let skip = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"descriptors":[
        [{"key":"user","header":"x-user-id"},{"key":"tool","mcp":"tool"}]]}"#;
    let s = Stack::start(skip, PER_USER_LIMITS);
    for id in 1..=3 {
        assert_passed(&as_user(&s, id, "search_docs", None), id, "search_docs");
    }
    assert_eq!(s.rls_requests().len(), 0);
}

/// An entry's `default` stands in for an absent header: callers without an
/// identity share one bucket.
#[test]
fn callers_without_an_identity_share_the_default_bucket() {
    let plugin = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"descriptors":[
        {"name":"per_user_tool","entries":[{"key":"user","header":"x-user-id","default":"anonymous"},{"key":"tool","mcp":"tool"}]}]}"#;
    let s = Stack::start(plugin, PER_USER_LIMITS);
    assert_passed(&as_user(&s, 1, "search_docs", None), 1, "search_docs");
    assert_passed(
        &as_user(&s, 2, "search_docs", Some("anonymous")),
        2,
        "search_docs",
    );
    assert_denied(&as_user(&s, 3, "search_docs", None), 3);
    assert_passed(
        &as_user(&s, 4, "search_docs", Some("bob")),
        4,
        "search_docs",
    );
    assert_eq!(
        s.rls_requests()[0]["descriptors"][0]["entries"],
        json!([{"key": "user", "value": "anonymous"}, {"key": "tool", "value": "search_docs"}])
    );
}

const BUDGET_LIMITS: &str = "
domain: mcp
descriptors:
  - key: tenant
    value: acme
    rate_limit: {unit: day, requests_per_unit: 25}
  - key: tool
    rate_limit: {unit: day, requests_per_unit: 1000}
";

const BUDGET: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,
    "tool_costs":{"search_docs":10},
    "descriptors":[
      {"name":"tenant_budget","entries":[{"key":"tenant","value":"acme"}]},
      {"name":"calls_per_tool","cost":false,"entries":[{"key":"tool","mcp":"tool"}]}]}"#;

/// Costs: a `search_docs` call spends 10 of the tenant's 25, any other
/// call 1; the per-tool descriptor counts calls. Through `call_tool` and in
/// batches alike.
#[test]
fn costly_tools_spend_more_of_a_shared_budget() {
    let s = Stack::start(BUDGET, BUDGET_LIMITS);
    assert_passed(&s.post(&tools_call(1, "search_docs")), 1, "search_docs");
    let via = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs","parameters":{}}}}"#;
    let resp = s.post(via);
    assert_eq!(resp.status, 200, "{resp:?}");
    let sent = s.rls_requests();
    let hits = |i: usize| -> Vec<Value> {
        sent[i]["descriptors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["hits_addend"].clone())
            .collect()
    };
    // 10 for the budget, one call for the tool (sent as no hits_addend).
    assert_eq!(hits(0), vec![json!(10), Value::Null]);
    assert_eq!(hits(1), vec![json!(10), Value::Null]);
    // 20 spent: a batch of a lookup and another search (11) is over 25.
    let batch = format!(
        "[{},{}]",
        tools_call(3, "get_weather"),
        tools_call(4, "search_docs")
    );
    let resp = s.post(&batch);
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.batch_ids(), vec![json!(3), json!(4)]);
    let sent = s.rls_requests();
    assert_eq!(
        sent[2]["descriptors"],
        json!([
            {"entries": [{"key": "tenant", "value": "acme"}], "hits_addend": 11},
            {"entries": [{"key": "tool", "value": "get_weather"}], "hits_addend": null},
            {"entries": [{"key": "tool", "value": "search_docs"}], "hits_addend": null}
        ])
    );
    assert_eq!(s.up.calls("search_docs").unwrap(), 2);
    assert_eq!(s.up.calls("get_weather").unwrap(), 0);
}

/// A shadow descriptor is asked and counted, but its OVER_LIMIT never
/// denies; it is counted and logged. The enforced descriptor still denies.
#[test]
fn a_shadow_limit_is_reported_never_enforced() {
    let limits = "
domain: mcp
descriptors:
  - key: tenant
    value: acme
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: tool
    rate_limit: {unit: day, requests_per_unit: 3}
";
    let plugin = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"descriptors":[
        {"name":"per_tool","entries":[{"key":"tool","mcp":"tool"}]},
        {"name":"tenant_trial","shadow":true,"entries":[{"key":"tenant","value":"acme"}]}]}"#;
    let s = Stack::start(plugin, limits);
    for id in 1..=3 {
        assert_passed(&s.post(&tools_call(id, "search_docs")), id, "search_docs");
    }
    assert_eq!(s.stat("shadow_over_limit"), 2);
    assert_eq!(s.stat("ok"), 3);
    // The enforced limit: the 4th is denied (and the trial is over too).
    assert_denied(&s.post(&tools_call(4, "search_docs")), 4);
    assert_eq!(s.stat("over_limit"), 1);
    assert_eq!(s.stat("shadow_over_limit"), 3);
    assert_eq!(s.up.calls("search_docs").unwrap(), 3);
    s.envoy
        .wait_for_log("shadow limit exceeded: descriptor tenant_trial, target search_docs")
        .unwrap();
    assert!(
        !s.envoy.logs().contains(r#""query":"q""#),
        "the body reached the log"
    );
}

const BOUNDED_LIMITS: &str = "
domain: mcp
descriptors:
  - key: tool
    value: search_docs
    rate_limit: {unit: day, requests_per_unit: 3}
  - key: tool
    rate_limit: {unit: day, requests_per_unit: 2}
";

/// `tools` + `unknown_tools: other`: every invented name spends the one
/// `_other` bucket; `refuse` answers -32602 before the service and server.
#[test]
fn invented_tool_names_share_one_bucket_or_are_refused() {
    let other = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,
        "tools":["search_docs","get_weather"],"unknown_tools":"other"}"#;
    let s = Stack::start(other, BOUNDED_LIMITS);
    let first = s.post(&tools_call(1, "random_1"));
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(s.post(&tools_call(2, "random_2")).status, 200);
    assert_denied(&s.post(&tools_call(3, "random_3")), 3);
    // Known tools keep their own buckets.
    assert_passed(&s.post(&tools_call(4, "get_weather")), 4, "get_weather");
    let values: Vec<Value> = s
        .rls_requests()
        .iter()
        .map(|r| r["descriptors"][0]["entries"][0]["value"].clone())
        .collect();
    assert_eq!(
        values,
        vec![
            json!("_other"),
            json!("_other"),
            json!("_other"),
            json!("get_weather")
        ]
    );

    let refuse = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,
        "tools":["search_docs","get_weather"],"unknown_tools":"refuse"}"#;
    let s = Stack::start(refuse, BOUNDED_LIMITS);
    let resp = s.post(&tools_call(7, "random_1"));
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(
        resp.json(),
        json!({"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"Invalid params",
            "data":{"reason":"unknown tool: random_1"}}})
    );
    assert_eq!(s.stat("unknown_tool"), 1);
    assert_eq!(s.rls_requests().len(), 0);
    assert_eq!(s.up.requests().unwrap(), 0);
    assert_passed(&s.post(&tools_call(8, "search_docs")), 8, "search_docs");
}

/// `ratelimit_headers: draft03` gives the `x-ratelimit-*` headers Envoy's
/// own ratelimit filter gives with `enable_x_ratelimit_headers:
/// DRAFT_VERSION_03`: the two side by side, each in front of its own dev-rls
/// with the same limits, answer the same calls with the same headers,
/// allowed and denied. `retry_after_ms` adds `data.retryAfterMs`.
#[test]
fn draft03_headers_match_envoys_own_ratelimit_filter() {
    let limits = e2e::fixtures::limits(3, 1000);
    let plugin = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,
        "ratelimit_headers":"draft03","over_limit":{"retry_after_ms":true}}"#;
    let ours = Stack::start(plugin, &limits);
    let native = e2e::stack::Native::start(
        &limits,
        &[(
            "timeout: 0.1s",
            "timeout: 1s\n              enable_x_ratelimit_headers: DRAFT_VERSION_03".to_owned(),
        )],
    );
    let accept = [("accept", e2e::stack::ACCEPT)];
    let triple = |r: &Response| {
        [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ]
        .map(|h| r.header(h).map(str::to_owned))
    };
    for id in 1..=4 {
        let body = tools_call(id, "search_docs");
        let a = ours.post_with(&body, &accept);
        let b = native.post(&body);
        assert_eq!(a.status, b.status, "call {id}: {a:?}\n{b:?}");
        assert_eq!(triple(&a), triple(&b), "call {id}");
        let remaining = 3u64.saturating_sub(id).to_string();
        assert_eq!(
            triple(&a),
            [
                Some("3, 3;w=86400".to_owned()),
                Some(remaining),
                Some(DAY_LEFT.to_string())
            ],
            "call {id}"
        );
        if id == 4 {
            assert_eq!(
                a.json()["error"]["data"],
                json!({"retryAfterSeconds": DAY_LEFT, "retryAfterMs": DAY_LEFT * 1000})
            );
        }
    }
}

/// With `filter_state`, the access log of the shipped `envoy/envoy.yaml`
/// shows for each request its method, its resolved target (`call_tool`
/// unwrapped), the verdict and its reason, the descriptor that denied and
/// the service's latency.
#[test]
fn the_access_log_shows_what_the_filter_decided() {
    let shipped = e2e::stack::shipped("envoy.yaml").unwrap();
    assert!(
        shipped.contains(r#""filter_state": true"#),
        "the shipped config records nothing"
    );
    let plugin = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"filter_state":true,
        "descriptors":[{"name":"per_tool","entries":[{"key":"tool","mcp":"tool"}]}]}"#;
    let mut s = Stack::start(plugin, &e2e::fixtures::limits(1, 1000));
    assert_passed(&s.post(&tools_call(1, "search_docs")), 1, "search_docs");
    let via = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs","parameters":{}}}}"#;
    assert_denied(&s.post(via), 2);
    assert_eq!(
        s.post(r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#)
            .status,
        200
    );
    assert_eq!(s.post("not json").status, 400);
    // Envoy writes the access log out on its flush interval, and on exit.
    s.envoy.stop().unwrap();
    let logs = s.envoy.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"POST /mcp\""))
        .collect();
    assert_eq!(lines.len(), 4, "{logs}");
    let fields = |line: &str| -> Vec<String> {
        line.split_once("\" ")
            .map(|(_, rest)| rest.split(' ').map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let rls_ms = |line: &str| -> f64 {
        let f = fields(line);
        f.last()
            .and_then(|v| v.strip_prefix("rls_ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(
        &fields(lines[0])[..6],
        [
            "200",
            "mcp_method=tools/call",
            "target=search_docs",
            "verdict=allowed",
            "reason=-",
            "descriptor=-"
        ]
    );
    assert!((0.0..1000.0).contains(&rls_ms(lines[0])), "{}", lines[0]);
    assert_eq!(
        &fields(lines[1])[..6],
        [
            "429",
            "mcp_method=tools/call",
            "target=search_docs",
            "verdict=denied",
            "reason=-",
            "descriptor=per_tool"
        ]
    );
    assert!((0.0..1000.0).contains(&rls_ms(lines[1])), "{}", lines[1]);
    assert_eq!(
        fields(lines[2]),
        [
            "200",
            "mcp_method=tools/list",
            "target=-",
            "verdict=not_limited",
            "reason=-",
            "descriptor=-",
            "rls_ms=-"
        ]
    );
    assert_eq!(
        fields(lines[3]),
        [
            "400",
            "mcp_method=-",
            "target=-",
            "verdict=refused",
            "reason=parse_error",
            "descriptor=-",
            "rls_ms=-"
        ]
    );
}

/// Envoy's native `mcp` filter parses the first 8 KB of a body (its default
/// `max_request_body_size`): a `tools/call` whose tool name comes after
/// 8 KB of arguments reaches its rate-limit call without the tool, and
/// escapes the per-tool limit. mcp-ratelimit reads the whole body (up to
/// `max_body_bytes`) and counts it. The same five calls through each, with
/// `search_docs` limited to 3 a day.
#[test]
fn a_tool_name_after_8_kb_is_counted_here_and_escapes_the_native_filter() {
    let limits = e2e::fixtures::limits(3, 1000);
    let ours = Stack::start(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000}"#,
        &limits,
    );
    let native = e2e::stack::Native::start(&limits, &[]);
    let late = |id: u64| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"arguments":{{"query":"{}"}},"name":"search_docs"}}}}"#,
            "x".repeat(10_000)
        )
    };
    let accept = [("accept", e2e::stack::ACCEPT)];
    let ours_status: Vec<u16> = (1..=5)
        .map(|id| ours.post_with(&late(id), &accept).status)
        .collect();
    let native_status: Vec<u16> = (1..=5).map(|id| native.post(&late(id)).status).collect();
    assert_eq!(ours_status, [200, 200, 200, 429, 429]);
    assert_eq!(ours.up.calls("search_docs").unwrap(), 3);
    assert_eq!(
        native_status, [200; 5],
        "the native filter now sees the late tool name"
    );
    assert_eq!(native.up.calls("search_docs").unwrap(), 5);
    // With the name first, the native filter counts it: the difference is
    // where the name is.
    let early = tools_call(6, "search_docs");
    for _ in 0..3 {
        assert_eq!(native.post(&early).status, 200);
    }
    assert_eq!(native.post(&early).status, 429);
}
