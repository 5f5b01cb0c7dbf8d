//! Helpers shared by the integration tests.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use dev_rls::rls_proto::rate_limit_response::{Code, DescriptorStatus};
use dev_rls::rls_proto::{RateLimitRequest, RateLimitResponse};
use dev_rls::{DevRls, LoadOptions, ManualClock, RateLimitConfig, Unit};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::google::protobuf::UInt64Value;

/// A fixed test time: 20 s into a minute, 800 s into an hour, 80000 s into a day.
pub const T0: u64 = 1_700_000_000;

pub fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

pub fn conformance_file(name: &str) -> PathBuf {
    conformance_dir().join(name)
}

pub fn load(files: &[&str], options: LoadOptions) -> Result<RateLimitConfig, dev_rls::ConfigError> {
    let paths: Vec<PathBuf> = files.iter().map(|f| conformance_file(f)).collect();
    RateLimitConfig::load_files(&paths, options)
}

/// A service over the given conformance files with a manual clock at [`T0`].
pub fn rls_for(files: &[&str]) -> (DevRls, ManualClock) {
    let config = load(files, LoadOptions::default()).expect("config loads");
    let clock = ManualClock::new(T0);
    let rls = DevRls::builder(config)
        .clock(clock.clone())
        .build()
        .expect("service builds");
    (rls, clock)
}

pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        ..Default::default()
    }
}

pub fn descriptor_with_hits(entries: &[(&str, &str)], hits: u64) -> RateLimitDescriptor {
    RateLimitDescriptor {
        hits_addend: Some(UInt64Value { value: hits }),
        ..descriptor(entries)
    }
}

pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: 0,
    }
}

pub fn call(
    rls: &DevRls,
    domain: &str,
    descriptors: Vec<RateLimitDescriptor>,
) -> RateLimitResponse {
    rls.should_rate_limit(&request(domain, descriptors))
        .expect("call succeeds")
}

/// One call with a single descriptor; returns its status and checks the overall code agrees.
pub fn one(rls: &DevRls, domain: &str, entries: &[(&str, &str)]) -> DescriptorStatus {
    let response = call(rls, domain, vec![descriptor(entries)]);
    assert_eq!(response.statuses.len(), 1);
    let status = response.statuses[0].clone();
    assert_eq!(
        response.overall_code, status.code,
        "overall code follows the only descriptor"
    );
    status
}

/// What a descriptor status should say.
#[derive(Debug)]
pub struct Want {
    pub code: Code,
    /// `(requests_per_unit, unit, name)`, or `None` when no limit applies.
    pub limit: Option<(u32, Unit, &'static str)>,
    pub remaining: u32,
}

pub fn ok(rpu: u32, unit: Unit, remaining: u32) -> Want {
    Want {
        code: Code::Ok,
        limit: Some((rpu, unit, "")),
        remaining,
    }
}

pub fn over(rpu: u32, unit: Unit) -> Want {
    Want {
        code: Code::OverLimit,
        limit: Some((rpu, unit, "")),
        remaining: 0,
    }
}

pub fn named(mut want: Want, name: &'static str) -> Want {
    if let Some(limit) = want.limit.as_mut() {
        limit.2 = name;
    }
    want
}

/// No limit applies: OK, uncounted, no current_limit.
pub fn no_limit() -> Want {
    Want {
        code: Code::Ok,
        limit: None,
        remaining: 0,
    }
}

/// `unlimited: true`.
pub fn unlimited() -> Want {
    Want {
        code: Code::Ok,
        limit: None,
        remaining: u32::MAX,
    }
}

pub fn assert_status(status: &DescriptorStatus, want: &Want, what: &str) {
    assert_eq!(
        status.code, want.code as i32,
        "{what}: code (status {status:?})"
    );
    assert_eq!(
        status.limit_remaining, want.remaining,
        "{what}: limit_remaining (status {status:?})"
    );
    match want.limit {
        None => {
            assert!(
                status.current_limit.is_none(),
                "{what}: expected no limit, got {status:?}"
            );
            assert!(
                status.duration_until_reset.is_none(),
                "{what}: no reset without a limit"
            );
        }
        Some((rpu, unit, name)) => {
            let limit = status
                .current_limit
                .as_ref()
                .unwrap_or_else(|| panic!("{what}: expected a limit"));
            assert_eq!(limit.requests_per_unit, rpu, "{what}: requests_per_unit");
            assert_eq!(limit.unit, unit.proto(), "{what}: unit");
            assert_eq!(limit.name, name, "{what}: name");
            let reset = status
                .duration_until_reset
                .as_ref()
                .expect("reset duration")
                .seconds;
            assert!(
                reset > 0 && reset as u64 <= unit.seconds(),
                "{what}: duration_until_reset {reset} outside (0, {}]",
                unit.seconds()
            );
        }
    }
}

/// Sends `entries` once and checks the status.
pub fn expect(rls: &DevRls, domain: &str, entries: &[(&str, &str)], want: Want) {
    let status = one(rls, domain, entries);
    assert_status(&status, &want, &format!("{domain} {entries:?}"));
}
