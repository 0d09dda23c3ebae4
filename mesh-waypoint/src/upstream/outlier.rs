//! Outlier detection: Envoy's consecutive-error detectors, configured as Istio configures
//! them from `outlierDetection`.
//!
//! - Outcomes are counted per endpoint with atomics (the hot path takes no lock). A 5xx
//!   counts towards `consecutive5xxErrors`; 502, 503 and 504 also towards
//!   `consecutiveGatewayErrors`; any other status resets both. Failures before a response
//!   (connect failure, reset: as 503; timeout: as 504) count the same way, or, with
//!   `splitExternalLocalOriginErrors`, only towards `consecutiveLocalOriginFailures`.
//! - Reaching a threshold resets that count and ejects the endpoint at once (Envoy does not
//!   wait for the interval), unless it is ejected already or the ejection would take the
//!   ejected share above `maxEjectionPercent` (counted in `ejections_overflow`). Since
//!   Envoy 1.27 the share is computed with the new ejection included, and Istio does not set
//!   `always_eject_one_host`: with the default 10 %, fewer than 10 endpoints means no
//!   ejection at all (envoyproxy/envoy#27909, #34796).
//! - An ejection lasts `baseEjectionTime × n`, capped at Envoy's `max_ejection_time`
//!   (300 s, or the base time if larger), where `n` grows by one per ejection and shrinks by
//!   one per `interval` the endpoint spends healthy since its readmission.
//! - Readmission: Envoy readmits on its interval timer, so an endpoint can stay out up to one
//!   interval longer than its ejection time. Here an endpoint is readmitted as soon as its
//!   time is up (checked lazily on the next pick, on the next ejection and on every sweep),
//!   and [`super::Upstream::sweep`], which the proxy runs every `interval`, also decays `n`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Envoy's default `consecutive_5xx`, which applies when `consecutive5xxErrors` is unset.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Envoy's default `consecutive_local_origin_failure` (with split errors and no
/// `consecutiveLocalOriginFailures`; enforced at Envoy's default 100 %).
pub const DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURES: u32 = 5;
/// Istio's and Envoy's default `interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Istio's and Envoy's default `baseEjectionTime`.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's default `max_ejection_time` (Istio has no field for it); the base time when larger.
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Istio's and Envoy's default `maxEjectionPercent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// Outlier detection for one upstream; present only when the policy has an
/// `outlierDetection` block (Istio configures none otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// `None`: the 5xx detector is off (`consecutive5xxErrors: 0`).
    pub consecutive_5xx: Option<u32>,
    /// `None`: off, the default (Envoy counts gateway errors but enforces 0 % of ejections
    /// unless Istio sets the field).
    pub consecutive_gateway_errors: Option<u32>,
    pub split_local_origin_errors: bool,
    /// Used only with `split_local_origin_errors`.
    pub consecutive_local_origin_failures: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Envoy's `healthy_panic_threshold`; 0 (Istio's default) disables panic mode.
    pub min_health_percent: u32,
}

impl Default for OutlierConfig {
    /// What `outlierDetection: {}` means.
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: Some(DEFAULT_CONSECUTIVE_5XX),
            consecutive_gateway_errors: None,
            split_local_origin_errors: false,
            consecutive_local_origin_failures: None,
            interval: DEFAULT_INTERVAL,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            min_health_percent: 0,
        }
    }
}

/// How one attempt at an endpoint ended, as the proxy reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status.
    Status(u16),
    /// No connection (refused, connect timeout, HBONE/TLS handshake failure).
    ConnectFailed,
    /// The connection or stream was reset before a response.
    Reset,
    /// No response within the request (or per-try) timeout.
    Timeout,
}

impl From<http::StatusCode> for Outcome {
    fn from(status: http::StatusCode) -> Self {
        Outcome::Status(status.as_u16())
    }
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionReason {
    Consecutive5xx,
    ConsecutiveGatewayErrors,
    ConsecutiveLocalOriginFailures,
}

/// Per-endpoint consecutive counts.
#[derive(Debug, Default)]
pub(crate) struct HostCounters {
    five_xx: AtomicU32,
    gateway: AtomicU32,
    local_origin: AtomicU32,
}

impl HostCounters {
    pub(crate) fn reset(&self) {
        self.five_xx.store(0, Ordering::Relaxed);
        self.gateway.store(0, Ordering::Relaxed);
        self.local_origin.store(0, Ordering::Relaxed);
    }
}

/// Zeroes a count, without writing when it is zero already (most responses are successes).
fn clear(counter: &AtomicU32) {
    if counter.load(Ordering::Relaxed) != 0 {
        counter.store(0, Ordering::Relaxed);
    }
}

/// Adds one to a consecutive count; at the threshold, resets it and says so.
fn count(counter: &AtomicU32, threshold: Option<u32>) -> bool {
    let Some(threshold) = threshold else {
        return false;
    };
    if counter.fetch_add(1, Ordering::Relaxed).saturating_add(1) >= threshold {
        counter.store(0, Ordering::Relaxed);
        true
    } else {
        false
    }
}

impl OutlierConfig {
    /// Counts an outcome; says which detector fired, if one did.
    pub(crate) fn observe(
        &self,
        counters: &HostCounters,
        outcome: Outcome,
    ) -> Option<EjectionReason> {
        let status = match outcome {
            Outcome::Status(status) => {
                if self.split_local_origin_errors {
                    // A response means the connection worked.
                    clear(&counters.local_origin);
                }
                status
            }
            Outcome::ConnectFailed | Outcome::Reset | Outcome::Timeout
                if self.split_local_origin_errors =>
            {
                return count(
                    &counters.local_origin,
                    self.consecutive_local_origin_failures,
                )
                .then_some(EjectionReason::ConsecutiveLocalOriginFailures);
            }
            Outcome::ConnectFailed | Outcome::Reset => 503,
            Outcome::Timeout => 504,
        };
        if !(500..600).contains(&status) {
            clear(&counters.five_xx);
            clear(&counters.gateway);
            return None;
        }
        let mut reason = None;
        if (502..=504).contains(&status) {
            if count(&counters.gateway, self.consecutive_gateway_errors) {
                reason = Some(EjectionReason::ConsecutiveGatewayErrors);
            }
        } else {
            clear(&counters.gateway);
        }
        if count(&counters.five_xx, self.consecutive_5xx) {
            reason = reason.or(Some(EjectionReason::Consecutive5xx));
        }
        reason
    }

    /// How long the `times`-th ejection in a row lasts.
    fn ejection_time(&self, times: u32) -> Duration {
        self.base_ejection_time
            .checked_mul(times)
            .map_or(self.max_ejection_time, |t| t.min(self.max_ejection_time))
    }
}

/// Outlier-detection counters, named as Envoy's `outlier_detection.*` stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutlierStats {
    pub ejections_active: u64,
    pub ejections_enforced_total: u64,
    pub ejections_enforced_consecutive_5xx: u64,
    pub ejections_enforced_consecutive_gateway_failure: u64,
    pub ejections_enforced_consecutive_local_origin_failure: u64,
    /// Ejections refused because of `maxEjectionPercent`.
    pub ejections_overflow: u64,
}

#[derive(Debug, Default)]
struct HostEjection {
    /// When the current ejection ends; `None` when not ejected.
    until: Option<Instant>,
    /// Envoy's ejection-time multiplier (`ejectTimeBackoff`).
    backoff: u32,
    readmitted_at: Option<Instant>,
}

/// The ejection bookkeeping of one upstream; behind its mutex, touched only when a detector
/// fires, an ejection ends, or on the interval sweep.
#[derive(Debug, Default)]
pub(crate) struct Detector {
    hosts: HashMap<SocketAddr, HostEjection>,
    ejected: usize,
    stats: OutlierStats,
}

impl Detector {
    pub(crate) fn is_ejected(&self, addr: SocketAddr) -> bool {
        self.hosts.get(&addr).is_some_and(|h| h.until.is_some())
    }

    /// When the endpoint's current ejection ends.
    pub(crate) fn ejected_until(&self, addr: SocketAddr) -> Option<Instant> {
        self.hosts.get(&addr).and_then(|h| h.until)
    }

    pub(crate) fn ejected_count(&self) -> usize {
        self.ejected
    }

    pub(crate) fn stats(&self) -> OutlierStats {
        OutlierStats {
            ejections_active: self.ejected as u64,
            ..self.stats
        }
    }

    /// Ejects `addr` (one of `hosts` endpoints) if it is not ejected already and
    /// `maxEjectionPercent` allows; true if it was.
    pub(crate) fn try_eject(
        &mut self,
        config: &OutlierConfig,
        addr: SocketAddr,
        hosts: usize,
        now: Instant,
        reason: EjectionReason,
    ) -> bool {
        if self.is_ejected(addr) {
            return false;
        }
        if (self.ejected + 1) * 100 > config.max_ejection_percent as usize * hosts {
            self.stats.ejections_overflow += 1;
            return false;
        }
        let host = self.hosts.entry(addr).or_default();
        // Envoy grows the multiplier while base × n < max + base.
        let grow = config
            .base_ejection_time
            .checked_mul(host.backoff)
            .is_some_and(|t| t < config.max_ejection_time + config.base_ejection_time);
        if grow {
            host.backoff += 1;
        }
        let time = config.ejection_time(host.backoff);
        host.until = Some(
            now.checked_add(time)
                .unwrap_or_else(|| now + config.max_ejection_time),
        );
        self.ejected += 1;
        self.stats.ejections_enforced_total += 1;
        match reason {
            EjectionReason::Consecutive5xx => self.stats.ejections_enforced_consecutive_5xx += 1,
            EjectionReason::ConsecutiveGatewayErrors => {
                self.stats.ejections_enforced_consecutive_gateway_failure += 1;
            }
            EjectionReason::ConsecutiveLocalOriginFailures => {
                self.stats
                    .ejections_enforced_consecutive_local_origin_failure += 1;
            }
        }
        true
    }

    /// Readmits every endpoint whose ejection time is up; returns them (their consecutive
    /// counts must be reset, as Envoy does on unejection).
    pub(crate) fn readmit_due(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut readmitted = Vec::new();
        for (addr, host) in &mut self.hosts {
            if host.until.is_some_and(|until| until <= now) {
                host.until = None;
                host.readmitted_at = Some(now);
                readmitted.push(*addr);
            }
        }
        self.ejected -= readmitted.len();
        readmitted
    }

    /// The interval sweep: readmissions that are due, and one step of multiplier decay for
    /// every endpoint healthy for at least an interval since its readmission.
    pub(crate) fn sweep(&mut self, config: &OutlierConfig, now: Instant) -> Vec<SocketAddr> {
        let readmitted = self.readmit_due(now);
        for host in self.hosts.values_mut() {
            let healthy_for_an_interval = host.until.is_none()
                && host
                    .readmitted_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= config.interval);
            if healthy_for_an_interval && host.backoff > 0 {
                host.backoff -= 1;
            }
        }
        self.hosts.retain(|_, h| h.until.is_some() || h.backoff > 0);
        readmitted
    }

    /// The earliest end of a current ejection.
    pub(crate) fn next_readmission(&self) -> Option<Instant> {
        self.hosts.values().filter_map(|h| h.until).min()
    }

    /// Forgets endpoints that left the upstream.
    pub(crate) fn retain(&mut self, present: impl Fn(SocketAddr) -> bool) {
        self.hosts.retain(|addr, _| present(*addr));
        self.ejected = self.hosts.values().filter(|h| h.until.is_some()).count();
    }
}

#[cfg(test)]
mod tests;
