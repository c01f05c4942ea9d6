//! /metrics over HTTP/1.1 for Prometheus: one small tokio server per daemon.

use ferry_core::error::report;
use std::{net::SocketAddr, time::Duration};

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// `metrics:` in a daemon's YAML: where its /metrics listens.
#[derive(
    Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct MetricsListen {
    /// The address /metrics listens on (port 0: any).
    pub listen: SocketAddr,
}

/// A running /metrics endpoint; stops when dropped.
pub struct MetricsServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connections /metrics holds at once.
const METRICS_CONNECTIONS: usize = 64;

impl MetricsServer {
    /// Binds `listen` (port 0: any) and serves `registry` on GET /metrics.
    pub async fn start(listen: SocketAddr, registry: Registry) -> std::io::Result<Self> {
        let l = TcpListener::bind(listen).await?;
        let addr = l.local_addr()?;
        let task = tokio::spawn(async move {
            let mut failures = ferry_core::listen::AcceptFailures::new("metrics");
            // Scrapers are few: a flood of idle connections must not take the
            // file descriptors the control port needs.
            let gate = ferry_core::listen::Gate::new("metrics", METRICS_CONNECTIONS);
            loop {
                let s = match l.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tokio::time::sleep(failures.failed(&e)).await;
                        continue;
                    }
                };
                let Some(pass) = gate.enter() else { continue };
                let r = registry.clone();
                tokio::spawn(async move {
                    // A client that stalls is dropped rather than held.
                    let _ = tokio::time::timeout(Duration::from_secs(30), serve(s, r)).await;
                    drop(pass);
                });
            }
        });
        Ok(Self { addr, task })
    }
}

/// One connection: requests until the client closes (Prometheus keeps it
/// alive between scrapes).
async fn serve(mut s: TcpStream, registry: Registry) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        // Read one request head; ferry's endpoint takes no bodies.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                return respond(
                    &mut s,
                    "431 Request Header Fields Too Large",
                    "text/plain",
                    b"request head too large\n",
                    false,
                )
                .await;
            }
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        let mut words = head.lines().next().unwrap_or("").split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        // HTTP/1.1 keeps the connection unless told to close; HTTP/1.0
        // closes it unless told to keep it.
        let lower = head.to_ascii_lowercase();
        let http10 = head.lines().next().unwrap_or("").ends_with("HTTP/1.0");
        let keep = if http10 {
            lower.contains("connection: keep-alive")
        } else {
            !lower.contains("connection: close")
        };
        let path = path.split('?').next().unwrap_or("");
        match (method, path) {
            ("GET", "/metrics") => {
                let mut body = Vec::new();
                let enc = TextEncoder::new();
                if let Err(e) = enc.encode(&registry.gather(), &mut body) {
                    let msg = format!("encoding metrics: {e}\n", e = report(&e));
                    respond(
                        &mut s,
                        "500 Internal Server Error",
                        "text/plain",
                        msg.as_bytes(),
                        false,
                    )
                    .await?;
                    return Ok(());
                }
                respond(&mut s, "200 OK", enc.format_type(), &body, keep).await?;
            }
            ("GET", "/") => {
                respond(
                    &mut s,
                    "200 OK",
                    "text/plain",
                    b"ferry: see /metrics\n",
                    keep,
                )
                .await?
            }
            ("GET", _) => {
                respond(
                    &mut s,
                    "404 Not Found",
                    "text/plain",
                    b"not found; try /metrics\n",
                    keep,
                )
                .await?
            }
            _ => {
                return respond(
                    &mut s,
                    "405 Method Not Allowed",
                    "text/plain",
                    b"GET only\n",
                    false,
                )
                .await;
            }
        }
        if !keep {
            return Ok(());
        }
    }
}

async fn respond(
    s: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    keep: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if keep { "keep-alive" } else { "close" }
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await
}

/// /metrics could not be served.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve /metrics on {listen}")]
pub struct ServeError {
    pub listen: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Serves `registry` where `cfg` says, else on `default`, for daemon `who`.
pub async fn serve_daemon(
    who: &str,
    build: Build<'_>,
    cfg: Option<&MetricsListen>,
    default: SocketAddr,
    registry: Registry,
) -> Result<MetricsServer, ServeError> {
    register_daemon_metrics(&registry, build);
    let listen = cfg.map(|m| m.listen).unwrap_or(default);
    let server = MetricsServer::start(listen, registry)
        .await
        .map_err(|source| ServeError { listen, source })?;
    tracing::info!(daemon = %who, metrics = %server.addr, "serving /metrics");
    Ok(server)
}

/// What `ferry_build_info` says of a daemon.
#[derive(Clone, Copy, Debug)]
pub struct Build<'a> {
    /// coordinator, host or router.
    pub role: &'static str,
    /// The version with its git revision, as `ferry --version` prints it.
    pub version: &'a str,
}

/// `ferry_build_info{role, version} 1` and the process's own CPU, memory,
/// file descriptors and threads (`process_*`, as every Prometheus client
/// exports them), on every daemon. Registered once per registry: a second
/// registration is a no-op.
pub fn register_daemon_metrics(registry: &Registry, build: Build<'_>) {
    let info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "ferry_build_info",
            "Always 1: the daemon's role and version (with its git revision).",
        ),
        &["role", "version"],
    )
    .expect("valid metric");
    info.with_label_values(&[build.role, build.version]).set(1);
    let process = prometheus::process_collector::ProcessCollector::for_self();
    for c in [
        Box::new(info) as Box<dyn prometheus::core::Collector>,
        Box::new(process),
    ] {
        match registry.register(c) {
            Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
            Err(e) => tracing::warn!(
                "cannot export the daemon's own metrics: {e}",
                e = report(&e)
            ),
        }
    }
}

/// GET `path` from `addr` (tests and `ferry` tooling): status and body.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_registry_and_refuses_the_rest() {
        let r = Registry::new();
        let c = prometheus::IntCounter::new("ferry_test_total", "a test counter").unwrap();
        r.register(Box::new(c.clone())).unwrap();
        c.inc_by(3);
        let srv = MetricsServer::start("127.0.0.1:0".parse().unwrap(), r)
            .await
            .unwrap();
        let (st, body) = get(srv.addr, "/metrics").await.unwrap();
        assert_eq!(st, 200);
        assert!(body.contains("ferry_test_total 3"), "{body}");
        assert_eq!(get(srv.addr, "/nope").await.unwrap().0, 404);
    }

    #[tokio::test]
    async fn an_http_1_0_request_gets_its_answer_and_the_connection_closes() {
        let srv = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Registry::new())
            .await
            .unwrap();
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        // read_to_end returns only once the server closes.
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the server closed the connection")
            .unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    }
}
