//! Plugin configuration: parsed and validated once, in `on_configure`.

use std::fmt;

use crate::mcp_headers::{METHOD, NAME, PROTOCOL_VERSION};
pub use crate::message::ParamHeader;
use crate::rls;

mod de;
use de::{Fields, Val};

/// The default cap on a buffered request body (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// The largest accepted `max_body_bytes` (64 MiB).
const MAX_MAX_BODY_BYTES: usize = 64 << 20;
/// Envoy's rate-limit filter default.
pub const DEFAULT_TIMEOUT_MS: u64 = 20;
const MAX_TIMEOUT_MS: u64 = 60_000;
/// How long a denial is repeated without asking the service again, at
/// most (`over_limit_cache_max_ms`): a raised limit takes effect within it.
pub const DEFAULT_CACHE_MS: u64 = 1000;
const MAX_CACHE_MS: u64 = 60_000;
/// Shared-data slots for denials, and for leases (each).
pub const DEFAULT_ENTRIES: u32 = 1024;
const MAX_ENTRIES: u32 = 65_536;

/// The validated configuration shared by every request of a plugin.
#[derive(Debug)]
pub struct Config {
    pub domain: String,
    pub rls_cluster: String,
    pub timeout_ms: u64,
    pub failure_mode_deny: bool,
    pub max_body_bytes: usize,
    /// Hold the request headers while the body is judged (needs the Wasm
    /// PluginConfig's `allow_on_headers_stop_iteration: true`).
    pub hold_headers: bool,
    /// Also judge POST bodies of other content types (or none) that start
    /// like JSON.
    pub sniff_bodies: bool,
    /// Refuse JSON-RPC batches instead of counting each call.
    pub refuse_batches: bool,
    pub meta_tools: Vec<String>,
    /// Check `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*` and
    /// `MCP-Protocol-Version` against the body (MCP 2026-07-28).
    pub validate_mcp_headers: bool,
    /// Judge MCP 2026-07-28 requests by their routing headers alone,
    /// without buffering the body.
    pub header_fast_path: bool,
    /// `Mcp-Param-*` headers the filter knows the meaning of.
    pub param_headers: Vec<ParamHeader>,
    /// `param_headers[i].argument`, for the parser.
    pub argument_keys: Vec<String>,
    /// The MCP headers that must not be repeated (lowercase).
    pub mcp_header_names: Vec<String>,
    pub descriptors: Vec<Descriptor>,
    /// Hits a call of each listed tool spends (`tool_costs`), sorted by name.
    pub tool_costs: Vec<(String, u64)>,
    /// Hits any other call spends (`default_cost`).
    pub default_cost: u64,
    /// The tool names sent as they are (`tools`), sorted; `None`: every name.
    pub tools: Option<Vec<String>>,
    /// What becomes of a tool outside `tools`.
    pub unknown_tools: UnknownTools,
    /// Add `x-ratelimit-*` headers (draft 03) computed from the service's
    /// statuses, as Envoy's ratelimit filter does.
    pub ratelimit_headers: bool,
    /// Record what the access log may show as Envoy filter state.
    pub filter_state: bool,
    /// Deny locally, for a while, what the service has just denied (see
    /// `local.rs`): the longest time a denial is repeated without asking
    /// again (`over_limit_cache_max_ms`); `None` when off.
    pub over_limit_cache_ms: Option<u64>,
    /// Shared-data slots for denials and for leases (each bounded).
    pub over_limit_cache_entries: u32,
    pub lease_entries: u32,
    /// What names this configuration's entries in shared data: the encoded
    /// domain and the cluster, so that two plugins never read each other's.
    pub shared_prefix: Vec<u8>,
    pub over_limit: Reply,
    pub rls_failure: Reply,
    /// Header names that some descriptor reads (lowercase).
    pub headers_used: Vec<String>,
    /// The `domain` field of the RLS request, encoded once.
    pub encoded_domain: Vec<u8>,
}

/// A descriptor to send: its entries and how it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Reported in logs and counters (`descriptors[i]` unless named).
    pub name: String,
    pub entries: Vec<Entry>,
    /// What a request gets when a header or metadata source of an entry
    /// without a default is absent.
    pub on_missing: OnMissing,
    /// Asked and counted, but an OVER_LIMIT on it does not deny.
    pub shadow: bool,
    /// Sends the calls' cost as hits (else one hit per call).
    pub cost: bool,
    /// Take this many hits at once from the service and spend them locally
    /// (`lease`); `None`: one call per request.
    pub lease: Option<u64>,
}

/// What a descriptor does when an identity source is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissing {
    /// The descriptor is not sent (Envoy's own behaviour).
    Skip,
    /// The request is refused.
    Refuse,
}

/// What a resolved tool outside `tools` becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownTools {
    /// Sent as [`OTHER_TOOL`]: one shared bucket.
    Other,
    /// Refused with a JSON-RPC error.
    Refuse,
}

/// `ratelimit_headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateLimitHeaders {
    Off,
    Draft03,
}

/// The value a tool outside `tools` is sent as.
pub const OTHER_TOOL: &str = "_other";

/// One entry of a descriptor: a key and where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub source: Source,
    /// Used when a header or metadata source is absent.
    pub default: Option<String>,
}

/// Where a descriptor entry's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A fixed value.
    Literal(String),
    /// A field of the MCP request.
    Mcp(McpField),
    /// A request header (name in lowercase).
    Header(String),
    /// Envoy dynamic metadata: filter namespace, then a path inside it.
    Metadata {
        namespace: String,
        path: Vec<String>,
    },
}

impl Source {
    /// A value of the request around the MCP message (a header or
    /// metadata), which may be absent whatever the message: an identity.
    /// The other MCP fields are absent only where they do not apply.
    pub fn is_of_request(&self) -> bool {
        matches!(
            self,
            Source::Header(_)
                | Source::Metadata { .. }
                | Source::Mcp(McpField::SessionId | McpField::ProtocolVersion)
        )
    }
}

/// The MCP request fields a descriptor can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpField {
    /// The JSON-RPC method.
    Method,
    /// The tool of a `tools/call`, with meta-tools unwrapped.
    Tool,
    /// The prompt of a `prompts/get`.
    Prompt,
    /// The URI of a `resources/read`.
    Resource,
    /// The `Mcp-Session-Id` header (protocol versions up to 2025-11-25).
    SessionId,
    /// The `MCP-Protocol-Version` header.
    ProtocolVersion,
}

/// The local reply sent for a denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub http_status: u32,
    pub code: i64,
    pub message: String,
    /// `message` as a JSON string literal, quotes included.
    pub message_json: String,
    /// Add `data.retryAfterMs` next to `data.retryAfterSeconds`.
    pub retry_after_ms: bool,
}

/// A configuration the filter refuses; the text names the offending key.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid plugin configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The configuration as given (see [`de::CONFIG`]).
struct RawConfig {
    domain: String,
    rls_cluster: String,
    timeout_ms: u64,
    failure_mode_deny: bool,
    max_body_bytes: usize,
    hold_headers: bool,
    sniff_bodies: bool,
    refuse_batches: bool,
    meta_tools: Vec<String>,
    validate_mcp_headers: bool,
    header_fast_path: bool,
    param_headers: Vec<RawParamHeader>,
    descriptors: Option<Vec<RawDescriptor>>,
    shadow: bool,
    tool_costs: ToolCosts,
    default_cost: u64,
    tools: Option<Vec<String>>,
    unknown_tools: Option<UnknownTools>,
    ratelimit_headers: Option<RateLimitHeaders>,
    filter_state: bool,
    over_limit_cache: bool,
    over_limit_cache_max_ms: u64,
    over_limit_cache_entries: u32,
    lease_entries: u32,
    over_limit: RawReply,
    rls_failure: RawReply,
}

impl RawConfig {
    /// The fields of [`de::CONFIG`], in its order; an absent one is its
    /// default.
    fn from_val(v: Val) -> RawConfig {
        let mut f = v.into_fields();
        let bool_or = |f: &mut Fields, default: bool| f.next().map_or(default, Val::into_bool);
        RawConfig {
            domain: f.next().map(Val::into_str).unwrap_or_default(),
            rls_cluster: f.next().map(Val::into_str).unwrap_or_default(),
            timeout_ms: f.next().map_or(DEFAULT_TIMEOUT_MS, Val::into_u64),
            failure_mode_deny: bool_or(&mut f, false),
            max_body_bytes: f.next().map_or(DEFAULT_MAX_BODY_BYTES, |v| {
                usize::try_from(v.into_u64()).unwrap_or(usize::MAX)
            }),
            hold_headers: bool_or(&mut f, true),
            sniff_bodies: bool_or(&mut f, true),
            refuse_batches: bool_or(&mut f, false),
            meta_tools: f
                .next()
                .map_or_else(|| vec!["call_tool".to_owned()], Val::into_strs),
            validate_mcp_headers: bool_or(&mut f, true),
            header_fast_path: bool_or(&mut f, false),
            param_headers: f.next().map_or_else(Vec::new, |v| {
                v.into_list()
                    .into_iter()
                    .map(RawParamHeader::from_val)
                    .collect()
            }),
            descriptors: f.opt().map(|v| {
                v.into_list()
                    .into_iter()
                    .filter_map(Val::into_raw)
                    .collect()
            }),
            shadow: bool_or(&mut f, false),
            tool_costs: ToolCosts(f.next().map_or_else(Vec::new, Val::into_costs)),
            default_cost: f.next().map_or(1, Val::into_u64),
            tools: f.opt().map(Val::into_strs),
            unknown_tools: f.opt().map(|v| match v.into_variant() {
                0 => UnknownTools::Other,
                _ => UnknownTools::Refuse,
            }),
            ratelimit_headers: f.opt().map(|v| match v.into_variant() {
                0 => RateLimitHeaders::Off,
                _ => RateLimitHeaders::Draft03,
            }),
            filter_state: bool_or(&mut f, false),
            over_limit_cache: bool_or(&mut f, true),
            over_limit_cache_max_ms: f.next().map_or(DEFAULT_CACHE_MS, Val::into_u64),
            over_limit_cache_entries: f.next().map_or(DEFAULT_ENTRIES, |v| {
                u32::try_from(v.into_u64()).unwrap_or(u32::MAX)
            }),
            lease_entries: f.next().map_or(DEFAULT_ENTRIES, |v| {
                u32::try_from(v.into_u64()).unwrap_or(u32::MAX)
            }),
            over_limit: f.next().map(RawReply::from_val).unwrap_or_default(),
            rls_failure: f.next().map(RawReply::from_val).unwrap_or_default(),
        }
    }
}

impl RawParamHeader {
    fn from_val(v: Val) -> RawParamHeader {
        let mut f = v.into_fields();
        let mut s = || f.next().map(Val::into_str).unwrap_or_default();
        RawParamHeader {
            tool: s(),
            argument: s(),
            header: s(),
        }
    }
}

impl RawDescriptorObject {
    fn from_val(v: Val) -> RawDescriptorObject {
        let mut f = v.into_fields();
        RawDescriptorObject {
            name: f.opt().map(Val::into_str),
            entries: f.next().map_or_else(Vec::new, entries),
            on_missing: f.opt().map(|v| match v.into_variant() {
                0 => OnMissing::Skip,
                _ => OnMissing::Refuse,
            }),
            shadow: f.opt().map(Val::into_bool),
            cost: f.opt().map(Val::into_bool),
            lease: f.opt().map(Val::into_u64),
        }
    }
}

/// The entries of a descriptor ([`de::ENTRIES`]).
fn entries(v: Val) -> Vec<RawEntry> {
    v.into_list().into_iter().map(RawEntry::from_val).collect()
}

impl RawEntry {
    fn from_val(v: Val) -> RawEntry {
        let mut f = v.into_fields();
        RawEntry {
            key: f.next().map(Val::into_str).unwrap_or_default(),
            value: f.opt().map(Val::into_str),
            mcp: f.opt().map(|v| match v.into_variant() {
                0 => McpField::Method,
                1 => McpField::Tool,
                2 => McpField::Prompt,
                3 => McpField::Resource,
                4 => McpField::SessionId,
                _ => McpField::ProtocolVersion,
            }),
            header: f.opt().map(Val::into_str),
            metadata: f.opt().map(|v| {
                let mut m = v.into_fields();
                RawMetadata {
                    namespace: m.next().map(Val::into_str).unwrap_or_default(),
                    path: m.next().map_or_else(Vec::new, Val::into_strs),
                }
            }),
            default: f.opt().map(Val::into_str),
        }
    }
}

impl RawReply {
    fn from_val(v: Val) -> RawReply {
        let mut f = v.into_fields();
        RawReply {
            http_status: f
                .opt()
                .map(|v| u32::try_from(v.into_u64()).unwrap_or(u32::MAX)),
            code: f.opt().map(Val::into_i64),
            message: f.opt().map(Val::into_str),
            retry_after_ms: f.opt().map(Val::into_bool),
        }
    }
}

struct RawParamHeader {
    tool: String,
    argument: String,
    header: String,
}

/// Most `Mcp-Param-*` mappings accepted.
const MAX_PARAM_HEADERS: usize = 32;

/// The largest cost a call may have.
pub const MAX_COST: u64 = 1_000_000;
/// The largest `lease`.
const MAX_LEASE: u64 = 1_000_000;
/// Most names in `tools` or `tool_costs`.
const MAX_TOOLS: usize = 4096;

/// `tool_costs` as given: a JSON object of tool names and costs, in order.
#[derive(Default)]
struct ToolCosts(Vec<(String, u64)>);

/// A descriptor as configured: a list of entries, or an object; read in
/// [`descriptors`], each element on its own.
type RawDescriptor = Box<serde_json::value::RawValue>;

struct RawDescriptorObject {
    name: Option<String>,
    entries: Vec<RawEntry>,
    on_missing: Option<OnMissing>,
    shadow: Option<bool>,
    cost: Option<bool>,
    lease: Option<u64>,
}

struct RawEntry {
    key: String,
    value: Option<String>,
    mcp: Option<McpField>,
    header: Option<String>,
    metadata: Option<RawMetadata>,
    default: Option<String>,
}

struct RawMetadata {
    namespace: String,
    path: Vec<String>,
}

#[derive(Default)]
struct RawReply {
    http_status: Option<u32>,
    code: Option<i64>,
    message: Option<String>,
    retry_after_ms: Option<bool>,
}

impl Config {
    /// Parses and validates the plugin configuration (JSON).
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let raw = de::parse(bytes, &de::CONFIG)
            .map(RawConfig::from_val)
            .map_err(|e| ConfigError(e.to_string()))?;
        raw.check_bounds()?;
        let param_headers = param_headers(raw.param_headers)?;
        let descriptors = descriptors(raw.descriptors, raw.shadow)?;
        let tool_costs = tool_costs(raw.tool_costs)?;
        let tools = tools(raw.tools, raw.unknown_tools)?;
        if let Some(list) = &tools {
            if let Some((name, _)) = tool_costs
                .iter()
                .find(|(t, _)| list.binary_search(t).is_err())
            {
                return Err(ConfigError(format!(
                    "`tool_costs` names {name}, which `tools` does not list"
                )));
            }
        }
        let argument_keys = param_headers.iter().map(|p| p.argument.clone()).collect();
        let mcp_header_names = [PROTOCOL_VERSION, METHOD, NAME]
            .into_iter()
            .map(str::to_owned)
            .chain(param_headers.iter().map(|p| p.header.clone()))
            .collect();
        let mut headers_used: Vec<String> = Vec::new();
        for e in descriptors.iter().flat_map(|d| &d.entries) {
            if let Source::Header(h) = &e.source {
                if !headers_used.contains(h) {
                    headers_used.push(h.clone());
                }
            }
        }
        let over_limit = raw
            .over_limit
            .build("over_limit", 429, 429, "Rate limit exceeded")?;
        if raw.rls_failure.retry_after_ms.is_some() {
            return Err(ConfigError(
                "`rls_failure.retry_after_ms` is not a setting: only a denial has a reset"
                    .to_owned(),
            ));
        }
        let rls_failure =
            raw.rls_failure
                .build("rls_failure", 503, -32603, "Rate limit service unavailable")?;
        let encoded_domain = rls::encode_domain(&raw.domain);
        let mut shared_prefix = encoded_domain.clone();
        shared_prefix.extend_from_slice(raw.rls_cluster.as_bytes());
        shared_prefix.push(0);
        Ok(Config {
            domain: raw.domain,
            rls_cluster: raw.rls_cluster,
            timeout_ms: raw.timeout_ms,
            failure_mode_deny: raw.failure_mode_deny,
            max_body_bytes: raw.max_body_bytes,
            hold_headers: raw.hold_headers,
            sniff_bodies: raw.sniff_bodies,
            refuse_batches: raw.refuse_batches,
            meta_tools: raw.meta_tools,
            validate_mcp_headers: raw.validate_mcp_headers,
            header_fast_path: raw.header_fast_path,
            param_headers,
            argument_keys,
            mcp_header_names,
            descriptors,
            tool_costs,
            default_cost: raw.default_cost,
            tools,
            unknown_tools: raw.unknown_tools.unwrap_or(UnknownTools::Other),
            ratelimit_headers: raw.ratelimit_headers == Some(RateLimitHeaders::Draft03),
            filter_state: raw.filter_state,
            over_limit_cache_ms: raw.over_limit_cache.then_some(raw.over_limit_cache_max_ms),
            over_limit_cache_entries: raw.over_limit_cache_entries,
            lease_entries: raw.lease_entries,
            shared_prefix,
            over_limit,
            rls_failure,
            headers_used,
            encoded_domain,
        })
    }
}

impl RawConfig {
    /// The scalar keys: each within its documented bounds.
    fn check_bounds(&self) -> Result<(), ConfigError> {
        let err = |m: &str| Err(ConfigError(m.to_owned()));
        if self.domain.is_empty() {
            return err("`domain` must not be empty");
        }
        if self.rls_cluster.is_empty() {
            return err("`rls_cluster` must not be empty");
        }
        if self.timeout_ms == 0 {
            return err("`timeout_ms` must be greater than 0 (Envoy treats 0 as no timeout, which would let a stuck rate-limit service hang requests)");
        }
        if self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(ConfigError(format!(
                "`timeout_ms` must be at most {MAX_TIMEOUT_MS}"
            )));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_MAX_BODY_BYTES {
            return Err(ConfigError(format!(
                "`max_body_bytes` must be between 1 and {MAX_MAX_BODY_BYTES}"
            )));
        }
        if self.meta_tools.iter().any(String::is_empty) {
            return err("`meta_tools` must not contain an empty name");
        }
        if self.param_headers.len() > MAX_PARAM_HEADERS {
            return Err(ConfigError(format!(
                "`param_headers` may have at most {MAX_PARAM_HEADERS} entries"
            )));
        }
        if self.header_fast_path && !self.validate_mcp_headers {
            return err("`header_fast_path` needs `validate_mcp_headers` (requests that fall back to the body must still be checked)");
        }
        if self.default_cost == 0 || self.default_cost > MAX_COST {
            return Err(ConfigError(format!(
                "`default_cost` must be between 1 and {MAX_COST}"
            )));
        }
        if self.over_limit_cache_max_ms == 0 || self.over_limit_cache_max_ms > MAX_CACHE_MS {
            return Err(ConfigError(format!(
                "`over_limit_cache_max_ms` must be between 1 and {MAX_CACHE_MS}"
            )));
        }
        for (name, n) in [
            ("over_limit_cache_entries", self.over_limit_cache_entries),
            ("lease_entries", self.lease_entries),
        ] {
            if n == 0 || n > MAX_ENTRIES {
                return Err(ConfigError(format!(
                    "`{name}` must be between 1 and {MAX_ENTRIES}"
                )));
            }
        }
        if self.header_fast_path && !self.hold_headers {
            return err("`header_fast_path` needs `hold_headers` (a buffer filter after this one miscounts a chunked body that the filter resumes before its end)");
        }
        Ok(())
    }
}

/// `param_headers`: each mapping names a tool, an argument and a header
/// token, and no tool maps a header or an argument twice.
fn param_headers(raw: Vec<RawParamHeader>) -> Result<Vec<ParamHeader>, ConfigError> {
    let mut out: Vec<ParamHeader> = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        if p.tool.is_empty() || p.argument.is_empty() {
            return Err(ConfigError(format!(
                "`param_headers[{i}]` needs a non-empty `tool` and `argument`"
            )));
        }
        let name = p.header.strip_prefix("Mcp-Param-").unwrap_or(&p.header);
        if name.is_empty() || !name.bytes().all(is_header_name_byte) {
            return Err(ConfigError(format!(
                "`param_headers[{i}].header` must be the x-mcp-header name (a header token, e.g. \"Region\")"
            )));
        }
        let header = format!("mcp-param-{}", name.to_ascii_lowercase());
        if out
            .iter()
            .any(|q| q.tool == p.tool && (q.header == header || q.argument == p.argument))
        {
            return Err(ConfigError(format!(
                "`param_headers[{i}]` repeats a header or argument of tool {:?}",
                p.tool
            )));
        }
        out.push(ParamHeader {
            tool: p.tool,
            argument: p.argument,
            header,
        });
    }
    Ok(out)
}

/// `descriptors`: the per-tool default when absent; otherwise a non-empty
/// list of descriptors, each a non-empty list of valid entries or an object
/// with a unique name. `shadow` (top level) makes every descriptor shadow.
fn descriptors(
    raw: Option<Vec<RawDescriptor>>,
    shadow: bool,
) -> Result<Vec<Descriptor>, ConfigError> {
    let Some(list) = raw else {
        return Ok(vec![Descriptor {
            name: "descriptors[0]".to_owned(),
            entries: vec![Entry {
                key: "tool".to_owned(),
                source: Source::Mcp(McpField::Tool),
                default: None,
            }],
            on_missing: OnMissing::Skip,
            shadow,
            cost: true,
            lease: None,
        }]);
    };
    if list.is_empty() {
        return Err(ConfigError(
            "`descriptors` must not be empty (omit it for the per-tool default)".to_owned(),
        ));
    }
    let mut out: Vec<Descriptor> = Vec::with_capacity(list.len());
    for (i, d) in list.into_iter().enumerate() {
        let text = d.get().as_bytes();
        let wrap = |e: serde_json::Error| ConfigError(format!("`descriptors[{i}]`: {e}"));
        let (name, raw_entries, on_missing, own_shadow, cost, lease) = match text.first() {
            Some(b'[') => (
                None,
                entries(de::parse(text, &de::ENTRIES).map_err(wrap)?),
                None,
                None,
                None,
                None,
            ),
            Some(b'{') => {
                let o = RawDescriptorObject::from_val(
                    de::parse(text, &de::DESCRIPTOR_OBJECT).map_err(wrap)?,
                );
                (o.name, o.entries, o.on_missing, o.shadow, o.cost, o.lease)
            }
            _ => {
                return Err(ConfigError(format!(
                    "`descriptors[{i}]` must be a list of entries or a descriptor object"
                )))
            }
        };
        if raw_entries.is_empty() {
            return Err(ConfigError(format!(
                "`descriptors[{i}]` must have at least one entry"
            )));
        }
        let name = match name {
            Some(n) if n.is_empty() || n.chars().any(char::is_control) => {
                return Err(ConfigError(format!(
                    "`descriptors[{i}].name` must be non-empty printable text"
                )))
            }
            Some(n) => n,
            None => format!("descriptors[{i}]"),
        };
        if out.iter().any(|o| o.name == name) {
            return Err(ConfigError(format!(
                "`descriptors[{i}].name` {name:?} is used twice"
            )));
        }
        let mut entries = Vec::with_capacity(raw_entries.len());
        for (j, e) in raw_entries.into_iter().enumerate() {
            entries.push(e.validate(i, j)?);
        }
        let shadow = shadow || own_shadow.unwrap_or(false);
        if let Some(k) = lease {
            if !(2..=MAX_LEASE).contains(&k) {
                return Err(ConfigError(format!(
                    "`descriptors[{i}].lease` must be between 2 and {MAX_LEASE}"
                )));
            }
            if shadow {
                return Err(ConfigError(format!(
                    "`descriptors[{i}].lease`: a shadow descriptor cannot lease (its limit never denies)"
                )));
            }
        }
        out.push(Descriptor {
            name,
            entries,
            on_missing: on_missing.unwrap_or(OnMissing::Skip),
            shadow,
            cost: cost.unwrap_or(true),
            lease,
        });
    }
    Ok(out)
}

/// `tool_costs`: distinct non-empty names, costs from 1 to [`MAX_COST`];
/// sorted by name.
fn tool_costs(ToolCosts(mut raw): ToolCosts) -> Result<Vec<(String, u64)>, ConfigError> {
    if raw.len() > MAX_TOOLS {
        return Err(ConfigError(format!(
            "`tool_costs` may name at most {MAX_TOOLS} tools"
        )));
    }
    for (name, cost) in &raw {
        if name.is_empty() {
            return Err(ConfigError(
                "`tool_costs` must not name an empty tool".to_owned(),
            ));
        }
        if *cost == 0 || *cost > MAX_COST {
            return Err(ConfigError(format!(
                "`tool_costs.{name}` must be between 1 and {MAX_COST}"
            )));
        }
    }
    sort_by_name(&mut raw, |c| &c.0);
    if let Some(w) = raw
        .windows(2)
        .find(|w| w.first().map(|x| &x.0) == w.get(1).map(|x| &x.0))
    {
        return Err(ConfigError(format!(
            "`tool_costs` names {} twice",
            w.first().map(|x| x.0.as_str()).unwrap_or_default()
        )));
    }
    Ok(raw)
}

/// `tools` and `unknown_tools`: a list of distinct non-empty names, and a
/// policy only together with one.
fn tools(
    raw: Option<Vec<String>>,
    unknown: Option<UnknownTools>,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(mut list) = raw else {
        if unknown.is_some() {
            return Err(ConfigError(
                "`unknown_tools` needs `tools`, the list of known tools".to_owned(),
            ));
        }
        return Ok(None);
    };
    if list.is_empty() || list.len() > MAX_TOOLS {
        return Err(ConfigError(format!(
            "`tools` must list 1 to {MAX_TOOLS} tools"
        )));
    }
    if list.iter().any(|t| t.is_empty() || t == OTHER_TOOL) {
        return Err(ConfigError(format!(
            "`tools` must not contain an empty name or {OTHER_TOOL}"
        )));
    }
    sort_by_name(&mut list, String::as_str);
    if let Some(w) = list.windows(2).find(|w| w.first() == w.get(1)) {
        return Err(ConfigError(format!(
            "`tools` lists {} twice",
            w.first().map(String::as_str).unwrap_or_default()
        )));
    }
    Ok(Some(list))
}

/// Sorts `v` by `name` (a heapsort: a few hundred bytes of code, where
/// the standard library's sorts are several kilobytes each, for lists that
/// are sorted once).
fn sort_by_name<T>(v: &mut [T], name: impl Fn(&T) -> &str) {
    let less = |v: &[T], a: usize, b: usize| match (v.get(a), v.get(b)) {
        (Some(x), Some(y)) => name(x) < name(y),
        _ => false,
    };
    let sift = |v: &mut [T], mut root: usize, end: usize| loop {
        let mut child = 2 * root + 1;
        if child >= end {
            break;
        }
        if child + 1 < end && less(v, child, child + 1) {
            child += 1;
        }
        if !less(v, root, child) {
            break;
        }
        v.swap(root, child);
        root = child;
    };
    let n = v.len();
    for i in (0..n / 2).rev() {
        sift(v, i, n);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift(v, 0, end);
    }
}

impl Config {
    /// The hits a call of `tool` spends (`None`: not a tool call).
    pub fn cost(&self, tool: Option<&str>) -> u64 {
        tool.and_then(|t| {
            self.tool_costs
                .binary_search_by(|(name, _)| name.as_str().cmp(t))
                .ok()
                .and_then(|i| self.tool_costs.get(i))
                .map(|(_, c)| *c)
        })
        .unwrap_or(self.default_cost)
    }

    /// Whether requests consult shared data: the over-limit cache, or a
    /// leased descriptor.
    pub fn uses_shared(&self) -> bool {
        self.over_limit_cache_ms.is_some() || self.descriptors.iter().any(|d| d.lease.is_some())
    }

    /// Whether `tool` may be sent by its own name under `tools`.
    pub fn tool_known(&self, tool: &str) -> bool {
        self.tools
            .as_ref()
            .is_none_or(|list| list.binary_search_by(|t| t.as_str().cmp(tool)).is_ok())
    }

    /// What the body parser needs.
    pub fn spec(&self) -> crate::jsonrpc::Spec<'_> {
        crate::jsonrpc::Spec {
            meta_tools: &self.meta_tools,
            params: &self.param_headers,
            argument_keys: &self.argument_keys,
        }
    }

    /// The mapping whose header carries a meta-tool's inner tool name.
    pub fn inner_tool_header(&self, meta_tool: &str) -> Option<usize> {
        self.param_headers
            .iter()
            .position(|p| p.tool == meta_tool && p.argument == "tool_name")
    }
}

impl RawEntry {
    fn validate(self, i: usize, j: usize) -> Result<Entry, ConfigError> {
        let at = format!("descriptors[{i}][{j}]");
        if self.key.is_empty() {
            return Err(ConfigError(format!("`{at}.key` must not be empty")));
        }
        let sources = [
            self.value.is_some(),
            self.mcp.is_some(),
            self.header.is_some(),
            self.metadata.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if sources != 1 {
            return Err(ConfigError(format!(
                "`{at}` must have exactly one of `value`, `mcp`, `header`, `metadata` (found {sources})"
            )));
        }
        let source = if let Some(v) = self.value {
            if v.is_empty() {
                return Err(ConfigError(format!("`{at}.value` must not be empty")));
            }
            Source::Literal(v)
        } else if let Some(m) = self.mcp {
            Source::Mcp(m)
        } else if let Some(h) = self.header {
            if h.is_empty() || !h.bytes().all(is_header_name_byte) {
                return Err(ConfigError(format!(
                    "`{at}.header` is not a valid header name"
                )));
            }
            Source::Header(h.to_ascii_lowercase())
        } else if let Some(m) = self.metadata {
            if m.namespace.is_empty() {
                return Err(ConfigError(format!(
                    "`{at}.metadata.namespace` must not be empty"
                )));
            }
            if m.path.is_empty() || m.path.iter().any(String::is_empty) {
                return Err(ConfigError(format!(
                    "`{at}.metadata.path` must be a non-empty list of non-empty keys"
                )));
            }
            Source::Metadata {
                namespace: m.namespace,
                path: m.path,
            }
        } else {
            return Err(ConfigError(format!("`{at}` has no value source")));
        };
        let default = match self.default {
            Some(_) if !source.is_of_request() => {
                return Err(ConfigError(format!(
                    "`{at}.default` applies to `header`, `metadata`, `session_id` and `protocol_version` sources only"
                )))
            }
            Some(d) if d.is_empty() => {
                return Err(ConfigError(format!("`{at}.default` must not be empty")))
            }
            other => other,
        };
        Ok(Entry {
            key: self.key,
            source,
            default,
        })
    }
}

/// RFC 9110 token characters.
fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl RawReply {
    fn build(
        self,
        name: &str,
        status: u32,
        code: i64,
        message: &str,
    ) -> Result<Reply, ConfigError> {
        let http_status = self.http_status.unwrap_or(status);
        if !(200..=599).contains(&http_status) {
            return Err(ConfigError(format!(
                "`{name}.http_status` must be between 200 and 599"
            )));
        }
        let message = self.message.unwrap_or_else(|| message.to_owned());
        if message.is_empty() {
            return Err(ConfigError(format!("`{name}.message` must not be empty")));
        }
        let message_json =
            serde_json::to_string(&message).map_err(|e| ConfigError(e.to_string()))?;
        Ok(Reply {
            http_status,
            code: self.code.unwrap_or(code),
            message,
            message_json,
            retry_after_ms: self.retry_after_ms.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s.as_bytes())
    }

    fn rejected(s: &str) -> String {
        match parse(s) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("accepted {s}: {c:?}"),
        }
    }

    #[test]
    fn minimal_config_gives_per_tool_defaults() {
        let c = parse(r#"{"domain":"mcp","rls_cluster":"ratelimit"}"#).unwrap();
        assert_eq!(c.domain, "mcp");
        assert_eq!(c.rls_cluster, "ratelimit");
        assert_eq!(c.timeout_ms, 20);
        assert!(!c.failure_mode_deny);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert!(c.hold_headers);
        assert!(c.validate_mcp_headers);
        assert!(c.sniff_bodies);
        assert!(!c.refuse_batches);
        assert!(!c.header_fast_path);
        assert!(c.param_headers.is_empty());
        assert_eq!(c.meta_tools, vec!["call_tool"]);
        assert_eq!(
            c.descriptors,
            vec![Descriptor {
                name: "descriptors[0]".into(),
                entries: vec![Entry {
                    key: "tool".into(),
                    source: Source::Mcp(McpField::Tool),
                    default: None,
                }],
                on_missing: OnMissing::Skip,
                shadow: false,
                cost: true,
                lease: None,
            }]
        );
        assert_eq!(c.over_limit_cache_ms, Some(1000));
        assert_eq!((c.over_limit_cache_entries, c.lease_entries), (1024, 1024));
        assert_eq!((c.default_cost, c.cost(Some("any"))), (1, 1));
        assert!(c.tools.is_none() && c.tool_known("anything"));
        assert_eq!(c.over_limit.http_status, 429);
        assert_eq!(c.over_limit.code, 429);
        assert_eq!(c.over_limit.message_json, "\"Rate limit exceeded\"");
        assert_eq!(c.rls_failure.http_status, 503);
        assert!(c.headers_used.is_empty());
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"{"domain":"d","rls_cluster":"rl","timeout_ms":250,"failure_mode_deny":true,
                "max_body_bytes":4096,"hold_headers":false,"meta_tools":["call_tool","run_tool"],
                "descriptors":[
                  [{"key":"user","header":"X-User"},{"key":"tool","mcp":"tool"}],
                  [{"key":"generic_key","value":"mcp"}],
                  [{"key":"sub","metadata":{"namespace":"envoy.filters.http.jwt_authn","path":["payload","sub"]}},{"key":"method","mcp":"method"}]
                ],
                "over_limit":{"http_status":200,"code":-32023,"message":"Too \"many\""},
                "rls_failure":{"http_status":500}}"#,
        )
        .unwrap();
        assert_eq!(c.timeout_ms, 250);
        assert!(c.failure_mode_deny);
        assert!(!c.hold_headers);
        assert_eq!(c.descriptors.len(), 3);
        assert_eq!(
            c.descriptors[0].entries[0].source,
            Source::Header("x-user".into())
        );
        assert_eq!(c.headers_used, vec!["x-user"]);
        assert_eq!(
            c.descriptors[2].entries[0].source,
            Source::Metadata {
                namespace: "envoy.filters.http.jwt_authn".into(),
                path: vec!["payload".into(), "sub".into()]
            }
        );
        assert_eq!(c.over_limit.http_status, 200);
        assert_eq!(c.over_limit.code, -32023);
        assert_eq!(c.over_limit.message_json, r#""Too \"many\"""#);
        assert_eq!(c.rls_failure.http_status, 500);
        assert_eq!(c.rls_failure.code, -32603);
    }

    #[test]
    fn every_rejection_names_its_key() {
        let cases = [
            (r#"{"rls_cluster":"r"}"#, "domain"),
            (
                r#"{"domain":"d","rls_cluster":"r","over_limit_cache":1}"#,
                "over_limit_cache",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","over_limit_cache_max_ms":0}"#,
                "over_limit_cache_max_ms",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","over_limit_cache_max_ms":60001}"#,
                "over_limit_cache_max_ms",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","over_limit_cache_entries":0}"#,
                "over_limit_cache_entries",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","lease_entries":65537}"#,
                "lease_entries",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[{"entries":[{"key":"tool","mcp":"tool"}],"lease":1}]}"#,
                "descriptors[0].lease",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[{"entries":[{"key":"tool","mcp":"tool"}],"lease":"5"}]}"#,
                "lease",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[{"entries":[{"key":"tool","mcp":"tool"}],"lease":5,"shadow":true}]}"#,
                "descriptors[0].lease",
            ),
            (r#"{"domain":"d"}"#, "rls_cluster"),
            (r#"{"domain":"","rls_cluster":"r"}"#, "domain"),
            (r#"{"domain":"d","rls_cluster":""}"#, "rls_cluster"),
            (
                r#"{"domain":"d","rls_cluster":"r","timout_ms":5}"#,
                "timout_ms",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","timeout_ms":0}"#,
                "timeout_ms",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","timeout_ms":60001}"#,
                "timeout_ms",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","timeout_ms":"5"}"#,
                "timeout_ms",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","timeout_ms":-1}"#,
                "timeout_ms",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","failure_mode_deny":"yes"}"#,
                "failure_mode_deny",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","max_body_bytes":0}"#,
                "max_body_bytes",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","max_body_bytes":999999999}"#,
                "max_body_bytes",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","meta_tools":[""]}"#,
                "meta_tools",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","hold_headers":1}"#,
                "hold_headers",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[]}"#,
                "descriptors",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[[]]}"#,
                "descriptors[0]",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[[{"key":"","mcp":"tool"}]]}"#,
                "descriptors[0][0].key",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[[{"key":"k"}]]}"#,
                "descriptors[0][0]",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[[{"key":"k","value":"v","mcp":"tool"}]]}"#,
                "descriptors[0][0]",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[[{"key":"k","mcp":"tools"}]]}"#,
                "tools",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[[{"key":"k","header":"bad header"}]]}"#,
                "descriptors[0][0].header",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[[{"key":"k","value":""}]]}"#,
                "descriptors[0][0].value",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[[{"key":"k","mcp":"tool","extra":1}]]}"#,
                "extra",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[[{"key":"k","metadata":{"namespace":"n","path":[]}}]]}"#,
                "metadata.path",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","descriptors":[[{"key":"k","metadata":{"namespace":"","path":["a"]}}]]}"#,
                "metadata.namespace",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","over_limit":{"http_status":99}}"#,
                "over_limit.http_status",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","over_limit":{"status":429}}"#,
                "status",
            ),
            (
                r#"{"domain":"d","rls_cluster":"r","rls_failure":{"message":""}}"#,
                "rls_failure.message",
            ),
        ];
        for (json, key) in cases {
            let msg = rejected(json);
            assert!(
                msg.contains(key),
                "{json}: message {msg:?} does not name {key:?}"
            );
            assert!(msg.starts_with("invalid plugin configuration: "), "{msg}");
        }
    }

    #[test]
    fn param_headers_and_fast_path() {
        let c = parse(
            r#"{"domain":"d","rls_cluster":"r","header_fast_path":true,
                "param_headers":[{"tool":"call_tool","argument":"tool_name","header":"ToolName"},
                                 {"tool":"query","argument":"tenant","header":"Mcp-Param-TenantId"}],
                "descriptors":[[{"key":"session","mcp":"session_id"}],[{"key":"v","mcp":"protocol_version"}]]}"#,
        )
        .unwrap();
        assert!(c.header_fast_path);
        assert_eq!(c.param_headers[0].header, "mcp-param-toolname");
        assert_eq!(c.param_headers[1].header, "mcp-param-tenantid");
        assert_eq!(c.argument_keys, vec!["tool_name", "tenant"]);
        assert_eq!(c.inner_tool_header("call_tool"), Some(0));
        assert_eq!(c.inner_tool_header("query"), None);
        assert_eq!(
            c.descriptors[0].entries[0].source,
            Source::Mcp(McpField::SessionId)
        );
        assert_eq!(
            c.descriptors[1].entries[0].source,
            Source::Mcp(McpField::ProtocolVersion)
        );
        // The fast path resumes requests before their body ends: only
        // without a buffer filter after this one.
        let msg = parse(
            r#"{"domain":"d","rls_cluster":"r","header_fast_path":true,"hold_headers":false}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("`header_fast_path` needs `hold_headers`"),
            "{msg}"
        );
    }

    #[test]
    fn not_json_is_refused() {
        assert!(rejected("domain: mcp").contains("invalid plugin configuration"));
        assert!(rejected("").contains("invalid plugin configuration"));
    }
}
