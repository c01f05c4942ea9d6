//! The control plane: mutually authenticated TLS connections between the
//! coordinator, hosts, peer coordinators and clients, carrying JSON
//! requests and responses.

pub mod tls;
pub mod wire;

use ferry_core::error::report;
use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use tokio::{
    io::{ReadHalf, WriteHalf},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub use tls::{Identity, Role, TlsFiles};
pub use wire::{Request, Response};

use wire::{LineReader, WireError};

/// How long a peer may take to complete TLS and send its request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections that may be in their TLS handshake or first request at once.
const HANDSHAKES_WAITING: usize = 128;

/// How long a coordinator waits for a host's answer to a simple request.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A migration's connection carries something at least this often: progress,
/// or a heartbeat when there is nothing new (a long switch-over, a slow pass).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a coordinator waits on a silent source before it gives up on
/// it: several heartbeats, so a loaded host is not mistaken for a dead one.
pub const SOURCE_SILENCE: Duration = Duration::from_secs(15);

/// How long a client waits on a silent coordinator. Longer than
/// [`SOURCE_SILENCE`] plus the calls a coordinator makes after it (telling
/// the destination to abort, a peer coordinator the result), each bounded
/// by [`CALL_TIMEOUT`].
pub const CLIENT_SILENCE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("connecting to {name} at {addr}")]
    Connect {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {name} at {addr}")]
    Tls {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    TlsSetup(#[from] tls::TlsError),
    #[error("{name}")]
    Wire {
        name: String,
        #[source]
        source: WireError,
    },
    #[error("{name} refused: {message}")]
    Remote { name: String, message: String },
    #[error("{name} answered something unexpected: {what}")]
    Unexpected { name: String, what: String },
}

type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The sending side of a connection, handed to request handlers.
pub struct Responder {
    w: WriteHalf<ServerStream>,
}

impl Responder {
    pub async fn send(&mut self, r: &Response) -> Result<(), WireError> {
        wire::write(&mut self.w, r).await
    }
}

pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
pub type Handler = Arc<dyn Fn(Identity, Request, Responder) -> BoxFuture + Send + Sync>;

/// Accepts connections for ever: TLS, the peer's identity, one request, the
/// handler. Each connection runs in its own task.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, handler: Handler) {
    let acceptor = TlsAcceptor::from(tls);
    let mut failures = ferry_core::listen::AcceptFailures::new("control");
    let gate = ferry_core::listen::Gate::new("control", HANDSHAKES_WAITING);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tokio::time::sleep(failures.failed(&e)).await;
                continue;
            }
        };
        let Some(pass) = gate.enter() else { continue };
        let (acceptor, handler) = (acceptor.clone(), handler.clone());
        tokio::spawn(async move {
            let r = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let tls = acceptor
                    .accept(tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}", e = report(&e)))?;
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .cloned()
                    .ok_or_else(|| "no client certificate".to_string())?;
                let who = tls::identity(&cert).map_err(|e| report(&e).to_string())?;
                let (rd, w) = tokio::io::split(tls);
                let mut lines = LineReader::new(rd);
                let mut resp = Responder { w };
                match lines.read::<Request>().await {
                    Ok(req) => Ok((who, req, resp, lines)),
                    Err(e) => {
                        // Say why before closing: a typo, or an operation
                        // this version does not know.
                        if matches!(e, WireError::Json(_) | WireError::TooLong) {
                            let _ = resp
                                .send(&Response::error(format!(
                                    "bad request: {e}",
                                    e = report(&e)
                                )))
                                .await;
                        }
                        Err(report(&e).to_string())
                    }
                }
            })
            .await;
            // Authenticated, refused or timed out: the place is free.
            drop(pass);
            match r {
                Ok(Ok((who, req, resp, lines))) => {
                    // Keep the read half alive while the handler answers.
                    let _keep: LineReader<ReadHalf<ServerStream>> = lines;
                    handler(who, req, resp).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(peer = %peer, error = %e, "control connection refused")
                }
                Err(_) => {
                    tracing::warn!(peer = %peer, "control connection timed out before its request")
                }
            }
        });
    }
}

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// One request in flight: read its responses.
pub struct Exchange {
    name: String,
    lines: LineReader<ReadHalf<ClientStream>>,
    _w: WriteHalf<ClientStream>,
}

impl Exchange {
    /// The next response; a remote error becomes [`ControlError::Remote`].
    pub async fn next(&mut self) -> Result<Response, ControlError> {
        match self.lines.read::<Response>().await {
            Ok(Response::Error { message }) => Err(ControlError::Remote {
                name: self.name.clone(),
                message,
            }),
            Ok(r) => Ok(r),
            Err(source) => Err(ControlError::Wire {
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// The next response within `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Result<Response, ControlError> {
        match tokio::time::timeout(timeout, self.next()).await {
            Ok(r) => r,
            Err(_) => Err(ControlError::Wire {
                name: self.name.clone(),
                source: WireError::Timeout(timeout),
            }),
        }
    }
}

/// A TLS client for the control plane.
#[derive(Clone)]
pub struct Client {
    config: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
}

impl Client {
    pub fn new(files: &TlsFiles) -> Result<Self, ControlError> {
        Ok(Self {
            config: tls::client_config(files)?,
            connect_timeout: Duration::from_secs(5),
        })
    }

    /// Connects to `name` at `addr`, verifies it is `name`, sends `req`
    /// (a [`Request`]; any other message only to test how a peer answers).
    pub async fn open<T: serde::Serialize>(
        &self,
        name: &str,
        addr: SocketAddr,
        req: &T,
    ) -> Result<Exchange, ControlError> {
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(source)) => {
                return Err(ControlError::Connect {
                    name: name.into(),
                    addr,
                    source,
                });
            }
            Err(_) => {
                let source =
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out");
                return Err(ControlError::Connect {
                    name: name.into(),
                    addr,
                    source,
                });
            }
        };
        tcp.set_nodelay(true).ok();
        let server = tls::server_name(name)?;
        let tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TlsConnector::from(self.config.clone()).connect(server, tcp),
        )
        .await
        .map_err(|_| ControlError::Tls {
            name: name.into(),
            addr,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"),
        })?
        .map_err(|source| ControlError::Tls {
            name: name.into(),
            addr,
            source,
        })?;
        let (rd, mut w) = tokio::io::split(tls);
        wire::write(&mut w, req)
            .await
            .map_err(|source| ControlError::Wire {
                name: name.into(),
                source,
            })?;
        Ok(Exchange {
            name: name.into(),
            lines: LineReader::new(rd),
            _w: w,
        })
    }

    /// A request with a single answer.
    pub async fn call<T: serde::Serialize>(
        &self,
        name: &str,
        addr: SocketAddr,
        req: &T,
        timeout: Duration,
    ) -> Result<Response, ControlError> {
        let mut x = self.open(name, addr, req).await?;
        x.next_within(timeout).await
    }
}
