//! An upstream end to end: subsets, ejection and readmission on (paused) tokio time, max
//! ejection percent, panic mode, least request, endpoint updates, and the config model
//! (consistent hashing in [`hashing`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::HeaderMap;
use mesh_core::config::Store;
use mesh_core::manifest;
use mesh_core::source::Update;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::upstream::testing::{addr, endpoint, endpoints, rule, upstream};
use crate::upstream::{CircuitBreaker, Http1Lease, PoolLimits};

mod hashing;

fn with_outlier(outlier: &str, lb: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: reviews, namespace: shop}}\nspec:\n  host: reviews\n  trafficPolicy:\n    \
         loadBalancer: {{simple: {lb}}}\n    outlierDetection: {{{outlier}}}\n"
    )
}

fn no_headers() -> HeaderMap {
    HeaderMap::new()
}

/// The addresses of `n` picks (each dropped at once).
fn picks(upstream: &Upstream, n: usize) -> Vec<SocketAddr> {
    let headers = no_headers();
    let mut rng = StdRng::seed_from_u64(5);
    (0..n)
        .map(|_| {
            upstream
                .pick(&HashInput::new(&headers), &mut rng)
                .unwrap()
                .addr()
        })
        .collect()
}

fn fail(upstream: &Upstream, addr: SocketAddr, times: usize, outcome: Outcome) {
    let headers = no_headers();
    let mut rng = StdRng::seed_from_u64(1);
    // Picks are not needed to record; take the endpoint from a pick that lands on it.
    let endpoint = (0..1000)
        .map(|_| upstream.pick(&HashInput::new(&headers), &mut rng).unwrap())
        .find(|p| p.addr() == addr)
        .expect("the endpoint is picked");
    for _ in 0..times {
        upstream.record(endpoint.endpoint(), outcome);
    }
}

#[test]
fn a_subset_sends_only_to_its_endpoints() {
    let rule = rule(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\n\
         spec:\n  host: reviews\n  subsets:\n  - name: v2\n    labels: {version: v2}\n",
    );
    let policy = EffectivePolicy::resolve(Some(&rule), Some("v2"), 9080).unwrap();
    let upstream = Upstream::new(
        UpstreamKey::new("reviews.shop.svc.cluster.local", Some("v2"), 9080),
        policy,
        [
            endpoint("10.0.0.1:9080", &[("version", "v1")]),
            endpoint("10.0.0.2:9080", &[("version", "v2")]),
            endpoint("10.0.0.3:9080", &[("version", "v2")]),
            endpoint("10.0.0.4:9080", &[("version", "v3")]),
        ],
    );
    let used: BTreeSet<_> = picks(&upstream, 100).into_iter().collect();
    assert_eq!(
        used,
        BTreeSet::from([addr("10.0.0.2:9080"), addr("10.0.0.3:9080")])
    );
    assert_eq!(
        upstream.key().to_string(),
        "outbound|9080|v2|reviews.shop.svc.cluster.local"
    );
}

#[tokio::test(start_paused = true)]
async fn consecutive_5xx_eject_and_the_endpoint_comes_back_after_the_ejection_time() {
    let upstream = upstream(
        &with_outlier(
            "consecutive5xxErrors: 3, maxEjectionPercent: 100",
            "ROUND_ROBIN",
        ),
        endpoints(3),
    );
    let bad = addr("10.0.0.2:9080");
    fail(&upstream, bad, 2, Outcome::Status(500));
    assert!(!upstream.is_ejected(bad), "two 5xx are not enough");
    fail(&upstream, bad, 1, Outcome::Status(500));
    assert!(upstream.is_ejected(bad));
    assert!(!picks(&upstream, 60).contains(&bad));
    assert_eq!(upstream.health().ejected, 1);

    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(
        !picks(&upstream, 30).contains(&bad),
        "30 s base ejection time"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    // Readmitted on the next pick, without waiting for an interval sweep.
    let counts = picks(&upstream, 30);
    assert_eq!(
        counts.iter().filter(|a| **a == bad).count(),
        10,
        "round robin again"
    );
    assert_eq!(upstream.outlier_stats().ejections_active, 0);
    assert_eq!(
        upstream.outlier_stats().ejections_enforced_consecutive_5xx,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn each_ejection_in_a_row_lasts_longer() {
    let upstream = upstream(
        &with_outlier(
            "consecutive5xxErrors: 1, maxEjectionPercent: 100",
            "ROUND_ROBIN",
        ),
        endpoints(2),
    );
    let bad = addr("10.0.0.1:9080");
    let mut durations = Vec::new();
    for _ in 0..3 {
        fail(&upstream, bad, 1, Outcome::ConnectFailed);
        let until = upstream.ejected_until(bad).expect("ejected");
        durations.push((until - tokio::time::Instant::now()).as_secs());
        tokio::time::advance(until - tokio::time::Instant::now()).await;
        assert!(!upstream.is_ejected(bad));
    }
    assert_eq!(durations, [30, 60, 90]);
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_readmits_without_traffic() {
    let upstream = Arc::new(upstream(
        &with_outlier("consecutive5xxErrors: 1, maxEjectionPercent: 100", "RANDOM"),
        endpoints(2),
    ));
    let sweeper = upstream.spawn_sweeper().expect("outlier detection is on");
    let bad = addr("10.0.0.1:9080");
    fail(&upstream, bad, 1, Outcome::Status(503));
    assert_eq!(upstream.outlier_stats().ejections_active, 1);
    // Paused time: sleeping advances the clock through the sweeps at 10, 20, 30 and 40 s.
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert_eq!(upstream.outlier_stats().ejections_active, 0);
    drop(upstream);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(sweeper.is_finished(), "the sweeper stops with its upstream");
}

#[test]
fn max_ejection_percent_keeps_endpoints_in() {
    let upstream = upstream(
        &with_outlier(
            "consecutive5xxErrors: 1, maxEjectionPercent: 50",
            "ROUND_ROBIN",
        ),
        endpoints(4),
    );
    for i in 1..=4 {
        fail(
            &upstream,
            addr(&format!("10.0.0.{i}:9080")),
            1,
            Outcome::Status(500),
        );
    }
    assert_eq!(upstream.health().ejected, 2);
    assert_eq!(upstream.outlier_stats().ejections_overflow, 2);
    assert_eq!(
        picks(&upstream, 20).iter().collect::<BTreeSet<_>>().len(),
        2
    );
    // The default 10 % ejects nothing among 4 endpoints (Envoy counts the new ejection).
    let default = upstream_with_default_percent();
    fail(&default, addr("10.0.0.1:9080"), 5, Outcome::Status(500));
    assert_eq!(default.health().ejected, 0);
    assert_eq!(default.outlier_stats().ejections_overflow, 1);
}

fn upstream_with_default_percent() -> Upstream {
    upstream(&with_outlier("", "ROUND_ROBIN"), endpoints(4))
}

#[test]
fn with_every_endpoint_ejected_and_no_panic_threshold_there_is_no_endpoint() {
    let upstream = upstream(
        &with_outlier("consecutive5xxErrors: 1, maxEjectionPercent: 100", "RANDOM"),
        endpoints(2),
    );
    fail(&upstream, addr("10.0.0.1:9080"), 1, Outcome::Status(500));
    fail(&upstream, addr("10.0.0.2:9080"), 1, Outcome::Status(500));
    let error = upstream
        .pick(&HashInput::new(&no_headers()), &mut rand::rng())
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "outbound|9080||reviews.shop.svc.cluster.local: 2 of 2 endpoints are ejected by \
         outlier detection and minHealthPercent 0 turns panic mode off; set \
         outlierDetection.minHealthPercent to use ejected endpoints when too few are healthy"
    );
}

#[test]
fn below_min_health_percent_every_endpoint_takes_traffic() {
    let upstream = upstream(
        &with_outlier(
            "consecutive5xxErrors: 1, maxEjectionPercent: 100, minHealthPercent: 50",
            "ROUND_ROBIN",
        ),
        endpoints(4),
    );
    // One of four out: 75 % healthy (× 1.4 ≥ 100 %), no panic.
    fail(&upstream, addr("10.0.0.1:9080"), 1, Outcome::Status(500));
    assert_eq!(
        picks(&upstream, 12).iter().collect::<BTreeSet<_>>().len(),
        3
    );
    // Three out: 25 % < 50 %, panic: all four are used again.
    fail(&upstream, addr("10.0.0.2:9080"), 1, Outcome::Status(500));
    fail(&upstream, addr("10.0.0.3:9080"), 1, Outcome::Status(500));
    let health = upstream.health();
    assert_eq!((health.ejected, health.panic), (3, true));
    assert_eq!(
        picks(&upstream, 12).iter().collect::<BTreeSet<_>>().len(),
        4
    );
    let pick = upstream
        .pick(&HashInput::new(&no_headers()), &mut rand::rng())
        .unwrap();
    assert!(pick.panic());
}

#[test]
fn round_robin_is_even_over_the_endpoints_left() {
    let upstream = upstream(
        &with_outlier(
            "consecutive5xxErrors: 1, maxEjectionPercent: 100",
            "ROUND_ROBIN",
        ),
        endpoints(4),
    );
    fail(&upstream, addr("10.0.0.3:9080"), 1, Outcome::Timeout);
    let mut counts = BTreeMap::new();
    for a in picks(&upstream, 300) {
        *counts.entry(a).or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100, 100]
    );
}

#[test]
fn least_request_steers_away_from_busy_endpoints() {
    let upstream = upstream(&with_outlier("", "LEAST_REQUEST"), endpoints(2));
    let headers = no_headers();
    let mut rng = StdRng::seed_from_u64(9);
    // Requests in flight (picks held) on one endpoint.
    let busy: Vec<Pick> = (0..200)
        .map(|_| upstream.pick(&HashInput::new(&headers), &mut rng).unwrap())
        .filter(|p| p.addr() == addr("10.0.0.1:9080"))
        .take(5)
        .collect();
    assert_eq!(busy.len(), 5);
    assert!(busy[0].endpoint().active_requests() >= 5);
    let idle = picks(&upstream, 1000)
        .iter()
        .filter(|a| **a == addr("10.0.0.2:9080"))
        .count();
    assert!(idle > 700, "{idle}");
    drop(busy);
    let snapshot = upstream.snapshot();
    assert!(
        snapshot.endpoints.iter().all(|e| e.active_requests() == 0),
        "dropped picks are no longer active"
    );
}

#[test]
fn endpoint_updates_keep_state_of_endpoints_that_stay() {
    let upstream = upstream(
        &with_outlier(
            "consecutive5xxErrors: 1, maxEjectionPercent: 100",
            "ROUND_ROBIN",
        ),
        endpoints(3),
    );
    fail(&upstream, addr("10.0.0.1:9080"), 1, Outcome::Status(500));
    let held = upstream
        .pick(&HashInput::new(&no_headers()), &mut rand::rng())
        .unwrap();
    let held_addr = held.addr();
    // 10.0.0.3 goes, 10.0.0.4 comes.
    let mut next = endpoints(2);
    next.push(endpoint("10.0.0.4:9080", &[]));
    upstream.update_endpoints(next);
    assert!(
        upstream.is_ejected(addr("10.0.0.1:9080")),
        "the ejection stays"
    );
    assert_eq!(upstream.health().endpoints, 3);
    if held_addr != addr("10.0.0.3:9080") {
        let stayed = upstream.snapshot();
        let i = stayed.position(held_addr).unwrap();
        assert_eq!(
            stayed.endpoints[i].active_requests(),
            1,
            "in-flight count kept"
        );
    }
    // Removing the ejected endpoint forgets its ejection.
    upstream.update_endpoints(vec![endpoint("10.0.0.2:9080", &[])]);
    assert_eq!(upstream.outlier_stats().ejections_active, 0);
    assert_eq!(picks(&upstream, 3), [addr("10.0.0.2:9080"); 3]);
    upstream.update_endpoints(Vec::new());
    assert!(matches!(
        upstream.pick(&HashInput::new(&no_headers()), &mut rand::rng()),
        Err(Error::NoHealthyEndpoint { endpoints: 0, .. })
    ));
}

const BOOKINFO_REVIEWS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080}]
"#;

fn pod(name: &str, ip: &str, version: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: reviews, version: {version}}}}}\n\
         spec: {{nodeName: node1, containers: [{{name: app, image: x, ports: [{{containerPort: 9080}}]}}]}}\n\
         status: {{podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
    )
}

#[test]
fn an_upstream_for_a_model_service_uses_its_rule_and_endpoints() {
    let rules = std::fs::read_to_string(
        crate::upstream::testing::samples().join("bookinfo/networking/destination-rule-all.yaml"),
    )
    .unwrap();
    let text = format!(
        "{BOOKINFO_REVIEWS}{}{}{}---\n{rules}",
        pod("reviews-v1", "10.244.1.5", "v1"),
        pod("reviews-v2", "10.244.1.6", "v2"),
        pod("reviews-v3", "10.244.1.7", "v3"),
    );
    let loaded = manifest::parse_documents(&text, Path::new("bookinfo.yaml"));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut store = Store::new();
    store.apply_all(Update::first_sync(loaded.objects));
    let model = store.model();
    assert!(model.problems().is_empty(), "{:?}", model.problems());
    let service = model
        .service_by_host("reviews.default.svc.cluster.local")
        .expect("reviews");
    let upstream = Upstream::for_service(&model, service, Some("v2"), 9080, "default").unwrap();
    assert_eq!(
        picks(&upstream, 10),
        [addr("10.244.1.6:9080"); 10],
        "only the v2 pod"
    );
    assert_eq!(
        upstream.policy().rule.as_deref(),
        Some("DestinationRule default/reviews")
    );
    let error = Upstream::for_service(&model, service, Some("v4"), 9080, "default").unwrap_err();
    assert!(matches!(error, Error::UnknownSubset { .. }), "{error}");
    let all = Upstream::for_service(&model, service, None, 9080, "default").unwrap();
    assert_eq!(all.health().endpoints, 3);
}

#[test]
fn upstreams_are_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Upstream>();
    shareable::<Pick>();
    shareable::<CircuitBreaker>();
    shareable::<Http1Lease>();
    fn sendable<T: Send>(_: T) {}
    let pool = CircuitBreaker::new(PoolLimits::default());
    sendable(pool.acquire());
}
