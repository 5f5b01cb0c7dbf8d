//! A JSON reading that keeps every member, duplicates included, and what
//! it tells about a JSON-RPC body: whether some member the filter reads is
//! given twice or spelled so that only a case-folding decoder (Go's
//! `encoding/json`) takes it for the member, or `jsonrpc` is present but
//! not `"2.0"`. Such a body must be refused: the upstream could read a
//! different value than the filter. Independent of the filter's parser.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value with its object members in order, repeats kept.
#[derive(Debug)]
pub enum Json {
    Object(Vec<(String, Json)>),
    Array(Vec<Json>),
    Str(String),
    Other,
}

impl Json {
    /// `None` when serde_json refuses the text (or nests past its limit).
    pub fn parse(bytes: &[u8]) -> Option<Json> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let v = de.deserialize_any(JsonVisitor).ok()?;
        de.end().ok()?;
        Some(v)
    }

    fn members(&self) -> &[(String, Json)] {
        match self {
            Json::Object(m) => m,
            _ => &[],
        }
    }

    /// The first member called exactly `name`.
    fn get(&self, name: &str) -> Option<&Json> {
        self.members()
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Json, E> {
        Ok(Json::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Json, E> {
        Ok(Json::Other)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Json, E> {
        Ok(Json::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Other)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.to_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed)? {
            out.push(v);
        }
        Ok(Json::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            out.push((k, map.next_value_seed(Seed)?));
        }
        Ok(Json::Object(out))
    }
}

struct Seed;

impl<'de> de::DeserializeSeed<'de> for Seed {
    type Value = Json;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

/// Go's `strings.EqualFold` against an ASCII name, for a key that is not
/// the name itself.
fn folds_to(key: &str, name: &str) -> bool {
    let fold = |c: char| match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    };
    key != name
        && key
            .chars()
            .map(fold)
            .eq(name.chars().map(|c| c.to_ascii_lowercase()))
}

/// A member of `object` given twice or shadowed by a folded spelling.
fn ambiguous(object: &Json, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| {
        let members = object.members();
        let exact = members.iter().filter(|(k, _)| k == name).count();
        let folded = members.iter().any(|(k, _)| folds_to(k, name));
        (exact > 1 || folded).then(|| (*name).to_owned())
    })
}

/// What the parser is configured with, as far as these rules go.
pub struct Rules<'a> {
    pub meta_tools: &'a [&'a str],
}

/// Why one message must be refused, if it must.
pub fn message_flaw(m: &Json, rules: &Rules<'_>) -> Option<String> {
    if !matches!(m, Json::Object(_)) {
        return None;
    }
    if let Some(name) = ambiguous(m, &["jsonrpc", "id", "method", "params"]) {
        return Some(name);
    }
    if let Some(v) = m.get("jsonrpc") {
        if v.str() != Some("2.0") {
            return Some("jsonrpc is not \"2.0\"".to_owned());
        }
    }
    let params = m.get("params")?;
    // The protocol version is read for every method.
    if let Some(name) = ambiguous(params, &["_meta"]) {
        return Some(name);
    }
    if let Some(meta) = params.get("_meta") {
        if let Some(name) = ambiguous(meta, &["io.modelcontextprotocol/protocolVersion"]) {
            return Some(name);
        }
    }
    let method = m.get("method").and_then(Json::str);
    if !matches!(
        method,
        Some("tools/call" | "prompts/get" | "resources/read")
    ) {
        return None;
    }
    if let Some(name) = ambiguous(params, &["name", "uri", "arguments"]) {
        return Some(name);
    }
    let tool = params.get("name").and_then(Json::str);
    if method == Some("tools/call") && tool.is_some_and(|t| rules.meta_tools.contains(&t)) {
        let args = params.get("arguments")?;
        if let Some(name) = ambiguous(args, &["tool_name", "parameters"]) {
            return Some(name);
        }
        if let Some(p) = args.get("parameters") {
            return ambiguous(p, &["tool_name"]);
        }
    }
    None
}

/// Why a body must be refused, if it must: the first flawed message.
pub fn body_flaw(body: &Json, rules: &Rules<'_>) -> Option<String> {
    match body {
        Json::Array(list) => list.iter().find_map(|m| message_flaw(m, rules)),
        m => message_flaw(m, rules),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flaw(body: &str) -> Option<String> {
        let rules = Rules {
            meta_tools: &["call_tool"],
        };
        body_flaw(&Json::parse(body.as_bytes()).unwrap(), &rules)
    }

    #[test]
    fn flaws() {
        assert_eq!(
            flaw(r#"{"jsonrpc":"2.0","jsonrpc":"2.0"}"#).as_deref(),
            Some("jsonrpc")
        );
        assert_eq!(flaw(r#"{"JSONRPC":"2.0"}"#).as_deref(), Some("jsonrpc"));
        assert!(flaw(r#"{"jsonrpc":2.0}"#).is_some());
        assert!(flaw(r#"{"method":"x","params":{"_meta":{},"_meta":{}}}"#).is_some());
        assert!(flaw(
            r#"{"method":"x","params":{"_meta":{"io.modelcontextprotocol/protocolVer\u017fion":"a"}}}"#
        )
        .is_some());
        assert!(flaw(r#"{"method":"x","params":{"name":1,"name":2}}"#).is_none());
        assert!(flaw(r#"{"method":"tools/call","params":{"name":1,"name":2}}"#).is_some());
        assert!(flaw(r#"[{"jsonrpc":"2.0"},{"id":1,"ID":2}]"#).is_some());
        assert!(flaw(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"parameters":{"tool_name":"a","tool_name":"b"}}}}"#).is_some());
        assert!(flaw(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"other","arguments":{"parameters":{"tool_name":"a","tool_name":"b"}}}}"#).is_none());
    }
}
