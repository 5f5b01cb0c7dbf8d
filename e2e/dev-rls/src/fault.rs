//! Fault injection, for testing how a client of the service behaves when the service
//! misbehaves.
//!
//! A [`Fault`] set with [`crate::DevRls::set_fault`] (or the admin `POST /fault?mode=...`)
//! changes how every following `ShouldRateLimit` call over gRPC is answered, until it is
//! set back to [`Fault::None`]. Calls made in-process with
//! [`crate::DevRls::should_rate_limit`] are never faulted.
//!
//! | mode | answer |
//! | --- | --- |
//! | `none` | normal decisions |
//! | `garbage` | gRPC status OK with a message that is not a `RateLimitResponse` (see [`GARBAGE`]); successive calls rotate through the payloads |
//! | `garbage:<i>` | always payload `i` of [`GARBAGE`] |
//! | `unavailable` | gRPC status UNAVAILABLE (14) |
//! | `internal` | gRPC status INTERNAL (13) |
//! | `slow:<ms>` | sleeps `ms` milliseconds, then decides as usual |
//! | `unknown_code` | a `RateLimitResponse` whose `overall_code` is UNKNOWN (0) |
//! | `unknown_code:<n>` | a `RateLimitResponse` whose `overall_code` is `n` (e.g. 9, out of range) |
//!
//! Faulted answers (all but `slow`) do not count hits and are not recorded as requests;
//! they are counted by [`crate::DevRls::faulted`].

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body as _, Frame};
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::codegen::{BoxFuture, Bytes, Service};
use tonic::server::NamedService;

use crate::DevRls;

/// Longest delay `slow:<ms>` accepts (one minute).
pub const MAX_SLOW_MS: u64 = 60_000;

/// Payloads sent by [`Fault::Garbage`] as the single message of a gRPC reply with status
/// OK. None of them is a valid protobuf encoding of a `RateLimitResponse`: a decoder must
/// refuse each one, including those that start with a valid `overall_code`.
pub const GARBAGE: &[(&str, &[u8])] = &[
    (
        "field 1 (overall_code, a varint) sent length-delimited",
        &[0x0a, 0x03, b'x', b'y', b'z'],
    ),
    ("field 1 key with its varint missing", &[0x08]),
    (
        "varint longer than 10 bytes",
        &[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
    ),
    (
        "overall_code OK, then a statuses entry cut short",
        &[0x08, 0x01, 0x12, 0x05, 0x08],
    ),
    (
        "overall_code OVER_LIMIT, then a key cut short",
        &[0x08, 0x02, 0xff],
    ),
    ("field 1 with wire type 7 (invalid)", &[0x0f, 0x01]),
    ("field number 0", &[0x00, 0x01]),
    (
        "random bytes",
        &[
            0xde, 0xad, 0xbe, 0xef, 0x13, 0x37, 0xc0, 0xff, 0xee, 0x42, 0x99, 0x05,
        ],
    ),
];

/// How the gRPC service answers; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Normal decisions.
    #[default]
    None,
    /// Status OK with a payload from [`GARBAGE`]: `None` rotates through them, `Some(i)`
    /// always sends payload `i`.
    Garbage(Option<usize>),
    /// gRPC status UNAVAILABLE.
    Unavailable,
    /// gRPC status INTERNAL.
    Internal,
    /// Sleep this long, then decide as usual.
    Slow(Duration),
    /// A response with this `overall_code` (0 is UNKNOWN) and no statuses.
    UnknownCode(i32),
}

/// A fault mode that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadFault(pub String);

impl fmt::Display for BadFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadFault {}

impl FromStr for Fault {
    type Err = BadFault;

    fn from_str(s: &str) -> Result<Self, BadFault> {
        let (mode, arg) = match s.split_once(':') {
            Some((mode, arg)) => (mode, Some(arg)),
            None => (s, None),
        };
        let number = |what: &str| -> Result<u64, BadFault> {
            arg.and_then(|a| a.parse::<u64>().ok()).ok_or_else(|| {
                BadFault(format!("fault mode '{s}': {what} needs a number after ':'"))
            })
        };
        let fault = match (mode, arg) {
            ("none", None) => Fault::None,
            ("garbage", None) => Fault::Garbage(None),
            ("garbage", Some(_)) => {
                let i = usize::try_from(number("garbage")?).unwrap_or(usize::MAX);
                if i >= GARBAGE.len() {
                    return Err(BadFault(format!(
                        "fault mode '{s}': there are {} garbage payloads (0..{})",
                        GARBAGE.len(),
                        GARBAGE.len() - 1
                    )));
                }
                Fault::Garbage(Some(i))
            }
            ("unavailable", None) => Fault::Unavailable,
            ("internal", None) => Fault::Internal,
            ("slow", Some(_)) => {
                let ms = number("slow")?;
                if ms > MAX_SLOW_MS {
                    return Err(BadFault(format!(
                        "fault mode '{s}': at most {MAX_SLOW_MS} ms"
                    )));
                }
                Fault::Slow(Duration::from_millis(ms))
            }
            ("unknown_code", None) => Fault::UnknownCode(0),
            ("unknown_code", Some(_)) => {
                let code = i32::try_from(number("unknown_code")?)
                    .map_err(|_| BadFault(format!("fault mode '{s}': code out of range")))?;
                if code == 1 || code == 2 {
                    return Err(BadFault(format!(
                        "fault mode '{s}': {code} is a known code (OK or OVER_LIMIT)"
                    )));
                }
                Fault::UnknownCode(code)
            }
            ("slow", None) => return Err(BadFault(format!("fault mode '{s}': slow needs :<ms>"))),
            _ => {
                return Err(BadFault(format!(
                    "unknown fault mode '{s}': expected none, garbage[:<i>], unavailable, \
                     internal, slow:<ms> or unknown_code[:<n>]"
                )))
            }
        };
        Ok(fault)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => f.write_str("none"),
            Fault::Garbage(None) => f.write_str("garbage"),
            Fault::Garbage(Some(i)) => write!(f, "garbage:{i}"),
            Fault::Unavailable => f.write_str("unavailable"),
            Fault::Internal => f.write_str("internal"),
            Fault::Slow(d) => write!(f, "slow:{}", d.as_millis()),
            Fault::UnknownCode(0) => f.write_str("unknown_code"),
            Fault::UnknownCode(n) => write!(f, "unknown_code:{n}"),
        }
    }
}

/// The gRPC service of [`DevRls::grpc_service`]: the tonic `RateLimitService` server
/// behind a layer that answers [`Fault::Garbage`] itself, at the HTTP/2 level, since a
/// typed service can only send valid messages. Every other call goes to the inner service,
/// which applies the other faults.
#[derive(Clone, Debug)]
pub struct FaultInjection<S> {
    inner: S,
    rls: DevRls,
}

impl<S> FaultInjection<S> {
    pub(crate) fn new(inner: S, rls: DevRls) -> Self {
        FaultInjection { inner, rls }
    }
}

impl<S: NamedService> NamedService for FaultInjection<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for FaultInjection<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Fault::Garbage(pinned) = self.rls.fault() else {
            return Box::pin(self.inner.call(request));
        };
        let index = self.rls.next_garbage(pinned);
        Box::pin(async move {
            // Read the whole request first, as a real service would.
            let mut body = request.into_body();
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                if frame.is_err() {
                    break;
                }
            }
            Ok(garbage_response(index))
        })
    }
}

/// A gRPC reply with status OK whose one message is payload `index` of [`GARBAGE`].
fn garbage_response(index: usize) -> http::Response<Body> {
    let payload = GARBAGE
        .get(index % GARBAGE.len())
        .map_or(&[][..], |(_, p)| p);
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut framed = Vec::with_capacity(payload.len() + 5);
    framed.push(0); // not compressed
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(payload);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = http::Response::new(Body::new(OneMessage {
        data: Some(Bytes::from(framed)),
        trailers: Some(trailers),
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}

/// A response body of one data frame, then trailers.
struct OneMessage {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    #[test]
    fn modes_parse_and_print_back() {
        let cases = [
            ("none", Fault::None),
            ("garbage", Fault::Garbage(None)),
            ("garbage:3", Fault::Garbage(Some(3))),
            ("unavailable", Fault::Unavailable),
            ("internal", Fault::Internal),
            ("slow:250", Fault::Slow(Duration::from_millis(250))),
            ("unknown_code", Fault::UnknownCode(0)),
            ("unknown_code:9", Fault::UnknownCode(9)),
        ];
        for (text, fault) in cases {
            assert_eq!(text.parse::<Fault>(), Ok(fault), "{text}");
            assert_eq!(fault.to_string(), text);
        }
    }

    #[test]
    fn bad_modes_are_refused_with_a_reason() {
        for (text, reason) in [
            ("", "unknown fault mode"),
            ("boom", "unknown fault mode"),
            ("slow", "needs :<ms>"),
            ("slow:abc", "needs a number"),
            ("slow:60001", "at most"),
            ("garbage:99", "garbage payloads"),
            ("unknown_code:1", "known code"),
            ("unknown_code:2", "known code"),
            ("unavailable:1", "unknown fault mode"),
            ("none:0", "unknown fault mode"),
        ] {
            let err = text.parse::<Fault>().unwrap_err();
            assert!(err.0.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn garbage_reply_is_one_framed_message_with_status_ok() {
        let response = garbage_response(0);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let mut body = response.into_body();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) else {
            panic!("no data frame");
        };
        let data = frame.into_data().unwrap();
        assert_eq!(&data[..], &[0, 0, 0, 0, 5, 0x0a, 0x03, b'x', b'y', b'z']);
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) else {
            panic!("no trailers");
        };
        assert_eq!(frame.into_trailers().unwrap()["grpc-status"], "0");
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(None)
        ));
    }
}
