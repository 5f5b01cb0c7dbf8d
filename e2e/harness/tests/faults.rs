//! The filter when the rate-limit service misbehaves, and when its own VM
//! panics, through the real Envoy 1.40.
//!
//! Each rate-limit service fault (stopped, slower than `timeout_ms`, a reply
//! that is not a `RateLimitResponse`, a non-OK gRPC status, an unknown
//! overall code, a restart or a crash under load) is injected in dev-rls and seen
//! through two Envoys sharing it: one with `failure_mode_deny: false`, where
//! every request must pass, and one with `failure_mode_deny: true`, where
//! every request must get the JSON-RPC `-32603` error and never reach the
//! MCP server. Every request must be answered within the timeout plus
//! 500 ms, and the filter's counters must count exactly what happened.
//!
//! The panic tests run the module built with the test-only `panic-test`
//! feature (`make wasm-panic-test`), which panics on a request carrying
//! `x-mcp-ratelimit-test-panic`, under each of Envoy's VM failure policies.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use e2e::fixtures::{limits, tools_call};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::{stack, DevRls, Envoy, McpUpstream, Request, Response, CLOCK_AT};

/// dev-rls runs on a frozen clock (the harness's default), so no window rolls
/// over during a test and the counts are exact at any time of day.
/// `get_weather` is never over its limit here.
static LIMITS: LazyLock<String> = LazyLock::new(|| limits(3, 100000));

/// The restart test's limits: `search_docs` goes over its limit under load,
/// with each instance of the service.
const RESTART_LIMIT: u64 = 20;
static RESTART_LIMITS: LazyLock<String> = LazyLock::new(|| limits(20, 100000));

/// The rate-limit call's timeout in the fault tests.
const TIMEOUT_MS: u64 = 200;

/// How much later than the filter's timeout a request may be answered.
const SLACK: Duration = Duration::from_millis(500);

/// Requests sent per failure mode for each fault.
const N: u64 = 12;

/// Every request here must reach the service, to meet its fault: the
/// over-limit cache, which answers repeated denials itself, is off (its
/// behaviour with a failing service is tested in `overlimit_cache.rs`).
fn plugin(timeout_ms: u64, deny: bool) -> String {
    format!(
        r#"{{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":{timeout_ms},"failure_mode_deny":{deny},"over_limit_cache":false}}"#
    )
}

/// A request id unique within the test binary.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The filter's counters of one Envoy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    checked: u64,
    ok: u64,
    over_limit: u64,
    error: u64,
    failure_mode_allowed: u64,
}

impl Counts {
    fn of(envoy: &Envoy) -> Counts {
        let stats = envoy.stats();
        let get = |name: &str| {
            stats
                .get(&format!("wasmcustom.mcp_ratelimit.{name}"))
                .copied()
                .unwrap_or(0)
        };
        Counts {
            checked: get("checked"),
            ok: get("ok"),
            over_limit: get("over_limit"),
            error: get("error"),
            failure_mode_allowed: get("failure_mode_allowed"),
        }
    }

    fn since(self, before: Counts) -> Counts {
        Counts {
            checked: self.checked - before.checked,
            ok: self.ok - before.ok,
            over_limit: self.over_limit - before.over_limit,
            error: self.error - before.error,
            failure_mode_allowed: self.failure_mode_allowed - before.failure_mode_allowed,
        }
    }
}

/// One answered request: its id, what came back and how long it took.
struct Answer {
    id: u64,
    resp: Response,
    took: Duration,
}

/// Sends a `tools/call` of `tool` with a fresh id; a request that gets no
/// response within 10 s fails the test (it hung).
fn call(addr: SocketAddr, tool: &str) -> Answer {
    call_with(addr, tool, &[])
}

fn call_with(addr: SocketAddr, tool: &str, headers: &[(&str, &str)]) -> Answer {
    let id = next_id();
    let started = Instant::now();
    let resp = Request::post("/mcp")
        .header("content-type", "application/json")
        .headers(headers)
        .body(tools_call(id, tool))
        .timeout(Duration::from_secs(10))
        .send(addr)
        .unwrap_or_else(|e| panic!("request {id} to {addr} got no answer: {e}"));
    Answer {
        id,
        resp,
        took: started.elapsed(),
    }
}

/// Sends `n` calls of `tool` from `threads` client threads at once.
fn burst(addr: SocketAddr, tool: &str, n: u64, threads: u64) -> Vec<Answer> {
    let answers = Mutex::new(Vec::new());
    let left = AtomicU64::new(n);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                    .is_ok()
                {
                    let answer = call(addr, tool);
                    answers.lock().unwrap().push(answer);
                }
            });
        }
    });
    answers.into_inner().unwrap()
}

/// Asserts that a request passed to the MCP server and got its answer.
fn assert_passed(a: &Answer, tool: &str) {
    assert_eq!(a.resp.status, 200, "request {}: {:?}", a.id, a.resp);
    let body = a.resp.json();
    assert_eq!(body["id"], a.id, "{:?}", a.resp);
    assert_eq!(
        body["result"]["content"][0]["text"],
        format!("{tool} called"),
        "{:?}",
        a.resp
    );
}

/// Asserts the exact answer of a request over its limit: with the clock
/// frozen at `CLOCK_AT`, the day window ends in the same number of seconds
/// for every denial.
fn assert_over_limit(a: &Answer) {
    assert_eq!(a.resp.status, 429, "request {}: {:?}", a.id, a.resp);
    assert_eq!(a.resp.header("content-type"), Some("application/json"));
    let retry = (86_400 - CLOCK_AT % 86_400).to_string();
    assert_eq!(a.resp.header("retry-after"), Some(retry.as_str()));
    assert_eq!(
        a.resp.text(),
        format!(
            r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":429,"message":"Rate limit exceeded","data":{{"retryAfterSeconds":{retry}}}}}}}"#,
            a.id
        )
    );
}

/// Asserts the exact answer of a request denied because the service failed.
fn assert_rls_failure(a: &Answer) {
    assert_eq!(a.resp.status, 503, "request {}: {:?}", a.id, a.resp);
    assert_eq!(a.resp.header("content-type"), Some("application/json"));
    assert_eq!(
        a.resp.text(),
        format!(
            r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":-32603,"message":"Rate limit service unavailable"}}}}"#,
            a.id
        )
    );
}

/// Asserts that every answer came within the filter's timeout plus [`SLACK`]
/// (and, for a slow service, not before the timeout); returns the slowest.
fn assert_timely(answers: &[Answer], timeout_ms: u64, at_least_timeout: bool) -> Duration {
    let timeout = Duration::from_millis(timeout_ms);
    let mut slowest = Duration::ZERO;
    for a in answers {
        assert!(
            a.took < timeout + SLACK,
            "request {} answered in {:?}, over {timeout:?} + {SLACK:?}",
            a.id,
            a.took
        );
        if at_least_timeout {
            // Envoy's timer has millisecond granularity.
            assert!(
                a.took + Duration::from_millis(20) >= timeout,
                "request {} answered in {:?}, before the {timeout:?} timeout",
                a.id,
                a.took
            );
        }
        slowest = slowest.max(a.took);
    }
    slowest
}

/// dev-rls, the MCP server, and two Envoys in front of them that differ only
/// in `failure_mode_deny`.
struct Rig {
    rls: DevRls,
    up: McpUpstream,
    open: Envoy,
    closed: Envoy,
    open_addr: SocketAddr,
    closed_addr: SocketAddr,
    timeout_ms: u64,
}

impl Rig {
    fn start(timeout_ms: u64) -> Rig {
        Self::start_with(timeout_ms, LIMITS.as_str())
    }

    fn start_with(timeout_ms: u64, limits: &str) -> Rig {
        let rls = DevRls::start(&[limits]).unwrap();
        let up = McpUpstream::start().unwrap();
        let envoy = |deny: bool| {
            let yaml = stack::render_config(
                &stack::shipped("envoy.yaml").unwrap(),
                rls.port(),
                up.port(),
                &plugin(timeout_ms, deny),
                &[],
            )
            .unwrap();
            Envoy::start(&yaml).unwrap()
        };
        let open = envoy(false);
        let closed = envoy(true);
        let open_addr = open.listener_addr().unwrap();
        let closed_addr = closed.listener_addr().unwrap();
        let rig = Rig {
            rls,
            up,
            open,
            closed,
            open_addr,
            closed_addr,
            timeout_ms,
        };
        // The service works before the fault: this also opens each Envoy's
        // HTTP/2 connection to it.
        rig.assert_healthy();
        rig
    }

    /// One call through each Envoy is decided OK by the service.
    fn assert_healthy(&self) {
        for envoy in [&self.open, &self.closed] {
            let addr = envoy.listener_addr().unwrap();
            let before = Counts::of(envoy);
            assert_passed(&call(addr, "get_weather"), "get_weather");
            let d = Counts::of(envoy).since(before);
            assert_eq!((d.checked, d.ok, d.error), (1, 1, 0), "{d:?}");
        }
    }

    /// Under the fault in force: `n` calls through the fail-open Envoy all
    /// pass, `n` through the fail-closed one are all denied with the JSON-RPC
    /// error, each answered in time; the counters say `n` errors each.
    fn assert_fault_handled(&self, what: &str, n: u64, slow: bool) {
        let upstream_before = self.up.calls("get_weather").unwrap();

        let before = Counts::of(&self.open);
        let answers = burst(self.open_addr, "get_weather", n, 4);
        assert_eq!(answers.len() as u64, n);
        answers.iter().for_each(|a| assert_passed(a, "get_weather"));
        let open_slowest = assert_timely(&answers, self.timeout_ms, slow);
        let d = Counts::of(&self.open).since(before);
        assert_eq!(
            d,
            Counts {
                checked: n,
                ok: 0,
                over_limit: 0,
                error: n,
                failure_mode_allowed: n
            },
            "{what}, fail-open counters"
        );
        assert_eq!(self.up.calls("get_weather").unwrap(), upstream_before + n);

        let before = Counts::of(&self.closed);
        let answers = burst(self.closed_addr, "get_weather", n, 4);
        assert_eq!(answers.len() as u64, n);
        answers.iter().for_each(assert_rls_failure);
        let closed_slowest = assert_timely(&answers, self.timeout_ms, slow);
        let d = Counts::of(&self.closed).since(before);
        assert_eq!(
            d,
            Counts {
                checked: n,
                ok: 0,
                over_limit: 0,
                error: n,
                failure_mode_allowed: 0
            },
            "{what}, fail-closed counters"
        );
        assert_eq!(
            self.up.calls("get_weather").unwrap(),
            upstream_before + n,
            "{what}: a request denied for the failure reached the MCP server"
        );
        eprintln!(
            "{what}: slowest answer {open_slowest:?} (fail-open), {closed_slowest:?} (fail-closed), timeout {} ms",
            self.timeout_ms
        );
    }

    /// Clears the fault; the service decides again.
    fn recover(&self) {
        self.rls.set_fault("none").unwrap();
        self.assert_healthy();
    }
}

#[test]
fn rls_stopped() {
    let mut rig = Rig::start(TIMEOUT_MS);
    rig.rls.stop().unwrap();
    rig.assert_fault_handled("rls stopped", N, false);
}

#[test]
fn rls_slower_than_the_timeout() {
    let rig = Rig::start(TIMEOUT_MS);
    rig.rls.set_fault("slow:1500").unwrap();
    rig.assert_fault_handled("rls slow (1500 ms)", N, true);
    rig.recover();
}

#[test]
fn rls_replies_garbage() {
    let rig = Rig::start(TIMEOUT_MS);
    // Each of dev-rls's payloads alone (`garbage:<i>` until it has no more),
    // so that a failure names it.
    let mut payloads = 0;
    while rig.rls.set_fault(&format!("garbage:{payloads}")).is_ok() {
        rig.assert_fault_handled(&format!("garbage payload {payloads}"), 1, false);
        payloads += 1;
    }
    assert!(
        payloads >= 8,
        "dev-rls has only {payloads} garbage payloads"
    );
    rig.rls.set_fault("garbage").unwrap();
    rig.assert_fault_handled("garbage (rotating)", N, false);
    // The service decided nothing: every call was answered with garbage.
    assert_eq!(rig.rls.calls().unwrap(), 2);
    assert_eq!(rig.rls.faulted().unwrap(), 2 * (payloads + N));
    rig.recover();
}

#[test]
fn rls_answers_a_non_ok_grpc_status() {
    let rig = Rig::start(TIMEOUT_MS);
    for mode in ["unavailable", "internal"] {
        rig.rls.set_fault(mode).unwrap();
        rig.assert_fault_handled(&format!("gRPC status {mode}"), N, false);
    }
    assert_eq!(rig.rls.faulted().unwrap(), 4 * N);
    rig.recover();
}

#[test]
fn rls_answers_an_unknown_overall_code() {
    let rig = Rig::start(TIMEOUT_MS);
    for mode in ["unknown_code", "unknown_code:9"] {
        rig.rls.set_fault(mode).unwrap();
        rig.assert_fault_handled(&format!("overall code {mode}"), N, false);
    }
    assert_eq!(rig.rls.faulted().unwrap(), 4 * N);
    rig.recover();
}

/// A rate-limit cluster Envoy does not have: Envoy refuses the gRPC call
/// itself, with a host status (`ParseFailure` in Envoy 1.40). The filter
/// takes that as a failed call, under each failure mode, and its VM keeps
/// running.
#[test]
fn rls_cluster_unknown_to_envoy() {
    let rls = DevRls::start(&[LIMITS.as_str()]).unwrap();
    let up = McpUpstream::start().unwrap();
    for deny in [false, true] {
        let plugin = plugin(TIMEOUT_MS, deny).replace(
            r#""rls_cluster":"ratelimit""#,
            r#""rls_cluster":"no_such_cluster""#,
        );
        let yaml = stack::render_config(
            &stack::shipped("envoy.yaml").unwrap(),
            rls.port(),
            up.port(),
            &plugin,
            &[],
        )
        .unwrap();
        let envoy = Envoy::start(&yaml).unwrap();
        let addr = envoy.listener_addr().unwrap();
        let before = Counts::of(&envoy);
        let answers: Vec<Answer> = (0..3).map(|_| call(addr, "get_weather")).collect();
        for a in &answers {
            if deny {
                assert_rls_failure(a);
            } else {
                assert_passed(a, "get_weather");
            }
        }
        assert_timely(&answers, TIMEOUT_MS, false);
        assert_eq!(
            Counts::of(&envoy).since(before),
            Counts {
                checked: 3,
                ok: 0,
                over_limit: 0,
                error: 3,
                failure_mode_allowed: if deny { 0 } else { 3 },
            },
            "failure_mode_deny: {deny}"
        );
        let logs = envoy.logs();
        assert!(
            logs.contains("cannot call the rate-limit service"),
            "{logs}"
        );
        assert!(!logs.contains("panicked"), "{logs}");
        assert_eq!(envoy.stat("wasm.mcp_ratelimit.vm_reload_success"), 0);
    }
    assert_eq!(rls.calls().unwrap(), 0);
    assert_eq!(up.calls("get_weather").unwrap(), 3);
}

/// What the client threads of the restart test saw through one Envoy.
#[derive(Debug, Default)]
struct Tally {
    by_status: HashMap<u16, u64>,
    slowest: Duration,
}

#[test]
fn rls_restarts_under_load() {
    restart_under_load(false);
}

#[test]
fn rls_crashes_and_restarts_under_load() {
    restart_under_load(true);
}

/// Client threads call `search_docs` through both Envoys without pause while
/// the service is stopped (SIGTERM, in-flight calls answered; or SIGKILL with
/// `crash`, in-flight calls cut off) and started again on the same port.
fn restart_under_load(crash: bool) {
    const LIMIT: u64 = RESTART_LIMIT;
    const TOOL: &str = "search_docs";
    let what = if crash { "crash" } else { "restart" };
    let timeout_ms = 500;
    let mut rig = Rig::start_with(timeout_ms, RESTART_LIMITS.as_str());
    let port = rig.rls.port();
    let before_open = Counts::of(&rig.open);
    let before_closed = Counts::of(&rig.closed);
    let upstream_before = rig.up.requests().unwrap();

    let stop = AtomicBool::new(false);
    let tallies: Vec<Mutex<Tally>> = (0..2).map(|_| Mutex::new(Tally::default())).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut outcome = None;
    std::thread::scope(|s| {
        let mut clients = Vec::new();
        for (i, addr) in [rig.open_addr, rig.closed_addr].into_iter().enumerate() {
            for _ in 0..3 {
                let (stop, tally) = (&stop, &tallies[i]);
                clients.push(s.spawn(move || {
                    // Bounded in count and time.
                    for _ in 0..5000 {
                        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                            break;
                        }
                        let a = call(addr, TOOL);
                        match a.resp.status {
                            200 => assert_passed(&a, TOOL),
                            429 => assert_over_limit(&a),
                            503 if i == 1 => assert_rls_failure(&a),
                            _ => panic!("unexpected answer through Envoy {i}: {:?}", a.resp),
                        }
                        let mut t = tally.lock().unwrap();
                        *t.by_status.entry(a.resp.status).or_default() += 1;
                        t.slowest = t.slowest.max(a.took);
                    }
                }));
            }
        }
        std::thread::sleep(Duration::from_millis(700));
        let first = if crash {
            rig.rls.proc().kill().unwrap();
            None
        } else {
            Some(rig.rls.stop_and_count().unwrap())
        };
        std::thread::sleep(Duration::from_millis(500));
        let mut started = DevRls::start_on(port, &[RESTART_LIMITS.as_str()]).unwrap();
        assert_eq!(started.port(), port);
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::SeqCst);
        // Every client has had its last answer before the service stops.
        for client in clients {
            if let Err(panic) = client.join() {
                std::panic::resume_unwind(panic);
            }
        }
        let second = started.stop_and_count().unwrap();
        outcome = Some((first, second));
    });
    let (first, (second_calls, second_over)) = outcome.unwrap();
    let open = tallies[0].lock().unwrap();
    let closed = tallies[1].lock().unwrap();
    let count = |t: &Tally, status: u16| t.by_status.get(&status).copied().unwrap_or(0);

    let d_open = Counts::of(&rig.open).since(before_open);
    let d_closed = Counts::of(&rig.closed).since(before_closed);
    eprintln!(
        "{what} under load: fail-open {:?} slowest {:?}, fail-closed {:?} slowest {:?}; \
         first service (calls, over) {first:?}, second ({second_calls}, {second_over}); \
         counters fail-open {d_open:?}, fail-closed {d_closed:?}",
        open.by_status, open.slowest, closed.by_status, closed.slowest
    );

    // No request lost, errored or hanging: each thread's every request got
    // one of the expected answers (asserted in the threads), in time.
    let timeout = Duration::from_millis(timeout_ms);
    assert!(open.slowest < timeout + SLACK, "{:?}", open.slowest);
    assert!(closed.slowest < timeout + SLACK, "{:?}", closed.slowest);
    let total_open: u64 = open.by_status.values().sum();
    let total_closed: u64 = closed.by_status.values().sum();
    assert_eq!(d_open.checked, total_open, "every request was checked");
    assert_eq!(d_closed.checked, total_closed, "every request was checked");

    // Each answer is what the counters say happened.
    assert_eq!(count(&open, 200), d_open.ok + d_open.failure_mode_allowed);
    assert_eq!(count(&open, 429), d_open.over_limit);
    assert_eq!(d_open.error, d_open.failure_mode_allowed);
    assert_eq!(count(&closed, 200), d_closed.ok);
    assert_eq!(count(&closed, 429), d_closed.over_limit);
    assert_eq!(count(&closed, 503), d_closed.error);
    assert_eq!(d_closed.failure_mode_allowed, 0);
    for d in [d_open, d_closed] {
        assert_eq!(d.checked, d.ok + d.over_limit + d.error, "one outcome each");
    }

    // The outage was seen, and the restarted service was used.
    assert!(d_open.error > 0, "no request saw the outage");
    assert!(d_closed.error > 0, "no request saw the outage");
    assert!(second_calls > LIMIT, "the restarted service hit no limit");

    // Each instance of the service allowed exactly LIMIT calls (it counts
    // from zero after a restart).
    assert_eq!(second_over, second_calls - LIMIT);
    let ok_seen = d_open.ok + d_closed.ok;
    let over_seen = d_open.over_limit + d_closed.over_limit;
    match first {
        Some((first_calls, first_over)) => {
            // Stopped gently: every decision reached the filter. The first
            // instance also answered the rig's two get_weather calls.
            let first_calls = first_calls - 2;
            assert!(first_calls > LIMIT, "limit not reached");
            assert_eq!(first_over, first_calls - LIMIT);
            assert_eq!(ok_seen, 2 * LIMIT, "OK decisions that reached the filter");
            assert_eq!(over_seen, first_over + second_over);
        }
        None => {
            // Killed: decisions in flight were lost (and counted as errors).
            assert!(
                (LIMIT..=2 * LIMIT).contains(&ok_seen),
                "{ok_seen} OK decisions"
            );
            assert!(over_seen >= second_over);
        }
    }
    // The MCP server saw exactly the requests answered 200.
    assert_eq!(
        rig.up.requests().unwrap() - upstream_before,
        count(&open, 200) + count(&closed, 200)
    );
}

// ----- Wasm VM panics ------------------------------------------------------

const PANIC_HEADER: (&str, &str) = ("x-mcp-ratelimit-test-panic", "1");

/// The shipped config running the panic-test module, with its
/// `failure_policy: FAIL_RELOAD` line replaced by `policy_line` (or kept
/// when `None`).
struct PanicStack {
    envoy: Envoy,
    rls: DevRls,
    up: McpUpstream,
    addr: SocketAddr,
}

impl PanicStack {
    fn start(policy_line: Option<&str>) -> PanicStack {
        let rls = DevRls::start(&[LIMITS.as_str()]).unwrap();
        let up = McpUpstream::start().unwrap();
        let mut extra = vec![(
            format!("filename: {}", stack::wasm_path().unwrap()),
            format!("filename: {}", stack::panic_wasm_path().unwrap()),
        )];
        if let Some(line) = policy_line {
            extra.push(("failure_policy: FAIL_RELOAD".to_owned(), line.to_owned()));
        }
        let extra: Vec<(&str, String)> =
            extra.iter().map(|(a, b)| (a.as_str(), b.clone())).collect();
        let yaml = stack::render_config(
            &stack::shipped("envoy.yaml").unwrap(),
            rls.port(),
            up.port(),
            &plugin(1000, false),
            &extra,
        )
        .unwrap();
        let envoy = Envoy::start(&yaml).unwrap();
        let addr = envoy.listener_addr().unwrap();
        PanicStack {
            envoy,
            rls,
            up,
            addr,
        }
    }

    /// Sends the request that panics the VM and checks what it gets: Envoy's
    /// own empty 503, the connection closed, nothing sent on.
    fn panic_vm(&self) {
        let (up, rls) = (self.up.requests().unwrap(), self.rls.calls().unwrap());
        let a = call_with(self.addr, "search_docs", &[PANIC_HEADER]);
        assert_eq!(a.resp.status, 503, "{:?}", a.resp);
        assert!(a.resp.body.is_empty(), "{:?}", a.resp);
        assert_eq!(a.resp.header("connection"), Some("close"), "{:?}", a.resp);
        assert_eq!(self.up.requests().unwrap(), up);
        assert_eq!(self.rls.calls().unwrap(), rls);
        e2e::wait_for("the panic in Envoy's log", Duration::from_secs(5), || {
            self.envoy
                .logs()
                .contains("mcp-ratelimit test panic")
                .then_some(())
        })
        .unwrap();
    }

    fn stat(&self, name: &str) -> u64 {
        self.envoy.stat(name)
    }
}

/// Asserts the empty 503 Envoy answers for a failed VM.
fn assert_dead_vm_answer(resp: &Response) {
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(resp.body.is_empty(), "{resp:?}");
}

/// Calls `get_weather` until it passes again, for at most 10 s; every answer
/// meanwhile must be the empty 503, and none of those requests may reach the
/// MCP server. Returns how long recovery took.
fn wait_until_served(s: &PanicStack) -> Duration {
    let started = Instant::now();
    let upstream = s.up.requests().unwrap();
    loop {
        let a = call(s.addr, "get_weather");
        if a.resp.status == 200 {
            assert_passed(&a, "get_weather");
            assert_eq!(s.up.requests().unwrap(), upstream + 1);
            return started.elapsed();
        }
        assert_dead_vm_answer(&a.resp);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the VM was not reloaded within 10 s\n{}",
            s.envoy.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn vm_panic_with_fail_reload_recovers_and_limits_still_apply() {
    let s = PanicStack::start(None);
    assert!(s.envoy.logs().contains("mcp-ratelimit configured"));
    assert_passed(&call(s.addr, "search_docs"), "search_docs");

    s.panic_vm();
    let first = wait_until_served(&s);
    // A second panic right after the first reload: Envoy backs off before
    // reloading again.
    s.panic_vm();
    let second = wait_until_served(&s);
    eprintln!(
        "FAIL_RELOAD: served again {first:?} after the first panic, {second:?} after the second"
    );
    assert_eq!(s.stat("wasm.mcp_ratelimit.vm_reload_success"), 2);
    assert_eq!(s.stat("wasm.mcp_ratelimit.vm_reload_failure"), 0);

    // The limits still apply: search_docs had 1 of its 3; the panicking
    // requests did not count.
    assert_passed(&call(s.addr, "search_docs"), "search_docs");
    assert_passed(&call(s.addr, "search_docs"), "search_docs");
    assert_over_limit(&call(s.addr, "search_docs"));
    assert_eq!(s.up.calls("search_docs").unwrap(), 3);
    assert!(s.stat("wasmcustom.mcp_ratelimit.over_limit") >= 1);
}

#[test]
fn vm_panic_without_reload_leaves_the_worker_dead() {
    for line in ["fail_open: false", "failure_policy: FAIL_CLOSED"] {
        let s = PanicStack::start(Some(line));
        assert_passed(&call(s.addr, "get_weather"), "get_weather");
        let up = s.up.requests().unwrap();
        s.panic_vm();
        // Well past FAIL_RELOAD's ~1 s: still dead, for every request.
        let until = Instant::now() + Duration::from_millis(2500);
        let mut dead = 0;
        while Instant::now() < until {
            assert_dead_vm_answer(&call(s.addr, "get_weather").resp);
            let get = Request::get("/mcp")
                .header("accept", "text/event-stream")
                .send(s.addr)
                .unwrap();
            assert_dead_vm_answer(&get);
            dead += 2;
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{line}: {dead} requests after the panic, all 503");
        assert_eq!(s.up.requests().unwrap(), up, "{line}");
        assert_eq!(s.stat("wasm.mcp_ratelimit.vm_reload_success"), 0, "{line}");
    }
}

#[test]
fn vm_panic_with_fail_open_bypasses_the_limits() {
    let s = PanicStack::start(Some("failure_policy: FAIL_OPEN"));
    let calls = s.rls.calls().unwrap();
    s.panic_vm();
    // search_docs allows 3 a day; with the filter skipped, 5 pass and the
    // service is never asked.
    for _ in 0..5 {
        assert_passed(&call(s.addr, "search_docs"), "search_docs");
    }
    assert_eq!(s.up.calls("search_docs").unwrap(), 5);
    assert_eq!(s.rls.calls().unwrap(), calls);
}
