//! The only module that talks to the proxy: proxy-wasm contexts that feed
//! host events to [`Flow`] and carry out the [`Step`]s it returns. Host
//! calls go through `hostcalls` directly so that a failure becomes a logged
//! error instead of a panic.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::config::Config;
use crate::flow::{Counter, Flow, Host, Step};
use crate::reply::LocalReply;
use crate::rls;

proxy_wasm::main! {{
    // Installs the logger and the panic hook before anything else runs.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Metric ids, in [`Counter::ALL`] order.
#[derive(Default)]
struct Metrics([Option<u32>; Counter::ALL.len()]);

impl Metrics {
    fn define() -> Metrics {
        let mut ids = [None; Counter::ALL.len()];
        for (slot, c) in ids.iter_mut().zip(Counter::ALL) {
            *slot = hostcalls::define_metric(MetricType::Counter, c.name()).ok();
        }
        Metrics(ids)
    }

    fn increment(&self, c: Counter) {
        let index = Counter::ALL.iter().position(|x| *x == c);
        if let Some(Some(id)) = index.and_then(|i| self.0.get(i)) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }
}

#[derive(Default)]
struct Root {
    config: Option<Rc<Config>>,
    metrics: Rc<Metrics>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
            _ => Vec::new(),
        };
        match Config::parse(&bytes) {
            Ok(cfg) => {
                log::info!(
                    "mcp-ratelimit configured: domain={} rls_cluster={} descriptors={} timeout_ms={} failure_mode_deny={}",
                    cfg.domain,
                    cfg.rls_cluster,
                    cfg.descriptors.len(),
                    cfg.timeout_ms,
                    cfg.failure_mode_deny
                );
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

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK panics on None. Envoy does not create streams for a plugin
        // whose configuration was refused; should one come anyway, refuse
        // its requests rather than let them through unchecked.
        let Some(cfg) = self.config.clone() else {
            return Some(Box::new(Unconfigured));
        };
        Some(Box::new(Stream {
            id: context_id,
            flow: Flow::new(cfg.clone()),
            cfg,
            env: Env {
                metrics: self.metrics.clone(),
            },
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    id: u32,
    flow: Flow,
    cfg: Rc<Config>,
    env: Env,
}

/// The host as the flow sees it.
struct Env {
    metrics: Rc<Metrics>,
}

impl Host for Env {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn metadata(&self, namespace: &str, path: &[String]) -> Option<Vec<u8>> {
        let mut full: Vec<&str> = Vec::with_capacity(3 + path.len());
        full.extend(["metadata", "filter_metadata", namespace]);
        full.extend(path.iter().map(String::as_str));
        hostcalls::get_property(full).ok().flatten()
    }

    fn count(&self, counter: Counter) {
        self.metrics.increment(counter);
    }

    fn any_repeated(&self, names: &[String]) -> bool {
        let Ok(pairs) = hostcalls::get_map_bytes(MapType::HttpRequestHeaders) else {
            return false;
        };
        names.iter().any(|n| {
            pairs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                .count()
                > 1
        })
    }
}

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
                    for (k, v) in &headers {
                        let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, k, v);
                    }
                    if site == Site::Async {
                        if let Err(e) = hostcalls::resume_http_request() {
                            log::warn!("[{}] resume failed: {e:?}", self.id);
                        }
                    }
                    return Action::Continue;
                }
                Step::Pause => return Action::Pause,
                Step::ReadBody(size) => {
                    let body = if size == 0 {
                        Vec::new()
                    } else {
                        match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size) {
                            Ok(Some(b)) => b,
                            _ => Vec::new(),
                        }
                    };
                    self.flow.on_body(&body, &self.env)
                }
                Step::Dispatch(payload) => {
                    let timeout = Duration::from_millis(self.cfg.timeout_ms);
                    match hostcalls::dispatch_grpc_call(
                        &self.cfg.rls_cluster,
                        rls::SERVICE,
                        rls::METHOD,
                        Vec::new(),
                        Some(&payload),
                        timeout,
                    ) {
                        Ok(token) => {
                            log::debug!("[{}] rate-limit call dispatched (token {token})", self.id);
                            self.flow.on_dispatched(token, &self.env);
                            Step::Pause
                        }
                        Err(e) => {
                            log::warn!(
                                "[{}] cannot call the rate-limit service on cluster {:?}: {e:?}",
                                self.id,
                                self.cfg.rls_cluster
                            );
                            self.flow.on_dispatch_failed(&self.env)
                        }
                    }
                }
                Step::Reply(reply) => {
                    self.send(&reply);
                    return Action::Pause;
                }
            };
        }
    }

    fn send(&self, reply: &LocalReply) {
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
        if let Err(e) =
            hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
        {
            log::error!("[{}] cannot send local reply: {e:?}", self.id);
        }
    }
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let body = if status_code == 0 {
            hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size)
                .ok()
                .flatten()
        } else {
            log::debug!(
                "[{}] rate-limit call failed with gRPC status {status_code}",
                self.id
            );
            None
        };
        let step = self
            .flow
            .on_rls_response(token_id, status_code, body.as_deref(), &self.env);
        if step != Step::Pause {
            self.run(step, Site::Async);
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
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

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let step = self
            .flow
            .on_request_body(body_size, end_of_stream, &self.env);
        self.run(step, Site::Callback)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let step = self.flow.on_request_trailers();
        self.run(step, Site::Callback)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (k, v) in self.flow.response_headers() {
            let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, &k, &v);
        }
        Action::Continue
    }
}

/// Panics when the request asks for it (test builds only).
#[cfg(feature = "panic-test")]
#[allow(clippy::panic)]
fn test_panic() {
    if let Ok(Some(_)) =
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-mcp-ratelimit-test-panic")
    {
        panic!("mcp-ratelimit test panic");
    }
}

/// A stream of a plugin without a valid configuration.
struct Unconfigured;

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let body = br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Rate limiting is not configured"}}"#;
        let _ = hostcalls::send_http_response(
            503,
            vec![("content-type", "application/json")],
            Some(body),
        );
        Action::Pause
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(token) = self.flow.awaiting() {
            let _ = hostcalls::cancel_grpc_call(token);
        }
    }
}
