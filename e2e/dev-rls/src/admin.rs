//! A tiny HTTP/1.1 admin listener for end-to-end tests.
//!
//! * `GET /stats` — `{"calls": N, "over_limit": N, "last_request": {...} | null}`
//! * `GET /requests` — the recorded requests, oldest first (at most 1000)
//! * `POST /reset` — clears counters, recorded requests and call counts
//! * `GET /healthz` — `ok`
//! * `POST /fault?mode=<mode>` — sets the fault mode (see [`crate::fault`]; `mode=none`
//!   clears it); `GET /fault` — `{"mode": "<mode>", "faulted": N}`
//! * `GET /clock` — `{"now": "<unix seconds>", "manual": bool}`; `POST /clock?advance_ms=N`
//!   moves a manual clock (`--clock-at`) forward by N ms and answers as `GET` does (409
//!   when the clock follows real time)
//!
//! Each connection serves one request and is closed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::clock::format_unix_time;
use crate::{DevRls, Fault};

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
        Some((method, target)) => route(&method, &target, rls),
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

/// Reads the request head (and discards any body); returns the method and target.
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
    Ok(Some((method.to_owned(), target.to_owned())))
}

/// The value of `name` in the query of `target`, percent-decoded (`None` if absent or
/// not UTF-8 once decoded).
fn query_param(target: &str, name: &str) -> Option<String> {
    let (_, query) = target.split_once('?')?;
    let raw = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)?;
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            b'+' => out.push(b' '),
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok()
}

fn fault_json(rls: &DevRls) -> String {
    let mode = serde_json::to_string(&rls.fault().to_string()).unwrap_or_default();
    format!("{{\"mode\":{mode},\"faulted\":{}}}", rls.faulted())
}

fn clock_json(rls: &DevRls) -> String {
    format!(
        "{{\"now\":\"{}\",\"manual\":{}}}",
        format_unix_time(rls.now()),
        rls.clock_is_manual()
    )
}

fn advance_clock(target: &str, rls: &DevRls) -> Reply {
    let Some(ms) = query_param(target, "advance_ms").and_then(|v| v.parse::<u64>().ok()) else {
        return Reply::text(
            "400 Bad Request",
            "POST /clock needs ?advance_ms=<milliseconds>",
        );
    };
    match rls.advance_clock(Duration::from_millis(ms)) {
        Some(_) => Reply::json(clock_json(rls)),
        None => Reply::text(
            "409 Conflict",
            "the clock follows real time: start dev-rls with --clock-at to move it",
        ),
    }
}

fn route(method: &str, target: &str, rls: &DevRls) -> Reply {
    let path = target.split('?').next().unwrap_or(target);
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
        ("GET", "/fault") => Reply::json(fault_json(rls)),
        ("POST", "/fault") => match query_param(target, "mode").map(|m| m.parse::<Fault>()) {
            Some(Ok(fault)) => {
                rls.set_fault(fault);
                Reply::json(fault_json(rls))
            }
            Some(Err(e)) => Reply::text("400 Bad Request", &e.to_string()),
            None => Reply::text("400 Bad Request", "POST /fault needs ?mode=<mode>"),
        },
        ("GET", "/clock") => Reply::json(clock_json(rls)),
        ("POST", "/clock") => advance_clock(target, rls),
        (_, "/stats" | "/requests" | "/reset" | "/healthz" | "/fault" | "/clock") => {
            Reply::text("405 Method Not Allowed", "method not allowed")
        }
        _ => Reply::text("404 Not Found", "not found"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::query_param;

    #[test]
    fn query_param_is_found_and_percent_decoded() {
        assert_eq!(
            query_param("/fault?mode=slow%3A300", "mode").as_deref(),
            Some("slow:300")
        );
        assert_eq!(
            query_param("/fault?x=1&mode=garbage:2", "mode").as_deref(),
            Some("garbage:2")
        );
        assert_eq!(query_param("/fault?mode=", "mode").as_deref(), Some(""));
        assert_eq!(query_param("/fault", "mode"), None);
        assert_eq!(query_param("/fault?modes=none", "mode"), None);
        assert_eq!(query_param("/fault?mode=%zz", "mode"), None);
    }
}
