//! The filter on every installed Envoy release: the releases in
//! `ENVOY_VERSIONS_DIR` (`make envoy-versions`) and Envoy 1.40 of `.venv`,
//! as [`e2e::envoy::versions`] lists them. Each test runs its cases on one
//! Envoy per release and configuration, one release after the other, and
//! fails naming every release a case failed on.
//!
//! What holds on each release:
//! - the shipped configs validate, `allow_on_headers_stop_iteration`
//!   included, and the filter holds a request until it is judged: a denied
//!   request never reaches the MCP server, not even its headers;
//! - the core cases: an allowed call, the exact JSON-RPC 429, `call_tool`
//!   counted as its inner tool, a batch of k calls counting k, fail-open and
//!   fail-closed without the rate-limit service;
//! - bodies of 1 KiB to `max_body_bytes`, sent with `content-length` or
//!   chunked, in one write or in pieces, reach the MCP server byte for byte,
//!   with `envoy.yaml` and with the buffer-filter variant; one byte more is
//!   refused by the filter with its JSON-RPC 413, declared or streamed.
//!
//! What differs between releases (`header_fast_path` only): a body that
//! arrives partly while the rate-limit call is in flight and partly after
//! it. The filter holds the first part and resumes on the verdict; Envoy's
//! Wasm host then moves the next body frame into the filter manager's buffer
//! and continues. Releases without Envoy's fix for that case (envoy#46842,
//! runtime guard `filter_manager_forward_added_data_on_continue`) drop that
//! frame. With the buffer filter, which counts the bytes it is handed to
//! set `content-length` on a chunked request, the count is wrong on every
//! release: too small without the fix, too large with it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use e2e::fixtures::{limits, tools_call, tools_call_with};
use e2e::stack::{render_config, shipped, wasm_path, Stack};
use e2e::{render, Conn, DevRls, Envoy, EnvoyOptions, Request, Response, CLOCK_AT};
use serde_json::json;
use std::cell::Cell;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

const PLUGIN: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000}"#;
const PLUGIN_DENY: &str =
    r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"failure_mode_deny":true}"#;
const PLUGIN_BUFFER: &str =
    r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"hold_headers":false}"#;
const PLUGIN_FAST: &str =
    r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":2000,"header_fast_path":true}"#;
const PLUGIN_FAST_BUFFER: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":2000,"header_fast_path":true,"hold_headers":false}"#;

/// The filter's default `max_body_bytes`, half the shipped configs' buffer
/// limits.
const MAX_BODY: usize = 1_048_576;

/// Seconds from the frozen `CLOCK_AT` to the end of its UTC day: the
/// Retry-After of every denial under a day limit.
const DAY_LEFT: u64 = 86_400 - CLOCK_AT % 86_400;

const JSON: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("accept", "application/json, text/event-stream"),
];

/// An MCP 2026-07-28 `tools/call` of `get_weather`, judged by its headers
/// under `header_fast_path`.
const FAST: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("accept", "application/json, text/event-stream"),
    ("mcp-protocol-version", "2026-07-28"),
    ("mcp-method", "tools/call"),
    ("mcp-name", "get_weather"),
];

/// Runs `case` on every installed release with the options that select its
/// binary; fails naming each release it failed on, after trying them all.
fn on_every_release(case: impl Fn(&str, &EnvoyOptions)) {
    let releases = e2e::envoy::versions().unwrap();
    let mut failed = Vec::new();
    for (version, bin) in &releases {
        let opts = EnvoyOptions {
            bin: Some(bin.clone()),
            ..EnvoyOptions::default()
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| case(version, &opts))) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failed.push(format!("Envoy {version}: {msg}"));
        }
    }
    let tried: Vec<&str> = releases.iter().map(|(v, _)| v.as_str()).collect();
    assert!(
        failed.is_empty(),
        "failed on {} of {tried:?}:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// dev-rls (`search_docs` allowed `search_docs` calls a day, every other
/// tool 1000), mcp-upstream and Envoy with `envoy/<template>` and `plugin`,
/// run with `opts`.
fn stack(
    template: &str,
    plugin: &str,
    search_docs: u64,
    extra: &[(&str, String)],
    opts: &EnvoyOptions,
) -> Stack {
    let rls = DevRls::start(&[&limits(search_docs, 1000)]).unwrap();
    Stack::start_opts(rls, template, plugin, extra, opts).unwrap()
}

/// Whether `version` has Envoy's fix for a body frame dropped when a filter
/// continues after resuming (envoy#46842): 1.36.10, 1.37.6 and 1.38.4 by
/// their changelogs; 1.39.1, published the day after the 1.39 backport
/// (envoy#46992) was made; every release from 1.40.0.
fn has_resume_fix(version: &str) -> bool {
    let n: Vec<u64> = version.split('.').map(|p| p.parse().unwrap()).collect();
    match (n[0], n[1], n[2]) {
        (1, 36, p) => p >= 10,
        (1, 37, p) => p >= 6,
        (1, 38, p) => p >= 4,
        (1, 39, p) => p >= 1,
        (1, m, _) => m >= 40,
        (major, _, _) => major > 1,
    }
}

/// Turns Envoy's fix off (its runtime guard set to false).
fn without_resume_fix() -> (&'static str, String) {
    (
        "admin:\n",
        "layered_runtime:\n  layers:\n  - name: static\n    static_layer:\n      \
         envoy.reloadable_features.filter_manager_forward_added_data_on_continue: false\nadmin:\n"
            .to_owned(),
    )
}

/// A `tools/call` of `get_weather` with id `id`, exactly `len` bytes long,
/// padded with pseudo-random letters and digits: a piece lost, repeated or
/// moved shows in a byte-for-byte comparison.
fn body_of(id: u64, len: usize) -> String {
    let bare = tools_call_with(id, "get_weather", r#"{"pad":""}"#).len();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ (len as u64) ^ (id << 32);
    let pad: String = (0..len - bare)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(alphabet[(x % 62) as usize])
        })
        .collect();
    let body = tools_call_with(id, "get_weather", &format!(r#"{{"pad":"{pad}"}}"#));
    assert_eq!(body.len(), len);
    body
}

/// `body` cut into `n` pieces of nearly equal size.
fn pieces(body: &str, n: usize) -> Vec<Vec<u8>> {
    body.as_bytes()
        .chunks(body.len().div_ceil(n))
        .map(<[u8]>::to_vec)
        .collect()
}

/// Sends a POST of `parts` on a new connection, chunked or with
/// `content-length`: the head together with the first part, then each
/// further part once `wait` returns (and the last chunk, for a chunked
/// body, once it returns after the last part).
fn send_parts(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    parts: &[Vec<u8>],
    chunked: bool,
    wait: &dyn Fn(),
) -> e2e::Result<Response> {
    let total: usize = parts.iter().map(Vec::len).sum();
    let mut req = Request::post("/mcp").headers(headers);
    req = if chunked {
        req.header("transfer-encoding", "chunked")
    } else {
        req.header("content-length", &total.to_string())
    };
    let frame = |part: &[u8]| {
        if chunked {
            let mut wire = format!("{:x}\r\n", part.len()).into_bytes();
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
            wire
        } else {
            part.to_vec()
        }
    };
    let mut conn = Conn::open(addr)?;
    let mut first = req.head_bytes(&addr.to_string());
    first.extend(frame(&parts[0]));
    conn.write_raw(&first)?;
    for part in &parts[1..] {
        wait();
        conn.write_raw(&frame(part))?;
    }
    if chunked {
        wait();
        conn.write_raw(b"0\r\n\r\n")?;
    }
    conn.read_response(Duration::from_secs(10), false)
}

/// For [`send_parts`] under `header_fast_path`: waits, the first time, until
/// the filter has had one more rate-limit verdict than when it was made (its
/// `ok` counter), so that what follows arrives after the verdict; then 10 ms
/// each time.
fn after_the_verdict(s: &Stack) -> impl Fn() + '_ {
    let before = s.stat("ok");
    let waited = Cell::new(false);
    move || {
        if !waited.replace(true) {
            let ok = "wasmcustom.mcp_ratelimit.ok";
            s.envoy
                .wait_for_stat(ok, |n| n > before, Duration::from_secs(5))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What mcp-upstream received last, as (requests, incomplete, last body).
fn received(s: &Stack) -> (u64, u64, String) {
    let st = s.up.stats().unwrap();
    (
        st["requests"].as_u64().unwrap(),
        st["incomplete"].as_u64().unwrap(),
        st["last_body"].as_str().unwrap().to_owned(),
    )
}

/// Asserts that `got` is `sent`, saying where they first differ.
fn assert_same_body(what: &str, got: &str, sent: &str) {
    if got != sent {
        let at = got
            .bytes()
            .zip(sent.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(sent.len()));
        panic!(
            "{what}: the MCP server got {} bytes for the {} sent, first difference at byte {at}",
            got.len(),
            sent.len()
        );
    }
}

/// Asserts that `resp` is the answer of mcp-upstream to `tools/call` `tool`
/// with id `id`.
fn assert_served(what: &str, resp: &Response, id: u64, tool: &str) {
    assert_eq!(resp.status, 200, "{what}: {resp:?}");
    assert_eq!(
        resp.json(),
        json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"text":format!("{tool} called"),"type":"text"}],"isError":false}}),
        "{what}"
    );
}

/// Asserts the exact denial a client sees for request `id`.
fn assert_denied(resp: &Response, id: u64) {
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(
        resp.header("retry-after"),
        Some(DAY_LEFT.to_string().as_str())
    );
    assert_eq!(
        resp.text(),
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":429,"message":"Rate limit exceeded","data":{{"retryAfterSeconds":{DAY_LEFT}}}}}}}"#
        )
    );
}

fn via_call_tool(id: u64, inner: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"call_tool","arguments":{{"tool_name":"{inner}","parameters":{{"query":"q"}}}}}}}}"#
    )
}

/// A `search_docs` call sent slowly in pieces while its bucket is empty: the
/// denial comes, and the MCP server has seen nothing of it, not even its
/// head (which it would count as `receiving`, then `incomplete`).
fn assert_held_and_denied(s: &Stack, id: u64) {
    let (requests, incomplete, _) = received(s);
    let body = tools_call(id, "search_docs");
    let resp = Request::post("/mcp")
        .headers(JSON)
        .chunks(pieces(&body, 6))
        .chunk_delay(Duration::from_millis(30))
        .send(s.addr)
        .unwrap();
    assert_denied(&resp, id);
    assert_eq!(
        received(s).0,
        requests,
        "a denied request reached the server"
    );
    assert_eq!(
        received(s).1,
        incomplete,
        "a denied request's head reached the server"
    );
    assert_eq!(s.up.receiving().unwrap(), 0);
}

/// Bodies of each size, sent each way, reach the MCP server byte for byte.
fn assert_bodies_intact(s: &Stack, sizes: &[usize]) {
    let gap = Duration::from_millis(10);
    let mut id = 1000;
    for &size in sizes {
        for way in [
            "content-length",
            "content-length in 4 pieces",
            "chunked in 5 pieces",
            "chunked in 3 pieces with a trailer",
        ] {
            id += 1;
            let body = body_of(id, size);
            let resp = match way {
                "content-length" => Request::post("/mcp")
                    .headers(JSON)
                    .body(body.clone())
                    .send(s.addr),
                "content-length in 4 pieces" => {
                    send_parts(s.addr, JSON, &pieces(&body, 4), false, &|| {
                        std::thread::sleep(gap)
                    })
                }
                "chunked in 5 pieces" => Request::post("/mcp")
                    .headers(JSON)
                    .chunks(pieces(&body, 5))
                    .chunk_delay(gap)
                    .send(s.addr),
                _ => Request::post("/mcp")
                    .headers(JSON)
                    .chunks(pieces(&body, 3))
                    .trailer("x-trailer", "t")
                    .chunk_delay(gap)
                    .send(s.addr),
            };
            let what = format!("{size} bytes, {way}");
            assert_served(&what, &resp.unwrap(), id, "get_weather");
            let (_, incomplete, got) = received(s);
            assert_eq!(incomplete, 0, "{what}");
            assert_same_body(&what, &got, &body);
        }
    }
}

#[test]
fn shipped_configs_validate_on_every_release() {
    let wasm = (
        "filename: target/mcp_ratelimit.wasm",
        format!("filename: {}", wasm_path().unwrap()),
    );
    on_every_release(|_, opts| {
        for name in ["envoy.yaml", "envoy-buffer-filter.yaml"] {
            let yaml = render(&shipped(name).unwrap(), std::slice::from_ref(&wasm)).unwrap();
            let (ok, output) = Envoy::validate_with(&yaml, opts).unwrap();
            assert!(ok, "{name}:\n{output}");
            assert!(
                output.contains("mcp-ratelimit configured"),
                "{name}:\n{output}"
            );
        }
        // The field is known, not ignored: a misspelt one is refused.
        let yaml = render(
            &shipped("envoy.yaml").unwrap(),
            &[
                wasm.clone(),
                (
                    "allow_on_headers_stop_iteration: true",
                    "allow_on_headers_stop_iteratio: true".to_owned(),
                ),
            ],
        )
        .unwrap();
        let (ok, output) = Envoy::validate_with(&yaml, opts).unwrap();
        assert!(
            !ok,
            "a misspelt allow_on_headers_stop_iteration was accepted"
        );
        // "no such field: 'allow_on_headers_stop_iteratio'"
        assert!(
            output.contains("'allow_on_headers_stop_iteratio'"),
            "{output}"
        );
    });
}

#[test]
fn core_cases_on_every_release() {
    on_every_release(|_, opts| {
        let mut s = stack("envoy.yaml", PLUGIN, 3, &[], opts);
        let yaml = render_config(
            &shipped("envoy.yaml").unwrap(),
            s.rls.port(),
            s.up.port(),
            PLUGIN_DENY,
            &[],
        )
        .unwrap();
        let closed = Envoy::start_with(&yaml, opts).unwrap();
        let closed_addr = closed.listener_addr().unwrap();

        // Allowed calls reach the server, through both Envoys.
        assert_served(
            "allowed",
            &s.post(&tools_call(1, "get_weather")),
            1,
            "get_weather",
        );
        let resp = e2e::post_json(closed_addr, "/mcp", &tools_call(2, "get_weather"), &[]).unwrap();
        assert_served("allowed, fail-closed Envoy", &resp, 2, "get_weather");
        assert_eq!(s.up.calls("get_weather").unwrap(), 2);

        // call_tool is counted as its inner tool: 1 of search_docs' 3.
        let resp = s.post(&via_call_tool(3, "search_docs"));
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(
            resp.json()["result"]["content"][0]["text"],
            "search_docs called via call_tool"
        );
        let sent = s.rls_requests();
        assert_eq!(
            sent.last().unwrap()["descriptors"],
            json!([{"entries": [{"key": "tool", "value": "search_docs"}], "hits_addend": null}])
        );

        // A 2025-03-26 batch of 2 calls counts 2, in one call to the service.
        let batch = format!(
            r#"[{},{},{{"jsonrpc":"2.0","method":"notifications/progress"}}]"#,
            tools_call(4, "search_docs"),
            via_call_tool(5, "search_docs")
        );
        let resp = s.post(&batch);
        assert_eq!(resp.status, 200, "{resp:?}");
        let ids = resp.batch_ids();
        assert_eq!(ids, [json!(4), json!(5)]);
        let sent_now = s.rls_requests();
        assert_eq!(sent_now.len(), sent.len() + 1);
        assert_eq!(
            sent_now.last().unwrap()["descriptors"],
            json!([{"entries": [{"key": "tool", "value": "search_docs"}], "hits_addend": 2}])
        );
        assert_eq!(s.up.calls("search_docs").unwrap(), 3);

        // The 4th call is denied with the exact JSON-RPC 429, however it
        // comes, and none of it reaches the server.
        assert_denied(&s.post(&tools_call(6, "search_docs")), 6);
        assert_held_and_denied(&s, 7);
        let resp = s.post(&format!(
            "[{},{}]",
            tools_call(8, "search_docs"),
            tools_call(9, "get_weather")
        ));
        assert_eq!(resp.status, 429, "{resp:?}");
        let ids = resp.batch_ids();
        assert_eq!(ids, [json!(8), json!(9)]);
        assert_eq!(s.up.calls("search_docs").unwrap(), 3);
        // Denied by the service, or again by the over-limit cache.
        assert_eq!(s.stat("over_limit") + s.stat("over_limit_cached"), 3);

        // Bodies reach the server intact, whatever their size and framing.
        assert_bodies_intact(&s, &[1024, 65_536, 1_000_000, MAX_BODY]);

        // One byte over the cap, declared or streamed (in one chunk or in
        // 16): the filter refuses it with its JSON-RPC error, before Envoy's
        // buffer limit (twice the cap) is reached.
        let (requests, incomplete, _) = received(&s);
        let big = body_of(12, MAX_BODY + 1);
        let too_large = format!(
            r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":-32600,"message":"Request body too large","data":{{"maxBodyBytes":{MAX_BODY}}}}}}}"#
        );
        for (way, req) in [
            ("declared", Request::post("/mcp").body(big.clone())),
            (
                "one chunk",
                Request::post("/mcp").chunks([big.clone().into_bytes()]),
            ),
            ("16 chunks", Request::post("/mcp").chunks(pieces(&big, 16))),
        ] {
            let resp = req.headers(JSON).send(s.addr).unwrap();
            assert_eq!(resp.status, 413, "{way}: {resp:?}");
            assert_eq!(resp.text(), too_large, "{way}");
        }
        let (requests_now, incomplete_now, _) = received(&s);
        assert_eq!((requests_now, incomplete_now), (requests, incomplete));

        // Without the service: fail-open lets the call through, fail-closed
        // answers the JSON-RPC error and the server never sees the call.
        s.rls.stop().unwrap();
        let calls = s.up.calls("get_weather").unwrap();
        assert_served(
            "fail-open",
            &s.post(&tools_call(10, "get_weather")),
            10,
            "get_weather",
        );
        assert_eq!((s.stat("error"), s.stat("failure_mode_allowed")), (1, 1));
        let resp =
            e2e::post_json(closed_addr, "/mcp", &tools_call(11, "get_weather"), &[]).unwrap();
        assert_eq!(resp.status, 503, "{resp:?}");
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(
            resp.text(),
            r#"{"jsonrpc":"2.0","id":11,"error":{"code":-32603,"message":"Rate limit service unavailable"}}"#
        );
        assert_eq!(s.up.calls("get_weather").unwrap(), calls + 1);
        assert_eq!(closed.stat("wasmcustom.mcp_ratelimit.error"), 1);
        assert_eq!(
            closed.stat("wasmcustom.mcp_ratelimit.failure_mode_allowed"),
            0
        );
    });
}

#[test]
fn buffer_filter_variant_on_every_release() {
    on_every_release(|_, opts| {
        let s = stack("envoy-buffer-filter.yaml", PLUGIN_BUFFER, 3, &[], opts);
        for id in 1..=3 {
            assert_served(
                "allowed",
                &s.post(&tools_call(id, "search_docs")),
                id,
                "search_docs",
            );
        }
        assert_denied(&s.post(&tools_call(4, "search_docs")), 4);
        assert_held_and_denied(&s, 5);
        assert_eq!(s.up.calls("search_docs").unwrap(), 3);
        assert_bodies_intact(&s, &[1024, 65_536, MAX_BODY]);
    });
}

/// Envoy's verdict on `envoy/<template>` with `plugin` as the filter's
/// configuration (`--mode validate` runs the filter's configure step).
fn validate_plugin(template: &str, plugin: &str, opts: &EnvoyOptions) -> (bool, String) {
    let yaml = render_config(&shipped(template).unwrap(), 1, 2, plugin, &[]).unwrap();
    Envoy::validate_with(&yaml, opts).unwrap()
}

/// `header_fast_path`: the body arrives in three pieces, the first with the
/// head (held while the rate-limit call is in flight), the others after the
/// verdict. On releases with Envoy's fix the body arrives intact; the
/// filter refuses the fast path on releases without it, naming the release.
/// Turned off by its runtime guard, the fix is gone and the second piece is
/// lost: the filter cannot see runtime guards (README, Envoy releases).
#[test]
fn header_fast_path_body_after_the_verdict_on_every_release() {
    // A route timeout short enough to wait for: a request whose body never
    // ends at the server is answered 504 after it.
    let timeout = ("timeout: 60s", "timeout: 0.5s".to_owned());
    on_every_release(|version, opts| {
        if !has_resume_fix(version) {
            let (ok, output) = validate_plugin("envoy.yaml", PLUGIN_FAST, opts);
            assert!(!ok, "the fast path was accepted:\n{output}");
            let want = format!("Envoy {version} can drop request body data");
            assert!(output.contains(&want), "{output}");
            // Without the fast path the same release is fine.
            assert!(validate_plugin("envoy.yaml", PLUGIN, opts).0);
            return;
        }
        for (fix_on, extra) in [
            (true, vec![timeout.clone()]),
            (false, vec![timeout.clone(), without_resume_fix()]),
        ] {
            let s = stack("envoy.yaml", PLUGIN_FAST, 3, &extra, opts);
            for (id, chunked) in [(1, true), (2, false)] {
                let body = body_of(id, 3000);
                let parts = pieces(&body, 3);
                let wait = after_the_verdict(&s);
                let resp = send_parts(s.addr, FAST, &parts, chunked, &wait).unwrap();
                let (requests, incomplete, got) = received(&s);
                let what = format!("chunked {chunked}, fix on {fix_on}");
                if fix_on {
                    assert_served(&what, &resp, id, "get_weather");
                    assert_eq!(incomplete, 0, "{what}");
                    assert_same_body(&what, &got, &body);
                } else if chunked {
                    // The server gets a complete body without the second piece.
                    assert_eq!(resp.status, 200, "{what}: {resp:?}");
                    assert_eq!(incomplete, 0, "{what}");
                    let lost = [parts[0].clone(), parts[2].clone()].concat();
                    assert_same_body(&what, &got, std::str::from_utf8(&lost).unwrap());
                } else {
                    // The server waits for the bytes declared, which never
                    // come, until Envoy gives up and resets the request.
                    assert_eq!(resp.status, 504, "{what}: {resp:?}");
                    assert_eq!(requests, 1, "{what}");
                    e2e::wait_for(
                        "the server to count the request incomplete",
                        Duration::from_secs(5),
                        || (s.up.incomplete().unwrap() == 1).then_some(()),
                    )
                    .unwrap();
                }
            }
            assert_eq!(s.stat("fast_path"), 2);
        }
    });
}

/// `header_fast_path` with the buffer-filter variant is refused on every
/// release: the buffer filter sets `content-length` on a chunked request
/// from the bytes it is handed, and a request the filter resumes before its
/// body ends hands it a wrong count (too large with Envoy's fix, too small
/// without it, which lets the rest of the body reach the MCP server as a
/// request of its own).
#[test]
fn header_fast_path_with_the_buffer_filter_is_refused_on_every_release() {
    on_every_release(|_, opts| {
        let (ok, output) = validate_plugin("envoy-buffer-filter.yaml", PLUGIN_FAST_BUFFER, opts);
        assert!(!ok, "accepted:\n{output}");
        assert!(
            output.contains("`header_fast_path` needs `hold_headers`"),
            "{output}"
        );
        assert!(validate_plugin("envoy-buffer-filter.yaml", PLUGIN_BUFFER, opts).0);
    });
}

/// A body of another content type that starts with whitespace split over
/// several frames: the filter reads the whitespace, holds it, and lets the
/// request go on at the first byte that is not JSON, from within a later
/// body callback. The body reaches the MCP server byte for byte.
#[test]
fn sniffed_body_resumed_mid_body_on_every_release() {
    on_every_release(|_, opts| {
        let s = stack("envoy.yaml", PLUGIN, 3, &[], opts);
        let parts: Vec<Vec<u8>> = vec![
            b"   \n  ".to_vec(),
            b"\t  hello, not JSON".to_vec(),
            b" -- the rest".to_vec(),
            b" and the end".to_vec(),
        ];
        let body = String::from_utf8(parts.concat()).unwrap();
        let headers = [("content-type", "text/plain")];
        for chunked in [true, false] {
            let resp = send_parts(s.addr, &headers, &parts, chunked, &|| {
                std::thread::sleep(Duration::from_millis(30));
            })
            .unwrap();
            let what = format!("chunked {chunked}");
            // The MCP server's own answer to a body that is not JSON.
            assert_eq!(resp.status, 400, "{what}: {resp:?}");
            assert!(
                resp.header("x-envoy-upstream-service-time").is_some(),
                "{what}: {resp:?}"
            );
            assert_eq!(resp.json()["error"]["code"], -32700, "{what}: {resp:?}");
            let (_, incomplete, got) = received(&s);
            assert_eq!(incomplete, 0, "{what}");
            assert_same_body(&what, &got, &body);
        }
    });
}
