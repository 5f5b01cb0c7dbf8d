//! What the official MCP SDK clients make of the filter's denial, end to
//! end: the real Envoy 1.40 loading the built `.wasm` with the shipped
//! `envoy/envoy.yaml`, dev-rls as the rate-limit service, an MCP server
//! built on the official Python SDK (`e2e/mcp-server/server.py`, in JSON and
//! in SSE response mode), and the official clients:
//! - Python SDK 2.x (`mcp`, pinned in `e2e/requirements.txt`), with its
//!   default connection (`server/discover`, protocol 2026-07-28) and with
//!   the `initialize` handshake (2025-11-25);
//! - Python SDK 1.x (`mcp`, pinned in `e2e/clients/py1/requirements.txt`),
//!   `streamablehttp_client` and `ClientSession` (2025-11-25);
//! - TypeScript SDK v1 (`@modelcontextprotocol/sdk`, pinned in
//!   `e2e/clients/ts/package.json`), on Node.js;
//! - TypeScript SDK v2 (`@modelcontextprotocol/client`, pinned in
//!   `e2e/clients/ts2/package.json`), on Node.js, with its default
//!   connection (`initialize`) and with `versionNegotiation` `auto`
//!   (`server/discover`, 2026-07-28).
//!
//! Each client calls `search_docs` (directly or through `call_tool`) until
//! it is denied, then calls `get_weather` on the same session, and reports
//! what its SDK surfaced; these tests hold the SDKs to that report.
//! [`expected`] is what each client surfaces at HTTP 429 and with the
//! `"over_limit": {"http_status": 200}` setting, in one table that every
//! run is checked against, and that README.md's SDK table must match
//! (`readme_sdk_table_matches_the_tests`). In short: at HTTP 200 every SDK
//! raises its JSON-RPC error type with code 429 and `retryAfterSeconds` in
//! its data, and keeps the session. At HTTP 429 only the Python SDK 2.x
//! does; the TypeScript SDKs raise an HTTP error that keeps the JSON-RPC
//! error only as text, and the Python SDK 1.x loses the session: its
//! `httpx.HTTPStatusError` escapes the client context.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use e2e::fixtures::limits;
use e2e::{stack, DevRls, Envoy, McpServer, McpServerOptions, Scenario, SdkClient, CLOCK_AT};
use serde_json::{json, Value};
use std::fmt::Write as _;
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
    /// show, whatever the SDK: connected and listed the tools at the
    /// expected SDK version and protocol, exactly `allowed` calls went
    /// through, the next one was denied by the filter (as seen on the wire:
    /// one POST each, nothing sent again by the SDK; the server's answers in
    /// its own response mode, SSE streams with a progress notification or
    /// JSON, the filter's denial in JSON), the SDK surfaced the denial as
    /// [`expected`] says, and `get_weather` then worked on the same session,
    /// or could not be called, when the session was lost. Returns the
    /// report.
    fn run(&mut self, client: SdkClient, scenario: Scenario, allowed: u64) -> Value {
        let report = client.run(&self.url, scenario).unwrap();
        let ctx = format!("{} {scenario:?}: {report:#}", client.name());
        let sdk = expected(client);
        let surface = sdk.at(self.denial);
        assert_eq!(report["failure"], Value::Null, "{ctx}");
        assert_eq!(report["sdk_version"], sdk.version, "{ctx}");
        assert_eq!(report["protocol_version"], sdk.protocol, "{ctx}");
        let tools = report["tools"].as_array().expect("tools");
        for tool in ["search_docs", "get_weather", "find_tool", "call_tool"] {
            assert!(tools.contains(&json!(tool)), "{tool} not listed: {ctx}");
        }
        assert_eq!(report["allowed"], allowed, "{ctx}");
        assert!(report["error"].is_object(), "never limited: {ctx}");
        surface.assert(&report, &ctx);
        let survived = surface.session_survives;
        assert_eq!(report["after"]["tool"], "get_weather", "{ctx}");
        assert_eq!(report["after"]["ok"], survived, "{ctx}");
        assert_eq!(report["after"]["error"], Value::Null, "{ctx}");
        if survived {
            // The session still works after the denial.
            assert_eq!(
                report["after"]["text"], "Oslo: 18 degrees C, light wind",
                "{ctx}"
            );
        }
        // On the wire: the allowed calls, one denied call, the call after
        // (if the session survived).
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
        if survived {
            want.push(json!({"tool": "get_weather", "status": 200, "type": served}));
        }
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
            assert_eq!(report["progress"], allowed + u64::from(survived), "{ctx}");
        }
        // Independently of the client's own account: each tools/call POST
        // was asked of the rate-limit service or denied again by the
        // over-limit cache, and the filter denied once per run.
        self.posts += allowed + 1 + u64::from(survived);
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

    /// The id the denied `tools/call` was sent with: the call after the
    /// allowed ones.
    fn denied_id(report: &Value) -> Value {
        let allowed = usize::try_from(report["allowed"].as_u64().unwrap()).unwrap();
        report["wire"]["tools_call"][allowed]["id"].clone()
    }

    /// The filter's exact denial body for the denied call of `report`.
    fn denial_body(report: &Value) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":429,"message":"Rate limit exceeded","data":{{"retryAfterSeconds":{}}}}}}}"#,
            Stack::denied_id(report),
            RETRY_AFTER
        )
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
const RETRY_AFTER: u64 = 86_400 - CLOCK_AT % 86_400;

/// Checks `data` is the denial's data, `{"retryAfterSeconds": n}`.
fn assert_retry_after(data: &Value, ctx: &str) -> u64 {
    assert_eq!(data.as_object().map(|o| o.len()), Some(1), "data: {ctx}");
    let retry = data["retryAfterSeconds"].as_u64().expect(ctx);
    assert_eq!(retry, RETRY_AFTER, "retryAfterSeconds: {ctx}");
    retry
}

/// What a client is and what its SDK surfaces for a denied call: the
/// tests' expectations, one per client, checked on every run
/// ([`Stack::run`]) and rendered as the rows of README.md's SDK table
/// ([`readme_row`]).
struct Expected {
    /// The client as README.md names it.
    label: &'static str,
    /// The SDK version (also the pin, see `expectations_name_the_pins`).
    version: &'static str,
    /// The MCP protocol version the client ends up speaking.
    protocol: &'static str,
    /// At HTTP 429, the default.
    at_429: Surface,
    /// With `"over_limit": {"http_status": 200}`.
    at_200: Surface,
}

impl Expected {
    fn at(&self, denial: Denial) -> &Surface {
        match denial {
            Denial::Http429 => &self.at_429,
            Denial::Http200 => &self.at_200,
        }
    }
}

/// What the SDK surfaced for the denied call.
struct Surface {
    /// The error's class (Python: `module.Class` where it is not the SDK's).
    error: &'static str,
    /// Its `code`.
    code: Code,
    /// Where it holds the HTTP status (429), if it does.
    http_status: Option<&'static str>,
    /// What it keeps of the filter's JSON-RPC error.
    jsonrpc: JsonRpc,
    /// How the caller gets it.
    raised: Raised,
    /// Whether a later call on the same session works.
    session_survives: bool,
}

/// An error's `code`.
enum Code {
    /// The JSON-RPC error code, at this attribute.
    JsonRpc(&'static str, u64),
    /// The HTTP status.
    HttpStatus(u64),
    /// An SDK error code (a string).
    Sdk(&'static str),
    /// No code.
    None,
}

/// What an error keeps of the filter's JSON-RPC error.
enum JsonRpc {
    /// Its code and message, and its data (`retryAfterSeconds`) at this
    /// attribute.
    Fields(&'static str),
    /// The whole error response only as text, in this attribute.
    Text(&'static str),
    /// Nothing.
    Lost,
}

/// How the caller gets the error.
enum Raised {
    /// The call raises (rejects with) it.
    ByTheCall,
    /// The call is cancelled, and the error escapes the client's context
    /// (`async with` blocks) wrapped in this exception group.
    EscapingTheContext(&'static str),
}

/// `MCPError`, `McpError`, `ProtocolError`: the JSON-RPC error as sent,
/// the session kept.
const fn jsonrpc_error(error: &'static str, at: &'static str) -> Surface {
    Surface {
        error,
        code: Code::JsonRpc(at, 429),
        http_status: None,
        jsonrpc: JsonRpc::Fields(at),
        raised: Raised::ByTheCall,
        session_survives: true,
    }
}

/// What each client surfaces, at HTTP 429 and at HTTP 200.
fn expected(client: SdkClient) -> Expected {
    const PYTHON: Surface = jsonrpc_error("MCPError", "");
    const TS2_AT_429: Surface = Surface {
        error: "SdkHttpError",
        code: Code::Sdk("CLIENT_HTTP_NOT_IMPLEMENTED"),
        http_status: Some("data.status"),
        jsonrpc: JsonRpc::Text("data.text"),
        raised: Raised::ByTheCall,
        session_survives: true,
    };
    const TS2_AT_200: Surface = jsonrpc_error("ProtocolError", "");
    match client {
        SdkClient::Python => Expected {
            label: "Python `mcp`, default connection (`server/discover`)",
            version: "2.3.0",
            protocol: "2026-07-28",
            at_429: PYTHON,
            at_200: PYTHON,
        },
        SdkClient::PythonLegacy => Expected {
            label: "Python `mcp`, `mode=\"legacy\"` (`initialize`)",
            version: "2.3.0",
            protocol: "2025-11-25",
            at_429: PYTHON,
            at_200: PYTHON,
        },
        SdkClient::Python1 => Expected {
            label: "Python `mcp` 1.x, `streamablehttp_client` + `ClientSession`",
            version: "1.30.0",
            protocol: "2025-11-25",
            at_429: Surface {
                error: "httpx.HTTPStatusError",
                code: Code::None,
                http_status: Some("response.status_code"),
                jsonrpc: JsonRpc::Lost,
                raised: Raised::EscapingTheContext("ExceptionGroup"),
                session_survives: false,
            },
            at_200: jsonrpc_error("McpError", "error."),
        },
        SdkClient::TypeScript => Expected {
            label: "TypeScript `@modelcontextprotocol/sdk` (v1)",
            version: "1.32.2",
            protocol: "2025-11-25",
            at_429: Surface {
                error: "StreamableHTTPError",
                code: Code::HttpStatus(429),
                http_status: None,
                jsonrpc: JsonRpc::Text("message"),
                raised: Raised::ByTheCall,
                session_survives: true,
            },
            at_200: jsonrpc_error("McpError", ""),
        },
        SdkClient::TypeScript2 => Expected {
            label: "TypeScript `@modelcontextprotocol/client` (v2), default connection (`initialize`)",
            version: "2.4.0",
            protocol: "2025-11-25",
            at_429: TS2_AT_429,
            at_200: TS2_AT_200,
        },
        SdkClient::TypeScript2Auto => Expected {
            label: "TypeScript `@modelcontextprotocol/client` (v2), `versionNegotiation: {mode: 'auto'}` (`server/discover`)",
            version: "2.4.0",
            protocol: "2026-07-28",
            at_429: TS2_AT_429,
            at_200: TS2_AT_200,
        },
    }
}

impl Surface {
    /// Checks the report's `error` (and `after`) against this.
    fn assert(&self, report: &Value, ctx: &str) {
        let error = &report["error"];
        let mut ty = error["type"].as_str().unwrap_or_default().to_owned();
        if self.error.contains('.') {
            ty = format!("{}.{ty}", error["module"].as_str().unwrap_or_default());
        }
        assert_eq!(ty, self.error, "error type: {ctx}");
        let code = match self.code {
            Code::JsonRpc(_, code) | Code::HttpStatus(code) => json!(code),
            Code::Sdk(code) => json!(code),
            Code::None => Value::Null,
        };
        assert_eq!(error["code"], code, "error code: {ctx}");
        let http_status = matches!(self.code, Code::HttpStatus(_)) || self.http_status.is_some();
        assert_eq!(
            error["http_status"],
            if http_status { json!(429) } else { Value::Null },
            "http status: {ctx}"
        );
        let body = Stack::denial_body(report);
        match self.jsonrpc {
            JsonRpc::Fields(_) => {
                let message = error["message"].as_str().unwrap_or_default();
                assert!(message.contains("Rate limit exceeded"), "{ctx}");
                assert_retry_after(&error["data"], ctx);
            }
            JsonRpc::Text(at) => {
                let text = error
                    .pointer(&format!("/{}", at.replace('.', "/")))
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("no {at}: {ctx}"));
                assert!(text.contains(&body), "{body} not in {at}: {ctx}");
                assert!(error["data"].get("retryAfterSeconds").is_none(), "{ctx}");
            }
            JsonRpc::Lost => {
                assert!(!error.to_string().contains("retryAfterSeconds"), "{ctx}");
                assert_eq!(error["data"], Value::Null, "{ctx}");
            }
        }
        match self.raised {
            Raised::ByTheCall => {
                assert!(
                    matches!(error["surfaced"].as_str(), None | Some("call")),
                    "{ctx}"
                );
            }
            Raised::EscapingTheContext(group) => {
                assert_eq!(error["surfaced"], "context", "{ctx}");
                assert_eq!(error["raised_as"], group, "{ctx}");
                assert_eq!(error["call_raised"], "CancelledError", "{ctx}");
            }
        }
        assert_eq!(report["after"]["ok"], self.session_survives, "{ctx}");
        if !report["session_survived"].is_null() {
            assert_eq!(report["session_survived"], self.session_survives, "{ctx}");
        }
    }

    /// The README.md cell: what the caller gets, and the session after.
    fn readme_cell(&self) -> String {
        let mut cell = format!("`{}`", self.error);
        match self.code {
            Code::JsonRpc(at, code) => write!(cell, ", `{at}code` {code}").unwrap(),
            Code::HttpStatus(code) => write!(cell, ", `code` {code} (the HTTP status)").unwrap(),
            Code::Sdk(code) => write!(cell, ", `code` `{code}`").unwrap(),
            Code::None => {}
        }
        if let Some(at) = self.http_status {
            write!(cell, ", `{at}` 429").unwrap();
        }
        match self.jsonrpc {
            JsonRpc::Fields(at) => write!(cell, ", `{at}data.retryAfterSeconds`").unwrap(),
            JsonRpc::Text(at) => {
                write!(cell, ", the JSON-RPC error only as text in `{at}`").unwrap()
            }
            JsonRpc::Lost => cell.push_str(", no JSON-RPC error"),
        }
        if let Raised::EscapingTheContext(group) = self.raised {
            write!(
                cell,
                "; the call is cancelled and the error escapes the client context in an `{group}`"
            )
            .unwrap();
        }
        cell.push_str(if self.session_survives {
            "; session usable"
        } else {
            "; session lost"
        });
        cell
    }
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

/// The Python SDK 1.x at HTTP 429: the transport's `raise_for_status()`
/// fails the client's task group, the pending call is cancelled, and
/// `httpx.HTTPStatusError` (in an `ExceptionGroup`) escapes the client
/// context. It has the HTTP status only: the denial body is never read.
fn assert_py1_http_status_error(report: &Value) {
    let ctx = report.to_string();
    let error = &report["error"];
    assert_eq!(error["type"], "HTTPStatusError", "{ctx}");
    assert_eq!(error["module"], "httpx", "{ctx}");
    assert_eq!(error["http_status"], 429, "{ctx}");
    assert_eq!(error["code"], Value::Null, "{ctx}");
    assert_eq!(error["data"], Value::Null, "{ctx}");
    let message = error["message"].as_str().expect("message");
    assert!(
        message.starts_with("Client error '429 Too Many Requests' for url 'http://"),
        "{ctx}"
    );
    assert_eq!(error["surfaced"], "context", "{ctx}");
    assert_eq!(error["raised_as"], "ExceptionGroup", "{ctx}");
    assert_eq!(error["call_raised"], "CancelledError", "{ctx}");
    // The session is gone: nothing was called after the denial.
    assert_eq!(report["after"]["attempted"], false, "{ctx}");
    assert_eq!(report["session_survived"], false, "{ctx}");
    assert_eq!(
        report["attempts"],
        report["allowed"].as_u64().unwrap() + 1,
        "{ctx}"
    );
    assert_eq!(report["session_id"], true, "{ctx}");
    assert_eq!(report["sdk_version"], "1.30.0", "{ctx}");
}

/// The Python SDK 1.x at HTTP 200: `call_tool` raises `McpError`, whose
/// `error` is the JSON-RPC error as sent; the session is kept.
fn assert_py1_mcp_error(report: &Value) {
    let ctx = report.to_string();
    let error = &report["error"];
    assert_eq!(error["type"], "McpError", "{ctx}");
    assert_eq!(error["module"], "mcp.shared.exceptions", "{ctx}");
    assert_eq!(error["code"], 429, "{ctx}");
    assert_eq!(error["message"], "Rate limit exceeded", "{ctx}");
    assert_retry_after(&error["data"], &ctx);
    assert_eq!(error["http_status"], Value::Null, "{ctx}");
    assert_eq!(error["surfaced"], "call", "{ctx}");
    assert_eq!(report["after"]["attempted"], true, "{ctx}");
    assert_eq!(report["session_survived"], true, "{ctx}");
    assert_eq!(report["session_id"], true, "{ctx}");
    assert_eq!(report["sdk_version"], "1.30.0", "{ctx}");
}

/// The TypeScript SDK v2 at HTTP 429: `SdkHttpError` with the SDK's code
/// `CLIENT_HTTP_NOT_IMPLEMENTED` and `data` `{status, statusText, text}`,
/// the denial body only as `text` (and in the message); the session is kept.
fn assert_ts2_http_error(report: &Value) {
    let ctx = report.to_string();
    let error = &report["error"];
    assert_eq!(error["type"], "SdkHttpError", "{ctx}");
    assert_eq!(error["name"], "SdkHttpError", "{ctx}");
    assert_eq!(error["code"], "CLIENT_HTTP_NOT_IMPLEMENTED", "{ctx}");
    assert_eq!(error["http_status"], 429, "{ctx}");
    let body = Stack::denial_body(report);
    assert_eq!(
        error["data"],
        json!({"status": 429, "statusText": "Too Many Requests", "text": body}),
        "{ctx}"
    );
    assert_eq!(
        error["message"],
        format!("Error POSTing to endpoint: {body}"),
        "{ctx}"
    );
    assert_eq!(report["session_survived"], true, "{ctx}");
    assert_eq!(report["sdk_version"], "2.4.0", "{ctx}");
}

/// The TypeScript SDK v2 at HTTP 200: `ProtocolError` with the JSON-RPC
/// code, message and data; the session is kept.
fn assert_ts2_protocol_error(report: &Value) {
    let ctx = report.to_string();
    let error = &report["error"];
    assert_eq!(error["type"], "ProtocolError", "{ctx}");
    assert_eq!(error["name"], "ProtocolError", "{ctx}");
    assert_eq!(error["code"], 429, "{ctx}");
    assert_eq!(error["message"], "Rate limit exceeded", "{ctx}");
    assert_retry_after(&error["data"], &ctx);
    assert_eq!(error["http_status"], Value::Null, "{ctx}");
    assert_eq!(report["session_survived"], true, "{ctx}");
    assert_eq!(report["sdk_version"], "2.4.0", "{ctx}");
}

/// The TypeScript SDK v2's connection: `initialize` by default (a session
/// id), `server/discover` with `versionNegotiation` `auto` (2026-07-28, no
/// session id).
fn assert_ts2_connection(report: &Value, client: SdkClient) {
    let (era, session_id) = match client {
        SdkClient::TypeScript2 => ("legacy", true),
        SdkClient::TypeScript2Auto => ("modern", false),
        other => panic!("not the TypeScript SDK v2: {other:?}"),
    };
    assert_eq!(report["era"], era, "{report}");
    assert_eq!(report["session_id"], session_id, "{report}");
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

/// Python SDK 1.x, HTTP 429: the error escapes the client context and the
/// session is lost, whichever way the tool is called.
fn python1_sdk_at_429(mode: Mode) {
    let mut s = Stack::start(mode, Denial::Http429);
    let report = s.run(SdkClient::Python1, Scenario::Direct, ALLOWED);
    assert_py1_http_status_error(&report);
    s.assert_search_docs_ran(ALLOWED);
    let report = s.run(SdkClient::Python1, Scenario::CallTool, 0);
    assert_py1_http_status_error(&report);
    s.assert_search_docs_ran(ALLOWED);
    assert_eq!(s.server.runs("call_tool").unwrap(), 0);
    assert_eq!(s.server.runs("get_weather").unwrap(), 0);
    s.stop_server_cleanly();
}

/// Python SDK 1.x, HTTP 200: `McpError` with code and data, session kept.
fn python1_sdk_at_200(mode: Mode) {
    let mut s = Stack::start(mode, Denial::Http200);
    let report = s.run(SdkClient::Python1, Scenario::CallTool, ALLOWED);
    assert_py1_mcp_error(&report);
    assert_eq!(s.server.runs("call_tool").unwrap(), ALLOWED);
    s.assert_search_docs_ran(ALLOWED);
    let report = s.run(SdkClient::Python1, Scenario::Direct, 0);
    assert_py1_mcp_error(&report);
    s.assert_search_docs_ran(ALLOWED);
    assert_eq!(s.server.runs("get_weather").unwrap(), 2);
    s.stop_server_cleanly();
}

/// TypeScript SDK v2, HTTP 429: `SdkHttpError` over both connections,
/// session usable.
fn ts2_sdk_at_429(mode: Mode) {
    let mut s = Stack::start(mode, Denial::Http429);
    let report = s.run(SdkClient::TypeScript2, Scenario::CallTool, ALLOWED);
    assert_ts2_http_error(&report);
    assert_ts2_connection(&report, SdkClient::TypeScript2);
    assert_eq!(s.server.runs("call_tool").unwrap(), ALLOWED);
    s.assert_search_docs_ran(ALLOWED);
    let report = s.run(SdkClient::TypeScript2Auto, Scenario::Direct, 0);
    assert_ts2_http_error(&report);
    assert_ts2_connection(&report, SdkClient::TypeScript2Auto);
    s.assert_search_docs_ran(ALLOWED);
    assert_eq!(s.server.runs("get_weather").unwrap(), 2);
    s.stop_server_cleanly();
}

/// TypeScript SDK v2, HTTP 200: `ProtocolError` with code and data over
/// both connections.
fn ts2_sdk_at_200(mode: Mode) {
    let mut s = Stack::start(mode, Denial::Http200);
    let report = s.run(SdkClient::TypeScript2Auto, Scenario::Direct, ALLOWED);
    assert_ts2_protocol_error(&report);
    assert_ts2_connection(&report, SdkClient::TypeScript2Auto);
    s.assert_search_docs_ran(ALLOWED);
    let report = s.run(SdkClient::TypeScript2, Scenario::CallTool, 0);
    assert_ts2_protocol_error(&report);
    assert_ts2_connection(&report, SdkClient::TypeScript2);
    s.assert_search_docs_ran(ALLOWED);
    assert_eq!(s.server.runs("call_tool").unwrap(), 0);
    assert_eq!(s.server.runs("get_weather").unwrap(), 2);
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

#[test]
fn python1_sdk_loses_the_session_at_http_429_json_responses() {
    python1_sdk_at_429(Mode::Json);
}

#[test]
fn python1_sdk_loses_the_session_at_http_429_sse_responses() {
    python1_sdk_at_429(Mode::Sse);
}

#[test]
fn python1_sdk_gets_mcp_error_at_http_200_json_responses() {
    python1_sdk_at_200(Mode::Json);
}

#[test]
fn python1_sdk_gets_mcp_error_at_http_200_sse_responses() {
    python1_sdk_at_200(Mode::Sse);
}

#[test]
fn ts2_sdk_gets_an_http_error_at_http_429_json_responses() {
    ts2_sdk_at_429(Mode::Json);
}

#[test]
fn ts2_sdk_gets_an_http_error_at_http_429_sse_responses() {
    ts2_sdk_at_429(Mode::Sse);
}

#[test]
fn ts2_sdk_gets_protocol_error_at_http_200_json_responses() {
    ts2_sdk_at_200(Mode::Json);
}

#[test]
fn ts2_sdk_gets_protocol_error_at_http_200_sse_responses() {
    ts2_sdk_at_200(Mode::Sse);
}

/// The header of README.md's SDK table.
const README_TABLE_HEADER: &str =
    "| MCP SDK client | version | protocol | at HTTP 429 (the default) | at HTTP 200 (`\"over_limit\": {\"http_status\": 200}`) |";

/// A row of README.md's SDK table, from [`expected`].
fn readme_row(client: SdkClient) -> String {
    let e = expected(client);
    format!(
        "| {} | {} | {} | {} | {} |",
        e.label,
        e.version,
        e.protocol,
        e.at_429.readme_cell(),
        e.at_200.readme_cell()
    )
}

/// The rows of the SDK table in README.md's "## MCP SDK compatibility"
/// section: the lines after the header and its separator, up to the first
/// line that is not a table row.
fn readme_sdk_rows(readme: &str) -> Result<Vec<String>, String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("MCP SDK compatibility\n"))
        .ok_or("no \"## MCP SDK compatibility\" section")?;
    let mut lines = section
        .lines()
        .skip_while(|l| l.trim() != README_TABLE_HEADER);
    lines
        .next()
        .ok_or_else(|| format!("no table with the header {README_TABLE_HEADER}"))?;
    let separator = lines.next().unwrap_or_default();
    if !separator.starts_with("|---") {
        return Err(format!("no separator line under the header: {separator:?}"));
    }
    Ok(lines
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim().to_owned())
        .collect())
}

/// README.md's SDK table says, client by client, what the tests expect:
/// one row per client in [`SdkClient::ALL`]'s order, rendered from
/// [`expected`].
#[test]
fn readme_sdk_table_matches_the_tests() {
    let path = e2e::Paths::discover().root.join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let want: Vec<String> = SdkClient::ALL.iter().map(|c| readme_row(*c)).collect();
    let rows = readme_sdk_rows(&readme).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the table should read:\n{README_TABLE_HEADER}\n{}",
            path.display(),
            want.join("\n")
        )
    });
    assert_eq!(
        rows,
        want,
        "{}'s SDK table differs from the tests' expectations; it should read:\n{}",
        path.display(),
        want.join("\n")
    );
}

/// The table parser finds exactly the rows, and only in the SDK section.
#[test]
fn readme_sdk_rows_are_read_from_the_sdk_section() {
    let text = format!(
        "# x\n\n## Other\n\n{README_TABLE_HEADER}\n|---|\n| not | this |\n\n\
         ## MCP SDK compatibility\n\nText.\n\n{README_TABLE_HEADER}\n|---|---|\n| a | b |\n| c | d |\n\n\
         | component | version |\n|---|---|\n| Envoy | 1 |\n\n## Metrics\n"
    );
    assert_eq!(
        readme_sdk_rows(&text).unwrap(),
        vec!["| a | b |".to_owned(), "| c | d |".to_owned()]
    );
    assert!(readme_sdk_rows("x\n## MCP SDK compatibility\n\nNo table.\n").is_err());
    assert!(readme_sdk_rows("## Other\n").is_err());
}

/// The expectations name the SDK versions the repository pins, for every
/// client.
#[test]
fn expectations_name_the_pins() {
    for client in SdkClient::ALL {
        assert_eq!(
            client.pinned().unwrap(),
            expected(client).version,
            "{client:?} ({})",
            client.package()
        );
    }
}
