//! The per-request state machine. It sees the host only through [`Host`],
//! decides, and returns a [`Step`] that the glue in `host.rs` carries out.

use std::borrow::Cow;
use std::rc::Rc;

use crate::config::{Config, McpField, Source};
use crate::jsonrpc::{self, Body, ParseError, Target};
use crate::mcp_headers::{self, McpHeaders};
use crate::reply::{self, Ids, LocalReply};
use crate::rls::{self, Descriptor, Headers, RlsError, Verdict};

/// What the flow needs from the host, besides the body bytes.
pub trait Host {
    /// A request header's value (names are lowercase).
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// A value of Envoy dynamic metadata: filter namespace, then path.
    fn metadata(&self, namespace: &str, path: &[String]) -> Option<Vec<u8>>;
    /// Increments a counter.
    fn count(&self, counter: Counter);
    /// Whether any of these request headers (lowercase) is given more than
    /// once.
    fn any_repeated(&self, names: &[String]) -> bool;
}

/// The filter's counters (Envoy stats `wasmcustom.mcp_ratelimit.<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Bodies buffered and parsed.
    Inspected,
    /// Calls made to the rate-limit service.
    Checked,
    /// The service answered OK.
    Ok,
    /// The service answered OVER_LIMIT (the request was denied).
    OverLimit,
    /// The call failed or the reply was unusable.
    Error,
    /// An error let the request through (`failure_mode_deny: false`).
    FailureModeAllowed,
    /// Bodies refused for exceeding `max_body_bytes`.
    BodyTooLarge,
    /// Bodies refused as not JSON or not acceptable JSON-RPC.
    ParseError,
    /// Requests refused because MCP headers and body disagree (-32020).
    HeaderMismatch,
    /// Requests judged by their MCP 2026-07-28 headers alone.
    FastPath,
}

impl Counter {
    /// Every counter, in a fixed order (their index in [`Counter::ALL`]).
    pub const ALL: [Counter; 10] = [
        Counter::Inspected,
        Counter::Checked,
        Counter::Ok,
        Counter::OverLimit,
        Counter::Error,
        Counter::FailureModeAllowed,
        Counter::BodyTooLarge,
        Counter::ParseError,
        Counter::HeaderMismatch,
        Counter::FastPath,
    ];

    /// The stat name.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Inspected => "mcp_ratelimit.inspected",
            Counter::Checked => "mcp_ratelimit.checked",
            Counter::Ok => "mcp_ratelimit.ok",
            Counter::OverLimit => "mcp_ratelimit.over_limit",
            Counter::Error => "mcp_ratelimit.error",
            Counter::FailureModeAllowed => "mcp_ratelimit.failure_mode_allowed",
            Counter::BodyTooLarge => "mcp_ratelimit.body_too_large",
            Counter::ParseError => "mcp_ratelimit.parse_error",
            Counter::HeaderMismatch => "mcp_ratelimit.header_mismatch",
            Counter::FastPath => "mcp_ratelimit.fast_path",
        }
    }
}

/// What the glue must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Let the request go on, after adding these request headers.
    Continue(Headers),
    /// Hold the request (keep buffering, or wait for the service).
    Pause,
    /// Read the buffered body (this many bytes) and call
    /// [`Flow::on_body`].
    ReadBody(usize),
    /// Call the rate-limit service with this `RateLimitRequest`, then report
    /// the outcome with [`Flow::on_dispatched`] or
    /// [`Flow::on_dispatch_failed`].
    Dispatch(Vec<u8>),
    /// Answer the client with this reply; the request goes no further.
    Reply(LocalReply),
}

impl Step {
    fn go() -> Step {
        Step::Continue(Vec::new())
    }
}

/// Where a request is.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Headers not seen yet.
    Start,
    /// Not an MCP JSON POST: nothing to do.
    Passthrough,
    /// A POST without a JSON content type: waiting for the first body
    /// bytes to tell whether it is JSON.
    Sniffing,
    /// Waiting for the end of the body.
    Buffering { size: usize },
    /// Descriptors sent; waiting for the token. `ids` is `None` on the
    /// header fast path, where the body has not been read.
    Dispatching { ids: Option<Ids> },
    /// Waiting for the service's reply to `token`.
    AwaitingRls { token: u32, ids: Option<Ids> },
    /// Denied on the fast path: waiting for the body, to answer with its id.
    Denying { reply: Pending },
    /// Let through; headers to add to the response.
    Allowed { response_headers: Headers },
    /// Answered locally.
    Responded,
}

/// A denial decided before the request's ids are known.
#[derive(Debug, PartialEq, Eq)]
enum Pending {
    OverLimit { retry_after: u64, headers: Headers },
    Failure,
}

/// One request's journey through the filter.
pub struct Flow {
    cfg: Rc<Config>,
    state: State,
    /// The MCP headers, read with the request headers.
    mcp: McpHeaders,
    /// Body bytes buffered so far, and whether the body has ended.
    body_size: usize,
    body_done: bool,
}

impl Flow {
    pub fn new(cfg: Rc<Config>) -> Self {
        Flow {
            cfg,
            state: State::Start,
            mcp: McpHeaders::default(),
            body_size: 0,
            body_done: false,
        }
    }

    /// Request headers arrived.
    pub fn on_request_headers(&mut self, end_of_stream: bool, host: &impl Host) -> Step {
        let is_post = host.request_header(":method").is_some_and(|m| m == b"POST");
        if !is_post {
            self.state = State::Passthrough;
            return Step::go();
        }
        let is_json = host
            .request_header("content-type")
            .is_some_and(|ct| is_json(&ct));
        if !is_json && (!self.cfg.sniff_bodies || end_of_stream) {
            self.state = State::Passthrough;
            return Step::go();
        }
        // A compressed body cannot be judged: refuse it rather than let it
        // through unread.
        if let Some(encoding) = host.request_header("content-encoding") {
            if !is_identity(&encoding) {
                host.count(Counter::ParseError);
                self.state = State::Responded;
                return Step::Reply(reply::unsupported_encoding());
            }
        }
        self.body_done = end_of_stream;
        if !is_json {
            // Another content type: judged like JSON if its body starts
            // like JSON, passed untouched otherwise.
            self.state = State::Sniffing;
            return self.hold();
        }
        self.mcp.protocol_version = host.request_header(mcp_headers::PROTOCOL_VERSION);
        if self.cfg.validate_mcp_headers || self.cfg.header_fast_path {
            self.mcp = McpHeaders {
                protocol_version: self.mcp.protocol_version.take(),
                session_id: None,
                method: host.request_header(mcp_headers::METHOD),
                name: host.request_header(mcp_headers::NAME),
                params: self
                    .cfg
                    .param_headers
                    .iter()
                    .map(|p| host.request_header(&p.header))
                    .collect(),
            };
            // Components could read different values of a repeated routing
            // header (Envoy gives the filter the first one): refuse it.
            let may_repeat = self.mcp.has_routing_headers()
                || (self.cfg.header_fast_path && self.mcp.protocol_version.is_some());
            if may_repeat && host.any_repeated(&self.cfg.mcp_header_names) {
                host.count(Counter::HeaderMismatch);
                self.state = State::Responded;
                return Step::Reply(reply::header_mismatch(
                    None,
                    "an MCP header is given more than once",
                ));
            }
            // A request without a body is not a valid MCP message: leave it
            // to the body path, which refuses it.
            if self.cfg.header_fast_path && !end_of_stream {
                if let Some(step) = self.fast_path(host) {
                    return step;
                }
            }
        }
        if let Some(len) = host.request_header("content-length") {
            let declared = std::str::from_utf8(&len)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.cfg.max_body_bytes as u64) {
                return self.reply_too_large(host);
            }
        }
        self.state = State::Buffering { size: 0 };
        if end_of_stream {
            Step::ReadBody(0)
        } else {
            self.hold()
        }
    }

    /// What the header callback answers while the body is awaited.
    fn hold(&self) -> Step {
        if self.cfg.hold_headers {
            Step::Pause
        } else {
            // The body callbacks still hold the request; a buffer filter
            // after this one keeps the headers from the upstream.
            Step::go()
        }
    }

    /// Judges an MCP 2026-07-28 request by its routing headers, when they
    /// name everything the descriptors need; `None` falls back to the body.
    fn fast_path(&mut self, host: &impl Host) -> Option<Step> {
        if !self.mcp.is_modern() {
            return None;
        }
        let method = mcp_headers::decode_value(self.mcp.method.as_deref()?).ok()?;
        let name = match &self.mcp.name {
            Some(raw) => Some(mcp_headers::decode_value(raw).ok()?),
            None => None,
        };
        let target = match method.as_ref() {
            "tools/call" => {
                let name = name.clone()?;
                if self.cfg.meta_tools.iter().any(|m| *m == name) {
                    let slot = self.cfg.inner_tool_header(&name)?;
                    let inner = self.mcp.params.get(slot)?.as_deref()?;
                    let inner = mcp_headers::decode_value(inner).ok()?;
                    if inner.is_empty() {
                        return None;
                    }
                    Some(Target::Tool(Cow::Owned(inner.into_owned())))
                } else {
                    Some(Target::Tool(name))
                }
            }
            "prompts/get" => Some(Target::Prompt(name.clone()?)),
            "resources/read" => Some(Target::Resource(name.clone()?)),
            _ => None,
        };
        let req = jsonrpc::Request::from_headers(method, name, target);
        host.count(Counter::FastPath);
        let body = Body::Single(req);
        let descriptors = build_descriptors(&self.cfg, &body, &self.mcp, host);
        if descriptors.is_empty() {
            self.state = State::Allowed {
                response_headers: Vec::new(),
            };
            return Some(Step::go());
        }
        let payload = rls::encode_request(&self.cfg.encoded_domain, &descriptors);
        self.state = State::Dispatching { ids: None };
        Some(Step::Dispatch(payload))
    }

    /// A body chunk arrived; `size` is the total buffered so far.
    pub fn on_request_body(&mut self, size: usize, end_of_stream: bool, host: &impl Host) -> Step {
        self.body_size = size;
        self.body_done |= end_of_stream;
        match self.state {
            State::Denying { .. } if end_of_stream => Step::ReadBody(size),
            // Only the first bytes of an oversized body decide.
            State::Sniffing => Step::ReadBody(size.min(self.cfg.max_body_bytes)),
            State::Buffering { .. } => {
                if size > self.cfg.max_body_bytes {
                    return self.reply_too_large(host);
                }
                self.state = State::Buffering { size };
                if end_of_stream {
                    Step::ReadBody(size)
                } else {
                    Step::Pause
                }
            }
            State::Passthrough | State::Allowed { .. } | State::Start => Step::go(),
            State::Dispatching { .. }
            | State::AwaitingRls { .. }
            | State::Denying { .. }
            | State::Responded => Step::Pause,
        }
    }

    /// Request trailers arrived: they end the body.
    pub fn on_request_trailers(&mut self) -> Step {
        self.body_done = true;
        match self.state {
            State::Buffering { size } => Step::ReadBody(size),
            State::Denying { .. } | State::Sniffing => Step::ReadBody(self.body_size),
            State::Passthrough | State::Allowed { .. } | State::Start => Step::go(),
            State::Dispatching { .. } | State::AwaitingRls { .. } | State::Responded => Step::Pause,
        }
    }

    /// The whole body, as asked for by [`Step::ReadBody`].
    pub fn on_body(&mut self, body: &[u8], host: &impl Host) -> Step {
        match std::mem::replace(&mut self.state, State::Responded) {
            State::Buffering { .. } => {}
            State::Denying { reply } => return Step::Reply(self.pending_reply(reply, body)),
            State::Sniffing => match body.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{' | b'[') => {
                    // Only the first bytes were read: a JSON-shaped body
                    // over the cap is refused, ended or not.
                    if self.body_size > self.cfg.max_body_bytes {
                        return self.reply_too_large(host);
                    }
                    if !self.body_done {
                        self.state = State::Buffering {
                            size: self.body_size,
                        };
                        return Step::Pause;
                    }
                    // The whole body is here: judge it now.
                }
                None if !self.body_done => {
                    self.state = State::Sniffing;
                    return Step::Pause;
                }
                _ => {
                    self.state = State::Passthrough;
                    return Step::go();
                }
            },
            other => {
                self.state = other;
                return Step::Pause;
            }
        }
        if body.len() > self.cfg.max_body_bytes {
            return self.reply_too_large(host);
        }
        let parsed = match jsonrpc::parse(body, &self.cfg.spec()) {
            Ok(parsed) => parsed,
            Err(e) => {
                host.count(Counter::ParseError);
                let reply = match e {
                    ParseError::Syntax => {
                        reply::bad_request(reply::PARSE_ERROR, None, "body is not valid JSON")
                    }
                    ParseError::InvalidRequest { id, reason } => {
                        reply::bad_request(reply::INVALID_REQUEST, id, reason)
                    }
                    ParseError::InvalidParams { id, reason } => {
                        reply::bad_request(reply::INVALID_PARAMS, id, reason)
                    }
                };
                self.state = State::Responded;
                return Step::Reply(reply);
            }
        };
        host.count(Counter::Inspected);
        if self.cfg.validate_mcp_headers {
            if let Err(m) = mcp_headers::check(&self.mcp, &parsed, &self.cfg.param_headers) {
                host.count(Counter::HeaderMismatch);
                let id = match &parsed {
                    Body::Single(r) => r.id.map(|i| i.get()),
                    Body::Batch(_) => None,
                };
                return Step::Reply(reply::header_mismatch(id, m.reason));
            }
        }
        if matches!(parsed, Body::Batch(_)) {
            let refused = if self.cfg.refuse_batches {
                Some("JSON-RPC batches are not accepted here")
            } else if !self.mcp.allows_batches() {
                Some("JSON-RPC batches are not allowed in this MCP protocol version")
            } else {
                None
            };
            if let Some(reason) = refused {
                host.count(Counter::ParseError);
                return Step::Reply(reply::bad_request(reply::INVALID_REQUEST, None, reason));
            }
        }
        let descriptors = build_descriptors(&self.cfg, &parsed, &self.mcp, host);
        if descriptors.is_empty() {
            self.state = State::Allowed {
                response_headers: Vec::new(),
            };
            return Step::go();
        }
        let payload = rls::encode_request(&self.cfg.encoded_domain, &descriptors);
        let ids = match &parsed {
            Body::Single(r) => Ids::Single(r.id.map(|i| i.get().into())),
            Body::Batch(list) => Ids::Batch(
                list.iter()
                    .filter_map(|r| r.id.map(|i| i.get().into()))
                    .collect(),
            ),
        };
        self.state = State::Dispatching { ids: Some(ids) };
        Step::Dispatch(payload)
    }

    /// Builds a denial decided on the fast path, reading the ids from the
    /// body (best effort: a body that does not parse gets none).
    fn pending_reply(&self, pending: Pending, body: &[u8]) -> LocalReply {
        let ids = match jsonrpc::parse(body, &self.cfg.spec()) {
            Ok(Body::Single(r)) => Ids::Single(r.id.map(|i| i.get().into())),
            Ok(Body::Batch(list)) => Ids::Batch(
                list.iter()
                    .filter_map(|r| r.id.map(|i| i.get().into()))
                    .collect(),
            ),
            Err(_) => Ids::Single(None),
        };
        match pending {
            Pending::OverLimit {
                retry_after,
                headers,
            } => reply::over_limit(&self.cfg.over_limit, &ids, retry_after, headers),
            Pending::Failure => reply::rls_failure(&self.cfg.rls_failure, &ids),
        }
    }

    /// Answers with `pending` once the body's ids can be read.
    fn deny_later(&mut self, reply: Pending) -> Step {
        self.state = State::Denying { reply };
        if self.body_done {
            Step::ReadBody(self.body_size)
        } else {
            Step::Pause
        }
    }

    /// The call was dispatched; its reply will carry `token`.
    pub fn on_dispatched(&mut self, token: u32, host: &impl Host) {
        host.count(Counter::Checked);
        if let State::Dispatching { ids } = std::mem::replace(&mut self.state, State::Responded) {
            self.state = State::AwaitingRls { token, ids };
        }
    }

    /// The host refused to dispatch the call (e.g. unknown cluster).
    pub fn on_dispatch_failed(&mut self, host: &impl Host) -> Step {
        host.count(Counter::Checked);
        match std::mem::replace(&mut self.state, State::Responded) {
            State::Dispatching { ids } => self.failed(ids, host),
            other => {
                self.state = other;
                Step::Pause
            }
        }
    }

    /// The service answered (`grpc_status` 0 with `body`) or the call failed.
    pub fn on_rls_response(
        &mut self,
        token: u32,
        grpc_status: u32,
        body: Option<&[u8]>,
        host: &impl Host,
    ) -> Step {
        let ids = match std::mem::replace(&mut self.state, State::Responded) {
            State::AwaitingRls { token: t, ids } if t == token => ids,
            other => {
                // Not the call we wait for: ignore it.
                self.state = other;
                return Step::Pause;
            }
        };
        let verdict = if grpc_status != 0 {
            Err(RlsError::Grpc(grpc_status))
        } else {
            rls::decode_response(body.unwrap_or(&[]))
        };
        match verdict {
            Ok(Verdict::Ok {
                request_headers,
                response_headers,
            }) => {
                host.count(Counter::Ok);
                self.state = State::Allowed { response_headers };
                Step::Continue(request_headers)
            }
            Ok(Verdict::OverLimit {
                retry_after,
                response_headers,
            }) => {
                host.count(Counter::OverLimit);
                match ids {
                    Some(ids) => Step::Reply(reply::over_limit(
                        &self.cfg.over_limit,
                        &ids,
                        retry_after,
                        response_headers,
                    )),
                    None => self.deny_later(Pending::OverLimit {
                        retry_after,
                        headers: response_headers,
                    }),
                }
            }
            Err(e) => {
                log::debug!("rate-limit service error: {e:?}");
                self.failed(ids, host)
            }
        }
    }

    /// Headers to add to the response of an allowed request.
    pub fn response_headers(&mut self) -> Headers {
        match &mut self.state {
            State::Allowed { response_headers } => std::mem::take(response_headers),
            _ => Vec::new(),
        }
    }

    /// Whether the filter has answered the request itself.
    pub fn replied(&self) -> bool {
        self.state == State::Responded
    }

    /// Whether the request is waiting for the rate-limit service.
    pub fn awaiting(&self) -> Option<u32> {
        match self.state {
            State::AwaitingRls { token, .. } => Some(token),
            _ => None,
        }
    }

    fn failed(&mut self, ids: Option<Ids>, host: &impl Host) -> Step {
        host.count(Counter::Error);
        if self.cfg.failure_mode_deny {
            self.state = State::Responded;
            match ids {
                Some(ids) => Step::Reply(reply::rls_failure(&self.cfg.rls_failure, &ids)),
                None => self.deny_later(Pending::Failure),
            }
        } else {
            host.count(Counter::FailureModeAllowed);
            self.state = State::Allowed {
                response_headers: Vec::new(),
            };
            Step::go()
        }
    }

    fn reply_too_large(&mut self, host: &impl Host) -> Step {
        host.count(Counter::BodyTooLarge);
        self.state = State::Responded;
        Step::Reply(reply::too_large(self.cfg.max_body_bytes))
    }
}

/// A JSON media type (`application/json`, `application/json-rpc`,
/// `application/*+json`), with any parameters, in any case.
pub fn is_json(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .to_ascii_lowercase();
    essence == b"application/json"
        || essence == b"application/json-rpc"
        || (essence.starts_with(b"application/") && essence.ends_with(b"+json"))
}

/// `content-encoding` that leaves the body as sent (empty or `identity`).
fn is_identity(encoding: &[u8]) -> bool {
    encoding.split(|b| *b == b',').all(|e| {
        let e = e.trim_ascii();
        e.is_empty() || e.eq_ignore_ascii_case(b"identity")
    })
}

/// The descriptors for a body: each configured descriptor whose sources are
/// all present, for each message; identical ones merged into one with their
/// hits added up.
fn build_descriptors<'a>(
    cfg: &'a Config,
    body: &'a Body<'a>,
    mcp: &McpHeaders,
    host: &impl Host,
) -> Vec<Descriptor<'a>> {
    let mut out: Vec<Descriptor<'a>> = Vec::new();
    // Header and metadata values are the same for every message of a batch:
    // fetch each once, lazily.
    let mut fetched: Vec<(usize, usize, Option<Cow<'a, str>>)> = Vec::new();
    for req in body.requests() {
        'descriptor: for (i, d) in cfg.descriptors.iter().enumerate() {
            let mut entries = Vec::with_capacity(d.len());
            for (j, e) in d.iter().enumerate() {
                let value: Option<Cow<'a, str>> = match &e.source {
                    Source::Literal(v) => Some(Cow::Borrowed(v.as_str())),
                    Source::Mcp(McpField::SessionId) => header_value(mcp_headers::SESSION_ID, host),
                    Source::Mcp(McpField::ProtocolVersion) => match &mcp.protocol_version {
                        Some(v) => Some(Cow::Owned(String::from_utf8_lossy(v).into_owned())),
                        None => header_value(mcp_headers::PROTOCOL_VERSION, host),
                    },
                    Source::Mcp(field) => mcp_value(*field, req),
                    Source::Header(_) | Source::Metadata { .. } => {
                        match fetched.iter().find(|(a, b, _)| *a == i && *b == j) {
                            Some((_, _, v)) => v.clone(),
                            None => {
                                let v = external_value(&e.source, host);
                                fetched.push((i, j, v.clone()));
                                v
                            }
                        }
                    }
                };
                match value {
                    Some(v) => entries.push((e.key.as_str(), v)),
                    None => continue 'descriptor,
                }
            }
            match out.iter_mut().find(|o| o.entries == entries) {
                Some(existing) => existing.hits += 1,
                None => out.push(Descriptor { entries, hits: 1 }),
            }
        }
    }
    out
}

fn mcp_value<'a>(field: McpField, req: &'a jsonrpc::Request<'a>) -> Option<Cow<'a, str>> {
    let borrow = |c: &'a Cow<'a, str>| Some(Cow::Borrowed(c.as_ref()));
    match (field, &req.target) {
        (McpField::Method, _) => req.method.as_ref().and_then(borrow),
        (McpField::Tool, Some(Target::Tool(t))) => borrow(t),
        (McpField::Prompt, Some(Target::Prompt(p))) => borrow(p),
        (McpField::Resource, Some(Target::Resource(r))) => borrow(r),
        _ => None,
    }
}

fn header_value<'a>(name: &str, host: &impl Host) -> Option<Cow<'a, str>> {
    let bytes = host.request_header(name)?;
    Some(Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()))
}

fn external_value<'a>(source: &Source, host: &impl Host) -> Option<Cow<'a, str>> {
    let bytes = match source {
        Source::Header(name) => host.request_header(name)?,
        Source::Metadata { namespace, path } => host.metadata(namespace, path)?,
        _ => return None,
    };
    // Lossy rather than skipped: a client must not dodge a limit by sending
    // bytes that are not UTF-8.
    Some(Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rls::pb;
    use prost::Message;
    use std::cell::RefCell;
    use std::collections::HashMap;

    #[derive(Default)]
    struct MockHost {
        headers: HashMap<String, Vec<u8>>,
        metadata: HashMap<String, Vec<u8>>,
        repeated: Vec<String>,
        counts: RefCell<HashMap<Counter, u64>>,
    }

    impl MockHost {
        fn post_json() -> Self {
            let mut h = MockHost::default();
            h.headers.insert(":method".into(), b"POST".to_vec());
            h.headers
                .insert("content-type".into(), b"application/json".to_vec());
            h
        }
        fn with(mut self, k: &str, v: &str) -> Self {
            self.headers.insert(k.into(), v.as_bytes().to_vec());
            self
        }
        fn count_of(&self, c: Counter) -> u64 {
            self.counts.borrow().get(&c).copied().unwrap_or(0)
        }
    }

    impl Host for MockHost {
        fn request_header(&self, name: &str) -> Option<Vec<u8>> {
            self.headers.get(name).cloned()
        }
        fn metadata(&self, namespace: &str, path: &[String]) -> Option<Vec<u8>> {
            self.metadata
                .get(&format!("{namespace}/{}", path.join("/")))
                .cloned()
        }
        fn count(&self, counter: Counter) {
            *self.counts.borrow_mut().entry(counter).or_default() += 1;
        }
        fn any_repeated(&self, names: &[String]) -> bool {
            names.iter().any(|n| self.repeated.contains(n))
        }
    }

    fn cfg(json: &str) -> Rc<Config> {
        Rc::new(Config::parse(json.as_bytes()).unwrap())
    }

    const BASIC: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit"}"#;

    fn call(tool: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#
        )
    }

    /// Drives headers + one body chunk; returns the step after the body.
    fn drive(flow: &mut Flow, host: &MockHost, body: &str) -> Step {
        assert_eq!(flow.on_request_headers(false, host), Step::Pause);
        match flow.on_request_body(body.len(), true, host) {
            Step::ReadBody(n) => {
                assert_eq!(n, body.len());
                flow.on_body(body.as_bytes(), host)
            }
            other => other,
        }
    }

    fn sent(step: &Step) -> pb::RateLimitRequest {
        match step {
            Step::Dispatch(p) => pb::RateLimitRequest::decode(p.as_slice()).unwrap(),
            other => panic!("expected a dispatch, got {other:?}"),
        }
    }

    fn entries(req: &pb::RateLimitRequest) -> Vec<Vec<(String, String)>> {
        req.descriptors
            .iter()
            .map(|d| {
                d.entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.clone()))
                    .collect()
            })
            .collect()
    }

    fn reply_bytes(code: i32, secs: i64) -> Vec<u8> {
        pb::RateLimitResponse {
            overall_code: code,
            statuses: vec![pb::DescriptorStatus {
                code,
                current_limit: None,
                limit_remaining: 0,
                duration_until_reset: Some(pb::Duration {
                    seconds: secs,
                    nanos: 0,
                }),
            }],
            response_headers_to_add: vec![],
            request_headers_to_add: vec![],
        }
        .encode_to_vec()
    }

    #[test]
    fn allowed_tool_call() {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(BASIC));
        let step = drive(&mut flow, &host, &call("search_docs"));
        let req = sent(&step);
        assert_eq!(req.domain, "mcp");
        assert_eq!(
            entries(&req),
            vec![vec![("tool".to_owned(), "search_docs".to_owned())]]
        );
        flow.on_dispatched(9, &host);
        assert_eq!(flow.awaiting(), Some(9));
        let step = flow.on_rls_response(9, 0, Some(&reply_bytes(rls::CODE_OK, 0)), &host);
        assert_eq!(step, Step::Continue(vec![]));
        assert_eq!(host.count_of(Counter::Inspected), 1);
        assert_eq!(host.count_of(Counter::Checked), 1);
        assert_eq!(host.count_of(Counter::Ok), 1);
    }

    #[test]
    fn over_limit_denies_with_json_rpc_error() {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(BASIC));
        let body = r#"{"jsonrpc":"2.0","id":"req-1","method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs"}}}"#;
        let req = sent(&drive(&mut flow, &host, body));
        assert_eq!(
            entries(&req),
            vec![vec![("tool".to_owned(), "search_docs".to_owned())]]
        );
        flow.on_dispatched(1, &host);
        let Step::Reply(r) =
            flow.on_rls_response(1, 0, Some(&reply_bytes(rls::CODE_OVER_LIMIT, 37)), &host)
        else {
            panic!()
        };
        assert_eq!(r.status, 429);
        assert_eq!(
            r.body,
            r#"{"jsonrpc":"2.0","id":"req-1","error":{"code":429,"message":"Rate limit exceeded","data":{"retryAfterSeconds":37}}}"#
        );
        assert!(r
            .headers
            .contains(&("retry-after".to_owned(), "37".to_owned())));
        assert_eq!(host.count_of(Counter::OverLimit), 1);
        assert_eq!(flow.response_headers(), vec![]);
    }

    #[test]
    fn non_tool_methods_make_no_call_under_the_default() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        ] {
            let host = MockHost::post_json();
            let mut flow = Flow::new(cfg(BASIC));
            assert_eq!(
                drive(&mut flow, &host, body),
                Step::Continue(vec![]),
                "{body}"
            );
            assert_eq!(host.count_of(Counter::Inspected), 1);
            assert_eq!(host.count_of(Counter::Checked), 0);
        }
    }

    #[test]
    fn only_posts_are_inspected() {
        let cases = [
            MockHost::default()
                .with(":method", "GET")
                .with("accept", "text/event-stream"),
            MockHost::default().with(":method", "DELETE"),
            MockHost::default()
                .with(":method", "post")
                .with("content-type", "application/json"),
        ];
        for host in cases {
            let mut flow = Flow::new(cfg(BASIC));
            assert_eq!(
                flow.on_request_headers(false, &host),
                Step::Continue(vec![])
            );
            assert_eq!(
                flow.on_request_body(10, true, &host),
                Step::Continue(vec![])
            );
        }
        // A POST without a body and without a JSON type has nothing to judge.
        let host = MockHost::default().with(":method", "POST");
        let mut flow = Flow::new(cfg(BASIC));
        assert_eq!(flow.on_request_headers(true, &host), Step::Continue(vec![]));
    }

    /// Drives a POST of another content type through the sniffing path.
    fn sniff(flow: &mut Flow, host: &MockHost, chunks: &[&str]) -> Step {
        assert_eq!(flow.on_request_headers(false, host), Step::Pause);
        let mut body = String::new();
        let mut step = Step::Pause;
        for (i, chunk) in chunks.iter().enumerate() {
            body.push_str(chunk);
            let last = i + 1 == chunks.len();
            step = match flow.on_request_body(body.len(), last, host) {
                Step::ReadBody(n) => flow.on_body(&body.as_bytes()[..n], host),
                other => other,
            };
            if step != Step::Pause {
                return step;
            }
        }
        step
    }

    #[test]
    fn json_shaped_bodies_of_other_types_are_judged_too() {
        for ct in [
            Some("text/plain"),
            None,
            Some("application/x-www-form-urlencoded"),
        ] {
            let mut host = MockHost::default().with(":method", "POST");
            if let Some(ct) = ct {
                host = host.with("content-type", ct);
            }
            // JSON-shaped: limited like any MCP request, even when the
            // first chunk is only whitespace.
            let mut flow = Flow::new(cfg(BASIC));
            let body = call("search_docs");
            let req = sent(&sniff(
                &mut flow,
                &host,
                &["  \n", &body[..10], &body[10..]],
            ));
            assert_eq!(
                entries(&req),
                vec![vec![("tool".to_owned(), "search_docs".to_owned())]],
                "{ct:?}"
            );
            // Not JSON-shaped: passed untouched after the first bytes.
            let mut flow = Flow::new(cfg(BASIC));
            assert_eq!(
                sniff(&mut flow, &host, &["a=1&b=2", "..."]),
                Step::Continue(vec![])
            );
            assert_eq!(
                flow.on_request_body(100, true, &host),
                Step::Continue(vec![])
            );
            // Malformed JSON-shaped bodies are refused, not passed.
            let mut flow = Flow::new(cfg(BASIC));
            let Step::Reply(r) = sniff(&mut flow, &host, &["{\"method\":"]) else {
                panic!()
            };
            assert_eq!(r.status, 400);
        }
        // Turned off: other types pass without being read.
        let host = MockHost::default()
            .with(":method", "POST")
            .with("content-type", "text/plain");
        let mut flow = Flow::new(cfg(
            r#"{"domain":"mcp","rls_cluster":"r","sniff_bodies":false}"#,
        ));
        assert_eq!(
            flow.on_request_headers(false, &host),
            Step::Continue(vec![])
        );
        assert_eq!(
            flow.on_request_body(10, true, &host),
            Step::Continue(vec![])
        );
    }

    #[test]
    fn oversized_bodies_of_other_types_are_decided_by_their_start() {
        let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":16}"#);
        let host = MockHost::default()
            .with(":method", "POST")
            .with("content-type", "application/octet-stream");
        let mut flow = Flow::new(c.clone());
        assert_eq!(
            sniff(
                &mut flow,
                &host,
                &["\x00binary upload, much larger than the cap"]
            ),
            Step::Continue(vec![])
        );
        let mut flow = Flow::new(c);
        let Step::Reply(r) = sniff(
            &mut flow,
            &host,
            &["{\"jsonrpc\":\"2.0\",\"method\":\"tools/call\"", "}"],
        ) else {
            panic!()
        };
        assert_eq!(r.status, 413);
    }

    #[test]
    fn oversized_json_shaped_body_in_one_chunk_is_refused() {
        // Its first max_body_bytes bytes alone could pass for a tools/list.
        let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":64}"#);
        let host = MockHost::default()
            .with(":method", "POST")
            .with("content-type", "text/plain");
        let mut body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_owned();
        body.push_str(&" ".repeat(64 - body.len()));
        body.push_str(
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search_docs"}}"#,
        );
        let mut flow = Flow::new(c);
        assert_eq!(flow.on_request_headers(false, &host), Step::Pause);
        assert_eq!(
            flow.on_request_body(body.len(), true, &host),
            Step::ReadBody(64)
        );
        let Step::Reply(r) = flow.on_body(&body.as_bytes()[..64], &host) else {
            panic!()
        };
        assert_eq!(r.status, 413);
    }

    #[test]
    fn compressed_bodies_are_refused() {
        for encoding in ["gzip", "br", "deflate", "identity, gzip", "GZIP"] {
            let host = MockHost::post_json().with("content-encoding", encoding);
            let mut flow = Flow::new(cfg(BASIC));
            let Step::Reply(r) = flow.on_request_headers(false, &host) else {
                panic!("{encoding}")
            };
            assert_eq!(r.status, 415);
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v["error"]["code"], -32600);
            assert_eq!(host.count_of(Counter::ParseError), 1);
        }
        for encoding in ["identity", "", "Identity"] {
            let host = MockHost::post_json().with("content-encoding", encoding);
            let mut flow = Flow::new(cfg(BASIC));
            assert_eq!(
                flow.on_request_headers(false, &host),
                Step::Pause,
                "{encoding}"
            );
        }
    }

    #[test]
    fn batches_can_be_refused() {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(
            r#"{"domain":"mcp","rls_cluster":"r","refuse_batches":true}"#,
        ));
        let Step::Reply(r) = drive(&mut flow, &host, &format!("[{}]", call("a"))) else {
            panic!()
        };
        assert_eq!(r.status, 400);
        assert!(r.body.contains("batches are not accepted"), "{}", r.body);
    }

    #[test]
    fn json_content_type_variants() {
        for ct in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;x=y",
            "application/json-rpc",
            "application/vnd.api+json",
        ] {
            assert!(is_json(ct.as_bytes()), "{ct}");
        }
        for ct in ["application/jsonx", "text/json", "text/plain", ""] {
            assert!(!is_json(ct.as_bytes()), "{ct}");
        }
    }

    #[test]
    fn headers_go_on_when_not_held() {
        let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","hold_headers":false}"#);
        let host = MockHost::post_json();
        let mut flow = Flow::new(c);
        assert_eq!(
            flow.on_request_headers(false, &host),
            Step::Continue(vec![])
        );
        assert_eq!(flow.on_request_body(10, false, &host), Step::Pause);
        assert_eq!(flow.on_request_body(20, true, &host), Step::ReadBody(20));
    }

    #[test]
    fn body_is_read_only_at_the_end() {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(BASIC));
        assert_eq!(flow.on_request_headers(false, &host), Step::Pause);
        assert_eq!(flow.on_request_body(10, false, &host), Step::Pause);
        assert_eq!(flow.on_request_body(20, false, &host), Step::Pause);
        assert_eq!(flow.on_request_body(30, true, &host), Step::ReadBody(30));
    }

    #[test]
    fn trailers_end_the_body() {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(BASIC));
        flow.on_request_headers(false, &host);
        assert_eq!(flow.on_request_body(42, false, &host), Step::Pause);
        assert_eq!(flow.on_request_trailers(), Step::ReadBody(42));
    }

    #[test]
    fn too_large_bodies_are_refused() {
        let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":100}"#);
        let host = MockHost::post_json();
        let mut flow = Flow::new(c.clone());
        flow.on_request_headers(false, &host);
        assert_eq!(flow.on_request_body(60, false, &host), Step::Pause);
        let Step::Reply(r) = flow.on_request_body(101, false, &host) else {
            panic!()
        };
        assert_eq!(r.status, 413);
        assert_eq!(flow.on_request_body(150, true, &host), Step::Pause);
        // Declared too large: refused at the headers, nothing buffered.
        let host = MockHost::post_json().with("content-length", "101");
        let mut flow = Flow::new(c);
        let Step::Reply(r) = flow.on_request_headers(false, &host) else {
            panic!()
        };
        assert_eq!(r.status, 413);
        assert_eq!(host.count_of(Counter::BodyTooLarge), 1);
    }

    #[test]
    fn malformed_bodies_get_json_rpc_errors() {
        let cases = [
            ("not json", 400, -32700),
            ("", 400, -32700),
            (r#"{"id":4,"method":"tools/call","params":{}}"#, 400, -32602),
            (
                r#"{"id":4,"method":"tools/call","method":"x","params":{"name":"a"}}"#,
                400,
                -32600,
            ),
        ];
        for (body, status, code) in cases {
            let host = MockHost::post_json();
            let mut flow = Flow::new(cfg(BASIC));
            let Step::Reply(r) = drive(&mut flow, &host, body) else {
                panic!("{body}")
            };
            assert_eq!(r.status, status);
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v["error"]["code"], code, "{body}");
            assert_eq!(host.count_of(Counter::ParseError), 1);
        }
    }

    #[test]
    fn empty_body_at_headers_end_is_read() {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(BASIC));
        assert_eq!(flow.on_request_headers(true, &host), Step::ReadBody(0));
        let Step::Reply(r) = flow.on_body(b"", &host) else {
            panic!()
        };
        assert_eq!(r.status, 400);
    }

    #[test]
    fn failure_mode_allow_and_deny() {
        for (deny, grpc, body) in [
            (false, 14, None),
            (true, 14, None),
            (false, 0, Some(&b"\xff\xff"[..])),
            (true, 0, Some(&b""[..])),
        ] {
            let c = cfg(&format!(
                r#"{{"domain":"mcp","rls_cluster":"r","failure_mode_deny":{deny}}}"#
            ));
            let host = MockHost::post_json();
            let mut flow = Flow::new(c);
            drive(&mut flow, &host, &call("a"));
            flow.on_dispatched(3, &host);
            let step = flow.on_rls_response(3, grpc, body, &host);
            assert_eq!(host.count_of(Counter::Error), 1);
            if deny {
                let Step::Reply(r) = step else { panic!() };
                assert_eq!(r.status, 503);
                assert_eq!(
                    r.body,
                    r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"Rate limit service unavailable"}}"#
                );
                assert_eq!(host.count_of(Counter::FailureModeAllowed), 0);
            } else {
                assert_eq!(step, Step::Continue(vec![]));
                assert_eq!(host.count_of(Counter::FailureModeAllowed), 1);
            }
        }
    }

    #[test]
    fn dispatch_failure_follows_the_failure_mode() {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(BASIC));
        drive(&mut flow, &host, &call("a"));
        assert_eq!(flow.on_dispatch_failed(&host), Step::Continue(vec![]));
        assert_eq!(host.count_of(Counter::FailureModeAllowed), 1);
    }

    #[test]
    fn replies_with_another_token_are_ignored() {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(BASIC));
        drive(&mut flow, &host, &call("a"));
        flow.on_dispatched(5, &host);
        assert_eq!(
            flow.on_rls_response(6, 0, Some(&reply_bytes(rls::CODE_OVER_LIMIT, 1)), &host),
            Step::Pause
        );
        assert_eq!(flow.awaiting(), Some(5));
        assert_eq!(host.count_of(Counter::OverLimit), 0);
    }

    #[test]
    fn ok_reply_headers_reach_request_and_response() {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(BASIC));
        drive(&mut flow, &host, &call("a"));
        flow.on_dispatched(1, &host);
        let bytes = pb::RateLimitResponse {
            overall_code: rls::CODE_OK,
            response_headers_to_add: vec![pb::HeaderValue {
                key: "x-ratelimit-remaining".into(),
                value: "3".into(),
                raw_value: vec![],
            }],
            request_headers_to_add: vec![pb::HeaderValue {
                key: "x-rl".into(),
                value: "ok".into(),
                raw_value: vec![],
            }],
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            flow.on_rls_response(1, 0, Some(&bytes), &host),
            Step::Continue(vec![("x-rl".into(), "ok".into())])
        );
        assert_eq!(
            flow.response_headers(),
            vec![("x-ratelimit-remaining".to_owned(), "3".to_owned())]
        );
    }

    #[test]
    fn descriptor_sources() {
        let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","descriptors":[
            [{"key":"user","header":"x-user"},{"key":"tool","mcp":"tool"}],
            [{"key":"sub","metadata":{"namespace":"jwt","path":["payload","sub"]}}],
            [{"key":"generic_key","value":"mcp"},{"key":"method","mcp":"method"}],
            [{"key":"prompt","mcp":"prompt"}]
        ]}"#);
        let mut host = MockHost::post_json().with("x-user", "alice");
        host.metadata
            .insert("jwt/payload/sub".into(), b"u-1".to_vec());
        let mut flow = Flow::new(c.clone());
        let req = sent(&drive(&mut flow, &host, &call("search_docs")));
        assert_eq!(
            entries(&req),
            vec![
                vec![
                    ("user".to_owned(), "alice".to_owned()),
                    ("tool".to_owned(), "search_docs".to_owned())
                ],
                vec![("sub".to_owned(), "u-1".to_owned())],
                vec![
                    ("generic_key".to_owned(), "mcp".to_owned()),
                    ("method".to_owned(), "tools/call".to_owned())
                ],
            ]
        );
        // Absent sources skip their descriptor only.
        let host = MockHost::post_json();
        let mut flow = Flow::new(c);
        let req = sent(&drive(
            &mut flow,
            &host,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        ));
        assert_eq!(
            entries(&req),
            vec![vec![
                ("generic_key".to_owned(), "mcp".to_owned()),
                ("method".to_owned(), "tools/list".to_owned())
            ]]
        );
    }

    #[test]
    fn non_utf8_header_values_still_count() {
        let c = cfg(
            r#"{"domain":"mcp","rls_cluster":"r","descriptors":[[{"key":"user","header":"x-user"}]]}"#,
        );
        let mut host = MockHost::post_json();
        host.headers.insert("x-user".into(), vec![b'a', 0xff]);
        let mut flow = Flow::new(c);
        let req = sent(&drive(&mut flow, &host, &call("t")));
        assert_eq!(
            entries(&req),
            vec![vec![("user".to_owned(), "a\u{fffd}".to_owned())]]
        );
    }

    #[test]
    fn batch_counts_each_call_in_one_request() {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(BASIC));
        let body = r#"[
            {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}},
            {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"a"}}},
            {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"b"}},
            {"jsonrpc":"2.0","method":"notifications/progress"}
        ]"#;
        let req = sent(&drive(&mut flow, &host, body));
        assert_eq!(req.descriptors.len(), 2);
        assert_eq!(req.descriptors[0].entries[0].value, "a");
        assert_eq!(
            req.descriptors[0].hits_addend,
            Some(pb::UInt64Value { value: 2 })
        );
        assert_eq!(req.descriptors[1].entries[0].value, "b");
        assert_eq!(req.descriptors[1].hits_addend, None);
        flow.on_dispatched(1, &host);
        let Step::Reply(r) =
            flow.on_rls_response(1, 0, Some(&reply_bytes(rls::CODE_OVER_LIMIT, 2)), &host)
        else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let ids: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].clone())
            .collect();
        assert_eq!(
            ids,
            vec![
                serde_json::json!(1),
                serde_json::json!(2),
                serde_json::json!(3)
            ]
        );
    }

    #[test]
    fn late_callbacks_after_a_reply_do_nothing() {
        let host = MockHost::post_json();
        let mut flow = Flow::new(cfg(BASIC));
        let Step::Reply(_) = drive(&mut flow, &host, "{") else {
            panic!()
        };
        assert_eq!(flow.on_request_body(5, true, &host), Step::Pause);
        assert_eq!(flow.on_request_trailers(), Step::Pause);
        assert_eq!(flow.on_rls_response(1, 0, None, &host), Step::Pause);
        assert_eq!(flow.response_headers(), vec![]);
    }

    const MODERN: &str = "2026-07-28";

    fn modern_call(host: MockHost, tool: &str) -> MockHost {
        host.with("mcp-protocol-version", MODERN)
            .with("mcp-method", "tools/call")
            .with("mcp-name", tool)
    }

    #[test]
    fn header_body_mismatch_is_refused_before_the_service() {
        let cases = [
            MockHost::post_json().with("mcp-method", "tools/list"),
            MockHost::post_json().with("mcp-name", "get_weather"),
            MockHost::post_json().with("mcp-name", "=?base64?not base64?="),
            MockHost::post_json()
                .with("mcp-protocol-version", MODERN)
                .with("mcp-method", "tools/call"),
        ];
        for host in cases {
            let mut flow = Flow::new(cfg(BASIC));
            let Step::Reply(r) = drive(&mut flow, &host, &call("search_docs")) else {
                panic!("{:?}", host.headers)
            };
            assert_eq!(r.status, 400);
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v["error"]["code"], -32020);
            assert_eq!(v["id"], 1);
            assert_eq!(host.count_of(Counter::HeaderMismatch), 1);
            assert_eq!(host.count_of(Counter::Checked), 0);
        }
    }

    #[test]
    fn repeated_routing_headers_are_refused() {
        let mut host = modern_call(MockHost::post_json(), "search_docs");
        host.repeated.push("mcp-name".into());
        let mut flow = Flow::new(cfg(BASIC));
        let Step::Reply(r) = flow.on_request_headers(false, &host) else {
            panic!()
        };
        assert_eq!(r.status, 400);
        assert!(r.body.contains("-32020"), "{}", r.body);
        assert_eq!(host.count_of(Counter::HeaderMismatch), 1);
    }

    #[test]
    fn matching_headers_are_fine_and_validation_can_be_turned_off() {
        let host = modern_call(MockHost::post_json(), "search_docs");
        let mut flow = Flow::new(cfg(BASIC));
        assert!(matches!(
            drive(&mut flow, &host, &call("search_docs")),
            Step::Dispatch(_)
        ));
        let host = MockHost::post_json().with("mcp-name", "other");
        let mut flow = Flow::new(cfg(
            r#"{"domain":"mcp","rls_cluster":"r","validate_mcp_headers":false}"#,
        ));
        assert!(matches!(
            drive(&mut flow, &host, &call("search_docs")),
            Step::Dispatch(_)
        ));
    }

    #[test]
    fn batches_follow_the_protocol_version() {
        let batch = format!("[{}]", call("a"));
        for (version, allowed) in [
            (None, true),
            (Some("2025-03-26"), true),
            (Some("2025-06-18"), false),
            (Some("2025-11-25"), false),
        ] {
            let mut host = MockHost::post_json();
            if let Some(v) = version {
                host = host.with("mcp-protocol-version", v);
            }
            let mut flow = Flow::new(cfg(BASIC));
            let step = drive(&mut flow, &host, &batch);
            assert_eq!(
                matches!(step, Step::Dispatch(_)),
                allowed,
                "{version:?}: {step:?}"
            );
        }
    }

    const FAST: &str = r#"{"domain":"mcp","rls_cluster":"r","max_body_bytes":64,"header_fast_path":true,
        "param_headers":[{"tool":"call_tool","argument":"tool_name","header":"ToolName"}]}"#;

    #[test]
    fn fast_path_calls_the_service_from_the_headers() {
        let host =
            modern_call(MockHost::post_json(), "search_docs").with("content-length", "100000");
        let mut flow = Flow::new(cfg(FAST));
        let step = flow.on_request_headers(false, &host);
        assert_eq!(
            entries(&sent(&step)),
            vec![vec![("tool".to_owned(), "search_docs".to_owned())]]
        );
        assert_eq!(host.count_of(Counter::FastPath), 1);
        flow.on_dispatched(4, &host);
        // The body is held, never read, while the service decides...
        assert_eq!(flow.on_request_body(50_000, false, &host), Step::Pause);
        let ok = reply_bytes(rls::CODE_OK, 0);
        assert_eq!(
            flow.on_rls_response(4, 0, Some(&ok), &host),
            Step::Continue(vec![])
        );
        // ...and then flows, whatever its size.
        assert_eq!(
            flow.on_request_body(100_000, true, &host),
            Step::Continue(vec![])
        );
        assert_eq!(host.count_of(Counter::Inspected), 0);
        assert_eq!(host.count_of(Counter::BodyTooLarge), 0);
    }

    #[test]
    fn fast_path_unwraps_the_meta_tool_from_its_param_header() {
        let host = modern_call(MockHost::post_json(), "call_tool")
            .with("mcp-param-toolname", "get_weather");
        let mut flow = Flow::new(cfg(FAST));
        let step = flow.on_request_headers(false, &host);
        assert_eq!(
            entries(&sent(&step)),
            vec![vec![("tool".to_owned(), "get_weather".to_owned())]]
        );
    }

    #[test]
    fn fast_path_falls_back_to_the_body() {
        let cases = [
            // Meta-tool without the header carrying its inner tool.
            modern_call(MockHost::post_json(), "call_tool"),
            // Older protocol version: headers are not validated upstream.
            MockHost::post_json()
                .with("mcp-protocol-version", "2025-11-25")
                .with("mcp-method", "tools/call")
                .with("mcp-name", "a"),
            // No routing headers.
            MockHost::post_json().with("mcp-protocol-version", MODERN),
            // tools/call without Mcp-Name.
            MockHost::post_json()
                .with("mcp-protocol-version", MODERN)
                .with("mcp-method", "tools/call"),
        ];
        for host in cases {
            let mut flow = Flow::new(cfg(FAST));
            assert_eq!(
                flow.on_request_headers(false, &host),
                Step::Pause,
                "{:?}",
                host.headers
            );
            assert_eq!(host.count_of(Counter::FastPath), 0);
        }
        // Disabled by default.
        let host = modern_call(MockHost::post_json(), "search_docs");
        let mut flow = Flow::new(cfg(BASIC));
        assert_eq!(flow.on_request_headers(false, &host), Step::Pause);
    }

    #[test]
    fn fast_path_without_descriptors_passes_at_once() {
        let host = MockHost::post_json()
            .with("mcp-protocol-version", MODERN)
            .with("mcp-method", "tools/list");
        let mut flow = Flow::new(cfg(FAST));
        assert_eq!(
            flow.on_request_headers(false, &host),
            Step::Continue(vec![])
        );
        assert_eq!(
            flow.on_request_body(10, true, &host),
            Step::Continue(vec![])
        );
    }

    #[test]
    fn fast_path_denial_answers_with_the_body_id() {
        let body =
            r#"{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{"name":"search_docs"}}"#;
        let over = reply_bytes(rls::CODE_OVER_LIMIT, 9);
        // The verdict comes before the end of the body...
        let host = modern_call(MockHost::post_json(), "search_docs");
        let mut flow = Flow::new(cfg(FAST));
        assert!(matches!(
            flow.on_request_headers(false, &host),
            Step::Dispatch(_)
        ));
        flow.on_dispatched(1, &host);
        assert_eq!(flow.on_request_body(10, false, &host), Step::Pause);
        assert_eq!(flow.on_rls_response(1, 0, Some(&over), &host), Step::Pause);
        assert_eq!(
            flow.on_request_body(body.len(), true, &host),
            Step::ReadBody(body.len())
        );
        let Step::Reply(r) = flow.on_body(body.as_bytes(), &host) else {
            panic!()
        };
        assert_eq!(r.status, 429);
        assert!(r.body.contains(r#""id":"abc""#), "{}", r.body);
        // ...or after it.
        let mut flow = Flow::new(cfg(FAST));
        flow.on_request_headers(false, &host);
        flow.on_dispatched(2, &host);
        assert_eq!(flow.on_request_body(body.len(), true, &host), Step::Pause);
        assert_eq!(
            flow.on_rls_response(2, 0, Some(&over), &host),
            Step::ReadBody(body.len())
        );
        let Step::Reply(r) = flow.on_body(body.as_bytes(), &host) else {
            panic!()
        };
        assert!(r.body.contains(r#""id":"abc""#), "{}", r.body);
        // Trailers end the body too.
        let mut flow = Flow::new(cfg(FAST));
        flow.on_request_headers(false, &host);
        flow.on_dispatched(3, &host);
        flow.on_rls_response(3, 0, Some(&over), &host);
        assert_eq!(flow.on_request_trailers(), Step::ReadBody(0));
    }

    #[test]
    fn session_and_protocol_version_descriptors() {
        let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","descriptors":[
            [{"key":"session","mcp":"session_id"},{"key":"tool","mcp":"tool"}],
            [{"key":"version","mcp":"protocol_version"}]]}"#);
        let host = MockHost::post_json()
            .with("mcp-session-id", "s-1")
            .with("mcp-protocol-version", "2025-06-18");
        let mut flow = Flow::new(c.clone());
        let req = sent(&drive(&mut flow, &host, &call("t")));
        assert_eq!(
            entries(&req),
            vec![
                vec![
                    ("session".to_owned(), "s-1".to_owned()),
                    ("tool".to_owned(), "t".to_owned())
                ],
                vec![("version".to_owned(), "2025-06-18".to_owned())],
            ]
        );
        let host = MockHost::post_json();
        let mut flow = Flow::new(c);
        assert_eq!(drive(&mut flow, &host, &call("t")), Step::Continue(vec![]));
    }
}
