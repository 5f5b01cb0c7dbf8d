//! Arbitrary bytes as a request body: `jsonrpc::parse` never panics, is
//! deterministic, accepts only JSON, refuses every body in which a member
//! it reads is duplicated or case-folded or `jsonrpc` is not "2.0" (read
//! independently, duplicates kept), resolves the same whether or not the
//! meta-tool's `tool_name` or `parameters` is mapped to an `Mcp-Param`
//! header, and whatever it resolves agrees with what a plain JSON decoder
//! (serde_json's `Value`) reads from the same body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_ratelimit::config::ParamHeader;
use mcp_ratelimit::jsonrpc::{self, Body, ParseError, Request, Spec, Target};
use mcp_ratelimit_fuzz::members::{body_flaw, Json, Rules};
use serde_json::Value;

const META_TOOL: &str = "call_tool";

fn mapping(argument: &str) -> ParamHeader {
    ParamHeader {
        tool: META_TOOL.to_owned(),
        argument: argument.to_owned(),
        header: format!("mcp-param-{argument}"),
    }
}

/// Parses with the meta-tool `call_tool` and these mappings of its
/// arguments.
fn parse_with<'a>(data: &'a [u8], params: &[ParamHeader]) -> Result<Body<'a>, ParseError<'a>> {
    let meta_tools = vec![META_TOOL.to_owned()];
    let argument_keys: Vec<String> = params.iter().map(|p| p.argument.clone()).collect();
    let spec = Spec {
        meta_tools: &meta_tools,
        params,
        argument_keys: &argument_keys,
    };
    jsonrpc::parse(data, &spec)
}

/// What a parse resolves to, as text: every field for an accepted body,
/// the kind of error for a refused one.
fn summary(parsed: &Result<Body<'_>, ParseError<'_>>) -> String {
    match parsed {
        Ok(body) => body
            .requests()
            .iter()
            .map(|r| {
                format!(
                    "{:?} {:?} {:?} {:?} {:?};",
                    r.id.map(|i| i.get()),
                    r.method,
                    r.name,
                    r.target,
                    r.meta_protocol_version
                )
            })
            .collect(),
        Err(ParseError::Syntax) => "syntax".to_owned(),
        Err(ParseError::InvalidRequest { .. }) => "invalid request".to_owned(),
        Err(ParseError::InvalidParams { .. }) => "invalid params".to_owned(),
    }
}

fuzz_target!(|data: &[u8]| {
    let params = vec![mapping("tool_name")];
    let parsed = parse_with(data, &params);
    let again = parse_with(data, &params);
    assert_eq!(
        format!("{parsed:?}"),
        format!("{again:?}"),
        "parse is deterministic"
    );

    // Mapping the meta-tool's arguments to headers changes nothing of
    // what the body resolves to. (Not for bodies that are not UTF-8: a
    // mapped argument is captured as text, which must be UTF-8, where an
    // unmapped one is skipped unchecked: refused either way, with another
    // code.)
    let parameters = parse_with(data, &[mapping("parameters")]);
    if std::str::from_utf8(data).is_ok() {
        let plain = summary(&parse_with(data, &[]));
        assert_eq!(
            plain,
            summary(&parsed),
            "mapping tool_name changes the parse"
        );
        assert_eq!(
            plain,
            summary(&parameters),
            "mapping parameters changes the parse"
        );
        let both = parse_with(data, &[mapping("parameters"), mapping("tool_name")]);
        assert_eq!(plain, summary(&both), "mapping both changes the parse");
    }

    // What serde_json makes of the body; `None` past its nesting limit,
    // which the filter's scanner does not have where it only skips.
    let syntax_ok = serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    let value = serde_json::from_slice::<Value>(data).ok();

    // A body the upstream could read differently is refused.
    if let Some(tree) = Json::parse(data) {
        let rules = Rules {
            meta_tools: &[META_TOOL],
        };
        if let Some(flaw) = body_flaw(&tree, &rules) {
            assert!(
                matches!(
                    parsed,
                    Err(ParseError::InvalidRequest { .. } | ParseError::InvalidParams { .. })
                ),
                "accepted a body with an ambiguous member: {flaw}"
            );
        }
    }

    match &parsed {
        Ok(body) => {
            assert!(syntax_ok, "accepted a body that is not JSON");
            let reqs = body.requests();
            assert!(!reqs.is_empty());
            if let Some(v) = &value {
                let expected: Vec<&Value> = match (body, v) {
                    (Body::Single(_), Value::Object(_)) => vec![v],
                    (Body::Batch(_), Value::Array(list)) => list.iter().collect(),
                    _ => panic!("body kind differs from the JSON value: {v}"),
                };
                assert_eq!(expected.len(), reqs.len());
                for (r, v) in reqs.iter().zip(expected) {
                    check_request(r, v);
                }
            }
            if let (Ok(Body::Single(r)), Some(v)) = (&parameters, &value) {
                check_kept(r, v, "parameters");
            }
            for r in reqs {
                check_target(r);
            }
        }
        Err(ParseError::Syntax) => {}
        Err(ParseError::InvalidRequest { id, .. } | ParseError::InvalidParams { id, .. }) => {
            // A refused request's id is echoed in the error: it must be JSON.
            assert!(syntax_ok, "a body that is not JSON must be a syntax error");
            if let Some(id) = id {
                serde_json::from_str::<serde::de::IgnoredAny>(id).expect("id is JSON text");
            }
        }
    }
});

/// The target follows from the method and the name, whatever the decoder.
fn check_target(r: &Request<'_>) {
    match (r.method.as_deref(), &r.target) {
        (Some("tools/call"), Some(Target::Tool(t))) => {
            let name = r.name.as_deref().expect("tools/call has a name");
            assert!(!name.is_empty() && !t.is_empty());
            if name != META_TOOL {
                assert_eq!(t, name, "only meta-tools are unwrapped");
            }
        }
        (Some("prompts/get"), Some(Target::Prompt(p))) => {
            assert!(!p.is_empty());
            assert_eq!(r.name.as_deref(), Some(p.as_ref()));
        }
        (Some("resources/read"), Some(Target::Resource(u))) => {
            assert!(!u.is_empty());
            assert_eq!(r.name.as_deref(), Some(u.as_ref()));
        }
        (Some("tools/call" | "prompts/get" | "resources/read"), t) => {
            panic!("known method resolved to {t:?}")
        }
        (_, None) => assert!(r.name.is_none()),
        (m, t) => panic!("method {m:?} has target {t:?}"),
    }
}

fn nonempty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

/// The argument kept for the mapping (the first, of `call_tool`) is the
/// one a decoder reads.
fn check_kept(r: &Request<'_>, v: &Value, argument: &str) {
    if r.name.as_deref() != Some(META_TOOL) || r.method.as_deref() != Some("tools/call") {
        return;
    }
    let kept = r
        .argument(0)
        .map(|raw| serde_json::from_str::<Value>(raw.get()).expect("kept argument is JSON"));
    let in_body = v
        .get("params")
        .and_then(|p| p.get("arguments"))
        .and_then(Value::as_object)
        .and_then(|a| a.get(argument));
    assert_eq!(kept.as_ref(), in_body, "kept {argument}");
}

/// Compares one resolved message with its `Value`, member by member.
fn check_request(r: &Request<'_>, v: &Value) {
    let obj = v.as_object().expect("a resolved message is an object");
    assert_eq!(
        r.method.as_deref(),
        obj.get("method").and_then(Value::as_str)
    );
    match (r.id, obj.get("id")) {
        (Some(raw), Some(id)) => {
            let parsed: Value = serde_json::from_str(raw.get()).expect("id is JSON");
            assert_eq!(&parsed, id);
        }
        (None, None) => {}
        (a, b) => panic!("id {a:?} vs {b:?}"),
    }
    let params = obj.get("params");
    let str_at = |path: &[&str]| -> Option<&str> {
        let mut cur = params?;
        for k in path {
            cur = cur.as_object()?.get(*k)?;
        }
        cur.as_str()
    };
    match &r.target {
        Some(Target::Tool(t)) => {
            let name = str_at(&["name"]).expect("params.name");
            assert_eq!(r.name.as_deref(), Some(name));
            let want = if name == META_TOOL {
                nonempty(str_at(&["arguments", "tool_name"]))
                    .or(nonempty(str_at(&["arguments", "parameters", "tool_name"])))
                    .unwrap_or(name)
            } else {
                name
            };
            assert_eq!(t, want);
            check_kept(r, v, "tool_name");
        }
        Some(Target::Prompt(p)) => assert_eq!(Some(p.as_ref()), str_at(&["name"])),
        Some(Target::Resource(u)) => assert_eq!(Some(u.as_ref()), str_at(&["uri"])),
        None => {}
    }
    if r.target.is_some() {
        let meta = str_at(&["_meta", "io.modelcontextprotocol/protocolVersion"]);
        assert_eq!(r.meta_protocol_version.as_deref(), meta);
    }
}
