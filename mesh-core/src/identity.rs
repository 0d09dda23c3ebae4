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
