//! Arbitrary bytes as a `RateLimitResponse`: decoding never panics, and a
//! verdict agrees with the message as prost reads it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_ratelimit::rls::{self, pb, RlsError, Verdict};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let verdict = rls::decode_response(data, rls::Reading::default());
    assert_eq!(
        verdict,
        rls::decode_response(data, rls::Reading::default()),
        "decoding is deterministic"
    );
    let Ok(msg) = pb::RateLimitResponse::decode(data) else {
        assert_eq!(verdict, Err(RlsError::Undecodable));
        return;
    };
    // Every descriptor shadow: an OVER_LIMIT status never denies; the
    // over-limit statuses are reported by position instead.
    if !msg.statuses.is_empty() {
        let over: Vec<usize> = (0..msg.statuses.len())
            .filter(|i| msg.statuses[*i].code == rls::CODE_OVER_LIMIT)
            .collect();
        match rls::decode_response(
            data,
            rls::Reading {
                shadow: &vec![true; msg.statuses.len()],
                ..rls::Reading::default()
            },
        ) {
            Ok(Verdict::Ok { shadow_over, .. }) => assert_eq!(shadow_over, over),
            Ok(Verdict::OverLimit { shadow_over, .. }) => {
                assert!(over.is_empty(), "a shadow OVER_LIMIT denied");
                assert!(shadow_over.is_empty());
                assert_eq!(msg.overall_code, rls::CODE_OVER_LIMIT);
            }
            Err(e) => assert_eq!(Err(e), verdict),
        }
        // Every descriptor a lease renewal of a request already admitted:
        // an OVER_LIMIT status never denies, and each status is reported.
        let spared = rls::decode_response(
            data,
            rls::Reading {
                spare: &vec![true; msg.statuses.len()],
                statuses: true,
                ..rls::Reading::default()
            },
        );
        match spared {
            Ok(Verdict::Ok { statuses, .. }) => assert_eq!(statuses.len(), msg.statuses.len()),
            Ok(Verdict::OverLimit { statuses, .. }) => {
                assert!(over.is_empty(), "a spared OVER_LIMIT denied");
                assert_eq!(statuses.len(), msg.statuses.len());
                for (s, m) in statuses.iter().zip(&msg.statuses) {
                    assert_eq!(s.over, m.code == rls::CODE_OVER_LIMIT);
                }
            }
            Err(e) => assert_eq!(Err(e), verdict),
        }
    }
    match verdict {
        Ok(Verdict::Ok {
            request_headers,
            response_headers,
            shadow_over,
            ..
        }) => {
            assert!(shadow_over.is_empty(), "no descriptor is shadow");
            assert_eq!(msg.overall_code, rls::CODE_OK);
            check_headers(&request_headers, &msg.request_headers_to_add);
            check_headers(&response_headers, &msg.response_headers_to_add);
        }
        Ok(Verdict::OverLimit {
            retry_after,
            retry_after_ms,
            response_headers,
            shadow_over,
            denied_by,
            ..
        }) => {
            // Nothing was said about the descriptors sent: no position.
            assert_eq!(denied_by, None);
            // The same reset in milliseconds: within the second it rounds to.
            assert!(retry_after_ms >= 1);
            assert!(retry_after_ms.div_ceil(1000) == retry_after || retry_after_ms == u64::MAX || retry_after == 1);
            assert!(shadow_over.is_empty(), "no descriptor is shadow");
            assert_eq!(msg.overall_code, rls::CODE_OVER_LIMIT);
            assert!(retry_after >= 1, "Retry-After must be at least 1");
            // The longest reset among the over-limit statuses, rounded up.
            let longest = msg
                .statuses
                .iter()
                .filter(|s| s.code == rls::CODE_OVER_LIMIT)
                .filter_map(|s| s.duration_until_reset.as_ref())
                .map(|d| {
                    let secs = i128::from(d.seconds) + i128::from(d.nanos > 0);
                    secs.clamp(0, i128::from(u64::MAX))
                })
                .max()
                .unwrap_or(0)
                .max(1);
            assert_eq!(i128::from(retry_after), longest);
            check_headers(&response_headers, &msg.response_headers_to_add);
        }
        Err(RlsError::UnknownCode(code)) => {
            assert_eq!(code, msg.overall_code);
            assert!(code != rls::CODE_OK && code != rls::CODE_OVER_LIMIT);
        }
        Err(e) => panic!("prost decodes the reply but the filter says {e:?}"),
    }
});

/// Headers handed to the proxy: token names in lowercase, values without
/// control characters, each taken from the reply in order.
fn check_headers(got: &[(String, String)], sent: &[pb::HeaderValue]) {
    assert!(got.len() <= sent.len());
    for (k, v) in got {
        assert!(!k.is_empty());
        assert!(k
            .bytes()
            .all(|b| (b.is_ascii_alphanumeric() && !b.is_ascii_uppercase())
                || b"!#$%&'*+-.^_`|~".contains(&b)));
        assert!(v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)));
        assert!(!v.contains('\r') && !v.contains('\n'));
        assert!(sent.iter().any(|h| h.key.to_ascii_lowercase() == *k
            && (h.value == *v || (h.value.is_empty() && h.raw_value == v.as_bytes()))));
    }
}
