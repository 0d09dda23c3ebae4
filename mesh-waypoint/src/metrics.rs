//! The waypoint's metrics with Istio's names and labels (`reporter="waypoint"`), served on
//! 15020 at `/stats/prometheus`: `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes` for HTTP; the `istio_tcp_*` family for TCP
//! routes; and the circuit breakers' overflow counters (Envoy's `upstream_rq_pending_overflow`
//! and friends) and `retry_or_shadow_abandoned` per destination.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// One request's labels, as Istio's standard metrics define them.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: &'static str,
}

/// A destination's circuit-breaker counters' labels.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// `outbound|<port>|<subset>|<host>`, Envoy's cluster name.
    pub cluster_name: String,
}

/// The waypoint's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    tcp_opened: Family<RequestLabels, Counter>,
    tcp_closed: Family<RequestLabels, Counter>,
    tcp_sent: Family<RequestLabels, Counter>,
    tcp_received: Family<RequestLabels, Counter>,
    pending_overflow: Family<ClusterLabels, Counter>,
    connection_overflow: Family<ClusterLabels, Counter>,
    request_overflow: Family<ClusterLabels, Counter>,
    retry_overflow: Family<ClusterLabels, Counter>,
    ejections: Family<ClusterLabels, Counter>,
    abandoned: Family<ClusterLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    // Istio's default buckets for istio_request_duration_milliseconds.
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

fn size_histogram() -> Histogram {
    // Istio's buckets for istio_request_bytes / istio_response_bytes.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 8,
    ))
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RequestLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let request_bytes = Family::<RequestLabels, Histogram>::new_with_constructor(
            size_histogram as fn() -> Histogram,
        );
        let response_bytes = Family::<RequestLabels, Histogram>::new_with_constructor(
            size_histogram as fn() -> Histogram,
        );
        registry.register(
            "istio_requests",
            "Requests handled by the waypoint",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request durations, from the request's start to the response's end",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request sizes (headers and body)",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response sizes (headers and body)",
            response_bytes.clone(),
        );
        let tcp_opened = Family::<RequestLabels, Counter>::default();
        let tcp_closed = Family::<RequestLabels, Counter>::default();
        let tcp_sent = Family::<RequestLabels, Counter>::default();
        let tcp_received = Family::<RequestLabels, Counter>::default();
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the client on TCP connections",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the client on TCP connections",
            tcp_received.clone(),
        );
        let pending_overflow = Family::<ClusterLabels, Counter>::default();
        let connection_overflow = Family::<ClusterLabels, Counter>::default();
        let request_overflow = Family::<ClusterLabels, Counter>::default();
        let retry_overflow = Family::<ClusterLabels, Counter>::default();
        let ejections = Family::<ClusterLabels, Counter>::default();
        let abandoned = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "envoy_cluster_upstream_rq_pending_overflow",
            "Requests refused at once (503, flag UO) because http1MaxPendingRequests were waiting",
            pending_overflow.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_cx_overflow",
            "Times tcp.maxConnections was reached",
            connection_overflow.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_overflow",
            "Requests refused at once (503, flag UO) because http2MaxRequests were active",
            request_overflow.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_retry_overflow",
            "Retries not made because maxRetries were in flight",
            retry_overflow.clone(),
        );
        registry.register(
            "envoy_cluster_outlier_detection_ejections_enforced",
            "Endpoints ejected by outlier detection",
            ejections.clone(),
        );
        registry.register(
            "envoy_cluster_retry_or_shadow_abandoned",
            "Retries not made because the request body outgrew the replay buffer, and mirror copies dropped because the mirror fell behind",
            abandoned.clone(),
        );
        Metrics {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            pending_overflow,
            connection_overflow,
            request_overflow,
            retry_overflow,
            ejections,
            abandoned,
        }
    }
}

/// Which circuit-breaker counter to raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    Pending,
    Connections,
    Requests,
    Retries,
}

impl Metrics {
    /// One request done.
    pub fn request(
        &self,
        labels: &RequestLabels,
        millis: f64,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(millis);
        self.request_bytes
            .get_or_create(labels)
            .observe(request_bytes as f64);
        self.response_bytes
            .get_or_create(labels)
            .observe(response_bytes as f64);
    }

    pub fn tcp_opened(&self, labels: &RequestLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// A TCP connection ended: `received` bytes from the client, `sent` back to it.
    pub fn tcp_closed(&self, labels: &RequestLabels, received: u64, sent: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_received.get_or_create(labels).inc_by(received);
        self.tcp_sent.get_or_create(labels).inc_by(sent);
    }

    pub fn overflow(&self, cluster: &str, which: Overflow) {
        let family = match which {
            Overflow::Pending => &self.pending_overflow,
            Overflow::Connections => &self.connection_overflow,
            Overflow::Requests => &self.request_overflow,
            Overflow::Retries => &self.retry_overflow,
        };
        count(family, cluster);
    }

    /// A retry or a mirror's copy given up for the request body's sake (Envoy's
    /// `retry_or_shadow_abandoned`).
    pub fn retry_or_shadow_abandoned(&self, cluster: &str) {
        count(&self.abandoned, cluster);
    }

    pub fn ejected(&self, cluster: &str) {
        count(&self.ejections, cluster);
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

/// One more of a per-destination counter.
fn count(family: &Family<ClusterLabels, Counter>, cluster: &str) {
    family
        .get_or_create(&ClusterLabels {
            cluster_name: cluster.to_owned(),
        })
        .inc();
}
