//! Single-pass, borrowing extraction of what the filter needs from a JSON-RPC
//! body: `id`, `method` and the target of `tools/call`, `prompts/get` and
//! `resources/read`. Every other member is skipped (still validated as JSON)
//! without being materialised.
//!
//! Member names are matched exactly. A member that only a lenient decoder
//! would take for one of ours (`Name`, `METHOD`, `argumentſ`: the ASCII case
//! and Unicode simple folds that Go's `encoding/json` applies) and a member
//! given twice are refused, because the upstream might read a different value
//! than the one we count.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::ParamHeader;

/// What a request body resolves to.
#[derive(Debug)]
pub enum Body<'a> {
    /// One JSON-RPC message.
    Single(Request<'a>),
    /// A JSON-RPC batch (MCP 2025-03-26); never empty.
    Batch(Vec<Request<'a>>),
}

impl<'a> Body<'a> {
    /// The messages of the body, one for a single message.
    pub fn requests(&self) -> &[Request<'a>] {
        match self {
            Body::Single(r) => std::slice::from_ref(r),
            Body::Batch(v) => v,
        }
    }
}

/// The fields of one JSON-RPC message that limits can key on.
#[derive(Debug, Default)]
pub struct Request<'a> {
    /// The `id` exactly as sent (any JSON type); `None` for a notification.
    pub id: Option<&'a RawValue>,
    /// `method`; `None` for a JSON-RPC response sent by the client.
    pub method: Option<Cow<'a, str>>,
    /// `params.name` (`tools/call`, `prompts/get`) or `params.uri`
    /// (`resources/read`) as sent: what `Mcp-Name` mirrors.
    pub name: Option<Cow<'a, str>>,
    /// The resolved target of the call, if the method has one.
    pub target: Option<Target<'a>>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`.
    pub meta_protocol_version: Option<Cow<'a, str>>,
    /// Arguments kept for `Mcp-Param-*` checks, by mapping.
    kept: Vec<Option<&'a RawValue>>,
}

impl<'a> Request<'a> {
    /// A request known from its MCP routing headers only.
    pub fn from_headers(
        method: Cow<'a, str>,
        name: Option<Cow<'a, str>>,
        target: Option<Target<'a>>,
    ) -> Self {
        Request {
            id: None,
            method: Some(method),
            name,
            target,
            meta_protocol_version: None,
            kept: Vec::new(),
        }
    }

    /// The JSON text of the argument of configured mapping `i`, if given.
    pub fn argument(&self, i: usize) -> Option<&'a RawValue> {
        self.kept.get(i).copied().flatten()
    }
}

/// The object a method acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// `tools/call`: the tool, with meta-tools unwrapped.
    Tool(Cow<'a, str>),
    /// `prompts/get`: `params.name`.
    Prompt(Cow<'a, str>),
    /// `resources/read`: `params.uri`.
    Resource(Cow<'a, str>),
}

/// Why a body was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError<'a> {
    /// Not JSON (syntax, encoding, too deep where we descend): JSON-RPC -32700.
    Syntax,
    /// JSON, but not an acceptable JSON-RPC request: -32600.
    InvalidRequest {
        id: Option<&'a str>,
        reason: &'static str,
    },
    /// A known method whose parameters do not name a target: -32602.
    InvalidParams {
        id: Option<&'a str>,
        reason: &'static str,
    },
}

/// What the parser needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'s> {
    /// Tool names whose real target is an argument (`call_tool` of
    /// tool-optimizer gateways).
    pub meta_tools: &'s [String],
    /// Configured `Mcp-Param-*` mappings: arguments to keep, by tool.
    pub params: &'s [ParamHeader],
    /// The argument of each mapping (`params[i].argument`).
    pub argument_keys: &'s [String],
}

/// Parses `body`.
pub fn parse<'a>(body: &'a [u8], spec: &Spec<'_>) -> Result<Body<'a>, ParseError<'a>> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = match de.deserialize_any(TopSeed(spec)) {
        Ok(top) => top,
        Err(_) => return Err(ParseError::Syntax),
    };
    if de.end().is_err() {
        return Err(ParseError::Syntax);
    }
    match top {
        Top::Single(env) => env.resolve(spec).map(Body::Single),
        Top::Batch(envs) => {
            if envs.is_empty() {
                return Err(ParseError::InvalidRequest {
                    id: None,
                    reason: "empty batch",
                });
            }
            let mut out = Vec::with_capacity(envs.len());
            for env in envs {
                out.push(env.resolve(spec)?);
            }
            Ok(Body::Batch(out))
        }
        Top::Other => Err(ParseError::InvalidRequest {
            id: None,
            reason: "body is not a JSON-RPC object or batch",
        }),
    }
}

/// Defects found while scanning one level of an object. They are recorded,
/// not raised, so the id is still known when the request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    Duplicate(&'static str),
    Ambiguous(&'static str),
}

impl Flaw {
    fn reason(self) -> &'static str {
        match self {
            Flaw::Duplicate("method") => "duplicate member \"method\"",
            Flaw::Duplicate("params") => "duplicate member \"params\"",
            Flaw::Duplicate("id") => "duplicate member \"id\"",
            Flaw::Duplicate("name") => "duplicate member \"params.name\"",
            Flaw::Duplicate("uri") => "duplicate member \"params.uri\"",
            Flaw::Duplicate("arguments") => "duplicate member \"params.arguments\"",
            Flaw::Duplicate("tool_name") => "duplicate member \"tool_name\"",
            Flaw::Duplicate("parameters") => "duplicate member \"arguments.parameters\"",
            Flaw::Duplicate(_) => "duplicate member",
            Flaw::Ambiguous("method") => "member name differs from \"method\" only by case",
            Flaw::Ambiguous("params") => "member name differs from \"params\" only by case",
            Flaw::Ambiguous("id") => "member name differs from \"id\" only by case",
            Flaw::Ambiguous("name") => "member name differs from \"name\" only by case",
            Flaw::Ambiguous("uri") => "member name differs from \"uri\" only by case",
            Flaw::Ambiguous("arguments") => "member name differs from \"arguments\" only by case",
            Flaw::Ambiguous("tool_name") => "member name differs from \"tool_name\" only by case",
            Flaw::Ambiguous("parameters") => "member name differs from \"parameters\" only by case",
            Flaw::Ambiguous(_) => "member name differs from a known member only by case",
        }
    }
}

/// How a member name relates to the names a level knows.
enum Member {
    Known(usize),
    Ambiguous(&'static str),
    Other,
}

/// Classifies `key` against `names` (all lowercase ASCII).
fn classify(key: &str, names: &[&'static str]) -> Member {
    for (i, name) in names.iter().enumerate() {
        if key == *name {
            return Member::Known(i);
        }
    }
    for name in names {
        if folds_to(key, name) {
            return Member::Ambiguous(name);
        }
    }
    Member::Other
}

/// True when a case-insensitive decoder (Go's `strings.EqualFold` rules)
/// would take `key` for the ASCII `name`.
fn folds_to(key: &str, name: &str) -> bool {
    // Each char of `name` is one byte; a folding char is at most 3 bytes.
    if !name.is_ascii() || key.len() < name.len() || key.len() > name.len() * 3 {
        return false;
    }
    let mut want = name.bytes().map(|b| b.to_ascii_lowercase());
    for c in key.chars() {
        let folded = match c {
            '\u{017F}' => b's', // LATIN SMALL LETTER LONG S
            '\u{212A}' => b'k', // KELVIN SIGN
            c if c.is_ascii() => (c as u8).to_ascii_lowercase(),
            _ => return false,
        };
        if want.next() != Some(folded) {
            return false;
        }
    }
    want.next().is_none()
}

/// Records which members of one object level were seen and the first flaw.
struct Seen {
    mask: u64,
    flaw: Option<Flaw>,
}

impl Seen {
    fn new() -> Self {
        Seen {
            mask: 0,
            flaw: None,
        }
    }

    /// Returns true if the member is seen for the first time.
    fn first(&mut self, index: usize, name: &'static str) -> bool {
        let bit = 1u64 << index;
        if self.mask & bit != 0 {
            self.flaw.get_or_insert(Flaw::Duplicate(name));
            return false;
        }
        self.mask |= bit;
        true
    }

    fn ambiguous(&mut self, name: &'static str) {
        self.flaw.get_or_insert(Flaw::Ambiguous(name));
    }
}

/// A member whose value we only need when it is a string.
#[derive(Debug, Default)]
enum Field<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    NotStr,
}

/// Implements the scalar `visit_*` methods of a visitor that accepts any JSON
/// value, mapping them to `$other`.
macro_rules! scalars_are {
    ($other:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
}

/// Drains a sequence without looking at it.
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Drains the rest of a map without looking at it.
fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

impl<'de> de::Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v)))
            }
            scalars_are!(Field::NotStr);
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq)?;
                Ok(Field::NotStr)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                skip_map(map)?;
                Ok(Field::NotStr)
            }
        }
        d.deserialize_any(V)
    }
}

/// The value of a JSON string literal (`"..."`, escapes decoded).
pub fn json_string(json: &str) -> Option<Cow<'_, str>> {
    match serde_json::from_str::<Field<'_>>(json) {
        Ok(Field::Str(s)) => Some(s),
        _ => None,
    }
}

/// A map key, borrowed when the JSON text has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Walks the members of an object, dispatching known ones to `on_known`
/// and skipping the rest; records duplicates and near-misses in `seen`.
fn walk_members<'de, A, F>(
    mut map: A,
    names: &[&'static str],
    seen: &mut Seen,
    mut on_known: F,
) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    F: FnMut(usize, bool, &mut A) -> Result<(), A::Error>,
{
    while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
        match classify(&key, names) {
            Member::Known(i) => {
                let first = seen.first(i, names.get(i).copied().unwrap_or(""));
                on_known(i, first, &mut map)?;
            }
            Member::Ambiguous(name) => {
                seen.ambiguous(name);
                map.next_value::<IgnoredAny>()?;
            }
            Member::Other => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(())
}

/// `params.arguments.parameters` of a meta-tool call.
#[derive(Debug, Default)]
struct Parameters<'a> {
    tool_name: Field<'a>,
    flaw: Option<Flaw>,
}

impl<'de> de::Deserialize<'de> for Parameters<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Parameters<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            scalars_are!(Parameters::default());
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Parameters::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq)?;
                Ok(Parameters::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let mut out = Parameters::default();
                let mut seen = Seen::new();
                walk_members(map, &["tool_name"], &mut seen, |_, first, map| {
                    let v = map.next_value::<Field<'de>>()?;
                    if first {
                        out.tool_name = v;
                    }
                    Ok(())
                })?;
                out.flaw = seen.flaw;
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

/// Argument values kept for `Mcp-Param-*` checks: one slot per configured
/// mapping, with a flag when the member was given twice or ambiguously.
#[derive(Debug, Default)]
struct Kept<'a> {
    values: Vec<Option<&'a RawValue>>,
    flawed: u64,
}

/// `params.arguments`: the meta-tool's inner name, and the arguments that
/// `Mcp-Param-*` headers mirror.
#[derive(Debug, Default)]
struct Arguments<'a> {
    tool_name: Field<'a>,
    parameters: Parameters<'a>,
    kept: Kept<'a>,
    flaw: Option<Flaw>,
}

struct ArgumentsSeed<'s>(&'s Spec<'s>);

impl<'de> DeserializeSeed<'de> for ArgumentsSeed<'_> {
    type Value = Arguments<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ArgumentsSeed<'_> {
    type Value = Arguments<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    scalars_are!(Arguments::default());
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Arguments::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(Arguments::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let keys = self.0.argument_keys;
        let mut out = Arguments {
            kept: Kept {
                values: vec![None; keys.len()],
                flawed: 0,
            },
            ..Arguments::default()
        };
        let mut seen = Seen::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            // Arguments mirrored into headers (rarely configured) are kept
            // as JSON text.
            let mut kept: Option<&'de RawValue> = None;
            if !keys.is_empty() {
                let mut exact = false;
                for (i, k) in keys.iter().enumerate() {
                    if *k == key {
                        exact = true;
                    } else if folds_to(&key, k) {
                        out.kept.flawed |= 1 << i;
                    }
                }
                if exact {
                    let v = map.next_value::<&'de RawValue>()?;
                    kept = Some(v);
                    for (i, k) in keys.iter().enumerate() {
                        if *k == key {
                            match out.kept.values.get_mut(i) {
                                Some(slot @ None) => *slot = Some(v),
                                _ => out.kept.flawed |= 1 << i,
                            }
                        }
                    }
                }
            }
            match classify(&key, &["tool_name", "parameters"]) {
                Member::Known(0) => {
                    let v = match kept {
                        Some(raw) => serde_json::from_str::<Field<'de>>(raw.get())
                            .map_err(de::Error::custom)?,
                        None => map.next_value::<Field<'de>>()?,
                    };
                    if seen.first(0, "tool_name") {
                        out.tool_name = v;
                    }
                }
                Member::Known(_) if kept.is_none() => {
                    let v = map.next_value::<Parameters<'de>>()?;
                    if seen.first(1, "parameters") {
                        out.parameters = v;
                    }
                }
                Member::Ambiguous(name) => {
                    seen.ambiguous(name);
                    if kept.is_none() {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                _ => {
                    if kept.is_none() {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
        }
        out.flaw = seen.flaw.or(out.parameters.flaw);
        Ok(out)
    }
}

/// `params._meta`: only the protocol version of MCP 2026-07-28 requests.
#[derive(Debug, Default)]
struct Meta<'a> {
    protocol_version: Field<'a>,
}

impl<'de> de::Deserialize<'de> for Meta<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Meta<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            scalars_are!(Meta::default());
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Meta::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                skip_seq(seq)?;
                Ok(Meta::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Meta::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if key == PROTOCOL_VERSION_META {
                        out.protocol_version = map.next_value::<Field<'de>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

const PROTOCOL_VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

/// `params`: an object for the methods we know, anything for others.
#[derive(Debug, Default)]
struct Params<'a> {
    name: Field<'a>,
    uri: Field<'a>,
    arguments: Arguments<'a>,
    meta: Meta<'a>,
    flaw: Option<Flaw>,
}

struct ParamsSeed<'s>(&'s Spec<'s>);

impl<'de> DeserializeSeed<'de> for ParamsSeed<'_> {
    type Value = Params<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ParamsSeed<'_> {
    type Value = Params<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    scalars_are!(Params::default());
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Params::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(Params::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let spec = self.0;
        let mut out = Params::default();
        let mut seen = Seen::new();
        walk_members(
            map,
            &["name", "uri", "arguments", "_meta"],
            &mut seen,
            |i, first, map| {
                match i {
                    0 => {
                        let v = map.next_value::<Field<'de>>()?;
                        if first {
                            out.name = v;
                        }
                    }
                    1 => {
                        let v = map.next_value::<Field<'de>>()?;
                        if first {
                            out.uri = v;
                        }
                    }
                    2 => {
                        let v = map.next_value_seed(ArgumentsSeed(spec))?;
                        if first {
                            out.arguments = v;
                        }
                    }
                    _ => {
                        let v = map.next_value::<Meta<'de>>()?;
                        if first {
                            out.meta = v;
                        }
                    }
                }
                Ok(())
            },
        )?;
        out.flaw = seen.flaw;
        Ok(out)
    }
}

/// One JSON-RPC message as scanned, before resolution.
#[derive(Debug, Default)]
struct Envelope<'a> {
    is_object: bool,
    id: Option<&'a RawValue>,
    method: Field<'a>,
    params: Params<'a>,
    flaw: Option<Flaw>,
}

const TOOLS_CALL: &str = "tools/call";
const PROMPTS_GET: &str = "prompts/get";
const RESOURCES_READ: &str = "resources/read";

impl<'a> Envelope<'a> {
    fn resolve(self, spec: &Spec<'_>) -> Result<Request<'a>, ParseError<'a>> {
        let id = self.id;
        let raw_id = id.map(RawValue::get);
        let invalid = |reason| ParseError::InvalidRequest { id: raw_id, reason };
        let bad_params = |reason| ParseError::InvalidParams { id: raw_id, reason };
        if !self.is_object {
            return Err(invalid("batch element is not an object"));
        }
        if let Some(flaw) = self.flaw {
            return Err(invalid(flaw.reason()));
        }
        let method = match self.method {
            Field::Absent => None,
            Field::Str(m) => Some(m),
            Field::NotStr => return Err(invalid("method is not a string")),
        };
        let params = self.params;
        let known = matches!(
            method.as_deref(),
            Some(TOOLS_CALL | PROMPTS_GET | RESOURCES_READ)
        );
        if known {
            if let Some(flaw) = params.flaw {
                return Err(invalid(flaw.reason()));
            }
        }
        let meta_protocol_version = match params.meta.protocol_version {
            Field::Str(v) => Some(v),
            _ => None,
        };
        let mut kept = Vec::new();
        let (name, target) = match method.as_deref() {
            Some(TOOLS_CALL) => {
                let name = match params.name {
                    Field::Str(n) if !n.is_empty() => n,
                    _ => return Err(bad_params("tools/call without a tool name in params.name")),
                };
                let args = params.arguments;
                for (i, p) in spec.params.iter().enumerate() {
                    if p.tool == name && args.kept.flawed & (1 << i) != 0 {
                        return Err(invalid("an argument mirrored in an Mcp-Param header is duplicated or ambiguous"));
                    }
                }
                kept = args.kept.values;
                let tool = if spec.meta_tools.iter().any(|m| *m == name) {
                    if let Some(flaw) = args.flaw {
                        return Err(invalid(flaw.reason()));
                    }
                    match (args.tool_name, args.parameters.tool_name) {
                        (Field::Str(t), _) if !t.is_empty() => t,
                        (_, Field::Str(t)) if !t.is_empty() => t,
                        _ => name.clone(),
                    }
                } else {
                    name.clone()
                };
                (Some(name), Some(Target::Tool(tool)))
            }
            Some(PROMPTS_GET) => match params.name {
                Field::Str(n) if !n.is_empty() => (Some(n.clone()), Some(Target::Prompt(n))),
                _ => {
                    return Err(bad_params(
                        "prompts/get without a prompt name in params.name",
                    ))
                }
            },
            Some(RESOURCES_READ) => match params.uri {
                Field::Str(u) if !u.is_empty() => (Some(u.clone()), Some(Target::Resource(u))),
                _ => return Err(bad_params("resources/read without a URI in params.uri")),
            },
            _ => (None, None),
        };
        Ok(Request {
            id,
            method,
            name,
            target,
            meta_protocol_version,
            kept,
        })
    }
}

struct EnvelopeSeed<'s>(&'s Spec<'s>);

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = Envelope<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = Envelope<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC object")
    }
    scalars_are!(Envelope::default());
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Envelope::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq)?;
        Ok(Envelope::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let spec = self.0;
        let mut out = Envelope {
            is_object: true,
            ..Envelope::default()
        };
        let mut seen = Seen::new();
        walk_members(
            map,
            &["id", "method", "params"],
            &mut seen,
            |i, first, map| {
                match i {
                    0 => {
                        let v = map.next_value_seed(RawSeed)?;
                        if first {
                            out.id = Some(v);
                        }
                    }
                    1 => {
                        let v = map.next_value::<Field<'de>>()?;
                        if first {
                            out.method = v;
                        }
                    }
                    _ => {
                        let v = map.next_value_seed(ParamsSeed(spec))?;
                        if first {
                            out.params = v;
                        }
                    }
                }
                Ok(())
            },
        )?;
        out.flaw = seen.flaw;
        Ok(out)
    }
}

/// Captures a value's JSON text without interpreting it (keeps `null`).
struct RawSeed;

impl<'de> DeserializeSeed<'de> for RawSeed {
    type Value = &'de RawValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        <&'de RawValue as de::Deserialize<'de>>::deserialize(d)
    }
}

// Lives on the stack for one parse; boxing the single case would cost an
// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Top<'a> {
    Single(Envelope<'a>),
    Batch(Vec<Envelope<'a>>),
    Other,
}

struct TopSeed<'s>(&'s Spec<'s>);

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = Top<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC object or batch")
    }
    scalars_are!(Top::Other);
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Top::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
        while let Some(env) = seq.next_element_seed(EnvelopeSeed(self.0))? {
            out.push(env);
        }
        Ok(Top::Batch(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        EnvelopeSeed(self.0).visit_map(map).map(Top::Single)
    }
}

#[cfg(test)]
mod tests {
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
        let body = br#"{"id":1,"method":"tools/call","params":{"name":"run","arguments":{"tool_name":"x"}}}"#;
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
}
