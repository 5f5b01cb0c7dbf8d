//! Request matching over the shipped reference configs, with explicit expected answers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use dev_rls::rls_proto::rate_limit_response::Code;
use dev_rls::Unit;

const D: &str = "test-domain";

#[test]
fn basic_config_matching() {
    let (rls, _clock) = rls_for(&["basic_config.yaml"]);
    // Nested default and the value-specific override.
    expect(
        &rls,
        D,
        &[("key1", "value1"), ("subkey1", "anything")],
        ok(5, Unit::Second, 4),
    );
    expect(
        &rls,
        D,
        &[("key1", "value1"), ("subkey1", "subvalue1")],
        ok(10, Unit::Second, 9),
    );
    // The placeholder node has no limit of its own.
    expect(&rls, D, &[("key1", "value1")], no_limit());
    // Unmatched top-level value falls through to nothing.
    expect(
        &rls,
        D,
        &[("key1", "other"), ("subkey1", "subvalue1")],
        no_limit(),
    );
    // Value-less key is the default, a specific value overrides it, a limit-less value whitelists.
    expect(&rls, D, &[("key2", "whatever")], ok(20, Unit::Minute, 19));
    expect(&rls, D, &[("key2", "value2")], ok(30, Unit::Minute, 29));
    expect(&rls, D, &[("key2", "value3")], no_limit());
    // More entries than the configured path: no limit.
    expect(&rls, D, &[("key2", "whatever"), ("extra", "x")], no_limit());
    // Named limit.
    expect(
        &rls,
        D,
        &[("key4", "a")],
        named(ok(1, Unit::Day, 0), "key4_rate_limit"),
    );
    // Parent and child limits.
    expect(&rls, D, &[("key5", "value5")], ok(15, Unit::Day, 14));
    expect(
        &rls,
        D,
        &[("key5", "value5"), ("subkey5", "subvalue5")],
        ok(25, Unit::Day, 24),
    );
    expect(
        &rls,
        D,
        &[("key5", "value5"), ("subkey5", "other")],
        no_limit(),
    );
    // Unlimited.
    expect(&rls, D, &[("key6", "x")], unlimited());
    expect(&rls, D, &[("key6", "x")], unlimited());
    // detailed_metric does not change decisions.
    expect(&rls, D, &[("key7", "x")], ok(70, Unit::Minute, 69));
    // Unknown keys and domains: OK, no limit.
    expect(&rls, D, &[("nope", "x")], no_limit());
    expect(&rls, "other-domain", &[("key2", "x")], no_limit());
}

#[test]
fn value_less_keys_count_each_value_separately() {
    let (rls, _clock) = rls_for(&["basic_config.yaml"]);
    expect(&rls, D, &[("key3", "a")], ok(1, Unit::Hour, 0));
    expect(&rls, D, &[("key3", "a")], over(1, Unit::Hour));
    expect(&rls, D, &[("key3", "b")], ok(1, Unit::Hour, 0));
    expect(&rls, D, &[("key3", "b")], over(1, Unit::Hour));
}

#[test]
fn counts_up_to_the_limit_then_over() {
    let (rls, _clock) = rls_for(&["basic_config.yaml"]);
    let entries = [("key1", "value1"), ("subkey1", "s")];
    for remaining in (0..5).rev() {
        expect(&rls, D, &entries, ok(5, Unit::Second, remaining));
    }
    expect(&rls, D, &entries, over(5, Unit::Second));
    expect(&rls, D, &entries, over(5, Unit::Second));
}

#[test]
fn windows_are_aligned_to_the_unit() {
    let (rls, clock) = rls_for(&["basic_config.yaml"]);
    // T0 is 20 s into its minute, 800 s into its hour, 80000 s into its day.
    let status = one(&rls, D, &[("key2", "w")]);
    assert_eq!(status.duration_until_reset.unwrap().seconds, 40);
    let status = one(&rls, D, &[("key3", "w")]);
    assert_eq!(status.duration_until_reset.unwrap().seconds, 2800);
    let status = one(&rls, D, &[("key4", "w")]);
    assert_eq!(status.duration_until_reset.unwrap().seconds, 6400);
    let status = one(&rls, D, &[("key1", "value1"), ("subkey1", "w")]);
    assert_eq!(status.duration_until_reset.unwrap().seconds, 1);

    // key3 is 1/hour: exhausted now, still exhausted at the last second of the hour...
    expect(&rls, D, &[("key3", "w")], over(1, Unit::Hour));
    clock.advance(2799);
    let status = one(&rls, D, &[("key3", "w")]);
    assert_eq!(status.code, Code::OverLimit as i32);
    assert_eq!(status.duration_until_reset.unwrap().seconds, 1);
    // ...and fresh at the boundary, even though the first hit was less than an hour ago.
    clock.advance(1);
    let status = one(&rls, D, &[("key3", "w")]);
    assert_eq!(status.code, Code::Ok as i32);
    assert_eq!(status.limit_remaining, 0);
    assert_eq!(status.duration_until_reset.unwrap().seconds, 3600);
}

#[test]
fn wildcard_matching() {
    let (rls, _clock) = rls_for(&["wildcard.yaml"]);
    expect(&rls, D, &[("wild", "foo1")], ok(20, Unit::Minute, 19));
    expect(&rls, D, &[("wild", "foo")], ok(20, Unit::Minute, 19));
    expect(&rls, D, &[("wild", "fo")], no_limit());
    expect(&rls, D, &[("wild", "barfoo")], no_limit());
    // No wildcard: only the exact value.
    expect(&rls, D, &[("noWild", "foo")], ok(20, Unit::Minute, 19));
    expect(&rls, D, &[("noWild", "foo1")], no_limit());
    expect(&rls, D, &[("noVal", "anything")], ok(20, Unit::Minute, 19));
    // A `*` in the middle.
    expect(&rls, D, &[("midWild", "bar123b")], ok(20, Unit::Minute, 19));
    expect(&rls, D, &[("midWild", "barb")], ok(20, Unit::Minute, 19));
    expect(&rls, D, &[("midWild", "bar123")], no_limit());
    // Several `*`.
    expect(
        &rls,
        D,
        &[("multiWild", "foo1bar2baz")],
        ok(10, Unit::Minute, 9),
    );
    expect(
        &rls,
        D,
        &[("multiWild", "foobarbaz")],
        ok(10, Unit::Minute, 9),
    );
    expect(&rls, D, &[("multiWild", "foo1baz")], no_limit());
    // Nested wildcard under an exact parent.
    expect(
        &rls,
        D,
        &[("nestedWild", "val1"), ("wild", "goo7")],
        ok(20, Unit::Minute, 19),
    );
    expect(
        &rls,
        D,
        &[("nestedWild", "val1"), ("wild", "foo7")],
        no_limit(),
    );
    expect(
        &rls,
        D,
        &[("nestedWild", "val2"), ("wild", "goo7")],
        no_limit(),
    );
}

#[test]
fn wildcard_counters_are_per_value_without_share_threshold() {
    let (rls, _clock) = rls_for(&["wildcard.yaml"]);
    expect(
        &rls,
        D,
        &[("multiWild", "fooAbarBbaz")],
        ok(10, Unit::Minute, 9),
    );
    expect(
        &rls,
        D,
        &[("multiWild", "fooCbarDbaz")],
        ok(10, Unit::Minute, 9),
    );
    expect(
        &rls,
        D,
        &[("multiWild", "fooAbarBbaz")],
        ok(10, Unit::Minute, 8),
    );
}

/// Sends `hits` hits at once for one descriptor.
fn hit(
    rls: &dev_rls::DevRls,
    entries: &[(&str, &str)],
    hits: u64,
) -> dev_rls::rls_proto::rate_limit_response::DescriptorStatus {
    let response = call(rls, D, vec![descriptor_with_hits(entries, hits)]);
    response.statuses[0].clone()
}

#[test]
fn share_threshold_shares_one_counter_per_pattern() {
    let (rls, _clock) = rls_for(&["share_threshold.yaml"]);
    // files/* : 100/min shared by every matching value.
    assert_eq!(hit(&rls, &[("files", "files/a")], 60).limit_remaining, 40);
    assert_eq!(hit(&rls, &[("files", "files/b")], 40).limit_remaining, 0);
    let status = hit(&rls, &[("files", "files/c")], 1);
    assert_status(
        &status,
        &over(100, Unit::Minute),
        "files/c shares the exhausted counter",
    );

    // Explicit value wins over the shared wildcard and has its own counter.
    expect(&rls, D, &[("file", "test1")], ok(50, Unit::Minute, 49));
    expect(&rls, D, &[("file", "test2")], ok(100, Unit::Minute, 99));
    expect(&rls, D, &[("file", "test3")], ok(100, Unit::Minute, 98));

    // Nested under an exact parent.
    assert_eq!(
        hit(&rls, &[("nested", "parent"), ("files", "nested/x")], 150).limit_remaining,
        50
    );
    assert_eq!(
        hit(&rls, &[("nested", "parent"), ("files", "nested/y")], 50).limit_remaining,
        0
    );

    // Both levels shared (same key at two levels).
    expect(
        &rls,
        D,
        &[("files", "top/a"), ("files", "nested/a")],
        ok(300, Unit::Minute, 299),
    );
    expect(
        &rls,
        D,
        &[("files", "top/b"), ("files", "nested/b")],
        ok(300, Unit::Minute, 298),
    );

    // Shared parent, per-value child (value-less key).
    expect(
        &rls,
        D,
        &[("route", "api/v1"), ("method", "GET")],
        ok(60, Unit::Minute, 59),
    );
    expect(
        &rls,
        D,
        &[("route", "api/v2"), ("method", "GET")],
        ok(60, Unit::Minute, 58),
    );
    expect(
        &rls,
        D,
        &[("route", "api/v2"), ("method", "POST")],
        ok(60, Unit::Minute, 59),
    );

    expect(
        &rls,
        D,
        &[("service", "svc/a"), ("endpoint", "e")],
        ok(80, Unit::Minute, 79),
    );
    expect(
        &rls,
        D,
        &[("service", "svc/b"), ("endpoint", "e")],
        ok(80, Unit::Minute, 78),
    );

    // Mixed: path shared, file/* not shared (share_threshold: false), type per value.
    expect(
        &rls,
        D,
        &[("path", "path/1"), ("file", "file/a"), ("type", "t")],
        ok(120, Unit::Minute, 119),
    );
    expect(
        &rls,
        D,
        &[("path", "path/2"), ("file", "file/a"), ("type", "t")],
        ok(120, Unit::Minute, 118),
    );
    expect(
        &rls,
        D,
        &[("path", "path/2"), ("file", "file/b"), ("type", "t")],
        ok(120, Unit::Minute, 119),
    );

    // Both wildcards shared.
    expect(
        &rls,
        D,
        &[
            ("user", "user/1"),
            ("resource", "res/a"),
            ("action", "read"),
        ],
        ok(150, Unit::Minute, 149),
    );
    expect(
        &rls,
        D,
        &[
            ("user", "user/2"),
            ("resource", "res/b"),
            ("action", "read"),
        ],
        ok(150, Unit::Minute, 148),
    );

    // Middle and multiple wildcards.
    expect(
        &rls,
        D,
        &[("midpath", "/api/x/v1")],
        ok(100, Unit::Minute, 99),
    );
    expect(&rls, D, &[("midpath", "/apiv1")], ok(100, Unit::Minute, 98));
    expect(&rls, D, &[("midpath", "/api/x/v2")], no_limit());
    expect(
        &rls,
        D,
        &[("multiroute", "svc1ep2rpc")],
        ok(50, Unit::Minute, 49),
    );
    expect(
        &rls,
        D,
        &[("multiroute", "svcXepYrpc")],
        ok(50, Unit::Minute, 48),
    );
    expect(
        &rls,
        D,
        &[("midroute", "/api/a/v2")],
        ok(80, Unit::Minute, 79),
    );
    expect(
        &rls,
        D,
        &[("tenant", "t1prod"), ("resource", "res-a-v2")],
        ok(60, Unit::Minute, 59),
    );
    expect(
        &rls,
        D,
        &[("tenant", "t2prod"), ("resource", "res-b-v2")],
        ok(60, Unit::Minute, 58),
    );
    expect(
        &rls,
        D,
        &[("tenant", "t2dev"), ("resource", "res-b-v2")],
        no_limit(),
    );
}

#[test]
fn shadow_mode_counts_but_never_blocks() {
    let (rls, _clock) = rls_for(&["shadowmode_config.yaml"]);
    let shadow = [("key1", "value1"), ("subkey1", "subvalue1")];
    for remaining in (0..10).rev() {
        expect(&rls, D, &shadow, ok(10, Unit::Second, remaining));
    }
    // Over its limit: reported with nothing remaining, yet OK.
    expect(&rls, D, &shadow, ok(10, Unit::Second, 0));

    // The non-shadow sibling still blocks.
    let normal = [("key1", "value1"), ("subkey1", "other")];
    for _ in 0..5 {
        one(&rls, D, &normal);
    }
    expect(&rls, D, &normal, over(5, Unit::Second));

    // A shadow descriptor alongside a blocking one: overall OVER_LIMIT from the latter only.
    let response = call(&rls, D, vec![descriptor(&shadow), descriptor(&normal)]);
    assert_eq!(response.overall_code, Code::OverLimit as i32);
    assert_status(&response.statuses[0], &ok(10, Unit::Second, 0), "shadow");
    assert_status(&response.statuses[1], &over(5, Unit::Second), "normal");

    // key2 default is shadow (20/min), key2=value2 is not (30/min).
    let response = call(&rls, D, vec![descriptor_with_hits(&[("key2", "x")], 25)]);
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert_status(
        &response.statuses[0],
        &ok(20, Unit::Minute, 0),
        "key2 shadow over",
    );
    let response = call(
        &rls,
        D,
        vec![descriptor_with_hits(&[("key2", "value2")], 31)],
    );
    assert_eq!(response.overall_code, Code::OverLimit as i32);
}

const RL: &str = "rl";

#[test]
fn example_yaml_replaces() {
    let (rls, _clock) = rls_for(&["example.yaml"]);
    // category=account replaces bkthomps: the foo/bar=bkthomps limit is dropped (uncounted).
    let response = call(
        &rls,
        RL,
        vec![
            descriptor(&[("category", "account")]),
            descriptor(&[("foo", "f"), ("bar", "bkthomps")]),
        ],
    );
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert_status(&response.statuses[0], &ok(4, Unit::Minute, 3), "category");
    assert_status(&response.statuses[1], &no_limit(), "replaced bkthomps");
    // Alone, bkthomps applies and was not counted by the replaced call above.
    expect(
        &rls,
        RL,
        &[("foo", "f"), ("bar", "bkthomps")],
        named(ok(1, Unit::Minute, 0), "bkthomps"),
    );
    expect(
        &rls,
        RL,
        &[("foo", "f"), ("bar", "bkthomps")],
        named(over(1, Unit::Minute), "bkthomps"),
    );
    // ...yet a request that also carries a replacing limit is still OK.
    let response = call(
        &rls,
        RL,
        vec![
            descriptor(&[
                ("source_cluster", "proxy"),
                ("destination_cluster", "bkthomps"),
            ]),
            descriptor(&[("foo", "f"), ("bar", "bkthomps")]),
        ],
    );
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert_status(
        &response.statuses[0],
        &ok(2, Unit::Minute, 1),
        "destination bkthomps",
    );
    assert_status(&response.statuses[1], &no_limit(), "replaced again");

    // banned_limit (0/min) blocks, unless the override destination replaces it.
    expect(
        &rls,
        RL,
        &[("foo", "f"), ("bar", "banned")],
        named(over(0, Unit::Minute), "banned_limit"),
    );
    let response = call(
        &rls,
        RL,
        vec![
            descriptor(&[
                ("source_cluster", "proxy"),
                ("destination_cluster", "override"),
            ]),
            descriptor(&[("foo", "f"), ("bar", "banned")]),
        ],
    );
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert_status(&response.statuses[1], &no_limit(), "banned replaced");

    // fake_name is replaced by category=account; replacing a name that does not match is harmless.
    let response = call(
        &rls,
        RL,
        vec![
            descriptor(&[("source_cluster", "proxy"), ("destination_cluster", "fake")]),
            descriptor(&[("category", "account")]),
        ],
    );
    assert_status(&response.statuses[0], &no_limit(), "fake_name replaced");
    assert_status(
        &response.statuses[1],
        &ok(4, Unit::Minute, 2),
        "category counted",
    );
    expect(
        &rls,
        RL,
        &[("source_cluster", "proxy"), ("destination_cluster", "fake")],
        named(ok(2, Unit::Minute, 1), "fake_name"),
    );
}

#[test]
fn example_yaml_other_rules() {
    let (rls, _clock) = rls_for(&["example.yaml"]);
    expect(&rls, RL, &[("foo", "f")], ok(2, Unit::Minute, 1));
    expect(
        &rls,
        RL,
        &[("foo", "f"), ("bar", "x")],
        ok(3, Unit::Minute, 2),
    );
    expect(
        &rls,
        RL,
        &[("foo", "f"), ("baz", "x")],
        ok(1, Unit::Second, 0),
    );
    expect(
        &rls,
        RL,
        &[("foo", "f"), ("baz", "x")],
        over(1, Unit::Second),
    );
    expect(
        &rls,
        RL,
        &[("foo", "f"), ("baz", "not-so-shady")],
        ok(3, Unit::Minute, 2),
    );
    for _ in 0..3 {
        one(&rls, RL, &[("foo", "f"), ("baz", "shady")]);
    }
    expect(
        &rls,
        RL,
        &[("foo", "f"), ("baz", "shady")],
        ok(3, Unit::Minute, 0),
    );
    expect(&rls, RL, &[("foo", "f"), ("bay", "y")], unlimited());
    expect(&rls, RL, &[("qux", "q")], unlimited());
    expect(&rls, RL, &[("unspec", "u")], ok(2, Unit::Minute, 1));
    expect(
        &rls,
        RL,
        &[("source_cluster", "proxy"), ("destination_cluster", "mock")],
        ok(1, Unit::Minute, 0),
    );
    expect(
        &rls,
        RL,
        &[("source_cluster", "proxy"), ("destination_cluster", "mock")],
        over(1, Unit::Minute),
    );
    // quota_mode: counted; an excess keeps the code OK.
    expect(
        &rls,
        RL,
        &[("service", "service_1")],
        ok(1, Unit::Minute, 0),
    );
    expect(
        &rls,
        RL,
        &[("service", "service_1")],
        ok(1, Unit::Minute, 0),
    );
    expect(
        &rls,
        RL,
        &[("service", "service_2")],
        ok(2, Unit::Minute, 1),
    );
}

#[test]
fn several_descriptors_are_each_counted() {
    let (rls, _clock) = rls_for(&["example_config.yaml"]);
    let response = call(
        &rls,
        "mongo_cps",
        vec![
            descriptor(&[("database", "users")]),
            descriptor(&[("database", "default")]),
            descriptor(&[("database", "users")]),
            descriptor(&[("database", "unknown")]),
        ],
    );
    assert_eq!(response.statuses.len(), 4);
    assert_status(
        &response.statuses[0],
        &ok(500, Unit::Second, 499),
        "users once",
    );
    assert_status(
        &response.statuses[1],
        &ok(500, Unit::Second, 499),
        "default",
    );
    assert_status(
        &response.statuses[2],
        &ok(500, Unit::Second, 498),
        "users twice",
    );
    assert_status(&response.statuses[3], &no_limit(), "unknown value");
}

#[test]
fn request_limit_override_replaces_the_configured_limit() {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
    let (rls, _clock) = rls_for(&["basic_config.yaml"]);
    let mut d = descriptor(&[("key2", "value2")]);
    d.limit = Some(RateLimitOverride {
        requests_per_unit: 2,
        unit: Unit::Hour.proto(),
    });
    let first = call(&rls, D, vec![d.clone()]);
    assert_status(&first.statuses[0], &ok(2, Unit::Hour, 1), "override");
    call(&rls, D, vec![d.clone()]);
    let third = call(&rls, D, vec![d]);
    assert_status(
        &third.statuses[0],
        &over(2, Unit::Hour),
        "override exhausted",
    );
}

#[test]
fn malformed_requests_are_errors() {
    let (rls, _clock) = rls_for(&["basic_config.yaml"]);
    let err = rls
        .should_rate_limit(&request("", vec![descriptor(&[("key2", "x")])]))
        .unwrap_err();
    assert!(err.message().contains("domain must not be empty"), "{err}");
    let err = rls.should_rate_limit(&request(D, vec![])).unwrap_err();
    assert!(
        err.message().contains("descriptor list must not be empty"),
        "{err}"
    );
    let stats = rls.stats();
    assert_eq!(stats.calls, 2);
    assert_eq!(stats.last_request.unwrap().overall_code, "ERROR");
}

#[test]
fn stats_requests_and_reset() {
    let (rls, _clock) = rls_for(&["basic_config.yaml"]);
    expect(&rls, D, &[("key3", "r")], ok(1, Unit::Hour, 0));
    expect(&rls, D, &[("key3", "r")], over(1, Unit::Hour));
    let stats = rls.stats();
    assert_eq!((stats.calls, stats.over_limit), (2, 1));
    let last = stats.last_request.unwrap();
    assert_eq!(last.domain, D);
    assert_eq!(last.overall_code, "OVER_LIMIT");
    assert_eq!(last.descriptors[0].entries[0].key, "key3");
    assert_eq!(last.descriptors[0].entries[0].value, "r");
    assert_eq!(rls.requests().len(), 2);

    rls.reset();
    assert_eq!(rls.stats(), dev_rls::Stats::default());
    assert!(rls.requests().is_empty());
    // Counters were cleared too.
    expect(&rls, D, &[("key3", "r")], ok(1, Unit::Hour, 0));
}

#[test]
fn recorded_requests_are_capped() {
    let (rls, _clock) = rls_for(&["basic_config.yaml"]);
    for i in 0..(dev_rls::MAX_RECORDED_REQUESTS + 5) {
        call(&rls, D, vec![descriptor(&[("key7", &i.to_string())])]);
    }
    let requests = rls.requests();
    assert_eq!(requests.len(), dev_rls::MAX_RECORDED_REQUESTS);
    assert_eq!(requests[0].descriptors[0].entries[0].value, "5");
    assert_eq!(
        rls.stats().calls as usize,
        dev_rls::MAX_RECORDED_REQUESTS + 5
    );
}
