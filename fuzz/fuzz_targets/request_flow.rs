//! One whole request through the filter's decision, driven as `host.rs`
//! drives it; see `src/request_flow/mod.rs` for what every run checks.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mcp_ratelimit_fuzz::request_flow::fuzz_one(data);
});
