//! Exactness and stability under load, through the real Envoy 1.40 with two
//! worker threads (two Wasm VMs, each with its own rate-limit calls):
//!
//! - 10·N concurrent calls of a tool limited to N: exactly N reach the MCP
//!   server, every other one gets exactly the 429 JSON-RPC body, none lost;
//! - the same split between two Envoy processes sharing one rate-limit
//!   service;
//! - a bounded soak of mixed allowed and denied traffic, sampling Envoy's
//!   memory every second: it must stay flat.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use e2e::fixtures::{limits, tools_call};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use e2e::{stack, Conn, DevRls, Envoy, EnvoyOptions, McpUpstream, Request, Response, CLOCK_AT};

/// The limit of the exactness tests.
const N: u64 = 20;

/// dev-rls runs on a frozen clock (the harness's default), so no window rolls
/// over during a test and the counts are exact at any time of day, with the
/// same Retry-After for every denial. `search_docs` allows N calls;
/// `get_weather` is effectively unlimited (but every call is still checked).
static LIMITS: LazyLock<String> = LazyLock::new(|| limits(20, 1000000000));

const PLUGIN: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000}"#;

/// An Envoy with two workers in front of `rls` and `up`.
fn envoy(rls: &DevRls, up: &McpUpstream) -> (Envoy, SocketAddr) {
    let yaml = stack::render_config(
        &stack::shipped("envoy.yaml").unwrap(),
        rls.port(),
        up.port(),
        PLUGIN,
        &[],
    )
    .unwrap();
    let opts = EnvoyOptions {
        concurrency: 2,
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::start_with(&yaml, &opts).unwrap();
    let addr = envoy.listener_addr().unwrap();
    (envoy, addr)
}

/// A filter counter (`wasmcustom.mcp_ratelimit.<name>`).
fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(&format!("wasmcustom.mcp_ratelimit.{name}"))
}

/// Connections each worker of `envoy` accepted on its MCP listener.
fn connections_per_worker(envoy: &Envoy) -> Vec<u64> {
    let stats = envoy.stats();
    let mut per_worker: Vec<(String, u64)> = stats
        .iter()
        .filter(|(name, _)| {
            name.starts_with("listener.127.0.0.1_")
                && name.contains(".worker_")
                && name.ends_with(".downstream_cx_total")
        })
        .map(|(name, v)| (name.clone(), *v))
        .collect();
    per_worker.sort();
    per_worker.into_iter().map(|(_, v)| v).collect()
}

/// Asserts the exact denial body and headers for request `id`.
fn assert_denied(resp: &Response, id: u64) {
    assert_eq!(resp.status, 429, "request {id}: {resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("x-envoy-ratelimited"), Some("true"));
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    // The service's clock is frozen; a denial repeated by the over-limit
    // cache counts down on Envoy's, for at most the cache's 1 s plus a
    // probe's timeout (1 s) and margin.
    let left = 86_400 - CLOCK_AT % 86_400;
    assert!(
        (left - 3..=left).contains(&retry),
        "retry-after {retry}, the service's {left}"
    );
    assert_eq!(
        resp.text(),
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":429,"message":"Rate limit exceeded","data":{{"retryAfterSeconds":{retry}}}}}}}"#
        )
    );
}

fn assert_passed(resp: &Response, id: u64, tool: &str) {
    assert_eq!(resp.status, 200, "request {id}: {resp:?}");
    let body = resp.json();
    assert_eq!(body["id"], id, "{resp:?}");
    assert_eq!(
        body["result"]["content"][0]["text"],
        format!("{tool} called")
    );
}

/// Sends `total` calls of `search_docs` (ids 1..=total) from `threads`
/// threads released at once, spreading them over `targets` in turn, each on
/// its own connection. Returns (id, response) for every call; a call without
/// a response fails the test.
fn concurrent_calls(targets: &[SocketAddr], total: u64, threads: usize) -> Vec<(u64, Response)> {
    let next = AtomicU64::new(1);
    let results = Mutex::new(Vec::with_capacity(total as usize));
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                start.wait();
                loop {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    if id > total {
                        break;
                    }
                    let addr = targets[(id as usize) % targets.len()];
                    let resp = Request::post("/mcp")
                        .header("content-type", "application/json")
                        .body(tools_call(id, "search_docs"))
                        .timeout(Duration::from_secs(20))
                        .send(addr)
                        .unwrap_or_else(|e| panic!("request {id} to {addr} got no answer: {e}"));
                    results.lock().unwrap().push((id, resp));
                }
            });
        }
    });
    results.into_inner().unwrap()
}

/// Asserts that exactly `N` of `results` passed and every other got the
/// exact 429 body; that every id was answered once.
fn assert_exactly_n_passed(results: &[(u64, Response)], total: u64) {
    let ids: HashSet<u64> = results.iter().map(|(id, _)| *id).collect();
    assert_eq!(results.len() as u64, total, "answers");
    assert_eq!(ids.len() as u64, total, "distinct ids answered");
    let mut by_status: HashMap<u16, u64> = HashMap::new();
    for (id, resp) in results {
        *by_status.entry(resp.status).or_default() += 1;
        match resp.status {
            200 => assert_passed(resp, *id, "search_docs"),
            _ => assert_denied(resp, *id),
        }
    }
    assert_eq!(
        by_status,
        HashMap::from([(200, N), (429, total - N)]),
        "answers by status"
    );
}

#[test]
fn exactly_n_of_ten_n_concurrent_calls_pass_with_two_workers() {
    let rls = DevRls::start(&[LIMITS.as_str()]).unwrap();
    let up = McpUpstream::start().unwrap();
    let (envoy, addr) = envoy(&rls, &up);
    let total = 10 * N;
    let started = Instant::now();
    let results = concurrent_calls(&[addr], total, 32);
    let took = started.elapsed();

    assert_exactly_n_passed(&results, total);
    assert_eq!(up.calls("search_docs").unwrap(), N);
    assert_eq!(up.requests().unwrap(), N);
    // Each request was asked or denied from the over-limit cache, which
    // both workers read.
    let (checked, cached) = (stat(&envoy, "checked"), stat(&envoy, "over_limit_cached"));
    eprintln!("{checked} rate-limit calls, {cached} denied from the cache");
    assert_eq!(checked + cached, total);
    assert_eq!(stat(&envoy, "ok"), N);
    assert_eq!(stat(&envoy, "over_limit") + cached, total - N);
    assert!(cached > 0, "no denial came from the cache");
    assert_eq!(stat(&envoy, "error"), 0);
    let rls_stats = rls.stats().unwrap();
    assert_eq!(rls_stats["calls"], checked);
    assert_eq!(rls_stats["over_limit"], checked - N);
    // Both workers, hence both VMs, took part.
    let per_worker = connections_per_worker(&envoy);
    eprintln!("{total} calls from 32 threads in {took:?}; connections per worker {per_worker:?}");
    assert_eq!(per_worker.len(), 2, "{per_worker:?}");
    assert!(per_worker.iter().all(|c| *c > 0), "{per_worker:?}");
    assert_eq!(per_worker.iter().sum::<u64>(), total);
}

#[test]
fn exactly_n_pass_across_two_envoys_sharing_the_service() {
    let rls = DevRls::start(&[LIMITS.as_str()]).unwrap();
    let up = McpUpstream::start().unwrap();
    let (a, addr_a) = envoy(&rls, &up);
    let (b, addr_b) = envoy(&rls, &up);
    let total = 10 * N;
    let results = concurrent_calls(&[addr_a, addr_b], total, 32);

    assert_exactly_n_passed(&results, total);
    assert_eq!(up.calls("search_docs").unwrap(), N);
    assert_eq!(up.requests().unwrap(), N);
    for envoy in [&a, &b] {
        // The requests were split evenly by id; each was asked or denied
        // from its Envoy's over-limit cache.
        assert_eq!(
            stat(envoy, "checked") + stat(envoy, "over_limit_cached"),
            total / 2
        );
        assert_eq!(stat(envoy, "error"), 0);
    }
    let cached = stat(&a, "over_limit_cached") + stat(&b, "over_limit_cached");
    assert_eq!(stat(&a, "ok") + stat(&b, "ok"), N);
    assert_eq!(
        stat(&a, "over_limit") + stat(&b, "over_limit") + cached,
        total - N
    );
    assert_eq!(rls.stats().unwrap()["calls"], total - cached);
    eprintln!(
        "two Envoys: ok {} + {}, over_limit {} + {}",
        stat(&a, "ok"),
        stat(&b, "ok"),
        stat(&a, "over_limit"),
        stat(&b, "over_limit")
    );
}

/// Envoy's memory at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the load started.
    at: f64,
    /// Requests answered so far.
    requests: u64,
    /// VmRSS of the Envoy process, bytes (includes the Wasm VMs' linear memory).
    rss: u64,
    /// Envoy's `server.memory_allocated` (bytes held by its allocator).
    allocated: u64,
}

fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kb * 1024
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

const MIB: f64 = 1024.0 * 1024.0;

#[test]
fn soak_memory_stays_flat_under_mixed_traffic() {
    /// Load before the baseline is taken: VMs, connection pools, stats and
    /// allocator caches settle.
    const WARM_UP: Duration = Duration::from_secs(6);
    /// Load after it, sampled every second.
    const MEASURE: Duration = Duration::from_secs(18);
    /// How much either figure may grow from the baseline (median of the
    /// first 3 samples) to the end (median of the last 3). A leak of 100
    /// bytes a request needs only 32k requests in the measured window to
    /// exceed it; the test requires at least that many.
    const MARGIN: u64 = 3 * 1024 * 1024;
    const LEAK_PER_REQUEST: u64 = 100;
    const THREADS: u64 = 8;

    let rls = DevRls::start(&[LIMITS.as_str()]).unwrap();
    let up = McpUpstream::start().unwrap();
    let (envoy, addr) = envoy(&rls, &up);
    let pid = envoy.pid();

    let stop = AtomicBool::new(false);
    let answered = AtomicU64::new(0);
    let by_status = Mutex::new(HashMap::<(String, u16), u64>::new());
    let next_id = AtomicU64::new(1);
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (stop, answered, by_status, next_id) = (&stop, &answered, &by_status, &next_id);
            s.spawn(move || {
                let mut local: HashMap<(String, u16), u64> = HashMap::new();
                let mut conn: Option<Conn> = None;
                let deadline = Instant::now() + WARM_UP + MEASURE + Duration::from_secs(10);
                // Bounded in count and time.
                for n in 0..2_000_000u64 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    // Mixed: 1 call in 4 is of the limited tool, which is
                    // over its limit after its first N calls.
                    let tool = if (n + t) % 4 == 0 {
                        "search_docs"
                    } else {
                        "get_weather"
                    };
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let req = Request::post("/mcp")
                        .header("content-type", "application/json")
                        .body(tools_call(id, tool))
                        .timeout(Duration::from_secs(10));
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => conn.insert(Conn::open(addr).unwrap()),
                    };
                    let resp = c
                        .send(&req)
                        .unwrap_or_else(|e| panic!("request {id} got no answer: {e}"));
                    match resp.status {
                        200 => {
                            let body = resp.json();
                            assert_eq!(body["id"], id);
                            assert!(body.get("result").is_some(), "{resp:?}");
                        }
                        429 => assert_denied(&resp, id),
                        _ => panic!("request {id}: {resp:?}"),
                    }
                    if resp
                        .header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    {
                        conn = None;
                    }
                    *local.entry((tool.to_owned(), resp.status)).or_default() += 1;
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                let mut all = by_status.lock().unwrap();
                for (k, v) in local {
                    *all.entry(k).or_default() += v;
                }
            });
        }
        std::thread::sleep(WARM_UP);
        let end = Instant::now() + MEASURE;
        while Instant::now() < end {
            let allocated = envoy
                .try_stats()
                .ok()
                .and_then(|s| s.get("server.memory_allocated").copied())
                .unwrap_or(0);
            samples.push(Sample {
                at: started.elapsed().as_secs_f64(),
                requests: answered.load(Ordering::Relaxed),
                rss: vm_rss(pid),
                allocated,
            });
            std::thread::sleep(Duration::from_secs(1));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let by_status = by_status.into_inner().unwrap();
    let total = answered.load(Ordering::Relaxed);

    for s in &samples {
        eprintln!(
            "soak t={:5.1}s requests={:7} rss={:7.2} MiB allocated={:7.2} MiB",
            s.at,
            s.requests,
            s.rss as f64 / MIB,
            s.allocated as f64 / MIB
        );
    }
    assert!(samples.len() >= 10, "{} samples", samples.len());
    let (first, last) = (&samples[..3], &samples[samples.len() - 3..]);
    let in_window = last[2].requests - first[0].requests;
    let secs = last[2].at - first[0].at;
    let rss_base = median(first.iter().map(|s| s.rss).collect());
    let rss_end = median(last.iter().map(|s| s.rss).collect());
    let alloc_base = median(first.iter().map(|s| s.allocated).collect());
    let alloc_end = median(last.iter().map(|s| s.allocated).collect());
    let grew = |base: u64, end: u64| end as i64 - base as i64;
    eprintln!(
        "soak: {total} requests ({:?}), {in_window} in the {secs:.0} s window ({:.0}/s); \
         RSS {:.2} -> {:.2} MiB ({:+} KiB), allocated {:.2} -> {:.2} MiB ({:+} KiB); \
         a leak of {LEAK_PER_REQUEST} B/request would add {:.1} MiB",
        by_status,
        in_window as f64 / secs,
        rss_base as f64 / MIB,
        rss_end as f64 / MIB,
        grew(rss_base, rss_end) / 1024,
        alloc_base as f64 / MIB,
        alloc_end as f64 / MIB,
        grew(alloc_base, alloc_end) / 1024,
        (in_window * LEAK_PER_REQUEST) as f64 / MIB,
    );

    // The traffic was what it should be: mixed, exact, nothing else.
    let count = |tool: &str, status: u16| {
        by_status
            .get(&(tool.to_owned(), status))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(count("search_docs", 200), N, "{by_status:?}");
    assert!(count("search_docs", 429) > 0, "{by_status:?}");
    assert_eq!(count("get_weather", 429), 0, "{by_status:?}");
    assert_eq!(
        count("search_docs", 200) + count("search_docs", 429) + count("get_weather", 200),
        total,
        "{by_status:?}"
    );
    assert_eq!(
        stat(&envoy, "checked") + stat(&envoy, "over_limit_cached"),
        total
    );
    assert_eq!(stat(&envoy, "error"), 0);
    assert_eq!(up.requests().unwrap(), total - count("search_docs", 429));

    // Sensitive enough: the window saw enough requests for a 100 B/request
    // leak to show.
    assert!(
        in_window * LEAK_PER_REQUEST > MARGIN,
        "only {in_window} requests in the measured window: too few to detect a \
         {LEAK_PER_REQUEST} B/request leak with a {MARGIN} B margin"
    );
    assert!(alloc_base > 0, "server.memory_allocated not reported");
    // Flat.
    assert!(
        grew(rss_base, rss_end) < MARGIN as i64,
        "Envoy's RSS grew from {rss_base} to {rss_end} bytes over {in_window} requests"
    );
    assert!(
        grew(alloc_base, alloc_end) < MARGIN as i64,
        "Envoy's allocated memory grew from {alloc_base} to {alloc_end} bytes over {in_window} requests"
    );
}
