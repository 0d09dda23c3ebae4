//! RequestAuthentication through the waypoint, end to end in the test's process: a token is
//! checked before AuthorizationPolicy (401 before 403), the policy's `requestPrincipals`
//! and claim conditions and a VirtualService's claim match see the validated token, and the
//! upstream gets the request without the token, over HTTP/1.1 and HTTP/2.

use crate::authn::testing::{Signer, now_plus};

use super::*;

const ISSUER: &str = "https://issuer.example";

/// A RequestAuthentication for the `echo` Service with `signer`'s key inline, and an
/// AuthorizationPolicy that lets only the issuer's users in the `admins` group reach
/// `/admin`.
fn policies(signer: &Signer) -> String {
    format!(
        r#"---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  jwtRules:
  - issuer: {ISSUER}
    jwks: '{jwks}'
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admins-only, namespace: default}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*"]}}}}]
    from: [{{source: {{notRequestPrincipals: ["{ISSUER}/*"]}}}}]
  - to: [{{operation: {{paths: ["/admin*"]}}}}]
    when: [{{key: "request.auth.claims[groups]", notValues: ["admins"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [echo]
  http:
  - match:
    - uri: {{exact: /whoami}}
      headers: {{"@request.auth.claims.groups": {{exact: admins}}}}
    directResponse: {{status: 200, body: {{string: "an admin"}}}}
  - route: [{{destination: {{host: echo}}}}]
"#,
        jwks = signer.jwks()
    )
}

/// The upstream answers with the headers it got that the test looks at.
async fn headers_seen(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let seen = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let body = format!(
        "authorization={} x-user={}",
        seen("authorization"),
        seen("x-user")
    );
    Response::new(Full::new(Bytes::from(body)))
}

async fn send(
    waypoint: &TestWaypoint,
    h2: bool,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, HeaderMap, String) {
    // A client's own x-user never reaches the upstream: only a validated token sets it.
    let mut request = to_echo(http::Method::GET, h2, path).header("x-user", "spoofed");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let sent = waypoint
        .send(h2, request.body(Empty::<Bytes>::new()).unwrap())
        .await;
    let response = within("a response", sent).await.unwrap().unwrap();
    let (parts, body) = response.into_parts();
    let body = within("the body", body.collect()).await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn tokens_are_checked_before_policy_and_kept_from_the_upstream() {
    let port = upstream("127.0.0.1", false, headers_seen).await;
    let signer = Signer::new("k1");
    let waypoint = TestWaypoint::new(&[
        service("echo", "127.0.0.1", "http", port),
        policies(&signer),
    ]);
    let token = |sub: &str, groups: &[&str], exp: i64| {
        signer.token(&serde_json::json!({
            "iss": ISSUER, "sub": sub, "groups": groups, "exp": now_plus(exp),
        }))
    };
    let admin = token("alice", &["admins"], 300);
    let user = token("bob", &["users"], 300);
    let expired = token("alice", &["admins"], -3600);
    let foreign = Signer::new("k1").token(&serde_json::json!({"iss": ISSUER, "sub": "eve"}));
    for h2 in [false, true] {
        let case = format!("h2 {h2}");
        // No token: public paths pass, /admin is denied by policy.
        let (status, _, body) = send(&waypoint, h2, "/", None).await;
        assert_eq!(status, StatusCode::OK, "{case}");
        assert_eq!(body, "authorization=- x-user=-", "{case}");
        let (status, _, _) = send(&waypoint, h2, "/admin", None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{case}");
        // A valid token: the claim reaches the upstream, the token does not.
        let (status, _, body) = send(&waypoint, h2, "/admin", Some(&admin)).await;
        assert_eq!(status, StatusCode::OK, "{case}");
        assert_eq!(body, "authorization=- x-user=alice", "{case}");
        // Valid, but not in the group the policy asks for.
        let (status, _, _) = send(&waypoint, h2, "/admin", Some(&user)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{case}");
        // Routing on a claim of the validated token.
        let (_, _, body) = send(&waypoint, h2, "/whoami", Some(&admin)).await;
        assert_eq!(body, "an admin", "{case}");
        let (_, _, body) = send(&waypoint, h2, "/whoami", Some(&user)).await;
        assert_eq!(body, "authorization=- x-user=bob", "{case}");
        // Invalid tokens: 401 with the reason, on any path.
        for (token, reason) in [
            (&expired, "Jwt is expired"),
            (&foreign, "Jwt verification fails"),
        ] {
            let (status, headers, body) = send(&waypoint, h2, "/", Some(token)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {reason}");
            assert_eq!(body, reason, "{case}");
            let challenge = headers[header::WWW_AUTHENTICATE].to_str().unwrap();
            assert_eq!(
                challenge, "Bearer realm=\"http://echo:8000/\", error=\"invalid_token\"",
                "{case}"
            );
        }
    }
    until("the refusals counted with code 401", || {
        waypoint.metric("istio_requests_total", &[r#"response_code="401""#]) == 4.0
    })
    .await;
}
