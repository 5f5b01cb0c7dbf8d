//! Reading the configuration's JSON into the `Raw*` structs of [`super`].
//!
//! The shapes are data (a [`Kind`] per value) read by one seed and one
//! visitor, rather than a `Deserialize` implementation per type: serde_json
//! is then instantiated once per kind of call instead of once per field
//! type, which keeps the module small. The calls made on the deserializer,
//! their order and the errors given are those of serde's derive for the
//! same structs (`deny_unknown_fields`, fields with `default`, and the
//! field-naming wrapper of some keys), so every message and every rejection
//! is what the derived code gave.

use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, Error as _, MapAccess, SeqAccess, Unexpected,
    VariantAccess, Visitor,
};
use serde_json::value::RawValue;

/// What a JSON value must be, and how serde's derive reads it.
pub(super) enum Kind {
    Str,
    Bool,
    U64,
    U32,
    I64,
    Usize,
    /// `Option<T>`.
    Opt(&'static Kind),
    /// `Vec<T>`.
    Seq(&'static Kind),
    Struct(&'static Struct),
    /// A unit-variant enum: its name and its [`Kind::Variant`].
    Enum(&'static str, &'static Kind),
    /// The variant name of an enum.
    Variant(&'static [&'static str]),
    /// A map of names to `u64` ("an object of tool names and costs").
    Costs,
    /// `Box<RawValue>`.
    Raw,
}

/// A struct with `deny_unknown_fields`.
pub(super) struct Struct {
    pub name: &'static str,
    pub fields: &'static [Field],
    /// `fields[i].name`, for `unknown field` messages.
    pub names: &'static [&'static str],
}

/// One field of a [`Struct`].
pub(super) struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// Errors inside it start with "`name`: ".
    pub named: bool,
    /// Has a default (absent in an object or missing at the end of a list).
    pub default: bool,
    /// An `Option` without a default: absent in an object is `None`, but it
    /// is required in the list form.
    pub option: bool,
}

/// A value read.
pub(super) enum Val {
    Str(String),
    U64(u64),
    I64(i64),
    Bool(bool),
    None,
    List(Vec<Val>),
    /// A struct's fields, by index; `None`: absent.
    Fields(Vec<Option<Val>>),
    Variant(usize),
    Costs(Vec<(String, u64)>),
    Raw(Box<RawValue>),
}

/// Reads one JSON document of `kind` (as `serde_json::from_slice`).
pub(super) fn parse(bytes: &[u8], kind: &'static Kind) -> Result<Val, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Seed { kind, name: None }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

#[derive(Clone, Copy)]
struct Seed {
    kind: &'static Kind,
    /// The key that errors inside this value name.
    name: Option<&'static str>,
}

impl<'de> DeserializeSeed<'de> for Seed {
    type Value = Val;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
        let read = read(self.kind, d);
        match self.name {
            Some(name) => read.map_err(|e| D::Error::custom(format_args!("`{name}`: {e}"))),
            None => read,
        }
    }
}

fn read<'de, D: Deserializer<'de>>(kind: &'static Kind, d: D) -> Result<Val, D::Error> {
    let v = V(kind);
    match kind {
        Kind::Str => d.deserialize_string(v),
        Kind::Bool => d.deserialize_bool(v),
        Kind::U64 | Kind::Usize => d.deserialize_u64(v),
        Kind::U32 => d.deserialize_u32(v),
        Kind::I64 => d.deserialize_i64(v),
        Kind::Opt(_) => d.deserialize_option(v),
        Kind::Seq(_) => d.deserialize_seq(v),
        Kind::Struct(s) => d.deserialize_struct(s.name, s.names, v),
        Kind::Enum(name, variant) => {
            let variants = match variant {
                Kind::Variant(variants) => variants,
                _ => &[][..],
            };
            d.deserialize_enum(name, variants, v)
        }
        Kind::Variant(_) => d.deserialize_identifier(v),
        Kind::Costs => d.deserialize_map(v),
        Kind::Raw => <Box<RawValue> as de::Deserialize>::deserialize(d).map(Val::Raw),
    }
}

struct V(&'static Kind);

/// The "struct X with N elements" of a list that is too short.
struct Length(&'static Struct);

impl de::Expected for Length {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "struct {} with {} elements",
            self.0.name,
            self.0.fields.len()
        )
    }
}

impl V {
    fn unsigned<E: de::Error>(&self, v: u64, signed: Option<i64>) -> Result<Val, E> {
        let max = match self.0 {
            Kind::U64 => u64::MAX,
            Kind::U32 => u64::from(u32::MAX),
            Kind::Usize => u64::try_from(usize::MAX).unwrap_or(u64::MAX),
            Kind::I64 => match signed {
                Some(i) => return Ok(Val::I64(i)),
                None if v <= i64::MAX as u64 => return Ok(Val::I64(v as i64)),
                None => return Err(E::invalid_value(Unexpected::Unsigned(v), self)),
            },
            _ => {
                return Err(E::invalid_type(
                    match signed {
                        Some(i) => Unexpected::Signed(i),
                        None => Unexpected::Unsigned(v),
                    },
                    self,
                ))
            }
        };
        match signed {
            Some(i) if i < 0 || v > max => Err(E::invalid_value(Unexpected::Signed(i), self)),
            None if v > max => Err(E::invalid_value(Unexpected::Unsigned(v), self)),
            _ => Ok(Val::U64(v)),
        }
    }
}

impl<'de> Visitor<'de> for V {
    type Value = Val;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Kind::Str => f.write_str("a string"),
            Kind::Bool => f.write_str("a boolean"),
            Kind::U64 => f.write_str("u64"),
            Kind::U32 => f.write_str("u32"),
            Kind::I64 => f.write_str("i64"),
            Kind::Usize => f.write_str("usize"),
            Kind::Opt(_) => f.write_str("option"),
            Kind::Seq(_) => f.write_str("a sequence"),
            Kind::Struct(s) => write!(f, "struct {}", s.name),
            Kind::Enum(name, _) => write!(f, "enum {name}"),
            Kind::Variant(_) => f.write_str("variant identifier"),
            Kind::Costs => f.write_str("an object of tool names and costs"),
            Kind::Raw => f.write_str("any valid JSON value"),
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Val, E> {
        match self.0 {
            Kind::Bool => Ok(Val::Bool(v)),
            _ => Err(E::invalid_type(Unexpected::Bool(v), &self)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Val, E> {
        self.unsigned(v as u64, Some(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Val, E> {
        self.unsigned(v, None)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Val, E> {
        match self.0 {
            Kind::Str => Ok(Val::Str(v.to_owned())),
            Kind::Variant(variants) => match variants.iter().position(|n| *n == v) {
                Some(i) => Ok(Val::Variant(i)),
                None => Err(E::unknown_variant(v, variants)),
            },
            _ => Err(E::invalid_type(Unexpected::Str(v), &self)),
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<Val, E> {
        match self.0 {
            Kind::Opt(_) => Ok(Val::None),
            _ => Err(E::invalid_type(Unexpected::Option, &self)),
        }
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Val, D::Error> {
        match self.0 {
            Kind::Opt(inner) => read(inner, d),
            _ => Err(D::Error::invalid_type(Unexpected::Option, &self)),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val, A::Error> {
        match self.0 {
            Kind::Seq(inner) => {
                let mut out = Vec::new();
                let seed = Seed {
                    kind: inner,
                    name: None,
                };
                while let Some(v) = seq.next_element_seed(seed)? {
                    out.push(v);
                }
                Ok(Val::List(out))
            }
            Kind::Struct(s) => {
                let mut out = Vec::with_capacity(s.fields.len());
                for (i, f) in s.fields.iter().enumerate() {
                    let v = seq.next_element_seed(f.seed())?;
                    if v.is_none() && !f.default {
                        return Err(A::Error::invalid_length(i, &Length(s)));
                    }
                    out.push(v);
                }
                Ok(Val::Fields(out))
            }
            _ => Err(A::Error::invalid_type(Unexpected::Seq, &self)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val, A::Error> {
        match self.0 {
            Kind::Struct(s) => {
                let mut out: Vec<Option<Val>> = s.fields.iter().map(|_| None).collect();
                while let Some(key) = map.next_key::<String>()? {
                    let Some(i) = s.names.iter().position(|n| *n == key) else {
                        return Err(A::Error::unknown_field(&key, s.names));
                    };
                    let (Some(slot), Some(f)) = (out.get_mut(i), s.fields.get(i)) else {
                        return Err(A::Error::unknown_field(&key, s.names));
                    };
                    if slot.is_some() {
                        return Err(A::Error::duplicate_field(f.name));
                    }
                    *slot = Some(map.next_value_seed(f.seed())?);
                }
                for (slot, f) in out.iter_mut().zip(s.fields) {
                    if slot.is_none() && !f.default {
                        if f.option {
                            *slot = Some(Val::None);
                        } else {
                            return Err(A::Error::missing_field(f.name));
                        }
                    }
                }
                Ok(Val::Fields(out))
            }
            Kind::Costs => {
                let mut out = Vec::new();
                let seed = Seed {
                    kind: &Kind::U64,
                    name: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    if let Val::U64(cost) = map.next_value_seed(seed)? {
                        out.push((key, cost));
                    }
                }
                Ok(Val::Costs(out))
            }
            _ => Err(A::Error::invalid_type(Unexpected::Map, &self)),
        }
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Val, A::Error> {
        match self.0 {
            Kind::Enum(_, variant) => {
                let (v, access) = data.variant_seed(Seed {
                    kind: variant,
                    name: None,
                })?;
                access.unit_variant()?;
                Ok(v)
            }
            _ => Err(A::Error::invalid_type(Unexpected::Enum, &self)),
        }
    }
}

impl Field {
    fn seed(&'static self) -> Seed {
        Seed {
            kind: &self.kind,
            name: if self.named { Some(self.name) } else { None },
        }
    }
}

// ---------------------------------------------------------------------------
// Taking values apart (the shapes are known: a mismatch cannot happen).

impl Val {
    pub(super) fn into_str(self) -> String {
        match self {
            Val::Str(s) => s,
            _ => String::new(),
        }
    }
    pub(super) fn into_u64(self) -> u64 {
        match self {
            Val::U64(v) => v,
            Val::I64(v) => v as u64,
            _ => 0,
        }
    }
    pub(super) fn into_i64(self) -> i64 {
        match self {
            Val::I64(v) => v,
            Val::U64(v) => v as i64,
            _ => 0,
        }
    }
    pub(super) fn into_bool(self) -> bool {
        matches!(self, Val::Bool(true))
    }
    pub(super) fn into_list(self) -> Vec<Val> {
        match self {
            Val::List(v) => v,
            _ => Vec::new(),
        }
    }
    pub(super) fn into_strs(self) -> Vec<String> {
        self.into_list().into_iter().map(Val::into_str).collect()
    }
    pub(super) fn into_variant(self) -> usize {
        match self {
            Val::Variant(i) => i,
            _ => 0,
        }
    }
    pub(super) fn into_costs(self) -> Vec<(String, u64)> {
        match self {
            Val::Costs(c) => c,
            _ => Vec::new(),
        }
    }
    pub(super) fn into_raw(self) -> Option<Box<RawValue>> {
        match self {
            Val::Raw(r) => Some(r),
            _ => None,
        }
    }
    /// `None` for a JSON `null` read as an `Option`.
    pub(super) fn some(self) -> Option<Val> {
        match self {
            Val::None => None,
            v => Some(v),
        }
    }
    /// A struct's fields, in order.
    pub(super) fn into_fields(self) -> Fields {
        match self {
            Val::Fields(f) => Fields(f.into_iter()),
            _ => Fields(Vec::new().into_iter()),
        }
    }
}

/// The fields of a struct, taken in order; `None`: absent (its default).
pub(super) struct Fields(std::vec::IntoIter<Option<Val>>);

impl Fields {
    pub(super) fn next(&mut self) -> Option<Val> {
        self.0.next().flatten()
    }
    /// An `Option` field: absent or `null` is `None`.
    pub(super) fn opt(&mut self) -> Option<Val> {
        self.next().and_then(Val::some)
    }
}

// ---------------------------------------------------------------------------
// The schema: the configuration's structs and enums.

pub(super) const ON_MISSING: &[&str] = &["skip", "refuse"];
pub(super) const UNKNOWN_TOOLS: &[&str] = &["other", "refuse"];
pub(super) const RATELIMIT_HEADERS: &[&str] = &["off", "draft03"];
pub(super) const MCP_FIELDS: &[&str] = &[
    "method",
    "tool",
    "prompt",
    "resource",
    "session_id",
    "protocol_version",
];

/// A field: `f!(name, kind)` required; then `named` (errors name the key),
/// `default` (may be absent), `option` (an `Option` without default).
macro_rules! f {
    ($name:literal, $kind:expr $(, $flag:ident)*) => {{
        #[allow(unused_mut)]
        let mut f = Field {
            name: $name,
            kind: $kind,
            named: false,
            default: false,
            option: false,
        };
        $(f.$flag = true;)*
        f
    }};
}

static STRINGS: Kind = Kind::Seq(&Kind::Str);

pub(super) static CONFIG: Kind = Kind::Struct(&Struct {
    name: "RawConfig",
    fields: &[
        f!("domain", Kind::Str, named),
        f!("rls_cluster", Kind::Str, named),
        f!("timeout_ms", Kind::U64, named, default),
        f!("failure_mode_deny", Kind::Bool, named, default),
        f!("max_body_bytes", Kind::Usize, named, default),
        f!("hold_headers", Kind::Bool, named, default),
        f!("sniff_bodies", Kind::Bool, named, default),
        f!("refuse_batches", Kind::Bool, named, default),
        f!("meta_tools", Kind::Seq(&Kind::Str), named, default),
        f!("validate_mcp_headers", Kind::Bool, named, default),
        f!("header_fast_path", Kind::Bool, named, default),
        f!("param_headers", Kind::Seq(&PARAM_HEADER), named, default),
        f!(
            "descriptors",
            Kind::Opt(&Kind::Seq(&Kind::Raw)),
            named,
            default
        ),
        f!("shadow", Kind::Bool, named, default),
        f!("tool_costs", Kind::Costs, named, default),
        f!("default_cost", Kind::U64, named, default),
        f!("tools", Kind::Opt(&STRINGS), named, default),
        f!(
            "unknown_tools",
            Kind::Opt(&Kind::Enum("UnknownTools", &Kind::Variant(UNKNOWN_TOOLS))),
            named,
            default
        ),
        f!(
            "ratelimit_headers",
            Kind::Opt(&Kind::Enum(
                "RateLimitHeaders",
                &Kind::Variant(RATELIMIT_HEADERS)
            )),
            named,
            default
        ),
        f!("filter_state", Kind::Bool, named, default),
        f!("over_limit_cache", Kind::Bool, named, default),
        f!("over_limit_cache_max_ms", Kind::U64, named, default),
        f!("over_limit_cache_entries", Kind::U32, named, default),
        f!("lease_entries", Kind::U32, named, default),
        f!("over_limit", REPLY, named, default),
        f!("rls_failure", REPLY, named, default),
    ],
    names: &[
        "domain",
        "rls_cluster",
        "timeout_ms",
        "failure_mode_deny",
        "max_body_bytes",
        "hold_headers",
        "sniff_bodies",
        "refuse_batches",
        "meta_tools",
        "validate_mcp_headers",
        "header_fast_path",
        "param_headers",
        "descriptors",
        "shadow",
        "tool_costs",
        "default_cost",
        "tools",
        "unknown_tools",
        "ratelimit_headers",
        "filter_state",
        "over_limit_cache",
        "over_limit_cache_max_ms",
        "over_limit_cache_entries",
        "lease_entries",
        "over_limit",
        "rls_failure",
    ],
});

static PARAM_HEADER: Kind = Kind::Struct(&Struct {
    name: "RawParamHeader",
    fields: &[
        f!("tool", Kind::Str),
        f!("argument", Kind::Str),
        f!("header", Kind::Str),
    ],
    names: &["tool", "argument", "header"],
});

/// A descriptor given as a list of entries.
pub(super) static ENTRIES: Kind = Kind::Seq(&ENTRY);

/// A descriptor given as an object.
pub(super) static DESCRIPTOR_OBJECT: Kind = Kind::Struct(&Struct {
    name: "RawDescriptorObject",
    fields: &[
        f!("name", Kind::Opt(&Kind::Str), option),
        f!("entries", Kind::Seq(&ENTRY)),
        f!(
            "on_missing",
            Kind::Opt(&Kind::Enum("OnMissing", &Kind::Variant(ON_MISSING))),
            named,
            default
        ),
        f!("shadow", Kind::Opt(&Kind::Bool), named, default),
        f!("cost", Kind::Opt(&Kind::Bool), named, default),
        f!("lease", Kind::Opt(&Kind::U64), named, default),
    ],
    names: &["name", "entries", "on_missing", "shadow", "cost", "lease"],
});

static ENTRY: Kind = Kind::Struct(&Struct {
    name: "RawEntry",
    fields: &[
        f!("key", Kind::Str),
        f!("value", Kind::Opt(&Kind::Str), option),
        f!(
            "mcp",
            Kind::Opt(&Kind::Enum("McpField", &Kind::Variant(MCP_FIELDS))),
            option
        ),
        f!("header", Kind::Opt(&Kind::Str), option),
        f!("metadata", Kind::Opt(&METADATA), option),
        f!("default", Kind::Opt(&Kind::Str), option),
    ],
    names: &["key", "value", "mcp", "header", "metadata", "default"],
});

static METADATA: Kind = Kind::Struct(&Struct {
    name: "RawMetadata",
    fields: &[
        f!("namespace", Kind::Str),
        f!("path", Kind::Seq(&Kind::Str)),
    ],
    names: &["namespace", "path"],
});

const REPLY: Kind = Kind::Struct(&Struct {
    name: "RawReply",
    fields: &[
        f!("http_status", Kind::Opt(&Kind::U32), option),
        f!("code", Kind::Opt(&Kind::I64), option),
        f!("message", Kind::Opt(&Kind::Str), option),
        f!("retry_after_ms", Kind::Opt(&Kind::Bool), named, default),
    ],
    names: &["http_status", "code", "message", "retry_after_ms"],
});

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: &Kind) {
        match kind {
            Kind::Struct(s) => {
                let names: Vec<&str> = s.fields.iter().map(|f| f.name).collect();
                assert_eq!(names, s.names, "struct {}", s.name);
                for f in s.fields {
                    check(&f.kind);
                }
            }
            Kind::Opt(k) | Kind::Seq(k) => check(k),
            Kind::Enum(_, variant) => assert!(matches!(variant, Kind::Variant(_))),
            _ => {}
        }
    }

    #[test]
    fn schema_names_match_fields() {
        check(&CONFIG);
        check(&ENTRIES);
        check(&DESCRIPTOR_OBJECT);
    }
}
