//! Running the real Envoy binary.
//!
//! Envoy is started with `--disable-hot-restart` (no shared memory, no
//! domain socket, so concurrently running Envoys never clash over a base id)
//! and `--admin-address-path`, so the admin address is known even when the
//! config binds admin to port 0. Listeners may bind port 0 too:
//! [`Envoy::listener_addr`] asks the admin `/listeners` endpoint for the
//! bound address. For fixed ports, [`Envoy::start_on_free_ports`] picks free
//! ones and retries once if a port was taken meanwhile.
//!
//! Envoy is the binary of [`Paths::envoy`] unless [`EnvoyOptions::bin`]
//! names another one; [`versions`] lists the Envoy releases installed for
//! the tests that run on each of them.

use crate::http::{Request, Response};
use crate::paths::Paths;
use crate::proc::{test_dir, Proc};
use crate::{free_port, Context, Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// Ports chosen by [`free_port`] for a config to be rendered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvoyPorts {
    /// The HTTP listener.
    pub listener: u16,
    /// The admin interface.
    pub admin: u16,
}

impl EnvoyPorts {
    /// Two distinct ports that were free a moment ago.
    pub fn free() -> EnvoyPorts {
        let listener = free_port();
        let mut admin = free_port();
        while admin == listener {
            admin = free_port();
        }
        EnvoyPorts { listener, admin }
    }
}

/// How Envoy is run.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// `--log-level` (default `info`).
    pub log_level: String,
    /// `--component-log-level`, e.g. `wasm:debug,http:debug`.
    pub component_log_level: Option<String>,
    /// `--concurrency` (default 1).
    pub concurrency: u32,
    /// How long to wait for admin `/ready` (default 30 s).
    pub ready_timeout: Duration,
    /// Further arguments, appended last.
    pub extra_args: Vec<String>,
    /// The Envoy binary; `None` is the one [`Paths::envoy`] finds.
    pub bin: Option<PathBuf>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            log_level: "info".to_string(),
            component_log_level: None,
            concurrency: 1,
            ready_timeout: Duration::from_secs(30),
            extra_args: Vec::new(),
            bin: None,
        }
    }
}

impl EnvoyOptions {
    /// The binary these options run: [`EnvoyOptions::bin`], else the one
    /// [`Paths::envoy`] finds.
    pub fn envoy_bin(&self) -> Result<PathBuf> {
        match &self.bin {
            Some(bin) if bin.is_file() => Ok(bin.clone()),
            Some(bin) => Err(Error::new(format!(
                "Envoy binary {} does not exist",
                bin.display()
            ))),
            None => Paths::discover().envoy(),
        }
    }
}

/// A running Envoy; stopped (SIGTERM, then SIGKILL after 2 s) on drop.
pub struct Envoy {
    proc: Proc,
    admin: SocketAddr,
    config_path: PathBuf,
}

/// What became of a start attempt.
enum Started {
    Ready(Envoy),
    /// Exited before becoming ready.
    Exited(ExitStatus, String),
}

impl Envoy {
    /// Starts Envoy with this config (which must have an `admin` section)
    /// and waits until admin `/ready` answers 200.
    pub fn start(config_yaml: &str) -> Result<Envoy> {
        Self::start_with(config_yaml, &EnvoyOptions::default())
    }

    /// [`Envoy::start`] with options.
    pub fn start_with(config_yaml: &str, opts: &EnvoyOptions) -> Result<Envoy> {
        match Self::launch(config_yaml, opts, opts.ready_timeout)? {
            Started::Ready(envoy) => Ok(envoy),
            Started::Exited(status, logs) => Err(Error::new(format!(
                "envoy exited ({status}) before becoming ready\n{logs}"
            ))),
        }
    }

    /// Picks free ports, renders the config with them, starts Envoy; if a
    /// port was taken meanwhile (Envoy fails to bind), does it all once more
    /// with new ports. Returns the ports used.
    pub fn start_on_free_ports(
        render: impl Fn(&EnvoyPorts) -> Result<String>,
        opts: &EnvoyOptions,
    ) -> Result<(Envoy, EnvoyPorts)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = EnvoyPorts::free();
            let yaml = render(&ports)?;
            match Self::launch(&yaml, opts, opts.ready_timeout)? {
                Started::Ready(envoy) => return Ok((envoy, ports)),
                Started::Exited(status, logs) => {
                    let bind_failure =
                        logs.contains("Address already in use") || logs.contains("cannot bind");
                    if !(bind_failure && attempt < 2) {
                        return Err(Error::new(format!(
                            "envoy exited ({status}) before becoming ready (attempt {attempt})\n{logs}"
                        )));
                    }
                }
            }
        }
    }

    /// Runs `envoy --mode validate` on this config: (success, output).
    pub fn validate(config_yaml: &str) -> Result<(bool, String)> {
        Self::validate_with(config_yaml, &EnvoyOptions::default())
    }

    /// [`Envoy::validate`] with the binary of `opts` (its other options are
    /// not used).
    pub fn validate_with(config_yaml: &str, opts: &EnvoyOptions) -> Result<(bool, String)> {
        let dir = test_dir("envoy-validate")?;
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config_yaml)
            .context(|| format!("cannot write {}", path.display()))?;
        Self::validate_in(dir, &path, &opts.envoy_bin()?)
    }

    /// Runs `envoy --mode validate` on this config file: (success, output).
    pub fn validate_file(path: &Path) -> Result<(bool, String)> {
        Self::validate_in(
            test_dir("envoy-validate")?,
            path,
            &EnvoyOptions::default().envoy_bin()?,
        )
    }

    fn validate_in(dir: tempfile::TempDir, path: &Path, envoy: &Path) -> Result<(bool, String)> {
        let mut cmd = Command::new(envoy);
        cmd.arg("--mode")
            .arg("validate")
            .arg("-c")
            .arg(path)
            .arg("--disable-hot-restart")
            .arg("--log-level")
            .arg("info");
        let mut proc = Proc::spawn_in(dir, "envoy-validate", &mut cmd)?;
        let timeout = Duration::from_secs(60);
        match proc.wait_exit(timeout)? {
            Some(status) => Ok((status.success(), output(&proc))),
            None => Err(Error::new(format!(
                "envoy --mode validate did not finish within {timeout:?}\n{}",
                proc.logs()
            ))),
        }
    }

    /// Starts Envoy with a config it must refuse: returns its output once it
    /// has exited non-zero. Fails if it becomes ready, exits 0, or is still
    /// running after `timeout`.
    pub fn try_start_expect_failure(config_yaml: &str, timeout: Duration) -> Result<String> {
        Self::try_start_expect_failure_with(config_yaml, &EnvoyOptions::default(), timeout)
    }

    /// [`Envoy::try_start_expect_failure`] with options.
    pub fn try_start_expect_failure_with(
        config_yaml: &str,
        opts: &EnvoyOptions,
        timeout: Duration,
    ) -> Result<String> {
        match Self::launch(config_yaml, opts, timeout)? {
            Started::Ready(mut envoy) => {
                let _ = envoy.stop();
                Err(Error::new(format!(
                    "envoy became ready but was expected to refuse the config\n{}",
                    envoy.logs()
                )))
            }
            Started::Exited(status, logs) if status.success() => Err(Error::new(format!(
                "envoy exited 0 but was expected to fail\n{logs}"
            ))),
            Started::Exited(_, logs) => Ok(logs),
        }
    }

    fn launch(config_yaml: &str, opts: &EnvoyOptions, timeout: Duration) -> Result<Started> {
        let envoy_bin = opts.envoy_bin()?;
        let dir = test_dir("envoy")?;
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config_yaml)
            .context(|| format!("cannot write {}", config_path.display()))?;
        let admin_path = dir.path().join("admin.address");
        let mut cmd = Command::new(envoy_bin);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(opts.concurrency.to_string())
            .arg("--log-level")
            .arg(&opts.log_level)
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(&admin_path);
        if let Some(levels) = &opts.component_log_level {
            cmd.arg("--component-log-level").arg(levels);
        }
        cmd.args(&opts.extra_args);
        let mut proc = Proc::spawn_in(dir, "envoy", &mut cmd)?;

        let deadline = Instant::now() + timeout;
        let mut admin: Option<SocketAddr> = None;
        loop {
            if let Some(status) = proc.try_wait()? {
                return Ok(Started::Exited(status, proc.logs()));
            }
            if admin.is_none() {
                admin = std::fs::read_to_string(&admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
            }
            if let Some(admin) = admin {
                let ready = Request::get("/ready")
                    .timeout(Duration::from_secs(2))
                    .send(admin)
                    .is_ok_and(|r| r.status == 200);
                if ready {
                    return Ok(Started::Ready(Envoy {
                        proc,
                        admin,
                        config_path,
                    }));
                }
            }
            if Instant::now() >= deadline {
                let _ = proc.stop();
                return Err(Error::new(format!(
                    "envoy not ready within {timeout:?} (admin address: {})\n{}",
                    admin.map_or_else(|| "not written".to_string(), |a| a.to_string()),
                    proc.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Bound address of the first listener (from admin `/listeners`).
    pub fn listener_addr(&self) -> Result<SocketAddr> {
        self.listeners()?
            .into_iter()
            .next()
            .map(|(_, a)| a)
            .ok_or_else(|| Error::new("envoy has no listener"))
    }

    /// Bound address of the listener named `name`.
    pub fn listener_addr_named(&self, name: &str) -> Result<SocketAddr> {
        let listeners = self.listeners()?;
        listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| Error::new(format!("no listener named {name}: {listeners:?}")))
    }

    /// (name, bound address) of every listener, from admin `/listeners?format=json`.
    pub fn listeners(&self) -> Result<Vec<(String, SocketAddr)>> {
        let v = self.admin_ok("/listeners?format=json")?.try_json()?;
        let mut out = Vec::new();
        let listeners = v.get("listener_statuses").and_then(Value::as_array);
        for l in listeners.into_iter().flatten() {
            let name = l.get("name").and_then(Value::as_str).unwrap_or_default();
            let ip = l
                .pointer("/local_address/socket_address/address")
                .and_then(Value::as_str);
            let port = l
                .pointer("/local_address/socket_address/port_value")
                .and_then(Value::as_u64);
            let (Some(ip), Some(port)) = (ip, port) else {
                continue;
            };
            let addr: SocketAddr = format!("{ip}:{port}")
                .parse()
                .or_else(|_| format!("[{ip}]:{port}").parse())
                .context(|| format!("bad listener address {ip}:{port}"))?;
            out.push((name.to_string(), addr));
        }
        Ok(out)
    }

    /// Whether admin `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.admin_get("/ready").is_ok_and(|r| r.status == 200)
    }

    /// GET on the admin interface.
    pub fn admin_get(&self, path: &str) -> Result<Response> {
        Request::get(path).send(self.admin)
    }

    /// POST (empty body) on the admin interface.
    pub fn admin_post(&self, path: &str) -> Result<Response> {
        Request::post(path).send(self.admin)
    }

    fn admin_ok(&self, path: &str) -> Result<Response> {
        let r = self.admin_get(path)?;
        if r.status != 200 {
            return Err(Error::new(format!(
                "admin {path} answered {}: {}",
                r.status,
                r.text()
            )));
        }
        Ok(r)
    }

    /// Counters and gauges by name, from admin `/stats?format=json`. Wasm
    /// custom metrics appear as `wasmcustom.<name>`.
    pub fn try_stats(&self) -> Result<HashMap<String, u64>> {
        let v = self.admin_ok("/stats?format=json")?.try_json()?;
        let mut out = HashMap::new();
        for s in v
            .get("stats")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = s.get("name").and_then(Value::as_str);
            let value = s.get("value").and_then(Value::as_u64);
            if let (Some(name), Some(value)) = (name, value) {
                out.insert(name.to_string(), value);
            }
        }
        Ok(out)
    }

    /// [`Envoy::try_stats`]; panics (with Envoy's logs) if admin fails.
    pub fn stats(&self) -> HashMap<String, u64> {
        match self.try_stats() {
            Ok(s) => s,
            Err(e) => panic!("cannot read envoy stats: {e}\n{}", self.logs()),
        }
    }

    /// One counter or gauge, 0 when absent; panics if admin fails.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    /// Polls stat `name` until `accept(value)` holds; returns that value, or
    /// an error with the last value and Envoy's logs after `timeout`.
    pub fn wait_for_stat(
        &self,
        name: &str,
        accept: impl Fn(u64) -> bool,
        timeout: Duration,
    ) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.try_stats()?.get(name).copied().unwrap_or(0);
            if accept(value) {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "stat {name} still {value} after {timeout:?}\n{}",
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// POST admin `/reset_counters`.
    pub fn reset_counters(&self) -> Result<()> {
        let r = self.admin_post("/reset_counters")?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(Error::new(format!("reset_counters answered {}", r.status)))
        }
    }

    /// Envoy's stderr and stdout.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// Waits up to 5 s for `needle` to appear in Envoy's logs.
    pub fn wait_for_log(&self, needle: &str) -> Result<()> {
        crate::wait_for(
            &format!("{needle:?} in Envoy's log"),
            Duration::from_secs(5),
            || self.logs().contains(needle).then_some(()),
        )
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The config file Envoy runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Stops Envoy now (also done on drop).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.proc.stop()
    }

    /// The underlying process guard.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// stdout then stderr of a finished process.
fn output(proc: &Proc) -> String {
    format!("{}{}", proc.stdout(), proc.stderr())
}

/// The Envoy releases installed for the tests, oldest first: `(version,
/// binary)`.
///
/// Each directory `<dir>/<version>` holds one release, run as
/// `<dir>/<version>/bin/envoy` (what `make envoy-versions` installs), where
/// `<dir>` is `ENVOY_VERSIONS_DIR`, else `<target>/envoy-versions`. The
/// binary of [`Paths::envoy`] is listed too, under the version it reports.
/// Every binary must report the version it is listed under.
///
/// Fails when the directory is missing or holds no release, or when a
/// release is incomplete: a test meant to run on every release must not
/// pass having run on none.
pub fn versions() -> Result<Vec<(String, PathBuf)>> {
    let dir = match std::env::var_os("ENVOY_VERSIONS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Paths::discover().target.join("envoy-versions"),
    };
    let entries = std::fs::read_dir(&dir).context(|| {
        format!(
            "cannot read the Envoy releases directory {} (run `make envoy-versions`, \
             or set ENVOY_VERSIONS_DIR)",
            dir.display()
        )
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.context(|| format!("cannot read {}", dir.display()))?;
        if !entry.path().is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let bin = entry.path().join("bin").join("envoy");
        if !bin.is_file() {
            return Err(Error::new(format!(
                "{} has no bin/envoy: an incomplete install (run `make envoy-versions`)",
                entry.path().display()
            )));
        }
        let reported = version_of(&bin)?;
        if reported != name {
            return Err(Error::new(format!(
                "{} reports Envoy {reported}, not {name}",
                bin.display()
            )));
        }
        found.push((name, bin));
    }
    if found.is_empty() {
        return Err(Error::new(format!(
            "no Envoy release in {} (run `make envoy-versions`)",
            dir.display()
        )));
    }
    let default = Paths::discover().envoy()?;
    let version = version_of(&default)?;
    if !found.iter().any(|(v, _)| *v == version) {
        found.push((version, default));
    }
    found.sort_by_key(|(v, _)| version_key(v));
    Ok(found)
}

/// The version an Envoy binary reports (`1.40.0`), from `envoy --version`.
pub fn version_of(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .context(|| format!("cannot run {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::new(format!(
            "{} --version failed ({}): {text}{}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse_version(&text).ok_or_else(|| {
        Error::new(format!(
            "no version in the output of {} --version: {text:?}",
            bin.display()
        ))
    })
}

/// The version in `envoy --version` output:
/// `envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL` gives `1.40.0`.
fn parse_version(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("version: ")?;
    let version = rest.split('/').nth(1)?.trim();
    let numeric = !version.is_empty()
        && version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    numeric.then(|| version.to_owned())
}

/// `1.9.0` sorts before `1.10.0`.
fn version_key(version: &str) -> Vec<u64> {
    version.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_reported_version() {
        let out = "\nenvoy  version: bad8280de85c25b147a90c1d9b8a8c67a13e7134/1.36.4/Clean/RELEASE/BoringSSL\n";
        assert_eq!(parse_version(out).as_deref(), Some("1.36.4"));
        assert_eq!(
            parse_version("envoy version: abc/1.40.0/Modified/DEBUG/BoringSSL-FIPS").as_deref(),
            Some("1.40.0")
        );
        assert_eq!(parse_version("envoy version: abc"), None);
        assert_eq!(parse_version("envoy version: abc/1.x/Clean"), None);
        assert_eq!(parse_version("nothing"), None);
    }

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["1.10.0", "1.9.3", "1.40.0", "1.36.4"];
        v.sort_by_key(|v| version_key(v));
        assert_eq!(v, ["1.9.3", "1.10.0", "1.36.4", "1.40.0"]);
    }
}
