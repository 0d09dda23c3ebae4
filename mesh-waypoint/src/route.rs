//! The waypoint's routing engine: the VirtualServices of one host compiled into a
//! [`RouteTable`] that decides, for one request or connection, where it goes and what
//! happens on the way. Pure and synchronous: no I/O and no clock, randomness only through
//! the caller's [`rand::Rng`], so every decision can be tested on its own.
//!
//! Semantics follow Istio's translation to Envoy (`pilot/pkg/networking/core/route`):
//!
//! - Rules apply in the order given (the order of [`Model::virtual_services_for`], then each
//!   VirtualService's `http[]`/`tcp[]` order); the first rule with a matching block wins.
//!   Match blocks of a rule are ORed, the conditions inside one block ANDed; a rule without
//!   blocks matches everything.
//! - Regexes are RE2 full matches (anchored here). The regex crate's syntax is RE2's, except
//!   that `\d`, `\w` and `\s` are Unicode-aware here and ASCII in RE2.
//! - `gateways`: the waypoint is the `mesh` gateway. A VirtualService bound only to other
//!   gateways is skipped (and reported); a match block naming gateways applies only when it
//!   names `mesh`, and then (as in Istio) its source conditions are not checked.
//! - When no rule matches, [`RouteTable::route_http`] returns `None`: Istio answers 404
//!   (`NR`) when some rule of the table applies to the client and port
//!   ([`RouteTable::serves_http`]), and routes to the service as if there were no
//!   VirtualService otherwise. For TCP, `None` always means the default route.
//!
//! Not implemented, and reported as such where set: `delegate` (the rule is left out), `tls`
//! routes, routing on JWT claims (`@request.auth.claims…` headers: the block never
//! matches), `statPrefix`, `exponentialDelay` and `http2Error` faults (Istio ignores them
//! too), `retryRemoteLocalities`, retry conditions beyond the ones [`RetryCondition`] lists,
//! Envoy's `%VARIABLE%` substitution in header values (sent as written), edits of
//! pseudo-headers other than the authority, and forwarding settings (`timeout`, `retries`,
//! `rewrite`, `mirror`) on redirect or direct-response rules.
//!
//! Problems never panic and never pass silently: a rule that cannot compile (bad regex,
//! duration, status, header name…) is left out and listed in [`RouteTable::errors`]; a field
//! the engine does not implement is listed in [`RouteTable::unsupported`] with what happens
//! instead. Both name the object (`VirtualService ns/name`), the field and the fix.
//!
//! [`Model::virtual_services_for`]: mesh_core::config::Model::virtual_services_for

mod compile;
mod cors;
mod decision;
mod matching;
mod policy;

use std::sync::Arc;

use mesh_core::config::istio::VirtualService;

pub use cors::{Cors, CorsResponse};
pub use decision::{
    DirectResponse, Forward, HeaderEdits, HeaderOps, HttpAction, HttpDecision, HttpDestination,
    NO_EDITS, Redirect, RedirectPort, Rewrite, Target, TcpDecision, WeightedDestinations,
};
use decision::{HttpRule, TcpRule};
pub use matching::{RequestFacts, Source, TcpFacts};
pub(crate) use matching::{authority, query_param};
pub use policy::{
    AbortError, Fault, FaultAbort, FaultDelay, FaultOutcome, Mirror, Percentage, RetryCondition,
    RetryOn, RetryPolicy, UpstreamFailure,
};

/// Something about one field of one VirtualService the engine could not use as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {path}: {message}")]
pub struct Problem {
    /// `VirtualService namespace/name`.
    pub object: String,
    /// The field under `spec`, e.g. `http[0].match[1].uri.regex`.
    pub path: String,
    /// What is wrong, what the engine does about it, and how to fix it.
    pub message: String,
}

/// The compiled routing rules of one host: an immutable snapshot, built once per config
/// change and shared (`Arc`) by every request.
#[derive(Debug, Default)]
pub struct RouteTable {
    http: Vec<Arc<HttpRule>>,
    tcp: Vec<Arc<TcpRule>>,
    errors: Vec<Problem>,
    unsupported: Vec<Problem>,
}

impl RouteTable {
    /// Compiles the VirtualServices that apply to one host, in the order they apply
    /// (as [`mesh_core::config::Model::virtual_services_for`] returns them).
    pub fn compile(virtual_services: &[Arc<VirtualService>]) -> RouteTable {
        compile::compile(virtual_services)
    }

    /// The first rule matching the request, or `None` (see the module docs for what Istio
    /// does then).
    pub fn route_http(&self, facts: &RequestFacts<'_>) -> Option<HttpDecision> {
        self.http.iter().find_map(|rule| {
            rule.matching_block(facts)
                .map(|block| HttpDecision::new(rule.clone(), block))
        })
    }

    /// Whether any HTTP rule applies to this client on this port, before looking at the
    /// request itself: `true` means an unmatched request gets 404, `false` that the
    /// VirtualServices do not apply and the service's default route does.
    pub fn serves_http(&self, port: u16, source: &Source<'_>) -> bool {
        self.http.iter().any(|rule| {
            rule.matches.is_empty() || rule.matches.iter().any(|m| m.applies_to(port, source))
        })
    }

    /// The first TCP rule matching the connection; `None`: the service's default route.
    pub fn route_tcp(&self, facts: &TcpFacts<'_>) -> Option<TcpDecision> {
        self.tcp
            .iter()
            .find(|rule| rule.matches.is_empty() || rule.matches.iter().any(|m| m.matches(facts)))
            .map(|rule| TcpDecision::new(rule.clone()))
    }

    /// Rules left out because they cannot compile.
    pub fn errors(&self) -> &[Problem] {
        &self.errors
    }

    /// Fields set that the engine does not implement, with what it does instead.
    pub fn unsupported(&self) -> &[Problem] {
        &self.unsupported
    }

    pub fn http_rule_count(&self) -> usize {
        self.http.len()
    }

    pub fn tcp_rule_count(&self) -> usize {
        self.tcp.len()
    }
}

#[cfg(test)]
mod tests;
