//! The operations HTTP listener: `/metrics` (Prometheus), `/healthz`
//! (liveness: the process answers), `/readyz` (readiness: serving, not
//! shutting down, not draining; the upstream's health is not part of it) and
//! `/upstream` (200 while every upstream master is reachable, 503 otherwise).
//! HEAD is answered as GET without a body; connections are kept alive
//! (HTTP/1.1's default) for the next scrape, closed after 5 s idle, at
//! `Connection: close`, after HTTP/1.0 requests or past 1,000 requests. A
//! few fixed pages of GET requests without bodies: small enough that an HTTP
//! stack (hyper and its dependencies) would be most of the sidecar's build
//! for nothing it needs.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::node::Node;

pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _ = keep_serving(stream, &node).await;
        });
    }
}

/// How long a kept-alive connection may wait for its next request.
const IDLE: Duration = Duration::from_secs(5);
/// Requests served on one connection before it is closed.
const MAX_REQUESTS: usize = 1000;
/// The largest request head read.
const MAX_HEAD: usize = 8192;

/// Answers the connection's requests, one after another, until it closes,
/// asks to close, idles past [`IDLE`] or sends something unreadable.
async fn keep_serving(mut stream: TcpStream, node: &Node) -> std::io::Result<()> {
    let mut input = Vec::with_capacity(1024);
    for _ in 0..MAX_REQUESTS {
        let head = match tokio::time::timeout(IDLE, read_head(&mut stream, &mut input)).await {
            Ok(Ok(Some(head))) => head,
            _ => break,
        };
        if !respond(&mut stream, node, &head).await? {
            break;
        }
    }
    stream.shutdown().await
}

/// The next request's head (through its blank line), taken from `input`
/// and what the stream sends; None at the end of the stream, or when the
/// head is too large.
async fn read_head(
    stream: &mut TcpStream,
    input: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = input.drain(..end + 4).collect();
            return Ok(Some(head));
        }
        if input.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        input.extend_from_slice(&chunk[..n]);
    }
}

/// Answers one request; returns whether the connection stays open.
async fn respond(stream: &mut TcpStream, node: &Node, request: &[u8]) -> std::io::Result<bool> {
    let text = String::from_utf8_lossy(request);
    let line = text.split("\r\n").next().unwrap_or_default();
    let header = |name: &str| {
        text.split("\r\n").skip(1).find_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_ascii_lowercase())
        })
    };
    let connection = header("connection");
    let keep_alive = if line.ends_with("HTTP/1.0") {
        connection.as_deref() == Some("keep-alive")
    } else {
        connection.as_deref() != Some("close")
    };
    // A body would be the next request's start: such a request is answered
    // and the connection closed.
    let has_body =
        header("content-length").is_some_and(|n| n != "0") || header("transfer-encoding").is_some();
    let keep_alive = keep_alive && !has_body;
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    // HEAD is GET without the body.
    let head = method == "HEAD";
    let method = if head { "GET" } else { method };
    let (status, content_type, body) = match (method, path) {
        ("GET", "/upstream") => match node.upstream_up() {
            Some(true) => ("200 OK", "text/plain", "up\n".to_string()),
            Some(false) => (
                "503 Service Unavailable",
                "text/plain",
                "down\n".to_string(),
            ),
            None => ("200 OK", "text/plain", "none (standalone)\n".to_string()),
        },
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            crate::ops::prometheus::render(node),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") if node.is_ready() => ("200 OK", "text/plain", "ready\n".to_string()),
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".to_string(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{}",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" },
        if head { "" } else { body.as_str() }
    );
    stream.write_all(response.as_bytes()).await?;
    Ok(keep_alive)
}
