//! Shared HTTP plumbing: the listener loop (HTTP/1.1 and h2c via hyper-util's auto builder) with a
//! one-line access log per request (peer, request line, status, bytes, time, user agent,
//! `end-user`, Host; written before the response, so a client that has its answer can count
//! on the line being in the pod's log), response builders, and re-exports of the client and the
//! `application/x-www-form-urlencoded` helpers.

mod client;
#[cfg(test)]
pub(crate) mod testing;
mod urlencoded;

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, SET_COOKIE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;

pub(crate) use client::{Client, ClientError, UpstreamResponse};
pub(crate) use urlencoded::{form_pairs, percent_decode, percent_encode_cookie};

/// The response body every handler returns: the whole body at once.
pub(crate) type Body = Full<Bytes>;

/// Errors of the listener side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listening socket could not be opened.
    #[error("binding {addr}: {source}; is another process using the port?")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// What the kernel said.
        source: std::io::Error,
    },
}

/// `Result` with this module's [`Error`].
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// One app's request handling; `peer` is the TCP peer of the connection.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Binds `0.0.0.0:port` (all IPv4 addresses), as every container listener does.
pub(crate) async fn bind_any(port: u16) -> Result<TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Accepts connections forever, serving each with HTTP/1.1 or h2c (prior knowledge).
pub(crate) async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(logged(&*handler, req, peer).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            // With upgrades: httpbin's /websocket/echo takes the connection over after its 101.
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("connection from {peer} ended with error: {e}");
            }
        });
    }
}

/// Runs the handler and writes the access-log line.
async fn logged<H: Handler>(
    handler: &H,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let uri = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), ToString::to_string);
    let version = req.version();
    let agent = header_str(req.headers(), "user-agent")
        .unwrap_or("-")
        .to_owned();
    let user = header_str(req.headers(), "end-user")
        .unwrap_or("-")
        .to_owned();
    // The authority the client asked for (Host, or `:authority` over HTTP/2).
    let host = header_str(req.headers(), "host")
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(ToString::to_string))
        .unwrap_or_else(|| "-".to_owned());
    let resp = handler.handle(req, peer).await;
    let bytes = resp.body().size_hint().exact().unwrap_or(0);
    tracing::info!(
        target: "access",
        "{peer} \"{method} {uri} {version:?}\" {} {bytes} {:.1}ms \"{agent}\" end-user={user} host={host}",
        resp.status().as_u16(),
        start.elapsed().as_secs_f64() * 1000.0,
    );
    resp
}

/// A header's value as text, if present and visible ASCII.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The value of cookie `name` in the request's `Cookie` header(s), percent-decoded.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v.trim_matches('"')))
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => with_type(status, "application/json", body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding JSON: {e}\n"),
        ),
    }
}

/// A JSON response from bytes that already are JSON (passed through from an upstream).
pub(crate) fn raw_json(status: StatusCode, body: Bytes) -> Response<Body> {
    with_type(status, "application/json", body)
}

/// A `text/plain` response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, "text/plain; charset=utf-8", body)
}

/// A `text/html` 200 response.
pub(crate) fn html(body: impl Into<Bytes>) -> Response<Body> {
    with_type(StatusCode::OK, "text/html; charset=utf-8", body)
}

/// A response with no body.
pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// A 302 to `location`, optionally setting one cookie.
pub(crate) fn redirect(location: &'static str, set_cookie: Option<String>) -> Response<Body> {
    let mut resp = empty(StatusCode::FOUND);
    resp.headers_mut()
        .insert(LOCATION, HeaderValue::from_static(location));
    if let Some(value) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(SET_COOKIE, value);
    }
    resp
}

/// The plain 404 every app answers for unknown paths.
pub(crate) fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// The 405 for a known path with a method it does not serve.
pub(crate) fn method_not_allowed() -> Response<Body> {
    text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_finds_named_value_among_several() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", HeaderValue::from_static("a=1; user=jason; b=2"));
        assert_eq!(cookie(&headers, "user").as_deref(), Some("jason"));
        assert_eq!(cookie(&headers, "nope"), None);
    }

    #[test]
    fn cookie_value_is_percent_decoded() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", HeaderValue::from_static("user=a%20b"));
        assert_eq!(cookie(&headers, "user").as_deref(), Some("a b"));
    }
}
