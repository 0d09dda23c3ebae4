//! The detectors and the ejection bookkeeping on their own, with explicit instants.

use super::*;
use crate::upstream::testing::addr;

fn config() -> OutlierConfig {
    OutlierConfig {
        max_ejection_percent: 100,
        ..OutlierConfig::default()
    }
}

fn feed(
    config: &OutlierConfig,
    counters: &HostCounters,
    outcomes: &[Outcome],
) -> Vec<EjectionReason> {
    outcomes
        .iter()
        .filter_map(|o| config.observe(counters, *o))
        .collect()
}

const E500: Outcome = Outcome::Status(500);
const E503: Outcome = Outcome::Status(503);
const OK: Outcome = Outcome::Status(200);

#[test]
fn fifth_consecutive_5xx_fires_and_counting_restarts() {
    let config = config();
    let counters = HostCounters::default();
    assert_eq!(feed(&config, &counters, &[E500; 4]), []);
    assert_eq!(
        config.observe(&counters, E500),
        Some(EjectionReason::Consecutive5xx)
    );
    assert_eq!(feed(&config, &counters, &[E500; 4]), []);
    assert_eq!(
        config.observe(&counters, E500),
        Some(EjectionReason::Consecutive5xx)
    );
}

#[test]
fn a_success_resets_the_counts() {
    let config = config();
    let counters = HostCounters::default();
    let outcomes = [E500, E500, E500, E500, OK, E500, E500, E500, E500];
    assert_eq!(feed(&config, &counters, &outcomes), []);
    // 4xx are not errors either.
    let counters = HostCounters::default();
    let outcomes = [E500, E500, E500, E500, Outcome::Status(404), E500];
    assert_eq!(feed(&config, &counters, &outcomes), []);
}

#[test]
fn gateway_errors_have_their_own_count() {
    let config = OutlierConfig {
        consecutive_5xx: None,
        consecutive_gateway_errors: Some(3),
        ..config()
    };
    let counters = HostCounters::default();
    // A 500 is a 5xx but not a gateway error: it resets the gateway count.
    let outcomes = [E503, Outcome::Status(502), E500, E503, Outcome::Status(504)];
    assert_eq!(feed(&config, &counters, &outcomes), []);
    assert_eq!(
        config.observe(&counters, E503),
        Some(EjectionReason::ConsecutiveGatewayErrors)
    );
    // The 5xx detector is off: no number of 500s fires.
    assert_eq!(feed(&config, &counters, &[E500; 20]), []);
}

#[test]
fn failures_before_a_response_count_as_gateway_errors_unless_split() {
    let config = OutlierConfig {
        consecutive_gateway_errors: Some(3),
        ..config()
    };
    let counters = HostCounters::default();
    let outcomes = [Outcome::ConnectFailed, Outcome::Reset, Outcome::Timeout];
    assert_eq!(
        feed(&config, &counters, &outcomes),
        [EjectionReason::ConsecutiveGatewayErrors]
    );

    let split = OutlierConfig {
        split_local_origin_errors: true,
        consecutive_local_origin_failures: Some(2),
        ..config
    };
    let counters = HostCounters::default();
    // A response (any status) resets the local-origin count.
    let outcomes = [
        Outcome::ConnectFailed,
        OK,
        Outcome::Timeout,
        E503,
        Outcome::Timeout,
    ];
    assert_eq!(feed(&split, &counters, &outcomes), []);
    assert_eq!(
        split.observe(&counters, Outcome::Reset),
        Some(EjectionReason::ConsecutiveLocalOriginFailures)
    );
    // The local-origin failures did not count as gateway errors: one 503 so far.
    assert_eq!(feed(&split, &counters, &[E503]), []);
    assert_eq!(
        split.observe(&counters, E503),
        Some(EjectionReason::ConsecutiveGatewayErrors)
    );
}

#[test]
fn ejection_time_grows_with_each_ejection_and_is_capped() {
    let config = OutlierConfig {
        base_ejection_time: Duration::from_secs(100),
        ..config()
    };
    let host = addr("10.0.0.1:80");
    let mut detector = Detector::default();
    let mut now = Instant::now();
    let mut times = Vec::new();
    for _ in 0..5 {
        assert!(detector.try_eject(&config, host, 1, now, EjectionReason::Consecutive5xx));
        let until = detector.ejected_until(host).unwrap();
        times.push((until - now).as_secs());
        now = until;
        assert_eq!(detector.readmit_due(now), [host]);
    }
    // base × n, capped at Envoy's max_ejection_time (300 s).
    assert_eq!(times, [100, 200, 300, 300, 300]);
    assert_eq!(detector.stats().ejections_enforced_total, 5);
    assert_eq!(detector.stats().ejections_enforced_consecutive_5xx, 5);
}

#[test]
fn the_multiplier_decays_while_the_endpoint_stays_healthy() {
    let config = config(); // base 30 s, interval 10 s
    let host = addr("10.0.0.1:80");
    let mut detector = Detector::default();
    let start = Instant::now();
    detector.try_eject(&config, host, 1, start, EjectionReason::Consecutive5xx);
    let back = start + Duration::from_secs(30);
    assert_eq!(detector.sweep(&config, back), [host]);
    // Ejected again at once: 2 × 30 s.
    detector.try_eject(&config, host, 1, back, EjectionReason::Consecutive5xx);
    let back = back + Duration::from_secs(60);
    assert_eq!(detector.sweep(&config, back), [host]);
    // Two healthy intervals bring the multiplier from 2 to 0.
    detector.sweep(&config, back + Duration::from_secs(10));
    detector.sweep(&config, back + Duration::from_secs(20));
    let later = back + Duration::from_secs(25);
    detector.try_eject(&config, host, 1, later, EjectionReason::Consecutive5xx);
    assert_eq!(
        detector.ejected_until(host),
        Some(later + Duration::from_secs(30))
    );
}

#[test]
fn sweep_does_not_decay_before_a_full_healthy_interval() {
    let config = config();
    let host = addr("10.0.0.1:80");
    let mut detector = Detector::default();
    let start = Instant::now();
    detector.try_eject(&config, host, 1, start, EjectionReason::Consecutive5xx);
    let back = start + Duration::from_secs(30);
    detector.sweep(&config, back);
    detector.sweep(&config, back + Duration::from_secs(5));
    let again = back + Duration::from_secs(6);
    detector.try_eject(&config, host, 1, again, EjectionReason::Consecutive5xx);
    assert_eq!(
        detector.ejected_until(host),
        Some(again + Duration::from_secs(60))
    );
}

#[test]
fn max_ejection_percent_counts_the_ejection_being_made() {
    let now = Instant::now();
    let eject = |detector: &mut Detector, config: &OutlierConfig, i: usize, hosts: usize| {
        let host = addr(&format!("10.0.0.{i}:80"));
        detector.try_eject(config, host, hosts, now, EjectionReason::Consecutive5xx)
    };
    // The default 10 %: 10 endpoints allow one ejection, fewer allow none.
    let default = OutlierConfig::default();
    let mut detector = Detector::default();
    assert!(eject(&mut detector, &default, 1, 10));
    assert!(!eject(&mut detector, &default, 2, 10));
    let mut small = Detector::default();
    assert!(!eject(&mut small, &default, 1, 9));
    assert_eq!(small.stats().ejections_overflow, 1);
    // 50 % of 4: two.
    let half = OutlierConfig {
        max_ejection_percent: 50,
        ..default
    };
    let mut detector = Detector::default();
    let ejected: Vec<bool> = (1..=4).map(|i| eject(&mut detector, &half, i, 4)).collect();
    assert_eq!(ejected, [true, true, false, false]);
    assert_eq!(detector.stats().ejections_active, 2);
    assert_eq!(detector.stats().ejections_overflow, 2);
}

#[test]
fn an_ejected_endpoint_is_not_ejected_twice_and_removed_ones_are_forgotten() {
    let config = config();
    let now = Instant::now();
    let (a, b) = (addr("10.0.0.1:80"), addr("10.0.0.2:80"));
    let mut detector = Detector::default();
    assert!(detector.try_eject(&config, a, 2, now, EjectionReason::Consecutive5xx));
    assert!(!detector.try_eject(&config, a, 2, now, EjectionReason::ConsecutiveGatewayErrors));
    assert!(detector.try_eject(&config, b, 2, now, EjectionReason::Consecutive5xx));
    assert_eq!(
        detector.next_readmission(),
        Some(now + Duration::from_secs(30))
    );
    detector.retain(|addr| addr == b);
    assert_eq!(detector.ejected_count(), 1);
    assert!(!detector.is_ejected(a));
    assert!(detector.is_ejected(b));
}
