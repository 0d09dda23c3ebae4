//! How policies decide together: no policy, DENY before ALLOW, default deny, policies
//! without rules or with an empty rule, AUDIT and CUSTOM; and the destination-side
//! `ports` and `when` conditions.

use super::*;

#[test]
fn no_policies_allow_everything() {
    let d = authorize(&[], &conn(None, "10.0.0.9", 80));
    assert_eq!(d.verdict, Verdict::AllowedByDefault);
    assert!(d.is_allowed());
    assert!(d.warnings.is_empty());
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
