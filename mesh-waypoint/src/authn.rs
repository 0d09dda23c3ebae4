//! RequestAuthentication at the waypoint: the JWT rules attached to the destination Service
//! (`targetRefs` kind Service) and to the waypoint itself (kind Gateway), applied to each
//! request before AuthorizationPolicy, as Envoy's `jwt_authn` filter runs before RBAC in
//! Istio's proxies, with Envoy's semantics:
//!
//! - every token the request carries, in any rule's locations (`fromHeaders` with their
//!   prefix, `fromParams`, `fromCookies`; by default `Authorization: Bearer …` and the
//!   `access_token` parameter), must be valid for a rule that looks there; one that is not
//!   refuses the request (401 with Envoy's reason; 403 for a wrong audience);
//! - a request without a token passes unauthenticated, unless a rule says
//!   `presence: REQUIRED`: then that rule's own token must be there and valid;
//! - a validated token gives the request its principal (`<iss>/<sub>`) and claims, for
//!   AuthorizationPolicy and VirtualService claim matches; it is removed from the request
//!   unless the rule forwards it; the rules' output headers are only ever set from a
//!   validated token (a client's own are removed first);
//! - CORS preflights pass unchecked (Istio's `bypass_cors_preflight`).
//!
//! Keys come from the rule's inline `jwks`, its `jwksUri`, or OpenID discovery from the
//! issuer ([`jwks`]). Verified tokens are kept (up to [`TOKEN_CACHE`] per rule, as Envoy's
//! JWT cache) until they expire or the rule's keys change, so a client that sends the same
//! token again does not pay for another signature check.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Once};
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use mesh_core::config::istio::{JwtPresence, JwtRule, RequestAuthentication};
use mesh_core::policy::{RequestAuth, claim_at};
use serde_json::{Map, Value};

pub mod jwks;

use jwks::{Fetcher, Key, RemoteKeys, parse_jwk_set};

/// Envoy's default allowance for clocks that disagree, for `exp` and `nbf`.
const CLOCK_SKEW_SECS: u64 = 60;
/// Verified tokens kept per rule (Envoy's default JWT cache size).
pub const TOKEN_CACHE: usize = 100;

/// Why a request's token was refused, in Envoy's words (the response's body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    // Ordered from the least to the most telling: when no rule validates a token, the
    // response names the most telling reason any rule found.
    /// No rule that looks where the token was found is for the token's issuer.
    UnknownIssuer,
    /// A rule says `presence: REQUIRED` and the request has no token of its issuer.
    Missing,
    BadFormat,
    /// `exp` or `nbf` is not a number.
    BadTimes,
    /// The rule's `jwksUri` (or discovery) has not been fetched.
    KeysNotFetched,
    /// The rule's inline `jwks` has no usable key.
    NoValidKeys,
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
            Rejection::BadTimes => "Jwt payload exp or nbf is not a number",
            Rejection::KeysNotFetched => "Jwks remote fetch is failed",
            Rejection::NoValidKeys => "Jwks doesn't have any valid public key",
            Rejection::UnknownKey => "Jwks doesn't have key to match kid or alg from Jwt",
            Rejection::BadSignature => "Jwt verification fails",
            Rejection::Expired => "Jwt is expired",
            Rejection::NotYetValid => "Jwt not yet valid",
            Rejection::BadAudience => "Audiences in Jwt are not allowed",
        }
    }

    /// 403 for a token of the wrong audience (the client is known but not let in), 401
    /// otherwise, as Envoy answers.
    pub fn status(self) -> StatusCode {
        match self {
            Rejection::BadAudience => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` value for a request to `realm` (its URL; Envoy cuts it at 256
    /// characters).
    pub fn challenge(self, realm: &str) -> String {
        let realm: String = realm
            .chars()
            .filter(|c| !matches!(c, '"' | '\\'))
            .take(256)
            .collect();
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
    /// Every rule's output headers: removed from each request before its tokens are read.
    output_headers: Vec<HeaderName>,
    /// What the rules ask that the waypoint does not do, for the log.
    warnings: Vec<Finding>,
}

/// Something a RequestAuthentication asks that the waypoint does not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `namespace/name` of the RequestAuthentication.
    pub policy: String,
    /// The field, e.g. `jwtRules[0].jwks`.
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

/// Reports a finding for a field under the rule being compiled (`.jwks`, …).
type Warn<'a> = dyn FnMut(&str, String) + 'a;

struct Rule {
    issuer: String,
    audiences: Vec<String>,
    keys: KeySource,
    locations: Vec<Location>,
    payload_header: Option<HeaderName>,
    forward_token: bool,
    claim_headers: Vec<(HeaderName, String)>,
    space_delimited: Vec<String>,
    required: bool,
    verified: Mutex<TokenCache>,
}

/// Where a rule's keys come from.
enum KeySource {
    Inline(Arc<[Key]>),
    /// Fetched from `jwksUri`, or found by OpenID discovery.
    Remote(Arc<RemoteKeys>),
    /// None to be had: a `jwksUri` with nothing to fetch it (`meshctl`).
    Unavailable,
}

/// Where a rule looks for its token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

/// A token a rule validated: what it says, and the output headers it sets.
struct Verified {
    auth: Arc<RequestAuth>,
    /// The payload header's value and each claim header's (`None`: the claim is absent or
    /// not a string, number or boolean, and the header is not set).
    payload: Option<HeaderValue>,
    claim_headers: Vec<Option<HeaderValue>>,
    /// Seconds since the epoch.
    exp: Option<u64>,
    nbf: Option<u64>,
}

/// A rule's verified tokens, by token.
#[derive(Default)]
struct TokenCache {
    entries: HashMap<String, CachedToken>,
    /// Bumped on each use; the least recently used entry goes when the cache is full.
    clock: u64,
}

/// A verified token, the keys that verified it, and when it was last used.
struct CachedToken {
    verified: Arc<Verified>,
    keys: Arc<[Key]>,
    used: u64,
}

impl Authenticator {
    /// Compiles the rules of `policies`, their `jwksUri` or discovered keys from `fetcher`
    /// (without one, as in `meshctl`, such rules refuse their tokens). Fields and values the
    /// waypoint cannot use are in [`Authenticator::warnings`]; a rule without usable keys
    /// stays, and refuses the tokens of its issuer.
    pub fn compile(
        policies: &[Arc<RequestAuthentication>],
        fetcher: Option<&Arc<Fetcher>>,
    ) -> Authenticator {
        install_crypto_provider();
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
        let mut seen = HashSet::new();
        compiled.output_headers = compiled
            .rules
            .iter()
            .flat_map(|r| {
                r.payload_header
                    .iter()
                    .chain(r.claim_headers.iter().map(|(h, _)| h))
            })
            .filter(|h| seen.insert((*h).clone()))
            .cloned()
            .collect();
        compiled
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn warnings(&self) -> &[Finding] {
        &self.warnings
    }

    /// Checks the request's tokens: `Ok(None)` without any, the first token's facts once
    /// every token is valid (the validated tokens' headers are then removed unless their
    /// rule forwards them, and the rules' output headers set), else why it was refused.
    pub async fn authenticate(
        &self,
        parts: &mut Parts,
    ) -> Result<Option<Arc<RequestAuth>>, Rejection> {
        for name in &self.output_headers {
            parts.headers.remove(name);
        }
        if is_cors_preflight(parts) {
            return Ok(None);
        }
        // Every token, once per place it was found.
        let mut found: Vec<(String, Location)> = Vec::new();
        for rule in &self.rules {
            for (token, location) in rule.tokens(parts) {
                if !found.contains(&(token.clone(), location.clone())) {
                    found.push((token, location));
                }
            }
        }
        let mut validated: Vec<(usize, Location, Arc<Verified>)> = Vec::new();
        for (token, location) in &found {
            let mut refused = Rejection::UnknownIssuer;
            let mut accepted = None;
            for (i, rule) in self.rules.iter().enumerate() {
                if !rule.locations.contains(location) {
                    continue;
                }
                match rule.verify(token).await {
                    Ok(verified) => {
                        accepted = Some((i, verified));
                        break;
                    }
                    Err(why) => refused = refused.max(why),
                }
            }
            let (i, verified) = accepted.ok_or(refused)?;
            validated.push((i, location.clone(), verified));
        }
        // A REQUIRED rule needs a valid token of its own.
        if self
            .rules
            .iter()
            .enumerate()
            .any(|(i, rule)| rule.required && !validated.iter().any(|(v, _, _)| *v == i))
        {
            return Err(Rejection::Missing);
        }
        for (i, location, verified) in &validated {
            self.rules[*i].apply(parts, location, verified);
        }
        Ok(validated.first().map(|(_, _, v)| v.auth.clone()))
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
            (Some(jwks), _, _) => KeySource::Inline(parse_jwk_set(jwks, warn).into()),
            (None, Some(uri), Some(fetcher)) => {
                KeySource::Remote(fetcher.source(jwks::Origin::Uri(uri.clone()), timeout))
            }
            // Istio: without either, the keys are found from the issuer (OpenID Connect
            // discovery).
            (None, None, Some(fetcher)) => {
                KeySource::Remote(fetcher.source(jwks::Origin::Discovery(issuer.clone()), timeout))
            }
            (None, _, None) => KeySource::Unavailable,
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
        Some(Rule {
            issuer,
            audiences: rule
                .audiences
                .iter()
                .map(|a| normalize_audience(a))
                .collect(),
            keys,
            locations,
            payload_header,
            forward_token: rule.forward_original_token.unwrap_or(false),
            claim_headers,
            space_delimited: rule.space_delimited_claims.clone(),
            required: rule.presence == Some(JwtPresence::Required),
            verified: Mutex::new(TokenCache::default()),
        })
    }

    /// The tokens in this rule's locations, in the rule's order.
    fn tokens(&self, parts: &Parts) -> Vec<(String, Location)> {
        let mut found = Vec::new();
        for location in &self.locations {
            let tokens: Vec<String> = match location {
                Location::Header { name, prefix } => parts
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|value| token_after(value.to_str().ok()?, prefix))
                    .collect(),
                Location::Param(name) => parts
                    .uri
                    .query()
                    .and_then(|query| crate::route::query_param(query, name))
                    .map(|value| value.into_owned())
                    .into_iter()
                    .collect(),
                Location::Cookie(name) => cookie(&parts.headers, name).into_iter().collect(),
            };
            found.extend(
                tokens
                    .into_iter()
                    .filter(|t| !t.is_empty())
                    .map(|t| (t, location.clone())),
            );
        }
        found
    }

    /// Validates `token` for this rule, as Envoy orders the checks: the form, the issuer,
    /// the times and the audience, then the key and the signature.
    async fn verify(&self, token: &str) -> Result<Arc<Verified>, Rejection> {
        let now = now();
        let current = match &self.keys {
            KeySource::Inline(keys) => Some(keys.clone()),
            KeySource::Remote(remote) => remote.current(),
            KeySource::Unavailable => None,
        };
        if let Some(cached) = self.cached(token, current.as_ref(), now) {
            return Ok(cached);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::BadFormat)?;
        let claims: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| Rejection::BadFormat)?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(Rejection::UnknownIssuer);
        }
        let time = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .filter(|t| *t >= 0.0)
                // NumericDate may have a fraction; whole seconds are enough here.
                .map(|t| Some(t as u64))
                .ok_or(Rejection::BadTimes),
        };
        let (exp, nbf) = (time("exp")?, time("nbf")?);
        check_times(exp, nbf, now)?;
        // From the payload as sent, before `RequestAuth` splits its space-delimited claims.
        let claim_headers = self
            .claim_headers
            .iter()
            .map(|(_, claim)| claim_header(&claims, claim))
            .collect();
        let auth = RequestAuth::from_claims(claims, &self.space_delimited);
        if !self.audiences.is_empty()
            && !auth
                .audiences
                .iter()
                .any(|a| self.audiences.contains(&normalize_audience(a)))
        {
            return Err(Rejection::BadAudience);
        }
        let keys = match &self.keys {
            KeySource::Inline(keys) if keys.is_empty() => return Err(Rejection::NoValidKeys),
            KeySource::Inline(keys) => keys.clone(),
            // Waits for the first fetch, when the waypoint has just started.
            KeySource::Remote(remote) => remote.keys().await.ok_or(Rejection::KeysNotFetched)?,
            KeySource::Unavailable => return Err(Rejection::KeysNotFetched),
        };
        let candidates: Vec<&Key> = keys
            .iter()
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .filter(|k| k.alg.is_none_or(|alg| alg == header.alg))
            // The algorithm must fit the key: an HMAC token never passes as an RSA or EC
            // issuer's.
            .filter(|k| k.key.family() == header.alg.family())
            .collect();
        if candidates.is_empty() {
            if let KeySource::Remote(remote) = &self.keys {
                remote.nudge();
            }
            return Err(Rejection::UnknownKey);
        }
        // The signature over `header.payload`, parsed above; the times and the audience are
        // checked already.
        let (message, signature) = token.rsplit_once('.').ok_or(Rejection::BadFormat)?;
        let signed = candidates.iter().any(|key| {
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.key, header.alg)
                .unwrap_or(false)
        });
        if !signed {
            return Err(Rejection::BadSignature);
        }
        let verified = Arc::new(Verified {
            payload: self
                .payload_header
                .as_ref()
                // The payload as the token carries it: base64url, unpadded.
                .and_then(|_| HeaderValue::from_str(token.split('.').nth(1)?).ok()),
            claim_headers,
            auth: Arc::new(auth),
            exp,
            nbf,
        });
        self.remember(token, &verified, &keys);
        Ok(verified)
    }

    /// A verified token kept from before, if it has not expired and was verified with the
    /// keys the rule has now.
    fn cached(&self, token: &str, keys: Option<&Arc<[Key]>>, now: u64) -> Option<Arc<Verified>> {
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        cache.clock += 1;
        let clock = cache.clock;
        let entry = cache.entries.get_mut(token)?;
        let times = check_times(entry.verified.exp, entry.verified.nbf, now);
        if keys.is_some_and(|k| Arc::ptr_eq(k, &entry.keys)) && times.is_ok() {
            entry.used = clock;
            return Some(entry.verified.clone());
        }
        cache.entries.remove(token);
        None
    }

    fn remember(&self, token: &str, verified: &Arc<Verified>, keys: &Arc<[Key]>) {
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if cache.entries.len() >= TOKEN_CACHE {
            let oldest = cache
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(token, _)| token.clone());
            if let Some(oldest) = oldest {
                cache.entries.remove(&oldest);
            }
        }
        let clock = cache.clock;
        cache.entries.insert(
            token.to_owned(),
            CachedToken {
                verified: verified.clone(),
                keys: keys.clone(),
                used: clock,
            },
        );
    }

    /// A validated token's effects on the request sent on: the token's header removed unless
    /// forwarded (Envoy removes it from headers only), the payload and claims copied out.
    fn apply(&self, parts: &mut Parts, location: &Location, verified: &Verified) {
        if let (false, Location::Header { name, .. }) = (self.forward_token, location) {
            parts.headers.remove(name);
        }
        if let (Some(name), Some(value)) = (&self.payload_header, &verified.payload) {
            parts.headers.insert(name.clone(), value.clone());
        }
        for ((name, _), value) in self.claim_headers.iter().zip(&verified.claim_headers) {
            if let Some(value) = value {
                parts.headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Seconds since the epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `exp` and `nbf` against `now`, with Envoy's clock skew.
fn check_times(exp: Option<u64>, nbf: Option<u64>, now: u64) -> Result<(), Rejection> {
    if exp.is_some_and(|exp| exp.saturating_add(CLOCK_SKEW_SECS) < now) {
        return Err(Rejection::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(CLOCK_SKEW_SECS)) {
        return Err(Rejection::NotYetValid);
    }
    Ok(())
}

/// An audience as Envoy compares them: without an `http://` or `https://` scheme and a
/// trailing `/`.
fn normalize_audience(audience: &str) -> String {
    let bare = audience
        .strip_prefix("https://")
        .or_else(|| audience.strip_prefix("http://"))
        .unwrap_or(audience);
    bare.strip_suffix('/').unwrap_or(bare).to_owned()
}

/// The token in a header value: the base64url run (dots included) after the first `prefix`
/// (case-sensitive, as Envoy finds it).
fn token_after(value: &str, prefix: &str) -> Option<String> {
    let start = value.find(prefix)? + prefix.len();
    let token: String = value[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '='))
        .collect();
    (!token.is_empty()).then_some(token)
}

/// An output claim header's value: a string (not empty), a number or a boolean as
/// written; nested claims with `.`.
fn claim_header(claims: &Map<String, Value>, claim: &str) -> Option<HeaderValue> {
    let path: Vec<&str> = claim.split('.').collect();
    let text = match claim_at(claims, &path)? {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    HeaderValue::from_str(&text).ok()
}

/// A CORS preflight (OPTIONS with `Origin` and `Access-Control-Request-Method`): Istio
/// lets these through without a token.
fn is_cors_preflight(parts: &Parts) -> bool {
    parts.method == http::Method::OPTIONS
        && parts.headers.contains_key(header::ORIGIN)
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
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

/// jsonwebtoken picks its crypto by itself only while exactly one of its backends is
/// built in; naming aws-lc-rs keeps a dependency that enables the other from turning every
/// token check into a panic.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
    });
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
