//! Match conditions: the facts of a request or a connection ([`RequestFacts`], [`TcpFacts`])
//! and the compiled `http[].match[]` and `tcp[].match[]` blocks that test them, with Istio's
//! (Envoy's) semantics: every condition of a block must hold; string matches are exact,
//! prefix or full-match regex; an empty `StringMatch` (or `regex: "*"`) tests presence only.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Method};
use mesh_core::config::labels::{Labels, NO_LABELS};
use mesh_core::config::model::selects;
use mesh_core::policy::RequestAuth;
use regex::Regex;

/// The gateway name that stands for mesh (sidecar and waypoint) traffic.
pub(crate) const MESH_GATEWAY: &str = "mesh";

/// Who sent the traffic: the source workload's namespace, labels and address, as the
/// waypoint learns them from the HBONE peer identity and the config model. Unknown fields
/// make `sourceNamespace`/`sourceLabels`/`sourceSubnet` conditions fail.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub namespace: Option<&'a str>,
    pub labels: &'a Labels,
    pub ip: Option<IpAddr>,
}

impl Default for Source<'_> {
    fn default() -> Self {
        Source {
            namespace: None,
            labels: &NO_LABELS,
            ip: None,
        }
    }
}

/// What HTTP routing looks at, borrowed from the request: nothing is copied per request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// `http` or `https`, as the client sent it (`:scheme`).
    pub scheme: &'a str,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1) as sent, port included when the client
    /// sent one: Istio matches `authority` against exactly this.
    pub authority: &'a str,
    /// The path with its query string (`/reviews/1?x=y`), as the proxy will forward it
    /// (normalize it first, as Istio's default `BASE` path normalization does).
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The service port the request was sent to (`match[].port`, redirect `derivePort`).
    pub destination_port: u16,
    pub source: Source<'a>,
    /// The request's JWT, validated by a RequestAuthentication: what `@request.auth.claims`
    /// header matches read.
    pub auth: Option<&'a RequestAuth>,
}

/// The authority a request was sent to: from the URI (HTTP/2) or the `Host` header
/// (HTTP/1.1), as sent; empty when it names none.
pub(crate) fn authority(parts: &http::request::Parts) -> &str {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or_default()
}

impl<'a> RequestFacts<'a> {
    /// The facts of a request as hyper hands it over: authority from the URI (HTTP/2) or the
    /// `Host` header (HTTP/1.1), scheme from the URI or else `http`.
    pub fn from_parts(
        parts: &'a http::request::Parts,
        destination_port: u16,
        source: Source<'a>,
    ) -> RequestFacts<'a> {
        let authority = authority(parts);
        RequestFacts {
            method: &parts.method,
            scheme: parts.uri.scheme_str().unwrap_or("http"),
            authority,
            path: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            headers: &parts.headers,
            destination_port,
            source,
            auth: None,
        }
    }

    /// The path without query string or fragment: what `uri` matches test.
    pub fn path_only(&self) -> &'a str {
        split_query(self.path).0
    }

    /// The query string without the `?`, if any.
    pub fn query(&self) -> Option<&'a str> {
        let query = split_query(self.path).1.strip_prefix('?')?;
        Some(query.split_once('#').map_or(query, |(q, _)| q))
    }

    /// A header's value; several values are joined with `,` as Envoy does. Pseudo-headers
    /// and `host` map to the request's own fields.
    fn header(&self, key: &HeaderKey) -> Option<Cow<'a, str>> {
        let name = match key {
            HeaderKey::Authority => return Some(Cow::Borrowed(self.authority)),
            HeaderKey::Method => return Some(Cow::Borrowed(self.method.as_str())),
            HeaderKey::Path => return Some(Cow::Borrowed(self.path)),
            HeaderKey::Scheme => return Some(Cow::Borrowed(self.scheme)),
            HeaderKey::Never | HeaderKey::Claim(_) => return None,
            HeaderKey::Name(name) => name,
        };
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?;
        let mut joined = String::from_utf8_lossy(first.as_bytes());
        for more in values {
            let joined = joined.to_mut();
            joined.push(',');
            joined.push_str(&String::from_utf8_lossy(more.as_bytes()));
        }
        Some(joined)
    }
}

/// `(path, "?query#fragment")`: splits at the first `?` or `#`.
pub(crate) fn split_query(path_and_query: &str) -> (&str, &str) {
    let at = path_and_query
        .find(['?', '#'])
        .unwrap_or(path_and_query.len());
    path_and_query.split_at(at)
}

/// What TCP routing looks at: the connection's original destination and its source.
#[derive(Debug, Clone, Copy)]
pub struct TcpFacts<'a> {
    pub destination_port: u16,
    /// The original destination address (`destinationSubnets`); unknown fails the condition.
    pub destination_ip: Option<IpAddr>,
    pub source: Source<'a>,
}

/// A compiled Istio `StringMatch`.
#[derive(Debug, Clone)]
pub(crate) enum StringMatcher {
    /// Empty `StringMatch` or `regex: "*"`: any value, i.e. presence.
    Any,
    Exact(String),
    Prefix(String),
    /// Anchored (RE2 full-match semantics).
    Regex(Regex),
}

impl StringMatcher {
    /// `ignore_case` folds ASCII case for exact and prefix only, as `ignoreUriCase` does.
    pub(crate) fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StringMatcher::Any => true,
            StringMatcher::Exact(exact) if ignore_case => exact.eq_ignore_ascii_case(value),
            StringMatcher::Exact(exact) => exact == value,
            StringMatcher::Prefix(prefix) => {
                value.as_bytes().get(..prefix.len()).is_some_and(|head| {
                    if ignore_case {
                        head.eq_ignore_ascii_case(prefix.as_bytes())
                    } else {
                        head == prefix.as_bytes()
                    }
                })
            }
            StringMatcher::Regex(regex) => regex.is_match(value),
        }
    }
}

/// A `uri` condition.
#[derive(Debug, Clone)]
pub(crate) struct UriMatch {
    pub(crate) matcher: StringMatcher,
    pub(crate) ignore_case: bool,
}

impl UriMatch {
    /// How many bytes of `path` the match consumed, for prefix rewrites: the prefix for a
    /// prefix match, the whole path for exact and regex matches (as Envoy does).
    pub(crate) fn matched_len(&self, path: &str) -> usize {
        match &self.matcher {
            StringMatcher::Prefix(prefix) => prefix.len(),
            StringMatcher::Exact(_) | StringMatcher::Regex(_) => path.len(),
            StringMatcher::Any => usize::from(path.starts_with('/')),
        }
    }
}

/// Where a header condition reads its value.
#[derive(Debug, Clone)]
pub(crate) enum HeaderKey {
    Authority,
    Method,
    Path,
    Scheme,
    Name(HeaderName),
    /// `@request.auth.claims.a.b`: the claim `b` inside `a` of the request's validated JWT.
    Claim(Vec<String>),
    /// A name no request carries (an unknown pseudo-header): always absent.
    Never,
}

impl HeaderKey {
    pub(crate) fn parse(name: &str) -> Result<HeaderKey, String> {
        if let Some(claim) = name.strip_prefix("@request.auth.claims.") {
            let path: Vec<String> = claim.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err(format!(
                    "{name:?} names no claim; write @request.auth.claims.<name>[.<nested name>]"
                ));
            }
            return Ok(HeaderKey::Claim(path));
        }
        match name.to_ascii_lowercase().as_str() {
            ":authority" | "host" => Ok(HeaderKey::Authority),
            ":method" => Ok(HeaderKey::Method),
            ":path" => Ok(HeaderKey::Path),
            ":scheme" => Ok(HeaderKey::Scheme),
            other if other.starts_with(':') => Ok(HeaderKey::Never),
            other => HeaderName::from_bytes(other.as_bytes())
                .map(HeaderKey::Name)
                .map_err(|_| format!("{name:?} is not a valid header name")),
        }
    }
}

/// One `headers` (or, inverted, `withoutHeaders`) entry.
#[derive(Debug, Clone)]
pub(crate) struct HeaderCondition {
    pub(crate) key: HeaderKey,
    pub(crate) matcher: StringMatcher,
    /// `withoutHeaders`: matches when the header is absent or does not match. A missing
    /// header counts as empty for value matchers (Envoy's `treat_missing_header_as_empty`).
    pub(crate) invert: bool,
}

impl HeaderCondition {
    fn holds(&self, facts: &RequestFacts<'_>) -> bool {
        if let HeaderKey::Claim(path) = &self.key {
            // A list claim (space-delimited ones split) matches when one of its strings does
            // (Istio matches claims with Envoy's list matcher `one_of`); a request without a
            // JWT has no claims.
            let values = facts.auth.map(|a| a.claim(path)).unwrap_or_default();
            let any = match &self.matcher {
                StringMatcher::Any => !values.is_empty(),
                matcher => values.iter().any(|v| matcher.matches(v, false)),
            };
            return any != self.invert;
        }
        let value = facts.header(&self.key);
        match (&self.matcher, self.invert) {
            (StringMatcher::Any, invert) => value.is_some() != invert,
            (matcher, false) => value.is_some_and(|v| matcher.matches(&v, false)),
            (matcher, true) => !matcher.matches(value.as_deref().unwrap_or_default(), false),
        }
    }
}

/// `gateways`, `sourceLabels` and `sourceNamespace` of a match block.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceCondition {
    /// `Some(true)` when the block lists gateways including `mesh`, `Some(false)` when it
    /// lists only other gateways, `None` when it lists none.
    pub(crate) mesh_gateway: Option<bool>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) namespace: Option<String>,
}

impl SourceCondition {
    fn labels_and_namespace(&self, source: &Source<'_>) -> bool {
        selects(&self.labels, source.labels)
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| source.namespace == Some(ns))
    }

    /// Istio's HTTP rule: a block that names gateways applies where the gateway matches and
    /// ignores its source conditions; otherwise the source conditions decide.
    fn holds_http(&self, source: &Source<'_>) -> bool {
        match self.mesh_gateway {
            Some(mesh) => mesh,
            None => self.labels_and_namespace(source),
        }
    }

    /// Istio's TCP rule: every condition must hold.
    fn holds_tcp(&self, source: &Source<'_>) -> bool {
        self.mesh_gateway.unwrap_or(true) && self.labels_and_namespace(source)
    }
}

/// One compiled `http[].match[]` block.
#[derive(Debug, Clone, Default)]
pub(crate) struct HttpMatch {
    /// Istio's route name for this block: `<route name>.<match name>`.
    pub(crate) route_name: Option<String>,
    pub(crate) uri: Option<UriMatch>,
    pub(crate) scheme: Option<StringMatcher>,
    pub(crate) method: Option<StringMatcher>,
    pub(crate) authority: Option<StringMatcher>,
    pub(crate) headers: Vec<HeaderCondition>,
    pub(crate) query_params: Vec<(String, StringMatcher)>,
    pub(crate) port: Option<u16>,
    pub(crate) source: SourceCondition,
    /// Uses a condition the engine cannot evaluate (reported): never matches.
    pub(crate) never: bool,
}

impl HttpMatch {
    /// The conditions Istio evaluates per client and port rather than per request.
    pub(crate) fn applies_to(&self, port: u16, source: &Source<'_>) -> bool {
        self.port.is_none_or(|p| p == port) && self.source.holds_http(source)
    }

    pub(crate) fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        if self.never || !self.applies_to(facts.destination_port, &facts.source) {
            return false;
        }
        let field = |m: &Option<StringMatcher>, value: &str| {
            m.as_ref().is_none_or(|m| m.matches(value, false))
        };
        self.uri
            .as_ref()
            .is_none_or(|uri| uri.matcher.matches(facts.path_only(), uri.ignore_case))
            && field(&self.method, facts.method.as_str())
            && field(&self.authority, facts.authority)
            && field(&self.scheme, facts.scheme)
            && self.headers.iter().all(|h| h.holds(facts))
            && self.query_params.iter().all(|(name, matcher)| {
                facts
                    .query()
                    .and_then(|query| query_param(query, name))
                    .is_some_and(|value| matcher.matches(&value, false))
            })
    }
}

/// The first value of a query parameter, percent-decoded; `?key` has the value `""`.
pub(crate) fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
}

fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// One compiled `tcp[].match[]` block.
#[derive(Debug, Clone, Default)]
pub(crate) struct L4Match {
    pub(crate) port: Option<u16>,
    pub(crate) destination_subnets: Vec<Subnet>,
    pub(crate) source_subnet: Option<Subnet>,
    pub(crate) source: SourceCondition,
}

impl L4Match {
    pub(crate) fn matches(&self, facts: &TcpFacts<'_>) -> bool {
        let in_any = |subnets: &[Subnet], ip: Option<IpAddr>| {
            subnets.is_empty() || ip.is_some_and(|ip| subnets.iter().any(|s| s.contains(ip)))
        };
        self.port.is_none_or(|p| p == facts.destination_port)
            && self.source.holds_tcp(&facts.source)
            && in_any(&self.destination_subnets, facts.destination_ip)
            && in_any(self.source_subnet.as_slice(), facts.source.ip)
    }
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subnet {
    network: IpAddr,
    prefix: u8,
}

impl Subnet {
    pub(crate) fn parse(text: &str) -> Result<Subnet, String> {
        let bad = || format!("{text:?} is not an IP address or CIDR block (e.g. \"10.0.0.0/8\")");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Subnet { network, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}
