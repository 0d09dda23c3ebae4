//! L4 policy decisions on policies written the way users write them (YAML): the fixtures
//! here, the tests by topic in the submodules.

mod decisions;
mod l7;
mod peer_authentication;
mod sources;

use std::net::IpAddr;
use std::sync::Arc;

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
