//! Operator controls: descriptor objects, costs, missing sources, shadow
//! descriptors and bounded tool names.

use super::*;

/// The hits each descriptor sent carries (1 when the field is absent).
fn hits(req: &pb::RateLimitRequest) -> Vec<u64> {
    req.descriptors
        .iter()
        .map(|d| d.hits_addend.as_ref().map_or(1, |h| h.value))
        .collect()
}

fn reply_with(overall: i32, statuses: Vec<pb::DescriptorStatus>) -> Vec<u8> {
    pb::RateLimitResponse {
        overall_code: overall,
        statuses,
        response_headers_to_add: vec![],
        request_headers_to_add: vec![],
    }
    .encode_to_vec()
}

/// Dispatches `body` with `host`, then answers the call with `reply`.
fn answer(flow: &mut Flow, host: &MockHost, body: &str, reply: &[u8]) -> Step {
    let step = drive(flow, host, body);
    assert!(matches!(step, Step::Dispatch(_)), "{step:?}");
    flow.on_dispatched(7, host);
    flow.answer_rls(7, 0, Some(reply), host)
}

fn batch(calls: &[String]) -> String {
    format!("[{}]", calls.join(","))
}

const PER_USER: &str = r#"{"domain":"mcp","rls_cluster":"r","descriptors":[
    {"name":"per_user_tool","on_missing":"refuse",
     "entries":[{"key":"user","header":"x-user-id"},{"key":"tool","mcp":"tool"}]},
    {"name":"per_tenant","entries":[{"key":"tenant","header":"x-tenant","default":"anonymous"}]}]}"#;

#[test]
fn a_missing_identity_is_refused_not_skipped() {
    let c = cfg(PER_USER);
    assert_eq!(c.descriptors[0].name, "per_user_tool");
    assert_eq!(c.descriptors[0].on_missing, OnMissing::Refuse);
    assert_eq!(c.descriptors[1].on_missing, OnMissing::Skip);

    // With the identity: both descriptors, the tenant from its default.
    let host = MockHost::post_json().with("x-user-id", "alice");
    let mut flow = Flow::new(c.clone());
    let req = sent(&drive(&mut flow, &host, &call("search_docs")));
    assert_eq!(
        entries(&req),
        vec![
            vec![
                ("user".into(), "alice".into()),
                ("tool".into(), "search_docs".into())
            ],
            vec![("tenant".into(), "anonymous".into())],
        ]
    );

    // Without it: refused with the request's id, no call.
    let host = MockHost::post_json().with("x-tenant", "acme");
    let mut flow = Flow::new(c.clone());
    let Step::Reply(r) = drive(&mut flow, &host, &call("search_docs")) else {
        panic!("not refused");
    };
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"Invalid Request","data":{"reason":"the request lacks a value descriptor per_user_tool needs"}}}"#
    );
    assert_eq!(host.count_of(Counter::MissingSource), 1);
    assert_eq!(host.count_of(Counter::Checked), 0);

    // A message the descriptor is not about (no tool) is not refused: the
    // tenant descriptor alone applies.
    let host = MockHost::post_json();
    let mut flow = Flow::new(c);
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let req = sent(&drive(&mut flow, &host, list));
    assert_eq!(
        entries(&req),
        vec![vec![("tenant".into(), "anonymous".into())]]
    );
}

#[test]
fn a_missing_identity_on_the_fast_path_is_refused_with_the_body_id() {
    let c = cfg(
        r#"{"domain":"mcp","rls_cluster":"r","header_fast_path":true,"descriptors":[
            {"name":"u","on_missing":"refuse","entries":[{"key":"user","header":"x-user-id"},{"key":"tool","mcp":"tool"}]}]}"#,
    );
    let host = modern_call(MockHost::post_json(), "search_docs");
    let mut flow = Flow::new(c);
    // Not judged from the headers: the body is read, to answer with its id.
    assert_eq!(flow.on_request_headers(false, &host), Step::Pause);
    assert_eq!(host.count_of(Counter::FastPath), 0);
    let body = call_id(5, "search_docs");
    let step = flow.on_request_body(body.len(), true, &host);
    let Step::ReadBody { start: 0, len } = step else {
        panic!("{step:?}");
    };
    assert_eq!(len, body.len());
    let Step::Reply(r) = flow.on_body(body.as_bytes(), &host) else {
        panic!("not refused");
    };
    assert!(r.body.contains(r#""id":5,"#), "{}", r.body);
    assert_eq!(host.count_of(Counter::MissingSource), 1);
}

#[test]
fn defaults_apply_to_request_sources_only() {
    for (json, key) in [
        (
            r#"[[{"key":"t","mcp":"tool","default":"x"}]]"#,
            "descriptors[0][0].default",
        ),
        (
            r#"[[{"key":"t","value":"v","default":"x"}]]"#,
            "descriptors[0][0].default",
        ),
        (
            r#"[[{"key":"u","header":"x-u","default":""}]]"#,
            "descriptors[0][0].default",
        ),
        (
            r#"[{"name":"","entries":[{"key":"t","mcp":"tool"}]}]"#,
            "descriptors[0].name",
        ),
        (
            r#"[{"name":"a","entries":[{"key":"t","mcp":"tool"}]},{"name":"a","entries":[{"key":"m","mcp":"method"}]}]"#,
            "descriptors[1].name",
        ),
        (r#"[{"name":"a","entries":[]}]"#, "descriptors[0]"),
        (
            r#"[{"name":"a","entries":[{"key":"t","mcp":"tool"}],"on_missing":"deny"}]"#,
            "on_missing",
        ),
        (
            r#"[{"name":"a","entries":[{"key":"t","mcp":"tool"}],"weight":2}]"#,
            "weight",
        ),
    ] {
        let text = format!(r#"{{"domain":"d","rls_cluster":"r","descriptors":{json}}}"#);
        let msg = Config::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(msg.contains(key), "{json}: {msg}");
    }
}

const COSTS: &str = r#"{"domain":"mcp","rls_cluster":"r","tool_costs":{"generate_report":10},"default_cost":2,
    "descriptors":[
      {"name":"budget","entries":[{"key":"tenant","value":"acme"}]},
      {"name":"calls","cost":false,"entries":[{"key":"tool","mcp":"tool"}]}]}"#;

#[test]
fn costs_are_sent_as_hits() {
    let c = cfg(COSTS);
    assert_eq!(c.cost(Some("generate_report")), 10);
    assert_eq!(c.cost(Some("lookup")), 2);
    assert_eq!(c.cost(None), 2);
    let host = MockHost::post_json();
    let mut flow = Flow::new(c.clone());
    let req = sent(&drive(&mut flow, &host, &call("generate_report")));
    assert_eq!(hits(&req), vec![10, 1]);

    // A batch: the budget gets the sum, each tool its number of calls;
    // `call_tool` costs what the tool it calls costs.
    let via = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"generate_report"}}}"#;
    let body = batch(&[
        call_id(1, "generate_report"),
        call_id(2, "lookup"),
        via.to_owned(),
    ]);
    let mut flow = Flow::new(c);
    let req = sent(&drive(&mut flow, &host, &body));
    assert_eq!(
        entries(&req),
        vec![
            vec![("tenant".into(), "acme".into())],
            vec![("tool".into(), "generate_report".into())],
            vec![("tool".into(), "lookup".into())],
        ]
    );
    assert_eq!(hits(&req), vec![10 + 2 + 10, 2, 1]);
}

#[test]
fn cost_bounds_are_checked() {
    for (json, key) in [
        (r#""tool_costs":{"t":0}"#, "tool_costs.t"),
        (r#""tool_costs":{"t":1000001}"#, "tool_costs.t"),
        (r#""tool_costs":{"":3}"#, "tool_costs"),
        (r#""tool_costs":{"t":-1}"#, "tool_costs"),
        (
            r#""tool_costs":{"t":1,"t":2}"#,
            "`tool_costs` names t twice",
        ),
        (r#""tool_costs":[]"#, "tool_costs"),
        (r#""default_cost":0"#, "default_cost"),
        (r#""tools":[]"#, "tools"),
        (r#""tools":["a","a"]"#, "tools"),
        (r#""tools":["_other"]"#, "tools"),
        (r#""unknown_tools":"other""#, "unknown_tools"),
        (r#""tools":["a"],"unknown_tools":"drop""#, "unknown_tools"),
        (r#""shadow":"yes""#, "shadow"),
        (
            r#""tools":["a"],"tool_costs":{"b":2}"#,
            "`tool_costs` names b, which `tools` does not list",
        ),
    ] {
        let text = format!(r#"{{"domain":"d","rls_cluster":"r",{json}}}"#);
        let msg = Config::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(msg.contains(key), "{json}: {msg}");
    }
}

#[test]
fn tools_outside_the_list_share_one_bucket_or_are_refused() {
    let other = cfg(r#"{"domain":"mcp","rls_cluster":"r","tools":["search_docs","get_weather"]}"#);
    assert_eq!(other.unknown_tools, UnknownTools::Other);
    let host = MockHost::post_json();
    for (tool, sent_as) in [
        ("search_docs", "search_docs"),
        ("x1", "_other"),
        ("x2", "_other"),
    ] {
        let mut flow = Flow::new(other.clone());
        let req = sent(&drive(&mut flow, &host, &call(tool)));
        assert_eq!(entries(&req), vec![vec![("tool".into(), sent_as.into())]]);
    }
    let refuse = cfg(
        r#"{"domain":"mcp","rls_cluster":"r","tools":["search_docs"],"unknown_tools":"refuse"}"#,
    );
    let mut flow = Flow::new(refuse.clone());
    let Step::Reply(r) = drive(&mut flow, &host, &call_id(3, "made_up")) else {
        panic!("not refused");
    };
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"Invalid params","data":{"reason":"unknown tool: made_up"}}}"#
    );
    assert_eq!(host.count_of(Counter::UnknownTool), 1);
    // One unknown tool in a batch refuses the batch.
    let mut flow = Flow::new(refuse);
    let body = batch(&[call_id(1, "search_docs"), call_id(2, "made_up")]);
    assert!(matches!(drive(&mut flow, &host, &body), Step::Reply(_)));
    assert_eq!(host.count_of(Counter::UnknownTool), 2);
}

const SHADOW: &str = r#"{"domain":"mcp","rls_cluster":"r","descriptors":[
    {"name":"enforced","entries":[{"key":"tool","mcp":"tool"}]},
    {"name":"trial","shadow":true,"entries":[{"key":"tenant","value":"acme"}]}]}"#;

#[test]
fn a_shadow_descriptor_over_its_limit_does_not_deny() {
    let c = cfg(SHADOW);
    assert!(!c.descriptors[0].shadow && c.descriptors[1].shadow);
    let host = MockHost::post_json();
    // Only the shadow descriptor is over: allowed, counted.
    let mut flow = Flow::new(c.clone());
    let reply = reply_with(2, vec![status(1, 30), status(2, 40)]);
    let step = answer(&mut flow, &host, &call("search_docs"), &reply);
    assert_eq!(step, Step::go());
    assert_eq!(host.count_of(Counter::ShadowOverLimit), 1);
    assert_eq!(host.count_of(Counter::Ok), 1);
    assert_eq!(host.count_of(Counter::OverLimit), 0);

    // Both over: denied, Retry-After from the enforced descriptor only.
    let mut flow = Flow::new(c.clone());
    let reply = reply_with(2, vec![status(2, 30), status(2, 400)]);
    let Step::Reply(r) = answer(&mut flow, &host, &call("search_docs"), &reply) else {
        panic!("not denied");
    };
    assert_eq!(r.status, 429);
    assert!(r.body.contains(r#""retryAfterSeconds":30"#), "{}", r.body);
    assert_eq!(host.count_of(Counter::ShadowOverLimit), 2);

    // Statuses that do not line up with what was sent: every OVER_LIMIT
    // denies.
    let mut flow = Flow::new(c);
    let reply = reply_with(2, vec![status(2, 40)]);
    assert!(matches!(
        answer(&mut flow, &host, &call("search_docs"), &reply),
        Step::Reply(_)
    ));
}

#[test]
fn top_level_shadow_makes_every_descriptor_shadow() {
    let c = cfg(r#"{"domain":"mcp","rls_cluster":"r","shadow":true}"#);
    assert!(c.descriptors.iter().all(|d| d.shadow));
    let host = MockHost::post_json();
    let mut flow = Flow::new(c);
    let step = answer(&mut flow, &host, &call("search_docs"), &reply_bytes(2, 10));
    assert_eq!(step, Step::go());
    assert_eq!(host.count_of(Counter::ShadowOverLimit), 1);
}

#[test]
fn no_shadow_bookkeeping_without_shadow_descriptors() {
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    let step = drive(&mut flow, &host, &call("search_docs"));
    assert!(matches!(step, Step::Dispatch(_)));
    flow.on_dispatched(1, &host);
    let State::AwaitingRls { call, .. } = &flow.state else {
        panic!("not awaiting");
    };
    assert!(call.sent.is_empty() && call.target.is_none());
}

#[test]
fn draft03_headers_and_retry_after_ms() {
    let c = cfg(
        r#"{"domain":"mcp","rls_cluster":"r","ratelimit_headers":"draft03","over_limit":{"retry_after_ms":true}}"#,
    );
    assert!(c.ratelimit_headers && c.over_limit.retry_after_ms);
    let limited = |code: i32, remaining: u32| pb::DescriptorStatus {
        code,
        current_limit: Some(pb::RateLimit {
            requests_per_unit: 3,
            unit: 2,
            name: String::new(),
        }),
        limit_remaining: remaining,
        duration_until_reset: Some(pb::Duration {
            seconds: 41,
            nanos: 500_000_000,
        }),
    };
    let host = MockHost::post_json();
    // Allowed: the headers go on the response.
    let mut flow = Flow::new(c.clone());
    let step = answer(
        &mut flow,
        &host,
        &call("search_docs"),
        &reply_with(1, vec![limited(1, 2)]),
    );
    assert_eq!(step, Step::go());
    assert_eq!(
        flow.response_headers(),
        vec![
            ("x-ratelimit-limit".to_owned(), "3, 3;w=60".to_owned()),
            ("x-ratelimit-remaining".to_owned(), "2".to_owned()),
            ("x-ratelimit-reset".to_owned(), "41".to_owned()),
        ]
    );
    // Denied: the same headers, and the reset in milliseconds.
    let mut flow = Flow::new(c);
    let Step::Reply(r) = answer(
        &mut flow,
        &host,
        &call("search_docs"),
        &reply_with(2, vec![limited(2, 0)]),
    ) else {
        panic!("not denied");
    };
    assert!(
        r.body
            .ends_with(r#""data":{"retryAfterSeconds":42,"retryAfterMs":41500}}}"#),
        "{}",
        r.body
    );
    assert!(r
        .headers
        .contains(&("x-ratelimit-remaining".to_owned(), "0".to_owned())));
    assert!(r
        .headers
        .contains(&("retry-after".to_owned(), "42".to_owned())));
    // Off by default.
    let host = MockHost::post_json();
    let mut flow = Flow::new(cfg(BASIC));
    answer(
        &mut flow,
        &host,
        &call("search_docs"),
        &reply_with(1, vec![limited(1, 2)]),
    );
    assert!(flow.response_headers().is_empty());
    for (json, key) in [
        (r#""ratelimit_headers":"draft04""#, "ratelimit_headers"),
        (r#""over_limit":{"retry_after_ms":"yes"}"#, "retry_after_ms"),
        (
            r#""rls_failure":{"retry_after_ms":true}"#,
            "rls_failure.retry_after_ms",
        ),
    ] {
        let text = format!(r#"{{"domain":"d","rls_cluster":"r",{json}}}"#);
        let msg = Config::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(msg.contains(key), "{json}: {msg}");
    }
}

#[test]
fn the_record_says_what_was_decided() {
    let c = cfg(
        r#"{"domain":"mcp","rls_cluster":"r","filter_state":true,"descriptors":[
            {"name":"per_tool","entries":[{"key":"tool","mcp":"tool"}]},
            {"name":"trial","shadow":true,"entries":[{"key":"tenant","value":"acme"}]}]}"#,
    );
    let host = MockHost::post_json();
    let via = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs"}}}"#;
    // Denied by per_tool.
    let mut flow = Flow::new(c.clone());
    let reply = reply_with(2, vec![status(2, 5), status(1, 5)]);
    assert!(matches!(
        answer(&mut flow, &host, via, &reply),
        Step::Reply(_)
    ));
    assert_eq!(
        flow.record(),
        &Record {
            method: Some("tools/call".into()),
            target: Some("search_docs".into()),
            verdict: Some("denied"),
            reason: None,
            descriptor: Some("per_tool".into()),
        }
    );
    // Over the shadow limit only.
    let mut flow = Flow::new(c.clone());
    let reply = reply_with(2, vec![status(1, 5), status(2, 5)]);
    answer(&mut flow, &host, &call("get_weather"), &reply);
    assert_eq!(flow.record().verdict, Some("shadow"));
    assert_eq!(flow.record().descriptor, None);
    // Allowed.
    let mut flow = Flow::new(c.clone());
    answer(
        &mut flow,
        &host,
        &call("get_weather"),
        &reply_with(1, vec![status(1, 5), status(1, 5)]),
    );
    assert_eq!(flow.record().verdict, Some("allowed"));
    // The service failed, fail-open.
    let mut flow = Flow::new(c.clone());
    drive(&mut flow, &host, &call("get_weather"));
    flow.on_dispatched(7, &host);
    flow.on_rls_response(7, 14, None, &host);
    assert_eq!(
        (flow.record().verdict, flow.record().reason),
        (Some("error"), Some("fail_open"))
    );
    // Refused before any call.
    let mut flow = Flow::new(c.clone());
    drive(&mut flow, &host, "not json");
    assert_eq!(
        (flow.record().verdict, flow.record().reason),
        (Some("refused"), Some("parse_error"))
    );
    // A batch; a message no descriptor applies to... the shadow one does.
    let mut flow = Flow::new(c.clone());
    let body = batch(&[call_id(1, "a"), call_id(2, "b")]);
    drive(&mut flow, &host, &body);
    assert_eq!(flow.record().method.as_deref(), Some("batch"));
    assert_eq!(flow.record().target.as_deref(), Some("a"));
    // Nothing recorded without filter_state.
    let mut flow = Flow::new(cfg(BASIC));
    answer(
        &mut flow,
        &host,
        &call("x"),
        &reply_with(2, vec![status(2, 5)]),
    );
    assert_eq!(flow.record(), &Record::default());
    // Not limited: no descriptor applies.
    let mut flow = Flow::new(cfg(
        r#"{"domain":"mcp","rls_cluster":"r","filter_state":true}"#,
    ));
    let step = drive(
        &mut flow,
        &host,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#,
    );
    assert_eq!(step, Step::go());
    assert_eq!(flow.record().verdict, Some("not_limited"));
    assert_eq!(flow.record().method.as_deref(), Some("tools/list"));
}

#[test]
fn the_fast_path_follows_the_same_controls() {
    let c = cfg(
        r#"{"domain":"mcp","rls_cluster":"r","header_fast_path":true,"filter_state":true,
            "tools":["search_docs"],"tool_costs":{"search_docs":4},
            "descriptors":[{"name":"budget","entries":[{"key":"tenant","value":"acme"}]},
                           {"name":"per_tool","cost":false,"entries":[{"key":"tool","mcp":"tool"}]}]}"#,
    );
    for (tool, sent_as, cost) in [("search_docs", "search_docs", 4), ("made_up", "_other", 1)] {
        let host = modern_call(MockHost::post_json(), tool);
        let mut flow = Flow::new(c.clone());
        let step = flow.on_request_headers(false, &host);
        assert_eq!(host.count_of(Counter::FastPath), 1, "{tool}");
        let req = sent(&step);
        assert_eq!(
            entries(&req),
            vec![
                vec![("tenant".into(), "acme".into())],
                vec![("tool".into(), sent_as.into())],
            ]
        );
        assert_eq!(hits(&req), vec![cost, 1]);
        flow.on_dispatched(1, &host);
        flow.on_rls_response(
            1,
            0,
            Some(&reply_with(1, vec![status(1, 5), status(1, 5)])),
            &host,
        );
        assert_eq!(flow.record().verdict, Some("allowed"));
        assert_eq!(flow.record().target.as_deref(), Some(tool));
    }
}
