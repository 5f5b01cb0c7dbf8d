//! The request path's cost, natively: the body parser alone, and a request
//! from its headers to the rate-limit call (parse, descriptors, encoded
//! `RateLimitRequest`) through the public `Flow` API, with a host that
//! answers from memory. Bodies of 200 B to 1 MB: a `tools/call` whose
//! `arguments` hold the bulk, a batch of 10 such calls (MCP 2025-03-26) and
//! a call wrapped in the `call_tool` meta-tool. Throughput is body bytes.
//!
//! `make bench-micro` measures; `make unit` runs each benchmark once,
//! unmeasured (`cargo test --bench hot_path`, criterion's test mode).

// Setup fails loudly: a body or configuration the filter does not take as
// expected would measure the wrong path.
#![allow(clippy::panic)]

use std::hint::black_box;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mcp_ratelimit::config::Config;
use mcp_ratelimit::flow::{Counter, Flow, Host, Step};
use mcp_ratelimit::jsonrpc::{self, Target};

/// The plugin configuration of envoy/envoy.yaml (the filter's `value`):
/// the default descriptor, one per tool.
const CONFIG: &str = r#"{
  "domain": "mcp",
  "rls_cluster": "ratelimit",
  "timeout_ms": 100,
  "filter_state": true
}"#;

/// Body sizes of a single call (bytes) and their labels.
const SIZES: [(usize, &str); 4] = [
    (200, "200B"),
    (1024, "1KiB"),
    (64 * 1024, "64KiB"),
    (1_000_000, "1MB"),
];

/// Batch sizes: ten calls need more than 1 KiB.
const BATCH_SIZES: [(usize, &str); 3] =
    [(2 * 1024, "2KiB"), (64 * 1024, "64KiB"), (1_000_000, "1MB")];

/// The tools the calls of a batch go to.
const TOOLS: [&str; 5] = [
    "search_docs",
    "fetch_page",
    "summarize",
    "list_files",
    "run_query",
];

// -- Bodies -------------------------------------------------------------------

/// A small deterministic generator (xorshift64*): the same bodies every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        let i = self.below(list.len() as u64) as usize;
        list.get(i).copied().unwrap_or_default()
    }
}

/// Pieces of text as JSON string contents (escapes included): quotes,
/// backslashes, control characters, `\u` escapes with a surrogate pair,
/// raw UTF-8 and plain prose.
const TEXT: [&str; 12] = [
    "Configure the \\\"retry_policy\\\" on the route, not on the cluster.",
    "Paths such as C:\\\\Program Files\\\\envoy\\\\bin are passed as they are.",
    "line one\\nline two\\n\\tindented line three\\r\\n",
    "caf\\u00e9, na\\u00efve and r\\u00e9sum\\u00e9 are spelled with accents.",
    "Launch day \\ud83d\\ude80 brought 3x the usual traffic.",
    "Gr\u{f6}\u{df}e, \u{bd} cup, \u{201c}smart quotes\u{201d} and \u{2014} dashes in raw UTF-8.",
    "Never echo <script>alert(\\\"x\\\")<\\/script> back to the client.",
    "The rate-limit service answers within the configured timeout.",
    "Each tool has its own bucket; a meta-tool spends the bucket of the tool it calls.",
    "A denied call gets HTTP 429 with a JSON-RPC error and a Retry-After header.",
    "Tabs\\tseparate\\tthese\\tcolumns\\tin the exported table.",
    "The response is streamed as server-sent events when the client accepts them.",
];

const WORDS: [&str; 12] = [
    "envoy", "wasm", "mcp", "limits", "gateway", "tools", "cluster", "route", "quota", "tokens",
    "schema", "audit",
];

const AUTHORS: [&str; 5] = [
    "Ana Su\\u00e1rez",
    "Bj\u{f6}rn Lindqvist",
    "Chen Wei",
    "D\\u00e9sir\\u00e9e O'Neil",
    "Emeka Obi",
];

/// Sentences of [`TEXT`], space-separated.
fn prose(rng: &mut Rng, min: u64, max: u64) -> String {
    let n = min + rng.below(max - min + 1);
    (0..n)
        .map(|_| rng.pick(&TEXT))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One search result: nested objects and arrays, numbers, booleans, null.
fn document(rng: &mut Rng, i: usize) -> String {
    let tags = (0..1 + rng.below(4))
        .map(|_| format!("\"{}\"", rng.pick(&WORDS)))
        .collect::<Vec<_>>()
        .join(",");
    let sections = (0..1 + rng.below(3))
        .map(|s| {
            format!(
                r#"{{"heading":"{} {s}","level":{},"body":"{}","anchors":[{},{}]}}"#,
                rng.pick(&WORDS),
                2 + rng.below(3),
                prose(rng, 1, 5),
                rng.below(10_000),
                rng.below(10_000),
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let author = rng.pick(&AUTHORS);
    let email = rng.pick(&WORDS);
    format!(
        concat!(
            r#"{{"id":"doc-{i:05}","title":"{title} and {title2}","path":"docs/{dir}/{i}.md","#,
            r#""score":0.{score:03},"tags":[{tags}],"sections":[{sections}],"#,
            r#""metadata":{{"author":{{"name":"{author}","email":"{email}@example.com"}},"#,
            r#""updated":"2025-{month:02}-{day:02}T10:{minute:02}:00Z","draft":{draft},"#,
            r#""views":{views},"license":null}}}}"#
        ),
        i = i,
        title = rng.pick(&WORDS),
        title2 = rng.pick(&WORDS),
        dir = rng.pick(&WORDS),
        score = rng.below(1000),
        tags = tags,
        sections = sections,
        author = author,
        email = email,
        month = 1 + rng.below(12),
        day = 1 + rng.below(28),
        minute = rng.below(60),
        draft = rng.below(2) == 0,
        views = rng.below(1_000_000),
    )
}

/// A `tools/call` of exactly `size` bytes: `tool` called directly, or
/// through `call_tool` (`arguments.tool_name`, `arguments.parameters`).
/// Search results fill the arguments, and a plain `note` the last bytes.
fn tools_call(rng: &mut Rng, id: usize, tool: &str, wrapped: bool, size: usize) -> String {
    let (head, tail) = if wrapped {
        (
            format!(
                concat!(
                    r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"#,
                    r#""name":"call_tool","arguments":{{"tool_name":"{}","parameters":{{"#
                ),
                id, tool
            ),
            "\"}}}}",
        )
    } else {
        (
            format!(
                concat!(
                    r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"#,
                    r#""name":"{}","arguments":{{"#
                ),
                id, tool
            ),
            "\"}}}",
        )
    };
    let mut out = head;
    out.push_str(r#""query":"retry \"policy\"","limit":10,"documents":["#);
    let end = r#"],"note":""#;
    let room = |out: &str, extra: usize| out.len() + extra + end.len() + tail.len() <= size;
    // Results while they fit (a few tries for the last one), then the note.
    let mut n = 0;
    let mut misses = 0;
    while misses < 8 {
        let doc = document(rng, n);
        if !room(&out, doc.len() + usize::from(n > 0)) {
            misses += 1;
            continue;
        }
        if n > 0 {
            out.push(',');
        }
        out.push_str(&doc);
        n += 1;
    }
    out.push_str(end);
    let Some(fill) = size.checked_sub(out.len() + tail.len()) else {
        panic!("a call needs more than {size} bytes");
    };
    let words = "lorem ipsum dolor ".repeat(fill / 18 + 1);
    out.push_str(words.get(..fill).unwrap_or_default());
    out.push_str(tail);
    out
}

/// A batch of ten calls, `size` bytes in all.
fn batch(rng: &mut Rng, size: usize) -> String {
    let each = (size - 2 - 9) / 10;
    let calls: Vec<String> = (0..10)
        .map(|i| {
            let last = if i == 9 { size - 2 - 9 - each * 10 } else { 0 };
            let tool = TOOLS.get(i % TOOLS.len()).copied().unwrap_or_default();
            tools_call(rng, i + 1, tool, false, each + last)
        })
        .collect();
    format!("[{}]", calls.join(","))
}

// -- Host ---------------------------------------------------------------------

/// A host that answers from a fixed list of request headers.
struct FakeHost {
    headers: Vec<(&'static str, Vec<u8>)>,
}

impl FakeHost {
    fn new(body_len: usize, protocol_version: &str) -> Self {
        let headers = [
            (":method", "POST".to_owned()),
            (":path", "/mcp".to_owned()),
            (":authority", "mcp.example.com".to_owned()),
            ("content-type", "application/json".to_owned()),
            ("content-length", body_len.to_string()),
            ("accept", "application/json, text/event-stream".to_owned()),
            ("mcp-protocol-version", protocol_version.to_owned()),
            (
                "mcp-session-id",
                "5f1c0e4a-9d2b-4c7e-8a13-6b0f2d9e7c41".to_owned(),
            ),
        ];
        FakeHost {
            headers: headers
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect(),
        }
    }
}

impl Host for FakeHost {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }

    fn metadata(&self, _namespace: &str, _path: &[String]) -> Option<Vec<u8>> {
        None
    }

    fn count(&self, counter: Counter) {
        black_box(counter);
    }

    fn any_repeated(&self, _names: &[String]) -> bool {
        false
    }
}

/// One request, from its headers to the step after its body is read: the
/// rate-limit call for every body here.
fn request(cfg: &Rc<Config>, host: &FakeHost, body: &[u8]) -> Step {
    let mut flow = Flow::new(Rc::clone(cfg));
    let step = flow.on_request_headers(false, host);
    let step = match step {
        Step::Pause | Step::Continue(_) => flow.on_request_body(body.len(), true, host),
        other => other,
    };
    match step {
        Step::ReadBody { start, len } => match body.get(start..start.saturating_add(len)) {
            Some(bytes) => flow.on_body(bytes, host),
            None => flow.on_body_unreadable(host),
        },
        other => other,
    }
}

// -- Cases --------------------------------------------------------------------

struct Case {
    name: &'static str,
    size: &'static str,
    body: Vec<u8>,
    host: FakeHost,
    /// The tool the body's (first) call resolves to.
    tool: &'static str,
}

fn cases() -> Vec<Case> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::new();
    for (size, label) in SIZES {
        let body = tools_call(&mut rng, 1, "search_docs", false, size);
        out.push(case("tools_call", label, body, "2025-06-18", "search_docs"));
    }
    for (size, label) in BATCH_SIZES {
        let body = batch(&mut rng, size);
        out.push(case("batch10", label, body, "2025-03-26", "search_docs"));
    }
    for (size, label) in SIZES {
        let body = tools_call(&mut rng, 1, "search_docs", true, size);
        out.push(case("call_tool", label, body, "2025-06-18", "search_docs"));
    }
    out
}

fn case(
    name: &'static str,
    size: &'static str,
    body: String,
    protocol_version: &str,
    tool: &'static str,
) -> Case {
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&body) {
        panic!("{name}/{size}: not JSON: {e}");
    }
    let host = FakeHost::new(body.len(), protocol_version);
    Case {
        name,
        size,
        body: body.into_bytes(),
        host,
        tool,
    }
}

fn config() -> Rc<Config> {
    match Config::parse(CONFIG.as_bytes()) {
        Ok(cfg) => Rc::new(cfg),
        Err(e) => panic!("{e}"),
    }
}

/// Each case takes the path it is meant to measure.
fn check(cfg: &Rc<Config>, case: &Case) {
    let label = format!("{}/{}", case.name, case.size);
    match jsonrpc::parse(&case.body, &cfg.spec()) {
        Ok(body) => match body.requests().first().map(|r| &r.target) {
            Some(Some(Target::Tool(t))) if t == case.tool => {}
            other => panic!("{label}: parsed to {other:?}"),
        },
        Err(e) => panic!("{label}: parse error {e:?}"),
    }
    match request(cfg, &case.host, &case.body) {
        Step::Dispatch(..) => {}
        other => panic!("{label}: the flow ended in {other:?}, not a rate-limit call"),
    }
}

fn hot_path(c: &mut Criterion) {
    let cfg = config();
    let cases = cases();
    for case in &cases {
        check(&cfg, case);
    }
    let spec = cfg.spec();

    let mut parse = c.benchmark_group("parse");
    for case in &cases {
        parse.throughput(Throughput::Bytes(case.body.len() as u64));
        parse.bench_with_input(
            BenchmarkId::new(case.name, case.size),
            &case.body,
            |b, body| b.iter(|| jsonrpc::parse(black_box(body), &spec)),
        );
    }
    parse.finish();

    let mut flow = c.benchmark_group("flow");
    for case in &cases {
        flow.throughput(Throughput::Bytes(case.body.len() as u64));
        flow.bench_with_input(
            BenchmarkId::new(case.name, case.size),
            &case.body,
            |b, body| b.iter(|| request(&cfg, &case.host, black_box(body))),
        );
    }
    flow.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
