//! Seeds about what the messages say: ambiguous members, and `Mcp-Param`
//! headers against the arguments they mirror.

use super::*;

/// Members the upstream might read differently: duplicated or case-folded
/// `jsonrpc`, `_meta` and its protocol version (for every method), and
/// `jsonrpc` values other than "2.0".
pub(super) fn members() -> Vec<Seed> {
    let body = |m: Msg| Input {
        body: single(m),
        ..base()
    };
    let list_with_meta = Msg {
        method: Some(w("tools/list")),
        id: Some(Id::Int(1)),
        meta_version: Some(w("2025-06-18")),
        ..msg()
    };
    let meta = |spelling| {
        vec![extra(
            Level::Params,
            "_meta",
            spelling,
            ExtraValue::Meta(w("2025-06-18")),
        )]
    };
    let version = |spelling| {
        vec![extra(
            Level::Meta,
            "io.modelcontextprotocol/protocolVersion",
            spelling,
            ExtraValue::Word(w("2025-06-18")),
        )]
    };
    let jsonrpc = |spelling| {
        vec![extra(
            Level::Top,
            "jsonrpc",
            spelling,
            ExtraValue::Word(w("2.0")),
        )]
    };
    let invalid = refused(400, -32600);
    vec![
        seed(
            "jsonrpc_duplicate",
            body(Msg {
                extras: jsonrpc(Spelling::Exact),
                ..call("search_docs")
            }),
            None,
            invalid,
        ),
        seed(
            "jsonrpc_case_folded",
            body(Msg {
                extras: jsonrpc(Spelling::Upper),
                ..call("search_docs")
            }),
            None,
            invalid,
        ),
        seed(
            "jsonrpc_not_2_0",
            body(Msg {
                jsonrpc: Jsonrpc::Str(w("1.0")),
                ..call("search_docs")
            }),
            None,
            invalid,
        ),
        seed(
            "jsonrpc_number",
            body(Msg {
                jsonrpc: Jsonrpc::Number,
                ..call("search_docs")
            }),
            None,
            invalid,
        ),
        seed(
            "jsonrpc_absent",
            body(Msg {
                jsonrpc: Jsonrpc::Absent,
                ..call("search_docs")
            }),
            None,
            CALLED,
        ),
        seed(
            "meta_duplicate_tools_list",
            body(Msg {
                extras: meta(Spelling::Exact),
                ..list_with_meta.clone()
            }),
            None,
            invalid,
        ),
        seed(
            "meta_case_folded_tools_call",
            body(Msg {
                meta_version: Some(w("2025-06-18")),
                extras: meta(Spelling::Upper),
                ..call("search_docs")
            }),
            None,
            invalid,
        ),
        seed(
            "protocol_version_duplicate",
            body(Msg {
                extras: version(Spelling::Exact),
                ..list_with_meta
            }),
            None,
            invalid,
        ),
        seed(
            "protocol_version_long_s_notification",
            body(Msg {
                method: Some(w("notifications/initialized")),
                extras: version(Spelling::LongS),
                escape: true,
                ..msg()
            }),
            None,
            invalid,
        ),
    ]
}

/// `Mcp-Param` headers against their arguments: integers in every
/// spelling and exponents at the bounds; mappings of the meta-tool's
/// `parameters`.
pub(super) fn param_headers() -> Vec<Seed> {
    // Configuration 3 maps `region` of `search`.
    let region = |header: HeaderValue, value: &str, ct: ContentType| Input {
        config: 3,
        content_type: ct,
        param_region: Some(header),
        body: single(Msg {
            arguments: args(Some(ArgValue::Number(n(value)))),
            ..call("search")
        }),
        ..base()
    };
    let number = |text| HeaderValue::Number(n(text));
    let mismatch = refused(400, -32020);
    // Configuration 7 maps `parameters` and `tool_name` of `call_tool`.
    let unwrapped = |extras: Vec<Extra>| Input {
        config: 7,
        body: single(Msg {
            arguments: Some(Arguments {
                tool_name: None,
                parameters_tool_name: Some(ArgValue::Word(w("get_weather"))),
                region: None,
                parameters_not_object: false,
            }),
            extras,
            ..call("call_tool")
        }),
        ..base()
    };
    vec![
        seed(
            "param_zero_exponent",
            region(number("0"), "0e-2147483648", ContentType::Json),
            None,
            CALLED,
        ),
        seed(
            "param_tiny_exponent",
            region(number("0"), "1e-2147483648", ContentType::Json),
            None,
            mismatch,
        ),
        seed(
            "param_huge_exponent",
            region(
                number("1e2147483648"),
                "1e9223372036854775808",
                ContentType::Json,
            ),
            None,
            mismatch,
        ),
        seed(
            "param_spellings_agree",
            region(HeaderValue::Plain(w("42")), "420e-1", ContentType::Json),
            None,
            CALLED,
        ),
        seed(
            "sniffed_param_spellings_agree",
            region(number("4.20E+1"), "42", ContentType::TextPlain),
            None,
            CALLED,
        ),
        seed(
            "sniffed_param_exponent_mismatch",
            region(number("0"), "1e-2147483648", ContentType::TextPlain),
            None,
            mismatch,
        ),
        seed(
            "mapping_parameters_unwraps",
            unwrapped(vec![]),
            None,
            CALLED,
        ),
        seed(
            "mapping_parameters_header_mismatch",
            Input {
                param_parameters: plain("get_weather"),
                ..unwrapped(vec![])
            },
            None,
            mismatch,
        ),
        seed(
            "mapping_parameters_duplicate",
            unwrapped(vec![extra(
                Level::Arguments,
                "parameters",
                Spelling::Exact,
                ExtraValue::Word(w("get_weather")),
            )]),
            None,
            refused(400, -32600),
        ),
        seed(
            "mapping_tool_name_fast_path",
            Input {
                config: 7,
                mcp_name: plain("call_tool"),
                param_tool_name: plain("get_weather"),
                ..fast(
                    RlsReply::Ok {
                        request_headers: vec![],
                        response_headers: vec![],
                    },
                    vec![],
                )
            },
            Some(FAST_BODY),
            CALLED,
        ),
    ]
}
