//! Rendering the shipped Envoy configs for a test: the files in `envoy/`
//! with free ports, the built module and the test's plugin configuration
//! substituted.

use crate::paths::Paths;
use std::net::SocketAddr;

use serde_json::Value;

use crate::{
    post_json, render, Context, DevRls, Envoy, Error, McpUpstream, Request, Response, Result,
};

/// Reads a shipped Envoy config, `envoy/<name>`.
pub fn shipped(name: &str) -> Result<String> {
    let path = Paths::discover().root.join("envoy").join(name);
    std::fs::read_to_string(&path).context(|| format!("cannot read {}", path.display()))
}

/// Path of the built filter module, as a string for a config.
pub fn wasm_path() -> Result<String> {
    Ok(Paths::discover().wasm()?.display().to_string())
}

/// Path of the filter module built with the `panic-test` feature, as a string
/// for a config.
pub fn panic_wasm_path() -> Result<String> {
    Ok(Paths::discover().panic_wasm()?.display().to_string())
}

/// Replaces the plugin configuration of a shipped config (the JSON block
/// under `value: |`) with `plugin`, on one line.
pub fn with_plugin(yaml: &str, plugin: &str) -> Result<String> {
    const START: &str = "                  value: |\n";
    const END: &str = "\n                    }\n";
    let from = yaml
        .find(START)
        .ok_or_else(|| Error::new("no plugin configuration block (`value: |`) in the config"))?
        + START.len();
    let to = yaml
        .get(from..)
        .and_then(|rest| rest.find(END))
        .ok_or_else(|| Error::new("no end of the plugin configuration block in the config"))?
        + from
        + END.len();
    let one_line = plugin.replace('\n', " ");
    let (head, tail) = (yaml.get(..from), yaml.get(to..));
    match (head, tail) {
        (Some(head), Some(tail)) => Ok(format!("{head}                    {one_line}\n{tail}")),
        _ => Err(Error::new("plugin configuration block out of range")),
    }
}

/// Renders a shipped Envoy config (its text in `template`) for a test:
/// listener and admin on port 0, the rate-limit service on `rls_port`, the
/// MCP server on `upstream_port`, the built module, and `plugin` as the
/// filter's configuration. `extra` substitutions are applied after these.
pub fn render_config(
    template: &str,
    rls_port: u16,
    upstream_port: u16,
    plugin: &str,
    extra: &[(&str, String)],
) -> Result<String> {
    let mut subs = vec![
        ("port_value: 10000", "port_value: 0".to_owned()),
        ("port_value: 9901", "port_value: 0".to_owned()),
        ("port_value: 8081", format!("port_value: {rls_port}")),
        ("port_value: 8082", format!("port_value: {upstream_port}")),
        (
            "filename: target/mcp_ratelimit.wasm",
            format!("filename: {}", wasm_path()?),
        ),
    ];
    subs.extend(extra.iter().cloned());
    with_plugin(&render(template, &subs)?, plugin)
}

/// The usual end-to-end setup: dev-rls with `limits` (its clock frozen, see
/// [`DevRls`]), the `mcp-upstream` stand-in, and Envoy with a shipped config
/// and the test's plugin configuration. Everything stops when it is dropped.
pub struct Stack {
    pub envoy: Envoy,
    pub rls: DevRls,
    pub up: McpUpstream,
    /// Envoy's listener.
    pub addr: SocketAddr,
}

impl Stack {
    /// `envoy/envoy.yaml` with `plugin`, in front of dev-rls with `limits`.
    pub fn start(plugin: &str, limits: &str) -> Stack {
        Self::start_with("envoy.yaml", plugin, limits, &[])
    }

    /// `envoy/<template>` with `plugin` and `extra` substitutions.
    pub fn start_with(
        template: &str,
        plugin: &str,
        limits: &str,
        extra: &[(&str, String)],
    ) -> Stack {
        Self::start_on(DevRls::start(&[limits]).unwrap(), template, plugin, extra)
    }

    /// `envoy/<template>` with `plugin` and `extra` substitutions, in front of
    /// this dev-rls (e.g. one started with another clock).
    pub fn start_on(rls: DevRls, template: &str, plugin: &str, extra: &[(&str, String)]) -> Stack {
        let up = McpUpstream::start().unwrap();
        let yaml = render_config(
            &shipped(template).unwrap(),
            rls.port(),
            up.port(),
            plugin,
            extra,
        )
        .unwrap();
        let envoy = Envoy::start(&yaml).unwrap();
        let addr = envoy.listener_addr().unwrap();
        Stack {
            envoy,
            rls,
            up,
            addr,
        }
    }

    /// [`Stack::start_on`] with Envoy run with `opts` (e.g. another Envoy
    /// binary, [`crate::EnvoyOptions::bin`]). Fails, rather than panics, when a
    /// process does not start, so that a caller running several Envoy
    /// releases can say which one failed.
    pub fn start_opts(
        rls: DevRls,
        template: &str,
        plugin: &str,
        extra: &[(&str, String)],
        opts: &crate::EnvoyOptions,
    ) -> Result<Stack> {
        let up = McpUpstream::start()?;
        let yaml = render_config(&shipped(template)?, rls.port(), up.port(), plugin, extra)?;
        let envoy = Envoy::start_with(&yaml, opts)?;
        let addr = envoy.listener_addr()?;
        Ok(Stack {
            envoy,
            rls,
            up,
            addr,
        })
    }

    /// POSTs a JSON body to `/mcp`.
    pub fn post(&self, body: &str) -> Response {
        self.post_with(body, &[])
    }

    /// POSTs a JSON body to `/mcp` with extra headers.
    pub fn post_with(&self, body: &str, headers: &[(&str, &str)]) -> Response {
        post_json(self.addr, "/mcp", body, headers).unwrap()
    }

    /// Sends any request to Envoy.
    pub fn send(&self, req: Request) -> Response {
        req.send(self.addr).unwrap()
    }

    /// A counter of the filter (`wasmcustom.mcp_ratelimit.<name>`).
    pub fn stat(&self, name: &str) -> u64 {
        self.envoy.stat(&format!("wasmcustom.mcp_ratelimit.{name}"))
    }

    /// What the rate-limit service received, oldest first.
    pub fn rls_requests(&self) -> Vec<Value> {
        let resp = Request::get("/requests")
            .send(self.rls.admin_addr())
            .unwrap();
        resp.json().as_array().cloned().unwrap_or_default()
    }
}

/// Envoy's native peer (`bench/envoy-native.yaml`: the `mcp` filter and the
/// `ratelimit` filter keyed on the tool it finds), in front of its own
/// dev-rls with `limits` and its own MCP server; `extra` substitutions are
/// applied after the ports (e.g. a longer timeout).
pub struct Native {
    pub envoy: Envoy,
    pub rls: DevRls,
    pub up: McpUpstream,
    pub addr: SocketAddr,
}

impl Native {
    pub fn start(limits: &str, extra: &[(&str, String)]) -> Native {
        let rls = DevRls::start(&[limits]).unwrap();
        let up = McpUpstream::start().unwrap();
        let template =
            std::fs::read_to_string(Paths::discover().root.join("bench/envoy-native.yaml"))
                .unwrap();
        let mut subs = vec![
            ("port_value: 10000", "port_value: 0".to_owned()),
            ("port_value: 9901", "port_value: 0".to_owned()),
            ("port_value: 8081", format!("port_value: {}", rls.port())),
            ("port_value: 8082", format!("port_value: {}", up.port())),
        ];
        subs.extend(extra.iter().map(|(a, b)| (*a, b.clone())));
        let yaml = render(&template, &subs).unwrap();
        let envoy = Envoy::start(&yaml).unwrap();
        let addr = envoy.listener_addr().unwrap();
        Native {
            envoy,
            rls,
            up,
            addr,
        }
    }

    /// POSTs a JSON body to `/mcp` with the `Accept` an MCP client sends
    /// (without it the native filter does not parse).
    pub fn post(&self, body: &str) -> Response {
        post_json(self.addr, "/mcp", body, &[("accept", ACCEPT)]).unwrap()
    }
}

/// The `Accept` of an MCP client's POST.
pub const ACCEPT: &str = "application/json, text/event-stream";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_plugin_replaces_the_block() {
        let yaml = "a:\n                  value: |\n                    {\n                      \"x\": 1\n                    }\n                vm_config: {}\n";
        let out = with_plugin(yaml, "{\"y\":\n2}").unwrap();
        assert_eq!(
            out,
            "a:\n                  value: |\n                    {\"y\": 2}\n                vm_config: {}\n"
        );
        assert!(with_plugin("nothing", "{}").is_err());
    }
}
