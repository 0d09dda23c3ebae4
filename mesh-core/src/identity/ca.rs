//! The mesh CA: signs workload certificates for identities its caller has authorized (the
//! gRPC service reads the identity a CSR asks for, then lets the authorizer decide). The
//! certificate's names are built from that identity; the CSR contributes only its public key.
//!
//! The signing certificate and key are either made at start (a self-signed root per trust
//! domain, gone when the process ends: [`CertificateAuthority::new`]) or read from Istio's
//! plug-in CA files (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`: the
//! `cacerts` Secret's keys), so the root outlives the CA process ([`files`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::{Error, Identity, Result, tls};

pub mod files;

/// Clocks of nodes and CA differ a little: certificates start this much in the past.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The common name of the roots this project makes (with the trust domain as organization).
const ROOT_NAME: &str = "mesh root CA";

/// The parameters of a CA certificate of `trust_domain` named `common_name`, valid from `now`
/// (less [`CLOCK_SKEW`]) for `validity`: a root ([`CertificateAuthority::new`],
/// [`files::create`]) or an intermediate ([`files::create`]).
fn authority_params(
    trust_domain: &str,
    common_name: &str,
    constraints: BasicConstraints,
    now: SystemTime,
    validity: Duration,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, trust_domain);
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + validity).into();
    params
}

pub struct CertificateAuthority {
    trust_domain: String,
    /// The root this CA's chains end in.
    root: CertificateDer<'static>,
    /// Every root the workloads are to trust: [`Self::root`], and during a root rotation the
    /// other root(s) of the plug-in `root-cert.pem`.
    trust: Vec<CertificateDer<'static>>,
    /// What follows the leaf in every chain this CA signs: its signing certificate, any
    /// intermediates, the root last (the root alone for a self-signed CA).
    chain: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, KeyPair>,
    /// When the signing certificate expires: no certificate it signs outlives it.
    signer_not_after: SystemTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertificateAuthority {
    /// A new root for `trust_domain`, valid for ten years.
    pub fn new(trust_domain: &str) -> Result<CertificateAuthority> {
        let now = SystemTime::now();
        let params = authority_params(
            trust_domain,
            ROOT_NAME,
            BasicConstraints::Unconstrained,
            now,
            ROOT_VALIDITY,
        );
        let key = KeyPair::generate()?;
        let root = params.self_signed(&key)?.der().clone();
        Ok(CertificateAuthority {
            trust_domain: trust_domain.to_owned(),
            chain: vec![root.clone()],
            trust: vec![root.clone()],
            root,
            issuer: Issuer::new(params, key),
            signer_not_after: now + ROOT_VALIDITY,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root this CA's chains end in.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// When the signing certificate expires: nothing this CA signs lasts longer.
    pub fn signer_not_after(&self) -> SystemTime {
        self.signer_not_after
    }

    /// The signing certificate's subject, for logs.
    pub fn signer_subject(&self) -> String {
        self.chain
            .first()
            .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
            .map(|(_, cert)| cert.subject().to_string())
            .unwrap_or_default()
    }

    /// How many roots the workloads are to trust ([`Self::root_pem`]).
    pub fn root_count(&self) -> usize {
        self.trust.len()
    }

    /// Signs a CSR (DER) for `identity`, valid from now for `validity`. Returns the chain,
    /// leaf first, then the CA's own chain, root last (the shape of Istio's
    /// `CreateCertificate` answer).
    pub fn sign(
        &self,
        csr: &[u8],
        identity: &Identity,
        validity: Duration,
    ) -> Result<Vec<CertificateDer<'static>>> {
        let now = SystemTime::now();
        self.sign_for_window(csr, identity, now - CLOCK_SKEW, now + validity)
    }

    /// Signs for an explicit validity window (tests make expired certificates with it).
    pub fn sign_for_window(
        &self,
        csr: &[u8],
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>> {
        if identity.trust_domain != self.trust_domain {
            return Err(Error::Csr(format!(
                "{identity} is not in this CA's trust domain {}",
                self.trust_domain
            )));
        }
        let request = CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(csr.to_vec()),
        )
        .map_err(|e| Error::Csr(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            identity
                .to_string()
                .try_into()
                .map_err(|e: rcgen::Error| Error::Csr(e.to_string()))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.min(self.signer_not_after).into();
        params.use_authority_key_identifier_extension = true;
        let leaf = CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(self.with_chain(leaf.der()))
    }
}

impl CertificateAuthority {
    /// A TLS server certificate for the CA's own gRPC endpoint, naming `dns_names` and
    /// `ips`, with a fresh key, followed by the CA's chain, ready to serve; the key stays in
    /// memory.
    pub fn serving_certificate(
        &self,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        validity: Duration,
    ) -> Result<Arc<CertifiedKey>> {
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "mesh CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + validity).min(self.signer_not_after).into();
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let leaf = params.signed_by(&key, &self.issuer)?;
        let der = PrivatePkcs8KeyDer::from(key.serialize_der());
        tls::certified_chain(self.with_chain(leaf.der()), der.into())
    }

    /// `leaf` followed by the CA's chain.
    fn with_chain(&self, leaf: &CertificateDer<'static>) -> Vec<CertificateDer<'static>> {
        std::iter::once(leaf.clone())
            .chain(self.chain.iter().cloned())
            .collect()
    }

    /// Every root the workloads are to trust, as PEM, for distribution to the node agents.
    pub fn root_pem(&self) -> String {
        self.trust.iter().map(|der| certificate_pem(der)).collect()
    }
}

/// A certificate (DER) as PEM.
pub fn certificate_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// The identity a CSR asks for (its `spiffe://` URI SAN), checking the CSR's signature.
pub fn requested_identity(csr: &[u8]) -> Result<Identity> {
    let request = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
        csr.to_vec(),
    ))
    .map_err(|e| Error::Csr(e.to_string()))?;
    request
        .params
        .subject_alt_names
        .iter()
        .find_map(|san| match san {
            SanType::URI(uri) => uri.as_str().parse().ok(),
            _ => None,
        })
        .ok_or_else(|| Error::Csr("the CSR asks for no spiffe:// identity (URI SAN)".into()))
}
