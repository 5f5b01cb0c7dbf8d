//! dev-rls (the embedded default of `make run` and the fast tests) and
//! envoyproxy/ratelimit + Redis (production) must answer alike: one sequence
//! of requests goes through Envoy and the filter to each of them, and what
//! the client saw, whether the MCP server was reached and the filter's
//! counters are compared case by case. The test prints both tables and
//! fails on any difference.
//!
//! Both services run on the wall clock (dev-rls with `RlsClock::Real`), so a
//! Retry-After is the same reset for both; it is shown as `<reset>` when it
//! is the seconds left in the minute window at the time of the request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fmt::Write as _;
use std::time::Duration;

use e2e::fixtures::tools_call;
use e2e::ratelimit::{unix_now, window_with};
use e2e::stack::{render_config, shipped};
use e2e::{post_json, DevRls, Envoy, McpUpstream, RateLimitService, Redis, RlsClock};
use serde_json::Value;

/// Limits of a second domain, for what the shipped file does not use:
/// nested keys, a value that overrides a value-less key, `unlimited`,
/// wildcards and shadow mode.
const USERS: &str = r#"
domain: mcp_users
descriptors:
  - key: user
    descriptors:
      - key: tool
        rate_limit: {unit: minute, requests_per_unit: 2}
      - key: tool
        value: get_weather
        rate_limit: {unlimited: true}
  - key: user
    value: vip
    descriptors:
      - key: tool
        rate_limit: {unit: minute, requests_per_unit: 4}
  - key: tenant
    value: team_*
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: tenant
    value: shadow
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
"#;

/// The filter on the shipped limits (Envoy 0) and on [`USERS`] (Envoy 1).
const PLUGINS: [&str; 2] = [
    r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":3000,"failure_mode_deny":true}"#,
    r#"{"domain":"mcp_users","rls_cluster":"ratelimit","timeout_ms":3000,"failure_mode_deny":true,
        "descriptors":[[{"key":"user","header":"x-user"},{"key":"tool","mcp":"tool"}],
                       [{"key":"tenant","header":"x-tenant"}]]}"#,
];

/// One request of the sequence.
struct Case {
    name: String,
    envoy: usize,
    body: String,
    headers: Vec<(&'static str, String)>,
}

fn case(name: &str, envoy: usize, body: String, headers: &[(&'static str, &str)]) -> Case {
    Case {
        name: name.to_owned(),
        envoy,
        body,
        headers: headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    }
}

fn batch(calls: &[String]) -> String {
    format!("[{}]", calls.join(","))
}

fn cases() -> Vec<Case> {
    let mut out = vec![
        case(
            "initialize",
            0,
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#.to_owned(),
            &[],
        ),
        case(
            "tools/list",
            0,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_owned(),
            &[],
        ),
    ];
    for id in 2..=5 {
        out.push(case(
            &format!("search_docs #{}", id - 1),
            0,
            tools_call(id, "search_docs"),
            &[],
        ));
    }
    out.push(case(
        "call_tool -> search_docs",
        0,
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs","parameters":{}}}}"#.to_owned(),
        &[],
    ));
    out.push(case(
        "notification search_docs",
        0,
        r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"search_docs"}}"#.to_owned(),
        &[],
    ));
    out.push(case(
        "batch of 3 get_weather",
        0,
        batch(&[
            tools_call(7, "get_weather"),
            tools_call(8, "get_weather"),
            tools_call(9, "get_weather"),
        ]),
        &[],
    ));
    out.push(case(
        "batch search_docs + get_weather",
        0,
        batch(&[tools_call(10, "search_docs"), tools_call(11, "get_weather")]),
        &[],
    ));
    for i in 1..=3 {
        out.push(case(
            &format!("alice search_docs #{i}"),
            1,
            tools_call(20 + i, "search_docs"),
            &[("x-user", "alice")],
        ));
    }
    for i in 1..=3 {
        out.push(case(
            &format!("alice get_weather #{i} (unlimited)"),
            1,
            tools_call(30 + i, "get_weather"),
            &[("x-user", "alice")],
        ));
    }
    for i in 1..=5 {
        out.push(case(
            &format!("vip search_docs #{i}"),
            1,
            tools_call(40 + i, "search_docs"),
            &[("x-user", "vip")],
        ));
    }
    out.push(case(
        "batch of 2 for bob",
        1,
        batch(&[tools_call(50, "search_docs"), tools_call(51, "search_docs")]),
        &[("x-user", "bob")],
    ));
    out.push(case(
        "bob search_docs after the batch",
        1,
        tools_call(52, "search_docs"),
        &[("x-user", "bob")],
    ));
    for i in 1..=4 {
        out.push(case(
            &format!("tenant team_a #{i}"),
            1,
            tools_call(60 + i, &format!("tool_{i}")),
            &[("x-user", "carol"), ("x-tenant", "team_a")],
        ));
    }
    out.push(case(
        "tenant team_b",
        1,
        tools_call(70, "tool_1"),
        &[("x-user", "dave"), ("x-tenant", "team_b")],
    ));
    out.push(case(
        "tenant other (no limit)",
        1,
        tools_call(71, "tool_1"),
        &[("x-tenant", "other")],
    ));
    for i in 1..=3 {
        out.push(case(
            &format!("tenant shadow #{i}"),
            1,
            tools_call(80 + i, "tool_1"),
            &[("x-tenant", "shadow")],
        ));
    }
    out
}

const COUNTERS: [&str; 4] = ["checked", "ok", "over_limit", "error"];

/// Runs the cases through two Envoys in front of the service on `rls_port`
/// and returns one line per case.
fn run(rls_port: u16) -> Vec<String> {
    let up = McpUpstream::start().unwrap();
    let envoys: Vec<Envoy> = PLUGINS
        .iter()
        .map(|plugin| {
            let yaml = render_config(
                &shipped("envoy.yaml").unwrap(),
                rls_port,
                up.port(),
                plugin,
                &[],
            )
            .unwrap();
            Envoy::start(&yaml).unwrap()
        })
        .collect();
    let addrs: Vec<_> = envoys.iter().map(|e| e.listener_addr().unwrap()).collect();
    let counters = |envoy: &Envoy| -> Vec<u64> {
        COUNTERS
            .iter()
            .map(|c| envoy.stat(&format!("wasmcustom.mcp_ratelimit.{c}")))
            .collect()
    };
    window_with(60, Duration::from_secs(20));
    let mut lines = Vec::new();
    for c in cases() {
        let before = counters(&envoys[c.envoy]);
        let reached_before = up.requests().unwrap();
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let t0 = unix_now();
        let resp = post_json(addrs[c.envoy], "/mcp", &c.body, &headers).unwrap();
        let t1 = unix_now();
        let reached = up.requests().unwrap() - reached_before;
        let after = counters(&envoys[c.envoy]);
        let delta: Vec<String> = COUNTERS
            .iter()
            .zip(after.iter().zip(&before))
            .filter(|(_, (a, b))| a != b)
            .map(|(name, (a, b))| format!("{name}+{}", a - b))
            .collect();
        // The seconds left in the window, as the services compute them.
        let left = |t: f64| 60 - (t.floor() as u64) % 60;
        let retry = resp.header("retry-after").map(|r| match r.parse::<u64>() {
            Ok(n) if (left(t1)..=left(t0)).contains(&n) => "<reset>".to_owned(),
            _ => r.to_owned(),
        });
        let mut body = resp.text();
        if let Some(r) = resp.header("retry-after") {
            body = body.replace(
                &format!("\"retryAfterSeconds\":{r}"),
                "\"retryAfterSeconds\":<reset>",
            );
        }
        // The MCP server's answers differ only in what each call returns.
        if resp.status == 200 {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            body = summary(&v);
        }
        let mut line = String::new();
        write!(
            line,
            "| {} | {} | {} | {} | {} | {} |",
            c.name,
            resp.status,
            retry.unwrap_or_else(|| "-".into()),
            body,
            reached,
            delta.join(" ")
        )
        .unwrap();
        lines.push(line);
    }
    lines
}

/// The ids and outcome of an MCP server answer (one or a batch).
fn summary(v: &Value) -> String {
    let one = |v: &Value| {
        let outcome = if v.get("result").is_some() {
            "result"
        } else {
            "error"
        };
        format!("{}:{outcome}", v["id"])
    };
    match v {
        Value::Array(items) => items.iter().map(one).collect::<Vec<_>>().join(","),
        v => one(v),
    }
}

#[test]
fn dev_rls_and_envoyproxy_ratelimit_answer_alike() {
    let limits = shipped("ratelimit.yaml").unwrap();
    let dev = {
        let rls = DevRls::start_with_clock(RlsClock::Real, 0, &[&limits, USERS]).unwrap();
        run(rls.port())
    };
    let real = {
        let redis = Redis::start().unwrap();
        let svc = RateLimitService::start(redis.port(), &[&limits, USERS]).unwrap();
        let lines = run(svc.port());
        drop(svc);
        lines
    };
    let header = "| case | HTTP | Retry-After | body | reached MCP server | filter counters |\n|---|---|---|---|---|---|";
    println!("dev-rls:\n{header}\n{}\n", dev.join("\n"));
    println!(
        "envoyproxy/ratelimit + Redis:\n{header}\n{}\n",
        real.join("\n")
    );
    let differences: Vec<String> = dev
        .iter()
        .zip(&real)
        .filter(|(d, r)| d != r)
        .map(|(d, r)| format!("dev-rls:              {d}\nenvoyproxy/ratelimit: {r}"))
        .collect();
    assert_eq!(dev.len(), 32, "the README counts 32 requests");
    assert_eq!(dev.len(), real.len());
    assert!(
        differences.is_empty(),
        "the services differ:\n{}",
        differences.join("\n")
    );
    // The sequence does what it is meant to: it hits limits and passes calls.
    let all = dev.join("\n");
    assert!(all.contains("| search_docs #4 | 429 | <reset> |"), "{all}");
    assert!(all.contains("| vip search_docs #5 | 429 |"), "{all}");
    assert!(all.contains("| tenant team_a #4 | 429 |"), "{all}");
    assert!(all.contains("| tenant shadow #3 | 200 |"), "{all}");
    assert!(
        all.contains("| alice get_weather #3 (unlimited) | 200 |"),
        "{all}"
    );
}
