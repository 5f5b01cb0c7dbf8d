use super::*;

static META_TOOLS: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| vec!["call_tool".to_owned()]);

fn parse_meta(body: &[u8]) -> Result<Body<'_>, ParseError<'_>> {
    parse(
        body,
        &Spec {
            meta_tools: &META_TOOLS,
            params: &[],
            argument_keys: &[],
        },
    )
}

fn one(body: &str) -> Request<'_> {
    match parse_meta(body.as_bytes()) {
        Ok(Body::Single(r)) => r,
        other => panic!("expected a single request, got {other:?}"),
    }
}

fn tool(body: &str) -> String {
    match one(body).target {
        Some(Target::Tool(t)) => t.into_owned(),
        other => panic!("expected a tool, got {other:?}"),
    }
}

fn invalid_reason(body: &str) -> &'static str {
    match parse_meta(body.as_bytes()) {
        Err(ParseError::InvalidRequest { reason, .. }) => reason,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

#[test]
fn tools_call_name() {
    let r = one(
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search_docs","arguments":{"q":"x"}}}"#,
    );
    assert_eq!(r.id.map(RawValue::get), Some("7"));
    assert_eq!(r.method.as_deref(), Some("tools/call"));
    assert_eq!(r.target, Some(Target::Tool("search_docs".into())));
}

#[test]
fn member_order_does_not_matter() {
    let t = tool(
        r#"{"params":{"arguments":{"tool_name":"inner"},"name":"call_tool"},"id":"a","method":"tools/call","jsonrpc":"2.0"}"#,
    );
    assert_eq!(t, "inner");
}

#[test]
fn id_is_echoed_exactly_whatever_its_type() {
    for id in [
        "1",
        "\"abc\"",
        "null",
        "1.5e3",
        "{\"x\":[1]}",
        "\"\\u00e9\"",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        assert_eq!(one(&body).id.map(RawValue::get), Some(id), "{id}");
    }
    assert!(
        one(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .id
            .is_none()
    );
}

#[test]
fn meta_tool_unwraps_tool_name() {
    let t = tool(
        r#"{"id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs","parameters":{"q":1}}}}"#,
    );
    assert_eq!(t, "search_docs");
}

#[test]
fn meta_tool_falls_back_to_parameters_tool_name() {
    let t = tool(
        r#"{"id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"parameters":{"tool_name":"get_weather"}}}}"#,
    );
    assert_eq!(t, "get_weather");
}

#[test]
fn meta_tool_without_usable_inner_name_counts_as_itself() {
    for args in [
        r#"{}"#,
        r#"{"tool_name":""}"#,
        r#"{"tool_name":42}"#,
        r#"{"tool_name":null,"parameters":{"tool_name":["x"]}}"#,
        r#""string arguments""#,
    ] {
        let body = format!(
            r#"{{"id":1,"method":"tools/call","params":{{"name":"call_tool","arguments":{args}}}}}"#
        );
        assert_eq!(tool(&body), "call_tool", "{args}");
    }
}

#[test]
fn non_meta_tool_ignores_tool_name_argument() {
    let t = tool(
        r#"{"id":1,"method":"tools/call","params":{"name":"search_docs","arguments":{"tool_name":"other"}}}"#,
    );
    assert_eq!(t, "search_docs");
}

#[test]
fn meta_tools_are_configurable() {
    let body =
        br#"{"id":1,"method":"tools/call","params":{"name":"run","arguments":{"tool_name":"x"}}}"#;
    let run = vec!["run".to_owned()];
    let spec = |meta_tools| Spec {
        meta_tools,
        params: &[],
        argument_keys: &[],
    };
    let Ok(Body::Single(r)) = parse(body, &spec(&run)) else {
        panic!()
    };
    assert_eq!(r.target, Some(Target::Tool("x".into())));
    let Ok(Body::Single(r)) = parse(body, &spec(&[])) else {
        panic!()
    };
    assert_eq!(r.target, Some(Target::Tool("run".into())));
}

#[test]
fn escapes_are_decoded_before_matching() {
    let t = tool(
        r#"{"id":1,"method":"tools\/\u0063all","params":{"name":"\u0063all_tool","arguments":{"tool_name":"search\u005fdocs"}}}"#,
    );
    assert_eq!(t, "search_docs");
}

#[test]
fn prompts_and_resources() {
    let r = one(r#"{"id":1,"method":"prompts/get","params":{"name":"summary"}}"#);
    assert_eq!(r.target, Some(Target::Prompt("summary".into())));
    let r = one(r#"{"id":1,"method":"resources/read","params":{"uri":"file:///a"}}"#);
    assert_eq!(r.target, Some(Target::Resource("file:///a".into())));
}

#[test]
fn other_methods_have_no_target_and_any_params() {
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x/y","params":[1,2,{"name":3}]}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    ] {
        assert!(one(body).target.is_none(), "{body}");
    }
}

#[test]
fn tools_call_without_a_name_is_invalid_params() {
    for params in [
        r#"{}"#,
        r#"{"name":5}"#,
        r#"{"name":""}"#,
        r#"[]"#,
        r#""x""#,
    ] {
        let body = format!(r#"{{"id":3,"method":"tools/call","params":{params}}}"#);
        match parse_meta(body.as_bytes()) {
            Err(ParseError::InvalidParams { id, .. }) => assert_eq!(id, Some("3")),
            other => panic!("{params}: {other:?}"),
        }
    }
    assert!(matches!(
        parse_meta(br#"{"id":3,"method":"tools/call"}"#),
        Err(ParseError::InvalidParams { .. })
    ));
}

#[test]
fn syntax_errors() {
    for body in [
        &b""[..],
        b"{",
        b"{\"id\":1,}",
        b"nul",
        b"{\"a\":1} x",
        b"{\"method\":\"\xff\"}",
    ] {
        assert_eq!(parse_meta(body).err(), Some(ParseError::Syntax), "{body:?}");
    }
    // Deep nesting is refused, never a stack overflow.
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    assert!(parse_meta(deep.as_bytes()).is_err());
    let deep = format!(
        r#"{{"id":1,"method":"x","params":{}}}"#,
        "{\"a\":".repeat(100_000) + "1" + &"}".repeat(100_000)
    );
    assert!(parse_meta(deep.as_bytes()).is_ok());
}

#[test]
fn not_an_object() {
    for body in ["1", "\"x\"", "null", "true"] {
        assert!(
            matches!(
                parse_meta(body.as_bytes()),
                Err(ParseError::InvalidRequest { .. })
            ),
            "{body}"
        );
    }
    assert_eq!(invalid_reason("[]"), "empty batch");
    assert_eq!(
        invalid_reason(r#"[{"id":1,"method":"ping"}, 3]"#),
        "batch element is not an object"
    );
    assert_eq!(
        invalid_reason(r#"{"id":1,"method":7}"#),
        "method is not a string"
    );
}

#[test]
fn duplicate_members_are_refused() {
    assert_eq!(
        invalid_reason(
            r#"{"id":1,"method":"tools/list","method":"tools/call","params":{"name":"a"}}"#
        ),
        "duplicate member \"method\""
    );
    assert_eq!(
        invalid_reason(
            r#"{"id":1,"method":"tools/call","params":{"name":"a"},"params":{"name":"b"}}"#
        ),
        "duplicate member \"params\""
    );
    assert_eq!(
        invalid_reason(r#"{"id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#),
        "duplicate member \"params.name\""
    );
    assert_eq!(
        invalid_reason(
            r#"{"id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"a","tool_name":"b"}}}"#
        ),
        "duplicate member \"tool_name\""
    );
    assert_eq!(
        invalid_reason(
            r#"{"id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"parameters":{"tool_name":"a","tool_name":"b"}}}}"#
        ),
        "duplicate member \"tool_name\""
    );
}

#[test]
fn duplicates_inside_ordinary_tool_arguments_are_not_ours_to_judge() {
    let t = tool(
        r#"{"id":1,"method":"tools/call","params":{"name":"search","arguments":{"tool_name":"a","tool_name":"b"}}}"#,
    );
    assert_eq!(t, "search");
}

#[test]
fn case_folded_member_names_are_refused() {
    for body in [
        r#"{"id":1,"method":"tools/list","Method":"tools/call","params":{"name":"a"}}"#,
        r#"{"id":1,"method":"tools/call","params":{"name":"a","NAME":"b"}}"#,
        r#"{"id":1,"method":"tools/call","params":{"name":"call_tool","argument\u017f":{"tool_name":"x"}}}"#,
        r#"{"id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"a","Tool_Name":"b"}}}"#,
        r#"{"id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"parameter\u017f":{"tool_name":"b"}}}}"#,
    ] {
        let reason = invalid_reason(body);
        assert!(reason.contains("only by case"), "{body}: {reason}");
    }
}

#[test]
fn fold_rules() {
    assert!(folds_to("NAME", "name"));
    assert!(folds_to("argument\u{17f}", "arguments"));
    assert!(folds_to("\u{212a}ey", "key"));
    assert!(!folds_to("names", "name"));
    assert!(!folds_to("nam", "name"));
    assert!(!folds_to("n\u{e4}me", "name"));
}

#[test]
fn batch() {
    let body = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}},
                    {"jsonrpc":"2.0","method":"notifications/progress"},
                    {"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"b"}}}]"#;
    let Ok(Body::Batch(reqs)) = parse_meta(body) else {
        panic!()
    };
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].target, Some(Target::Tool("a".into())));
    assert!(reqs[1].id.is_none() && reqs[1].target.is_none());
    assert_eq!(reqs[2].target, Some(Target::Tool("b".into())));
    assert_eq!(reqs[2].id.map(RawValue::get), Some("\"x\""));
}

#[test]
fn invalid_batch_element_refuses_the_batch() {
    let body = br#"[{"id":1,"method":"tools/call","params":{"name":"a"}},{"id":2,"method":"tools/call","params":{}}]"#;
    match parse_meta(body) {
        Err(ParseError::InvalidParams { id, .. }) => assert_eq!(id, Some("2")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn strings_are_borrowed_when_unescaped() {
    let r = one(r#"{"id":1,"method":"tools/call","params":{"name":"search_docs"}}"#);
    assert!(matches!(r.method, Some(Cow::Borrowed(_))));
    assert!(matches!(r.target, Some(Target::Tool(Cow::Borrowed(_)))));
}

#[test]
fn huge_numbers_and_strings_in_skipped_members_are_fine() {
    let big = "9".repeat(5000);
    let long = "a".repeat(100_000);
    let body = format!(
        r#"{{"id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"n":{big},"s":"{long}","f":1e999}}}}}}"#
    );
    assert_eq!(tool(&body), "t");
}

#[test]
fn the_protocol_version_is_read_once_and_unambiguously() {
    let pv = "io.modelcontextprotocol/protocolVersion";
    for (method, params) in [
        (
            "tools/list",
            format!(r#"{{"_meta":{{"{pv}":"2026-07-28","{pv}":"2025-11-25"}}}}"#),
        ),
        (
            "tools/call",
            format!(r#"{{"name":"a","_meta":{{"{pv}":"2026-07-28","{pv}":"2025-11-25"}}}}"#),
        ),
        (
            "tools/list",
            format!(r#"{{"_meta":{{"{pv}":"2026-07-28"}},"_meta":{{"{pv}":"2025-11-25"}}}}"#),
        ),
        (
            "tools/list",
            format!(r#"{{"_meta":{{"{pv}":"2026-07-28"}},"_Meta":{{}}}}"#),
        ),
        (
            "ping",
            format!(
                r#"{{"_meta":{{"{pv}":"2026-07-28","IO.modelcontextprotocol/protocolversion":"x"}}}}"#
            ),
        ),
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}"#);
        let reason = invalid_reason(&body);
        assert!(
            reason.contains("_meta") || reason.contains("protocolVersion"),
            "{body}: {reason}"
        );
    }
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"_meta":{{"{pv}":"2026-07-28","other":1}}}}}}"#
    );
    assert_eq!(
        one(&body).meta_protocol_version.as_deref(),
        Some("2026-07-28")
    );
}

#[test]
fn the_jsonrpc_member_is_checked() {
    for (body, want) in [
        (
            r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}"#,
            "duplicate member \"jsonrpc\"",
        ),
        (
            r#"{"jsonrpc":"2.0","JSONRPC":"1.0","id":1,"method":"ping"}"#,
            "differs from \"jsonrpc\" only by case",
        ),
        (
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            "jsonrpc is not \"2.0\"",
        ),
        (
            r#"{"jsonrpc":2.0,"id":1,"method":"ping"}"#,
            "jsonrpc is not \"2.0\"",
        ),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":null,"id":2,"method":"ping"}]"#,
            "jsonrpc is not \"2.0\"",
        ),
    ] {
        let reason = invalid_reason(body);
        assert!(reason.contains(want), "{body}: {reason}");
    }
    // Absent, as some clients send it, is accepted.
    assert_eq!(
        one(r#"{"id":1,"method":"ping"}"#).method.as_deref(),
        Some("ping")
    );
}

fn spec_with<'a>(meta: &'a [String], params: &'a [ParamHeader], keys: &'a [String]) -> Spec<'a> {
    Spec {
        meta_tools: meta,
        params,
        argument_keys: keys,
    }
}

#[test]
fn a_mapping_never_switches_off_unwrapping() {
    // Mappings of `parameters` and `tool_name` (here of other tools, and of
    // the meta-tool itself) keep the argument and still unwrap.
    let meta = vec!["call_tool".to_owned()];
    for (tool, argument) in [
        ("query", "parameters"),
        ("call_tool", "parameters"),
        ("query", "tool_name"),
        ("call_tool", "tool_name"),
    ] {
        let params = vec![ParamHeader {
            tool: tool.into(),
            argument: argument.into(),
            header: "mcp-param-x".into(),
        }];
        let keys = vec![argument.to_owned()];
        let spec = spec_with(&meta, &params, &keys);
        let inner = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"parameters":{"tool_name":"get_weather"}}}}"#;
        let Ok(Body::Single(r)) = parse(inner, &spec) else {
            panic!("{tool}/{argument}")
        };
        assert_eq!(
            r.target,
            Some(Target::Tool("get_weather".into())),
            "{tool}/{argument}"
        );
        let outer = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs","parameters":{"tool_name":"get_weather"}}}}"#;
        let Ok(Body::Single(r)) = parse(outer, &spec) else {
            panic!("{tool}/{argument}")
        };
        assert_eq!(
            r.target,
            Some(Target::Tool("search_docs".into())),
            "{tool}/{argument}"
        );
        // ...and its duplicate checks stay on.
        let dup = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"parameters":{"tool_name":"a","tool_name":"b"}}}}"#;
        assert!(
            matches!(parse(dup, &spec), Err(ParseError::InvalidRequest { .. })),
            "{tool}/{argument}"
        );
        let dup = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"parameters":{"tool_name":"a"},"parameters":{"tool_name":"b"}}}}"#;
        assert!(
            matches!(parse(dup, &spec), Err(ParseError::InvalidRequest { .. })),
            "{tool}/{argument}"
        );
    }
    // The mapped argument is kept as sent.
    let params = vec![ParamHeader {
        tool: "call_tool".into(),
        argument: "tool_name".into(),
        header: "mcp-param-toolname".into(),
    }];
    let keys = vec!["tool_name".to_owned()];
    let spec = spec_with(&meta, &params, &keys);
    let body = br#"{"id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search\u005fdocs"}}}"#;
    let Ok(Body::Single(r)) = parse(body, &spec) else {
        panic!()
    };
    assert_eq!(
        r.argument(0).map(RawValue::get),
        Some(r#""search\u005fdocs""#)
    );
    assert_eq!(r.target, Some(Target::Tool("search_docs".into())));
}
