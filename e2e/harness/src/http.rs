//! A small, hand-written HTTP/1.1 client over `std::net::TcpStream`, so tests
//! control every byte: header order and duplicates, chunk boundaries, timing
//! between chunks, trailers, and incomplete or reset requests.
//!
//! Every read has a deadline ([`DEFAULT_TIMEOUT`] unless set): a silent peer
//! gives an error, never a hang.
//!
//! ```no_run
//! use e2e::http::Request;
//! # fn main() -> e2e::Result<()> {
//! let resp = Request::post("/mcp")
//!     .header("content-type", "application/json")
//!     .chunks(["{\"jsonrpc\":\"2.0\",", "\"id\":1,\"method\":\"ping\"}"])
//!     .chunk_delay(std::time::Duration::from_millis(50))
//!     .send("127.0.0.1:10000")?;
//! assert_eq!(resp.status, 200);
//! # Ok(()) }
//! ```

use crate::{Context, Error, Result};
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Read deadline of a request unless [`Request::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/1.1 request to send.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, sent as is.
    pub method: String,
    /// Request target, sent as is (e.g. `/mcp?x=1`).
    pub path: String,
    /// Headers in order, duplicates allowed, names sent as given.
    pub headers: Vec<(String, String)>,
    /// Body when not chunked.
    pub body: Vec<u8>,
    /// `Some`: the body is sent with `transfer-encoding: chunked`, one chunk
    /// per element, each written and flushed separately.
    pub chunks: Option<Vec<Vec<u8>>>,
    /// Pause before each chunk after the first (and before the last-chunk marker).
    pub chunk_delay: Duration,
    /// Trailers after the last chunk (implies chunked).
    pub trailers: Vec<(String, String)>,
    /// Deadline for the whole response, counted from when the request was written.
    pub timeout: Duration,
    /// Add `host`, `content-length` / `transfer-encoding` when absent (default true).
    pub default_headers: bool,
}

impl Request {
    /// A request with this method and path, no headers, empty body.
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            chunks: None,
            chunk_delay: Duration::ZERO,
            trailers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            default_headers: true,
        }
    }

    /// `GET path`.
    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    /// `POST path`.
    pub fn post(path: &str) -> Request {
        Request::new("POST", path)
    }

    /// Appends a header (duplicates allowed, order kept).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Appends several headers.
    pub fn headers(mut self, headers: &[(&str, &str)]) -> Request {
        for (n, v) in headers {
            self.headers.push(((*n).to_string(), (*v).to_string()));
        }
        self
    }

    /// Sets the body (sent with `content-length` unless chunked).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets a JSON body and `content-type: application/json`.
    pub fn json(self, body: &str) -> Request {
        self.header("content-type", "application/json").body(body)
    }

    /// Sends the body as these chunks (`transfer-encoding: chunked`). Empty
    /// chunks are skipped (an empty chunk would end the body).
    pub fn chunks<I, C>(mut self, chunks: I) -> Request
    where
        I: IntoIterator<Item = C>,
        C: Into<Vec<u8>>,
    {
        self.chunks = Some(chunks.into_iter().map(Into::into).collect());
        self
    }

    /// Pause between chunks.
    pub fn chunk_delay(mut self, delay: Duration) -> Request {
        self.chunk_delay = delay;
        self
    }

    /// Appends a trailer (the body is then sent chunked).
    pub fn trailer(mut self, name: &str, value: &str) -> Request {
        self.trailers.push((name.to_string(), value.to_string()));
        self
    }

    /// Response deadline.
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }

    /// Sends only the headers given: no automatic `host`, `content-length`
    /// or `transfer-encoding`.
    pub fn no_default_headers(mut self) -> Request {
        self.default_headers = false;
        self
    }

    /// Opens a connection to `addr`, sends the request, reads the response.
    pub fn send(&self, addr: impl ToSocketAddrs) -> Result<Response> {
        Conn::open(addr)?.send(self)
    }

    fn is_chunked(&self) -> bool {
        self.chunks.is_some() || !self.trailers.is_empty()
    }

    /// The chunks to send when chunked.
    fn chunk_list(&self) -> Vec<&[u8]> {
        match &self.chunks {
            Some(chunks) => chunks.iter().map(Vec::as_slice).collect(),
            None => vec![self.body.as_slice()],
        }
        .into_iter()
        .filter(|c| !c.is_empty())
        .collect()
    }

    /// Request line and headers, with the blank line.
    pub fn head_bytes(&self, host: &str) -> Vec<u8> {
        let has = |name: &str| {
            self.headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if self.default_headers && !has("host") {
            head.push_str(&format!("host: {host}\r\n"));
        }
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if self.default_headers {
            if self.is_chunked() {
                if !has("transfer-encoding") {
                    head.push_str("transfer-encoding: chunked\r\n");
                }
            } else if !has("content-length")
                && !has("transfer-encoding")
                && (!self.body.is_empty()
                    || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH"))
            {
                head.push_str(&format!("content-length: {}\r\n", self.body.len()));
            }
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// A response read by [`Conn`].
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body, de-chunked.
    pub body: Vec<u8>,
    /// Trailers of a chunked response, names lowercased.
    pub trailers: Vec<(String, String)>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// All values of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// First value of trailer `name`.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        find(&self.trailers, name)
    }

    /// Body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body parsed as JSON.
    pub fn try_json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::new(format!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            ))
        })
    }

    /// Body parsed as JSON; panics with the status and body if it is not.
    pub fn json(&self) -> serde_json::Value {
        match self.try_json() {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// The `id` of each answer of a JSON-RPC batch answer, in order; panics
    /// with the status and body if the body is not a JSON array.
    pub fn batch_ids(&self) -> Vec<serde_json::Value> {
        match self.json() {
            serde_json::Value::Array(answers) => answers
                .iter()
                .map(|a| a.get("id").cloned().unwrap_or_default())
                .collect(),
            other => panic!("not a batch answer (status {}): {other}", self.status),
        }
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.text())
            .field("trailers", &self.trailers)
            .finish()
    }
}

fn find<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// POSTs a JSON body with `content-type: application/json` and
/// `accept: application/json, text/event-stream` (as MCP clients do; either
/// is left out when `extra_headers` has one of that name), then `extra_headers`.
pub fn post_json(
    addr: impl ToSocketAddrs,
    path: &str,
    body: &str,
    extra_headers: &[(&str, &str)],
) -> Result<Response> {
    let has = |name: &str| {
        extra_headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let mut req = Request::post(path);
    if !has("content-type") {
        req = req.header("content-type", "application/json");
    }
    if !has("accept") {
        req = req.header("accept", "application/json, text/event-stream");
    }
    req.headers(extra_headers).body(body).send(addr)
}

/// Writes `bytes` as is on a new connection and reads one response.
pub fn send_raw(addr: impl ToSocketAddrs, bytes: &[u8], timeout: Duration) -> Result<Response> {
    let mut conn = Conn::open(addr)?;
    let written = conn.write_raw(bytes);
    let resp = conn.read_response(timeout, false);
    match (written, resp) {
        (_, Ok(resp)) => Ok(resp),
        (Err(w), Err(r)) => Err(Error::new(format!("{w}; then {r}"))),
        (Ok(()), Err(r)) => Err(r),
    }
}

/// One client connection (keep-alive: several requests may be sent in turn).
pub struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Bytes read but not consumed yet.
    buf: Vec<u8>,
}

impl Conn {
    /// Connects (within [`DEFAULT_TIMEOUT`]), with `TCP_NODELAY` so each
    /// write leaves as its own segment.
    pub fn open(addr: impl ToSocketAddrs) -> Result<Conn> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .context(|| "cannot resolve address".to_string())?
            .collect();
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, DEFAULT_TIMEOUT) {
                Ok(stream) => {
                    stream
                        .set_nodelay(true)
                        .context(|| "cannot set TCP_NODELAY".to_string())?;
                    stream
                        .set_write_timeout(Some(DEFAULT_TIMEOUT))
                        .context(|| "cannot set write timeout".to_string())?;
                    return Ok(Conn {
                        stream,
                        peer: *a,
                        buf: Vec::new(),
                    });
                }
                Err(e) => last = Some(format!("cannot connect to {a}: {e}")),
            }
        }
        Err(Error::new(last.unwrap_or_else(|| {
            "address resolved to nothing".to_string()
        })))
    }

    /// The address connected to.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sends `req` and reads its response. If writing fails (the server
    /// answered early and closed), the response is still read if there is one.
    pub fn send(&mut self, req: &Request) -> Result<Response> {
        let written = self.write_request(req, None);
        let resp = self.read_response(req.timeout, req.method.eq_ignore_ascii_case("HEAD"));
        match (written, resp) {
            (_, Ok(resp)) => Ok(resp),
            (Err(w), Err(r)) => Err(Error::new(format!("{w}; then {r}"))),
            (Ok(()), Err(r)) => Err(r),
        }
    }

    /// Writes the head of `req` and only part of its body, then returns
    /// without ending the body: for a content-length body the first `limit`
    /// bytes, for a chunked one the first `limit` chunks (no last-chunk
    /// marker). Follow with [`Conn::abort`], [`Conn::close`] or
    /// [`Conn::read_response`].
    pub fn send_partial(&mut self, req: &Request, limit: usize) -> Result<()> {
        self.write_request(req, Some(limit))
    }

    /// Writes bytes as is (flushed).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .context(|| format!("write to {} failed", self.peer))
    }

    fn write_request(&mut self, req: &Request, limit: Option<usize>) -> Result<()> {
        self.write_raw(&req.head_bytes(&self.peer.to_string()))?;
        if req.is_chunked() {
            let chunks = req.chunk_list();
            let count = limit.map_or(chunks.len(), |l| l.min(chunks.len()));
            for (i, chunk) in chunks.iter().take(count).enumerate() {
                if i > 0 && !req.chunk_delay.is_zero() {
                    std::thread::sleep(req.chunk_delay);
                }
                let mut wire = format!("{:x}\r\n", chunk.len()).into_bytes();
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
                self.write_raw(&wire)?;
            }
            if limit.is_none() {
                if !chunks.is_empty() && !req.chunk_delay.is_zero() {
                    std::thread::sleep(req.chunk_delay);
                }
                let mut end = b"0\r\n".to_vec();
                for (n, v) in &req.trailers {
                    end.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
                }
                end.extend_from_slice(b"\r\n");
                self.write_raw(&end)?;
            }
        } else {
            let n = limit.map_or(req.body.len(), |l| l.min(req.body.len()));
            if let Some(part) = req.body.get(..n) {
                if !part.is_empty() {
                    self.write_raw(part)?;
                }
            }
        }
        Ok(())
    }

    /// Reads one response (skipping 1xx interim responses) within `timeout`.
    /// `head` says the request was HEAD (no body follows).
    pub fn read_response(&mut self, timeout: Duration, head: bool) -> Result<Response> {
        let deadline = Instant::now() + timeout;
        loop {
            let status_line = self.read_line(deadline, "status line")?;
            let status_text = String::from_utf8_lossy(&status_line).into_owned();
            let mut parts = status_text.splitn(3, ' ');
            let version = parts.next().unwrap_or_default();
            let code = parts.next().unwrap_or_default();
            let reason = parts.next().unwrap_or_default().to_string();
            if !version.starts_with("HTTP/1.") {
                return Err(Error::new(format!("bad status line {status_text:?}")));
            }
            let status: u16 = code
                .parse()
                .map_err(|_| Error::new(format!("bad status line {status_text:?}")))?;
            let headers = self.read_fields(deadline, "headers")?;
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let mut resp = Response {
                status,
                reason,
                headers,
                body: Vec::new(),
                trailers: Vec::new(),
            };
            if head || status == 204 || status == 304 || (100..200).contains(&status) {
                return Ok(resp);
            }
            let chunked = resp
                .header("transfer-encoding")
                .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
            if chunked {
                loop {
                    let line = self.read_line(deadline, "chunk size")?;
                    let text = String::from_utf8_lossy(&line).into_owned();
                    let size_text = text.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(size_text, 16)
                        .map_err(|_| Error::new(format!("bad chunk size line {text:?}")))?;
                    if size == 0 {
                        resp.trailers = self.read_fields(deadline, "trailers")?;
                        break;
                    }
                    let data = self.read_exact(size, deadline, "chunk data")?;
                    resp.body.extend_from_slice(&data);
                    let crlf = self.read_line(deadline, "chunk end")?;
                    if !crlf.is_empty() {
                        return Err(Error::new("chunk not followed by CRLF"));
                    }
                }
            } else if let Some(len) = resp.header("content-length") {
                let len: usize = len
                    .trim()
                    .parse()
                    .map_err(|_| Error::new(format!("bad content-length {len:?}")))?;
                resp.body = self.read_exact(len, deadline, "body")?;
            } else {
                resp.body = self.read_to_eof(deadline)?;
            }
            return Ok(resp);
        }
    }

    /// Closes the connection gracefully (FIN).
    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Resets the connection (RST: `SO_LINGER` 0, then close).
    pub fn abort(self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a socket fd we own, with a pointer to a live
        // `linger` of the size we pass.
        unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                std::ptr::from_ref(&linger).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).unwrap_or(8),
            );
        }
        drop(self.stream);
    }

    /// Whether the peer has closed the connection (reads EOF within `wait`).
    /// Bytes received meanwhile are kept for the next response.
    pub fn peer_closed(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        matches!(self.fill(deadline), Ok(0))
    }

    /// Reads more bytes into `buf`; `Ok(0)` at EOF.
    fn fill(&mut self, deadline: Instant) -> Result<usize> {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::new("timed out"));
        }
        self.stream
            .set_read_timeout(Some(deadline - now))
            .context(|| "cannot set read timeout".to_string())?;
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(tmp.get(..n).unwrap_or_default());
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(Error::new("timed out"))
                }
                Err(e) => return Err(Error::new(format!("read failed: {e}"))),
            }
        }
    }

    fn more(&mut self, deadline: Instant, what: &str) -> Result<()> {
        match self.fill(deadline) {
            Ok(0) => Err(Error::new(format!(
                "connection to {} closed while reading {what} (unconsumed: {:?})",
                self.peer,
                String::from_utf8_lossy(&self.buf)
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(Error::new(format!(
                "{e} while reading {what} from {} (unconsumed: {:?})",
                self.peer,
                String::from_utf8_lossy(&self.buf)
            ))),
        }
    }

    /// A line without its CRLF (a bare LF is accepted too).
    fn read_line(&mut self, deadline: Instant, what: &str) -> Result<Vec<u8>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            self.more(deadline, what)?;
        }
    }

    /// Header or trailer fields up to the blank line, names lowercased.
    fn read_fields(&mut self, deadline: Instant, what: &str) -> Result<Vec<(String, String)>> {
        let mut fields = Vec::new();
        loop {
            let line = self.read_line(deadline, what)?;
            if line.is_empty() {
                return Ok(fields);
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| Error::new(format!("bad header line {text:?}")))?;
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }

    fn read_exact(&mut self, n: usize, deadline: Instant, what: &str) -> Result<Vec<u8>> {
        while self.buf.len() < n {
            self.more(deadline, what)?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn read_to_eof(&mut self, deadline: Instant) -> Result<Vec<u8>> {
        loop {
            match self.fill(deadline) {
                Ok(0) => return Ok(std::mem::take(&mut self.buf)),
                Ok(_) => {}
                Err(e) => {
                    return Err(Error::new(format!(
                        "{e} while reading a close-delimited body from {}",
                        self.peer
                    )))
                }
            }
        }
    }
}
