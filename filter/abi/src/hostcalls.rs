//! The host functions the filter calls, each behind a safe wrapper that
//! returns the host's status as a [`HostError`] and never panics.
//!
//! The imports return the status as a plain `u32`: a Rust enum there would
//! be undefined behaviour for a status it has no variant for.

use std::ptr::{null, null_mut};
use std::time::Duration;

use crate::dispatch;
use crate::wire::{
    self, check, BufferType, HostError, LogLevel, MapType, MetricType, Pair, NOT_FOUND,
};

/// Declares the host's functions: imported from module `env` in the Wasm
/// module, and stubs that answer `Unimplemented` in native builds, so that
/// the crate and its tests build and run on the development machine.
macro_rules! host_functions {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?);)*) => {
        #[cfg(target_arch = "wasm32")]
        #[link(wasm_import_module = "env")]
        extern "C" {
            $(fn $name($($arg: $ty),*) -> u32;)*
        }

        $(
            #[cfg(not(target_arch = "wasm32"))]
            #[allow(unused_variables, clippy::too_many_arguments)]
            unsafe fn $name($($arg: $ty),*) -> u32 {
                wire::UNIMPLEMENTED
            }
        )*
    };
}

host_functions! {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize);
    fn proxy_get_log_level(return_level: *mut u32);
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    );
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize);
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    );
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    );
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    );
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    );
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64);
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    );
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    );
    fn proxy_continue_stream(stream_type: u32);
    fn proxy_send_local_response(
        status_code: u32,
        details_data: *const u8,
        details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    );
    fn proxy_grpc_call(
        upstream_data: *const u8,
        upstream_size: usize,
        service_data: *const u8,
        service_size: usize,
        method_data: *const u8,
        method_size: usize,
        metadata_data: *const u8,
        metadata_size: usize,
        message_data: *const u8,
        message_size: usize,
        timeout_ms: u32,
        return_token: *mut u32,
    );
    fn proxy_grpc_cancel(token: u32);
    fn proxy_set_effective_context(context_id: u32);
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32);
    fn proxy_increment_metric(metric_id: u32, offset: i64);
}

/// Takes ownership of memory the host returned.
///
/// # Safety
///
/// `data` must be null, or point to `size` initialised bytes that the host
/// allocated through [`proxy_on_memory_allocate`](crate::exports::proxy_on_memory_allocate)
/// with exactly `size` as the requested size, and that nothing else owns.
unsafe fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the allocator made a `Box<[MaybeUninit<u8>]>` of `size` bytes
    // at `data`, which has the layout of a `Vec<u8>` of capacity `size`; the
    // host wrote all `size` bytes; the caller guarantees nothing else owns
    // them.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// A host call that returns bytes: the status and, on `Ok`, the bytes.
/// `call` gets the two out-pointers the host writes the answer to.
fn call_returning_bytes(
    call: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> Result<Option<Vec<u8>>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let status = call(&mut data, &mut size);
    match status {
        wire::OK => {
            // SAFETY: on `Ok` the host has set `data` to null or to `size`
            // bytes it allocated through our allocator, and handed them over.
            Ok(unsafe { take(data, size) })
        }
        NOT_FOUND => Ok(None),
        other => Err(HostError::Status(other)),
    }
}

/// Writes a message to Envoy's log.
pub fn log(level: LogLevel, message: &str) -> Result<(), HostError> {
    // SAFETY: the pointer and length describe `message`, valid for the call.
    check(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

/// Envoy's current log level for the module, as the host's number.
pub fn log_level() -> Result<u32, HostError> {
    let mut level = 0u32;
    // SAFETY: `level` is a valid u32 for the host to write.
    check(unsafe { proxy_get_log_level(&mut level) })?;
    Ok(level)
}

/// Up to `len` bytes of a buffer from offset `start`; `None` when the
/// buffer does not exist or is empty.
pub fn buffer(kind: BufferType, start: usize, len: usize) -> Result<Option<Vec<u8>>, HostError> {
    call_returning_bytes(|data, size| {
        // SAFETY: `data` and `size` point to locals of the caller, alive for
        // the call.
        unsafe { proxy_get_buffer_bytes(kind as u32, start, len, data, size) }
    })
}

/// All pairs of a header map, in order (a repeated header is several
/// pairs).
pub fn header_pairs(map: MapType) -> Result<Vec<Pair>, HostError> {
    let bytes = call_returning_bytes(|data, size| {
        // SAFETY: as in `buffer`.
        unsafe { proxy_get_header_map_pairs(map as u32, data, size) }
    })?;
    match bytes {
        Some(bytes) => wire::decode_map(&bytes).ok_or(HostError::Malformed),
        None => Ok(Vec::new()),
    }
}

/// A header's value (Envoy joins a repeated header's values with commas);
/// `None` when the map has no such header.
pub fn header_value(map: MapType, name: &str) -> Result<Option<Vec<u8>>, HostError> {
    let mut found = false;
    let value = call_returning_bytes(|data, size| {
        // SAFETY: `name` is valid for the call; the rest as in `buffer`.
        let status = unsafe {
            proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), data, size)
        };
        found = status == wire::OK;
        status
    })?;
    // The host answers an empty value with no bytes at all.
    Ok(value.or_else(|| found.then(Vec::new)))
}

/// Adds a header (a second one if the name is already there).
pub fn add_header(map: MapType, name: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: both slices are valid for the call.
    check(unsafe {
        proxy_add_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// A property of the stream or the proxy, by path (e.g. `metadata`,
/// `filter_metadata`, a namespace, a key); `None` when it is absent or
/// empty.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    let path = wire::encode_path(path);
    call_returning_bytes(|data, size| {
        // SAFETY: `path` is valid for the call; the rest as in `buffer`.
        unsafe { proxy_get_property(path.as_ptr(), path.len(), data, size) }
    })
}

/// Sets a property of the stream; Envoy keeps it as filter state
/// `wasm.<path>`, which access logs read with `%FILTER_STATE(...)%`.
pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), HostError> {
    let path = wire::encode_path(path);
    // SAFETY: both slices are valid for the call.
    check(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// The host's wall-clock time, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> Result<u64, HostError> {
    let mut t = 0u64;
    // SAFETY: `t` is a valid, writable u64 for the call.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

/// A value of the proxy's shared data (shared by every worker of the
/// process, for plugins of the same VM id) and its compare-and-swap token;
/// `None` when the key was never set.
pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
    let mut cas: u32 = 0;
    let value = call_returning_bytes(|data, size| {
        // SAFETY: `key` is valid for the call; `cas` is a valid, writable
        // u32; the rest as in `buffer`.
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), data, size, &mut cas) }
    })?;
    Ok(value.map(|v| (v, cas)).or(if cas != 0 {
        Some((Vec::new(), cas))
    } else {
        None
    }))
}

/// Sets a value of the shared data if its token is still `cas` (0: in any
/// case). `Ok(false)` when another writer came first (`CasMismatch`).
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<bool, HostError> {
    // SAFETY: both slices are valid for the call.
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    match status {
        wire::OK => Ok(true),
        wire::CAS_MISMATCH => Ok(false),
        other => Err(HostError::Status(other)),
    }
}

/// Resumes a request the filter paused.
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: no pointers.
    check(unsafe { proxy_continue_stream(0) })
}

/// Answers the request with this response instead of forwarding it.
pub fn send_local_response(
    status: u32,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), HostError> {
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    let headers = wire::encode_map(&pairs);
    // SAFETY: the body and the serialized headers are valid for the call;
    // no details (null, 0); -1 is "not a gRPC reply".
    check(unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Starts a unary gRPC call to `cluster`; the reply comes to the calling
/// stream's [`StreamContext::on_grpc_response`](crate::StreamContext::on_grpc_response)
/// with the token returned here.
pub fn grpc_call(
    cluster: &str,
    service: &str,
    method: &str,
    message: &[u8],
    timeout: Duration,
) -> Result<u32, HostError> {
    let metadata = wire::encode_map(&[]);
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let mut token = 0u32;
    // SAFETY: every slice is valid for the call; `token` is a valid u32 for
    // the host to write.
    check(unsafe {
        proxy_grpc_call(
            cluster.as_ptr(),
            cluster.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            metadata.as_ptr(),
            metadata.len(),
            message.as_ptr(),
            message.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    dispatch::call_started(token);
    Ok(token)
}

/// Cancels a gRPC call: no reply will come for it.
pub fn grpc_cancel(token: u32) -> Result<(), HostError> {
    dispatch::call_ended(token);
    // SAFETY: no pointers.
    check(unsafe { proxy_grpc_cancel(token) })
}

/// Makes the host apply the following calls to this context (for callbacks
/// such as a gRPC reply, which are not about one stream).
pub(crate) fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(context_id) })
}

/// Defines a metric; returns its id.
pub fn define_metric(kind: MetricType, name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: `name` is valid for the call; `id` is a valid u32 for the host
    // to write.
    check(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds `by` to a metric.
pub fn increment_metric(id: u32, by: i64) -> Result<(), HostError> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(id, by) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exports::proxy_on_memory_allocate;

    #[test]
    fn memory_the_host_allocates_is_taken_back() {
        for size in [0usize, 1, 7, 4096] {
            let data = proxy_on_memory_allocate(size);
            assert!(!data.is_null());
            // What the host does: fill the allocation, then hand it over.
            for i in 0..size {
                // SAFETY: `data` has `size` bytes.
                unsafe { data.add(i).write(i as u8) };
            }
            // SAFETY: allocated above with `size`, filled, owned by nobody else.
            let bytes = unsafe { take(data, size) }.unwrap();
            assert_eq!(bytes.len(), size);
            assert!(bytes.iter().enumerate().all(|(i, b)| *b == i as u8));
        }
        // SAFETY: null is allowed.
        assert_eq!(unsafe { take(null_mut(), 3) }, None);
    }

    #[test]
    fn without_a_host_every_call_fails_cleanly() {
        let unimplemented = Err(HostError::Status(wire::UNIMPLEMENTED));
        assert_eq!(log(LogLevel::Info, "x"), unimplemented);
        assert_eq!(
            buffer(BufferType::RequestBody, 0, 10),
            Err(HostError::Status(12))
        );
        assert_eq!(
            header_value(MapType::RequestHeaders, "a"),
            Err(HostError::Status(12))
        );
        assert_eq!(
            header_pairs(MapType::RequestHeaders),
            Err(HostError::Status(12))
        );
        assert_eq!(property(&["a", "b"]), Err(HostError::Status(12)));
        assert_eq!(send_local_response(500, &[("a", "b")], b"x"), unimplemented);
        let call = grpc_call("c", "s", "m", b"", Duration::from_millis(20));
        assert_eq!(call, Err(HostError::Status(12)));
        assert_eq!(resume_request(), unimplemented);
    }
}
