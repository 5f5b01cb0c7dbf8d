//! The services of the e2e tests: `mcp-upstream`, the MCP server built on
//! the official Python SDK (`e2e/mcp-server/server.py`) and `dev-rls`.
//!
//! All bind port 0 themselves and print the address they got, so no port
//! is ever raced for.

use crate::http::{Request, Response};
use crate::paths::Paths;
use crate::proc::{test_dir, Proc};
use crate::{Context, Error, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// How long a service may take to print its address.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Parses the address after `prefix` in `line` (first word after it).
fn addr_after(line: &str, prefix: &str) -> Result<SocketAddr> {
    let rest = line
        .split_once(prefix)
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let word = rest.split_whitespace().next().unwrap_or_default();
    word.parse()
        .context(|| format!("cannot parse an address from {line:?}"))
}

fn ok_json(resp: Result<Response>, what: &str) -> Result<Value> {
    let resp = resp?;
    if resp.status != 200 {
        return Err(Error::new(format!(
            "{what} answered {}: {}",
            resp.status,
            resp.text()
        )));
    }
    resp.try_json()
}

/// A running `mcp-upstream` (see its binary's docs); stopped on drop.
pub struct McpUpstream {
    proc: Proc,
    addr: SocketAddr,
}

impl McpUpstream {
    /// Starts the binary found by [`Paths::mcp_upstream`].
    pub fn start() -> Result<McpUpstream> {
        Self::start_bin(Paths::discover().mcp_upstream()?)
    }

    /// Starts this binary on 127.0.0.1, port 0, and waits for its address.
    pub fn start_bin(bin: impl AsRef<Path>) -> Result<McpUpstream> {
        let mut cmd = Command::new(bin.as_ref());
        cmd.arg("--listen").arg("127.0.0.1:0");
        let mut proc = Proc::spawn("mcp-upstream", &mut cmd)?;
        const PREFIX: &str = "mcp-upstream listening on ";
        let line = proc.wait_for_line(PREFIX, START_TIMEOUT)?;
        let addr = addr_after(&line, PREFIX)?;
        Ok(McpUpstream { proc, addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `GET /__upstream/stats`: `{"requests", "incomplete", "receiving", "calls",
    /// "methods", "last_headers", "last_body"}`.
    pub fn stats(&self) -> Result<Value> {
        ok_json(
            Request::get("/__upstream/stats").send(self.addr),
            "mcp-upstream stats",
        )
    }

    /// How many `tools/call` reached it for `tool` (0 if none).
    pub fn calls(&self, tool: &str) -> Result<u64> {
        let stats = self.stats()?;
        let n = stats.get("calls").and_then(|c| c.get(tool));
        Ok(n.and_then(Value::as_u64).unwrap_or(0))
    }

    /// How many MCP POSTs it received completely.
    pub fn requests(&self) -> Result<u64> {
        let stats = self.stats()?;
        Ok(stats.get("requests").and_then(Value::as_u64).unwrap_or(0))
    }

    /// How many MCP POSTs it gave up on because their body ended early.
    pub fn incomplete(&self) -> Result<u64> {
        let stats = self.stats()?;
        Ok(stats.get("incomplete").and_then(Value::as_u64).unwrap_or(0))
    }

    /// How many MCP POSTs have sent their head and are still sending their body.
    pub fn receiving(&self) -> Result<u64> {
        let stats = self.stats()?;
        Ok(stats.get("receiving").and_then(Value::as_u64).unwrap_or(0))
    }

    /// `POST /__upstream/reset`.
    pub fn reset(&self) -> Result<()> {
        ok_json(
            Request::post("/__upstream/reset").send(self.addr),
            "mcp-upstream reset",
        )
        .map(drop)
    }

    /// Its stderr and stdout.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops it now (also done on drop).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.proc.stop()
    }

    /// The underlying process guard.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// How the SDK-built MCP server answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct McpServerOptions {
    /// `--json-response`: answer each POST with one JSON body instead of an
    /// SSE stream (the SDK's default).
    pub json_response: bool,
    /// `--stateless`: no sessions.
    pub stateless: bool,
}

/// A running `e2e/mcp-server/server.py`: an MCP server built on the official
/// Python SDK, serving Streamable HTTP on `/mcp`; stopped on drop.
pub struct McpServer {
    proc: Proc,
    addr: SocketAddr,
}

impl McpServer {
    /// Starts it with the Python of [`Paths::python`], on 127.0.0.1 port 0,
    /// and waits for its address.
    pub fn start(opts: McpServerOptions) -> Result<McpServer> {
        let paths = Paths::discover();
        let python = paths.python()?;
        let mut cmd = Command::new(python);
        cmd.arg(paths.mcp_server_script())
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg("0");
        if opts.json_response {
            cmd.arg("--json-response");
        }
        if opts.stateless {
            cmd.arg("--stateless");
        }
        let mut proc = Proc::spawn("mcp-server", &mut cmd)?;
        const PREFIX: &str = "mcp-server listening on ";
        let line = proc.wait_for_line(PREFIX, START_TIMEOUT).map_err(|e| {
            let hint = if e.message().contains("ModuleNotFoundError") {
                "\nthe MCP Python SDK is missing from .venv: run `make deps`"
            } else {
                ""
            };
            Error::new(format!("{e}{hint}"))
        })?;
        let addr = addr_after(&line, PREFIX)?;
        Ok(McpServer { proc, addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `GET /__server/stats`: `{"runs": {"<tool>": n, ...}}`.
    pub fn stats(&self) -> Result<Value> {
        ok_json(
            Request::get("/__server/stats").send(self.addr),
            "mcp-server stats",
        )
    }

    /// How many times `tool` ran in the server (0 if never), counting the
    /// runs through `call_tool` as runs of the tool it called.
    pub fn runs(&self, tool: &str) -> Result<u64> {
        let stats = self.stats()?;
        let n = stats.get("runs").and_then(|r| r.get(tool));
        Ok(n.and_then(Value::as_u64).unwrap_or(0))
    }

    /// Its stderr and stdout.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops it now (also done on drop).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.proc.stop()
    }

    /// The underlying process guard.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// The Unix time dev-rls's clock is frozen at unless a test picks another:
/// 2026-01-01 12:00:00 UTC, 43 200 s before the end of its day window and 60 s
/// before the end of its minute window.
pub const CLOCK_AT: u64 = 1_767_268_800;

/// The clock a `dev-rls` runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RlsClock {
    /// Frozen (`--clock-at`) at this Unix time in seconds, fraction allowed
    /// (`"1767268847.75"`); only [`DevRls::advance_clock`] moves it. No
    /// window can roll over during a test, so counts are exact whatever the
    /// time of day a test runs at.
    FrozenAt(String),
    /// The system clock, as in `make run`: windows end at real boundaries.
    Real,
}

impl Default for RlsClock {
    /// Frozen at [`CLOCK_AT`].
    fn default() -> Self {
        RlsClock::FrozenAt(CLOCK_AT.to_string())
    }
}

/// A running `dev-rls` rate-limit service (gRPC) with its admin interface;
/// stopped on drop. Unless started with [`RlsClock::Real`], its clock is
/// frozen (at [`CLOCK_AT`] by default).
pub struct DevRls {
    proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    config_paths: Vec<PathBuf>,
}

impl DevRls {
    /// Writes each config text (envoyproxy/ratelimit YAML) to a file in the
    /// process's temp dir and starts the binary found by [`Paths::dev_rls`],
    /// its clock frozen at [`CLOCK_AT`].
    pub fn start(configs: &[&str]) -> Result<DevRls> {
        Self::start_on(0, configs)
    }

    /// [`DevRls::start`] with the gRPC listener on this port of 127.0.0.1 (0: any free
    /// port), e.g. to restart the service where Envoy's cluster points. The admin
    /// listener still takes a free port.
    pub fn start_on(port: u16, configs: &[&str]) -> Result<DevRls> {
        Self::start_with_clock(RlsClock::default(), port, configs)
    }

    /// [`DevRls::start_on`] with this clock.
    pub fn start_with_clock(clock: RlsClock, port: u16, configs: &[&str]) -> Result<DevRls> {
        let bin = Paths::discover().dev_rls()?;
        let dir = test_dir("dev-rls")?;
        let mut paths = Vec::new();
        for (i, text) in configs.iter().enumerate() {
            let path = dir.path().join(format!("rls-config-{i}.yaml"));
            std::fs::write(&path, text).context(|| format!("cannot write {}", path.display()))?;
            paths.push(path);
        }
        Self::launch(&bin, dir, paths, port, &clock)
    }

    /// Starts the binary found by [`Paths::dev_rls`] with these config files,
    /// its clock frozen at [`CLOCK_AT`].
    pub fn start_files(configs: &[PathBuf]) -> Result<DevRls> {
        let bin = Paths::discover().dev_rls()?;
        Self::launch(
            &bin,
            test_dir("dev-rls")?,
            configs.to_vec(),
            0,
            &RlsClock::default(),
        )
    }

    fn launch(
        bin: &Path,
        dir: tempfile::TempDir,
        configs: Vec<PathBuf>,
        port: u16,
        clock: &RlsClock,
    ) -> Result<DevRls> {
        let mut cmd = Command::new(bin);
        for c in &configs {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin")
            .arg("127.0.0.1:0");
        if let RlsClock::FrozenAt(at) = clock {
            cmd.arg("--clock-at").arg(at);
        }
        let mut proc = Proc::spawn_in(dir, "dev-rls", &mut cmd)?;
        const LISTEN: &str = "dev-rls listening on ";
        const ADMIN: &str = "dev-rls admin on ";
        const FROZEN: &str = "dev-rls clock frozen at ";
        let addr = addr_after(&proc.wait_for_line(LISTEN, START_TIMEOUT)?, LISTEN)?;
        let admin = addr_after(&proc.wait_for_line(ADMIN, START_TIMEOUT)?, ADMIN)?;
        if matches!(clock, RlsClock::FrozenAt(_)) {
            proc.wait_for_line(FROZEN, START_TIMEOUT)?;
        }
        Ok(DevRls {
            proc,
            addr,
            admin,
            config_paths: configs,
        })
    }

    /// `dev-rls --check --config <path>`: what it prints for a limits file
    /// it accepts (`ok`); an error with its stderr for one it refuses.
    pub fn check(path: &Path) -> Result<String> {
        let bin = Paths::discover().dev_rls()?;
        let out = Command::new(&bin)
            .arg("--check")
            .arg("--config")
            .arg(path)
            .output()
            .context(|| format!("cannot run {}", bin.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(Error::new(format!(
                "dev-rls refuses {}: {}{stdout}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// The gRPC address (for the Envoy cluster).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The gRPC port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The config files it runs with.
    pub fn config_paths(&self) -> &[PathBuf] {
        &self.config_paths
    }

    /// Admin `GET /stats`, as JSON.
    pub fn stats(&self) -> Result<Value> {
        ok_json(Request::get("/stats").send(self.admin), "dev-rls /stats")
    }

    /// `calls` of admin `/stats` when it is a number.
    pub fn calls(&self) -> Result<u64> {
        let stats = self.stats()?;
        stats
            .get("calls")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::new(format!("dev-rls /stats has no numeric `calls`: {stats}")))
    }

    /// Admin `POST /fault?mode=<mode>`: from now on every gRPC call is answered with
    /// this fault (`garbage`, `garbage:<i>`, `unavailable`, `internal`, `slow:<ms>`,
    /// `unknown_code`, `unknown_code:<n>`), or normally again with `none`. See dev-rls's
    /// `fault` module.
    pub fn set_fault(&self, mode: &str) -> Result<()> {
        let resp = Request::post(&format!("/fault?mode={mode}")).send(self.admin)?;
        if resp.status != 200 {
            return Err(Error::new(format!(
                "dev-rls refused fault mode {mode:?} ({}): {}",
                resp.status,
                resp.text()
            )));
        }
        let v = resp.try_json()?;
        if v.get("mode").and_then(Value::as_str) != Some(mode) {
            return Err(Error::new(format!(
                "dev-rls set another fault mode than {mode:?}: {v}"
            )));
        }
        Ok(())
    }

    /// The time its clock reads (admin `GET /clock`), in Unix seconds as
    /// dev-rls prints it (`"1767268800"`, `"1767268859.7"`), and whether it is
    /// frozen.
    pub fn clock(&self) -> Result<(String, bool)> {
        let v = ok_json(
            Request::get("/clock").send(self.admin),
            "dev-rls GET /clock",
        )?;
        match (
            v.get("now").and_then(Value::as_str),
            v.get("manual").and_then(Value::as_bool),
        ) {
            (Some(now), Some(manual)) => Ok((now.to_owned(), manual)),
            _ => Err(Error::new(format!("dev-rls /clock: unexpected {v}"))),
        }
    }

    /// Moves its frozen clock forward by `ms` milliseconds (admin
    /// `POST /clock?advance_ms=`) and returns the time it now reads, in Unix
    /// seconds as dev-rls prints it (`"1767268859.7"`). Fails when it runs on
    /// the real clock.
    pub fn advance_clock(&self, ms: u64) -> Result<String> {
        let v = ok_json(
            Request::post(&format!("/clock?advance_ms={ms}")).send(self.admin),
            "dev-rls POST /clock",
        )?;
        v.get("now")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Error::new(format!("dev-rls /clock has no `now`: {v}")))
    }

    /// Calls answered with an injected fault so far (admin `GET /fault`).
    pub fn faulted(&self) -> Result<u64> {
        let v = ok_json(Request::get("/fault").send(self.admin), "dev-rls /fault")?;
        v.get("faulted")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::new(format!("dev-rls /fault has no numeric `faulted`: {v}")))
    }

    /// Its stderr and stdout.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops it now, e.g. to test the filter's behaviour without a rate-limit
    /// service (also done on drop).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.proc.stop()
    }

    /// Stops it (SIGTERM: in-flight calls are answered first) and returns its
    /// final `(calls, over_limit)`, as it prints them on exit: exact even while
    /// calls were still arriving.
    pub fn stop_and_count(&mut self) -> Result<(u64, u64)> {
        let status = self.proc.stop()?;
        const STOPPED: &str = "dev-rls stopped: ";
        let out = self.proc.stdout();
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix(STOPPED))
            .ok_or_else(|| {
                Error::new(format!(
                    "dev-rls ({status}) printed no `{STOPPED}` line\n{}",
                    self.logs()
                ))
            })?;
        let field = |name: &str| -> Result<u64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::new(format!("no numeric {name} in {line:?}")))
        };
        Ok((field("calls")?, field("over_limit")?))
    }

    /// The underlying process guard (e.g. [`Proc::pause`] to make it hang).
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let a = addr_after("mcp-upstream listening on 127.0.0.1:4321", "listening on ").unwrap();
        assert_eq!(a.port(), 4321);
        let a = addr_after("dev-rls admin on 127.0.0.1:99 (http)", "admin on ").unwrap();
        assert_eq!(a.port(), 99);
        assert!(addr_after("nothing", "listening on ").is_err());
    }
}
