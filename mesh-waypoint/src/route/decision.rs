//! What a matched rule tells the proxy to do: the compiled rules, the [`HttpDecision`] and
//! [`TcpDecision`] handed out per request or connection, weighted destinations, header
//! edits, rewrites, redirects and direct responses.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use rand::Rng;
use regex::Regex;

use super::cors::Cors;
use super::matching::{HttpMatch, L4Match, RequestFacts, UriMatch, split_query};
use super::policy::{Fault, Mirror, RetryPolicy};

/// One compiled `http[]` rule of a VirtualService.
#[derive(Debug)]
pub(crate) struct HttpRule {
    /// `namespace/name` of the VirtualService.
    pub(crate) virtual_service: String,
    pub(crate) name: Option<String>,
    /// Empty: the rule matches every request.
    pub(crate) matches: Vec<HttpMatch>,
    pub(crate) action: HttpAction,
    pub(crate) headers: HeaderOps,
    pub(crate) fault: Option<Fault>,
    pub(crate) cors: Option<Cors>,
}

impl HttpRule {
    /// `Some(None)`: matched, no match blocks; `Some(Some(i))`: block `i` matched first.
    pub(crate) fn matching_block(&self, facts: &RequestFacts<'_>) -> Option<Option<usize>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().position(|m| m.matches(facts)).map(Some)
    }
}

/// One compiled `tcp[]` rule of a VirtualService.
#[derive(Debug)]
pub(crate) struct TcpRule {
    pub(crate) virtual_service: String,
    /// Empty: the rule matches every connection.
    pub(crate) matches: Vec<L4Match>,
    pub(crate) destinations: WeightedDestinations<Target>,
}

/// What to do with a matched request. Shares the compiled rule (`Arc`): cheap to create,
/// `'static`, and safe to hold across awaits or hand to a mirror task.
#[derive(Debug, Clone)]
pub struct HttpDecision {
    rule: Arc<HttpRule>,
    matched: Option<usize>,
}

impl HttpDecision {
    pub(crate) fn new(rule: Arc<HttpRule>, matched: Option<usize>) -> HttpDecision {
        HttpDecision { rule, matched }
    }

    fn uri_match(&self) -> Option<&UriMatch> {
        self.matched
            .and_then(|i| self.rule.matches.get(i))
            .and_then(|m| m.uri.as_ref())
    }

    /// Istio's route name: `http[].name`, with `.<match name>` when the matched block has one.
    pub fn route_name(&self) -> Option<&str> {
        self.matched
            .and_then(|i| self.rule.matches.get(i))
            .map_or(self.rule.name.as_deref(), |m| m.route_name.as_deref())
    }

    /// `namespace/name` of the VirtualService the rule comes from.
    pub fn virtual_service(&self) -> &str {
        &self.rule.virtual_service
    }

    pub fn action(&self) -> &HttpAction {
        &self.rule.action
    }

    /// The forwarding part of the action, unless the rule redirects or answers directly.
    pub fn forward(&self) -> Option<&Forward> {
        match &self.rule.action {
            HttpAction::Forward(forward) => Some(forward),
            _ => None,
        }
    }

    /// The rule's own header edits (`http[].headers`); see also [`HttpDestination::headers`].
    pub fn headers(&self) -> &HeaderOps {
        &self.rule.headers
    }

    pub fn fault(&self) -> Option<&Fault> {
        self.rule.fault.as_ref()
    }

    pub fn cors(&self) -> Option<&Cors> {
        self.rule.cors.as_ref()
    }

    /// The path and query to forward, when the rule rewrites the URI: `rewrite.uri` replaces
    /// the matched prefix (the whole path after an exact or regex match); `uriRegexRewrite`
    /// replaces every match in the path. The query string is kept.
    pub fn rewrite_path(&self, path_and_query: &str) -> Option<String> {
        let rewrite = self.forward()?.rewrite.as_ref()?.uri.as_ref()?;
        let (path, query) = split_query(path_and_query);
        let new_path = match rewrite {
            UriRewrite::Prefix(prefix) => {
                let len = self
                    .uri_match()
                    .map_or(usize::from(path.starts_with('/')), |m| m.matched_len(path));
                format!("{prefix}{}", path.get(len..).unwrap_or_default())
            }
            UriRewrite::Regex { regex, replacement } => {
                regex.replace_all(path, replacement.as_str()).into_owned()
            }
        };
        Some(new_path + query)
    }

    /// The authority to send to `destination`, when the route rewrites it: `rewrite.authority`
    /// or the rule's `:authority`/`host` header edit first, then the destination's.
    pub fn authority_for<'s>(&'s self, destination: &'s HttpDestination) -> Option<&'s str> {
        self.forward()
            .and_then(|f| f.rewrite.as_ref())
            .and_then(|r| r.authority.as_deref())
            .or(self.rule.headers.authority.as_deref())
            .or(destination.headers.authority.as_deref())
    }

    /// The `Location` of a redirect rule for this request.
    pub fn redirect_location(&self, facts: &RequestFacts<'_>) -> Option<String> {
        match &self.rule.action {
            HttpAction::Redirect(redirect) => Some(redirect.location(self.uri_match(), facts)),
            _ => None,
        }
    }
}

/// What a matched connection goes to.
#[derive(Debug, Clone)]
pub struct TcpDecision {
    rule: Arc<TcpRule>,
}

impl TcpDecision {
    pub(crate) fn new(rule: Arc<TcpRule>) -> TcpDecision {
        TcpDecision { rule }
    }

    pub fn virtual_service(&self) -> &str {
        &self.rule.virtual_service
    }

    pub fn destinations(&self) -> &WeightedDestinations<Target> {
        &self.rule.destinations
    }

    /// Picks one destination by weight.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> &Target {
        self.rule.destinations.pick(rng)
    }
}

/// The action of an HTTP rule (Istio lets a rule set exactly one).
#[derive(Debug, Clone)]
pub enum HttpAction {
    Forward(Forward),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
}

/// `route`: forward to weighted destinations, with the settings that only apply then.
#[derive(Debug, Clone)]
pub struct Forward {
    pub destinations: WeightedDestinations<HttpDestination>,
    pub rewrite: Option<Rewrite>,
    /// `None`: no timeout (Istio's default).
    pub timeout: Option<Duration>,
    /// `None`: retries disabled (`attempts: 0`); absent `retries` gives Istio's default.
    pub retries: Option<RetryPolicy>,
    /// Mirrors with a zero percentage are left out.
    pub mirrors: Vec<Mirror>,
}

/// A service port, subset and host (resolved to a fully qualified name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub subset: Option<String>,
    /// `None`: the port the request or connection came in on.
    pub port: Option<u16>,
}

/// One `route[]` entry.
#[derive(Debug, Clone)]
pub struct HttpDestination {
    pub target: Target,
    /// Applied after the rule's own edits.
    pub headers: HeaderOps,
}

/// Destinations with weights, picked by weight. Never empty, total weight never zero.
#[derive(Debug, Clone)]
pub struct WeightedDestinations<T> {
    entries: Vec<(u32, T)>,
    total: u32,
}

impl<T> WeightedDestinations<T> {
    /// Istio's rules: one destination takes everything whatever its weight; of several,
    /// those with weight zero (or none) are dropped. `None` when nothing is left.
    pub(crate) fn new(entries: Vec<(u32, T)>) -> Option<WeightedDestinations<T>> {
        let entries: Vec<(u32, T)> = if entries.len() == 1 {
            entries.into_iter().map(|(_, t)| (100, t)).collect()
        } else {
            entries.into_iter().filter(|(w, _)| *w > 0).collect()
        };
        let total = entries
            .iter()
            .try_fold(0u32, |sum, (w, _)| sum.checked_add(*w))?;
        (total > 0).then_some(WeightedDestinations { entries, total })
    }

    /// Picks one entry with probability weight / total.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> &T {
        let mut ticket = if self.entries.len() > 1 {
            rng.random_range(0..self.total)
        } else {
            0
        };
        for (weight, value) in &self.entries {
            if ticket < *weight {
                return value;
            }
            ticket -= weight;
        }
        // Unreachable: tickets are below the total. The last entry keeps this total.
        &self.entries[self.entries.len() - 1].1
    }

    /// `(weight, destination)` in rule order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.entries.iter().map(|(w, t)| (*w, t))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn total_weight(&self) -> u32 {
        self.total
    }
}

/// `headers`: edits of the request (before forwarding) and of the response.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub request: HeaderEdits,
    pub response: HeaderEdits,
    /// A request `set`/`add` of `:authority` or `host`: Istio turns it into an authority
    /// rewrite instead of a header edit.
    pub authority: Option<String>,
}

/// `set`, `add` and `remove` of one direction.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    pub(crate) set: Vec<(HeaderName, HeaderValue)>,
    pub(crate) add: Vec<(HeaderName, HeaderValue)>,
    pub(crate) remove: Vec<HeaderName>,
}

/// No edits: what a request no route names gets.
pub static NO_EDITS: HeaderEdits = HeaderEdits {
    set: Vec::new(),
    add: Vec::new(),
    remove: Vec::new(),
};

impl HeaderEdits {
    /// Removes, then sets (replacing every value), then adds (appending), as Envoy does.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// `rewrite`: what changes before forwarding.
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub(crate) uri: Option<UriRewrite>,
    pub authority: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum UriRewrite {
    Prefix(String),
    /// `replacement` in the regex crate's syntax (`${1}`).
    Regex {
        regex: Regex,
        replacement: String,
    },
}

/// `redirect`: answer with a redirect instead of forwarding.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub uri: Option<String>,
    /// Replaces the matched prefix, as `rewrite.uri` does.
    pub prefix_rewrite: Option<String>,
    pub authority: Option<String>,
    pub port: RedirectPort,
    pub scheme: Option<String>,
    /// `redirectCode`, 301 unless set.
    pub status: StatusCode,
}

/// The port of a redirect's `Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectPort {
    /// The request's, unless the scheme changes and it was that scheme's default port.
    Keep,
    Explicit(u16),
    /// `derivePort: FROM_REQUEST_PORT`: the service port the request came in on.
    FromRequestPort,
    /// `derivePort: FROM_PROTOCOL_DEFAULT`: no port in the `Location`.
    FromProtocolDefault,
}

impl Redirect {
    fn location(&self, uri_match: Option<&UriMatch>, facts: &RequestFacts<'_>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(facts.scheme);
        let authority = self.authority.as_deref().unwrap_or(facts.authority);
        let (host, port) = split_port(authority);
        let default_port = |scheme: &str, port: u16| {
            (scheme == "http" && port == 80) || (scheme == "https" && port == 443)
        };
        let port = match self.port {
            RedirectPort::Explicit(p) => Some(p),
            RedirectPort::FromRequestPort => Some(facts.destination_port),
            RedirectPort::FromProtocolDefault => None,
            RedirectPort::Keep => {
                port.filter(|p| scheme == facts.scheme || !default_port(facts.scheme, *p))
            }
        };
        let host = match port {
            Some(p) if !default_port(scheme, p) => format!("{host}:{p}"),
            _ => host.to_owned(),
        };
        let (path, query) = split_query(facts.path);
        let path_and_query = match (&self.uri, &self.prefix_rewrite) {
            (Some(uri), _) if uri.contains('?') => uri.clone(),
            (Some(uri), _) => format!("{uri}{query}"),
            (None, Some(prefix)) => {
                let len =
                    uri_match.map_or(usize::from(path.starts_with('/')), |m| m.matched_len(path));
                format!("{prefix}{}{query}", path.get(len..).unwrap_or_default())
            }
            (None, None) => facts.path.to_owned(),
        };
        format!("{scheme}://{host}{path_and_query}")
    }
}

/// `host[:port]` → `(host, port)`; IPv6 literals keep their brackets.
fn split_port(authority: &str) -> (&str, Option<u16>) {
    let split = match authority.rfind(':') {
        Some(at) if !authority[at..].contains(']') => Some(at),
        _ => None,
    };
    match split {
        Some(at) => match authority[at + 1..].parse() {
            Ok(port) => (&authority[..at], Some(port)),
            Err(_) => (authority, None),
        },
        None => (authority, None),
    }
}

/// `directResponse`: answer with a status and body instead of forwarding.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Option<Bytes>,
}
