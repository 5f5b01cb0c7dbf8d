//! Checks once a request is over: what passed untouched, what had to be
//! refused, that nothing is left held, that the counters add up, and that a
//! sniffed body is judged exactly as the same body sent as JSON.

use mcp_ratelimit::flow::{Counter, Step};
use mcp_ratelimit::jsonrpc;

use super::drive::{Outcome, Run};
use super::oracle;

pub fn check(run: &mut Run) {
    let cfg = run.cfg.clone();
    let req = run.req;
    let host = run.host;
    let max = cfg.max_body_bytes;
    let sniffed = req.sniffed(&cfg);
    let judged_type = req.is_post && (req.is_json || sniffed);

    // Nothing for requests that are not POSTs, nor for other content types
    // unless their body starts like JSON within the cap.
    let not_json_shaped = sniffed
        && req
            .first_byte()
            .is_some_and(|(i, b)| i < max && b != b'{' && b != b'[');
    let refused_at_headers = req.compressed || req.repeats_mcp_header(&cfg);
    let passthrough = !req.is_post || (!req.is_json && !sniffed);
    if passthrough || (not_json_shaped && !refused_at_headers && !run.read_failed) {
        assert_eq!(run.dispatches, 0);
        assert!(
            run.reply.is_none(),
            "a reply for a request passed untouched"
        );
        assert!(!run.held || !run.body_ended);
        assert!(host.nothing_counted(), "counters for a passthrough request");
    }

    // What the headers alone refuse, for every body the filter judges.
    let refused_with = |detail: &str| {
        let r = run.reply.as_ref().map(|r| r.detail);
        assert_eq!(r, Some(detail), "expected {detail}");
        assert!(run.reply_at_headers, "{detail} after the headers");
    };
    if judged_type && req.compressed {
        refused_with("mcp_ratelimit_unsupported_encoding");
    } else if judged_type && req.repeats_mcp_header(&cfg) {
        refused_with("mcp_ratelimit_header_mismatch");
    }

    // The body cap holds for every body the filter judged, and a body over
    // it judged by its content never passes.
    if host.count_of(Counter::Inspected) == 1 {
        assert!(
            run.body_seen.len() <= max,
            "a body of {} bytes over the cap of {max} was judged",
            run.body_seen.len()
        );
    }
    let by_body = req.is_post
        && (req.is_json || (sniffed && req.json_shaped()))
        && host.count_of(Counter::FastPath) == 0;
    if by_body && run.body_seen.len() > max {
        assert!(run.reply.is_some(), "a body over the cap was not refused");
        assert_eq!(run.dispatches, 0);
    }

    // A body the host did not hand over (a failed read, or nothing where
    // bytes are buffered) is refused.
    if run.read_failed {
        let r = run.reply.as_ref().map(|r| r.detail);
        assert_eq!(r, Some("mcp_ratelimit_unreadable_body"));
    }

    // A request whose body ended and whose call was answered is not left
    // hanging: it was answered, or it goes on.
    if run.body_ended {
        assert!(
            run.reply.is_some() || !run.held,
            "request left held: outcome {:?}",
            run.outcome
        );
    }

    check_counters(run);

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
        assert_eq!(run.flow.on_request_trailers(host), Step::Pause);
        assert_eq!(run.flow.on_rls_response(0, 0, None, host), Step::Pause);
        assert_eq!(run.flow.on_request_body(1 << 30, true, host), Step::Pause);
        assert!(run.flow.response_headers().is_empty());
    }

    // Mcp-Param headers are compared with their arguments by value.
    if !cfg.param_headers.is_empty() {
        if let Ok(body) = jsonrpc::parse(&req.body, &cfg.spec()) {
            oracle::check_param_headers(&body, &cfg.param_headers, |name| {
                req.headers.get(name).cloned()
            });
        }
    }
}

fn check_counters(run: &Run) {
    let host = run.host;
    assert_eq!(host.count_of(Counter::Checked), u64::from(run.dispatches));
    assert_eq!(
        host.count_of(Counter::Ok)
            + host.count_of(Counter::OverLimit)
            + host.count_of(Counter::Error),
        u64::from(run.resolved)
    );
    assert_eq!(host.count_of(Counter::Error), u64::from(run.failures));
    let allowed_failures = if run.cfg.failure_mode_deny {
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
        assert!(run.cfg.header_fast_path);
        assert!(
            run.req.is_json,
            "the header fast path for another content type"
        );
        assert_eq!(host.count_of(Counter::Inspected), 0);
    }
}

/// A sniffed JSON-shaped body and the same request with a JSON content type
/// get the same decision, call, reply and counters (unless the JSON one was
/// decided by its headers, which only JSON content types are).
pub fn same_decision(sniffed: &Run, json: &Run) {
    if json.host.count_of(Counter::FastPath) > 0 {
        return;
    }
    assert_eq!(
        sniffed.payload, json.payload,
        "sniffed and JSON calls differ"
    );
    assert_eq!(sniffed.reply, json.reply, "sniffed and JSON replies differ");
    assert_eq!(
        sniffed.host.counts(),
        json.host.counts(),
        "sniffed and JSON counters differ"
    );
    assert_eq!(sniffed.outcome, json.outcome);
    assert_eq!(sniffed.held, json.held);
}
