//! An httpbin in the style of go-httpbin (what Istio's `httpbin` sample runs), also the fallback
//! for any unknown app that has ports.
//!
//! JSON shape: like go-httpbin, every header and query-argument value is an **array of
//! strings** (`"headers":{"Accept":["*/*"]}`, `"args":{"a":["1","2"]}`), header names are
//! canonical Title-Case (`X-Request-Id`), and `Host` is included. `origin` is the first
//! `X-Forwarded-For` entry if the request has one, else the TCP peer's IP (go-httpbin's rule).
//! Routes: `/`, `/get`, `/post`, `/put`, `/patch`, `/delete`, `/anything[/…]`, `/headers`,
//! `/ip`, `/user-agent`, `/hostname` (the pod's name, as go-httpbin's `-use-real-hostname`),
//! `/status/{codes}`, `/delay/{seconds}` (capped at 10 s), `/websocket/echo` (a WebSocket that
//! sends every message back).
//!
//! A test hook the real image lacks: with `FAIL_WITH=<status>` in the container's environment
//! every request is answered with that status (a broken replica, for outlier detection).

mod status;
mod websocket;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderMap};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::Value;

pub(crate) use status::{parse_delay, parse_status_list};

use crate::bookinfo::Env;
use crate::web::{self, Body, Handler, form_pairs, header_str};

/// Why the environment cannot configure httpbin.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("httpbin: FAIL_WITH={0:?} is not an HTTP status; use a number from 200 to 599")]
    FailWith(String),
}

/// What one httpbin container answers beyond the request itself.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct HttpbinConfig {
    /// True when the app label is not httpbin and httpbin is the fallback.
    pub(crate) fallback: bool,
    /// What `/hostname` answers: the pod's name.
    pub(crate) hostname: String,
    /// `FAIL_WITH`: answer every request with this status.
    pub(crate) fail_with: Option<u16>,
}

impl HttpbinConfig {
    pub(crate) fn from_env(pod: &str, fallback: bool, env: Env<'_>) -> Result<Self, Error> {
        let fail_with = env("FAIL_WITH")
            .map(|raw| {
                raw.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (200..=599).contains(c))
                    .ok_or(Error::FailWith(raw))
            })
            .transpose()?;
        Ok(HttpbinConfig {
            fallback,
            hostname: pod.to_owned(),
            fail_with,
        })
    }
}

/// Largest request body `/anything` and friends read.
const MAX_BODY: usize = 1024 * 1024;

/// Multi-valued string map, as go-httpbin writes headers and args.
pub(crate) type Values = BTreeMap<String, Vec<String>>;

/// Go's `CanonicalMIMEHeaderKey`: `x-request-id` → `X-Request-Id`.
pub(crate) fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// The request's headers keyed by canonical name, with `Host` (from the URI for HTTP/2).
pub(crate) fn headers_json(headers: &HeaderMap, uri: &Uri) -> Values {
    let mut out = Values::new();
    for (name, value) in headers {
        out.entry(canonical_header_name(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    if !headers.contains_key(HOST)
        && let Some(authority) = uri.authority()
    {
        out.insert("Host".to_owned(), vec![authority.to_string()]);
    }
    out
}

/// Query arguments as a multi-valued map.
pub(crate) fn args_json(uri: &Uri) -> Values {
    let mut out = Values::new();
    for (k, v) in form_pairs(uri.query().unwrap_or_default()) {
        out.entry(k).or_default().push(v);
    }
    out
}

/// go-httpbin's client IP: first `X-Forwarded-For` entry, else the peer address.
pub(crate) fn origin(headers: &HeaderMap, peer: SocketAddr) -> String {
    header_str(headers, "x-forwarded-for")
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map_or_else(|| peer.ip().to_string(), str::to_owned)
}

fn full_url(headers: &HeaderMap, uri: &Uri) -> String {
    let host = header_str(headers, "host")
        .map(str::to_owned)
        .or_else(|| uri.authority().map(ToString::to_string))
        .unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("http://{host}{path}")
}

/// The answer of `/get` and `/delay`.
#[derive(Debug, Serialize)]
pub(crate) struct NoBodyResponse {
    pub(crate) args: Values,
    pub(crate) headers: Values,
    pub(crate) method: String,
    pub(crate) origin: String,
    pub(crate) url: String,
}

/// The answer of `/anything`, `/post` and friends: [`NoBodyResponse`] plus the body.
#[derive(Debug, Serialize)]
struct BodyResponse {
    #[serde(flatten)]
    base: NoBodyResponse,
    data: String,
    files: BTreeMap<String, Vec<String>>,
    form: Values,
    json: Value,
}

fn no_body(req: &Request<Incoming>, peer: SocketAddr) -> NoBodyResponse {
    NoBodyResponse {
        args: args_json(req.uri()),
        headers: headers_json(req.headers(), req.uri()),
        method: req.method().to_string(),
        origin: origin(req.headers(), peer),
        url: full_url(req.headers(), req.uri()),
    }
}

async fn with_body(req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let base = no_body(&req, peer);
    let content_type = header_str(req.headers(), CONTENT_TYPE.as_str())
        .unwrap_or("")
        .to_owned();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return web::text(
                StatusCode::BAD_REQUEST,
                format!("reading request body: {e}\n"),
            );
        }
    };
    web::json(StatusCode::OK, &body_response(base, &content_type, &body))
}

fn body_response(base: NoBodyResponse, content_type: &str, body: &Bytes) -> BodyResponse {
    let data = String::from_utf8_lossy(body).into_owned();
    let mut form = Values::new();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        for (k, v) in form_pairs(&data) {
            form.entry(k).or_default().push(v);
        }
    }
    let json = if content_type.contains("json") {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    BodyResponse {
        base,
        data,
        files: BTreeMap::new(),
        form,
        json,
    }
}

const INDEX: &str = "<!DOCTYPE html>\n<html><head><title>httpbin</title></head><body>\n\
<h1>httpbin</h1><p>A simple HTTP request and response service.</p>\n<ul>\n\
<li><a href=\"/get\">/get</a> the request's query parameters, headers, origin</li>\n\
<li>/post, /put, /patch, /delete the request, including its body</li>\n\
<li><a href=\"/anything\">/anything</a> anything passed in the request</li>\n\
<li><a href=\"/headers\">/headers</a> the request's headers</li>\n\
<li><a href=\"/ip\">/ip</a> the requester's IP address</li>\n\
<li><a href=\"/user-agent\">/user-agent</a> the User-Agent header</li>\n\
<li><a href=\"/hostname\">/hostname</a> the name of the pod that answers</li>\n\
<li><a href=\"/status/418\">/status/:code</a> the given status (or a weighted random one of <code>200:0.9,503:0.1</code>)</li>\n\
<li><a href=\"/bytes/1024\">/bytes/:n</a> n bytes</li>\n\
<li><a href=\"/delay/1\">/delay/:seconds</a> waits (at most 10 s) then answers like /get</li>\n\
<li>/websocket/echo a WebSocket that sends every message back</li>\n\
</ul></body></html>\n";

/// The httpbin handler.
#[derive(Debug)]
pub(crate) struct Httpbin {
    hostname: String,
    fail_with: Option<StatusCode>,
}

impl Httpbin {
    pub(crate) fn new(config: &HttpbinConfig) -> Httpbin {
        Httpbin {
            hostname: config.hostname.clone(),
            fail_with: config
                .fail_with
                .and_then(|code| StatusCode::from_u16(code).ok()),
        }
    }
}

impl Handler for Httpbin {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        if let Some(status) = self.fail_with {
            return web::text(
                status,
                format!("{} fails on purpose (FAIL_WITH)\n", self.hostname),
            );
        }
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let read_only = method == Method::GET || method == Method::HEAD;
        match path.as_str() {
            "/" if read_only => web::html(INDEX),
            "/get" if read_only => web::json(StatusCode::OK, &no_body(&req, peer)),
            "/post" if method == Method::POST => with_body(req, peer).await,
            "/put" if method == Method::PUT => with_body(req, peer).await,
            "/patch" if method == Method::PATCH => with_body(req, peer).await,
            "/delete" if method == Method::DELETE => with_body(req, peer).await,
            "/" | "/get" | "/post" | "/put" | "/patch" | "/delete" => web::method_not_allowed(),
            "/headers" => web::json(
                StatusCode::OK,
                &serde_json::json!({"headers": headers_json(req.headers(), req.uri())}),
            ),
            "/ip" => web::json(
                StatusCode::OK,
                &serde_json::json!({"origin": origin(req.headers(), peer)}),
            ),
            "/hostname" => web::json(
                StatusCode::OK,
                &serde_json::json!({"hostname": self.hostname}),
            ),
            "/user-agent" => web::json(
                StatusCode::OK,
                &serde_json::json!({"user-agent": header_str(req.headers(), "user-agent").unwrap_or("")}),
            ),
            "/websocket/echo" => websocket::echo(req),
            p if p == "/anything" || p.starts_with("/anything/") => with_body(req, peer).await,
            p if p.starts_with("/status/") => match parse_status_list(&p["/status/".len()..]) {
                Ok(choice) => status::response(choice.pick(&mut rand::rng())),
                Err(e) => web::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
            p if p.starts_with("/bytes/") => match p["/bytes/".len()..].parse::<usize>() {
                // go-httpbin's /bytes/{n}, without the randomness: n bytes (at most 100 KiB).
                Ok(n) if n <= MAX_BYTES => web::text(StatusCode::OK, vec![b'x'; n]),
                _ => web::text(
                    StatusCode::BAD_REQUEST,
                    format!("/bytes/N takes a size up to {MAX_BYTES}\n"),
                ),
            },
            p if p.starts_with("/delay/") => match parse_delay(&p["/delay/".len()..]) {
                Ok(delay) => {
                    tokio::time::sleep(delay).await;
                    web::json(StatusCode::OK, &no_body(&req, peer))
                }
                Err(e) => web::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
            _ => web::not_found(),
        }
    }
}

/// The largest `/bytes/N` body.
const MAX_BYTES: usize = 100 * 1024;

/// The most a `/delay` waits.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn header_names_become_canonical_title_case() {
        assert_eq!(canonical_header_name("x-request-id"), "X-Request-Id");
        assert_eq!(canonical_header_name("ACCEPT"), "Accept");
        assert_eq!(canonical_header_name("te"), "Te");
    }

    #[test]
    fn headers_are_arrays_and_include_host_from_uri() {
        let mut headers = HeaderMap::new();
        headers.append("accept", HeaderValue::from_static("*/*"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let uri: Uri = "http://httpbin:8000/get".parse().unwrap();
        let json = serde_json::to_value(headers_json(&headers, &uri)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"Accept": ["*/*"], "X-Multi": ["a", "b"], "Host": ["httpbin:8000"]})
        );
    }

    #[test]
    fn args_keep_repeated_values() {
        let uri: Uri = "/get?a=1&b=x%20y&a=2".parse().unwrap();
        let args = args_json(&uri);
        assert_eq!(args["a"], vec!["1", "2"]);
        assert_eq!(args["b"], vec!["x y"]);
    }

    #[test]
    fn origin_prefers_first_forwarded_for_entry() {
        let peer: SocketAddr = "10.0.0.9:5555".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(origin(&headers, peer), "10.0.0.9");
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("10.1.1.1, 10.2.2.2"),
        );
        assert_eq!(origin(&headers, peer), "10.1.1.1");
    }

    #[test]
    fn fail_with_comes_from_the_environment_and_must_be_a_status() {
        let env = |value: &'static str| move |k: &str| (k == "FAIL_WITH").then(|| value.to_owned());
        let config = HttpbinConfig::from_env("p", false, &env("500")).unwrap();
        assert_eq!(config.fail_with, Some(500));
        assert_eq!(config.hostname, "p");
        assert_eq!(
            HttpbinConfig::from_env("p", false, &env("oops")),
            Err(Error::FailWith("oops".to_owned()))
        );
        assert_eq!(
            HttpbinConfig::from_env("p", false, &|_| None)
                .unwrap()
                .fail_with,
            None
        );
    }

    #[test]
    fn body_response_parses_form_and_json() {
        let base = || NoBodyResponse {
            args: Values::new(),
            headers: Values::new(),
            method: "POST".to_owned(),
            origin: "1.2.3.4".to_owned(),
            url: "http://h/anything".to_owned(),
        };
        let form = body_response(
            base(),
            "application/x-www-form-urlencoded",
            &Bytes::from("a=1"),
        );
        assert_eq!(form.form["a"], vec!["1"]);
        let json = body_response(base(), "application/json", &Bytes::from(r#"{"k":2}"#));
        let value = serde_json::to_value(&json).unwrap();
        assert_eq!(value["json"], serde_json::json!({"k": 2}));
        assert_eq!(value["data"], r#"{"k":2}"#);
        assert_eq!(value["method"], "POST");
    }

    mod live {
        use bytes::Bytes;
        use http::{Request, StatusCode};
        use http_body_util::Full;
        use serde_json::json;

        use super::super::{Httpbin, HttpbinConfig};
        use crate::web::testing::{get, send, send_h2c, spawn};

        fn httpbin(fail_with: Option<u16>) -> Httpbin {
            Httpbin::new(&HttpbinConfig {
                fallback: false,
                hostname: "httpbin-7d8f-abcde".to_owned(),
                fail_with,
            })
        }

        #[tokio::test]
        async fn get_echoes_args_headers_and_url_over_http1() {
            let addr = spawn(httpbin(None)).await;
            let answer = get(addr, "/get?show_env=1&a=x", &[("x-custom", "v")]).await;
            assert_eq!(answer.status, StatusCode::OK);
            let body = answer.json();
            assert_eq!(body["args"], json!({"show_env": ["1"], "a": ["x"]}));
            assert_eq!(body["headers"]["X-Custom"], json!(["v"]));
            assert_eq!(body["headers"]["Host"], json!([addr.to_string()]));
            assert_eq!(body["origin"], "127.0.0.1");
            assert_eq!(body["url"], format!("http://{addr}/get?show_env=1&a=x"));
        }

        #[tokio::test]
        async fn headers_are_served_over_h2c_prior_knowledge() {
            let addr = spawn(httpbin(None)).await;
            let req = Request::get(format!("http://{addr}/headers"))
                .header("x-b3-traceid", "abc")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let answer = send_h2c(req).await;
            assert_eq!(answer.status, StatusCode::OK);
            let body = answer.json();
            assert_eq!(body["headers"]["X-B3-Traceid"], json!(["abc"]));
            assert_eq!(body["headers"]["Host"], json!([addr.to_string()]));
        }

        #[tokio::test]
        async fn status_answers_the_code_and_rejects_garbage() {
            let addr = spawn(httpbin(None)).await;
            let teapot = get(addr, "/status/418", &[]).await;
            assert_eq!(teapot.status, StatusCode::IM_A_TEAPOT);
            assert!(teapot.body.is_empty());
            let weighted = get(addr, "/status/503:1,200:0", &[]).await;
            assert_eq!(weighted.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                get(addr, "/status/abc", &[]).await.status,
                StatusCode::BAD_REQUEST
            );
        }

        #[tokio::test]
        async fn delay_waits_then_answers_like_get() {
            let addr = spawn(httpbin(None)).await;
            let start = std::time::Instant::now();
            let answer = get(addr, "/delay/0.2?x=1", &[]).await;
            assert!(start.elapsed() >= std::time::Duration::from_millis(200));
            assert_eq!(answer.json()["args"], json!({"x": ["1"]}));
            assert_eq!(
                get(addr, "/delay/nope", &[]).await.status,
                StatusCode::BAD_REQUEST
            );
        }

        #[tokio::test]
        async fn anything_echoes_method_and_body() {
            let addr = spawn(httpbin(None)).await;
            let req = Request::put(format!("http://{addr}/anything/deep/path?q=1"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(r#"{"k":"v"}"#)))
                .unwrap();
            let body = send(req).await.json();
            assert_eq!(body["method"], "PUT");
            assert_eq!(body["json"], json!({"k": "v"}));
            assert_eq!(body["args"], json!({"q": ["1"]}));
            assert!(
                body["url"]
                    .as_str()
                    .unwrap()
                    .ends_with("/anything/deep/path?q=1")
            );
        }

        #[tokio::test]
        async fn ip_and_unknown_paths() {
            let addr = spawn(httpbin(None)).await;
            assert_eq!(
                get(addr, "/ip", &[]).await.json(),
                json!({"origin": "127.0.0.1"})
            );
            assert_eq!(get(addr, "/nope", &[]).await.status, StatusCode::NOT_FOUND);
            assert_eq!(
                get(addr, "/post", &[]).await.status,
                StatusCode::METHOD_NOT_ALLOWED
            );
        }

        #[tokio::test]
        async fn hostname_names_the_pod() {
            let addr = spawn(httpbin(None)).await;
            assert_eq!(
                get(addr, "/hostname", &[]).await.json(),
                json!({"hostname": "httpbin-7d8f-abcde"})
            );
        }

        #[tokio::test]
        async fn fail_with_answers_every_request_with_that_status() {
            let addr = spawn(httpbin(Some(500))).await;
            for path in ["/", "/get", "/status/200", "/hostname"] {
                assert_eq!(
                    get(addr, path, &[]).await.status,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "{path}"
                );
            }
        }
    }
}
