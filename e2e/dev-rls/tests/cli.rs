//! The `dev-rls` binary: `--check`, startup lines, admin listener, SIGTERM.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::conformance_file;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dev-rls"))
}

#[test]
fn check_accepts_good_configs_and_reports_bad_ones() {
    let out = bin()
        .arg("--check")
        .arg("--config")
        .arg(conformance_file("basic_config.yaml"))
        .arg("--config")
        .arg(conformance_file("example.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    let out = bin()
        .arg("--check")
        .arg("--config")
        .arg(conformance_file("bad_limit_unit.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad_limit_unit.yaml: invalid rate limit unit 'foo'"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let out = bin()
        .arg("--check")
        .arg("--merge-domains")
        .arg("--config")
        .arg(conformance_file("merge_domain_key1.yaml"))
        .arg("--config")
        .arg(conformance_file("merge_domain_key2.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn usage_errors_exit_2() {
    let out = bin().arg("--config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: dev-rls"));
    let out = bin().arg("--config").arg("x.yaml").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen ADDR is required"));
}

/// Kills the child on drop, so a failing test does not leave the server running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("dev-rls did not exit within {limit:?}");
}

fn get(addr: &str, path: &str) -> String {
    http(addr, "GET", path)
}

fn http(addr: &str, method: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    raw
}

#[test]
fn serves_prints_addresses_and_stops_on_sigterm() {
    let mut child = Running(
        bin()
            .arg("--config")
            .arg(conformance_file("basic_config.yaml"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin")
            .arg("127.0.0.1:0")
            .arg("--verbose")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    let admin = lines.next().unwrap().unwrap();
    let grpc_addr = listening
        .strip_prefix("dev-rls listening on ")
        .expect(&listening)
        .to_owned();
    let admin_addr = admin
        .strip_prefix("dev-rls admin on ")
        .expect(&admin)
        .to_owned();
    assert!(
        grpc_addr.starts_with("127.0.0.1:") && !grpc_addr.ends_with(":0"),
        "{grpc_addr}"
    );
    TcpStream::connect(&grpc_addr).expect("gRPC port accepts connections");

    let stats = get(&admin_addr, "/stats");
    assert!(stats.starts_with("HTTP/1.1 200 OK"), "{stats}");
    assert!(
        stats.ends_with("{\"calls\":0,\"over_limit\":0,\"last_request\":null}"),
        "{stats}"
    );
    // The real clock cannot be moved.
    let clock = get(&admin_addr, "/clock");
    assert!(clock.ends_with(",\"manual\":false}"), "{clock}");
    let moved = http(&admin_addr, "POST", "/clock?advance_ms=1000");
    assert!(moved.starts_with("HTTP/1.1 409 Conflict"), "{moved}");
    assert!(moved.contains("--clock-at"), "{moved}");

    let pid = child.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    assert_eq!(
        wait_exit(&mut child.0, Duration::from_secs(10)),
        Some(0),
        "clean exit on SIGTERM"
    );
}

#[test]
fn clock_at_freezes_the_clock_and_the_admin_moves_it() {
    let mut child = Running(
        bin()
            .arg("--config")
            .arg(conformance_file("basic_config.yaml"))
            .arg("--listen=127.0.0.1:0")
            .arg("--admin=127.0.0.1:0")
            .arg("--clock-at")
            .arg("1767225647.75")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let _listening = lines.next().unwrap().unwrap();
    let admin = lines.next().unwrap().unwrap();
    let admin_addr = admin.strip_prefix("dev-rls admin on ").expect(&admin);
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "dev-rls clock frozen at 1767225647.75"
    );

    let clock = get(admin_addr, "/clock");
    assert!(clock.starts_with("HTTP/1.1 200 OK"), "{clock}");
    assert!(
        clock.ends_with("{\"now\":\"1767225647.75\",\"manual\":true}"),
        "{clock}"
    );
    let moved = http(admin_addr, "POST", "/clock?advance_ms=11950");
    assert!(
        moved.ends_with("{\"now\":\"1767225659.7\",\"manual\":true}"),
        "{moved}"
    );
    for bad in ["/clock", "/clock?advance_ms=-1", "/clock?advance_ms=x"] {
        let refused = http(admin_addr, "POST", bad);
        assert!(
            refused.starts_with("HTTP/1.1 400 Bad Request"),
            "{bad}: {refused}"
        );
    }

    let out = bin()
        .args([
            "--config",
            "x.yaml",
            "--listen",
            "127.0.0.1:0",
            "--clock-at",
            "soon",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--clock-at: 'soon' is not a Unix time"));
}
