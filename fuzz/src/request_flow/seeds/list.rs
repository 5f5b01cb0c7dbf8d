//! The seeds: one per behaviour worth starting from, with the decision it
//! must get. Names are file names under `fuzz/seeds/request_flow/`.

use super::messages::{members, param_headers};
use super::*;

pub(super) fn seeds() -> Vec<Seed> {
    let mut all = basics();
    all.extend(sniffed_bodies());
    all.extend(caps_and_reads());
    all.extend(members());
    all.extend(param_headers());
    all
}

/// The unit tests' scenarios, JSON content types.
fn basics() -> Vec<Seed> {
    let meta_tool = r#"{"jsonrpc":"2.0","id":"req-1","method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs"}}}"#;
    let meta_tool_5 = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"get_weather"}}}"#;
    let get_weather = CALL.replace("search_docs", "get_weather");
    let tools_list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    vec![
        seed("allowed", base(), Some(CALL), CALLED),
        seed(
            "batch_refused",
            Input {
                config: 5,
                ..base()
            },
            Some(r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}]"#),
            refused(400, -32600),
        ),
        seed(
            "chunked_trailers",
            Input {
                events: vec![Event::Chunk(10), Event::Chunk(30)],
                end: End::Trailers,
                ..base()
            },
            Some(get_weather.as_str()),
            CALLED,
        ),
        seed(
            "compressed",
            Input {
                content_encoding: Some(ContentEncoding::Gzip),
                ..base()
            },
            Some(CALL),
            refused(415, -32600),
        ),
        seed(
            "dispatch_failed",
            Input {
                config: 1,
                dispatch_fails: true,
                ..base()
            },
            Some(CALL),
            called_then(503, -32603),
        ),
        seed(
            "empty_at_headers",
            Input {
                end_at_headers: true,
                ..base()
            },
            None,
            refused(400, -32700),
        ),
        seed(
            "every_source",
            Input {
                config: 4,
                protocol_version: plain("2025-06-18"),
                session_id: plain("summary"),
                user: Some(b"ab".to_vec()),
                metadata_sub: Some(b"u".to_vec()),
                ..base()
            },
            Some(CALL),
            CALLED,
        ),
        seed(
            "fail_closed",
            Input {
                config: 1,
                rls: RlsReply::Grpc(14),
                ..base()
            },
            Some(CALL),
            called_then(503, -32603),
        ),
        seed(
            "fast_path_allowed",
            Input {
                content_length: Some(ContentLength::Value(100_000)),
                ..fast(
                    RlsReply::Ok {
                        request_headers: vec![],
                        response_headers: vec![],
                    },
                    vec![Event::Chunk(10), Event::Answer],
                )
            },
            Some(FAST_BODY),
            CALLED,
        ),
        seed(
            "fast_path_meta_tool_base64",
            Input {
                config: 3,
                mcp_name: plain("call_tool"),
                param_tool_name: Some(HeaderValue::Base64(w("get_weather"))),
                end: End::Trailers,
                ..fast(over_limit(3), vec![])
            },
            Some(meta_tool_5),
            called_then(429, 429),
        ),
        seed(
            "get_passthrough",
            Input {
                method: HttpMethod::Get,
                ..base()
            },
            Some(CALL),
            PASSED,
        ),
        seed(
            "header_mismatch",
            Input {
                mcp_method: plain("tools/list"),
                ..base()
            },
            Some(CALL),
            refused(400, -32020),
        ),
        seed("no_call_for_tools_list", base(), Some(tools_list), PASSED),
        seed(
            "over_limit_batch",
            Input {
                rls: over_limit(2),
                ..base()
            },
            Some(BATCH),
            called_then(429, 429),
        ),
        seed(
            "over_limit_meta_tool",
            Input {
                rls: over_limit(37),
                ..base()
            },
            Some(meta_tool),
            called_then(429, 429),
        ),
        seed(
            "parse_error",
            base(),
            Some("not json"),
            refused(400, -32700),
        ),
        seed(
            "repeated_routing_header",
            Input {
                mcp_name: plain("search_docs"),
                repeated: 1 << 2,
                ..base()
            },
            Some(CALL),
            refused(400, -32020),
        ),
        seed(
            "too_large_declared",
            Input {
                config: 1,
                content_length: Some(ContentLength::Value(1000)),
                ..base()
            },
            Some(CALL),
            refused(413, -32600),
        ),
    ]
}

/// Other content types: JSON-shaped bodies get every rule JSON gets.
fn sniffed_bodies() -> Vec<Seed> {
    let version_mismatch = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2025-11-25"}}}"#;
    vec![
        seed(
            "sniffed_form",
            sniffed(ContentType::FormUrlEncoded),
            Some("a=1&b={}"),
            PASSED,
        ),
        seed(
            "sniffed_json",
            Input {
                rls: over_limit(1),
                ..sniffed(ContentType::TextPlain)
            },
            Some(CALL),
            called_then(429, 429),
        ),
        seed(
            "sniffed_name_mismatch",
            Input {
                mcp_name: plain("get_weather"),
                ..sniffed(ContentType::TextPlain)
            },
            Some(CALL),
            refused(400, -32020),
        ),
        seed(
            "sniffed_modern_without_headers",
            Input {
                protocol_version: plain("2026-07-28"),
                ..sniffed(ContentType::OctetStream)
            },
            Some(CALL),
            refused(400, -32020),
        ),
        seed(
            "sniffed_repeated_header",
            Input {
                mcp_name: plain("search_docs"),
                repeated: 1 << 2,
                ..sniffed(ContentType::Missing)
            },
            Some(CALL),
            refused(400, -32020),
        ),
        seed(
            "sniffed_version_mismatch",
            Input {
                protocol_version: plain("2026-07-28"),
                mcp_method: plain("tools/list"),
                ..sniffed(ContentType::TextPlain)
            },
            Some(version_mismatch),
            refused(400, -32020),
        ),
        seed(
            "sniffed_batch_refused_by_version",
            Input {
                protocol_version: plain("2025-06-18"),
                ..sniffed(ContentType::TextPlain)
            },
            Some(BATCH),
            refused(400, -32600),
        ),
        seed(
            "sniffed_batch_allowed_by_version",
            Input {
                protocol_version: plain("2025-03-26"),
                ..sniffed(ContentType::TextPlain)
            },
            Some(BATCH),
            CALLED,
        ),
        seed(
            "sniffed_read_error_in_padding",
            Input {
                padding: Padding::Many(600),
                read_fault: Some(ReadFault {
                    read: 2,
                    kind: FaultKind::Error,
                }),
                ..sniffed(ContentType::TextPlain)
            },
            Some(CALL),
            refused(500, -32603),
        ),
        seed(
            "sniffed_form_feed_padding",
            Input {
                padding: Padding::FormFeeds(3),
                ..sniffed(ContentType::TextPlain)
            },
            Some(CALL),
            refused(400, -32700),
        ),
        seed(
            "sniffed_empty_handover",
            Input {
                read_fault: Some(ReadFault {
                    read: 0,
                    kind: FaultKind::Empty,
                }),
                ..sniffed(ContentType::TextPlain)
            },
            Some(CALL),
            refused(500, -32603),
        ),
    ]
}

/// `max_body_bytes`: declared and buffered sizes, whitespace padding,
/// denials decided on the headers, bodies the host does not hand over.
fn caps_and_reads() -> Vec<Seed> {
    let tools_list_then_call = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list"}}{}{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"search_docs"}}}}"#,
        " ".repeat(220)
    );
    let small = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#;
    vec![
        seed(
            "sniffed_oversized_body",
            Input {
                config: 1,
                ..sniffed(ContentType::TextPlain)
            },
            Some(tools_list_then_call.as_str()),
            refused(413, -32600),
        ),
        seed(
            "sniffed_declared_over_cap",
            Input {
                config: 1,
                content_length: Some(ContentLength::Value(100_000)),
                ..sniffed(ContentType::TextPlain)
            },
            Some(format!("  {CALL}").as_str()),
            refused(413, -32600),
        ),
        seed(
            "sniffed_binary_declared_over_cap",
            Input {
                config: 1,
                content_length: Some(ContentLength::Value(100_000)),
                ..sniffed(ContentType::TextPlain)
            },
            Some("\u{0}binary upload"),
            PASSED,
        ),
        seed(
            "whitespace_to_cap_in_chunks",
            Input {
                config: 1,
                padding: Padding::NearCap(0),
                events: vec![Event::Chunks {
                    count: 255,
                    size: 3,
                }],
                ..sniffed(ContentType::TextPlain)
            },
            Some(CALL),
            refused(413, -32600),
        ),
        seed(
            "whitespace_in_many_chunks",
            Input {
                padding: Padding::Many(20_000),
                events: vec![Event::Chunks {
                    count: 255,
                    size: 100,
                }],
                ..sniffed(ContentType::TextPlain)
            },
            Some(CALL),
            CALLED,
        ),
        seed(
            "whitespace_only_to_cap",
            Input {
                config: 8,
                padding: Padding::NearCap(0),
                ..sniffed(ContentType::TextPlain)
            },
            None,
            refused(413, -32600),
        ),
        seed(
            "whitespace_only_below_cap",
            Input {
                config: 8,
                padding: Padding::NearCap(-1),
                ..sniffed(ContentType::TextPlain)
            },
            None,
            PASSED,
        ),
        seed(
            "fast_path_denied_reads_id",
            fast(over_limit(9), vec![Event::Answer]),
            Some(small),
            called_then(429, 429),
        ),
        seed(
            "fast_path_denied_over_cap_before_verdict",
            fast(
                over_limit(9),
                vec![Event::Chunk(10), Event::Answer, Event::Stray(99)],
            ),
            Some(FAST_BODY),
            called_then(429, 429),
        ),
        seed(
            "fast_path_denied_over_cap_after_verdict",
            fast(
                over_limit(9),
                vec![Event::Answer, Event::Chunk(50), Event::Chunk(50)],
            ),
            Some(FAST_BODY),
            called_then(429, 429),
        ),
        seed(
            "fast_path_failure_over_cap",
            Input {
                config: 8,
                ..fast(RlsReply::Grpc(14), vec![Event::Chunk(10), Event::Answer])
            },
            Some(FAST_BODY),
            called_then(503, -32603),
        ),
        seed(
            "fast_path_failure_over_cap_at_once",
            Input {
                config: 8,
                ..fast(RlsReply::Grpc(14), vec![Event::Chunk(60)])
            },
            Some(FAST_BODY),
            called_then(503, -32603),
        ),
        seed(
            "fast_path_denial_empty_handover",
            Input {
                read_fault: Some(ReadFault {
                    read: 0,
                    kind: FaultKind::Empty,
                }),
                ..fast(over_limit(9), vec![Event::Answer])
            },
            Some(small),
            called_then(500, -32603),
        ),
        seed(
            "json_read_error",
            Input {
                read_fault: Some(ReadFault {
                    read: 0,
                    kind: FaultKind::Error,
                }),
                ..base()
            },
            Some(CALL),
            refused(500, -32603),
        ),
        seed(
            "fast_path_denial_read_error",
            Input {
                read_fault: Some(ReadFault {
                    read: 0,
                    kind: FaultKind::Error,
                }),
                ..fast(over_limit(9), vec![Event::Answer])
            },
            Some(small),
            called_then(500, -32603),
        ),
        seed(
            "json_empty_handover",
            Input {
                read_fault: Some(ReadFault {
                    read: 0,
                    kind: FaultKind::Empty,
                }),
                ..base()
            },
            Some(CALL),
            refused(500, -32603),
        ),
    ]
}
