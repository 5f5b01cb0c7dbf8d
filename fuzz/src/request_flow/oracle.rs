//! An independent reading of when an `Mcp-Param` header agrees with the
//! argument it mirrors: strings exactly, booleans as `true`/`false`,
//! integers by value whatever their spelling (`42`, `4.2e1`, `420e-1`,
//! `0e-2147483648`), up to 30 digits. Written without the filter's
//! arithmetic: the value is kept as digits and a decimal scale.

use mcp_ratelimit::jsonrpc::Body;
use mcp_ratelimit::mcp_headers::{self, McpHeaders};
use mcp_ratelimit::message::ParamHeader;

/// An integer as its sign, significant digits (no leading or trailing
/// zeros; empty for zero) and the number of zeros after them.
#[derive(Debug, PartialEq, Eq)]
struct Integer {
    negative: bool,
    digits: String,
    zeros: u64,
}

/// Beyond this many digits, values are not compared.
const MAX_DIGITS: u64 = 30;

/// `-? digits ('.' digits*)? ([eE] [+-]? digits)?`, read as an integer.
fn integer(text: &str) -> Option<Integer> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    // The exponent, clamped far past anything that could be compared.
    let exponent: i128 = match exp {
        None => 0,
        Some(e) => {
            let (sign, digits) = match e.as_bytes().first() {
                Some(b'-') => (-1, &e[1..]),
                Some(b'+') => (1, &e[1..]),
                _ => (1, e),
            };
            if digits.is_empty() || !all_digits(digits) {
                return None;
            }
            let digits = digits.trim_start_matches('0');
            let magnitude: i128 = if digits.len() > 30 {
                10i128.pow(30)
            } else {
                digits.parse().unwrap_or(0)
            };
            sign * magnitude
        }
    };
    let all = format!("{whole}{fraction}");
    let significant = all.trim_start_matches('0');
    if significant.is_empty() {
        return Some(Integer {
            negative: false,
            digits: String::new(),
            zeros: 0,
        });
    }
    let trimmed = significant.trim_end_matches('0');
    let trailing = (significant.len() - trimmed.len()) as i128;
    // value = trimmed * 10^scale
    let scale = exponent - fraction.len() as i128 + trailing;
    if scale < 0 {
        return None;
    }
    if trimmed.len() as i128 + scale > i128::from(MAX_DIGITS) {
        return None;
    }
    Some(Integer {
        negative,
        digits: trimmed.to_owned(),
        zeros: u64::try_from(scale).ok()?,
    })
}

/// Whether a decoded header value agrees with an argument's JSON text.
pub fn agrees(header: &str, json: &str) -> bool {
    match json.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(json).is_ok_and(|s| s == header),
        Some(b't' | b'f') => json == header,
        Some(b'-' | b'0'..=b'9') => match (integer(header), integer(json)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        },
        _ => false,
    }
}

/// For each mapping that applies to a single `tools/call` and whose
/// header is given: `mcp_headers::check`, given that header alone, accepts
/// exactly when the header agrees with the argument.
pub fn check_param_headers(
    body: &Body<'_>,
    params: &[ParamHeader],
    header: impl Fn(&str) -> Option<Vec<u8>>,
) {
    let Body::Single(req) = body else { return };
    if req.method.as_deref() != Some("tools/call") {
        return;
    }
    for (i, p) in params.iter().enumerate() {
        if req.name.as_deref() != Some(p.tool.as_str()) {
            continue;
        }
        let (Some(value), Some(arg)) = (header(&p.header), req.argument(i)) else {
            continue;
        };
        if arg.get() == "null" {
            continue;
        }
        let mut only = McpHeaders {
            params: vec![None; params.len()],
            ..McpHeaders::default()
        };
        only.params[i] = Some(value.clone());
        // Other mappings of the same tool must not get in the way: their
        // headers are absent, which an older protocol version allows.
        let accepted = mcp_headers::check(&only, body, params).is_ok();
        let expected = mcp_headers::decode_value(&value).is_ok_and(|h| agrees(&h, arg.get()));
        assert_eq!(
            accepted,
            expected,
            "Mcp-Param header {:?} against argument {}",
            String::from_utf8_lossy(&value),
            arg.get()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_agree_whatever_their_spelling() {
        for (a, b) in [
            ("42", "42"),
            ("42", "4.2e1"),
            ("42", "420e-1"),
            ("42.0", "42"),
            ("0", "0e-2147483648"),
            ("0", "-0"),
            ("0", "0.0e2147483647"),
            ("100000000000000000000000000000", "1e29"),
        ] {
            assert!(agrees(a, b), "{a} {b}");
        }
        for (a, b) in [
            ("1", "1e-2147483648"),
            ("1", "1.5"),
            ("1", "1e2147483648"),
            ("1000000000000000000000000000000", "1e30"),
            ("x", "1"),
            ("1", "[1]"),
        ] {
            assert!(!agrees(a, b), "{a} {b}");
        }
        assert!(agrees("true", "true") && !agrees("true", "false"));
        // A string argument is compared as text.
        assert!(agrees("1", "\"1\"") && !agrees("1.0", "\"1\""));
    }
}
