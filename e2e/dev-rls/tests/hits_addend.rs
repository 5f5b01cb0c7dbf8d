//! `hits_addend`: request-level (0 means 1) and per-descriptor (overrides, 0 = check only).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use dev_rls::rls_proto::rate_limit_response::Code;
use dev_rls::rls_proto::RateLimitRequest;
use dev_rls::Unit;

const D: &str = "test-domain";
/// basic_config.yaml: key1=value1 / subkey1=<any> is 5 per second.
const FIVE: [(&str, &str); 2] = [("key1", "value1"), ("subkey1", "s")];

fn with_request_hits(
    hits: u32,
    descriptors: Vec<
        envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor,
    >,
) -> RateLimitRequest {
    RateLimitRequest {
        hits_addend: hits,
        ..request(D, descriptors)
    }
}

#[test]
fn request_hits_addend_zero_counts_one() {
    let (rls, _clock) = rls_for(&["basic_config.yaml"]);
    let response = rls
        .should_rate_limit(&with_request_hits(0, vec![descriptor(&FIVE)]))
        .unwrap();
    assert_status(
        &response.statuses[0],
        &ok(5, Unit::Second, 4),
        "hits_addend 0",
    );
}

#[test]
fn request_hits_addend_counts_n_and_keeps_hits_when_over() {
    let (rls, clock) = rls_for(&["basic_config.yaml"]);
    let send = |hits: u32| {
        rls.should_rate_limit(&with_request_hits(hits, vec![descriptor(&FIVE)]))
            .unwrap()
    };

    let r = send(4);
    assert_status(&r.statuses[0], &ok(5, Unit::Second, 1), "4 of 5");
    // 4 + 2 = 6 > 5: over, and (as the reference) the 2 hits stay counted.
    let r = send(2);
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_status(&r.statuses[0], &over(5, Unit::Second), "6 of 5");
    let r = send(1);
    assert_status(&r.statuses[0], &over(5, Unit::Second), "7 of 5");

    // Next window: fresh; exactly reaching the limit is still OK.
    clock.advance(1);
    let r = send(5);
    assert_status(&r.statuses[0], &ok(5, Unit::Second, 0), "5 of 5");
    let r = send(1);
    assert_status(&r.statuses[0], &over(5, Unit::Second), "6 of 5 again");
}

#[test]
fn a_single_large_hit_is_over_at_once() {
    let (rls, _clock) = rls_for(&["basic_config.yaml"]);
    let r = rls
        .should_rate_limit(&with_request_hits(6, vec![descriptor(&FIVE)]))
        .unwrap();
    assert_status(&r.statuses[0], &over(5, Unit::Second), "6 at once");
}

#[test]
fn descriptor_hits_addend_overrides_the_request() {
    let (rls, _clock) = rls_for(&["basic_config.yaml"]);
    // key2=<any>: 20/min; key7=<any>: 70/min.
    let r = rls
        .should_rate_limit(&with_request_hits(
            10,
            vec![
                descriptor_with_hits(&[("key2", "a")], 3),
                descriptor(&[("key7", "a")]),
            ],
        ))
        .unwrap();
    assert_status(
        &r.statuses[0],
        &ok(20, Unit::Minute, 17),
        "own hits_addend 3",
    );
    assert_status(
        &r.statuses[1],
        &ok(70, Unit::Minute, 60),
        "request hits_addend 10",
    );

    // A descriptor hits_addend of 1 when the request says 0.
    let r = rls
        .should_rate_limit(&with_request_hits(
            0,
            vec![descriptor_with_hits(&[("key2", "a")], 1)],
        ))
        .unwrap();
    assert_status(
        &r.statuses[0],
        &ok(20, Unit::Minute, 16),
        "own hits_addend 1",
    );
}

#[test]
fn descriptor_hits_addend_zero_only_checks() {
    let (rls, _clock) = rls_for(&["basic_config.yaml"]);
    let check = |rls: &dev_rls::DevRls| {
        rls.should_rate_limit(&with_request_hits(7, vec![descriptor_with_hits(&FIVE, 0)]))
            .unwrap()
    };
    // Nothing counted yet: the full limit remains, and checking does not consume.
    assert_status(
        &check(&rls).statuses[0],
        &ok(5, Unit::Second, 5),
        "check on empty",
    );
    assert_status(
        &check(&rls).statuses[0],
        &ok(5, Unit::Second, 5),
        "check again",
    );
    // Fill to exactly 5: a check says OK with 0 left.
    rls.should_rate_limit(&with_request_hits(5, vec![descriptor(&FIVE)]))
        .unwrap();
    assert_status(
        &check(&rls).statuses[0],
        &ok(5, Unit::Second, 0),
        "check at the limit",
    );
    // One more real hit: now a check reports over.
    rls.should_rate_limit(&with_request_hits(1, vec![descriptor(&FIVE)]))
        .unwrap();
    assert_status(
        &check(&rls).statuses[0],
        &over(5, Unit::Second),
        "check over the limit",
    );
}

#[test]
fn recorded_hits_addend() {
    let (rls, _clock) = rls_for(&["basic_config.yaml"]);
    rls.should_rate_limit(&with_request_hits(
        4,
        vec![
            descriptor_with_hits(&[("key2", "a")], 2),
            descriptor(&[("key7", "b")]),
        ],
    ))
    .unwrap();
    let last = rls.stats().last_request.unwrap();
    assert_eq!(last.hits_addend, 4);
    assert_eq!(last.descriptors[0].hits_addend, Some(2));
    assert_eq!(last.descriptors[1].hits_addend, None);
}
