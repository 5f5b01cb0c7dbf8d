//! The official MCP SDK clients the end-to-end tests run:
//! - the Python SDK 2.x (`e2e/clients/python_client.py`, with the `.venv`
//!   that `make deps` makes from `e2e/requirements.txt`);
//! - the Python SDK 1.x (`e2e/clients/py1/client.py`, with the virtualenv
//!   `target/py1-venv` that `make deps` makes from
//!   `e2e/clients/py1/requirements.txt`);
//! - the TypeScript SDK v1, `@modelcontextprotocol/sdk`
//!   (`e2e/clients/ts/client.mjs`, with the `node_modules` that `make deps`
//!   installs there by `npm ci`);
//! - the TypeScript SDK v2, `@modelcontextprotocol/client`
//!   (`e2e/clients/ts2/client.mjs`, likewise).
//!
//! Each client connects to an MCP URL, lists the tools, calls one until a
//! call fails, then tries another tool on the same session, and prints one
//! JSON report of what its SDK surfaced (see the scripts' docs). [`SdkClient::run`]
//! returns that report.
//!
//! Before running a client, the installed SDK is checked against its pin
//! ([`SdkClient::pinned`]); a missing or different SDK is an error that says
//! to run `make deps`.

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
    /// Python SDK 2.x, default connection (`mode="auto"`: `server/discover`,
    /// falling back to `initialize`).
    Python,
    /// Python SDK 2.x with `mode="legacy"`: the `initialize` handshake.
    PythonLegacy,
    /// Python SDK 1.x (`streamablehttp_client` and `ClientSession`): the
    /// `initialize` handshake.
    Python1,
    /// TypeScript SDK v1, `@modelcontextprotocol/sdk` (`initialize`
    /// handshake).
    TypeScript,
    /// TypeScript SDK v2, `@modelcontextprotocol/client`, default connection
    /// (`versionNegotiation` mode `legacy`: the `initialize` handshake).
    TypeScript2,
    /// TypeScript SDK v2 with `versionNegotiation: {mode: 'auto'}`:
    /// `server/discover`, falling back to `initialize`.
    TypeScript2Auto,
}

impl SdkClient {
    /// Every client, in the order of the README's table.
    pub const ALL: [SdkClient; 6] = [
        SdkClient::Python,
        SdkClient::PythonLegacy,
        SdkClient::Python1,
        SdkClient::TypeScript,
        SdkClient::TypeScript2,
        SdkClient::TypeScript2Auto,
    ];

    /// A label for logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            SdkClient::Python => "python-sdk-client",
            SdkClient::PythonLegacy => "python-sdk-client-legacy",
            SdkClient::Python1 => "python1-sdk-client",
            SdkClient::TypeScript => "ts-sdk-client",
            SdkClient::TypeScript2 => "ts2-sdk-client",
            SdkClient::TypeScript2Auto => "ts2-sdk-client-auto",
        }
    }

    /// The SDK package the client runs: PyPI `mcp` or the npm package.
    pub fn package(self) -> &'static str {
        match self {
            SdkClient::Python | SdkClient::PythonLegacy | SdkClient::Python1 => "mcp",
            SdkClient::TypeScript => TS_SDK,
            SdkClient::TypeScript2 | SdkClient::TypeScript2Auto => TS2_SDK,
        }
    }

    /// The SDK version the repository pins for this client (read from
    /// `e2e/requirements.txt`, `e2e/clients/py1/requirements.txt`,
    /// `e2e/clients/ts/package.json` or `e2e/clients/ts2/package.json`).
    pub fn pinned(self) -> Result<String> {
        let paths = Paths::discover();
        match self {
            SdkClient::Python | SdkClient::PythonLegacy => {
                requirements_pin(&paths.root.join("e2e/requirements.txt"))
            }
            SdkClient::Python1 => requirements_pin(&paths.clients_dir().join(PY1_REQUIREMENTS)),
            SdkClient::TypeScript => package_pin(&paths.clients_dir().join("ts"), TS_SDK),
            SdkClient::TypeScript2 | SdkClient::TypeScript2Auto => {
                package_pin(&paths.clients_dir().join("ts2"), TS2_SDK)
            }
        }
    }

    /// Checks that the client's SDK is installed at its pinned version;
    /// returns that version.
    pub fn check(self) -> Result<String> {
        match self {
            SdkClient::Python | SdkClient::PythonLegacy => python_sdk(),
            SdkClient::Python1 => python1_sdk(),
            SdkClient::TypeScript => ts_sdk(),
            SdkClient::TypeScript2 | SdkClient::TypeScript2Auto => ts2_sdk(),
        }
    }

    /// Runs the client against `url` (the MCP endpoint, e.g. through Envoy)
    /// and returns its JSON report.
    pub fn run(self, url: &str, scenario: Scenario) -> Result<Value> {
        self.check()?;
        let paths = Paths::discover();
        let clients = paths.clients_dir();
        let (program, script) = match self {
            SdkClient::Python | SdkClient::PythonLegacy => {
                (paths.python()?, clients.join("python_client.py"))
            }
            SdkClient::Python1 => (paths.py1_python()?, clients.join("py1/client.py")),
            SdkClient::TypeScript => (paths.node()?, clients.join("ts/client.mjs")),
            SdkClient::TypeScript2 | SdkClient::TypeScript2Auto => {
                (paths.node()?, clients.join("ts2/client.mjs"))
            }
        };
        let mut cmd = Command::new(program);
        cmd.arg(script).arg(url).arg(scenario.as_str());
        match self {
            SdkClient::PythonLegacy => {
                cmd.arg("--mode").arg("legacy");
            }
            SdkClient::TypeScript2Auto => {
                cmd.arg("--negotiation").arg("auto");
            }
            _ => {}
        }
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

/// The TypeScript SDK v1 package.
const TS_SDK: &str = "@modelcontextprotocol/sdk";
/// The TypeScript SDK v2 client package.
const TS2_SDK: &str = "@modelcontextprotocol/client";
/// The Python SDK 1.x client's requirements, under `e2e/clients`.
const PY1_REQUIREMENTS: &str = "py1/requirements.txt";

/// Runs `check` once per process and keeps its outcome.
fn once(
    cell: &'static OnceLock<Result<String, String>>,
    check: fn() -> Result<String>,
) -> Result<String> {
    cell.get_or_init(|| check().map_err(|e| e.message().to_owned()))
        .clone()
        .map_err(Error::new)
}

/// The MCP Python SDK 2.x in `.venv`, checked against `e2e/requirements.txt`.
fn python_sdk() -> Result<String> {
    static CHECKED: OnceLock<Result<String, String>> = OnceLock::new();
    once(&CHECKED, || {
        let paths = Paths::discover();
        check_python_sdk(&paths.python()?, &paths.root.join("e2e/requirements.txt"))
    })
}

/// The MCP Python SDK 1.x in its virtualenv, checked against
/// `e2e/clients/py1/requirements.txt`.
fn python1_sdk() -> Result<String> {
    static CHECKED: OnceLock<Result<String, String>> = OnceLock::new();
    once(&CHECKED, || {
        let paths = Paths::discover();
        check_python_sdk(
            &paths.py1_python()?,
            &paths.clients_dir().join(PY1_REQUIREMENTS),
        )
    })
}

/// The `mcp==<version>` pin of a requirements file.
fn requirements_pin(requirements: &Path) -> Result<String> {
    pin_in_requirements(&read(requirements)?, "mcp").ok_or_else(|| {
        Error::new(format!(
            "no `mcp==<version>` line in {}",
            requirements.display()
        ))
    })
}

/// Checks that `python` has PyPI `mcp` at the version `requirements` pins.
fn check_python_sdk(python: &Path, requirements: &Path) -> Result<String> {
    let pinned = requirements_pin(requirements)?;
    let out = Command::new(python)
        .arg("-c")
        .arg("import importlib.metadata as m; print(m.version('mcp'))")
        .output()
        .context(|| format!("cannot run {}", python.display()))?;
    let installed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || installed != pinned {
        return Err(Error::new(format!(
            "the MCP Python SDK in {} is {}, but {} pins mcp=={pinned}: run `make deps`\n{}",
            python.display(),
            if installed.is_empty() {
                "not installed".to_owned()
            } else {
                installed
            },
            requirements.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(installed)
}

/// The MCP TypeScript SDK v1 and Node.js, checked against the pin in
/// `e2e/clients/ts/package.json`.
fn ts_sdk() -> Result<String> {
    static CHECKED: OnceLock<Result<String, String>> = OnceLock::new();
    once(&CHECKED, || {
        check_ts_sdk(&Paths::discover().clients_dir().join("ts"), TS_SDK)
    })
}

/// The MCP TypeScript SDK v2 client and Node.js, checked against the pin in
/// `e2e/clients/ts2/package.json`.
fn ts2_sdk() -> Result<String> {
    static CHECKED: OnceLock<Result<String, String>> = OnceLock::new();
    once(&CHECKED, || {
        check_ts_sdk(&Paths::discover().clients_dir().join("ts2"), TS2_SDK)
    })
}

/// The version `dir/package.json` pins for the dependency `sdk`.
fn package_pin(dir: &Path, sdk: &str) -> Result<String> {
    let manifest: Value = serde_json::from_str(&read(&dir.join("package.json"))?)?;
    manifest
        .pointer(&format!("/dependencies/{}", sdk.replace('/', "~1")))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::new(format!("{sdk} is not a dependency in {}", dir.display())))
}

/// Checks that Node.js runs and that `dir/node_modules` has `sdk` at the
/// version `dir/package.json` pins.
fn check_ts_sdk(dir: &Path, sdk: &str) -> Result<String> {
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
    let pinned = package_pin(dir, sdk)?;
    let installed_manifest = dir.join("node_modules").join(sdk).join("package.json");
    let installed = std::fs::read_to_string(&installed_manifest)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_owned));
    match installed {
        Some(v) if v == pinned => Ok(v),
        other => Err(Error::new(format!(
            "{sdk} in {} is {}, but package.json pins {pinned}: run `make deps` \
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
