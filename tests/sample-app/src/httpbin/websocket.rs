//! go-httpbin's `/websocket/echo`: the WebSocket opening handshake (RFC 6455 §4.2) answered
//! on hyper's HTTP/1.1 upgrade, then every text and binary message sent back as it came
//! until the client closes. Framing, pings and the closing handshake are tokio-tungstenite's.

use futures::{SinkExt as _, StreamExt as _};
use http::header::{CONNECTION, HeaderMap, HeaderValue, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::web::{self, Body, header_str};

/// Why a request is no WebSocket opening handshake.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Error {
    #[error("a WebSocket handshake is an HTTP/1.1 GET, not {method} over {version:?}")]
    Request { method: Method, version: Version },
    #[error("missing or wrong {0} header for a WebSocket handshake")]
    Header(&'static str),
    #[error("Sec-WebSocket-Version {0:?} is not supported; use 13")]
    Version(String),
}

/// Whether `headers`' comma-separated `name` lists `token` (case-insensitive).
fn lists(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `Sec-WebSocket-Accept` value for a valid opening handshake.
pub(crate) fn accept_key(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<String, Error> {
    if method != Method::GET || version != Version::HTTP_11 {
        return Err(Error::Request {
            method: method.clone(),
            version,
        });
    }
    if !lists(headers, "upgrade", "websocket") {
        return Err(Error::Header("Upgrade"));
    }
    if !lists(headers, "connection", "upgrade") {
        return Err(Error::Header("Connection"));
    }
    match header_str(headers, "sec-websocket-version") {
        Some("13") => {}
        Some(other) => return Err(Error::Version(other.to_owned())),
        None => return Err(Error::Header("Sec-WebSocket-Version")),
    }
    let key = headers
        .get("sec-websocket-key")
        .ok_or(Error::Header("Sec-WebSocket-Key"))?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// Answers the handshake with 101 and echoes on the upgraded connection; a request that is
/// no handshake gets 400, as go-httpbin answers it.
pub(crate) fn echo(mut req: Request<Incoming>) -> Response<Body> {
    let accept = match accept_key(req.method(), req.version(), req.headers()) {
        Ok(accept) => accept,
        Err(e) => return web::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                serve(socket).await;
            }
            Err(e) => tracing::info!("websocket: the upgrade did not complete: {e}"),
        }
    });
    let mut resp = web::empty(StatusCode::SWITCHING_PROTOCOLS);
    let headers = resp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    resp
}

/// Echoes data messages until the stream ends (tokio-tungstenite answers pings and the
/// client's close on the reads).
async fn serve<S>(mut socket: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut echoed = 0u64;
    while let Some(message) = socket.next().await {
        match message {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                if let Err(e) = socket.send(message).await {
                    tracing::info!("websocket: echo failed: {e}");
                    break;
                }
                echoed += 1;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::info!("websocket: read failed: {e}");
                break;
            }
        }
    }
    tracing::info!("websocket: closed after {echoed} messages echoed");
}

#[cfg(test)]
mod tests;
