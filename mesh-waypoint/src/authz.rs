//! AuthorizationPolicy at the waypoint: the policies attached to the destination Service
//! (`targetRefs` kind Service) and to the waypoint itself (kind Gateway), evaluated with
//! Istio's semantics by `mesh_core::policy` — on each HTTP request with its method, path,
//! host and headers, or on a TCP connection at L4. Selector-based policies stay with the
//! destination's node proxy (L4), as in Istio's ambient mode.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use mesh_core::config::istio::AuthorizationPolicy;
use mesh_core::config::{Model, Name};
use mesh_core::policy::{self, Connection, Decision, HttpRequest};

use crate::server::Stream;

/// The policies that apply to traffic for this stream's service through this waypoint.
pub fn policies(stream: &Stream, model: &Model) -> Vec<Arc<AuthorizationPolicy>> {
    let config = &stream.waypoint.config;
    let mut policies = model.authorization_policies_for_service(&stream.service);
    policies.extend(
        model.authorization_policies_for_waypoint(&Name::new(&config.namespace, &config.name)),
    );
    policies
}

/// Decides one request (or, with `request` `None`, one TCP connection). `None` when no
/// policy applies (nothing to decide: allowed).
pub fn decide(
    stream: &Stream,
    model: &Arc<Model>,
    request: Option<HttpRequest<'_>>,
) -> Option<Decision> {
    let policies = stream.cache.policies(model, || policies(stream, model));
    if policies.is_empty() {
        return None;
    }
    let client = &stream.client;
    let connection = Connection {
        source_identity: Some(&client.identity),
        source_ip: client.ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        destination_ip: stream
            .service
            .cluster_ips
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        destination_port: stream.port,
        destination_namespace: Some(&stream.service.name.namespace),
        request,
    };
    let decision = policy::authorize(&policies, &connection);
    for warning in &decision.warnings {
        tracing::debug!(%warning, "authorization");
    }
    if !decision.is_allowed() {
        tracing::info!(
            client = %client.identity,
            service = %stream.service.hostname,
            method = request.map(|r| r.method),
            path = request.map(|r| r.path),
            verdict = %decision.verdict,
            "request refused by AuthorizationPolicy"
        );
    }
    Some(decision)
}
