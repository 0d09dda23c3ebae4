//! Workload identity: SPIFFE ids (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), the mesh CA
//! that signs them, workload keys and certificates, and the mutual-TLS configuration that
//! proves and checks them. Built on rcgen, rustls and x509-parser: no hand-written crypto or
//! ASN.1. Private keys stay in memory and are never printed.

pub mod ca;
pub mod manager;
pub mod roots;
pub mod service;
pub mod tls;
pub mod workload;

use std::fmt;
use std::str::FromStr;

pub use ca::CertificateAuthority;
pub use workload::{WorkloadCertificate, WorkloadKey};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{0:?} is not a SPIFFE id of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    NotSpiffe(String),
    #[error("certificate work failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the certificate signing request is invalid: {0}")]
    Csr(String),
    #[error("the certificate carries no SPIFFE id (URI SAN): {0}")]
    NoIdentity(String),
    #[error("{path}: {message}")]
    CaFiles {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Keeps this process's memory, where the private keys live, out of core dumps and out of
/// reach of other processes of the same user (no ptrace attach, no `/proc/<pid>/mem`), as
/// ssh-agent does: `PR_SET_DUMPABLE` 0. A crash then leaves no core file holding a key
/// (a container's core goes to the host's `core_pattern` handler, often systemd-coredump's
/// store on the node's disk). Root keeps access. Call first in every process that holds keys.
pub fn protect_key_memory() -> std::io::Result<()> {
    #[allow(unsafe_code, reason = "prctl has no safe wrapper")]
    // SAFETY: PR_SET_DUMPABLE takes plain integers and changes only a flag of this process.
    let status = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A workload's identity: its service account in a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Identity {
        Identity {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = Error;

    fn from_str(uri: &str) -> Result<Identity> {
        let fail = || Error::NotSpiffe(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(fail)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(Identity::new(td, ns, sa))
            }
            _ => Err(fail()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flag the kernel checks before writing a core file (this test process stays
    /// undumpable afterwards, which no other test minds).
    #[test]
    fn key_memory_is_kept_out_of_core_dumps() {
        protect_key_memory().unwrap();
        #[allow(unsafe_code, reason = "prctl has no safe wrapper")]
        // SAFETY: PR_GET_DUMPABLE reads a flag of this process.
        let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
        assert_eq!(dumpable, 0);
    }

    #[test]
    fn spiffe_ids_round_trip_and_bad_ones_are_refused() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
            .parse()
            .unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(id.service_account, "bookinfo-reviews");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/sa/b/ns/a",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }
}
