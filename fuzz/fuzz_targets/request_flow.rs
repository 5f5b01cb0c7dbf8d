//! One whole request through the filter's decision: a configuration, the
//! request headers, the body in chunks (and maybe trailers), the rate-limit
//! service's reply, all derived from the fuzz input, driven through
//! [`Flow`] exactly as `host.rs` drives it. Besides never panicking, every
//! run checks:
//! - no `Continue` while a rate-limit call is outstanding, and a request
//!   that was checked goes on only after an OK verdict or an allowed
//!   failure (`failure_mode_deny: false`);
//! - at most one call and one local reply per request, and nothing but
//!   `Pause` after the reply;
//! - every local reply is a JSON-RPC error in valid JSON, with the status,
//!   code and message the configuration and the verdict call for, and the
//!   request's ids;
//! - `ReadBody` asks for exactly what is buffered;
//! - the call's payload is a `RateLimitRequest` of the configured domain;
//! - a request whose body has ended and whose call was answered is either
//!   answered or let go, never left hanging;
//! - the counters add up.

#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use mcp_ratelimit::config::{Config, McpField, Source};
use mcp_ratelimit::flow::{Counter, Flow, Host, Step};
use mcp_ratelimit::jsonrpc::{self, Body, Target};
use mcp_ratelimit::reply::LocalReply;
use mcp_ratelimit::rls::{self, pb, Verdict};
use prost::Message;
use serde_json::Value;

/// Fixed, valid plugin configurations the input picks from.
const CONFIGS: &[&str] = &[
    // The default: per-tool limits, fail open.
    r#"{"domain":"mcp","rls_cluster":"ratelimit"}"#,
    // Fail closed, a small body cap.
    r#"{"domain":"mcp","rls_cluster":"r","failure_mode_deny":true,"max_body_bytes":256}"#,
    // The header fast path with the meta-tool's inner name in a header.
    r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":64,"header_fast_path":true,
        "param_headers":[{"tool":"call_tool","argument":"tool_name","header":"ToolName"}]}"#,
    // The fast path, fail closed, headers not held (a buffer filter follows).
    r#"{"domain":"fast","rls_cluster":"r","header_fast_path":true,"failure_mode_deny":true,
        "hold_headers":false,"max_body_bytes":512,
        "param_headers":[{"tool":"call_tool","argument":"tool_name","header":"Mcp-Param-ToolName"},
                         {"tool":"search","argument":"region","header":"Region"}]}"#,
    // Every descriptor source, a customised denial, two meta-tools.
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
    // No header checks, no meta-tools, a call for every method, batches
    // refused.
    r#"{"domain":"m","rls_cluster":"r","validate_mcp_headers":false,"meta_tools":[],
        "hold_headers":false,"refuse_batches":true,"max_body_bytes":128,
        "descriptors":[[{"key":"method","mcp":"method"}]]}"#,
    // JSON content types only: other bodies pass unread.
    r#"{"domain":"mcp","rls_cluster":"r","sniff_bodies":false,"failure_mode_deny":true}"#,
];

thread_local! {
    static CFGS: Vec<Rc<Config>> = CONFIGS
        .iter()
        .map(|c| Rc::new(Config::parse(c.as_bytes()).expect("a fixed configuration is valid")))
        .collect();
}

/// Strings that reach the interesting branches.
const WORDS: &[&str] = &[
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
];

#[derive(Arbitrary, Debug)]
enum Word {
    Dict(u8),
    Any(String),
}

impl Word {
    fn text(&self) -> &str {
        match self {
            Word::Dict(i) => WORDS[usize::from(*i) % WORDS.len()],
            Word::Any(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum HeaderValue {
    Plain(Word),
    Base64(Word),
    Raw(Vec<u8>),
}

impl HeaderValue {
    fn bytes(&self) -> Vec<u8> {
        match self {
            HeaderValue::Plain(w) => w.text().as_bytes().to_vec(),
            HeaderValue::Base64(w) => {
                format!("=?base64?{}?=", base64(w.text().as_bytes())).into_bytes()
            }
            HeaderValue::Raw(b) => b.clone(),
        }
    }
}

/// Headers the input may give twice (`Host::any_repeated`).
const REPEATABLE: &[&str] = &[
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "mcp-param-toolname",
    "mcp-param-region",
    "mcp-param-inner",
    "x-user",
];

#[derive(Arbitrary, Debug)]
enum HttpMethod {
    Post,
    Get,
    Delete,
    LowerPost,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum ContentType {
    Json,
    JsonCharset,
    Upper,
    JsonRpc,
    PlusJson,
    TextPlain,
    FormUrlEncoded,
    Missing,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum ContentEncoding {
    Identity,
    Empty,
    Gzip,
    IdentityList,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum ContentLength {
    Exact,
    Value(u64),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Id {
    Int(i64),
    Str(Word),
    Null,
    Float(f64),
    Object,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum ArgValue {
    Word(Word),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    Array,
}

#[derive(Arbitrary, Debug)]
struct Arguments {
    tool_name: Option<ArgValue>,
    parameters_tool_name: Option<Word>,
    region: Option<ArgValue>,
    parameters_not_object: bool,
}

/// Where an extra member goes, and how its name is spelled.
#[derive(Arbitrary, Debug)]
enum Level {
    Top,
    Params,
    Arguments,
}

#[derive(Arbitrary, Debug)]
enum Spelling {
    Exact,
    Upper,
    Capital,
    LongS,
    Kelvin,
}

#[derive(Arbitrary, Debug)]
struct Extra {
    level: Level,
    member: u8,
    spelling: Spelling,
    value: Word,
}

#[derive(Arbitrary, Debug)]
struct Msg {
    id: Option<Id>,
    method: Option<Word>,
    method_not_string: bool,
    name: Option<Word>,
    uri: Option<Word>,
    arguments: Option<Arguments>,
    meta_version: Option<Word>,
    params_not_object: bool,
    extra: Option<Extra>,
    rotate: u8,
    escape: bool,
}

#[derive(Arbitrary, Debug)]
enum BodyGen {
    Raw(Vec<u8>),
    Single(Box<Msg>),
    Batch(Vec<Msg>),
}

#[derive(Arbitrary, Debug)]
enum Event {
    /// The next body chunk, of this many bytes.
    Chunk(u16),
    /// The service answers the outstanding call.
    Answer,
    /// A reply for another call arrives.
    Stray(u32),
}

#[derive(Arbitrary, Debug, PartialEq, Eq)]
enum End {
    LastChunk,
    Trailers,
    Open,
}

#[derive(Arbitrary, Debug)]
struct HeaderGen {
    key: Word,
    value: String,
    raw_value: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct StatusGen {
    code: u8,
    duration: Option<(i64, i32)>,
}

#[derive(Arbitrary, Debug)]
enum RlsReply {
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

#[derive(Arbitrary, Debug)]
struct Input {
    config: u8,
    method: HttpMethod,
    content_type: ContentType,
    protocol_version: Option<HeaderValue>,
    mcp_method: Option<HeaderValue>,
    mcp_name: Option<HeaderValue>,
    param_tool_name: Option<HeaderValue>,
    param_region: Option<HeaderValue>,
    session_id: Option<HeaderValue>,
    user: Option<Vec<u8>>,
    metadata_sub: Option<Vec<u8>>,
    content_length: Option<ContentLength>,
    content_encoding: Option<ContentEncoding>,
    /// Bit i: `REPEATABLE[i]` is given twice.
    repeated: u8,
    /// Whitespace before the body.
    leading_space: u8,
    end_at_headers: bool,
    body: BodyGen,
    events: Vec<Event>,
    end: End,
    dispatch_fails: bool,
    rls: RlsReply,
}

// ---------------------------------------------------------------------------
// Building the request.

fn base64(bytes: &[u8]) -> String {
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
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A JSON string literal, every character escaped as `\uXXXX` if asked.
fn json_str(s: &str, escape: bool) -> String {
    if !escape {
        return serde_json::to_string(s).expect("a string serialises");
    }
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        out.push_str(&format!("\\u{unit:04x}"));
    }
    out.push('"');
    out
}

fn spell(name: &str, spelling: &Spelling) -> String {
    match spelling {
        Spelling::Exact => name.to_owned(),
        Spelling::Upper => name.to_ascii_uppercase(),
        Spelling::Capital => {
            let mut c = name.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        }
        Spelling::LongS => name.replace('s', "\u{17f}"),
        Spelling::Kelvin => name.replace('k', "\u{212a}"),
    }
}

fn object(mut members: Vec<(String, String)>, rotate: u8, escape: bool) -> String {
    if !members.is_empty() {
        let n = usize::from(rotate) % members.len();
        members.rotate_left(n);
    }
    let parts: Vec<String> = members
        .into_iter()
        .map(|(k, v)| format!("{}:{v}", json_str(&k, escape)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn arg_value(v: &ArgValue, escape: bool) -> String {
    match v {
        ArgValue::Word(w) => json_str(w.text(), escape),
        ArgValue::Int(i) => i.to_string(),
        ArgValue::Float(f) => Value::from(*f).to_string(),
        ArgValue::Bool(b) => b.to_string(),
        ArgValue::Null => "null".to_owned(),
        ArgValue::Array => "[\"x\",{}]".to_owned(),
    }
}

fn msg_json(m: &Msg) -> String {
    let e = m.escape;
    let extra_at = |level: fn(&Level) -> bool, names: &[&str]| -> Option<(String, String)> {
        let x = m.extra.as_ref().filter(|x| level(&x.level))?;
        let name = names[usize::from(x.member) % names.len()];
        Some((spell(name, &x.spelling), json_str(x.value.text(), e)))
    };
    let mut args = Vec::new();
    if let Some(a) = &m.arguments {
        if let Some(t) = &a.tool_name {
            args.push(("tool_name".to_owned(), arg_value(t, e)));
        }
        if let Some(r) = &a.region {
            args.push(("region".to_owned(), arg_value(r, e)));
        }
        if a.parameters_not_object {
            args.push(("parameters".to_owned(), "7".to_owned()));
        } else if let Some(t) = &a.parameters_tool_name {
            args.push((
                "parameters".to_owned(),
                object(vec![("tool_name".to_owned(), json_str(t.text(), e))], 0, e),
            ));
        }
        args.extend(extra_at(
            |l| matches!(l, Level::Arguments),
            &["tool_name", "parameters", "region"],
        ));
    }
    let mut params = Vec::new();
    if let Some(n) = &m.name {
        params.push(("name".to_owned(), json_str(n.text(), e)));
    }
    if let Some(u) = &m.uri {
        params.push(("uri".to_owned(), json_str(u.text(), e)));
    }
    if m.arguments.is_some() {
        params.push(("arguments".to_owned(), object(args, m.rotate, e)));
    }
    if let Some(v) = &m.meta_version {
        params.push((
            "_meta".to_owned(),
            object(
                vec![(
                    "io.modelcontextprotocol/protocolVersion".to_owned(),
                    json_str(v.text(), e),
                )],
                0,
                e,
            ),
        ));
    }
    params.extend(extra_at(
        |l| matches!(l, Level::Params),
        &["name", "uri", "arguments", "_meta"],
    ));
    let mut top = vec![("jsonrpc".to_owned(), "\"2.0\"".to_owned())];
    if let Some(id) = &m.id {
        let text = match id {
            Id::Int(i) => i.to_string(),
            Id::Str(w) => json_str(w.text(), e),
            Id::Null => "null".to_owned(),
            Id::Float(f) => Value::from(*f).to_string(),
            Id::Object => "{\"x\":[1,\"\\u00e9\"]}".to_owned(),
            Id::Raw(s) => s.clone(),
        };
        top.push(("id".to_owned(), text));
    }
    if m.method_not_string {
        top.push(("method".to_owned(), "7".to_owned()));
    } else if let Some(w) = &m.method {
        top.push(("method".to_owned(), json_str(w.text(), e)));
    }
    if m.params_not_object {
        top.push(("params".to_owned(), "[1,2]".to_owned()));
    } else if !params.is_empty() {
        top.push(("params".to_owned(), object(params, m.rotate / 3, e)));
    }
    top.extend(extra_at(
        |l| matches!(l, Level::Top),
        &["id", "method", "params"],
    ));
    object(top, m.rotate / 7, e)
}

fn body_bytes(b: &BodyGen) -> Vec<u8> {
    match b {
        BodyGen::Raw(bytes) => bytes.clone(),
        BodyGen::Single(m) => msg_json(m).into_bytes(),
        BodyGen::Batch(list) => {
            let parts: Vec<String> = list.iter().map(msg_json).collect();
            format!("[{}]", parts.join(",")).into_bytes()
        }
    }
}

fn header_values(list: &[HeaderGen]) -> Vec<pb::HeaderValue> {
    list.iter()
        .map(|h| pb::HeaderValue {
            key: h.key.text().to_owned(),
            value: h.value.clone(),
            raw_value: h.raw_value.clone(),
        })
        .collect()
}

/// The gRPC status and body of the service's reply.
fn rls_reply(r: &RlsReply) -> (u32, Option<Vec<u8>>) {
    match r {
        RlsReply::Grpc(status) => (*status, None),
        RlsReply::EmptyBody => (0, Some(Vec::new())),
        RlsReply::Raw(bytes) => (0, Some(bytes.clone())),
        RlsReply::Ok {
            request_headers,
            response_headers,
        } => {
            let msg = pb::RateLimitResponse {
                overall_code: rls::CODE_OK,
                statuses: vec![],
                response_headers_to_add: header_values(response_headers),
                request_headers_to_add: header_values(request_headers),
            };
            (0, Some(msg.encode_to_vec()))
        }
        RlsReply::OverLimit {
            statuses,
            response_headers,
        } => {
            let msg = pb::RateLimitResponse {
                overall_code: rls::CODE_OVER_LIMIT,
                statuses: statuses
                    .iter()
                    .map(|s| pb::DescriptorStatus {
                        code: i32::from(s.code % 4),
                        current_limit: None,
                        limit_remaining: 0,
                        duration_until_reset: s
                            .duration
                            .map(|(seconds, nanos)| pb::Duration { seconds, nanos }),
                    })
                    .collect(),
                response_headers_to_add: header_values(response_headers),
                request_headers_to_add: vec![],
            };
            (0, Some(msg.encode_to_vec()))
        }
        RlsReply::Code(code) => {
            let msg = pb::RateLimitResponse {
                overall_code: *code,
                ..Default::default()
            };
            (0, Some(msg.encode_to_vec()))
        }
    }
}

// ---------------------------------------------------------------------------
// The host.

struct FuzzHost {
    headers: HashMap<String, Vec<u8>>,
    repeated: Vec<&'static str>,
    metadata_sub: Option<Vec<u8>>,
    counts: RefCell<HashMap<Counter, u64>>,
}

impl FuzzHost {
    fn count_of(&self, c: Counter) -> u64 {
        self.counts.borrow().get(&c).copied().unwrap_or(0)
    }
}

impl Host for FuzzHost {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        assert_eq!(
            name,
            name.to_ascii_lowercase(),
            "header names are lowercase"
        );
        self.headers.get(name).cloned()
    }
    fn metadata(&self, namespace: &str, path: &[String]) -> Option<Vec<u8>> {
        if namespace == "jwt" && path == ["payload", "sub"] {
            self.metadata_sub.clone()
        } else {
            None
        }
    }
    fn count(&self, counter: Counter) {
        *self.counts.borrow_mut().entry(counter).or_default() += 1;
    }
    fn any_repeated(&self, names: &[&str]) -> bool {
        names.iter().any(|n| {
            assert_eq!(*n, n.to_ascii_lowercase(), "header names are lowercase");
            self.repeated.contains(n) && self.headers.contains_key(*n)
        })
    }
}

// ---------------------------------------------------------------------------
// Driving the flow as host.rs does.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Site {
    Callback,
    Async,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Request headers, response headers.
    Ok(Vec<(String, String)>, Vec<(String, String)>),
    OverLimit(u64),
    Failed,
}

struct Run<'a> {
    cfg: &'a Config,
    host: &'a FuzzHost,
    flow: Flow,
    /// Body bytes the proxy holds for the filter.
    buffered: Vec<u8>,
    /// Every body byte that arrived, in order.
    body_seen: Vec<u8>,
    declared_too_large: bool,
    /// A compressed body (refused with 415).
    compressed: bool,
    /// Some routing header is given twice.
    repeated: bool,
    outstanding: Option<u32>,
    next_token: u32,
    dispatches: u32,
    resolved: u32,
    failures: u32,
    outcome: Option<Outcome>,
    dispatch_fails: bool,
    reply: Option<LocalReply>,
    /// Whether the filter holds the request now.
    held: bool,
    dispatched_from_body: bool,
    /// The request went on after the service's verdict.
    continued_after_verdict: bool,
}

impl Run<'_> {
    fn run(&mut self, mut step: Step, site: Site) -> bool {
        // Whether `step` came from `on_body` (the body was judged).
        let mut from_body = false;
        loop {
            let origin = std::mem::take(&mut from_body);
            if debug() {
                eprintln!("step: {step:?}");
            }
            step = match step {
                Step::Continue(headers) => {
                    assert!(
                        self.outstanding.is_none(),
                        "Continue while a call is outstanding"
                    );
                    assert_eq!(self.flow.awaiting(), None);
                    assert!(self.reply.is_none(), "Continue after a local reply");
                    assert!(!self.flow.replied());
                    if self.dispatches > 0 {
                        match &self.outcome {
                            Some(Outcome::Ok(h, _)) => {
                                assert!(headers.is_empty() || headers == *h);
                            }
                            Some(Outcome::Failed) => {
                                assert!(
                                    !self.cfg.failure_mode_deny,
                                    "went on after a failure under failure_mode_deny"
                                );
                                assert!(headers.is_empty());
                            }
                            other => panic!("went on after a call with outcome {other:?}"),
                        }
                    } else {
                        assert!(headers.is_empty(), "request headers without a call");
                    }
                    if self.outcome.is_some() {
                        self.continued_after_verdict = true;
                    }
                    if site == Site::Async {
                        // resume_http_request: what was held goes on.
                        self.buffered.clear();
                        self.held = false;
                    }
                    return true;
                }
                Step::Pause => return false,
                Step::ReadBody(n) => {
                    // All that is buffered, or the first `max_body_bytes`
                    // of it to tell JSON from other bodies.
                    assert!(
                        n == self.buffered.len()
                            || (n == self.cfg.max_body_bytes && n < self.buffered.len()),
                        "ReadBody({n}) with {} bytes buffered",
                        self.buffered.len()
                    );
                    let body = self.buffered[..n].to_vec();
                    from_body = true;
                    self.flow.on_body(&body, self.host)
                }
                Step::Dispatch(payload) => {
                    assert!(
                        self.outstanding.is_none(),
                        "a second call while one is outstanding"
                    );
                    assert_eq!(self.dispatches, 0, "at most one call per request");
                    assert!(self.reply.is_none());
                    self.dispatches += 1;
                    self.dispatched_from_body = origin;
                    self.check_payload(&payload, origin);
                    if self.dispatch_fails {
                        self.resolved += 1;
                        self.failures += 1;
                        self.outcome = Some(Outcome::Failed);
                        self.flow.on_dispatch_failed(self.host)
                    } else {
                        let token = self.next_token;
                        self.next_token = self.next_token.wrapping_add(1);
                        self.outstanding = Some(token);
                        self.flow.on_dispatched(token, self.host);
                        assert_eq!(self.flow.awaiting(), Some(token));
                        Step::Pause
                    }
                }
                Step::Reply(r) => {
                    assert!(self.reply.is_none(), "a second local reply");
                    assert!(
                        self.outstanding.is_none(),
                        "replied while a call is outstanding"
                    );
                    assert!(self.flow.replied());
                    self.check_reply(&r, origin);
                    self.reply = Some(r);
                    return false;
                }
            };
        }
    }

    fn on_headers(&mut self, end_of_stream: bool) {
        let step = self.flow.on_request_headers(end_of_stream, self.host);
        let went_on = match step {
            Step::Pause => false,
            Step::Reply(r) => {
                // Refused from the headers alone.
                match r.detail {
                    "mcp_ratelimit_unsupported_encoding" => assert!(self.compressed),
                    "mcp_ratelimit_header_mismatch" => {
                        assert!(self.repeated && self.cfg.validate_mcp_headers)
                    }
                    "mcp_ratelimit_body_too_large" => assert!(self.declared_too_large),
                    other => panic!("{other} from the headers"),
                }
                self.run(Step::Reply(r), Site::Callback)
            }
            other => self.run(other, Site::Callback),
        };
        // host.rs: waiting on the fast path without holding the headers.
        let went_on = went_on || (!self.cfg.hold_headers && !end_of_stream && self.reply.is_none());
        self.held = !went_on && self.reply.is_none();
    }

    fn on_chunk(&mut self, chunk: &[u8], end_of_stream: bool) {
        self.body_seen.extend_from_slice(chunk);
        if self.reply.is_some() {
            let step = self
                .flow
                .on_request_body(chunk.len(), end_of_stream, self.host);
            assert_eq!(step, Step::Pause, "a body callback after the reply");
            return;
        }
        self.buffered.extend_from_slice(chunk);
        let step = self
            .flow
            .on_request_body(self.buffered.len(), end_of_stream, self.host);
        if self.run(step, Site::Callback) {
            self.buffered.clear();
            self.held = false;
        } else {
            self.held = self.reply.is_none();
        }
    }

    fn on_trailers(&mut self) {
        let step = self.flow.on_request_trailers();
        if self.reply.is_some() {
            assert_eq!(step, Step::Pause, "trailers after the reply");
            return;
        }
        if self.run(step, Site::Callback) {
            self.buffered.clear();
            self.held = false;
        } else {
            self.held = self.reply.is_none();
        }
    }

    fn answer(&mut self, reply: &RlsReply) {
        let Some(token) = self.outstanding.take() else {
            return;
        };
        let (status, body) = rls_reply(reply);
        let outcome = if status != 0 {
            Outcome::Failed
        } else {
            match rls::decode_response(body.as_deref().unwrap_or_default()) {
                Ok(Verdict::Ok {
                    request_headers,
                    response_headers,
                }) => Outcome::Ok(request_headers, response_headers),
                Ok(Verdict::OverLimit { retry_after, .. }) => {
                    assert!(retry_after >= 1);
                    Outcome::OverLimit(retry_after)
                }
                Err(_) => Outcome::Failed,
            }
        };
        match (reply, &outcome) {
            (RlsReply::Ok { .. }, Outcome::Ok(..))
            | (RlsReply::OverLimit { .. }, Outcome::OverLimit(_))
            | (RlsReply::Grpc(_) | RlsReply::EmptyBody | RlsReply::Raw(_) | RlsReply::Code(_), _) =>
                {}
            (r, o) => panic!("a well-formed reply {r:?} read as {o:?}"),
        }
        if outcome == Outcome::Failed {
            self.failures += 1;
        }
        self.resolved += 1;
        self.outcome = Some(outcome);
        let step = self
            .flow
            .on_rls_response(token, status, body.as_deref(), self.host);
        if step != Step::Pause {
            self.run(step, Site::Async);
        }
    }

    fn stray(&mut self, token: u32) {
        if Some(token) == self.outstanding {
            return;
        }
        let before = self.flow.awaiting();
        let over = pb::RateLimitResponse {
            overall_code: rls::CODE_OVER_LIMIT,
            ..Default::default()
        }
        .encode_to_vec();
        let step = self.flow.on_rls_response(token, 0, Some(&over), self.host);
        assert_eq!(step, Step::Pause, "a reply to another call is ignored");
        assert_eq!(self.flow.awaiting(), before);
    }

    fn check_payload(&self, payload: &[u8], from_body: bool) {
        let req = pb::RateLimitRequest::decode(payload).expect("the payload is a RateLimitRequest");
        assert_eq!(req.domain, self.cfg.domain);
        assert_eq!(req.hits_addend, 0);
        assert!(!req.descriptors.is_empty(), "a call without descriptors");
        for (i, d) in req.descriptors.iter().enumerate() {
            let keys: Vec<&str> = d.entries.iter().map(|e| e.key.as_str()).collect();
            assert!(
                self.cfg
                    .descriptors
                    .iter()
                    .any(|c| c.iter().map(|e| e.key.as_str()).eq(keys.iter().copied())),
                "descriptor keys {keys:?} are not configured"
            );
            if let Some(h) = &d.hits_addend {
                assert!(h.value >= 2, "hits_addend is sent only above 1");
            }
            assert!(
                !req.descriptors[..i].iter().any(|o| o.entries == d.entries),
                "identical descriptors are merged"
            );
        }
        // Under per-tool descriptors, a single message is counted against
        // exactly the tool the parser resolves.
        let per_tool = matches!(
            self.cfg.descriptors.as_slice(),
            [d] if matches!(d.as_slice(), [e] if e.source == Source::Mcp(McpField::Tool))
        );
        if from_body && per_tool {
            let spec = self.cfg.spec();
            if let Ok(Body::Single(r)) = jsonrpc::parse(&self.buffered, &spec) {
                let Some(Target::Tool(t)) = &r.target else {
                    panic!("a call for a message without a tool: {r:?}");
                };
                assert_eq!(req.descriptors.len(), 1);
                assert_eq!(req.descriptors[0].entries.len(), 1);
                assert_eq!(req.descriptors[0].entries[0].value, *t);
                assert_eq!(req.descriptors[0].hits_addend, None);
            }
        }
    }

    fn check_reply(&self, r: &LocalReply, from_body: bool) {
        assert!((200..=599).contains(&r.status));
        let content_types = r
            .headers
            .iter()
            .filter(|(k, _)| k == "content-type")
            .count();
        assert_eq!(content_types, 1);
        for (k, v) in &r.headers {
            assert!(!k.is_empty() && *k == k.to_ascii_lowercase());
            assert!(!v.contains(['\r', '\n', '\0']), "header value {v:?}");
        }
        serde_json::from_str::<serde::de::IgnoredAny>(&r.body)
            .expect("a local reply is valid JSON");
        // serde_json's `Value` refuses numbers beyond f64 (`1e999`) and
        // nesting past 128, both valid JSON that an id may hold.
        let Ok(v) = serde_json::from_str::<Value>(&r.body) else {
            return;
        };
        let objects: Vec<&Value> = match &v {
            Value::Array(list) => {
                assert!(!list.is_empty());
                list.iter().collect()
            }
            other => vec![other],
        };
        for o in &objects {
            let o = o.as_object().expect("each reply is a JSON-RPC object");
            assert_eq!(o.get("jsonrpc"), Some(&Value::from("2.0")));
            assert!(!o.contains_key("result"));
            let err = o["error"].as_object().expect("error object");
            assert!(err["code"].is_i64());
            assert!(err["message"].is_string());
        }
        let code = |o: &Value| o["error"]["code"].as_i64().unwrap_or_default();
        match r.detail {
            "mcp_ratelimit_over_limit" => {
                let Some(Outcome::OverLimit(retry)) = self.outcome else {
                    panic!("over-limit reply with outcome {:?}", self.outcome)
                };
                assert_eq!(r.status, self.cfg.over_limit.http_status);
                let retry_header = r.headers.iter().find(|(k, _)| k == "retry-after");
                assert_eq!(
                    retry_header.map(|(_, v)| v.as_str()),
                    Some(retry.to_string().as_str())
                );
                for o in &objects {
                    assert_eq!(code(o), self.cfg.over_limit.code);
                    assert_eq!(o["error"]["message"], self.cfg.over_limit.message.as_str());
                    assert_eq!(o["error"]["data"]["retryAfterSeconds"], retry);
                }
                self.check_ids(&v);
            }
            "mcp_ratelimit_rls_failure" => {
                assert_eq!(self.outcome, Some(Outcome::Failed));
                assert!(self.cfg.failure_mode_deny);
                assert_eq!(r.status, self.cfg.rls_failure.http_status);
                for o in &objects {
                    assert_eq!(code(o), self.cfg.rls_failure.code);
                    assert_eq!(o["error"]["message"], self.cfg.rls_failure.message.as_str());
                }
                self.check_ids(&v);
            }
            "mcp_ratelimit_body_too_large" => {
                assert_eq!(r.status, 413);
                assert!(
                    self.declared_too_large || self.body_seen.len() > self.cfg.max_body_bytes,
                    "413 for a body within the cap"
                );
                assert_eq!(code(&v), -32600);
                assert_eq!(v["error"]["data"]["maxBodyBytes"], self.cfg.max_body_bytes);
            }
            "mcp_ratelimit_bad_request" => {
                assert_eq!(r.status, 400);
                assert!(matches!(code(&v), -32700 | -32600 | -32602));
                assert!(self.dispatches == 0 && from_body);
            }
            "mcp_ratelimit_header_mismatch" => {
                assert_eq!(r.status, 400);
                assert_eq!(code(&v), -32020);
                assert!(self.cfg.validate_mcp_headers);
                assert!(self.dispatches == 0 && (from_body || self.repeated));
            }
            "mcp_ratelimit_unsupported_encoding" => {
                assert_eq!(r.status, 415);
                assert_eq!(code(&v), -32600);
                assert!(self.compressed && self.dispatches == 0);
            }
            other => panic!("unknown reply {other}"),
        }
    }

    /// A denial answers the ids of the request, as sent.
    fn check_ids(&self, reply: &Value) {
        let spec = self.cfg.spec();
        let ids: Vec<Value> = match jsonrpc::parse(&self.buffered, &spec) {
            Ok(body) => body
                .requests()
                .iter()
                .filter_map(|r| r.id)
                .map(|id| serde_json::from_str(id.get()).unwrap_or(Value::Null))
                .collect(),
            Err(_) => {
                assert!(
                    !self.dispatched_from_body,
                    "a call for a body that does not parse"
                );
                vec![]
            }
        };
        let got: Vec<Value> = match reply {
            Value::Array(list) => list.iter().map(|o| o["id"].clone()).collect(),
            o => o.get("id").cloned().into_iter().collect(),
        };
        // A batch without ids still gets one error object, without an id.
        let batch_without_ids = ids.is_empty() && got.is_empty();
        assert!(
            batch_without_ids || got == ids,
            "reply ids {got:?}, request ids {ids:?}"
        );
    }
}

fn main_one(input: &Input, raw_body: Option<&[u8]>) {
    let cfg = CFGS.with(|c| c[usize::from(input.config) % c.len()].clone());
    let body = if input.end_at_headers {
        Vec::new()
    } else if let Some(raw) = raw_body {
        raw.to_vec()
    } else {
        let mut b = vec![b' '; usize::from(input.leading_space % 8)];
        if input.leading_space & 0x80 != 0 {
            b.extend_from_slice(b"\r\n\t");
        }
        b.extend(body_bytes(&input.body));
        b
    };

    let mut headers = HashMap::new();
    let method = match &input.method {
        HttpMethod::Post => b"POST".to_vec(),
        HttpMethod::Get => b"GET".to_vec(),
        HttpMethod::Delete => b"DELETE".to_vec(),
        HttpMethod::LowerPost => b"post".to_vec(),
        HttpMethod::Raw(b) => b.clone(),
    };
    let is_post = method == b"POST";
    headers.insert(":method".to_owned(), method);
    let content_type = match &input.content_type {
        ContentType::Json => Some(b"application/json".to_vec()),
        ContentType::JsonCharset => Some(b"application/json; charset=utf-8".to_vec()),
        ContentType::Upper => Some(b" Application/JSON ".to_vec()),
        ContentType::JsonRpc => Some(b"application/json-rpc".to_vec()),
        ContentType::PlusJson => Some(b"application/vnd.mcp+json;v=1".to_vec()),
        ContentType::TextPlain => Some(b"text/plain".to_vec()),
        ContentType::FormUrlEncoded => Some(b"application/x-www-form-urlencoded".to_vec()),
        ContentType::Missing => None,
        ContentType::Raw(b) => Some(b.clone()),
    };
    let is_json = content_type
        .as_deref()
        .is_some_and(mcp_ratelimit::flow::is_json);
    if let Some(ct) = content_type {
        headers.insert("content-type".to_owned(), ct);
    }
    let mut compressed = false;
    if let Some(ce) = &input.content_encoding {
        let value = match ce {
            ContentEncoding::Identity => b"identity".to_vec(),
            ContentEncoding::Empty => Vec::new(),
            ContentEncoding::Gzip => b"gzip".to_vec(),
            ContentEncoding::IdentityList => b" Identity , ".to_vec(),
            ContentEncoding::Raw(b) => b.clone(),
        };
        compressed = !value.split(|b| *b == b',').all(|e| {
            let e = e.trim_ascii();
            e.is_empty() || e.eq_ignore_ascii_case(b"identity")
        });
        headers.insert("content-encoding".to_owned(), value);
    }
    let mut put = |name: &str, v: &Option<HeaderValue>| {
        if let Some(v) = v {
            headers.insert(name.to_owned(), v.bytes());
        }
    };
    put("mcp-protocol-version", &input.protocol_version);
    put("mcp-method", &input.mcp_method);
    put("mcp-name", &input.mcp_name);
    put("mcp-param-toolname", &input.param_tool_name);
    put("mcp-param-inner", &input.param_tool_name);
    put("mcp-param-region", &input.param_region);
    put("mcp-session-id", &input.session_id);
    if let Some(u) = &input.user {
        headers.insert("x-user".to_owned(), u.clone());
    }
    let mut declared_too_large = false;
    if let Some(cl) = &input.content_length {
        let text = match cl {
            ContentLength::Exact => body.len().to_string().into_bytes(),
            ContentLength::Value(n) => n.to_string().into_bytes(),
            ContentLength::Raw(b) => b.clone(),
        };
        declared_too_large = std::str::from_utf8(&text)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| n > cfg.max_body_bytes as u64);
        headers.insert("content-length".to_owned(), text);
    }

    let repeated: Vec<&'static str> = REPEATABLE
        .iter()
        .enumerate()
        .filter(|(i, _)| input.repeated & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    let routing_repeated = repeated
        .iter()
        .any(|n| *n != "x-user" && headers.contains_key(*n));
    let host = FuzzHost {
        headers,
        repeated,
        metadata_sub: input.metadata_sub.clone(),
        counts: RefCell::new(HashMap::new()),
    };
    let mut run = Run {
        cfg: &cfg,
        host: &host,
        flow: Flow::new(cfg.clone()),
        buffered: Vec::new(),
        body_seen: Vec::new(),
        declared_too_large,
        compressed,
        repeated: routing_repeated,
        outstanding: None,
        next_token: 1,
        dispatches: 0,
        resolved: 0,
        failures: 0,
        outcome: None,
        dispatch_fails: input.dispatch_fails,
        reply: None,
        held: false,
        dispatched_from_body: false,
        continued_after_verdict: false,
    };

    // Headers, then the events in order, then the end of the body and the
    // service's answer if still due.
    run.on_headers(input.end_at_headers);
    let mut rest: &[u8] = &body;
    let mut body_ended = input.end_at_headers;
    for event in &input.events {
        match event {
            Event::Chunk(n) if !body_ended => {
                let n = usize::from(*n).min(rest.len());
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let last = rest.is_empty() && input.end == End::LastChunk;
                run.on_chunk(chunk, last);
                body_ended = last;
            }
            Event::Chunk(_) => {}
            Event::Answer => run.answer(&input.rls),
            Event::Stray(t) => run.stray(*t),
        }
    }
    if !body_ended {
        match input.end {
            End::LastChunk => {
                run.on_chunk(rest, true);
                body_ended = true;
            }
            End::Trailers => {
                if !rest.is_empty() {
                    run.on_chunk(rest, false);
                }
                run.on_trailers();
                body_ended = true;
            }
            End::Open => {
                if !rest.is_empty() {
                    run.on_chunk(rest, false);
                }
            }
        }
    }
    run.answer(&input.rls);
    assert!(run.outstanding.is_none());

    // Nothing for requests that are not POSTs, nor for other content types
    // unless their body looks like JSON.
    let sniffed = !is_json && cfg.sniff_bodies && !input.end_at_headers;
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let not_json_shaped = sniffed && first.is_some_and(|b| *b != b'{' && *b != b'[');
    let passthrough = !is_post || (!is_json && !sniffed);
    if passthrough || (not_json_shaped && !compressed) {
        assert_eq!(run.dispatches, 0);
        assert!(run.reply.is_none());
        assert!(!run.held || !body_ended);
        assert!(
            host.counts.borrow().is_empty(),
            "counters for a passthrough request"
        );
    }
    // The body cap holds for every body the filter judged.
    if host.count_of(Counter::Inspected) == 1 {
        assert!(
            body.len() <= cfg.max_body_bytes,
            "a body of {} bytes over the cap of {} was judged",
            body.len(),
            cfg.max_body_bytes
        );
    }
    // A request whose body ended and whose call was answered is not left
    // hanging: it was answered, or it goes on.
    if body_ended {
        assert!(
            run.reply.is_some() || !run.held,
            "request left held: outcome {:?}",
            run.outcome
        );
    }
    // The counters add up.
    assert_eq!(host.count_of(Counter::Checked), u64::from(run.dispatches));
    assert_eq!(
        host.count_of(Counter::Ok)
            + host.count_of(Counter::OverLimit)
            + host.count_of(Counter::Error),
        u64::from(run.resolved)
    );
    assert_eq!(host.count_of(Counter::Error), u64::from(run.failures));
    let allowed_failures = if cfg.failure_mode_deny {
        0
    } else {
        run.failures
    };
    assert_eq!(
        host.count_of(Counter::FailureModeAllowed),
        u64::from(allowed_failures)
    );
    for c in [
        Counter::Inspected,
        Counter::ParseError,
        Counter::BodyTooLarge,
        Counter::HeaderMismatch,
        Counter::FastPath,
    ] {
        assert!(host.count_of(c) <= 1, "{c:?} counted twice");
    }
    if host.count_of(Counter::FastPath) == 1 {
        assert!(cfg.header_fast_path);
        assert_eq!(host.count_of(Counter::Inspected), 0);
    }
    // An allowed request's response gets the headers of the OK verdict, once.
    if run.reply.is_none() {
        let expected = match &run.outcome {
            Some(Outcome::Ok(_, h)) if run.continued_after_verdict => h.clone(),
            _ => Vec::new(),
        };
        assert_eq!(run.flow.response_headers(), expected);
        assert!(run.flow.response_headers().is_empty());
    }
    // Late callbacks change nothing once answered.
    if run.reply.is_some() {
        assert_eq!(run.flow.on_request_trailers(), Step::Pause);
        assert_eq!(run.flow.on_rls_response(0, 0, None, &host), Step::Pause);
        assert!(run.flow.response_headers().is_empty());
    }
}

/// Splits an input into its control part and, after this separator, a body
/// taken as is. Seeds use it to carry the unit tests' bodies; without it
/// the body is generated from the control part.
const BODY_SEPARATOR: &[u8] = b"\n--body--\n";

fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("MCP_FUZZ_DEBUG").is_some())
}

fuzz_target!(|data: &[u8]| {
    let (control, body) = match data
        .windows(BODY_SEPARATOR.len())
        .position(|w| w == BODY_SEPARATOR)
    {
        Some(i) => (&data[..i], Some(&data[i + BODY_SEPARATOR.len()..])),
        None => (data, None),
    };
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(control)) else {
        return;
    };
    if debug() {
        eprintln!("input: {input:#?}");
        if let Some(b) = body {
            eprintln!("body: {:?}", String::from_utf8_lossy(b));
        }
    }
    main_one(&input, body);
});
