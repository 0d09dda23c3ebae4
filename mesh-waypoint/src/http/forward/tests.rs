use http::Method;

use std::sync::LazyLock;

use super::*;
use crate::route::HeaderEdits;
use crate::route::NO_EDITS;

static HTTPBIN: LazyLock<Target> = LazyLock::new(|| Target {
    host: "httpbin.default.svc.cluster.local".to_owned(),
    subset: None,
    port: None,
});

fn plan() -> Plan<'static> {
    Plan {
        target: &HTTPBIN,
        path: None,
        authority: None,
        request_edits: [&NO_EDITS; 2],
        response_edits: [&NO_EDITS; 2],
        timeout: None,
        retries: None,
        mirrors: Vec::new(),
        extra_response_headers: HeaderMap::new(),
    }
}

fn websocket_parts() -> http::request::Parts {
    Request::get("/websocket/echo")
        .header("host", "httpbin:8000")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("keep-alive", "timeout=5")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

#[test]
fn an_upgrade_keeps_its_upgrade_headers_to_an_http1_upstream_and_loses_other_hop_headers() {
    let parts = websocket_parts();
    let websocket = HeaderValue::from_static("websocket");
    let request = upstream_request(
        &parts,
        &plan(),
        "httpbin:8000",
        false,
        Some(&websocket),
        Outgoing::Empty,
    )
    .unwrap();
    assert_eq!(request.method(), Method::GET);
    let headers = request.headers();
    assert_eq!(headers[header::CONNECTION], "upgrade");
    assert_eq!(headers[header::UPGRADE], "websocket");
    assert_eq!(headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(headers[header::HOST], "httpbin:8000");
    assert!(!headers.contains_key("keep-alive"));
}

#[test]
fn upgrade_headers_are_dropped_without_an_upgrade_or_to_an_http2_upstream() {
    let parts = websocket_parts();
    let plain = upstream_request(
        &parts,
        &plan(),
        "httpbin:8000",
        false,
        None,
        Outgoing::Empty,
    )
    .unwrap();
    let websocket = HeaderValue::from_static("websocket");
    let h2 = upstream_request(
        &parts,
        &plan(),
        "httpbin:8000",
        true,
        Some(&websocket),
        Outgoing::Empty,
    )
    .unwrap();
    for request in [plain, h2] {
        let headers = request.headers();
        assert!(
            !headers.contains_key(header::CONNECTION) && !headers.contains_key(header::UPGRADE),
            "{headers:?}"
        );
    }
}

#[test]
fn route_header_edits_apply_to_an_upgrade_request() {
    let parts = websocket_parts();
    let edits = HeaderEdits {
        set: vec![(
            header::HeaderName::from_static("end-user"),
            HeaderValue::from_static("websocket-tester"),
        )],
        add: Vec::new(),
        remove: vec![header::HeaderName::from_static("sec-websocket-key")],
    };
    let mut plan = plan();
    plan.request_edits[1] = &edits;
    let websocket = HeaderValue::from_static("websocket");
    let request = upstream_request(
        &parts,
        &plan,
        "httpbin:8000",
        false,
        Some(&websocket),
        Outgoing::Empty,
    )
    .unwrap();
    let headers = request.headers();
    assert_eq!(headers["end-user"], "websocket-tester");
    assert!(!headers.contains_key("sec-websocket-key"));
    assert_eq!(headers[header::UPGRADE], "websocket");
}

#[test]
fn trace_headers_reach_the_upstream_unchanged_and_headers_the_connection_names_do_not() {
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let parts = Request::get("/headers")
        .header("host", "httpbin:8000")
        .header("traceparent", traceparent)
        .header("tracestate", "congo=t61rcWkgMzE")
        .header("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")
        .header("x-b3-spanid", "e457b5a2e4d86bd1")
        .header("x-b3-sampled", "1")
        .header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
        .header("x-request-id", "7d3e-42")
        .header("connection", "x-hop-secret, keep-alive")
        .header("x-hop-secret", "for the next hop only")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    for h2 in [false, true] {
        let request =
            upstream_request(&parts, &plan(), "httpbin:8000", h2, None, Outgoing::Empty).unwrap();
        let headers = request.headers();
        assert_eq!(headers["traceparent"], traceparent, "h2 {h2}");
        assert_eq!(headers["tracestate"], "congo=t61rcWkgMzE");
        assert_eq!(headers["x-b3-traceid"], "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(headers["x-b3-spanid"], "e457b5a2e4d86bd1");
        assert_eq!(headers["x-b3-sampled"], "1");
        assert_eq!(
            headers["b3"],
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
        );
        assert_eq!(headers["x-request-id"], "7d3e-42");
        assert!(!headers.contains_key("x-hop-secret"), "h2 {h2}");
        assert!(!headers.contains_key(header::CONNECTION), "h2 {h2}");
    }
}

/// Without a rewrite the request goes on with the client's path, query and Host; a rewrite
/// replaces them, and an HTTP/2 upstream gets the authority in the URI and no Host.
#[test]
fn the_path_and_host_go_on_as_sent_unless_the_route_rewrites_them() {
    let parts = Request::get("/status/418?x=1&y=2")
        .header("host", "httpbin:8000")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let as_sent = upstream_request(
        &parts,
        &plan(),
        authority(&plan(), &parts),
        false,
        None,
        Outgoing::Empty,
    )
    .unwrap();
    assert_eq!(as_sent.uri(), "/status/418?x=1&y=2");
    assert_eq!(as_sent.headers()[header::HOST], "httpbin:8000");

    let mut rewritten = plan();
    rewritten.path = Some("/anything?x=1".to_owned());
    rewritten.authority = Some("httpbin.org");
    for h2 in [false, true] {
        let request = upstream_request(
            &parts,
            &rewritten,
            authority(&rewritten, &parts),
            h2,
            None,
            Outgoing::Empty,
        )
        .unwrap();
        if h2 {
            assert_eq!(request.uri(), "http://httpbin.org/anything?x=1");
            assert!(!request.headers().contains_key(header::HOST));
        } else {
            assert_eq!(request.uri(), "/anything?x=1");
            assert_eq!(request.headers()[header::HOST], "httpbin.org");
        }
    }
}
