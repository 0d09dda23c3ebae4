//! Consistent hashing through an upstream: stickiness, few keys moving when an endpoint is
//! added, generated cookies that lead back, keys of an ejected endpoint.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::no_headers;
use crate::upstream::testing::{addr, endpoints, upstream};
use crate::upstream::{HashInput, Outcome, Pick, Upstream};

fn hashing(key: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: reviews, namespace: shop}}\nspec:\n  host: reviews\n  trafficPolicy:\n    \
         loadBalancer:\n      consistentHash: {key}\n"
    )
}

fn pick_for(upstream: &Upstream, headers: &HeaderMap, rng: &mut StdRng) -> Pick {
    upstream.pick(&HashInput::new(headers), rng).unwrap()
}

#[test]
fn header_hashing_sticks_and_an_added_endpoint_moves_few_keys() {
    let upstream = upstream(&hashing("{httpHeaderName: x-user}"), endpoints(8));
    let mut rng = StdRng::seed_from_u64(2);
    let user = |i: usize| {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-user",
            HeaderValue::from_str(&format!("user-{i}")).unwrap(),
        );
        headers
    };
    let before: Vec<SocketAddr> = (0..2_000)
        .map(|i| pick_for(&upstream, &user(i), &mut rng).addr())
        .collect();
    for (i, chosen) in before.iter().enumerate().take(100) {
        for _ in 0..3 {
            assert_eq!(pick_for(&upstream, &user(i), &mut rng).addr(), *chosen);
        }
    }
    upstream.update_endpoints(endpoints(9));
    let added = addr("10.0.0.9:9080");
    let mut moved = 0;
    for (i, old) in before.iter().enumerate() {
        let new = pick_for(&upstream, &user(i), &mut rng).addr();
        if new != *old {
            assert_eq!(new, added, "keys move only to the new endpoint");
            moved += 1;
        }
    }
    // About 1/9 of the keys.
    assert!((120..330).contains(&moved), "{moved}");
}

#[test]
fn a_missing_cookie_is_generated_and_leads_back_to_the_same_endpoint() {
    let upstream = upstream(
        &hashing("{httpCookie: {name: lb, path: /, ttl: 3600s}}"),
        endpoints(5),
    );
    let mut rng = StdRng::seed_from_u64(4);
    let mut endpoints_seen = BTreeSet::new();
    for _ in 0..20 {
        let first = pick_for(&upstream, &no_headers(), &mut rng);
        let cookie = first.set_cookie().expect("a cookie to set").clone();
        assert_eq!(
            cookie.to_string(),
            format!("lb=\"{}\"; Max-Age=3600; Path=/; HttpOnly", cookie.value)
        );
        // The client sends it back.
        let mut headers = HeaderMap::new();
        headers.insert(
            "cookie",
            HeaderValue::from_str(&format!("lb=\"{}\"", cookie.value)).unwrap(),
        );
        for _ in 0..3 {
            let next = pick_for(&upstream, &headers, &mut rng);
            assert_eq!(next.addr(), first.addr());
            assert!(
                next.set_cookie().is_none(),
                "a present cookie is not set again"
            );
        }
        endpoints_seen.insert(first.addr());
    }
    assert!(
        endpoints_seen.len() > 1,
        "new clients spread over the endpoints"
    );
    // Without a ttl nothing is generated.
    let session = upstream_without_ttl();
    assert!(
        pick_for(&session, &no_headers(), &mut rng)
            .set_cookie()
            .is_none()
    );
}

fn upstream_without_ttl() -> Upstream {
    upstream(&hashing("{httpCookie: {name: lb}}"), endpoints(3))
}

#[tokio::test(start_paused = true)]
async fn hashed_keys_of_an_ejected_endpoint_move_and_come_back() {
    let yaml = format!(
        "{}    outlierDetection: {{consecutive5xxErrors: 1, maxEjectionPercent: 100}}\n",
        hashing("{useSourceIp: true}")
    );
    let upstream = upstream(&yaml, endpoints(4));
    let headers = no_headers();
    let mut rng = StdRng::seed_from_u64(8);
    let mut pick_ip = |i: u8| {
        let input = HashInput {
            headers: &headers,
            query: None,
            source_ip: Some(std::net::IpAddr::from([10, 1, 0, i])),
        };
        upstream.pick(&input, &mut rng).unwrap()
    };
    let before: Vec<SocketAddr> = (0..200).map(|i| pick_ip(i).addr()).collect();
    let victim = before[0];
    let endpoint = pick_ip(0);
    upstream.record(endpoint.endpoint(), Outcome::Status(500));
    drop(endpoint);
    let during: Vec<SocketAddr> = (0..200).map(|i| pick_ip(i).addr()).collect();
    for (old, new) in before.iter().zip(&during) {
        assert_ne!(*new, victim);
        if *old != victim {
            assert_eq!(old, new, "only the ejected endpoint's keys move");
        }
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    let after: Vec<SocketAddr> = (0..200).map(|i| pick_ip(i).addr()).collect();
    assert_eq!(after, before);
}
