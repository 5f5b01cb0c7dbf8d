//! The `envoy.service.ratelimit.v3` codec: a zero-copy encoder for
//! `RateLimitRequest` and a decoder turning `RateLimitResponse` bytes into a
//! verdict. Field numbers follow `envoy/service/ratelimit/v3/rls.proto` and
//! `envoy/extensions/common/ratelimit/v3/ratelimit.proto`; the hand-declared
//! prost messages below pin them (tests encode with both and compare).

/// gRPC service and method of the rate-limit service.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// `RateLimitResponse.Code`.
pub const CODE_OK: i32 = 1;
pub const CODE_OVER_LIMIT: i32 = 2;

/// One descriptor to send: its entries and how many hits it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor<'a> {
    pub entries: Vec<(&'a str, std::borrow::Cow<'a, str>)>,
    /// Hits this descriptor counts (a batch of k identical calls gives k).
    pub hits: u64,
}

/// Encodes field 1 (`domain`) of `RateLimitRequest`; done once per config.
pub fn encode_domain(domain: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(domain.len() + 6);
    put_bytes(&mut out, 1, domain.as_bytes());
    out
}

/// Encodes a `RateLimitRequest` from the pre-encoded domain and the
/// descriptors. Per-descriptor `hits_addend` is sent only when a descriptor
/// stands for more than one hit; the request-level `hits_addend` is left at 0
/// (which the service reads as 1).
pub fn encode_request(encoded_domain: &[u8], descriptors: &[Descriptor<'_>]) -> Vec<u8> {
    let mut size = encoded_domain.len();
    for d in descriptors {
        let n = descriptor_len(&d.entries, d.hits);
        size += 1 + varint_len(n as u64) + n;
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(encoded_domain);
    for d in descriptors {
        put_descriptor(&mut out, d, d.hits);
    }
    out
}

/// Appends field 2 (`descriptors`) of a `RateLimitRequest`: `d`'s entries,
/// with `hits` as its hits.
pub fn put_descriptor(out: &mut Vec<u8>, d: &Descriptor<'_>, hits: u64) {
    put_key(out, 2, WIRE_LEN);
    put_varint(out, descriptor_len(&d.entries, hits) as u64);
    for (k, v) in &d.entries {
        put_key(out, 1, WIRE_LEN);
        put_varint(out, entry_len(k, v) as u64);
        put_bytes(out, 1, k.as_bytes());
        put_bytes(out, 2, v.as_bytes());
    }
    if hits != 1 {
        // google.protobuf.UInt64Value { uint64 value = 1; }
        put_key(out, 3, WIRE_LEN);
        put_varint(out, 1 + varint_len(hits) as u64);
        put_key(out, 1, WIRE_VARINT);
        put_varint(out, hits);
    }
}

const WIRE_VARINT: u8 = 0;
const WIRE_LEN: u8 = 2;

fn entry_len(k: &str, v: &str) -> usize {
    field_len(k.len()) + field_len(v.len())
}

fn descriptor_len(entries: &[(&str, std::borrow::Cow<'_, str>)], hits: u64) -> usize {
    let mut n = 0;
    for (k, v) in entries {
        let e = entry_len(k, v);
        n += 1 + varint_len(e as u64) + e;
    }
    if hits != 1 {
        let inner = 1 + varint_len(hits);
        n += 1 + varint_len(inner as u64) + inner;
    }
    n
}

/// Size of a length-delimited field with a one-byte key; empty strings are
/// omitted, as proto3 does.
fn field_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        1 + varint_len(len as u64) + len
    }
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u8, wire: u8) {
    out.push((field << 3) | wire);
}

fn put_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Hand-declared RLS v3 messages (the subset the filter reads or tests).
pub mod pb {
    /// `envoy.service.ratelimit.v3.RateLimitRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitRequest {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(message, repeated, tag = "2")]
        pub descriptors: Vec<RateLimitDescriptor>,
        #[prost(uint32, tag = "3")]
        pub hits_addend: u32,
    }

    /// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitDescriptor {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
        #[prost(message, optional, tag = "3")]
        pub hits_addend: Option<UInt64Value>,
    }

    /// `RateLimitDescriptor.Entry`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `google.protobuf.UInt64Value`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UInt64Value {
        #[prost(uint64, tag = "1")]
        pub value: u64,
    }

    /// `envoy.service.ratelimit.v3.RateLimitResponse` (fields 5-7 skipped).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitResponse {
        #[prost(int32, tag = "1")]
        pub overall_code: i32,
        #[prost(message, repeated, tag = "2")]
        pub statuses: Vec<DescriptorStatus>,
        #[prost(message, repeated, tag = "3")]
        pub response_headers_to_add: Vec<HeaderValue>,
        #[prost(message, repeated, tag = "4")]
        pub request_headers_to_add: Vec<HeaderValue>,
    }

    /// `RateLimitResponse.DescriptorStatus`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DescriptorStatus {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(message, optional, tag = "2")]
        pub current_limit: Option<RateLimit>,
        #[prost(uint32, tag = "3")]
        pub limit_remaining: u32,
        #[prost(message, optional, tag = "4")]
        pub duration_until_reset: Option<Duration>,
    }

    /// `RateLimitResponse.RateLimit`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimit {
        #[prost(uint32, tag = "1")]
        pub requests_per_unit: u32,
        #[prost(int32, tag = "2")]
        pub unit: i32,
        #[prost(string, tag = "3")]
        pub name: String,
    }

    /// `google.protobuf.Duration`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    /// `envoy.config.core.v3.HeaderValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HeaderValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
        #[prost(bytes = "vec", tag = "3")]
        pub raw_value: Vec<u8>,
    }
}

/// Headers carried by an RLS reply.
pub type Headers = Vec<(String, String)>;

/// What the rate-limit service decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within limits: headers to add to the upstream request and to the
    /// response.
    Ok {
        request_headers: Headers,
        response_headers: Headers,
        /// The shadow descriptors (by position) the service found over
        /// their limits.
        shadow_over: Vec<usize>,
        /// Each descriptor's status, when [`Reading::statuses`] asks.
        statuses: Vec<Status>,
    },
    /// Over a limit: seconds until the longest over-limit window of a
    /// descriptor that is not shadow resets (at least 1) and headers for
    /// the denial.
    OverLimit {
        retry_after: u64,
        /// The same reset in milliseconds, rounded up.
        retry_after_ms: u64,
        response_headers: Headers,
        shadow_over: Vec<usize>,
        /// The position of the first descriptor that denied, when the
        /// statuses line up with the descriptors sent.
        denied_by: Option<usize>,
        /// Each descriptor's status, when [`Reading::statuses`] asks.
        statuses: Vec<Status>,
    },
}

/// One descriptor's status in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// OVER_LIMIT.
    pub over: bool,
    /// When its window resets, if the service said.
    pub reset: Option<crate::local::Reset>,
}

/// Why an RLS reply could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum RlsError {
    /// Non-zero gRPC status (14 for unreachable or timed out).
    Grpc(u32),
    /// The reply body was missing or not a `RateLimitResponse`.
    Undecodable,
    /// `overall_code` was UNKNOWN or out of range.
    UnknownCode(i32),
}

/// How to read a reply.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading<'a> {
    /// For each descriptor sent, whether its OVER_LIMIT may not deny
    /// (empty: none is shadow). When the statuses do not line up with the
    /// descriptors sent, every OVER_LIMIT counts.
    pub shadow: &'a [bool],
    /// Add the draft-03 `x-ratelimit-*` headers to the response headers.
    pub ratelimit_headers: bool,
    /// For each descriptor sent, whether its OVER_LIMIT may not deny
    /// because the request has already been admitted for it (a lease
    /// renewal on the side); not counted as shadow.
    pub spare: &'a [bool],
    /// Return each descriptor's status in the verdict.
    pub statuses: bool,
}

/// Turns a reply body into a verdict.
pub fn decode_response(bytes: &[u8], reading: Reading<'_>) -> Result<Verdict, RlsError> {
    let shadow = reading.shadow;
    let resp = wire::response(bytes).ok_or(RlsError::Undecodable)?;
    let mut response_headers = headers(resp.response_headers_to_add);
    if reading.ratelimit_headers {
        let aligned = !shadow.is_empty() && resp.statuses.len() == shadow.len();
        let counted = resp
            .statuses
            .iter()
            .enumerate()
            .filter(|(i, _)| !(aligned && shadow.get(*i).copied().unwrap_or(false)))
            .map(|(_, s)| s);
        response_headers.extend(draft03_headers(counted));
    }
    let aligned = !shadow.is_empty() && resp.statuses.len() == shadow.len();
    let is_shadow = |i: usize| aligned && shadow.get(i).copied().unwrap_or(false);
    let spare = reading.spare;
    let is_spare =
        |i: usize| resp.statuses.len() == spare.len() && spare.get(i).copied().unwrap_or(false);
    let over = |s: &&pb::DescriptorStatus| s.code == CODE_OVER_LIMIT;
    let statuses: Vec<Status> = if reading.statuses {
        resp.statuses
            .iter()
            .map(|s| Status {
                over: over(&s),
                reset: s
                    .duration_until_reset
                    .as_ref()
                    .filter(|d| d.seconds > 0 || d.nanos > 0)
                    .map(|d| crate::local::Reset {
                        ms: ceil_millis(d),
                        whole_seconds: d.nanos == 0,
                    }),
            })
            .collect()
    } else {
        Vec::new()
    };
    let shadow_over: Vec<usize> = resp
        .statuses
        .iter()
        .enumerate()
        .filter(|(i, s)| is_shadow(*i) && over(s))
        .map(|(i, _)| i)
        .collect();
    match resp.overall_code {
        CODE_OK => Ok(Verdict::Ok {
            request_headers: headers(resp.request_headers_to_add),
            response_headers,
            shadow_over,
            statuses,
        }),
        CODE_OVER_LIMIT => {
            let denying_at: Vec<usize> = (0..resp.statuses.len())
                .filter(|i| {
                    !is_shadow(*i)
                        && !is_spare(*i)
                        && resp.statuses.get(*i).is_some_and(|s| over(&s))
                })
                .collect();
            let denying: Vec<&pb::DescriptorStatus> = denying_at
                .iter()
                .filter_map(|i| resp.statuses.get(*i))
                .collect();
            let excused = (aligned && !shadow_over.is_empty())
                || (0..resp.statuses.len())
                    .any(|i| is_spare(i) && resp.statuses.get(i).is_some_and(|s| over(&s)));
            if excused && denying.is_empty() {
                // Only shadow descriptors, or renewals of a lease the
                // request has already spent from, are over their limits.
                return Ok(Verdict::Ok {
                    request_headers: headers(resp.request_headers_to_add),
                    response_headers,
                    shadow_over,
                    statuses,
                });
            }
            let longest = denying
                .iter()
                .filter_map(|s| s.duration_until_reset.as_ref())
                .max_by_key(|d| (d.seconds, d.nanos));
            let retry_after = longest.map_or(0, ceil_seconds).max(1);
            let retry_after_ms = longest.map_or(0, ceil_millis).max(1);
            let lined_up = resp.statuses.len() == shadow.len();
            Ok(Verdict::OverLimit {
                retry_after,
                retry_after_ms,
                response_headers,
                shadow_over,
                denied_by: denying_at.first().copied().filter(|_| lined_up),
                statuses,
            })
        }
        other => Err(RlsError::UnknownCode(other)),
    }
}

/// A hand-written `RateLimitResponse` decoder with prost's rules: what
/// `pb::RateLimitResponse::decode` refuses is refused (bad varints and
/// keys, wrong wire types, lengths past the end, strings that are not
/// UTF-8, unbalanced groups, nesting past prost's recursion limit), and
/// what it accepts gives the same message. It avoids prost's generic
/// decoding code in the module.
mod wire {
    use super::pb;

    /// prost's `RECURSION_LIMIT`.
    const LIMIT: u32 = 100;

    const VARINT: u8 = 0;
    const LEN: u8 = 2;

    /// A LEB128 varint of at most 10 bytes that fits in 64 bits.
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return (i < 9 || byte < 2).then_some(value);
            }
        }
        None
    }

    /// A field key: its tag (not 0) and wire type (0 to 5).
    fn key(b: &mut &[u8]) -> Option<(u32, u8)> {
        let key = u32::try_from(varint(b)?).ok()?;
        let wire = (key & 7) as u8;
        (wire <= 5 && key >> 3 != 0).then_some((key >> 3, wire))
    }

    /// `n` bytes taken from the front of `b`.
    fn take<'a>(b: &mut &'a [u8], n: u64) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok()?;
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }

    /// A length-delimited field's bytes.
    fn delimited<'a>(b: &mut &'a [u8], wire: u8) -> Option<&'a [u8]> {
        if wire != LEN {
            return None;
        }
        let len = varint(b)?;
        take(b, len)
    }

    /// A varint field's value.
    fn scalar(b: &mut &[u8], wire: u8) -> Option<u64> {
        if wire != VARINT {
            return None;
        }
        varint(b)
    }

    fn string(b: &mut &[u8], wire: u8) -> Option<String> {
        String::from_utf8(delimited(b, wire)?.to_vec()).ok()
    }

    /// Skips an unknown field (prost's `skip_field`); `depth` is what is
    /// left of the recursion limit.
    fn skip(b: &mut &[u8], wire: u8, tag: u32, depth: u32) -> Option<()> {
        if depth == 0 {
            return None;
        }
        let len = match wire {
            0 => varint(b).map(|_| 0)?,
            1 => 8,
            2 => varint(b)?,
            3 => loop {
                let (inner, inner_wire) = key(b)?;
                if inner_wire == 4 {
                    if inner != tag {
                        return None;
                    }
                    break 0;
                }
                skip(b, inner_wire, inner, depth - 1)?;
            },
            5 => 4,
            _ => return None,
        };
        take(b, len).map(|_| ())
    }

    /// Reads the fields of one message: `field` handles the known tags
    /// (`Some(false)`: unknown, skipped).
    fn fields(
        mut b: &[u8],
        depth: u32,
        mut field: impl FnMut(u32, u8, &mut &[u8]) -> Option<bool>,
    ) -> Option<()> {
        while !b.is_empty() {
            let (tag, wire) = key(&mut b)?;
            if !field(tag, wire, &mut b)? {
                skip(&mut b, wire, tag, depth)?;
            }
        }
        Some(())
    }

    pub(super) fn response(bytes: &[u8]) -> Option<pb::RateLimitResponse> {
        let mut r = pb::RateLimitResponse::default();
        fields(bytes, LIMIT, |tag, wire, b| {
            match tag {
                1 => r.overall_code = scalar(b, wire)? as i32,
                2 => r.statuses.push(status(delimited(b, wire)?, LIMIT - 1)?),
                3 => r.response_headers_to_add.push(header(delimited(b, wire)?)?),
                4 => r.request_headers_to_add.push(header(delimited(b, wire)?)?),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(r)
    }

    fn status(bytes: &[u8], depth: u32) -> Option<pb::DescriptorStatus> {
        let mut s = pb::DescriptorStatus::default();
        fields(bytes, depth, |tag, wire, b| {
            match tag {
                1 => s.code = scalar(b, wire)? as i32,
                2 => {
                    let limit = s.current_limit.get_or_insert_with(Default::default);
                    fields(delimited(b, wire)?, depth - 1, |tag, wire, b| {
                        match tag {
                            1 => limit.requests_per_unit = scalar(b, wire)? as u32,
                            2 => limit.unit = scalar(b, wire)? as i32,
                            3 => limit.name = string(b, wire)?,
                            _ => return Some(false),
                        }
                        Some(true)
                    })?;
                }
                3 => s.limit_remaining = scalar(b, wire)? as u32,
                4 => {
                    let d = s.duration_until_reset.get_or_insert_with(Default::default);
                    fields(delimited(b, wire)?, depth - 1, |tag, wire, b| {
                        match tag {
                            1 => d.seconds = scalar(b, wire)? as i64,
                            2 => d.nanos = scalar(b, wire)? as i32,
                            _ => return Some(false),
                        }
                        Some(true)
                    })?;
                }
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(s)
    }

    fn header(bytes: &[u8]) -> Option<pb::HeaderValue> {
        let mut h = pb::HeaderValue::default();
        fields(bytes, LIMIT - 1, |tag, wire, b| {
            match tag {
                1 => h.key = string(b, wire)?,
                2 => h.value = string(b, wire)?,
                3 => h.raw_value = delimited(b, wire)?.to_vec(),
                _ => return Some(false),
            }
            Some(true)
        })?;
        Some(h)
    }
}

/// The draft-03 headers Envoy's ratelimit filter adds with
/// `enable_x_ratelimit_headers: DRAFT_VERSION_03`, from the statuses that
/// carry a limit: the one with the fewest hits remaining (the first of
/// equals) gives `x-ratelimit-limit`'s first value, `x-ratelimit-remaining`
/// and `x-ratelimit-reset` (whole seconds); each gives a quota policy
/// `, <limit>;w=<window>[;name="<name>"]` when its unit has a window.
fn draft03_headers<'a>(statuses: impl Iterator<Item = &'a pb::DescriptorStatus>) -> Headers {
    let mut closest: Option<(&pb::DescriptorStatus, &pb::RateLimit)> = None;
    let mut policies = String::new();
    for s in statuses {
        let Some(limit) = s.current_limit.as_ref() else {
            continue;
        };
        if closest.is_none_or(|(c, _)| s.limit_remaining < c.limit_remaining) {
            closest = Some((s, limit));
        }
        let window: u64 = match limit.unit {
            1 => 1,
            2 => 60,
            3 => 3600,
            4 => 86_400,
            5 => 30 * 86_400,
            6 => 365 * 86_400,
            _ => 0,
        };
        if window > 0 {
            policies.push_str(&format!(", {};w={window}", limit.requests_per_unit));
            let quotable = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
            if !limit.name.is_empty() && limit.name.bytes().all(quotable) {
                policies.push_str(&format!(";name=\"{}\"", limit.name));
            }
        }
    }
    let Some((s, limit)) = closest else {
        return Vec::new();
    };
    let reset = s.duration_until_reset.as_ref().map_or(0, |d| d.seconds);
    vec![
        (
            "x-ratelimit-limit".to_owned(),
            format!("{}{policies}", limit.requests_per_unit),
        ),
        (
            "x-ratelimit-remaining".to_owned(),
            s.limit_remaining.to_string(),
        ),
        ("x-ratelimit-reset".to_owned(), reset.to_string()),
    ]
}

fn ceil_millis(d: &pb::Duration) -> u64 {
    let s = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u64::try_from(d.nanos).unwrap_or(0);
    s.saturating_mul(1000)
        .saturating_add(nanos.div_ceil(1_000_000))
}

fn ceil_seconds(d: &pb::Duration) -> u64 {
    let s = u64::try_from(d.seconds).unwrap_or(0);
    if d.nanos > 0 {
        s.saturating_add(1)
    } else {
        s
    }
}

/// Keeps only headers that are safe to hand to the host: a token name and a
/// value without control characters (`raw_value` when `value` is empty).
fn headers(list: Vec<pb::HeaderValue>) -> Headers {
    let mut out = Vec::with_capacity(list.len());
    for h in list {
        let value = if h.value.is_empty() {
            match String::from_utf8(h.raw_value) {
                Ok(v) => v,
                Err(_) => continue,
            }
        } else {
            h.value
        };
        let name_ok = !h.key.is_empty()
            && h.key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let value_ok = value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if name_ok && value_ok {
            out.push((h.key.to_ascii_lowercase(), value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::borrow::Cow;

    fn desc<'a>(entries: &[(&'a str, &'a str)], hits: u64) -> Descriptor<'a> {
        Descriptor {
            entries: entries
                .iter()
                .map(|(k, v)| (*k, Cow::Borrowed(*v)))
                .collect(),
            hits,
        }
    }

    fn reference(domain: &str, ds: &[Descriptor<'_>]) -> Vec<u8> {
        pb::RateLimitRequest {
            domain: domain.into(),
            descriptors: ds
                .iter()
                .map(|d| pb::RateLimitDescriptor {
                    entries: d
                        .entries
                        .iter()
                        .map(|(k, v)| pb::Entry {
                            key: (*k).into(),
                            value: v.to_string(),
                        })
                        .collect(),
                    hits_addend: (d.hits != 1).then_some(pb::UInt64Value { value: d.hits }),
                })
                .collect(),
            hits_addend: 0,
        }
        .encode_to_vec()
    }

    #[test]
    fn encoder_matches_prost() {
        let long = "x".repeat(300);
        let cases: Vec<Vec<Descriptor<'_>>> = vec![
            vec![desc(&[("tool", "search_docs")], 1)],
            vec![
                desc(&[("user", "alice"), ("tool", "search_docs")], 1),
                desc(&[("generic_key", "mcp")], 1),
            ],
            vec![
                desc(&[("tool", "a")], 3),
                desc(&[("tool", &long)], 1_000_000),
            ],
            vec![desc(&[("k", "")], 1)],
            vec![],
        ];
        for ds in &cases {
            let domain = encode_domain("mcp");
            assert_eq!(encode_request(&domain, ds), reference("mcp", ds), "{ds:?}");
        }
    }

    #[test]
    fn encoding_is_pinned() {
        // domain "mcp", one descriptor {tool: t}: bytes written out by hand
        // from the .proto field numbers.
        let got = encode_request(&encode_domain("mcp"), &[desc(&[("tool", "t")], 1)]);
        let want = [
            0x0a, 3, b'm', b'c', b'p', // 1: domain
            0x12, 11, // 2: descriptors
            0x0a, 9, // 1: entries
            0x0a, 4, b't', b'o', b'o', b'l', // 1: key
            0x12, 1, b't', // 2: value
        ];
        assert_eq!(got, want);
        let got = encode_request(&encode_domain("d"), &[desc(&[("k", "v")], 2)]);
        let decoded = pb::RateLimitRequest::decode(got.as_slice()).unwrap();
        assert_eq!(
            decoded.descriptors[0].hits_addend,
            Some(pb::UInt64Value { value: 2 })
        );
    }

    fn status(code: i32, secs: i64, nanos: i32) -> pb::DescriptorStatus {
        pb::DescriptorStatus {
            code,
            current_limit: Some(pb::RateLimit {
                requests_per_unit: 5,
                unit: 2,
                name: String::new(),
            }),
            limit_remaining: 0,
            duration_until_reset: Some(pb::Duration {
                seconds: secs,
                nanos,
            }),
        }
    }

    fn hv(k: &str, v: &str) -> pb::HeaderValue {
        pb::HeaderValue {
            key: k.into(),
            value: v.into(),
            raw_value: vec![],
        }
    }

    #[test]
    fn ok_reply() {
        let bytes = pb::RateLimitResponse {
            overall_code: CODE_OK,
            statuses: vec![status(CODE_OK, 10, 0)],
            response_headers_to_add: vec![hv("X-RateLimit-Remaining", "4")],
            request_headers_to_add: vec![hv("x-checked", "yes")],
        }
        .encode_to_vec();
        assert_eq!(
            decode_response(&bytes, Reading::default()),
            Ok(Verdict::Ok {
                request_headers: vec![("x-checked".into(), "yes".into())],
                response_headers: vec![("x-ratelimit-remaining".into(), "4".into())],
                shadow_over: vec![],
                statuses: vec![],
            })
        );
    }

    #[test]
    fn over_limit_retry_after_is_the_longest_over_limit_reset_rounded_up() {
        let bytes = pb::RateLimitResponse {
            overall_code: CODE_OVER_LIMIT,
            statuses: vec![
                status(CODE_OVER_LIMIT, 12, 1),
                status(CODE_OK, 3000, 0),
                status(CODE_OVER_LIMIT, 7, 0),
            ],
            response_headers_to_add: vec![
                hv("x-a", "1"),
                hv("bad name", "x"),
                hv("x-b", "line\r\nbreak"),
            ],
            request_headers_to_add: vec![],
        }
        .encode_to_vec();
        assert_eq!(
            decode_response(&bytes, Reading::default()),
            Ok(Verdict::OverLimit {
                retry_after: 13,
                retry_after_ms: 12_001,
                response_headers: vec![("x-a".into(), "1".into())],
                shadow_over: vec![],
                denied_by: None,
                statuses: vec![],
            })
        );
        // Each status, when asked: whole seconds or not.
        let reading = Reading {
            statuses: true,
            ..Reading::default()
        };
        let Ok(Verdict::OverLimit { statuses, .. }) = decode_response(&bytes, reading) else {
            panic!("not over limit");
        };
        let reset = |ms, whole_seconds| Some(crate::local::Reset { ms, whole_seconds });
        assert_eq!(
            statuses,
            vec![
                Status {
                    over: true,
                    reset: reset(12_001, false)
                },
                Status {
                    over: false,
                    reset: reset(3_000_000, true)
                },
                Status {
                    over: true,
                    reset: reset(7000, true)
                },
            ]
        );
    }

    #[test]
    fn a_lease_renewal_on_the_side_cannot_deny() {
        let over = |spare: &[bool]| {
            let bytes = pb::RateLimitResponse {
                overall_code: CODE_OVER_LIMIT,
                statuses: vec![status(CODE_OK, 5, 0), status(CODE_OVER_LIMIT, 5, 0)],
                ..Default::default()
            }
            .encode_to_vec();
            let reading = Reading {
                spare,
                ..Reading::default()
            };
            matches!(
                decode_response(&bytes, reading),
                Ok(Verdict::OverLimit { .. })
            )
        };
        assert!(over(&[]));
        assert!(over(&[true, false]));
        assert!(!over(&[false, true]));
        // Statuses that do not line up with what was sent deny.
        assert!(over(&[false, true, false]));
        // A service that says OVER_LIMIT with no descriptor over denies.
        let bytes = pb::RateLimitResponse {
            overall_code: CODE_OVER_LIMIT,
            statuses: vec![status(CODE_OK, 5, 0), status(CODE_OK, 5, 0)],
            ..Default::default()
        }
        .encode_to_vec();
        let reading = Reading {
            spare: &[false, true],
            ..Reading::default()
        };
        assert!(matches!(
            decode_response(&bytes, reading),
            Ok(Verdict::OverLimit { .. })
        ));
    }

    #[test]
    fn retry_after_is_at_least_one() {
        for statuses in [
            vec![],
            vec![status(CODE_OVER_LIMIT, 0, 0)],
            vec![status(CODE_OVER_LIMIT, -5, 0)],
        ] {
            let bytes = pb::RateLimitResponse {
                overall_code: CODE_OVER_LIMIT,
                statuses,
                ..Default::default()
            }
            .encode_to_vec();
            assert!(matches!(
                decode_response(&bytes, Reading::default()),
                Ok(Verdict::OverLimit { retry_after: 1, .. })
            ));
        }
    }

    #[test]
    fn raw_value_headers() {
        let bytes = pb::RateLimitResponse {
            overall_code: CODE_OVER_LIMIT,
            response_headers_to_add: vec![pb::HeaderValue {
                key: "x-raw".into(),
                value: String::new(),
                raw_value: b"7".to_vec(),
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let Ok(Verdict::OverLimit {
            response_headers, ..
        }) = decode_response(&bytes, Reading::default())
        else {
            panic!()
        };
        assert_eq!(response_headers, vec![("x-raw".to_owned(), "7".to_owned())]);
    }

    #[test]
    fn unusable_replies_are_errors() {
        assert_eq!(
            decode_response(&[], Reading::default()),
            Err(RlsError::UnknownCode(0))
        );
        assert_eq!(
            decode_response(&[0xff, 0xff, 0xff], Reading::default()),
            Err(RlsError::Undecodable)
        );
        let bytes = pb::RateLimitResponse {
            overall_code: 9,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            decode_response(&bytes, Reading::default()),
            Err(RlsError::UnknownCode(9))
        );
    }

    fn limited(
        code: i32,
        limit: (u32, i32, &str),
        remaining: u32,
        reset: i64,
    ) -> pb::DescriptorStatus {
        pb::DescriptorStatus {
            code,
            current_limit: Some(pb::RateLimit {
                requests_per_unit: limit.0,
                unit: limit.1,
                name: limit.2.into(),
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(pb::Duration {
                seconds: reset,
                nanos: 900_000_000,
            }),
        }
    }

    fn draft03(statuses: Vec<pb::DescriptorStatus>, shadow: &[bool]) -> Headers {
        let bytes = pb::RateLimitResponse {
            overall_code: CODE_OK,
            statuses,
            ..Default::default()
        }
        .encode_to_vec();
        let reading = Reading {
            shadow,
            ratelimit_headers: true,
            ..Reading::default()
        };
        match decode_response(&bytes, reading) {
            Ok(Verdict::Ok {
                response_headers, ..
            }) => response_headers,
            other => panic!("{other:?}"),
        }
    }

    fn h(list: &[(&str, &str)]) -> Headers {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn draft03_headers_as_envoy_computes_them() {
        // The status with the fewest hits left gives the values; each
        // limit with a window adds its quota policy, named when it is.
        let got = draft03(
            vec![
                limited(CODE_OK, (1, 2, "first"), 2, 3),
                limited(CODE_OK, (4, 3, "second"), 5, 6),
            ],
            &[],
        );
        assert_eq!(
            got,
            h(&[
                (
                    "x-ratelimit-limit",
                    r#"1, 1;w=60;name="first", 4;w=3600;name="second""#
                ),
                ("x-ratelimit-remaining", "2"),
                ("x-ratelimit-reset", "3"),
            ])
        );
        // The first of equals wins; a status without a limit is skipped; a
        // unit without a window (WEEK, UNKNOWN) adds no policy; a name that
        // cannot be quoted is left out.
        let mut no_limit = limited(CODE_OK, (9, 2, ""), 0, 1);
        no_limit.current_limit = None;
        let got = draft03(
            vec![
                no_limit,
                limited(CODE_OK, (10, 7, "week"), 1, 100),
                limited(CODE_OK, (20, 4, "bad\"name"), 1, 200),
            ],
            &[],
        );
        assert_eq!(
            got,
            h(&[
                ("x-ratelimit-limit", "10, 20;w=86400"),
                ("x-ratelimit-remaining", "1"),
                ("x-ratelimit-reset", "100"),
            ])
        );
        // Nothing limited: no headers.
        let mut bare = limited(CODE_OK, (1, 2, ""), 0, 0);
        bare.current_limit = None;
        assert!(draft03(vec![bare], &[]).is_empty());
        // A shadow descriptor's status is left out.
        let got = draft03(
            vec![
                limited(CODE_OK, (3, 2, ""), 0, 9),
                limited(CODE_OK, (60, 2, ""), 59, 9),
            ],
            &[true, false],
        );
        assert_eq!(
            got[0],
            ("x-ratelimit-limit".to_owned(), "60, 60;w=60".to_owned())
        );
        assert_eq!(got[1].1, "59");
    }
}
