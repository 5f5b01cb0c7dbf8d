//! Tests of the harness itself: the `mcp-upstream` stand-in through the raw
//! HTTP client (no Envoy, no dev-rls needed), and one Envoy smoke test.

// Test code: failing loudly is the point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use e2e::http::{send_raw, Conn, Request};
use e2e::{post_json, render, DevRls, Envoy, EnvoyOptions, McpUpstream, RlsClock, CLOCK_AT};
use serde_json::{json, Value};
use std::time::Duration;

fn upstream() -> McpUpstream {
    McpUpstream::start_bin(env!("CARGO_BIN_EXE_mcp-upstream")).unwrap()
}

fn rpc(up: &McpUpstream, body: &str) -> e2e::Response {
    post_json(up.addr(), "/mcp", body, &[]).unwrap()
}

fn process_gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn initialize_returns_session_and_echoes_version() {
    let up = upstream();
    let resp = rpc(
        &up,
        r#"{"jsonrpc":"2.0","id":"init-1","method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let session = resp.header("mcp-session-id").expect("session id");
    assert_eq!(session.len(), 32);
    assert!(session.chars().all(|c| c.is_ascii_hexdigit()));
    let v = resp.json();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], "init-1");
    assert_eq!(v["result"]["protocolVersion"], "2025-03-26");
    assert_eq!(v["result"]["capabilities"], json!({"tools": {}}));
    assert_eq!(
        v["result"]["serverInfo"],
        json!({"name": "mcp-upstream", "version": "0.1.0"})
    );

    // Without a requested version, the default one.
    let v = rpc(&up, r#"{"jsonrpc":"2.0","id":2,"method":"initialize"}"#).json();
    assert_eq!(v["result"]["protocolVersion"], "2025-06-18");

    // The id is echoed byte for byte.
    let resp = rpc(
        &up,
        r#"{"jsonrpc":"2.0","id":12345678901234567890123,"method":"ping"}"#,
    );
    assert!(
        resp.text().contains(r#""id":12345678901234567890123"#),
        "{resp:?}"
    );
}

#[test]
fn notifications_and_http_methods() {
    let up = upstream();
    let resp = rpc(
        &up,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(resp.status, 202);
    assert!(resp.body.is_empty());
    // A JSON-RPC response from the client.
    let resp = rpc(&up, r#"{"jsonrpc":"2.0","id":7,"result":{}}"#);
    assert_eq!(resp.status, 202);

    let resp = Request::get("/mcp").send(up.addr()).unwrap();
    assert_eq!(resp.status, 405);
    let resp = Request::new("DELETE", "/mcp")
        .header("mcp-session-id", "abc")
        .send(up.addr())
        .unwrap();
    assert_eq!(resp.status, 200);
}

#[test]
fn tools_list_and_calls() {
    let up = upstream();
    let v = rpc(&up, r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).json();
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["search_docs", "get_weather", "find_tool", "call_tool"]
    );
    for t in v["result"]["tools"].as_array().unwrap() {
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
    }

    let v = rpc(
        &up,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Oslo"}}}"#,
    )
    .json();
    assert_eq!(
        v["result"],
        json!({"content": [{"type": "text", "text": "get_weather called"}], "isError": false})
    );

    let v = rpc(
        &up,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs","parameters":{"query":"q"}}}}"#,
    )
    .json();
    assert_eq!(v["id"], 3);
    assert_eq!(
        v["result"]["content"][0]["text"],
        "search_docs called via call_tool"
    );

    let v = rpc(
        &up,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"no_such_tool","arguments":{}}}"#,
    )
    .json();
    assert_eq!(v["error"]["code"], -32602);
    assert_eq!(v["id"], 4);

    let v = rpc(&up, r#"{"jsonrpc":"2.0","id":5,"method":"prompts/list"}"#).json();
    assert_eq!(v["error"]["code"], -32601);

    let stats = up.stats().unwrap();
    assert_eq!(stats["calls"]["get_weather"], 1);
    assert_eq!(stats["calls"]["search_docs"], 1);
    assert_eq!(stats["calls"]["no_such_tool"], 1);
    assert_eq!(stats["methods"]["tools/call"], 3);
}

#[test]
fn batch_returns_array_of_responses() {
    let up = upstream();
    let resp = rpc(
        &up,
        r#"[
            {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"find_tool","arguments":{"query":"x"}}},
            {"jsonrpc":"2.0","method":"notifications/initialized"},
            {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"get_weather","parameters":{"city":"Rome"}}}}
        ]"#,
    );
    assert_eq!(resp.status, 200);
    let v = resp.json();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["id"], 1);
    assert_eq!(arr[0]["result"]["content"][0]["text"], "find_tool called");
    assert_eq!(arr[1]["id"], 2);
    assert_eq!(
        arr[1]["result"]["content"][0]["text"],
        "get_weather called via call_tool"
    );
    assert_eq!(up.calls("find_tool").unwrap(), 1);
    assert_eq!(up.calls("get_weather").unwrap(), 1);
    assert_eq!(up.requests().unwrap(), 1);
}

#[test]
fn invalid_json_is_parse_error_400() {
    let up = upstream();
    let resp = rpc(&up, r#"{"jsonrpc":"2.0","id":1,"method":"#);
    assert_eq!(resp.status, 400);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v = resp.json();
    assert_eq!(v["error"]["code"], -32700);
    assert_eq!(v["id"], Value::Null);
    let stats = up.stats().unwrap();
    assert_eq!(stats["requests"], 1);
    assert_eq!(stats["calls"], json!({}));
}

#[test]
fn chunked_request_body_with_trailers() {
    let up = upstream();
    let body = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"search_docs","arguments":{"query":"chunks"}}}"#;
    let (a, rest) = body.split_at(20);
    let (b, c) = rest.split_at(40);
    let resp = Request::post("/mcp")
        .header("content-type", "application/json")
        .header("x-dup", "one")
        .header("x-dup", "two")
        .chunks([a, b, c])
        .chunk_delay(Duration::from_millis(30))
        .trailer("x-trailer", "t")
        .send(up.addr())
        .unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    let v = resp.json();
    assert_eq!(v["id"], 9);
    assert_eq!(v["result"]["content"][0]["text"], "search_docs called");
    let stats = up.stats().unwrap();
    assert_eq!(stats["calls"]["search_docs"], 1);
    assert_eq!(stats["last_headers"]["transfer-encoding"], "chunked");
    assert_eq!(stats["last_headers"]["x-dup"], "one, two");
    assert_eq!(stats["last_body"], body);
}

#[test]
fn stats_and_reset() {
    let up = upstream();
    let stats = up.stats().unwrap();
    assert_eq!(
        stats,
        json!({"requests": 0, "incomplete": 0, "receiving": 0, "calls": {}, "methods": {}, "last_headers": {}, "last_body": ""})
    );
    post_json(
        up.addr(),
        "/mcp",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Lima"}}}"#,
        &[("X-Custom-Header", "Value-1"), ("mcp-session-id", "s1")],
    )
    .unwrap();
    rpc(&up, r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#);
    // Keep-alive: two requests on one connection.
    let mut conn = Conn::open(up.addr()).unwrap();
    for id in 3..5 {
        let req = Request::post("/mcp").json(&format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"get_weather","arguments":{{"city":"x"}}}}}}"#
        ));
        let resp = conn.send(&req).unwrap();
        assert_eq!(resp.json()["id"], id);
    }
    conn.close();

    let stats = up.stats().unwrap();
    assert_eq!(stats["requests"], 4);
    assert_eq!(stats["calls"], json!({"get_weather": 3}));
    assert_eq!(stats["methods"], json!({"tools/call": 3, "tools/list": 1}));
    // Last headers are those of the last POST, names lowercased.
    assert_eq!(stats["last_headers"]["content-type"], "application/json");
    assert!(stats["last_headers"].get("x-custom-header").is_none());

    up.reset().unwrap();
    let stats = up.stats().unwrap();
    assert_eq!(stats["requests"], 0);
    assert_eq!(stats["calls"], json!({}));

    post_json(
        up.addr(),
        "/mcp",
        r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
        &[("X-Custom-Header", "Value-1")],
    )
    .unwrap();
    let stats = up.stats().unwrap();
    assert_eq!(stats["last_headers"]["x-custom-header"], "Value-1");
    assert_eq!(
        stats["last_headers"]["accept"],
        "application/json, text/event-stream"
    );
}

/// Waits until `up` is reading the body of one POST: its head has arrived.
fn wait_receiving(up: &McpUpstream) {
    e2e::wait_for(
        "the upstream to read a body",
        Duration::from_secs(5),
        || (up.receiving().unwrap() == 1).then_some(()),
    )
    .unwrap();
}

/// Waits until `up` has given up on `n` bodies in all.
fn wait_incomplete(up: &McpUpstream, n: u64) {
    e2e::wait_for(
        &format!("{n} incomplete bodies"),
        Duration::from_secs(5),
        || (up.incomplete().unwrap() == n && up.receiving().unwrap() == 0).then_some(()),
    )
    .unwrap();
}

#[test]
fn incomplete_bodies_are_not_counted() {
    let up = upstream();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Nowhere"}}}"#;

    // Content-length body cut short, then reset.
    let mut conn = Conn::open(up.addr()).unwrap();
    conn.send_partial(&Request::post("/mcp").json(body), 30)
        .unwrap();
    wait_receiving(&up);
    conn.abort();
    wait_incomplete(&up, 1);

    // Content-length body cut short, then closed gracefully.
    let mut conn = Conn::open(up.addr()).unwrap();
    conn.send_partial(&Request::post("/mcp").json(body), body.len() - 1)
        .unwrap();
    wait_receiving(&up);
    conn.close();
    wait_incomplete(&up, 2);

    // Chunked body without its last chunk, then reset.
    let mut conn = Conn::open(up.addr()).unwrap();
    let (a, b) = body.split_at(50);
    conn.send_partial(
        &Request::post("/mcp")
            .header("content-type", "application/json")
            .chunks([a, b]),
        2,
    )
    .unwrap();
    wait_receiving(&up);
    conn.abort();
    wait_incomplete(&up, 3);

    // The server saw all three end, and counted none of them as a request.
    let stats = up.stats().unwrap();
    assert_eq!(stats["requests"], 0, "{stats}");
    assert_eq!(stats["calls"], json!({}), "{stats}");
    assert_eq!(stats["methods"], json!({}), "{stats}");

    // The server is fine afterwards.
    let resp = rpc(&up, body);
    assert_eq!(resp.status, 200);
    assert_eq!(up.calls("get_weather").unwrap(), 1);
    assert_eq!(up.incomplete().unwrap(), 3);
}

#[test]
fn raw_bytes_and_read_timeout() {
    let up = upstream();
    // Fully raw request.
    let resp = send_raw(
        up.addr(),
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["result"], json!({}));

    // A body that never completes: the client times out instead of hanging.
    let mut conn = Conn::open(up.addr()).unwrap();
    conn.send_partial(&Request::post("/mcp").json(r#"{"id":1}"#), 3)
        .unwrap();
    let started = std::time::Instant::now();
    let err = conn
        .read_response(Duration::from_millis(300), false)
        .unwrap_err();
    assert!(err.message().contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn upstream_stops_cleanly_and_is_reaped() {
    let mut up = upstream();
    let pid = up.pid();
    let status = up.stop().unwrap();
    assert!(status.success(), "{status} {}", up.logs());
    assert!(process_gone(pid));

    let up = upstream();
    let pid = up.pid();
    drop(up);
    assert!(process_gone(pid));
}

const MINIMAL_ENVOY: &str = r#"
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: {{ADMIN_PORT}} }
static_resources:
  listeners:
  - name: main
    address:
      socket_address: { address: 127.0.0.1, port_value: {{LISTENER_PORT}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "hello from envoy" } }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#;

#[test]
fn envoy_starts_with_minimal_config() {
    // Fixed ports chosen by the harness (retried once on a bind race).
    let (envoy, ports) = Envoy::start_on_free_ports(
        |p| {
            render(
                MINIMAL_ENVOY,
                &[
                    ("{{ADMIN_PORT}}", p.admin.to_string()),
                    ("{{LISTENER_PORT}}", p.listener.to_string()),
                ],
            )
        },
        &EnvoyOptions::default(),
    )
    .unwrap();
    assert_eq!(envoy.admin_addr().port(), ports.admin);
    assert_eq!(envoy.listener_addr().unwrap().port(), ports.listener);
    let resp = Request::get("/anything")
        .send(("127.0.0.1", ports.listener))
        .unwrap();
    assert_eq!(resp.status, 200, "{resp:?}\n{}", envoy.logs());
    assert_eq!(resp.text(), "hello from envoy");
    let ready = envoy.admin_get("/ready").unwrap();
    assert_eq!(ready.status, 200);
    assert!(envoy.is_ready());
    assert!(envoy.stat("http.ingress.downstream_rq_2xx") >= 1);
    assert_eq!(envoy.stat("no.such.stat"), 0);
    let pid = envoy.pid();
    drop(envoy);
    assert!(process_gone(pid), "envoy {pid} still there after drop");

    // Port 0 everywhere: the harness reads the bound addresses from admin.
    let yaml = render(
        MINIMAL_ENVOY,
        &[
            ("{{ADMIN_PORT}}", "0".into()),
            ("{{LISTENER_PORT}}", "0".into()),
        ],
    )
    .unwrap();
    let mut envoy = Envoy::start(&yaml).unwrap();
    let addr = envoy.listener_addr_named("main").unwrap();
    assert_ne!(addr.port(), 0);
    assert_eq!(Request::get("/").send(addr).unwrap().status, 200);
    let pid = envoy.pid();
    envoy.stop().unwrap();
    assert!(process_gone(pid));

    // Validation and refused configs.
    let (ok, out) = Envoy::validate(&yaml).unwrap();
    assert!(ok, "{out}");
    let bad = yaml.replace(
        "direct_response: { status: 200",
        "direct_response: { status: 20",
    );
    let (ok, out) = Envoy::validate(&bad).unwrap();
    assert!(!ok, "{out}");
    let out = Envoy::try_start_expect_failure(&bad, Duration::from_secs(30)).unwrap();
    assert!(out.contains("status"), "{out}");
    assert!(Envoy::try_start_expect_failure(&yaml, Duration::from_secs(30)).is_err());
}

const ONE_LIMIT: &str =
    "domain: mcp\ndescriptors:\n  - key: tool\n    rate_limit: {unit: day, requests_per_unit: 1}\n";

#[test]
fn dev_rls_runs_on_a_frozen_clock_unless_told_otherwise() {
    // Frozen at CLOCK_AT by default, whichever way it is started.
    let rls = DevRls::start(&[ONE_LIMIT]).unwrap();
    assert_eq!(rls.clock().unwrap(), (CLOCK_AT.to_string(), true));
    let moved = rls.advance_clock(1_500).unwrap();
    assert_eq!(moved, format!("{}.5", CLOCK_AT + 1));
    assert_eq!(rls.clock().unwrap(), (moved, true));
    let restarted = DevRls::start_on(0, &[ONE_LIMIT]).unwrap();
    assert_eq!(restarted.clock().unwrap(), (CLOCK_AT.to_string(), true));

    let at = RlsClock::FrozenAt("1767225600.25".to_owned());
    let rls = DevRls::start_with_clock(at, 0, &[ONE_LIMIT]).unwrap();
    assert_eq!(rls.clock().unwrap(), ("1767225600.25".to_owned(), true));

    // The real clock, as `make run` uses, cannot be moved.
    let real = DevRls::start_with_clock(RlsClock::Real, 0, &[ONE_LIMIT]).unwrap();
    let (now, frozen) = real.clock().unwrap();
    assert!(!frozen);
    assert!(now.parse::<u64>().unwrap() > CLOCK_AT, "{now}");
    let err = real.advance_clock(1).unwrap_err();
    assert!(err.message().contains("409"), "{err}");
}
