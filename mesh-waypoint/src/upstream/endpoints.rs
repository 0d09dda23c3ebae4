//! An upstream's endpoints and the immutable snapshot the hot path balances over: which
//! endpoints are available (not ejected, or all of them in panic mode) and the hash ring.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use mesh_core::config::Endpoint;

use super::balance::Ring;
use super::outlier::HostCounters;

/// Envoy's default overprovisioning factor (140 %): a priority level whose healthy share
/// times 1.4 reaches 100 % is never in panic, whatever the threshold.
const OVERPROVISIONING_FACTOR: usize = 140;

/// One endpoint of an upstream with the live state requests share: active requests (for
/// `LEAST_REQUEST`) and the consecutive-error counts of outlier detection. Kept across
/// endpoint updates while the endpoint stays the same.
#[derive(Debug)]
pub struct UpstreamEndpoint {
    endpoint: Endpoint,
    active: AtomicU32,
    pub(crate) counters: HostCounters,
}

impl UpstreamEndpoint {
    pub(crate) fn new(endpoint: Endpoint) -> UpstreamEndpoint {
        UpstreamEndpoint {
            endpoint,
            active: AtomicU32::new(0),
            counters: HostCounters::default(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// The endpoint as the config model has it (pod, labels, node).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Requests picked for this endpoint and not finished yet.
    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn start_request(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn finish_request(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the balancers read: the endpoints (sorted by address), which of them may be picked,
/// and the ring. Rebuilt when endpoints change or one is ejected or readmitted; requests
/// hold an `Arc` of it, never a lock.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) endpoints: Vec<Arc<UpstreamEndpoint>>,
    /// Indices of the endpoints requests may go to.
    pub(crate) available: Vec<usize>,
    /// Per endpoint: whether it is in `available` (for the ring's walk).
    pub(crate) usable: Vec<bool>,
    /// Endpoints not ejected.
    pub(crate) healthy: usize,
    /// Too few healthy endpoints: all of them are used (Envoy's panic mode).
    pub(crate) panic: bool,
    pub(crate) ring: Option<Arc<Ring>>,
}

impl Snapshot {
    pub(crate) fn build(
        endpoints: Vec<Arc<UpstreamEndpoint>>,
        ring: Option<Arc<Ring>>,
        ejected: impl Fn(SocketAddr) -> bool,
        min_health_percent: u32,
    ) -> Snapshot {
        let mut usable: Vec<bool> = endpoints.iter().map(|e| !ejected(e.addr())).collect();
        let healthy = usable.iter().filter(|u| **u).count();
        let panic = in_panic(healthy, endpoints.len(), min_health_percent);
        if panic {
            usable.iter_mut().for_each(|u| *u = true);
        }
        let available = (0..endpoints.len()).filter(|&i| usable[i]).collect();
        Snapshot {
            endpoints,
            available,
            usable,
            healthy,
            panic,
            ring,
        }
    }

    /// The index of the endpoint at `addr` (endpoints are sorted by address).
    pub(crate) fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.endpoints
            .binary_search_by_key(&addr, |e| e.addr())
            .ok()
    }
}

/// Envoy's panic decision for one priority level (`LoadBalancerBase::
/// recalculatePerPriorityPanic` and `isHostSetInPanic`), with Istio's mapping of
/// `minHealthPercent` to `healthy_panic_threshold`:
/// - threshold 0 (Istio's default) disables panic: when every endpoint is ejected there is
///   no endpoint at all, and the request fails (503, flag UH);
/// - a level whose healthy share × 1.4 (the overprovisioning factor) reaches 100 % is not in
///   panic;
/// - otherwise it is in panic when the healthy share is below the threshold, and then every
///   endpoint, ejected or not, takes traffic.
pub(crate) fn in_panic(healthy: usize, total: usize, min_health_percent: u32) -> bool {
    if total == 0 || min_health_percent == 0 {
        return false;
    }
    let availability = (OVERPROVISIONING_FACTOR * healthy / total).min(100);
    availability < 100 && 100 * healthy < min_health_percent as usize * total
}
