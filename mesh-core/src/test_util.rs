//! Helpers for this crate's unit tests.

use std::path::PathBuf;
use std::time::Duration;

use crate::identity::{CertificateAuthority, Identity, WorkloadCertificate, WorkloadKey};

/// A fresh folder under the system's temporary folder, removed when dropped (also when a
/// test fails); `tag` and the process id keep tests apart.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("mesh-core-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
