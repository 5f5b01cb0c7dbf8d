//! The over-limit cache through the real Envoy, with two workers, in front
//! of dev-rls (clock frozen, so counts and resets are exact): once the
//! service has denied a descriptor, requests carrying it are denied by the
//! filter itself, by every worker, with the service's exact denial, until
//! `over_limit_cache_max_ms` has passed; then one request asks again.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::fixtures::{assert_called, assert_rate_limited, limits, tools_call, DAY_LEFT};
use e2e::stack::Stack;
use e2e::{DevRls, EnvoyOptions, Response};

/// `search_docs` 2 a day, every other tool 1000.
fn two_a_day() -> String {
    limits(2, 1000)
}

fn stack(plugin: &str) -> Stack {
    let opts = EnvoyOptions {
        concurrency: 2,
        ..EnvoyOptions::default()
    };
    Stack::start_opts(
        DevRls::start(&[&two_a_day()]).unwrap(),
        "envoy.yaml",
        plugin,
        &[],
        &opts,
    )
    .unwrap()
}

/// Each body on its own connection, `threads` at a time.
fn flood(s: &Stack, ids: std::ops::Range<u64>, threads: usize, tool: &str) -> Vec<(u64, Response)> {
    let out = Mutex::new(Vec::new());
    let ids: Vec<u64> = ids.collect();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (ids, out) = (&ids, &out);
            scope.spawn(move || {
                for id in ids.iter().skip(t).step_by(threads) {
                    let resp = s.post(&tools_call(*id, tool));
                    out.lock().unwrap().push((*id, resp));
                }
            });
        }
    });
    out.into_inner().unwrap()
}

/// Connections each of Envoy's workers accepted on the MCP listener.
fn per_worker_connections(s: &Stack) -> Vec<u64> {
    let mut out: Vec<(String, u64)> = s
        .envoy
        .stats()
        .into_iter()
        .filter(|(k, _)| {
            k.starts_with("listener.127.0.0.1_")
                && k.contains(".worker_")
                && k.ends_with(".downstream_cx_total")
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, n)| n).collect()
}

/// Denied once by the service, then 60 concurrent calls on fresh
/// connections, over both workers: each gets the exact denial with its own
/// id and the service's Retry-After, and only the calls made after the cap
/// (one per `over_limit_cache_max_ms`) reach the service.
#[test]
fn a_flood_is_denied_by_every_worker_without_asking_again() {
    let s = stack(r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000}"#);
    for id in 1..=2 {
        assert_called(&s.post(&tools_call(id, "search_docs")), id, "search_docs");
    }
    assert_rate_limited(&s.post(&tools_call(3, "search_docs")), 3, DAY_LEFT);
    assert_eq!((s.stat("checked"), s.stat("over_limit")), (3, 1));
    let start = Instant::now();
    let answers = flood(&s, 4..64, 12, "search_docs");
    let elapsed = start.elapsed();
    assert_eq!(answers.len(), 60);
    for (id, resp) in &answers {
        assert_rate_limited(resp, *id, DAY_LEFT);
    }
    // Past each second of the cap, one call asks again (and is denied by
    // the service); every other denial came from the cache.
    let asked = s.stat("checked") - 3;
    assert!(
        asked <= elapsed.as_secs() + 1,
        "{asked} calls in {elapsed:?}: the cache did not hold"
    );
    assert_eq!(s.stat("over_limit_cached"), 60 - asked);
    assert_eq!(s.stat("over_limit"), 1 + asked);
    assert_eq!(s.rls.calls().unwrap(), 3 + asked);
    assert_eq!(s.up.calls("search_docs").unwrap(), 2);
    // Both workers took connections: the cache is the process's.
    let workers = per_worker_connections(&s);
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert!(workers.iter().all(|n| *n >= 5), "{workers:?}");
    // Other tools are not affected.
    assert_called(&s.post(&tools_call(100, "get_weather")), 100, "get_weather");
}

/// `over_limit_cache_max_ms` bounds how long a denial is repeated: after
/// it, the next request asks the service (a raised limit would let it
/// through); `over_limit_cache: false` asks every time.
#[test]
fn the_cap_bounds_the_cache_and_the_cache_can_be_turned_off() {
    let s = stack(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"over_limit_cache_max_ms":1500}"#,
    );
    for id in 1..=2 {
        assert_called(&s.post(&tools_call(id, "search_docs")), id, "search_docs");
    }
    assert_rate_limited(&s.post(&tools_call(3, "search_docs")), 3, DAY_LEFT);
    let denied_at = Instant::now();
    assert_rate_limited(&s.post(&tools_call(4, "search_docs")), 4, DAY_LEFT);
    assert!(
        denied_at.elapsed() < Duration::from_millis(1500),
        "too slow to test the cap"
    );
    assert_eq!((s.stat("checked"), s.stat("over_limit_cached")), (3, 1));
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(denied_at.elapsed()));
    assert_rate_limited(&s.post(&tools_call(5, "search_docs")), 5, DAY_LEFT);
    assert_eq!((s.stat("checked"), s.stat("over_limit")), (4, 2));

    let off = stack(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"over_limit_cache":false}"#,
    );
    for id in 1..=2 {
        assert_called(&off.post(&tools_call(id, "search_docs")), id, "search_docs");
    }
    for id in 3..=12 {
        assert_rate_limited(&off.post(&tools_call(id, "search_docs")), id, DAY_LEFT);
    }
    assert_eq!(off.stat("checked"), 12);
    assert_eq!(off.stat("over_limit_cached"), 0);
}

/// A shadow descriptor's OVER_LIMIT is never cached: every call is asked.
#[test]
fn shadow_limits_are_never_cached() {
    let s = stack(r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"shadow":true}"#);
    for id in 1..=8 {
        assert_called(&s.post(&tools_call(id, "search_docs")), id, "search_docs");
    }
    assert_eq!(s.stat("checked"), 8);
    assert_eq!(s.stat("shadow_over_limit"), 6);
    assert_eq!(s.stat("over_limit_cached"), 0);
}

/// With the service down, a descriptor it has just denied stays denied
/// (the same 429) until the cap; then the request that asks again meets
/// the failure, and the failure mode answers (fail-closed: 503).
#[test]
fn a_denial_holds_through_an_outage_until_the_cap_then_the_failure_mode_answers() {
    let mut s = stack(
        r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":300,"failure_mode_deny":true,
            "over_limit_cache_max_ms":2000}"#,
    );
    for id in 1..=2 {
        assert_called(&s.post(&tools_call(id, "search_docs")), id, "search_docs");
    }
    assert_rate_limited(&s.post(&tools_call(3, "search_docs")), 3, DAY_LEFT);
    let denied_at = Instant::now();
    s.rls.stop().unwrap();
    assert_rate_limited(&s.post(&tools_call(4, "search_docs")), 4, DAY_LEFT);
    assert!(denied_at.elapsed() < Duration::from_millis(2000));
    assert_eq!(s.stat("error"), 0);
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(denied_at.elapsed()));
    let resp = s.post(&tools_call(5, "search_docs"));
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(s.stat("error"), 1);
    assert_eq!(s.stat("over_limit_cached"), 1);
}
