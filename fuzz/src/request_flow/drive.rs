//! Drives a [`Flow`] through one request exactly as `host.rs` does: the
//! header callback, body chunks, trailers, the service's reply and stray
//! replies, carrying out every [`Step`]. Each step is checked as it is
//! carried out (replies and payloads in `replies.rs`), and what the flow
//! owes the request is checked after each callback.

use std::rc::Rc;

use mcp_ratelimit::config::Config;
use mcp_ratelimit::flow::{Flow, Step};
use mcp_ratelimit::reply::LocalReply;
use mcp_ratelimit::rls::{self, pb, Verdict};
use prost::Message;

use super::debug;
use super::host::FuzzHost;
use super::input::{End, Event, FaultKind, Input, ReadFault, RlsReply};
use super::request::{rls_reply, Request};

/// How many bytes a sniffing read may take at most.
pub const SNIFF_READ: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Site {
    Callback,
    Async,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Request headers, response headers.
    Ok(Vec<(String, String)>, Vec<(String, String)>),
    OverLimit(u64),
    Failed,
}

/// The body reads the flow asked for.
#[derive(Debug, Default)]
pub struct Reads {
    /// Bytes asked for, in all.
    pub total: usize,
    /// Reads of the whole buffered body.
    pub full: u32,
    /// Sniffing reads take the body piece by piece: the next one starts here.
    pub sniffed_upto: usize,
    /// Reads of at least one byte.
    pub nonempty: u32,
}

pub struct Run<'a> {
    pub cfg: Rc<Config>,
    pub req: &'a Request,
    pub host: &'a FuzzHost<'a>,
    pub flow: Flow,
    /// Body bytes the proxy holds for the filter.
    pub buffered: Vec<u8>,
    /// Every body byte that arrived, in order.
    pub body_seen: Vec<u8>,
    pub body_ended: bool,
    pub outstanding: Option<u32>,
    next_token: u32,
    pub dispatches: u32,
    pub payload: Option<Vec<u8>>,
    pub resolved: u32,
    pub failures: u32,
    pub outcome: Option<Outcome>,
    dispatch_fails: bool,
    pub reply: Option<LocalReply>,
    /// The reply came from the header callback.
    pub reply_at_headers: bool,
    /// Whether the filter holds the request now.
    pub held: bool,
    pub dispatched_from_body: bool,
    /// The request went on after the service's verdict.
    pub continued_after_verdict: bool,
    pub reads: Reads,
    /// The read the host fails, and how.
    read_fault: Option<ReadFault>,
    /// The host failed a read of buffered bytes.
    pub read_failed: bool,
}

impl<'a> Run<'a> {
    fn new(cfg: Rc<Config>, req: &'a Request, host: &'a FuzzHost<'a>, input: &Input) -> Self {
        Run {
            flow: Flow::new(cfg.clone()),
            cfg,
            req,
            host,
            buffered: Vec::new(),
            body_seen: Vec::new(),
            body_ended: false,
            outstanding: None,
            next_token: 1,
            dispatches: 0,
            payload: None,
            resolved: 0,
            failures: 0,
            outcome: None,
            dispatch_fails: input.dispatch_fails,
            reply: None,
            reply_at_headers: false,
            held: false,
            dispatched_from_body: false,
            continued_after_verdict: false,
            reads: Reads::default(),
            read_fault: input.read_fault.clone(),
            read_failed: false,
        }
    }

    /// The service's verdict denies the request.
    pub fn denied(&self) -> bool {
        match self.outcome {
            Some(Outcome::OverLimit(_)) => true,
            Some(Outcome::Failed) => self.cfg.failure_mode_deny,
            _ => false,
        }
    }

    fn run(&mut self, mut step: Step, site: Site) -> bool {
        // Whether `step` came from `on_body`.
        let mut from_body = false;
        loop {
            let origin = std::mem::take(&mut from_body);
            if debug() {
                eprintln!("step: {step:?}");
            }
            step = match step {
                Step::Continue(headers) => {
                    self.check_continue(&headers);
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
                Step::ReadBody { start, len } => {
                    from_body = true;
                    // host.rs: a failed read is unreadable, an absent one
                    // is empty.
                    match self.read(start, len) {
                        Some(bytes) => self.flow.on_body(&bytes, self.host),
                        None => self.flow.on_body_unreadable(self.host),
                    }
                }
                Step::Dispatch(payload) => {
                    assert!(
                        self.outstanding.is_none(),
                        "a second call while one is outstanding"
                    );
                    assert_eq!(self.dispatches, 0, "at most one call per request");
                    assert!(self.reply.is_none());
                    assert!(
                        !self.read_failed,
                        "a call for a body the host did not hand over"
                    );
                    self.dispatches += 1;
                    self.dispatched_from_body = origin;
                    self.check_payload(&payload, origin);
                    self.payload = Some(payload);
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

    fn check_continue(&self, headers: &[(String, String)]) {
        assert!(
            self.outstanding.is_none(),
            "Continue while a call is outstanding"
        );
        assert_eq!(self.flow.awaiting(), None);
        assert!(self.reply.is_none(), "Continue after a local reply");
        assert!(!self.flow.replied());
        assert!(
            !self.read_failed,
            "went on after the host did not hand over the body"
        );
        if self.dispatches == 0 {
            assert!(headers.is_empty(), "request headers without a call");
            return;
        }
        match &self.outcome {
            Some(Outcome::Ok(h, _)) => assert!(headers.is_empty() || headers == h),
            Some(Outcome::Failed) => {
                assert!(
                    !self.cfg.failure_mode_deny,
                    "went on after a failure under failure_mode_deny"
                );
                assert!(headers.is_empty());
            }
            other => panic!("went on after a call with outcome {other:?}"),
        }
    }

    /// A `ReadBody`: within what is buffered and within the cap; the whole
    /// body at most once, and while sniffing only new bytes, a piece at a
    /// time. `None`: the host failed the read.
    fn read(&mut self, start: usize, len: usize) -> Option<Vec<u8>> {
        let end = start
            .checked_add(len)
            .unwrap_or_else(|| panic!("ReadBody {{ {start}, {len} }} overflows"));
        assert!(
            end <= self.buffered.len(),
            "ReadBody {{ {start}, {len} }} past the {} bytes buffered",
            self.buffered.len()
        );
        assert!(
            end <= self.cfg.max_body_bytes,
            "ReadBody {{ {start}, {len} }} past the cap of {}",
            self.cfg.max_body_bytes
        );
        let sniffing = self.req.sniffed(&self.cfg) && self.reads.full == 0;
        let sniff_read =
            sniffing && start == self.reads.sniffed_upto && (1..=SNIFF_READ).contains(&len);
        if sniff_read {
            self.reads.sniffed_upto = end;
        } else {
            assert!(
                start == 0 && len == self.buffered.len(),
                "ReadBody {{ {start}, {len} }} is neither the whole body ({}) nor the next \
                 sniffed piece (from {})",
                self.buffered.len(),
                self.reads.sniffed_upto
            );
            self.reads.full += 1;
            assert!(self.reads.full <= 1, "the whole body read twice");
        }
        self.reads.total += len;
        assert!(
            self.reads.total <= 2 * self.body_seen.len(),
            "read {} bytes of a {}-byte body",
            self.reads.total,
            self.body_seen.len()
        );
        if len == 0 {
            // host.rs asks the host for nothing.
            return Some(Vec::new());
        }
        let n = self.reads.nonempty;
        self.reads.nonempty += 1;
        match &self.read_fault {
            Some(f) if u32::from(f.read) == n => {
                self.read_failed = true;
                match f.kind {
                    FaultKind::Empty => Some(Vec::new()),
                    FaultKind::Error => None,
                }
            }
            _ => Some(self.buffered[start..end].to_vec()),
        }
    }

    fn on_headers(&mut self, end_of_stream: bool) {
        let step = self.flow.on_request_headers(end_of_stream, self.host);
        let went_on = match step {
            Step::Pause => false,
            Step::Reply(r) => {
                self.check_header_reply(&r);
                self.reply_at_headers = true;
                self.run(Step::Reply(r), Site::Callback)
            }
            other => self.run(other, Site::Callback),
        };
        // host.rs: waiting on the fast path without holding the headers.
        let went_on = went_on || (!self.cfg.hold_headers && !end_of_stream && self.reply.is_none());
        self.held = !went_on && self.reply.is_none();
        self.check_owed();
    }

    fn on_chunk(&mut self, chunk: &[u8], end_of_stream: bool) {
        self.body_seen.extend_from_slice(chunk);
        self.body_ended |= end_of_stream;
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
        self.after_callback(step);
    }

    fn on_trailers(&mut self) {
        self.body_ended = true;
        let step = self.flow.on_request_trailers(self.host);
        if self.reply.is_some() {
            assert_eq!(step, Step::Pause, "trailers after the reply");
            return;
        }
        self.after_callback(step);
    }

    fn after_callback(&mut self, step: Step) {
        if self.run(step, Site::Callback) {
            self.buffered.clear();
            self.held = false;
        } else {
            self.held = self.reply.is_none();
        }
        self.check_owed();
    }

    fn answer(&mut self, reply: &RlsReply) {
        let Some(token) = self.outstanding.take() else {
            return;
        };
        let (status, body) = rls_reply(reply);
        let outcome = expected_outcome(reply, status, body.as_deref());
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
        self.check_owed();
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

    /// What the flow owes the request once a callback is done.
    fn check_owed(&self) {
        if self.reply.is_some() {
            return;
        }
        let max = self.cfg.max_body_bytes;
        // A denial decided on the headers is sent once the body is over the
        // cap (never read) or complete (read for its ids).
        if self.denied() && self.outstanding.is_none() {
            assert!(
                !self.body_ended && self.buffered.len() <= max,
                "a denial not sent: body of {} bytes, ended: {}",
                self.buffered.len(),
                self.body_ended
            );
        }
        // A sniffed body is refused as soon as it is known to be JSON-shaped
        // and over the cap (declared or buffered), or when its leading
        // whitespace reaches the cap.
        if self.req.sniffed(&self.cfg) && !self.req.compressed {
            let seen = &self.body_seen;
            let first = seen.iter().position(|b| !b.is_ascii_whitespace());
            match first {
                Some(i) if i < max && matches!(seen[i], b'{' | b'[') => assert!(
                    !self.req.declared_too_large && seen.len() <= max,
                    "a JSON-shaped sniffed body over the cap ({} bytes, declared too large: \
                     {}) not refused",
                    seen.len(),
                    self.req.declared_too_large
                ),
                Some(i) if i < max => {}
                _ => assert!(
                    seen.len() < max,
                    "{} bytes of leading whitespace, cap {max}, not refused",
                    seen.len()
                ),
            }
        }
    }
}

/// What the flow must make of the service's reply.
fn expected_outcome(reply: &RlsReply, status: u32, body: Option<&[u8]>) -> Outcome {
    let outcome = if status != 0 {
        Outcome::Failed
    } else {
        // No configuration here has shadow descriptors.
        match rls::decode_response(body.unwrap_or_default(), rls::Reading::default()) {
            Ok(Verdict::Ok {
                request_headers,
                response_headers,
                ..
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
        | (RlsReply::Grpc(_) | RlsReply::EmptyBody | RlsReply::Raw(_) | RlsReply::Code(_), _) => {}
        (r, o) => panic!("a well-formed reply {r:?} read as {o:?}"),
    }
    outcome
}

/// Drives one request: headers, then the events in order, then the end of
/// the body and the service's answer if still due.
pub fn drive<'a>(
    cfg: Rc<Config>,
    req: &'a Request,
    host: &'a FuzzHost<'a>,
    input: &Input,
) -> Run<'a> {
    let mut run = Run::new(cfg, req, host, input);
    run.on_headers(req.end_at_headers);
    run.body_ended = req.end_at_headers;
    let mut rest: &[u8] = &req.body;
    let chunk = |run: &mut Run, rest: &mut &[u8], n: usize| {
        if run.body_ended {
            return;
        }
        let n = n.min(rest.len());
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        let last = rest.is_empty() && input.end == End::LastChunk;
        run.on_chunk(head, last);
    };
    for event in &input.events {
        match event {
            Event::Chunk(n) => chunk(&mut run, &mut rest, usize::from(*n)),
            Event::Chunks { count, size } => {
                for _ in 0..*count {
                    if rest.is_empty() {
                        break;
                    }
                    chunk(&mut run, &mut rest, usize::from(*size).max(1));
                }
            }
            Event::Answer => run.answer(&input.rls),
            Event::Stray(t) => run.stray(*t),
        }
    }
    if !run.body_ended {
        match input.end {
            End::LastChunk => run.on_chunk(rest, true),
            End::Trailers => {
                if !rest.is_empty() {
                    run.on_chunk(rest, false);
                }
                run.on_trailers();
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
    run
}
