//! Every body the filter judges is judged by the same rules and read within
//! the same cap, whatever its content type, chunking or path.

use super::*;

/// A POST of another content type (or none), with extra headers.
fn other_type(ct: Option<&str>) -> MockHost {
    let host = MockHost::default().with(":method", "POST");
    match ct {
        Some(ct) => host.with("content-type", ct),
        None => host,
    }
}

const OTHER_TYPES: [Option<&str>; 3] = [Some("text/plain"), None, Some("application/octet-stream")];

fn refused_with(step: Step, status: u32, code: i64) -> serde_json::Value {
    let Step::Reply(r) = step else {
        panic!("expected a reply, got {step:?}")
    };
    assert_eq!(r.status, status, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], code, "{}", r.body);
    v
}

#[test]
fn sniffed_bodies_get_the_mcp_header_checks() {
    for ct in OTHER_TYPES {
        // A name header that disagrees with the body.
        let host = other_type(ct).with("mcp-name", "get_weather");
        let mut flow = Flow::new(cfg(BASIC));
        let v = refused_with(
            sniff(&mut flow, &host, &[&call("search_docs")]),
            400,
            -32020,
        );
        assert_eq!(v["id"], 1);
        assert_eq!(host.count_of(Counter::HeaderMismatch), 1, "{ct:?}");
        assert_eq!(host.count_of(Counter::Checked), 0);
        // A 2026-07-28 request without its required headers.
        let host = other_type(ct).with("mcp-protocol-version", MODERN);
        let mut flow = Flow::new(cfg(BASIC));
        refused_with(
            sniff(&mut flow, &host, &[&call("search_docs")]),
            400,
            -32020,
        );
        // A protocol version that disagrees with the body's.
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2025-11-25"}}}"#;
        let host = modern_call(other_type(ct), "x").with("mcp-method", "tools/list");
        let mut host = host;
        host.headers.remove("mcp-name");
        let mut flow = Flow::new(cfg(BASIC));
        refused_with(sniff(&mut flow, &host, &[body]), 400, -32020);
        // A repeated routing header, refused with the headers.
        let mut host = other_type(ct).with("mcp-name", "search_docs");
        host.repeated.push("mcp-name".into());
        let mut flow = Flow::new(cfg(BASIC));
        refused_with(flow.on_request_headers(false, &host), 400, -32020);
        // Batches follow the protocol version.
        let batch = format!("[{}]", call("a"));
        let host = other_type(ct).with("mcp-protocol-version", "2025-06-18");
        let mut flow = Flow::new(cfg(BASIC));
        refused_with(sniff(&mut flow, &host, &[&batch]), 400, -32600);
        let host = other_type(ct);
        let mut flow = Flow::new(cfg(BASIC));
        assert!(matches!(
            sniff(&mut flow, &host, &[&batch]),
            Step::Dispatch(_)
        ));
    }
}

#[test]
fn sniffed_json_over_the_declared_cap_is_refused_at_its_first_byte() {
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":64}"#);
    for ct in OTHER_TYPES {
        let host = other_type(ct).with("content-length", "100000");
        let mut flow = Flow::new(c.clone());
        let mut read = 0;
        // Refused on the first chunk, long before the body ends.
        refused_with(
            sniff_counting(&mut flow, &host, &["  {\"jsonrpc\""], &mut read),
            413,
            -32600,
        );
        assert_eq!(host.count_of(Counter::BodyTooLarge), 1);
        // A body of another shape passes whatever its declared size.
        let mut flow = Flow::new(c.clone());
        assert_eq!(
            sniff(&mut flow, &host, &["\x00binary"]),
            Step::Continue(vec![])
        );
    }
}

#[test]
fn whitespace_cannot_carry_a_call_past_the_cap() {
    // Before: leading whitespace up to the cap made the filter read only
    // whitespace and pass the body, with the call after it.
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":1024}"#);
    let padding = " ".repeat(1024);
    let body = call("search_docs");
    for chunks in [
        vec![padding.as_str(), &body],
        vec![&padding[..1000], &padding[1000..], &body],
    ] {
        let host = other_type(Some("text/plain"));
        let mut flow = Flow::new(c.clone());
        let mut read = 0;
        refused_with(
            sniff_counting(&mut flow, &host, &chunks, &mut read),
            413,
            -32600,
        );
        assert!(read <= 1024, "read {read} bytes, over the cap");
    }
    // With trailers ending the body.
    let host = other_type(Some("text/plain"));
    let mut flow = Flow::new(c);
    let mut read = 0;
    let all = format!("{padding}{body}");
    assert_eq!(flow.on_request_headers(false, &host), Step::Pause);
    let s = flow.on_request_body(all.len(), false, &host);
    let s = follow(&mut flow, &host, all.as_bytes(), s, &mut read);
    let step = match s {
        Step::Pause => {
            let s = flow.on_request_trailers(&host);
            follow(&mut flow, &host, all.as_bytes(), s, &mut read)
        }
        other => other,
    };
    refused_with(step, 413, -32600);
    assert!(read <= 1024, "read {read} bytes, over the cap");
}

#[test]
fn whitespace_in_small_chunks_is_read_once() {
    // 2000 chunks of 100 bytes of whitespace, then a call: every byte is
    // read once while sniffing, the call's bytes once more to be judged.
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":1000000}"#);
    let ws = " \n\t\r".repeat(25);
    let body = call("search_docs");
    let mut chunks: Vec<&str> = vec![ws.as_str(); 2000];
    chunks.push(&body);
    let host = other_type(Some("text/plain"));
    let mut flow = Flow::new(c);
    let mut read = 0;
    let step = sniff_counting(&mut flow, &host, &chunks, &mut read);
    assert_eq!(
        entries(&sent(&step)),
        vec![vec![("tool".to_owned(), "search_docs".to_owned())]]
    );
    let total = 2000 * ws.len() + body.len();
    assert!(
        read <= 2 * total,
        "read {read} bytes for a body of {total}: not linear"
    );
}

#[test]
fn trailers_while_sniffing_read_within_the_cap() {
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":64}"#);
    let host = other_type(Some("text/plain"));
    // Not JSON-shaped: passes after its first bytes, whatever its size.
    let body = format!("x{}", "y".repeat(10_000));
    let mut flow = Flow::new(c.clone());
    assert_eq!(flow.on_request_headers(false, &host), Step::Pause);
    let mut read = 0;
    let s = flow.on_request_body(body.len(), false, &host);
    let s = follow(&mut flow, &host, body.as_bytes(), s, &mut read);
    assert_eq!(s, Step::Continue(vec![]));
    assert!(read <= 64);
    // Trailers before any decision (no body bytes yet): nothing to judge.
    let mut flow = Flow::new(c);
    assert_eq!(flow.on_request_headers(false, &host), Step::Pause);
    assert_eq!(flow.on_request_trailers(&host), Step::Continue(vec![]));
}

#[test]
fn fast_path_denial_of_an_oversized_body_answers_at_once_without_reading_it() {
    let over = reply_bytes(rls::CODE_OVER_LIMIT, 9);
    // Over the cap before the verdict: the denial is sent when the verdict
    // comes, the body never read.
    let host = modern_call(MockHost::post_json(), "search_docs");
    let mut flow = Flow::new(cfg(FAST));
    assert!(matches!(
        flow.on_request_headers(false, &host),
        Step::Dispatch(_)
    ));
    flow.on_dispatched(1, &host);
    assert_eq!(flow.on_request_body(10_000, false, &host), Step::Pause);
    let v = refused_with(flow.on_rls_response(1, 0, Some(&over), &host), 429, 429);
    assert_eq!(v["id"], serde_json::Value::Null);
    assert!(v.as_object().unwrap().contains_key("id"));
    // Over the cap after the verdict: answered as soon as it is.
    let mut flow = Flow::new(cfg(FAST));
    flow.on_request_headers(false, &host);
    flow.on_dispatched(2, &host);
    assert_eq!(flow.on_rls_response(2, 0, Some(&over), &host), Step::Pause);
    assert_eq!(flow.on_request_body(50, false, &host), Step::Pause);
    let v = refused_with(flow.on_request_body(97, false, &host), 429, 429);
    assert_eq!(v["id"], serde_json::Value::Null);
    // Ended by trailers, over the cap.
    let mut flow = Flow::new(cfg(FAST));
    flow.on_request_headers(false, &host);
    flow.on_dispatched(3, &host);
    flow.on_rls_response(3, 0, Some(&over), &host);
    assert_eq!(flow.on_request_body(90, false, &host), Step::Pause);
    assert_eq!(
        flow.on_request_trailers(&host),
        Step::ReadBody { start: 0, len: 90 }
    );
    // A failure under failure_mode_deny is answered the same way.
    let deny = cfg(
        r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":96,"header_fast_path":true,"failure_mode_deny":true}"#,
    );
    let mut flow = Flow::new(deny);
    flow.on_request_headers(false, &host);
    flow.on_dispatched(4, &host);
    assert_eq!(flow.on_request_body(5000, true, &host), Step::Pause);
    let v = refused_with(flow.on_rls_response(4, 14, None, &host), 503, -32603);
    assert_eq!(v["id"], serde_json::Value::Null);
}

#[test]
fn a_body_the_host_cannot_hand_over_is_refused() {
    let host = other_type(Some("text/plain"));
    let mut flow = Flow::new(cfg(BASIC));
    assert_eq!(flow.on_request_headers(false, &host), Step::Pause);
    assert_eq!(
        flow.on_request_body(10, true, &host),
        Step::ReadBody { start: 0, len: 10 }
    );
    refused_with(flow.on_body(&[], &host), 500, -32603);
}

#[test]
fn header_and_metadata_values_are_fetched_once_per_request() {
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","descriptors":[
        [{"key":"user","header":"x-user"},{"key":"tool","mcp":"tool"}],
        [{"key":"user","header":"x-user"}],
        [{"key":"sub","metadata":{"namespace":"jwt","path":["sub"]}},{"key":"tool","mcp":"tool"}]]}"#);
    let mut host = MockHost::post_json().with("x-user", "alice");
    host.metadata.insert("jwt/sub".into(), b"u-1".to_vec());
    let batch = format!("[{},{},{}]", call("a"), call("b"), call("a"));
    let mut flow = Flow::new(c);
    let req = sent(&drive(&mut flow, &host, &batch));
    assert_eq!(host.lookups_of("x-user"), 1);
    assert_eq!(host.lookups_of("jwt/sub"), 1);
    let hits: Vec<(Vec<(String, String)>, u64)> = req
        .descriptors
        .iter()
        .map(|d| {
            (
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect(),
                d.hits_addend.as_ref().map_or(1, |h| h.value),
            )
        })
        .collect();
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(
        hits,
        vec![
            (vec![pair("user", "alice"), pair("tool", "a")], 2),
            (vec![pair("user", "alice")], 3),
            (vec![pair("sub", "u-1"), pair("tool", "a")], 2),
            (vec![pair("user", "alice"), pair("tool", "b")], 1),
            (vec![pair("sub", "u-1"), pair("tool", "b")], 1),
        ]
    );
}

#[test]
fn every_read_stays_within_the_cap() {
    // Whatever the path, no ReadBody asks for more than max_body_bytes.
    let c =
        cfg(r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":64,"header_fast_path":true}"#);
    let big = format!("{}{}", " ".repeat(30), "{".repeat(200));
    for host in [
        other_type(Some("text/plain")),
        MockHost::post_json(),
        modern_call(MockHost::post_json(), "t"),
    ] {
        let mut flow = Flow::new(c.clone());
        let mut step = flow.on_request_headers(false, &host);
        if let Step::Dispatch(_) = step {
            flow.on_dispatched(1, &host);
            step = flow.on_rls_response(1, 0, Some(&reply_bytes(rls::CODE_OVER_LIMIT, 1)), &host);
        }
        let mut size = 0;
        while size < big.len() && !matches!(step, Step::Reply(_) | Step::Continue(_)) {
            size += 7;
            let s = flow.on_request_body(size.min(big.len()), size >= big.len(), &host);
            let mut read = 0;
            step = follow(&mut flow, &host, big.as_bytes(), s, &mut read);
            assert!(read <= 64, "read {read}");
        }
        assert!(
            matches!(step, Step::Reply(_)),
            "{:?}: {step:?}",
            host.headers
        );
    }
}

#[test]
fn a_body_read_the_host_fails_is_refused_and_ends_the_request() {
    for host in [MockHost::post_json(), other_type(Some("text/plain"))] {
        let mut flow = Flow::new(cfg(BASIC));
        flow.on_request_headers(false, &host);
        assert!(matches!(
            flow.on_request_body(10, true, &host),
            Step::ReadBody { .. }
        ));
        refused_with(flow.on_body_unreadable(&host), 500, -32603);
        assert!(flow.replied());
        // Nothing later lets it through.
        assert_eq!(flow.on_request_body(20, true, &host), Step::Pause);
        assert_eq!(flow.on_request_trailers(&host), Step::Pause);
    }
}

#[test]
fn the_fast_path_is_for_json_content_types_only() {
    // Another content type with 2026-07-28 headers takes the body path,
    // which checks the headers against the body itself.
    let host = modern_call(other_type(Some("text/plain")), "search_docs");
    let mut flow = Flow::new(cfg(FAST));
    let step = sniff(&mut flow, &host, &[&call("search_docs")]);
    assert_eq!(
        entries(&sent(&step)),
        vec![vec![("tool".to_owned(), "search_docs".to_owned())]]
    );
    assert_eq!(host.count_of(Counter::FastPath), 0);
    assert_eq!(host.count_of(Counter::Inspected), 1);
}

#[test]
fn an_empty_hand_over_of_buffered_bytes_is_refused_in_every_state() {
    let over = reply_bytes(rls::CODE_OVER_LIMIT, 9);
    // Judging a JSON body.
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    flow.on_request_headers(false, &host);
    flow.on_request_body(93, true, &host);
    refused_with(flow.on_body(&[], &host), 500, -32603);
    // Reading a fast-path denial's body for its id.
    let host = modern_call(MockHost::post_json(), "search_docs");
    let mut flow = Flow::new(cfg(FAST));
    flow.on_request_headers(false, &host);
    flow.on_dispatched(1, &host);
    flow.on_rls_response(1, 0, Some(&over), &host);
    assert_eq!(
        flow.on_request_body(46, true, &host),
        Step::ReadBody { start: 0, len: 46 }
    );
    refused_with(flow.on_body(&[], &host), 500, -32603);
    // An empty body is not a hand-over failure: it is judged (and refused
    // as not JSON).
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    assert_eq!(
        flow.on_request_headers(true, &host),
        Step::ReadBody { start: 0, len: 0 }
    );
    refused_with(flow.on_body(&[], &host), 400, -32700);
}
