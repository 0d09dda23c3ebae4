use std::os::unix::fs::PermissionsExt as _;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use x509_parser::prelude::FromDer as _;

use super::*;
use crate::identity::WorkloadCertificate;
use crate::test_util::temp_dir;

const TD: &str = "cluster.local";

fn workload() -> Identity {
    Identity::new(TD, "shop", "cart")
}

/// A workload certificate from `ca` for [`workload`], as an agent holds it.
fn issue(ca: &CertificateAuthority, validity: Duration) -> WorkloadCertificate {
    crate::test_util::issue(ca, &workload(), validity)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Two folders of plug-in files from [`create`], each a CA of its own root.
fn two_cas(tag: &str) -> (tempfile::TempDir, tempfile::TempDir) {
    let (dir, other) = (temp_dir(tag), temp_dir(&format!("{tag}-other")));
    create(TD, dir.path()).unwrap();
    create(TD, other.path()).unwrap();
    (dir, other)
}

/// The error `from_dir` gives for `dir`, as the operator reads it.
fn refusal(dir: &Path) -> String {
    CertificateAuthority::from_dir(TD, dir)
        .expect_err("the CA refuses these files")
        .to_string()
}

#[test]
fn created_files_sign_chains_through_the_intermediate_to_the_root() {
    let dir = temp_dir("ca-created");
    let written = create(TD, dir.path()).unwrap();
    assert_eq!(written.len(), 5);
    for key in [ROOT_KEY, CA_KEY] {
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key} is readable by its owner only");
    }

    let ca = CertificateAuthority::from_dir(TD, dir.path()).unwrap();
    assert_eq!(ca.root_pem(), read(&dir.path().join(ROOT_CERT)));
    let cert = issue(&ca, Duration::from_secs(3600));
    assert_eq!(cert.identity, workload());
    let pems: Vec<String> = cert.chain.iter().map(|der| certificate_pem(der)).collect();
    assert_eq!(pems.len(), 3, "leaf, intermediate, root");
    assert_eq!(pems[1], read(&dir.path().join(CA_CERT)));
    assert_eq!(pems[2], read(&dir.path().join(ROOT_CERT)));
    tls::verify_peer_chain(&cert.chain, std::slice::from_ref(ca.root())).unwrap();
    // Without the intermediate a peer cannot build the path.
    let leaf_only = [cert.chain[0].clone()];
    assert!(tls::verify_peer_chain(&leaf_only, std::slice::from_ref(ca.root())).is_err());

    // A second CA process on the same files: the same root, and each one's certificates
    // verify for the other's holders.
    let again = CertificateAuthority::from_dir(TD, dir.path()).unwrap();
    assert_eq!(again.root(), ca.root());
    tls::verify_peer_chain(
        &issue(&again, Duration::from_secs(60)).chain,
        &[ca.root().clone()],
    )
    .unwrap();
}

#[test]
fn create_never_overwrites() {
    let dir = temp_dir("ca-overwrite");
    create(TD, dir.path()).unwrap();
    let before = read(&dir.path().join(CA_KEY));
    let error = create(TD, dir.path()).unwrap_err().to_string();
    assert!(error.contains("never overwrites"), "{error}");
    assert_eq!(read(&dir.path().join(CA_KEY)), before);
}

#[test]
fn a_self_signed_root_as_ca_cert_needs_no_chain_file() {
    let dir = temp_dir("ca-root-only");
    create(TD, dir.path()).unwrap();
    std::fs::copy(dir.path().join(ROOT_CERT), dir.path().join(CA_CERT)).unwrap();
    std::fs::copy(dir.path().join(ROOT_KEY), dir.path().join(CA_KEY)).unwrap();
    std::fs::remove_file(dir.path().join(CERT_CHAIN)).unwrap();
    let ca = CertificateAuthority::from_dir(TD, dir.path()).unwrap();
    let cert = issue(&ca, Duration::from_secs(60));
    assert_eq!(cert.chain.len(), 2, "leaf and root");
    tls::verify_peer_chain(&cert.chain, std::slice::from_ref(ca.root())).unwrap();
}

#[test]
fn the_chain_file_may_be_left_out_for_an_intermediate_the_root_signed() {
    let dir = temp_dir("ca-no-chain");
    create(TD, dir.path()).unwrap();
    std::fs::remove_file(dir.path().join(CERT_CHAIN)).unwrap();
    let ca = CertificateAuthority::from_dir(TD, dir.path()).unwrap();
    tls::verify_peer_chain(
        &issue(&ca, Duration::from_secs(60)).chain,
        &[ca.root().clone()],
    )
    .unwrap();
}

#[test]
fn a_key_of_another_certificate_is_refused_naming_the_key_file() {
    let (dir, other) = two_cas("ca-wrong-key");
    std::fs::copy(other.path().join(CA_KEY), dir.path().join(CA_KEY)).unwrap();
    let error = refusal(dir.path());
    assert!(
        error.contains(CA_KEY) && error.contains("not the key of"),
        "{error}"
    );
}

#[test]
fn a_root_that_did_not_issue_the_ca_is_refused() {
    let (dir, other) = two_cas("ca-wrong-root");
    std::fs::copy(other.path().join(ROOT_CERT), dir.path().join(ROOT_CERT)).unwrap();
    std::fs::remove_file(dir.path().join(CERT_CHAIN)).unwrap();
    let error = refusal(dir.path());
    assert!(
        error.contains("verifies against no root") && error.contains("must be issued"),
        "{error}"
    );
}

/// During a root rotation `root-cert.pem` holds the old and the new root (Istio allows it):
/// the chains end in the root that issued the CA, and every root is published.
#[test]
fn a_root_file_with_two_roots_publishes_both_and_chains_to_the_issuing_one() {
    let (dir, other) = two_cas("ca-two-roots");
    std::fs::remove_file(dir.path().join(CERT_CHAIN)).unwrap();
    let ours = read(&dir.path().join(ROOT_CERT));
    let both = read(&other.path().join(ROOT_CERT)) + &ours;
    std::fs::write(dir.path().join(ROOT_CERT), &both).unwrap();
    let ca = CertificateAuthority::from_dir(TD, dir.path()).unwrap();
    assert_eq!(
        certificate_pem(ca.root()),
        ours,
        "the issuing root, not the first"
    );
    assert_eq!(ca.root_pem(), both, "both roots are published");
    let cert = issue(&ca, Duration::from_secs(60));
    assert_eq!(certificate_pem(cert.chain.last().unwrap()), ours);
    tls::verify_peer_chain(&cert.chain, std::slice::from_ref(ca.root())).unwrap();
}

#[test]
fn a_chain_file_not_starting_with_the_ca_cert_is_refused() {
    let dir = temp_dir("ca-chain-order");
    create(TD, dir.path()).unwrap();
    let reversed = read(&dir.path().join(ROOT_CERT)) + &read(&dir.path().join(CA_CERT));
    std::fs::write(dir.path().join(CERT_CHAIN), reversed).unwrap();
    let error = refusal(dir.path());
    assert!(
        error.contains(CERT_CHAIN) && error.contains("must start with"),
        "{error}"
    );
}

#[test]
fn missing_or_malformed_files_are_named() {
    let dir = temp_dir("ca-malformed");
    let error = refusal(dir.path());
    assert!(error.contains(CA_CERT), "{error}");

    create(TD, dir.path()).unwrap();
    std::fs::write(
        dir.path().join(CA_KEY),
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let error = refusal(dir.path());
    assert!(
        error.contains(CA_KEY) && error.contains("not a usable private key"),
        "{error}"
    );

    let two = read(&dir.path().join(CA_CERT)) + &read(&dir.path().join(ROOT_CERT));
    std::fs::write(dir.path().join(CA_CERT), two).unwrap();
    let error = refusal(dir.path());
    assert!(
        error.contains(CA_CERT) && error.contains("exactly one"),
        "{error}"
    );
}

/// Replaces the CA's certificate and key in `dir` with a certificate from `params`, signed
/// by the root in `dir`.
fn replace_ca(dir: &Path, params: CertificateParams) {
    let root_key = KeyPair::from_pem(&read(&dir.join(ROOT_KEY))).unwrap();
    let root_der = single(&dir.join(ROOT_CERT)).unwrap();
    let root = Issuer::from_ca_cert_der(&root_der, root_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &root).unwrap();
    // Without its chain file: the root issued this certificate directly.
    let _ = std::fs::remove_file(dir.join(CERT_CHAIN));
    std::fs::write(dir.join(CA_CERT), certificate_pem(cert.der())).unwrap();
    std::fs::write(dir.join(CA_KEY), key.serialize_pem()).unwrap();
}

fn intermediate(not_after: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "test intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.not_before = (SystemTime::now() - Duration::from_secs(7200)).into();
    params.not_after = not_after.into();
    params
}

#[test]
fn a_certificate_that_is_not_a_ca_or_expired_is_refused() {
    let dir = temp_dir("ca-not-ca");
    create(TD, dir.path()).unwrap();
    let mut leaf = intermediate(SystemTime::now() + Duration::from_secs(3600));
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    replace_ca(dir.path(), leaf);
    let error = refusal(dir.path());
    assert!(
        error.contains(CA_CERT) && error.contains("not a CA"),
        "{error}"
    );

    replace_ca(
        dir.path(),
        intermediate(SystemTime::now() - Duration::from_secs(3600)),
    );
    let error = refusal(dir.path());
    assert!(
        error.contains(CA_CERT) && error.contains("not valid now"),
        "{error}"
    );
}

#[test]
fn no_certificate_outlives_the_signing_certificate() {
    let dir = temp_dir("ca-short");
    create(TD, dir.path()).unwrap();
    let expires = SystemTime::now() + Duration::from_secs(3600);
    replace_ca(dir.path(), intermediate(expires));
    let ca = CertificateAuthority::from_dir(TD, dir.path()).unwrap();
    let cert = issue(&ca, Duration::from_secs(24 * 3600));
    let (_, leaf) = X509Certificate::from_der(&cert.chain[0]).unwrap();
    let not_after = leaf.validity().not_after.timestamp();
    let limit = expires
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        not_after <= limit,
        "the leaf ends at {not_after}, its CA at {limit}"
    );
}
