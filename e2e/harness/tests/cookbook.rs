//! The README's cookbook, run as written: every recipe of its `## Cookbook`
//! section (a `### <title>` with one ```json plugin configuration and one
//! ```yaml limits file) is loaded into the real Envoy in front of dev-rls
//! (clock frozen at `CLOCK_AT`, a minute boundary, so counts and
//! `Retry-After` are exact) and the stand-in MCP server, and held to what
//! its text says.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use e2e::fixtures::{
    assert_missing_identity, assert_rate_limited, tools_call, tools_call_with, DAY_LEFT,
};
use e2e::stack::Stack;
use e2e::{DevRls, Paths, Response, CLOCK_AT};
use mcp_ratelimit::config::Config;
use serde_json::{json, Value};

/// The recipes, in the README's order. A recipe that is renamed, added or
/// removed must be changed here too, with its test.
const RECIPES: [&str; 7] = [
    "Per tool",
    "Per user",
    "Per user per tool",
    "Cost-weighted tenant budget",
    "Daily quota",
    "Shadow rollout",
    "Bounded tool names",
];

/// `Retry-After` of a minute limit at the frozen clock.
const MINUTE_LEFT: u64 = 60 - CLOCK_AT % 60;

// ---------------------------------------------------------------------------
// Reading the cookbook

struct Recipe {
    title: String,
    plugin: String,
    limits: String,
}

/// The recipes of README.md's `## Cookbook` section, in order.
fn cookbook() -> Vec<Recipe> {
    let path = Paths::discover().root.join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let start = readme
        .find("\n## Cookbook\n")
        .expect("README.md has no `## Cookbook` section");
    let body = &readme[start + "\n## Cookbook\n".len()..];
    let end = body
        .find("\n## ")
        .expect("the cookbook is the last section");
    assert!(
        body[end..].starts_with("\n## Loading it into Envoy\n"),
        "the cookbook is not right before `## Loading it into Envoy`"
    );
    body[..end]
        .split("\n### ")
        .skip(1)
        .map(parse_recipe)
        .collect()
}

/// One `### ` subsection: its title line, then its text.
fn parse_recipe(section: &str) -> Recipe {
    let (title, text) = section.split_once('\n').unwrap_or((section, ""));
    let blocks = |lang: &str| -> Vec<String> {
        let mut found = Vec::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim_end() == format!("```{lang}") {
                let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
                found.push(block.join("\n") + "\n");
            }
        }
        found
    };
    let one = |lang: &str| -> String {
        let mut found = blocks(lang);
        assert_eq!(
            found.len(),
            1,
            "recipe {title:?} must have exactly one ```{lang} block"
        );
        found.remove(0)
    };
    Recipe {
        title: title.trim().to_owned(),
        plugin: one("json"),
        limits: one("yaml"),
    }
}

/// The recipe with this title.
fn recipe(title: &str) -> Recipe {
    cookbook()
        .into_iter()
        .find(|r| r.title == title)
        .unwrap_or_else(|| panic!("README.md's cookbook has no recipe {title:?}"))
}

/// The recipe's plugin configuration with `edit` applied (what its text
/// says to change).
fn edited(plugin: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(plugin).unwrap();
    edit(&mut v);
    v.to_string()
}

// ---------------------------------------------------------------------------
// Requests and what they get

fn call(s: &Stack, id: u64, tool: &str, headers: &[(&str, &str)]) -> Response {
    s.post_with(&tools_call(id, tool), headers)
}

fn via_call_tool(s: &Stack, id: u64, tool: &str) -> Response {
    let args = format!(r#"{{"tool_name":"{tool}","parameters":{{}}}}"#);
    s.post(&tools_call_with(id, "call_tool", &args))
}

fn method(s: &Stack, id: u64, method: &str, headers: &[(&str, &str)]) -> Response {
    s.post_with(
        &format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{{}}}}"#),
        headers,
    )
}

/// Passed on: the MCP server's own answer (a result, or its error for a
/// tool it does not have), with the request's id.
fn assert_passed(resp: &Response, id: u64) {
    assert_eq!(resp.status, 200, "id {id}: {resp:?}");
    let v = resp.json();
    assert_eq!(v["id"], id, "{resp:?}");
    let server_error = v["error"]["code"] == -32602
        && v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Unknown tool: "));
    assert!(v.get("result").is_some() || server_error, "{resp:?}");
}

/// The exact denial, with the request's id and `retry` seconds.
fn assert_denied(resp: &Response, id: u64, retry: u64) {
    assert_rate_limited(resp, id, retry);
}

/// A refusal for a missing identity, naming the descriptor.
fn assert_missing(resp: &Response, id: u64, descriptor: &str) {
    assert_missing_identity(resp, id, descriptor);
}

/// The descriptors of the `i`th rate-limit call: entries and hits_addend.
fn sent(s: &Stack, i: usize) -> Value {
    s.rls_requests()[i]["descriptors"].clone()
}

/// One descriptor as the service received it.
fn desc(entries: &[(&str, &str)], hits: Option<u64>) -> Value {
    let entries: Vec<Value> = entries
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    json!({"entries": entries, "hits_addend": hits})
}

/// No rate-limit call failed or timed out (which would have let a call
/// through unchecked).
fn assert_no_errors(s: &Stack) {
    assert_eq!(s.stat("error"), 0, "a rate-limit call failed");
    assert_eq!(s.stat("failure_mode_allowed"), 0);
}

/// The recipe's stack. These tests read what the service receives for
/// every request, repeated denials included, so the over-limit cache (which
/// answers those itself, with the same denial) is off; its own tests are
/// in `overlimit_cache.rs`.
fn start(r: &Recipe) -> Stack {
    let plugin = edited(&r.plugin, |v| v["over_limit_cache"] = json!(false));
    Stack::start(&plugin, &r.limits)
}

// ---------------------------------------------------------------------------
// The cookbook as a whole

#[test]
fn the_cookbook_holds_exactly_its_recipes() {
    let titles: Vec<String> = cookbook().into_iter().map(|r| r.title).collect();
    assert_eq!(titles, RECIPES);
}

/// Each plugin configuration is accepted by the filter, names the service
/// as `envoy/envoy.yaml` does and sets its timeout; each limits file is
/// accepted by dev-rls, for domain `mcp`.
#[test]
fn every_recipe_is_accepted_by_the_filter_and_the_service() {
    let dir = e2e::test_dir("cookbook").unwrap();
    for r in cookbook() {
        let config = Config::parse(r.plugin.as_bytes())
            .unwrap_or_else(|e| panic!("{}: the filter refuses its configuration: {e}", r.title));
        assert_eq!(config.domain, "mcp", "{}", r.title);
        assert_eq!(config.rls_cluster, "ratelimit", "{}", r.title);
        let set: Value = serde_json::from_str(&r.plugin).unwrap();
        assert_eq!(set["timeout_ms"], 250, "{}: timeout_ms", r.title);

        let path = dir
            .path()
            .join(format!("{}.yaml", r.title.replace(' ', "_")));
        std::fs::write(&path, &r.limits).unwrap();
        let checked = DevRls::check(&path)
            .unwrap_or_else(|e| panic!("{}: dev-rls refuses its limits: {e}", r.title));
        assert_eq!(checked, "ok", "{}", r.title);
        let limits: Value = serde_norway::from_str(&r.limits).unwrap();
        assert_eq!(limits["domain"], "mcp", "{}", r.title);
    }
}

// ---------------------------------------------------------------------------
// Each recipe

#[test]
fn per_tool() {
    let s = start(&recipe("Per tool"));
    assert_passed(&call(&s, 1, "generate_report", &[]), 1);
    assert_passed(&call(&s, 2, "generate_report", &[]), 2);
    assert_denied(&call(&s, 3, "generate_report", &[]), 3, MINUTE_LEFT);
    assert_denied(&via_call_tool(&s, 4, "generate_report"), 4, MINUTE_LEFT);
    for id in 5..=9 {
        assert_passed(&call(&s, id, "search_docs", &[]), id);
    }
    assert_denied(&call(&s, 10, "search_docs", &[]), 10, MINUTE_LEFT);
    assert_passed(&call(&s, 11, "get_weather", &[]), 11);
    // Never counted: no rate-limit call for these.
    assert_passed(&method(&s, 12, "initialize", &[]), 12);
    assert_passed(&method(&s, 13, "tools/list", &[]), 13);
    assert_eq!(s.rls_requests().len(), 11);
    assert_eq!(
        sent(&s, 3),
        json!([desc(&[("tool", "generate_report")], None)])
    );
    assert_eq!(s.up.calls("generate_report").unwrap(), 2);
    assert_eq!(s.up.calls("search_docs").unwrap(), 5);
    assert_eq!(s.up.calls("get_weather").unwrap(), 1);
    assert_eq!(s.stat("over_limit"), 3);
    assert_no_errors(&s);
}

#[test]
fn per_user() {
    let s = start(&recipe("Per user"));
    let alice = [("x-user-id", "alice")];
    assert_passed(&call(&s, 1, "search_docs", &alice), 1);
    assert_passed(&call(&s, 2, "get_weather", &alice), 2);
    assert_passed(&call(&s, 3, "generate_report", &alice), 3);
    assert_denied(&call(&s, 4, "search_docs", &alice), 4, MINUTE_LEFT);
    // Other methods are sent, and match no limit.
    assert_passed(&method(&s, 5, "tools/list", &alice), 5);
    assert_eq!(
        sent(&s, 4),
        json!([desc(&[("user", "alice"), ("method", "tools/list")], None)])
    );
    assert_passed(&call(&s, 6, "search_docs", &[("x-user-id", "bob")]), 6);
    assert_eq!(
        sent(&s, 5),
        json!([desc(&[("user", "bob"), ("method", "tools/call")], None)])
    );
    // Without the header, every request is refused, `initialize` included,
    // before the service is asked.
    let asked = s.rls_requests().len();
    assert_missing(&call(&s, 7, "search_docs", &[]), 7, "per_user");
    assert_missing(&method(&s, 8, "initialize", &[]), 8, "per_user");
    assert_eq!(s.rls_requests().len(), asked);
    assert_eq!(s.stat("missing_source"), 2);
    assert_eq!(s.up.calls("search_docs").unwrap(), 2);
    assert_eq!(s.up.requests().unwrap(), 5);
    assert_no_errors(&s);
}

#[test]
fn per_user_per_tool() {
    let s = start(&recipe("Per user per tool"));
    let alice = [("x-user-id", "alice")];
    let bob = [("x-user-id", "bob")];
    assert_passed(&call(&s, 1, "generate_report", &alice), 1);
    assert_denied(&call(&s, 2, "generate_report", &alice), 2, MINUTE_LEFT);
    for id in 3..=5 {
        assert_passed(&call(&s, id, "search_docs", &alice), id);
    }
    assert_denied(&call(&s, 6, "search_docs", &alice), 6, MINUTE_LEFT);
    // Bob's buckets are his own.
    assert_passed(&call(&s, 7, "generate_report", &bob), 7);
    assert_passed(&call(&s, 8, "search_docs", &bob), 8);
    assert_eq!(
        sent(&s, 7),
        json!([desc(&[("user", "bob"), ("tool", "search_docs")], None)])
    );
    // Not about other methods: they pass without the header, uncounted.
    let asked = s.rls_requests().len();
    assert_passed(&method(&s, 9, "initialize", &[]), 9);
    assert_passed(&method(&s, 10, "tools/list", &[]), 10);
    assert_missing(&call(&s, 11, "search_docs", &[]), 11, "per_user_tool");
    assert_eq!(s.rls_requests().len(), asked);
    assert_eq!(s.stat("missing_source"), 1);
    assert_eq!(s.up.calls("generate_report").unwrap(), 2);
    assert_eq!(s.up.calls("search_docs").unwrap(), 4);
    assert_no_errors(&s);
}

#[test]
fn cost_weighted_tenant_budget() {
    let s = start(&recipe("Cost-weighted tenant budget"));
    let acme = [("x-tenant-id", "acme")];
    let globex = [("x-tenant-id", "globex")];
    let budget = |tenant, hits| desc(&[("tenant", tenant), ("method", "tools/call")], hits);
    // Two reports (10 each) and two searches (2 each): 24 of 25.
    assert_passed(&call(&s, 1, "generate_report", &acme), 1);
    assert_eq!(
        sent(&s, 0),
        json!([
            budget("acme", Some(10)),
            desc(&[("tool", "generate_report")], None)
        ])
    );
    assert_passed(&call(&s, 2, "generate_report", &acme), 2);
    assert_passed(&call(&s, 3, "search_docs", &acme), 3);
    assert_eq!(
        sent(&s, 2),
        json!([
            budget("acme", Some(2)),
            desc(&[("tool", "search_docs")], None)
        ])
    );
    assert_passed(&call(&s, 4, "search_docs", &acme), 4);
    assert_denied(&call(&s, 5, "search_docs", &acme), 5, MINUTE_LEFT);
    // Only tools/call spends the budget.
    assert_passed(&method(&s, 6, "tools/list", &acme), 6);
    // The report's call count is shared by tenants: globex's second report
    // is the 4th of the minute, denied with budget left.
    assert_passed(&call(&s, 7, "generate_report", &globex), 7);
    assert_denied(&call(&s, 8, "generate_report", &globex), 8, MINUTE_LEFT);
    assert_passed(&call(&s, 9, "search_docs", &globex), 9);
    // Without the header: the shared `public` budget.
    assert_passed(&call(&s, 10, "search_docs", &[]), 10);
    assert_eq!(sent(&s, 9)[0], budget("public", Some(2)));
    // Through call_tool, a report costs 10 too (and is the 5th report).
    assert_denied(&via_call_tool(&s, 11, "generate_report"), 11, MINUTE_LEFT);
    assert_eq!(sent(&s, 10)[0], budget("public", Some(10)));
    assert_eq!(s.up.calls("generate_report").unwrap(), 3);
    assert_eq!(s.up.calls("search_docs").unwrap(), 4);
    assert_no_errors(&s);
}

#[test]
fn daily_quota() {
    let s = start(&recipe("Daily quota"));
    let alice = [("x-user-id", "alice")];
    for id in 1..=3 {
        assert_passed(&call(&s, id, "generate_report", &alice), id);
    }
    assert_eq!(
        sent(&s, 0),
        json!([
            desc(&[("tool", "generate_report")], None),
            desc(
                &[("user", "alice"), ("daily_tool", "generate_report")],
                None
            )
        ])
    );
    assert_denied(&call(&s, 4, "generate_report", &alice), 4, DAY_LEFT);
    assert_passed(&call(&s, 5, "generate_report", &[("x-user-id", "bob")]), 5);
    assert_passed(&call(&s, 6, "search_docs", &alice), 6);
    // A minute later the minute's rate is renewed, the day's quota is not.
    s.rls.advance_clock(60_000).unwrap();
    assert_denied(&call(&s, 7, "generate_report", &alice), 7, DAY_LEFT - 60);
    // The next UTC day.
    s.rls.advance_clock((DAY_LEFT - 60) * 1000).unwrap();
    assert_passed(&call(&s, 8, "generate_report", &alice), 8);
    assert_missing(&call(&s, 9, "generate_report", &[]), 9, "daily_quota");
    assert_eq!(s.stat("missing_source"), 1);
    assert_eq!(s.up.calls("generate_report").unwrap(), 5);
    assert_no_errors(&s);
}

#[test]
fn shadow_rollout() {
    let r = recipe("Shadow rollout");
    let s = start(&r);
    let alice = [("x-user-id", "alice")];
    assert_passed(&call(&s, 1, "search_docs", &alice), 1);
    assert_passed(&call(&s, 2, "search_docs", &alice), 2);
    assert_eq!(s.stat("shadow_over_limit"), 0);
    // Over the shadow limit: passed, counted.
    for id in 3..=5 {
        assert_passed(&call(&s, id, "search_docs", &alice), id);
    }
    assert_eq!(s.stat("shadow_over_limit"), 3);
    assert_eq!(s.stat("ok"), 5);
    // Over the enforced limit: denied as before.
    assert_denied(&call(&s, 6, "search_docs", &alice), 6, MINUTE_LEFT);
    assert_eq!(s.stat("over_limit"), 1);
    assert_eq!(s.stat("shadow_over_limit"), 4);
    assert_eq!(s.up.calls("search_docs").unwrap(), 5);
    s.envoy
        .wait_for_log(
            "mcp-ratelimit: shadow limit exceeded: descriptor per_user_trial, target search_docs",
        )
        .unwrap();
    assert!(
        !s.envoy.logs().contains(r#""query":"q""#),
        "the body reached the log"
    );
    assert_no_errors(&s);

    drop(s);
    // Turned on: `"shadow": false` on the descriptor.
    let on = edited(&r.plugin, |v| v["descriptors"][1]["shadow"] = json!(false));
    let s = Stack::start(&on, &r.limits);
    assert_passed(&call(&s, 1, "search_docs", &alice), 1);
    assert_passed(&call(&s, 2, "search_docs", &alice), 2);
    assert_denied(&call(&s, 3, "search_docs", &alice), 3, MINUTE_LEFT);
    assert_passed(&call(&s, 4, "search_docs", &[("x-user-id", "bob")]), 4);
    assert_eq!(s.stat("shadow_over_limit"), 0);
    assert_eq!(s.stat("over_limit"), 1);
    assert_eq!(s.up.calls("search_docs").unwrap(), 3);
    assert_no_errors(&s);
}

#[test]
fn bounded_tool_names() {
    let r = recipe("Bounded tool names");
    let s = start(&r);
    assert_passed(&call(&s, 1, "random_1", &[]), 1);
    assert_passed(&call(&s, 2, "random_2", &[]), 2);
    assert_denied(&via_call_tool(&s, 3, "random_3"), 3, MINUTE_LEFT);
    assert_denied(&call(&s, 4, "random_4", &[]), 4, MINUTE_LEFT);
    // Listed tools keep their own buckets.
    for id in 5..=9 {
        assert_passed(&call(&s, id, "get_weather", &[]), id);
    }
    assert_denied(&call(&s, 10, "get_weather", &[]), 10, MINUTE_LEFT);
    assert_passed(&call(&s, 11, "search_docs", &[]), 11);
    let values: Vec<Value> = s
        .rls_requests()
        .iter()
        .map(|r| r["descriptors"][0]["entries"][0]["value"].clone())
        .collect();
    let mut expected = vec![json!("_other"); 4];
    expected.extend(vec![json!("get_weather"); 6]);
    expected.push(json!("search_docs"));
    assert_eq!(values, expected);
    assert_eq!(s.up.calls("random_1").unwrap(), 1);
    assert_eq!(s.up.calls("random_2").unwrap(), 1);
    assert_eq!(s.up.calls("random_3").unwrap(), 0);
    assert_eq!(s.up.calls("random_4").unwrap(), 0);
    assert_no_errors(&s);

    drop(s);
    // `"unknown_tools": "refuse"`: refused before the service and server.
    let refuse = edited(&r.plugin, |v| v["unknown_tools"] = json!("refuse"));
    let s = Stack::start(&refuse, &r.limits);
    let resp = call(&s, 7, "random_1", &[]);
    assert_eq!(resp.status, 400, "{resp:?}");
    assert_eq!(
        resp.json(),
        json!({"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"Invalid params",
            "data":{"reason":"unknown tool: random_1"}}})
    );
    assert_eq!(s.stat("unknown_tool"), 1);
    assert_eq!(s.rls_requests().len(), 0);
    assert_eq!(s.up.requests().unwrap(), 0);
    assert_passed(&call(&s, 8, "search_docs", &[]), 8);
    assert_no_errors(&s);
}

/// The per-user example of the README's Configuration section is a
/// configuration the filter accepts, refusing a missing identity.
#[test]
fn the_configuration_example_refuses_a_missing_identity() {
    let readme = std::fs::read_to_string(e2e::Paths::discover().root.join("README.md")).unwrap();
    let from = readme
        .find("For example, 10 calls per user per tool")
        .expect("the example is in the README");
    let block = readme[from..]
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the example's json block");
    let cfg = mcp_ratelimit::config::Config::parse(block.as_bytes()).unwrap();
    let names: Vec<&str> = cfg.descriptors.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["per_user_tool", "per_tenant"]);
    assert!(cfg
        .descriptors
        .iter()
        .all(|d| d.on_missing == mcp_ratelimit::config::OnMissing::Refuse));
}
