//! Connection-pool limits (Istio's `connectionPool`, Envoy's circuit breakers) for one
//! upstream: counters of busy connections, pending requests, active requests and retries in
//! flight, each slot an RAII guard so a dropped request gives its slot back.
//!
//! The proxy owns the real connections; this module decides whether a request may have one.
//! For HTTP/1.1 ([`CircuitBreaker::acquire`]) a request needs a connection of its own: it
//! takes a free one if fewer than `maxConnections` are busy, else it waits as pending, up to
//! `http1MaxPendingRequests` waiting requests, beyond which it fails at once; once it has a
//! connection, `http2MaxRequests` caps the requests active at the same time (Istio: "applicable
//! to both HTTP/1.1 and HTTP2"). Overflow is answered 503 with response flag `UO`. Idle
//! keep-alive connections hold no slot: the proxy should keep at most `maxConnections` of
//! them per upstream.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

/// Istio's default for `maxConnections`, `http1MaxPendingRequests`, `http2MaxRequests` and
/// `maxRetries`: 2^32-1 (Istio's DestinationRule reference; pilot's
/// `getDefaultCircuitBreakerThresholds` sets `math.MaxUint32` for all four instead of
/// Envoy's 1024/1024/1024/3).
pub const UNLIMITED: u32 = u32::MAX;
/// Istio's default `connectTimeout` (MeshConfig `connectTimeout`, 10 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Istio's (Envoy's) default `http.idleTimeout`: one hour.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The limits of one upstream's pool, defaults filled in. A 0 (or negative) value in the
/// DestinationRule means the default, as Istio treats it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolLimits {
    /// `tcp.maxConnections`.
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`.
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`.
    pub max_requests: u32,
    /// `http.maxRetries`: retries in flight across the upstream.
    pub max_retries: u32,
    /// `http.maxRequestsPerConnection`; `None` (0, the default) is unlimited.
    pub max_requests_per_connection: Option<NonZeroU32>,
    /// `tcp.connectTimeout`: for the proxy to apply when it connects.
    pub connect_timeout: Duration,
    /// `http.idleTimeout`: for the proxy to close idle connections; `None` when `0s`
    /// disables it.
    pub idle_timeout: Option<Duration>,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_connections: UNLIMITED,
            max_pending_requests: UNLIMITED,
            max_requests: UNLIMITED,
            max_retries: UNLIMITED,
            max_requests_per_connection: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// A request or retry refused by a limit: answer 503 with response flag `UO` (a refused
/// retry instead returns the response of the last attempt, as Envoy does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overflow {
    #[error(
        "{limit} requests already wait for a connection (connectionPool.http.http1MaxPendingRequests); raise it or add endpoints"
    )]
    Pending { limit: u32 },
    #[error(
        "{limit} requests are already active (connectionPool.http.http2MaxRequests); raise it or add endpoints"
    )]
    Requests { limit: u32 },
    #[error(
        "{limit} connections are already busy (connectionPool.tcp.maxConnections); raise it or add endpoints"
    )]
    Connections { limit: u32 },
    #[error("{limit} retries are already in flight (connectionPool.http.maxRetries)")]
    Retries { limit: u32 },
}

/// Counters for metrics, named as Envoy's cluster stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub upstream_cx_active: u32,
    pub upstream_rq_pending_active: u32,
    pub upstream_rq_active: u32,
    pub upstream_rq_retry_active: u32,
    /// A connection was wanted while `maxConnections` were busy.
    pub upstream_cx_overflow: u64,
    /// Requests refused by `http1MaxPendingRequests` or `http2MaxRequests` (Envoy counts
    /// both here).
    pub upstream_rq_pending_overflow: u64,
    /// The part of `upstream_rq_pending_overflow` due to `http2MaxRequests`.
    pub upstream_rq_max_requests_overflow: u64,
    pub upstream_rq_retry_overflow: u64,
}

#[derive(Debug)]
struct Inner {
    limits: PoolLimits,
    /// Free connection slots; waiters queue in FIFO order.
    free_connections: Semaphore,
    connections: AtomicU32,
    pending: AtomicU32,
    requests: AtomicU32,
    retries: AtomicU32,
    cx_overflow: AtomicU64,
    pending_overflow: AtomicU64,
    requests_overflow: AtomicU64,
    retry_overflow: AtomicU64,
}

/// The pool limits of one upstream (destination service, subset and port). Cheap to clone;
/// clones share the counters.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

/// Adds one unless the count is at `limit`.
fn try_increment(counter: &AtomicU32, limit: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

impl CircuitBreaker {
    pub fn new(limits: PoolLimits) -> CircuitBreaker {
        let permits = (limits.max_connections as usize).min(Semaphore::MAX_PERMITS);
        CircuitBreaker {
            inner: Arc::new(Inner {
                limits,
                free_connections: Semaphore::new(permits),
                connections: AtomicU32::new(0),
                pending: AtomicU32::new(0),
                requests: AtomicU32::new(0),
                retries: AtomicU32::new(0),
                cx_overflow: AtomicU64::new(0),
                pending_overflow: AtomicU64::new(0),
                requests_overflow: AtomicU64::new(0),
                retry_overflow: AtomicU64::new(0),
            }),
        }
    }

    pub fn limits(&self) -> &PoolLimits {
        &self.inner.limits
    }

    /// An HTTP/1.1 request's slots: a busy connection and an active request. Waits, counted
    /// as pending, while `maxConnections` connections are busy; fails at once when
    /// `http1MaxPendingRequests` requests wait already or `http2MaxRequests` are active.
    /// Dropping the future while it waits leaves the queue.
    pub async fn acquire(&self) -> Result<Http1Lease, Overflow> {
        let inner = &self.inner;
        let connection = match inner.free_connections.try_acquire() {
            Ok(permit) => {
                permit.forget();
                ConnectionSlot::new(&self.inner)
            }
            Err(_) => {
                let pending = PendingSlot::try_new(inner)?;
                inner.cx_overflow.fetch_add(1, Ordering::Relaxed);
                // The semaphore is never closed, so acquiring only ends with a permit.
                let permit =
                    inner
                        .free_connections
                        .acquire()
                        .await
                        .map_err(|_| Overflow::Pending {
                            limit: inner.limits.max_pending_requests,
                        })?;
                permit.forget();
                drop(pending);
                ConnectionSlot::new(&self.inner)
            }
        };
        let request = self.try_acquire_request()?;
        Ok(Http1Lease {
            connection,
            request,
        })
    }

    /// A slot for a new connection (HTTP/2 or TCP), or overflow at once.
    pub fn try_acquire_connection(&self) -> Result<ConnectionSlot, Overflow> {
        match self.inner.free_connections.try_acquire() {
            Ok(permit) => {
                permit.forget();
                Ok(ConnectionSlot::new(&self.inner))
            }
            Err(_) => {
                self.inner.cx_overflow.fetch_add(1, Ordering::Relaxed);
                Err(Overflow::Connections {
                    limit: self.inner.limits.max_connections,
                })
            }
        }
    }

    /// An active-request slot (`http2MaxRequests`), or overflow at once.
    pub fn try_acquire_request(&self) -> Result<RequestSlot, Overflow> {
        let inner = &self.inner;
        if try_increment(&inner.requests, inner.limits.max_requests) {
            Ok(RequestSlot {
                inner: self.inner.clone(),
            })
        } else {
            inner.requests_overflow.fetch_add(1, Ordering::Relaxed);
            Err(Overflow::Requests {
                limit: inner.limits.max_requests,
            })
        }
    }

    /// A retry slot (`maxRetries`), or overflow at once: then do not retry.
    pub fn try_acquire_retry(&self) -> Result<RetrySlot, Overflow> {
        let inner = &self.inner;
        if try_increment(&inner.retries, inner.limits.max_retries) {
            Ok(RetrySlot {
                inner: self.inner.clone(),
            })
        } else {
            inner.retry_overflow.fetch_add(1, Ordering::Relaxed);
            Err(Overflow::Retries {
                limit: inner.limits.max_retries,
            })
        }
    }

    /// The request count of a new connection, for `maxRequestsPerConnection`.
    pub fn connection_budget(&self) -> ConnectionBudget {
        ConnectionBudget::new(self.inner.limits.max_requests_per_connection)
    }

    pub fn stats(&self) -> PoolStats {
        let inner = &self.inner;
        let load = |c: &AtomicU32| c.load(Ordering::Relaxed);
        let requests_overflow = inner.requests_overflow.load(Ordering::Relaxed);
        PoolStats {
            upstream_cx_active: load(&inner.connections),
            upstream_rq_pending_active: load(&inner.pending),
            upstream_rq_active: load(&inner.requests),
            upstream_rq_retry_active: load(&inner.retries),
            upstream_cx_overflow: inner.cx_overflow.load(Ordering::Relaxed),
            upstream_rq_pending_overflow: inner.pending_overflow.load(Ordering::Relaxed)
                + requests_overflow,
            upstream_rq_max_requests_overflow: requests_overflow,
            upstream_rq_retry_overflow: inner.retry_overflow.load(Ordering::Relaxed),
        }
    }
}

/// A counted pending request; leaves the count when dropped.
struct PendingSlot<'a> {
    inner: &'a Inner,
}

impl<'a> PendingSlot<'a> {
    fn try_new(inner: &'a Inner) -> Result<PendingSlot<'a>, Overflow> {
        if try_increment(&inner.pending, inner.limits.max_pending_requests) {
            Ok(PendingSlot { inner })
        } else {
            inner.pending_overflow.fetch_add(1, Ordering::Relaxed);
            Err(Overflow::Pending {
                limit: inner.limits.max_pending_requests,
            })
        }
    }
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.inner.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One of `maxConnections`; frees the slot (and wakes the first pending request) on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    inner: Arc<Inner>,
}

impl ConnectionSlot {
    fn new(inner: &Arc<Inner>) -> ConnectionSlot {
        inner.connections.fetch_add(1, Ordering::AcqRel);
        ConnectionSlot {
            inner: inner.clone(),
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.inner.connections.fetch_sub(1, Ordering::AcqRel);
        self.inner.free_connections.add_permits(1);
    }
}

/// One of `http2MaxRequests`, released on drop.
#[derive(Debug)]
pub struct RequestSlot {
    inner: Arc<Inner>,
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.inner.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One of `maxRetries`, released on drop (when the retry attempt ends).
#[derive(Debug)]
pub struct RetrySlot {
    inner: Arc<Inner>,
}

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.inner.retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What an HTTP/1.1 request holds until its response is done: a busy connection and an
/// active request.
#[derive(Debug)]
pub struct Http1Lease {
    connection: ConnectionSlot,
    request: RequestSlot,
}

impl Http1Lease {
    /// Splits the lease, e.g. to release the request slot before the connection.
    pub fn into_parts(self) -> (ConnectionSlot, RequestSlot) {
        (self.connection, self.request)
    }
}

/// Whether a connection may carry another request after this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Keep it open for more requests.
    KeepOpen,
    /// This is its last request: close it afterwards (`Connection: close` on HTTP/1.1,
    /// GOAWAY on HTTP/2).
    CloseAfter,
    /// It has carried `maxRequestsPerConnection` already: use another connection.
    Exhausted,
}

/// Requests carried by one upstream connection, against `maxRequestsPerConnection` (1
/// disables keep-alive). The proxy keeps one per real connection.
#[derive(Debug)]
pub struct ConnectionBudget {
    limit: Option<NonZeroU32>,
    used: AtomicU32,
}

impl ConnectionBudget {
    pub fn new(limit: Option<NonZeroU32>) -> ConnectionBudget {
        ConnectionBudget {
            limit,
            used: AtomicU32::new(0),
        }
    }

    /// Counts a request on the connection.
    pub fn start_request(&self) -> Reuse {
        let Some(limit) = self.limit else {
            let _ = self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
            return Reuse::KeepOpen;
        };
        let limit = limit.get();
        match self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            }) {
            Ok(before) if before + 1 == limit => Reuse::CloseAfter,
            Ok(_) => Reuse::KeepOpen,
            Err(_) => Reuse::Exhausted,
        }
    }

    /// Requests counted so far.
    pub fn requests(&self) -> u32 {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
