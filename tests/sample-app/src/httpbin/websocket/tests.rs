use futures::{SinkExt as _, StreamExt as _};
use http::header::HeaderMap;
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::httpbin::{Httpbin, HttpbinConfig};
use crate::web::testing::{get, spawn};

fn handshake_headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(*name, HeaderValue::from_static(value));
    }
    headers
}

const RFC_HANDSHAKE: [(&str, &str); 4] = [
    ("upgrade", "websocket"),
    ("connection", "keep-alive, Upgrade"),
    ("sec-websocket-version", "13"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[test]
fn accept_key_is_rfc_6455s_example() {
    let headers = handshake_headers(&RFC_HANDSHAKE);
    assert_eq!(
        accept_key(&Method::GET, Version::HTTP_11, &headers).as_deref(),
        Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}

#[test]
fn a_request_that_is_no_handshake_is_refused_with_the_reason() {
    let full = handshake_headers(&RFC_HANDSHAKE);
    assert_eq!(
        accept_key(&Method::POST, Version::HTTP_11, &full),
        Err(Error::Request {
            method: Method::POST,
            version: Version::HTTP_11
        })
    );
    let without = |name: &str| {
        let mut headers = full.clone();
        headers.remove(name);
        accept_key(&Method::GET, Version::HTTP_11, &headers)
    };
    assert_eq!(without("upgrade"), Err(Error::Header("Upgrade")));
    assert_eq!(without("connection"), Err(Error::Header("Connection")));
    assert_eq!(
        without("sec-websocket-key"),
        Err(Error::Header("Sec-WebSocket-Key"))
    );
    let mut old = full.clone();
    old.insert("sec-websocket-version", HeaderValue::from_static("8"));
    assert_eq!(
        accept_key(&Method::GET, Version::HTTP_11, &old),
        Err(Error::Version("8".to_owned()))
    );
}

fn httpbin() -> Httpbin {
    Httpbin::new(&HttpbinConfig {
        fallback: false,
        hostname: "httpbin-ws".to_owned(),
        fail_with: None,
    })
}

#[tokio::test]
async fn websocket_echo_sends_every_message_back_and_closes_cleanly() {
    let addr = spawn(httpbin()).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut socket, response) =
        tokio_tungstenite::client_async(format!("ws://{addr}/websocket/echo"), tcp)
            .await
            .expect("the handshake succeeds");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let messages = [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("ünïcode"),
    ];
    for message in messages {
        socket.send(message.clone()).await.unwrap();
        let echoed = socket.next().await.expect("an echo").unwrap();
        assert_eq!(echoed, message);
    }
    socket.close(None).await.unwrap();
    // The server answers the close; then the stream ends.
    while let Some(message) = socket.next().await {
        assert!(
            matches!(message, Ok(Message::Close(_))),
            "only the close after closing: {message:?}"
        );
    }
}

#[tokio::test]
async fn a_plain_get_of_websocket_echo_is_a_bad_request() {
    let addr = spawn(httpbin()).await;
    let answer = get(addr, "/websocket/echo", &[]).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.text().contains("Upgrade"), "{}", answer.text());
}
