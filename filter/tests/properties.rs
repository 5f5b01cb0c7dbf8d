//! Property tests of the filter's pure core: the RLS codec, the body parser,
//! MCP header values and the denial's body, over generated inputs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::borrow::Cow;

use mcp_ratelimit::config::Config;
use mcp_ratelimit::jsonrpc::{self, Body, Request, Spec, Target};
use mcp_ratelimit::mcp_headers;
use mcp_ratelimit::reply::{self, Ids};
use mcp_ratelimit::rls::{self, pb, Descriptor};
use proptest::prelude::*;
use prost::Message;
use serde_json::value::RawValue;
use serde_json::{json, Value};

const META_TOOL: &str = "call_tool";

fn meta_tools() -> Vec<String> {
    vec![META_TOOL.to_owned()]
}

fn spec(meta_tools: &[String]) -> Spec<'_> {
    Spec {
        meta_tools,
        params: &[],
        argument_keys: &[],
    }
}

fn single<'a>(body: &'a [u8], meta_tools: &'a [String]) -> Request<'a> {
    match jsonrpc::parse(body, &spec(meta_tools)) {
        Ok(Body::Single(r)) => r,
        other => panic!(
            "{}: expected one request, got {other:?}",
            String::from_utf8_lossy(body)
        ),
    }
}

fn tool_of(r: &Request<'_>) -> String {
    match &r.target {
        Some(Target::Tool(t)) => t.to_string(),
        other => panic!("expected a tool, got {other:?}"),
    }
}

/// Any JSON value, a few levels deep: what a client may use as an id.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Standard Base64, with or without padding.
fn base64(bytes: &[u8], pad: bool) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut acc = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            acc |= u32::from(*b) << (16 - 8 * i);
        }
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((acc >> (18 - 6 * i)) & 63) as usize]));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// A descriptor as generated: entries and hits.
type Generated = (Vec<(String, String)>, u64);

fn descriptors() -> impl Strategy<Value = Vec<Generated>> {
    let entry = (any::<String>(), any::<String>());
    let hits = prop_oneof![Just(1u64), 2..1000u64, any::<u64>().prop_map(|h| h.max(1))];
    prop::collection::vec((prop::collection::vec(entry, 0..4), hits), 0..5)
}

fn borrowed(ds: &[Generated]) -> Vec<Descriptor<'_>> {
    ds.iter()
        .map(|(entries, hits)| Descriptor {
            entries: entries
                .iter()
                .map(|(k, v)| (k.as_str(), Cow::Borrowed(v.as_str())))
                .collect(),
            hits: *hits,
        })
        .collect()
}

proptest! {
    /// (a) What the encoder writes, prost reads back as the same request,
    /// byte for byte what prost itself would write.
    #[test]
    fn rls_request_round_trips_through_prost(domain in any::<String>(), ds in descriptors()) {
        let bytes = rls::encode_request(&rls::encode_domain(&domain), &borrowed(&ds));
        let decoded = pb::RateLimitRequest::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(&decoded.domain, &domain);
        prop_assert_eq!(decoded.hits_addend, 0);
        prop_assert_eq!(decoded.descriptors.len(), ds.len());
        for (got, (entries, hits)) in decoded.descriptors.iter().zip(&ds) {
            let pairs: Vec<(String, String)> = got
                .entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect();
            prop_assert_eq!(&pairs, entries);
            let want = (*hits != 1).then_some(pb::UInt64Value { value: *hits });
            prop_assert_eq!(&got.hits_addend, &want);
        }
        prop_assert_eq!(decoded.encode_to_vec(), bytes);
    }

    /// (b) A `tools/call` as a JSON library writes it names exactly its tool
    /// and keeps exactly the id's text, whatever the name and the id.
    #[test]
    fn tools_call_names_its_tool_and_keeps_its_id(
        name in any::<String>().prop_filter("a name", |n| !n.is_empty()),
        id in json_value(),
    ) {
        let body = serde_json::to_vec(&json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "tools/call",
            "params": {"name": name, "arguments": {"q": "x"}},
        }))
        .unwrap();
        let meta = meta_tools();
        let r = single(&body, &meta);
        prop_assert_eq!(tool_of(&r), name.clone());
        prop_assert_eq!(r.name.as_deref(), Some(name.as_str()));
        prop_assert_eq!(r.method.as_deref(), Some("tools/call"));
        let raw = r.id.map(|i| i.get().to_owned());
        prop_assert_eq!(raw, Some(serde_json::to_string(&id).unwrap()));
    }

    /// (c) The meta-tool counts as the tool it wraps, from
    /// `arguments.tool_name` or else `arguments.parameters.tool_name`, and
    /// as itself when neither is a non-empty string.
    #[test]
    fn meta_tool_resolves_to_its_inner_tool(
        inner in any::<String>(),
        nested in any::<bool>(),
        escaped in any::<bool>(),
    ) {
        let arguments = if nested {
            json!({"parameters": {"tool_name": inner}, "other": 1})
        } else {
            json!({"tool_name": inner, "parameters": {"q": "x"}})
        };
        let mut body = serde_json::to_string(&json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": META_TOOL, "arguments": arguments},
        }))
        .unwrap();
        if escaped {
            body = body.replace("\"call_tool\"", "\"\\u0063all_tool\"");
        }
        let meta = meta_tools();
        let r = single(body.as_bytes(), &meta);
        let want = if inner.is_empty() { META_TOOL } else { inner.as_str() };
        prop_assert_eq!(tool_of(&r), want);
        // Mcp-Name mirrors the meta-tool's own name.
        prop_assert_eq!(r.name.as_deref(), Some(META_TOOL));
    }

    /// (d) The order of members, at every level the parser reads, never
    /// changes what a request resolves to.
    #[test]
    fn member_order_never_matters(
        method in prop::sample::select(vec!["tools/call", "prompts/get", "resources/read", "ping"]),
        name in "[a-z_]{1,12}",
        inner in prop::option::of("[a-z_]{0,12}"),
        id in json_value(),
        (top, params, args) in (
            Just(vec![0usize, 1, 2, 3, 4]).prop_shuffle(),
            Just(vec![0usize, 1, 2, 3, 4]).prop_shuffle(),
            Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
        ),
    ) {
        let s = |v: &str| serde_json::to_string(v).unwrap();
        let mut arg_members = vec![
            format!("\"parameters\":{{\"tool_name\":{}}}", s("fallback")),
            "\"q\":[1,{\"tool_name\":\"no\"}]".to_owned(),
            "\"n\":null".to_owned(),
        ];
        if let Some(inner) = &inner {
            arg_members.push(format!("\"tool_name\":{}", s(inner)));
        }
        let name_or_meta = if inner.is_some() { META_TOOL } else { name.as_str() };
        let param_members = [
            format!("\"name\":{}", s(name_or_meta)),
            format!("\"uri\":{}", s(&name)),
            format!("\"arguments\":{{{}}}", arrange(&arg_members, &args)),
            "\"_meta\":{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\"}".to_owned(),
            "\"x\":{\"name\":1}".to_owned(),
        ];
        let top_members = [
            "\"jsonrpc\":\"2.0\"".to_owned(),
            format!("\"id\":{}", serde_json::to_string(&id).unwrap()),
            format!("\"method\":{}", s(method)),
            format!("\"params\":{{{}}}", arrange(&param_members, &params)),
            "\"extra\":[\"method\"]".to_owned(),
        ];
        let in_order = format!("{{{}}}", top_members.join(","));
        let shuffled = format!("{{{}}}", arrange(&top_members, &top));
        let meta = meta_tools();
        let a = jsonrpc::parse(in_order.as_bytes(), &spec(&meta));
        let b = jsonrpc::parse(shuffled.as_bytes(), &spec(&meta));
        prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let r = single(shuffled.as_bytes(), &meta);
        if method == "tools/call" {
            let want = match &inner {
                Some(i) if !i.is_empty() => i.as_str(),
                Some(_) => "fallback",
                None if name == META_TOOL => "fallback",
                None => name.as_str(),
            };
            prop_assert_eq!(tool_of(&r), want);
        }
    }

    /// (e) A UTF-8 string in the `=?base64?...?=` form of MCP header values
    /// decodes to itself, padded or not.
    #[test]
    fn base64_header_values_decode_to_their_text(text in any::<String>(), pad in any::<bool>()) {
        let header = format!("=?base64?{}?=", base64(text.as_bytes(), pad));
        let decoded = mcp_headers::decode_value(header.as_bytes()).unwrap();
        prop_assert_eq!(decoded.as_ref(), text.as_str());
    }

    /// Plain visible ASCII values decode to themselves.
    #[test]
    fn plain_header_values_decode_to_themselves(text in "[ -~]{0,40}") {
        prop_assume!(!(text.starts_with("=?base64?") && text.ends_with("?=")));
        let decoded = mcp_headers::decode_value(text.as_bytes()).unwrap();
        prop_assert_eq!(decoded.as_ref(), text.as_str());
    }

    /// (f) The denial is valid JSON carrying the request's id, exactly, and
    /// the configured code and message, for any id, message and wait.
    #[test]
    fn over_limit_reply_is_json_with_the_request_id(
        id in prop::option::of(json_value()),
        batch in prop::collection::vec(json_value(), 0..4),
        message in any::<String>().prop_filter("a message", |m| !m.is_empty()),
        code in any::<i64>(),
        retry_after in 1..u64::MAX,
    ) {
        let cfg = Config::parse(
            serde_json::to_string(&json!({
                "domain": "mcp",
                "rls_cluster": "r",
                "over_limit": {"code": code, "message": message},
            }))
            .unwrap()
            .as_bytes(),
        )
        .unwrap();
        let text = |v: &Value| serde_json::to_string(v).unwrap().into_boxed_str();
        let check = |v: &Value| -> Result<(), TestCaseError> {
            prop_assert_eq!(&v["jsonrpc"], "2.0");
            prop_assert_eq!(&v["error"]["code"], code);
            prop_assert_eq!(&v["error"]["message"], message.as_str());
            prop_assert_eq!(&v["error"]["data"]["retryAfterSeconds"], retry_after);
            Ok(())
        };

        let retry = (retry_after, retry_after.saturating_mul(1000));
        let r = reply::over_limit(&cfg.over_limit, &Ids::Single(id.as_ref().map(text)), retry, vec![]);
        prop_assert_eq!(r.status, 429);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        check(&v)?;
        prop_assert_eq!(id_texts(&r.body), vec![id.as_ref().map(|v| text(v).into_string())]);
        let header = retry_after.to_string();
        prop_assert!(r.headers.iter().any(|(k, val)| k == "retry-after" && *val == header));

        let r = reply::over_limit(
            &cfg.over_limit,
            &Ids::Batch(batch.iter().map(text).collect()),
            retry,
            vec![],
        );
        let v: Value = serde_json::from_str(&r.body).unwrap();
        if batch.is_empty() {
            check(&v)?;
            prop_assert_eq!(id_texts(&r.body), vec![None]);
        } else {
            let list = v.as_array().unwrap();
            prop_assert_eq!(list.len(), batch.len());
            for o in list {
                check(o)?;
            }
            let want: Vec<Option<String>> =
                batch.iter().map(|v| Some(text(v).into_string())).collect();
            prop_assert_eq!(id_texts(&r.body), want);
        }
    }

    /// Refusals of unacceptable bodies are valid JSON too, whatever the id
    /// the parser found and whatever the reason.
    #[test]
    fn refusals_are_json(id in prop::option::of(json_value()), reason in any::<String>()) {
        let id_text = id.as_ref().map(|v| serde_json::to_string(v).unwrap());
        for r in [
            reply::bad_request(reply::INVALID_REQUEST, id_text.as_deref(), &reason),
            reply::header_mismatch(id_text.as_deref(), &reason),
        ] {
            let v: Value = serde_json::from_str(&r.body).unwrap();
            let want = id_text.clone().unwrap_or_else(|| "null".to_owned());
            prop_assert_eq!(id_texts(&r.body), vec![Some(want)]);
            prop_assert_eq!(&v["error"]["data"]["reason"], reason.as_str());
        }
    }
}

/// The JSON text of the `id` of each error object of a reply body (its
/// value as sent, not as a float parser reads it).
fn id_texts(body: &str) -> Vec<Option<String>> {
    type Object = std::collections::HashMap<String, Box<RawValue>>;
    let id = |o: &Object| o.get("id").map(|raw| raw.get().to_owned());
    match serde_json::from_str::<Vec<Object>>(body) {
        Ok(list) => list.iter().map(id).collect(),
        Err(_) => vec![id(&serde_json::from_str::<Object>(body).unwrap())],
    }
}

/// Joins `members` in the order of `order` (a permutation of a prefix of
/// indices; indices past the end are skipped).
fn arrange(members: &[String], order: &[usize]) -> String {
    let mut out: Vec<&str> = order
        .iter()
        .filter_map(|i| members.get(*i).map(String::as_str))
        .collect();
    // Members beyond the permutation's length keep their place at the end.
    out.extend(members.iter().skip(order.len()).map(String::as_str));
    out.join(",")
}
