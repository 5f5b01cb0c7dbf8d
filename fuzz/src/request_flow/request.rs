//! From an [`Input`] to the request the proxy would hand the filter: its
//! headers, which of them are repeated, its body bytes, and what the checks
//! need to know of it (a POST? a JSON content type? compressed? declared
//! over the cap?). Also the bytes of the rate-limit service's reply.

use std::collections::HashMap;

use mcp_ratelimit::config::Config;
use mcp_ratelimit::rls::{self, pb};
use prost::Message;
use serde_json::Value;

use super::input::*;

/// A request as the proxy presents it, and facts about it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Lowercase names; a repeated header's first value.
    pub headers: HashMap<String, Vec<u8>>,
    /// Headers given more than once (present in `headers`).
    pub repeated: Vec<&'static str>,
    pub metadata_sub: Option<Vec<u8>>,
    pub body: Vec<u8>,
    /// The headers end the request: no body at all.
    pub end_at_headers: bool,
    pub is_post: bool,
    pub is_json: bool,
    /// A `content-encoding` other than identity (refused with 415).
    pub compressed: bool,
    /// The declared `content-length` is over the cap.
    pub declared_too_large: bool,
}

impl Request {
    pub fn build(input: &Input, cfg: &Config, raw_body: Option<&[u8]>) -> Request {
        let max = cfg.max_body_bytes;
        let body = if input.end_at_headers {
            Vec::new()
        } else {
            let mut b = padding(&input.padding, max);
            match raw_body {
                Some(raw) => b.extend_from_slice(raw),
                None => b.extend(body_bytes(&input.body)),
            }
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
            ContentType::Json => Some(&b"application/json"[..]),
            ContentType::JsonCharset => Some(&b"application/json; charset=utf-8"[..]),
            ContentType::Upper => Some(&b" Application/JSON "[..]),
            ContentType::JsonRpc => Some(&b"application/json-rpc"[..]),
            ContentType::PlusJson => Some(&b"application/vnd.mcp+json;v=1"[..]),
            ContentType::TextPlain => Some(&b"text/plain"[..]),
            ContentType::FormUrlEncoded => Some(&b"application/x-www-form-urlencoded"[..]),
            ContentType::OctetStream => Some(&b"application/octet-stream"[..]),
            ContentType::Missing => None,
            ContentType::Raw(b) => Some(b.as_slice()),
        };
        let is_json = content_type.is_some_and(mcp_ratelimit::flow::is_json);
        if let Some(ct) = content_type {
            headers.insert("content-type".to_owned(), ct.to_vec());
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
                headers.insert(name.to_owned(), header_bytes(v));
            }
        };
        put("mcp-protocol-version", &input.protocol_version);
        put("mcp-method", &input.mcp_method);
        put("mcp-name", &input.mcp_name);
        put("mcp-param-toolname", &input.param_tool_name);
        put("mcp-param-inner", &input.param_tool_name);
        put("mcp-param-region", &input.param_region);
        put("mcp-param-params", &input.param_parameters);
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
                ContentLength::NearCap(d) => near(max, *d).to_string().into_bytes(),
            };
            declared_too_large = std::str::from_utf8(&text)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .is_some_and(|n| n > max as u64);
            headers.insert("content-length".to_owned(), text);
        }
        let repeated = REPEATABLE
            .iter()
            .enumerate()
            .filter(|(i, n)| input.repeated & (1 << i) != 0 && headers.contains_key(**n))
            .map(|(_, n)| *n)
            .collect();
        Request {
            headers,
            repeated,
            metadata_sub: input.metadata_sub.clone(),
            body,
            end_at_headers: input.end_at_headers,
            is_post,
            is_json,
            compressed,
            declared_too_large,
        }
    }

    /// The same request with a JSON content type.
    pub fn as_json(&self) -> Request {
        let mut twin = self.clone();
        twin.headers
            .insert("content-type".to_owned(), b"application/json".to_vec());
        twin.is_json = true;
        twin
    }

    /// A POST of another content type whose body the filter sniffs.
    pub fn sniffed(&self, cfg: &Config) -> bool {
        self.is_post && !self.is_json && cfg.sniff_bodies && !self.end_at_headers
    }

    /// The first byte that is not whitespace, and its offset.
    pub fn first_byte(&self) -> Option<(usize, u8)> {
        self.body
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .map(|i| (i, self.body[i]))
    }

    /// The body starts like JSON (an object or an array).
    pub fn json_shaped(&self) -> bool {
        matches!(self.first_byte(), Some((_, b'{' | b'[')))
    }

    /// Whether the routing-header rule refuses this request at its headers:
    /// an MCP header the filter reads is repeated.
    pub fn repeats_mcp_header(&self, cfg: &Config) -> bool {
        let reads_routing = cfg.validate_mcp_headers || cfg.header_fast_path;
        let present = |n: &str| self.headers.contains_key(n);
        let routing = reads_routing
            && (present("mcp-method")
                || present("mcp-name")
                || cfg.param_headers.iter().any(|p| present(&p.header)));
        let may_repeat = routing || (cfg.header_fast_path && present("mcp-protocol-version"));
        may_repeat
            && cfg
                .mcp_header_names
                .iter()
                .any(|n| self.repeated.contains(&n.as_str()))
    }
}

/// `max + delta`, at least 0.
fn near(max: usize, delta: i8) -> usize {
    max.saturating_add_signed(isize::from(delta))
}

fn padding(p: &Padding, max: usize) -> Vec<u8> {
    const WS: &[u8] = b" \n\t\r  ";
    let (len, extra) = match p {
        Padding::Few(n) => (usize::from(n % 8), n & 0x80 != 0),
        Padding::Many(n) => (usize::from(*n), false),
        Padding::NearCap(d) => (near(max, *d).min(1 << 16), false),
        Padding::FormFeeds(n) => return vec![0x0c; usize::from(*n)],
    };
    let mut out: Vec<u8> = (0..len).map(|i| WS[i % WS.len()]).collect();
    if extra {
        out.extend_from_slice(b"\r\n\t");
    }
    out
}

pub fn header_bytes(v: &HeaderValue) -> Vec<u8> {
    match v {
        HeaderValue::Plain(w) => w.text().as_bytes().to_vec(),
        HeaderValue::Base64(w) => {
            format!("=?base64?{}?=", base64(w.text().as_bytes())).into_bytes()
        }
        HeaderValue::Raw(b) => b.clone(),
        HeaderValue::Number(i) => number(*i).as_bytes().to_vec(),
    }
}

pub fn base64(bytes: &[u8]) -> String {
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

// ---------------------------------------------------------------------------
// Bodies.

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

fn spell(name: &str, spelling: Spelling) -> String {
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

type Members = Vec<(String, String)>;

fn object(mut members: Members, rotate: u8, escape: bool) -> String {
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
        ArgValue::Number(i) => number(*i).to_owned(),
    }
}

const PROTOCOL_VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

fn msg_json(m: &Msg) -> String {
    let e = m.escape;
    // The extra members of each level, spelled as asked.
    let extras = |level: Level| -> Members {
        m.extras
            .iter()
            .filter(|x| x.level == level)
            .map(|x| {
                let names = level.members();
                let name = names[usize::from(x.member) % names.len()];
                let value = match &x.value {
                    ExtraValue::Word(w) => json_str(w.text(), e),
                    ExtraValue::Meta(w) => object(
                        vec![(PROTOCOL_VERSION_META.to_owned(), json_str(w.text(), e))],
                        0,
                        e,
                    ),
                    ExtraValue::Number(i) => number(*i).to_owned(),
                };
                (spell(name, x.spelling), value)
            })
            .collect()
    };
    let has = |level: Level| m.extras.iter().any(|x| x.level == level);

    let mut parameters = Members::new();
    let mut args = Members::new();
    if let Some(a) = &m.arguments {
        if let Some(t) = &a.tool_name {
            args.push(("tool_name".to_owned(), arg_value(t, e)));
        }
        if let Some(r) = &a.region {
            args.push(("region".to_owned(), arg_value(r, e)));
        }
        if let Some(t) = &a.parameters_tool_name {
            parameters.push(("tool_name".to_owned(), arg_value(t, e)));
        }
        if a.parameters_not_object {
            args.push(("parameters".to_owned(), "7".to_owned()));
        }
    }
    parameters.extend(extras(Level::Parameters));
    let not_object = m
        .arguments
        .as_ref()
        .is_some_and(|a| a.parameters_not_object);
    if !parameters.is_empty() && !not_object {
        args.push(("parameters".to_owned(), object(parameters, m.rotate / 5, e)));
    }
    args.extend(extras(Level::Arguments));

    let mut params = Members::new();
    if let Some(n) = &m.name {
        params.push(("name".to_owned(), json_str(n.text(), e)));
    }
    if let Some(u) = &m.uri {
        params.push(("uri".to_owned(), json_str(u.text(), e)));
    }
    if m.arguments.is_some() || !args.is_empty() {
        params.push(("arguments".to_owned(), object(args, m.rotate, e)));
    }
    if m.meta_version.is_some() || has(Level::Meta) {
        let mut meta = Members::new();
        if let Some(v) = &m.meta_version {
            meta.push((PROTOCOL_VERSION_META.to_owned(), json_str(v.text(), e)));
        }
        meta.extend(extras(Level::Meta));
        params.push(("_meta".to_owned(), object(meta, m.rotate / 11, e)));
    }
    params.extend(extras(Level::Params));

    let mut top = Members::new();
    match &m.jsonrpc {
        Jsonrpc::V2 => top.push(("jsonrpc".to_owned(), "\"2.0\"".to_owned())),
        Jsonrpc::Absent => {}
        Jsonrpc::Str(w) => top.push(("jsonrpc".to_owned(), json_str(w.text(), e))),
        Jsonrpc::Number => top.push(("jsonrpc".to_owned(), "2.0".to_owned())),
        Jsonrpc::Null => top.push(("jsonrpc".to_owned(), "null".to_owned())),
    }
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
    top.extend(extras(Level::Top));
    object(top, m.rotate / 7, e)
}

pub fn body_bytes(b: &BodyGen) -> Vec<u8> {
    match b {
        BodyGen::Raw(bytes) => bytes.clone(),
        BodyGen::Single(m) => msg_json(m).into_bytes(),
        BodyGen::Batch(list) => {
            let parts: Vec<String> = list.iter().map(msg_json).collect();
            format!("[{}]", parts.join(",")).into_bytes()
        }
    }
}

// ---------------------------------------------------------------------------
// The service's reply.

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
pub fn rls_reply(r: &RlsReply) -> (u32, Option<Vec<u8>>) {
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
