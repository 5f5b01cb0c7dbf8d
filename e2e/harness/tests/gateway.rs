//! The Envoy Gateway manifests (`envoy/gateway/`), checked without a cluster
//! or a container engine.
//!
//! The manifests are parsed and cross-checked, the filter configuration of
//! the EnvoyExtensionPolicy goes through the filter's own parser, and the
//! limits through dev-rls. Then the xDS that Envoy Gateway generates for the
//! Gateway, HTTPRoute and EnvoyExtensionPolicy (written here after Envoy
//! Gateway's translator, see `gateway/xds.rs`) gets the EnvoyPatchPolicy's
//! JSON patches applied as Envoy Gateway applies them, and the result runs in
//! the real Envoy 1.40 with the built module: `envoy --mode validate`, then
//! in front of dev-rls and an MCP server, with and without the patches.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "gateway/json_patch.rs"]
mod json_patch;
#[path = "gateway/manifests.rs"]
mod manifests;
#[path = "gateway/xds.rs"]
mod xds;

use std::net::SocketAddr;
use std::time::Duration;

use e2e::fixtures::{tools_call, tools_call_with};
use e2e::stack::wasm_path;
use e2e::{post_json, wait_for, DevRls, Envoy, McpUpstream, Request, Response, CLOCK_AT};
use manifests::{
    extension_policy, object, objects, patch_policy, plugin_json, shipped_limits, speaks_http2,
    str_at, Objects,
};
use mcp_ratelimit::config::Config;
use serde_json::{json, Value};
use xds::{NameScheme, Xds};

// ---------------------------------------------------------------------------
// Envoy Gateway's xDS, patched

/// Envoy Gateway's xDS for the shipped Gateway, HTTPRoute and
/// EnvoyExtensionPolicy, the module read from `module`, the MCP server at
/// `backend`.
fn generated(objects: &Objects, scheme: NameScheme, module: &str, backend: u16) -> Xds {
    xds::translate(
        object(objects, "Gateway", "mcp-gateway"),
        object(objects, "HTTPRoute", "mcp-server"),
        extension_policy(objects),
        scheme,
        &xds::Local {
            module,
            backend: ("127.0.0.1", backend),
        },
    )
}

/// Not needed by the checks that do not run Envoy.
const NO_MODULE: &str = "/nonexistent/mcp_ratelimit.wasm";

/// The HTTP filter lists (as JSON Pointers) of a configuration.
fn filter_lists(config: &Value) -> Vec<String> {
    json_patch::select(config, "$..http_filters").unwrap()
}

/// What the filter needs from the Envoy it runs in, checked on a whole
/// configuration: its rate-limit cluster exists and speaks HTTP/2; it is
/// enabled on the route; and since it does not hold headers, an enabled
/// buffer filter comes after it and before the router, as large as the
/// bodies it accepts (or, were it to hold headers, its Wasm config allows it).
fn check_filter_needs(config: &Value, filter: &str) -> Result<(), String> {
    let mut seen = false;
    for list_ptr in filter_lists(config) {
        let list = config.pointer(&list_ptr).unwrap().as_array().unwrap();
        let Some(at) = list.iter().position(|f| f["name"] == filter) else {
            continue;
        };
        seen = true;
        let plugin = &list[at]["typed_config"]["config"];
        let parsed =
            Config::parse(str_at(plugin, "/configuration/value").as_bytes()).map_err(|e| e.0)?;
        let clusters = config["static_resources"]["clusters"].as_array().unwrap();
        let cluster = clusters
            .iter()
            .find(|c| c["name"] == parsed.rls_cluster.as_str())
            .ok_or_else(|| {
                format!(
                    "no cluster {} for the rate-limit service",
                    parsed.rls_cluster
                )
            })?;
        if !speaks_http2(cluster) {
            return Err(format!(
                "cluster {} does not speak HTTP/2",
                parsed.rls_cluster
            ));
        }
        let router = list
            .iter()
            .position(|f| f["name"] == xds::ROUTER)
            .ok_or("no router")?;
        if parsed.hold_headers {
            if plugin["allow_on_headers_stop_iteration"] != true {
                return Err(
                    "the filter holds headers without allow_on_headers_stop_iteration".into(),
                );
            }
        } else {
            let between = list.get(at + 1..router).unwrap_or_default();
            let buffer = between
                .iter()
                .find(|f| {
                    f["typed_config"]["@type"]
                        == "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
                        && f["disabled"] != true
                })
                .ok_or("no enabled buffer filter between the filter and the router")?;
            let max = buffer["typed_config"]["max_request_bytes"]
                .as_u64()
                .unwrap_or(0);
            if max < parsed.max_body_bytes as u64 {
                return Err(format!(
                    "buffer max_request_bytes {max} < the filter's max_body_bytes {}",
                    parsed.max_body_bytes
                ));
            }
        }
    }
    if !seen {
        return Err(format!("no filter {filter}"));
    }
    let enabled = json_patch::select(config, "$..routes[*].typed_per_filter_config")
        .unwrap()
        .iter()
        .any(|p| {
            config
                .pointer(p)
                .unwrap()
                .get(filter)
                .is_some_and(|c| c["disabled"] != true)
        });
    if !enabled {
        return Err(format!("{filter} is not enabled on any route"));
    }
    Ok(())
}

/// The patch policy with its listener patch at this JSON Pointer instead
/// of its jsonPath.
fn listener_patch_at(policy: &Value, pointer: &str) -> Value {
    let mut p = policy.clone();
    for patch in p["spec"]["jsonPatches"].as_array_mut().unwrap() {
        if patch["type"] == xds::LISTENER {
            let op = patch["operation"].as_object_mut().unwrap();
            op.remove("jsonPath");
            op.insert("path".into(), json!(pointer));
        }
    }
    p
}

/// The patch policy with only the patches of this resource type.
fn only(policy: &Value, type_url: &str) -> Value {
    let mut p = policy.clone();
    p["spec"]["jsonPatches"]
        .as_array_mut()
        .unwrap()
        .retain(|patch| patch["type"] == type_url);
    p
}

#[test]
fn patched_xds_has_what_the_filter_needs_and_validates_in_envoy() {
    let objects = objects();
    let epp = patch_policy(&objects);
    let filter = xds::wasm_filter_name(extension_policy(&objects), 0);
    let module = wasm_path().unwrap();
    let unpatched = generated(&objects, NameScheme::V2, &module, 8082);

    let mut patched = unpatched.clone();
    patched.apply_patch_policy(epp).unwrap();
    let config = patched.bootstrap();
    check_filter_needs(&config, &filter).unwrap();
    let lists = filter_lists(&config);
    let names: Vec<&str> = config
        .pointer(&lists[0])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            filter.as_str(),
            "envoy.filters.http.buffer/mcp-ratelimit",
            xds::ROUTER
        ]
    );
    assert_eq!(lists.len(), 1);
    let (ok, output) = Envoy::validate(&config.to_string()).unwrap();
    assert!(ok, "{output}");
    assert!(
        output.contains("mcp-ratelimit configured"),
        "filter not configured:\n{output}"
    );

    // Each patch is needed.
    let err = check_filter_needs(&unpatched.bootstrap(), &filter).unwrap_err();
    assert!(err.contains("no cluster ratelimit"), "{err}");
    let mut cluster_only = unpatched.clone();
    cluster_only
        .apply_patch_policy(&only(epp, xds::CLUSTER))
        .unwrap();
    let err = check_filter_needs(&cluster_only.bootstrap(), &filter).unwrap_err();
    assert!(err.contains("no enabled buffer filter"), "{err}");
    let mut listener_only = unpatched.clone();
    listener_only
        .apply_patch_policy(&only(epp, xds::LISTENER))
        .unwrap();
    let err = check_filter_needs(&listener_only.bootstrap(), &filter).unwrap_err();
    assert!(err.contains("no cluster ratelimit"), "{err}");

    // A buffer filter appended after the router is refused by Envoy itself.
    let appended = listener_patch_at(
        epp,
        "/default_filter_chain/filters/0/typed_config/http_filters/-",
    );
    let mut after_router = unpatched.clone();
    after_router.apply_patch_policy(&appended).unwrap();
    let config = after_router.bootstrap();
    assert!(check_filter_needs(&config, &filter).is_err());
    let (ok, output) = Envoy::validate(&config.to_string()).unwrap();
    assert!(!ok, "Envoy accepted a filter after the router:\n{output}");
}

#[test]
fn buffer_filter_follows_the_filter_whatever_other_policies_add() {
    let objects = objects();
    let epp = patch_policy(&objects);
    let eep = extension_policy(&objects);
    let filter = xds::wasm_filter_name(eep, 0);
    let mut crowded = generated(&objects, NameScheme::V2, NO_MODULE, 8082);
    // Filters other policies on this Gateway add, where Envoy Gateway's
    // order puts them: JWT authentication before the Wasm filters, another
    // policy's Wasm filter after this one (same index, sorted by name), the
    // local rate limit after them, the router last.
    let mut other = eep.clone();
    other["metadata"]["name"] = json!("other");
    let list_ptr = filter_lists(&crowded.listeners[0]).remove(0);
    let list = crowded.listeners[0]
        .pointer_mut(&list_ptr)
        .unwrap()
        .as_array_mut()
        .unwrap();
    let mut other_wasm = list[0].clone();
    other_wasm["name"] = json!(xds::wasm_filter_name(&other, 0));
    list.insert(
        0,
        json!({"name": "envoy.filters.http.jwt_authn", "typed_config": {}}),
    );
    list.insert(2, other_wasm);
    list.insert(
        3,
        json!({"name": "envoy.filters.http.local_ratelimit", "typed_config": {}}),
    );
    let names: Vec<&str> = list.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names.last(), Some(&xds::ROUTER));

    let mut patched = crowded.clone();
    patched.apply_patch_policy(epp).unwrap();
    check_filter_needs(&patched.bootstrap(), &filter).unwrap();

    // Where a fixed index (the router's, in the Gateway without other
    // policies) would put the buffer filter: before this filter.
    let fixed = listener_patch_at(
        epp,
        "/default_filter_chain/filters/0/typed_config/http_filters/1",
    );
    let mut indexed = crowded.clone();
    indexed.apply_patch_policy(&fixed).unwrap();
    let err = check_filter_needs(&indexed.bootstrap(), &filter).unwrap_err();
    assert!(err.contains("no enabled buffer filter"), "{err}");
}

#[test]
fn listener_patch_needs_the_name_scheme_the_control_plane_config_turns_on() {
    let objects = objects();
    let epp = patch_policy(&objects);
    let filter = xds::wasm_filter_name(extension_policy(&objects), 0);
    let mut v1 = generated(&objects, NameScheme::V1, NO_MODULE, 8082);
    assert_eq!(v1.listeners[0]["name"], "mcp/mcp-gateway/http");
    let err = v1.apply_patch_policy(epp).unwrap_err();
    assert!(err.contains("resource not found: tcp-80"), "{err}");
    // The cluster was added all the same; the buffer filter is missing.
    let err = check_filter_needs(&v1.bootstrap(), &filter).unwrap_err();
    assert!(err.contains("no enabled buffer filter"), "{err}");
}

// ---------------------------------------------------------------------------
// The patched xDS in front of dev-rls and an MCP server

/// The configuration made runnable here: listener on a free port of
/// 127.0.0.1, the rate-limit cluster (if any) on dev-rls.
fn localize(mut config: Value, rls_cluster: &str, rls_port: u16) -> String {
    for listener in config["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
    {
        listener["address"] = json!({"socket_address": {"address": "127.0.0.1", "port_value": 0}});
    }
    for cluster in config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
    {
        if cluster["name"] == rls_cluster {
            cluster["type"] = json!("STATIC");
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] =
                json!({"socket_address": {"address": "127.0.0.1", "port_value": rls_port}});
        }
    }
    config.to_string()
}

/// A body sent in chunks, the first right after the headers, so that any
/// filter that lets the headers through does so before the body is whole.
fn slowly(body: &str, chunk: usize) -> Request {
    let (first, rest) = body.split_at(10);
    let mut pieces = vec![first.as_bytes().to_vec()];
    pieces.extend(rest.as_bytes().chunks(chunk).map(<[u8]>::to_vec));
    Request::post("/mcp")
        .header("content-type", "application/json")
        .chunks(pieces)
        .chunk_delay(Duration::from_millis(20))
}

fn big_call(id: u64) -> String {
    // Above Envoy Gateway's 32 KiB connection buffer, below max_body_bytes.
    tools_call_with(
        id,
        "get_weather",
        &format!(r#"{{"q":"{}"}}"#, "x".repeat(200_000)),
    )
}

fn search(addr: SocketAddr, id: u64) -> Response {
    post_json(addr, "/mcp", &tools_call(id, "search_docs"), &[]).unwrap()
}

/// What reached the MCP server: (complete requests, requests cut short).
fn upstream_seen(up: &McpUpstream) -> (u64, u64) {
    (up.requests().unwrap(), up.incomplete().unwrap())
}

#[test]
fn patched_xds_enforces_the_shipped_limits_in_envoy() {
    let objects = objects();
    let epp = patch_policy(&objects);
    let rls_cluster = Config::parse(plugin_json(extension_policy(&objects)).as_bytes())
        .unwrap()
        .rls_cluster;
    let rls = DevRls::start(&[&shipped_limits(&objects)]).unwrap();
    let up = McpUpstream::start().unwrap();
    let mut xds = generated(&objects, NameScheme::V2, &wasm_path().unwrap(), up.port());
    xds.apply_patch_policy(epp).unwrap();
    let envoy = Envoy::start(&localize(xds.bootstrap(), &rls_cluster, rls.port())).unwrap();
    let addr = envoy.listener_addr().unwrap();

    // search_docs: 3 a minute. dev-rls's clock is frozen at the start of a
    // minute: the 4th call is denied for the 60 s left of it.
    for id in 1..=3 {
        let resp = search(addr, id);
        assert_eq!(resp.status, 200, "call {id}: {}", resp.text());
    }
    let resp = search(addr, 4);
    assert_eq!(resp.status, 429, "call 4: {}", resp.text());
    assert_eq!(CLOCK_AT % 60, 0);
    assert_eq!(resp.header("retry-after"), Some("60"));
    assert_eq!(
        resp.json(),
        json!({"jsonrpc":"2.0","id":4,"error":{"code":429,"message":"Rate limit exceeded","data":{"retryAfterSeconds":60}}})
    );
    // A body over Envoy Gateway's connection buffer still reaches the filter
    // and the MCP server.
    let resp = post_json(addr, "/mcp", &big_call(5), &[]).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    // A denied call sent slowly: judged whole, nothing of it reached the MCP
    // server.
    let resp = slowly(&tools_call(6, "search_docs"), 16)
        .send(addr)
        .unwrap();
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert_eq!(resp.json()["id"], 6);
    assert_eq!(upstream_seen(&up), (4, 0));
    assert_eq!(up.calls("search_docs").unwrap(), 3);
    // Denied by the service, or again by the over-limit cache.
    assert_eq!(
        envoy.stat("wasmcustom.mcp_ratelimit.over_limit")
            + envoy.stat("wasmcustom.mcp_ratelimit.over_limit_cached"),
        2
    );
}

#[test]
fn without_the_patches_limits_leak() {
    let objects = objects();
    let epp = patch_policy(&objects);
    let rls_cluster = Config::parse(plugin_json(extension_policy(&objects)).as_bytes())
        .unwrap()
        .rls_cluster;
    let rls = DevRls::start(&[&shipped_limits(&objects)]).unwrap();
    let up = McpUpstream::start().unwrap();
    let unpatched = generated(&objects, NameScheme::V2, &wasm_path().unwrap(), up.port());

    // With the cluster but no buffer filter: the limit holds, but a denied
    // call reaches the MCP server in part, and a body over Envoy Gateway's
    // 32 KiB connection buffer gets Envoy's own 413, not the filter's answer.
    let mut cluster_only = unpatched.clone();
    cluster_only
        .apply_patch_policy(&only(epp, xds::CLUSTER))
        .unwrap();
    let envoy = Envoy::start(&localize(
        cluster_only.bootstrap(),
        &rls_cluster,
        rls.port(),
    ))
    .unwrap();
    let addr = envoy.listener_addr().unwrap();
    for id in 1..=3 {
        assert_eq!(search(addr, id).status, 200);
    }
    let resp = slowly(&tools_call(4, "search_docs"), 16)
        .send(addr)
        .unwrap();
    assert_eq!(resp.status, 429, "{}", resp.text());
    wait_for(
        "the cut-short request at the MCP server",
        Duration::from_secs(5),
        || (upstream_seen(&up) == (3, 1)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", upstream_seen(&up)));
    let resp = slowly(&big_call(5), 16 * 1024).send(addr).unwrap();
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert!(resp.try_json().is_err(), "{}", resp.text());
    drop(envoy);

    // With neither: no rate-limit cluster, the filter fails open and the
    // over-limit tool is called again.
    let envoy = Envoy::start(&localize(unpatched.bootstrap(), &rls_cluster, rls.port())).unwrap();
    let addr = envoy.listener_addr().unwrap();
    let resp = search(addr, 6);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(envoy.stat("wasmcustom.mcp_ratelimit.error"), 1);
    assert_eq!(
        envoy.stat("wasmcustom.mcp_ratelimit.failure_mode_allowed"),
        1
    );
    assert_eq!(up.calls("search_docs").unwrap(), 4);
}
