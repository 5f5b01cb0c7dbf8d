//! JSON-RPC / MCP message handling of the stand-in server, independent of HTTP.
//!
//! Request ids are echoed byte for byte: they are kept as raw JSON text
//! ([`RawValue`]) and never round-tripped through a number type.

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Protocol version answered when `initialize` does not ask for one.
pub const DEFAULT_PROTOCOL_VERSION: &str = "2025-06-18";

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

/// Tools that are called directly: (name, description, argument name).
const DIRECT_TOOLS: &[(&str, &str, &str)] = &[
    ("search_docs", "Search the documentation", "query"),
    ("get_weather", "Get the weather for a city", "city"),
    ("find_tool", "Find a tool by description", "query"),
];

/// The meta tool that dispatches to `arguments.tool_name`.
const CALL_TOOL: &str = "call_tool";

/// How the HTTP layer must answer a fully received POST body.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// HTTP 200 with this JSON body; `session` asks for an `Mcp-Session-Id` header.
    Json { body: String, session: bool },
    /// HTTP 202 with an empty body (only notifications and/or responses).
    Accepted,
    /// HTTP 400 with this JSON-RPC error body.
    BadRequest(String),
}

/// What the body contained, for the stats endpoint.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// JSON-RPC method of every request and notification, in order.
    pub methods: Vec<String>,
    /// Resolved tool name of every `tools/call` (the inner tool for `call_tool`).
    pub calls: Vec<String>,
}

/// Handles one POST body (a single JSON-RPC message or a batch).
pub fn handle_body(body: &[u8]) -> (Outcome, Observed) {
    let mut observed = Observed::default();
    let raw: &RawValue = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(e) => {
            let msg = format!("Parse error: {e}");
            return (
                Outcome::BadRequest(error_response(None, PARSE_ERROR, &msg)),
                observed,
            );
        }
    };
    if raw.get().starts_with('[') {
        let items: Vec<&RawValue> = match serde_json::from_str(raw.get()) {
            Ok(items) => items,
            Err(e) => {
                let msg = format!("Parse error: {e}");
                return (
                    Outcome::BadRequest(error_response(None, PARSE_ERROR, &msg)),
                    observed,
                );
            }
        };
        if items.is_empty() {
            let body = error_response(None, INVALID_REQUEST, "Invalid Request: empty batch");
            return (Outcome::BadRequest(body), observed);
        }
        let mut responses = Vec::new();
        let mut session = false;
        for item in items {
            let reply = handle_message(item, &mut observed);
            session |= reply.initialize;
            if let Some(r) = reply.response {
                responses.push(r);
            }
        }
        let outcome = if responses.is_empty() {
            Outcome::Accepted
        } else {
            Outcome::Json {
                body: format!("[{}]", responses.join(",")),
                session,
            }
        };
        (outcome, observed)
    } else {
        let reply = handle_message(raw, &mut observed);
        let outcome = match reply.response {
            None => Outcome::Accepted,
            Some(body) if reply.invalid => Outcome::BadRequest(body),
            Some(body) => Outcome::Json {
                body,
                session: reply.initialize,
            },
        };
        (outcome, observed)
    }
}

struct Reply {
    /// Serialized JSON-RPC response, `None` for notifications and responses.
    response: Option<String>,
    /// The message itself was not a valid JSON-RPC message (-32600).
    invalid: bool,
    /// The message was a successful `initialize` request.
    initialize: bool,
}

fn handle_message(raw: &RawValue, observed: &mut Observed) -> Reply {
    let invalid = |id: Option<&RawValue>, why: &str| Reply {
        response: Some(error_response(
            id,
            INVALID_REQUEST,
            &format!("Invalid Request: {why}"),
        )),
        invalid: true,
        initialize: false,
    };
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(raw.get()) else {
        return invalid(None, "not a JSON object");
    };
    // Same object again, keeping every member as raw text so the id is echoed verbatim.
    let raw_members: BTreeMap<String, &RawValue> =
        serde_json::from_str(raw.get()).unwrap_or_default();
    let id = raw_members.get("id").copied();

    let method = match obj.get("method") {
        Some(Value::String(m)) => m.as_str(),
        Some(_) => return invalid(id, "method must be a string"),
        None if obj.contains_key("result") || obj.contains_key("error") => {
            // A JSON-RPC response sent by the client (e.g. to a server request).
            return Reply {
                response: None,
                invalid: false,
                initialize: false,
            };
        }
        None => return invalid(id, "missing method"),
    };
    observed.methods.push(method.to_string());
    if method.starts_with("notifications/") || !obj.contains_key("id") {
        return Reply {
            response: None,
            invalid: false,
            initialize: false,
        };
    }
    let params = obj.get("params");
    let response = match dispatch(method, params, observed) {
        Ok(result) => result_response(id, &result),
        Err((code, msg)) => error_response(id, code, &msg),
    };
    Reply {
        response: Some(response),
        invalid: false,
        initialize: method == "initialize",
    }
}

type RpcResult = Result<Value, (i64, String)>;

fn dispatch(method: &str, params: Option<&Value>, observed: &mut Observed) -> RpcResult {
    match method {
        "initialize" => {
            let version = params
                .and_then(|p| p.get("protocolVersion"))
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_PROTOCOL_VERSION);
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "mcp-upstream", "version": "0.1.0"},
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({ "tools": tool_list() })),
        "tools/call" => call_tool(params, observed),
        other => Err((METHOD_NOT_FOUND, format!("Method not found: {other}"))),
    }
}

fn call_tool(params: Option<&Value>, observed: &mut Observed) -> RpcResult {
    let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) else {
        return Err((
            INVALID_PARAMS,
            "Invalid params: tools/call needs a string `name`".to_string(),
        ));
    };
    let arguments = params.and_then(|p| p.get("arguments"));
    if name == CALL_TOOL {
        let Some(inner) = arguments
            .and_then(|a| a.get("tool_name"))
            .and_then(Value::as_str)
        else {
            observed.calls.push(CALL_TOOL.to_string());
            return Err((
                INVALID_PARAMS,
                "Invalid params: call_tool needs a string `arguments.tool_name`".to_string(),
            ));
        };
        observed.calls.push(inner.to_string());
        if is_direct_tool(inner) {
            Ok(text_result(&format!("{inner} called via call_tool")))
        } else {
            Err((INVALID_PARAMS, format!("Unknown tool: {inner}")))
        }
    } else {
        observed.calls.push(name.to_string());
        if is_direct_tool(name) {
            Ok(text_result(&format!("{name} called")))
        } else {
            Err((INVALID_PARAMS, format!("Unknown tool: {name}")))
        }
    }
}

fn is_direct_tool(name: &str) -> bool {
    DIRECT_TOOLS.iter().any(|(n, _, _)| *n == name)
}

fn text_result(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": false})
}

fn tool_list() -> Vec<Value> {
    let mut tools: Vec<Value> = DIRECT_TOOLS
        .iter()
        .map(|(name, description, arg)| {
            let mut properties = Map::new();
            properties.insert((*arg).to_string(), json!({"type": "string"}));
            json!({
                "name": name,
                "description": description,
                "inputSchema": {
                    "type": "object",
                    "properties": properties,
                    "required": [arg],
                },
            })
        })
        .collect();
    tools.push(json!({
        "name": CALL_TOOL,
        "description": "Call another tool by name",
        "inputSchema": {
            "type": "object",
            "properties": {
                "tool_name": {"type": "string"},
                "parameters": {"type": "object"},
            },
            "required": ["tool_name"],
        },
    }));
    tools
}

fn id_text(id: Option<&RawValue>) -> &str {
    id.map_or("null", RawValue::get)
}

fn result_response(id: Option<&RawValue>, result: &Value) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{}}}"#,
        id_text(id),
        result
    )
}

fn error_response(id: Option<&RawValue>, code: i64, message: &str) -> String {
    let error = json!({"code": code, "message": message});
    format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{}}}"#,
        id_text(id),
        error
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn json_body(outcome: &Outcome) -> Value {
        match outcome {
            Outcome::Json { body, .. } | Outcome::BadRequest(body) => {
                serde_json::from_str(body).unwrap()
            }
            Outcome::Accepted => panic!("no body"),
        }
    }

    #[test]
    fn initialize_echoes_version_and_asks_for_session() {
        let (out, obs) = handle_body(
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26"}}"#,
        );
        assert!(matches!(out, Outcome::Json { session: true, .. }));
        let v = json_body(&out);
        assert_eq!(v["result"]["protocolVersion"], "2025-03-26");
        assert_eq!(v["result"]["serverInfo"]["name"], "mcp-upstream");
        assert_eq!(obs.methods, vec!["initialize"]);
    }

    #[test]
    fn initialize_default_version() {
        let (out, _) = handle_body(br#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#);
        assert_eq!(
            json_body(&out)["result"]["protocolVersion"],
            DEFAULT_PROTOCOL_VERSION
        );
    }

    #[test]
    fn ids_are_echoed_verbatim() {
        for id in [
            r#""abc""#,
            "1.0",
            "123456789012345678901234567890",
            "-0",
            r#""\u00e9""#,
        ] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
            let (out, _) = handle_body(body.as_bytes());
            let Outcome::Json { body, .. } = out else {
                panic!("expected json")
            };
            assert!(body.contains(&format!(r#""id":{id},"#)), "{body}");
        }
    }

    #[test]
    fn tools_call_and_call_tool_dispatch() {
        let (out, obs) = handle_body(
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris"}}}"#,
        );
        let v = json_body(&out);
        assert_eq!(v["result"]["content"][0]["text"], "get_weather called");
        assert_eq!(v["result"]["isError"], false);
        assert_eq!(obs.calls, vec!["get_weather"]);

        let (out, obs) = handle_body(
            br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"call_tool","arguments":{"tool_name":"search_docs","parameters":{"query":"x"}}}}"#,
        );
        let v = json_body(&out);
        assert_eq!(
            v["result"]["content"][0]["text"],
            "search_docs called via call_tool"
        );
        assert_eq!(obs.calls, vec!["search_docs"]);
    }

    #[test]
    fn errors() {
        let (out, obs) = handle_body(
            br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"nope"}}"#,
        );
        assert_eq!(json_body(&out)["error"]["code"], INVALID_PARAMS);
        assert_eq!(obs.calls, vec!["nope"]);
        let (out, _) = handle_body(br#"{"jsonrpc":"2.0","id":5,"method":"resources/list"}"#);
        assert_eq!(json_body(&out)["error"]["code"], METHOD_NOT_FOUND);
        let (out, _) = handle_body(b"{not json");
        assert!(matches!(out, Outcome::BadRequest(_)));
        let v = json_body(&out);
        assert_eq!(v["error"]["code"], PARSE_ERROR);
        assert_eq!(v["id"], Value::Null);
        let (out, _) = handle_body(b"[]");
        assert_eq!(json_body(&out)["error"]["code"], INVALID_REQUEST);
        let (out, _) = handle_body(b"42");
        assert!(matches!(out, Outcome::BadRequest(_)));
    }

    #[test]
    fn notifications_and_responses_are_accepted() {
        let (out, obs) = handle_body(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(out, Outcome::Accepted);
        assert_eq!(obs.methods, vec!["notifications/initialized"]);
        let (out, _) = handle_body(br#"{"jsonrpc":"2.0","id":9,"result":{}}"#);
        assert_eq!(out, Outcome::Accepted);
    }

    #[test]
    fn batch() {
        let (out, obs) = handle_body(
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},
                {"jsonrpc":"2.0","method":"notifications/initialized"},
                {"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"find_tool","arguments":{"query":"q"}}}]"#,
        );
        let v = json_body(&out);
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0]["id"], 1);
        assert_eq!(arr[0]["result"]["tools"].as_array().unwrap().len(), 4);
        assert_eq!(arr[1]["id"], "b");
        assert_eq!(obs.calls, vec!["find_tool"]);
        assert_eq!(
            obs.methods,
            vec!["tools/list", "notifications/initialized", "tools/call"]
        );
        let (out, _) = handle_body(br#"[{"jsonrpc":"2.0","method":"notifications/x"}]"#);
        assert_eq!(out, Outcome::Accepted);
    }
}
