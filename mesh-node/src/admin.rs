//! The agent's HTTP pages, plain HTTP/1.1, one request per connection. Admin (15000):
//! `/healthz/ready` (200 once the first config snapshot is applied, the listeners are up and
//! the CA has answered for the enrolled pods' service accounts; 503 says what is missing),
//! `/config_dump` (the agent's config, its pods with their enrollment, its certificates —
//! never keys), `/stats/redirect` (per-pod counters and the eBPF counters). Metrics (15020):
//! `/stats/prometheus`. Readiness (15021): `/healthz/ready`.

use std::sync::Arc;

use mesh_core::pages;
use tokio::net::TcpListener;

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
    mesh_core::pages::serve(listener, move |path: &str| route(page, path, &shared)).await;
}

fn route(page: Page, path: &str, shared: &Shared) -> pages::Page {
    let text = |status, body: &str| pages::Page {
        status,
        content_type: "text/plain",
        body: body.to_owned(),
    };
    match (page, path) {
        (Page::Admin | Page::Readiness, "/healthz/ready") => match shared.not_ready() {
            None => text("200 OK", "ready\n"),
            Some(why) => text("503 Service Unavailable", &format!("not ready: {why}\n")),
        },
        (Page::Admin, "/config_dump") => pages::Page::json(&shared.config_dump()),
        (Page::Admin, "/stats/redirect") => pages::Page::json(&shared.redirect_stats()),
        (Page::Admin, "/memory") => pages::Page::memory(),
        (Page::Admin, _) => {
            pages::Page::not_found("/healthz/ready, /config_dump, /stats/redirect or /memory")
        }
        (Page::Metrics, "/stats/prometheus" | "/metrics") => {
            pages::Page::ok(pages::OPENMETRICS, shared.proxy.metrics.encode())
        }
        (Page::Metrics, _) => pages::Page::not_found("/stats/prometheus"),
        (Page::Readiness, _) => pages::Page::not_found("/healthz/ready"),
    }
}
