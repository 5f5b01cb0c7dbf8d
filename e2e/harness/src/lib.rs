//! Test support for the end-to-end tests of mcp-ratelimit.
//!
//! The tests run the real programs: Envoy (`.venv/bin/envoy`), the `dev-rls`
//! rate-limit service, the `mcp-upstream` stand-in MCP server, an MCP server
//! and clients built on the official MCP SDKs, and the filter's wasm module.
//! This crate finds them ([`Paths`]), runs them as guarded child processes
//! ([`Proc`], [`Envoy`], [`DevRls`], [`McpUpstream`], [`McpServer`],
//! [`SdkClient`]), renders the shipped Envoy configs for a test ([`stack`])
//! and talks to them with a hand-written HTTP/1.1 client ([`http`]) so tests
//! control every byte on the wire.
//!
//! Everything here is synchronous (std threads and sockets only).

// This is test-support code: a library for tests, where a panic is a test
// failure with a message. The few helpers that panic (`stats`, `stat`,
// `Response::json`, `free_port`) say so in their docs; everything else
// returns `Result`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod envoy;
pub mod fixtures;
pub mod http;
pub mod paths;
pub mod proc;
pub mod ratelimit;
pub mod sdk;
pub mod services;
pub mod stack;

pub use envoy::{Envoy, EnvoyOptions, EnvoyPorts};
pub use http::{post_json, Conn, Request, Response};
pub use paths::Paths;
pub use proc::{test_dir, Proc};
pub use ratelimit::{RateLimitOptions, RateLimitService, Redis};
pub use sdk::{Scenario, SdkClient};
pub use services::{DevRls, McpServer, McpServerOptions, McpUpstream, RlsClock, CLOCK_AT};

use std::fmt;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Error of every fallible harness call: a human-readable message (which
/// often embeds the logs of the process involved).
///
/// `Debug` prints the message as is, so `result.unwrap()` in a test shows
/// multi-line logs readably.
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(format!("I/O error: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error(format!("JSON error: {e}"))
    }
}

/// Result of the harness calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a description to an error.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

/// A port that was free a moment ago on 127.0.0.1 (bind port 0, read, drop).
///
/// Racy by nature: prefer letting a process bind port 0 and reading the
/// address it reports. Panics if no port can be bound.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0 to find a free port")
}

/// Replaces every occurrence of each `from` by its `to`, in order.
///
/// Fails when a `from` does not occur in the text at the time it is
/// applied, so a template edit that breaks a substitution fails loudly.
pub fn render(template: &str, replacements: &[(&str, String)]) -> Result<String> {
    let mut out = template.to_string();
    for (from, to) in replacements {
        if from.is_empty() {
            return Err(Error::new("render: empty placeholder"));
        }
        if !out.contains(from) {
            return Err(Error::new(format!(
                "render: placeholder `{from}` not found in the template"
            )));
        }
        out = out.replace(from, to);
    }
    Ok(out)
}

/// Calls `probe` every 20 ms until it returns `Some`, for at most `timeout`.
///
/// The error names `what` was awaited.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(Error::new(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_replaces_all_and_fails_on_missing() {
        let out = render(
            "a {{X}} b {{X}} {{Y}}",
            &[("{{X}}", "1".into()), ("{{Y}}", "2".into())],
        )
        .unwrap();
        assert_eq!(out, "a 1 b 1 2");
        let err = render("abc", &[("{{Z}}", "1".into())]).unwrap_err();
        assert!(err.message().contains("{{Z}}"));
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port(), 0);
    }
}
