//! Running the gRPC service (and the optional admin listener) on sockets.

use std::net::SocketAddr;
use std::path::Path;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::{admin, DevRls, Error, LoadOptions, RateLimitConfig};

/// Where to listen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// gRPC listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Optional admin HTTP listen address (port 0 picks a free port).
    pub admin: Option<SocketAddr>,
}

/// A running service. Stop it with [`RunningServer::shutdown`]; dropping it also signals
/// the listeners to stop (without waiting for them).
#[derive(Debug)]
pub struct RunningServer {
    rls: DevRls,
    grpc_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    grpc_task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    admin_task: Option<JoinHandle<()>>,
}

/// Binds the listeners and starts serving `rls` in the background of the current tokio
/// runtime. Both sockets are bound when this returns.
pub async fn serve(rls: DevRls, options: ServerOptions) -> Result<RunningServer, Error> {
    let grpc_listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| Error::Bind(options.listen, e))?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|e| Error::Bind(options.listen, e))?;
    let admin_listener = match options.admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Bind(addr, e))?,
        ),
        None => None,
    };
    let admin_addr = match &admin_listener {
        Some(listener) => Some(
            listener
                .local_addr()
                .map_err(|e| Error::Bind(grpc_addr, e))?,
        ),
        None => None,
    };

    let (stop, stop_rx) = watch::channel(false);
    let mut grpc_stop = stop_rx.clone();
    let service = rls.grpc_service();
    // Answers leave at once (no Nagle delay behind a client's delayed ACK).
    let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let grpc_task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_stop.wait_for(|stop| *stop).await;
            })
            .await
    });
    let admin_task =
        admin_listener.map(|listener| tokio::spawn(admin::run(listener, rls.clone(), stop_rx)));

    Ok(RunningServer {
        rls,
        grpc_addr,
        admin_addr,
        stop,
        grpc_task: Some(grpc_task),
        admin_task,
    })
}

/// Loads `config_files` (default [`LoadOptions`]) and serves them with the system clock:
/// the one-call way for a test harness to run the service in-process.
pub async fn start<P: AsRef<Path>>(
    config_files: &[P],
    options: ServerOptions,
) -> Result<RunningServer, Error> {
    let config = RateLimitConfig::load_files(config_files, LoadOptions::default())?;
    serve(DevRls::new(config)?, options).await
}

impl RunningServer {
    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound admin address, if an admin listener was requested.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The service instance (for stats, recorded requests and reset).
    pub fn rls(&self) -> &DevRls {
        &self.rls
    }

    /// Stops accepting, lets in-flight gRPC calls finish, and waits for both listeners.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        if let Some(task) = self.admin_task.take() {
            task.await.map_err(|e| Error::Task(e.to_string()))?;
        }
        match self.grpc_task.take() {
            Some(task) => task
                .await
                .map_err(|e| Error::Task(e.to_string()))?
                .map_err(|e| Error::Serve(e.to_string())),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
