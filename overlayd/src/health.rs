//! `/healthz`, `/readyz` and `/metrics` over plain HTTP/1.1 (three fixed answers need no
//! web framework).
//!
//! Whoever can reach the port must not be able to starve the daemon: at most
//! `MAX_CONNECTIONS` connections are served at once (the rest wait in the kernel's
//! backlog, holding none of the daemon's file descriptors), each gets `READ_TIMEOUT` to
//! send its request and as long to take the answer, and a failing accept backs off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub const MAX_CONNECTIONS: usize = 32;
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed accept (out of file descriptors, say): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

use crate::metrics::Metrics;

pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on --health-addr {addr}"))
}

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                tracing::debug!("health listener: accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(READ_TIMEOUT, conn.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, body, ctype) = match path {
                "/healthz" => ("200 OK", "ok\n".to_string(), "text/plain"),
                "/readyz" if metrics.is_ready() => ("200 OK", "ready\n".to_string(), "text/plain"),
                "/readyz" => (
                    "503 Service Unavailable",
                    format!("not ready:\n{}", metrics.not_ready_because()),
                    "text/plain",
                ),
                "/metrics" => ("200 OK", metrics.render(), "text/plain; version=0.0.4"),
                _ => (
                    "404 Not Found",
                    "try /healthz, /readyz or /metrics\n".to_string(),
                    "text/plain",
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(READ_TIMEOUT, conn.write_all(resp.as_bytes())).await;
        });
    }
}
