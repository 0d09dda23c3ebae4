//! The waypoint's metrics with Istio's names and labels (`reporter="waypoint"`), served on
//! 15020 at `/stats/prometheus`: `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes` for HTTP; the `istio_tcp_*` family for TCP
//! routes; and the circuit breakers' overflow counters (Envoy's `upstream_rq_pending_overflow`
//! and friends) and `retry_or_shadow_abandoned` per destination.

use std::sync::{Arc, Mutex};

use mesh_core::config::PodInfo;
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
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
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

/// The four request metrics of one label set: handles on the families' entries, which a
/// request raises without looking its labels up again.
#[derive(Debug, Clone)]
pub struct RequestSeries {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl RequestSeries {
    /// One request done.
    pub fn record(&self, millis: f64, request_bytes: u64, response_bytes: u64) {
        self.requests.inc();
        self.duration.observe(millis);
        self.request_bytes.observe(request_bytes as f64);
        self.response_bytes.observe(response_bytes as f64);
    }
}

/// What a request's labels depend on besides its tunnel (whose client, service and port are
/// fixed): the destination pod, the answer and the response flags.
#[derive(Debug)]
pub struct SeriesKey {
    pub destination: Option<Arc<PodInfo>>,
    pub code: u16,
    pub grpc_status: String,
    pub flags: Vec<&'static str>,
}

impl PartialEq for SeriesKey {
    fn eq(&self, other: &SeriesKey) -> bool {
        // The pod by identity: a pod whose labels change comes as a new `PodInfo`, and the key
        // holds its pod, so the address cannot be reused while the entry lives.
        let same_pod = match (&self.destination, &other.destination) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_pod
            && self.code == other.code
            && self.grpc_status == other.grpc_status
            && self.flags == other.flags
    }
}

/// A tunnel's most recent request series. The requests of one client connection mostly share
/// their labels, and building the nineteen labels (a dozen strings) and hashing them into four
/// families was the waypoint's largest metrics cost per request (SipHash alone 1.3 % of its
/// CPU at 1000 req/s); with this, a repeated label set costs a short scan.
#[derive(Debug, Default)]
pub struct SeriesCache {
    entries: Mutex<Vec<(SeriesKey, RequestSeries)>>,
}

/// How many label sets a tunnel remembers: enough for a few destinations and answers.
const SERIES_PER_TUNNEL: usize = 8;

impl SeriesCache {
    /// The series for `key`, from the cache or made with `labels`.
    pub fn get(
        &self,
        metrics: &Metrics,
        key: SeriesKey,
        labels: impl FnOnce(&SeriesKey) -> RequestLabels,
    ) -> RequestSeries {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, series)) = entries.iter().find(|(known, _)| *known == key) {
            return series.clone();
        }
        let series = metrics.request_series(&labels(&key));
        if entries.len() == SERIES_PER_TUNNEL {
            entries.remove(0);
        }
        entries.push((key, series.clone()));
        series
    }
}

impl Metrics {
    /// The request metrics of one label set, made at the first use.
    pub fn request_series(&self, labels: &RequestLabels) -> RequestSeries {
        RequestSeries {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        }
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn key(code: u16, flags: &[&'static str]) -> SeriesKey {
        SeriesKey {
            destination: None,
            code,
            grpc_status: String::new(),
            flags: flags.to_vec(),
        }
    }

    fn labels(key: &SeriesKey) -> RequestLabels {
        RequestLabels {
            reporter: "waypoint",
            response_code: key.code,
            response_flags: key.flags.join(","),
            ..RequestLabels::default()
        }
    }

    /// `istio_requests_total` of the series with this response code.
    fn requests(metrics: &Metrics, code: u16) -> u64 {
        let needle = format!("response_code=\"{code}\"");
        metrics
            .encode()
            .lines()
            .filter(|line| line.starts_with("istio_requests_total{") && line.contains(&needle))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    #[test]
    fn a_tunnel_builds_each_label_set_once_and_counts_into_the_families() {
        let metrics = Metrics::default();
        let cache = SeriesCache::default();
        let built = Cell::new(0);
        let record = |key: SeriesKey| {
            let series = cache.get(&metrics, key, |key| {
                built.set(built.get() + 1);
                labels(key)
            });
            series.record(1.0, 10, 20);
        };
        record(key(200, &[]));
        record(key(200, &[]));
        record(key(503, &["UO"]));
        record(key(200, &[]));
        assert_eq!(built.get(), 2, "one build per distinct label set");
        assert_eq!(requests(&metrics, 200), 3);
        assert_eq!(requests(&metrics, 503), 1);

        // More label sets than a tunnel keeps: the oldest is built again, and its counts go
        // on in the same family entry.
        for code in 400..400 + SERIES_PER_TUNNEL as u16 {
            record(key(code, &[]));
        }
        record(key(200, &[]));
        assert_eq!(built.get(), 2 + SERIES_PER_TUNNEL + 1);
        assert_eq!(requests(&metrics, 200), 4);
    }

    #[test]
    fn two_tunnels_with_the_same_labels_share_one_series() {
        let metrics = Metrics::default();
        for _ in 0..2 {
            SeriesCache::default()
                .get(&metrics, key(200, &[]), labels)
                .record(1.0, 0, 0);
        }
        assert_eq!(requests(&metrics, 200), 2);
        assert_eq!(
            metrics
                .encode()
                .lines()
                .filter(|line| line.starts_with("istio_requests_total{"))
                .count(),
            1
        );
    }
}
