//! The same rules for every body, every size capped, through the real Envoy:
//! bodies of any content type get the MCP header checks, no path reads past
//! `max_body_bytes`, client numbers cannot overflow a comparison, every
//! member the filter reads is unambiguous, and whitespace cannot smuggle a
//! call past the cap.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use e2e::fixtures::{limits, tools_call_with};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use e2e::stack::Stack;
use e2e::{Conn, Request, Response};
use serde_json::Value;

/// `search_docs`: 2 per window, so a bypass shows as a third call getting
/// through.
static LIMITS: LazyLock<String> = LazyLock::new(|| limits(2, 1000));

const PLUGIN: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000}"#;

const MODERN: &str = "2026-07-28";

fn call(id: u64, tool: &str) -> String {
    tools_call_with(id, tool, "{}")
}

/// A POST to `/mcp` with this content type (none for `None`) and headers.
fn post(ct: Option<&str>, body: impl Into<Vec<u8>>, headers: &[(&str, &str)]) -> Request {
    let req = Request::post("/mcp").headers(headers).body(body);
    match ct {
        Some(ct) => req.header("content-type", ct),
        None => req,
    }
}

fn assert_refused(resp: &Response, status: u16, code: i64, what: &str) -> Value {
    assert_eq!(resp.status, status, "{what}: {resp:?}");
    let body = resp.json();
    assert_eq!(body["jsonrpc"], "2.0", "{what}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    body
}

/// Uses up `search_docs`'s two calls.
fn exhaust(s: &Stack) {
    for i in 0..2 {
        let resp = s.post(&call(100 + i, "search_docs"));
        assert_eq!(resp.status, 200, "{resp:?}");
    }
}

/// What is sent, with which headers, for which tool ("" for a batch), and
/// the status and JSON-RPC code expected.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, u16, i64);

#[test]
fn bodies_of_any_content_type_get_the_mcp_header_checks() {
    let s = Stack::start(PLUGIN, LIMITS.as_str());
    let batch = format!("[{}]", call(1, "a"));
    let mut refused = 0;
    for ct in [Some("text/plain"), None] {
        let cases: [Case; 4] = [
            (
                "Mcp-Name naming another tool",
                vec![("mcp-name", "get_weather")],
                "search_docs",
                400,
                -32020,
            ),
            (
                "2026-07-28 without Mcp-Method",
                vec![
                    ("mcp-protocol-version", MODERN),
                    ("mcp-name", "search_docs"),
                ],
                "search_docs",
                400,
                -32020,
            ),
            (
                "Mcp-Name given twice",
                vec![("mcp-name", "search_docs"), ("mcp-name", "get_weather")],
                "search_docs",
                400,
                -32020,
            ),
            (
                "a batch under 2025-06-18",
                vec![("mcp-protocol-version", "2025-06-18")],
                "",
                400,
                -32600,
            ),
        ];
        for (what, headers, tool, status, code) in cases {
            let body = if tool.is_empty() {
                batch.clone()
            } else {
                call(1, tool)
            };
            let resp = s.send(post(ct, body, &headers));
            assert_refused(&resp, status, code, &format!("{what} ({ct:?})"));
            refused += 1;
        }
    }
    assert_eq!(
        s.up.requests().unwrap(),
        0,
        "a refused request reached the server"
    );
    assert_eq!(s.rls.calls().unwrap(), 0);
    assert_eq!(s.stat("header_mismatch") + s.stat("parse_error"), refused);
    // The same body with agreeing headers is counted like any MCP request.
    let ok = s.send(post(
        Some("text/plain"),
        call(2, "search_docs"),
        &[("mcp-name", "search_docs"), ("mcp-method", "tools/call")],
    ));
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(s.up.calls("search_docs").unwrap(), 1);
}

#[test]
fn a_json_shaped_body_over_its_declared_size_is_refused_before_it_is_sent() {
    let s = Stack::start(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"max_body_bytes":1024}"#,
        LIMITS.as_str(),
    );
    let mut body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","arguments":{"pad":""#.to_vec();
    body.resize(200_000, b'x');
    body.extend_from_slice(br#""}}}"#);
    for ct in [Some("text/plain"), None] {
        let req = post(ct, body.clone(), &[]);
        let mut conn = Conn::open(s.addr).unwrap();
        // Only the first bytes: the answer must not wait for the rest.
        conn.send_partial(&req, 64).unwrap();
        let resp = conn.read_response(Duration::from_secs(5), false).unwrap();
        assert_refused(&resp, 413, -32600, &format!("{ct:?}"));
        conn.abort();
    }
    assert_eq!(s.up.requests().unwrap(), 0);
    assert_eq!(s.stat("body_too_large"), 2);
}

#[test]
fn whitespace_cannot_carry_a_call_past_the_cap() {
    let s = Stack::start(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"max_body_bytes":4096}"#,
        LIMITS.as_str(),
    );
    exhaust(&s);
    let padding = vec![b' '; 4096];
    let mut whole = padding.clone();
    whole.extend_from_slice(call(7, "search_docs").as_bytes());
    // In one piece, in small chunks, and ended by trailers.
    let chunks: Vec<Vec<u8>> = whole.chunks(512).map(<[u8]>::to_vec).collect();
    for req in [
        post(Some("text/plain"), whole.clone(), &[]),
        post(None, Vec::new(), &[]).chunks(chunks.clone()),
        post(Some("text/plain"), Vec::new(), &[])
            .chunks(chunks)
            .trailer("x-end", "1"),
    ] {
        let resp = s.send(req);
        assert_refused(&resp, 413, -32600, "whitespace-padded call");
    }
    assert_eq!(
        s.up.calls("search_docs").unwrap(),
        2,
        "a padded call got through"
    );
}

#[test]
fn long_whitespace_in_small_chunks_is_judged() {
    let s = Stack::start(PLUGIN, LIMITS.as_str());
    exhaust(&s);
    // 256 KiB of whitespace in 1 KiB chunks, then the call: counted.
    let mut chunks: Vec<Vec<u8>> = vec![b" \r\n\t".repeat(256); 256];
    chunks.push(call(9, "search_docs").into_bytes());
    let started = Instant::now();
    let resp = s.send(post(Some("text/plain"), Vec::new(), &[]).chunks(chunks));
    let took = started.elapsed();
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.json()["id"], 9);
    assert_eq!(s.up.calls("search_docs").unwrap(), 2);
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_fast_path_denial_never_reads_an_oversized_body() {
    let s = Stack::start(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"max_body_bytes":1024,"header_fast_path":true}"#,
        LIMITS.as_str(),
    );
    let modern = [
        ("mcp-protocol-version", MODERN),
        ("mcp-method", "tools/call"),
        ("mcp-name", "search_docs"),
    ];
    // Within the cap, the denial carries the body's id...
    for i in 0..2 {
        let resp = s.post_with(&call(i, "search_docs"), &modern);
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    let resp = s.post_with(&call(5, "search_docs"), &modern);
    assert_eq!(resp.status, 429);
    assert_eq!(resp.json()["id"], 5);
    // ...over it, the denial is sent as soon as the size is known, with id
    // null, and the body is never read.
    let mut body = call(6, "search_docs").into_bytes();
    body.truncate(body.len() - 3);
    body.extend_from_slice(br#""pad":""#);
    body.resize(100_000, b'x');
    body.extend_from_slice(br#""}}}"#);
    let req = Request::post("/mcp")
        .header("content-type", "application/json")
        .headers(&modern)
        .body(body);
    let mut conn = Conn::open(s.addr).unwrap();
    conn.send_partial(&req, 50_000).unwrap();
    let resp = conn.read_response(Duration::from_secs(5), false).unwrap();
    let v = assert_refused(&resp, 429, 429, "oversized fast-path denial");
    assert!(v.as_object().unwrap().contains_key("id"), "{v}");
    assert_eq!(v["id"], Value::Null);
    assert!(resp.header("retry-after").is_some());
    conn.abort();
    assert_eq!(s.up.calls("search_docs").unwrap(), 2);
}

#[test]
fn param_integers_compare_without_overflow() {
    let s = Stack::start(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,
            "param_headers":[{"tool":"get_weather","argument":"n","header":"N"}]}"#,
        LIMITS.as_str(),
    );
    let body = |n: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"get_weather","arguments":{{"n":{n}}}}}}}"#
        )
    };
    for (header, n, status) in [
        ("0", "0e-2147483648", 200),
        ("0", "-0.0e-9223372036854775808", 200),
        ("1", "100e-2", 200),
        ("0", "1e-2147483648", 400),
        ("1", "1e99999999999999999999", 400),
        ("1", "10e-2147483649", 400),
    ] {
        let resp = s.post_with(&body(n), &[("mcp-param-n", header)]);
        assert_eq!(resp.status, status, "{header} vs {n}: {resp:?}");
        if status == 400 {
            assert_refused(&resp, 400, -32020, n);
        }
    }
    assert_eq!(s.up.calls("get_weather").unwrap(), 3);
}

#[test]
fn every_member_the_filter_reads_is_unambiguous() {
    let s = Stack::start(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,
            "param_headers":[{"tool":"query","argument":"parameters","header":"Parameters"}]}"#,
        LIMITS.as_str(),
    );
    let pv = "io.modelcontextprotocol/protocolVersion";
    let bodies = [
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"_meta":{{"{pv}":"2025-11-25","{pv}":"{MODERN}"}}}}}}"#
        ),
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"get_weather","_meta":{{"{pv}":"2025-11-25"}},"_meta":{{"{pv}":"{MODERN}"}}}}}}"#
        ),
        r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather"}}"#.to_owned(),
        r#"{"jsonrpc":"2.0","JsonRpc":"1.0","id":1,"method":"tools/call","params":{"name":"get_weather"}}"#.to_owned(),
        r#"{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"get_weather"}}"#.to_owned(),
    ];
    for body in &bodies {
        assert_refused(&s.post(body), 400, -32600, body);
    }
    assert_eq!(s.up.requests().unwrap(), 0);
    // A mapping of `parameters` (for another tool) keeps call_tool's
    // `arguments.parameters.tool_name` unwrapped.
    exhaust(&s);
    let wrapped = r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"call_tool","arguments":{"parameters":{"tool_name":"search_docs"}}}}"#;
    let resp = s.post(wrapped);
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.json()["id"], 8);
    assert_eq!(s.up.calls("call_tool").unwrap(), 0);
}
