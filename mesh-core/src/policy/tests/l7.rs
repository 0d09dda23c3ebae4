//! Rules that need L7 attributes: at L4 (the node proxy) an ALLOW rule never matches, a DENY
//! rule is enforced on its L4 parts, and both are reported; at a waypoint (a request at
//! hand) they decide as written, JWT attributes included (from the request's validated token).

use super::*;

#[test]
fn an_allow_rule_needing_l7_never_matches_at_l4_and_is_reported() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: get-only, namespace: shop}
        spec:
          rules:
          - from:
            - source: {principals: [cluster.local/ns/default/sa/sleep]}
            to:
            - operation: {methods: [GET], paths: ['/api/*']}
          - when:
            - key: request.headers[x-debug]
              values: ['1']
        ",
    )];
    let d = authorize(&policies, &conn(Some(&sleep()), "10.0.0.9", 80));
    assert_eq!(
        d.verdict,
        Verdict::NotAllowed {
            policies: vec!["shop/get-only".into()]
        }
    );
    let warnings: Vec<String> = d.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "AuthorizationPolicy shop/get-only: rules[0] uses methods, paths, which need L7 \
             processing (a waypoint); at L4 this ALLOW rule never matches",
            "AuthorizationPolicy shop/get-only: rules[1] uses request.headers[x-debug], which \
             need L7 processing (a waypoint); at L4 this ALLOW rule never matches",
        ]
    );
}

#[test]
fn a_deny_rule_needing_l7_is_enforced_on_its_l4_parts() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: no-posts-from-batch, namespace: shop}
        spec:
          action: DENY
          rules:
          - from:
            - source: {namespaces: [batch], requestPrincipals: ['*']}
            to:
            - operation: {methods: [POST]}
        ",
    )];
    let batch = Identity::new("cluster.local", "batch", "job");
    let d = authorize(&policies, &conn(Some(&batch), "10.0.0.9", 80));
    assert_eq!(
        d.verdict,
        Verdict::Denied {
            policy: "shop/no-posts-from-batch".into()
        },
        "the namespace alone decides at L4: more restrictive than written"
    );
    assert!(
        d.warnings[0]
            .message
            .contains("this DENY rule is enforced without them")
    );
    assert!(allowed(&policies, &conn(Some(&sleep()), "10.0.0.9", 80)));
}

#[test]
fn a_deny_rule_of_only_l7_attributes_denies_every_connection() {
    // Fail closed: ztunnel would skip the empty match group and let everything through.
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: no-delete, namespace: shop}
        spec:
          action: DENY
          rules:
          - to:
            - operation: {methods: [DELETE]}
        ",
    )];
    assert_eq!(
        authorize(&policies, &conn(None, "10.0.0.9", 80)).to_string(),
        "denied by DENY policy shop/no-delete"
    );
}

#[test]
fn remote_ip_blocks_need_l7_as_in_ambient_istio() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: by-remote-ip, namespace: shop}
        spec:
          rules:
          - from:
            - source: {remoteIpBlocks: [10.0.0.0/8]}
        ",
    )];
    let d = authorize(&policies, &conn(None, "10.0.0.9", 80));
    assert!(!d.is_allowed());
    assert!(
        d.warnings[0]
            .message
            .starts_with("rules[0] uses remoteIpBlocks")
    );
}

/// A request at a waypoint from `identity`.
fn request<'a>(
    identity: Option<&'a Identity>,
    method: &'a str,
    path: &'a str,
    headers: &'a http::HeaderMap,
) -> Connection<'a> {
    Connection {
        request: Some(crate::policy::HttpRequest {
            method,
            path,
            host: "productpage:9080",
            headers,
            auth: None,
        }),
        ..conn(identity, "10.0.2.7", 9080)
    }
}

#[test]
fn at_a_waypoint_methods_paths_and_hosts_decide() {
    let viewer = policy(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-viewer, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: productpage}]
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/productpage", "/static/*"], hosts: ["productpage"]}}]
"#,
    );
    let headers = http::HeaderMap::new();
    let id = sleep();
    let policies = [viewer];
    let decide = |c: &Connection<'_>| authorize(&policies, c);
    assert!(decide(&request(Some(&id), "GET", "/productpage", &headers)).is_allowed());
    assert!(decide(&request(Some(&id), "GET", "/static/app.js", &headers)).is_allowed());
    assert!(!decide(&request(Some(&id), "DELETE", "/productpage", &headers)).is_allowed());
    assert!(!decide(&request(Some(&id), "GET", "/api/v1", &headers)).is_allowed());
    assert!(!decide(&request(None, "GET", "/productpage", &headers)).is_allowed());
    // The same policy at L4 (no request): an ALLOW rule with L7 attributes never matches.
    let at_l4 = decide(&conn(Some(&id), "10.0.2.7", 9080));
    assert!(!at_l4.is_allowed());
    assert!(
        at_l4.warnings.iter().any(|w| w.message.contains("methods")),
        "{:?}",
        at_l4.warnings
    );
    // At the waypoint nothing is reported for it.
    assert!(
        decide(&request(Some(&id), "GET", "/productpage", &headers))
            .warnings
            .is_empty()
    );
}

#[test]
fn at_a_waypoint_header_conditions_and_deny_rules_apply_as_written() {
    let deny = policy(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
  - when: [{key: "request.headers[x-debug]", values: ["on"]}]
"#,
    );
    let id = sleep();
    let plain = http::HeaderMap::new();
    let mut debug = http::HeaderMap::new();
    debug.insert("x-debug", http::HeaderValue::from_static("on"));
    let policies = [deny];
    let decide = |c: &Connection<'_>| authorize(&policies, c);
    // At L4 the DENY rule would deny everything (its L4 part is empty); at the waypoint it
    // denies only what it names.
    assert!(decide(&request(Some(&id), "GET", "/productpage", &plain)).is_allowed());
    assert!(!decide(&request(Some(&id), "GET", "/admin/users", &plain)).is_allowed());
    assert!(!decide(&request(Some(&id), "GET", "/productpage", &debug)).is_allowed());
}

/// A request at a waypoint carrying a validated JWT.
fn with_jwt<'a>(headers: &'a http::HeaderMap, auth: &'a RequestAuth) -> Connection<'a> {
    Connection {
        request: Some(crate::policy::HttpRequest {
            method: "GET",
            path: "/",
            host: "productpage:9080",
            headers,
            auth: Some(auth),
        }),
        ..conn(None, "10.0.2.7", 9080)
    }
}

fn jwt(claims: serde_json::Value) -> RequestAuth {
    RequestAuth::from_claims(claims.as_object().cloned().unwrap_or_default(), &[])
}

#[test]
fn request_principals_match_the_validated_jwt() {
    let allow = policy(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-issuer, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]
"#,
    );
    let headers = http::HeaderMap::new();
    let good = jwt(serde_json::json!({"iss": "https://issuer.example", "sub": "alice"}));
    let other = jwt(serde_json::json!({"iss": "https://other.example", "sub": "alice"}));
    let policies = [allow];
    assert!(authorize(&policies, &with_jwt(&headers, &good)).is_allowed());
    assert!(!authorize(&policies, &with_jwt(&headers, &other)).is_allowed());
    let decision = authorize(&policies, &request(Some(&sleep()), "GET", "/", &headers));
    assert!(!decision.is_allowed(), "no JWT, no request principal");
    assert!(decision.warnings.is_empty(), "{:?}", decision.warnings);
    // A token without a subject gives no principal, not `<iss>/`.
    let no_subject = jwt(serde_json::json!({"iss": "https://issuer.example"}));
    assert_eq!(no_subject.principal, "");
    assert!(!authorize(&policies, &with_jwt(&headers, &no_subject)).is_allowed());
}

#[test]
fn deny_without_request_principal_is_istios_require_jwt_pattern() {
    // Istio's documented way to require a JWT: DENY notRequestPrincipals ["*"].
    let require = policy(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ["*"]}}]
"#,
    );
    let headers = http::HeaderMap::new();
    let token = jwt(serde_json::json!({"iss": "issuer", "sub": "bob"}));
    let policies = [require];
    assert!(authorize(&policies, &with_jwt(&headers, &token)).is_allowed());
    assert!(!authorize(&policies, &request(Some(&sleep()), "GET", "/", &headers)).is_allowed());
}

#[test]
fn jwt_conditions_read_principal_audiences_presenter_and_claims() {
    let allow = policy(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: claims, namespace: shop}
spec:
  action: ALLOW
  rules:
  - when:
    - {key: "request.auth.claims[groups]", values: ["admins"]}
    - {key: "request.auth.claims[org][team]", values: ["pay*"]}
    - {key: "request.auth.claims[scope]", values: ["write"]}
    - {key: "request.auth.audiences", values: ["shop"]}
    - {key: "request.auth.presenter", notValues: ["untrusted"]}
    - {key: "request.auth.principal", values: ["issuer/*"]}
"#,
    );
    let headers = http::HeaderMap::new();
    let claims = serde_json::json!({
        "iss": "issuer", "sub": "carol", "aud": "shop", "azp": "web",
        "groups": ["users", "admins"], "org": {"team": "payments"}, "scope": "read write",
    });
    let policies = [allow];
    let decide = |claims: &serde_json::Value| {
        authorize(&policies, &with_jwt(&headers, &jwt(claims.clone()))).is_allowed()
    };
    assert!(decide(&claims));
    let changed = |key: &str, value: serde_json::Value| {
        let mut c = claims.clone();
        c[key] = value;
        c
    };
    assert!(!decide(&changed("groups", serde_json::json!(["users"]))));
    assert!(!decide(&changed(
        "org",
        serde_json::json!({"team": "search"})
    )));
    assert!(!decide(&changed("scope", serde_json::json!("read"))));
    assert!(!decide(&changed("aud", serde_json::json!("other"))));
    assert!(!decide(&changed("azp", serde_json::json!("untrusted"))));
    // A single string claim (not a list) matches as itself.
    assert!(decide(&changed("groups", serde_json::json!("admins"))));
    // Claims match as strings: a boolean or a number is no string.
    let allow_flag = policy(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: flag, namespace: shop}
spec:
  action: ALLOW
  rules: [{when: [{key: "request.auth.claims[admin]", values: ["true"]}]}]
"#,
    );
    let flag = |value: serde_json::Value| {
        let token = jwt(serde_json::json!({"iss": "issuer", "sub": "x", "admin": value}));
        authorize(
            std::slice::from_ref(&allow_flag),
            &with_jwt(&headers, &token),
        )
        .is_allowed()
    };
    assert!(flag(serde_json::json!("true")));
    assert!(!flag(serde_json::json!(true)));
}

#[test]
fn unknown_jwt_keys_and_sni_never_hold_and_are_reported() {
    let allow = policy(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: odd-keys, namespace: shop}
spec:
  action: ALLOW
  rules:
  - when: [{key: "request.auth.subject", values: ["*"]}]
  - when: [{key: "connection.sni", values: ["*"]}]
"#,
    );
    let headers = http::HeaderMap::new();
    let token = jwt(serde_json::json!({"iss": "issuer", "sub": "dave"}));
    let decision = authorize(&[allow], &with_jwt(&headers, &token));
    assert!(!decision.is_allowed());
    let messages: Vec<&str> = decision
        .warnings
        .iter()
        .map(|w| w.message.as_str())
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].starts_with("rules[0] uses request.auth.subject"));
    assert!(messages[1].starts_with("rules[1] uses connection.sni"));
}
