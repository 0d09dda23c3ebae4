//! Istio's plug-in CA files: the folder a `cacerts` Secret mounts, so the CA signs with a
//! certificate and key that outlive its process (and users who already run Istio with plug-in
//! certificates keep theirs).
//!
//! | file | what |
//! |---|---|
//! | `ca-cert.pem` | the signing certificate: the root itself, or an intermediate |
//! | `ca-key.pem` | its key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) PEM, as openssl writes them |
//! | `root-cert.pem` | the root: the trust anchor the agents get (during a root rotation, old and new root: the CA's chains end in the one that issued `ca-cert.pem`, and both are published) |
//! | `cert-chain.pem` | optional: `ca-cert.pem`, any intermediates, then the root |
//!
//! [`CertificateAuthority::from_dir`] checks them before the CA serves (a CA, a key that
//! matches it, and a test certificate it signs verifying against a root through the chain),
//! so a wrong Secret stops the CA at start with the file and the fix named instead of
//! handing out certificates no peer accepts. [`create`] writes a fresh root and intermediate
//! in this layout (`mesh-node ca-init`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, Issuer, KeyPair};
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;

use super::{CertificateAuthority, ROOT_NAME, ROOT_VALIDITY, authority_params, certificate_pem};
use crate::identity::{Error, Identity, Result, WorkloadKey, tls};

pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const ROOT_CERT: &str = "root-cert.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// Written by [`create`] only; it stays out of the CA's Secret.
pub const ROOT_KEY: &str = "root-key.pem";

/// How long [`create`]'s intermediate lives (its root: [`ROOT_VALIDITY`]).
const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

fn fail(path: &Path, message: impl Into<String>) -> Error {
    Error::CaFiles {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl CertificateAuthority {
    /// The CA of `trust_domain` signing with the plug-in CA files in `dir`.
    pub fn from_dir(trust_domain: &str, dir: &Path) -> Result<CertificateAuthority> {
        let ca_cert_path = dir.join(CA_CERT);
        let ca_cert = single(&ca_cert_path)?;
        let root_path = dir.join(ROOT_CERT);
        let roots = certificates(&root_path)?;
        let key_path = dir.join(CA_KEY);
        let key = read_key(&key_path)?;

        let signer = parse(&ca_cert_path, &ca_cert)?;
        must_be_ca(&ca_cert_path, &signer)?;
        if !signer.validity().is_valid() {
            return Err(fail(
                &ca_cert_path,
                format!(
                    "the signing certificate is not valid now (valid {} to {}): install a current one",
                    signer.validity().not_before,
                    signer.validity().not_after
                ),
            ));
        }
        if signer.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(fail(
                &key_path,
                format!("this key is not the key of {CA_CERT}: install the pair together"),
            ));
        }
        for root in &roots {
            must_be_ca(&root_path, &parse(&root_path, root)?)?;
        }
        let signer_not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(signer.validity().not_after.timestamp().max(0) as u64);

        let chain_path = dir.join(CERT_CHAIN);
        let chain = if chain_path.exists() {
            let chain = certificates(&chain_path)?;
            if chain.first() != Some(&ca_cert) {
                return Err(fail(
                    &chain_path,
                    format!(
                        "the chain must start with {CA_CERT}, then any intermediates, then {ROOT_CERT}"
                    ),
                ));
            }
            chain
        } else {
            vec![ca_cert.clone()]
        };
        let issuer = Issuer::from_ca_cert_der(&ca_cert, key)
            .map_err(|e| fail(&ca_cert_path, format!("not usable as an issuer: {e}")))?;
        let mut ca = CertificateAuthority {
            trust_domain: trust_domain.to_owned(),
            root: roots[0].clone(),
            trust: roots,
            chain,
            issuer,
            signer_not_after,
        };
        ca.end_chain_at_its_root(dir)?;
        Ok(ca)
    }

    /// Finds the root of `root-cert.pem` (which may hold several during a root rotation) that
    /// a test certificate signed by this CA verifies against through the chain, as every peer
    /// will check it, and ends the chain with it.
    fn end_chain_at_its_root(&mut self, dir: &Path) -> Result<()> {
        let probe = Identity::new(&self.trust_domain, "istio-system", "mesh-ca-self-check");
        let csr = WorkloadKey::generate()?.csr(&probe)?;
        let leaf = self
            .sign(&csr, &probe, Duration::from_secs(60))?
            .swap_remove(0);
        let mut error = None;
        for root in &self.trust {
            let mut chain = self.chain.clone();
            if chain.last() != Some(root) {
                chain.push(root.clone());
            }
            let presented: Vec<_> = std::iter::once(leaf.clone())
                .chain(chain.iter().cloned())
                .collect();
            match tls::verify_peer_chain(&presented, std::slice::from_ref(root)) {
                Ok(()) => {
                    self.root = root.clone();
                    self.chain = chain;
                    return Ok(());
                }
                Err(e) => error = Some(e),
            }
        }
        Err(fail(
            dir,
            format!(
                "a certificate signed with {CA_KEY} verifies against no root of {ROOT_CERT} \
                 through {CERT_CHAIN} ({}): {CA_CERT} must be issued (through the chain's \
                 intermediates) by a root in {ROOT_CERT}",
                error.map_or_else(String::new, |e| e.to_string())
            ),
        ))
    }
}

/// Every certificate in the PEM file at `path`, in order.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let text = std::fs::read_to_string(path).map_err(|e| fail(path, e.to_string()))?;
    let blocks = pem::parse_many(&text).map_err(|e| fail(path, format!("not PEM: {e}")))?;
    if blocks.is_empty() {
        return Err(fail(path, "holds no PEM certificate"));
    }
    blocks
        .into_iter()
        .map(|block| match block.tag() {
            "CERTIFICATE" => Ok(CertificateDer::from(block.into_contents())),
            other => Err(fail(
                path,
                format!("holds a {other:?} block: expected only CERTIFICATE blocks"),
            )),
        })
        .collect()
}

/// The one certificate in the PEM file at `path`.
fn single(path: &Path) -> Result<CertificateDer<'static>> {
    let mut certificates = certificates(path)?;
    if certificates.len() != 1 {
        return Err(fail(
            path,
            format!(
                "holds {} certificates: expected exactly one",
                certificates.len()
            ),
        ));
    }
    Ok(certificates.remove(0))
}

fn read_key(path: &Path) -> Result<KeyPair> {
    let text = std::fs::read_to_string(path).map_err(|e| fail(path, e.to_string()))?;
    KeyPair::from_pem(&text).map_err(|e| {
        fail(
            path,
            format!(
                "not a usable private key ({e}): expected an unencrypted RSA, ECDSA or Ed25519 \
                 key in PEM (`BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE \
                 KEY`)"
            ),
        )
    })
}

fn parse<'a>(path: &Path, der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, certificate)| certificate)
        .map_err(|e| fail(path, format!("not an X.509 certificate: {e}")))
}

fn must_be_ca(path: &Path, certificate: &X509Certificate<'_>) -> Result<()> {
    if !certificate.is_ca() {
        return Err(fail(
            path,
            "not a CA certificate (basicConstraints CA:TRUE)",
        ));
    }
    if let Ok(Some(usage)) = certificate.key_usage()
        && !usage.value.key_cert_sign()
    {
        return Err(fail(
            path,
            "its key usage does not allow signing certificates (keyCertSign)",
        ));
    }
    Ok(())
}

/// Writes a new root and an intermediate signed by it for `trust_domain` into `dir` in the
/// plug-in layout, plus the root's key ([`ROOT_KEY`]); never overwrites a file. Keys are
/// written readable by the owner only. Returns the files written.
pub fn create(trust_domain: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    let names = [ROOT_CERT, ROOT_KEY, CA_CERT, CA_KEY, CERT_CHAIN];
    if let Some(existing) = names
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.exists())
    {
        return Err(fail(
            &existing,
            "exists: ca-init never overwrites a CA; pick a new folder",
        ));
    }
    let now = SystemTime::now();
    let root_key = KeyPair::generate()?;
    let root_params = authority_params(
        trust_domain,
        ROOT_NAME,
        BasicConstraints::Unconstrained,
        now,
        ROOT_VALIDITY,
    );
    let root = root_params.self_signed(&root_key)?;
    let ca_key = KeyPair::generate()?;
    let ca = authority_params(
        trust_domain,
        "mesh intermediate CA",
        BasicConstraints::Constrained(0),
        now,
        INTERMEDIATE_VALIDITY,
    )
    .signed_by(&ca_key, &Issuer::from_params(&root_params, &root_key))?;

    std::fs::create_dir_all(dir).map_err(|e| fail(dir, e.to_string()))?;
    let root_pem = certificate_pem(root.der());
    let ca_pem = certificate_pem(ca.der());
    let files = [
        (ROOT_CERT, root_pem.clone(), 0o644),
        (ROOT_KEY, root_key.serialize_pem(), 0o600),
        (CA_CERT, ca_pem.clone(), 0o644),
        (CA_KEY, ca_key.serialize_pem(), 0o600),
        (CERT_CHAIN, ca_pem + &root_pem, 0o644),
    ];
    files
        .into_iter()
        .map(|(name, text, mode)| {
            let path = dir.join(name);
            write_new(&path, &text, mode)?;
            Ok(path)
        })
        .collect()
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| fail(path, e.to_string()))
}

#[cfg(test)]
mod tests;
