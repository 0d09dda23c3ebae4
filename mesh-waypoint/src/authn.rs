//! RequestAuthentication at the waypoint: the JWT rules attached to the destination Service
//! (`targetRefs` kind Service) and to the waypoint itself (kind Gateway), applied to each
//! request before AuthorizationPolicy, as Envoy's `jwt_authn` filter runs before RBAC in
//! Istio's proxies.
//!
//! Istio's semantics: a request without a token passes unauthenticated (unless a rule says
//! `presence: REQUIRED`), one with a token that no rule validates is refused with 401 and
//! Envoy's reason, and a validated token gives the request its principal (`<iss>/<sub>`) and
//! claims for AuthorizationPolicy's `requestPrincipals` and `request.auth.*` conditions.
//! Tokens are looked for where the rule says (`fromHeaders`, `fromParams`, `fromCookies`;
//! by default `Authorization: Bearer …` and the `access_token` query parameter). Keys come
//! from the rule's inline `jwks` or are fetched from its `jwksUri` ([`jwks`]); while an
//! issuer's keys cannot be had, its tokens are refused (fail closed, as istiod makes Envoy do
//! when it cannot fetch them).

use std::collections::HashSet;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mesh_core::config::istio::{JwtPresence, JwtRule, RequestAuthentication};
use mesh_core::policy::{RequestAuth, SPACE_DELIMITED_CLAIMS};
use serde_json::{Map, Value};

pub mod jwks;

use jwks::{Fetcher, RemoteKeys};

/// Envoy's default allowance for clocks that disagree, for `exp` and `nbf`.
const CLOCK_SKEW_SECS: u64 = 60;

/// Why a request's token was refused, in Envoy's words (the 401's body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    // Ordered from the least to the most telling: when no rule validates a token, the
    // response names the most telling reason any rule found.
    /// No rule is for the token's issuer.
    UnknownIssuer,
    /// A rule says `presence: REQUIRED` and the request has no token.
    Missing,
    BadFormat,
    /// The rule's keys are not at hand (`jwksUri`, or an inline `jwks` with no usable key).
    NoKeys,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    BadAudience,
}

impl Rejection {
    pub fn message(self) -> &'static str {
        match self {
            Rejection::UnknownIssuer => "Jwt issuer is not configured",
            Rejection::Missing => "Jwt is missing",
            Rejection::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Rejection::NoKeys => "Jwks remote fetch is failed",
            Rejection::UnknownKey => "Jwks doesn't have key to match kid or alg from Jwt",
            Rejection::BadSignature => "Jwt verification fails",
            Rejection::Expired => "Jwt is expired",
            Rejection::NotYetValid => "Jwt not yet valid",
            Rejection::BadAudience => "Audiences in Jwt are not allowed",
        }
    }

    /// The `WWW-Authenticate` value of the 401 for a request to `realm` (its URL).
    pub fn challenge(self, realm: &str) -> String {
        let realm = realm.replace(['"', '\\'], "");
        match self {
            Rejection::Missing => format!("Bearer realm=\"{realm}\""),
            _ => format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
        }
    }
}

/// The JWT rules that apply to one service through this waypoint, ready to check requests.
#[derive(Default)]
pub struct Authenticator {
    rules: Vec<Rule>,
    /// What the rules ask that the waypoint does not do, for the log.
    warnings: Vec<Finding>,
}

/// Something a RequestAuthentication asks that the waypoint does not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `namespace/name` of the RequestAuthentication.
    pub policy: String,
    /// The field, e.g. `jwtRules[0].jwksUri`.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RequestAuthentication {}: {}: {}",
            self.policy, self.path, self.message
        )
    }
}

/// Reports a finding for a field under the rule being compiled (`.jwksUri`, `.jwks`, …).
type Warn<'a> = dyn FnMut(&str, String) + 'a;

struct Rule {
    issuer: String,
    audiences: Vec<String>,
    keys: Keys,
    locations: Vec<Location>,
    payload_header: Option<HeaderName>,
    forward_token: bool,
    claim_headers: Vec<(HeaderName, String)>,
    space_delimited: Vec<String>,
    required: bool,
}

/// Where a rule's keys come from.
enum Keys {
    Inline(Arc<[Key]>),
    Remote(Arc<RemoteKeys>),
    /// None to be had: no `jwks`, or a `jwksUri` with nothing to fetch it (`meshctl`).
    Unavailable,
}

/// One verification key of a JWK Set.
pub struct Key {
    kid: Option<String>,
    /// The algorithm the JWK names, if it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.key.family())
            .finish_non_exhaustive()
    }
}

/// Where a rule looks for its token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

impl Authenticator {
    /// Compiles the rules of `policies`, their `jwksUri` keys from `fetcher` (without one,
    /// as in `meshctl`, such rules refuse their tokens). Fields and values the waypoint
    /// cannot use are in [`Authenticator::warnings`]; a rule without usable keys stays, and
    /// refuses the tokens of its issuer.
    pub fn compile(
        policies: &[Arc<RequestAuthentication>],
        fetcher: Option<&Arc<Fetcher>>,
    ) -> Authenticator {
        let mut compiled = Authenticator::default();
        for policy in policies {
            let policy_key = format!("{}/{}", policy.namespace(), policy.name());
            for (i, rule) in policy.spec.jwt_rules.iter().enumerate() {
                let mut warn = |field: &str, message: String| {
                    compiled.warnings.push(Finding {
                        policy: policy_key.clone(),
                        path: format!("jwtRules[{i}]{field}"),
                        message,
                    });
                };
                if let Some(rule) = Rule::compile(rule, fetcher, &mut warn) {
                    compiled.rules.push(rule);
                }
            }
        }
        compiled
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn warnings(&self) -> &[Finding] {
        &self.warnings
    }

    /// Checks the request's token, if it has one: `Ok(None)` without a token, the validated
    /// token's facts once a rule accepts it (its header is then removed unless the rule
    /// forwards it, and the rule's output headers set), else why it was refused.
    pub async fn authenticate(&self, parts: &mut Parts) -> Result<Option<RequestAuth>, Rejection> {
        let mut refused: Option<Rejection> = None;
        let mut seen_token = false;
        for rule in &self.rules {
            let Some((token, location)) = rule.find_token(parts) else {
                continue;
            };
            seen_token = true;
            match rule.verify(&token).await {
                Ok(auth) => {
                    rule.apply(parts, &location, &token, &auth);
                    return Ok(Some(auth));
                }
                Err(why) => refused = refused.max(Some(why)),
            }
        }
        match refused {
            Some(why) => Err(why),
            None if !seen_token && self.rules.iter().any(|r| r.required) => Err(Rejection::Missing),
            None => Ok(None),
        }
    }
}

impl Rule {
    fn compile(
        rule: &JwtRule,
        fetcher: Option<&Arc<Fetcher>>,
        warn: &mut Warn<'_>,
    ) -> Option<Rule> {
        // Validation refuses a rule without an issuer; a waypoint fed anyway skips it.
        let issuer = rule.issuer.clone().filter(|i| !i.is_empty())?;
        let timeout = match rule
            .timeout
            .as_deref()
            .map(mesh_core::config::duration::parse)
        {
            None => jwks::DEFAULT_TIMEOUT,
            Some(Ok(timeout)) => timeout,
            Some(Err(error)) => {
                warn(
                    ".timeout",
                    format!("{error}; {:?} used", jwks::DEFAULT_TIMEOUT),
                );
                jwks::DEFAULT_TIMEOUT
            }
        };
        let uri = rule.jwks_uri.as_ref().or(rule.jwks_uri_legacy.as_ref());
        let keys = match (&rule.jwks, uri, fetcher) {
            (Some(jwks), _, _) => Keys::Inline(keys(jwks, warn).into()),
            (None, Some(uri), Some(fetcher)) => Keys::Remote(fetcher.source(uri, timeout)),
            _ => Keys::Unavailable,
        };
        let mut locations: Vec<Location> = Vec::new();
        for (h, from) in rule.from_headers.iter().enumerate() {
            match HeaderName::from_bytes(from.name.as_bytes()) {
                Ok(name) => locations.push(Location::Header {
                    name,
                    prefix: from.prefix.clone().unwrap_or_default(),
                }),
                Err(_) => warn(
                    &format!(".fromHeaders[{h}].name"),
                    format!("{:?} is not a header name; ignored", from.name),
                ),
            }
        }
        locations.extend(rule.from_params.iter().cloned().map(Location::Param));
        locations.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
        if rule.from_headers.is_empty()
            && rule.from_params.is_empty()
            && rule.from_cookies.is_empty()
        {
            locations = vec![
                Location::Header {
                    name: header::AUTHORIZATION,
                    prefix: "Bearer ".into(),
                },
                Location::Param("access_token".into()),
            ];
        }
        let header_name = |field: &str, name: &str, warn: &mut Warn<'_>| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| warn(field, format!("{name:?} is not a header name; ignored")))
                .ok()
        };
        let payload_header = rule
            .output_payload_to_header
            .as_deref()
            .and_then(|name| header_name(".outputPayloadToHeader", name, warn));
        let claim_headers = rule
            .output_claim_to_headers
            .iter()
            .enumerate()
            .filter_map(|(c, out)| {
                let field = format!(".outputClaimToHeaders[{c}].header");
                Some((header_name(&field, &out.header, warn)?, out.claim.clone()))
            })
            .collect();
        let mut space_delimited: Vec<String> = SPACE_DELIMITED_CLAIMS
            .iter()
            .map(|c| (*c).to_owned())
            .collect();
        space_delimited.extend(rule.space_delimited_claims.iter().cloned());
        Some(Rule {
            issuer,
            audiences: rule.audiences.clone(),
            keys,
            locations,
            payload_header,
            forward_token: rule.forward_original_token.unwrap_or(false),
            claim_headers,
            space_delimited,
            required: rule.presence == Some(JwtPresence::Required),
        })
    }

    /// The first token in this rule's locations.
    fn find_token(&self, parts: &Parts) -> Option<(String, Location)> {
        self.locations.iter().find_map(|location| {
            let token = match location {
                Location::Header { name, prefix } => {
                    parts.headers.get_all(name).iter().find_map(|value| {
                        let value = value.to_str().ok()?.trim();
                        // Auth schemes are case-insensitive (RFC 9110 11.1).
                        let head = value.get(..prefix.len())?;
                        head.eq_ignore_ascii_case(prefix)
                            .then(|| value[prefix.len()..].trim().to_owned())
                    })
                }
                Location::Param(name) => parts.uri.query().and_then(|query| {
                    query.split('&').find_map(|pair| {
                        let (key, value) = pair.split_once('=')?;
                        (key == name).then(|| value.to_owned())
                    })
                }),
                Location::Cookie(name) => cookie(&parts.headers, name),
            }?;
            (!token.is_empty()).then(|| (token, location.clone()))
        })
    }

    async fn verify(&self, token: &str) -> Result<RequestAuth, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::BadFormat)?;
        let claims: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| Rejection::BadFormat)?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        if text("iss") != Some(self.issuer.as_str()) {
            return Err(Rejection::UnknownIssuer);
        }
        let keys = match &self.keys {
            Keys::Inline(keys) => keys.clone(),
            Keys::Remote(remote) => remote.keys().await.ok_or(Rejection::NoKeys)?,
            Keys::Unavailable => return Err(Rejection::NoKeys),
        };
        if keys.is_empty() {
            return Err(Rejection::NoKeys);
        }
        let candidates: Vec<&Key> = keys
            .iter()
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .filter(|k| k.alg.is_none_or(|alg| alg == header.alg))
            .filter(|k| k.key.family() == header.alg.family())
            .collect();
        if candidates.is_empty() {
            if let Keys::Remote(remote) = &self.keys {
                remote.nudge();
            }
            return Err(Rejection::UnknownKey);
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = CLOCK_SKEW_SECS;
        validation.required_spec_claims = HashSet::new();
        validation.validate_aud = false;
        validation.validate_nbf = true;
        let mut verified = false;
        for key in candidates {
            use jsonwebtoken::errors::ErrorKind;
            match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
                Ok(_) => {
                    verified = true;
                    break;
                }
                // The signature is checked before the times.
                Err(e) if *e.kind() == ErrorKind::ExpiredSignature => {
                    return Err(Rejection::Expired);
                }
                Err(e) if *e.kind() == ErrorKind::ImmatureSignature => {
                    return Err(Rejection::NotYetValid);
                }
                Err(_) => {}
            }
        }
        if !verified {
            return Err(Rejection::BadSignature);
        }
        let audiences: Vec<String> = match claims.get("aud") {
            Some(Value::String(aud)) => vec![aud.clone()],
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        if !self.audiences.is_empty() && !audiences.iter().any(|a| self.audiences.contains(a)) {
            return Err(Rejection::BadAudience);
        }
        Ok(RequestAuth {
            principal: format!("{}/{}", self.issuer, text("sub").unwrap_or_default()),
            audiences,
            presenter: text("azp").map(str::to_owned),
            space_delimited: self.space_delimited.clone(),
            claims,
        })
    }

    /// A validated token's effects on the request sent on: the token's header removed unless
    /// forwarded (Envoy removes it from headers only), the payload and claims copied out.
    fn apply(&self, parts: &mut Parts, location: &Location, token: &str, auth: &RequestAuth) {
        if let (false, Location::Header { name, .. }) = (self.forward_token, location) {
            parts.headers.remove(name);
        }
        if let Some(name) = &self.payload_header {
            // The payload as the token carries it: base64url, unpadded.
            if let Some(value) = token
                .split('.')
                .nth(1)
                .and_then(|p| HeaderValue::from_str(p).ok())
            {
                parts.headers.insert(name.clone(), value);
            }
        }
        for (name, claim) in &self.claim_headers {
            let path: Vec<&str> = claim.split('.').collect();
            let value = path
                .split_first()
                .and_then(|(first, rest)| {
                    rest.iter()
                        .try_fold(auth.claims.get(*first)?, |v, name| v.get(name))
                })
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                })
                .and_then(|v| HeaderValue::from_str(&v).ok());
            match value {
                Some(value) => {
                    parts.headers.insert(name.clone(), value);
                }
                None => {
                    parts.headers.remove(name);
                }
            }
        }
    }
}

/// The usable keys of an inline JWK Set; the others are reported.
fn keys(jwks: &str, warn: &mut Warn<'_>) -> Vec<Key> {
    let set: JwkSet = match serde_json::from_str(jwks) {
        Ok(set) => set,
        Err(error) => {
            warn(
                ".jwks",
                format!("not a JSON Web Key Set ({error}); the rule's tokens are refused"),
            );
            return Vec::new();
        }
    };
    let mut keys = Vec::new();
    for (k, jwk) in set.keys.iter().enumerate() {
        match key(jwk) {
            Ok(key) => keys.push(key),
            Err(error) => warn(
                ".jwks",
                format!("keys[{k}] is not usable ({error}); left out"),
            ),
        }
    }
    if keys.is_empty() {
        warn(
            ".jwks",
            "no usable key; the rule's tokens are refused".into(),
        );
    }
    keys
}

fn key(jwk: &Jwk) -> Result<Key, String> {
    let alg = match jwk.common.key_algorithm {
        Some(alg) => Some(
            alg.to_string()
                .parse::<Algorithm>()
                .map_err(|_| format!("algorithm {alg} is not one for signatures"))?,
        ),
        None => None,
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.trim_matches('"').to_owned())
        })
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
