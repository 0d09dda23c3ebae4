//! Test helpers: start a handler on 127.0.0.1 with an ephemeral port (bound before spawning,
//! so no waiting), and send requests over HTTP/1.1 or h2c.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

use super::{Handler, serve};

/// Serves `handler` on a fresh loopback port.
pub(crate) async fn spawn<H: Handler>(handler: H) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(serve(listener, Arc::new(handler)));
    addr
}

/// A loopback address nothing listens on (bound, then released).
pub(crate) async fn closed_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    listener.local_addr().expect("local addr")
}

/// A finished response.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

async fn send_with(h2: bool, req: Request<Full<Bytes>>) -> Answer {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http();
    let resp = client.request(req).await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

/// Sends over HTTP/1.1.
pub(crate) async fn send(req: Request<Full<Bytes>>) -> Answer {
    send_with(false, req).await
}

/// Sends over h2c with prior knowledge.
pub(crate) async fn send_h2c(req: Request<Full<Bytes>>) -> Answer {
    send_with(true, req).await
}

/// `GET http://addr{path}` with headers, over HTTP/1.1.
pub(crate) async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(Full::new(Bytes::new())).expect("request")).await
}
