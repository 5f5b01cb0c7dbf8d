//! Fault injection over real sockets: what a gRPC client gets in each mode, that faulted
//! calls count no hits, and the admin `/fault` endpoint (also on the binary).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use dev_rls::fault::GARBAGE;
use dev_rls::rls_proto::rate_limit_response::Code;
use dev_rls::rls_proto::rate_limit_service_client::RateLimitServiceClient;
use dev_rls::{serve, DevRls, Fault, ManualClock, RateLimitConfig, RunningServer, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

const CONFIG: &str = "\
domain: fault-test
descriptors:
  - key: client
    rate_limit:
      unit: minute
      requests_per_unit: 100
";

async fn start() -> RunningServer {
    let config = RateLimitConfig::from_yaml("faults.yaml", CONFIG).unwrap();
    let rls = DevRls::builder(config)
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    serve(
        rls,
        ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: Some("127.0.0.1:0".parse().unwrap()),
        },
    )
    .await
    .unwrap()
}

async fn client(server: &RunningServer) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr()))
        .await
        .unwrap()
}

async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
) -> Result<dev_rls::rls_proto::RateLimitResponse, tonic::Status> {
    client
        .should_rate_limit(request(
            "fault-test",
            vec![descriptor(&[("client", "alice")])],
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Remaining hits of `alice` as an OK answer reports them (this call counts one).
async fn remaining(client: &mut RateLimitServiceClient<Channel>) -> u32 {
    let response = ask(client).await.unwrap();
    assert_eq!(response.overall_code, Code::Ok as i32);
    response.statuses[0].limit_remaining
}

/// Minimal HTTP/1.1 request to the admin listener; returns (status line, body).
async fn http(addr: SocketAddr, method: &str, target: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test]
async fn each_fault_mode_answers_as_documented_and_counts_no_hits() {
    let server = start().await;
    let rls = server.rls().clone();
    let mut client = client(&server).await;
    assert_eq!(remaining(&mut client).await, 99);

    rls.set_fault(Fault::Unavailable);
    let err = ask(&mut client).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");

    rls.set_fault(Fault::Internal);
    let err = ask(&mut client).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal, "{err}");

    rls.set_fault(Fault::UnknownCode(0));
    let response = ask(&mut client).await.unwrap();
    assert_eq!(response.overall_code, Code::Unknown as i32);
    assert!(response.statuses.is_empty());

    rls.set_fault(Fault::UnknownCode(9));
    assert_eq!(ask(&mut client).await.unwrap().overall_code, 9);

    // Every garbage payload, pinned, then the rotation: the reference decoder (prost,
    // in the tonic client) refuses each one.
    for (i, (what, _)) in GARBAGE.iter().enumerate() {
        rls.set_fault(Fault::Garbage(Some(i)));
        let err = ask(&mut client).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::Internal,
            "payload {i} ({what}): {err}"
        );
        assert!(
            err.message().contains("decode"),
            "payload {i} ({what}): {err}"
        );
    }
    rls.set_fault(Fault::Garbage(None));
    for _ in 0..GARBAGE.len() + 1 {
        let err = ask(&mut client).await.unwrap_err();
        assert!(err.message().contains("decode"), "{err}");
    }

    // None of the faulted calls counted a hit or was recorded as a decision.
    let faulted = 4 + 2 * GARBAGE.len() as u64 + 1;
    assert_eq!(rls.faulted(), faulted);
    assert_eq!(rls.stats().calls, 1);
    rls.set_fault(Fault::None);
    assert_eq!(remaining(&mut client).await, 98);
    assert_eq!(rls.faulted(), faulted, "normal calls are not faulted");

    // slow: the answer is late, then a normal decision that counts.
    rls.set_fault(Fault::Slow(Duration::from_millis(300)));
    let started = Instant::now();
    assert_eq!(remaining(&mut client).await, 97);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "answered in {took:?}");
    assert!(took < Duration::from_secs(5), "answered in {took:?}");
    assert_eq!(rls.faulted(), faulted, "slow answers are decisions");

    // A client that gives up on a slow call gets a deadline error, not an answer.
    rls.set_fault(Fault::Slow(Duration::from_millis(2000)));
    let mut req = tonic::Request::new(request(
        "fault-test",
        vec![descriptor(&[("client", "bob")])],
    ));
    req.set_timeout(Duration::from_millis(100));
    let started = Instant::now();
    let err = client.should_rate_limit(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Cancelled, "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));

    rls.set_fault(Fault::None);
    drop(client);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn admin_fault_endpoint_sets_reports_and_clears_the_mode() {
    let server = start().await;
    let admin = server.admin_addr().unwrap();
    let mut client = client(&server).await;

    let (status, body) = http(admin, "GET", "/fault").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, r#"{"mode":"none","faulted":0}"#);

    // The colon may come percent-encoded.
    let (status, body) = http(admin, "POST", "/fault?mode=unknown_code%3A9").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(body, r#"{"mode":"unknown_code:9","faulted":0}"#);
    assert_eq!(server.rls().fault(), Fault::UnknownCode(9));
    assert_eq!(ask(&mut client).await.unwrap().overall_code, 9);

    let (status, body) = http(admin, "POST", "/fault?mode=garbage").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(ask(&mut client).await.is_err());
    let (_, body) = http(admin, "GET", "/fault").await;
    assert_eq!(body, r#"{"mode":"garbage","faulted":2}"#);

    // Bad requests leave the mode alone.
    for target in ["/fault?mode=bogus", "/fault?mode=slow", "/fault"] {
        let (status, body) = http(admin, "POST", target).await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{target}: {body}");
        assert!(!body.is_empty());
    }
    assert_eq!(
        http(admin, "DELETE", "/fault").await.0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(server.rls().fault(), Fault::Garbage(None));

    // /stats keeps its shape; /reset clears the fault count but not the mode.
    let (_, stats) = http(admin, "GET", "/stats").await;
    assert_eq!(stats, r#"{"calls":0,"over_limit":0,"last_request":null}"#);
    assert_eq!(http(admin, "POST", "/reset").await.0, "HTTP/1.1 200 OK");
    let (_, body) = http(admin, "GET", "/fault").await;
    assert_eq!(body, r#"{"mode":"garbage","faulted":0}"#);

    let (status, body) = http(admin, "POST", "/fault?mode=none").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, r#"{"mode":"none","faulted":0}"#);
    assert_eq!(remaining(&mut client).await, 99);

    drop(client);
    server.shutdown().await.unwrap();
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

#[tokio::test]
async fn the_binary_serves_the_fault_endpoint() {
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_dev-rls"))
            .arg("--config")
            .arg(conformance_file("basic_config.yaml"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin")
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let grpc = lines.next().unwrap().unwrap();
    let grpc = grpc
        .strip_prefix("dev-rls listening on ")
        .unwrap()
        .to_owned();
    let admin = lines.next().unwrap().unwrap();
    let admin: SocketAddr = admin
        .strip_prefix("dev-rls admin on ")
        .unwrap()
        .parse()
        .unwrap();

    let (status, _) = http(admin, "POST", "/fault?mode=unavailable").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let mut client = RateLimitServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let err = client
        .should_rate_limit(request(
            "test-domain",
            vec![descriptor(&[("key2", "value2")])],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    let (_, body) = http(admin, "GET", "/fault").await;
    assert_eq!(body, r#"{"mode":"unavailable","faulted":1}"#);

    // On SIGTERM it prints its final counts, once no call can come any more.
    drop(client);
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // Read off the runtime's thread, which must stay free to close the
    // client's connection: the service waits for its connections to close.
    let last = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || lines.next()),
    )
    .await
    .expect("dev-rls printed nothing within 10 s of SIGTERM")
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(last, "dev-rls stopped: calls=0 over_limit=0 faulted=1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "dev-rls did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(child.0.try_wait().unwrap().unwrap().code(), Some(0));
}
