//! The pure part of the ABI: status codes, the numbers of the host's enums,
//! and the byte layouts of header maps and property paths.

use std::fmt;

/// A host call that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// The host answered with this status (never 0, `Ok`). Kept as the raw
    /// number: a host may answer with a status this crate does not name.
    Status(u32),
    /// The host answered `Ok`, but what it returned could not be decoded.
    Malformed,
}

/// The statuses of ABI 0.2.1, by number.
const STATUS_NAMES: [&str; 13] = [
    "Ok",
    "NotFound",
    "BadArgument",
    "SerializationFailure",
    "ParseFailure",
    "BadExpression",
    "InvalidMemoryAccess",
    "Empty",
    "CasMismatch",
    "ResultMismatch",
    "InternalFailure",
    "BrokenConnection",
    "Unimplemented",
];

/// `Ok`.
pub const OK: u32 = 0;
/// `NotFound`: the header, property or buffer does not exist.
pub const NOT_FOUND: u32 = 1;
/// `CasMismatch`: shared data changed since it was read.
pub const CAS_MISMATCH: u32 = 8;
/// `Unimplemented`: what the host stubs of native builds answer.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub const UNIMPLEMENTED: u32 = 12;

/// The name of a status, if the ABI defines it.
pub fn status_name(status: u32) -> Option<&'static str> {
    STATUS_NAMES.get(usize::try_from(status).ok()?).copied()
}

/// A host status as a result.
pub fn check(status: u32) -> Result<(), HostError> {
    match status {
        OK => Ok(()),
        other => Err(HostError::Status(other)),
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Status(s) => match status_name(*s) {
                Some(name) => write!(f, "host status {name} ({s})"),
                None => write!(f, "host status {s}"),
            },
            HostError::Malformed => f.write_str("malformed answer from the host"),
        }
    }
}

impl std::error::Error for HostError {}

/// What a filter callback tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go on to the next filter.
    Continue = 0,
    /// Stop iteration until the filter resumes the stream.
    Pause = 1,
}

/// The header maps a filter reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
}

/// The buffers a filter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    RequestBody = 0,
    ResponseBody = 1,
    /// The message of a gRPC call's reply.
    GrpcReceive = 5,
    VmConfiguration = 6,
    PluginConfiguration = 7,
}

/// Envoy's log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// Kinds of metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// The `log` crate's filter for a log level the host reports. Levels above
/// `Error` (`Critical`, or a number the ABI does not define) keep only what
/// the panic hook writes, which does not go through `log`.
pub fn level_filter(host_level: u32) -> log::LevelFilter {
    match host_level {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        4 => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    }
}

/// The host's level for a `log` record.
pub fn host_level(level: log::Level) -> LogLevel {
    match level {
        log::Level::Trace => LogLevel::Trace,
        log::Level::Debug => LogLevel::Debug,
        log::Level::Info => LogLevel::Info,
        log::Level::Warn => LogLevel::Warn,
        log::Level::Error => LogLevel::Error,
    }
}

/// A length as the u32 of the wire. Lengths come from slices in the
/// module's memory, which on wasm32 is at most 4 GiB.
fn wire_len(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes()
}

/// Serializes header pairs: the number of pairs (u32), then each pair's
/// key and value lengths (u32 each), then each key and each value followed
/// by a NUL. Integers are little-endian.
pub fn encode_map(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let data: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 8 + data);
    out.extend_from_slice(&wire_len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&wire_len(k.len()));
        out.extend_from_slice(&wire_len(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// A header pair as owned bytes (header values need not be UTF-8).
pub type Pair = (Vec<u8>, Vec<u8>);

/// Reads a little-endian u32 at `at`.
fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(b)).ok()
}

/// Parses what [`encode_map`] writes; `None` if the bytes do not follow
/// that layout. No bytes at all is the empty map.
pub fn decode_map(bytes: &[u8]) -> Option<Vec<Pair>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    // Each pair takes at least 10 bytes: a bound before allocating.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    let mut data = 4 + count * 8;
    let mut take = |len: usize| -> Option<Vec<u8>> {
        let end = data.checked_add(len)?;
        let field = bytes.get(data..end)?.to_vec();
        // Each field is followed by a NUL.
        if bytes.get(end) != Some(&0) {
            return None;
        }
        data = end + 1;
        Some(field)
    };
    for i in 0..count {
        let key_len = read_u32(bytes, 4 + i * 8)?;
        let value_len = read_u32(bytes, 8 + i * 8)?;
        let key = take(key_len)?;
        let value = take(value_len)?;
        pairs.push((key, value));
    }
    Some(pairs)
}

/// Serializes a property path: its parts separated by NULs.
pub fn encode_path(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &[(&[u8], &[u8])] = &[
        (b":method", b"POST"),
        (b"content-type", b"application/json"),
        (b"x-empty", b""),
        (b"x-bytes", b"\xff\x00\xfe"),
    ];

    #[test]
    fn map_layout_is_the_abi_one() {
        let bytes = encode_map(&[(b"ab", b"c"), (b"", b"xyz")]);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            2, 0, 0, 0,
            2, 0, 0, 0, 1, 0, 0, 0,
            0, 0, 0, 0, 3, 0, 0, 0,
            b'a', b'b', 0, b'c', 0,
            0, b'x', b'y', b'z', 0,
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn map_round_trip() {
        let bytes = encode_map(MAP);
        let pairs = decode_map(&bytes).unwrap();
        let back: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(back, MAP);
        assert_eq!(encode_map(&back), bytes);
    }

    #[test]
    fn empty_maps() {
        assert_eq!(encode_map(&[]), [0, 0, 0, 0]);
        assert_eq!(decode_map(&[]), Some(vec![]));
        assert_eq!(decode_map(&[0, 0, 0, 0]), Some(vec![]));
    }

    #[test]
    fn malformed_maps_are_refused_not_panicked_on() {
        let good = encode_map(MAP);
        // Every truncation of a good map.
        for n in 1..good.len() {
            assert_eq!(decode_map(&good[..n]), None, "truncated to {n}");
        }
        // A count far larger than the bytes.
        assert_eq!(decode_map(&[0xff, 0xff, 0xff, 0xff, 0, 0]), None);
        // A length that runs past the end, and one that would overflow.
        let mut long = encode_map(&[(b"k", b"v")]);
        long[8] = 200;
        assert_eq!(decode_map(&long), None);
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_map(&long), None);
        // A field not followed by its NUL.
        let mut unterminated = encode_map(&[(b"k", b"v")]);
        unterminated[13] = b'x';
        assert_eq!(decode_map(&unterminated), None);
    }

    #[test]
    fn every_byte_string_survives() {
        for b in 0..=255u8 {
            let v = [b, b'x', b];
            let bytes = encode_map(&[(&v, &v)]);
            assert_eq!(decode_map(&bytes), Some(vec![(v.to_vec(), v.to_vec())]));
        }
    }

    #[test]
    fn property_paths() {
        assert_eq!(encode_path(&[]), b"");
        assert_eq!(encode_path(&["metadata"]), b"metadata");
        assert_eq!(
            encode_path(&["metadata", "filter_metadata", "ns", "key"]),
            b"metadata\0filter_metadata\0ns\0key"
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(check(0), Ok(()));
        for s in 1..=12 {
            assert_eq!(check(s), Err(HostError::Status(s)));
        }
        assert_eq!(check(4242), Err(HostError::Status(4242)));
        assert_eq!(status_name(NOT_FOUND), Some("NotFound"));
        assert_eq!(status_name(UNIMPLEMENTED), Some("Unimplemented"));
        assert_eq!(status_name(13), None);
        assert_eq!(status_name(u32::MAX), None);
        assert_eq!(
            HostError::Status(2).to_string(),
            "host status BadArgument (2)"
        );
        assert_eq!(
            HostError::Status(11).to_string(),
            "host status BrokenConnection (11)"
        );
        assert_eq!(HostError::Status(99).to_string(), "host status 99");
        assert_eq!(
            HostError::Malformed.to_string(),
            "malformed answer from the host"
        );
    }

    #[test]
    fn log_levels() {
        use log::LevelFilter as F;
        let expected = [
            F::Trace,
            F::Debug,
            F::Info,
            F::Warn,
            F::Error,
            F::Off,
            F::Off,
        ];
        for (n, want) in expected.iter().enumerate() {
            assert_eq!(level_filter(n as u32), *want);
        }
        assert_eq!(level_filter(u32::MAX), F::Off);
        for level in [
            log::Level::Trace,
            log::Level::Debug,
            log::Level::Info,
            log::Level::Warn,
            log::Level::Error,
        ] {
            // A record is logged at the host level that lets it through.
            assert_eq!(
                level_filter(host_level(level) as u32),
                level.to_level_filter()
            );
        }
    }
}
