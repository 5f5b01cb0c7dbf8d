//! The only module that talks to the proxy: the contexts that feed host
//! events to [`Flow`] and carry out the [`Step`]s it returns. Host calls go
//! through `mcp_ratelimit_abi`, which returns every host failure as an
//! error: here each one becomes a log line, the flow's failure mode or a
//! local reply, never a panic.

use std::rc::Rc;
use std::time::Duration;

use mcp_ratelimit_abi::hostcalls;
use mcp_ratelimit_abi::{
    Action, BufferType, HostError, MapType, MetricType, RootContext, StreamContext,
};

use crate::config::Config;
use crate::envoy_version::{self, Version};
use crate::flow::{Counter, Flow, Host, Step};
use crate::reply::LocalReply;
use crate::rls;

mcp_ratelimit_abi::main!(|_| Box::new(Root::default()));

/// Metric ids, in [`Counter::ALL`] order.
#[derive(Default)]
struct Metrics([Option<u32>; Counter::ALL.len()]);

impl Metrics {
    fn define() -> Metrics {
        let mut ids = [None; Counter::ALL.len()];
        for (slot, c) in ids.iter_mut().zip(Counter::ALL) {
            *slot = hostcalls::define_metric(MetricType::Counter, c.name())
                .inspect_err(|e| log::warn!("cannot define metric {}: {e}", c.name()))
                .ok();
        }
        Metrics(ids)
    }

    fn increment(&self, c: Counter) {
        let index = Counter::ALL.iter().position(|x| *x == c);
        if let Some(Some(id)) = index.and_then(|i| self.0.get(i)) {
            if let Err(e) = hostcalls::increment_metric(*id, 1) {
                log::debug!("cannot increment metric {}: {e}", c.name());
            }
        }
    }
}

/// Envoy's own version, from its node properties (see [`envoy_version`]).
fn envoy_version() -> Option<Version> {
    let part = |field: &str| {
        let mut path = envoy_version::PROPERTY.to_vec();
        path.push(field);
        hostcalls::property(&path)
            .inspect_err(|e| log::warn!("cannot read Envoy's version ({field}): {e}"))
            .ok()
            .flatten()
    };
    let [major, minor, patch] = envoy_version::FIELDS.map(part);
    Version::from_properties([major.as_deref(), minor.as_deref(), patch.as_deref()])
}

#[derive(Default)]
struct Root {
    config: Option<Rc<Config>>,
    metrics: Rc<Metrics>,
}

impl RootContext for Root {
    fn on_configure(&mut self, config: &[u8]) -> bool {
        match Config::parse(config) {
            Ok(cfg) => {
                log::info!(
                    "mcp-ratelimit configured: domain={} rls_cluster={} descriptors={} timeout_ms={} failure_mode_deny={}",
                    cfg.domain,
                    cfg.rls_cluster,
                    cfg.descriptors.len(),
                    cfg.timeout_ms,
                    cfg.failure_mode_deny
                );
                if cfg.header_fast_path {
                    if let Some(refusal) = envoy_version::fast_path_refusal(envoy_version()) {
                        log::error!("mcp-ratelimit: {refusal}");
                        return false;
                    }
                }
                if cfg.hold_headers {
                    log::info!(
                        "mcp-ratelimit holds request headers while it reads the body: the Wasm filter \
                         config must set allow_on_headers_stop_iteration: true (or set hold_headers: \
                         false and add envoy.filters.http.buffer after this filter)"
                    );
                }
                self.config = Some(Rc::new(cfg));
                self.metrics = Rc::new(Metrics::define());
                true
            }
            Err(e) => {
                log::error!("mcp-ratelimit: {e}");
                false
            }
        }
    }

    fn create_stream(&self, context_id: u32) -> Box<dyn StreamContext> {
        // Envoy does not create streams for a plugin whose configuration was
        // refused; should one come anyway, refuse its requests rather than
        // let them through unchecked.
        let Some(cfg) = self.config.clone() else {
            return Box::new(Unconfigured { id: context_id });
        };
        Box::new(Stream {
            id: context_id,
            flow: Flow::new(cfg.clone()),
            cfg,
            env: Env {
                id: context_id,
                metrics: self.metrics.clone(),
            },
            dispatched_at: None,
            rls_ms: None,
            recorded: false,
        })
    }
}

struct Stream {
    id: u32,
    flow: Flow,
    cfg: Rc<Config>,
    env: Env,
    /// With `filter_state`: when the rate-limit call left, and how long it
    /// took (milliseconds, three decimals).
    dispatched_at: Option<u64>,
    rls_ms: Option<String>,
    /// The record has been written as filter state.
    recorded: bool,
}

/// The host as the flow sees it. A read the host fails is taken as absent.
struct Env {
    id: u32,
    metrics: Rc<Metrics>,
}

impl Env {
    fn absent_on_error<T: Default>(&self, what: &str, read: Result<T, HostError>) -> T {
        read.unwrap_or_else(|e| {
            log::warn!("[{}] cannot read {what}, taken as absent: {e}", self.id);
            T::default()
        })
    }
}

impl Host for Env {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        let read = hostcalls::header_value(MapType::RequestHeaders, name);
        self.absent_on_error("a request header", read)
    }

    fn metadata(&self, namespace: &str, path: &[String]) -> Option<Vec<u8>> {
        let mut full: Vec<&str> = Vec::with_capacity(3 + path.len());
        full.extend(["metadata", "filter_metadata", namespace]);
        full.extend(path.iter().map(String::as_str));
        self.absent_on_error("dynamic metadata", hostcalls::property(&full))
    }

    fn count(&self, counter: Counter) {
        self.metrics.increment(counter);
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.absent_on_error("shared data", hostcalls::shared_data(key))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> bool {
        hostcalls::set_shared_data(key, value, cas)
            .inspect_err(|e| log::warn!("[{}] cannot write shared data: {e}", self.id))
            .unwrap_or(false)
    }

    fn now_ms(&self) -> u64 {
        self.absent_on_error("the clock", hostcalls::now_nanos()) / 1_000_000
    }

    fn any_repeated(&self, names: &[String]) -> bool {
        let pairs = hostcalls::header_pairs(MapType::RequestHeaders);
        let pairs = self.absent_on_error("the request headers", pairs);
        names.iter().any(|n| {
            pairs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(n.as_bytes()))
                .count()
                > 1
        })
    }
}

/// `len` bytes of the buffered request body from offset `start` (none
/// when the body is empty).
fn read_body(start: usize, len: usize) -> Result<Vec<u8>, HostError> {
    if len == 0 {
        return Ok(Vec::new());
    }
    Ok(hostcalls::buffer(BufferType::RequestBody, start, len)?.unwrap_or_default())
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// Where a step is carried out: a filter callback that returns an action,
/// or an asynchronous callback that must resume the request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Site {
    Callback,
    Async,
}

impl Stream {
    /// Carries out a step, following `ReadBody` and `Dispatch` to the step
    /// they lead to; returns the action for a filter callback.
    fn run(&mut self, mut step: Step, site: Site) -> Action {
        loop {
            step = match step {
                Step::Continue(headers) => {
                    self.write_record();
                    for (k, v) in &headers {
                        if let Err(e) =
                            hostcalls::add_header(MapType::RequestHeaders, k, v.as_bytes())
                        {
                            log::warn!("[{}] cannot add request header {k}: {e}", self.id);
                        }
                    }
                    if site == Site::Async {
                        if let Err(e) = hostcalls::resume_request() {
                            log::warn!("[{}] resume failed: {e}", self.id);
                        }
                    }
                    return Action::Continue;
                }
                Step::Pause => return Action::Pause,
                Step::ReadBody { start, len } => match read_body(start, len) {
                    Ok(body) => self.flow.on_body(&body, &self.env),
                    Err(e) => {
                        log::error!("[{}] cannot read the request body, refused: {e}", self.id);
                        self.flow.on_body_unreadable(&self.env)
                    }
                },
                Step::Dispatch(payload) => {
                    let timeout = Duration::from_millis(self.cfg.timeout_ms);
                    match hostcalls::grpc_call(
                        &self.cfg.rls_cluster,
                        rls::SERVICE,
                        rls::METHOD,
                        &payload,
                        timeout,
                    ) {
                        Ok(token) => {
                            log::debug!("[{}] rate-limit call dispatched (token {token})", self.id);
                            if self.cfg.filter_state {
                                self.dispatched_at = hostcalls::now_nanos().ok();
                            }
                            self.flow.on_dispatched(token, &self.env);
                            Step::Pause
                        }
                        Err(e) => {
                            log::warn!(
                                "[{}] cannot call the rate-limit service on cluster {:?}: {e}",
                                self.id,
                                self.cfg.rls_cluster
                            );
                            self.flow.on_dispatch_failed(&self.env)
                        }
                    }
                }
                Step::Reply(reply) => {
                    self.write_record();
                    self.reply(&reply);
                    return Action::Pause;
                }
            };
        }
    }

    /// With `filter_state`, once the request is decided: what the access
    /// log may show, as filter state `wasm.mcp_ratelimit.<field>`.
    fn write_record(&mut self) {
        let record = self.flow.record();
        if !self.cfg.filter_state || self.recorded || record.verdict.is_none() {
            return;
        }
        self.recorded = true;
        let fields = [
            ("mcp_ratelimit.method", record.method.as_deref()),
            ("mcp_ratelimit.target", record.target.as_deref()),
            ("mcp_ratelimit.verdict", record.verdict),
            ("mcp_ratelimit.reason", record.reason),
            ("mcp_ratelimit.descriptor", record.descriptor.as_deref()),
            ("mcp_ratelimit.rls_ms", self.rls_ms.as_deref()),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                if let Err(e) = hostcalls::set_property(&[name], v.as_bytes()) {
                    log::debug!("[{}] cannot set {name}: {e}", self.id);
                }
            }
        }
    }

    fn reply(&self, reply: &LocalReply) {
        log::debug!(
            "[{}] local reply {} ({})",
            self.id,
            reply.status,
            reply.detail
        );
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        send(self.id, reply.status, &headers, reply.body.as_bytes());
    }
}

/// Answers the request locally; a failure is logged.
fn send(id: u32, status: u32, headers: &[(&str, &str)], body: &[u8]) {
    if let Err(e) = hostcalls::send_local_response(status, headers, body) {
        log::error!("[{id}] cannot send local reply {status}: {e}");
    }
}

impl StreamContext for Stream {
    fn on_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "panic-test")]
        test_panic();
        let step = self.flow.on_request_headers(end_of_stream, &self.env);
        let action = match step {
            // Keep the headers from the upstream until the body is judged;
            // this needs `allow_on_headers_stop_iteration: true`.
            Step::Pause => Action::Pause,
            other => self.run(other, Site::Callback),
        };
        if action == Action::Pause
            && !self.cfg.hold_headers
            && !end_of_stream
            && !self.flow.replied()
        {
            // Waiting on the fast path without holding the headers: the body
            // callbacks hold the request, and a buffer filter after this one
            // keeps the headers from the upstream.
            return Action::Continue;
        }
        action
    }

    fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let step = self
            .flow
            .on_request_body(body_size, end_of_stream, &self.env);
        self.run(step, Site::Callback)
    }

    fn on_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let step = self.flow.on_request_trailers(&self.env);
        self.run(step, Site::Callback)
    }

    fn on_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (k, v) in self.flow.response_headers() {
            if let Err(e) = hostcalls::add_header(MapType::ResponseHeaders, &k, v.as_bytes()) {
                log::warn!("[{}] cannot add response header {k}: {e}", self.id);
            }
        }
        Action::Continue
    }

    fn on_grpc_response(&mut self, token: u32, status: u32, body_size: usize) {
        let body = if status == 0 {
            hostcalls::buffer(BufferType::GrpcReceive, 0, body_size)
                .inspect_err(|e| {
                    log::warn!("[{}] cannot read the rate-limit reply: {e}", self.id);
                })
                .ok()
                .flatten()
        } else {
            log::debug!(
                "[{}] rate-limit call failed with gRPC status {status}",
                self.id
            );
            None
        };
        if let (Some(at), Ok(now)) = (self.dispatched_at.take(), hostcalls::now_nanos()) {
            let micros = now.saturating_sub(at) / 1000;
            self.rls_ms = Some(format!("{}.{:03}", micros / 1000, micros % 1000));
        }
        let step = self
            .flow
            .on_rls_response(token, status, body.as_deref(), &self.env);
        if step != Step::Pause {
            self.run(step, Site::Async);
        }
    }
}

/// Panics when the request asks for it (test builds only).
#[cfg(feature = "panic-test")]
#[allow(clippy::panic)]
fn test_panic() {
    if let Ok(Some(_)) =
        hostcalls::header_value(MapType::RequestHeaders, "x-mcp-ratelimit-test-panic")
    {
        panic!("mcp-ratelimit test panic");
    }
}

/// A stream of a plugin without a valid configuration.
struct Unconfigured {
    id: u32,
}

impl StreamContext for Unconfigured {
    fn on_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let body = br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Rate limiting is not configured"}}"#;
        send(self.id, 503, &[JSON], body);
        Action::Pause
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(token) = self.flow.awaiting() {
            if let Err(e) = hostcalls::grpc_cancel(token) {
                log::debug!("[{}] cannot cancel the rate-limit call: {e}", self.id);
            }
        }
    }
}
