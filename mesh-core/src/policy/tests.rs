//! L4 policy decisions on policies written the way users write them (YAML).

use std::net::IpAddr;
use std::sync::Arc;

use super::matching::{IpBlock, string_match};
use super::*;
use crate::config::istio::PeerAuthentication;

fn policy(yaml: &str) -> Arc<AuthorizationPolicy> {
    Arc::new(serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}")))
}

fn peer_auth(yaml: &str) -> Option<Arc<PeerAuthentication>> {
    Some(Arc::new(
        serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}")),
    ))
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

fn sleep() -> Identity {
    Identity::new("cluster.local", "default", "sleep")
}

/// `source_ip` (with `identity`, or plaintext) connecting to 10.0.1.5:`port`.
fn conn<'a>(identity: Option<&'a Identity>, source_ip: &str, port: u16) -> Connection<'a> {
    Connection {
        source_identity: identity,
        source_ip: ip(source_ip),
        destination_ip: ip("10.0.1.5"),
        destination_port: port,
        destination_namespace: Some("shop"),
        request: None,
    }
}

fn allowed(policies: &[Arc<AuthorizationPolicy>], conn: &Connection<'_>) -> bool {
    authorize(policies, conn).is_allowed()
}

const ALLOW_SLEEP: &str = "
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: allow-sleep, namespace: shop}
    spec:
      action: ALLOW
      rules:
      - from:
        - source:
            principals: [cluster.local/ns/default/sa/sleep]
";

#[test]
fn no_policies_allow_everything() {
    let d = authorize(&[], &conn(None, "10.0.0.9", 80));
    assert_eq!(d.verdict, Verdict::AllowedByDefault);
    assert!(d.is_allowed());
    assert!(d.warnings.is_empty());
}

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
fn deny_beats_allow() {
    let policies = [
        policy(ALLOW_SLEEP),
        policy(
            "
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: deny-port-9000, namespace: shop}
            spec:
              action: DENY
              rules:
              - to:
                - operation: {ports: ['9000']}
            ",
        ),
    ];
    let sleep = sleep();
    assert!(allowed(&policies, &conn(Some(&sleep), "10.0.0.9", 80)));
    let d = authorize(&policies, &conn(Some(&sleep), "10.0.0.9", 9000));
    assert_eq!(
        d.verdict,
        Verdict::Denied {
            policy: "shop/deny-port-9000".into()
        }
    );
}

#[test]
fn an_unmatched_allow_policy_denies_by_default_and_names_the_policies() {
    let policies = [
        policy(ALLOW_SLEEP),
        policy(
            "
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: allow-metrics, namespace: istio-system}
            spec:
              rules:
              - to:
                - operation: {ports: ['15020']}
            ",
        ),
    ];
    let curl = Identity::new("cluster.local", "default", "curl");
    let d = authorize(&policies, &conn(Some(&curl), "10.0.0.9", 80));
    assert!(!d.is_allowed());
    assert_eq!(
        d.to_string(),
        "denied: no ALLOW policy matched (shop/allow-sleep, istio-system/allow-metrics apply)"
    );
    assert!(allowed(&policies, &conn(Some(&curl), "10.0.0.9", 15020)));
}

#[test]
fn ports_and_not_ports_match_the_destination_port() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: ports, namespace: shop}
        spec:
          rules:
          - to:
            - operation: {ports: ['8080', '8443']}
          - to:
            - operation: {notPorts: ['8080', '8443', '22']}
            from:
            - source: {namespaces: [ops]}
        ",
    )];
    let ops = Identity::new("cluster.local", "ops", "admin");
    let sleep = sleep();
    assert!(allowed(&policies, &conn(Some(&sleep), "10.0.0.9", 8080)));
    assert!(allowed(&policies, &conn(None, "10.0.0.9", 8443)));
    assert!(!allowed(&policies, &conn(Some(&sleep), "10.0.0.9", 9090)));
    assert!(allowed(&policies, &conn(Some(&ops), "10.0.0.9", 9090)));
    assert!(!allowed(&policies, &conn(Some(&ops), "10.0.0.9", 22)));
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

#[test]
fn allow_without_rules_matches_nothing_and_an_empty_rule_matches_everything() {
    let no_rules = policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: allow-nothing, namespace: shop}
        spec: {action: ALLOW}
        ",
    );
    let empty_rule = policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: allow-all, namespace: shop}
        spec:
          rules: [{}]
        ",
    );
    let c = conn(None, "10.0.0.9", 80);
    assert!(!allowed(std::slice::from_ref(&no_rules), &c));
    assert!(allowed(std::slice::from_ref(&empty_rule), &c));
    assert!(allowed(&[no_rules, empty_rule], &c));
}

#[test]
fn deny_without_rules_matches_nothing_and_an_empty_rule_denies_everything() {
    let no_rules = policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-nothing, namespace: shop}
        spec: {action: DENY}
        ",
    );
    let empty_rule = policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-all, namespace: shop}
        spec:
          action: DENY
          rules: [{}]
        ",
    );
    let sleep = sleep();
    let c = conn(Some(&sleep), "10.0.0.9", 80);
    assert_eq!(
        authorize(std::slice::from_ref(&no_rules), &c).verdict,
        Verdict::AllowedByDefault
    );
    assert_eq!(
        authorize(&[no_rules, empty_rule], &c).verdict,
        Verdict::Denied {
            policy: "shop/deny-all".into()
        }
    );
}

#[test]
fn an_allow_rule_needing_l7_never_matches_at_l4_and_is_reported() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: get-only, namespace: shop}
        spec:
          rules:
          - from:
            - source: {principals: [cluster.local/ns/default/sa/sleep]}
            to:
            - operation: {methods: [GET], paths: ['/api/*']}
          - when:
            - key: request.headers[x-debug]
              values: ['1']
        ",
    )];
    let d = authorize(&policies, &conn(Some(&sleep()), "10.0.0.9", 80));
    assert_eq!(
        d.verdict,
        Verdict::NotAllowed {
            policies: vec!["shop/get-only".into()]
        }
    );
    let warnings: Vec<String> = d.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "AuthorizationPolicy shop/get-only: rules[0] uses methods, paths, which need L7 \
             processing (a waypoint); at L4 this ALLOW rule never matches",
            "AuthorizationPolicy shop/get-only: rules[1] uses request.headers[x-debug], which \
             need L7 processing (a waypoint); at L4 this ALLOW rule never matches",
        ]
    );
}

#[test]
fn a_deny_rule_needing_l7_is_enforced_on_its_l4_parts() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: no-posts-from-batch, namespace: shop}
        spec:
          action: DENY
          rules:
          - from:
            - source: {namespaces: [batch], requestPrincipals: ['*']}
            to:
            - operation: {methods: [POST]}
        ",
    )];
    let batch = Identity::new("cluster.local", "batch", "job");
    let d = authorize(&policies, &conn(Some(&batch), "10.0.0.9", 80));
    assert_eq!(
        d.verdict,
        Verdict::Denied {
            policy: "shop/no-posts-from-batch".into()
        },
        "the namespace alone decides at L4: more restrictive than written"
    );
    assert!(
        d.warnings[0]
            .message
            .contains("this DENY rule is enforced without them")
    );
    assert!(allowed(&policies, &conn(Some(&sleep()), "10.0.0.9", 80)));
}

#[test]
fn a_deny_rule_of_only_l7_attributes_denies_every_connection() {
    // Fail closed: ztunnel would skip the empty match group and let everything through.
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: no-delete, namespace: shop}
        spec:
          action: DENY
          rules:
          - to:
            - operation: {methods: [DELETE]}
        ",
    )];
    assert_eq!(
        authorize(&policies, &conn(None, "10.0.0.9", 80)).to_string(),
        "denied by DENY policy shop/no-delete"
    );
}

#[test]
fn remote_ip_blocks_need_l7_as_in_ambient_istio() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: by-remote-ip, namespace: shop}
        spec:
          rules:
          - from:
            - source: {remoteIpBlocks: [10.0.0.0/8]}
        ",
    )];
    let d = authorize(&policies, &conn(None, "10.0.0.9", 80));
    assert!(!d.is_allowed());
    assert!(
        d.warnings[0]
            .message
            .starts_with("rules[0] uses remoteIpBlocks")
    );
}

#[test]
fn audit_policies_do_not_change_the_decision() {
    let audit = policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: audit-all, namespace: shop}
        spec:
          action: AUDIT
          rules: [{}]
        ",
    );
    let c = conn(None, "10.0.0.9", 80);
    let d = authorize(std::slice::from_ref(&audit), &c);
    assert_eq!(d.verdict, Verdict::AllowedByDefault);
    assert!(d.warnings.is_empty());
    assert!(!allowed(&[audit, policy(ALLOW_SLEEP)], &c));
}

#[test]
fn custom_policies_are_reported_and_not_enforced() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: ext-authz, namespace: shop}
        spec:
          action: CUSTOM
          provider: {name: my-authz}
          rules: [{}]
        ",
    )];
    let d = authorize(&policies, &conn(None, "10.0.0.9", 80));
    assert_eq!(d.verdict, Verdict::AllowedByDefault);
    assert_eq!(
        d.warnings,
        [Warning {
            policy: "shop/ext-authz".into(),
            message: "action CUSTOM (provider \"my-authz\") is not supported by the node proxy; \
                      the policy is not enforced"
                .into(),
        }]
    );
}

#[test]
fn when_conditions_on_source_ip_and_destination_port() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: when-l4, namespace: shop}
        spec:
          rules:
          - when:
            - key: source.ip
              values: [10.0.0.0/24]
              notValues: [10.0.0.13]
            - key: destination.port
              values: ['8080']
        ",
    )];
    assert!(allowed(&policies, &conn(None, "10.0.0.9", 8080)));
    assert!(!allowed(&policies, &conn(None, "10.0.0.13", 8080)));
    assert!(!allowed(&policies, &conn(None, "10.0.1.9", 8080)));
    assert!(!allowed(&policies, &conn(None, "10.0.0.9", 9090)));
    assert!(
        authorize(&policies, &conn(None, "10.0.0.9", 8080))
            .warnings
            .is_empty()
    );
}

#[test]
fn when_conditions_on_identity_and_destination_ip() {
    let policies = [policy(
        "
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: when-identity, namespace: shop}
        spec:
          rules:
          - when:
            - key: source.principal
              values: ['cluster.local/ns/default/*']
            - key: source.namespace
              notValues: [kube-system]
            - key: destination.ip
              values: [10.0.1.0/24]
        ",
    )];
    let sleep = sleep();
    assert!(allowed(&policies, &conn(Some(&sleep), "10.0.0.9", 80)));
    assert!(!allowed(&policies, &conn(None, "10.0.0.9", 80)));
    let c = Connection {
        destination_ip: ip("10.0.2.5"),
        ..conn(Some(&sleep), "10.0.0.9", 80)
    };
    assert!(!allowed(&policies, &c));
}

const WORKLOAD_PA: &str = "
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: httpbin, namespace: shop}
    spec:
      selector: {matchLabels: {app: httpbin}}
      mtls: {mode: STRICT}
      portLevelMtls:
        '8080': {mode: PERMISSIVE}
        '9090': {mode: UNSET}
";

#[test]
fn mtls_defaults_to_permissive_when_nothing_is_set() {
    let m = mtls_mode(&PeerAuthentications::default(), 80);
    assert_eq!(m.mode, PeerMode::Permissive);
    assert!(m.accepts_plaintext());
    assert_eq!(m.decided_by, None);
    assert_eq!(
        m.to_string(),
        "PERMISSIVE (default: no PeerAuthentication sets a mode)"
    );
}

#[test]
fn mtls_port_level_setting_beats_the_workload_mode() {
    let policies = PeerAuthentications {
        workload: peer_auth(WORKLOAD_PA),
        ..Default::default()
    };
    let on_8080 = mtls_mode(&policies, 8080);
    assert_eq!(on_8080.mode, PeerMode::Permissive);
    assert!(on_8080.port_level);
    assert_eq!(
        on_8080.to_string(),
        "PERMISSIVE (PeerAuthentication shop/httpbin, portLevelMtls)"
    );
    let on_80 = mtls_mode(&policies, 80);
    assert_eq!(on_80.mode, PeerMode::Strict);
    assert!(!on_80.accepts_plaintext());
    assert_eq!(on_80.decided_by.as_deref(), Some("shop/httpbin"));
    assert_eq!(
        mtls_mode(&policies, 9090).mode,
        PeerMode::Strict,
        "a port-level UNSET inherits the workload mode"
    );
}

#[test]
fn mtls_unset_inherits_from_namespace_then_mesh() {
    let namespace_unset = peer_auth(
        "
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: default, namespace: shop}
        spec:
          mtls: {mode: UNSET}
        ",
    );
    let mesh_strict = peer_auth(
        "
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: default, namespace: istio-system}
        spec:
          mtls: {mode: STRICT}
        ",
    );
    let workload_ports_only = peer_auth(
        "
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: httpbin, namespace: shop}
        spec:
          selector: {matchLabels: {app: httpbin}}
          portLevelMtls:
            '8080': {mode: DISABLE}
        ",
    );
    let policies = PeerAuthentications {
        workload: workload_ports_only,
        namespace: namespace_unset,
        mesh: mesh_strict,
    };
    let on_80 = mtls_mode(&policies, 80);
    assert_eq!(on_80.mode, PeerMode::Strict);
    assert_eq!(on_80.decided_by.as_deref(), Some("istio-system/default"));

    let on_8080 = mtls_mode(&policies, 8080);
    assert_eq!(on_8080.mode, PeerMode::Disable);
    assert!(
        on_8080.accepts_plaintext(),
        "DISABLE takes plaintext like PERMISSIVE"
    );
    assert_eq!(on_8080.decided_by.as_deref(), Some("shop/httpbin"));
}

#[test]
fn mtls_namespace_mode_beats_the_mesh_mode() {
    let policies = PeerAuthentications {
        workload: None,
        namespace: peer_auth(
            "
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: default, namespace: shop}
            spec:
              mtls: {mode: PERMISSIVE}
            ",
        ),
        mesh: peer_auth(
            "
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: default, namespace: istio-system}
            spec:
              mtls: {mode: STRICT}
            ",
        ),
    };
    let m = mtls_mode(&policies, 80);
    assert_eq!(m.mode, PeerMode::Permissive);
    assert_eq!(m.decided_by.as_deref(), Some("shop/default"));
}

/// A request at a waypoint from `identity`.
fn request<'a>(
    identity: Option<&'a Identity>,
    method: &'a str,
    path: &'a str,
    headers: &'a http::HeaderMap,
) -> Connection<'a> {
    Connection {
        request: Some(crate::policy::HttpRequest {
            method,
            path,
            host: "productpage:9080",
            headers,
        }),
        ..conn(identity, "10.0.2.7", 9080)
    }
}

#[test]
fn at_a_waypoint_methods_paths_and_hosts_decide() {
    let viewer = policy(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-viewer, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: productpage}]
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/productpage", "/static/*"], hosts: ["productpage"]}}]
"#,
    );
    let headers = http::HeaderMap::new();
    let id = sleep();
    let policies = [viewer];
    let decide = |c: &Connection<'_>| authorize(&policies, c);
    assert!(decide(&request(Some(&id), "GET", "/productpage", &headers)).is_allowed());
    assert!(decide(&request(Some(&id), "GET", "/static/app.js", &headers)).is_allowed());
    assert!(!decide(&request(Some(&id), "DELETE", "/productpage", &headers)).is_allowed());
    assert!(!decide(&request(Some(&id), "GET", "/api/v1", &headers)).is_allowed());
    assert!(!decide(&request(None, "GET", "/productpage", &headers)).is_allowed());
    // The same policy at L4 (no request): an ALLOW rule with L7 attributes never matches.
    let at_l4 = decide(&conn(Some(&id), "10.0.2.7", 9080));
    assert!(!at_l4.is_allowed());
    assert!(
        at_l4.warnings.iter().any(|w| w.message.contains("methods")),
        "{:?}",
        at_l4.warnings
    );
    // At the waypoint nothing is reported for it.
    assert!(
        decide(&request(Some(&id), "GET", "/productpage", &headers))
            .warnings
            .is_empty()
    );
}

#[test]
fn at_a_waypoint_header_conditions_and_deny_rules_apply_as_written() {
    let deny = policy(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
  - when: [{key: "request.headers[x-debug]", values: ["on"]}]
"#,
    );
    let id = sleep();
    let plain = http::HeaderMap::new();
    let mut debug = http::HeaderMap::new();
    debug.insert("x-debug", http::HeaderValue::from_static("on"));
    let policies = [deny];
    let decide = |c: &Connection<'_>| authorize(&policies, c);
    // At L4 the DENY rule would deny everything (its L4 part is empty); at the waypoint it
    // denies only what it names.
    assert!(decide(&request(Some(&id), "GET", "/productpage", &plain)).is_allowed());
    assert!(!decide(&request(Some(&id), "GET", "/admin/users", &plain)).is_allowed());
    assert!(!decide(&request(Some(&id), "GET", "/productpage", &debug)).is_allowed());
}

#[test]
fn jwt_attributes_never_match_at_a_waypoint_and_are_reported() {
    let jwt = policy(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-only, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
"#,
    );
    let id = sleep();
    let headers = http::HeaderMap::new();
    let decision = authorize(&[jwt], &request(Some(&id), "GET", "/", &headers));
    assert!(!decision.is_allowed());
    assert!(
        decision
            .warnings
            .iter()
            .any(|w| w.message.contains("requestPrincipals")),
        "{:?}",
        decision.warnings
    );
}
