//! mcp-ratelimit: a proxy-wasm HTTP filter that rate-limits MCP requests
//! (per tool, prompt, resource, method, header or metadata) through Envoy's
//! global rate-limit service.
//!
//! Everything but `host` is pure and tested natively; `host` is the one
//! module that calls the proxy.

#![forbid(unsafe_code)]
// Tests fail loudly; the filter itself may not (workspace lints).
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod config;
pub mod envoy_version;
pub mod flow;
pub mod jsonrpc;
pub mod local;
pub mod mcp_headers;
pub mod message;
pub mod reply;
pub mod rls;

#[cfg(target_arch = "wasm32")]
mod host;
