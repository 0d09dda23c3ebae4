//! PeerAuthentication: the mTLS mode a port gets from the workload, namespace and mesh
//! policies and their port-level settings.

use super::*;

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
