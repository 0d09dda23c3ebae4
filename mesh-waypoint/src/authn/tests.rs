//! The JWT rules on requests, as Istio documents RequestAuthentication: where tokens are
//! found, what validates them, what a refusal says, and what a valid token changes in the
//! request sent on.

use std::path::Path;

use mesh_core::config::Resource;
use mesh_core::manifest::parse_documents;
use mesh_core::policy::RequestAuth;
use serde_json::json;

use super::testing::{Signer, now_plus};
use super::*;

const ISSUER: &str = "https://issuer.example";

/// An authenticator from one RequestAuthentication whose `jwtRules` are `rules` (YAML).
fn authenticator(rules: &str) -> Authenticator {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n\
         metadata: {{name: jwt, namespace: shop}}\nspec:\n  jwtRules:\n{rules}"
    );
    let loaded = parse_documents(&yaml, Path::new("test.yaml"));
    assert!(loaded.errors.is_empty(), "{:?}\n{yaml}", loaded.errors);
    let policies: Vec<Arc<RequestAuthentication>> = loaded
        .objects
        .into_iter()
        .map(|object| match Resource::from_object(object) {
            Ok(Resource::RequestAuthentication(ra)) => ra,
            other => panic!("expected a RequestAuthentication, got {other:?}"),
        })
        .collect();
    Authenticator::compile(&policies, None)
}

/// A rule for [`ISSUER`] with `signer`'s keys inline, and `more` (YAML lines) beside them.
fn rule(signer: &Signer, more: &str) -> String {
    format!(
        "  - issuer: {ISSUER}\n    jwks: '{}'\n{more}",
        signer.jwks()
    )
}

/// [`Authenticator::authenticate`] run to its end: the rules here have their keys inline.
trait AuthenticateNow {
    fn authenticate_now(&self, parts: &mut Parts) -> Result<Option<Arc<RequestAuth>>, Rejection>;
}

impl AuthenticateNow for Authenticator {
    fn authenticate_now(&self, parts: &mut Parts) -> Result<Option<Arc<RequestAuth>>, Rejection> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(self.authenticate(parts))
    }
}

fn request(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = http::Request::builder().uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "sub": sub, "exp": now_plus(300)})
}

#[test]
fn a_valid_token_gives_the_principal_and_leaves_the_request() {
    let signer = Signer::new("k1");
    let auth = authenticator(&rule(&signer, ""));
    assert!(auth.warnings().is_empty(), "{:?}", auth.warnings());
    let token = signer.token(&json!({
        "iss": ISSUER, "sub": "alice", "aud": ["shop", "web"], "azp": "spa",
        "exp": now_plus(300), "groups": ["admins"],
    }));
    let mut parts = request("/cart", &[("authorization", &bearer(&token))]);
    let found = auth
        .authenticate_now(&mut parts)
        .unwrap()
        .expect("authenticated");
    assert_eq!(found.principal, format!("{ISSUER}/alice"));
    assert_eq!(found.audiences, ["shop", "web"]);
    assert_eq!(found.presenter.as_deref(), Some("spa"));
    assert_eq!(found.claim(&["groups"]), ["admins"]);
    // Not forwarded by default: the upstream never sees the token.
    assert!(parts.headers.get("authorization").is_none());
}

#[test]
fn forward_original_token_keeps_the_header() {
    let signer = Signer::new("k1");
    let auth = authenticator(&rule(&signer, "    forwardOriginalToken: true\n"));
    let header = bearer(&signer.token(&claims("bob")));
    let mut parts = request("/", &[("authorization", &header)]);
    assert!(auth.authenticate_now(&mut parts).unwrap().is_some());
    assert_eq!(parts.headers["authorization"], header.as_str());
}

#[test]
fn without_a_token_a_request_passes_unless_the_rule_requires_one() {
    let signer = Signer::new("k1");
    let optional = authenticator(&rule(&signer, ""));
    assert_eq!(optional.authenticate_now(&mut request("/", &[])), Ok(None));
    // Another scheme in Authorization is no bearer token.
    let mut basic = request("/", &[("authorization", "Basic dXNlcjpwYXNz")]);
    assert_eq!(optional.authenticate_now(&mut basic), Ok(None));

    let required = authenticator(&rule(&signer, "    presence: REQUIRED\n"));
    assert_eq!(
        required.authenticate_now(&mut request("/", &[])),
        Err(Rejection::Missing)
    );
}

#[test]
fn invalid_tokens_are_refused_with_envoys_reason() {
    let signer = Signer::new("k1");
    let auth = authenticator(&rule(&signer, "    audiences: [shop]\n"));
    let refused = |token: String| {
        auth.authenticate_now(&mut request("/", &[("authorization", &bearer(&token))]))
    };
    let aud = |extra: Value| {
        let mut c = json!({"iss": ISSUER, "sub": "carol", "aud": "shop"});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    assert!(refused(signer.token(&aud(json!({})))).is_ok());
    assert_eq!(
        refused(signer.token(&aud(json!({"exp": now_plus(-3600)})))),
        Err(Rejection::Expired)
    );
    // Within Envoy's 60 s of clock skew.
    assert!(refused(signer.token(&aud(json!({"exp": now_plus(-30)})))).is_ok());
    assert_eq!(
        refused(signer.token(&aud(json!({"nbf": now_plus(3600)})))),
        Err(Rejection::NotYetValid)
    );
    assert_eq!(
        refused(signer.token(&json!({"iss": ISSUER, "sub": "carol", "aud": "other"}))),
        Err(Rejection::BadAudience)
    );
    assert_eq!(
        refused(signer.token(&json!({"iss": "https://else.example", "sub": "carol"}))),
        Err(Rejection::UnknownIssuer)
    );
    // Signed by another key that claims this key's id.
    let impostor = Signer::new("k1");
    assert_eq!(
        refused(impostor.token(&aud(json!({})))),
        Err(Rejection::BadSignature)
    );
    assert_eq!(
        refused(signer.token_as("k2", &aud(json!({})))),
        Err(Rejection::UnknownKey)
    );
    assert_eq!(refused("not.a-token".into()), Err(Rejection::BadFormat));
    // A changed payload breaks the signature.
    let token = signer.token(&aud(json!({})));
    let other = signer.token(&aud(json!({"sub": "mallory"})));
    let mut pieces: Vec<&str> = token.split('.').collect();
    pieces[1] = other.split('.').nth(1).unwrap();
    assert_eq!(refused(pieces.join(".")), Err(Rejection::BadSignature));
    // An HMAC token cannot pass as the issuer's (an elliptic-curve key): the algorithm
    // must fit the key.
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &aud(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(b"guessed").unwrap(),
    )
    .unwrap();
    assert_eq!(refused(hmac), Err(Rejection::UnknownKey));
}

#[test]
fn the_rule_for_the_tokens_issuer_decides() {
    let first = Signer::new("a");
    let second = Signer::new("b");
    let rules = format!(
        "{}  - issuer: https://second.example\n    jwks: '{}'\n",
        rule(&first, ""),
        second.jwks()
    );
    let auth = authenticator(&rules);
    let token = second.token(&json!({"iss": "https://second.example", "sub": "dan"}));
    let mut parts = request("/", &[("authorization", &bearer(&token))]);
    let found = auth.authenticate_now(&mut parts).unwrap().unwrap();
    assert_eq!(found.principal, "https://second.example/dan");
    // The second issuer's token signed by the first issuer's key names the most telling
    // reason, not "issuer not configured".
    let crossed = first.token_as("b", &json!({"iss": "https://second.example", "sub": "dan"}));
    let mut parts = request("/", &[("authorization", &bearer(&crossed))]);
    assert_eq!(
        auth.authenticate_now(&mut parts),
        Err(Rejection::BadSignature)
    );
}

#[test]
fn tokens_are_found_where_the_rule_says() {
    let signer = Signer::new("k1");
    let token = signer.token(&claims("erin"));
    // By default: Authorization: Bearer, and the access_token parameter.
    let defaults = authenticator(&rule(&signer, ""));
    let by_param = format!("/?x=1&access_token={token}");
    assert!(
        defaults
            .authenticate_now(&mut request(&by_param, &[]))
            .unwrap()
            .is_some()
    );
    // The prefix is found as written, as Envoy finds it: `bearer` is another scheme.
    let lower = format!("bearer {token}");
    assert_eq!(
        defaults.authenticate_now(&mut request("/", &[("authorization", &lower)])),
        Ok(None)
    );
    // A parameter is percent-decoded.
    let encoded = format!("/?access_token={}", token.replace('.', "%2E"));
    assert!(
        defaults
            .authenticate_now(&mut request(&encoded, &[]))
            .unwrap()
            .is_some()
    );

    let custom = authenticator(&rule(
        &signer,
        "    fromHeaders: [{name: x-jwt, prefix: 'Token '}]\n    fromParams: [jwt]\n    \
         fromCookies: [session]\n",
    ));
    let in_header = format!("Token {token}");
    let mut parts = request("/", &[("x-jwt", &in_header)]);
    assert!(custom.authenticate_now(&mut parts).unwrap().is_some());
    assert!(
        parts.headers.get("x-jwt").is_none(),
        "removed once validated"
    );
    assert!(
        custom
            .authenticate_now(&mut request(&format!("/?jwt={token}"), &[]))
            .unwrap()
            .is_some()
    );
    let cookie = format!("theme=dark; session={token}");
    assert!(
        custom
            .authenticate_now(&mut request("/", &[("cookie", &cookie)]))
            .unwrap()
            .is_some()
    );
    // The defaults no longer apply once the rule names its locations.
    assert_eq!(
        custom.authenticate_now(&mut request("/", &[("authorization", &bearer(&token))])),
        Ok(None)
    );
}

#[test]
fn a_valid_token_can_copy_its_payload_and_claims_into_headers() {
    let signer = Signer::new("k1");
    let auth = authenticator(&rule(
        &signer,
        "    outputPayloadToHeader: x-jwt-payload\n    outputClaimToHeaders:\n    \
         - {header: x-user, claim: sub}\n    - {header: x-team, claim: org.team}\n    \
         - {header: x-level, claim: level}\n    - {header: x-none, claim: missing}\n",
    ));
    let token = signer.token(&json!({
        "iss": ISSUER, "sub": "frank", "org": {"team": "payments"}, "level": 3,
    }));
    let mut parts = request(
        "/",
        &[("authorization", &bearer(&token)), ("x-none", "spoofed")],
    );
    assert!(auth.authenticate_now(&mut parts).unwrap().is_some());
    assert_eq!(
        parts.headers["x-jwt-payload"],
        token.split('.').nth(1).unwrap()
    );
    assert_eq!(parts.headers["x-user"], "frank");
    assert_eq!(parts.headers["x-team"], "payments");
    assert_eq!(parts.headers["x-level"], "3");
    assert!(parts.headers.get("x-none").is_none());
}

#[test]
fn a_rule_whose_keys_cannot_be_had_refuses_its_tokens() {
    // Without a fetcher (meshctl), a jwksUri gives no keys.
    let auth = authenticator(&format!(
        "  - issuer: {ISSUER}\n    jwksUri: https://issuer.example/jwks.json\n"
    ));
    assert!(auth.warnings().is_empty(), "{:?}", auth.warnings());
    let token = Signer::new("k1").token(&claims("gina"));
    assert_eq!(
        auth.authenticate_now(&mut request("/", &[("authorization", &bearer(&token))])),
        Err(Rejection::KeysNotFetched)
    );
    assert_eq!(auth.authenticate_now(&mut request("/", &[])), Ok(None));

    let broken = authenticator(&format!(
        "  - issuer: {ISSUER}\n    jwks: '{{\"keys\": 5}}'\n    timeout: soon\n"
    ));
    let findings: Vec<String> = broken.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        broken.warnings()[0].path,
        "jwtRules[0].timeout",
        "{findings:?}"
    );
    assert!(
        findings[1].starts_with(
            "RequestAuthentication shop/jwt: jwtRules[0].jwks: not a JSON Web Key Set"
        ),
        "{findings:?}"
    );
    assert_eq!(
        broken.authenticate_now(&mut request("/", &[("authorization", &bearer(&token))])),
        Err(Rejection::NoValidKeys)
    );
}

#[test]
fn the_challenge_names_the_realm_and_the_error() {
    assert_eq!(
        Rejection::Expired.challenge("http://shop/cart"),
        "Bearer realm=\"http://shop/cart\", error=\"invalid_token\""
    );
    assert_eq!(
        Rejection::Missing.challenge("http://shop/\"x"),
        "Bearer realm=\"http://shop/x\""
    );
}

#[test]
fn every_token_in_a_request_must_be_valid() {
    // Envoy: "If a request has multiple tokens, all of them must be valid", else the
    // upstream could read the one nobody checked.
    let signer = Signer::new("k1");
    let valid = signer.token(&claims("alice"));
    let forged = Signer::new("k1").token(&claims("mallory"));
    let auth = authenticator(&rule(&signer, ""));
    let both = format!("/?access_token={forged}");
    assert_eq!(
        auth.authenticate_now(&mut request(&both, &[("authorization", &bearer(&valid))])),
        Err(Rejection::BadSignature)
    );
    let two_headers = authenticator(&rule(
        &signer,
        "    fromHeaders: [{name: x-a}, {name: x-b}]\n",
    ));
    assert_eq!(
        two_headers.authenticate_now(&mut request("/", &[("x-a", &valid), ("x-b", &forged)])),
        Err(Rejection::BadSignature)
    );
    let mut parts = request("/", &[("x-a", &valid), ("x-b", &valid)]);
    assert!(two_headers.authenticate_now(&mut parts).unwrap().is_some());
    assert!(parts.headers.get("x-a").is_none() && parts.headers.get("x-b").is_none());
}

#[test]
fn each_required_rule_needs_its_own_valid_token() {
    let user = Signer::new("user");
    let service = Signer::new("service");
    let rules = format!(
        "{}  - issuer: https://service.example\n    jwks: '{}'\n    fromHeaders: [{{name: x-service-token}}]\n",
        rule(&user, "    presence: REQUIRED\n"),
        service.jwks()
    );
    let auth = authenticator(&rules);
    let service_token = service.token(&json!({"iss": "https://service.example", "sub": "batch"}));
    let user_token = user.token(&claims("alice"));
    // Only the optional rule's token: the REQUIRED rule's is missing.
    assert_eq!(
        auth.authenticate_now(&mut request("/", &[("x-service-token", &service_token)])),
        Err(Rejection::Missing)
    );
    let both = [
        ("authorization", bearer(&user_token)),
        ("x-service-token", service_token.clone()),
    ];
    let both: Vec<(&str, &str)> = both.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let found = auth
        .authenticate_now(&mut request("/", &both))
        .unwrap()
        .unwrap();
    assert_eq!(found.principal, format!("{ISSUER}/alice"));
}

#[test]
fn output_headers_come_only_from_a_validated_token() {
    let signer = Signer::new("k1");
    let other = Signer::new("k2");
    let rules = format!(
        "{}  - issuer: https://other.example\n    jwks: '{}'\n    fromHeaders: [{{name: x-other}}]\n    outputClaimToHeaders: [{{header: x-other-user, claim: sub}}]\n",
        rule(
            &signer,
            "    outputPayloadToHeader: x-jwt-payload\n    outputClaimToHeaders: [{header: x-user, claim: sub}]\n"
        ),
        other.jwks()
    );
    let auth = authenticator(&rules);
    let spoofed = [
        ("x-user", "admin"),
        ("x-jwt-payload", "e30"),
        ("x-other-user", "root"),
    ];
    // No token: the client's own values do not reach the upstream.
    let mut parts = request("/", &spoofed);
    assert_eq!(auth.authenticate_now(&mut parts), Ok(None));
    for (name, _) in spoofed {
        assert!(parts.headers.get(name).is_none(), "{name} passed");
    }
    // The first rule's token sets its headers; the other rule's stay unset.
    let token = bearer(&signer.token(&claims("alice")));
    let mut with_token = spoofed.to_vec();
    with_token.push(("authorization", &token));
    let mut parts = request("/", &with_token);
    assert!(auth.authenticate_now(&mut parts).unwrap().is_some());
    assert_eq!(parts.headers["x-user"], "alice");
    assert!(parts.headers.get("x-other-user").is_none());
}

#[test]
fn audiences_compare_without_scheme_or_trailing_slash_and_refuse_with_403() {
    let signer = Signer::new("k1");
    let auth = authenticator(&rule(&signer, "    audiences: [api.example.com]\n"));
    let with_aud = |aud: &str| {
        let token = signer.token(&json!({"iss": ISSUER, "sub": "s", "aud": aud}));
        auth.authenticate_now(&mut request("/", &[("authorization", &bearer(&token))]))
    };
    assert!(with_aud("https://api.example.com/").unwrap().is_some());
    assert!(with_aud("api.example.com").unwrap().is_some());
    assert_eq!(
        with_aud("https://other.example.com"),
        Err(Rejection::BadAudience)
    );
    assert_eq!(Rejection::BadAudience.status(), StatusCode::FORBIDDEN);
    assert_eq!(Rejection::Expired.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn cors_preflights_pass_without_a_token() {
    let signer = Signer::new("k1");
    let auth = authenticator(&rule(&signer, "    presence: REQUIRED\n"));
    let mut preflight = request(
        "/",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
        ],
    );
    preflight.method = http::Method::OPTIONS;
    assert_eq!(auth.authenticate_now(&mut preflight), Ok(None));
    let mut plain_options = request("/", &[]);
    plain_options.method = http::Method::OPTIONS;
    assert_eq!(
        auth.authenticate_now(&mut plain_options),
        Err(Rejection::Missing)
    );
}

#[test]
fn a_verified_token_is_kept_until_it_expires_or_the_keys_change() {
    let signer = Signer::new("k1");
    let auth = authenticator(&rule(&signer, ""));
    let token = signer.token(&json!({"iss": ISSUER, "sub": "s", "exp": now_plus(600)}));
    let header = bearer(&token);
    assert!(
        auth.authenticate_now(&mut request("/", &[("authorization", &header)]))
            .unwrap()
            .is_some()
    );
    let rule = &auth.rules[0];
    let KeySource::Inline(keys) = &rule.keys else {
        panic!("inline keys")
    };
    let now = super::now();
    assert!(rule.cached(&token, Some(keys), now).is_some(), "kept");
    assert!(
        rule.cached(&token, Some(&Arc::from(Vec::new())), now)
            .is_none(),
        "other keys"
    );
    assert!(
        rule.cached(&token, Some(keys), now + 3600).is_none(),
        "expired"
    );
    // The expired entry went; the token is verified again next time.
    assert!(rule.verified.lock().unwrap().entries.is_empty());
    // The cache holds at most TOKEN_CACHE tokens.
    for i in 0..=TOKEN_CACHE {
        let token = signer.token(&json!({"iss": ISSUER, "sub": format!("user{i}")}));
        assert!(
            auth.authenticate_now(&mut request("/", &[("authorization", &bearer(&token))]))
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(rule.verified.lock().unwrap().entries.len(), TOKEN_CACHE);
}
