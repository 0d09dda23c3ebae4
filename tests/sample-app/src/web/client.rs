//! The outbound HTTP client: hyper-util's legacy client over the system resolver
//! (getaddrinfo, so the sim's /etc/hosts names resolve), with a per-call deadline that covers
//! connecting, the response head and the whole body.
//!
//! Like bookinfo's originals (Python `requests.get`, a JAX-RS client per call), every call
//! opens a new connection: per-connection load balancing (kube-proxy, an L4 mesh) then spreads
//! calls over all endpoints instead of pinning a pooled connection to one.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Legacy;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why an outbound call produced no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The URL could not be turned into a request.
    #[error("building request for {url}: {source}")]
    Build {
        /// The URL we were given.
        url: String,
        /// What was wrong with it.
        source: http::Error,
    },
    /// Connecting or sending failed (refused, unresolvable name, reset).
    #[error("calling {url}: {source}")]
    Request {
        /// The URL called.
        url: String,
        /// The transport error.
        source: hyper_util::client::legacy::Error,
    },
    /// The response body broke off.
    #[error("reading the body from {url}: {source}")]
    Body {
        /// The URL called.
        url: String,
        /// The transport error.
        source: hyper::Error,
    },
    /// No complete response within the deadline.
    #[error("calling {url}: no response within {timeout:?}")]
    Timeout {
        /// The URL called.
        url: String,
        /// The deadline that passed.
        timeout: Duration,
    },
}

/// A complete upstream response.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamResponse {
    /// Its status.
    pub(crate) status: StatusCode,
    /// Its whole body.
    pub(crate) body: Bytes,
}

/// A cheap-to-clone client; connections are not reused.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    inner: Legacy<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A new client (HTTP/1.1, a connection per call).
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Legacy::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Self { inner }
    }

    /// `GET url` with extra headers, all within `timeout`.
    pub(crate) async fn get(
        &self,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        timeout: Duration,
    ) -> Result<UpstreamResponse, ClientError> {
        let mut builder = Request::get(url);
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let req = builder
            .body(Full::new(Bytes::new()))
            .map_err(|source| ClientError::Build {
                url: url.to_owned(),
                source,
            })?;
        let call = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|source| ClientError::Request {
                    url: url.to_owned(),
                    source,
                })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|source| ClientError::Body {
                    url: url.to_owned(),
                    source,
                })?
                .to_bytes();
            Ok(UpstreamResponse { status, body })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                url: url.to_owned(),
                timeout,
            }),
        }
    }
}
