//! Istio's bookinfo, re-implemented faithfully to the original services' HTTP APIs:
//! `productpage` (Python/Flask), `details` (Ruby), `reviews` (Java/Liberty) and `ratings`
//! (Node.js). This module holds what they share: the header-propagation list, how upstream
//! URLs are built from the environment, and product-id parsing.

pub(crate) mod details;
pub(crate) mod productpage;
pub(crate) mod ratings;
pub(crate) mod reviews;

#[cfg(test)]
mod tests;

use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use serde::Serializer;

/// Looks up an environment variable; tests pass a map instead of the real environment.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Headers productpage and reviews copy from the incoming request to their upstream calls: the
/// union of the lists in Istio's productpage.py and LibertyRestEndpoint.java (tracing headers,
/// `end-user`, `user-agent`, and the session headers `cookie`, `authorization`, `jwt`).
/// Any `x-datadog-*` header is forwarded as well.
pub(crate) const PROPAGATED_HEADERS: &[&str] = &[
    "x-request-id",
    "x-ot-span-context",
    "traceparent",
    "tracestate",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "sw8",
    "end-user",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
];

/// The incoming headers that [`PROPAGATED_HEADERS`] (or the `x-datadog-` prefix) selects.
pub(crate) fn propagated(incoming: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    incoming
        .iter()
        .filter(|(name, _)| {
            PROPAGATED_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("x-datadog-")
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// `http://<HOST_VAR or default><.SERVICES_DOMAIN>:<PORT_VAR or 9080>`, as the originals build
/// their upstream addresses.
pub(crate) fn service_url(
    env: Env<'_>,
    host_var: &str,
    default_host: &str,
    port_var: &str,
) -> String {
    let host = env(host_var).unwrap_or_else(|| default_host.to_owned());
    let domain = env("SERVICES_DOMAIN")
        .map(|d| format!(".{d}"))
        .unwrap_or_default();
    let port = env(port_var).unwrap_or_else(|| "9080".to_owned());
    format!("http://{host}{domain}:{port}")
}

/// A product id as the originals accept it: an integer (leading `+`/`-` allowed).
pub(crate) fn parse_product_id(raw: &str) -> Option<i64> {
    raw.parse().ok()
}

/// Serializes a [`Duration`] as fractional seconds, for the config dump.
pub(crate) fn as_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
