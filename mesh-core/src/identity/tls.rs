//! Mutual TLS between workloads, as Istio's HBONE does it: TLS 1.3 only, ALPN `h2`, both
//! sides present SPIFFE certificates from the mesh CA. The client checks that the server is
//! the identity it expects (there are no DNS names in these certificates); the server
//! accepts any identity its trust root signed and reads it back for policy.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use super::workload::{WorkloadCertificate, describe};
use super::{Error, Identity, Result};

/// The ALPN protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// aws-lc-rs's provider (rustls's default; its AES-GCM seals and opens 16 KiB records about
/// 1.5 times as fast as ring's on this project's machines, and one iperf3 stream through two
/// agents gained about 5 %), with AES-128-GCM preferred for TLS 1.3, as BoringSSL (Envoy) and
/// Go order them; rustls's default puts AES-256-GCM first. Its 10 AES rounds against 14 cut
/// the proxies' cipher work, which is most of what a bulk transfer costs them. Every suite
/// stays offered, so a peer preferring another one still gets it.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone())?;
    }
    Ok(Arc::new(store))
}

/// A server that presents `cert` and requires a client certificate signed by `roots`.
pub fn server_config(
    cert: &WorkloadCertificate,
    roots: &[CertificateDer<'static>],
) -> Result<ServerConfig> {
    let key = certified_key(cert)?;
    server_config_resolving(Arc::new(SingleCert(key)), roots)
}

/// A server that presents `key` (a certificate chosen before the handshake, e.g. by the
/// address the client dialed) and requires a client certificate signed by `roots`.
pub fn server_config_for_key(
    key: Arc<CertifiedKey>,
    roots: &[CertificateDer<'static>],
) -> Result<ServerConfig> {
    server_config_resolving(Arc::new(SingleCert(key)), roots)
}

/// A server that serves several identities, choosing the certificate per handshake (see
/// [`server_name`]), and requires a client certificate signed by `roots`.
pub fn server_config_resolving(
    resolver: Arc<dyn ResolvesServerCert>,
    roots: &[CertificateDer<'static>],
) -> Result<ServerConfig> {
    server_config_verifying(resolver, client_verifier(roots)?)
}

/// A server that serves several identities, choosing the certificate per handshake, and
/// checks client certificates with `verifier` (e.g. [`super::roots::Roots::client_verifier`],
/// which follows the root file).
pub fn server_config_verifying(
    resolver: Arc<dyn ResolvesServerCert>,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Checks `chain` (leaf first) as a peer checks a client's certificate: signed by one of
/// `roots`, through the chain's intermediates, valid now.
pub fn verify_peer_chain(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<()> {
    let [leaf, intermediates @ ..] = chain else {
        return Err(Error::Tls(rustls::Error::NoCertificatesPresented));
    };
    client_verifier(roots)?.verify_client_cert(leaf, intermediates, UnixTime::now())?;
    Ok(())
}

/// Checks client certificates against `roots`.
pub fn client_verifier(roots: &[CertificateDer<'static>]) -> Result<Arc<dyn ClientCertVerifier>> {
    WebPkiClientVerifier::builder_with_provider(root_store(roots)?, provider())
        .build()
        .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))
}

/// A certificate and its signing key, as a TLS server presents it.
pub fn certified_key(cert: &WorkloadCertificate) -> Result<Arc<CertifiedKey>> {
    certified_chain(cert.chain.clone(), cert.private_key())
}

/// `chain` (leaf first) and the leaf's key, as a TLS server presents them.
pub(crate) fn certified_chain(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>> {
    let key = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

/// The CA's gRPC server: the certificate `resolver` holds at each handshake (the CA makes
/// a new one when its signing files change), no client certificate (callers prove who they
/// are with a bearer credential), TLS 1.2 or 1.3 and ALPN `h2`, as gRPC over TLS needs.
pub fn ca_server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The TLS server name (SNI) a client sends to a node proxy to reach the workloads of
/// `identity` there: `<service-account>.<namespace>.<trust-domain>`. One node proxy serves
/// every service account on its node, so the name picks the certificate it answers with.
/// (Namespaces hold no dots, so two identities never share a name.)
pub fn server_name(identity: &Identity) -> Result<ServerName<'static>> {
    let name = format!(
        "{}.{}.{}",
        identity.service_account, identity.namespace, identity.trust_domain
    );
    ServerName::try_from(name.clone()).map_err(|_| {
        Error::Tls(rustls::Error::General(format!(
            "{name:?} is not a DNS name"
        )))
    })
}

#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A client that presents `cert` and accepts only a server proving `expected`.
pub fn client_config(
    cert: &WorkloadCertificate,
    roots: &[CertificateDer<'static>],
    expected: Identity,
) -> Result<ClientConfig> {
    let provider = provider();
    let verifier = SpiffeServerVerifier {
        roots: root_store(roots)?,
        algorithms: provider.signature_verification_algorithms,
        expected,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(cert.chain.clone(), cert.private_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The SPIFFE identity of a peer, from the certificates the handshake verified.
pub fn peer_identity(certs: Option<&[CertificateDer<'static>]>) -> Result<Identity> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or_else(|| Error::NoIdentity("the peer presented no certificate".into()))?;
    describe(leaf).map(|(identity, _, _)| identity)
}

/// Chain to the trust root (webpki), then the leaf's SPIFFE id must be the expected one.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expected: Identity,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let (identity, _, _) =
            describe(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if identity != self.expected {
            return Err(rustls::Error::General(format!(
                "the server is {identity}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "TLS 1.2 is not allowed in the mesh".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
