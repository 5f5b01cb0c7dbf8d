//! The per-request state machine. It sees the host only through [`Host`],
//! decides, and returns a [`Step`] that the glue in `host.rs` carries out.

use std::borrow::Cow;
use std::rc::Rc;

use crate::config::{Config, McpField, OnMissing, Source, UnknownTools, OTHER_TOOL};
use crate::jsonrpc::{self, Body, ParseError, Target};
use crate::local::{self, Cached, Shared, Use};
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
    /// A shared-data slot and its compare-and-swap token (see [`Shared`]);
    /// a host without shared data has none.
    fn shared_get(&self, _key: &str) -> Option<(Vec<u8>, u32)> {
        None
    }
    /// Stores a shared-data slot if its token is still `cas`.
    fn shared_set(&self, _key: &str, _value: &[u8], _cas: u32) -> bool {
        false
    }
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64 {
        0
    }
}

/// A [`Host`] as [`local`] sees it.
struct SharedOf<'h, H>(&'h H);

impl<H: Host> Shared for SharedOf<'_, H> {
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.0.shared_get(key)
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        self.0.shared_set(key, value, cas)
    }
    fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
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
    /// Requests refused because a descriptor with `on_missing: refuse`
    /// lacked a source.
    MissingSource,
    /// Requests refused for a tool outside `tools` (`unknown_tools: refuse`).
    UnknownTool,
    /// OVER_LIMIT answers for shadow descriptors, which did not deny.
    ShadowOverLimit,
    /// Requests denied again without a call, as the service had just
    /// denied their descriptor (`over_limit_cache`).
    OverLimitCached,
    /// Requests admitted without a call, their hits spent from leases.
    Leased,
}

impl Counter {
    /// Every counter, in a fixed order (their index in [`Counter::ALL`]).
    pub const ALL: [Counter; 15] = [
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
        Counter::MissingSource,
        Counter::UnknownTool,
        Counter::ShadowOverLimit,
        Counter::OverLimitCached,
        Counter::Leased,
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
            Counter::MissingSource => "mcp_ratelimit.missing_source",
            Counter::UnknownTool => "mcp_ratelimit.unknown_tool",
            Counter::ShadowOverLimit => "mcp_ratelimit.shadow_over_limit",
            Counter::OverLimitCached => "mcp_ratelimit.over_limit_cached",
            Counter::Leased => "mcp_ratelimit.leased",
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
    /// Read `len` bytes of the buffered body from offset `start` and pass
    /// them to [`Flow::on_body`].
    ReadBody { start: usize, len: usize },
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

/// How many bytes a sniffing read takes at most: enough to find the first
/// byte that is not whitespace in any real body, little to copy twice.
const SNIFF_READ: usize = 256;

/// Where a request is.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Headers not seen yet.
    Start,
    /// Not an MCP JSON POST: nothing to do.
    Passthrough,
    /// A POST without a JSON content type: looking for the first byte that
    /// is not whitespace; the first `scanned` bytes were all whitespace.
    Sniffing { scanned: usize },
    /// Waiting for the end of the body.
    Buffering,
    /// Descriptors sent; waiting for the token.
    Dispatching { call: Call },
    /// Waiting for the service's reply to `token`.
    AwaitingRls { token: u32, call: Call },
    /// Denied on the fast path: waiting for the body, to answer with its id.
    Denying { reply: Pending },
    /// Let through; headers to add to the response.
    Allowed { response_headers: Headers },
    /// Answered locally.
    Responded,
}

/// What a request asked the service.
#[derive(Debug, PartialEq, Eq)]
struct Call {
    /// The ids to answer a denial with; `None` on the header fast path,
    /// where the body has not been read.
    ids: Option<Ids>,
    /// When a shadow descriptor was sent: for each descriptor sent, the
    /// configured one it comes from. Empty otherwise.
    sent: Vec<usize>,
    /// When a shadow descriptor was sent: what the request targets, for the
    /// log.
    target: Option<String>,
    /// With the over-limit cache or leases: for each descriptor sent, what
    /// the reply teaches; empty otherwise.
    local: Vec<Local>,
    /// When the call was planned (ms), with `local`.
    asked: u64,
}

/// What a reply teaches about one descriptor sent.
#[derive(Debug, Default, PartialEq, Eq)]
struct Local {
    /// Its over-limit cache key: a denial of it is remembered.
    deny_key: Option<Vec<u8>>,
    /// This request checks whether a remembered denial still holds.
    probe: bool,
    /// It asks for a lease.
    lease: Option<LeaseAsk>,
}

/// A lease asked for with a request.
#[derive(Debug, PartialEq, Eq)]
struct LeaseAsk {
    key: Vec<u8>,
    size: u64,
    /// The request's own hits, already spent from the lease (a renewal on
    /// the side) or to come out of this one.
    own: u64,
    spent: bool,
}

impl Call {
    /// For each descriptor sent, whether its OVER_LIMIT cannot deny.
    fn spare(&self) -> Vec<bool> {
        self.local
            .iter()
            .map(|l| l.lease.as_ref().is_some_and(|a| a.spent))
            .collect()
    }

    /// The request has been admitted already: every descriptor sent is a
    /// lease renewal on the side.
    fn admitted(&self) -> bool {
        !self.local.is_empty()
            && self
                .local
                .iter()
                .all(|l| l.lease.as_ref().is_some_and(|a| a.spent))
    }
}

/// A denial decided before the request's ids are known.
#[derive(Debug, PartialEq, Eq)]
enum Pending {
    OverLimit {
        retry_after: u64,
        retry_after_ms: u64,
        headers: Headers,
    },
    Failure,
}

/// One request's journey through the filter: its state, and what is known
/// of the request.
pub struct Flow {
    state: State,
    req: Req,
}

/// What the access log gets to see of a request, as Envoy filter state
/// (`filter_state`); empty without it, and for requests the filter does
/// not judge.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The JSON-RPC method (`batch` for a batch).
    pub method: Option<String>,
    /// The resolved target: tool (meta-tools unwrapped), prompt or resource.
    pub target: Option<String>,
    /// `allowed`, `shadow`, `denied`, `refused`, `error` or `not_limited`.
    pub verdict: Option<&'static str>,
    /// Why: the counter of a refusal, `fail_open` or `fail_closed` for an
    /// error.
    pub reason: Option<&'static str>,
    /// The descriptor that denied.
    pub descriptor: Option<String>,
}

/// What the flow knows of its request besides the state.
struct Req {
    cfg: Rc<Config>,
    /// The MCP headers, read with the request headers.
    mcp: McpHeaders,
    /// The declared `content-length`, if any.
    declared: Option<u64>,
    /// Body bytes buffered so far, and whether the body has ended.
    body_size: usize,
    body_done: bool,
    record: Record,
}

/// A handler's result: the next state and what the glue must do.
type Next = (State, Step);

impl Flow {
    pub fn new(cfg: Rc<Config>) -> Self {
        Flow {
            state: State::Start,
            req: Req {
                cfg,
                mcp: McpHeaders::default(),
                declared: None,
                body_size: 0,
                body_done: false,
                record: Record::default(),
            },
        }
    }

    /// Moves to the state `handler` returns, and returns its step. The
    /// state is taken out only here, and always replaced.
    fn transition(&mut self, handler: impl FnOnce(&mut Req, State) -> Next) -> Step {
        let state = std::mem::replace(&mut self.state, State::Responded);
        let (next, step) = handler(&mut self.req, state);
        self.state = next;
        step
    }

    /// Request headers arrived.
    pub fn on_request_headers(&mut self, end_of_stream: bool, host: &impl Host) -> Step {
        self.transition(|req, state| match state {
            State::Start => req.headers(end_of_stream, host),
            other => (other, Step::Pause),
        })
    }

    /// A body chunk arrived; `size` is the total buffered so far.
    pub fn on_request_body(&mut self, size: usize, end_of_stream: bool, host: &impl Host) -> Step {
        self.transition(|req, state| {
            req.body_size = size;
            req.body_done |= end_of_stream;
            req.body_grew(state, host)
        })
    }

    /// Request trailers arrived: they end the body.
    pub fn on_request_trailers(&mut self, host: &impl Host) -> Step {
        self.transition(|req, state| {
            req.body_done = true;
            req.body_grew(state, host)
        })
    }

    /// The body bytes asked for by [`Step::ReadBody`].
    pub fn on_body(&mut self, bytes: &[u8], host: &impl Host) -> Step {
        if bytes.is_empty() && self.req.body_size > 0 {
            // The host gave nothing where bytes are buffered.
            return self.on_body_unreadable(host);
        }
        self.transition(|req, state| match state {
            State::Sniffing { scanned } => req.sniffed(scanned, bytes, host),
            State::Buffering => req.judge(bytes, host),
            State::Denying { reply } => {
                let ids = match jsonrpc::parse(bytes, &req.cfg.spec()) {
                    Ok(body) => ids_of(&body),
                    Err(_) => Ids::unknown(),
                };
                (
                    State::Responded,
                    Step::Reply(req.pending_reply(reply, &ids)),
                )
            }
            other => (other, Step::Pause),
        })
    }

    /// The host could not hand over the body bytes asked for: the request
    /// cannot be judged, so it may not pass.
    pub fn on_body_unreadable(&mut self, host: &impl Host) -> Step {
        self.transition(|req, _| req.refuse(host, Counter::ParseError, reply::unreadable_body()))
    }

    /// The call was dispatched; its reply will carry `token`.
    pub fn on_dispatched(&mut self, token: u32, host: &impl Host) {
        host.count(Counter::Checked);
        self.transition(|_, state| match state {
            State::Dispatching { call } => (State::AwaitingRls { token, call }, Step::Pause),
            other => (other, Step::Pause),
        });
    }

    /// The host refused to dispatch the call (e.g. unknown cluster).
    pub fn on_dispatch_failed(&mut self, host: &impl Host) -> Step {
        host.count(Counter::Checked);
        self.transition(|req, state| match state {
            State::Dispatching { call } => {
                if !call.local.is_empty() {
                    learn(&req.cfg, &call, &Err(RlsError::Grpc(UNAVAILABLE)), host);
                }
                req.failed(call, host)
            }
            other => (other, Step::Pause),
        })
    }

    /// The service answered (`grpc_status` 0 with `body`) or the call failed.
    pub fn on_rls_response(
        &mut self,
        token: u32,
        grpc_status: u32,
        body: Option<&[u8]>,
        host: &impl Host,
    ) -> Step {
        self.transition(|req, state| match state {
            State::AwaitingRls { token: t, call } if t == token => {
                let verdict = if grpc_status != 0 {
                    Err(RlsError::Grpc(grpc_status))
                } else {
                    let shadow: Vec<bool> = call
                        .sent
                        .iter()
                        .map(|i| req.cfg.descriptors.get(*i).is_some_and(|d| d.shadow))
                        .collect();
                    let spare = call.spare();
                    let reading = rls::Reading {
                        shadow: &shadow,
                        ratelimit_headers: req.cfg.ratelimit_headers,
                        spare: &spare,
                        statuses: !call.local.is_empty(),
                    };
                    rls::decode_response(body.unwrap_or(&[]), reading)
                };
                if !call.local.is_empty() {
                    learn(&req.cfg, &call, &verdict, host);
                }
                req.verdict(verdict, call, host)
            }
            // Not the call we wait for: ignore it.
            other => (other, Step::Pause),
        })
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

    /// What the access log gets to see (see [`Record`]).
    pub fn record(&self) -> &Record {
        &self.req.record
    }

    /// Whether the request is waiting for the rate-limit service.
    pub fn awaiting(&self) -> Option<u32> {
        match self.state {
            State::AwaitingRls { token, .. } => Some(token),
            _ => None,
        }
    }
}

impl Req {
    fn max(&self) -> usize {
        self.cfg.max_body_bytes
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

    fn refuse(&mut self, host: &impl Host, counter: Counter, reply: LocalReply) -> Next {
        host.count(counter);
        let reason = counter.name().strip_prefix("mcp_ratelimit.");
        self.decided("refused", reason);
        (State::Responded, Step::Reply(reply))
    }

    /// Notes the verdict for the access log.
    fn decided(&mut self, verdict: &'static str, reason: Option<&'static str>) {
        if self.cfg.filter_state {
            self.record.verdict = Some(verdict);
            self.record.reason = reason;
        }
    }

    fn too_large(&mut self, host: &impl Host) -> Next {
        self.refuse(host, Counter::BodyTooLarge, reply::too_large(self.max()))
    }

    // -- Headers ------------------------------------------------------------

    /// The request headers: which requests are judged, and the checks that
    /// need no body.
    fn headers(&mut self, end_of_stream: bool, host: &impl Host) -> Next {
        let is_post = host.request_header(":method").is_some_and(|m| m == b"POST");
        if !is_post {
            return (State::Passthrough, Step::go());
        }
        let json = host
            .request_header("content-type")
            .is_some_and(|ct| is_json(&ct));
        if !json && (!self.cfg.sniff_bodies || end_of_stream) {
            return (State::Passthrough, Step::go());
        }
        // A compressed body cannot be judged: refuse it rather than let it
        // through unread.
        if host
            .request_header("content-encoding")
            .is_some_and(|e| !is_identity(&e))
        {
            return self.refuse(host, Counter::ParseError, reply::unsupported_encoding());
        }
        self.body_done = end_of_stream;
        self.declared = host.request_header("content-length").and_then(|len| {
            std::str::from_utf8(&len)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        });
        // Every body the filter judges is judged by the same header rules,
        // whatever its content type.
        self.read_mcp_headers(host);
        if self.mcp_header_repeated(host) {
            let reply = reply::header_mismatch(None, "an MCP header is given more than once");
            return self.refuse(host, Counter::HeaderMismatch, reply);
        }
        if !json {
            // Another content type: judged like JSON if its body starts
            // like JSON, passed untouched otherwise.
            return (State::Sniffing { scanned: 0 }, self.hold());
        }
        // A request without a body is not a valid MCP message: leave it to
        // the body path, which refuses it.
        if self.cfg.header_fast_path && !end_of_stream {
            if let Some(next) = self.fast_path(host) {
                return next;
            }
        }
        if self.declared_too_large() {
            return self.too_large(host);
        }
        if end_of_stream {
            (State::Buffering, Step::ReadBody { start: 0, len: 0 })
        } else {
            (State::Buffering, self.hold())
        }
    }

    fn declared_too_large(&self) -> bool {
        self.declared.is_some_and(|n| n > self.max() as u64)
    }

    /// Reads the MCP headers the configuration needs.
    fn read_mcp_headers(&mut self, host: &impl Host) {
        self.mcp.protocol_version = host.request_header(mcp_headers::PROTOCOL_VERSION);
        if self.cfg.validate_mcp_headers || self.cfg.header_fast_path {
            self.mcp.method = host.request_header(mcp_headers::METHOD);
            self.mcp.name = host.request_header(mcp_headers::NAME);
            self.mcp.params = self
                .cfg
                .param_headers
                .iter()
                .map(|p| host.request_header(&p.header))
                .collect();
        }
    }

    /// Components could read different values of a repeated routing header
    /// (Envoy gives the filter the first one).
    fn mcp_header_repeated(&self, host: &impl Host) -> bool {
        let may_repeat = self.mcp.has_routing_headers()
            || (self.cfg.header_fast_path && self.mcp.protocol_version.is_some());
        may_repeat && host.any_repeated(&self.cfg.mcp_header_names)
    }

    /// Judges an MCP 2026-07-28 request by its routing headers, when they
    /// name everything the descriptors need; `None` falls back to the body.
    fn fast_path(&mut self, host: &impl Host) -> Option<Next> {
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
        let body = Body::Single(jsonrpc::Request::from_headers(method, name, target));
        let plan = plan(&self.cfg, &body, &self.mcp, host);
        if matches!(plan, Plan::Refuse(..)) {
            // Refused with the request's id: read from the body.
            return None;
        }
        host.count(Counter::FastPath);
        if self.cfg.filter_state {
            note(&mut self.record, &body);
        }
        Some(self.follow(plan, None, host))
    }

    // -- Body ---------------------------------------------------------------

    /// The body grew (`body_size`) or ended (`body_done`).
    fn body_grew(&mut self, state: State, host: &impl Host) -> Next {
        match state {
            State::Sniffing { scanned } => self.sniff(scanned, host),
            State::Buffering => {
                if self.body_size > self.max() {
                    self.too_large(host)
                } else if self.body_done {
                    (
                        State::Buffering,
                        Step::ReadBody {
                            start: 0,
                            len: self.body_size,
                        },
                    )
                } else {
                    (State::Buffering, Step::Pause)
                }
            }
            State::Denying { reply } => self.deny_when_read(reply),
            State::Passthrough | State::Allowed { .. } | State::Start => (state, Step::go()),
            State::Dispatching { .. } | State::AwaitingRls { .. } | State::Responded => {
                (state, Step::Pause)
            }
        }
    }

    /// Asks for the next bytes to sniff, after `scanned` bytes of
    /// whitespace: each byte is read once, a piece at a time.
    fn sniff(&mut self, scanned: usize, host: &impl Host) -> Next {
        if scanned >= self.max() {
            // Only whitespace so far, as much as a judged body may hold:
            // whatever follows could only be judged past the cap.
            return self.too_large(host);
        }
        if scanned < self.body_size {
            let len = (self.body_size - scanned)
                .min(SNIFF_READ)
                .min(self.max() - scanned);
            return (
                State::Sniffing { scanned },
                Step::ReadBody {
                    start: scanned,
                    len,
                },
            );
        }
        if self.body_done {
            // Empty, or only whitespace: not JSON.
            return (State::Passthrough, Step::go());
        }
        (State::Sniffing { scanned }, Step::Pause)
    }

    /// Sniffed bytes arrived (from offset `scanned`).
    fn sniffed(&mut self, scanned: usize, bytes: &[u8], host: &impl Host) -> Next {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{' | b'[') => {
                // JSON-shaped: judged as a JSON body, with the same cap.
                if self.body_size > self.max() || self.declared_too_large() {
                    return self.too_large(host);
                }
                self.body_grew(State::Buffering, host)
            }
            Some(_) => (State::Passthrough, Step::go()),
            None => self.sniff(scanned.saturating_add(bytes.len()), host),
        }
    }

    /// The whole body: parse it, check it against the headers, and build
    /// the rate-limit call.
    fn judge(&mut self, body: &[u8], host: &impl Host) -> Next {
        if body.len() > self.max() {
            return self.too_large(host);
        }
        let parsed = match jsonrpc::parse(body, &self.cfg.spec()) {
            Ok(parsed) => parsed,
            Err(e) => return self.refuse(host, Counter::ParseError, parse_error(e)),
        };
        host.count(Counter::Inspected);
        if self.cfg.filter_state {
            note(&mut self.record, &parsed);
        }
        if self.cfg.validate_mcp_headers {
            if let Err(m) = mcp_headers::check(&self.mcp, &parsed, &self.cfg.param_headers) {
                let id = match &parsed {
                    Body::Single(r) => r.id.map(|i| i.get()),
                    Body::Batch(_) => None,
                };
                let reply = reply::header_mismatch(id, m.reason);
                return self.refuse(host, Counter::HeaderMismatch, reply);
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
                let reply = reply::bad_request(reply::INVALID_REQUEST, None, reason);
                return self.refuse(host, Counter::ParseError, reply);
            }
        }
        let plan = plan(&self.cfg, &parsed, &self.mcp, host);
        self.follow(plan, Some(&parsed), host)
    }

    /// Carries out a plan: `body` is `None` on the header fast path.
    fn follow(&mut self, plan: Plan, body: Option<&Body<'_>>, host: &impl Host) -> Next {
        match plan {
            Plan::Pass => {
                self.decided("not_limited", None);
                (
                    State::Allowed {
                        response_headers: Vec::new(),
                    },
                    Step::go(),
                )
            }
            Plan::Refuse(counter, reply) => self.refuse(host, counter, reply),
            Plan::Leased => {
                host.count(Counter::Leased);
                self.decided("allowed", Some("leased"));
                (
                    State::Allowed {
                        response_headers: Vec::new(),
                    },
                    Step::go(),
                )
            }
            Plan::Deny {
                denial,
                descriptor,
                now,
            } => {
                host.count(Counter::OverLimitCached);
                self.decided("denied", Some("over_limit_cached"));
                if self.cfg.filter_state {
                    self.record.descriptor =
                        self.cfg.descriptors.get(descriptor).map(|d| d.name.clone());
                }
                let (retry_after, retry_after_ms) = local::retry_after(denial.reset_at, now);
                let pending = Pending::OverLimit {
                    retry_after,
                    retry_after_ms,
                    headers: denial.headers_at(now),
                };
                self.deny(pending, body.map(ids_of))
            }
            Plan::Call {
                payload,
                sent,
                target,
                local,
                asked,
            } => (
                State::Dispatching {
                    call: Call {
                        // Copied now, a few bytes each: reading them
                        // again on a denial would copy the body twice.
                        ids: body.map(ids_of),
                        sent,
                        target,
                        local,
                        asked,
                    },
                },
                Step::Dispatch(payload),
            ),
        }
    }

    // -- Verdicts -----------------------------------------------------------

    fn verdict(
        &mut self,
        verdict: Result<Verdict, RlsError>,
        call: Call,
        host: &impl Host,
    ) -> Next {
        if let Ok(Verdict::Ok { shadow_over, .. } | Verdict::OverLimit { shadow_over, .. }) =
            &verdict
        {
            for i in shadow_over {
                host.count(Counter::ShadowOverLimit);
                let name = call
                    .sent
                    .get(*i)
                    .and_then(|d| self.cfg.descriptors.get(*d))
                    .map_or("?", |d| d.name.as_str());
                log::info!(
                    "mcp-ratelimit: shadow limit exceeded: descriptor {name}, target {}",
                    call.target.as_deref().unwrap_or("-")
                );
            }
        }
        match verdict {
            Ok(Verdict::Ok {
                request_headers,
                response_headers,
                shadow_over,
                ..
            }) => {
                host.count(Counter::Ok);
                self.decided(
                    if shadow_over.is_empty() {
                        "allowed"
                    } else {
                        "shadow"
                    },
                    None,
                );
                (
                    State::Allowed { response_headers },
                    Step::Continue(request_headers),
                )
            }
            Ok(Verdict::OverLimit {
                retry_after,
                retry_after_ms,
                response_headers,
                denied_by,
                ..
            }) => {
                host.count(Counter::OverLimit);
                self.decided("denied", None);
                if self.cfg.filter_state {
                    self.record.descriptor = denied_by
                        .and_then(|i| call.sent.get(i))
                        .and_then(|d| self.cfg.descriptors.get(*d))
                        .map(|d| d.name.clone());
                }
                let pending = Pending::OverLimit {
                    retry_after,
                    retry_after_ms,
                    headers: response_headers,
                };
                self.deny(pending, call.ids)
            }
            Err(e) => {
                log::debug!("rate-limit service error: {e:?}");
                self.failed(call, host)
            }
        }
    }

    fn failed(&mut self, call: Call, host: &impl Host) -> Next {
        host.count(Counter::Error);
        if call.admitted() {
            // Only lease renewals were asked: the request was paid for.
            self.decided("allowed", Some("leased"));
            return (
                State::Allowed {
                    response_headers: Vec::new(),
                },
                Step::go(),
            );
        }
        let ids = call.ids;
        let mode = if self.cfg.failure_mode_deny {
            "fail_closed"
        } else {
            "fail_open"
        };
        self.decided("error", Some(mode));
        if self.cfg.failure_mode_deny {
            self.deny(Pending::Failure, ids)
        } else {
            host.count(Counter::FailureModeAllowed);
            (
                State::Allowed {
                    response_headers: Vec::new(),
                },
                Step::go(),
            )
        }
    }

    /// Denies now when the ids are known, else once the body is read.
    fn deny(&mut self, pending: Pending, ids: Option<Ids>) -> Next {
        match ids {
            Some(ids) => (
                State::Responded,
                Step::Reply(self.pending_reply(pending, &ids)),
            ),
            None => self.deny_when_read(pending),
        }
    }

    /// A fast-path denial waits for the body, to answer with its ids; a
    /// body over the cap is never read, and gets the denial with id `null`.
    fn deny_when_read(&mut self, pending: Pending) -> Next {
        if self.body_size > self.max() {
            let reply = self.pending_reply(pending, &Ids::unknown());
            return (State::Responded, Step::Reply(reply));
        }
        let step = if self.body_done {
            Step::ReadBody {
                start: 0,
                len: self.body_size,
            }
        } else {
            Step::Pause
        };
        (State::Denying { reply: pending }, step)
    }

    fn pending_reply(&self, pending: Pending, ids: &Ids) -> LocalReply {
        match pending {
            Pending::OverLimit {
                retry_after,
                retry_after_ms,
                headers,
            } => reply::over_limit(
                &self.cfg.over_limit,
                ids,
                (retry_after, retry_after_ms),
                headers,
            ),
            Pending::Failure => reply::rls_failure(&self.cfg.rls_failure, ids),
        }
    }
}

/// gRPC status UNAVAILABLE: what a call the host could not make counts as.
const UNAVAILABLE: u32 = 14;

/// What a reply teaches the over-limit cache and the leases: a denial of a
/// descriptor is remembered (not a shadow one, which is never given a
/// cache key); a probe that finds the limit lifted forgets it; a lease asked
/// for is granted or marked refused; a failed call lets another request
/// renew the lease.
fn learn(cfg: &Config, call: &Call, verdict: &Result<Verdict, RlsError>, host: &impl Host) {
    let store = SharedOf(host);
    let now = host.now_ms();
    let (statuses, headers): (&[rls::Status], &[(String, String)]) = match verdict {
        Ok(Verdict::Ok { statuses, .. }) => (statuses, &[]),
        Ok(Verdict::OverLimit {
            statuses,
            response_headers,
            ..
        }) => (statuses, response_headers),
        Err(_) => {
            for ask in call.local.iter().filter_map(|l| l.lease.as_ref()) {
                local::refill_failed(&store, cfg.lease_entries, &ask.key);
            }
            return;
        }
    };
    if statuses.len() != call.local.len() {
        return;
    }
    for (l, st) in call.local.iter().zip(statuses) {
        if let Some(ask) = &l.lease {
            match (st.over, st.reset) {
                (false, Some(reset)) => {
                    let own = if ask.spent { 0 } else { ask.own };
                    local::grant(
                        &store,
                        cfg.lease_entries,
                        &ask.key,
                        ask.size,
                        own,
                        reset,
                        call.asked,
                        now,
                    );
                }
                (false, None) => local::refill_failed(&store, cfg.lease_entries, &ask.key),
                (true, reset) => {
                    local::refused(&store, cfg.lease_entries, &ask.key, reset, call.asked, now);
                }
            }
        } else if let (Some(key), Some(max_ms)) = (&l.deny_key, cfg.over_limit_cache_ms) {
            match (st.over, st.reset) {
                (true, Some(reset)) => local::store_denial(
                    &store,
                    cfg.over_limit_cache_entries,
                    key,
                    reset,
                    call.asked,
                    now,
                    max_ms,
                    headers,
                ),
                (false, _) if l.probe => {
                    local::forget_denial(&store, cfg.over_limit_cache_entries, key)
                }
                _ => {}
            }
        }
    }
}

/// Notes what a request is, for the access log.
fn note(record: &mut Record, body: &Body<'_>) {
    record.method = match body {
        Body::Batch(_) => Some("batch".to_owned()),
        Body::Single(r) => r.method.as_ref().map(|m| m.to_string()),
    };
    record.target = body.requests().iter().find_map(|r| match &r.target {
        Some(Target::Tool(t) | Target::Prompt(t) | Target::Resource(t)) => Some(t.to_string()),
        None => None,
    });
}

/// The ids a denial answers.
fn ids_of(body: &Body<'_>) -> Ids {
    match body {
        Body::Single(r) => Ids::Single(r.id.map(|i| i.get().into())),
        Body::Batch(list) => Ids::Batch(
            list.iter()
                .filter_map(|r| r.id.map(|i| i.get().into()))
                .collect(),
        ),
    }
}

/// The reply to a body the parser refused.
fn parse_error(e: ParseError<'_>) -> LocalReply {
    match e {
        ParseError::Syntax => {
            reply::bad_request(reply::PARSE_ERROR, None, "body is not valid JSON")
        }
        ParseError::InvalidRequest { id, reason } => {
            reply::bad_request(reply::INVALID_REQUEST, id, reason)
        }
        ParseError::InvalidParams { id, reason } => {
            reply::bad_request(reply::INVALID_PARAMS, id, reason)
        }
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

// -- Descriptors ------------------------------------------------------------

/// Header and metadata values fetched from the host for one request.
type Fetched<'c> = Vec<(&'c Source, Option<String>)>;

/// Whether a source's value comes from the host.
fn is_fetched(source: &Source) -> bool {
    matches!(
        source,
        Source::Mcp(McpField::SessionId) | Source::Header(_) | Source::Metadata { .. }
    )
}

/// The value of a header or metadata entry (see [`Source::is_of_request`]),
/// borrowed from the MCP headers or the values fetched; `None` when absent
/// (or not fetched).
fn entry_value<'a>(
    source: &'a Source,
    mcp: &'a McpHeaders,
    fetched: &'a Fetched<'_>,
) -> Option<Cow<'a, str>> {
    match source {
        Source::Mcp(McpField::ProtocolVersion) => {
            mcp.protocol_version.as_deref().map(String::from_utf8_lossy)
        }
        _ => fetched
            .iter()
            .find(|(s, _)| *s == source)
            .and_then(|(_, v)| v.as_deref())
            .map(Cow::Borrowed),
    }
}

/// What a request needs from the rate-limit service.
enum Plan {
    /// No descriptor applies: the request goes on.
    Pass,
    /// Refused before any call.
    Refuse(Counter, LocalReply),
    /// The `RateLimitRequest` to send, and for the shadow bookkeeping (only
    /// when a shadow descriptor is sent) where each descriptor comes from
    /// and what the request targets.
    Call {
        payload: Vec<u8>,
        sent: Vec<usize>,
        target: Option<String>,
        local: Vec<Local>,
        asked: u64,
    },
    /// Denied without a call: the service has just denied descriptor
    /// `descriptor` (configured index) of the request.
    Deny {
        denial: local::Denial,
        descriptor: usize,
        now: u64,
    },
    /// Admitted without a call: every descriptor was paid from a lease.
    Leased,
}

/// A message's tool as sent: its name, or [`OTHER_TOOL`] outside `tools`.
fn tool_value<'a>(cfg: &'a Config, req: &'a jsonrpc::Request<'a>) -> Option<Cow<'a, str>> {
    match &req.target {
        Some(Target::Tool(t)) if cfg.tool_known(t.as_ref()) => Some(Cow::Borrowed(t.as_ref())),
        Some(Target::Tool(_)) => Some(Cow::Borrowed(OTHER_TOOL)),
        _ => None,
    }
}

/// The id a refusal of `body` answers: a single request's, else none.
fn refusal_id<'a>(body: &'a Body<'a>) -> Option<&'a str> {
    match body {
        Body::Single(r) => r.id.map(|i| i.get()),
        Body::Batch(_) => None,
    }
}

/// What a body asks of the rate-limit service.
///
/// Each configured descriptor whose MCP fields all apply to a message gives
/// one descriptor per message; a header or metadata source that is absent
/// takes the entry's `default`, else skips the descriptor or refuses the
/// request (`on_missing`). Identical descriptors from one configured
/// descriptor are merged into one with their hits added up: the calls'
/// costs, or one per call with `"cost": false`. Header and metadata values
/// are fetched from the host once per request, only for descriptors that
/// apply, and then borrowed like the body's strings.
fn plan(cfg: &Config, body: &Body<'_>, mcp: &McpHeaders, host: &impl Host) -> Plan {
    // A tool outside `tools`, when such tools are refused.
    if cfg.unknown_tools == UnknownTools::Refuse {
        let unknown = body.requests().iter().find_map(|r| match &r.target {
            Some(Target::Tool(t)) if !cfg.tool_known(t.as_ref()) => Some(t.as_ref()),
            _ => None,
        });
        if let Some(tool) = unknown {
            let reason = format!("unknown tool: {tool}");
            let reply = reply::bad_request(reply::INVALID_PARAMS, refusal_id(body), &reason);
            return Plan::Refuse(Counter::UnknownTool, reply);
        }
    }
    // First the values from the host, each fetched at most once...
    let mut fetched: Fetched<'_> = Vec::new();
    for req in body.requests() {
        for d in &cfg.descriptors {
            let applies = d
                .entries
                .iter()
                .all(|e| e.source.is_of_request() || mcp_entry(cfg, &e.source, req).is_some());
            if !applies {
                continue;
            }
            for e in &d.entries {
                if is_fetched(&e.source) && !fetched.iter().any(|(s, _)| *s == &e.source) {
                    fetched.push((&e.source, fetch(&e.source, host)));
                }
            }
        }
    }
    // ...then the descriptors, borrowing every value.
    let mut descriptors: Vec<(usize, Descriptor<'_>)> = Vec::new();
    // (Descriptors are built in `descriptors`, then trimmed by the
    // over-limit cache and leases.)
    for req in body.requests() {
        let tool = match &req.target {
            Some(Target::Tool(t)) => Some(t.as_ref()),
            _ => None,
        };
        let cost = cfg.cost(tool.filter(|t| cfg.tool_known(t)));
        'descriptor: for (k, d) in cfg.descriptors.iter().enumerate() {
            // Nothing is built for a descriptor this message is not about.
            let applies = d
                .entries
                .iter()
                .all(|e| e.source.is_of_request() || mcp_entry(cfg, &e.source, req).is_some());
            if !applies {
                continue;
            }
            let mut entries = Vec::with_capacity(d.entries.len());
            let mut missing = false;
            for e in &d.entries {
                let value = if e.source.is_of_request() {
                    entry_value(&e.source, mcp, &fetched)
                        .or_else(|| e.default.as_deref().map(Cow::Borrowed))
                } else {
                    match mcp_entry(cfg, &e.source, req) {
                        Some(v) => Some(v),
                        // Not a message this descriptor is about.
                        None => continue 'descriptor,
                    }
                };
                match value {
                    Some(v) => entries.push((e.key.as_str(), v)),
                    None => missing = true,
                }
            }
            if missing {
                match d.on_missing {
                    OnMissing::Skip => continue,
                    OnMissing::Refuse => {
                        let reason =
                            format!("the request lacks a value descriptor {} needs", d.name);
                        let reply =
                            reply::bad_request(reply::INVALID_REQUEST, refusal_id(body), &reason);
                        return Plan::Refuse(Counter::MissingSource, reply);
                    }
                }
            }
            let hits = if d.cost { cost } else { 1 };
            match descriptors
                .iter_mut()
                .find(|(o, x)| *o == k && x.entries == entries)
            {
                Some((_, existing)) => existing.hits = existing.hits.saturating_add(hits),
                None => descriptors.push((k, Descriptor { entries, hits })),
            }
        }
    }
    if descriptors.is_empty() {
        return Plan::Pass;
    }
    let (local, asked) = if cfg.uses_shared() {
        let now = host.now_ms();
        match decide_locally(cfg, &mut descriptors, host, now) {
            Ok(_) if descriptors.is_empty() => return Plan::Leased,
            Ok(local) => (local, now),
            Err(deny) => return deny,
        }
    } else {
        (Vec::new(), 0)
    };
    let shadowed = descriptors
        .iter()
        .any(|(k, _)| cfg.descriptors.get(*k).is_some_and(|d| d.shadow));
    let (sent, target) = if shadowed || cfg.filter_state {
        let target = body.requests().iter().find_map(|r| match &r.target {
            Some(Target::Tool(t) | Target::Prompt(t) | Target::Resource(t)) => Some(t.to_string()),
            None => r.method.as_ref().map(|m| m.to_string()),
        });
        (descriptors.iter().map(|(k, _)| *k).collect(), target)
    } else {
        (Vec::new(), None)
    };
    let list: Vec<Descriptor<'_>> = descriptors.into_iter().map(|(_, d)| d).collect();
    Plan::Call {
        payload: rls::encode_request(&cfg.encoded_domain, &list),
        sent,
        target,
        local,
        asked,
    }
}

/// The over-limit cache and leases: denies a request whose descriptor the
/// service has just denied (at the same cost); pays what it can from
/// leases, removing those descriptors from the call, and turns the
/// descriptors that renew a lease into asks for the lease's size. Returns,
/// for each descriptor left, what its reply will teach.
///
/// A leased descriptor is looked up in the cache only when its lease
/// cannot pay: hits the service granted are spent even after it has
/// denied a request that asked on its own.
fn decide_locally(
    cfg: &Config,
    descriptors: &mut Vec<(usize, Descriptor<'_>)>,
    host: &impl Host,
    now: u64,
) -> Result<Vec<Local>, Plan> {
    let store = SharedOf(host);
    let store: &dyn Shared = &store;
    let probe_ms = cfg.timeout_ms.saturating_add(PROBE_MARGIN_MS);
    let cached = |k: usize, d: &Descriptor<'_>| cached(cfg, store, k, d, now);
    let lease_of = |k: usize| cfg.descriptors.get(k).and_then(|c| c.lease);
    // First the descriptors without a lease: a request denied by one of
    // them spends no lease.
    let mut local: Vec<Option<Local>> = Vec::with_capacity(descriptors.len());
    for (k, d) in descriptors.iter() {
        local.push(match lease_of(*k) {
            Some(_) => None,
            None => Some(cached(*k, d)?),
        });
    }
    let mut kept = Vec::with_capacity(descriptors.len());
    let mut out = Vec::with_capacity(descriptors.len());
    for ((k, mut d), l) in descriptors.drain(..).zip(local) {
        let (Some(size), None) = (lease_of(k), &l) else {
            kept.push((k, d));
            out.push(l.unwrap_or_default());
            continue;
        };
        let key = shared_key(cfg, &d, 1);
        let own = d.hits;
        let spent = match local::take(store, cfg.lease_entries, &key, own, size, now, probe_ms) {
            Use::Spent => continue,
            Use::SpentAndRefill => true,
            Use::Refill => {
                // Unpaid: a denial of it stands, and another request may
                // renew the lease.
                if let Err(deny) = cached(k, &d) {
                    local::refill_failed(store, cfg.lease_entries, &key);
                    return Err(deny);
                }
                false
            }
            Use::Plain => {
                let l = cached(k, &d)?;
                kept.push((k, d));
                out.push(l);
                continue;
            }
        };
        d.hits = size;
        kept.push((k, d));
        out.push(Local {
            lease: Some(LeaseAsk {
                key,
                size,
                own,
                spent,
            }),
            ..Local::default()
        });
    }
    *descriptors = kept;
    Ok(out)
}

/// What the over-limit cache says of descriptor `d` (configured index `k`)
/// at its own cost: what its reply will teach, or the denial to repeat.
fn cached(
    cfg: &Config,
    store: &dyn Shared,
    k: usize,
    d: &Descriptor<'_>,
    now: u64,
) -> Result<Local, Plan> {
    let mut l = Local::default();
    let shadow = cfg.descriptors.get(k).is_none_or(|c| c.shadow);
    if cfg.over_limit_cache_ms.is_none() || shadow {
        return Ok(l);
    }
    let key = shared_key(cfg, d, d.hits);
    let probe_ms = cfg.timeout_ms.saturating_add(PROBE_MARGIN_MS);
    match local::lookup(store, cfg.over_limit_cache_entries, &key, now, probe_ms) {
        Cached::Deny(denial) => {
            return Err(Plan::Deny {
                denial,
                descriptor: k,
                now,
            })
        }
        Cached::Probe => l.probe = true,
        Cached::Ask => {}
    }
    l.deny_key = Some(key);
    Ok(l)
}

/// How long a request that renews a lease or checks a remembered denial
/// holds that role past the call's timeout, before another may.
const PROBE_MARGIN_MS: u64 = 50;

/// A descriptor's name in shared data: the configuration's prefix and the
/// descriptor as sent, with `hits` as its hits.
fn shared_key(cfg: &Config, d: &Descriptor<'_>, hits: u64) -> Vec<u8> {
    let size: usize = d.entries.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
    let mut key = Vec::with_capacity(cfg.shared_prefix.len() + size + 16);
    key.extend_from_slice(&cfg.shared_prefix);
    rls::put_descriptor(&mut key, d, hits);
    key
}

/// The value of an entry whose source is the MCP message (not a header or
/// metadata): `None` where it does not apply to this message.
fn mcp_entry<'a>(
    cfg: &'a Config,
    source: &'a Source,
    req: &'a jsonrpc::Request<'a>,
) -> Option<Cow<'a, str>> {
    match source {
        Source::Mcp(McpField::Tool) => tool_value(cfg, req),
        Source::Literal(v) => Some(Cow::Borrowed(v.as_str())),
        Source::Mcp(field) => mcp_value(*field, req),
        _ => None,
    }
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

/// A header or metadata value, copied from the host once. Bytes that are
/// not UTF-8 are replaced rather than skipped: a client must not dodge a
/// limit by sending them.
fn fetch(source: &Source, host: &impl Host) -> Option<String> {
    let bytes = match source {
        Source::Header(name) => host.request_header(name)?,
        Source::Mcp(McpField::SessionId) => host.request_header(mcp_headers::SESSION_ID)?,
        Source::Metadata { namespace, path } => host.metadata(namespace, path)?,
        _ => return None,
    };
    Some(
        String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

#[cfg(test)]
mod tests;
