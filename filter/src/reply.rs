//! Local replies: JSON-RPC error bodies and their HTTP status and headers.

use std::fmt::Write;

use crate::config::Reply;
use crate::rls::Headers;

/// A response the filter sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Headers,
    pub body: String,
    /// Short reason for logs and Envoy's response-code details.
    pub detail: &'static str,
}

/// The ids of the messages a reply answers, as their JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ids {
    /// One message; `None` for a notification (the reply omits `id`).
    Single(Option<Box<str>>),
    /// A batch: one error per message that has an id.
    Batch(Vec<Box<str>>),
}

impl Ids {
    /// A message whose id could not be read: JSON-RPC answers with `null`.
    pub fn unknown() -> Ids {
        Ids::Single(Some("null".into()))
    }
}

/// JSON-RPC error codes used for refused bodies.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// MCP 2026-07-28 `HeaderMismatch`.
pub const HEADER_MISMATCH: i64 = -32020;

const JSON: (&str, &str) = ("content-type", "application/json");

/// Appends one JSON-RPC error object.
fn error_object(
    out: &mut String,
    id: Option<&str>,
    code: i64,
    message_json: &str,
    data: Option<&str>,
) {
    out.push_str(r#"{"jsonrpc":"2.0","#);
    if let Some(id) = id {
        out.push_str(r#""id":"#);
        out.push_str(id);
        out.push(',');
    }
    let _ = write!(out, r#""error":{{"code":{code},"message":{message_json}"#);
    if let Some(data) = data {
        out.push_str(r#","data":"#);
        out.push_str(data);
    }
    out.push_str("}}");
}

/// One error per id (a batch gives an array), all with the same error.
fn errors_for(ids: &Ids, code: i64, message_json: &str, data: Option<&str>) -> String {
    let mut out = String::with_capacity(128);
    match ids {
        Ids::Single(id) => error_object(&mut out, id.as_deref(), code, message_json, data),
        Ids::Batch(list) if list.is_empty() => {
            error_object(&mut out, None, code, message_json, data)
        }
        Ids::Batch(list) => {
            out.push('[');
            for (i, id) in list.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                error_object(&mut out, Some(id), code, message_json, data);
            }
            out.push(']');
        }
    }
    out
}

/// The denial of a request the rate-limit service found over limit, with
/// the time until the limit resets in seconds (and in milliseconds, for
/// `data.retryAfterMs` when configured).
pub fn over_limit(cfg: &Reply, ids: &Ids, retry: (u64, u64), extra: Headers) -> LocalReply {
    let (retry_after, retry_after_ms) = retry;
    let data = if cfg.retry_after_ms {
        format!(r#"{{"retryAfterSeconds":{retry_after},"retryAfterMs":{retry_after_ms}}}"#)
    } else {
        format!(r#"{{"retryAfterSeconds":{retry_after}}}"#)
    };
    let mut headers = Vec::with_capacity(3 + extra.len());
    headers.push((JSON.0.to_owned(), JSON.1.to_owned()));
    headers.push(("retry-after".to_owned(), retry_after.to_string()));
    headers.push(("x-envoy-ratelimited".to_owned(), "true".to_owned()));
    for (k, v) in extra {
        if k != "content-type" && k != "content-length" {
            headers.push((k, v));
        }
    }
    LocalReply {
        status: cfg.http_status,
        headers,
        body: errors_for(ids, cfg.code, &cfg.message_json, Some(&data)),
        detail: "mcp_ratelimit_over_limit",
    }
}

/// The denial used when the rate-limit service failed and
/// `failure_mode_deny` is set.
pub fn rls_failure(cfg: &Reply, ids: &Ids) -> LocalReply {
    LocalReply {
        status: cfg.http_status,
        headers: vec![(JSON.0.to_owned(), JSON.1.to_owned())],
        body: errors_for(ids, cfg.code, &cfg.message_json, None),
        detail: "mcp_ratelimit_rls_failure",
    }
}

/// A request refused before it reaches the service: one JSON-RPC error
/// with `data.reason`, and `id` as read (JSON `null` when unknown).
fn refusal(
    status: u32,
    code: i64,
    message_json: &str,
    id: Option<&str>,
    reason: &str,
    detail: &'static str,
) -> LocalReply {
    let data = serde_json::to_string(reason)
        .map(|r| format!(r#"{{"reason":{r}}}"#))
        .ok();
    let mut body = String::with_capacity(160);
    error_object(
        &mut body,
        Some(id.unwrap_or("null")),
        code,
        message_json,
        data.as_deref(),
    );
    LocalReply {
        status,
        headers: vec![(JSON.0.to_owned(), JSON.1.to_owned())],
        body,
        detail,
    }
}

/// A body that is not an acceptable JSON-RPC request (HTTP 400). `id` is
/// the request's id when it could be read, else JSON `null`.
pub fn bad_request(code: i64, id: Option<&str>, reason: &str) -> LocalReply {
    let message = match code {
        PARSE_ERROR => r#""Parse error""#,
        INVALID_PARAMS => r#""Invalid params""#,
        _ => r#""Invalid Request""#,
    };
    refusal(400, code, message, id, reason, "mcp_ratelimit_bad_request")
}

/// MCP headers that disagree with the body (HTTP 400, -32020).
pub fn header_mismatch(id: Option<&str>, reason: &str) -> LocalReply {
    refusal(
        400,
        HEADER_MISMATCH,
        r#""Header mismatch""#,
        id,
        reason,
        "mcp_ratelimit_header_mismatch",
    )
}

/// A body the proxy could not hand over to be judged (HTTP 500, -32603):
/// the request may not pass unjudged.
pub fn unreadable_body() -> LocalReply {
    refusal(
        500,
        INTERNAL_ERROR,
        r#""Rate limiting failed""#,
        None,
        "the request body could not be read",
        "mcp_ratelimit_unreadable_body",
    )
}

/// A compressed request body, which the filter cannot judge (HTTP 415).
pub fn unsupported_encoding() -> LocalReply {
    let mut body = String::with_capacity(128);
    error_object(
        &mut body,
        Some("null"),
        INVALID_REQUEST,
        r#""Unsupported content-encoding""#,
        Some(r#"{"reason":"request bodies must not be compressed"}"#),
    );
    LocalReply {
        status: 415,
        headers: vec![(JSON.0.to_owned(), JSON.1.to_owned())],
        body,
        detail: "mcp_ratelimit_unsupported_encoding",
    }
}

/// A body over `max_body_bytes` (HTTP 413).
pub fn too_large(max: usize) -> LocalReply {
    let mut body = String::with_capacity(128);
    let data = format!(r#"{{"maxBodyBytes":{max}}}"#);
    error_object(
        &mut body,
        Some("null"),
        INVALID_REQUEST,
        r#""Request body too large""#,
        Some(&data),
    );
    LocalReply {
        status: 413,
        headers: vec![(JSON.0.to_owned(), JSON.1.to_owned())],
        body,
        detail: "mcp_ratelimit_body_too_large",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Reply {
        Reply {
            http_status: 429,
            code: 429,
            message: "Rate limit exceeded".into(),
            message_json: "\"Rate limit exceeded\"".into(),
            retry_after_ms: false,
        }
    }

    #[test]
    fn over_limit_body_is_exact() {
        let r = over_limit(
            &cfg(),
            &Ids::Single(Some("7".into())),
            (42, 42000),
            vec![("x-ratelimit-limit".into(), "5".into())],
        );
        assert_eq!(r.status, 429);
        assert_eq!(
            r.body,
            r#"{"jsonrpc":"2.0","id":7,"error":{"code":429,"message":"Rate limit exceeded","data":{"retryAfterSeconds":42}}}"#
        );
        assert_eq!(
            r.headers,
            vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                ("retry-after".to_owned(), "42".to_owned()),
                ("x-envoy-ratelimited".to_owned(), "true".to_owned()),
                ("x-ratelimit-limit".to_owned(), "5".to_owned()),
            ]
        );
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["data"]["retryAfterSeconds"], 42);
    }

    #[test]
    fn notification_denial_omits_id() {
        let r = over_limit(&cfg(), &Ids::Single(None), (1, 1000), vec![]);
        assert_eq!(
            r.body,
            r#"{"jsonrpc":"2.0","error":{"code":429,"message":"Rate limit exceeded","data":{"retryAfterSeconds":1}}}"#
        );
    }

    #[test]
    fn batch_denial_answers_every_id() {
        let r = over_limit(
            &cfg(),
            &Ids::Batch(vec!["1".into(), "\"b\"".into()]),
            (3, 3000),
            vec![],
        );
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[0]["id"], 1);
        assert_eq!(v[1]["id"], "b");
        assert_eq!(v[1]["error"]["code"], 429);
    }

    #[test]
    fn ids_keep_their_json_text() {
        for id in ["\"x\\\"y\"", "1.50", "null", "{\"a\":[1]}"] {
            let r = over_limit(&cfg(), &Ids::Single(Some(id.into())), (1, 1000), vec![]);
            assert!(r.body.contains(&format!(r#""id":{id},"#)), "{}", r.body);
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap();
        }
    }

    #[test]
    fn rls_headers_cannot_replace_content_type() {
        let r = over_limit(
            &cfg(),
            &Ids::Single(None),
            (1, 1000),
            vec![("content-type".into(), "text/html".into())],
        );
        assert_eq!(
            r.headers
                .iter()
                .filter(|(k, _)| k == "content-type")
                .count(),
            1
        );
    }

    #[test]
    fn errors_for_refused_bodies() {
        let r = bad_request(PARSE_ERROR, None, "not JSON");
        assert_eq!(r.status, 400);
        assert_eq!(
            r.body,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error","data":{"reason":"not JSON"}}}"#
        );
        let r = bad_request(INVALID_PARAMS, Some("3"), "x");
        assert!(r.body.starts_with(
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"Invalid params""#
        ));
        let r = too_large(1024);
        assert_eq!(r.status, 413);
        assert_eq!(
            r.body,
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Request body too large","data":{"maxBodyBytes":1024}}}"#
        );
    }

    #[test]
    fn failure_reply() {
        let c = Reply {
            http_status: 503,
            code: -32603,
            message: "Rate limit service unavailable".into(),
            message_json: "\"Rate limit service unavailable\"".into(),
            retry_after_ms: false,
        };
        let r = rls_failure(&c, &Ids::Single(Some("\"q\"".into())));
        assert_eq!(r.status, 503);
        assert_eq!(
            r.body,
            r#"{"jsonrpc":"2.0","id":"q","error":{"code":-32603,"message":"Rate limit service unavailable"}}"#
        );
    }
}
