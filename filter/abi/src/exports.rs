//! The functions of ABI 0.2.1 that Envoy calls. Those the filter has no use
//! for (network filters, timers, shared queues, HTTP calls, the response
//! body and trailers) are left out: Envoy skips a callback the module does
//! not export.
//!
//! Safety of the `no_mangle` attributes: only the Wasm module exports these
//! names, and each is the only symbol of its name there, so none can clash.
//! Booleans from the host are taken as integers, never as a Rust `bool`.

use crate::dispatch::{self, Dispatcher};
use crate::logger;
use crate::wire::Action;

/// A stream callback's answer when the stream cannot be reached (which only
/// a re-entrant call from the host or a callback before `_initialize` could
/// cause): what Envoy does for a callback the module does not export.
const UNREACHED: Action = Action::Continue;

fn on(f: impl FnOnce(&Dispatcher)) {
    dispatch::with(f);
}

fn stream_action(context_id: u32, f: impl FnOnce(&mut dyn crate::StreamContext) -> Action) -> u32 {
    dispatch::with(|d| d.stream(context_id, f, UNREACHED)).unwrap_or(UNREACHED) as u32
}

#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host allocates in the module's memory through this, for everything
/// it returns (buffers, header values and maps, properties). The memory is
/// taken back as a `Vec<u8>` of capacity `size`
/// ([`hostcalls`](crate::hostcalls)), which has the layout of the boxed
/// slice made here.
#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    Box::into_raw(Box::<[u8]>::new_uninit_slice(size)).cast::<u8>()
}

#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    on(|d| d.create(context_id, root_context_id));
}

#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    logger::follow_host_level();
    1
}

#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_configure(root_context_id: u32, configuration_size: usize) -> u32 {
    logger::follow_host_level();
    let ok = dispatch::with(|d| d.configure(root_context_id, configuration_size));
    u32::from(ok.unwrap_or(false))
}

#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    num_headers: usize,
    end_of_stream: u32,
) -> u32 {
    stream_action(context_id, |s| {
        s.on_request_headers(num_headers, end_of_stream != 0)
    })
}

#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_request_body(
    context_id: u32,
    body_size: usize,
    end_of_stream: u32,
) -> u32 {
    stream_action(context_id, |s| {
        s.on_request_body(body_size, end_of_stream != 0)
    })
}

#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, num_trailers: usize) -> u32 {
    stream_action(context_id, |s| s.on_request_trailers(num_trailers))
}

#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_response_headers(
    context_id: u32,
    num_headers: usize,
    end_of_stream: u32,
) -> u32 {
    stream_action(context_id, |s| {
        s.on_response_headers(num_headers, end_of_stream != 0)
    })
}

/// A gRPC call's reply (gRPC status 0). The context id is not the caller's
/// in every host: the token says which stream made the call.
#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_grpc_receive(_context_id: u32, token: u32, response_size: usize) {
    on(|d| d.grpc_response(token, 0, response_size));
}

/// A gRPC call's failure, with its gRPC status.
#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_grpc_close(_context_id: u32, token: u32, status_code: u32) {
    on(|d| d.grpc_response(token, status_code, 0));
}

/// The context is done; it has nothing left to finish.
#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_done(_context_id: u32) -> u32 {
    1
}

#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_log(_context_id: u32) {}

#[cfg_attr(target_arch = "wasm32", unsafe(no_mangle))]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    on(|d| d.delete(context_id));
}
