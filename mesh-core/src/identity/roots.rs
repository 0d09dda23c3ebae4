//! The mesh's trust anchors as a proxy holds them: the CA root file (`--ca-root`, in
//! Kubernetes the mounted `mesh-ca-root` ConfigMap), read at start and read again when it
//! changes, so a root rotation (old and new root in the file, then the new one alone) reaches
//! running agents and waypoints without a restart. A file that does not parse is reported and
//! ignored: the anchors in use stay. Handshakes already done keep what they verified; every
//! new one checks against the anchors of the moment.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::tls;
use super::workload::CaCertSummary;
use crate::stamp::FileStamp;

/// One version of the anchors.
struct Anchors {
    certs: Arc<[CertificateDer<'static>]>,
    pem: Arc<str>,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// The trust anchors, current.
pub struct Roots {
    path: PathBuf,
    current: RwLock<Arc<Anchors>>,
    /// The file version last read, good or bad (a bad one is reported once).
    seen: RwLock<Option<FileStamp>>,
}

impl Roots {
    /// Reads the anchors from `path` (PEM, one or more certificates).
    pub fn load(path: &Path) -> Result<Roots, String> {
        let stamp = FileStamp::of(path);
        let anchors = read(path)?;
        Ok(Roots {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(anchors)),
            seen: RwLock::new(stamp),
        })
    }

    /// Anchors that never change (no file behind them), for tests.
    #[cfg(test)]
    pub(crate) fn fixed(certs: &[CertificateDer<'static>]) -> Result<Roots, String> {
        let pem: String = certs
            .iter()
            .map(|der| super::ca::certificate_pem(der))
            .collect();
        let verifier = tls::client_verifier(certs).map_err(|e| e.to_string())?;
        Ok(Roots {
            path: PathBuf::new(),
            current: RwLock::new(Arc::new(Anchors {
                certs: certs.into(),
                pem: pem.into(),
                verifier,
            })),
            seen: RwLock::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn anchors(&self) -> Arc<Anchors> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The anchors now.
    pub fn certs(&self) -> Arc<[CertificateDer<'static>]> {
        self.anchors().certs.clone()
    }

    /// The anchors now, as the PEM text they were read from.
    pub fn pem(&self) -> Arc<str> {
        self.anchors().pem.clone()
    }

    /// Reads the file again if it changed since last read: `Ok(true)` if the anchors
    /// changed, `Ok(false)` if the file did not, `Err` (once per bad version) if the new
    /// version does not parse; the anchors in use stay then.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let stamp = FileStamp::of(&self.path);
        {
            let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
            if stamp.is_none() || *seen == stamp {
                return Ok(false);
            }
            *seen = stamp;
        }
        let anchors = read(&self.path)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.certs == anchors.certs {
            return Ok(false);
        }
        *current = Arc::new(anchors);
        Ok(true)
    }

    /// A client-certificate verifier that checks against the anchors of each handshake's
    /// moment.
    pub fn client_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(CurrentRoots(self.clone()))
    }

    /// Subject, serial and expiry of every anchor.
    pub fn status(&self) -> Vec<CaCertSummary> {
        self.certs()
            .iter()
            .filter_map(|der| CaCertSummary::of(der))
            .collect()
    }
}

fn read(path: &Path) -> Result<Anchors, String> {
    let fail = |message: String| format!("the CA root {}: {message}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let blocks = pem::parse_many(&text).map_err(|e| fail(format!("not PEM: {e}")))?;
    let certs: Arc<[CertificateDer<'static>]> = blocks
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(|block| CertificateDer::from(block.into_contents()))
        .collect();
    if certs.is_empty() {
        return Err(fail("holds no PEM certificate".into()));
    }
    let verifier = tls::client_verifier(&certs).map_err(|e| fail(e.to_string()))?;
    Ok(Anchors {
        certs,
        pem: text.into(),
        verifier,
    })
}

/// Delegates to the verifier of the anchors current at each call.
#[derive(Debug)]
struct CurrentRoots(Arc<Roots>);

impl std::fmt::Debug for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roots").field("path", &self.path).finish()
    }
}

impl ClientCertVerifier for CurrentRoots {
    /// No hints: a mesh client has one certificate to offer, whichever roots are current.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .anchors()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .anchors()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .anchors()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.anchors().verifier.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;
