//! Load balancing over an upstream's available endpoints: Istio's `loadBalancer.simple`
//! algorithms and `consistentHash` (a ring hash), with the request properties a hash can be
//! keyed on and the cookie a ring hash may ask the proxy to set.

mod ring;

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, header};
use rand::Rng;

pub use ring::{DEFAULT_MINIMUM_RING_SIZE, MAXIMUM_RING_SIZE};
pub(crate) use ring::{Ring, xxh64};

use super::endpoints::Snapshot;

/// How an upstream spreads requests over its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadBalancer {
    /// `ROUND_ROBIN`: each available endpoint in turn.
    RoundRobin,
    /// `RANDOM`: uniformly at random.
    Random,
    /// `LEAST_REQUEST` (and the deprecated `LEAST_CONN`, which Istio maps to it): Envoy's
    /// "power of two choices": two endpoints drawn at random, the one with fewer active
    /// requests wins (the first on a tie).
    LeastRequest,
    /// `consistentHash`: a ring hash over the endpoints, keyed by a request property.
    RingHash {
        key: HashKey,
        minimum_ring_size: u64,
    },
}

impl Default for LoadBalancer {
    /// `LEAST_REQUEST`: what Istio programs when a DestinationRule names no algorithm (or
    /// `UNSPECIFIED`); pilot's `defaultLBAlgorithm()` returns `Cluster_LEAST_REQUEST`. Istio's
    /// waypoint is Envoy, so ambient traffic through a waypoint gets the same. (Envoy's own
    /// default, `ROUND_ROBIN`, never applies under Istio.)
    fn default() -> Self {
        LoadBalancer::LeastRequest
    }
}

/// The request property a ring hash is keyed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `httpHeaderName`: the header's value (several values: all of them, in sorted order).
    Header(HeaderName),
    /// `httpCookie`: the cookie's value; with a `ttl`, a missing cookie is generated.
    Cookie(CookieKey),
    /// `useSourceIp`: the client's IP address.
    SourceIp,
    /// `httpQueryParameterName`: the first value of the query parameter, as sent (not
    /// percent-decoded, as Envoy).
    QueryParameter(String),
}

/// `consistentHash.httpCookie`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieKey {
    pub name: String,
    pub path: Option<String>,
    /// With a ttl, a request without the cookie gets one generated (see [`SetCookie`]); a
    /// zero ttl (or one under a second) makes it a session cookie. Without, such requests
    /// are spread at random.
    pub ttl: Option<Duration>,
    /// Extra `Set-Cookie` attributes, `name` or `name=value`.
    pub attributes: Vec<(String, Option<String>)>,
}

/// What a ring hash reads from a request, borrowed: nothing is copied per request. Build it
/// from the routing facts (`headers`, `query()`, `source.ip`).
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub headers: &'a HeaderMap,
    /// The query string without `?`.
    pub query: Option<&'a str>,
    /// The original client's IP (from the HBONE tunnel), for `useSourceIp`.
    pub source_ip: Option<IpAddr>,
}

impl<'a> HashInput<'a> {
    pub fn new(headers: &'a HeaderMap) -> HashInput<'a> {
        HashInput {
            headers,
            query: None,
            source_ip: None,
        }
    }
}

/// A cookie the proxy must add to the response (`Set-Cookie`), generated because the request
/// had none and the hash cookie has a ttl. Its value hashes to the endpoint the request went
/// to, so the client's next requests stick to it while the endpoint set stays the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub path: Option<String>,
    /// `Max-Age`; `None` for a session cookie.
    pub max_age: Option<Duration>,
    pub attributes: Vec<(String, Option<String>)>,
}

impl fmt::Display for SetCookie {
    /// The `Set-Cookie` header value, in Envoy's form:
    /// `name="value"; Max-Age=N; Path=/p; attr=v; HttpOnly`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=\"{}\"", self.name, self.value)?;
        if let Some(max_age) = self.max_age {
            write!(f, "; Max-Age={}", max_age.as_secs())?;
        }
        if let Some(path) = &self.path {
            write!(f, "; Path={path}")?;
        }
        for (name, value) in &self.attributes {
            match value {
                Some(value) => write!(f, "; {name}={value}")?,
                None => write!(f, "; {name}")?,
            }
        }
        f.write_str("; HttpOnly")
    }
}

impl CookieKey {
    /// A fresh cookie for a request that had none (only with a ttl).
    pub(crate) fn generate<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<SetCookie> {
        let ttl = self.ttl?;
        Some(SetCookie {
            name: self.name.clone(),
            value: format!("{:016x}", rng.random::<u64>()),
            path: self.path.clone(),
            max_age: (ttl.as_secs() > 0).then(|| Duration::from_secs(ttl.as_secs())),
            attributes: self.attributes.clone(),
        })
    }
}

impl HashKey {
    /// The request's hash, or `None` when it lacks the property (the ring then picks at
    /// random, as Envoy does).
    pub(crate) fn hash(&self, input: &HashInput<'_>) -> Option<u64> {
        match self {
            HashKey::Header(name) => {
                let mut values = input.headers.get_all(name).iter();
                let first = values.next()?;
                match values.next() {
                    None => Some(xxh64(first.as_bytes(), 0)),
                    Some(_) => {
                        let mut all: Vec<&[u8]> = input
                            .headers
                            .get_all(name)
                            .iter()
                            .map(|v| v.as_bytes())
                            .collect();
                        all.sort_unstable();
                        Some(all.iter().fold(0, |seed, value| xxh64(value, seed)))
                    }
                }
            }
            HashKey::Cookie(cookie) => {
                cookie_value(input.headers, &cookie.name).map(|v| xxh64(v.as_bytes(), 0))
            }
            HashKey::SourceIp => input.source_ip.map(|ip| match ip {
                IpAddr::V4(v4) => xxh64(&v4.octets(), 0),
                IpAddr::V6(v6) => xxh64(&v6.octets(), 0),
            }),
            HashKey::QueryParameter(name) => {
                query_value(input.query?, name).map(|v| xxh64(v.as_bytes(), 0))
            }
        }
    }
}

/// A cookie's value from the request's `Cookie` headers, surrounding quotes removed.
pub(crate) fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| {
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
}

/// The first value of a query parameter (`name=value`; a bare `name` is an empty value).
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Round robin over the available endpoints; `counter` is shared by all requests.
pub(crate) fn round_robin(snapshot: &Snapshot, counter: &AtomicUsize) -> Option<usize> {
    let available = &snapshot.available;
    if available.is_empty() {
        return None;
    }
    let turn = counter.fetch_add(1, Ordering::Relaxed);
    Some(available[turn % available.len()])
}

pub(crate) fn random<R: Rng + ?Sized>(snapshot: &Snapshot, rng: &mut R) -> Option<usize> {
    let available = &snapshot.available;
    if available.is_empty() {
        return None;
    }
    Some(available[rng.random_range(0..available.len())])
}

/// Envoy's unweighted least-request pick: `choice_count` (2) draws with replacement, the
/// endpoint with strictly fewer active requests replaces the candidate.
pub(crate) fn least_request<R: Rng + ?Sized>(snapshot: &Snapshot, rng: &mut R) -> Option<usize> {
    let available = &snapshot.available;
    match available.len() {
        0 => None,
        1 => Some(available[0]),
        len => {
            let first = available[rng.random_range(0..len)];
            let second = available[rng.random_range(0..len)];
            let active = |i: usize| snapshot.endpoints[i].active_requests();
            Some(if active(second) < active(first) {
                second
            } else {
                first
            })
        }
    }
}

#[cfg(test)]
mod tests;
