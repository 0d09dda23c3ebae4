//! L4 at the waypoint: a tunnel for a port that is not HTTP. The VirtualService `tcp` routes
//! pick a weighted destination (else the service itself); the DestinationRule's upstream
//! picks the endpoint and limits connections; bytes are copied both ways with half-close.

use std::sync::Arc;

use mesh_core::config::labels::NO_LABELS;
use mesh_core::hbone::Tunnel;

use crate::metrics::{Overflow as OverflowMetric, RequestLabels};
use crate::route::{Source, TcpFacts};
use crate::server::Stream;
use crate::upstream::{HashInput, Outcome};

/// Serves one TCP connection.
pub async fn serve(stream: Arc<Stream>, mut tunnel: Tunnel) {
    let waypoint = &stream.waypoint;
    let model = waypoint.model();
    let client = &stream.client;
    let client_ns = client.identity.namespace.as_str();
    let facts = TcpFacts {
        destination_port: stream.port,
        destination_ip: None,
        source: Source {
            namespace: Some(client_ns),
            labels: client.pod.as_ref().map_or(&NO_LABELS, |p| &p.labels),
            ip: client.ip,
        },
    };
    if crate::authz::decide(&stream, &model, None).is_some_and(|d| !d.is_allowed()) {
        return;
    }
    let table = waypoint
        .destinations
        .routes(&model, &stream.service.hostname, client_ns);
    let (host, subset, port) = match table.route_tcp(&facts) {
        Some(decision) => {
            let target = decision.pick(&mut rand::rng());
            (
                target.host.clone(),
                target.subset.clone(),
                target.port.unwrap_or(stream.port),
            )
        }
        None => (stream.service.hostname.clone(), None, stream.port),
    };
    let upstream =
        match waypoint
            .destinations
            .upstream(&model, &host, subset.as_deref(), port, client_ns)
        {
            Ok(upstream) => upstream,
            Err(error) => {
                tracing::warn!(%host, ?subset, %error, "TCP route has no upstream");
                return;
            }
        };
    let cluster = upstream.key().to_string();
    let headers = http::HeaderMap::new();
    let input = HashInput {
        headers: &headers,
        query: None,
        source_ip: client.ip,
    };
    let Ok(pick) = upstream.pick(&input, &mut rand::rng()) else {
        tracing::info!(%cluster, "no healthy endpoint for a TCP connection");
        return;
    };
    let Ok(_slot) = upstream.pool().try_acquire_connection() else {
        waypoint
            .metrics
            .overflow(&cluster, OverflowMetric::Connections);
        return;
    };
    let endpoint = pick.endpoint().endpoint().clone();
    let connect_timeout = upstream.policy().connection_pool.connect_timeout;
    // Boxed: what connecting takes is given back before the connection's long life.
    let mut upstream_io = match Box::pin(waypoint.destinations.connect(
        &model,
        endpoint.addr,
        endpoint.pod.as_deref(),
        client.ip,
        connect_timeout,
    ))
    .await
    {
        Ok(io) => io,
        Err(error) => {
            if upstream.record(pick.endpoint(), Outcome::ConnectFailed) {
                waypoint.metrics.ejected(&cluster);
            }
            tracing::debug!(%cluster, %error, "TCP upstream connect failed");
            return;
        }
    };
    let labels = labels(&stream, endpoint.pod.as_deref());
    waypoint.metrics.tcp_opened(&labels);
    let copied = mesh_core::copy::with_tunnel(&mut tunnel, &mut upstream_io).await;
    let (received, sent) = copied.as_ref().map_or((0, 0), |c| *c);
    waypoint.metrics.tcp_closed(&labels, received, sent);
}

fn labels(stream: &Stream, destination: Option<&mesh_core::config::PodInfo>) -> RequestLabels {
    RequestLabels {
        request_protocol: "tcp",
        response_flags: "-".to_owned(),
        ..crate::http::peer_labels(stream, destination)
    }
}
