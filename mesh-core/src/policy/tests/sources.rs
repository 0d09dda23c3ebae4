//! Who the peer is: principals, namespaces, service accounts, trust domains and source IP
//! blocks, and how their patterns and malformed values match.

use super::*;
use crate::policy::matching::{IpBlock, string_match};

#[test]
fn allow_by_exact_principal_admits_only_that_identity() {
    let policies = [policy(ALLOW_SLEEP)];
    let sleep = sleep();
    let other = Identity::new("cluster.local", "default", "curl");
    let d = authorize(&policies, &conn(Some(&sleep), "10.0.0.9", 80));
    assert_eq!(
        d.verdict,
        Verdict::Allowed {
            policy: "shop/allow-sleep".into()
        }
    );
    assert_eq!(d.to_string(), "allowed by ALLOW policy shop/allow-sleep");
    assert!(!allowed(&policies, &conn(Some(&other), "10.0.0.9", 80)));
}

#[test]
fn principal_prefix_suffix_and_presence_patterns_match_like_istio() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: patterns, namespace: shop}
        spec:
          rules:
          - from:
            - source: {principals: ['cluster.local/ns/team-*']}
            - source: {principals: ['*/sa/batch']}
        ",
    )];
    let team = Identity::new("cluster.local", "team-a", "web");
    let batch = Identity::new("other.td", "jobs", "batch");
    let stranger = Identity::new("cluster.local", "default", "web");
    assert!(allowed(&policies, &conn(Some(&team), "10.0.0.9", 80)));
    assert!(allowed(&policies, &conn(Some(&batch), "10.0.0.9", 80)));
    assert!(!allowed(&policies, &conn(Some(&stranger), "10.0.0.9", 80)));

    let any_peer = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: any-mtls, namespace: shop}
        spec:
          rules:
          - from:
            - source: {principals: ['*']}
        ",
    )];
    assert!(allowed(&any_peer, &conn(Some(&stranger), "10.0.0.9", 80)));
    assert!(
        !allowed(&any_peer, &conn(None, "10.0.0.9", 80)),
        "`*` needs an authenticated peer"
    );
}

#[test]
fn string_patterns_follow_istio_rules() {
    assert!(string_match("abc", "abc"));
    assert!(!string_match("abc", "abcd"));
    assert!(string_match("abc*", "abc"));
    assert!(string_match("abc*", "abcd"));
    assert!(string_match("*abc", "xabc"));
    assert!(!string_match("*abc", "abcx"));
    assert!(string_match("*", "x"));
    assert!(!string_match("*", ""));
}

#[test]
fn plaintext_source_never_matches_a_principal_rule() {
    let d = authorize(&[policy(ALLOW_SLEEP)], &conn(None, "10.0.0.9", 80));
    assert_eq!(
        d.verdict,
        Verdict::NotAllowed {
            policies: vec!["shop/allow-sleep".into()]
        }
    );
}

#[test]
fn allow_by_namespace_matches_the_peer_namespace() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: from-frontend, namespace: shop}
        spec:
          rules:
          - from:
            - source: {namespaces: [frontend, 'team-*']}
        ",
    )];
    let frontend = Identity::new("cluster.local", "frontend", "web");
    let team = Identity::new("cluster.local", "team-b", "web");
    assert!(allowed(&policies, &conn(Some(&frontend), "10.0.0.9", 80)));
    assert!(allowed(&policies, &conn(Some(&team), "10.0.0.9", 80)));
    assert!(!allowed(&policies, &conn(Some(&sleep()), "10.0.0.9", 80)));
    assert!(!allowed(&policies, &conn(None, "10.0.0.9", 80)));
}

#[test]
fn not_namespaces_excludes_listed_namespaces_and_admits_plaintext() {
    // As in ztunnel: a negative identity match holds when there is no identity to match.
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: not-untrusted, namespace: shop}
        spec:
          rules:
          - from:
            - source: {notNamespaces: [untrusted]}
        ",
    )];
    let untrusted = Identity::new("cluster.local", "untrusted", "web");
    assert!(!allowed(&policies, &conn(Some(&untrusted), "10.0.0.9", 80)));
    assert!(allowed(&policies, &conn(Some(&sleep()), "10.0.0.9", 80)));
    assert!(allowed(&policies, &conn(None, "10.0.0.9", 80)));
}

#[test]
fn deny_not_principals_any_rejects_plaintext_only() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: require-mtls, namespace: shop}
        spec:
          action: DENY
          rules:
          - from:
            - source: {notPrincipals: ['*']}
        ",
    )];
    let d = authorize(&policies, &conn(None, "10.0.0.9", 80));
    assert_eq!(d.to_string(), "denied by DENY policy shop/require-mtls");
    assert_eq!(
        authorize(&policies, &conn(Some(&sleep()), "10.0.0.9", 80)).verdict,
        Verdict::AllowedByDefault
    );
}

#[test]
fn service_accounts_without_namespace_mean_the_policy_namespace() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: by-sa, namespace: shop}
        spec:
          rules:
          - from:
            - source: {serviceAccounts: [waypoint, default/sleep]}
        ",
    )];
    let waypoint = Identity::new("cluster.local", "shop", "waypoint");
    let foreign_waypoint = Identity::new("cluster.local", "other", "waypoint");
    assert!(allowed(&policies, &conn(Some(&waypoint), "10.0.0.9", 80)));
    assert!(allowed(&policies, &conn(Some(&sleep()), "10.0.0.9", 80)));
    assert!(!allowed(
        &policies,
        &conn(Some(&foreign_waypoint), "10.0.0.9", 80)
    ));
    assert!(!allowed(&policies, &conn(None, "10.0.0.9", 80)));
}

#[test]
fn trust_domains_match_the_peer_trust_domain() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: by-td, namespace: shop}
        spec:
          rules:
          - from:
            - source: {trustDomains: ['*.example.com'], notTrustDomains: [evil.example.com]}
        ",
    )];
    let good = Identity::new("east.example.com", "default", "web");
    let evil = Identity::new("evil.example.com", "default", "web");
    assert!(allowed(&policies, &conn(Some(&good), "10.0.0.9", 80)));
    assert!(!allowed(&policies, &conn(Some(&evil), "10.0.0.9", 80)));
    assert!(!allowed(&policies, &conn(Some(&sleep()), "10.0.0.9", 80)));
}

#[test]
fn ip_blocks_match_single_ips_and_cidrs_in_both_families() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: by-ip, namespace: shop}
        spec:
          rules:
          - from:
            - source:
                ipBlocks: [10.0.0.0/16, 192.168.1.7, 'fd00:10::/32']
                notIpBlocks: [10.0.99.0/24]
        ",
    )];
    assert!(allowed(&policies, &conn(None, "10.0.3.4", 80)));
    assert!(allowed(&policies, &conn(None, "192.168.1.7", 80)));
    assert!(!allowed(&policies, &conn(None, "192.168.1.8", 80)));
    assert!(!allowed(&policies, &conn(None, "10.0.99.1", 80)));
    assert!(!allowed(&policies, &conn(None, "10.1.0.1", 80)));
    assert!(allowed(&policies, &conn(None, "fd00:10:1::5", 80)));
    assert!(!allowed(&policies, &conn(None, "fd00:11::5", 80)));
    assert!(
        allowed(&policies, &conn(None, "::ffff:10.0.3.4", 80)),
        "IPv4-mapped peers match IPv4 blocks"
    );
}

#[test]
fn ip_block_edges_parse_and_contain_like_cidr() {
    let all4 = IpBlock::parse("0.0.0.0/0").expect("valid");
    assert!(all4.contains(ip("203.0.113.4")));
    assert!(!all4.contains(ip("2001:db8::1")));
    let host_bits = IpBlock::parse("10.0.0.1/24").expect("valid");
    assert!(host_bits.contains(ip("10.0.0.200")));
    assert!(
        IpBlock::parse("2001:db8::1")
            .expect("valid")
            .contains(ip("2001:db8::1"))
    );
    assert!(
        !IpBlock::parse("2001:db8::1")
            .expect("valid")
            .contains(ip("2001:db8::2"))
    );
    assert_eq!(IpBlock::parse("10.0.0.0/33"), None);
    assert_eq!(IpBlock::parse("10.0.0/8"), None);
    assert_eq!(IpBlock::parse("::/129"), None);
}

#[test]
fn malformed_values_match_nothing_and_are_reported() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: typo, namespace: shop}
        spec:
          rules:
          - from:
            - source: {ipBlocks: [10.0.0.0/33]}
        ",
    )];
    let d = authorize(&policies, &conn(None, "10.0.0.1", 80));
    assert!(!d.is_allowed());
    assert_eq!(
        d.warnings[0].to_string(),
        "AuthorizationPolicy shop/typo: rules[0]: ipBlocks value \"10.0.0.0/33\" is not an IP \
         address or CIDR; it matches nothing"
    );
}
