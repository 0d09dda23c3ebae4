//! HTTP/1.1 upgrades through the waypoint on the lab, for real (root): Istio's httpbin sample
//! and curl in the mesh, namespace `default` using a waypoint, and WebSocket sessions to
//! httpbin's `/websocket/echo` from the curl pod (with the e2e crate's `websocket-client`,
//! since curl has no WebSocket). A VirtualService's header edits and an AuthorizationPolicy
//! apply to the upgrade request; messages pass both ways; the waypoint counts the 101.

use anyhow::{Context as _, Result, ensure};
use mesh_e2e::{CONFIG_DEADLINE, TestLab, eventually, istio_sample, metric_sum};
use mesh_sim::{MeshOptions, Pod};
use serde_json::Value;

const WEBSOCKET_URL: &str = "ws://httpbin:8000/websocket/echo";
const HTTPBIN: &str = "httpbin.default.svc.cluster.local";

/// httpbin and curl, the mesh on, and namespace `default` using a waypoint that has counted
/// httpbin traffic.
fn httpbin_with_waypoint(tag: &str) -> TestLab {
    let mut lab = TestLab::up(
        tag,
        2,
        &[
            istio_sample("curl/curl.yaml"),
            istio_sample("httpbin/httpbin.yaml"),
        ],
    );
    lab.start_mesh(&MeshOptions::default(), "default");
    lab.use_waypoint("httpbin", |lab| {
        lab.curl("curl", &["-f", "httpbin:8000/get"]).map(drop)
    });
    lab
}

/// One WebSocket session from the curl pod: `messages` echoed both ways, then closed. The
/// client's report: the handshake's status and response headers.
fn websocket_session(lab: &TestLab, messages: usize) -> Result<Value> {
    let out = lab.exec(
        "curl",
        env!("CARGO_BIN_EXE_websocket-client"),
        &[WEBSOCKET_URL, &messages.to_string()],
    )?;
    let report: Value =
        serde_json::from_str(&out).with_context(|| format!("the client's report: {out}"))?;
    ensure!(report["echoed"] == messages, "{report}");
    Ok(report)
}

fn httpbin_pod(lab: &TestLab) -> Pod {
    lab.lab
        .state()
        .pods
        .values()
        .find(|p| p.owner.as_deref() == Some("httpbin"))
        .expect("an httpbin pod")
        .clone()
}

#[test]
fn websocket_sessions_pass_the_waypoint_with_its_rules_applied_and_counted() {
    let mut lab = httpbin_with_waypoint("wws");
    // The route for WebSockets sets a request header (httpbin's access log shows `end-user`)
    // and a response header (on the 101 the client gets).
    let route = lab.manifest(
        "httpbin-websocket-route.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - match: [{uri: {prefix: /websocket}}]
    headers:
      request: {set: {end-user: websocket-tester}}
      response: {set: {x-upgrade-route: websocket}}
    route: [{destination: {host: httpbin}}]
  - route: [{destination: {host: httpbin}}]
"#,
    );
    lab.apply(&[route]);
    // Every session that got through counts: the waypoint must have seen at least as many
    // 101s.
    let mut sessions = 0;
    let report = eventually(CONFIG_DEADLINE, || {
        let report = websocket_session(&lab, 6)?;
        sessions += 1;
        ensure!(
            report["headers"]["x-upgrade-route"] == "websocket",
            "the route's response header is not on the 101 yet: {report}"
        );
        Ok(report)
    })
    .expect("a WebSocket session through the waypoint's route");
    assert_eq!(report["status"], 101, "{report}");
    assert_eq!(report["headers"]["upgrade"], "websocket", "{report}");

    // A longer session; the server saw every message and echoed it.
    websocket_session(&lab, 40).expect("a 40-message session");
    sessions += 1;
    let httpbin = httpbin_pod(&lab);
    eventually(CONFIG_DEADLINE, || {
        let log = lab.lab.logs(&httpbin)?;
        ensure!(
            log.contains("websocket: closed after 40 messages echoed"),
            "httpbin has not logged the 40-message session's end"
        );
        let upgraded: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("\"GET /websocket/echo HTTP/1.1\" 101"))
            .collect();
        ensure!(
            upgraded.len() >= sessions,
            "httpbin logged {} upgrades for {sessions} sessions",
            upgraded.len()
        );
        ensure!(
            upgraded
                .iter()
                .rev()
                .take(2)
                .all(|l| l.contains("end-user=websocket-tester")),
            "the route's request header did not reach httpbin: {upgraded:#?}"
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"));

    // The upgraded connections were not kept for reuse: plain requests still pass.
    for _ in 0..5 {
        lab.curl("curl", &["-f", "httpbin:8000/get"])
            .expect("a GET after the sessions");
    }
    let service = format!(r#"destination_service="{HTTPBIN}""#);
    eventually(CONFIG_DEADLINE, || {
        let metrics = lab.waypoint_metrics()?;
        let switched = metric_sum(
            &metrics,
            "istio_requests_total",
            &[r#"reporter="waypoint""#, &service, r#"response_code="101""#],
        );
        ensure!(
            switched >= sessions as u64,
            "the waypoint counted {switched} 101s for {sessions} sessions"
        );
        Ok(())
    })
    .expect("the waypoint counts each upgrade with response code 101");

    // An AuthorizationPolicy denying the path refuses the upgrade request itself.
    let deny = lab.manifest(
        "deny-websockets.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-websockets}
spec:
  targetRefs:
  - {kind: Service, group: "", name: httpbin}
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/websocket/*"]}
"#,
    );
    lab.apply(&[deny]);
    eventually(CONFIG_DEADLINE, || {
        let refused = match websocket_session(&lab, 2) {
            Ok(report) => anyhow::bail!("the session still passes: {report}"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(refused.contains("HTTP 403"), "{refused}");
        Ok(())
    })
    .expect("the denied upgrade gets 403");
    lab.curl("curl", &["-f", "httpbin:8000/get"])
        .expect("other paths still pass");
}
