//! The balancers on their own: hash, ring stability, round robin, random, least request,
//! hash keys and the cookie header.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::upstream::endpoints::{Snapshot, UpstreamEndpoint};
use crate::upstream::testing::endpoints;

fn snapshot(n: usize) -> Snapshot {
    let endpoints = endpoints(n)
        .into_iter()
        .map(|e| Arc::new(UpstreamEndpoint::new(e)))
        .collect();
    Snapshot::build(endpoints, None, |_| false, 0)
}

fn addrs(n: usize) -> Vec<SocketAddr> {
    (1..=n)
        .map(|i| format!("10.0.0.{i}:9080").parse().unwrap())
        .collect()
}

fn key_hashes(count: usize) -> Vec<u64> {
    (0..count)
        .map(|i| xxh64(format!("user-{i}").as_bytes(), 0))
        .collect()
}

#[test]
fn xxh64_matches_the_reference_implementation() {
    // Values from libxxhash's XXH64 (the library Envoy links).
    assert_eq!(xxh64(b"", 0), 0xef46_db37_51d8_e999);
    assert_eq!(xxh64(b"a", 0), 0xd24e_c4f1_a98c_6e5b);
    assert_eq!(xxh64(b"abc", 0), 0x44bc_2cf5_ad77_0999);
    assert_eq!(xxh64(b"10.0.0.1:9080_0", 0), 0x9cb4_14e8_3995_77bc);
    let long = b"Nobody inspects the spammish repetition";
    assert_eq!(xxh64(long, 0), 0xfbce_a83c_8a37_8bf1);
    assert_eq!(xxh64(long, 20141025), 0xce06_9361_3685_2706);
}

#[test]
fn ring_has_at_least_the_minimum_size_and_spreads_keys_evenly() {
    let ring = Ring::build(&addrs(5), 1024);
    assert!(ring.len() >= 1024, "{}", ring.len());
    let mut share = [0usize; 5];
    for hash in key_hashes(20_000) {
        share[ring.lookup(hash, |_| true).unwrap()] += 1;
    }
    for count in share {
        // 20 % each, within a few points.
        assert!((3_000..5_000).contains(&count), "{share:?}");
    }
}

#[test]
fn adding_an_endpoint_moves_only_the_keys_it_takes() {
    let before = Ring::build(&addrs(10), 1024);
    let after = Ring::build(&addrs(11), 1024); // the new endpoint is index 10
    let keys = key_hashes(20_000);
    let mut moved = 0;
    for &hash in &keys {
        let old = before.lookup(hash, |_| true).unwrap();
        let new = after.lookup(hash, |_| true).unwrap();
        if old != new {
            assert_eq!(new, 10, "a key moved between two old endpoints");
            moved += 1;
        }
    }
    // About 1/11 of the keys (9.1 %).
    let fraction = moved as f64 / keys.len() as f64;
    assert!((0.06..0.125).contains(&fraction), "{fraction}");
}

#[test]
fn removing_an_endpoint_moves_only_its_keys() {
    let all = addrs(12);
    let before = Ring::build(&all, 1024);
    let without: Vec<_> = all.iter().copied().filter(|a| *a != all[4]).collect();
    let after = Ring::build(&without, 1024);
    for hash in key_hashes(5_000) {
        let old = all[before.lookup(hash, |_| true).unwrap()];
        let new = without[after.lookup(hash, |_| true).unwrap()];
        if old != all[4] {
            assert_eq!(old, new, "a key of a remaining endpoint moved");
        }
    }
}

#[test]
fn skipping_an_endpoint_on_the_ring_equals_a_ring_without_it() {
    let all = addrs(10);
    let ring = Ring::build(&all, 1024);
    let without: Vec<_> = all.iter().copied().filter(|a| *a != all[3]).collect();
    let smaller = Ring::build(&without, 1024);
    for hash in key_hashes(5_000) {
        let skipping = all[ring.lookup(hash, |i| i != 3).unwrap()];
        assert_eq!(skipping, without[smaller.lookup(hash, |_| true).unwrap()]);
    }
    assert_eq!(ring.lookup(1, |_| false), None);
}

#[test]
fn round_robin_cycles_through_every_endpoint_evenly() {
    let snapshot = snapshot(3);
    let counter = AtomicUsize::new(7);
    let picks: Vec<usize> = (0..300)
        .map(|_| round_robin(&snapshot, &counter).unwrap())
        .collect();
    for cycle in picks.chunks(3) {
        let mut sorted = cycle.to_vec();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2], "each cycle visits every endpoint once");
    }
}

#[test]
fn random_spreads_uniformly() {
    let snapshot = snapshot(4);
    let mut rng = StdRng::seed_from_u64(7);
    let mut counts = [0usize; 4];
    for _ in 0..8_000 {
        counts[random(&snapshot, &mut rng).unwrap()] += 1;
    }
    for count in counts {
        assert!((1_800..2_200).contains(&count), "{counts:?}");
    }
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let snapshot = snapshot(2);
    for _ in 0..5 {
        snapshot.endpoints[0].start_request();
    }
    let mut rng = StdRng::seed_from_u64(11);
    let idle = (0..4_000)
        .filter(|_| least_request(&snapshot, &mut rng) == Some(1))
        .count();
    // Two draws: the busy endpoint wins only when both draws are it (1 in 4).
    let share = idle as f64 / 4_000.0;
    assert!((0.72..0.78).contains(&share), "{share}");
    // Equally busy: both are used.
    for _ in 0..5 {
        snapshot.endpoints[1].start_request();
    }
    let second = (0..4_000)
        .filter(|_| least_request(&snapshot, &mut rng) == Some(1))
        .count();
    assert!((1_800..2_200).contains(&second), "{second}");
}

#[test]
fn balancers_only_use_available_endpoints() {
    let endpoints: Vec<_> = endpoints(4)
        .into_iter()
        .map(|e| Arc::new(UpstreamEndpoint::new(e)))
        .collect();
    let ejected = endpoints[2].addr();
    let snapshot = Snapshot::build(endpoints, None, |a| a == ejected, 0);
    let mut rng = StdRng::seed_from_u64(3);
    let counter = AtomicUsize::new(0);
    for _ in 0..200 {
        assert_ne!(round_robin(&snapshot, &counter), Some(2));
        assert_ne!(random(&snapshot, &mut rng), Some(2));
        assert_ne!(least_request(&snapshot, &mut rng), Some(2));
    }
    let empty = Snapshot::build(Vec::new(), None, |_| false, 0);
    assert_eq!(round_robin(&empty, &counter), None);
    assert_eq!(random(&empty, &mut rng), None);
    assert_eq!(least_request(&empty, &mut rng), None);
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

#[test]
fn header_key_hashes_the_value() {
    let key = HashKey::Header(HeaderName::from_static("x-user"));
    let alice = headers(&[("x-user", "alice")]);
    let bob = headers(&[("x-user", "bob")]);
    let hash = |h: &HeaderMap| key.hash(&HashInput::new(h));
    assert_eq!(hash(&alice), hash(&headers(&[("x-user", "alice")])));
    assert_ne!(hash(&alice), hash(&bob));
    assert_eq!(hash(&headers(&[("x-other", "alice")])), None);
    // Several values: order does not matter.
    assert_eq!(
        hash(&headers(&[("x-user", "a"), ("x-user", "b")])),
        hash(&headers(&[("x-user", "b"), ("x-user", "a")]))
    );
}

#[test]
fn cookie_key_reads_the_named_cookie() {
    let key = HashKey::Cookie(CookieKey {
        name: "session".into(),
        path: None,
        ttl: None,
        attributes: Vec::new(),
    });
    let plain = headers(&[("cookie", "theme=dark; session=abc123")]);
    let quoted = headers(&[("cookie", "theme=dark"), ("cookie", "session=\"abc123\"")]);
    let hash = |h: &HeaderMap| key.hash(&HashInput::new(h));
    assert_eq!(hash(&plain), Some(xxh64(b"abc123", 0)));
    assert_eq!(hash(&quoted), hash(&plain));
    assert_eq!(hash(&headers(&[("cookie", "sessionx=abc")])), None);
    assert_eq!(cookie_value(&plain, "theme"), Some("dark"));
}

#[test]
fn query_and_source_ip_keys() {
    let empty = HeaderMap::new();
    let key = HashKey::QueryParameter("user".into());
    let input = |query| HashInput {
        headers: &empty,
        query,
        source_ip: None,
    };
    assert_eq!(
        key.hash(&input(Some("a=1&user=jason&user=other"))),
        Some(xxh64(b"jason", 0))
    );
    assert_eq!(key.hash(&input(Some("users=jason"))), None);
    assert_eq!(key.hash(&input(None)), None);
    let source = |ip: &str| HashInput {
        headers: &empty,
        query: None,
        source_ip: Some(ip.parse().unwrap()),
    };
    let by_ip = HashKey::SourceIp;
    assert_eq!(
        by_ip.hash(&source("10.1.0.7")),
        by_ip.hash(&source("10.1.0.7"))
    );
    assert_ne!(
        by_ip.hash(&source("10.1.0.7")),
        by_ip.hash(&source("10.1.0.8"))
    );
    assert_eq!(by_ip.hash(&HashInput::new(&empty)), None);
}

#[test]
fn generated_cookie_header_follows_envoy() {
    let key = CookieKey {
        name: "lb".into(),
        path: Some("/shop".into()),
        ttl: Some(Duration::from_secs(3600)),
        attributes: vec![
            ("SameSite".into(), Some("Lax".into())),
            ("Secure".into(), None),
        ],
    };
    let cookie = key.generate(&mut StdRng::seed_from_u64(1)).unwrap();
    assert_eq!(cookie.value.len(), 16);
    assert_eq!(
        cookie.to_string(),
        format!(
            "lb=\"{}\"; Max-Age=3600; Path=/shop; SameSite=Lax; Secure; HttpOnly",
            cookie.value
        )
    );
    // A zero (or sub-second) ttl makes a session cookie; no ttl generates nothing.
    let session = CookieKey {
        ttl: Some(Duration::from_millis(500)),
        path: None,
        ..key.clone()
    };
    let cookie = session.generate(&mut StdRng::seed_from_u64(1)).unwrap();
    assert_eq!(
        cookie.to_string(),
        format!("lb=\"{}\"; SameSite=Lax; Secure; HttpOnly", cookie.value)
    );
    let none = CookieKey { ttl: None, ..key };
    assert_eq!(none.generate(&mut StdRng::seed_from_u64(1)), None);
}
