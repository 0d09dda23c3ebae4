//! Matching one connection (or, at a waypoint, one request) against the parts of an
//! AuthorizationPolicy rule: Istio's string patterns, IP blocks and ports, the identity
//! fields of a `Source`, the condition keys, the HTTP attributes of an `Operation`, and
//! spotting what needs L7 or does not parse.

use std::cell::OnceCell;
use std::net::IpAddr;

use crate::config::istio::{Condition, Operation, Rule, Source};
use crate::identity::Identity;

use super::{Connection, HttpRequest, RequestAuth};

/// The `when` keys ztunnel evaluates (Istio's ambient AuthorizationPolicy conversion). The
/// others in Istio's "Authorization Policy Conditions" table (`request.*`, `remote.ip`,
/// `connection.sni`, …) need a waypoint.
const L4_CONDITION_KEYS: [&str; 5] = [
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// The connection's attributes, prepared once per decision.
pub(super) struct Peer<'a> {
    identity: Option<&'a Identity>,
    /// `<trust-domain>/ns/<ns>/sa/<sa>`, the way principals are written; built on first use.
    principal: OnceCell<Option<String>>,
    source_ip: IpAddr,
    destination_ip: IpAddr,
    destination_port: u16,
    pub(super) request: Option<HttpRequest<'a>>,
}

impl<'a> Peer<'a> {
    pub(super) fn new(conn: &Connection<'a>) -> Peer<'a> {
        Peer {
            identity: conn.source_identity,
            principal: OnceCell::new(),
            // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; policies write a.b.c.d.
            source_ip: conn.source_ip.to_canonical(),
            destination_ip: conn.destination_ip.to_canonical(),
            destination_port: conn.destination_port,
            request: conn.request,
        }
    }

    fn principal(&self) -> Option<&str> {
        self.principal
            .get_or_init(|| {
                self.identity.map(|id| {
                    format!(
                        "{}/ns/{}/sa/{}",
                        id.trust_domain, id.namespace, id.service_account
                    )
                })
            })
            .as_deref()
    }

    /// An identity attribute matches `pattern`; never for a plaintext peer.
    fn identity_matches(&self, pattern: &str, attribute: fn(&Identity) -> &str) -> bool {
        self.identity
            .is_some_and(|id| string_match(pattern, attribute(id)))
    }
}

/// Istio's string match: `*` is presence (any non-empty value), `*abc` a suffix, `abc*` a
/// prefix, anything else exact.
pub(super) fn string_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        pattern == value
    }
}

/// A single IP or a CIDR block, IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IpBlock {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpBlock {
    pub(super) fn parse(text: &str) -> Option<IpBlock> {
        let (addr, prefix_len) = match text.split_once('/') {
            Some((addr, len)) => (addr.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?),
            None => {
                let addr = text.parse::<IpAddr>().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix_len <= max).then_some(IpBlock { addr, prefix_len })
    }

    /// Host bits set in the block (`10.0.0.1/24`) are ignored, as Istio does.
    pub(super) fn contains(&self, ip: IpAddr) -> bool {
        let len = u32::from(self.prefix_len);
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn ip_in(block: &str, ip: IpAddr) -> bool {
    IpBlock::parse(block).is_some_and(|b| b.contains(ip))
}

fn port_is(port: &str, wanted: u16) -> bool {
    port.parse::<u16>().ok() == Some(wanted)
}

/// A field and its negation: any positive value matches (or there are none), and no
/// negative value matches.
fn either(positive: &[String], negative: &[String], matches: impl Fn(&str) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(|v| matches(v)))
        && !negative.iter().any(|v| matches(v))
}

/// The L4 fields of a `Source` all match; one with none set matches anything, as in Istio's
/// sidecar (Envoy) generator (ztunnel never matches such an empty entry). Identity fields
/// need an authenticated peer; their `not*` forms admit plaintext, as in ztunnel.
/// `serviceAccounts` are `<ns>/<sa>`, or `<sa>` in the policy's namespace, no wildcards
/// (AuthorizationPolicy reference, `Source.serviceAccounts`); the trust domain is not
/// compared. `trustDomains` use the string patterns.
pub(super) fn source(source: Option<&Source>, policy_namespace: &str, peer: &Peer<'_>) -> bool {
    let Some(s) = source else {
        return true;
    };
    let service_account = |pattern: &str| {
        let (ns, sa) = pattern
            .split_once('/')
            .unwrap_or((policy_namespace, pattern));
        peer.identity
            .is_some_and(|id| id.namespace == ns && id.service_account == sa)
    };
    either(&s.principals, &s.not_principals, |p| {
        peer.principal().is_some_and(|id| string_match(p, id))
    }) && either(&s.namespaces, &s.not_namespaces, |p| {
        peer.identity_matches(p, |id| id.namespace.as_str())
    }) && either(
        &s.service_accounts,
        &s.not_service_accounts,
        service_account,
    ) && either(&s.trust_domains, &s.not_trust_domains, |p| {
        peer.identity_matches(p, |id| id.trust_domain.as_str())
    }) && either(&s.ip_blocks, &s.not_ip_blocks, |b| ip_in(b, peer.source_ip))
        && (peer.request.is_none() || l7_source(s, peer))
}

/// The L7 fields of a `Source` at a waypoint: `remoteIpBlocks` against the original client
/// (the address the node proxy forwarded), `requestPrincipals` against the validated JWT's
/// `<iss>/<sub>`: a request without one matches no positive pattern and is excluded by no
/// negative one (so `notRequestPrincipals: ["*"]` selects requests without a JWT).
fn l7_source(s: &Source, peer: &Peer<'_>) -> bool {
    let auth = peer.request.and_then(|r| r.auth);
    either(&s.remote_ip_blocks, &s.not_remote_ip_blocks, |b| {
        ip_in(b, peer.source_ip)
    }) && either(&s.request_principals, &s.not_request_principals, |p| {
        auth.is_some_and(|a| string_match(p, &a.principal))
    })
}

/// The fields of an `Operation` match: ports always; at a waypoint also methods (exact),
/// paths (Istio's string patterns on the path without query) and hosts (patterns,
/// case-insensitive, against the host with and without its port).
pub(super) fn operation(operation: Option<&Operation>, peer: &Peer<'_>) -> bool {
    operation.is_none_or(|op| {
        either(&op.ports, &op.not_ports, |p| {
            port_is(p, peer.destination_port)
        }) && peer.request.is_none_or(|request| {
            let host = request.host.to_ascii_lowercase();
            let bare_host = host
                .rsplit_once(':')
                .filter(|(_, port)| port.parse::<u16>().is_ok())
                .map_or(host.as_str(), |(h, _)| h);
            either(&op.methods, &op.not_methods, |m| m == request.method)
                && either(&op.paths, &op.not_paths, |p| string_match(p, request.path))
                && either(&op.hosts, &op.not_hosts, |h| {
                    let h = h.to_ascii_lowercase();
                    string_match(&h, &host) || string_match(&h, bare_host)
                })
        })
    })
}

/// A `when` condition on an L4 key matches. Other keys are not evaluated here (true):
/// ALLOW rules using them never match, DENY rules are enforced without them.
pub(super) fn condition(c: &Condition, peer: &Peer<'_>) -> bool {
    let (values, not_values) = (&c.values, &c.not_values);
    match c.key.as_str() {
        "source.ip" => either(values, not_values, |b| ip_in(b, peer.source_ip)),
        "destination.ip" => either(values, not_values, |b| ip_in(b, peer.destination_ip)),
        "destination.port" => either(values, not_values, |p| port_is(p, peer.destination_port)),
        "source.namespace" => either(values, not_values, |p| {
            peer.identity_matches(p, |id| id.namespace.as_str())
        }),
        "source.principal" => either(values, not_values, |p| {
            peer.principal().is_some_and(|id| string_match(p, id))
        }),
        // L7 keys: evaluated at a waypoint, ignored (true) at L4 as explained above.
        _ => match peer.request {
            None => true,
            Some(request) => l7_condition(c, request, peer),
        },
    }
}

/// A `when` condition on a key that needs the request.
fn l7_condition<'a>(c: &Condition, request: HttpRequest<'a>, peer: &Peer<'_>) -> bool {
    let (values, not_values) = (&c.values, &c.not_values);
    if let Some(name) = c
        .key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        let value = request
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        return either(values, not_values, |p| string_match(p, &value));
    }
    if let Some(auth_key) = JwtKey::parse(&c.key) {
        // A request without a validated JWT has none of these attributes.
        let values_of = |auth: &'a RequestAuth| -> Vec<&'a str> {
            match &auth_key {
                JwtKey::Principal => vec![auth.principal.as_str()],
                JwtKey::Audiences => auth.audiences.iter().map(String::as_str).collect(),
                JwtKey::Presenter => auth.presenter.as_deref().into_iter().collect(),
                JwtKey::Claim(path) => auth.claim(path),
            }
        };
        let found = request.auth.map(values_of).unwrap_or_default();
        return either(values, not_values, |p| {
            found.iter().any(|v| string_match(p, v))
        });
    }
    match c.key.as_str() {
        "remote.ip" => either(values, not_values, |b| ip_in(b, peer.source_ip)),
        // `connection.sni`, Envoy filter metadata and malformed `request.auth.*` keys:
        // nothing here provides them, so a condition on them never holds.
        _ => false,
    }
}

/// A `when` key on the request's validated JWT.
enum JwtKey<'a> {
    Principal,
    Audiences,
    Presenter,
    /// `request.auth.claims[a][b]`: the claim `b` inside `a`.
    Claim(Vec<&'a str>),
}

impl<'a> JwtKey<'a> {
    fn parse(key: &'a str) -> Option<JwtKey<'a>> {
        match key {
            "request.auth.principal" => Some(JwtKey::Principal),
            "request.auth.audiences" => Some(JwtKey::Audiences),
            "request.auth.presenter" => Some(JwtKey::Presenter),
            _ => {
                let inner = key
                    .strip_prefix("request.auth.claims[")?
                    .strip_suffix(']')?;
                let path: Vec<&str> = inner.split("][").collect();
                path.iter()
                    .all(|name| !name.is_empty() && !name.contains(['[', ']']))
                    .then_some(JwtKey::Claim(path))
            }
        }
    }
}

/// The `when` keys of `rule` that nothing at the waypoint provides, so they never hold:
/// `connection.sni` (the tunnel's TLS is the mesh's own) and `request.auth.*` keys that are
/// none of Istio's (`principal`, `audiences`, `presenter`, `claims[name]`).
pub(super) fn unavailable_attributes(rule: &Rule) -> Vec<&str> {
    let mut found = Vec::new();
    for c in &rule.when {
        let unknown_jwt = c.key.starts_with("request.auth.") && JwtKey::parse(&c.key).is_none();
        if (unknown_jwt || c.key == "connection.sni") && !found.contains(&c.key.as_str()) {
            found.push(c.key.as_str());
        }
    }
    found
}

/// The attributes of `rule` that need L7 (HTTP) processing, as written in the policy.
/// Istio's ambient conversion counts `remoteIpBlocks` among them (they come from
/// X-Forwarded-For or PROXY protocol), and every `when` key outside the L4 list.
pub(super) fn l7_attributes(rule: &Rule) -> Vec<&str> {
    let mut found = Vec::new();
    let mut note = |name, values: &Vec<String>| {
        if !values.is_empty() && !found.contains(&name) {
            found.push(name);
        }
    };
    for s in rule.from.iter().filter_map(|f| f.source.as_ref()) {
        note("remoteIpBlocks", &s.remote_ip_blocks);
        note("notRemoteIpBlocks", &s.not_remote_ip_blocks);
        note("requestPrincipals", &s.request_principals);
        note("notRequestPrincipals", &s.not_request_principals);
    }
    for op in rule.to.iter().filter_map(|t| t.operation.as_ref()) {
        note("hosts", &op.hosts);
        note("notHosts", &op.not_hosts);
        note("methods", &op.methods);
        note("notMethods", &op.not_methods);
        note("paths", &op.paths);
        note("notPaths", &op.not_paths);
    }
    for c in &rule.when {
        if !L4_CONDITION_KEYS.contains(&c.key.as_str()) && !found.contains(&c.key.as_str()) {
            found.push(c.key.as_str());
        }
    }
    found
}

/// What a value must parse as.
#[derive(Clone, Copy)]
enum Expect {
    IpBlock,
    Port,
}

impl Expect {
    fn accepts(self, value: &str) -> bool {
        match self {
            Expect::IpBlock => IpBlock::parse(value).is_some(),
            Expect::Port => value.parse::<u16>().is_ok(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Expect::IpBlock => "an IP address or CIDR",
            Expect::Port => "a port number",
        }
    }
}

/// Values in `rule` that parse as no IP block or port: they match nothing.
pub(super) fn malformed(rule: &Rule) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |field: &str, values: &[String], expect: Expect| {
        for v in values.iter().filter(|v| !expect.accepts(v)) {
            problems.push(format!(
                "{field} value {v:?} is not {}; it matches nothing",
                expect.describe()
            ));
        }
    };
    for s in rule.from.iter().filter_map(|f| f.source.as_ref()) {
        check("ipBlocks", &s.ip_blocks, Expect::IpBlock);
        check("notIpBlocks", &s.not_ip_blocks, Expect::IpBlock);
    }
    for op in rule.to.iter().filter_map(|t| t.operation.as_ref()) {
        check("ports", &op.ports, Expect::Port);
        check("notPorts", &op.not_ports, Expect::Port);
    }
    for c in &rule.when {
        let expect = match c.key.as_str() {
            "source.ip" | "destination.ip" => Expect::IpBlock,
            "destination.port" => Expect::Port,
            _ => continue,
        };
        check(&format!("when {} values", c.key), &c.values, expect);
        check(&format!("when {} notValues", c.key), &c.not_values, expect);
    }
    problems
}
