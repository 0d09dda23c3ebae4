use std::time::Duration;

use super::*;
use crate::identity::{CertificateAuthority, Identity};
use crate::test_util::temp_dir;

const TD: &str = "cluster.local";

/// A chain from `ca` for a workload.
fn chain(ca: &CertificateAuthority) -> Vec<CertificateDer<'static>> {
    let identity = Identity::new(TD, "shop", "cart");
    crate::test_util::issue(ca, &identity, Duration::from_secs(60)).chain
}

fn accepts(verifier: &Arc<dyn ClientCertVerifier>, chain: &[CertificateDer<'static>]) -> bool {
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .is_ok()
}

/// Replaces `path` the way a ConfigMap update does: a new file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[test]
fn a_changed_root_file_is_read_again_and_new_handshakes_check_against_it() {
    let dir = temp_dir("roots-reload");
    let path = dir.path().join("root-cert.pem");
    let old = CertificateAuthority::new(TD).unwrap();
    let new = CertificateAuthority::new(TD).unwrap();
    std::fs::write(&path, old.root_pem()).unwrap();
    let roots = Arc::new(Roots::load(&path).unwrap());
    // One verifier, made at start, as a listener's server config holds it.
    let verifier = roots.client_verifier();
    assert!(accepts(&verifier, &chain(&old)));
    assert!(!accepts(&verifier, &chain(&new)));
    assert_eq!(roots.reload_if_changed(), Ok(false), "nothing changed");

    // Rotation, step one: both roots.
    replace(&path, &(old.root_pem() + &new.root_pem()));
    assert_eq!(roots.reload_if_changed(), Ok(true));
    assert_eq!(roots.certs().len(), 2);
    assert_eq!(roots.status().len(), 2);
    assert!(accepts(&verifier, &chain(&old)));
    assert!(accepts(&verifier, &chain(&new)));
    assert_eq!(roots.reload_if_changed(), Ok(false));

    // Step two: the new root alone.
    replace(&path, &new.root_pem());
    assert_eq!(roots.reload_if_changed(), Ok(true));
    assert!(!accepts(&verifier, &chain(&old)));
    assert!(accepts(&verifier, &chain(&new)));
    assert_eq!(&*roots.pem(), new.root_pem().as_str());
}

#[test]
fn an_unusable_root_file_is_reported_once_and_the_roots_in_use_stay() {
    let dir = temp_dir("roots-bad");
    let path = dir.path().join("root-cert.pem");
    let ca = CertificateAuthority::new(TD).unwrap();
    std::fs::write(&path, ca.root_pem()).unwrap();
    let roots = Arc::new(Roots::load(&path).unwrap());
    let verifier = roots.client_verifier();

    replace(&path, "half a file");
    let error = roots.reload_if_changed().unwrap_err();
    assert!(
        error.contains("root-cert.pem") && error.contains("no PEM certificate"),
        "{error}"
    );
    assert_eq!(roots.reload_if_changed(), Ok(false), "reported once");
    assert!(accepts(&verifier, &chain(&ca)), "the roots in use stay");

    // A removed file (a ConfigMap mid-update) changes nothing either.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(roots.reload_if_changed(), Ok(false));
    assert!(accepts(&verifier, &chain(&ca)));

    replace(&path, &ca.root_pem());
    assert_eq!(roots.reload_if_changed(), Ok(false), "the same roots again");
}

#[test]
fn a_root_file_without_certificates_is_refused_at_load() {
    let dir = temp_dir("roots-empty");
    let path = dir.path().join("root-cert.pem");
    std::fs::write(&path, "").unwrap();
    let error = Roots::load(&path).unwrap_err();
    assert!(error.contains("no PEM certificate"), "{error}");
}
