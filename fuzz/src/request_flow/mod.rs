//! One whole request through the filter's decision: a configuration, the
//! request headers, the body in chunks (and maybe trailers), the rate-limit
//! service's reply and what the host hands over, all derived from the fuzz
//! input, driven through [`Flow`](mcp_ratelimit::flow::Flow) exactly as
//! `host.rs` drives it. Besides never panicking, every run checks:
//! - no `Continue` while a rate-limit call is outstanding, and a request
//!   that was checked goes on only after an OK verdict or an allowed
//!   failure (`failure_mode_deny: false`);
//! - at most one call and one local reply per request, and nothing but
//!   `Pause` after the reply;
//! - every local reply is a JSON-RPC error in valid JSON, with the status,
//!   code and message the configuration and the verdict call for, and the
//!   request's ids (`null` for a denial decided on the headers whose body
//!   is over the cap);
//! - every `ReadBody` stays within what is buffered and within
//!   `max_body_bytes`; the whole body is read at most once, and sniffing
//!   reads only new bytes, at most 256 at a time: no more than twice the
//!   body is ever read;
//! - a body read the host fails, or answers with nothing where bytes are
//!   buffered, refuses the request (500, -32603): never let through or
//!   counted against a limit;
//! - a denial decided on the headers is sent as soon as the body is over
//!   the cap or complete; a sniffed body is refused (413) as soon as it is
//!   known to be JSON-shaped and over the cap, declared or buffered, or its
//!   leading whitespace reaches the cap;
//! - compressed bodies and repeated MCP headers are refused at the headers,
//!   whatever the content type the filter judges;
//! - a sniffed JSON-shaped body gets exactly the decision, call, reply and
//!   counters of the same request sent as `application/json`;
//! - the call's payload is a `RateLimitRequest` of the configured domain;
//! - `Mcp-Param` headers agree with their arguments exactly when an
//!   independent reading of the values says so;
//! - a request whose body has ended and whose call was answered is either
//!   answered or let go, never left held;
//! - requests that are not POSTs, and bodies of other types that do not
//!   look like JSON, pass untouched and uncounted; the counters add up.

mod after;
mod drive;
#[cfg(test)]
mod encode;
mod host;
pub mod input;
mod oracle;
mod replies;
mod request;
#[cfg(test)]
mod seeds;

use std::rc::Rc;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use mcp_ratelimit::config::Config;

use host::FuzzHost;
use input::{Input, CONFIGS};
use request::Request;

/// Splits an input into its control part and, after this separator, a body
/// taken as is. Seeds use it to carry readable bodies; without it the body
/// is generated from the control part.
pub const BODY_SEPARATOR: &[u8] = b"\n--body--\n";

thread_local! {
    static CFGS: Vec<Rc<Config>> = CONFIGS
        .iter()
        .map(|c| Rc::new(Config::parse(c.as_bytes()).expect("a fixed configuration is valid")))
        .collect();
}

/// `MCP_FUZZ_DEBUG` set: print the decoded input and every step.
pub fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("MCP_FUZZ_DEBUG").is_some())
}

/// The control part and the body of a fuzz input.
pub fn split(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data
        .windows(BODY_SEPARATOR.len())
        .position(|w| w == BODY_SEPARATOR)
    {
        Some(i) => (&data[..i], Some(&data[i + BODY_SEPARATOR.len()..])),
        None => (data, None),
    }
}

/// Decodes the control part.
pub fn decode(control: &[u8]) -> Option<Input> {
    Input::arbitrary_take_rest(Unstructured::new(control)).ok()
}

/// The fuzz target.
pub fn fuzz_one(data: &[u8]) {
    let (control, body) = split(data);
    let Some(input) = decode(control) else {
        return;
    };
    if debug() {
        eprintln!("input: {input:#?}");
        if let Some(b) = body {
            eprintln!("body: {:?}", String::from_utf8_lossy(b));
        }
    }
    run(&input, body);
}

/// What the filter made of a request (the seeds state what they expect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// A rate-limit call was made.
    pub called: bool,
    /// The local reply's HTTP status and (first) JSON-RPC error code.
    pub reply: Option<(u32, i64)>,
}

/// Drives one request and checks it; a sniffed JSON-shaped body is also
/// driven as JSON, and both decisions compared.
pub fn run(input: &Input, raw_body: Option<&[u8]>) -> Decision {
    let cfg = CFGS.with(|c| c[usize::from(input.config) % c.len()].clone());
    let req = Request::build(input, &cfg, raw_body);
    let host = FuzzHost::new(&req);
    let mut run = drive::drive(cfg.clone(), &req, &host, input);
    let twin_req = (req.sniffed(&cfg) && req.json_shaped() && input.read_fault.is_none())
        .then(|| req.as_json());
    if let Some(twin_req) = &twin_req {
        if debug() {
            eprintln!("the same request as JSON:");
        }
        let twin_host = FuzzHost::new(twin_req);
        let mut twin = drive::drive(cfg.clone(), twin_req, &twin_host, input);
        after::same_decision(&run, &twin);
        after::check(&mut twin);
    }
    after::check(&mut run);
    Decision {
        called: run.dispatches > 0,
        reply: run.reply.as_ref().map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            let first = v.as_array().and_then(|a| a.first()).unwrap_or(&v);
            (
                r.status,
                first["error"]["code"].as_i64().unwrap_or_default(),
            )
        }),
    }
}
