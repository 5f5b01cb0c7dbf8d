//! The limits and requests the end-to-end tests share.

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
