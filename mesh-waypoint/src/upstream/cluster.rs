//! One upstream (Envoy's cluster): the endpoints of a destination with their live state, and
//! the per-request calls: pick an endpoint, report how the attempt ended, sweep.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use mesh_core::config::{Endpoint, Model, ServiceInfo};
use rand::Rng;
use tokio::time::Instant;

use super::balance::{self, HashInput, HashKey, LoadBalancer, Ring, SetCookie};
use super::endpoints::{Snapshot, UpstreamEndpoint};
use super::outlier::{Detector, Outcome, OutlierStats};
use super::policy::EffectivePolicy;
use super::pool::CircuitBreaker;
use super::{Error, Result};

/// Names an upstream: destination host, subset and port. Displays as Envoy names the
/// cluster (`outbound|9080|v1|reviews.shop.svc.cluster.local`), the name metrics use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamKey {
    pub host: String,
    pub subset: Option<String>,
    pub port: u16,
}

impl UpstreamKey {
    pub fn new(host: &str, subset: Option<&str>, port: u16) -> UpstreamKey {
        UpstreamKey {
            host: host.to_owned(),
            subset: subset.map(str::to_owned),
            port,
        }
    }
}

impl fmt::Display for UpstreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subset = self.subset.as_deref().unwrap_or_default();
        write!(f, "outbound|{}|{subset}|{}", self.port, self.host)
    }
}

/// The endpoint chosen for a request. Hold it until the response is complete: it counts as
/// an active request on the endpoint (for `LEAST_REQUEST`) until dropped.
#[derive(Debug)]
pub struct Pick {
    endpoint: Arc<UpstreamEndpoint>,
    set_cookie: Option<SetCookie>,
    panic: bool,
}

impl Pick {
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr()
    }

    pub fn endpoint(&self) -> &UpstreamEndpoint {
        &self.endpoint
    }

    /// A cookie to add to the response (consistent hashing on a cookie with a ttl, when the
    /// request had none).
    pub fn set_cookie(&self) -> Option<&SetCookie> {
        self.set_cookie.as_ref()
    }

    /// Picked in panic mode: too few healthy endpoints, ejected ones were eligible too
    /// (Envoy's `lb_healthy_panic`).
    pub fn panic(&self) -> bool {
        self.panic
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.endpoint.finish_request();
    }
}

/// How an upstream's endpoints stand, for the admin page and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub endpoints: usize,
    pub ejected: usize,
    pub panic: bool,
}

/// One destination (service host, subset, port) with its policy: endpoints, load balancing,
/// circuit breaking and outlier detection. `Send + Sync`; share it in an `Arc`. Picks read
/// an immutable snapshot (an `Arc` clone under a read lock); the rare writers (endpoint
/// updates, ejections, readmissions) serialize on one mutex and publish a new snapshot.
#[derive(Debug)]
pub struct Upstream {
    key: UpstreamKey,
    /// `key` as Envoy names the cluster, for metrics and logs.
    name: String,
    policy: EffectivePolicy,
    pool: CircuitBreaker,
    epoch: Instant,
    snapshot: RwLock<Arc<Snapshot>>,
    detector: Mutex<Detector>,
    /// Nanoseconds after `epoch` when the next ejection ends; `u64::MAX` when none.
    next_readmission: AtomicU64,
    round_robin: AtomicUsize,
}

impl Upstream {
    /// An upstream over `endpoints` (all ready endpoints of the service port; the subset's
    /// labels pick from them).
    pub fn new(
        key: UpstreamKey,
        policy: EffectivePolicy,
        endpoints: impl IntoIterator<Item = Endpoint>,
    ) -> Upstream {
        let upstream = Upstream {
            name: key.to_string(),
            key,
            pool: CircuitBreaker::new(policy.connection_pool.clone()),
            policy,
            epoch: Instant::now(),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            detector: Mutex::new(Detector::default()),
            next_readmission: AtomicU64::new(u64::MAX),
            // Envoy starts round robin at a random offset, so proxies do not march in step.
            round_robin: AtomicUsize::new(rand::rng().random::<u32>() as usize),
        };
        upstream.update_endpoints(endpoints);
        upstream
    }

    /// The upstream for `port` of `service` (and `subset`) as seen from a client in
    /// `client_ns`: the DestinationRule the model picks, the ready endpoints.
    pub fn for_service(
        model: &Model,
        service: &ServiceInfo,
        subset: Option<&str>,
        port: u16,
        client_ns: &str,
    ) -> Result<Upstream> {
        let rule = model.destination_rule_for(&service.hostname, client_ns);
        let policy = EffectivePolicy::resolve(rule.as_deref(), subset, port)?;
        let key = UpstreamKey::new(&service.hostname, subset, port);
        Ok(Upstream::new(
            key,
            policy,
            model.ready_endpoints(service, port),
        ))
    }

    pub fn key(&self) -> &UpstreamKey {
        &self.key
    }

    /// The cluster's name, as Envoy's (`outbound|9080|v1|reviews.shop.svc.cluster.local`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn policy(&self) -> &EffectivePolicy {
        &self.policy
    }

    pub fn pool(&self) -> &CircuitBreaker {
        &self.pool
    }

    /// Replaces the endpoints (the service port's ready endpoints; the subset filters them).
    /// Endpoints that stay keep their counters and ejections.
    pub fn update_endpoints(&self, endpoints: impl IntoIterator<Item = Endpoint>) {
        let mut detector = self.lock_detector();
        let current = self.snapshot();
        let mut next: Vec<Arc<UpstreamEndpoint>> = Vec::new();
        for endpoint in endpoints {
            if !self.policy.selects(&endpoint) {
                continue;
            }
            let kept = current
                .position(endpoint.addr)
                .map(|i| &current.endpoints[i])
                .filter(|e| *e.endpoint() == endpoint);
            next.push(match kept {
                Some(kept) => kept.clone(),
                None => Arc::new(UpstreamEndpoint::new(endpoint)),
            });
        }
        next.sort_by_key(|e| e.addr());
        next.dedup_by_key(|e| e.addr());
        let same_addrs = next.len() == current.endpoints.len()
            && next
                .iter()
                .zip(&current.endpoints)
                .all(|(a, b)| a.addr() == b.addr());
        let ring = match &self.policy.load_balancer {
            LoadBalancer::RingHash {
                minimum_ring_size, ..
            } if !same_addrs || current.ring.is_none() => {
                let addrs: Vec<_> = next.iter().map(|e| e.addr()).collect();
                Some(Arc::new(Ring::build(&addrs, *minimum_ring_size)))
            }
            _ => current.ring.clone(),
        };
        detector.retain(|addr| next.binary_search_by_key(&addr, |e| e.addr()).is_ok());
        self.publish(&detector, next, ring);
    }

    /// Chooses the endpoint for a request. `Err` (answer 503, flag UH) when there is none:
    /// no endpoints, or all ejected with panic mode off.
    pub fn pick<R: Rng + ?Sized>(&self, input: &HashInput<'_>, rng: &mut R) -> Result<Pick> {
        self.readmit_if_due();
        let snapshot = self.snapshot();
        let mut set_cookie = None;
        let index = match &self.policy.load_balancer {
            LoadBalancer::RoundRobin => balance::round_robin(&snapshot, &self.round_robin),
            LoadBalancer::Random => balance::random(&snapshot, rng),
            LoadBalancer::LeastRequest => balance::least_request(&snapshot, rng),
            LoadBalancer::RingHash { key, .. } => {
                let hash = key.hash(input).unwrap_or_else(|| match key {
                    HashKey::Cookie(cookie) => match cookie.generate(rng) {
                        Some(generated) => {
                            let hash = balance::xxh64(generated.value.as_bytes(), 0);
                            set_cookie = Some(generated);
                            hash
                        }
                        None => rng.random(),
                    },
                    _ => rng.random(),
                });
                snapshot
                    .ring
                    .as_ref()
                    .and_then(|ring| ring.lookup(hash, |i| snapshot.usable[i]))
            }
        };
        let Some(index) = index else {
            return Err(Error::NoHealthyEndpoint {
                upstream: self.name.clone(),
                endpoints: snapshot.endpoints.len(),
                ejected: snapshot.endpoints.len() - snapshot.healthy,
            });
        };
        let endpoint = snapshot.endpoints[index].clone();
        endpoint.start_request();
        Ok(Pick {
            endpoint,
            set_cookie,
            panic: snapshot.panic,
        })
    }

    /// Reports how an attempt at `endpoint` ended, for outlier detection; a detector that
    /// fires ejects the endpoint at once. True when this report ejected it (Envoy's
    /// `outlier_detection.ejections_enforced_total`).
    pub fn record(&self, endpoint: &UpstreamEndpoint, outcome: Outcome) -> bool {
        let Some(config) = &self.policy.outlier_detection else {
            return false;
        };
        let Some(reason) = config.observe(&endpoint.counters, outcome) else {
            return false;
        };
        let now = Instant::now();
        let mut detector = self.lock_detector();
        self.readmit(&mut detector, now, false);
        let snapshot = self.snapshot();
        if snapshot.position(endpoint.addr()).is_none() {
            return false; // Removed meanwhile.
        }
        let hosts = snapshot.endpoints.len();
        let ejected = detector.try_eject(config, endpoint.addr(), hosts, now, reason);
        if ejected {
            self.republish(&detector);
        }
        ejected
    }

    /// The interval work of outlier detection (Envoy's interval timer): readmissions due and
    /// the decay of ejection-time multipliers. Run it every `interval`
    /// ([`Upstream::spawn_sweeper`] does).
    pub fn sweep(&self) {
        if self.policy.outlier_detection.is_none() {
            return;
        }
        let mut detector = self.lock_detector();
        self.readmit(&mut detector, Instant::now(), true);
    }

    /// Runs [`Upstream::sweep`] every outlier-detection interval until the upstream is
    /// dropped; `None` without outlier detection. Needs a tokio runtime.
    pub fn spawn_sweeper(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let interval = self.policy.outlier_detection.as_ref()?.interval;
        let upstream: Weak<Upstream> = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(1)));
            ticks.tick().await; // The first tick is immediate.
            loop {
                ticks.tick().await;
                let Some(upstream) = upstream.upgrade() else {
                    break;
                };
                upstream.sweep();
            }
        }))
    }

    pub fn health(&self) -> Health {
        let snapshot = self.snapshot();
        Health {
            endpoints: snapshot.endpoints.len(),
            ejected: snapshot.endpoints.len() - snapshot.healthy,
            panic: snapshot.panic,
        }
    }

    /// Whether the endpoint at `addr` is ejected now.
    pub fn is_ejected(&self, addr: SocketAddr) -> bool {
        self.readmit_if_due();
        self.lock_detector().is_ejected(addr)
    }

    /// When the current ejection of the endpoint at `addr` ends.
    pub fn ejected_until(&self, addr: SocketAddr) -> Option<Instant> {
        self.lock_detector().ejected_until(addr)
    }

    pub fn outlier_stats(&self) -> OutlierStats {
        self.lock_detector().stats()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn lock_detector(&self) -> MutexGuard<'_, Detector> {
        self.detector.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn nanos_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Readmits endpoints whose ejection is over, if the earliest one is due: one atomic
    /// load when nothing is ejected.
    fn readmit_if_due(&self) {
        let due = self.next_readmission.load(Ordering::Acquire);
        if due == u64::MAX {
            return;
        }
        let now = Instant::now();
        if self.nanos_since_epoch(now) < due {
            return;
        }
        let mut detector = self.lock_detector();
        self.readmit(&mut detector, now, false);
    }

    /// Readmissions due (and with `sweep`, the interval decay); publishes if anything came
    /// back. Readmitted endpoints start with fresh consecutive counts, as in Envoy.
    fn readmit(&self, detector: &mut Detector, now: Instant, sweep: bool) {
        let readmitted = match (&self.policy.outlier_detection, sweep) {
            (Some(config), true) => detector.sweep(config, now),
            _ => detector.readmit_due(now),
        };
        if readmitted.is_empty() {
            return;
        }
        let snapshot = self.snapshot();
        for addr in readmitted {
            if let Some(i) = snapshot.position(addr) {
                snapshot.endpoints[i].counters.reset();
            }
        }
        self.republish(detector);
    }

    /// Publishes the current endpoints again with the detector's ejections.
    fn republish(&self, detector: &Detector) {
        let current = self.snapshot();
        self.publish(detector, current.endpoints.clone(), current.ring.clone());
    }

    /// Builds and publishes a snapshot; called with the detector locked (one writer).
    fn publish(
        &self,
        detector: &Detector,
        endpoints: Vec<Arc<UpstreamEndpoint>>,
        ring: Option<Arc<Ring>>,
    ) {
        let min_health = self
            .policy
            .outlier_detection
            .as_ref()
            .map_or(0, |c| c.min_health_percent);
        let snapshot = Snapshot::build(endpoints, ring, |a| detector.is_ejected(a), min_health);
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
        let next = detector
            .next_readmission()
            .map_or(u64::MAX, |at| self.nanos_since_epoch(at));
        self.next_readmission.store(next, Ordering::Release);
        debug_assert_eq!(
            detector.ejected_count(),
            self.snapshot().endpoints.len() - self.snapshot().healthy
        );
    }
}

#[cfg(test)]
mod tests;
