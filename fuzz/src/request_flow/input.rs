//! What a `request_flow` input decodes to (with `arbitrary`): a plugin
//! configuration picked from a fixed list, the request's headers, a body
//! (generated JSON-RPC or raw bytes), how it arrives, and what the
//! rate-limit service and the host do. Every enum's first variant and every
//! zero is the plain case, so a mostly-zero input is an ordinary request.

use arbitrary::Arbitrary;

/// Fixed, valid plugin configurations the input picks from.
pub const CONFIGS: &[&str] = &[
    // 0. The default: per-tool limits, fail open.
    r#"{"domain":"mcp","rls_cluster":"ratelimit"}"#,
    // 1. Fail closed, a small body cap.
    r#"{"domain":"mcp","rls_cluster":"r","failure_mode_deny":true,"max_body_bytes":256}"#,
    // 2. The header fast path with the meta-tool's inner name in a header.
    r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":64,"header_fast_path":true,
        "param_headers":[{"tool":"call_tool","argument":"tool_name","header":"ToolName"}]}"#,
    // 3. The fast path, fail closed.
    r#"{"domain":"fast","rls_cluster":"r","header_fast_path":true,"failure_mode_deny":true,
        "max_body_bytes":512,
        "param_headers":[{"tool":"call_tool","argument":"tool_name","header":"Mcp-Param-ToolName"},
                         {"tool":"search","argument":"region","header":"Region"}]}"#,
    // 4. Every descriptor source, a customised denial, two meta-tools.
    r#"{"domain":"d","rls_cluster":"r","meta_tools":["call_tool","run_tool"],
        "param_headers":[{"tool":"search","argument":"region","header":"Region"},
                         {"tool":"run_tool","argument":"tool_name","header":"Inner"}],
        "descriptors":[
          [{"key":"user","header":"X-User"},{"key":"tool","mcp":"tool"}],
          [{"key":"sub","metadata":{"namespace":"jwt","path":["payload","sub"]}}],
          [{"key":"generic_key","value":"mcp"},{"key":"method","mcp":"method"}],
          [{"key":"prompt","mcp":"prompt"}],
          [{"key":"resource","mcp":"resource"}],
          [{"key":"session","mcp":"session_id"},{"key":"version","mcp":"protocol_version"}]],
        "over_limit":{"http_status":200,"code":-32023,"message":"Too \"many\" \u2028 requests"},
        "rls_failure":{"http_status":500,"code":-32000,"message":"down"}}"#,
    // 5. No header checks, no meta-tools, a call for every method, batches
    //    refused.
    r#"{"domain":"m","rls_cluster":"r","validate_mcp_headers":false,"meta_tools":[],
        "hold_headers":false,"refuse_batches":true,"max_body_bytes":128,
        "descriptors":[[{"key":"method","mcp":"method"}]]}"#,
    // 6. JSON content types only: other bodies pass unread.
    r#"{"domain":"mcp","rls_cluster":"r","sniff_bodies":false,"failure_mode_deny":true}"#,
    // 7. Mappings of the meta-tool's `parameters` and `tool_name` (neither
    //    may switch off unwrapping), an integer-compared argument, the fast
    //    path.
    r#"{"domain":"p","rls_cluster":"r","max_body_bytes":200,"header_fast_path":true,
        "param_headers":[{"tool":"call_tool","argument":"parameters","header":"Params"},
                         {"tool":"call_tool","argument":"tool_name","header":"ToolName"},
                         {"tool":"search","argument":"region","header":"Region"}]}"#,
    // 8. A tiny cap, fail closed, the fast path: oversized denials,
    //    whitespace reaching the cap.
    r#"{"domain":"s","rls_cluster":"r","max_body_bytes":40,"failure_mode_deny":true,
        "header_fast_path":true,
        "param_headers":[{"tool":"search","argument":"region","header":"Region"}]}"#,
    // 9. Operator controls: descriptor objects, a missing identity refused
    //    or defaulted, costs, bounded tool names (refused), filter state,
    //    the fast path.
    r#"{"domain":"c","rls_cluster":"r","header_fast_path":true,"filter_state":true,
        "tools":["search_docs","get_weather"],"unknown_tools":"refuse",
        "tool_costs":{"search_docs":7},"default_cost":2,
        "descriptors":[
          {"name":"u","on_missing":"refuse","entries":[{"key":"user","header":"X-User"},{"key":"tool","mcp":"tool"}]},
          {"name":"t","cost":false,"entries":[{"key":"tenant","header":"X-Tenant","default":"public"}]}]}"#,
];

/// Strings that reach the interesting branches.
pub const WORDS: &[&str] = &[
    "tools/call",
    "prompts/get",
    "resources/read",
    "tools/list",
    "initialize",
    "notifications/initialized",
    "ping",
    "call_tool",
    "run_tool",
    "search_docs",
    "get_weather",
    "search",
    "",
    "2026-07-28",
    "2025-06-18",
    "2025-03-26",
    "2025-11-25",
    "2027-01-01",
    "file:///a",
    "summary",
    "us-east",
    "42",
    "true",
    "tool_name",
    "caf\u{e9}",
    "2.0",
    "1.0",
    "parameters",
    "region",
    "1e-2147483648",
    "0e-2147483648",
];

/// Number literals for arguments and `Mcp-Param` values: integers in every
/// spelling JSON allows, exponents at and past `i32`/`i64` bounds, values
/// near the 30-digit limit of the comparison, and non-integers.
pub const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "42",
    "42.0",
    "4.2e1",
    "420e-1",
    "4.20E+1",
    "-7",
    "-7e0",
    "1e-2147483648",
    "0e-2147483648",
    "-0e-2147483648",
    "0.0e2147483647",
    "1e2147483647",
    "1e2147483648",
    "1e9223372036854775807",
    "1e9223372036854775808",
    "1e-9223372036854775808",
    "1e-99999999999999999999",
    "0e99999999999999999999",
    "123456789012345678901234567890",
    "1234567890123456789012345678901",
    "1e29",
    "1e30",
    "10e28",
    "0.000e5",
    "1.5",
    "1e400",
    "100e-2",
    "9007199254740993",
];

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Word {
    Dict(u8),
    Any(String),
}

impl Word {
    pub fn text(&self) -> &str {
        match self {
            Word::Dict(i) => pick(WORDS, *i),
            Word::Any(s) => s,
        }
    }
}

/// A number literal of [`NUMBERS`].
pub fn number(i: u8) -> &'static str {
    pick(NUMBERS, i)
}

#[derive(Arbitrary, Debug, Clone)]
pub enum HeaderValue {
    Plain(Word),
    Base64(Word),
    Raw(Vec<u8>),
    Number(u8),
}

/// Headers the input may give twice (`Host::any_repeated`), one bit each.
pub const REPEATABLE: [&str; 8] = [
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "mcp-param-toolname",
    "mcp-param-region",
    "mcp-param-inner",
    "x-user",
    "mcp-param-params",
];

#[derive(Arbitrary, Debug, Clone)]
pub enum HttpMethod {
    Post,
    Get,
    Delete,
    LowerPost,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum ContentType {
    Json,
    JsonCharset,
    Upper,
    JsonRpc,
    PlusJson,
    TextPlain,
    FormUrlEncoded,
    Missing,
    Raw(Vec<u8>),
    OctetStream,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum ContentEncoding {
    Identity,
    Empty,
    Gzip,
    IdentityList,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum ContentLength {
    Exact,
    Value(u64),
    Raw(Vec<u8>),
    /// The cap plus this much (negative: below it).
    NearCap(i8),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Id {
    Int(i64),
    Str(Word),
    Null,
    Float(f64),
    Object,
    Raw(String),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum ArgValue {
    Word(Word),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    Array,
    Number(u8),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Arguments {
    pub tool_name: Option<ArgValue>,
    pub parameters_tool_name: Option<ArgValue>,
    pub region: Option<ArgValue>,
    pub parameters_not_object: bool,
}

/// The `jsonrpc` member of a message.
#[derive(Arbitrary, Debug, Clone)]
pub enum Jsonrpc {
    /// `"2.0"`.
    V2,
    Absent,
    Str(Word),
    Number,
    Null,
}

/// Where an extra member goes.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Top,
    Params,
    Arguments,
    Meta,
    Parameters,
}

impl Level {
    /// The members an extra at this level may repeat or shadow.
    pub fn members(self) -> &'static [&'static str] {
        match self {
            Level::Top => &["jsonrpc", "id", "method", "params"],
            Level::Params => &["name", "uri", "arguments", "_meta"],
            Level::Arguments => &["tool_name", "parameters", "region"],
            Level::Meta => &["io.modelcontextprotocol/protocolVersion"],
            Level::Parameters => &["tool_name"],
        }
    }
}

/// How an extra member's name is spelled: exactly, or as only a
/// case-folding decoder would take it.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Spelling {
    Exact,
    Upper,
    Capital,
    LongS,
    Kelvin,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum ExtraValue {
    Word(Word),
    /// `{"io.modelcontextprotocol/protocolVersion": word}`.
    Meta(Word),
    Number(u8),
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Extra {
    pub level: Level,
    pub member: u8,
    pub spelling: Spelling,
    pub value: ExtraValue,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Msg {
    pub jsonrpc: Jsonrpc,
    pub id: Option<Id>,
    pub method: Option<Word>,
    pub method_not_string: bool,
    pub name: Option<Word>,
    pub uri: Option<Word>,
    pub arguments: Option<Arguments>,
    pub meta_version: Option<Word>,
    pub params_not_object: bool,
    pub extras: Vec<Extra>,
    pub rotate: u8,
    pub escape: bool,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum BodyGen {
    Raw(Vec<u8>),
    Single(Box<Msg>),
    Batch(Vec<Msg>),
}

/// Whitespace before the body.
#[derive(Arbitrary, Debug, Clone)]
pub enum Padding {
    /// This many bytes (`% 8`); bit 7 adds `\r\n\t`.
    Few(u8),
    /// This many bytes.
    Many(u16),
    /// The cap plus this much (negative: below it), at most 64 KiB.
    NearCap(i8),
    /// This many form feeds: ASCII whitespace, but not JSON's.
    FormFeeds(u8),
}

#[derive(Arbitrary, Debug, Clone)]
pub enum Event {
    /// The next body chunk, of this many bytes.
    Chunk(u16),
    /// The service answers the outstanding call.
    Answer,
    /// A reply for another call arrives.
    Stray(u32),
    /// `count` chunks of `size` bytes (at least 1) each.
    Chunks { count: u8, size: u8 },
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    LastChunk,
    Trailers,
    Open,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct HeaderGen {
    pub key: Word,
    pub value: String,
    pub raw_value: Vec<u8>,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct StatusGen {
    pub code: u8,
    pub duration: Option<(i64, i32)>,
}

#[derive(Arbitrary, Debug, Clone)]
pub enum RlsReply {
    Ok {
        request_headers: Vec<HeaderGen>,
        response_headers: Vec<HeaderGen>,
    },
    OverLimit {
        statuses: Vec<StatusGen>,
        response_headers: Vec<HeaderGen>,
    },
    Grpc(u32),
    EmptyBody,
    Raw(Vec<u8>),
    Code(i32),
}

/// How the host fails a body read.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Hands over no bytes where bytes are buffered.
    Empty,
    /// Returns an error (the glue calls `Flow::on_body_unreadable`).
    Error,
}

/// The host fails the read `read` (counting reads of at least one byte
/// from 0).
#[derive(Arbitrary, Debug, Clone)]
pub struct ReadFault {
    pub read: u8,
    pub kind: FaultKind,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    pub config: u8,
    pub method: HttpMethod,
    pub content_type: ContentType,
    pub protocol_version: Option<HeaderValue>,
    pub mcp_method: Option<HeaderValue>,
    pub mcp_name: Option<HeaderValue>,
    /// `Mcp-Param-ToolName` and `Mcp-Param-Inner`.
    pub param_tool_name: Option<HeaderValue>,
    pub param_region: Option<HeaderValue>,
    /// `Mcp-Param-Params`.
    pub param_parameters: Option<HeaderValue>,
    pub session_id: Option<HeaderValue>,
    pub user: Option<Vec<u8>>,
    pub metadata_sub: Option<Vec<u8>>,
    pub content_length: Option<ContentLength>,
    pub content_encoding: Option<ContentEncoding>,
    /// Bit i: `REPEATABLE[i]` is given twice.
    pub repeated: u8,
    pub padding: Padding,
    pub end_at_headers: bool,
    pub body: BodyGen,
    pub events: Vec<Event>,
    pub end: End,
    pub dispatch_fails: bool,
    /// The host fails one body read.
    pub read_fault: Option<ReadFault>,
    pub rls: RlsReply,
}
