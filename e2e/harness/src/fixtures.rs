//! The limits, requests and answers the end-to-end tests share.

use crate::{Response, CLOCK_AT};
use serde_json::json;

/// Seconds from the frozen [`CLOCK_AT`] to the end of its UTC day: the
/// Retry-After of every denial under a day limit.
pub const DAY_LEFT: u64 = 86_400 - CLOCK_AT % 86_400;

/// Asserts the filter's default denial of request `id`, exactly: HTTP 429,
/// `Retry-After: retry` and the JSON-RPC error with `retryAfterSeconds`.
pub fn assert_rate_limited(resp: &Response, id: u64, retry: u64) {
    assert_eq!(resp.status, 429, "id {id}: {resp:?}");
    assert_eq!(resp.header("retry-after"), Some(retry.to_string().as_str()));
    assert_eq!(
        resp.text(),
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":429,"message":"Rate limit exceeded","data":{{"retryAfterSeconds":{retry}}}}}}}"#
        )
    );
}

/// Asserts the filter's refusal of request `id` for lacking a value the
/// descriptor named `descriptor` needs (`"on_missing": "refuse"`).
pub fn assert_missing_identity(resp: &Response, id: u64, descriptor: &str) {
    assert_eq!(resp.status, 400, "id {id}: {resp:?}");
    let reason = format!("the request lacks a value descriptor {descriptor} needs");
    assert_eq!(
        resp.json(),
        json!({"jsonrpc":"2.0","id":id,"error":{"code":-32600,"message":"Invalid Request",
            "data":{"reason":reason}}})
    );
}

/// Asserts mcp-upstream's answer to a `tools/call` of `tool` with id `id`.
pub fn assert_called(resp: &Response, id: u64, tool: &str) {
    assert_eq!(resp.status, 200, "id {id}: {resp:?}");
    let v = resp.json();
    assert_eq!(v.get("id"), Some(&json!(id)), "{resp:?}");
    let text = format!("{tool} called");
    assert_eq!(
        v.pointer("/result/content/0/text").and_then(|t| t.as_str()),
        Some(text.as_str()),
        "{resp:?}"
    );
}

/// A limits file (envoyproxy/ratelimit's YAML) for domain `mcp`:
/// `search_docs` may be called `search_docs` times a day, every other tool
/// `others` times a day each. The harness runs dev-rls on a frozen clock,
/// so no day window rolls over during a test.
pub fn limits(search_docs: u64, others: u64) -> String {
    format!(
        "
domain: mcp
descriptors:
  - key: tool
    value: search_docs
    rate_limit: {{unit: day, requests_per_unit: {search_docs}}}
  - key: tool
    rate_limit: {{unit: day, requests_per_unit: {others}}}
"
    )
}

/// A JSON-RPC `tools/call` of `tool` with id `id` and `arguments` (JSON).
pub fn tools_call_with(id: u64, tool: &str, arguments: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments}}}}}"#
    )
}

/// A JSON-RPC `tools/call` of `tool` with id `id` and one argument.
pub fn tools_call(id: u64, tool: &str) -> String {
    tools_call_with(id, tool, r#"{"query":"q"}"#)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_calls_are_what_they_say() {
        let l = limits(3, 1000);
        assert!(l.contains("value: search_docs\n    rate_limit: {unit: day, requests_per_unit: 3}"));
        assert!(l.ends_with("rate_limit: {unit: day, requests_per_unit: 1000}\n"));
        let v: serde_json::Value = serde_json::from_str(&tools_call(7, "t")).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["params"]["name"], "t");
        assert_eq!(v["params"]["arguments"]["query"], "q");
    }
}
