//! Circuit breaking: exact overflow counts with concurrent requesters, guards that give
//! their slots back, cancellation, retries and requests per connection.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tokio::sync::{Barrier, mpsc};

use super::*;

fn limits(max_connections: u32, max_pending_requests: u32) -> PoolLimits {
    PoolLimits {
        max_connections,
        max_pending_requests,
        ..PoolLimits::default()
    }
}

/// The overflow of a finished acquire, if it failed.
fn refused(poll: Poll<Result<Http1Lease, Overflow>>) -> Option<Overflow> {
    match poll {
        Poll::Ready(Err(overflow)) => Some(overflow),
        _ => None,
    }
}

/// Polls a future once, without a runtime.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn one_connection_one_queue_place_three_requesters() {
    let pool = CircuitBreaker::new(limits(1, 1));
    let mut first = pin!(pool.acquire());
    let Poll::Ready(Ok(first_lease)) = poll_once(first.as_mut()) else {
        panic!("the first request gets the free connection");
    };
    let mut second = pin!(pool.acquire());
    assert!(poll_once(second.as_mut()).is_pending(), "the second waits");
    let mut third = pin!(pool.acquire());
    assert_eq!(
        refused(poll_once(third.as_mut())),
        Some(Overflow::Pending { limit: 1 })
    );
    let stats = pool.stats();
    assert_eq!(stats.upstream_cx_active, 1);
    assert_eq!(stats.upstream_rq_pending_active, 1);
    assert_eq!(stats.upstream_rq_active, 1);
    assert_eq!(stats.upstream_cx_overflow, 1);
    assert_eq!(stats.upstream_rq_pending_overflow, 1);

    drop(first_lease);
    let Poll::Ready(Ok(second_lease)) = poll_once(second.as_mut()) else {
        panic!("the waiting request gets the connection once it is free");
    };
    let stats = pool.stats();
    assert_eq!(stats.upstream_cx_active, 1);
    assert_eq!(stats.upstream_rq_pending_active, 0);
    drop(second_lease);
    let stats = pool.stats();
    assert_eq!(stats.upstream_cx_active, 0);
    assert_eq!(stats.upstream_rq_active, 0);
    assert_eq!(
        stats.upstream_rq_pending_overflow, 1,
        "counters keep their totals"
    );
}

#[derive(Debug, PartialEq)]
enum Report {
    Got,
    Released,
    Refused(Overflow),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requesters_overflow_exactly_once() {
    let pool = CircuitBreaker::new(limits(1, 1));
    let start = Arc::new(Barrier::new(3));
    // A holder keeps its lease until the test hands it a permit.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (report, mut reports) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (pool, start, release, report) =
            (pool.clone(), start.clone(), release.clone(), report.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            match pool.acquire().await {
                Ok(lease) => {
                    report.send(Report::Got).unwrap();
                    release.acquire().await.unwrap().forget();
                    drop(lease);
                    report.send(Report::Released).unwrap();
                }
                Err(overflow) => report.send(Report::Refused(overflow)).unwrap(),
            }
        }));
    }
    // Before anything is released: one holds the connection, one waits, one is refused.
    let mut first = vec![reports.recv().await.unwrap(), reports.recv().await.unwrap()];
    first.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        first,
        [Report::Got, Report::Refused(Overflow::Pending { limit: 1 })]
    );
    let stats = pool.stats();
    assert_eq!(stats.upstream_cx_active, 1);
    assert_eq!(stats.upstream_rq_pending_active, 1);
    assert_eq!(stats.upstream_cx_overflow, 1);
    assert_eq!(stats.upstream_rq_pending_overflow, 1);

    // The holder lets go; the waiting request gets the connection.
    release.add_permits(1);
    let mut next = vec![reports.recv().await.unwrap(), reports.recv().await.unwrap()];
    next.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(next, [Report::Got, Report::Released]);
    release.add_permits(1);
    assert_eq!(reports.recv().await.unwrap(), Report::Released);
    for task in tasks {
        task.await.unwrap();
    }
    let stats = pool.stats();
    assert_eq!(
        (
            stats.upstream_cx_active,
            stats.upstream_rq_pending_active,
            stats.upstream_rq_active
        ),
        (0, 0, 0)
    );
    assert_eq!(stats.upstream_rq_pending_overflow, 1);
    assert_eq!(stats.upstream_cx_overflow, 1);
}

#[test]
fn a_cancelled_wait_leaves_the_queue() {
    let pool = CircuitBreaker::new(limits(1, 1));
    let mut first = pin!(pool.acquire());
    let Poll::Ready(Ok(lease)) = poll_once(first.as_mut()) else {
        panic!("free connection");
    };
    {
        let mut waiting = pin!(pool.acquire());
        assert!(poll_once(waiting.as_mut()).is_pending());
        assert_eq!(pool.stats().upstream_rq_pending_active, 1);
    }
    assert_eq!(pool.stats().upstream_rq_pending_active, 0);
    // The queue place is free again, and the connection goes to the next waiter.
    let mut next = pin!(pool.acquire());
    assert!(poll_once(next.as_mut()).is_pending());
    drop(lease);
    assert!(matches!(poll_once(next.as_mut()), Poll::Ready(Ok(_))));
    assert_eq!(pool.stats().upstream_rq_pending_overflow, 0);
}

#[test]
fn active_requests_overflow_counts_as_pending_overflow() {
    let pool = CircuitBreaker::new(PoolLimits {
        max_requests: 1,
        ..PoolLimits::default()
    });
    let mut first = pin!(pool.acquire());
    let Poll::Ready(Ok(_lease)) = poll_once(first.as_mut()) else {
        panic!("first request");
    };
    let mut second = pin!(pool.acquire());
    assert_eq!(
        refused(poll_once(second.as_mut())),
        Some(Overflow::Requests { limit: 1 })
    );
    let stats = pool.stats();
    assert_eq!(stats.upstream_rq_pending_overflow, 1);
    assert_eq!(stats.upstream_rq_max_requests_overflow, 1);
    assert_eq!(
        stats.upstream_cx_active, 1,
        "the refused request's connection is free"
    );
    assert!(matches!(
        pool.try_acquire_request(),
        Err(Overflow::Requests { limit: 1 })
    ));
}

#[test]
fn connection_and_retry_slots_come_back_when_dropped() {
    let pool = CircuitBreaker::new(PoolLimits {
        max_connections: 2,
        max_retries: 1,
        ..PoolLimits::default()
    });
    let a = pool.try_acquire_connection().unwrap();
    let _b = pool.try_acquire_connection().unwrap();
    assert_eq!(
        pool.try_acquire_connection().unwrap_err(),
        Overflow::Connections { limit: 2 }
    );
    drop(a);
    let _c = pool.try_acquire_connection().unwrap();
    assert_eq!(pool.stats().upstream_cx_overflow, 1);

    let retry = pool.try_acquire_retry().unwrap();
    assert_eq!(
        pool.try_acquire_retry().unwrap_err(),
        Overflow::Retries { limit: 1 }
    );
    assert_eq!(pool.stats().upstream_rq_retry_active, 1);
    drop(retry);
    let _retry = pool.try_acquire_retry().unwrap();
    assert_eq!(pool.stats().upstream_rq_retry_overflow, 1);
}

#[test]
fn a_lease_can_release_the_request_before_the_connection() {
    let pool = CircuitBreaker::new(limits(1, 0));
    let mut first = pin!(pool.acquire());
    let Poll::Ready(Ok(lease)) = poll_once(first.as_mut()) else {
        panic!("first request");
    };
    let (connection, request) = lease.into_parts();
    drop(request);
    assert_eq!(pool.stats().upstream_rq_active, 0);
    assert_eq!(pool.stats().upstream_cx_active, 1);
    drop(connection);
    assert_eq!(pool.stats().upstream_cx_active, 0);
}

#[tokio::test]
async fn defaults_do_not_limit() {
    let pool = CircuitBreaker::new(PoolLimits::default());
    let mut leases = Vec::new();
    for _ in 0..2_000 {
        leases.push(pool.acquire().await.unwrap());
    }
    assert_eq!(pool.stats().upstream_rq_active, 2_000);
    assert_eq!(pool.stats().upstream_cx_overflow, 0);
}

#[test]
fn requests_per_connection() {
    let budget = ConnectionBudget::new(NonZeroU32::new(3));
    let uses: Vec<Reuse> = (0..4).map(|_| budget.start_request()).collect();
    assert_eq!(
        uses,
        [
            Reuse::KeepOpen,
            Reuse::KeepOpen,
            Reuse::CloseAfter,
            Reuse::Exhausted
        ]
    );
    assert_eq!(budget.requests(), 3);
    // 1 turns keep-alive off; none is unlimited.
    assert_eq!(
        ConnectionBudget::new(NonZeroU32::new(1)).start_request(),
        Reuse::CloseAfter
    );
    let unlimited = CircuitBreaker::new(PoolLimits::default()).connection_budget();
    assert!((0..1000).all(|_| unlimited.start_request() == Reuse::KeepOpen));
}
