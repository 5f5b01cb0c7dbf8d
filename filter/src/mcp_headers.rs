//! The MCP request headers of Streamable HTTP: `MCP-Protocol-Version`,
//! `Mcp-Session-Id`, and the routing headers of MCP 2026-07-28 (SEP-2243)
//! `Mcp-Method`, `Mcp-Name` and `Mcp-Param-{Name}`, with their value
//! encoding, and the rule that headers and body must agree.

use std::borrow::Cow;

use crate::jsonrpc::json_string;
use crate::message::{Body, ParamHeader, Request};

/// Header names, lowercase as the proxy presents them.
pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";
pub const SESSION_ID: &str = "mcp-session-id";
pub const METHOD: &str = "mcp-method";
pub const NAME: &str = "mcp-name";

/// The first version with routing headers that servers must validate.
pub const ROUTING_HEADERS_VERSION: &str = "2026-07-28";
/// The first version without JSON-RPC batches.
pub const NO_BATCH_VERSION: &str = "2025-06-18";

/// The MCP headers of one request, as received (raw bytes).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct McpHeaders {
    pub protocol_version: Option<Vec<u8>>,
    pub session_id: Option<Vec<u8>>,
    pub method: Option<Vec<u8>>,
    pub name: Option<Vec<u8>>,
    /// One slot per configured [`ParamHeader`], in configuration order.
    pub params: Vec<Option<Vec<u8>>>,
}

impl McpHeaders {
    /// The protocol version when it is a well-formed `YYYY-MM-DD` date.
    pub fn version(&self) -> Option<&str> {
        let v = std::str::from_utf8(self.protocol_version.as_deref()?).ok()?;
        let well_formed = v.len() == 10
            && v.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        well_formed.then_some(v)
    }

    /// True when the request says it speaks a version whose servers must
    /// check routing headers against the body (2026-07-28 or later).
    pub fn is_modern(&self) -> bool {
        self.version().is_some_and(|v| v >= ROUTING_HEADERS_VERSION)
    }

    /// True when the request's version allows JSON-RPC batches: 2025-03-26,
    /// which is what a request without the header is taken to speak.
    pub fn allows_batches(&self) -> bool {
        match &self.protocol_version {
            None => true,
            Some(_) => self.version().is_some_and(|v| v < NO_BATCH_VERSION),
        }
    }

    /// True when any routing header is present.
    pub fn has_routing_headers(&self) -> bool {
        self.method.is_some() || self.name.is_some() || self.params.iter().any(Option::is_some)
    }
}

/// Why headers and body disagree (JSON-RPC -32020, HeaderMismatch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub reason: &'static str,
}

fn mismatch<T>(reason: &'static str) -> Result<T, Mismatch> {
    Err(Mismatch { reason })
}

/// Decodes a routing header value: plain visible ASCII (space and tab
/// allowed inside), or the `=?base64?...?=` form holding UTF-8.
pub fn decode_value(raw: &[u8]) -> Result<Cow<'_, str>, Mismatch> {
    if !raw.iter().all(|b| *b == b'\t' || (0x20..0x7f).contains(b)) {
        return mismatch("header value has characters outside visible ASCII");
    }
    // Checked above: every byte is ASCII.
    let text = std::str::from_utf8(raw).map_err(|_| Mismatch {
        reason: "header value is not ASCII",
    })?;
    match text
        .strip_prefix("=?base64?")
        .and_then(|t| t.strip_suffix("?="))
    {
        Some(encoded) => {
            let bytes = base64_decode(encoded.as_bytes()).ok_or(Mismatch {
                reason: "header value is not valid Base64",
            })?;
            String::from_utf8(bytes)
                .map(Cow::Owned)
                .map_err(|_| Mismatch {
                    reason: "Base64 header value is not UTF-8",
                })
        }
        None => Ok(Cow::Borrowed(text)),
    }
}

/// Standard Base64 (RFC 4648 section 4), padding optional.
fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let trimmed = match input {
        [rest @ .., b'=', b'='] => rest,
        [rest @ .., b'='] => rest,
        all => all,
    };
    if trimmed.len() % 4 == 1 || (trimmed.len() != input.len() && input.len() % 4 != 0) {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    for chunk in trimmed.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= sextet(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        let take = chunk.len() - 1;
        // Bits beyond the last whole byte must be zero (canonical form).
        let unused = (acc << (8 * take)) & 0x00ff_ffff;
        if unused != 0 && take < 3 {
            return None;
        }
        out.extend(bytes.iter().skip(1).take(take));
    }
    Some(out)
}

/// Compares the routing headers with the parsed body. `params` are the
/// configured `Mcp-Param-*` mappings, matching `headers.params`.
pub fn check(
    headers: &McpHeaders,
    body: &Body<'_>,
    params: &[ParamHeader],
) -> Result<(), Mismatch> {
    let req = match body {
        Body::Single(req) => req,
        Body::Batch(_) if headers.has_routing_headers() => {
            return mismatch("routing headers cannot describe a batch");
        }
        Body::Batch(_) => return Ok(()),
    };
    let modern = headers.is_modern();
    if let (Some(header), Some(body_version)) =
        (headers.version(), req.meta_protocol_version.as_deref())
    {
        if header != body_version {
            return mismatch("MCP-Protocol-Version does not match the body's protocol version");
        }
    }
    let is_request = req.id.is_some() && req.method.is_some();
    match (&headers.method, &req.method) {
        (Some(h), Some(m)) => {
            if decode_value(h)? != m.as_ref() {
                return mismatch("Mcp-Method does not match the body's method");
            }
        }
        (Some(_), None) => return mismatch("Mcp-Method on a message without a method"),
        (None, Some(_)) if modern && is_request => {
            return mismatch("Mcp-Method header is required")
        }
        (None, _) => {}
    }
    match (&headers.name, &req.name) {
        (Some(h), Some(n)) => {
            if decode_value(h)? != n.as_ref() {
                return mismatch("Mcp-Name does not match the body's name");
            }
        }
        (Some(_), None) => return mismatch("Mcp-Name on a method without a name"),
        (None, Some(_)) if modern => return mismatch("Mcp-Name header is required"),
        (None, None) => {}
        (None, Some(_)) => {}
    }
    check_params(headers, req, params, modern)
}

/// `Mcp-Param-*` headers of the configured mappings for this request's tool.
fn check_params(
    headers: &McpHeaders,
    req: &Request<'_>,
    params: &[ParamHeader],
    modern: bool,
) -> Result<(), Mismatch> {
    for (i, p) in params.iter().enumerate() {
        let header = headers.params.get(i).and_then(Option::as_deref);
        let applies = req.method.as_deref() == Some("tools/call")
            && req.name.as_deref() == Some(p.tool.as_str());
        if !applies {
            if header.is_some() && req.method.as_deref() == Some("tools/call") {
                // A recognised header on another tool: validate its
                // characters, otherwise forward it untouched.
                decode_value(header.unwrap_or_default())?;
            }
            continue;
        }
        let body_value = req.argument(i).filter(|v| v.get() != "null");
        match (header, body_value) {
            (None, None) => {}
            (Some(_), None) => {
                return mismatch("Mcp-Param header for an argument the body does not have")
            }
            // Clients mirror arguments from 2026-07-28 on; older ones never do.
            (None, Some(_)) if modern => {
                return mismatch("Mcp-Param header is required for this argument")
            }
            (None, Some(_)) => {}
            (Some(h), Some(v)) => {
                if !param_matches(&decode_value(h)?, v.get()) {
                    return mismatch("Mcp-Param header does not match the body's argument");
                }
            }
        }
    }
    Ok(())
}

/// Compares a decoded header value with the JSON text of an argument:
/// strings exactly, integers numerically, booleans as `true`/`false`.
fn param_matches(header: &str, json: &str) -> bool {
    match json.as_bytes().first() {
        Some(b'"') => json_string(json).is_some_and(|s| s == header),
        Some(b't') => json == "true" && header == "true",
        Some(b'f') => json == "false" && header == "false",
        Some(b'-' | b'0'..=b'9') => match (integer(header), integer(json)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        },
        _ => false,
    }
}

/// The value of a JSON number that is an integer (`42`, `-7`, `42.0`,
/// `4.2e1`, `0e-2147483648`), exactly, without going through floating
/// point. Values beyond 30 digits are not compared (`None`). Every step is
/// checked or saturating: the text comes from the client.
fn integer(text: &str) -> Option<i128> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (rest.get(..i)?, exponent(rest.get(i + 1..)?)?),
        None => (rest, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // The value is digits * 10^shift.
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    let fraction_len = i64::try_from(fraction.len()).ok()?;
    let shift = exponent.saturating_sub(fraction_len);
    let (digits, zeros) = if shift < 0 {
        // Dropped digits must be zeros for the value to be an integer.
        let cut = usize::try_from(shift.unsigned_abs()).unwrap_or(usize::MAX);
        let (head, tail) = digits.split_at(digits.len().saturating_sub(cut));
        if !tail.bytes().all(|b| b == b'0') {
            return None;
        }
        (head, 0)
    } else {
        (digits, usize::try_from(shift).ok()?)
    };
    if digits.len().checked_add(zeros)? > 30 {
        return None;
    }
    let mut value: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    for _ in 0..zeros {
        value = value.checked_mul(10)?;
    }
    Some(if negative { -value } else { value })
}

/// A JSON exponent (`5`, `+5`, `-12`), saturating far beyond any value
/// [`integer`] compares.
fn exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, text.get(1..)?),
        Some(b'+') => (false, text.get(1..)?),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.bytes().fold(0i64, |acc, b| {
        acc.saturating_mul(10).saturating_add(i64::from(b - b'0'))
    });
    Some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonrpc::{self, Spec};

    fn headers(pairs: &[(&str, &str)]) -> McpHeaders {
        let mut h = McpHeaders::default();
        for (k, v) in pairs {
            let v = Some(v.as_bytes().to_vec());
            match *k {
                "version" => h.protocol_version = v,
                "method" => h.method = v,
                "name" => h.name = v,
                "param" => h.params = vec![v],
                other => panic!("{other}"),
            }
        }
        h
    }

    fn run(h: &McpHeaders, body: &str, params: &[ParamHeader]) -> Result<(), Mismatch> {
        let keys: Vec<String> = params.iter().map(|p| p.argument.clone()).collect();
        let meta = ["call_tool".to_owned()];
        let spec = Spec {
            meta_tools: &meta,
            params,
            argument_keys: &keys,
        };
        let parsed = jsonrpc::parse(body.as_bytes(), &spec).unwrap();
        check(h, &parsed, params)
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","arguments":{"region":"us-west1","n":42}}}"#;

    fn reason(r: Result<(), Mismatch>) -> &'static str {
        r.unwrap_err().reason
    }

    #[test]
    fn base64_values() {
        assert_eq!(decode_value(b"us-west1").unwrap(), "us-west1");
        assert_eq!(
            decode_value(b"=?base64?SGVsbG8sIOS4lueVjA==?=").unwrap(),
            "Hello, 世界"
        );
        assert_eq!(
            decode_value(b"=?base64?IHBhZGRlZCA=?=").unwrap(),
            " padded "
        );
        assert_eq!(
            decode_value(b"=?base64?bGluZTEKbGluZTI=?=").unwrap(),
            "line1\nline2"
        );
        assert_eq!(
            decode_value(b"=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=").unwrap(),
            "=?base64?literal?="
        );
        assert_eq!(decode_value(b"=?base64??=").unwrap(), "");
        // Unpadded input is accepted.
        assert_eq!(decode_value(b"=?base64?IHBhZGRlZCA?=").unwrap(), " padded ");
        // The markers are case-sensitive: anything else is a plain value.
        assert_eq!(decode_value(b"=?BASE64?SGk=?=").unwrap(), "=?BASE64?SGk=?=");
        for bad in [
            &b"=?base64?SGk*?="[..],
            b"=?base64?S?=",
            b"=?base64?SGk=x?=",
            b"=?base64?/w==?=",
            b"=?base64?SGl=?=",
        ] {
            assert!(
                decode_value(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [&b"caf\xc3\xa9"[..], b"a\rb", b"a\nb", b"\x00", b"\x7f"] {
            assert!(decode_value(bad).is_err(), "{bad:?}");
        }
        assert_eq!(decode_value(b"a b\tc").unwrap(), "a b\tc");
    }

    #[test]
    fn versions() {
        assert!(headers(&[("version", "2026-07-28")]).is_modern());
        assert!(headers(&[("version", "2027-01-01")]).is_modern());
        assert!(!headers(&[("version", "2025-11-25")]).is_modern());
        assert!(!headers(&[("version", "2026-7-28")]).is_modern());
        assert!(!headers(&[("version", "9999-99-9x")]).is_modern());
        assert!(McpHeaders::default().allows_batches());
        assert!(headers(&[("version", "2025-03-26")]).allows_batches());
        assert!(!headers(&[("version", "2025-06-18")]).allows_batches());
        assert!(!headers(&[("version", "2025-11-25")]).allows_batches());
        assert!(!headers(&[("version", "garbage")]).allows_batches());
    }

    #[test]
    fn matching_headers_pass() {
        assert_eq!(
            run(
                &headers(&[("method", "tools/call"), ("name", "search_docs")]),
                CALL,
                &[]
            ),
            Ok(())
        );
        let h = headers(&[
            ("version", "2026-07-28"),
            ("method", "tools/call"),
            ("name", "=?base64?c2VhcmNoX2RvY3M=?="),
        ]);
        assert_eq!(run(&h, CALL, &[]), Ok(()));
        // No headers at all on an older version: nothing to check.
        assert_eq!(run(&McpHeaders::default(), CALL, &[]), Ok(()));
        assert_eq!(
            run(&headers(&[("version", "2025-06-18")]), CALL, &[]),
            Ok(())
        );
    }

    #[test]
    fn mismatches() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (
                &[("method", "tools/list")],
                CALL,
                "Mcp-Method does not match",
            ),
            (
                &[("method", "Tools/Call")],
                CALL,
                "Mcp-Method does not match",
            ),
            (&[("name", "get_weather")], CALL, "Mcp-Name does not match"),
            (
                &[("name", "=?base64?Z2V0X3dlYXRoZXI=?=")],
                CALL,
                "Mcp-Name does not match",
            ),
            (&[("name", "=?base64?***?=")], CALL, "not valid Base64"),
            (
                &[("method", "tools/list"), ("name", "x")],
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
                "Mcp-Name on a method without a name",
            ),
            (
                &[("method", "tools/call")],
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                "Mcp-Method on a message without a method",
            ),
            (
                &[("version", "2026-07-28"), ("name", "search_docs")],
                CALL,
                "Mcp-Method header is required",
            ),
            (
                &[("version", "2026-07-28"), ("method", "tools/call")],
                CALL,
                "Mcp-Name header is required",
            ),
            (
                &[("method", "tools/call"), ("name", "search_docs")],
                r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs"}}]"#,
                "cannot describe a batch",
            ),
        ];
        for (h, body, want) in cases {
            let got = reason(run(&headers(h), body, &[]));
            assert!(got.contains(want), "{h:?}: {got}");
        }
    }

    #[test]
    fn orphan_name_checks_resources_and_prompts_too() {
        let read =
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a b"}}"#;
        assert_eq!(run(&headers(&[("name", "file:///a b")]), read, &[]), Ok(()));
        assert!(run(&headers(&[("name", "file:///other")]), read, &[]).is_err());
        let prompt =
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"review"}}"#;
        assert_eq!(
            run(
                &headers(&[("method", "prompts/get"), ("name", "review")]),
                prompt,
                &[]
            ),
            Ok(())
        );
    }

    #[test]
    fn meta_tool_name_header_is_the_outer_name() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs"}}}"#;
        assert_eq!(
            run(
                &headers(&[("method", "tools/call"), ("name", "call_tool")]),
                body,
                &[]
            ),
            Ok(())
        );
        assert!(run(
            &headers(&[("method", "tools/call"), ("name", "search_docs")]),
            body,
            &[]
        )
        .is_err());
    }

    #[test]
    fn notifications_need_no_method_header() {
        let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert_eq!(
            run(&headers(&[("version", "2026-07-28")]), note, &[]),
            Ok(())
        );
    }

    #[test]
    fn body_protocol_version_must_match_the_header() {
        let body = |v: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"{v}"}}}}}}"#
            )
        };
        let h = headers(&[("version", "2026-07-28"), ("method", "tools/list")]);
        assert_eq!(run(&h, &body("2026-07-28"), &[]), Ok(()));
        assert!(reason(run(&h, &body("2025-11-25"), &[])).contains("MCP-Protocol-Version"));
    }

    fn param(tool: &str, argument: &str) -> ParamHeader {
        ParamHeader {
            tool: tool.into(),
            argument: argument.into(),
            header: "mcp-param-x".into(),
        }
    }

    #[test]
    fn param_headers() {
        let region = [param("search_docs", "region")];
        let n = [param("search_docs", "n")];
        assert_eq!(
            run(&headers(&[("param", "us-west1")]), CALL, &region),
            Ok(())
        );
        assert_eq!(
            run(
                &headers(&[("param", "=?base64?dXMtd2VzdDE=?=")]),
                CALL,
                &region
            ),
            Ok(())
        );
        assert!(
            reason(run(&headers(&[("param", "eu-west1")]), CALL, &region))
                .contains("does not match")
        );
        let modern = headers(&[
            ("version", "2026-07-28"),
            ("method", "tools/call"),
            ("name", "search_docs"),
        ]);
        assert!(reason(run(&modern, CALL, &region)).contains("required"));
        // Clients of older versions do not mirror arguments.
        assert_eq!(run(&McpHeaders::default(), CALL, &region), Ok(()));
        // Numbers compare numerically.
        for ok in ["42", "42.0", "4.2e1"] {
            assert_eq!(run(&headers(&[("param", ok)]), CALL, &n), Ok(()), "{ok}");
        }
        for bad in ["43", "042x", "forty-two", "\"42\"", "42.5", "4.25e1", ""] {
            assert!(run(&headers(&[("param", bad)]), CALL, &n).is_err(), "{bad}");
        }
        // An argument the body lacks, or that is null, needs no header and
        // may not have one.
        let absent = [param("search_docs", "missing")];
        assert_eq!(run(&McpHeaders::default(), CALL, &absent), Ok(()));
        assert!(run(&headers(&[("param", "x")]), CALL, &absent).is_err());
        let null = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","arguments":{"region":null}}}"#;
        assert_eq!(run(&McpHeaders::default(), null, &region), Ok(()));
        // A mapping of another tool does not apply.
        let other = [param("get_weather", "region")];
        assert_eq!(run(&McpHeaders::default(), CALL, &other), Ok(()));
        assert!(run(&headers(&[("param", "bad\u{7f}")]), CALL, &other).is_err());
        // Booleans.
        let flag = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","arguments":{"region":true}}}"#;
        assert_eq!(run(&headers(&[("param", "true")]), flag, &region), Ok(()));
        assert!(run(&headers(&[("param", "True")]), flag, &region).is_err());
    }

    #[test]
    fn integers_compare_exactly() {
        for (a, b) in [
            ("42", Some(42)),
            ("-7", Some(-7)),
            ("42.0", Some(42)),
            ("4.2e1", Some(42)),
            ("420e-1", Some(42)),
            ("0", Some(0)),
            ("-0.0", Some(0)),
            ("1E2", Some(100)),
            ("9007199254740993", Some(9_007_199_254_740_993)),
            ("4.25e1", None),
            ("1.5", None),
            ("e5", None),
            ("1e", None),
            ("--1", None),
            ("1.2.3", None),
            ("1e99999", None),
            // Exponents at and past the integer limits: no overflow, and
            // the right answer.
            ("0e-2147483648", Some(0)),
            ("1e-2147483648", None),
            ("100e-2147483649", None),
            ("1e2147483647", None),
            ("1e+2", Some(100)),
            ("10e-1", Some(1)),
            ("-0.0e-9223372036854775808", Some(0)),
            ("0.0e99999999999999999999999", Some(0)),
            ("5e-99999999999999999999999", None),
            ("1e-", None),
        ] {
            assert_eq!(integer(a), b, "{a}");
        }
    }

    #[test]
    fn meta_tool_inner_name_param() {
        let p = [param("call_tool", "tool_name")];
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs"}}}"#;
        assert_eq!(run(&headers(&[("param", "search_docs")]), body, &p), Ok(()));
        assert!(run(&headers(&[("param", "get_weather")]), body, &p).is_err());
    }
}
