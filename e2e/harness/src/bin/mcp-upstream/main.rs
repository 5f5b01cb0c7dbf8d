//! `mcp-upstream`: a stand-in MCP server (Streamable HTTP, JSON response mode)
//! for local runs of the mcp-ratelimit filter and for end-to-end tests.
//!
//! ```text
//! mcp-upstream --listen 127.0.0.1:0
//! ```
//!
//! * `POST <any path>`: JSON-RPC (single message or batch), see [`mcp`].
//! * `GET <any path>`: 405 (no SSE stream); `DELETE <any path>`: 200.
//! * `GET /__upstream/stats`: what was received, as JSON.
//! * `POST /__upstream/reset`: clears the stats.
//!
//! Only requests whose body was received completely are counted; those whose
//! body ended early are counted apart, as `incomplete`.

mod mcp;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: mcp-upstream [--listen ADDR]   (default 127.0.0.1:0)";

/// Everything the server has received since start or the last reset.
#[derive(Default)]
struct Stats {
    /// MCP POSTs whose body was received completely.
    requests: u64,
    /// MCP POSTs whose body ended early (connection reset or closed first).
    incomplete: u64,
    /// MCP POSTs whose head has arrived and whose body is still being read.
    receiving: u64,
    /// `tools/call` per resolved tool name (inner tool for `call_tool`).
    calls: BTreeMap<String, u64>,
    /// JSON-RPC method per name (requests and notifications).
    methods: BTreeMap<String, u64>,
    /// Headers of the last counted POST, lowercased names, duplicates joined by ", ".
    last_headers: Map<String, Value>,
    /// Body of the last counted POST (lossy UTF-8).
    last_body: String,
}

impl Stats {
    fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "incomplete": self.incomplete,
            "receiving": self.receiving,
            "calls": self.calls,
            "methods": self.methods,
            "last_headers": self.last_headers,
            "last_body": self.last_body,
        })
    }
}

type Shared = Arc<Mutex<Stats>>;

fn main() -> ExitCode {
    let listen = match parse_args(std::env::args().skip(1)) {
        Ok(Some(listen)) => listen,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mcp-upstream: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-upstream: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcp-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(None)` means `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<String>, String> {
    let mut listen = "127.0.0.1:0".to_string();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "-h" | "--help" => return Ok(None),
            other => match other.strip_prefix("--listen=") {
                Some(addr) => listen = addr.to_string(),
                None => return Err(format!("unknown argument `{other}`")),
            },
        }
    }
    Ok(Some(listen))
}

async fn run(listen: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    let local = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "mcp-upstream listening on {local}")?;
        out.flush()?;
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stats: Shared = Arc::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let stats = stats.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(req, stats.clone()));
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        if let Err(e) = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            eprintln!("mcp-upstream: connection error: {e}");
                        }
                    });
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    eprintln!("mcp-upstream: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    eprintln!("mcp-upstream: shutting down");
    Ok(())
}

fn lock(stats: &Shared) -> std::sync::MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn handle(
    req: Request<Incoming>,
    stats: Shared,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if let Some(admin) = path.strip_prefix("/__upstream/") {
        return Ok(match (req.method(), admin) {
            (&Method::GET, "stats") => {
                json_response(StatusCode::OK, lock(&stats).to_json().to_string())
            }
            (&Method::POST, "reset") => {
                *lock(&stats) = Stats::default();
                json_response(StatusCode::OK, r#"{"reset":true}"#.to_string())
            }
            _ => text_response(StatusCode::NOT_FOUND, "unknown /__upstream endpoint\n"),
        });
    }
    match *req.method() {
        Method::POST => Ok(handle_post(req, &stats).await),
        Method::DELETE => Ok(text_response(StatusCode::OK, "")),
        _ => {
            let mut resp = text_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "mcp-upstream offers no SSE stream\n",
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST, DELETE"));
            Ok(resp)
        }
    }
}

/// A POST whose body is being read: counted in `receiving` while it lives, and
/// as `incomplete` when it ends (or hyper drops it) before the body is whole.
struct Receiving<'a> {
    stats: &'a Shared,
    complete: bool,
}

impl<'a> Receiving<'a> {
    fn start(stats: &'a Shared) -> Self {
        lock(stats).receiving += 1;
        Receiving {
            stats,
            complete: false,
        }
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        let mut s = lock(self.stats);
        s.receiving = s.receiving.saturating_sub(1);
        if !self.complete {
            s.incomplete += 1;
        }
    }
}

async fn handle_post(req: Request<Incoming>, stats: &Shared) -> Response<Full<Bytes>> {
    let headers = header_map(req.headers());
    let mut receiving = Receiving::start(stats);
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        // Incomplete or reset body: not a request, and the client is most likely gone.
        Err(e) => {
            return text_response(StatusCode::BAD_REQUEST, &format!("incomplete body: {e}\n"))
        }
    };
    receiving.complete = true;
    drop(receiving);
    let (outcome, observed) = mcp::handle_body(&body);
    {
        let mut s = lock(stats);
        s.requests += 1;
        for m in observed.methods {
            *s.methods.entry(m).or_default() += 1;
        }
        for c in observed.calls {
            *s.calls.entry(c).or_default() += 1;
        }
        s.last_headers = headers;
        s.last_body = String::from_utf8_lossy(&body).into_owned();
    }
    match outcome {
        mcp::Outcome::Json { body, session } => {
            let mut resp = json_response(StatusCode::OK, body);
            if session {
                if let Ok(v) = HeaderValue::from_str(&session_id()) {
                    resp.headers_mut().insert("mcp-session-id", v);
                }
            }
            resp
        }
        mcp::Outcome::Accepted => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::ACCEPTED;
            resp
        }
        mcp::Outcome::BadRequest(body) => json_response(StatusCode::BAD_REQUEST, body),
    }
}

fn header_map(headers: &HeaderMap) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                map.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    map
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn text_response(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// 128 random bits as lowercase hex.
fn session_id() -> String {
    let mut bytes = [0u8; 16];
    let from_urandom = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !from_urandom {
        use std::hash::{BuildHasher, Hasher};
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for half in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(nanos);
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
