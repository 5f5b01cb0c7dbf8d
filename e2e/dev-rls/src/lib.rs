//! `dev-rls`: a development implementation of Envoy's global rate-limit service.
//!
//! It answers `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` from limits
//! written in [envoyproxy/ratelimit]'s own YAML format, so the same files can be used with
//! the reference service (plus Redis) in production and with `dev-rls` in local runs and
//! end-to-end tests. Counters live in [limitador]'s in-memory storage.
//!
//! # Behaviour (matching the reference service)
//!
//! * **Loading** ([`RateLimitConfig`]): unknown keys, non-string keys, non-map list items,
//!   empty domains, duplicate domains (unless merging), empty descriptor keys, duplicate
//!   composite keys, invalid units, units on `unlimited` limits, and empty or
//!   self-referencing `replaces` entries are refused with the reference's messages,
//!   prefixed by the file name.
//! * **Matching**: each request descriptor walks the tree entry by entry, preferring an
//!   exact key+value, then a wildcard value (`*` matches any run of characters, anywhere in
//!   the value), then a value-less key. A limit applies only when the node matched by the
//!   descriptor's *last* entry has a `rate_limit`.
//! * **Counting**: one counter per domain + the request's entry keys and values, except
//!   entries matched through a `share_threshold` wildcard, which count under the pattern.
//!   Each descriptor adds its hits (its own `hits_addend` if set, even 0, else the
//!   request's, where 0 means 1); it is over the limit when the new count exceeds
//!   `requests_per_unit`, and the hits are kept even then (no rollback).
//! * **Windows** are fixed and aligned to the unit, as in the reference
//!   (`now - now % unit_seconds`, whole Unix seconds; a month is 30 days, a year 365), and
//!   `duration_until_reset` is the time to the next boundary: whole seconds with the system
//!   clock, as the reference sends, to the nanosecond with a clock set to a fraction of a
//!   second. The aligned window is part of each limitador counter's identity, so
//!   limitador's start-at-first-hit expiry never decides when a window resets.
//! * **Answer**: one status per descriptor, in order. `unlimited` → OK with
//!   `limit_remaining = u32::MAX` and no limit; no match, an unknown domain, or a limit
//!   named in another matched limit's `replaces` → OK with no limit, uncounted;
//!   `shadow_mode` (and `quota_mode`) limits are counted and report `limit_remaining` but
//!   keep code OK. The overall code is OVER_LIMIT if any status is.
//!
//! # Fault injection
//!
//! For tests of clients, [`DevRls::set_fault`] (or the admin `POST /fault?mode=...`) makes
//! the gRPC service answer with garbage, a gRPC error status, a delay or an unknown
//! overall code instead of deciding: see [`fault`].
//!
//! # A test clock
//!
//! With a [`ManualClock`] (`--clock-at <unix seconds>` on the command line) time stands
//! still, so windows cannot roll over in the middle of a test and counts are exact at any
//! time of day. [`DevRls::advance_clock`] (the admin `POST /clock?advance_ms=N`) moves it.
//!
//! # Starting it in-process
//!
//! ```no_run
//! # async fn demo() -> Result<(), dev_rls::Error> {
//! use dev_rls::{serve, DevRls, LoadOptions, RateLimitConfig, ServerOptions};
//!
//! // One call: load files, bind, serve in the background of the current tokio runtime.
//! let server = dev_rls::start(
//!     &["envoy/ratelimit.yaml"],
//!     ServerOptions { listen: ([127, 0, 0, 1], 0).into(), admin: None },
//! )
//! .await?;
//! println!("gRPC on {}", server.grpc_addr());
//! assert_eq!(server.rls().stats().calls, 0);
//! server.shutdown().await?;
//!
//! // Or step by step, e.g. to merge domains, use a ManualClock, or log calls.
//! let config = RateLimitConfig::load_files(
//!     &["a.yaml", "b.yaml"],
//!     LoadOptions { merge_domains: true },
//! )?;
//! let rls = DevRls::builder(config).verbose(true).build()?;
//! let server = serve(
//!     rls,
//!     ServerOptions { listen: ([127, 0, 0, 1], 0).into(), admin: Some(([127, 0, 0, 1], 0).into()) },
//! )
//! .await?;
//! println!("admin on {:?}", server.admin_addr());
//! server.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! [envoyproxy/ratelimit]: https://github.com/envoyproxy/ratelimit
//! [limitador]: https://docs.rs/limitador

mod admin;
mod clock;
pub mod config;
mod counters;
pub mod fault;
mod record;
mod server;
mod service;

use std::fmt;
use std::net::SocketAddr;

pub use clock::{format_unix_time, parse_unix_time, Clock, ManualClock, SystemClock};
pub use config::{
    ConfigError, ConfigSource, LoadOptions, MatchedLimit, RateLimit, RateLimitConfig, Unit,
};
pub use fault::{BadFault, Fault, FaultInjection};
pub use record::{
    RecordedDescriptor, RecordedEntry, RecordedRequest, Stats, MAX_RECORDED_REQUESTS,
};
pub use server::{serve, start, RunningServer, ServerOptions};
pub use service::{DevRls, DevRlsBuilder, GrpcService};

/// Re-export of the generated RLS v3 messages, client and server used by this crate.
pub use envoy_types::pb::envoy::service::ratelimit::v3 as rls_proto;

/// Errors from starting or running the service.
#[derive(Debug)]
pub enum Error {
    /// A configuration file was refused.
    Config(ConfigError),
    /// A listener could not be bound.
    Bind(SocketAddr, std::io::Error),
    /// The counter storage could not be set up.
    Counter(String),
    /// The gRPC server failed.
    Serve(String),
    /// A background task failed.
    Task(String),
    /// Bad command-line or API usage.
    Usage(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            Error::Counter(e) => write!(f, "counter storage: {e}"),
            Error::Serve(e) => write!(f, "gRPC server: {e}"),
            Error::Task(e) => write!(f, "background task: {e}"),
            Error::Usage(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}
