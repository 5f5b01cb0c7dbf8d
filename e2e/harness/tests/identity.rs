//! Per-user limits on an identity the client cannot forge, through the real
//! Envoy: `envoy.filters.http.jwt_authn` verifies a JWT signed here (HS256,
//! a local JWKS) before the filter, which reads the subject from the JWT
//! payload in dynamic metadata, or from an `x-user-id` header that Envoy
//! strips from the client's request and sets from the token. dev-rls runs
//! on a frozen clock (`CLOCK_AT`), so counts are exact.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use e2e::fixtures::{
    assert_called, assert_missing_identity, assert_rate_limited, tools_call, DAY_LEFT,
};
use e2e::stack::Stack;
use e2e::Response;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The identity provider's HS256 key, in Envoy's JWKS as an `oct` key.
const KEY: &[u8] = b"mcp-ratelimit identity test key!";
/// Another key: a token signed with it has a bad signature.
const OTHER_KEY: &[u8] = b"a key the identity provider lacks";
const ISSUER: &str = "https://idp.example";

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS: `claims` signed with HMAC-SHA256 under `key`.
fn sign(key: &[u8], claims: &Value) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": "mcp-test"});
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64url(&mac.finalize().into_bytes()))
}

/// Claims of a token the provider issues, valid for an hour of real time
/// (Envoy checks `exp` against its own clock), with `sub` when given.
fn claims(sub: Option<&str>) -> Value {
    let exp = (SystemTime::now() + Duration::from_secs(3600))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({"iss": ISSUER, "aud": "mcp", "exp": exp});
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    claims
}

fn bearer(sub: Option<&str>) -> String {
    format!("Bearer {}", sign(KEY, &claims(sub)))
}

/// `envoy.filters.http.jwt_authn`: provider `idp` with the key above,
/// required on every path; the payload goes to dynamic metadata
/// (`envoy.filters.http.jwt_authn` / `jwt_payload`), the token is not
/// forwarded, and `claim_to_headers` is added when given.
fn jwt_authn(claim_to_headers: &str) -> String {
    let jwks =
        json!({"keys": [{"kty": "oct", "alg": "HS256", "kid": "mcp-test", "k": b64url(KEY)}]});
    format!(
        r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                idp:
                  issuer: {ISSUER}
                  audiences: [mcp]
                  local_jwks:
                    inline_string: '{jwks}'
                  forward: false
                  payload_in_metadata: jwt_payload
{claim_to_headers}              rules:
              - match: {{prefix: /}}
                requires: {{provider_name: idp}}
"#
    )
}

const SUB_TO_HEADER: &str = "                  claim_to_headers:
                  - {header_name: x-user-id, claim_name: sub}
";

/// `envoy.filters.http.header_mutation`, removing the client's `x-user-id`.
const STRIP_USER: &str = r#"          - name: envoy.filters.http.header_mutation
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                request_mutations:
                - remove: x-user-id
"#;

/// The substitution that puts `filters`, in order, before the wasm filter
/// of `envoy/envoy.yaml`.
fn before_the_filter(filters: &[&str]) -> (&'static str, String) {
    const LINE: &str = "          http_filters:\n";
    (LINE, format!("{LINE}{}", filters.concat()))
}

const LIMITS: &str = "
domain: mcp
descriptors:
  - key: user
    descriptors:
      - key: tool
        rate_limit: {unit: day, requests_per_unit: 2}
";

const FROM_METADATA: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"descriptors":[
    {"name":"per_user_tool","on_missing":"refuse","entries":[
      {"key":"user","metadata":{"namespace":"envoy.filters.http.jwt_authn","path":["jwt_payload","sub"]}},
      {"key":"tool","mcp":"tool"}]}]}"#;

const FROM_HEADER: &str = r#"{"domain":"mcp","rls_cluster":"ratelimit","timeout_ms":1000,"descriptors":[
    {"name":"per_user_tool","on_missing":"refuse","entries":[
      {"key":"user","header":"x-user-id"},{"key":"tool","mcp":"tool"}]}]}"#;

fn call(s: &Stack, id: u64, headers: &[(&str, &str)]) -> Response {
    s.post_with(&tools_call(id, "search_docs"), headers)
}

fn assert_passed(resp: &Response, id: u64) {
    assert_called(resp, id, "search_docs");
}

fn assert_denied(resp: &Response, id: u64) {
    assert_rate_limited(resp, id, DAY_LEFT);
}

/// The filter's answer to a request without the identity `per_user_tool`
/// needs.
fn assert_refused(resp: &Response, id: u64) {
    assert_missing_identity(resp, id, "per_user_tool");
}

fn assert_unauthorized(resp: &Response, body: &str) {
    assert_eq!(resp.status, 401, "{resp:?}");
    assert_eq!(resp.text(), body);
}

/// The `user` value of every rate-limit request so far, oldest first.
fn users_sent(s: &Stack) -> Vec<Value> {
    s.rls_requests()
        .iter()
        .map(|r| {
            assert_eq!(r["descriptors"].as_array().unwrap().len(), 1, "{r}");
            let entries = &r["descriptors"][0]["entries"];
            assert_eq!(entries[1], json!({"key": "tool", "value": "search_docs"}));
            assert_eq!(entries[0]["key"], "user");
            entries[0]["value"].clone()
        })
        .collect()
}

/// The JWT recipe: jwt_authn verifies the token and writes its payload to
/// dynamic metadata; the filter keys the per-user limit on `sub` there.
/// Requests without a valid token never reach the filter; a valid token
/// without `sub` is refused by the filter.
#[test]
fn the_jwt_subject_is_the_user_of_a_per_user_limit() {
    let s = Stack::start_with(
        "envoy.yaml",
        FROM_METADATA,
        LIMITS,
        &[before_the_filter(&[&jwt_authn("")])],
    );
    let alice = bearer(Some("alice"));
    let bob = bearer(Some("bob"));
    assert_passed(&call(&s, 1, &[("authorization", &alice)]), 1);
    assert_passed(&call(&s, 2, &[("authorization", &alice)]), 2);
    assert_denied(&call(&s, 3, &[("authorization", &alice)]), 3);
    assert_passed(&call(&s, 4, &[("authorization", &bob)]), 4);
    assert_eq!(
        users_sent(&s),
        vec![json!("alice"), json!("alice"), json!("alice"), json!("bob")]
    );
    assert_eq!(s.up.calls("search_docs").unwrap(), 3);
    // forward: false: the token itself does not reach the MCP server.
    let seen = s.up.stats().unwrap()["last_headers"].clone();
    assert_eq!(seen.get("authorization"), None, "{seen}");

    // No token, or a token signed with another key: jwt_authn answers 401,
    // and neither the rate-limit service nor the MCP server is reached.
    assert_unauthorized(&call(&s, 5, &[]), "Jwt is missing");
    let forged = format!("Bearer {}", sign(OTHER_KEY, &claims(Some("alice"))));
    assert_unauthorized(
        &call(&s, 6, &[("authorization", &forged)]),
        "Jwt verification fails",
    );
    // A valid token without `sub` passes jwt_authn; the filter refuses it.
    assert_refused(&call(&s, 7, &[("authorization", &bearer(None))]), 7);
    assert_eq!(s.stat("missing_source"), 1);
    assert_eq!(s.rls_requests().len(), 4, "the service was asked");
    assert_eq!(s.up.requests().unwrap(), 3, "the MCP server was reached");
    assert_eq!(s.stat("over_limit"), 1);
    assert_eq!(s.stat("ok"), 3);
}

/// The header recipe: `header_mutation` removes the client's `x-user-id`,
/// then jwt_authn sets it from `sub` (`claim_to_headers`), then the filter
/// reads it. A client's own `x-user-id` never counts, with or without a
/// token.
#[test]
fn the_user_header_is_the_token_subject_never_the_clients() {
    let s = Stack::start_with(
        "envoy.yaml",
        FROM_HEADER,
        LIMITS,
        &[before_the_filter(&[STRIP_USER, &jwt_authn(SUB_TO_HEADER)])],
    );
    let alice = bearer(Some("alice"));
    // alice claims to be bob, then carol: both calls are alice's.
    let as_alice =
        |id: u64, claimed: &str| call(&s, id, &[("authorization", &alice), ("x-user-id", claimed)]);
    assert_passed(&as_alice(1, "bob"), 1);
    let seen = s.up.stats().unwrap()["last_headers"].clone();
    assert_eq!(seen["x-user-id"], "alice", "{seen}");
    assert_passed(&as_alice(2, "carol"), 2);
    assert_denied(&as_alice(3, "bob"), 3);
    // bob's bucket was not spent by the calls that named him.
    let bob = bearer(Some("bob"));
    assert_passed(&call(&s, 4, &[("authorization", &bob)]), 4);
    assert_passed(&call(&s, 5, &[("authorization", &bob)]), 5);
    assert_eq!(
        users_sent(&s),
        vec![
            json!("alice"),
            json!("alice"),
            json!("alice"),
            json!("bob"),
            json!("bob")
        ]
    );

    // The header alone is no identity: 401 before the filter.
    assert_unauthorized(&call(&s, 6, &[("x-user-id", "alice")]), "Jwt is missing");
    // A token without `sub` sets no header, and the client's is gone.
    let nosub = bearer(None);
    assert_refused(
        &call(&s, 7, &[("authorization", &nosub), ("x-user-id", "dave")]),
        7,
    );
    assert_eq!(s.stat("missing_source"), 1);
    assert_eq!(s.rls_requests().len(), 5, "the service was asked");
    assert_eq!(s.up.requests().unwrap(), 4, "the MCP server was reached");
}

/// Where the client's header is removed matters. `header_mutation` before
/// the filter removes it before the filter reads it. A route's
/// `request_headers_to_remove` is applied by the router, after the filter:
/// the filter counts the client's value, and the MCP server never sees it.
#[test]
fn the_client_header_is_removed_before_the_filter_reads_it() {
    let claimed = [("x-user-id", "mallory")];
    let s = Stack::start_with(
        "envoy.yaml",
        FROM_HEADER,
        LIMITS,
        &[before_the_filter(&[STRIP_USER])],
    );
    assert_refused(&call(&s, 1, &claimed), 1);
    assert_eq!(s.stat("missing_source"), 1);
    assert_eq!(s.up.requests().unwrap(), 0);

    const ROUTE: &str = "                route: {cluster: mcp_server, timeout: 60s}\n";
    let s = Stack::start_with(
        "envoy.yaml",
        FROM_HEADER,
        LIMITS,
        &[(
            ROUTE,
            format!("{ROUTE}                request_headers_to_remove: [x-user-id]\n"),
        )],
    );
    assert_passed(&call(&s, 1, &claimed), 1);
    assert_eq!(users_sent(&s), vec![json!("mallory")]);
    let seen = s.up.stats().unwrap()["last_headers"].clone();
    assert_eq!(seen.get("x-user-id"), None, "{seen}");
}

/// jwt_authn with `claim_to_headers` drops the client's copy of the header
/// by itself, even when the token has no such claim. `header_mutation`
/// placed after jwt_authn removes the subject jwt_authn set: every call is
/// refused.
#[test]
fn jwt_authn_replaces_the_clients_header_and_the_order_matters() {
    let claimed = ("x-user-id", "mallory");
    let alice = bearer(Some("alice"));
    let s = Stack::start_with(
        "envoy.yaml",
        FROM_HEADER,
        LIMITS,
        &[before_the_filter(&[&jwt_authn(SUB_TO_HEADER)])],
    );
    assert_passed(&call(&s, 1, &[("authorization", &alice), claimed]), 1);
    assert_eq!(users_sent(&s), vec![json!("alice")]);
    let seen = s.up.stats().unwrap()["last_headers"].clone();
    assert_eq!(seen["x-user-id"], "alice", "{seen}");
    let nosub = bearer(None);
    assert_refused(&call(&s, 2, &[("authorization", &nosub), claimed]), 2);
    assert_eq!(s.rls_requests().len(), 1);
    assert_eq!(s.up.requests().unwrap(), 1);

    let s = Stack::start_with(
        "envoy.yaml",
        FROM_HEADER,
        LIMITS,
        &[before_the_filter(&[&jwt_authn(SUB_TO_HEADER), STRIP_USER])],
    );
    assert_refused(&call(&s, 1, &[("authorization", &alice)]), 1);
    assert_refused(&call(&s, 2, &[("authorization", &alice), claimed]), 2);
    assert_eq!(s.stat("missing_source"), 2);
    assert_eq!(s.rls_requests().len(), 0);
    assert_eq!(s.up.requests().unwrap(), 0);
}
