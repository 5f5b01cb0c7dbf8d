//! The manifests of `envoy/gateway/` read and checked on their own: kinds,
//! references between them, the filter's configuration, the rate-limit
//! service and its limits.

use std::collections::BTreeMap;
use std::path::PathBuf;

use e2e::{DevRls, Paths};
use mcp_ratelimit::config::Config;
use serde_json::{json, Value};

use super::xds::{self, NameScheme};

/// The envoyproxy/ratelimit image every manifest runs: the commit the
/// end-to-end tests build and run (`e2e/ratelimit/go.mod`).
const RATELIMIT_IMAGE: &str = "envoyproxy/ratelimit:3fb70258";

const FILES: [&str; 4] = [
    "envoy/gateway/control-plane/envoy-gateway.yaml",
    "envoy/gateway/gateway.yaml",
    "envoy/gateway/mcp-ratelimit.yaml",
    "envoy/gateway/ratelimit-service.yaml",
];

// ---------------------------------------------------------------------------
// Reading them

fn root() -> PathBuf {
    Paths::discover().root
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_docs(rel: &str, text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            <Value as serde::Deserialize>::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}"))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

pub type Objects = BTreeMap<(String, String), Value>;

/// Every object of the manifests, by (kind, name).
pub fn objects() -> Objects {
    let mut out = BTreeMap::new();
    for file in FILES {
        for doc in yaml_docs(file, &read(file)) {
            let kind = str_at(&doc, "/kind").to_owned();
            let name = str_at(&doc, "/metadata/name").to_owned();
            assert!(
                out.insert((kind.clone(), name.clone()), doc).is_none(),
                "{kind}/{name} twice"
            );
        }
    }
    out
}

pub fn object<'a>(objects: &'a Objects, kind: &str, name: &str) -> &'a Value {
    objects
        .get(&(kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("no {kind} {name} in envoy/gateway/"))
}

pub fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

pub fn extension_policy(objects: &Objects) -> &Value {
    object(objects, "EnvoyExtensionPolicy", "mcp-ratelimit")
}

pub fn patch_policy(objects: &Objects) -> &Value {
    object(objects, "EnvoyPatchPolicy", "mcp-ratelimit")
}

/// The EnvoyGateway document inside the control-plane ConfigMap.
fn envoy_gateway_config(objects: &Objects) -> Value {
    let cm = object(objects, "ConfigMap", "envoy-gateway-config");
    let docs = yaml_docs("envoy-gateway.yaml", str_at(cm, "/data/envoy-gateway.yaml"));
    let [doc] = docs.as_slice() else {
        panic!("the ConfigMap holds {} documents, want 1", docs.len());
    };
    doc.clone()
}

/// The filter's configuration as Envoy Gateway hands it over: the `config`
/// of the policy's Wasm extension, as JSON.
pub fn plugin_json(policy: &Value) -> String {
    let config = &policy["spec"]["wasm"][0]["config"];
    assert!(config.is_object(), "the Wasm config must be a mapping");
    config.to_string()
}

/// The patches of an EnvoyPatchPolicy for resources of this type.
fn patches<'a>(policy: &'a Value, type_url: &str) -> Vec<&'a Value> {
    policy["spec"]["jsonPatches"]
        .as_array()
        .expect("jsonPatches")
        .iter()
        .filter(|p| p["type"] == type_url)
        .collect()
}

pub fn speaks_http2(cluster: &Value) -> bool {
    cluster
        .pointer("/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/explicit_http_config/http2_protocol_options")
        .or_else(|| cluster.pointer("/http2_protocol_options"))
        .is_some_and(Value::is_object)
}

/// Whether an image reference names a fixed version: a digest, or a tag
/// that is not a moving one.
fn pinned(image: &str) -> bool {
    if let Some((_, digest)) = image.split_once('@') {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        return hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').is_some_and(|(_, tag)| {
        !tag.is_empty()
            && !["latest", "master", "main", "dev", "edge"].contains(&tag)
            && !tag.ends_with("-latest")
    })
}

fn container_env(deployment: &Value) -> BTreeMap<String, String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                str_at(e, "/name").to_owned(),
                str_at(e, "/value").to_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Checking them

#[test]
fn every_manifest_file_is_checked() {
    let mut found = Vec::new();
    for dir in ["envoy/gateway", "envoy/gateway/control-plane"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                found.push(format!(
                    "{dir}/{}",
                    path.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    found.sort();
    assert_eq!(found, FILES);
}

#[test]
fn manifests_parse_with_the_expected_kinds() {
    let objects = objects();
    let gw = "gateway.networking.k8s.io/v1";
    let eg = "gateway.envoyproxy.io/v1alpha1";
    let expected = [
        ("GatewayClass", "mcp", gw, None),
        ("Gateway", "mcp-gateway", gw, Some("mcp")),
        ("HTTPRoute", "mcp-server", gw, Some("mcp")),
        ("EnvoyExtensionPolicy", "mcp-ratelimit", eg, Some("mcp")),
        ("EnvoyPatchPolicy", "mcp-ratelimit", eg, Some("mcp")),
        ("ConfigMap", "ratelimit-config", "v1", Some("mcp")),
        ("Deployment", "ratelimit", "apps/v1", Some("mcp")),
        ("Service", "ratelimit", "v1", Some("mcp")),
        ("Deployment", "redis", "apps/v1", Some("mcp")),
        ("Service", "redis", "v1", Some("mcp")),
        (
            "ConfigMap",
            "envoy-gateway-config",
            "v1",
            Some("envoy-gateway-system"),
        ),
    ];
    let found: Vec<&(String, String)> = objects.keys().collect();
    assert_eq!(objects.len(), expected.len(), "{found:?}");
    for (kind, name, api, namespace) in expected {
        let obj = object(&objects, kind, name);
        assert_eq!(str_at(obj, "/apiVersion"), api, "{kind} {name}");
        assert_eq!(
            obj.pointer("/metadata/namespace").and_then(Value::as_str),
            namespace,
            "{kind} {name}"
        );
    }
    let config = envoy_gateway_config(&objects);
    assert_eq!(config["apiVersion"], eg);
    assert_eq!(config["kind"], "EnvoyGateway");

    // Pinned images, and Deployments that select their own pods.
    for name in ["ratelimit", "redis"] {
        let dep = object(&objects, "Deployment", name);
        let labels = &dep["spec"]["template"]["metadata"]["labels"];
        for (k, v) in dep["spec"]["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(labels.get(k), Some(v), "{name}: selector misses its pods");
        }
        for c in dep["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            let image = str_at(c, "/image");
            assert!(pinned(image), "{name}: {image} is not pinned");
        }
    }
    let module = str_at(extension_policy(&objects), "/spec/wasm/0/code/image/url");
    assert!(pinned(module), "{module} is not pinned");
    assert!(
        !module.contains("://"),
        "{module}: Envoy Gateway takes `registry/image:tag`"
    );
    assert_eq!(
        str_at(
            object(&objects, "Deployment", "ratelimit"),
            "/spec/template/spec/containers/0/image"
        ),
        RATELIMIT_IMAGE
    );
}

#[test]
fn references_between_the_manifests_resolve() {
    let objects = objects();
    let gateway = object(&objects, "Gateway", "mcp-gateway");
    let route = object(&objects, "HTTPRoute", "mcp-server");
    let ns = str_at(gateway, "/metadata/namespace");

    // The class is Envoy Gateway's, as its own configuration names it.
    let class = object(
        &objects,
        "GatewayClass",
        str_at(gateway, "/spec/gatewayClassName"),
    );
    let config = envoy_gateway_config(&objects);
    assert_eq!(
        class["spec"]["controllerName"],
        config["gateway"]["controllerName"]
    );
    assert_eq!(
        class["spec"]["controllerName"],
        "gateway.envoyproxy.io/gatewayclass-controller"
    );

    // The route is attached to the Gateway's HTTP listener.
    let listeners = gateway["spec"]["listeners"].as_array().unwrap();
    let [listener] = listeners.as_slice() else {
        panic!("{} listeners, want 1", listeners.len());
    };
    assert_eq!(listener["protocol"], "HTTP");
    assert_eq!(listener["port"], 80);
    let parents = route["spec"]["parentRefs"].as_array().unwrap();
    let [parent] = parents.as_slice() else {
        panic!("{} parentRefs, want 1", parents.len());
    };
    assert_eq!(parent["kind"], "Gateway");
    assert_eq!(parent["name"], gateway["metadata"]["name"]);
    assert_eq!(parent["sectionName"], listener["name"]);
    assert_eq!(str_at(route, "/metadata/namespace"), ns);
    // To the MCP server's Service, on /mcp.
    let rules = route["spec"]["rules"].as_array().unwrap();
    let [rule] = rules.as_slice() else {
        panic!("{} rules, want 1", rules.len());
    };
    assert_eq!(
        rule["matches"],
        json!([{"path": {"type": "PathPrefix", "value": "/mcp"}}])
    );
    assert_eq!(
        rule["backendRefs"],
        json!([{"group": "", "kind": "Service", "name": "mcp-server", "port": 8082}])
    );

    // The extension policy targets that route; the patch policy that
    // Gateway, in its namespace.
    let eep = extension_policy(&objects);
    assert_eq!(
        eep["spec"]["targetRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route["metadata"]["name"]}])
    );
    assert_eq!(str_at(eep, "/metadata/namespace"), ns);
    let epp = patch_policy(&objects);
    assert_eq!(
        epp["spec"]["targetRef"],
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway["metadata"]["name"]})
    );
    assert_eq!(str_at(epp, "/metadata/namespace"), ns);

    // Envoy Gateway applies the patch policy, and names listeners as it
    // expects; the patched listener is this Gateway's.
    assert_eq!(config["extensionApis"]["enableEnvoyPatchPolicy"], true);
    assert!(
        config["runtimeFlags"]["enabled"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("XDSNameSchemeV2"))),
        "{config}"
    );
    let listener_patches = patches(epp, xds::LISTENER);
    let [listener_patch] = listener_patches.as_slice() else {
        panic!("{} listener patches, want 1", listener_patches.len());
    };
    assert_eq!(
        listener_patch["name"],
        xds::listener_name(gateway, listener, NameScheme::V2)
    );

    // The rate-limit cluster points at the shipped Service, whose port is
    // the container's gRPC port; the service's Redis is the shipped one.
    let cluster_patches = patches(epp, xds::CLUSTER);
    let [cluster_patch] = cluster_patches.as_slice() else {
        panic!("{} cluster patches, want 1", cluster_patches.len());
    };
    let endpoint = &cluster_patch["operation"]["value"]["load_assignment"]["endpoints"][0]
        ["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    let svc = object(&objects, "Service", "ratelimit");
    assert_eq!(
        str_at(endpoint, "/address"),
        format!("ratelimit.{ns}.svc.cluster.local")
    );
    let port = endpoint["port_value"].as_u64().unwrap();
    assert_eq!(svc["spec"]["ports"][0]["port"].as_u64(), Some(port));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"].as_u64(), Some(port));
    let dep = object(&objects, "Deployment", "ratelimit");
    let env = container_env(dep);
    assert_eq!(env["GRPC_PORT"].parse::<u64>().unwrap(), port);
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(dep["spec"]["template"]["metadata"]["labels"][k], *v);
    }
    let (redis_host, redis_port) = env["REDIS_URL"].split_once(':').unwrap();
    let redis = object(&objects, "Service", redis_host);
    assert_eq!(
        redis["spec"]["ports"][0]["port"].as_u64(),
        redis_port.parse().ok()
    );
}

#[test]
fn filter_configuration_is_accepted_and_names_the_patched_cluster() {
    let objects = objects();
    let eep = extension_policy(&objects);
    let wasm = eep["spec"]["wasm"].as_array().unwrap();
    let [ext] = wasm.as_slice() else {
        panic!("{} Wasm extensions, want 1", wasm.len());
    };
    assert_eq!(ext["code"]["type"], "Image");
    assert_eq!(ext["rootID"], "mcp_ratelimit");
    // A module that cannot be fetched must not leave the route unlimited.
    assert_eq!(ext["failOpen"], false);

    let config = Config::parse(plugin_json(eep).as_bytes()).unwrap();
    let epp = patch_policy(&objects);
    let cluster_patch = patches(epp, xds::CLUSTER)[0];
    assert_eq!(cluster_patch["operation"]["op"], "add");
    assert_eq!(cluster_patch["operation"]["path"], "");
    let cluster = &cluster_patch["operation"]["value"];
    assert_eq!(str_at(cluster, "/name"), config.rls_cluster);
    assert_eq!(cluster_patch["name"], cluster["name"]);
    assert!(speaks_http2(cluster), "{cluster}");
    // EnvoyExtensionPolicy cannot set allow_on_headers_stop_iteration.
    assert!(
        !config.hold_headers,
        "the filter must not hold headers here"
    );

    // A misspelt key is refused, naming it.
    let mut bad = eep.clone();
    bad["spec"]["wasm"][0]["config"]["timout_ms"] = json!(5);
    let err = Config::parse(plugin_json(&bad).as_bytes()).unwrap_err();
    assert!(err.0.contains("timout_ms"), "{}", err.0);
}

#[test]
fn ratelimit_image_is_the_commit_the_tests_run() {
    let objects = objects();
    let image = |doc: &Value| str_at(doc, "/spec/template/spec/containers/0/image").to_owned();
    assert_eq!(
        image(object(&objects, "Deployment", "ratelimit")),
        RATELIMIT_IMAGE
    );
    let istio = yaml_docs(
        "envoy/istio/ratelimit-service.yaml",
        &read("envoy/istio/ratelimit-service.yaml"),
    );
    let istio = istio
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "ratelimit")
        .expect("the Istio ratelimit Deployment");
    assert_eq!(
        image(istio),
        RATELIMIT_IMAGE,
        "envoy/istio/ratelimit-service.yaml"
    );
    let compose: Value = serde_norway::from_str(&read("e2e/docker-compose.yml")).unwrap();
    assert_eq!(
        str_at(&compose, "/services/ratelimit/image"),
        RATELIMIT_IMAGE,
        "e2e/docker-compose.yml"
    );
}

/// The limits ConfigMap's text.
pub fn shipped_limits(objects: &Objects) -> String {
    str_at(
        object(objects, "ConfigMap", "ratelimit-config"),
        "/data/ratelimit.yaml",
    )
    .to_owned()
}

#[test]
fn limits_configmap_holds_the_shipped_limits_where_the_service_reads_them() {
    let objects = objects();
    let limits = shipped_limits(&objects);
    let parsed: Value = serde_norway::from_str(&limits).unwrap();
    let file: Value = serde_norway::from_str(&read("envoy/ratelimit.yaml")).unwrap();
    assert_eq!(
        parsed, file,
        "the ConfigMap's limits differ from envoy/ratelimit.yaml"
    );

    // The rate-limit service accepts them, for the filter's domain.
    let dir = e2e::test_dir("gateway-limits").unwrap();
    let path = dir.path().join("ratelimit.yaml");
    std::fs::write(&path, &limits).unwrap();
    assert_eq!(DevRls::check(&path).unwrap(), "ok");
    let config = Config::parse(plugin_json(extension_policy(&objects)).as_bytes()).unwrap();
    assert_eq!(parsed["domain"], config.domain.as_str());

    // Mounted where envoyproxy/ratelimit reads them.
    let dep = object(&objects, "Deployment", "ratelimit");
    let env = container_env(dep);
    assert_eq!(env["RUNTIME_WATCH_ROOT"], "false");
    assert_eq!(env["USE_STATSD"], "false");
    let config_dir = format!(
        "{}/{}/config",
        env["RUNTIME_ROOT"], env["RUNTIME_SUBDIRECTORY"]
    );
    let container = &dep["spec"]["template"]["spec"]["containers"][0];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == config_dir.as_str())
        .unwrap_or_else(|| panic!("nothing mounted at {config_dir}"));
    let volume = dep["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], "ratelimit-config");
}
