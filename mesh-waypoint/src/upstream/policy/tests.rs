//! Resolution of DestinationRules: Istio's merge order, defaults, errors and the warnings for
//! what the waypoint does not implement; Istio's bookinfo rules.

use std::num::NonZeroU32;
use std::time::Duration;

use http::HeaderName;

use super::*;
use crate::upstream::balance::{CookieKey, HashKey};
use crate::upstream::pool::UNLIMITED;
use crate::upstream::testing::{endpoint, rule, sample_rules};

const LAYERED: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool:
      tcp: {maxConnections: 100}
    outlierDetection: {consecutive5xxErrors: 7}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: ROUND_ROBIN}
      connectionPool:
        http: {http2MaxRequests: 50}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool:
        http: {http1MaxPendingRequests: 3}
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      loadBalancer:
        consistentHash: {useSourceIp: true}
      portLevelSettings:
      - port: {number: 9080}
        outlierDetection: {consecutive5xxErrors: 2}
"#;

fn resolve(subset: Option<&str>, port: u16) -> EffectivePolicy {
    EffectivePolicy::resolve(Some(&rule(LAYERED)), subset, port).expect("resolves")
}

fn fivexx(policy: &EffectivePolicy) -> Option<Option<u32>> {
    policy.outlier_detection.as_ref().map(|o| o.consecutive_5xx)
}

#[test]
fn host_level_applies_on_ports_without_an_entry() {
    let policy = resolve(None, 8080);
    assert_eq!(policy.load_balancer, LoadBalancer::Random);
    assert_eq!(policy.connection_pool.max_connections, 100);
    assert_eq!(policy.connection_pool.max_requests, UNLIMITED);
    assert_eq!(fivexx(&policy), Some(Some(7)));
    assert_eq!(policy.rule.as_deref(), Some("DestinationRule shop/reviews"));
    assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
}

#[test]
fn a_port_entry_replaces_the_host_level_groups_it_leaves_unset_too() {
    let policy = resolve(None, 9080);
    assert_eq!(policy.load_balancer, LoadBalancer::RoundRobin);
    assert_eq!(policy.connection_pool.max_requests, 50);
    // Not inherited from the host level: defaults.
    assert_eq!(policy.connection_pool.max_connections, UNLIMITED);
    assert_eq!(policy.outlier_detection, None);
    // A subset without a policy changes nothing but the endpoints.
    let v1 = resolve(Some("v1"), 9080);
    assert_eq!(v1.load_balancer, LoadBalancer::RoundRobin);
    assert_eq!(v1.connection_pool, policy.connection_pool);
    assert_eq!(v1.subset.as_deref(), Some("v1"));
    assert_eq!(
        v1.subset_labels,
        BTreeMap::from([("version".to_owned(), "v1".to_owned())])
    );
}

#[test]
fn a_subset_group_replaces_the_merged_group_as_a_whole() {
    let policy = resolve(Some("v2"), 8080);
    assert_eq!(policy.load_balancer, LoadBalancer::Random);
    assert_eq!(policy.connection_pool.max_pending_requests, 3);
    // The host's tcp.maxConnections went with the host's connectionPool.
    assert_eq!(policy.connection_pool.max_connections, UNLIMITED);
    assert_eq!(fivexx(&policy), Some(Some(7)));
    // On 9080 the subset overrides what the host's port entry made of the host level.
    let policy = resolve(Some("v2"), 9080);
    assert_eq!(policy.load_balancer, LoadBalancer::RoundRobin);
    assert_eq!(policy.connection_pool.max_pending_requests, 3);
    assert_eq!(policy.connection_pool.max_requests, UNLIMITED);
    assert_eq!(policy.outlier_detection, None);
}

#[test]
fn a_subset_port_entry_stands_alone() {
    let policy = resolve(Some("v3"), 8080);
    assert_eq!(
        policy.load_balancer,
        LoadBalancer::RingHash {
            key: HashKey::SourceIp,
            minimum_ring_size: 1024
        }
    );
    assert_eq!(policy.connection_pool.max_connections, 100);
    assert_eq!(fivexx(&policy), Some(Some(7)));
    // Its port entry replaces all four groups: default load balancer and pool.
    let policy = resolve(Some("v3"), 9080);
    assert_eq!(policy.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(policy.connection_pool, PoolLimits::default());
    assert_eq!(fivexx(&policy), Some(Some(2)));
}

#[test]
fn unknown_subset_names_the_rule_and_the_subset() {
    let error = EffectivePolicy::resolve(Some(&rule(LAYERED)), Some("v9"), 9080).unwrap_err();
    assert_eq!(
        error.to_string(),
        "DestinationRule shop/reviews defines no subset \"v9\" (it defines v1, v2, v3); \
         add the subset or route to one it defines"
    );
    let error = EffectivePolicy::resolve(None, Some("v1"), 9080).unwrap_err();
    assert!(matches!(error, Error::NoDestinationRule { .. }), "{error}");
    assert!(error.to_string().contains("\"v1\""), "{error}");
}

#[test]
fn without_a_rule_istio_defaults_apply() {
    let policy = EffectivePolicy::resolve(None, None, 9080).unwrap();
    assert_eq!(policy.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(
        policy.connection_pool,
        PoolLimits {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
            max_requests_per_connection: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(3600)),
        }
    );
    assert_eq!(policy.outlier_detection, None);
    assert!(policy.selects(&endpoint("10.0.0.1:80", &[("version", "v1")])));
}

fn single(traffic_policy: &str) -> EffectivePolicy {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: r, namespace: shop}}\nspec:\n  host: r\n  trafficPolicy:\n{traffic_policy}"
    );
    EffectivePolicy::resolve(Some(&rule(&yaml)), None, 80).expect("resolves")
}

#[test]
fn an_empty_outlier_block_turns_detection_on_with_envoy_defaults() {
    let policy = single("    outlierDetection: {}\n");
    assert_eq!(
        policy.outlier_detection,
        Some(OutlierConfig {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            split_local_origin_errors: false,
            consecutive_local_origin_failures: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            min_health_percent: 0,
        })
    );
}

#[test]
fn outlier_settings_and_their_zero_values() {
    let policy = single(
        "    outlierDetection:
      consecutive5xxErrors: 0
      consecutiveGatewayErrors: 3
      splitExternalLocalOriginErrors: true
      interval: 1s
      baseEjectionTime: 10m
      maxEjectionPercent: 0
      minHealthPercent: 40
",
    );
    let od = policy.outlier_detection.unwrap();
    assert_eq!(od.consecutive_5xx, None, "0 turns the detector off");
    assert_eq!(od.consecutive_gateway_errors, Some(3));
    assert_eq!(od.consecutive_local_origin_failures, Some(5));
    assert_eq!(od.interval, Duration::from_secs(1));
    assert_eq!(od.base_ejection_time, Duration::from_secs(600));
    assert_eq!(
        od.max_ejection_time,
        Duration::from_secs(600),
        "at least the base"
    );
    assert_eq!(od.max_ejection_percent, 10, "0 means the default");
    assert_eq!(od.min_health_percent, 40);
}

#[test]
fn connection_pool_settings_and_their_zero_values() {
    let policy = single(
        "    connectionPool:
      tcp: {maxConnections: 0, connectTimeout: 250ms}
      http:
        http1MaxPendingRequests: 1
        http2MaxRequests: 2
        maxRetries: 0
        maxRequestsPerConnection: 1
        idleTimeout: 0s
",
    );
    let pool = policy.connection_pool;
    assert_eq!(pool.max_connections, UNLIMITED, "0 means the default");
    assert_eq!(pool.connect_timeout, Duration::from_millis(250));
    assert_eq!(pool.max_pending_requests, 1);
    assert_eq!(pool.max_requests, 2);
    assert_eq!(pool.max_retries, UNLIMITED);
    assert_eq!(pool.max_requests_per_connection, NonZeroU32::new(1));
    assert_eq!(pool.idle_timeout, None, "0s turns the idle timeout off");
}

#[test]
fn hash_keys_and_ring_sizes() {
    let header = single(
        "    loadBalancer:\n      consistentHash: {httpHeaderName: X-User, minimumRingSize: 4096}\n",
    );
    assert_eq!(
        header.load_balancer,
        LoadBalancer::RingHash {
            key: HashKey::Header(HeaderName::from_static("x-user")),
            minimum_ring_size: 4096
        }
    );
    let cookie = single(
        "    loadBalancer:
      consistentHash:
        httpCookie:
          name: lb
          path: /
          ttl: 0s
          attributes: [{name: SameSite, value: Strict}, {name: Secure}]
        ringHash: {minimumRingSize: 64}
",
    );
    assert_eq!(
        cookie.load_balancer,
        LoadBalancer::RingHash {
            key: HashKey::Cookie(CookieKey {
                name: "lb".into(),
                path: Some("/".into()),
                ttl: Some(Duration::ZERO),
                attributes: vec![
                    ("SameSite".into(), Some("Strict".into())),
                    ("Secure".into(), None)
                ],
            }),
            minimum_ring_size: 64
        }
    );
    let query = single("    loadBalancer:\n      consistentHash: {httpQueryParameterName: user}\n");
    assert!(matches!(
        query.load_balancer,
        LoadBalancer::RingHash { key: HashKey::QueryParameter(ref q), .. } if q == "user"
    ));
}

#[test]
fn bad_values_are_errors_that_name_the_field() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                metadata: {name: r, namespace: shop}\nspec:\n  host: r\n  subsets:\n  - name: v1\n    \
                trafficPolicy:\n      outlierDetection: {interval: 10 seconds}\n";
    let error = EffectivePolicy::resolve(Some(&rule(yaml)), Some("v1"), 80).unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(
            "DestinationRule shop/r: subsets[0].trafficPolicy.outlierDetection.interval: "
        ),
        "{message}"
    );
    let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                metadata: {name: r, namespace: shop}\nspec:\n  host: r\n  trafficPolicy:\n    \
                loadBalancer:\n      consistentHash: {httpCookie: {name: \"a b\", ttl: 1s}}\n";
    let error = EffectivePolicy::resolve(Some(&rule(yaml)), None, 80).unwrap_err();
    assert_eq!(
        error.to_string(),
        "DestinationRule shop/r: trafficPolicy.loadBalancer.consistentHash.httpCookie.name: \
         \"a b\" is not a valid cookie name"
    );
}

#[test]
fn unimplemented_fields_of_the_groups_in_effect_are_warned() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: shop}
spec:
  host: r
  workloadSelector: {matchLabels: {app: client}}
  trafficPolicy:
    tls: {mode: SIMPLE}
    tunnel: {targetHost: proxy, targetPort: 3128}
    loadBalancer:
      simple: PASSTHROUGH
      localityLbSetting: {enabled: true}
      warmupDurationSecs: 10s
    connectionPool:
      tcp: {tcpKeepalive: {time: 10s}, maxConnectionDuration: 1h}
      http: {h2UpgradePolicy: UPGRADE, maxConcurrentStreams: 10}
    outlierDetection: {consecutiveErrors: 5, consecutiveLocalOriginFailures: 2}
    portLevelSettings:
    - port: {number: 9080}
      tls: {mode: ISTIO_MUTUAL}
  subsets:
  - name: v1
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}
"#;
    let rule = rule(yaml);
    let fields = |subset, port| -> Vec<String> {
        EffectivePolicy::resolve(Some(&rule), subset, port)
            .unwrap()
            .warnings
            .into_iter()
            .map(|w| {
                assert_eq!(w.object, "DestinationRule shop/r");
                w.field
            })
            .collect()
    };
    assert_eq!(
        fields(None, 80),
        [
            "trafficPolicy.loadBalancer.localityLbSetting",
            "trafficPolicy.loadBalancer.warmupDurationSecs",
            "trafficPolicy.loadBalancer.simple",
            "trafficPolicy.connectionPool.tcp.tcpKeepalive",
            "trafficPolicy.connectionPool.tcp.maxConnectionDuration",
            "trafficPolicy.connectionPool.http.h2UpgradePolicy",
            "trafficPolicy.connectionPool.http.maxConcurrentStreams",
            "trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
            "trafficPolicy.outlierDetection.consecutiveErrors",
            "trafficPolicy.tls",
            "trafficPolicy.tunnel",
            "workloadSelector",
        ]
    );
    // On 9080 the port entry replaces the groups: only its (fine) tls is in effect; Istio
    // drops the host-level tunnel there too.
    assert_eq!(fields(None, 9080), ["workloadSelector"]);
    // The subset's load balancer replaces the host's: only its own fields are reported.
    let subset = fields(Some("v1"), 80);
    assert_eq!(
        subset[0],
        "subsets[0].trafficPolicy.loadBalancer.consistentHash.maglev"
    );
    assert!(!subset.iter().any(|f| f.contains("localityLbSetting")));
    let warning = EffectivePolicy::resolve(Some(&rule), None, 80)
        .unwrap()
        .warnings[9]
        .to_string();
    assert_eq!(
        warning,
        "DestinationRule shop/r: trafficPolicy.tls: is not implemented by the waypoint \
         (upstream connections always use HBONE with mesh mTLS); ignored"
    );
}

#[test]
fn bookinfo_rules_resolve_every_subset() {
    for rule in sample_rules("bookinfo/networking/destination-rule-all.yaml") {
        assert!(!rule.spec.subsets.is_empty());
        for subset in &rule.spec.subsets {
            let policy = EffectivePolicy::resolve(Some(&rule), Some(&subset.name), 9080)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(policy.subset_labels, subset.labels);
            assert_eq!(policy.load_balancer, LoadBalancer::LeastRequest);
            assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
            let version = &subset.labels["version"];
            assert!(policy.selects(&endpoint("10.0.0.1:9080", &[("version", version)])));
            assert!(!policy.selects(&endpoint("10.0.0.1:9080", &[("version", "v0")])));
        }
    }
    // ISTIO_MUTUAL is what HBONE does anyway: no warning.
    for rule in sample_rules("bookinfo/networking/destination-rule-all-mtls.yaml") {
        for subset in &rule.spec.subsets {
            let policy = EffectivePolicy::resolve(Some(&rule), Some(&subset.name), 9080).unwrap();
            assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
        }
    }
    let reviews = sample_rules("bookinfo/networking/destination-rule-reviews.yaml");
    let policy = EffectivePolicy::resolve(Some(&reviews[0]), Some("v3"), 9080).unwrap();
    assert_eq!(policy.load_balancer, LoadBalancer::Random);
}
