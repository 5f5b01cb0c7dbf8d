//! The production rate-limit stack of the end-to-end tests:
//! envoyproxy/ratelimit ([`RateLimitService`], built by `make ratelimit` from
//! the Go module proxy at the version `e2e/ratelimit/go.mod` pins) and
//! Debian's Redis ([`Redis`]) behind it.
//!
//! Neither can report a port it picked itself, so both get free ports picked
//! here ([`crate::free_port`]) and are started once more on new ones when a
//! port was taken in between. Both run on the real clock: envoyproxy/ratelimit
//! counts in fixed windows of the wall clock, so a test that must not see a
//! window roll over waits for one with enough time left ([`window_with`]).

use crate::http::Request;
use crate::paths::Paths;
use crate::proc::{test_dir, Proc};
use crate::{free_port, wait_for, Context, Error, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long Redis or the service may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Runs `start`, which binds ports picked by [`free_port`], up to 3 times
/// while it fails because one was taken in between.
fn on_free_ports<T>(mut start: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match start() {
            Err(e)
                if attempt < 3
                    && e.message()
                        .to_lowercase()
                        .contains("address already in use") => {}
            done => return done,
        }
    }
}

/// A Redis server on 127.0.0.1 with persistence off (no RDB snapshots, no
/// append-only file), its files in its own temp dir; stopped on drop.
/// `DEBUG SLEEP` is allowed from loopback.
pub struct Redis {
    proc: Proc,
    port: u16,
}

impl Redis {
    /// Starts `redis-server` (see [`Paths::redis_server`]) on a free port.
    pub fn start() -> Result<Redis> {
        on_free_ports(|| Self::start_on(free_port()))
    }

    /// Starts it on this port, e.g. to bring a stopped Redis back where the
    /// service expects it. Its data starts empty.
    pub fn start_on(port: u16) -> Result<Redis> {
        let bin = Paths::discover().redis_server()?;
        let dir = test_dir("redis")?;
        let mut cmd = Command::new(bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            // `DEBUG SLEEP` from loopback, to make Redis slow in tests.
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(dir.path());
        let mut proc = Proc::spawn_in(dir, "redis", &mut cmd)?;
        proc.wait_for_line("Ready to accept connections", START_TIMEOUT)?;
        Ok(Redis { proc, port })
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// One command, as RESP; the reply as text (a status or bulk string, an
    /// integer, or the items of an array joined by newlines). An error reply
    /// is an error.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let mut stream = TcpStream::connect(localhost(self.port))
            .context(|| format!("cannot connect to redis on {}", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(req.as_bytes())?;
        read_reply(&mut BufReader::new(stream))
    }

    /// The counter keys envoyproxy/ratelimit has written, sorted, with their
    /// values: `("mcp_tool_search_docs_1767268800", 3)`.
    pub fn counters(&self) -> Result<Vec<(String, u64)>> {
        let keys = self.command(&["KEYS", "*"])?;
        let mut keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        keys.sort_unstable();
        keys.into_iter()
            .map(|k| {
                let v = self.command(&["GET", k])?;
                let n = v
                    .parse()
                    .context(|| format!("redis key {k} holds {v:?}, not a count"))?;
                Ok((k.to_owned(), n))
            })
            .collect()
    }

    /// Its logs.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// Stops it now (also done on drop).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.proc.stop()
    }

    /// The process guard, e.g. [`Proc::pause`] to make Redis hang.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

fn read_reply(r: &mut impl BufRead) -> Result<String> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
    let number = || -> Result<i64> {
        rest.parse()
            .context(|| format!("bad RESP length in {line:?}"))
    };
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(Error::new(format!("redis: {rest}"))),
        "$" => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(String::new()); // nil
            };
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(len);
            String::from_utf8(buf).context(|| "redis bulk string is not UTF-8".to_owned())
        }
        "*" => {
            let n = number()?.max(0);
            let items = (0..n).map(|_| read_reply(r)).collect::<Result<Vec<_>>>()?;
            Ok(items.join("\n"))
        }
        _ => Err(Error::new(format!("unexpected RESP reply {line:?}"))),
    }
}

/// How a [`RateLimitService`] runs, beyond its limits and its Redis.
#[derive(Clone, Debug, Default)]
pub struct RateLimitOptions {
    /// The gRPC port; 0 picks a free one.
    pub grpc_port: u16,
    /// More environment settings of the service (see its
    /// `src/settings/settings.go`), e.g. `("LIMIT_RESPONSE_HEADERS_ENABLED", "true")`.
    pub env: Vec<(String, String)>,
}

/// A running envoyproxy/ratelimit (`src/service_cmd`) with these limits
/// (its YAML format) and Redis as backend; stopped on drop.
pub struct RateLimitService {
    proc: Proc,
    grpc: SocketAddr,
    http: SocketAddr,
    redis_port: u16,
    configs: Vec<String>,
    opts: RateLimitOptions,
}

impl RateLimitService {
    /// Starts the binary of [`Paths::ratelimit`] with these limits files
    /// (the texts), counting in the Redis on `redis_port`.
    pub fn start(redis_port: u16, configs: &[&str]) -> Result<RateLimitService> {
        Self::start_with(redis_port, configs, &RateLimitOptions::default())
    }

    /// [`RateLimitService::start`] with options.
    pub fn start_with(
        redis_port: u16,
        configs: &[&str],
        opts: &RateLimitOptions,
    ) -> Result<RateLimitService> {
        let configs: Vec<String> = configs.iter().map(|c| (*c).to_owned()).collect();
        on_free_ports(|| Self::launch(redis_port, &configs, opts))
    }

    fn launch(
        redis_port: u16,
        configs: &[String],
        opts: &RateLimitOptions,
    ) -> Result<RateLimitService> {
        let bin = Paths::discover().ratelimit()?;
        let dir = test_dir("ratelimit")?;
        // The service reads every file of <RUNTIME_ROOT>/<RUNTIME_SUBDIRECTORY>/config.
        let config_dir = dir.path().join("runtime/ratelimit/config");
        std::fs::create_dir_all(&config_dir)
            .context(|| format!("cannot create {}", config_dir.display()))?;
        for (i, text) in configs.iter().enumerate() {
            let path = config_dir.join(format!("limits-{i}.yaml"));
            std::fs::write(&path, text).context(|| format!("cannot write {}", path.display()))?;
        }
        let grpc_port = match opts.grpc_port {
            0 => free_port(),
            p => p,
        };
        let http_port = free_port();
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("USE_STATSD", "false")
            .env("LOG_LEVEL", "info")
            .env("RUNTIME_ROOT", dir.path().join("runtime"))
            .env("RUNTIME_SUBDIRECTORY", "ratelimit")
            .env("RUNTIME_APPDIRECTORY", "config")
            .env("RUNTIME_WATCH_ROOT", "false")
            .env("RUNTIME_IGNOREDOTFILES", "true")
            .env("REDIS_SOCKET_TYPE", "tcp")
            .env("REDIS_URL", format!("127.0.0.1:{redis_port}"))
            .env("HOST", "127.0.0.1")
            .env("PORT", http_port.to_string())
            .env("GRPC_HOST", "127.0.0.1")
            .env("GRPC_PORT", grpc_port.to_string())
            .env("DEBUG_HOST", "127.0.0.1")
            .env("DEBUG_PORT", free_port().to_string());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn_in(dir, "ratelimit", &mut cmd)?;
        proc.wait_for_stderr_line("Listening for gRPC on", START_TIMEOUT)?;
        let http = localhost(http_port);
        wait_for("envoyproxy/ratelimit /healthcheck", START_TIMEOUT, || {
            let resp = Request::get("/healthcheck").send(http).ok()?;
            (resp.status == 200).then_some(())
        })
        .map_err(|e| Error::new(format!("{e}\n{}", proc.logs())))?;
        Ok(RateLimitService {
            proc,
            grpc: localhost(grpc_port),
            http,
            redis_port,
            configs: configs.to_vec(),
            opts: opts.clone(),
        })
    }

    /// Stops it (SIGTERM) and starts it again with the same limits, Redis
    /// and gRPC port, so Envoy's cluster still points at it.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.stop()?;
        let opts = RateLimitOptions {
            grpc_port: self.grpc.port(),
            ..self.opts.clone()
        };
        let configs: Vec<&str> = self.configs.iter().map(String::as_str).collect();
        *self = Self::start_with(self.redis_port, &configs, &opts)?;
        Ok(())
    }

    /// [`RateLimitService::restart`] with other limits (as an operator
    /// changing the service's configuration).
    pub fn restart_with(&mut self, configs: &[&str]) -> Result<()> {
        self.configs = configs.iter().map(|c| (*c).to_owned()).collect();
        self.restart()
    }

    /// The gRPC port (for Envoy's rate-limit cluster).
    pub fn port(&self) -> u16 {
        self.grpc.port()
    }

    /// The service's own HTTP API: `POST /json` with a rate-limit request in
    /// its JSON form answers what the gRPC call would.
    pub fn json(&self, request: &serde_json::Value) -> Result<serde_json::Value> {
        let resp = Request::post("/json")
            .json(&request.to_string())
            .send(self.http)?;
        resp.try_json()
    }

    /// Its logs.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// Stops it now (also done on drop).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.proc.stop()
    }

    /// The process guard.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// Unix time now, in seconds with a fraction.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Waits, if need be, until the current window of `unit_secs` seconds (60
/// for a per-minute limit) has at least `at_least` left, so that a test
/// working within one window of envoyproxy/ratelimit's wall-clock windows
/// does not see it roll over. Returns the Unix second the window ends at.
pub fn window_with(unit_secs: u64, at_least: Duration) -> u64 {
    loop {
        let now = unix_now();
        let unit = unit_secs as f64;
        let end = ((now / unit).floor() + 1.0) * unit;
        if end - now >= at_least.as_secs_f64() {
            return end as u64;
        }
        std::thread::sleep(Duration::from_secs_f64(end - now + 0.05));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resp_replies() {
        let mut r = BufReader::new(&b"*2\r\n$3\r\nabc\r\n:7\r\n"[..]);
        assert_eq!(read_reply(&mut r).unwrap(), "abc\n7");
        let mut r = BufReader::new(&b"$-1\r\n"[..]);
        assert_eq!(read_reply(&mut r).unwrap(), "");
        let mut r = BufReader::new(&b"-ERR no\r\n"[..]);
        assert!(read_reply(&mut r).unwrap_err().message().contains("ERR no"));
        let mut r = BufReader::new(&b"?\r\n"[..]);
        assert!(read_reply(&mut r).is_err());
    }

    #[test]
    fn window_has_the_time_asked_for() {
        let end = window_with(1, Duration::from_millis(500));
        let left = end as f64 - unix_now();
        assert!(left > 0.4 && left <= 1.0, "{left}");
    }
}
