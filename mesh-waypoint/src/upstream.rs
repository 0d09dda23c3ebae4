//! The upstream side of the waypoint: what Istio's `DestinationRule` does to a request once
//! routing has chosen its destination (service host, optional subset, port), the way Istio's
//! own waypoint (Envoy) does it. No networking: the proxy asks, per request, which endpoint
//! to use and whether the pool has room, and reports back how each attempt ended.
//!
//! - [`EffectivePolicy::resolve`] merges the rule (host level → its port-level entry →
//!   subset → the subset's port-level entry) and fills in Istio's defaults; fields the
//!   waypoint does not implement come back as [`Warning`]s.
//! - [`Upstream`] is one destination (Envoy's cluster): its endpoints, [`Upstream::pick`]
//!   (the [`LoadBalancer`], skipping ejected endpoints, panic mode), [`Upstream::record`]
//!   (outlier detection), and its [`CircuitBreaker`] (connection-pool limits).
//!
//! ```
//! # use mesh_core::config::Endpoint;
//! # use mesh_waypoint::upstream::*;
//! # let endpoints = vec![Endpoint { addr: "10.0.0.1:9080".parse().unwrap(), pod: None, node: None }];
//! # let headers = http::HeaderMap::new();
//! # async {
//! let policy = EffectivePolicy::resolve(None, None, 9080)?; // the model's DestinationRule
//! let key = UpstreamKey::new("reviews.shop.svc.cluster.local", None, 9080);
//! let upstream = Upstream::new(key, policy, endpoints); // update_endpoints() on changes
//!
//! // Per request: an endpoint (else 503 UH), then a connection slot (else 503 UO).
//! let pick = upstream.pick(&HashInput::new(&headers), &mut rand::rng())?;
//! let lease = upstream.pool().acquire().await?;
//! // ... send to pick.addr(); add pick.set_cookie(), if any, to the response ...
//! upstream.record(pick.endpoint(), Outcome::Status(200));
//! // Dropping `lease` and `pick` once the response is done frees their slots.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # };
//! ```

mod balance;
mod cluster;
mod endpoints;
mod outlier;
mod policy;
mod pool;

pub use balance::{
    CookieKey, DEFAULT_MINIMUM_RING_SIZE, HashInput, HashKey, LoadBalancer, MAXIMUM_RING_SIZE,
    SetCookie,
};
pub use cluster::{Health, Pick, Upstream, UpstreamKey};
pub use endpoints::UpstreamEndpoint;
pub use outlier::{
    DEFAULT_BASE_EJECTION_TIME, DEFAULT_CONSECUTIVE_5XX, DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURES,
    DEFAULT_INTERVAL, DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_MAX_EJECTION_TIME, EjectionReason,
    Outcome, OutlierConfig, OutlierStats,
};
pub use policy::{EffectivePolicy, Warning};
pub use pool::{
    CircuitBreaker, ConnectionBudget, ConnectionSlot, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, Http1Lease, Overflow, PoolLimits, PoolStats, RequestSlot, RetrySlot,
    Reuse, UNLIMITED,
};

/// Why a policy or an endpoint could not be had. The policy errors leave the destination
/// without an upstream (Envoy answers such routes 503, flag NC); [`Error::NoHealthyEndpoint`]
/// is answered 503, flag UH.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "{rule} defines no subset {subset:?} (it defines {}); add the subset or route to one it defines",
        if defined.is_empty() { "none".to_owned() } else { defined.join(", ") }
    )]
    UnknownSubset {
        rule: String,
        subset: String,
        defined: Vec<String>,
    },
    #[error(
        "subset {subset:?} is routed to, but no DestinationRule applies to the host; add one that defines the subset"
    )]
    NoDestinationRule { subset: String },
    /// A value mesh-core's validation should have refused (it names the field).
    #[error("{rule}: {field}: {message}")]
    Invalid {
        rule: String,
        field: String,
        message: String,
    },
    #[error("{upstream}: {}", no_endpoint(*endpoints, *ejected))]
    NoHealthyEndpoint {
        upstream: String,
        endpoints: usize,
        ejected: usize,
    },
}

fn no_endpoint(endpoints: usize, ejected: usize) -> String {
    if endpoints == 0 {
        "no ready endpoint (none ready, or none has the subset's labels)".to_owned()
    } else {
        format!(
            "{ejected} of {endpoints} endpoints are ejected by outlier detection and \
             minHealthPercent 0 turns panic mode off; set outlierDetection.minHealthPercent to \
             use ejected endpoints when too few are healthy"
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod testing;
