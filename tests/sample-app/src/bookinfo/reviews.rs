//! bookinfo `reviews` (the Java/Liberty service): two reviews; v2 and v3 add star ratings fetched
//! from `ratings` (black stars with a 10 s call timeout for v2, red with 2.5 s for v3), and an
//! error text per review when that call fails.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Env, parse_product_id, propagated, service_url};
use crate::web::{Body, Client, Handler, json, not_found};

/// The text a review carries instead of stars when ratings could not be fetched.
pub(crate) const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

const REVIEWS: [(&str, &str); 2] = [
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
];

/// How reviews calls ratings (absent for v1).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RatingsCall {
    /// `http://ratings:9080`; `/ratings/{id}` is appended.
    pub(crate) base_url: String,
    /// Star colour put into each rating.
    pub(crate) color: String,
    /// Deadline for the whole ratings call.
    #[serde(serialize_with = "super::as_secs")]
    pub(crate) timeout: Duration,
}

/// The reviews service's configuration.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReviewsConfig {
    /// Reported as `podname` (the original reads `HOSTNAME`).
    pub(crate) pod: String,
    /// Reported as `clustername`: `CLUSTER_NAME`, or the string `"null"` like the Java code.
    pub(crate) clustername: String,
    /// `None` for v1: ratings are neither called nor shown.
    pub(crate) ratings: Option<RatingsCall>,
}

impl ReviewsConfig {
    /// v1: no ratings; v2: black stars; v3: red stars. `ENABLE_RATINGS` and `STAR_COLOR`
    /// override the version like the original's Dockerfile-set variables; the call timeout is
    /// 10 s for black stars and 2.5 s otherwise, as in LibertyRestEndpoint.java.
    pub(crate) fn from_env(version: &str, pod: &str, env: Env<'_>) -> Self {
        let (default_enabled, default_color) = match version {
            "v2" => (true, "black"),
            "v3" => (true, "red"),
            _ => (false, "black"),
        };
        let enabled =
            env("ENABLE_RATINGS").map_or(default_enabled, |v| v.eq_ignore_ascii_case("true"));
        let color = env("STAR_COLOR").unwrap_or_else(|| default_color.to_owned());
        let timeout = if color == "black" {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(2500)
        };
        let ratings = enabled.then(|| RatingsCall {
            base_url: service_url(env, "RATINGS_HOSTNAME", "ratings", "RATINGS_SERVICE_PORT"),
            color,
            timeout,
        });
        Self {
            pod: pod.to_owned(),
            clustername: env("CLUSTER_NAME").unwrap_or_else(|| "null".to_owned()),
            ratings,
        }
    }
}

/// One review's rating as the Java service writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum Rating {
    Stars { stars: i64, color: String },
    Error { error: String },
}

#[derive(Debug, Serialize)]
struct Review {
    reviewer: &'static str,
    text: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rating: Option<Rating>,
}

#[derive(Debug, Serialize)]
struct ReviewsBody<'a> {
    id: String,
    podname: &'a str,
    clustername: &'a str,
    reviews: Vec<Review>,
}

/// Builds the reviews body. `stars` is `None` for v1, else per reviewer the stars from ratings
/// (`None` when ratings failed or did not rate that reviewer).
fn reviews_body<'a>(
    id: i64,
    config: &'a ReviewsConfig,
    stars: Option<[Option<i64>; 2]>,
) -> ReviewsBody<'a> {
    let color = config
        .ratings
        .as_ref()
        .map_or("black", |r| r.color.as_str());
    let reviews = REVIEWS
        .iter()
        .enumerate()
        .map(|(i, (reviewer, text))| Review {
            reviewer,
            text,
            rating: stars.map(|s| match s[i] {
                Some(stars) => Rating::Stars {
                    stars,
                    color: color.to_owned(),
                },
                None => Rating::Error {
                    error: RATINGS_UNAVAILABLE.to_owned(),
                },
            }),
        })
        .collect();
    ReviewsBody {
        id: id.to_string(),
        podname: &config.pod,
        clustername: &config.clustername,
        reviews,
    }
}

/// Reads `ratings.Reviewer1` / `ratings.Reviewer2` from a ratings answer.
fn stars_from(answer: &Value) -> [Option<i64>; 2] {
    let get = |who: &str| {
        answer
            .get("ratings")
            .and_then(|r| r.get(who))
            .and_then(Value::as_i64)
    };
    [get("Reviewer1"), get("Reviewer2")]
}

/// The reviews handler.
#[derive(Debug)]
pub(crate) struct Reviews {
    config: ReviewsConfig,
    client: Client,
}

impl Reviews {
    pub(crate) fn new(config: ReviewsConfig) -> Self {
        Self {
            config,
            client: Client::new(),
        }
    }

    async fn fetch_stars(
        &self,
        call: &RatingsCall,
        id: i64,
        req: &Request<Incoming>,
    ) -> [Option<i64>; 2] {
        let url = format!("{}/ratings/{id}", call.base_url);
        match self
            .client
            .get(&url, &propagated(req.headers()), call.timeout)
            .await
        {
            Ok(resp) if resp.status == StatusCode::OK => {
                match serde_json::from_slice::<Value>(&resp.body) {
                    Ok(answer) => stars_from(&answer),
                    Err(e) => {
                        tracing::warn!("ratings at {url} answered invalid JSON: {e}");
                        [None, None]
                    }
                }
            }
            Ok(resp) => {
                tracing::warn!(
                    "Error: unable to contact {url} got status of {}",
                    resp.status.as_u16()
                );
                [None, None]
            }
            Err(e) => {
                tracing::warn!("Error: unable to contact ratings: {e}");
                [None, None]
            }
        }
    }
}

impl Handler for Reviews {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return not_found();
        }
        let path = req.uri().path();
        if path == "/health" {
            return json(StatusCode::OK, &json!({"status": "Reviews is healthy"}));
        }
        // JAX-RS answers 404 when `{productId}` is not an int.
        let Some(id) = path.strip_prefix("/reviews/").and_then(parse_product_id) else {
            return not_found();
        };
        let stars = match &self.config.ratings {
            Some(call) => Some(self.fetch_stars(call, id, &req).await),
            None => None,
        };
        json(StatusCode::OK, &reviews_body(id, &self.config, stars))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(version: &str) -> ReviewsConfig {
        ReviewsConfig::from_env(version, "reviews-v1-abc", &|_| None)
    }

    #[test]
    fn v1_body_has_no_ratings_and_a_string_id() {
        let body = serde_json::to_string(&reviews_body(0, &config("v1"), None)).unwrap();
        assert_eq!(
            body,
            r#"{"id":"0","podname":"reviews-v1-abc","clustername":"null","reviews":[{"reviewer":"Reviewer1","text":"An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"},{"reviewer":"Reviewer2","text":"Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."}]}"#
        );
    }

    #[test]
    fn v3_body_has_red_stars_and_error_for_unrated_reviewer() {
        let body =
            serde_json::to_value(reviews_body(0, &config("v3"), Some([Some(5), None]))).unwrap();
        assert_eq!(
            body["reviews"][0]["rating"],
            json!({"stars": 5, "color": "red"})
        );
        assert_eq!(
            body["reviews"][1]["rating"],
            json!({"error": RATINGS_UNAVAILABLE})
        );
    }

    #[test]
    fn version_picks_color_and_ratings_timeout() {
        assert!(config("v1").ratings.is_none());
        let v2 = config("v2").ratings.unwrap();
        assert_eq!(
            (v2.color.as_str(), v2.timeout),
            ("black", Duration::from_secs(10))
        );
        assert_eq!(v2.base_url, "http://ratings:9080");
        let v3 = config("v3").ratings.unwrap();
        assert_eq!(
            (v3.color.as_str(), v3.timeout),
            ("red", Duration::from_millis(2500))
        );
    }

    #[test]
    fn env_overrides_version_and_ratings_address() {
        let env = |k: &str| match k {
            "ENABLE_RATINGS" => Some("true".to_owned()),
            "STAR_COLOR" => Some("blue".to_owned()),
            "RATINGS_HOSTNAME" => Some("ratings-alt".to_owned()),
            "SERVICES_DOMAIN" => Some("bookinfo.svc.cluster.local".to_owned()),
            "RATINGS_SERVICE_PORT" => Some("9081".to_owned()),
            _ => None,
        };
        let call = ReviewsConfig::from_env("v1", "p", &env).ratings.unwrap();
        assert_eq!(call.color, "blue");
        assert_eq!(
            call.base_url,
            "http://ratings-alt.bookinfo.svc.cluster.local:9081"
        );
        assert_eq!(call.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn stars_are_read_per_reviewer() {
        let answer = json!({"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}});
        assert_eq!(stars_from(&answer), [Some(5), Some(4)]);
        assert_eq!(
            stars_from(&json!({"ratings": {"Reviewer2": 1}})),
            [None, Some(1)]
        );
    }
}
