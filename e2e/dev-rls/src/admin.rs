//! A tiny HTTP/1.1 admin listener for end-to-end tests.
//!
//! * `GET /stats` — `{"calls": N, "over_limit": N, "last_request": {...} | null}`
//! * `GET /requests` — the recorded requests, oldest first (at most 1000)
//! * `POST /reset` — clears counters, recorded requests and call counts
//! * `GET /healthz` — `ok`
//!
//! Each connection serves one request and is closed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::DevRls;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves admin connections on `listener` until `shutdown` turns true.
pub(crate) async fn run(listener: TcpListener, rls: DevRls, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            changed = shutdown.wait_for(|stop| *stop) => {
                let _ = changed;
                return;
            }
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let rls = rls.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(IO_TIMEOUT, handle(stream, &rls)).await;
                    });
                }
            }
        }
    }
}

struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn json(body: String) -> Self {
        Reply {
            status: "200 OK",
            content_type: "application/json",
            body,
        }
    }

    fn text(status: &'static str, body: &str) -> Self {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }
}

async fn handle(mut stream: TcpStream, rls: &DevRls) -> std::io::Result<()> {
    let reply = match read_request(&mut stream).await? {
        Some((method, path)) => route(&method, &path, rls),
        None => Reply::text("400 Bad Request", "bad request"),
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(reply.body.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads the request head (and discards any body); returns the method and path.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<(String, String)>> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    let head = String::from_utf8_lossy(buf.get(..head_end).unwrap_or_default()).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(target)) = (request_line.next(), request_line.next()) else {
        return Ok(None);
    };
    let content_length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    let mut have = buf.len().saturating_sub(head_end + 4);
    while have < content_length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        have += n;
    }
    let path = target.split('?').next().unwrap_or(target).to_owned();
    Ok(Some((method.to_owned(), path)))
}

fn route(method: &str, path: &str, rls: &DevRls) -> Reply {
    let to_json = |value: Result<String, serde_json::Error>| match value {
        Ok(body) => Reply::json(body),
        Err(e) => Reply::text("500 Internal Server Error", &e.to_string()),
    };
    match (method, path) {
        ("GET", "/stats") => to_json(serde_json::to_string(&rls.stats())),
        ("GET", "/requests") => to_json(serde_json::to_string(&rls.requests())),
        ("POST", "/reset") => {
            rls.reset();
            Reply::json("{\"reset\":true}".to_owned())
        }
        ("GET", "/healthz") => Reply::text("200 OK", "ok"),
        (_, "/stats" | "/requests" | "/reset" | "/healthz") => {
            Reply::text("405 Method Not Allowed", "method not allowed")
        }
        _ => Reply::text("404 Not Found", "not found"),
    }
}
