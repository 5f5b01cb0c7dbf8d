//! `dev-rls` command line: serve envoyproxy/ratelimit YAML limits over the RLS v3 gRPC API.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dev_rls::{
    format_unix_time, parse_unix_time, serve, DevRls, LoadOptions, ManualClock, RateLimitConfig,
    ServerOptions,
};

const USAGE: &str = "\
usage: dev-rls --config FILE [--config FILE ...] --listen ADDR [--admin ADDR] [--merge-domains]
               [--clock-at UNIX_SECONDS] [--verbose]
       dev-rls --check --config FILE [--config FILE ...] [--merge-domains]

  --config FILE     envoyproxy/ratelimit YAML config file (repeatable, loaded in order)
  --listen ADDR     gRPC listen address, e.g. 127.0.0.1:8081 (port 0 picks a free port)
  --admin ADDR      also serve GET /stats, GET /requests, POST /reset,
                    POST /fault?mode=... (fault injection, for tests) and
                    GET|POST /clock?advance_ms=N (the test clock) over HTTP on ADDR
  --merge-domains   merge files that declare the same domain (reference: MERGE_DOMAIN_CONFIG)
  --clock-at T      for tests: freeze the clock at Unix time T in seconds, fraction allowed
                    (e.g. 1767225600.25); only POST /clock?advance_ms=N moves it
  --verbose         log every ShouldRateLimit call to stderr
  --check           only load and validate the configs: print `ok` (exit 0) or the error (exit 1)
  -h, --help        show this help";

#[derive(Debug, Default)]
struct Args {
    configs: Vec<PathBuf>,
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    clock_at: Option<Duration>,
    merge_domains: bool,
    verbose: bool,
    check: bool,
    help: bool,
}

fn parse_args(raw: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut args = Args::default();
    let mut raw = raw.into_iter();
    while let Some(arg) = raw.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => raw.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        let addr = |name: &str, v: String| -> Result<SocketAddr, String> {
            v.parse()
                .map_err(|_| format!("{name}: '{v}' is not an address like 127.0.0.1:8081"))
        };
        match flag.as_str() {
            "--config" => args.configs.push(PathBuf::from(value("--config")?)),
            "--listen" => args.listen = Some(addr("--listen", value("--listen")?)?),
            "--admin" => args.admin = Some(addr("--admin", value("--admin")?)?),
            "--clock-at" => {
                let at = parse_unix_time(&value("--clock-at")?)
                    .map_err(|e| format!("--clock-at: {e}"))?;
                args.clock_at = Some(at);
            }
            "--merge-domains" => args.merge_domains = true,
            "--verbose" => args.verbose = true,
            "--check" => args.check = true,
            "-h" | "--help" => args.help = true,
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    if args.help {
        return Ok(args);
    }
    if args.configs.is_empty() {
        return Err("at least one --config FILE is required".to_owned());
    }
    if !args.check && args.listen.is_none() {
        return Err("--listen ADDR is required".to_owned());
    }
    Ok(args)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(args: Args) -> ExitCode {
    let options = LoadOptions {
        merge_domains: args.merge_domains,
    };
    let config = match RateLimitConfig::load_files(&args.configs, options) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("dev-rls: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        say("ok");
        return ExitCode::SUCCESS;
    }
    let Some(listen) = args.listen else {
        eprintln!("dev-rls: --listen ADDR is required\n{USAGE}");
        return ExitCode::from(2);
    };
    let mut builder = DevRls::builder(config).verbose(args.verbose);
    if let Some(at) = args.clock_at {
        builder = builder.clock(ManualClock::at(at));
    }
    let rls = match builder.build() {
        Ok(rls) => rls,
        Err(e) => {
            eprintln!("dev-rls: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match serve(
        rls,
        ServerOptions {
            listen,
            admin: args.admin,
        },
    )
    .await
    {
        Ok(server) => server,
        Err(e) => {
            eprintln!("dev-rls: {e}");
            return ExitCode::FAILURE;
        }
    };
    say(&format!("dev-rls listening on {}", server.grpc_addr()));
    if let Some(admin) = server.admin_addr() {
        say(&format!("dev-rls admin on {admin}"));
    }
    if let Some(at) = args.clock_at {
        say(&format!("dev-rls clock frozen at {}", format_unix_time(at)));
    }
    wait_for_signal().await;
    let rls = server.rls().clone();
    match server.shutdown().await {
        Ok(()) => {
            // The final counts, once no call can come any more (tests read them after
            // stopping the service).
            let stats = rls.stats();
            say(&format!(
                "dev-rls stopped: calls={} over_limit={} faulted={}",
                stats.calls,
                stats.over_limit,
                rls.faulted()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dev-rls: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("dev-rls: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        say(USAGE);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dev-rls: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::parse_args;

    fn args(list: &[&str]) -> Result<super::Args, String> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_serve_and_check_forms() {
        let a = args(&[
            "--config",
            "a.yaml",
            "--config=b.yaml",
            "--listen",
            "127.0.0.1:0",
            "--admin=127.0.0.1:9",
        ])
        .unwrap();
        assert_eq!(a.configs.len(), 2);
        assert_eq!(a.listen.unwrap().port(), 0);
        assert_eq!(a.admin.unwrap().port(), 9);
        assert!(!a.check);
        let c = args(&["--check", "--config", "a.yaml"]).unwrap();
        assert!(c.check && c.listen.is_none());
        assert_eq!(a.clock_at, None);
        let f = args(&[
            "--config",
            "a",
            "--listen",
            "127.0.0.1:0",
            "--clock-at=12.5",
        ])
        .unwrap();
        assert_eq!(f.clock_at, Some(std::time::Duration::from_millis(12_500)));
    }

    #[test]
    fn refuses_bad_usage() {
        assert!(args(&[]).unwrap_err().contains("--config"));
        assert!(args(&["--config", "a.yaml"])
            .unwrap_err()
            .contains("--listen"));
        assert!(args(&["--config"]).unwrap_err().contains("needs a value"));
        assert!(args(&["--config", "a", "--listen", "nope"])
            .unwrap_err()
            .contains("not an address"));
        assert!(args(&["--bogus"]).unwrap_err().contains("unknown argument"));
        assert!(args(&[
            "--config",
            "a",
            "--listen",
            "127.0.0.1:0",
            "--clock-at",
            "-5"
        ])
        .unwrap_err()
        .contains("--clock-at: '-5' is not a Unix time"));
    }
}
