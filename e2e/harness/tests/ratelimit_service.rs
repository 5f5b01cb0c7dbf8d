//! The filter against the production rate-limit service: envoyproxy/ratelimit
//! (built by `make ratelimit` at the commit `e2e/ratelimit/go.mod` pins) with
//! Redis behind it, the limits of the shipped `envoy/ratelimit.yaml` loaded
//! unchanged (`search_docs` 3 a minute, every other tool 60 a minute each).
//!
//! That service counts in windows of the wall clock, so every test first
//! waits for a minute with enough time left ([`window_with`]) and then reads
//! the exact counts Redis holds for that window.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::fixtures::tools_call;
use e2e::ratelimit::{unix_now, window_with};
use e2e::stack::{render_config, shipped};
use e2e::{
    post_json, Envoy, EnvoyOptions, McpUpstream, RateLimitOptions, RateLimitService, Redis,
    Response,
};
use serde_json::json;

/// Fail-closed, with a timeout no healthy call comes near on a loaded
/// machine: a failed or slow call shows up as a 503, never as an admission.
const STRICT: &str =
    r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":3000,"failure_mode_deny":true}"#;

/// The limits file every test loads, as shipped.
fn limits() -> String {
    shipped("ratelimit.yaml").unwrap()
}

/// Envoys (each with `plugin`) in front of one MCP server, asking one or
/// more replicas of envoyproxy/ratelimit, which share one Redis.
struct Production {
    envoys: Vec<Envoy>,
    addrs: Vec<SocketAddr>,
    services: Vec<RateLimitService>,
    redis: Redis,
    up: McpUpstream,
}

impl Production {
    fn start(plugins: &[&str], replicas: usize, workers: u32, svc: &RateLimitOptions) -> Self {
        let redis = Redis::start().unwrap();
        let limits = limits();
        let services: Vec<RateLimitService> = (0..replicas)
            .map(|_| RateLimitService::start_with(redis.port(), &[&limits], svc).unwrap())
            .collect();
        let up = McpUpstream::start().unwrap();
        let first = services[0].port();
        // Every replica an endpoint of the one rate-limit cluster.
        let endpoint = |port: u16| {
            format!(
                "        - endpoint:\n            address:\n              socket_address: {{address: 127.0.0.1, port_value: {port}}}\n"
            )
        };
        let all: String = services.iter().map(|s| endpoint(s.port())).collect();
        let opts = EnvoyOptions {
            concurrency: workers,
            ..EnvoyOptions::default()
        };
        let from = endpoint(first);
        let envoys: Vec<Envoy> = plugins
            .iter()
            .map(|plugin| {
                let extra = [(from.as_str(), all.clone())];
                let yaml = render_config(
                    &shipped("envoy.yaml").unwrap(),
                    first,
                    up.port(),
                    plugin,
                    &extra,
                )
                .unwrap();
                Envoy::start_with(&yaml, &opts).unwrap()
            })
            .collect();
        let addrs = envoys.iter().map(|e| e.listener_addr().unwrap()).collect();
        Production {
            envoys,
            addrs,
            services,
            redis,
            up,
        }
    }

    fn post(&self, envoy: usize, body: &str) -> Response {
        post_json(self.addrs[envoy], "/mcp", body, &[]).unwrap()
    }

    fn stat(&self, envoy: usize, name: &str) -> u64 {
        self.envoys[envoy].stat(&format!("wasmcustom.mcp_ratelimit.{name}"))
    }

    /// What Redis counts for `tool` in the minute window ending at `end`.
    fn count(&self, tool: &str, end: u64) -> u64 {
        let key = format!("mcp_tool_{tool}_{}", end - 60);
        let counters = self.redis.counters().unwrap();
        counters
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, n)| *n)
            .unwrap_or_else(|| panic!("no {key} in redis: {counters:?}"))
    }

    fn logs(&self) -> String {
        let mut out: Vec<String> = self.services.iter().map(RateLimitService::logs).collect();
        out.extend(self.envoys.iter().map(Envoy::logs));
        out.join("\n")
    }
}

/// The exact denial, with the Retry-After the service computed: the seconds
/// left in its minute window when it answered, between `t0` and `t1`.
fn assert_denied(resp: &Response, id: u64, t0: f64, t1: f64) -> u64 {
    assert_eq!(resp.status, 429, "id {id}: {resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("x-envoy-ratelimited"), Some("true"));
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    let left = |t: f64| 60 - (t.floor() as u64) % 60;
    assert!(
        (left(t1)..=left(t0)).contains(&retry),
        "Retry-After {retry} is not the service's reset (between {} and {})",
        left(t1),
        left(t0)
    );
    assert_eq!(
        resp.text(),
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":429,"message":"Rate limit exceeded","data":{{"retryAfterSeconds":{retry}}}}}}}"#
        )
    );
    retry
}

/// A denial repeated by the over-limit cache: exact, with the service's
/// reset counted down on Envoy's clock from the service's answer. The
/// service reports whole seconds of a clock it truncates, so the repeat may
/// say one second more than the service would at that moment.
fn assert_denied_again(resp: &Response, id: u64, t0: f64, t1: f64) -> u64 {
    let left = |t: f64| 60 - (t.floor() as u64) % 60;
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (left(t1)..=left(t0) + 1).contains(&retry),
        "Retry-After {retry} is not the service's reset (between {} and {})",
        left(t1),
        left(t0) + 1
    );
    let t = if retry > left(t0) { t0 - 1.0 } else { t0 };
    assert_denied(resp, id, t, t1)
}

/// The MCP server's answer to a call of `tool` with this id.
fn assert_passed(resp: &Response, id: u64, tool: &str) {
    assert_answered(resp, id, &format!("{tool} called"));
}

fn assert_answered(resp: &Response, id: u64, text: &str) {
    assert_eq!(resp.status, 200, "id {id}: {resp:?}");
    let body = resp.json();
    assert_eq!(body["id"], id, "{resp:?}");
    assert_eq!(body["result"]["content"][0]["text"], text, "{resp:?}");
}

fn assert_rls_failure(resp: &Response, id: u64) {
    assert_eq!(resp.status, 503, "id {id}: {resp:?}");
    assert_eq!(
        resp.text(),
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32603,"message":"Rate limit service unavailable"}}}}"#
        )
    );
}

fn via_call_tool(id: u64, inner: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"call_tool","arguments":{{"tool_name":"{inner}","parameters":{{"query":"q"}}}}}}}}"#
    )
}

#[test]
fn denial_is_exact_and_call_tool_shares_the_inner_bucket() {
    let p = Production::start(&[STRICT], 1, 1, &RateLimitOptions::default());
    let end = window_with(60, Duration::from_secs(15));
    for id in 1..=2 {
        assert_passed(
            &p.post(0, &tools_call(id, "search_docs")),
            id,
            "search_docs",
        );
    }
    // The third call goes through call_tool and spends the same bucket.
    let resp = p.post(0, &via_call_tool(3, "search_docs"));
    assert_answered(&resp, 3, "search_docs called via call_tool");
    let t0 = unix_now();
    let denied = p.post(0, &tools_call(4, "search_docs"));
    let t1 = unix_now();
    assert_denied(&denied, 4, t0, t1);
    // The same bucket: denied again, by the over-limit cache (no call) when
    // within a second of the first denial, else by the service.
    let t0 = unix_now();
    let denied = p.post(0, &via_call_tool(5, "search_docs"));
    assert_denied_again(&denied, 5, t0, unix_now());
    // Another tool has its own bucket of 60.
    assert_passed(&p.post(0, &tools_call(6, "get_weather")), 6, "get_weather");

    assert_eq!(p.up.calls("search_docs").unwrap(), 3);
    assert_eq!(p.up.requests().unwrap(), 4);
    // envoyproxy/ratelimit counts denied hits too (it is not told to stop).
    let cached = p.stat(0, "over_limit_cached");
    assert!(cached <= 1);
    assert_eq!(p.count("search_docs", end), 5 - cached);
    assert_eq!(p.count("get_weather", end), 1);
    assert_eq!(p.stat(0, "checked"), 6 - cached);
    assert_eq!(p.stat(0, "ok"), 4);
    assert_eq!(p.stat(0, "over_limit"), 2 - cached);
    assert_eq!(p.stat(0, "error"), 0);
}

/// A 2025-03-26 JSON-RPC batch of k calls is one rate-limit request whose
/// descriptor carries `hits_addend: k`, and the service counts k.
#[test]
fn batch_of_k_calls_consumes_k() {
    let p = Production::start(&[STRICT], 1, 1, &RateLimitOptions::default());
    let end = window_with(60, Duration::from_secs(15));
    let batch = |ids: &[u64], tool: &str| {
        let calls: Vec<String> = ids.iter().map(|id| tools_call(*id, tool)).collect();
        format!("[{}]", calls.join(","))
    };
    let resp = p.post(0, &batch(&[1, 2, 3, 4, 5], "get_weather"));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(p.count("get_weather", end), 5);
    assert_eq!(p.up.calls("get_weather").unwrap(), 5);

    // search_docs: a batch of 2, then one more call fits; the fourth does not.
    let resp = p.post(0, &batch(&[10, 11], "search_docs"));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(p.count("search_docs", end), 2);
    assert_passed(
        &p.post(0, &tools_call(12, "search_docs")),
        12,
        "search_docs",
    );
    // A batch over the limit is denied as a whole, one error per call.
    let resp = p.post(0, &batch(&[13, 14], "search_docs"));
    assert_eq!(resp.status, 429, "{resp:?}");
    let ids = resp.batch_ids();
    assert_eq!(ids, vec![json!(13), json!(14)]);
    assert_eq!(p.count("search_docs", end), 5);
    assert_eq!(p.up.calls("search_docs").unwrap(), 3);
}

/// A call's cost is the hits the service counts: with `search_docs`
/// costing 2 under its limit of 3 a minute, the first call passes and the
/// second (4 > 3) is denied; Redis holds 4.
#[test]
fn the_service_counts_each_call_at_its_cost() {
    let plugin = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":3000,
        "failure_mode_deny":true,"tool_costs":{"search_docs":2}}"#;
    let p = Production::start(&[plugin], 1, 1, &RateLimitOptions::default());
    let end = window_with(60, Duration::from_secs(15));
    assert_passed(&p.post(0, &tools_call(1, "search_docs")), 1, "search_docs");
    assert_eq!(p.count("search_docs", end), 2);
    let t0 = unix_now();
    let resp = p.post(0, &tools_call(2, "search_docs"));
    assert_denied(&resp, 2, t0, unix_now());
    assert_eq!(p.count("search_docs", end), 4);
    // Other tools cost the default, 1.
    assert_passed(&p.post(0, &tools_call(3, "get_weather")), 3, "get_weather");
    assert_eq!(p.count("get_weather", end), 1);
}

/// A shadow descriptor over its limit at envoyproxy/ratelimit does not
/// deny; the enforced one does, and the draft-03 headers come from the
/// service's own statuses.
#[test]
fn shadow_limits_and_ratelimit_headers_with_the_service() {
    let plugin = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":3000,
        "failure_mode_deny":true,"ratelimit_headers":"draft03","descriptors":[
        {"name":"per_tool","entries":[{"key":"tool","mcp":"tool"}]},
        {"name":"trial","shadow":true,"entries":[{"key":"tool","value":"search_docs"}]}]}"#;
    let p = Production::start(&[plugin], 1, 1, &RateLimitOptions::default());
    let end = window_with(60, Duration::from_secs(15));
    // get_weather: 60 a minute; the trial descriptor (search_docs, 3 a
    // minute) is over from the 4th call on, and denies nothing.
    for id in 1..=5 {
        let t0 = unix_now();
        let resp = p.post(0, &tools_call(id, "get_weather"));
        let t1 = unix_now();
        assert_passed(&resp, id, "get_weather");
        // The headers leave the shadow descriptor out: the enforced one's.
        assert_eq!(resp.header("x-ratelimit-limit"), Some("60, 60;w=60"));
        let remaining = (60 - id).to_string();
        assert_eq!(
            resp.header("x-ratelimit-remaining"),
            Some(remaining.as_str())
        );
        let reset: u64 = resp.header("x-ratelimit-reset").unwrap().parse().unwrap();
        let window_left = |t: f64| 60 - (t.floor() as u64) % 60;
        assert!(
            (window_left(t1)..=window_left(t0)).contains(&reset),
            "{resp:?}"
        );
    }
    assert_eq!(p.stat(0, "shadow_over_limit"), 2);
    assert_eq!(p.stat(0, "over_limit"), 0);
    assert_eq!(p.count("get_weather", end), 5);
    assert_eq!(p.count("search_docs", end), 5);
}

/// `response_headers_to_add`, as the service fills them when its
/// `LIMIT_RESPONSE_HEADERS_ENABLED` is on, reach the client on allowed and
/// denied answers alike.
#[test]
fn the_services_response_headers_reach_the_client() {
    let svc = RateLimitOptions {
        env: vec![("LIMIT_RESPONSE_HEADERS_ENABLED".into(), "true".into())],
        ..RateLimitOptions::default()
    };
    let p = Production::start(&[STRICT], 1, 1, &svc);
    window_with(60, Duration::from_secs(15));
    let mut seen = Vec::new();
    for id in 1..=4 {
        let t0 = unix_now();
        let resp = p.post(0, &tools_call(id, "search_docs"));
        let t1 = unix_now();
        let reset: u64 = resp.header("ratelimit-reset").unwrap().parse().unwrap();
        let left = |t: f64| 60 - (t.floor() as u64) % 60;
        assert!((left(t1)..=left(t0)).contains(&reset), "{resp:?}");
        if id == 4 {
            assert_eq!(assert_denied(&resp, id, t0, t1), reset);
        } else {
            assert_passed(&resp, id, "search_docs");
        }
        seen.push((
            resp.status,
            resp.header("ratelimit-limit").unwrap().to_owned(),
            resp.header("ratelimit-remaining").unwrap().to_owned(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            (200, "3".to_owned(), "2".to_owned()),
            (200, "3".to_owned(), "1".to_owned()),
            (200, "3".to_owned(), "0".to_owned()),
            (429, "3".to_owned(), "0".to_owned()),
        ]
    );
}

/// Sends `body(id)` for each id on its own thread against `envoy`; returns
/// (id, answer, how long it took), sorted by id.
fn concurrently(
    p: &Production,
    ids: std::ops::Range<u64>,
    threads: u64,
    body: impl Fn(u64) -> (usize, String) + Sync,
) -> Vec<(u64, Response, Duration)> {
    let out = Mutex::new(Vec::new());
    let ids: Vec<u64> = ids.collect();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (ids, out, body) = (&ids, &out, &body);
            s.spawn(move || {
                for id in ids.iter().skip(t as usize).step_by(threads as usize) {
                    let (envoy, text) = body(*id);
                    let start = Instant::now();
                    let resp = p.post(envoy, &text);
                    out.lock().unwrap().push((*id, resp, start.elapsed()));
                }
            });
        }
    });
    let mut out = out.into_inner().unwrap();
    out.sort_by_key(|(id, _, _)| *id);
    out
}

/// Two replicas of the service share one Redis; two Envoys of two workers
/// each share the replicas. 600 concurrent calls of a tool limited to 60 a
/// minute: exactly 60 reach the MCP server, every other gets the exact 429
/// with its own id, from the service or, once it has denied, from each
/// Envoy's over-limit cache.
#[test]
fn two_replicas_and_two_envoys_admit_exactly_the_limit() {
    let p = Production::start(&[STRICT, STRICT], 2, 2, &RateLimitOptions::default());
    let end = window_with(60, Duration::from_secs(20));
    let admitted = flood_of_600(&p);
    assert_eq!(admitted, 60, "{}", p.logs());
    assert_eq!(p.up.calls("get_weather").unwrap(), 60);
    // Both Envoys took calls, and both replicas answered some; each request
    // was asked, or denied from its Envoy's cache.
    let mut calls = 0;
    for e in 0..2 {
        let (checked, cached) = (p.stat(e, "checked"), p.stat(e, "over_limit_cached"));
        assert_eq!(checked + cached, 300);
        assert_eq!(p.stat(e, "error"), 0);
        calls += checked;
    }
    eprintln!("600 requests, 60 admitted: {calls} rate-limit calls");
    assert!(calls < 600, "no denial came from the cache");
    // envoyproxy/ratelimit counts every hit it is asked for.
    assert_eq!(p.count("get_weather", end), calls);
    let hosts = rls_requests_per_host(&p);
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert!(hosts.iter().all(|(_, n)| *n > 0), "{hosts:?}");
    assert_eq!(hosts.iter().map(|(_, n)| n).sum::<u64>(), calls);
}

/// 600 concurrent calls of `get_weather`, split between Envoys 0 and 1:
/// each either reaches the MCP server or gets the exact denial with its own
/// id (from the service or its over-limit cache). Returns how many passed.
fn flood_of_600(p: &Production) -> u64 {
    let t0 = unix_now();
    let answers = concurrently(p, 1..601, 24, |id| {
        ((id % 2) as usize, tools_call(id, "get_weather"))
    });
    let t1 = unix_now();
    let mut admitted = 0;
    for (id, resp, _) in &answers {
        if resp.status == 200 {
            assert_passed(resp, *id, "get_weather");
            admitted += 1;
        } else {
            assert_denied_again(resp, *id, t0, t1);
        }
    }
    admitted
}

/// Requests each replica (by address) got from all Envoys, from the Envoys'
/// own per-host cluster statistics (admin `/clusters`).
fn rls_requests_per_host(p: &Production) -> Vec<(String, u64)> {
    let mut per_host: Vec<(String, u64)> = Vec::new();
    for envoy in &p.envoys {
        let text = envoy.admin_get("/clusters").unwrap().text();
        for line in text.lines() {
            // ratelimit::127.0.0.1:PORT::rq_total::N
            let parts: Vec<&str> = line.split("::").collect();
            if parts.len() == 4 && parts[0] == "ratelimit" && parts[2] == "rq_total" {
                let n: u64 = parts[3].parse().unwrap();
                match per_host.iter_mut().find(|(h, _)| h == parts[1]) {
                    Some((_, total)) => *total += n,
                    None => per_host.push((parts[1].to_owned(), n)),
                }
            }
        }
    }
    per_host.sort();
    per_host
}

const OPEN: &str =
    r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":400,"failure_mode_deny":false}"#;
const CLOSED: &str =
    r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":400,"failure_mode_deny":true}"#;

/// The filter's timeout in [`OPEN`] and [`CLOSED`].
const TIMEOUT: Duration = Duration::from_millis(400);

/// Bound on an answer when the service fails: the filter's timeout plus
/// slack for a loaded machine.
const FAILURE_BOUND: Duration = Duration::from_millis(400 + 1500);

/// Calls `tool` through the fail-open Envoy (0) and the fail-closed one (1),
/// `n` times each, asserting how each failure is answered and how fast:
/// after the filter's timeout when the service hangs (`timed_out`), before it
/// when the service answers an error.
fn assert_failure_modes(p: &Production, first_id: u64, n: u64, tool: &str, timed_out: bool) {
    let passed_before = p.up.calls(tool).unwrap();
    for i in 0..n {
        let id = first_id + 2 * i;
        let start = Instant::now();
        let open = p.post(0, &tools_call(id, tool));
        let took_open = start.elapsed();
        let start = Instant::now();
        let closed = p.post(1, &tools_call(id + 1, tool));
        let took_closed = start.elapsed();
        eprintln!("{tool}: fail-open answered in {took_open:?}, fail-closed in {took_closed:?}");
        assert_passed(&open, id, tool);
        assert_rls_failure(&closed, id + 1);
        for took in [took_open, took_closed] {
            assert!(took < FAILURE_BOUND, "an answer took {took:?}");
            // (Envoy's timers may fire a fraction of a millisecond early.)
            let waited = took + Duration::from_millis(2) >= TIMEOUT;
            assert_eq!(waited, timed_out, "an answer took {took:?}");
        }
    }
    // Only the fail-open calls reached the server.
    assert_eq!(p.up.calls(tool).unwrap(), passed_before + n);
}

/// Redis gone: the service answers each call with an error. Fail-open lets
/// calls through, fail-closed answers 503 with a JSON-RPC error, both at
/// once; counting resumes when Redis is back.
#[test]
fn redis_stopped_under_fail_open_and_fail_closed() {
    let mut p = Production::start(&[OPEN, CLOSED], 1, 1, &RateLimitOptions::default());
    let end = window_with(60, Duration::from_secs(25));
    assert_passed(&p.post(0, &tools_call(1, "get_weather")), 1, "get_weather");
    assert_passed(&p.post(1, &tools_call(2, "get_weather")), 2, "get_weather");
    let port = p.redis.port();
    p.redis.stop().unwrap();
    assert_failure_modes(&p, 10, 3, "get_weather", false);
    assert_eq!(p.stat(0, "failure_mode_allowed"), 3);
    assert_eq!(p.stat(0, "error"), 3);
    assert_eq!(p.stat(1, "error"), 3);
    assert_eq!(p.stat(1, "failure_mode_allowed"), 0);
    // Redis back on its port (empty): the service counts again.
    p.redis = Redis::start_on(port).unwrap();
    e2e::wait_for(
        "the service to reach Redis again",
        Duration::from_secs(20),
        || {
            let resp = p.post(1, &tools_call(100, "get_weather"));
            (resp.status == 200).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert_passed(
        &p.post(0, &tools_call(101, "get_weather")),
        101,
        "get_weather",
    );
    assert_eq!(p.count("get_weather", end), 2);
}

/// Redis hanging (stopped with SIGSTOP): the service waits for it, the
/// filter's timeout answers first, in each failure mode; nothing hangs, and
/// all is well once Redis runs again.
#[test]
fn redis_hung_under_fail_open_and_fail_closed() {
    let mut p = Production::start(&[OPEN, CLOSED], 1, 1, &RateLimitOptions::default());
    let end = window_with(60, Duration::from_secs(25));
    assert_passed(&p.post(0, &tools_call(1, "get_weather")), 1, "get_weather");
    p.redis.proc().pause().unwrap();
    assert_failure_modes(&p, 10, 2, "get_weather", true);
    assert_eq!(p.stat(0, "failure_mode_allowed"), 2);
    assert_eq!(p.stat(1, "error"), 2);
    p.redis.proc().resume().unwrap();
    // The hits the hung calls carried may land once Redis runs again; the
    // service then answers normally.
    e2e::wait_for(
        "the service to answer again",
        Duration::from_secs(20),
        || {
            let resp = p.post(1, &tools_call(100, "get_weather"));
            (resp.status == 200).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    let n = p.count("get_weather", end);
    assert!((2..=6).contains(&n), "get_weather counted {n} times");
}

/// Redis slow but within the filter's timeout (it sleeps 150 ms at a time,
/// over and over): every call waits, none fails, and the counts are exact.
#[test]
fn redis_slow_within_the_timeout_counts_exactly() {
    let p = Production::start(&[STRICT], 1, 1, &RateLimitOptions::default());
    let end = window_with(60, Duration::from_secs(20));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (answers, sleeps) = std::thread::scope(|s| {
        let sleeper = s.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                p.redis.command(&["DEBUG", "SLEEP", "0.15"]).unwrap();
                n += 1;
            }
            n
        });
        let answers = concurrently(&p, 1..41, 4, |id| (0, tools_call(id, "get_weather")));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (answers, sleeper.join().unwrap())
    });
    assert!(sleeps >= 2, "Redis slept only {sleeps} times");
    for (id, resp, took) in &answers {
        assert_passed(resp, *id, "get_weather");
        assert!(*took < Duration::from_millis(3000), "{id} took {took:?}");
    }
    let slowest = answers.iter().map(|(_, _, took)| *took).max().unwrap();
    assert!(
        slowest >= Duration::from_millis(100),
        "no call waited for Redis: {slowest:?}"
    );
    assert_eq!(p.count("get_weather", end), 40);
    assert_eq!(p.stat(0, "ok"), 40);
    assert_eq!(p.stat(0, "error"), 0);
}

/// The service restarted (SIGTERM, then started again on its port) while
/// calls keep coming: every answer is a pass or the exact fail-closed 503,
/// none hangs, nothing passes unchecked, and the counts in Redis survive the
/// restart.
#[test]
fn service_restarted_under_load() {
    let mut p = Production::start(&[STRICT], 1, 1, &RateLimitOptions::default());
    let end = window_with(60, Duration::from_secs(30));
    for id in 1..=2 {
        assert_passed(
            &p.post(0, &tools_call(id, "search_docs")),
            id,
            "search_docs",
        );
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let answers = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (stop, answers, addr) = (&stop, &answers, p.addrs[0]);
            s.spawn(move || {
                let mut id = 1000 * (t + 1);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // A tool of its own per call, so that no limit is
                    // reached (the MCP server answers that it has no such tool).
                    let tool = format!("tool_{id}");
                    let start = Instant::now();
                    let resp = post_json(addr, "/mcp", &tools_call(id, &tool), &[]).unwrap();
                    answers
                        .lock()
                        .unwrap()
                        .push((id, tool, resp, start.elapsed()));
                    id += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        p.services[0].restart().unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let answers = answers.into_inner().unwrap();
    let (mut passed, mut failed) = (0, 0);
    for (id, tool, resp, took) in &answers {
        assert!(
            *took < Duration::from_millis(3000 + 1500),
            "{id} took {took:?}"
        );
        if resp.status == 200 {
            assert_eq!(
                resp.json(),
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": format!("Unknown tool: {tool}")}}),
            );
            passed += 1;
        } else {
            assert_rls_failure(resp, *id);
            failed += 1;
        }
    }
    eprintln!("around the restart: {passed} calls passed, {failed} answered 503");
    assert!(passed > 0, "no call passed around the restart");
    // Every call that passed was counted by the service.
    let stats = p.up.stats().unwrap();
    let upstream: u64 = stats["calls"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("tool_"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(upstream, passed);
    assert_eq!(p.stat(0, "error"), failed);
    // The search_docs bucket survived in Redis: one call left, then denied.
    assert_passed(&p.post(0, &tools_call(3, "search_docs")), 3, "search_docs");
    let t0 = unix_now();
    let resp = p.post(0, &tools_call(4, "search_docs"));
    assert_denied(&resp, 4, t0, unix_now());
    assert_eq!(p.count("search_docs", end), 4);
}

/// Fail-closed, with the per-tool descriptor leased 10 hits at a time.
const LEASED: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":3000,"failure_mode_deny":true,
    "descriptors":[{"name":"per_tool","entries":[{"key":"tool","mcp":"tool"}],"lease":10}]}"#;

/// Leased quota on two Envoys of two workers each: 600 concurrent calls of
/// a tool limited to 60 a minute, each Envoy taking 10 hits at a time from
/// the service. Never more than 60 reach the MCP server, and the flood
/// spends every lease, so at most the hits of one refused lease (fewer
/// than 10: the service counts a refused `hits_addend`) go unused; every
/// other call gets the exact 429, and the Envoys make a fraction of the
/// calls they would make without leases (with the over-limit cache).
#[test]
fn leases_on_two_envoys_admit_exactly_the_limit_with_few_calls() {
    let p = Production::start(&[LEASED, LEASED], 1, 2, &RateLimitOptions::default());
    let end = window_with(60, Duration::from_secs(20));
    let admitted = flood_of_600(&p);
    let calls: u64 = (0..2).map(|e| p.stat(e, "checked")).sum();
    let leased: u64 = (0..2).map(|e| p.stat(e, "leased")).sum();
    eprintln!(
        "leases: {admitted} admitted, {calls} rate-limit calls for 600 requests, {leased} admitted \
         without a call, redis counted {}",
        p.count("get_weather", end)
    );
    assert!(
        (51..=60).contains(&admitted),
        "{admitted} admitted\n{}",
        p.logs()
    );
    assert_eq!(p.up.calls("get_weather").unwrap(), admitted);
    assert!(leased > 0, "no call admitted from a lease");
    assert!(
        calls <= 100,
        "{calls} calls: leases and the cache did not save calls"
    );
    assert!(p.count("get_weather", end) >= 60);
    for e in 0..2 {
        assert_eq!(p.stat(e, "error"), 0);
    }
}

/// What leases can cost: hits counted by the service that no request
/// spends. Two Envoys take 30 calls each, one after the other, against a
/// limit of 60 with leases of 10: never more than 60 are admitted, and at
/// most (1.5 x 10 - 1) per Envoy are left unspent, plus fewer than 10 lost
/// to a lease the service refused (it counts a refused `hits_addend`).
#[test]
fn leases_under_admit_at_most_their_documented_bound() {
    let p = Production::start(&[LEASED, LEASED], 1, 1, &RateLimitOptions::default());
    let end = window_with(60, Duration::from_secs(20));
    let mut admitted = 0u64;
    for envoy in 0..2 {
        for i in 0..30 {
            let id = 1 + envoy as u64 * 100 + i;
            let resp = p.post(envoy, &tools_call(id, "get_weather"));
            if resp.status == 200 {
                assert_passed(&resp, id, "get_weather");
                admitted += 1;
            } else {
                assert_eq!(resp.status, 429, "{resp:?}");
            }
        }
    }
    let counted = p.count("get_weather", end);
    eprintln!("leases, 2 x 30 calls in turn: {admitted} admitted, redis counted {counted}");
    assert_eq!(p.up.calls("get_weather").unwrap(), admitted);
    assert!(admitted <= 60);
    assert!(
        admitted >= 60 - 2 * 14 - 9,
        "{admitted} admitted: more lost than the documented bound"
    );
    // The first Envoy, alone, was never short.
    assert!(admitted >= 30);
}

/// A raised limit takes effect within `over_limit_cache_max_ms` (5 s here):
/// denials are repeated for that long, then one request asks again, is
/// admitted under the new limit, and the denial is forgotten.
#[test]
fn a_raised_limit_takes_effect_within_the_cache_cap() {
    let plugin = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":3000,"failure_mode_deny":true,
        "over_limit_cache_max_ms":5000}"#;
    let mut p = Production::start(&[plugin], 1, 1, &RateLimitOptions::default());
    window_with(60, Duration::from_secs(25));
    for id in 1..=3 {
        assert_passed(
            &p.post(0, &tools_call(id, "search_docs")),
            id,
            "search_docs",
        );
    }
    assert_eq!(p.post(0, &tools_call(4, "search_docs")).status, 429);
    let denied_at = Instant::now();
    // The operator raises the limit to 100 a minute.
    let raised = limits().replace("requests_per_unit: 3", "requests_per_unit: 100");
    assert_ne!(raised, limits());
    p.services[0].restart_with(&[&raised]).unwrap();
    assert!(
        denied_at.elapsed() < Duration::from_secs(4),
        "the restart took too long"
    );
    // Still denied from the cache...
    assert_eq!(p.post(0, &tools_call(5, "search_docs")).status, 429);
    assert_eq!(p.stat(0, "over_limit_cached"), 1);
    // ...until the cap: then admitted.
    let mut id = 6;
    let admitted_after = loop {
        let resp = p.post(0, &tools_call(id, "search_docs"));
        if resp.status == 200 {
            assert_passed(&resp, id, "search_docs");
            break denied_at.elapsed();
        }
        assert_eq!(resp.status, 429, "{resp:?}");
        assert!(
            denied_at.elapsed() < Duration::from_secs(8),
            "still denied after the cap"
        );
        id += 1;
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("raised limit admitted {admitted_after:?} after the denial");
    assert!(
        admitted_after >= Duration::from_millis(5000),
        "{admitted_after:?}"
    );
    // The denial is forgotten: the next calls are asked, and admitted.
    let checked = p.stat(0, "checked");
    assert_passed(
        &p.post(0, &tools_call(100, "search_docs")),
        100,
        "search_docs",
    );
    assert_eq!(p.stat(0, "checked"), checked + 1);
}
