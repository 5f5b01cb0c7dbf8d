//! The committed seeds of `request_flow` (`fuzz/seeds/request_flow/`),
//! written from Rust values: each is a request and the decision it must
//! get. `cargo test --lib` checks that every seed file is current, decodes
//! back to its value and gets its decision with every check passing;
//! `MCP_FUZZ_WRITE_SEEDS=1` rewrites the files.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use super::encode::{Encode, Writer};
use super::input::*;
use super::{decode, run, split, Decision, BODY_SEPARATOR};

/// A dictionary word, by its text.
fn w(text: &str) -> Word {
    let i = WORDS
        .iter()
        .position(|x| *x == text)
        .expect("a word of WORDS");
    Word::Dict(u8::try_from(i).expect("fewer than 256 words"))
}

/// A number literal of NUMBERS, by its text.
fn n(text: &str) -> u8 {
    let i = NUMBERS
        .iter()
        .position(|x| *x == text)
        .expect("a number of NUMBERS");
    u8::try_from(i).expect("fewer than 256 numbers")
}

fn plain(text: &str) -> Option<HeaderValue> {
    Some(HeaderValue::Plain(w(text)))
}

/// The input every field of which is zero: a JSON POST, default
/// configuration, body in one chunk, the service answering OK.
fn base() -> Input {
    decode(&[]).expect("an empty input decodes")
}

fn over_limit(seconds: i64) -> RlsReply {
    RlsReply::OverLimit {
        statuses: vec![StatusGen {
            code: 2,
            duration: Some((seconds, 0)),
        }],
        response_headers: vec![],
    }
}

/// A `tools/call` message with id 1.
fn call(tool: &str) -> Msg {
    Msg {
        method: Some(w("tools/call")),
        name: Some(w(tool)),
        id: Some(Id::Int(1)),
        ..msg()
    }
}

fn msg() -> Msg {
    Msg {
        jsonrpc: Jsonrpc::V2,
        id: None,
        method: None,
        method_not_string: false,
        name: None,
        uri: None,
        arguments: None,
        meta_version: None,
        params_not_object: false,
        extras: vec![],
        rotate: 0,
        escape: false,
    }
}

fn extra(level: Level, member: &str, spelling: Spelling, value: ExtraValue) -> Extra {
    let i = level
        .members()
        .iter()
        .position(|m| *m == member)
        .expect("a member of the level");
    Extra {
        level,
        member: u8::try_from(i).expect("few members"),
        spelling,
        value,
    }
}

fn args(region: Option<ArgValue>) -> Option<Arguments> {
    Some(Arguments {
        tool_name: None,
        parameters_tool_name: None,
        region,
        parameters_not_object: false,
    })
}

const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","arguments":{}}}"#;
const FAST_BODY: &str =
    r#"{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{"name":"search_docs"}}"#;
const BATCH: &str = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"a"}}},{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"b"}},{"jsonrpc":"2.0","method":"notifications/progress"}]"#;

const CALLED: Decision = Decision {
    called: true,
    reply: None,
};
const PASSED: Decision = Decision {
    called: false,
    reply: None,
};
const fn called_then(status: u32, code: i64) -> Decision {
    Decision {
        called: true,
        reply: Some((status, code)),
    }
}
const fn refused(status: u32, code: i64) -> Decision {
    Decision {
        called: false,
        reply: Some((status, code)),
    }
}

struct Seed {
    name: &'static str,
    input: Input,
    /// A body taken as is, after the separator (else the generated one).
    body: Option<String>,
    expect: Decision,
}

fn seed(name: &'static str, input: Input, body: Option<&str>, expect: Decision) -> Seed {
    Seed {
        name,
        input,
        body: body.map(str::to_owned),
        expect,
    }
}

/// A request on the header fast path (configuration 2 unless changed).
fn fast(rls: RlsReply, events: Vec<Event>) -> Input {
    Input {
        config: 2,
        protocol_version: plain("2026-07-28"),
        mcp_method: plain("tools/call"),
        mcp_name: plain("search_docs"),
        events,
        rls,
        ..base()
    }
}

fn sniffed(ct: ContentType) -> Input {
    Input {
        content_type: ct,
        ..base()
    }
}

fn single(m: Msg) -> BodyGen {
    BodyGen::Single(Box::new(m))
}

mod list;
mod messages;
use list::seeds;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds/request_flow")
}

fn bytes(s: &Seed) -> Vec<u8> {
    let mut w = Writer::default();
    s.input.encode(&mut w);
    let mut out = w.0;
    assert!(
        split(&out).1.is_none(),
        "{}: the control part holds the separator",
        s.name
    );
    if let Some(body) = &s.body {
        out.extend_from_slice(BODY_SEPARATOR);
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[test]
fn seeds_decode_to_their_inputs_and_get_their_decisions() {
    let mut wrong = Vec::new();
    for s in seeds() {
        let data = bytes(&s);
        let (control, body) = split(&data);
        let decoded = decode(control).expect("a seed decodes");
        assert_eq!(
            format!("{decoded:?}"),
            format!("{:?}", s.input),
            "{}: decodes to another input",
            s.name
        );
        let got = std::panic::catch_unwind(AssertUnwindSafe(|| run(&decoded, body)));
        match got {
            Ok(got) if got == s.expect => {}
            Ok(got) => wrong.push(format!("{}: {got:?}, expected {:?}", s.name, s.expect)),
            Err(_) => wrong.push(format!("{}: a check failed (above)", s.name)),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn seed_files_are_current() {
    let write = std::env::var_os("MCP_FUZZ_WRITE_SEEDS").is_some();
    let list = seeds();
    for s in &list {
        let path = dir().join(s.name);
        let data = bytes(s);
        if write {
            std::fs::write(&path, &data).expect("seed written");
        } else {
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == data,
                "{} is not current: run MCP_FUZZ_WRITE_SEEDS=1 cargo test --lib \
                 --no-default-features (in fuzz/)",
                path.display()
            );
        }
    }
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(dir()).expect("the seed directory") {
        let name = entry.expect("an entry").file_name();
        let name = name.to_string_lossy();
        if !list.iter().any(|s| s.name == name) {
            stale.push(name.into_owned());
        }
    }
    assert!(stale.is_empty(), "seed files no seed writes: {stale:?}");
}
