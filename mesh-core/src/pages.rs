//! The small HTTP/1.1 server of a proxy's own pages (admin, metrics, readiness): one request
//! per connection, `GET` by path, answered by a routing function, `connection: close`.
//! Deliberately tiny: the pages are read by operators and probes, never on the data path.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// How long one page request may take, reading and answering.
const PAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a request read (its head; bodies are not read).
const MAX_REQUEST: usize = 8192;

/// The content type of metrics pages: `prometheus_client` writes OpenMetrics text (counters
/// as `# TYPE x counter` over `x_total` samples, `# EOF` at the end), which Prometheus
/// parses as such only when told so; under the classic `text/plain; version=0.0.4` the
/// `# TYPE` names do not match the samples.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A page's answer.
pub struct Page {
    /// `200 OK`, `404 Not Found`, …
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Page {
    pub fn ok(content_type: &'static str, body: String) -> Page {
        Page {
            status: "200 OK",
            content_type,
            body,
        }
    }

    /// Pretty JSON, newline-terminated.
    pub fn json(value: &serde_json::Value) -> Page {
        let body = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
        Page::ok("application/json", body)
    }

    /// `/memory`: the heap's bytes in use and free, and what the process has resident
    /// ([`crate::heap::Usage`]).
    pub fn memory() -> Page {
        match crate::heap::Usage::now() {
            Some(usage) => Page::json(&serde_json::json!(usage)),
            None => Page {
                status: "501 Not Implemented",
                content_type: "text/plain",
                body: "memory figures need glibc's malloc and /proc\n".into(),
            },
        }
    }

    /// A 404 naming the paths there are.
    pub fn not_found(hint: &str) -> Page {
        Page {
            status: "404 Not Found",
            content_type: "text/plain",
            body: format!("try {hint}\n"),
        }
    }
}

/// Serves `route(path)` on every connection until the task is dropped.
pub async fn serve<R>(listener: TcpListener, route: R)
where
    R: Fn(&str) -> Page + Clone + Send + Sync + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(PAGE_TIMEOUT, answer(stream, &route)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, route: &impl Fn(&str) -> Page) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let page = route(path);
    let response = format!(
        "HTTP/1.1 {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        page.status,
        page.content_type,
        page.body.len(),
        page.body
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn pages_are_routed_by_path_with_status_type_and_length() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, |path: &str| match path {
            "/ready" => Page::ok("text/plain", "ready\n".into()),
            "/dump" => Page::json(&serde_json::json!({"a": 1})),
            _ => Page::not_found("/ready or /dump"),
        }));
        let ready = get(addr, "/ready").await;
        assert!(ready.starts_with("HTTP/1.1 200 OK\r\n"), "{ready}");
        assert!(ready.contains("content-length: 6\r\n") && ready.ends_with("\r\n\r\nready\n"));
        let dump = get(addr, "/dump").await;
        assert!(dump.contains("content-type: application/json") && dump.contains("\"a\": 1"));
        let missing = get(addr, "/nope").await;
        assert!(missing.starts_with("HTTP/1.1 404 Not Found") && missing.contains("try /ready"));
        server.abort();
    }
}
