//! The official MCP SDK clients the end-to-end tests run: the Python SDK
//! (`e2e/clients/python_client.py`, with the `.venv` that `make deps`
//! makes) and the TypeScript SDK (`e2e/clients/ts/client.mjs`, with the
//! `node_modules` that `make deps` installs by `npm ci`).
//!
//! Each client connects to an MCP URL, lists the tools, calls one until a
//! call fails, then tries another tool on the same session, and prints one
//! JSON report of what its SDK surfaced (see the scripts' docs). [`SdkClient::run`]
//! returns that report.
//!
//! Before running a client, the installed SDK is checked against its pin
//! (`e2e/requirements.txt`, `e2e/clients/ts/package.json`); a missing or
//! different SDK is an error that says to run `make deps`.

use crate::paths::Paths;
use crate::proc::Proc;
use crate::{Context, Error, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// How long one client run may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the client calls until it is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `search_docs` itself.
    Direct,
    /// `call_tool` with `tool_name: search_docs`.
    CallTool,
}

impl Scenario {
    /// The scenario argument of the client scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::CallTool => "call_tool",
        }
    }
}

/// One of the official SDK clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdkClient {
    /// Python SDK, default connection (`mode="auto"`: `server/discover`,
    /// falling back to `initialize`).
    Python,
    /// Python SDK with `mode="legacy"`: the `initialize` handshake.
    PythonLegacy,
    /// TypeScript SDK (`initialize` handshake).
    TypeScript,
}

impl SdkClient {
    /// A label for logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            SdkClient::Python => "python-sdk-client",
            SdkClient::PythonLegacy => "python-sdk-client-legacy",
            SdkClient::TypeScript => "ts-sdk-client",
        }
    }

    /// Checks that the client's SDK is installed at its pinned version;
    /// returns that version.
    pub fn check(self) -> Result<String> {
        match self {
            SdkClient::Python | SdkClient::PythonLegacy => python_sdk(),
            SdkClient::TypeScript => ts_sdk(),
        }
    }

    /// Runs the client against `url` (the MCP endpoint, e.g. through Envoy)
    /// and returns its JSON report.
    pub fn run(self, url: &str, scenario: Scenario) -> Result<Value> {
        self.check()?;
        let paths = Paths::discover();
        let clients = paths.clients_dir();
        let mut cmd = match self {
            SdkClient::Python | SdkClient::PythonLegacy => {
                let mut cmd = Command::new(paths.python()?);
                cmd.arg(clients.join("python_client.py"))
                    .arg(url)
                    .arg(scenario.as_str());
                if self == SdkClient::PythonLegacy {
                    cmd.arg("--mode").arg("legacy");
                }
                cmd
            }
            SdkClient::TypeScript => {
                let mut cmd = Command::new(paths.node()?);
                cmd.arg(clients.join("ts/client.mjs"))
                    .arg(url)
                    .arg(scenario.as_str());
                cmd
            }
        };
        let mut proc = Proc::spawn(self.name(), &mut cmd)?;
        let status = proc.wait_exit(CLIENT_TIMEOUT)?.ok_or_else(|| {
            Error::new(format!(
                "{} did not finish within {CLIENT_TIMEOUT:?}\n{}",
                self.name(),
                proc.logs()
            ))
        })?;
        if !status.success() {
            return Err(Error::new(format!(
                "{} exited with {status}\n{}",
                self.name(),
                proc.logs()
            )));
        }
        let stdout = proc.stdout();
        let line = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .ok_or_else(|| {
                Error::new(format!("{} printed nothing\n{}", self.name(), proc.logs()))
            })?;
        serde_json::from_str(line).context(|| {
            format!(
                "{} printed a report that is not JSON\n{}",
                self.name(),
                proc.logs()
            )
        })
    }
}

/// The installed MCP Python SDK version, checked against the pin in
/// `e2e/requirements.txt` (once per process).
fn python_sdk() -> Result<String> {
    static CHECKED: OnceLock<Result<String, String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| check_python_sdk().map_err(|e| e.message().to_owned()))
        .clone()
        .map_err(Error::new)
}

fn check_python_sdk() -> Result<String> {
    let paths = Paths::discover();
    let requirements = paths.root.join("e2e/requirements.txt");
    let pinned = pin_in_requirements(&read(&requirements)?, "mcp").ok_or_else(|| {
        Error::new(format!(
            "no `mcp==<version>` line in {}",
            requirements.display()
        ))
    })?;
    let python = paths.python()?;
    let out = Command::new(&python)
        .arg("-c")
        .arg("import importlib.metadata as m; print(m.version('mcp'))")
        .output()
        .context(|| format!("cannot run {}", python.display()))?;
    let installed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || installed != pinned {
        return Err(Error::new(format!(
            "the MCP Python SDK in {} is {}, but e2e/requirements.txt pins mcp=={pinned}: \
             run `make deps`\n{}",
            python.display(),
            if installed.is_empty() {
                "not installed".to_owned()
            } else {
                installed
            },
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(installed)
}

/// The installed MCP TypeScript SDK version and Node.js, checked against
/// the pin in `e2e/clients/ts/package.json` (once per process).
fn ts_sdk() -> Result<String> {
    static CHECKED: OnceLock<Result<String, String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| check_ts_sdk().map_err(|e| e.message().to_owned()))
        .clone()
        .map_err(Error::new)
}

fn check_ts_sdk() -> Result<String> {
    const SDK: &str = "@modelcontextprotocol/sdk";
    let paths = Paths::discover();
    let node = paths.node()?;
    let out = Command::new(&node)
        .arg("--version")
        .output()
        .context(|| format!("cannot run {}", node.display()))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "`{} --version` failed: install Node.js 20, then run `make deps`",
            node.display()
        )));
    }
    let dir = paths.clients_dir().join("ts");
    let manifest: Value = serde_json::from_str(&read(&dir.join("package.json"))?)?;
    let pinned = manifest
        .pointer(&format!("/dependencies/{}", SDK.replace('/', "~1")))
        .and_then(Value::as_str)
        .ok_or_else(|| Error::new(format!("{SDK} is not a dependency in {}", dir.display())))?;
    let installed_manifest = dir.join("node_modules").join(SDK).join("package.json");
    let installed = std::fs::read_to_string(&installed_manifest)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_owned));
    match installed {
        Some(v) if v == pinned => Ok(v),
        other => Err(Error::new(format!(
            "{SDK} in {} is {}, but package.json pins {pinned}: run `make deps` \
             (it runs `npm ci` there)",
            dir.display(),
            other.as_deref().unwrap_or("not installed")
        ))),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).context(|| format!("cannot read {}", path.display()))
}

/// The version pinned for `package` (`package==version`) in a requirements file.
fn pin_in_requirements(text: &str, package: &str) -> Option<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .find_map(|l| {
            let (name, version) = l.split_once("==")?;
            (name.trim().eq_ignore_ascii_case(package)).then(|| version.trim().to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_pin() {
        let text = "# comment\nenvoy-server==1.40.0\nmcp==2.3.0  # the SDK\n";
        assert_eq!(pin_in_requirements(text, "mcp").as_deref(), Some("2.3.0"));
        assert_eq!(pin_in_requirements(text, "mc"), None);
        assert_eq!(pin_in_requirements("mcp>=2", "mcp"), None);
    }
}
