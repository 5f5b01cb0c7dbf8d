//! What the official MCP SDK clients make of the filter's denial, end to
//! end: the real Envoy 1.40 loading the built `.wasm` with the shipped
//! `envoy/envoy.yaml`, dev-rls as the rate-limit service, an MCP server
//! built on the official Python SDK (`e2e/mcp-server/server.py`, in JSON and
//! in SSE response mode), and the official clients:
//! - Python SDK (`mcp`, pinned in `e2e/requirements.txt`), with its default
//!   connection (`server/discover`, protocol 2026-07-28) and with the
//!   `initialize` handshake (2025-11-25);
//! - TypeScript SDK (`@modelcontextprotocol/sdk`, pinned in
//!   `e2e/clients/ts/package.json`), on Node.js.
//!
//! Each client calls `search_docs` (directly or through `call_tool`) until
//! it is denied, then calls `get_weather` on the same session, and reports
//! what its SDK surfaced; these tests hold the SDKs to that report. With
//! HTTP 429 the TypeScript SDK raises a transport error whose code is the
//! HTTP status and keeps the JSON-RPC error only as text; with the
//! `"over_limit": {"http_status": 200}` setting it raises a proper
//! `McpError`. The Python SDK raises `MCPError` with code and data either way.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use e2e::fixtures::limits;
use e2e::{stack, DevRls, Envoy, McpServer, McpServerOptions, Scenario, SdkClient, CLOCK_AT};
use serde_json::{json, Value};
use std::sync::LazyLock;

/// `search_docs` 3 a day, every other tool 1000 a day. dev-rls runs on a
/// frozen clock (the harness's default), so no window rolls over during a
/// test and the counts are exact at any time of day.
static LIMITS: LazyLock<String> = LazyLock::new(|| limits(3, 1000));

/// How many `search_docs` calls the limit allows.
const ALLOWED: u64 = 3;

/// The HTTP status the filter denies with.
#[derive(Debug, Clone, Copy)]
enum Denial {
    /// The default: HTTP 429.
    Http429,
    /// `"over_limit": {"http_status": 200}`, for clients that drop the body
    /// of a non-200 answer.
    Http200,
}

impl Denial {
    fn plugin(self) -> &'static str {
        match self {
            Denial::Http429 => r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000}"#,
            Denial::Http200 => {
                r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"over_limit":{"http_status":200}}"#
            }
        }
    }

    fn status(self) -> u16 {
        match self {
            Denial::Http429 => 429,
            Denial::Http200 => 200,
        }
    }
}

/// How the MCP server answers a POST.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Json,
    Sse,
}

/// Envoy with the filter in front of the SDK-built MCP server.
struct Stack {
    envoy: Envoy,
    rls: DevRls,
    server: McpServer,
    url: String,
    mode: Mode,
    denial: Denial,
    /// `tools/call` POSTs the clients sent so far.
    posts: u64,
    /// Denials the clients saw so far.
    denials: u64,
}

impl Stack {
    fn start(mode: Mode, denial: Denial) -> Stack {
        let rls = DevRls::start(&[LIMITS.as_str()]).unwrap();
        let server = McpServer::start(McpServerOptions {
            json_response: matches!(mode, Mode::Json),
            stateless: false,
        })
        .unwrap();
        let yaml = stack::render_config(
            &stack::shipped("envoy.yaml").unwrap(),
            rls.port(),
            server.port(),
            denial.plugin(),
            &[],
        )
        .unwrap();
        let envoy = Envoy::start(&yaml).unwrap();
        let url = format!("http://{}/mcp", envoy.listener_addr().unwrap());
        Stack {
            envoy,
            rls,
            server,
            url,
            mode,
            denial,
            posts: 0,
            denials: 0,
        }
    }

    /// Runs `client` in `scenario` and checks what every client run must
    /// show, whatever the SDK: connected and listed the tools, exactly
    /// `allowed` calls went through, the next one was denied by the filter
    /// (as seen on the wire: one POST each, nothing sent again by the SDK;
    /// the server's answers in its own response mode, SSE streams with a
    /// progress notification or JSON, the filter's denial in JSON), and
    /// `get_weather` then worked on the same session. Returns the report.
    fn run(&mut self, client: SdkClient, scenario: Scenario, allowed: u64) -> Value {
        let report = client.run(&self.url, scenario).unwrap();
        let ctx = format!("{} {scenario:?}: {report:#}", client.name());
        assert_eq!(report["failure"], Value::Null, "{ctx}");
        let tools = report["tools"].as_array().expect("tools");
        for tool in ["search_docs", "get_weather", "find_tool", "call_tool"] {
            assert!(tools.contains(&json!(tool)), "{tool} not listed: {ctx}");
        }
        assert_eq!(report["allowed"], allowed, "{ctx}");
        assert!(report["error"].is_object(), "never limited: {ctx}");
        // The session still works after the denial.
        assert_eq!(report["after"]["tool"], "get_weather", "{ctx}");
        assert_eq!(report["after"]["ok"], true, "{ctx}");
        assert_eq!(report["after"]["error"], Value::Null, "{ctx}");
        assert_eq!(
            report["after"]["text"], "Oslo: 18 degrees C, light wind",
            "{ctx}"
        );
        // On the wire: the allowed calls, one denied call, the call after.
        let tool = match scenario {
            Scenario::Direct => "search_docs",
            Scenario::CallTool => "call_tool",
        };
        let served = match self.mode {
            Mode::Json => "application/json",
            Mode::Sse => "text/event-stream",
        };
        let mut want: Vec<Value> = (0..allowed)
            .map(|_| json!({"tool": tool, "status": 200, "type": served}))
            .collect();
        want.push(
            json!({"tool": tool, "status": self.denial.status(), "type": "application/json"}),
        );
        want.push(json!({"tool": "get_weather", "status": 200, "type": served}));
        let wire: Vec<Value> = report["wire"]["tools_call"]
            .as_array()
            .expect("wire")
            .iter()
            .map(|c| {
                let media_type = c["content_type"]
                    .as_str()
                    .and_then(|t| t.split(';').next())
                    .map(str::trim);
                json!({"tool": c["tool"], "status": c["status"], "type": media_type})
            })
            .collect();
        assert_eq!(wire, want, "{ctx}");
        assert_eq!(report["wire"]["sdk_retried"], false, "{ctx}");
        // Each call asks for progress. In SSE mode each allowed call's
        // stream carried a progress notification before its result.
        if let Mode::Sse = self.mode {
            assert_eq!(report["progress"], allowed + 1, "{ctx}");
        }
        // Independently of the client's own account: each tools/call POST
        // was asked of the rate-limit service or denied again by the
        // over-limit cache, and the filter denied once per run.
        self.posts += allowed + 2;
        self.denials += 1;
        let cached = self
            .envoy
            .stat("wasmcustom.mcp_ratelimit.over_limit_cached");
        assert_eq!(self.rls.calls().unwrap() + cached, self.posts, "{ctx}");
        assert_eq!(
            self.envoy.stat("wasmcustom.mcp_ratelimit.over_limit") + cached,
            self.denials,
            "{ctx}"
        );
        report
    }

    /// Stops the MCP server as the harness does (SIGTERM): it must exit by
    /// itself, with status 0, within the grace period.
    fn stop_server_cleanly(mut self) {
        let status = self.server.stop().unwrap();
        assert!(status.success(), "{status}\n{}", self.server.logs());
    }

    /// The id the denied `tools/call` was sent with.
    fn denied_id(report: &Value) -> Value {
        let calls = report["wire"]["tools_call"].as_array().unwrap();
        calls[calls.len() - 2]["id"].clone()
    }

    /// How often `search_docs` ran in the MCP server: only the allowed calls
    /// reach it, whichever way they were made.
    fn assert_search_docs_ran(&self, n: u64) {
        assert_eq!(
            self.server.runs("search_docs").unwrap(),
            n,
            "{}",
            self.server.logs()
        );
    }
}

/// `retryAfterSeconds` as the filter sends it: whole seconds, here the rest
/// of the day window from the frozen `CLOCK_AT`.
fn assert_retry_after(data: &Value, ctx: &str) -> u64 {
    assert_eq!(data.as_object().map(|o| o.len()), Some(1), "data: {ctx}");
    let retry = data["retryAfterSeconds"].as_u64().expect(ctx);
    assert_eq!(
        retry,
        86_400 - CLOCK_AT % 86_400,
        "retryAfterSeconds: {ctx}"
    );
    retry
}

/// The Python SDK (either connection): `MCPError` with the JSON-RPC code,
/// message and data, no HTTP status; the same at HTTP 429 and HTTP 200.
fn assert_python_mcp_error(report: &Value) {
    let ctx = report.to_string();
    let error = &report["error"];
    assert_eq!(error["type"], "MCPError", "{ctx}");
    assert_eq!(error["module"], "mcp.shared.exceptions", "{ctx}");
    assert_eq!(error["code"], 429, "{ctx}");
    assert_eq!(error["message"], "Rate limit exceeded", "{ctx}");
    assert_retry_after(&error["data"], &ctx);
    assert_eq!(error["http_status"], Value::Null, "{ctx}");
    assert_eq!(report["sdk_version"], "2.3.0", "{ctx}");
}

/// The TypeScript SDK at HTTP 200: `McpError` with the JSON-RPC code and
/// data; its message is the SDK's `MCP error <code>: <message>`.
fn assert_ts_mcp_error(report: &Value) {
    let ctx = report.to_string();
    let error = &report["error"];
    assert_eq!(error["type"], "McpError", "{ctx}");
    assert_eq!(error["code"], 429, "{ctx}");
    assert_eq!(
        error["message"], "MCP error 429: Rate limit exceeded",
        "{ctx}"
    );
    assert_retry_after(&error["data"], &ctx);
    assert_eq!(error["http_status"], Value::Null, "{ctx}");
    assert_eq!(report["protocol_version"], "2025-11-25", "{ctx}");
    assert_eq!(report["sdk_version"], "1.32.2", "{ctx}");
}

/// The TypeScript SDK at HTTP 429: a transport error, `StreamableHTTPError`,
/// whose `code` is the HTTP status; the JSON-RPC error survives only as the
/// response body inside its message, and it has no `data`.
fn assert_ts_transport_error(report: &Value) {
    let ctx = report.to_string();
    let error = &report["error"];
    assert_eq!(error["type"], "StreamableHTTPError", "{ctx}");
    assert_eq!(error["code"], 429, "{ctx}");
    assert_eq!(error["http_status"], 429, "{ctx}");
    assert_eq!(error["data"], Value::Null, "{ctx}");
    let message = error["message"].as_str().expect("message");
    let body = message
        .strip_prefix("Streamable HTTP error: Error POSTing to endpoint: ")
        .unwrap_or_else(|| panic!("unexpected message: {ctx}"));
    // The text is the filter's exact denial body.
    let denial: Value = serde_json::from_str(body).expect("the denial body");
    let retry = assert_retry_after(&denial["error"]["data"], &ctx);
    assert_eq!(
        denial,
        json!({
            "jsonrpc": "2.0",
            "id": Stack::denied_id(report),
            "error": {"code": 429, "message": "Rate limit exceeded", "data": {"retryAfterSeconds": retry}}
        }),
        "{ctx}"
    );
    assert_eq!(
        body,
        format!(
            r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":429,"message":"Rate limit exceeded","data":{{"retryAfterSeconds":{retry}}}}}}}"#,
            Stack::denied_id(report)
        ),
        "{ctx}"
    );
    assert_eq!(report["protocol_version"], "2025-11-25", "{ctx}");
    assert_eq!(report["sdk_version"], "1.32.2", "{ctx}");
}

/// Python SDK, HTTP 429: `MCPError` over both connections, and `search_docs`
/// and `call_tool -> search_docs` share one bucket.
fn python_sdk_at_429(mode: Mode) {
    let mut s = Stack::start(mode, Denial::Http429);
    let report = s.run(SdkClient::Python, Scenario::Direct, ALLOWED);
    assert_python_mcp_error(&report);
    assert_eq!(report["protocol_version"], "2026-07-28", "{report}");
    s.assert_search_docs_ran(ALLOWED);
    // The bucket is empty for call_tool too, over the initialize handshake.
    let report = s.run(SdkClient::PythonLegacy, Scenario::CallTool, 0);
    assert_python_mcp_error(&report);
    assert_eq!(report["protocol_version"], "2025-11-25", "{report}");
    s.assert_search_docs_ran(ALLOWED);
    assert_eq!(s.server.runs("call_tool").unwrap(), 0);
    assert_eq!(s.server.runs("get_weather").unwrap(), 2);
    s.stop_server_cleanly();
}

/// Python SDK, HTTP 200: the same `MCPError`.
fn python_sdk_at_200(mode: Mode) {
    let mut s = Stack::start(mode, Denial::Http200);
    let report = s.run(SdkClient::Python, Scenario::CallTool, ALLOWED);
    assert_python_mcp_error(&report);
    assert_eq!(report["protocol_version"], "2026-07-28", "{report}");
    assert_eq!(s.server.runs("call_tool").unwrap(), ALLOWED);
    s.assert_search_docs_ran(ALLOWED);
    let report = s.run(SdkClient::PythonLegacy, Scenario::Direct, 0);
    assert_python_mcp_error(&report);
    assert_eq!(report["protocol_version"], "2025-11-25", "{report}");
    s.assert_search_docs_ran(ALLOWED);
    s.stop_server_cleanly();
}

/// TypeScript SDK, HTTP 429: the documented transport error, session usable.
fn ts_sdk_at_429(mode: Mode) {
    let mut s = Stack::start(mode, Denial::Http429);
    let report = s.run(SdkClient::TypeScript, Scenario::CallTool, ALLOWED);
    assert_ts_transport_error(&report);
    assert_eq!(report["session_id"], true, "{report}");
    assert_eq!(s.server.runs("call_tool").unwrap(), ALLOWED);
    s.assert_search_docs_ran(ALLOWED);
    let report = s.run(SdkClient::TypeScript, Scenario::Direct, 0);
    assert_ts_transport_error(&report);
    s.assert_search_docs_ran(ALLOWED);
    s.stop_server_cleanly();
}

/// TypeScript SDK, HTTP 200: a proper `McpError` with code and data.
fn ts_sdk_at_200(mode: Mode) {
    let mut s = Stack::start(mode, Denial::Http200);
    let report = s.run(SdkClient::TypeScript, Scenario::Direct, ALLOWED);
    assert_ts_mcp_error(&report);
    s.assert_search_docs_ran(ALLOWED);
    let report = s.run(SdkClient::TypeScript, Scenario::CallTool, 0);
    assert_ts_mcp_error(&report);
    s.assert_search_docs_ran(ALLOWED);
    assert_eq!(s.server.runs("call_tool").unwrap(), 0);
    s.stop_server_cleanly();
}

#[test]
fn python_sdk_gets_mcp_error_at_http_429_json_responses() {
    python_sdk_at_429(Mode::Json);
}

#[test]
fn python_sdk_gets_mcp_error_at_http_429_sse_responses() {
    python_sdk_at_429(Mode::Sse);
}

#[test]
fn python_sdk_gets_mcp_error_at_http_200_json_responses() {
    python_sdk_at_200(Mode::Json);
}

#[test]
fn python_sdk_gets_mcp_error_at_http_200_sse_responses() {
    python_sdk_at_200(Mode::Sse);
}

#[test]
fn ts_sdk_gets_a_transport_error_at_http_429_json_responses() {
    ts_sdk_at_429(Mode::Json);
}

#[test]
fn ts_sdk_gets_a_transport_error_at_http_429_sse_responses() {
    ts_sdk_at_429(Mode::Sse);
}

#[test]
fn ts_sdk_gets_mcp_error_at_http_200_json_responses() {
    ts_sdk_at_200(Mode::Json);
}

#[test]
fn ts_sdk_gets_mcp_error_at_http_200_sse_responses() {
    ts_sdk_at_200(Mode::Sse);
}
