//! Single-pass, borrowing extraction of what the filter needs from a JSON-RPC
//! body: `jsonrpc`, `id`, `method`, the target of `tools/call`, `prompts/get`
//! and `resources/read`, `params._meta`'s protocol version, and the
//! arguments that `Mcp-Param-*` headers mirror. Every other member is
//! skipped (still validated as JSON) without being materialised.
//!
//! One walker reads every object level ([`Object`] over a [`Level`]); one
//! bookkeeper ([`Members`]) judges every member it reads. Member names are
//! matched exactly. A member that only a lenient decoder would take for one
//! of ours (`Name`, `METHOD`, `argumentſ`: the ASCII case and Unicode simple
//! folds that Go's `encoding/json` applies) and a member given twice are
//! refused, because the upstream might read a different value than the one
//! the filter counts or checks.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

pub use crate::message::{Body, ParamHeader, Request, Target};

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
        Top::Single(env) => env.resolve().map(Body::Single),
        Top::Batch(envs) => {
            if envs.is_empty() {
                return Err(ParseError::InvalidRequest {
                    id: None,
                    reason: "empty batch",
                });
            }
            let mut out = Vec::with_capacity(envs.len());
            for env in envs {
                out.push(env.resolve()?);
            }
            Ok(Body::Batch(out))
        }
        Top::Other => Err(ParseError::InvalidRequest {
            id: None,
            reason: "body is not a JSON-RPC object or batch",
        }),
    }
}

/// The value of a JSON string literal (`"..."`, escapes decoded).
pub fn json_string(json: &str) -> Option<Cow<'_, str>> {
    match serde_json::from_str::<Field<'_>>(json) {
        Ok(Field::Str(s)) => Some(s),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Member bookkeeping: one place decides what a member name is.

const PROTOCOL_VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

/// The members one object level reads, and what was seen of them: which
/// came, which came twice, and which names only a case-folding decoder
/// would take for one of them.
struct Members {
    names: &'static [&'static str],
    seen: u32,
    repeated: u32,
    folded: u32,
}

impl Members {
    const fn new(names: &'static [&'static str]) -> Self {
        Members {
            names,
            seen: 0,
            repeated: 0,
            folded: 0,
        }
    }

    /// Which of the level's members `key` is, and whether it is its first
    /// occurrence; `None` for a member to skip. Repeats and near-misses are
    /// recorded.
    fn classify(&mut self, key: &str) -> Option<(usize, bool)> {
        if let Some(i) = self.names.iter().position(|name| *name == key) {
            let bit = 1u32 << i;
            let first = self.seen & bit == 0;
            self.seen |= bit;
            if !first {
                self.repeated |= bit;
            }
            return Some((i, first));
        }
        if let Some(i) = self.names.iter().position(|name| folds_to(key, name)) {
            self.folded |= 1u32 << i;
        }
        None
    }

    /// The reason to refuse the body, if a member in `mask` (bits by index)
    /// was repeated or shadowed by a folded name.
    fn flaw(&self, mask: u32) -> Option<&'static str> {
        self.names.iter().enumerate().find_map(|(i, name)| {
            let bit = 1u32 << i;
            if mask & bit == 0 {
                None
            } else if self.repeated & bit != 0 {
                Some(reason(name, true))
            } else if self.folded & bit != 0 {
                Some(reason(name, false))
            } else {
                None
            }
        })
    }
}

const ALL: u32 = u32::MAX;

/// Why a read member makes a body ambiguous: given twice, or shadowed by a
/// name that differs only by case.
fn reason(name: &str, repeated: bool) -> &'static str {
    match (name, repeated) {
        ("jsonrpc", true) => "duplicate member \"jsonrpc\"",
        ("id", true) => "duplicate member \"id\"",
        ("method", true) => "duplicate member \"method\"",
        ("params", true) => "duplicate member \"params\"",
        ("name", true) => "duplicate member \"params.name\"",
        ("uri", true) => "duplicate member \"params.uri\"",
        ("arguments", true) => "duplicate member \"params.arguments\"",
        ("_meta", true) => "duplicate member \"params._meta\"",
        ("tool_name", true) => "duplicate member \"tool_name\"",
        ("parameters", true) => "duplicate member \"arguments.parameters\"",
        (PROTOCOL_VERSION_META, true) => {
            "duplicate member \"_meta.io.modelcontextprotocol/protocolVersion\""
        }
        (_, true) => "duplicate member",
        ("jsonrpc", false) => "member name differs from \"jsonrpc\" only by case",
        ("id", false) => "member name differs from \"id\" only by case",
        ("method", false) => "member name differs from \"method\" only by case",
        ("params", false) => "member name differs from \"params\" only by case",
        ("name", false) => "member name differs from \"name\" only by case",
        ("uri", false) => "member name differs from \"uri\" only by case",
        ("arguments", false) => "member name differs from \"arguments\" only by case",
        ("_meta", false) => "member name differs from \"_meta\" only by case",
        ("tool_name", false) => "member name differs from \"tool_name\" only by case",
        ("parameters", false) => "member name differs from \"parameters\" only by case",
        (PROTOCOL_VERSION_META, false) => {
            "member name differs from \"io.modelcontextprotocol/protocolVersion\" only by case"
        }
        (_, false) => "member name differs from a known member only by case",
    }
}

/// True when a case-insensitive decoder (Go's `strings.EqualFold` rules)
/// would take `key` for the ASCII `name`.
fn folds_to(key: &str, name: &str) -> bool {
    // Each char of `name` is one byte; a folding char is at most 3 bytes.
    if !name.is_ascii() || key.len() < name.len() || key.len() > name.len().saturating_mul(3) {
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

/// Keeps the first occurrence of a member.
fn keep<T>(slot: &mut T, first: bool, value: T) {
    if first {
        *slot = value;
    }
}

// ---------------------------------------------------------------------------
// The walker.

/// The scalar `visit_*` methods of a visitor that accepts any JSON value and
/// gives `$other` for every scalar.
macro_rules! scalars_are {
    ($self:ident => $other:expr) => {
        fn visit_bool<E: de::Error>($self, _: bool) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E: de::Error>($self, _: i64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_u64<E: de::Error>($self, _: u64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E: de::Error>($self, _: f64) -> Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E: de::Error>($self) -> Result<Self::Value, E> {
            Ok($other)
        }
    };
}

/// One object level the filter reads: what it does with each member.
trait Level<'de> {
    /// Called with each member name; must consume the member's value.
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
    /// Called when the value is an object (before its members).
    fn is_object(&mut self) {}
}

/// Reads a JSON value with a [`Level`]: its members when it is an object;
/// anything else is skipped and leaves the level as it was.
struct Object<L>(L);

impl<'de, L: Level<'de>> DeserializeSeed<'de> for Object<L> {
    type Value = L;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<L, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, L: Level<'de>> Visitor<'de> for Object<L> {
    type Value = L;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    scalars_are!(self => self.0);
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(self.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<L, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.0)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<L, A::Error> {
        let mut level = self.0;
        level.is_object();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            level.member(&key, &mut map)?;
        }
        Ok(level)
    }
}

/// Reads a value that was captured as JSON text with `seed`, borrowing from
/// the body as the first read would have.
fn reread<'de, T: DeserializeSeed<'de>, E: de::Error>(
    raw: &'de RawValue,
    seed: T,
) -> Result<T::Value, E> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    seed.deserialize(&mut de).map_err(E::custom)
}

/// A member whose value we only need when it is a string.
#[derive(Debug, Default)]
enum Field<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    NotStr,
}

impl<'a> Field<'a> {
    fn into_str(self) -> Option<Cow<'a, str>> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A non-empty string.
    fn name(self) -> Option<Cow<'a, str>> {
        self.into_str().filter(|s| !s.is_empty())
    }
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
            scalars_are!(self => Field::NotStr);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::NotStr)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::NotStr)
            }
        }
        d.deserialize_any(V)
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

// ---------------------------------------------------------------------------
// The levels.

/// One JSON-RPC message.
struct Envelope<'s, 'de> {
    spec: &'s Spec<'s>,
    members: Members,
    object: bool,
    jsonrpc: Field<'de>,
    id: Option<&'de RawValue>,
    method: Field<'de>,
    params: Params<'s, 'de>,
}

impl<'s> Envelope<'s, '_> {
    fn new(spec: &'s Spec<'s>) -> Self {
        Envelope {
            spec,
            members: Members::new(&["jsonrpc", "id", "method", "params"]),
            object: false,
            jsonrpc: Field::Absent,
            id: None,
            method: Field::Absent,
            params: Params::new(spec),
        }
    }
}

impl<'de> Level<'de> for Envelope<'_, 'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match self.members.classify(key) {
            Some((0, first)) => keep(&mut self.jsonrpc, first, map.next_value()?),
            Some((1, first)) => keep(&mut self.id, first, Some(map.next_value()?)),
            Some((2, first)) => keep(&mut self.method, first, map.next_value()?),
            Some((_, first)) => {
                let params = map.next_value_seed(Object(Params::new(self.spec)))?;
                keep(&mut self.params, first, params);
            }
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn is_object(&mut self) {
        self.object = true;
    }
}

/// `params`: an object for the methods we know, anything for others.
struct Params<'s, 'de> {
    spec: &'s Spec<'s>,
    members: Members,
    name: Field<'de>,
    uri: Field<'de>,
    arguments: Arguments<'s, 'de>,
    meta: Meta<'de>,
}

/// `Params` members by index, as masks.
const NAME_URI_ARGUMENTS: u32 = 0b0111;
const META: u32 = 0b1000;

impl<'s> Params<'s, '_> {
    fn new(spec: &'s Spec<'s>) -> Self {
        Params {
            spec,
            members: Members::new(&["name", "uri", "arguments", "_meta"]),
            name: Field::Absent,
            uri: Field::Absent,
            arguments: Arguments::new(spec),
            meta: Meta::new(),
        }
    }
}

impl<'de> Level<'de> for Params<'_, 'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match self.members.classify(key) {
            Some((0, first)) => keep(&mut self.name, first, map.next_value()?),
            Some((1, first)) => keep(&mut self.uri, first, map.next_value()?),
            Some((2, first)) => {
                let args = map.next_value_seed(Object(Arguments::new(self.spec)))?;
                keep(&mut self.arguments, first, args);
            }
            Some((_, first)) => {
                let meta = map.next_value_seed(Object(Meta::new()))?;
                keep(&mut self.meta, first, meta);
            }
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// `params.arguments`: the meta-tool's inner name, and the arguments that
/// `Mcp-Param-*` headers mirror. An argument can be both (a mapping of
/// `tool_name` or `parameters`): it is then captured and also read.
struct Arguments<'s, 'de> {
    spec: &'s Spec<'s>,
    members: Members,
    tool_name: Field<'de>,
    parameters: Parameters<'de>,
    /// One slot per mapping.
    kept: Vec<Option<&'de RawValue>>,
    /// Mappings whose argument was repeated or shadowed by a folded name.
    kept_flawed: u64,
}

impl<'s> Arguments<'s, '_> {
    fn new(spec: &'s Spec<'s>) -> Self {
        Arguments {
            spec,
            members: Members::new(&["tool_name", "parameters"]),
            tool_name: Field::Absent,
            parameters: Parameters::new(),
            kept: vec![None; spec.argument_keys.len()],
            kept_flawed: 0,
        }
    }
}

impl<'de> Level<'de> for Arguments<'_, 'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        let read = self.members.classify(key);
        let mut mirrored = false;
        for (i, k) in self.spec.argument_keys.iter().enumerate() {
            if *k == key {
                mirrored = true;
            } else if folds_to(key, k) {
                self.kept_flawed |= 1 << i;
            }
        }
        if !mirrored {
            match read {
                Some((0, first)) => keep(&mut self.tool_name, first, map.next_value()?),
                Some((_, first)) => {
                    let p = map.next_value_seed(Object(Parameters::new()))?;
                    keep(&mut self.parameters, first, p);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            return Ok(());
        }
        // Mirrored into a header (rarely configured): kept as JSON text.
        let raw: &'de RawValue = map.next_value()?;
        for (i, k) in self.spec.argument_keys.iter().enumerate() {
            if *k == key {
                match self.kept.get_mut(i) {
                    Some(slot @ None) => *slot = Some(raw),
                    _ => self.kept_flawed |= 1 << i,
                }
            }
        }
        match read {
            Some((0, first)) => keep(&mut self.tool_name, first, reread(raw, PhantomData)?),
            Some((_, first)) => {
                let p = reread(raw, Object(Parameters::new()))?;
                keep(&mut self.parameters, first, p);
            }
            None => {}
        }
        Ok(())
    }
}

/// `params.arguments.parameters` of a meta-tool call.
struct Parameters<'de> {
    members: Members,
    tool_name: Field<'de>,
}

impl Parameters<'_> {
    fn new() -> Self {
        Parameters {
            members: Members::new(&["tool_name"]),
            tool_name: Field::Absent,
        }
    }
}

impl<'de> Level<'de> for Parameters<'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match self.members.classify(key) {
            Some((_, first)) => keep(&mut self.tool_name, first, map.next_value()?),
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// `params._meta`: only the protocol version of MCP 2026-07-28 requests.
struct Meta<'de> {
    members: Members,
    protocol_version: Field<'de>,
}

impl Meta<'_> {
    fn new() -> Self {
        Meta {
            members: Members::new(&[PROTOCOL_VERSION_META]),
            protocol_version: Field::Absent,
        }
    }
}

impl<'de> Level<'de> for Meta<'de> {
    fn member<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match self.members.classify(key) {
            Some((_, first)) => keep(&mut self.protocol_version, first, map.next_value()?),
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Resolution: from what was read to a request, or the reason to refuse it.

const TOOLS_CALL: &str = "tools/call";
const PROMPTS_GET: &str = "prompts/get";
const RESOURCES_READ: &str = "resources/read";

impl<'de> Envelope<'_, 'de> {
    fn resolve(self) -> Result<Request<'de>, ParseError<'de>> {
        let id = self.id;
        let raw_id = id.map(RawValue::get);
        let invalid = |reason| ParseError::InvalidRequest { id: raw_id, reason };
        let bad_params = |reason| ParseError::InvalidParams { id: raw_id, reason };
        if !self.object {
            return Err(invalid("batch element is not an object"));
        }
        if let Some(reason) = self.members.flaw(ALL) {
            return Err(invalid(reason));
        }
        match &self.jsonrpc {
            Field::Absent => {}
            Field::Str(v) if v == "2.0" => {}
            _ => return Err(invalid("jsonrpc is not \"2.0\"")),
        }
        let method = match self.method {
            Field::Absent => None,
            Field::Str(m) => Some(m),
            Field::NotStr => return Err(invalid("method is not a string")),
        };
        let params = self.params;
        // The protocol version is read for every method.
        if let Some(reason) = params
            .members
            .flaw(META)
            .or_else(|| params.meta.members.flaw(ALL))
        {
            return Err(invalid(reason));
        }
        let meta_protocol_version = params.meta.protocol_version.into_str();
        let known = matches!(
            method.as_deref(),
            Some(TOOLS_CALL | PROMPTS_GET | RESOURCES_READ)
        );
        if known {
            if let Some(reason) = params.members.flaw(NAME_URI_ARGUMENTS) {
                return Err(invalid(reason));
            }
        }
        let spec = params.spec;
        let mut kept = Vec::new();
        let (name, target) = match method.as_deref() {
            Some(TOOLS_CALL) => {
                let name = params
                    .name
                    .name()
                    .ok_or_else(|| bad_params("tools/call without a tool name in params.name"))?;
                let args = params.arguments;
                let mirrored_flaw = spec
                    .params
                    .iter()
                    .enumerate()
                    .any(|(i, p)| p.tool == name && args.kept_flawed & (1 << i) != 0);
                if mirrored_flaw {
                    return Err(invalid(
                        "an argument mirrored in an Mcp-Param header is duplicated or ambiguous",
                    ));
                }
                kept = args.kept;
                let tool = if spec.meta_tools.iter().any(|m| *m == name) {
                    if let Some(reason) = args
                        .members
                        .flaw(ALL)
                        .or_else(|| args.parameters.members.flaw(ALL))
                    {
                        return Err(invalid(reason));
                    }
                    args.tool_name
                        .name()
                        .or_else(|| args.parameters.tool_name.name())
                        .unwrap_or_else(|| name.clone())
                } else {
                    name.clone()
                };
                (Some(name), Some(Target::Tool(tool)))
            }
            Some(PROMPTS_GET) => {
                let n = params.name.name().ok_or_else(|| {
                    bad_params("prompts/get without a prompt name in params.name")
                })?;
                (Some(n.clone()), Some(Target::Prompt(n)))
            }
            Some(RESOURCES_READ) => {
                let u = params
                    .uri
                    .name()
                    .ok_or_else(|| bad_params("resources/read without a URI in params.uri"))?;
                (Some(u.clone()), Some(Target::Resource(u)))
            }
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

// ---------------------------------------------------------------------------
// The top of the body: one message or a batch.

// Lives on the stack for one parse; boxing the single case would cost an
// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Top<'s, 'a> {
    Single(Envelope<'s, 'a>),
    Batch(Vec<Envelope<'s, 'a>>),
    Other,
}

struct TopSeed<'s>(&'s Spec<'s>);

impl<'s, 'de> Visitor<'de> for TopSeed<'s> {
    type Value = Top<'s, 'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC object or batch")
    }
    scalars_are!(self => Top::Other);
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Top::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64));
        while let Some(env) = seq.next_element_seed(Object(Envelope::new(self.0)))? {
            out.push(env);
        }
        Ok(Top::Batch(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Object(Envelope::new(self.0))
            .visit_map(map)
            .map(Top::Single)
    }
}

#[cfg(test)]
mod tests;
