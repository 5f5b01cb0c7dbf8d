//! The over-limit cache and leased quota, through the flow: what is asked,
//! what is answered without a call, and what each reply teaches.

use super::*;

fn shared_host() -> MockHost {
    let mut h = MockHost::post_json();
    h.shared_on = true;
    h.now.set(1_000_000);
    h
}

fn reply_with(overall: i32, statuses: Vec<pb::DescriptorStatus>) -> Vec<u8> {
    let reset = statuses
        .first()
        .and_then(|s| s.duration_until_reset.as_ref())
        .map_or(0, |d| d.seconds);
    pb::RateLimitResponse {
        overall_code: overall,
        statuses,
        response_headers_to_add: vec![pb::HeaderValue {
            key: "RateLimit-Reset".into(),
            value: reset.to_string(),
            raw_value: vec![],
        }],
        request_headers_to_add: vec![],
    }
    .encode_to_vec()
}

/// The hits each descriptor sent carries.
fn hits(step: &Step) -> Vec<u64> {
    sent(step)
        .descriptors
        .iter()
        .map(|d| d.hits_addend.as_ref().map_or(1, |h| h.value))
        .collect()
}

/// One request through the flow: its step before any reply, and the step
/// after `reply` when it called.
fn request(c: &Rc<Config>, host: &MockHost, body: &str, reply: Option<&[u8]>) -> (Step, Step) {
    let mut flow = Flow::new(c.clone());
    let first = drive(&mut flow, host, body);
    let Step::Dispatch(p) = &first else {
        return (first, Step::Pause);
    };
    let first = Step::Dispatch(p.clone());
    flow.on_dispatched(9, host);
    let last = match reply {
        Some(r) => flow.answer_rls(9, 0, Some(r), host),
        None => flow.answer_rls(9, 14, None, host),
    };
    (first, last)
}

fn over(secs: i64) -> Vec<u8> {
    reply_with(
        rls::CODE_OVER_LIMIT,
        vec![status(rls::CODE_OVER_LIMIT, secs)],
    )
}

fn ok(secs: i64) -> Vec<u8> {
    reply_with(rls::CODE_OK, vec![status(rls::CODE_OK, secs)])
}

#[test]
fn a_denial_is_repeated_without_a_call_exactly_as_the_service_gave_it() {
    let c = cfg(BASIC);
    assert_eq!(c.over_limit_cache_ms, Some(1000));
    let host = shared_host();
    let (first, Step::Reply(from_service)) =
        request(&c, &host, &call_id(1, "search_docs"), Some(&over(31)))
    else {
        panic!("not denied");
    };
    assert!(matches!(first, Step::Dispatch(_)));
    // 1 ms later: denied without a call, same body and headers; the reset
    // is 31 s from when the call left.
    host.now.set(host.now.get() + 1);
    let (Step::Reply(cached), Step::Pause) = request(&c, &host, &call_id(1, "search_docs"), None)
    else {
        panic!("not denied from the cache");
    };
    assert_eq!(cached, from_service);
    assert_eq!(cached.status, 429);
    assert!(cached
        .headers
        .contains(&("retry-after".to_owned(), "31".to_owned())));
    assert!(cached
        .headers
        .contains(&("ratelimit-reset".to_owned(), "31".to_owned())));
    assert_eq!(host.count_of(Counter::OverLimitCached), 1);
    assert_eq!(host.count_of(Counter::Checked), 1);
    // Its own id, and the reset counted down.
    host.now.set(host.now.get() + 600);
    let (Step::Reply(r), _) = request(&c, &host, &call_id(42, "search_docs"), None) else {
        panic!("not denied from the cache");
    };
    assert!(r.body.contains(r#""id":42"#), "{}", r.body);
    assert!(r
        .headers
        .contains(&("retry-after".to_owned(), "31".to_owned())));
    // Another tool, or the same tool at another cost (a batch of two), is
    // asked.
    let (other, _) = request(&c, &host, &call_id(1, "fetch_url"), Some(&ok(30)));
    assert!(matches!(other, Step::Dispatch(_)));
    let two = format!(
        "[{},{}]",
        call_id(1, "search_docs"),
        call_id(2, "search_docs")
    );
    let (batch, _) = request(&c, &host, &two, Some(&ok(30)));
    assert_eq!(hits(&batch), vec![2]);
}

#[test]
fn past_the_cap_one_request_asks_again_while_the_others_are_denied() {
    let c = cfg(BASIC);
    let host = shared_host();
    request(&c, &host, &call_id(1, "search_docs"), Some(&over(31)));
    host.now.set(host.now.get() + 1000);
    // The probe: its call is in flight...
    let mut probe = Flow::new(c.clone());
    let step = drive(&mut probe, &host, &call_id(1, "search_docs"));
    assert!(matches!(step, Step::Dispatch(_)), "{step:?}");
    probe.on_dispatched(5, &host);
    // ...the others are still denied...
    let (Step::Reply(r), _) = request(&c, &host, &call_id(2, "search_docs"), None) else {
        panic!("not denied while the probe asks");
    };
    assert_eq!(r.status, 429);
    // ...and the limit has been raised: the probe passes, and so do the
    // next requests, each asking.
    let Step::Continue(_) = probe.on_rls_response(5, 0, Some(&ok(30)), &host) else {
        panic!("probe not admitted");
    };
    let (next, Step::Continue(_)) = request(&c, &host, &call_id(3, "search_docs"), Some(&ok(30)))
    else {
        panic!("not admitted");
    };
    assert!(matches!(next, Step::Dispatch(_)));
    assert_eq!(host.count_of(Counter::Checked), 3);
}

#[test]
fn shadow_descriptors_and_a_disabled_cache_are_always_asked() {
    let shadow = cfg(r#"{"domain":"mcp","rls_cluster":"r","shadow":true}"#);
    let off = cfg(r#"{"domain":"mcp","rls_cluster":"r","over_limit_cache":false}"#);
    assert_eq!(off.over_limit_cache_ms, None);
    for c in [shadow, off] {
        let host = shared_host();
        for _ in 0..3 {
            let (step, _) = request(&c, &host, &call_id(1, "search_docs"), Some(&over(31)));
            assert!(matches!(step, Step::Dispatch(_)));
        }
        assert_eq!(host.count_of(Counter::OverLimitCached), 0);
        assert_eq!(host.count_of(Counter::Checked), 3);
    }
}

#[test]
fn a_denial_in_a_multi_descriptor_request_is_remembered_for_that_descriptor() {
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","descriptors":[
            {"name":"per_tool","entries":[{"key":"tool","mcp":"tool"}]},
            {"name":"per_user","entries":[{"key":"user","header":"x-user"}]}]}"#);
    let host = shared_host().with("x-user", "alice");
    // The user is over, the tool is not.
    let reply = reply_with(
        rls::CODE_OVER_LIMIT,
        vec![status(rls::CODE_OK, 31), status(rls::CODE_OVER_LIMIT, 31)],
    );
    request(&c, &host, &call_id(1, "search_docs"), Some(&reply));
    // Alice is denied for any tool; Bob is asked.
    let (Step::Reply(_), _) = request(&c, &host, &call_id(1, "fetch_url"), None) else {
        panic!("alice not denied from the cache");
    };
    let bob = shared_host().with("x-user", "bob");
    *bob.shared.borrow_mut() = host.shared.borrow().clone();
    bob.cas.set(host.cas.get());
    bob.now.set(host.now.get());
    let (step, _) = request(&c, &bob, &call_id(1, "search_docs"), Some(&ok(31)));
    assert!(matches!(step, Step::Dispatch(_)));
}

const LEASED: &str = r#"{"domain":"mcp","rls_cluster":"r","failure_mode_deny":true,
    "descriptors":[{"name":"per_tool","entries":[{"key":"tool","mcp":"tool"}],"lease":10}]}"#;

#[test]
fn a_lease_pays_for_requests_without_calls_and_is_renewed_on_the_side() {
    let c = cfg(LEASED);
    let host = shared_host();
    // No lease yet: the request asks for 10 hits, its own included.
    let (first, Step::Continue(_)) = request(&c, &host, &call_id(1, "search_docs"), Some(&ok(60)))
    else {
        panic!("not admitted");
    };
    assert_eq!(hits(&first), vec![10]);
    // 9 left: three requests without a call...
    for _ in 0..3 {
        let (step, _) = request(&c, &host, &call_id(1, "search_docs"), None);
        assert_eq!(step, Step::Continue(vec![]));
    }
    assert_eq!(host.count_of(Counter::Leased), 3);
    // ...the one that leaves 5 renews the lease on the side: admitted even
    // when the renewal is refused...
    let (renewal, Step::Continue(_)) =
        request(&c, &host, &call_id(1, "search_docs"), Some(&over(60)))
    else {
        panic!("a paid request was denied by its renewal");
    };
    assert_eq!(hits(&renewal), vec![10]);
    // ...then the 5 left are spent...
    for _ in 0..5 {
        let (step, _) = request(&c, &host, &call_id(1, "search_docs"), None);
        assert_eq!(step, Step::Continue(vec![]));
    }
    // ...and, the lease refused, each request asks for its own hit.
    let (plain, Step::Reply(r)) = request(&c, &host, &call_id(1, "search_docs"), Some(&over(60)))
    else {
        panic!("not denied");
    };
    assert_eq!(hits(&plain), vec![1]);
    assert_eq!(r.status, 429);
    assert_eq!(host.count_of(Counter::Checked), 3);
}

#[test]
fn a_failed_renewal_on_the_side_does_not_deny_a_paid_request() {
    let c = cfg(LEASED);
    assert!(c.failure_mode_deny);
    let host = shared_host();
    request(&c, &host, &call_id(1, "search_docs"), Some(&ok(60)));
    for _ in 0..3 {
        request(&c, &host, &call_id(1, "search_docs"), None);
    }
    let (renewal, after) = request(&c, &host, &call_id(1, "search_docs"), None);
    assert_eq!(hits(&renewal), vec![10]);
    assert_eq!(after, Step::Continue(vec![]));
    // The renewal failed: the next request may renew.
    let (next, _) = request(&c, &host, &call_id(1, "search_docs"), Some(&ok(60)));
    assert_eq!(hits(&next), vec![10]);
    // A request the lease could not pay is denied when its call fails.
    let c = cfg(LEASED);
    let host = shared_host();
    let (_, Step::Reply(r)) = request(&c, &host, &call_id(1, "search_docs"), None) else {
        panic!("an unpaid request passed a failed call");
    };
    assert_eq!(r.status, 503);
}

#[test]
fn a_lease_is_of_one_descriptor_and_never_outlives_its_window() {
    let c = cfg(LEASED);
    let host = shared_host();
    request(&c, &host, &call_id(1, "search_docs"), Some(&ok(3)));
    // Another tool has its own lease.
    let (other, _) = request(&c, &host, &call_id(1, "fetch_url"), Some(&ok(60)));
    assert_eq!(hits(&other), vec![10]);
    // 3 s whole seconds: spent for at most 2 s.
    host.now.set(host.now.get() + 1999);
    let (step, _) = request(&c, &host, &call_id(1, "search_docs"), None);
    assert_eq!(step, Step::Continue(vec![]));
    host.now.set(host.now.get() + 1);
    let (step, _) = request(&c, &host, &call_id(1, "search_docs"), Some(&ok(60)));
    assert_eq!(hits(&step), vec![10]);
}

#[test]
fn lease_hits_are_spent_after_a_request_asking_on_its_own_was_denied() {
    let c = cfg(LEASED);
    let host = shared_host();
    request(&c, &host, &call_id(1, "search_docs"), Some(&ok(60)));
    for _ in 0..3 {
        request(&c, &host, &call_id(1, "search_docs"), None);
    }
    // The renewal on the side is in flight...
    let mut renewal = Flow::new(c.clone());
    let step = drive(&mut renewal, &host, &call_id(1, "search_docs"));
    assert_eq!(hits(&step), vec![10]);
    renewal.on_dispatched(3, &host);
    for _ in 0..5 {
        let (step, _) = request(&c, &host, &call_id(1, "search_docs"), None);
        assert_eq!(step, Step::Continue(vec![]));
    }
    // ...the lease is empty: a request asks on its own, and is denied
    // (another Envoy took the rest)...
    let (plain, Step::Reply(_)) = request(&c, &host, &call_id(1, "search_docs"), Some(&over(60)))
    else {
        panic!("not denied");
    };
    assert_eq!(hits(&plain), vec![1]);
    // ...then the renewal lands, granted before that denial: its hits are
    // spent, not lost to the cached denial.
    assert!(matches!(
        renewal.on_rls_response(3, 0, Some(&ok(60)), &host),
        Step::Continue(_)
    ));
    let (step, _) = request(&c, &host, &call_id(1, "search_docs"), None);
    assert_eq!(step, Step::Continue(vec![]));
    assert_eq!(host.count_of(Counter::OverLimitCached), 0);
}

#[test]
fn the_record_names_a_denial_from_the_cache_and_an_admission_from_a_lease() {
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","filter_state":true,
            "descriptors":[{"name":"per_tool","entries":[{"key":"tool","mcp":"tool"}],"lease":10},
                           {"name":"per_user","entries":[{"key":"user","header":"x-user"}]}]}"#);
    let host = shared_host().with("x-user", "alice");
    let both_ok = reply_with(
        rls::CODE_OK,
        vec![status(rls::CODE_OK, 60), status(rls::CODE_OK, 60)],
    );
    request(&c, &host, &call_id(1, "search_docs"), Some(&both_ok));
    // Alice over her limit: denied by the service, then by the cache.
    let over_user = reply_with(rls::CODE_OVER_LIMIT, vec![status(rls::CODE_OVER_LIMIT, 60)]);
    let mut flow = Flow::new(c.clone());
    let step = drive(&mut flow, &host, &call_id(2, "search_docs"));
    assert_eq!(
        entries(&sent(&step)).len(),
        1,
        "the tool paid from its lease"
    );
    flow.on_dispatched(4, &host);
    assert!(matches!(
        flow.answer_rls(4, 0, Some(&over_user), &host),
        Step::Reply(_)
    ));
    let mut flow = Flow::new(c.clone());
    let Step::Reply(_) = drive(&mut flow, &host, &call_id(3, "search_docs")) else {
        panic!("not denied from the cache");
    };
    let r = flow.record();
    assert_eq!(
        (r.verdict, r.reason),
        (Some("denied"), Some("over_limit_cached"))
    );
    assert_eq!(r.descriptor.as_deref(), Some("per_user"));
    // Without the user descriptor: admitted from the lease.
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","filter_state":true,
            "descriptors":[{"name":"per_tool","entries":[{"key":"tool","mcp":"tool"}],"lease":10}]}"#);
    let host = shared_host();
    request(&c, &host, &call_id(1, "search_docs"), Some(&ok(60)));
    let mut flow = Flow::new(c.clone());
    assert_eq!(
        drive(&mut flow, &host, &call_id(2, "search_docs")),
        Step::Continue(vec![])
    );
    let r = flow.record();
    assert_eq!((r.verdict, r.reason), (Some("allowed"), Some("leased")));
}
