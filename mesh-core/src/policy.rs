//! Policy for the node proxy's inbound path, with Istio's ambient (ztunnel) semantics —
//! which PeerAuthentication mode applies to a workload port ([`mtls_mode`]: may it take
//! plaintext?) and whether the AuthorizationPolicies that select a workload allow a
//! connection ([`authorize`]) — and for the waypoint, which evaluates the same policies on
//! HTTP requests ([`Connection::request`]: methods, paths, hosts, request headers, the
//! validated JWT's principal and claims). Pure
//! functions over the typed model: no I/O, no async.
//!
//! What cannot be enforced is never dropped silently: [`lint`] reports CUSTOM policies,
//! rules that need L7 attributes at L4, attributes nobody here provides (`connection.sni`)
//! and malformed values, and every [`Decision`] carries the reports of the policies it consulted.

mod matching;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::istio::{AuthorizationAction, AuthorizationPolicy, MtlsMode, MutualTls};
use crate::config::model::PeerAuthentications;
use crate::identity::Identity;

use matching::Peer;

/// The mutual-TLS mode in force on one workload port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMode {
    /// Only mutual TLS (HBONE) is accepted.
    Strict,
    /// Mutual TLS and plaintext are both accepted.
    Permissive,
    /// Written as DISABLE. Ambient mode cannot turn mutual TLS off, so it accepts both, like
    /// PERMISSIVE (Istio: "Use Layer 4 security policy", section "Peer authentication").
    Disable,
}

impl fmt::Display for PeerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerMode::Strict => "STRICT",
            PeerMode::Permissive => "PERMISSIVE",
            PeerMode::Disable => "DISABLE",
        })
    }
}

/// The effective PeerAuthentication mode of a workload port and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveMtls {
    pub mode: PeerMode,
    /// `namespace/name` of the PeerAuthentication that set the mode; `None` when no level
    /// sets one and Istio's default (PERMISSIVE) applies.
    pub decided_by: Option<String>,
    /// The mode came from the policy's `portLevelMtls` entry for this port.
    pub port_level: bool,
}

impl EffectiveMtls {
    /// Whether the port takes plaintext (non-HBONE) connections.
    pub fn accepts_plaintext(&self) -> bool {
        self.mode != PeerMode::Strict
    }
}

impl fmt::Display for EffectiveMtls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.decided_by {
            None => write!(
                f,
                "{} (default: no PeerAuthentication sets a mode)",
                self.mode
            ),
            Some(policy) if self.port_level => {
                write!(
                    f,
                    "{} (PeerAuthentication {policy}, portLevelMtls)",
                    self.mode
                )
            }
            Some(policy) => write!(f, "{} (PeerAuthentication {policy})", self.mode),
        }
    }
}

/// The mutual-TLS mode for `port` (the workload's target port), following Istio's
/// precedence: the workload policy's `portLevelMtls[port]`, then its `mtls`, then the
/// namespace policy, then the mesh (root namespace) policy. UNSET or absent inherits from
/// the next level; nothing set anywhere is PERMISSIVE.
pub fn mtls_mode(policies: &PeerAuthentications, port: u16) -> EffectiveMtls {
    // Port-level settings count only on a workload-selector policy (validation refuses them
    // elsewhere); keys are port numbers written as strings.
    if let Some(pa) = &policies.workload {
        let port_level = pa
            .spec
            .port_level_mtls
            .iter()
            .find(|(key, _)| key.parse::<u16>().ok() == Some(port))
            .and_then(|(_, mtls)| set_mode(mtls));
        if let Some(mode) = port_level {
            return EffectiveMtls {
                mode,
                decided_by: Some(key(pa.namespace(), pa.name())),
                port_level: true,
            };
        }
    }
    [&policies.workload, &policies.namespace, &policies.mesh]
        .into_iter()
        .flatten()
        .find_map(|pa| {
            let mode = pa.spec.mtls.as_ref().and_then(set_mode)?;
            Some(EffectiveMtls {
                mode,
                decided_by: Some(key(pa.namespace(), pa.name())),
                port_level: false,
            })
        })
        .unwrap_or(EffectiveMtls {
            mode: PeerMode::Permissive,
            decided_by: None,
            port_level: false,
        })
}

/// The mode a level sets, or `None` when it inherits (UNSET or absent).
fn set_mode(mtls: &MutualTls) -> Option<PeerMode> {
    match mtls.mode? {
        MtlsMode::Unset => None,
        MtlsMode::Disable => Some(PeerMode::Disable),
        MtlsMode::Permissive => Some(PeerMode::Permissive),
        MtlsMode::Strict => Some(PeerMode::Strict),
    }
}

/// An HTTP request's attributes, for policies a waypoint enforces.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    /// The `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The request's JWT, validated by a RequestAuthentication; `None` when it carried none.
    pub auth: Option<&'a RequestAuth>,
}

/// What a validated JWT says about a request, for `requestPrincipals`, the `request.auth.*`
/// conditions (Istio's "Authorization Policy Conditions") and a VirtualService's
/// `@request.auth.claims` matches.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuth {
    /// `<iss>/<sub>`, Istio's request principal; empty (no principal) when the token lacks
    /// either.
    pub principal: String,
    /// The `aud` claim, a string or a list of them.
    pub audiences: Vec<String>,
    /// The `azp` claim (the authorized presenter).
    pub presenter: Option<String>,
    /// The token's payload, its space-delimited claims split into lists of words, as Envoy
    /// normalizes the payload it hands on.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The claims every JWT rule treats as space-delimited, as Istio does.
pub const SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];

impl RequestAuth {
    /// The facts of a validated token's payload. `space_delimited` names claims (besides
    /// [`SPACE_DELIMITED_CLAIMS`]) whose string value is a space-separated list.
    pub fn from_claims(
        mut claims: serde_json::Map<String, serde_json::Value>,
        space_delimited: &[String],
    ) -> RequestAuth {
        use serde_json::Value;
        let text = |name: &str| match claims.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let principal = match (text("iss"), text("sub")) {
            (Some(iss), Some(sub)) => format!("{iss}/{sub}"),
            _ => String::new(),
        };
        let presenter = text("azp");
        let audiences = match claims.get("aud") {
            Some(Value::String(aud)) => vec![aud.clone()],
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let names = SPACE_DELIMITED_CLAIMS
            .iter()
            .copied()
            .chain(space_delimited.iter().map(String::as_str));
        for name in names {
            if let Some(Value::String(words)) = claims.get(name) {
                let list = words
                    .split_whitespace()
                    .map(|w| Value::String(w.to_owned()))
                    .collect();
                claims.insert(name.to_owned(), Value::Array(list));
            }
        }
        RequestAuth {
            principal,
            audiences,
            presenter,
            claims,
        }
    }

    /// The strings of the claim at `path` (nested claims: one name per level): the claim
    /// itself if it is a string, the strings of a list. Istio matches claims as strings, so
    /// numbers, booleans and objects give none, as does an absent claim.
    pub fn claim<S: AsRef<str>>(&self, path: &[S]) -> Vec<&str> {
        use serde_json::Value;
        match claim_at(&self.claims, path) {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

/// The claim at `path` in a JWT payload (nested claims: one name per level), if present.
pub fn claim_at<'a, S: AsRef<str>>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    path: &[S],
) -> Option<&'a serde_json::Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(claims.get(first.as_ref())?, |value, name| {
            value.get(name.as_ref())
        })
}

/// One inbound connection, as the destination node proxy sees it, or one request, as a
/// waypoint sees it.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The peer's identity from its mTLS certificate; `None` for plaintext.
    pub source_identity: Option<&'a Identity>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    /// The workload's port (the target port, not the service port).
    pub destination_port: u16,
    /// The destination workload's namespace, for log lines: no L4 attribute Istio matches on
    /// needs it.
    pub destination_namespace: Option<&'a str>,
    /// The request, at a waypoint; `None` at L4.
    pub request: Option<HttpRequest<'a>>,
}

impl fmt::Display for Connection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source_identity {
            Some(id) => write!(f, "{} ({id})", self.source_ip)?,
            None => write!(f, "{} (plaintext)", self.source_ip)?,
        }
        write!(
            f,
            " -> {}",
            std::net::SocketAddr::new(self.destination_ip, self.destination_port)
        )?;
        if let Some(ns) = self.destination_namespace {
            write!(f, " in namespace {ns}")?;
        }
        Ok(())
    }
}

/// The outcome of [`authorize`] and the reason for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No ALLOW policy applies and no DENY policy matched.
    AllowedByDefault,
    /// This ALLOW policy (`namespace/name`) matched.
    Allowed { policy: String },
    /// This DENY policy (`namespace/name`) matched.
    Denied { policy: String },
    /// ALLOW policies apply (these, `namespace/name`) and none matched: Istio's default deny.
    NotAllowed { policies: Vec<String> },
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::AllowedByDefault => {
                f.write_str("allowed: no ALLOW policy applies and no DENY policy matched")
            }
            Verdict::Allowed { policy } => write!(f, "allowed by ALLOW policy {policy}"),
            Verdict::Denied { policy } => write!(f, "denied by DENY policy {policy}"),
            Verdict::NotAllowed { policies } => write!(
                f,
                "denied: no ALLOW policy matched ({} apply)",
                policies.join(", ")
            ),
        }
    }
}

/// Something about a policy that the L4 proxy cannot enforce as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// `namespace/name` of the AuthorizationPolicy.
    pub policy: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorizationPolicy {}: {}", self.policy, self.message)
    }
}

/// A connection's authorization decision, for the proxy to act on and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// [`lint`] of every policy consulted.
    pub warnings: Vec<Warning>,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::AllowedByDefault | Verdict::Allowed { .. }
        )
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.verdict.fmt(f)
    }
}

/// Decides a connection against the AuthorizationPolicies that select the destination
/// workload ([`Model::authorization_policies_for`]), as Istio's AuthorizationPolicy reference
/// orders it: any matching DENY policy denies; else no ALLOW policy allows; else a matching
/// ALLOW policy allows; else deny. AUDIT policies do not affect the decision; CUSTOM policies
/// are not enforced and are reported in [`Decision::warnings`].
///
/// At L4 (Istio: "Use Layer 4 security policy"; the rules ztunnel applies), an ALLOW rule
/// that uses an L7 attribute never matches, and a DENY rule is enforced without its L7
/// attributes, so it denies more than written; see [`lint`].
///
/// [`Model::authorization_policies_for`]: crate::config::Model::authorization_policies_for
///
/// With a [`Connection::request`] (at a waypoint) the L7 attributes are evaluated too.
pub fn authorize(policies: &[Arc<AuthorizationPolicy>], conn: &Connection<'_>) -> Decision {
    let l7 = conn.request.is_some();
    let warnings = policies
        .iter()
        .flat_map(|p| if l7 { lint_l7(p) } else { lint(p) })
        .collect();
    let peer = Peer::new(conn);
    let by_action = |wanted: AuthorizationAction| {
        policies
            .iter()
            .filter(move |p| p.spec.action.unwrap_or(AuthorizationAction::Allow) == wanted)
    };
    let verdict = if let Some(p) =
        by_action(AuthorizationAction::Deny).find(|p| policy_matches(p, &peer))
    {
        Verdict::Denied {
            policy: key(p.namespace(), p.name()),
        }
    } else if by_action(AuthorizationAction::Allow).next().is_none() {
        Verdict::AllowedByDefault
    } else if let Some(p) = by_action(AuthorizationAction::Allow).find(|p| policy_matches(p, &peer))
    {
        Verdict::Allowed {
            policy: key(p.namespace(), p.name()),
        }
    } else {
        Verdict::NotAllowed {
            policies: by_action(AuthorizationAction::Allow)
                .map(|p| key(p.namespace(), p.name()))
                .collect(),
        }
    };
    Decision { verdict, warnings }
}

/// Any rule of an ALLOW or DENY policy matches (no rules: nothing matches; an empty rule
/// matches everything). Within a rule, `from`, `to` and `when` must all match.
fn policy_matches(policy: &AuthorizationPolicy, peer: &Peer<'_>) -> bool {
    let allow =
        policy.spec.action.unwrap_or(AuthorizationAction::Allow) == AuthorizationAction::Allow;
    policy.spec.rules.iter().any(|rule| {
        // L7 attributes at L4, as Istio documents it for ztunnel (docs page "Use Layer 4
        // security policy", and istiod's status text on such policies: "Within an ALLOW
        // policy, rules matching HTTP attributes are omitted" / "DENY policy with HTTP
        // attributes is enforced without the HTTP rules. This will be more restrictive than
        // requested."): an ALLOW rule that needs L7 never matches; the matchers below ignore
        // L7 attributes, so the L4 rest of a DENY rule decides. Where that rest is empty
        // (e.g. only `methods`) the DENY applies to every connection: fail closed. ztunnel
        // itself skips such empty match groups, making the DENY a no-op (istio/istio#61126).
        if allow && peer.request.is_none() && !matching::l7_attributes(rule).is_empty() {
            return false;
        }
        (rule.from.is_empty()
            || rule
                .from
                .iter()
                .any(|from| matching::source(from.source.as_ref(), policy.namespace(), peer)))
            && (rule.to.is_empty()
                || rule
                    .to
                    .iter()
                    .any(|to| matching::operation(to.operation.as_ref(), peer)))
            && rule.when.iter().all(|c| matching::condition(c, peer))
    })
}

/// What the L4 proxy cannot enforce as written in `policy`: a CUSTOM action, rules that need
/// L7 attributes (and what happens to them), values that parse as no IP or port. Cheap when
/// there is nothing to say; the proxy may log these once per config change.
pub fn lint(policy: &AuthorizationPolicy) -> Vec<Warning> {
    let warn = |message: String| Warning {
        policy: key(policy.namespace(), policy.name()),
        message,
    };
    let action = policy.spec.action.unwrap_or(AuthorizationAction::Allow);
    let outcome = match action {
        AuthorizationAction::Allow => "at L4 this ALLOW rule never matches",
        AuthorizationAction::Deny => {
            "at L4 this DENY rule is enforced without them, so it denies more than written"
        }
        AuthorizationAction::Audit => return Vec::new(),
        AuthorizationAction::Custom => {
            let provider = policy
                .spec
                .provider
                .as_ref()
                .and_then(|p| p.name.as_deref())
                .unwrap_or("<none>");
            return vec![warn(format!(
                "action CUSTOM (provider {provider:?}) is not supported by the node proxy; \
                 the policy is not enforced"
            ))];
        }
    };
    let mut warnings = Vec::new();
    for (i, rule) in policy.spec.rules.iter().enumerate() {
        let l7 = matching::l7_attributes(rule);
        if !l7.is_empty() {
            warnings.push(warn(format!(
                "rules[{i}] uses {}, which need L7 processing (a waypoint); {outcome}",
                l7.join(", ")
            )));
        }
        warnings.extend(
            matching::malformed(rule)
                .into_iter()
                .map(|problem| warn(format!("rules[{i}]: {problem}"))),
        );
    }
    warnings
}

/// What a waypoint cannot enforce as written in `policy`: a CUSTOM action, `when` keys
/// nothing at the waypoint provides (`connection.sni`, unknown `request.auth.*` keys; they
/// never hold), values that parse as no IP or port. JWT attributes (`requestPrincipals`,
/// `request.auth.*`) come from the RequestAuthentications that apply at the waypoint.
pub fn lint_l7(policy: &AuthorizationPolicy) -> Vec<Warning> {
    let warn = |message: String| Warning {
        policy: key(policy.namespace(), policy.name()),
        message,
    };
    if policy.spec.action == Some(AuthorizationAction::Custom) {
        return vec![warn(
            "action CUSTOM is not supported by the waypoint; the policy is not enforced".into(),
        )];
    }
    let mut warnings = Vec::new();
    for (i, rule) in policy.spec.rules.iter().enumerate() {
        let unavailable = matching::unavailable_attributes(rule);
        if !unavailable.is_empty() {
            warnings.push(warn(format!(
                "rules[{i}] uses {}, which the waypoint does not provide (request.auth keys \
                 are principal, audiences, presenter and claims[name]); they never match",
                unavailable.join(", ")
            )));
        }
        warnings.extend(
            matching::malformed(rule)
                .into_iter()
                .map(|problem| warn(format!("rules[{i}]: {problem}"))),
        );
    }
    warnings
}

/// The attributes of `rule` that read the request's validated JWT: `requestPrincipals`,
/// `notRequestPrincipals` and `request.auth.*` conditions. Without a RequestAuthentication
/// that applies, no request has them.
pub fn jwt_attributes(rule: &crate::config::istio::Rule) -> Vec<&str> {
    let mut found = Vec::new();
    for s in rule.from.iter().filter_map(|f| f.source.as_ref()) {
        for (name, values) in [
            ("requestPrincipals", &s.request_principals),
            ("notRequestPrincipals", &s.not_request_principals),
        ] {
            if !values.is_empty() && !found.contains(&name) {
                found.push(name);
            }
        }
    }
    for c in &rule.when {
        if c.key.starts_with("request.auth.") && !found.contains(&c.key.as_str()) {
            found.push(c.key.as_str());
        }
    }
    found
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}
