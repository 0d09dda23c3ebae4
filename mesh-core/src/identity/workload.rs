//! A workload's key pair, its certificate signing request, and the certificate chain the CA
//! returned, with the times that drive rotation.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{Error, Identity, Result};

/// A fresh ECDSA P-256 key that never leaves memory.
pub struct WorkloadKey {
    key: KeyPair,
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkloadKey(<redacted>)")
    }
}

impl WorkloadKey {
    pub fn generate() -> Result<WorkloadKey> {
        Ok(WorkloadKey {
            key: KeyPair::generate()?,
        })
    }

    /// A CSR (DER) asking for `identity`.
    pub fn csr(&self, identity: &Identity) -> Result<Vec<u8>> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            identity
                .to_string()
                .try_into()
                .map_err(|e: rcgen::Error| Error::Csr(e.to_string()))?,
        )];
        Ok(params.serialize_request(&self.key)?.der().to_vec())
    }
}

/// A certificate chain (leaf first) with its private key.
pub struct WorkloadCertificate {
    pub identity: Identity,
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When this side received it: the CA back-dates `not_before` for clock skew, so the
    /// renewal time counts from here.
    pub received: SystemTime,
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl WorkloadCertificate {
    /// Pairs a key with the chain the CA signed for it, reading identity and validity from
    /// the leaf.
    pub fn new(
        key: WorkloadKey,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<WorkloadCertificate> {
        let leaf = chain
            .first()
            .ok_or_else(|| Error::Csr("the CA returned an empty certificate chain".into()))?;
        let (identity, not_before, not_after) = describe(leaf)?;
        Ok(WorkloadCertificate {
            identity,
            chain,
            key: PrivatePkcs8KeyDer::from(key.key.serialize_der()),
            not_before,
            not_after,
            received: SystemTime::now(),
        })
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// When to replace it: half-way through the life it had left when it arrived (as
    /// Istio's agents do; `not_before` is back-dated for clock skew, so it is not the start).
    pub fn refresh_at(&self) -> SystemTime {
        let start = self.received.max(self.not_before);
        let life = self
            .not_after
            .duration_since(start)
            .unwrap_or(Duration::ZERO);
        start + life / 2
    }
}

/// The SPIFFE id and validity of a certificate.
pub fn describe(cert: &CertificateDer<'_>) -> Result<(Identity, SystemTime, SystemTime)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| Error::NoIdentity(format!("unparseable certificate: {e}")))?;
    let uri = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .into_iter()
        .flat_map(|san| san.value.general_names.iter())
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                Some(*uri)
            }
            _ => None,
        })
        .ok_or_else(|| Error::NoIdentity("no spiffe:// URI SAN".into()))?;
    let identity: Identity = uri.parse()?;
    let validity = parsed.validity();
    let to_time = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Ok((
        identity,
        to_time(validity.not_before),
        to_time(validity.not_after),
    ))
}

/// What the admin pages show of a CA certificate: a trust anchor, or one a workload
/// certificate chains through (a root rotation is followed by its serials: roots made by
/// `mesh-node ca-init` all share one subject).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaCertSummary {
    pub subject: String,
    /// Hex bytes separated by colons, as `openssl x509 -serial` prints them but with colons.
    pub serial: String,
    pub not_after_unix: i64,
}

impl CaCertSummary {
    /// The summary of the certificate `der`; `None` if it does not parse.
    pub fn of(der: &[u8]) -> Option<CaCertSummary> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(CaCertSummary {
            subject: cert.subject().to_string(),
            serial: cert.raw_serial_as_string(),
            not_after_unix: cert.validity().not_after.timestamp(),
        })
    }
}
