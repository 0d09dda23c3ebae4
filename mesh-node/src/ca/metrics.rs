//! The CA's own metrics, served at `/metrics` on `--metrics-listen` (15014, istiod's
//! monitoring port), under the names istiod's CA (Citadel) exports, so dashboards and alerts
//! written for Istio's CA keep working. `prometheus_client` writes OpenMetrics, where a
//! counter's samples end in `_total`: `citadel_server_csr_count_total` for Istio's
//! `citadel_server_csr_count`. Refusals Istio's CA has no counter for (the caller may not
//! hold the identity, or the authorizer could not decide) are counted as
//! `mesh_ca_refused_count{reason}`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use mesh_core::identity::CertificateAuthority;
use mesh_core::identity::service::Outcome;
use mesh_core::identity::workload::CaCertSummary;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

pub struct CaMetrics {
    registry: Registry,
    received: Counter,
    issued: Counter,
    unauthenticated: Counter,
    bad_csr: Counter,
    sign_failed: Counter,
    refused: Family<Reason, Counter>,
    root_expiry: Gauge,
    chain_expiry: Gauge,
}

impl Default for CaMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let received = counter(
            "citadel_server_csr_count",
            "The number of CSRs received by the CA",
        );
        let issued = counter(
            "citadel_server_success_cert_issuance_count",
            "The number of certificates issuances that have succeeded",
        );
        let unauthenticated = counter(
            "citadel_server_authentication_failure_count",
            "The number of requests whose credential proved no one",
        );
        let bad_csr = counter(
            "citadel_server_csr_parsing_err_count",
            "The number of CSRs that did not parse or asked for no SPIFFE identity",
        );
        let sign_failed = counter(
            "citadel_server_csr_sign_err_count",
            "The number of CSRs that failed to be signed",
        );
        let refused = Family::<Reason, Counter>::default();
        registry.register(
            "mesh_ca_refused_count",
            "Requests refused after authentication: denied (the caller may not hold the identity) or unavailable (the authorizer's backend failed)",
            refused.clone(),
        );
        let root_expiry = Gauge::default();
        registry.register(
            "citadel_server_root_cert_expiry_timestamp",
            "The unix time, in seconds, when the root the CA's chains end in expires",
            root_expiry.clone(),
        );
        let chain_expiry = Gauge::default();
        registry.register(
            "citadel_server_cert_chain_expiry_timestamp",
            "The unix time, in seconds, when the CA's signing certificate expires",
            chain_expiry.clone(),
        );
        CaMetrics {
            registry,
            received,
            issued,
            unauthenticated,
            bad_csr,
            sign_failed,
            refused,
            root_expiry,
            chain_expiry,
        }
    }
}

impl CaMetrics {
    /// Counts one request that ended with `outcome`.
    pub fn observe(&self, outcome: Outcome) {
        self.received.inc();
        match outcome {
            Outcome::Issued => self.issued.inc(),
            Outcome::Unauthenticated => self.unauthenticated.inc(),
            Outcome::BadCsr => self.bad_csr.inc(),
            Outcome::SignFailed => self.sign_failed.inc(),
            Outcome::Denied => self
                .refused
                .get_or_create(&Reason { reason: "denied" })
                .inc(),
            Outcome::Unavailable => self
                .refused
                .get_or_create(&Reason {
                    reason: "unavailable",
                })
                .inc(),
        };
    }

    /// The page, with the expiry times of `ca` (the CA signing now).
    pub fn encode(&self, ca: &CertificateAuthority) -> String {
        let root = CaCertSummary::of(ca.root()).map_or(0, |root| root.not_after_unix);
        self.root_expiry.set(root);
        let chain = ca
            .signer_not_after()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.chain_expiry.set(chain);
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "encoding the CA's metrics failed");
        }
        text
    }
}

#[cfg(test)]
mod tests;
