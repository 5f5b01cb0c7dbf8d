//! The service over real sockets: tonic client, admin HTTP endpoints, clean shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;

use common::*;
use dev_rls::rls_proto::rate_limit_response::Code;
use dev_rls::rls_proto::rate_limit_service_client::RateLimitServiceClient;
use dev_rls::{serve, DevRls, ManualClock, RateLimitConfig, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = "\
domain: grpc-test
descriptors:
  - key: client
    rate_limit:
      unit: minute
      requests_per_unit: 3
";

/// Minimal HTTP/1.1 request to the admin listener; returns (status line, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

async fn stats(addr: SocketAddr) -> serde_json::Value {
    let (status, body) = http(addr, "GET", "/stats").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn grpc_ok_then_over_limit_and_admin_endpoints() {
    let config = RateLimitConfig::from_yaml("grpc.yaml", CONFIG).unwrap();
    let rls = DevRls::builder(config)
        .clock(ManualClock::new(T0))
        .build()
        .unwrap();
    let server = serve(
        rls,
        ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: Some("127.0.0.1:0".parse().unwrap()),
        },
    )
    .await
    .unwrap();
    let grpc = server.grpc_addr();
    let admin = server.admin_addr().unwrap();
    assert_ne!(grpc.port(), 0);
    assert_ne!(admin.port(), 0);

    let before = stats(admin).await;
    assert_eq!(before["calls"], 0);
    assert!(before["last_request"].is_null());

    let mut client = RateLimitServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let req = || request("grpc-test", vec![descriptor(&[("client", "alice")])]);
    for remaining in (0..3).rev() {
        let response = client.should_rate_limit(req()).await.unwrap().into_inner();
        assert_eq!(response.overall_code, Code::Ok as i32);
        assert_eq!(response.statuses[0].limit_remaining, remaining);
    }
    let response = client.should_rate_limit(req()).await.unwrap().into_inner();
    assert_eq!(response.overall_code, Code::OverLimit as i32);
    let status = &response.statuses[0];
    assert_eq!(status.code, Code::OverLimit as i32);
    let limit = status.current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (3, dev_rls::Unit::Minute.proto())
    );
    let reset = status.duration_until_reset.as_ref().unwrap().seconds;
    assert!(reset > 0 && reset <= 60, "duration_until_reset {reset}");
    assert_eq!(reset, 40, "T0 is 20 s into its minute");

    // Errors travel as gRPC statuses.
    let err = client
        .should_rate_limit(request("", vec![]))
        .await
        .unwrap_err();
    assert!(err.message().contains("domain must not be empty"), "{err}");

    let after = stats(admin).await;
    assert_eq!(after["calls"], 5);
    assert_eq!(after["over_limit"], 1);
    assert_eq!(after["last_request"]["domain"], "");
    let (status, body) = http(admin, "GET", "/requests").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let requests: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = requests.as_array().unwrap();
    assert_eq!(list.len(), 5);
    assert_eq!(list[0]["domain"], "grpc-test");
    assert_eq!(list[0]["descriptors"][0]["entries"][0]["key"], "client");
    assert_eq!(list[0]["descriptors"][0]["entries"][0]["value"], "alice");
    assert!(list[0]["descriptors"][0]["hits_addend"].is_null());
    assert_eq!(list[0]["hits_addend"], 0);
    assert_eq!(list[3]["overall_code"], "OVER_LIMIT");

    // Reset clears counts, requests and counters.
    let (status, _) = http(admin, "POST", "/reset").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(stats(admin).await["calls"], 0);
    let response = client.should_rate_limit(req()).await.unwrap().into_inner();
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert_eq!(response.statuses[0].limit_remaining, 2);
    assert_eq!(
        server.rls().stats().calls,
        1,
        "library view agrees with the admin view"
    );

    // Unknown paths and wrong methods.
    assert_eq!(
        http(admin, "GET", "/nope").await.0,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        http(admin, "GET", "/reset").await.0,
        "HTTP/1.1 405 Method Not Allowed"
    );

    drop(client);
    server.shutdown().await.unwrap();
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "admin listener closed"
    );
}

#[tokio::test]
async fn start_loads_files_and_serves_them() {
    let server = dev_rls::start(
        &[conformance_file("basic_config.yaml")],
        ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: None,
        },
    )
    .await
    .unwrap();
    assert!(server.admin_addr().is_none());
    let mut client = RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr()))
        .await
        .unwrap();
    let response = client
        .should_rate_limit(request(
            "test-domain",
            vec![descriptor(&[("key2", "value2")])],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.overall_code, Code::Ok as i32);
    let status = &response.statuses[0];
    assert_eq!(status.current_limit.as_ref().unwrap().requests_per_unit, 30);
    assert_eq!(status.limit_remaining, 29);
    let reset = status.duration_until_reset.as_ref().unwrap().seconds;
    assert!((1..=60).contains(&reset), "minute window reset {reset}");
    drop(client);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn start_refuses_bad_config_and_busy_ports() {
    let err = dev_rls::start(
        &[conformance_file("bad_limit_unit.yaml")],
        ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: None,
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("invalid rate limit unit 'foo'"),
        "{err}"
    );

    let first = dev_rls::start(
        &[conformance_file("basic_config.yaml")],
        ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: None,
        },
    )
    .await
    .unwrap();
    let err = dev_rls::start(
        &[conformance_file("basic_config.yaml")],
        ServerOptions {
            listen: first.grpc_addr(),
            admin: None,
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, dev_rls::Error::Bind(..)), "{err}");
    first.shutdown().await.unwrap();
}
