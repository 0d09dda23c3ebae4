use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::identity::{CertificateAuthority, WorkloadKey};

const TD: &str = "cluster.local";

fn issue(ca: &CertificateAuthority, identity: &Identity) -> WorkloadCertificate {
    crate::test_util::issue(ca, identity, Duration::from_secs(3600))
}

/// Runs a handshake over an in-memory pipe; returns the identity the server saw, or the
/// client's and server's errors.
async fn handshake(
    client: ClientConfig,
    server: ServerConfig,
) -> Result<Identity, (String, String)> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let server = tokio::spawn(async move {
        let mut tls = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        let identity =
            peer_identity(tls.get_ref().1.peer_certificates()).map_err(|e| e.to_string())?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_H2));
        assert_eq!(
            tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
            "TLS 1.3 with AES-128-GCM between mesh proxies"
        );
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(identity)
    });
    let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
    let client_result = async {
        let mut tls = connector
            .connect(name, a)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(tls)
    }
    .await;
    let server_result = server.await.unwrap();
    match (client_result, server_result) {
        (Ok(_tls), Ok(identity)) => Ok(identity),
        (c, s) => Err((c.err().unwrap_or_default(), s.err().unwrap_or_default())),
    }
}

#[tokio::test]
async fn mutual_tls_proves_both_identities() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let reviews = Identity::new(TD, "default", "bookinfo-reviews");
    let ratings = Identity::new(TD, "default", "bookinfo-ratings");
    let client_cert = issue(&ca, &reviews);
    let server_cert = issue(&ca, &ratings);
    let roots = [ca.root().clone()];
    let seen = handshake(
        client_config(&client_cert, &roots, ratings.clone()).unwrap(),
        server_config(&server_cert, &roots).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(seen, reviews);
    assert!(client_cert.refresh_at() > SystemTime::now() + Duration::from_secs(1700));
    assert!(format!("{client_cert:?}").contains("<redacted>"));
    assert!(!format!("{ca:?}").contains("BEGIN"));
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let client_cert = issue(&ca, &Identity::new(TD, "default", "client"));
    let impostor = issue(&ca, &Identity::new(TD, "default", "impostor"));
    let roots = [ca.root().clone()];
    let (client_error, _) = handshake(
        client_config(
            &client_cert,
            &roots,
            Identity::new(TD, "default", "ratings"),
        )
        .unwrap(),
        server_config(&impostor, &roots).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        client_error.contains("expected spiffe://cluster.local/ns/default/sa/ratings"),
        "{client_error}"
    );
}

#[tokio::test]
async fn a_client_from_another_trust_root_is_refused() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let other_ca = CertificateAuthority::new(TD).unwrap();
    let server_id = Identity::new(TD, "default", "ratings");
    let server_cert = issue(&ca, &server_id);
    let stranger = issue(&other_ca, &Identity::new(TD, "default", "reviews"));
    let result = handshake(
        client_config(&stranger, &[ca.root().clone()], server_id).unwrap(),
        server_config(&server_cert, &[ca.root().clone()]).unwrap(),
    )
    .await;
    let (_, server_error) = result.unwrap_err();
    assert!(
        server_error.to_lowercase().contains("unknown") || server_error.contains("certificate"),
        "{server_error}"
    );
}

/// During a root rotation every workload trusts the old and the new root: holders of either
/// root's certificates connect both ways.
#[tokio::test]
async fn holders_of_either_of_two_trusted_roots_connect() {
    let old = CertificateAuthority::new(TD).unwrap();
    let new = CertificateAuthority::new(TD).unwrap();
    let roots = [old.root().clone(), new.root().clone()];
    let server_id = Identity::new(TD, "default", "ratings");
    let client_id = Identity::new(TD, "default", "reviews");
    for (client_ca, server_ca) in [(&old, &new), (&new, &old)] {
        let client = issue(client_ca, &client_id);
        let server = issue(server_ca, &server_id);
        handshake(
            client_config(&client, &roots, server_id.clone()).unwrap(),
            server_config(&server, &roots).unwrap(),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let server_id = Identity::new(TD, "default", "ratings");
    let server_cert = issue(&ca, &server_id);
    let client_id = Identity::new(TD, "default", "reviews");
    let key = WorkloadKey::generate().unwrap();
    let now = SystemTime::now();
    let chain = ca
        .sign_for_window(
            &key.csr(&client_id).unwrap(),
            &client_id,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    let expired = WorkloadCertificate::new(key, chain).unwrap();
    let roots = [ca.root().clone()];
    let (_, server_error) = handshake(
        client_config(&expired, &roots, server_id).unwrap(),
        server_config(&server_cert, &roots).unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        server_error.contains("certificate expired"),
        "{server_error}"
    );
}

#[test]
fn the_ca_signs_only_its_trust_domain_and_ignores_what_the_csr_asks() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let key = WorkloadKey::generate().unwrap();
    let asked = Identity::new(TD, "kube-system", "admin");
    let granted = Identity::new(TD, "default", "curl");
    let chain = ca
        .sign(&key.csr(&asked).unwrap(), &granted, Duration::from_secs(60))
        .unwrap();
    assert_eq!(chain.len(), 2);
    let cert = WorkloadCertificate::new(key, chain).unwrap();
    assert_eq!(cert.identity, granted);
    let foreign = Identity::new("other.domain", "default", "curl");
    let key = WorkloadKey::generate().unwrap();
    assert!(
        ca.sign(
            &key.csr(&foreign).unwrap(),
            &foreign,
            Duration::from_secs(60)
        )
        .is_err()
    );
    assert!(
        ca.sign(b"not a csr", &granted, Duration::from_secs(60))
            .is_err()
    );
}

#[test]
fn aes_128_gcm_comes_first_and_every_default_suite_stays_offered() {
    let ours: Vec<rustls::CipherSuite> =
        provider().cipher_suites.iter().map(|s| s.suite()).collect();
    let mut defaults: Vec<rustls::CipherSuite> = rustls::crypto::aws_lc_rs::default_provider()
        .cipher_suites
        .iter()
        .map(|s| s.suite())
        .collect();
    assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut sorted = ours;
    sorted.sort_by_key(|s| u16::from(*s));
    defaults.sort_by_key(|s| u16::from(*s));
    assert_eq!(sorted, defaults);
}
