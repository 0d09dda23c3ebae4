//! Helpers for this crate's unit tests.

use std::time::Duration;

use crate::identity::{CertificateAuthority, Identity, WorkloadCertificate, WorkloadKey};

/// A fresh folder under the system's temporary folder, removed when dropped (also when a
/// test fails); `tag` names it in a listing.
pub(crate) fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("mesh-core-{tag}-"))
        .tempdir()
        .unwrap()
}

/// A workload certificate for `identity` from `ca`, valid for `validity`, with a fresh key:
/// what an agent holds after a certificate request.
pub(crate) fn issue(
    ca: &CertificateAuthority,
    identity: &Identity,
    validity: Duration,
) -> WorkloadCertificate {
    let key = WorkloadKey::generate().unwrap();
    let chain = ca
        .sign(&key.csr(identity).unwrap(), identity, validity)
        .unwrap();
    WorkloadCertificate::new(key, chain).unwrap()
}
