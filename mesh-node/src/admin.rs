//! The agent's HTTP pages, plain HTTP/1.1, one request per connection. Admin (15000):
//! `/healthz/ready` (200 once the first config snapshot is applied and the listeners are up),
//! `/config_dump` (the agent's config, its pods with their enrollment, its certificates —
//! never keys), `/stats/redirect` (per-pod counters and the eBPF counters). Metrics (15020):
//! `/stats/prometheus`. Readiness (15021): `/healthz/ready`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::agent::Shared;

/// Which pages a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Admin,
    Metrics,
    Readiness,
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, page: Page) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), handle(stream, &shared, page)).await;
        });
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared, page: Page) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = route(page, path, shared);
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn route(page: Page, path: &str, shared: &Shared) -> (&'static str, &'static str, String) {
    let json = |value: serde_json::Value| {
        let body = serde_json::to_string_pretty(&value).unwrap_or_default() + "\n";
        ("200 OK", "application/json", body)
    };
    let not_found = |hint: &str| ("404 Not Found", "text/plain", format!("try {hint}\n"));
    match (page, path) {
        (Page::Admin | Page::Readiness, "/healthz/ready") if shared.is_ready() => {
            ("200 OK", "text/plain", "ready\n".into())
        }
        (Page::Admin | Page::Readiness, "/healthz/ready") => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".into(),
        ),
        (Page::Admin, "/config_dump") => json(shared.config_dump()),
        (Page::Admin, "/stats/redirect") => json(shared.redirect_stats()),
        (Page::Admin, _) => not_found("/healthz/ready, /config_dump or /stats/redirect"),
        (Page::Metrics, "/stats/prometheus" | "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            shared.proxy.metrics.encode(),
        ),
        (Page::Metrics, _) => not_found("/stats/prometheus"),
        (Page::Readiness, _) => not_found("/healthz/ready"),
    }
}
