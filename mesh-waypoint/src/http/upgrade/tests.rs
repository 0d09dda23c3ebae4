use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::oneshot;

use super::*;

/// Far more than an in-memory exchange takes; a splice that never ends fails the test.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

fn parts(version: Version, headers: &[(&str, &str)]) -> request::Parts {
    let mut builder = Request::get("/ws").version(version);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

#[test]
fn websocket_upgrade_is_recognised_among_connection_tokens() {
    let asked = parts(
        Version::HTTP_11,
        &[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ],
    );
    assert_eq!(
        protocol(&asked),
        Some(HeaderValue::from_static("websocket"))
    );
    let split = parts(
        Version::HTTP_11,
        &[
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("upgrade", "echo/1"),
        ],
    );
    assert_eq!(protocol(&split), Some(HeaderValue::from_static("echo/1")));
}

#[test]
fn no_upgrade_without_both_headers_on_http11_nor_to_h2c() {
    let cases = [
        parts(Version::HTTP_11, &[("upgrade", "websocket")]),
        parts(Version::HTTP_11, &[("connection", "upgrade")]),
        parts(
            Version::HTTP_11,
            &[("connection", "upgraded-not"), ("upgrade", "websocket")],
        ),
        parts(
            Version::HTTP_11,
            &[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
            ],
        ),
        parts(
            Version::HTTP_10,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        ),
        parts(
            Version::HTTP_2,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        ),
    ];
    for case in cases {
        assert_eq!(protocol(&case), None, "{case:?}");
    }
}

/// An upstream that accepts `Upgrade: echo`, then sends back every byte it reads and closes
/// its side once the client has closed its own.
async fn echo_upstream(io: DuplexStream) {
    let service = hyper::service::service_fn(|mut request: Request<Incoming>| async move {
        let mut response = Response::new(Empty::<Bytes>::new());
        if request.headers().get(header::UPGRADE) != Some(&HeaderValue::from_static("echo")) {
            *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
            return Ok::<_, Infallible>(response);
        }
        let on = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let mut io = TokioIo::new(on.await.expect("the upstream side upgrades"));
            let mut buf = [0; 64];
            loop {
                let n = io
                    .read(&mut buf)
                    .await
                    .expect("reading the upgraded stream");
                if n == 0 {
                    break;
                }
                io.write_all(&buf[..n]).await.expect("echoing");
            }
            io.shutdown().await.expect("closing the echo side");
        });
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        restore_headers(response.headers_mut(), &HeaderValue::from_static("echo"));
        Ok(response)
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
        .expect("the upstream connection");
}

/// The waypoint's part, with the real [`take`] and [`splice`]: the request goes up on an
/// HTTP/1.1 client connection, the 101 comes back, the two upgraded connections are spliced;
/// the splice's byte counts are sent on `done`.
async fn splicing_proxy(
    io: DuplexStream,
    upstream: DuplexStream,
    done: oneshot::Sender<(u64, u64)>,
) {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .expect("the upstream handshake");
    tokio::spawn(connection.with_upgrades());
    let sender = std::sync::Arc::new(tokio::sync::Mutex::new(sender));
    let done = std::sync::Arc::new(std::sync::Mutex::new(Some(done)));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let sender = sender.clone();
        let done = done.clone();
        async move {
            let (mut parts, _) = request.into_parts();
            let asked = take(&mut parts).expect("the request asks for an upgrade");
            let mut up = Request::get("/ws").body(Empty::<Bytes>::new()).unwrap();
            restore_headers(up.headers_mut(), &asked.protocol);
            let mut response = sender.lock().await.send_request(up).await.expect("sent");
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            let upstream_io = hyper::upgrade::on(&mut response);
            let done = done.lock().unwrap().take().expect("one upgrade");
            tokio::spawn(async move {
                let counts = splice(asked.client, upstream_io).await.expect("spliced");
                let _ = done.send(counts);
            });
            let mut answer = Response::new(Empty::<Bytes>::new());
            *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            restore_headers(answer.headers_mut(), &asked.protocol);
            Ok::<_, Infallible>(answer)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await
        .expect("the proxy's client connection");
}

#[tokio::test]
async fn spliced_upgrade_carries_messages_both_ways_and_passes_the_half_close_on() {
    let (client_io, proxy_io) = tokio::io::duplex(1024);
    let (proxy_up, upstream_io) = tokio::io::duplex(1024);
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(echo_upstream(upstream_io));
    tokio::spawn(splicing_proxy(proxy_io, proxy_up, done_tx));

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap();
    tokio::spawn(connection.with_upgrades());
    let request = Request::get("/ws")
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()[header::UPGRADE], "echo");
    let mut io = TokioIo::new(hyper::upgrade::on(response).await.unwrap());

    let messages = ["first", "second message", "3"];
    for message in messages {
        io.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0; message.len()];
        io.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
    // The client stops writing; the upstream sees the end, closes its side, and that
    // reaches the client as the end of the stream.
    io.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, io.read_to_end(&mut rest))
        .await
        .expect("the upstream's close reaches the client")
        .unwrap();
    assert!(rest.is_empty(), "nothing after the echoes: {rest:?}");
    let total: u64 = messages.iter().map(|m| m.len() as u64).sum();
    let counts = tokio::time::timeout(DEADLINE, done_rx)
        .await
        .expect("the splice ends once both sides are closed");
    assert_eq!(counts.unwrap(), (total, total));
}
