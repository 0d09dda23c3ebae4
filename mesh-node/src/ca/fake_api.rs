//! A fake Kubernetes API server for the CA's tests: a `kube::Client` whose requests go to a
//! tower-test mock and are answered by a function of the request.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use serde_json::{Value, json};

pub(crate) type ResponseBody = BoxBody<Bytes, std::io::Error>;

/// One request the client sent.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) body: Value,
}

impl Seen {
    /// The path's segments, without the leading slash.
    pub(crate) fn segments(&self) -> Vec<&str> {
        self.path.trim_start_matches('/').split('/').collect()
    }
}

/// A client of the fake API server that `answer` plays.
pub(crate) fn client(
    answer: impl Fn(Seen) -> Response<ResponseBody> + Send + 'static,
) -> kube::Client {
    let (service, mut handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<ResponseBody>>();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            respond.send_response(answer(Seen {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or("").to_owned(),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            }));
        }
    });
    kube::Client::new(service, "default")
}

pub(crate) fn ok(body: Value) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from(body.to_string()))
        .map_err(|never| match never {})
        .boxed();
    Response::new(body)
}

/// A `Status` failure as the API server sends it.
pub(crate) fn status(code: StatusCode, message: &str) -> Response<ResponseBody> {
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::CONFLICT => "Conflict",
        _ => "Forbidden",
    };
    let mut response = ok(json!({"apiVersion": "v1", "kind": "Status", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()}));
    *response.status_mut() = code;
    response
}
