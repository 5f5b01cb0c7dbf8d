//! The bytes that `arbitrary` (1.x) decodes to a given [`Input`], so that
//! seeds can be written as Rust values (`seeds.rs`). Integers are read
//! little-endian, `bool` from one byte's low bit, `Option` as a `bool` then
//! the value, an enum variant from a `u32` scaled to the variant count, a
//! `Vec` as a `true` byte before each element and a `false` after the last.
//! Strings are read with a length taken from the end of the input, which a
//! front-to-back writer cannot place: seeds use dictionary words instead.
//! `seeds.rs` checks that every seed decodes back to its value.

use super::input::*;

#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// The `u32` that the derived decoder maps to variant `index` of `count`.
    fn variant(&mut self, index: u64, count: u64) {
        let x = (index << 32).div_ceil(count);
        self.bytes(&u32::try_from(x).expect("a variant index").to_le_bytes());
    }
}

pub trait Encode {
    fn encode(&self, w: &mut Writer);
}

macro_rules! little_endian {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, w: &mut Writer) {
                w.bytes(&self.to_le_bytes());
            }
        }
    )*};
}
little_endian!(u8, u16, u32, u64, i8, i32, i64);

impl Encode for f64 {
    fn encode(&self, w: &mut Writer) {
        self.to_bits().encode(w);
    }
}

impl Encode for bool {
    fn encode(&self, w: &mut Writer) {
        u8::from(*self).encode(w);
    }
}

impl Encode for String {
    fn encode(&self, _: &mut Writer) {
        panic!("strings are decoded from the end of the input: use a dictionary word");
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, w: &mut Writer) {
        self.is_some().encode(w);
        if let Some(v) = self {
            v.encode(w);
        }
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, w: &mut Writer) {
        for v in self {
            true.encode(w);
            v.encode(w);
        }
        false.encode(w);
    }
}

impl<T: Encode> Encode for Box<T> {
    fn encode(&self, w: &mut Writer) {
        (**self).encode(w);
    }
}

impl<A: Encode, B: Encode> Encode for (A, B) {
    fn encode(&self, w: &mut Writer) {
        self.0.encode(w);
        self.1.encode(w);
    }
}

/// Encodes the variant index of `count`, then the given fields in order.
macro_rules! variant {
    ($w:expr, $index:expr, $count:expr $(, $field:expr)*) => {{
        $w.variant($index, $count);
        $($field.encode($w);)*
    }};
}

/// Encodes every field of a struct, in declaration order (the pattern
/// makes leaving one out a compile error; `seeds.rs` checks the order).
macro_rules! fields {
    ($w:expr, $s:expr, $T:ident { $($f:ident),* $(,)? }) => {{
        let $T { $($f),* } = $s;
        $($f.encode($w);)*
    }};
}

impl Encode for Word {
    fn encode(&self, w: &mut Writer) {
        match self {
            Word::Dict(i) => variant!(w, 0, 2, i),
            Word::Any(s) => variant!(w, 1, 2, s),
        }
    }
}

impl Encode for HeaderValue {
    fn encode(&self, w: &mut Writer) {
        match self {
            HeaderValue::Plain(v) => variant!(w, 0, 4, v),
            HeaderValue::Base64(v) => variant!(w, 1, 4, v),
            HeaderValue::Raw(b) => variant!(w, 2, 4, b),
            HeaderValue::Number(i) => variant!(w, 3, 4, i),
        }
    }
}

impl Encode for HttpMethod {
    fn encode(&self, w: &mut Writer) {
        match self {
            HttpMethod::Post => variant!(w, 0, 5),
            HttpMethod::Get => variant!(w, 1, 5),
            HttpMethod::Delete => variant!(w, 2, 5),
            HttpMethod::LowerPost => variant!(w, 3, 5),
            HttpMethod::Raw(b) => variant!(w, 4, 5, b),
        }
    }
}

impl Encode for ContentType {
    fn encode(&self, w: &mut Writer) {
        match self {
            ContentType::Json => variant!(w, 0, 10),
            ContentType::JsonCharset => variant!(w, 1, 10),
            ContentType::Upper => variant!(w, 2, 10),
            ContentType::JsonRpc => variant!(w, 3, 10),
            ContentType::PlusJson => variant!(w, 4, 10),
            ContentType::TextPlain => variant!(w, 5, 10),
            ContentType::FormUrlEncoded => variant!(w, 6, 10),
            ContentType::Missing => variant!(w, 7, 10),
            ContentType::Raw(b) => variant!(w, 8, 10, b),
            ContentType::OctetStream => variant!(w, 9, 10),
        }
    }
}

impl Encode for ContentEncoding {
    fn encode(&self, w: &mut Writer) {
        match self {
            ContentEncoding::Identity => variant!(w, 0, 5),
            ContentEncoding::Empty => variant!(w, 1, 5),
            ContentEncoding::Gzip => variant!(w, 2, 5),
            ContentEncoding::IdentityList => variant!(w, 3, 5),
            ContentEncoding::Raw(b) => variant!(w, 4, 5, b),
        }
    }
}

impl Encode for ContentLength {
    fn encode(&self, w: &mut Writer) {
        match self {
            ContentLength::Exact => variant!(w, 0, 4),
            ContentLength::Value(n) => variant!(w, 1, 4, n),
            ContentLength::Raw(b) => variant!(w, 2, 4, b),
            ContentLength::NearCap(d) => variant!(w, 3, 4, d),
        }
    }
}

impl Encode for Id {
    fn encode(&self, w: &mut Writer) {
        match self {
            Id::Int(i) => variant!(w, 0, 6, i),
            Id::Str(s) => variant!(w, 1, 6, s),
            Id::Null => variant!(w, 2, 6),
            Id::Float(f) => variant!(w, 3, 6, f),
            Id::Object => variant!(w, 4, 6),
            Id::Raw(s) => variant!(w, 5, 6, s),
        }
    }
}

impl Encode for ArgValue {
    fn encode(&self, w: &mut Writer) {
        match self {
            ArgValue::Word(v) => variant!(w, 0, 7, v),
            ArgValue::Int(i) => variant!(w, 1, 7, i),
            ArgValue::Float(f) => variant!(w, 2, 7, f),
            ArgValue::Bool(b) => variant!(w, 3, 7, b),
            ArgValue::Null => variant!(w, 4, 7),
            ArgValue::Array => variant!(w, 5, 7),
            ArgValue::Number(i) => variant!(w, 6, 7, i),
        }
    }
}

impl Encode for Arguments {
    fn encode(&self, w: &mut Writer) {
        fields!(
            w,
            self,
            Arguments {
                tool_name,
                parameters_tool_name,
                region,
                parameters_not_object
            }
        );
    }
}

impl Encode for Jsonrpc {
    fn encode(&self, w: &mut Writer) {
        match self {
            Jsonrpc::V2 => variant!(w, 0, 5),
            Jsonrpc::Absent => variant!(w, 1, 5),
            Jsonrpc::Str(v) => variant!(w, 2, 5, v),
            Jsonrpc::Number => variant!(w, 3, 5),
            Jsonrpc::Null => variant!(w, 4, 5),
        }
    }
}

impl Encode for Level {
    fn encode(&self, w: &mut Writer) {
        let i = match self {
            Level::Top => 0,
            Level::Params => 1,
            Level::Arguments => 2,
            Level::Meta => 3,
            Level::Parameters => 4,
        };
        variant!(w, i, 5);
    }
}

impl Encode for Spelling {
    fn encode(&self, w: &mut Writer) {
        let i = match self {
            Spelling::Exact => 0,
            Spelling::Upper => 1,
            Spelling::Capital => 2,
            Spelling::LongS => 3,
            Spelling::Kelvin => 4,
        };
        variant!(w, i, 5);
    }
}

impl Encode for ExtraValue {
    fn encode(&self, w: &mut Writer) {
        match self {
            ExtraValue::Word(v) => variant!(w, 0, 3, v),
            ExtraValue::Meta(v) => variant!(w, 1, 3, v),
            ExtraValue::Number(i) => variant!(w, 2, 3, i),
        }
    }
}

impl Encode for Extra {
    fn encode(&self, w: &mut Writer) {
        fields!(
            w,
            self,
            Extra {
                level,
                member,
                spelling,
                value
            }
        );
    }
}

impl Encode for Msg {
    fn encode(&self, w: &mut Writer) {
        fields!(
            w,
            self,
            Msg {
                jsonrpc,
                id,
                method,
                method_not_string,
                name,
                uri,
                arguments,
                meta_version,
                params_not_object,
                extras,
                rotate,
                escape
            }
        );
    }
}

impl Encode for BodyGen {
    fn encode(&self, w: &mut Writer) {
        match self {
            BodyGen::Raw(b) => variant!(w, 0, 3, b),
            BodyGen::Single(m) => variant!(w, 1, 3, m),
            BodyGen::Batch(list) => variant!(w, 2, 3, list),
        }
    }
}

impl Encode for Padding {
    fn encode(&self, w: &mut Writer) {
        match self {
            Padding::Few(n) => variant!(w, 0, 4, n),
            Padding::Many(n) => variant!(w, 1, 4, n),
            Padding::NearCap(d) => variant!(w, 2, 4, d),
            Padding::FormFeeds(n) => variant!(w, 3, 4, n),
        }
    }
}

impl Encode for Event {
    fn encode(&self, w: &mut Writer) {
        match self {
            Event::Chunk(n) => variant!(w, 0, 4, n),
            Event::Answer => variant!(w, 1, 4),
            Event::Stray(t) => variant!(w, 2, 4, t),
            Event::Chunks { count, size } => variant!(w, 3, 4, count, size),
        }
    }
}

impl Encode for End {
    fn encode(&self, w: &mut Writer) {
        let i = match self {
            End::LastChunk => 0,
            End::Trailers => 1,
            End::Open => 2,
        };
        variant!(w, i, 3);
    }
}

impl Encode for HeaderGen {
    fn encode(&self, w: &mut Writer) {
        fields!(
            w,
            self,
            HeaderGen {
                key,
                value,
                raw_value
            }
        );
    }
}

impl Encode for StatusGen {
    fn encode(&self, w: &mut Writer) {
        fields!(w, self, StatusGen { code, duration });
    }
}

impl Encode for RlsReply {
    fn encode(&self, w: &mut Writer) {
        match self {
            RlsReply::Ok {
                request_headers,
                response_headers,
            } => variant!(w, 0, 6, request_headers, response_headers),
            RlsReply::OverLimit {
                statuses,
                response_headers,
            } => variant!(w, 1, 6, statuses, response_headers),
            RlsReply::Grpc(s) => variant!(w, 2, 6, s),
            RlsReply::EmptyBody => variant!(w, 3, 6),
            RlsReply::Raw(b) => variant!(w, 4, 6, b),
            RlsReply::Code(c) => variant!(w, 5, 6, c),
        }
    }
}

impl Encode for FaultKind {
    fn encode(&self, w: &mut Writer) {
        let i = match self {
            FaultKind::Empty => 0,
            FaultKind::Error => 1,
        };
        variant!(w, i, 2);
    }
}

impl Encode for ReadFault {
    fn encode(&self, w: &mut Writer) {
        fields!(w, self, ReadFault { read, kind });
    }
}

impl Encode for Input {
    fn encode(&self, w: &mut Writer) {
        fields!(
            w,
            self,
            Input {
                config,
                method,
                content_type,
                protocol_version,
                mcp_method,
                mcp_name,
                param_tool_name,
                param_region,
                param_parameters,
                session_id,
                user,
                metadata_sub,
                content_length,
                content_encoding,
                repeated,
                padding,
                end_at_headers,
                body,
                events,
                end,
                dispatch_fails,
                read_fault,
                rls
            }
        );
    }
}
