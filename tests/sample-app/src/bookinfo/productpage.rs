//! bookinfo `productpage` (the Python/Flask service): the HTML product page and JSON API built
//! from `details` and `reviews`, sign-in by a `user` cookie that becomes the `end-user` header
//! upstream, and the original's timeouts: 3 s per call, and reviews tried twice (any failure
//! or non-200 answer is retried once, as the `for _ in range(2)` loop in productpage.py does).

mod html;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Env, propagated, service_url};
use crate::web::{
    self, Body, Client, Handler, UpstreamResponse, cookie, form_pairs, percent_encode_cookie,
};

pub(crate) const DETAILS_UNAVAILABLE: &str =
    "Sorry, product details are currently unavailable for this book.";
pub(crate) const REVIEWS_UNAVAILABLE: &str =
    "Sorry, product reviews are currently unavailable for this book.";
pub(crate) const RATINGS_UNAVAILABLE: &str =
    "Sorry, product ratings are currently unavailable for this book.";

/// The one product of the store.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Product {
    pub(crate) id: u32,
    pub(crate) title: &'static str,
    #[serde(rename = "descriptionHtml")]
    pub(crate) description_html: &'static str,
}

/// The products list, as `getProducts()` returns it.
pub(crate) fn products() -> [Product; 1] {
    [Product {
        id: 0,
        title: "The Comedy of Errors",
        description_html: "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play.",
    }]
}

/// Where productpage's upstreams are and how long it waits for them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProductpageConfig {
    pub(crate) details_url: String,
    pub(crate) reviews_url: String,
    pub(crate) ratings_url: String,
    #[serde(serialize_with = "super::as_secs")]
    pub(crate) details_timeout: Duration,
    /// Per attempt.
    #[serde(serialize_with = "super::as_secs")]
    pub(crate) reviews_timeout: Duration,
    /// Total tries of the reviews call (the original: 2).
    pub(crate) reviews_attempts: u32,
    #[serde(serialize_with = "super::as_secs")]
    pub(crate) ratings_timeout: Duration,
}

impl ProductpageConfig {
    /// `*_HOSTNAME`, `*_SERVICE_PORT` and `SERVICES_DOMAIN` as in productpage.py; timeouts
    /// 3 s each and two reviews attempts.
    pub(crate) fn from_env(env: Env<'_>) -> Self {
        Self {
            details_url: service_url(env, "DETAILS_HOSTNAME", "details", "DETAILS_SERVICE_PORT"),
            reviews_url: service_url(env, "REVIEWS_HOSTNAME", "reviews", "REVIEWS_SERVICE_PORT"),
            ratings_url: service_url(env, "RATINGS_HOSTNAME", "ratings", "RATINGS_SERVICE_PORT"),
            details_timeout: Duration::from_secs(3),
            reviews_timeout: Duration::from_secs(3),
            reviews_attempts: 2,
            ratings_timeout: Duration::from_secs(3),
        }
    }
}

/// The outcome of one upstream fetch as productpage.py sees it.
#[derive(Debug, Clone)]
pub(crate) enum Fetched {
    /// A 200 with a JSON body: the raw bytes (passed through by the API) and the parsed value.
    Ok { raw: Bytes, value: Value },
    /// Anything else: the upstream's status, or 500 when there was no response.
    Failed(StatusCode),
}

impl Fetched {
    fn from_result(url: &str, result: Result<UpstreamResponse, web::ClientError>) -> Self {
        match result {
            Ok(resp) if resp.status == StatusCode::OK => match serde_json::from_slice(&resp.body) {
                Ok(value) => Fetched::Ok {
                    raw: resp.body,
                    value,
                },
                Err(e) => {
                    tracing::warn!("{url} answered 200 with invalid JSON: {e}");
                    Fetched::Failed(StatusCode::INTERNAL_SERVER_ERROR)
                }
            },
            Ok(resp) => {
                tracing::warn!("{url} answered {}", resp.status.as_u16());
                Fetched::Failed(resp.status)
            }
            Err(e) => {
                tracing::warn!("{e}");
                Fetched::Failed(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    /// The API answer: the upstream JSON on success, else `{"error": message}` with the status.
    fn into_response(self, message: &str) -> Response<Body> {
        match self {
            Fetched::Ok { raw, .. } => web::raw_json(StatusCode::OK, raw),
            Fetched::Failed(status) => web::json(status, &json!({"error": message})),
        }
    }
}

/// The productpage handler.
#[derive(Debug)]
pub(crate) struct Productpage {
    config: ProductpageConfig,
    client: Client,
}

impl Productpage {
    pub(crate) fn new(config: ProductpageConfig) -> Self {
        Self {
            config,
            client: Client::new(),
        }
    }

    async fn details(&self, id: &str, headers: &[(HeaderName, HeaderValue)]) -> Fetched {
        let url = format!("{}/details/{id}", self.config.details_url);
        let result = self
            .client
            .get(&url, headers, self.config.details_timeout)
            .await;
        Fetched::from_result(&url, result)
    }

    async fn reviews(&self, id: &str, headers: &[(HeaderName, HeaderValue)]) -> Fetched {
        let url = format!("{}/reviews/{id}", self.config.reviews_url);
        let mut last = Fetched::Failed(StatusCode::INTERNAL_SERVER_ERROR);
        for attempt in 1..=self.config.reviews_attempts.max(1) {
            let result = self
                .client
                .get(&url, headers, self.config.reviews_timeout)
                .await;
            last = Fetched::from_result(&url, result);
            if matches!(last, Fetched::Ok { .. }) {
                break;
            }
            tracing::info!(
                "reviews attempt {attempt} of {} failed",
                self.config.reviews_attempts
            );
        }
        last
    }

    async fn ratings(&self, id: &str, headers: &[(HeaderName, HeaderValue)]) -> Fetched {
        let url = format!("{}/ratings/{id}", self.config.ratings_url);
        let result = self
            .client
            .get(&url, headers, self.config.ratings_timeout)
            .await;
        Fetched::from_result(&url, result)
    }

    async fn login(req: Request<Incoming>) -> Response<Body> {
        let mut user = req
            .uri()
            .query()
            .and_then(|q| form_pairs(q).into_iter().find(|(k, _)| k == "username"))
            .map(|(_, v)| v);
        match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(body) => {
                let body = body.to_bytes();
                if let Some((_, v)) = form_pairs(&String::from_utf8_lossy(&body))
                    .into_iter()
                    .find(|(k, _)| k == "username")
                {
                    user = Some(v);
                }
            }
            Err(e) => tracing::warn!("reading the login form: {e}"),
        }
        let user = user.unwrap_or_default();
        let cookie = format!("user={}; Path=/", percent_encode_cookie(&user));
        web::redirect("/productpage", Some(cookie))
    }
}

/// The signed-in user from the `user` cookie, if any.
fn signed_in_user(req: &Request<Incoming>) -> Option<String> {
    cookie(req.headers(), "user").filter(|u| !u.is_empty())
}

/// The headers for upstream calls: the propagated ones (but not a client-sent `end-user`), plus
/// `end-user` for the signed-in user.
fn upstream_headers(req: &Request<Incoming>, user: Option<&str>) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = propagated(req.headers());
    headers.retain(|(name, _)| name.as_str() != "end-user");
    if let Some(value) = user.and_then(|u| HeaderValue::from_str(u).ok()) {
        headers.push((HeaderName::from_static("end-user"), value));
    }
    headers
}

impl Handler for Productpage {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        if method == Method::POST && path == "/login" {
            return Self::login(req).await;
        }
        if method != Method::GET && method != Method::HEAD {
            return web::method_not_allowed();
        }
        let user = signed_in_user(&req);
        let headers = upstream_headers(&req, user.as_deref());
        match path.as_str() {
            "/" | "/index.html" => web::html(html::index_page(&self.config)),
            "/health" => web::json(StatusCode::OK, &json!({"status": "Productpage is healthy"})),
            "/logout" => web::redirect(
                "/productpage",
                Some("user=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/".to_owned()),
            ),
            "/productpage" => {
                let [product] = products();
                let details = self.details("0", &headers).await;
                let reviews = self.reviews("0", &headers).await;
                web::html(html::product_page(
                    &product,
                    &details,
                    &reviews,
                    user.as_deref(),
                ))
            }
            "/api/v1/products" => web::json(StatusCode::OK, &products()),
            _ => {
                let Some(rest) = path.strip_prefix("/api/v1/products/") else {
                    return web::not_found();
                };
                match rest.split_once('/') {
                    None if !rest.is_empty() => self
                        .details(rest, &headers)
                        .await
                        .into_response(DETAILS_UNAVAILABLE),
                    Some((id, "reviews")) if !id.is_empty() => self
                        .reviews(id, &headers)
                        .await
                        .into_response(REVIEWS_UNAVAILABLE),
                    Some((id, "ratings")) if !id.is_empty() => self
                        .ratings(id, &headers)
                        .await
                        .into_response(RATINGS_UNAVAILABLE),
                    _ => web::not_found(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_api_body_matches_the_original() {
        let text = serde_json::to_string(&products()).unwrap();
        assert!(text.starts_with(r#"[{"id":0,"title":"The Comedy of Errors","descriptionHtml":"<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: "#));
        assert!(text.ends_with(r#"in addition to puns and word play."}]"#));
    }

    #[test]
    fn default_config_uses_service_names_and_original_timeouts() {
        let c = ProductpageConfig::from_env(&|_| None);
        assert_eq!(c.details_url, "http://details:9080");
        assert_eq!(c.reviews_url, "http://reviews:9080");
        assert_eq!(c.ratings_url, "http://ratings:9080");
        assert_eq!(c.details_timeout, Duration::from_secs(3));
        assert_eq!(c.reviews_timeout, Duration::from_secs(3));
        assert_eq!(c.reviews_attempts, 2);
    }

    #[test]
    fn services_domain_is_appended_to_every_host() {
        let env = |k: &str| match k {
            "SERVICES_DOMAIN" => Some("default.svc.cluster.local".to_owned()),
            "DETAILS_HOSTNAME" => Some("details-x".to_owned()),
            "REVIEWS_SERVICE_PORT" => Some("9081".to_owned()),
            _ => None,
        };
        let c = ProductpageConfig::from_env(&env);
        assert_eq!(
            c.details_url,
            "http://details-x.default.svc.cluster.local:9080"
        );
        assert_eq!(
            c.reviews_url,
            "http://reviews.default.svc.cluster.local:9081"
        );
    }
}
