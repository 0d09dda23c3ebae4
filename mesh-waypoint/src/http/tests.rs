//! Request bodies through a waypoint in the test's process, end to end: the client's body
//! streams to the upstream as it is sent (HTTP/1.1 chunked and with a length, HTTP/2), a
//! bidirectional HTTP/2 stream passes, trailers pass both ways (HTTP/1.1 and HTTP/2),
//! retries resend the body from the replay buffer (and a body past it is not retried),
//! mirrors get a copy without holding up the request, and a fault answers without the body.

use std::io;
use std::sync::Mutex;

use http_body_util::Empty;
use http_body_util::channel::{Channel, Sender};
use tokio::sync::mpsc;

use super::*;

mod harness;
mod jwt;

use harness::{TestWaypoint, service, until, upstream, within};

/// A body the test sends chunk by chunk.
fn client_body() -> (Sender<Bytes, io::Error>, Channel<Bytes, io::Error>) {
    Channel::new(4)
}

/// A request to `echo:8000`; HTTP/2 requests carry the authority in the URI.
fn to_echo(method: http::Method, h2: bool, path: &str) -> http::request::Builder {
    if h2 {
        Request::builder()
            .method(method)
            .uri(format!("http://echo:8000{path}"))
    } else {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "echo:8000")
    }
}

fn post(h2: bool, path: &str) -> http::request::Builder {
    to_echo(http::Method::POST, h2, path)
}

/// The upstream's echo of a request: how its body was framed, and the body.
async fn echo(
    request: Request<Incoming>,
    seen: mpsc::UnboundedSender<Bytes>,
) -> Response<Full<Bytes>> {
    let framing = match (
        request.headers().get(header::CONTENT_LENGTH),
        request.headers().get(header::TRANSFER_ENCODING),
    ) {
        (Some(length), _) => format!("length {}", length.to_str().unwrap_or_default()),
        (None, Some(coding)) => coding.to_str().unwrap_or_default().to_owned(),
        (None, None) => "none".to_owned(),
    };
    let mut body = request.into_body();
    let mut all = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            all.extend_from_slice(&data);
            let _ = seen.send(data);
        }
    }
    let mut response = Response::new(Full::new(Bytes::from(all)));
    response
        .headers_mut()
        .insert("x-framing", HeaderValue::from_str(&framing).unwrap());
    response
}

/// Receives what the upstream reads until it adds up to `expected`.
async fn upstream_reads(seen: &mut mpsc::UnboundedReceiver<Bytes>, expected: &str) {
    let mut read = Vec::new();
    while read.len() < expected.len() {
        read.extend_from_slice(&seen.recv().await.expect("the upstream is reading"));
    }
    assert_eq!(read, expected.as_bytes());
}

#[tokio::test]
async fn the_upstream_gets_the_first_chunk_before_the_client_sends_the_next() {
    // (client HTTP/2, upstream HTTP/2, length declared, how the upstream sees the body)
    let cases = [
        (false, false, false, "chunked"),
        (false, false, true, "length 12"),
        (true, true, false, "none"),
        (true, false, true, "length 12"),
        (false, true, false, "none"),
    ];
    for (client_h2, upstream_h2, declared, framing) in cases {
        let case = format!("client h2 {client_h2}, upstream h2 {upstream_h2}, declared {declared}");
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let port = upstream("127.0.0.1", upstream_h2, move |request| {
            echo(request, seen_tx.clone())
        })
        .await;
        let port_name = if upstream_h2 { "http2" } else { "http" };
        let waypoint = TestWaypoint::new(&[service("echo", "127.0.0.1", port_name, port)]);
        let (mut tx, body) = client_body();
        let mut request = post(client_h2, "/upload");
        if declared {
            request = request.header(header::CONTENT_LENGTH, "12");
        }
        let request = request.body(body).unwrap();
        let response = waypoint.send(client_h2, request).await;

        tx.send_data(Bytes::from_static(b"first ")).await.unwrap();
        within(
            &format!("{case}: the upstream reads the first chunk"),
            upstream_reads(&mut seen, "first "),
        )
        .await;
        tx.send_data(Bytes::from_static(b"second")).await.unwrap();
        drop(tx);
        let response = within(&format!("{case}: the response"), response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{case}");
        assert_eq!(response.headers()["x-framing"], framing, "{case}");
        let echoed = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed, "first second", "{case}");
    }
}

#[tokio::test]
async fn trailers_pass_both_ways_over_http1_and_http2() {
    // The upstream answers with a streamed body whose trailer echoes the request's.
    let answer = |request: Request<Incoming>| async move {
        let mut incoming = request.into_body();
        let mut checksum = HeaderValue::from_static("none");
        while let Some(Ok(frame)) = incoming.frame().await {
            if let Ok(trailers) = frame.into_trailers()
                && let Some(value) = trailers.get("x-checksum")
            {
                checksum = value.clone();
            }
        }
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(2);
        tokio::spawn(async move {
            let _ = tx.send_data(Bytes::from_static(b"done")).await;
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-echo-checksum", checksum);
            let _ = tx.send_trailers(trailers).await;
        });
        let mut response = Response::new(body);
        // An HTTP/1.1 sender sends only the trailer fields its head declares.
        response
            .headers_mut()
            .insert(header::TRAILER, HeaderValue::from_static("x-echo-checksum"));
        response
    };
    // (client HTTP/2, upstream HTTP/2)
    for (client_h2, upstream_h2) in [(false, false), (false, true), (true, false)] {
        let case = format!("client h2 {client_h2}, upstream h2 {upstream_h2}");
        let port = upstream("127.0.0.1", upstream_h2, answer).await;
        let port_name = if upstream_h2 { "http2" } else { "http" };
        let waypoint = TestWaypoint::new(&[service("echo", "127.0.0.1", port_name, port)]);
        let (mut tx, body) = client_body();
        let request = post(client_h2, "/upload")
            .header(header::TE, "trailers")
            .header(header::TRAILER, "x-checksum")
            .body(body)
            .unwrap();
        let response = waypoint.send(client_h2, request).await;
        tx.send_data(Bytes::from_static(b"payload")).await.unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("c0ffee"));
        tx.send_trailers(trailers).await.unwrap();
        drop(tx);
        let response = within(&format!("{case}: the response"), response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{case}");
        let collected = within(&format!("{case}: the body"), response.into_body().collect())
            .await
            .unwrap();
        let trailers = collected.trailers().cloned();
        assert_eq!(collected.to_bytes(), "done", "{case}");
        let echoed = trailers.and_then(|t| t.get("x-echo-checksum").cloned());
        assert_eq!(
            echoed,
            Some(HeaderValue::from_static("c0ffee")),
            "{case}: the request's trailer reached the upstream and the response's the client"
        );
    }
}

#[tokio::test]
async fn a_bidirectional_stream_passes_over_http2_and_its_bytes_and_grpc_status_are_counted() {
    // The upstream answers at once and echoes each message as it comes, as a gRPC
    // bidirectional stream does.
    let port = upstream("127.0.0.1", true, |request: Request<Incoming>| async move {
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
        tokio::spawn(async move {
            let mut incoming = request.into_body();
            while let Some(Ok(frame)) = incoming.frame().await {
                // The end of the stream may come as an empty frame.
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    let echo = [b"echo ".as_slice(), &data].concat();
                    if tx.send_data(echo.into()).await.is_err() {
                        break;
                    }
                }
            }
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = tx.send_trailers(trailers).await;
        });
        Response::new(body)
    })
    .await;
    let waypoint = TestWaypoint::new(&[service("echo", "127.0.0.1", "grpc", port)]);
    let (mut tx, body) = client_body();
    let request = post(true, "/echo.Echo/Chat")
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .unwrap();
    let response = waypoint.send(true, request).await;
    tx.send_data(Bytes::from_static(b"ping 1")).await.unwrap();
    let response = within("the response headers before the client's end", response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut answers = response.into_body();
    // The next message; an empty frame (HTTP/2 may end a stream with one) is none.
    let mut next = async || {
        within("the echo", answers.frame())
            .await
            .map(|frame| frame.unwrap().into_data().unwrap())
            .filter(|data| !data.is_empty())
    };
    assert_eq!(next().await.unwrap(), "echo ping 1");
    tx.send_data(Bytes::from_static(b"ping 2")).await.unwrap();
    assert_eq!(next().await.unwrap(), "echo ping 2");
    drop(tx);
    let trailers = within("the trailers", answers.frame())
        .await
        .unwrap()
        .unwrap()
        .into_trailers()
        .expect("trailers end the stream");
    assert_eq!(trailers["grpc-status"], "0");

    // Counted once the exchange is over, with both bodies' sizes (the response had no
    // length to read) and the gRPC status from the trailers.
    let service = r#"destination_service="echo.default.svc.cluster.local""#;
    until("the exchange is counted", || {
        waypoint.metric("istio_requests_total", &[service]) == 1.0
    })
    .await;
    let counted = [
        service,
        r#"response_code="200""#,
        r#"grpc_response_status="0""#,
    ];
    assert_eq!(waypoint.metric("istio_requests_total", &counted), 1.0);
    assert_eq!(waypoint.metric("istio_request_bytes_sum", &counted), 12.0);
    assert_eq!(waypoint.metric("istio_response_bytes_sum", &counted), 22.0);
}

#[tokio::test]
async fn request_trailers_reach_the_upstream_over_http2() {
    let port = upstream("127.0.0.1", true, |request: Request<Incoming>| async move {
        let collected = request.into_body().collect().await.unwrap();
        let checksum = collected
            .trailers()
            .and_then(|t| t.get("x-checksum"))
            .cloned()
            .unwrap_or(HeaderValue::from_static("none"));
        let mut response = Response::new(Full::new(collected.to_bytes()));
        response.headers_mut().insert("x-seen-checksum", checksum);
        response
    })
    .await;
    let waypoint = TestWaypoint::new(&[service("echo", "127.0.0.1", "http2", port)]);
    let (mut tx, body) = client_body();
    let request = post(true, "/upload").body(body).unwrap();
    let response = waypoint.send(true, request).await;
    tx.send_data(Bytes::from_static(b"payload")).await.unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("5eb63bbb"));
    tx.send_trailers(trailers).await.unwrap();
    drop(tx);
    let response = within("the response", response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-seen-checksum"], "5eb63bbb");
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "payload"
    );
}

/// The bodies an upstream read, one per try, and its answer to each.
#[derive(Clone, Default)]
struct Tries(Arc<Mutex<Vec<Bytes>>>);

impl Tries {
    fn bodies(&self) -> Vec<Bytes> {
        self.0.lock().unwrap().clone()
    }

    /// Reads the whole body; the status for the try it was.
    async fn read(
        &self,
        request: Request<Incoming>,
        status: impl Fn(usize) -> StatusCode,
    ) -> Response<Full<Bytes>> {
        let body = request.into_body().collect().await.map(|c| c.to_bytes());
        let mut tries = self.0.lock().unwrap();
        tries.push(body.unwrap_or_default());
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status(tries.len());
        response
    }

    /// An HTTP/1.1 upstream that reads every try's body whole and answers `status(try)`;
    /// the tries it saw, and its port.
    async fn upstream(status: fn(usize) -> StatusCode) -> (Tries, u16) {
        let tries = Tries::default();
        let server = tries.clone();
        let port = upstream("127.0.0.1", false, move |request| {
            let server = server.clone();
            async move { server.read(request, status).await }
        })
        .await;
        (tries, port)
    }
}

#[tokio::test]
async fn a_retried_post_sends_the_same_body_again() {
    let (tries, port) = Tries::upstream(|n| {
        if n == 1 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    })
    .await;
    // No VirtualService: Istio's default retries a 503.
    let waypoint = TestWaypoint::new(&[service("echo", "127.0.0.1", "http", port)]);
    let (mut tx, body) = client_body();
    let request = post(false, "/orders").body(body).unwrap();
    let response = waypoint.send(false, request).await;
    tx.send_data(Bytes::from_static(b"hello ")).await.unwrap();
    tx.send_data(Bytes::from_static(b"world")).await.unwrap();
    drop(tx);
    let response = within("the response", response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(tries.bodies(), ["hello world", "hello world"]);
}

#[tokio::test]
async fn a_retry_after_an_early_answer_replays_the_start_and_streams_the_rest() {
    // The first try is answered 503 after the body's first chunk; the client sends the rest
    // only then, so the retry takes the start from the replay buffer and the rest from the
    // client.
    let (first_read_tx, mut first_read) = mpsc::unbounded_channel();
    let tries = Tries::default();
    let server = tries.clone();
    let port = upstream("127.0.0.1", false, move |request: Request<Incoming>| {
        let server = server.clone();
        let first_read_tx = first_read_tx.clone();
        async move {
            if server.bodies().is_empty() {
                let mut body = request.into_body();
                let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
                server.0.lock().unwrap().push(chunk);
                let _ = first_read_tx.send(());
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return response;
            }
            server.read(request, |_| StatusCode::OK).await
        }
    })
    .await;
    let waypoint = TestWaypoint::new(&[service("echo", "127.0.0.1", "http", port)]);
    let (mut tx, body) = client_body();
    let request = post(false, "/orders").body(body).unwrap();
    let response = waypoint.send(false, request).await;
    tx.send_data(Bytes::from_static(b"hello ")).await.unwrap();
    within("the first try reads the first chunk", first_read.recv())
        .await
        .unwrap();
    tx.send_data(Bytes::from_static(b"world")).await.unwrap();
    drop(tx);
    let response = within("the response", response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(tries.bodies(), ["hello ", "hello world"]);
}

/// `len` bytes of a pattern that shows a byte out of place.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Sends `body` in 64 KiB chunks.
async fn send_all(mut tx: Sender<Bytes, io::Error>, body: Vec<u8>) {
    let body = Bytes::from(body);
    for start in (0..body.len()).step_by(64 * 1024) {
        let end = (start + 64 * 1024).min(body.len());
        if tx.send_data(body.slice(start..end)).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_body_past_the_replay_limit_is_forwarded_whole_and_not_retried() {
    let (tries, port) = Tries::upstream(|_| StatusCode::SERVICE_UNAVAILABLE).await;
    let waypoint = TestWaypoint::new(&[service("echo", "127.0.0.1", "http", port)]);
    let size = 2 * body::REPLAY_LIMIT + 1;
    let (tx, body) = client_body();
    let request = post(false, "/upload").body(body).unwrap();
    let response = waypoint.send(false, request).await;
    tokio::spawn(send_all(tx, pattern(size)));
    let response = within("the response", response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bodies = tries.bodies();
    assert_eq!(
        bodies.len(),
        1,
        "one try: the body did not fit the replay buffer"
    );
    assert!(
        bodies[0] == pattern(size),
        "the upstream got the whole body"
    );
    assert_eq!(
        waypoint.metric(
            "envoy_cluster_retry_or_shadow_abandoned_total",
            &["outbound|8000||echo.default.svc.cluster.local"]
        ),
        1.0
    );
}

/// The echo service routed to itself with a mirror to `shadow`.
fn mirrored() -> String {
    r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - route: [{destination: {host: echo}}]
    mirror: {host: shadow}
"#
    .to_owned()
}

#[tokio::test]
async fn a_mirror_gets_the_body_with_a_shadow_authority() {
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let port = upstream("127.0.0.1", false, move |request| {
        echo(request, seen_tx.clone())
    })
    .await;
    let (mirrored_tx, mut mirrored_requests) = mpsc::unbounded_channel();
    let shadow_port = upstream("127.0.0.2", false, move |request: Request<Incoming>| {
        let mirrored_tx = mirrored_tx.clone();
        async move {
            let host = request.headers()[header::HOST].clone();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let _ = mirrored_tx.send((host, body));
            Response::new(Full::new(Bytes::from_static(b"dropped by the waypoint")))
        }
    })
    .await;
    let waypoint = TestWaypoint::new(&[
        service("echo", "127.0.0.1", "http", port),
        service("shadow", "127.0.0.2", "http", shadow_port),
        mirrored(),
    ]);
    let (mut tx, body) = client_body();
    let request = post(false, "/orders").body(body).unwrap();
    let response = waypoint.send(false, request).await;
    tx.send_data(Bytes::from_static(b"hello ")).await.unwrap();
    tx.send_data(Bytes::from_static(b"mirror")).await.unwrap();
    drop(tx);
    let response = within("the response", response).await.unwrap().unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "hello mirror"
    );
    let (host, body) = within("the mirror's request", mirrored_requests.recv())
        .await
        .unwrap();
    assert_eq!(host, "echo-shadow:8000");
    assert_eq!(body, "hello mirror");
}

#[tokio::test]
async fn a_stalled_mirror_neither_slows_nor_fails_the_request() {
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let port = upstream("127.0.0.1", false, move |request| {
        echo(request, seen_tx.clone())
    })
    .await;
    // The mirror takes connections and never reads from them.
    let stalled = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let stalled_port = stalled.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = stalled.accept().await {
            held.push(tcp);
        }
    });
    let waypoint = TestWaypoint::new(&[
        service("echo", "127.0.0.1", "http", port),
        service("shadow", "127.0.0.2", "http", stalled_port),
        mirrored(),
    ]);
    // Far more than the kernel's and hyper's buffers toward the mirror hold, and the lag.
    let size = 16 * 1024 * 1024;
    let (tx, body) = client_body();
    let request = post(false, "/upload").body(body).unwrap();
    let response = waypoint.send(false, request).await;
    tokio::spawn(send_all(tx, pattern(size)));
    let response = within("the response despite the stalled mirror", response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = within("the echo", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert!(echoed == pattern(size), "the upstream got the whole body");
    until("the mirror's copy is dropped and counted", || {
        waypoint.metric(
            "envoy_cluster_retry_or_shadow_abandoned_total",
            &["outbound|8000||shadow.default.svc.cluster.local"],
        ) == 1.0
    })
    .await;
}

/// A VirtualService for `echo` whose one HTTP route has `rule` (one line of YAML, e.g.
/// `timeout: 1s`) and goes to `echo`.
fn echo_route(rule: &str) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo]
  http:
  - {rule}
    route: [{{destination: {{host: echo}}}}]
"#
    )
}

#[tokio::test]
async fn a_fault_abort_answers_before_the_body_is_sent() {
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let port = upstream("127.0.0.1", false, move |request| {
        echo(request, seen_tx.clone())
    })
    .await;
    let abort = echo_route("fault: {abort: {httpStatus: 503, percentage: {value: 100}}}");
    let waypoint = TestWaypoint::new(&[service("echo", "127.0.0.1", "http", port), abort]);
    let (mut tx, body) = client_body();
    let request = post(false, "/orders").body(body).unwrap();
    let response = waypoint.send(false, request).await;
    tx.send_data(Bytes::from_static(b"the start"))
        .await
        .unwrap();
    let response = within("the abort while the body is still open", response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(tx);
}

/// The route timeout runs to the response's end, as Envoy's does: a response whose body is
/// still coming when it passes is cut off after its headers (and counted with flag UT),
/// while one that ends in time passes whole.
#[tokio::test]
async fn the_route_timeout_cuts_off_a_response_body_still_coming() {
    for h2 in [false, true] {
        // The client speaks HTTP/1.1 or HTTP/2 to the waypoint; the upstream, behind a port
        // named `http`, HTTP/1.1.
        let port = upstream(
            "127.0.0.1",
            false,
            |request: Request<Incoming>| async move {
                let (mut tx, body) = Channel::<Bytes, io::Error>::new(1);
                if request.uri().path() == "/slow" {
                    tokio::spawn(async move {
                        let _ = tx.send_data(Bytes::from_static(b"partial")).await;
                        // The rest never comes; the sender goes with the test's runtime.
                        std::future::pending::<()>().await;
                    });
                } else {
                    tokio::spawn(async move {
                        let _ = tx.send_data(Bytes::from_static(b"whole")).await;
                    });
                }
                Response::new(body)
            },
        )
        .await;
        let waypoint = TestWaypoint::new(&[
            service("echo", "127.0.0.1", "http", port),
            echo_route("timeout: 0.3s"),
        ]);
        let fast = within("the fast response", get(&waypoint, h2, "/fast")).await;
        assert_eq!(fast.status(), StatusCode::OK, "h2 {h2}");
        let whole = fast.into_body().collect().await.map(|b| b.to_bytes());
        assert_eq!(
            whole.unwrap(),
            Bytes::from_static(b"whole"),
            "h2 {h2}: in time, whole"
        );

        let response = within("the slow response's headers", get(&waypoint, h2, "/slow")).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "h2 {h2}: the headers came in time"
        );
        let mut body = response.into_body();
        let first = within("the first chunk", body.frame()).await;
        assert_eq!(
            first.unwrap().unwrap().into_data().unwrap(),
            Bytes::from_static(b"partial")
        );
        let rest = within("the cut-off", body.collect()).await;
        assert!(
            rest.is_err(),
            "h2 {h2}: the body must end in an error, not look whole"
        );
        until("the exchange counted with UT", || {
            waypoint.metric("istio_requests_total", &[r#"response_flags="UT""#]) == 1.0
        })
        .await;
    }
}

/// A tunnel keeps what its requests looked up (route table, upstreams, policies) only for the
/// snapshot they saw: a change applies to the next request on a connection already open.
#[tokio::test]
async fn a_config_change_applies_to_the_next_request_on_an_open_connection() {
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let port = upstream("127.0.0.1", false, move |request| {
        echo(request, seen_tx.clone())
    })
    .await;
    let mut waypoint = TestWaypoint::new(&[service("echo", "127.0.0.1", "http", port)]);
    let mut client = waypoint.http1::<Empty<Bytes>>().await;
    assert_eq!(status_on(&mut client).await, StatusCode::OK);
    assert_eq!(
        status_on(&mut client).await,
        StatusCode::OK,
        "from the cache"
    );
    waypoint.upsert(&[echo_route(
        "fault: {abort: {httpStatus: 418, percentage: {value: 100}}}",
    )]);
    assert_eq!(status_on(&mut client).await, StatusCode::IM_A_TEAPOT);
    waypoint.upsert(&[r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-orders, namespace: default}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: DENY
  rules: [{to: [{operation: {paths: [/orders]}}]}]
"#
    .to_owned()]);
    assert_eq!(status_on(&mut client).await, StatusCode::FORBIDDEN);
}

/// The status of a GET for `echo:8000/orders` on an open HTTP/1.1 connection.
async fn status_on(
    client: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
) -> StatusCode {
    within("the client connection ready", client.ready())
        .await
        .unwrap();
    let request = to_echo(http::Method::GET, false, "/orders")
        .body(Empty::new())
        .unwrap();
    let response = within("a response", client.send_request(request))
        .await
        .unwrap();
    let status = response.status();
    within("the body", response.into_body().collect())
        .await
        .unwrap();
    status
}

/// A GET for `echo:8000{path}` through the waypoint, over HTTP/2 or HTTP/1.1.
async fn get(waypoint: &TestWaypoint, h2: bool, path: &str) -> Response<Incoming> {
    let request = to_echo(http::Method::GET, h2, path)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let sent = waypoint.send(h2, request).await;
    sent.await.unwrap().expect("a response")
}
