//! MCP 2026-07-28 routing headers through the real Envoy: requests whose
//! headers and body disagree are refused before the rate-limit service and
//! the MCP server; the opt-in header fast path calls the service from the
//! headers without buffering; protocol versions decide about batches; and
//! the official Python SDK, which speaks 2026-07-28, works through both.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use e2e::fixtures::limits;
use e2e::sdk::{Scenario, SdkClient};
use e2e::services::McpServerOptions;
use e2e::stack::{self as stack, Stack};
use e2e::{DevRls, Envoy, McpServer, Request, Response};
use serde_json::{json, Value};
use std::sync::LazyLock;

/// dev-rls runs on a frozen clock (the harness's default), so no window rolls
/// over during a test and the counts are exact at any time of day.
static LIMITS: LazyLock<String> = LazyLock::new(|| limits(3, 1000));

/// The fast path on, with the body cap far below the bodies sent, and the
/// `tool_name` argument of `call_tool` known as `Mcp-Param-ToolName`.
const FAST: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,
    "header_fast_path":true,"max_body_bytes":1024,
    "param_headers":[{"tool":"call_tool","argument":"tool_name","header":"ToolName"}]}"#;

const DEFAULT: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000}"#;

const MODERN: &str = "2026-07-28";

/// Starts the usual stack with this test file's limits.
fn start(plugin: &str) -> Stack {
    Stack::start(plugin, LIMITS.as_str())
}

/// A `tools/call` as a 2026-07-28 client sends it, with `padding` bytes of
/// arguments.
fn modern_call(id: u64, tool: &str, args: Value, padding: usize) -> String {
    let mut args = args;
    args["padding"] = json!("x".repeat(padding));
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": args,
                   "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}}
    })
    .to_string()
}

fn modern_headers(tool: &str) -> Vec<(&str, &str)> {
    vec![
        ("mcp-protocol-version", MODERN),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", tool),
    ]
}

fn assert_mismatch(resp: &Response, id: Value) {
    assert_eq!(resp.status, 400, "{resp:?}");
    let body = resp.json();
    assert_eq!(body["error"]["code"], -32020, "{body}");
    assert_eq!(body["error"]["message"], "Header mismatch");
    assert_eq!(body["id"], id);
}

#[test]
fn mismatching_headers_are_refused_before_the_service_and_the_server() {
    let s = start(DEFAULT);
    let body = modern_call(1, "get_weather", json!({"city": "Oslo"}), 0);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        // Counted as one tool, executed as another: the confused deputy.
        vec![
            ("mcp-protocol-version", MODERN),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "search_docs"),
        ],
        vec![
            ("mcp-protocol-version", MODERN),
            ("MCP-METHOD", "tools/list"),
            ("mcp-name", "get_weather"),
        ],
        // Base64 of "search_docs".
        vec![
            ("mcp-protocol-version", MODERN),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "=?base64?c2VhcmNoX2RvY3M=?="),
        ],
        // Required on 2026-07-28.
        vec![
            ("mcp-protocol-version", MODERN),
            ("Mcp-Method", "tools/call"),
        ],
        // The body says another version.
        vec![
            ("mcp-protocol-version", "2027-01-01"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "get_weather"),
        ],
    ];
    for headers in &cases {
        assert_mismatch(&s.post_with(&body, headers), json!(1));
    }
    // An orphan Mcp-Name on a method without a name.
    let list = r#"{"jsonrpc":"2.0","id":"l","method":"tools/list"}"#;
    assert_mismatch(
        &s.post_with(list, &[("Mcp-Method", "tools/list"), ("Mcp-Name", "x")]),
        json!("l"),
    );
    assert_eq!(s.stat("header_mismatch"), cases.len() as u64 + 1);
    assert_eq!(s.rls.calls().unwrap(), 0);
    assert_eq!(s.up.requests().unwrap(), 0);
    // Agreeing headers, plain or Base64, pass and are counted.
    let ok = s.post_with(&body, &modern_headers("=?base64?Z2V0X3dlYXRoZXI=?="));
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(s.up.calls("get_weather").unwrap(), 1);
    assert_eq!(s.rls.calls().unwrap(), 1);
}

#[test]
fn batches_are_refused_from_protocol_2025_06_18_on() {
    let s = start(DEFAULT);
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather"}},
                    {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_weather"}}]"#;
    for version in ["2025-06-18", "2025-11-25"] {
        let resp = s.post_with(batch, &[("mcp-protocol-version", version)]);
        assert_eq!(resp.status, 400, "{version}: {resp:?}");
        assert_eq!(resp.json()["error"]["code"], -32600);
    }
    assert_eq!(s.up.requests().unwrap(), 0);
    // 2025-03-26 (no header, or said explicitly) allows them.
    assert_eq!(s.post_with(batch, &[]).status, 200);
    assert_eq!(
        s.post_with(batch, &[("mcp-protocol-version", "2025-03-26")])
            .status,
        200
    );
    assert_eq!(s.up.calls("get_weather").unwrap(), 4);
}

#[test]
fn fast_path_calls_the_service_once_per_request_without_parsing() {
    let s = start(FAST);
    // Bodies four times over max_body_bytes: the body path would answer 413.
    for i in 1..=3 {
        let resp = s.post_with(
            &modern_call(i, "search_docs", json!({"query": "q"}), 4096),
            &modern_headers("search_docs"),
        );
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.json()["id"], i);
    }
    assert_eq!(s.rls.calls().unwrap(), 3);
    assert_eq!(s.stat("fast_path"), 3);
    assert_eq!(s.stat("inspected"), 0);
    assert_eq!(s.stat("body_too_large"), 0);
    // The denial of a body over the cap is sent without reading it: its id
    // is null (hardening.rs shows a denial within the cap keeping its id).
    let resp = s.post_with(
        &modern_call(4, "search_docs", json!({"query": "q"}), 4096),
        &modern_headers("search_docs"),
    );
    assert_eq!(resp.status, 429, "{resp:?}");
    let retry = resp.header("retry-after").unwrap().to_owned();
    assert_eq!(
        resp.text(),
        format!(
            r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":429,"message":"Rate limit exceeded","data":{{"retryAfterSeconds":{retry}}}}}}}"#
        )
    );
    // call_tool: the inner tool comes from Mcp-Param-ToolName, same bucket.
    let mut headers = modern_headers("call_tool");
    headers.push(("Mcp-Param-ToolName", "search_docs"));
    let wrapped = modern_call(
        5,
        "call_tool",
        json!({"tool_name": "search_docs", "parameters": {}}),
        4096,
    );
    // (Denied by the service, or again by the over-limit cache: the
    // service has just denied the same descriptor.)
    assert_eq!(s.post_with(&wrapped, &headers).status, 429);
    let cached = s.stat("over_limit_cached");
    assert!(cached <= 1);
    let mut headers = modern_headers("call_tool");
    headers.push(("mcp-param-toolname", "get_weather"));
    let wrapped = modern_call(
        6,
        "call_tool",
        json!({"tool_name": "get_weather", "parameters": {"city": "Oslo"}}),
        4096,
    );
    assert_eq!(s.post_with(&wrapped, &headers).status, 200);
    let calls = s.rls.calls().unwrap();
    assert_eq!(calls + cached, 6);
    assert_eq!(s.stat("fast_path"), 6);
    assert_eq!(s.stat("inspected"), 0);
    let sent: Value = Request::get("/requests")
        .send(s.rls.admin_addr())
        .unwrap()
        .json();
    let tools: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["descriptors"][0]["entries"][0]["value"].as_str().unwrap())
        .collect();
    // search_docs for each call that asked, then get_weather.
    let mut want = vec!["search_docs"; calls as usize - 1];
    want.push("get_weather");
    assert_eq!(tools, want);
    // The upstream got the allowed requests whole.
    assert_eq!(s.up.calls("search_docs").unwrap(), 3);
    assert_eq!(s.up.calls("get_weather").unwrap(), 1);
    // Methods without a descriptor pass from the headers, no call at all.
    let list =
        json!({"jsonrpc":"2.0","id":7,"method":"tools/list","params":{"padding":"x".repeat(4096)}})
            .to_string();
    let resp = s.post_with(
        &list,
        &[
            ("mcp-protocol-version", MODERN),
            ("Mcp-Method", "tools/list"),
        ],
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(s.rls.calls().unwrap(), calls);
}

#[test]
fn fast_path_falls_back_to_the_body_when_headers_do_not_suffice() {
    let s = start(FAST);
    // Older protocol version: the body path (and its cap) applies.
    let old = [
        ("mcp-protocol-version", "2025-11-25"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "get_weather"),
    ];
    let resp = s.post_with(&modern_call(1, "get_weather", json!({}), 4096), &old);
    assert_eq!(resp.status, 413, "{resp:?}");
    // A meta-tool call without the header naming its inner tool is read
    // from the body, which must then carry the mirrored header too.
    let small = modern_call(
        2,
        "call_tool",
        json!({"tool_name": "get_weather", "parameters": {"city": "Oslo"}}),
        0,
    );
    let resp = s.post_with(&small, &modern_headers("call_tool"));
    assert_mismatch(&resp, json!(2));
    assert_eq!(s.stat("fast_path"), 0);
    assert_eq!(s.rls.calls().unwrap(), 0);
    assert_eq!(s.up.requests().unwrap(), 0);
}

/// The official Python SDK (2.3.0) negotiates 2026-07-28 with this server
/// and sends `Mcp-Method`, `Mcp-Name` and, for `call_tool`, the
/// `Mcp-Param-ToolName` header its schema asks for.
fn python_sdk_through(plugin: &str) -> (Envoy, DevRls, McpServer, Value, Value) {
    let rls = DevRls::start(&[LIMITS.as_str()]).unwrap();
    let server = McpServer::start(McpServerOptions {
        json_response: true,
        stateless: false,
    })
    .unwrap();
    let yaml = stack::render_config(
        &stack::shipped("envoy.yaml").unwrap(),
        rls.port(),
        server.port(),
        plugin,
        &[],
    )
    .unwrap();
    let envoy = Envoy::start(&yaml).unwrap();
    let url = format!("http://{}/mcp", envoy.listener_addr().unwrap());
    let direct = SdkClient::Python.run(&url, Scenario::Direct).unwrap();
    let wrapped = SdkClient::Python.run(&url, Scenario::CallTool).unwrap();
    (envoy, rls, server, direct, wrapped)
}

fn assert_sdk_limited(direct: &Value, wrapped: &Value) {
    assert_eq!(direct["protocol_version"], MODERN, "{direct:#}");
    assert_eq!(direct["allowed"], 3, "{direct:#}");
    assert_eq!(direct["error"]["type"], "MCPError", "{direct:#}");
    assert_eq!(direct["error"]["code"], 429, "{direct:#}");
    assert!(
        direct["error"]["data"]["retryAfterSeconds"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(direct["after"]["ok"], true, "{direct:#}");
    // call_tool of search_docs finds the same bucket empty.
    assert_eq!(wrapped["allowed"], 0, "{wrapped:#}");
    assert_eq!(wrapped["error"]["code"], 429, "{wrapped:#}");
    assert_eq!(wrapped["after"]["ok"], true, "{wrapped:#}");
}

#[test]
fn python_sdk_on_2026_07_28_passes_header_validation() {
    let (envoy, rls, server, direct, wrapped) = python_sdk_through(DEFAULT);
    assert_sdk_limited(&direct, &wrapped);
    assert_eq!(envoy.stat("wasmcustom.mcp_ratelimit.header_mismatch"), 0);
    assert_eq!(envoy.stat("wasmcustom.mcp_ratelimit.fast_path"), 0);
    // Each call asked the service, or was denied again by the over-limit
    // cache.
    let cached = envoy.stat("wasmcustom.mcp_ratelimit.over_limit_cached");
    assert!(rls.calls().unwrap() + cached >= 7);
    assert_eq!(server.runs("search_docs").unwrap(), 3);
}

#[test]
fn python_sdk_on_2026_07_28_takes_the_fast_path() {
    let plugin = FAST.replace(r#""max_body_bytes":1024,"#, "");
    let (envoy, rls, server, direct, wrapped) = python_sdk_through(&plugin);
    assert_sdk_limited(&direct, &wrapped);
    // Every tools/call, including call_tool (through Mcp-Param-ToolName),
    // was judged from its headers; the other methods passed from theirs.
    let tool_calls = 3 + 1 + 1 + 1 + 1; // allowed, denied, after; denied, after
                                        // Each asked the service, or was denied again by the over-limit cache.
    let cached = envoy.stat("wasmcustom.mcp_ratelimit.over_limit_cached");
    assert_eq!(rls.calls().unwrap() + cached, tool_calls);
    assert!(envoy.stat("wasmcustom.mcp_ratelimit.fast_path") >= tool_calls);
    assert_eq!(envoy.stat("wasmcustom.mcp_ratelimit.inspected"), 0);
    assert_eq!(server.runs("search_docs").unwrap(), 3);
}
