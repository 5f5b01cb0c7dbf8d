//! Where the programs under test are.
//!
//! | what | env override | default |
//! | --- | --- | --- |
//! | Envoy | `ENVOY_BIN` | `<root>/.venv/bin/envoy`, else `envoy` on `PATH` |
//! | dev-rls | `DEV_RLS_BIN` | newest of `<target>/debug/dev-rls`, `<target>/release/dev-rls` |
//! | mcp-upstream | `MCP_UPSTREAM_BIN` | `CARGO_BIN_EXE_mcp-upstream` (run time), else newest of `<target>/{debug,release}/mcp-upstream` |
//! | filter wasm | `MCP_RATELIMIT_WASM` | `<target>/mcp_ratelimit.wasm` (what `make build` ships) |
//! | filter wasm that panics on request (feature `panic-test`) | `MCP_RATELIMIT_PANIC_WASM` | `<target>/mcp_ratelimit_panic_test.wasm` (`make wasm-panic-test`) |
//! | Python with the MCP SDK | `MCP_PYTHON` | `<root>/.venv/bin/python` (what `make deps` installs) |
//! | Python with the MCP SDK 1.x | `MCP_PY1_PYTHON` | `<target>/py1-venv/bin/python` (what `make deps` installs) |
//! | Node.js | `NODE_BIN` | `node` on `PATH` |
//! | envoyproxy/ratelimit | `RATELIMIT_BIN` | `<target>/ratelimit/ratelimit` (what `make ratelimit` builds) |
//! | Redis | `REDIS_SERVER_BIN` | `redis-server` on `PATH` |
//!
//! `<root>` is the workspace root (two levels above this crate's manifest
//! directory); `<target>` is `CARGO_TARGET_DIR` if set (relative to `<root>`),
//! else `<root>/target`.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Locations of the workspace and of the programs the e2e tests run.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Workspace root.
    pub root: PathBuf,
    /// Cargo target directory.
    pub target: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self::discover()
    }
}

impl Paths {
    /// Workspace root from this crate's `CARGO_MANIFEST_DIR`, target dir from
    /// `CARGO_TARGET_DIR` or `<root>/target`.
    pub fn discover() -> Paths {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let joined = manifest.join("..").join("..");
        let root = joined.canonicalize().unwrap_or(joined);
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => root.join(dir),
            _ => root.join("target"),
        };
        Paths { root, target }
    }

    /// The Envoy binary.
    pub fn envoy(&self) -> Result<PathBuf> {
        if let Some(p) = from_env("ENVOY_BIN")? {
            return Ok(p);
        }
        let venv = self.root.join(".venv/bin/envoy");
        if venv.is_file() {
            return Ok(venv);
        }
        if let Some(p) = on_path("envoy") {
            return Ok(p);
        }
        Err(Error::new(format!(
            "Envoy not found at {} nor on PATH: run `make build` (it installs Envoy 1.40 \
             into .venv) or set ENVOY_BIN",
            venv.display()
        )))
    }

    /// The `dev-rls` rate-limit service binary.
    pub fn dev_rls(&self) -> Result<PathBuf> {
        if let Some(p) = from_env("DEV_RLS_BIN")? {
            return Ok(p);
        }
        self.built_binary("dev-rls").ok_or_else(|| {
            Error::new(format!(
                "dev-rls not found in {0}/debug or {0}/release: run `make build` \
                 (or `cargo build -p dev-rls`) or set DEV_RLS_BIN",
                self.target.display()
            ))
        })
    }

    /// The `mcp-upstream` stand-in MCP server binary.
    ///
    /// Integration tests of this crate should rather pass
    /// `env!("CARGO_BIN_EXE_mcp-upstream")` to [`crate::McpUpstream::start_bin`],
    /// which is always freshly built.
    pub fn mcp_upstream(&self) -> Result<PathBuf> {
        if let Some(p) = from_env("MCP_UPSTREAM_BIN")? {
            return Ok(p);
        }
        if let Some(p) = std::env::var_os("CARGO_BIN_EXE_mcp-upstream").map(PathBuf::from) {
            if p.is_file() {
                return Ok(p);
            }
        }
        self.built_binary("mcp-upstream").ok_or_else(|| {
            Error::new(format!(
                "mcp-upstream not found in {0}/debug or {0}/release: run `make build` \
                 (or `cargo build -p e2e --bin mcp-upstream`) or set MCP_UPSTREAM_BIN",
                self.target.display()
            ))
        })
    }

    /// The filter's wasm module.
    pub fn wasm(&self) -> Result<PathBuf> {
        if let Some(p) = from_env("MCP_RATELIMIT_WASM")? {
            return Ok(p);
        }
        let p = self.target.join("mcp_ratelimit.wasm");
        if p.is_file() {
            return Ok(p);
        }
        Err(Error::new(format!(
            "filter wasm not found at {}: run `make build` or set MCP_RATELIMIT_WASM",
            p.display()
        )))
    }

    /// The filter built with the test-only `panic-test` feature: a request with the
    /// header `x-mcp-ratelimit-test-panic` makes its VM panic.
    pub fn panic_wasm(&self) -> Result<PathBuf> {
        if let Some(p) = from_env("MCP_RATELIMIT_PANIC_WASM")? {
            return Ok(p);
        }
        let p = self.target.join("mcp_ratelimit_panic_test.wasm");
        if p.is_file() {
            return Ok(p);
        }
        Err(Error::new(format!(
            "panic-test wasm not found at {}: run `make wasm-panic-test` or set \
             MCP_RATELIMIT_PANIC_WASM",
            p.display()
        )))
    }

    /// The Python interpreter of `.venv`, which has the MCP Python SDK.
    pub fn python(&self) -> Result<PathBuf> {
        if let Some(p) = from_env("MCP_PYTHON")? {
            return Ok(p);
        }
        let venv = self.root.join(".venv/bin/python");
        if venv.is_file() {
            return Ok(venv);
        }
        Err(Error::new(format!(
            "{} not found: run `make deps` (it installs the pinned MCP Python SDK and Envoy \
             into .venv) or set MCP_PYTHON",
            venv.display()
        )))
    }

    /// The Python interpreter of the MCP Python SDK 1.x client's virtualenv,
    /// `<target>/py1-venv`.
    pub fn py1_python(&self) -> Result<PathBuf> {
        if let Some(p) = from_env("MCP_PY1_PYTHON")? {
            return Ok(p);
        }
        let venv = self.target.join("py1-venv/bin/python");
        if venv.is_file() {
            return Ok(venv);
        }
        Err(Error::new(format!(
            "{} not found: run `make deps` (it installs the pinned MCP Python SDK 1.x \
             into target/py1-venv) or set MCP_PY1_PYTHON",
            venv.display()
        )))
    }

    /// The Node.js binary.
    pub fn node(&self) -> Result<PathBuf> {
        if let Some(p) = from_env("NODE_BIN")? {
            return Ok(p);
        }
        on_path("node").ok_or_else(|| {
            Error::new(
                "Node.js (`node`) not found on PATH: install Node.js 20, then run `make deps` \
                 (it runs `npm ci` in e2e/clients/ts), or set NODE_BIN",
            )
        })
    }

    /// envoyproxy/ratelimit's service, as `make ratelimit` builds it.
    pub fn ratelimit(&self) -> Result<PathBuf> {
        if let Some(p) = from_env("RATELIMIT_BIN")? {
            return Ok(p);
        }
        let p = self.target.join("ratelimit/ratelimit");
        if p.is_file() {
            return Ok(p);
        }
        Err(Error::new(format!(
            "envoyproxy/ratelimit not found at {}: run `make ratelimit` or set RATELIMIT_BIN",
            p.display()
        )))
    }

    /// Redis's server.
    pub fn redis_server(&self) -> Result<PathBuf> {
        if let Some(p) = from_env("REDIS_SERVER_BIN")? {
            return Ok(p);
        }
        on_path("redis-server").ok_or_else(|| {
            Error::new(
                "redis-server not found on PATH: run `make e2e` (it installs Debian's \
                 redis-server) or set REDIS_SERVER_BIN",
            )
        })
    }

    /// The MCP server built on the Python SDK: `<root>/e2e/mcp-server/server.py`.
    pub fn mcp_server_script(&self) -> PathBuf {
        self.root.join("e2e/mcp-server/server.py")
    }

    /// The MCP SDK clients: `<root>/e2e/clients`.
    pub fn clients_dir(&self) -> PathBuf {
        self.root.join("e2e/clients")
    }

    /// Directory under which per-process temp dirs are made: `<target>/e2e-tmp`.
    pub fn tmp_root(&self) -> PathBuf {
        self.target.join("e2e-tmp")
    }

    /// The newer of `<target>/debug/<name>` and `<target>/release/<name>`.
    fn built_binary(&self, name: &str) -> Option<PathBuf> {
        ["debug", "release"]
            .iter()
            .map(|profile| self.target.join(profile).join(name))
            .filter(|p| p.is_file())
            .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    }
}

/// `Some(path)` when `var` is set and non-empty; an error if it names a missing file.
fn from_env(var: &str) -> Result<Option<PathBuf>> {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => {
            let p = PathBuf::from(v);
            if p.is_file() {
                Ok(Some(p))
            } else {
                Err(Error::new(format!(
                    "{var}={} does not name an existing file",
                    p.display()
                )))
            }
        }
        _ => Ok(None),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
