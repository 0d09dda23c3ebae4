//! bookinfo `ratings` (the Node.js service): two fixed ratings for any numeric id, plus the
//! original's `SERVICE_VERSION` fault modes `v-faulty` (half the requests get 503) and
//! `v-delayed` (half the requests wait 7 s).

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use rand::Rng;
use serde::Serialize;
use serde_json::json;

use super::{Env, parse_product_id};
use crate::web::{Body, Handler, json, not_found};

/// How the ratings service misbehaves, from `SERVICE_VERSION` (or the version label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RatingsMode {
    /// Always answers.
    Normal,
    /// Half of the requests get `503 {"error":"Service unavailable"}`.
    Faulty,
    /// Half of the requests are answered after [`RatingsConfig::delay`].
    Delayed,
}

/// The ratings service's configuration.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RatingsConfig {
    pub(crate) mode: RatingsMode,
    #[serde(serialize_with = "super::as_secs")]
    pub(crate) delay: Duration,
}

impl RatingsConfig {
    /// Reads `SERVICE_VERSION`, falling back to the pod's version label.
    pub(crate) fn from_env(version: &str, env: Env<'_>) -> Self {
        let version = env("SERVICE_VERSION").unwrap_or_else(|| version.to_owned());
        let mode = match version.as_str() {
            "v-faulty" => RatingsMode::Faulty,
            "v-delayed" => RatingsMode::Delayed,
            _ => RatingsMode::Normal,
        };
        Self {
            mode,
            delay: Duration::from_secs(7),
        }
    }
}

/// The ratings handler.
#[derive(Debug)]
pub(crate) struct Ratings {
    config: RatingsConfig,
}

impl Ratings {
    pub(crate) fn new(config: RatingsConfig) -> Self {
        Self { config }
    }
}

/// The body for product `id`.
pub(crate) fn ratings_body(id: i64) -> serde_json::Value {
    json!({"id": id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})
}

impl Handler for Ratings {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return not_found();
        }
        let path = req.uri().path();
        if path == "/health" {
            return json(StatusCode::OK, &json!({"status": "Ratings is healthy"}));
        }
        let Some(raw) = path.strip_prefix("/ratings/") else {
            return not_found();
        };
        let Some(id) = parse_product_id(raw) else {
            return json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "please provide numeric product ID"}),
            );
        };
        let coin = rand::rng().random_bool(0.5);
        match self.config.mode {
            RatingsMode::Faulty if coin => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": "Service unavailable"}),
            ),
            RatingsMode::Delayed if coin => {
                tokio::time::sleep(self.config.delay).await;
                json(StatusCode::OK, &ratings_body(id))
            }
            _ => json(StatusCode::OK, &ratings_body(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_json_matches_the_original() {
        assert_eq!(
            ratings_body(7).to_string(),
            r#"{"id":7,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#
        );
    }

    #[test]
    fn service_version_env_selects_fault_mode() {
        let env = |k: &str| (k == "SERVICE_VERSION").then(|| "v-faulty".to_owned());
        assert_eq!(
            RatingsConfig::from_env("v1", &env).mode,
            RatingsMode::Faulty
        );
        assert_eq!(
            RatingsConfig::from_env("v-delayed", &|_| None).mode,
            RatingsMode::Delayed
        );
        assert_eq!(
            RatingsConfig::from_env("v1", &|_| None).mode,
            RatingsMode::Normal
        );
    }
}
