//! The proxy-wasm ABI (v0.2.1) as mcp-ratelimit uses it, in place of the
//! proxy-wasm SDK, whose host-call wrappers and dispatcher panic on a
//! status they do not expect (a VM trap in Envoy).
//!
//! - [`hostcalls`]: the host functions the filter calls, imported with
//!   `u32` statuses and wrapped to return [`HostError`].
//! - [`RootContext`] and [`StreamContext`]: what the filter implements; the
//!   dispatcher keeps the contexts by id and routes gRPC replies by token,
//!   ignoring what it does not know.
//! - The exported functions Envoy calls, a `log` logger and a panic hook
//!   that write to Envoy's log, and [`main!`], which names the plugin's
//!   root context.
//!
//! All of the filter's unsafe code is here. Nothing here panics, whatever
//! the host answers; only running out of memory aborts.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
// Tests fail loudly; the crate itself may not (workspace lints).
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod dispatch;
pub mod exports;
pub mod hostcalls;
mod idmap;
mod logger;
mod wire;

pub use dispatch::{NewRoot, RootContext, StreamContext};
pub use wire::{Action, BufferType, HostError, LogLevel, MapType, MetricType, Pair};

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
extern "C" {
    /// Runs the module's static constructors (WASI's among them); made by
    /// the linker.
    fn __wasm_call_ctors();
}

/// Starts the module: static constructors, the logger and panic hook, and
/// the plugin's root context. Called by the `_initialize` that [`main!`]
/// defines.
pub fn start(new_root: NewRoot) {
    #[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
    // SAFETY: the linker's constructor runner, called once, first, as
    // WASI's reactor model requires of `_initialize`.
    unsafe {
        __wasm_call_ctors();
    }
    logger::install();
    dispatch::with(|d| d.set_root(new_root));
}

/// Defines the module's `_initialize`, which Envoy calls once before
/// anything else, to start it with this root context maker
/// (`fn(context_id: u32) -> Box<dyn RootContext>`).
///
/// The exported name is the one thing the filter crate must define itself;
/// the attribute that exports it (`no_mangle`) is written here, with the
/// rest of the unsafe code.
#[macro_export]
macro_rules! main {
    ($new_root:expr) => {
        // SAFETY: the module's only symbol named `_initialize`.
        #[unsafe(no_mangle)]
        pub extern "C" fn _initialize() {
            $crate::start($new_root);
        }
    };
}
