//! Istio's `helloworld` sample: `GET /hello` names the version and the instance (pod).

use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;

use crate::web::{self, Body, Handler};

/// What `/hello` reports.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HelloworldConfig {
    /// `SERVICE_VERSION` (the original's source), else the version label.
    pub(crate) version: String,
    /// The pod name (the original reads `HOSTNAME`).
    pub(crate) instance: String,
}

/// The helloworld handler.
#[derive(Debug)]
pub(crate) struct Helloworld {
    greeting: String,
}

impl Helloworld {
    pub(crate) fn new(config: &HelloworldConfig) -> Self {
        Self {
            greeting: greeting(config),
        }
    }
}

/// The `/hello` text.
pub(crate) fn greeting(config: &HelloworldConfig) -> String {
    format!(
        "Hello version: {}, instance: {}\n",
        config.version, config.instance
    )
}

impl Handler for Helloworld {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return web::method_not_allowed();
        }
        match req.uri().path() {
            "/hello" => web::text(StatusCode::OK, self.greeting.clone()),
            "/health" => web::text(StatusCode::OK, "Helloworld is healthy"),
            _ => web::not_found(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_names_version_and_instance() {
        let config = HelloworldConfig {
            version: "v2".to_owned(),
            instance: "helloworld-v2-abc".to_owned(),
        };
        assert_eq!(
            greeting(&config),
            "Hello version: v2, instance: helloworld-v2-abc\n"
        );
    }

    #[tokio::test]
    async fn hello_over_http_is_plain_text() {
        use crate::web::testing::{get, spawn};
        let config = HelloworldConfig {
            version: "v1".to_owned(),
            instance: "hw-1".to_owned(),
        };
        let addr = spawn(Helloworld::new(&config)).await;
        let answer = get(addr, "/hello", &[]).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), "Hello version: v1, instance: hw-1\n");
        assert!(
            answer.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        assert_eq!(get(addr, "/health", &[]).await.status, StatusCode::OK);
    }
}
