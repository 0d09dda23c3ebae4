//! Istio's TCP metrics, with Istio's names and labels, served on 15020 at
//! `/stats/prometheus`: connections opened and closed, and bytes each way, per
//! (reporter, source workload, destination workload, ...). The node proxy reports
//! `reporter="source"` for connections its pods open and `reporter="destination"` for those
//! it delivers to its pods.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use mesh_core::config::{PodInfo, ServiceInfo};
use mesh_core::identity::Identity;

/// One connection's labels, as Istio's standard metrics define them.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// Istio's value for an unknown label.
const UNKNOWN: &str = "unknown";
/// The lab and a single cluster call themselves this, as Istio's default does.
const CLUSTER: &str = "Kubernetes";

fn principal(identity: Option<&Identity>) -> String {
    identity.map_or_else(|| UNKNOWN.to_owned(), ToString::to_string)
}

fn label(pod: Option<&PodInfo>, key: &str, fallback: impl FnOnce() -> String) -> String {
    pod.and_then(|p| p.labels.get(key).map(str::to_owned))
        .unwrap_or_else(fallback)
}

impl TcpLabels {
    /// The labels of a connection from `source` (its pod and its verified identity, each
    /// when known) to `destination` (through `service` when the client addressed one), over
    /// mutual TLS or not.
    pub fn new(
        reporter: &'static str,
        source: (Option<&PodInfo>, Option<&Identity>),
        destination: Option<(&PodInfo, &Identity)>,
        service: Option<&ServiceInfo>,
        mutual_tls: bool,
    ) -> TcpLabels {
        let (src_pod, src_id) = source;
        let (dst_pod, dst_id) = destination.map_or((None, None), |(p, i)| (Some(p), Some(i)));
        let unknown = || UNKNOWN.to_owned();
        TcpLabels {
            reporter,
            source_workload: src_pod.map_or_else(unknown, |p| p.workload.to_string()),
            source_workload_namespace: src_pod
                .map_or_else(unknown, |p| p.name.namespace.to_string()),
            source_principal: principal(src_id),
            source_app: label(src_pod, "app", unknown),
            source_version: label(src_pod, "version", unknown),
            source_canonical_service: src_pod
                .map_or_else(unknown, |p| p.canonical_service().to_owned()),
            source_canonical_revision: src_pod
                .map_or_else(unknown, |p| p.canonical_revision().to_owned()),
            source_cluster: CLUSTER.to_owned(),
            destination_service: service.map_or_else(unknown, |s| s.hostname.clone()),
            destination_service_namespace: service
                .map_or_else(unknown, |s| s.name.namespace.to_string()),
            destination_service_name: service.map_or_else(unknown, |s| s.name.name.to_string()),
            destination_workload: dst_pod.map_or_else(unknown, |p| p.workload.to_string()),
            destination_workload_namespace: dst_pod
                .map_or_else(unknown, |p| p.name.namespace.to_string()),
            destination_principal: principal(dst_id),
            destination_app: label(dst_pod, "app", unknown),
            destination_version: label(dst_pod, "version", unknown),
            destination_canonical_service: dst_pod
                .map_or_else(unknown, |p| p.canonical_service().to_owned()),
            destination_canonical_revision: dst_pod
                .map_or_else(unknown, |p| p.canonical_revision().to_owned()),
            destination_cluster: CLUSTER.to_owned(),
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: if mutual_tls { "mutual_tls" } else { "none" },
        }
    }
}

/// The node proxy's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    denied: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let opened = Family::<TcpLabels, Counter>::default();
        let closed = Family::<TcpLabels, Counter>::default();
        let sent = Family::<TcpLabels, Counter>::default();
        let received = Family::<TcpLabels, Counter>::default();
        let denied = Counter::default();
        registry.register(
            "istio_tcp_connections_opened",
            "The total number of TCP connections opened",
            opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "The total number of TCP connections closed",
            closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            received.clone(),
        );
        registry.register(
            "mesh_connections_denied",
            "Inbound connections refused by PeerAuthentication or AuthorizationPolicy",
            denied.clone(),
        );
        Metrics {
            registry,
            opened,
            closed,
            sent,
            received,
            denied,
        }
    }
}

impl Metrics {
    pub fn opened(&self, labels: &TcpLabels) {
        self.opened.get_or_create(labels).inc();
    }

    /// A connection ended: `received` bytes from the client, `sent` back to it.
    pub fn closed(&self, labels: &TcpLabels, received: u64, sent: u64) {
        self.closed.get_or_create(labels).inc();
        self.received.get_or_create(labels).inc_by(received);
        self.sent.get_or_create(labels).inc_by(sent);
    }

    pub fn denied(&self) {
        self.denied.inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        text
    }
}
