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
//!
//! A second test compares the services' own answers, below the filter:
//! every field of each descriptor status (code, `current_limit`,
//! `limit_remaining`, `duration_until_reset`), for one sequence of requests
//! sent to dev-rls in-process and to envoyproxy/ratelimit's JSON endpoint.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fmt::Write as _;
use std::time::Duration;

use dev_rls::rls_proto::rate_limit_response::rate_limit::Unit;
use dev_rls::rls_proto::rate_limit_response::Code;
use dev_rls::rls_proto::RateLimitRequest;
use dev_rls::{ConfigSource, LoadOptions, RateLimitConfig};
use e2e::fixtures::tools_call;
use e2e::ratelimit::{unix_now, window_with};
use e2e::stack::{render_config, shipped};
use e2e::{post_json, DevRls, Envoy, McpUpstream, RateLimitService, Redis, RlsClock};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::google::protobuf::UInt64Value;
use serde_json::{json, Value};

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
/// Every request is the services' to answer: the over-limit cache, whose
/// repeats depend on how fast the sequence runs, is off.
const PLUGINS: [&str; 2] = [
    r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":3000,"failure_mode_deny":true,"over_limit_cache":false}"#,
    r#"{"domain":"mcp_users","rls_cluster":"ratelimit","timeout_ms":3000,"failure_mode_deny":true,"over_limit_cache":false,
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

/// One rate-limit request: a domain and its descriptors, each entries and
/// an optional per-descriptor `hits_addend`.
type Ask = (
    &'static str,
    Vec<(Vec<(&'static str, &'static str)>, Option<u64>)>,
);

fn asks() -> Vec<Ask> {
    let d = |entries: &[(&'static str, &'static str)], hits: Option<u64>| (entries.to_vec(), hits);
    let sd = [("tool", "search_docs")];
    vec![
        ("mcp", vec![d(&sd, None)]),
        ("mcp", vec![d(&sd, Some(2))]),
        ("mcp", vec![d(&sd, None)]),
        (
            "mcp",
            vec![d(&[("tool", "get_weather")], Some(5)), d(&sd, Some(0))],
        ),
        (
            "mcp",
            vec![
                d(&[("tool", "get_weather")], None),
                d(&[("tool", "other")], None),
            ],
        ),
        ("mcp", vec![d(&[("nothing", "here")], None)]),
        ("mcp", vec![d(&[("tool", "get_weather")], Some(60))]),
        (
            "mcp_users",
            vec![d(&[("user", "alice"), ("tool", "search_docs")], None)],
        ),
        (
            "mcp_users",
            vec![d(&[("user", "alice"), ("tool", "get_weather")], Some(9))],
        ),
        (
            "mcp_users",
            vec![d(&[("user", "vip"), ("tool", "search_docs")], Some(4))],
        ),
        (
            "mcp_users",
            vec![d(&[("user", "vip"), ("tool", "search_docs")], None)],
        ),
        (
            "mcp_users",
            vec![
                d(&[("tenant", "team_a")], Some(3)),
                d(&[("tenant", "team_b")], None),
            ],
        ),
        ("mcp_users", vec![d(&[("tenant", "team_a")], None)]),
        ("mcp_users", vec![d(&[("tenant", "shadow")], Some(2))]),
        ("mcp_users", vec![d(&[("user", "bob")], None)]),
    ]
}

/// A status as one line: code, limit, remaining, and the reset as
/// `<reset>` when it is what is left of the limit's window.
fn status_line(
    code: &str,
    limit: Option<(u64, &str)>,
    remaining: u64,
    reset: Option<u64>,
    left: &dyn Fn(u64) -> bool,
) -> String {
    let limit = limit.map_or("-".to_owned(), |(n, unit)| format!("{n}/{unit}"));
    let reset = match reset {
        None => "-".to_owned(),
        Some(r) if left(r) => "<reset>".to_owned(),
        Some(r) => r.to_string(),
    };
    format!("{code} {limit} remaining {remaining} reset {reset}")
}

fn unit_secs(unit: &str) -> u64 {
    match unit {
        "SECOND" => 1,
        "MINUTE" => 60,
        "HOUR" => 3600,
        _ => 86_400,
    }
}

#[test]
fn the_services_own_answers_agree() {
    let limits = shipped("ratelimit.yaml").unwrap();
    let config = RateLimitConfig::from_sources(
        &[
            ConfigSource::new("limits-0.yaml", &limits),
            ConfigSource::new("limits-1.yaml", USERS),
        ],
        LoadOptions::default(),
    )
    .unwrap();
    let dev = dev_rls::DevRls::new(config).unwrap();
    let redis = Redis::start().unwrap();
    let real = RateLimitService::start(redis.port(), &[&limits, USERS]).unwrap();
    window_with(60, Duration::from_secs(15));
    let mut lines = Vec::new();
    for (i, (domain, descriptors)) in asks().into_iter().enumerate() {
        let t0 = unix_now();
        let request = RateLimitRequest {
            domain: domain.to_owned(),
            descriptors: descriptors
                .iter()
                .map(|(entries, hits)| RateLimitDescriptor {
                    entries: entries
                        .iter()
                        .map(|(k, v)| Entry {
                            key: (*k).to_owned(),
                            value: (*v).to_owned(),
                        })
                        .collect(),
                    hits_addend: hits.map(|value| UInt64Value { value }),
                    ..Default::default()
                })
                .collect(),
            hits_addend: 0,
        };
        let dev_answer = dev.should_rate_limit(&request).unwrap();
        let json_request = json!({
            "domain": domain,
            "descriptors": descriptors.iter().map(|(entries, hits)| {
                let mut d = json!({"entries": entries.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>()});
                if let Some(h) = hits {
                    d["hitsAddend"] = json!(h);
                }
                d
            }).collect::<Vec<_>>(),
        });
        let real_answer = real.json(&json_request).unwrap();
        let t1 = unix_now();
        // The reset of a window of `unit` seconds, between t0 and t1.
        let in_window = |unit: u64| {
            move |r: u64| {
                let left = |t: f64| unit - (t.floor() as u64) % unit;
                (left(t1)..=left(t0)).contains(&r)
            }
        };
        let dev_code = |c: i32| {
            Code::try_from(c)
                .map(|c| c.as_str_name().to_owned())
                .unwrap_or_default()
        };
        let dev_line: Vec<String> = std::iter::once(dev_code(dev_answer.overall_code))
            .chain(dev_answer.statuses.iter().map(|s| {
                let limit = s.current_limit.as_ref().map(|l| {
                    let unit = Unit::try_from(l.unit)
                        .map(|u| u.as_str_name())
                        .unwrap_or("?");
                    (u64::from(l.requests_per_unit), unit)
                });
                let unit = limit.map_or(60, |(_, u)| unit_secs(u));
                let reset = s.duration_until_reset.as_ref().map(|d| {
                    let secs = u64::try_from(d.seconds).unwrap_or_default();
                    if d.nanos > 0 {
                        secs + 1
                    } else {
                        secs
                    }
                });
                status_line(
                    &dev_code(s.code),
                    limit,
                    u64::from(s.limit_remaining),
                    reset,
                    &in_window(unit),
                )
            }))
            .collect();
        let real_line: Vec<String> = std::iter::once(
            real_answer["overallCode"]
                .as_str()
                .unwrap_or("UNKNOWN")
                .to_owned(),
        )
        .chain(
            real_answer["statuses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    let limit = s.get("currentLimit").map(|l| {
                        (
                            l["requestsPerUnit"].as_u64().unwrap_or(0),
                            l["unit"].as_str().unwrap_or("UNKNOWN"),
                        )
                    });
                    let unit = limit.map_or(60, |(_, u)| unit_secs(u));
                    let reset = s
                        .get("durationUntilReset")
                        .and_then(Value::as_str)
                        .map(|d| {
                            d.trim_end_matches('s')
                                .parse::<f64>()
                                .map(|f| f.ceil() as u64)
                                .unwrap_or(u64::MAX)
                        });
                    let remaining = s.get("limitRemaining").and_then(Value::as_u64).unwrap_or(0);
                    status_line(
                        s["code"].as_str().unwrap_or("OK"),
                        limit,
                        remaining,
                        reset,
                        &in_window(unit),
                    )
                }),
        )
        .collect();
        lines.push((i, domain, dev_line, real_line));
    }
    drop(real);
    let mut table =
        String::from("| # | domain | dev-rls | envoyproxy/ratelimit |\n|---|---|---|---|\n");
    for (i, domain, d, r) in &lines {
        writeln!(
            table,
            "| {i} | {domain} | {} | {} |",
            d.join("; "),
            r.join("; ")
        )
        .unwrap();
    }
    println!("{table}");
    let differences: Vec<String> = lines
        .iter()
        .filter(|(_, _, d, r)| d != r)
        .map(|(i, _, d, r)| format!("#{i}: dev-rls {d:?}\n     envoyproxy/ratelimit {r:?}"))
        .collect();
    assert!(
        differences.is_empty(),
        "the services differ:\n{}\n{table}",
        differences.join("\n")
    );
    // The sequence reaches what it is meant to.
    assert!(table.contains("OVER_LIMIT 3/MINUTE remaining 0"), "{table}");
    assert!(table.contains("OK 60/MINUTE remaining 59"), "{table}");
}
