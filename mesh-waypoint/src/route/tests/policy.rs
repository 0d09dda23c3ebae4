//! Policies: timeouts, retries (default and explicit), faults, mirrors and weights.

use super::*;

fn forward_of(table: &RouteTable) -> Forward {
    let decision = table.route_http(&Req::get("/").facts()).unwrap();
    decision.forward().unwrap().clone()
}

#[test]
fn absent_retries_get_istios_default() {
    let forward = forward_of(&table(
        "hosts: [reviews]\nhttp:\n- route: [{destination: {host: reviews}}]",
    ));
    let retries = forward.retries.unwrap();
    assert_eq!(retries.attempts, 2);
    assert_eq!(
        retries.retry_on.conditions().collect::<Vec<_>>(),
        [
            RetryCondition::ConnectFailure,
            RetryCondition::RefusedStream,
            RetryCondition::RetriableStatusCodes,
            RetryCondition::GrpcCancelled,
            RetryCondition::GrpcUnavailable,
        ]
    );
    assert_eq!(
        retries.retry_on.status_codes(),
        [StatusCode::SERVICE_UNAVAILABLE]
    );
    assert!(retries.ignore_previous_hosts);
    let on = &retries.retry_on;
    assert!(on.retries_response(StatusCode::SERVICE_UNAVAILABLE, None));
    assert!(!on.retries_response(StatusCode::BAD_GATEWAY, None));
    assert!(
        on.retries_response(StatusCode::OK, Some(14)),
        "grpc unavailable"
    );
    assert!(
        !on.retries_response(StatusCode::OK, Some(13)),
        "grpc internal is not default"
    );
    assert!(on.retries_failure(UpstreamFailure::ConnectFailure));
    assert!(on.retries_failure(UpstreamFailure::RefusedStream));
    assert!(!on.retries_failure(UpstreamFailure::Reset { request_sent: true }));
}

#[test]
fn explicit_retries_parse_conditions_codes_and_timeouts() {
    let forward = forward_of(&table(
        r#"
hosts: [reviews]
http:
- timeout: 10s
  retries:
    attempts: 5
    perTryTimeout: 250ms
    retryOn: "gateway-error, retriable-4xx,409,reset-before-request,internal"
    backoff: 50ms
    retryIgnorePreviousHosts: false
  route: [{destination: {host: reviews}}]
"#,
    ));
    assert_eq!(forward.timeout, Some(Duration::from_secs(10)));
    let retries = forward.retries.unwrap();
    assert_eq!(retries.attempts, 5);
    assert_eq!(retries.per_try_timeout, Some(Duration::from_millis(250)));
    assert_eq!(retries.backoff, Some(Duration::from_millis(50)));
    assert!(!retries.ignore_previous_hosts);
    let on = &retries.retry_on;
    assert_eq!(on.status_codes(), [StatusCode::CONFLICT]);
    assert!(
        on.contains(RetryCondition::RetriableStatusCodes),
        "codes imply it"
    );
    assert!(on.retries_response(StatusCode::GATEWAY_TIMEOUT, None));
    assert!(!on.retries_response(StatusCode::INTERNAL_SERVER_ERROR, None));
    assert!(on.retries_response(StatusCode::CONFLICT, None));
    assert!(on.retries_response(StatusCode::OK, Some(13)));
    // gateway-error covers every failure without a response, as in Envoy.
    assert!(on.retries_failure(UpstreamFailure::Reset { request_sent: true }));

    let (only_reset_before, unknown) = RetryOn::parse("reset-before-request");
    assert!(unknown.is_empty());
    assert!(only_reset_before.retries_failure(UpstreamFailure::Reset {
        request_sent: false
    }));
    assert!(!only_reset_before.retries_failure(UpstreamFailure::Reset { request_sent: true }));
    let (five_xx, _) = RetryOn::parse("5xx");
    assert!(five_xx.retries_response(StatusCode::INTERNAL_SERVER_ERROR, None));
    assert!(five_xx.retries_failure(UpstreamFailure::ConnectFailure));
}

#[test]
fn zero_attempts_disable_retries_and_zero_timeout_means_none() {
    let forward = forward_of(&table(
        r#"
hosts: [reviews]
http:
- timeout: 0s
  retries: {attempts: 0, perTryTimeout: 1s}
  route: [{destination: {host: reviews}}]
"#,
    ));
    assert_eq!(forward.retries, None);
    assert_eq!(forward.timeout, None);
    // Attempts set, retryOn not: Istio keeps the default conditions.
    let forward = forward_of(&table(
        "hosts: [reviews]\nhttp:\n- retries: {attempts: 4}\n  route: [{destination: {host: reviews}}]",
    ));
    let retries = forward.retries.unwrap();
    assert_eq!(retries.attempts, 4);
    assert_eq!(retries.retry_on, RetryOn::istio_default());
}

#[test]
fn fault_percentages_decide_how_often() {
    let table = table(
        r#"
hosts: [reviews]
http:
- fault:
    delay: {fixedDelay: 100ms, percent: 25}
    abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}}
  route: [{destination: {host: reviews}}]
"#,
    );
    let decision = table.route_http(&Req::get("/").facts()).unwrap();
    let fault = decision.fault().unwrap();
    assert_eq!(fault.delay.as_ref().unwrap().percentage.value(), 25.0);
    let mut rng = rng();
    let (mut delayed, mut aborted) = (0, 0);
    for _ in 0..10_000 {
        let outcome = fault.roll(&mut rng);
        if let Some(delay) = outcome.delay {
            assert_eq!(delay, Duration::from_millis(100));
            delayed += 1;
        }
        if let Some(abort) = outcome.abort {
            assert_eq!(abort, AbortError::Grpc(14));
            aborted += 1;
        }
    }
    assert!((2_300..=2_700).contains(&delayed), "{delayed}");
    assert!((4_800..=5_200).contains(&aborted), "{aborted}");
}

#[test]
fn faults_without_a_percentage_inject_nothing() {
    let table = table(
        r#"
hosts: [reviews]
http:
- fault: {delay: {fixedDelay: 1s}, abort: {httpStatus: 503}}
  route: [{destination: {host: reviews}}]
"#,
    );
    let decision = table.route_http(&Req::get("/").facts()).unwrap();
    let fault = decision.fault().unwrap();
    let mut rng = rng();
    assert!((0..1000).all(|_| fault.roll(&mut rng) == FaultOutcome::default()));
}

#[test]
fn mirrors_from_every_spelling_with_their_percentages() {
    let mirror = |spec: &str| {
        let yaml = format!(
            "hosts: [reviews]\nhttp:\n- route: [{{destination: {{host: reviews}}}}]\n{spec}"
        );
        forward_of(&table(&yaml))
            .mirrors
            .iter()
            .map(|m| {
                (
                    m.target.host.clone(),
                    m.target.subset.clone(),
                    m.percentage.value(),
                )
            })
            .collect::<Vec<_>>()
    };
    let shadow = |subset: Option<&str>, pct| {
        (
            "reviews-shadow.shop.svc.cluster.local".to_owned(),
            subset.map(str::to_owned),
            pct,
        )
    };
    assert_eq!(
        mirror("  mirror: {host: reviews-shadow}"),
        [shadow(None, 100.0)]
    );
    assert_eq!(
        mirror("  mirror: {host: reviews-shadow, subset: v2}\n  mirrorPercentage: {value: 12.5}"),
        [shadow(Some("v2"), 12.5)]
    );
    assert_eq!(
        mirror("  mirror: {host: reviews-shadow}\n  mirrorPercent: 30"),
        [shadow(None, 30.0)]
    );
    assert_eq!(
        mirror("  mirror: {host: reviews-shadow}\n  mirror_percent: 40"),
        [shadow(None, 40.0)]
    );
    assert!(mirror("  mirror: {host: reviews-shadow}\n  mirrorPercentage: {value: 0}").is_empty());
    assert_eq!(
        mirror(
            "  mirrors:\n  - destination: {host: reviews-shadow}\n  - destination: {host: reviews-shadow, subset: v3}\n    percentage: {value: 5}"
        ),
        [shadow(None, 100.0), shadow(Some("v3"), 5.0)]
    );
}

#[test]
fn weights_follow_istio_rules() {
    let forward = forward_of(&table(
        r#"
hosts: [reviews]
http:
- route:
  - destination: {host: reviews, subset: v1, port: {number: 9080}}
    weight: 70
  - destination: {host: reviews, subset: v2}
    weight: 0
  - destination: {host: ratings.other.svc.cluster.local}
    weight: 30
"#,
    ));
    let targets: Vec<_> = forward
        .destinations
        .iter()
        .map(|(w, d)| (w, d.target.clone()))
        .collect();
    assert_eq!(
        targets,
        [
            (
                70,
                Target {
                    host: "reviews.shop.svc.cluster.local".into(),
                    subset: Some("v1".into()),
                    port: Some(9080),
                }
            ),
            (
                30,
                Target {
                    host: "ratings.other.svc.cluster.local".into(),
                    subset: None,
                    port: None,
                }
            ),
        ],
        "zero weights are dropped; hosts resolve against the VirtualService namespace"
    );
    // One destination takes everything, whatever its weight says.
    let single = forward_of(&table(
        "hosts: [reviews]\nhttp:\n- route: [{destination: {host: reviews}, weight: 0}]",
    ));
    assert_eq!(single.destinations.total_weight(), 100);
}
