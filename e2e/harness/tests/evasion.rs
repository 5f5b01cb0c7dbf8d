//! Known ways around a body-inspecting limiter, each through the real Envoy:
//! every request either consumes the right bucket or is refused with a clear
//! JSON-RPC error, and a refused request never reaches the MCP server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use e2e::fixtures::{limits, tools_call_with};
use e2e::stack::Stack;
use e2e::{Request, Response};
use serde_json::{json, Value};
use std::sync::LazyLock;

/// `search_docs`: 2 a day, so a bypass shows as a third call getting through.
/// dev-rls runs on a frozen clock (the harness's default), so the day cannot
/// end mid-test and give the bucket back.
static LIMITS: LazyLock<String> = LazyLock::new(|| limits(2, 1000));

const PLUGIN: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000}"#;

/// Starts the usual stack with this test file's limits.
fn start(plugin: &str) -> Stack {
    Stack::start(plugin, LIMITS.as_str())
}

/// Uses up `search_docs`'s two calls.
fn exhaust(s: &Stack) {
    for i in 0..2 {
        let resp = s.post(&call(100 + i, "search_docs"));
        assert_eq!(resp.status, 200, "{resp:?}");
    }
}

fn call(id: u64, tool: &str) -> String {
    tools_call_with(id, tool, "{}")
}

fn assert_refused(resp: &Response, status: u16, code: i64, what: &str) {
    assert_eq!(resp.status, status, "{what}: {resp:?}");
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    let body = resp.json();
    assert_eq!(body["jsonrpc"], "2.0", "{what}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
}

#[test]
fn duplicate_and_case_folded_members_are_refused() {
    let s = start(PLUGIN);
    let bodies = [
        // serde_json's Value keeps the last, derived structs refuse, other
        // servers keep the first: we refuse, so no reading differs.
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"search_docs"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs"},"params":{"name":"get_weather"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","name":"search_docs"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"x"},"arguments":{"tool_name":"search_docs"}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"get_weather","tool_name":"search_docs"}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"parameters":{},"parameters":{}}}}"#,
        // What Go's encoding/json would match case-insensitively.
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call","params":{"name":"search_docs"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","Name":"search_docs"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","NAME":"search_docs"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","argument\u017f":{"tool_name":"search_docs"}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"get_weather","TOOL_NAME":"search_docs"}}}"#,
    ];
    for body in bodies {
        assert_refused(&s.post(body), 400, -32600, body);
    }
    assert_eq!(s.up.requests().unwrap(), 0);
    assert_eq!(s.rls.calls().unwrap(), 0);
    assert_eq!(s.stat("parse_error"), bodies.len() as u64);
}

#[test]
fn escaped_names_count_against_the_tool_they_spell() {
    let s = start(PLUGIN);
    exhaust(&s);
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search\u005fdocs"}}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools\/\u0063all","params":{"name":"search_docs"}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"\u0063all_tool","arguments":{"tool_name":"\u0073earch_docs"}}}"#,
    ] {
        assert_eq!(s.post(body).status, 429, "{body}");
    }
    assert_eq!(s.up.calls("search_docs").unwrap(), 2);
}

#[test]
fn compressed_bodies_are_refused() {
    let s = start(PLUGIN);
    for encoding in ["gzip", "br", "deflate", "identity, gzip"] {
        let resp = s.send(
            Request::post("/mcp")
                .header("content-type", "application/json")
                .header("content-encoding", encoding)
                .body(call(1, "search_docs")),
        );
        assert_refused(&resp, 415, -32600, encoding);
    }
    assert_eq!(s.up.requests().unwrap(), 0);
}

#[test]
fn content_type_tricks_are_inspected() {
    let s = start(PLUGIN);
    exhaust(&s);
    let body = call(3, "search_docs");
    let tricks: [&[(&str, &str)]; 5] = [
        &[("content-type", "text/plain")],
        &[],
        &[("content-type", "application/json-rpc")],
        &[("content-type", "application/x-www-form-urlencoded")],
        // Two content types: the filter reads the first, and still judges
        // the JSON-shaped body.
        &[
            ("content-type", "text/plain"),
            ("content-type", "application/json"),
        ],
    ];
    for headers in tricks {
        let resp = s.send(Request::post("/mcp").headers(headers).body(body.clone()));
        assert_eq!(resp.status, 429, "{headers:?}: {resp:?}");
    }
    // Leading whitespace does not hide it either.
    let resp = s.send(
        Request::post("/mcp")
            .header("content-type", "text/plain")
            .body(format!(" \r\n\t{body}")),
    );
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(s.up.calls("search_docs").unwrap(), 2);
    // A form or binary upload passes untouched.
    let resp = s.send(
        Request::post("/upload")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("name=search_docs&x=1"),
    );
    assert_eq!(
        resp.status, 400,
        "the stand-in server refuses non-JSON: {resp:?}"
    );
    assert_eq!(resp.json()["error"]["code"], -32700);
    assert_eq!(s.up.requests().unwrap(), 3);
}

#[test]
fn odd_bodies_are_refused_or_counted_never_passed_unlimited() {
    let s = start(PLUGIN);
    exhaust(&s);
    // Not UTF-8 where the filter reads (the tool's name): refused.
    let mut bytes =
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs"#.to_vec();
    bytes.extend_from_slice(b"\xff\xfe");
    bytes.extend_from_slice(br#""}}"#);
    let resp = s.send(
        Request::post("/mcp")
            .header("content-type", "application/json")
            .body(bytes),
    );
    assert_refused(&resp, 400, -32700, "non-UTF-8 name");
    // Not UTF-8 inside an argument the filter skips: the structure every
    // parser sees is the same (such bytes never look like `"` or `\`), so
    // the call is counted like any other.
    let mut bytes = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","arguments":{"q":""#.to_vec();
    bytes.extend_from_slice(b"\xff\xfe");
    bytes.extend_from_slice(br#""}}}"#);
    let resp = s.send(
        Request::post("/mcp")
            .header("content-type", "application/json")
            .body(bytes),
    );
    assert_eq!(resp.status, 429, "non-UTF-8 argument: {resp:?}");
    // Deep nesting where the filter descends is refused; deep nesting in
    // skipped arguments is fine and the call is counted.
    let deep_top = "[".repeat(20_000) + &"]".repeat(20_000);
    assert_eq!(s.post(&deep_top).status, 400);
    let deep_args = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"search_docs","arguments":{{"x":{}1{}}}}}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    assert_eq!(s.post(&deep_args).status, 429);
    // Extreme numbers and strings in arguments: counted.
    let extreme = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"search_docs","arguments":{{"n":{},"f":1e999999,"s":"{}"}}}}}}"#,
        "9".repeat(10_000),
        "s".repeat(100_000)
    );
    assert_eq!(s.post(&extreme).status, 429);
    // A tool_name that is not a string counts as call_tool itself, not as
    // nothing.
    let odd_inner = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":["search_docs"]}}}"#;
    assert_eq!(s.post(odd_inner).status, 200);
    let sent: Value = Request::get("/requests")
        .send(s.rls.admin_addr())
        .unwrap()
        .json();
    let last = sent.as_array().unwrap().last().unwrap();
    assert_eq!(
        last["descriptors"][0]["entries"][0],
        json!({"key": "tool", "value": "call_tool"})
    );
    // A tools/call without a usable name is refused.
    let no_name = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":7}}"#;
    assert_refused(&s.post(no_name), 400, -32602, "name not a string");
    assert_eq!(s.up.calls("search_docs").unwrap(), 2);
}

#[test]
fn batches_count_every_call_or_are_refused_when_configured() {
    let s = start(PLUGIN);
    let batch = format!(
        "[{},{},{}]",
        call(1, "search_docs"),
        call(2, "search_docs"),
        call(3, "search_docs")
    );
    // Three calls against a limit of two: the whole batch is denied.
    let resp = s.post(&batch);
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.json().as_array().unwrap().len(), 3);
    assert_eq!(s.up.requests().unwrap(), 0);
    let s = start(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"refuse_batches":true}"#,
    );
    assert_refused(
        &s.post(&format!("[{}]", call(1, "get_weather"))),
        400,
        -32600,
        "refuse_batches",
    );
    assert_eq!(s.up.requests().unwrap(), 0);
    assert_eq!(s.rls.calls().unwrap(), 0);
}

#[test]
fn duplicated_routing_headers_cannot_point_two_ways() {
    let s = start(PLUGIN);
    exhaust(&s);
    // Two Mcp-Name values: whichever one a component reads, the request
    // must not be counted as get_weather while the body calls search_docs.
    let resp = s.send(
        Request::post("/mcp")
            .header("content-type", "application/json")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "search_docs")
            .header("mcp-name", "get_weather")
            .body(call(9, "search_docs")),
    );
    assert_ne!(resp.status, 200, "{resp:?}");
    assert_eq!(s.up.calls("search_docs").unwrap(), 2);
    // Refused as a mismatch even for a tool with budget left: a server
    // could read another of the values than the filter does.
    let resp = s.send(
        Request::post("/mcp")
            .header("content-type", "application/json")
            .header("mcp-name", "get_weather")
            .header("mcp-name", "get_weather")
            .body(call(10, "get_weather")),
    );
    assert_refused(&resp, 400, -32020, "duplicated Mcp-Name");
    assert_eq!(s.up.calls("get_weather").unwrap(), 0);
}
