//! The xDS resources Envoy Gateway generates for a Gateway with one HTTP
//! listener, an HTTPRoute on it and an EnvoyExtensionPolicy with one Wasm
//! extension on that route; EnvoyPatchPolicy applied to them as Envoy Gateway
//! applies it; and the result as one static Envoy configuration.
//!
//! Shapes and names follow Envoy Gateway's own translator and its expected
//! outputs (envoyproxy/gateway, `internal/xds/translator/`: `wasm.go`,
//! `listener.go`, `httpfilters.go`, `jsonpatch.go`, and
//! `testdata/out/xds-ir/wasm.*.yaml`, `xds-name-scheme-v2.*.yaml`;
//! `internal/gatewayapi/envoyextensionpolicy.go` for the Wasm names):
//! - listener: `tcp-<port>` (xDS name scheme v2) or
//!   `<namespace>/<gateway>/<listener>` (before it); it binds the Gateway
//!   listener's port, plus 10000 below 1024; its HCM is in the default filter
//!   chain, with RDS;
//! - Wasm filter: `envoy.filters.http.wasm/envoyextensionpolicy/<ns>/<policy>/wasm/<i>`,
//!   disabled in the HCM and enabled on the policy's routes by a
//!   `FilterConfig`; `vm_id` is the part after `envoy.filters.http.wasm/`,
//!   the plugin's `name` the extension's `name`, its configuration the
//!   extension's `config` as JSON;
//! - filters sorted by Envoy Gateway's order: Wasm filters before the router,
//!   which is last;
//! - route `httproute/<ns>/<route>/rule/<i>/match/<j>/<host>` to the EDS
//!   cluster `httproute/<ns>/<route>/rule/<i>`.
//!
//! What differs, so that one Envoy can load it without Envoy Gateway: the
//! module is read from a local file (Envoy Gateway serves it from its own
//! HTTP server, with its SHA-256), the route configuration is inlined (RDS)
//! and the cluster's endpoints are static (EDS).

use serde_json::{json, Map, Value};

use super::json_patch;

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_CONFIGURATION: &str =
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const CLUSTER_LOAD_ASSIGNMENT: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const ROUTER: &str = "envoy.filters.http.router";

/// Envoy Gateway's two ways of naming listeners and route configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameScheme {
    /// `<namespace>/<gateway>/<listener>`.
    V1,
    /// `tcp-<port>` and `http-<port>` (runtime flag `XDSNameSchemeV2`).
    V2,
}

/// Where the generated configuration loads the module and finds the MCP
/// server's endpoint.
pub struct Local<'a> {
    pub module: &'a str,
    pub backend: (&'a str, u16),
}

/// Envoy Gateway's xDS resources, by type.
#[derive(Clone, Debug, Default)]
pub struct Xds {
    pub listeners: Vec<Value>,
    pub routes: Vec<Value>,
    pub clusters: Vec<Value>,
    pub endpoints: Vec<Value>,
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

/// The name of the filter Envoy Gateway generates for the `index`th Wasm
/// extension of an EnvoyExtensionPolicy.
pub fn wasm_filter_name(policy: &Value, index: usize) -> String {
    format!(
        "envoy.filters.http.wasm/envoyextensionpolicy/{}/{}/wasm/{index}",
        s(policy, "/metadata/namespace"),
        s(policy, "/metadata/name")
    )
}

/// The xDS name of a Gateway listener.
pub fn listener_name(gateway: &Value, listener: &Value, scheme: NameScheme) -> String {
    match scheme {
        NameScheme::V1 => format!(
            "{}/{}/{}",
            s(gateway, "/metadata/namespace"),
            s(gateway, "/metadata/name"),
            s(listener, "/name")
        ),
        NameScheme::V2 => format!("tcp-{}", listener["port"]),
    }
}

/// Envoy Gateway's translation of `gateway` (its first listener), `route`
/// (its first rule and match) and `policy` (its first Wasm extension).
pub fn translate(
    gateway: &Value,
    route: &Value,
    policy: &Value,
    scheme: NameScheme,
    local: &Local<'_>,
) -> Xds {
    let listener = &gateway["spec"]["listeners"][0];
    let port = listener["port"].as_u64().expect("listener port");
    let container_port = if port < 1024 { port + 10000 } else { port };
    let v1_name = listener_name(gateway, listener, NameScheme::V1);
    let (route_config, chain, stat_prefix) = match scheme {
        NameScheme::V1 => (
            v1_name.clone(),
            v1_name.clone(),
            format!("http-{container_port}"),
        ),
        NameScheme::V2 => (
            format!("http-{port}"),
            format!("http-{port}"),
            format!("http-{port}"),
        ),
    };

    let wasm = &policy["spec"]["wasm"][0];
    let filter = wasm_filter_name(policy, 0);
    let vm_id = filter
        .strip_prefix("envoy.filters.http.wasm/")
        .unwrap()
        .to_owned();
    let mut plugin = json!({
        "name": wasm.get("name").and_then(Value::as_str).unwrap_or(&vm_id),
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": wasm.get("config").map(Value::to_string).unwrap_or_default(),
        },
        "fail_open": wasm.get("failOpen").and_then(Value::as_bool).unwrap_or(false),
        "vm_config": {
            "vm_id": vm_id,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": local.module}},
        },
    });
    if let Some(root) = wasm.get("rootID") {
        plugin["root_id"] = root.clone();
    }

    let http_filters = json!([
        {
            "name": &filter,
            "disabled": true,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": plugin,
            },
        },
        {
            "name": ROUTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "suppress_envoy_headers": true,
            },
        },
    ]);
    let listeners = vec![json!({
        "name": listener_name(gateway, listener, scheme),
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": container_port}},
        "per_connection_buffer_limit_bytes": 32768,
        "max_connections_to_accept_per_socket_event": 1,
        "default_filter_chain": {
            "name": chain,
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM,
                    "stat_prefix": stat_prefix,
                    "rds": {"config_source": {"ads": {}, "resource_api_version": "V3"}, "route_config_name": route_config},
                    "http_filters": http_filters,
                    "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
                    "http2_protocol_options": {
                        "max_concurrent_streams": 100,
                        "initial_stream_window_size": 65536,
                        "initial_connection_window_size": 1048576,
                    },
                    "merge_slashes": true,
                    "normalize_path": true,
                    "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
                    "server_header_transformation": "PASS_THROUGH",
                    "use_remote_address": true,
                },
            }],
        },
    })];

    let rule = &route["spec"]["rules"][0];
    let prefix = s(rule, "/matches/0/path/value");
    assert_eq!(s(rule, "/matches/0/path/type"), "PathPrefix");
    let cluster = format!(
        "httproute/{}/{}/rule/0",
        s(route, "/metadata/namespace"),
        s(route, "/metadata/name")
    );
    let host = "*"; // no `hostnames`: every host
    let vhost = match scheme {
        NameScheme::V1 => format!("{v1_name}/{host}"),
        NameScheme::V2 => host.to_owned(),
    };
    let routes = vec![json!({
        "name": route_config,
        "ignore_port_in_host_matching": true,
        "virtual_hosts": [{
            "name": vhost,
            "domains": [host],
            "routes": [{
                "name": format!("{cluster}/match/0/{host}"),
                "match": {"path_separated_prefix": prefix},
                "route": {"cluster": cluster, "upgrade_configs": [{"upgrade_type": "websocket"}]},
                "typed_per_filter_config": {
                    filter.clone(): {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}},
                },
            }],
        }],
    })];
    let clusters = vec![json!({
        "name": cluster,
        "type": "EDS",
        "eds_cluster_config": {
            "eds_config": {"ads": {}, "resource_api_version": "V3"},
            "service_name": cluster,
        },
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "dns_lookup_family": "V4_ONLY",
        "per_connection_buffer_limit_bytes": 32768,
        "circuit_breakers": {"thresholds": [{"max_retries": 1024}]},
        "common_lb_config": {"locality_weighted_lb_config": {}},
        "ignore_health_on_host_removal": true,
        "outlier_detection": {},
    })];
    let endpoints = vec![json!({
        "cluster_name": cluster,
        "endpoints": [{
            "locality": {},
            "load_balancing_weight": 1,
            "lb_endpoints": [{
                "endpoint": {"address": {"socket_address": {
                    "address": local.backend.0,
                    "port_value": local.backend.1,
                }}},
                "load_balancing_weight": 1,
            }],
        }],
    })];
    Xds {
        listeners,
        routes,
        clusters,
        endpoints,
    }
}

fn name_of(resource: &Value, type_url: &str) -> String {
    let key = if type_url == CLUSTER_LOAD_ASSIGNMENT {
        "cluster_name"
    } else {
        "name"
    };
    resource[key].as_str().unwrap_or_default().to_owned()
}

impl Xds {
    fn of_type(&mut self, type_url: &str) -> Result<&mut Vec<Value>, String> {
        match type_url {
            LISTENER => Ok(&mut self.listeners),
            ROUTE_CONFIGURATION => Ok(&mut self.routes),
            CLUSTER => Ok(&mut self.clusters),
            CLUSTER_LOAD_ASSIGNMENT => Ok(&mut self.endpoints),
            other => Err(format!("unsupported resource type {other}")),
        }
    }

    /// Applies an EnvoyPatchPolicy's `jsonPatches` as Envoy Gateway does:
    /// each on its own, in order; `add` with an empty path (and no jsonPath)
    /// adds its value as a new resource; otherwise the operation applies to
    /// the resource of that type and name. A patch that fails leaves its
    /// resource as it was and the others apply; the failures are returned,
    /// as the policy's status would report them.
    pub fn apply_patch_policy(&mut self, policy: &Value) -> Result<(), String> {
        assert_eq!(policy["kind"], "EnvoyPatchPolicy");
        assert_eq!(policy["spec"]["type"], "JSONPatch");
        let mut errors = Vec::new();
        for patch in policy["spec"]["jsonPatches"]
            .as_array()
            .expect("jsonPatches")
        {
            if let Err(e) = self.apply_one(patch) {
                errors.push(format!("{} {}: {e}", patch["type"], patch["name"]));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    fn apply_one(&mut self, patch: &Value) -> Result<(), String> {
        let type_url = patch["type"].as_str().ok_or("no type")?;
        let name = patch["name"].as_str().ok_or("no name")?;
        let op = &patch["operation"];
        let list = self.of_type(type_url)?;
        let empty_path = op
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty();
        if op["op"] == "add" && empty_path && op.get("jsonPath").is_none() {
            let resource = op.get("value").cloned().ok_or("no value")?;
            let added = name_of(&resource, type_url);
            if list.iter().any(|r| name_of(r, type_url) == added) {
                return Err(format!("a resource named {added} exists"));
            }
            list.push(resource);
            return Ok(());
        }
        let resource = list
            .iter_mut()
            .find(|r| name_of(r, type_url) == name)
            .ok_or_else(|| format!("resource not found: {name}"))?;
        let mut patched = resource.clone();
        json_patch::apply(&mut patched, op)?;
        *resource = patched;
        Ok(())
    }

    /// One static Envoy configuration: the listeners with their route
    /// configurations inlined, the EDS clusters with their endpoints.
    pub fn bootstrap(&self) -> Value {
        let mut listeners = self.listeners.clone();
        for listener in &mut listeners {
            let mut hcms = Vec::new();
            for p in json_patch::select(listener, "$..typed_config").unwrap() {
                if listener.pointer(&p).unwrap()["@type"] == HCM {
                    hcms.push(p);
                }
            }
            for p in hcms {
                let hcm = listener.pointer_mut(&p).unwrap().as_object_mut().unwrap();
                if let Some(rds) = hcm.remove("rds") {
                    let name = s(&rds, "/route_config_name");
                    let routes = self
                        .routes
                        .iter()
                        .find(|r| r["name"] == name)
                        .unwrap_or_else(|| panic!("no route configuration {name}"));
                    hcm.insert("route_config".into(), routes.clone());
                }
            }
        }
        let clusters: Vec<Value> = self
            .clusters
            .iter()
            .map(|c| {
                let mut c = c.clone();
                if c["type"] == "EDS" {
                    let m: &mut Map<String, Value> = c.as_object_mut().unwrap();
                    let eds = m.remove("eds_cluster_config").unwrap();
                    let service = s(&eds, "/service_name");
                    let cla = self
                        .endpoints
                        .iter()
                        .find(|e| e["cluster_name"] == service)
                        .unwrap_or_else(|| panic!("no endpoints for {service}"));
                    m.insert("type".into(), json!("STATIC"));
                    m.insert("load_assignment".into(), cla.clone());
                }
                c
            })
            .collect();
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": listeners, "clusters": clusters},
        })
    }
}
