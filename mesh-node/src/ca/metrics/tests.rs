//! The CA's metrics page: Istio's names, a count per outcome, the expiry times of the CA
//! signing now.

use super::*;

/// The value of the sample `name` (no labels) or `name{labels}` on `page`.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn every_request_is_counted_by_outcome_under_istios_names() {
    let metrics = CaMetrics::default();
    for outcome in [
        Outcome::Issued,
        Outcome::Issued,
        Outcome::Unauthenticated,
        Outcome::BadCsr,
        Outcome::Denied,
        Outcome::Unavailable,
        Outcome::SignFailed,
    ] {
        metrics.observe(outcome);
    }
    let ca = CertificateAuthority::new("cluster.local").unwrap();
    let page = metrics.encode(&ca);
    for (series, value) in [
        ("citadel_server_csr_count_total", 7.0),
        ("citadel_server_success_cert_issuance_count_total", 2.0),
        ("citadel_server_authentication_failure_count_total", 1.0),
        ("citadel_server_csr_parsing_err_count_total", 1.0),
        ("citadel_server_csr_sign_err_count_total", 1.0),
        ("mesh_ca_refused_count_total{reason=\"denied\"}", 1.0),
        ("mesh_ca_refused_count_total{reason=\"unavailable\"}", 1.0),
    ] {
        assert_eq!(sample(&page, series), Some(value), "{series} in\n{page}");
    }
    // A root made now lasts ten years; its signing certificate is the root itself.
    let root = sample(&page, "citadel_server_root_cert_expiry_timestamp").unwrap();
    let chain = sample(&page, "citadel_server_cert_chain_expiry_timestamp").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let years = (root - now) / (365.0 * 24.0 * 3600.0);
    assert!(
        (9.9..10.1).contains(&years),
        "root expires in {years} years"
    );
    assert!((chain - root).abs() <= 1.0, "{chain} against {root}");
    assert!(page.ends_with("# EOF\n"), "OpenMetrics text");
}
