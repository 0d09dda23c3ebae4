//! The CA following its plug-in files: a whole root rotation against a CA serving TLS on
//! loopback, asked for certificates as an agent asks, and files that do not load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mesh_core::identity::ca::files::{self, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
use mesh_core::identity::service::{
    Authorizer, CaAddress, Refusal, ca_client, request_certificate,
};
use mesh_core::identity::{Error, Identity};
use rustls::pki_types::CertificateDer;
use tokio::sync::oneshot;

use super::*;
use crate::ca::{AuthorizerConfig, CaConfig, Signing};
use crate::test_util::until;

const TD: &str = "cluster.local";

/// Signs whatever is asked: these tests are about what the CA signs with, not for whom.
struct Anyone;

impl Authorizer for Anyone {
    async fn authorize(&self, _: &str, _: &Identity) -> Result<(), Refusal> {
        Ok(())
    }
}

/// A CA process's serving half on loopback, signing with `<dir>/cacerts`.
struct RunningCa {
    addr: SocketAddr,
    cacerts: PathBuf,
    root_out: PathBuf,
    _stop: oneshot::Sender<()>,
}

impl RunningCa {
    async fn start(dir: &Path) -> RunningCa {
        let cacerts = dir.join("cacerts");
        files::create(TD, &cacerts).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = CaConfig {
            listen: addr,
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            trust_domain: TD.into(),
            authorizer: AuthorizerConfig::File {
                config_dir: dir.join("unused"),
                node_credentials: dir.join("unused"),
            },
            ca_dir: Some(cacerts.clone()),
            publish_root: None,
            root_cert_out: dir.join("root-cert.pem"),
            max_validity: Duration::from_secs(3600),
        };
        let signing = Signing::start(&config, Duration::from_millis(50)).unwrap();
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            let observer = Arc::new(|_| {});
            signing
                .serve(&config, listener, Anyone, observer, stopped)
                .await
        });
        RunningCa {
            addr,
            cacerts,
            root_out: dir.join("root-cert.pem"),
            _stop: stop,
        }
    }

    /// The chain the CA signs now, asked over TLS trusting `roots` (PEM).
    async fn chain(&self, roots: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        self.chain_at(&self.addr.into(), roots).await
    }

    /// [`Self::chain`], dialling `addr`.
    async fn chain_at(
        &self,
        addr: &CaAddress,
        roots: &str,
    ) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let mut client = ca_client(addr, roots, Duration::from_secs(5))?;
        let identity = Identity::new(TD, "default", "sleep");
        let cert = request_certificate(&mut client, "any", &identity, Duration::from_secs(60))
            .await
            .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
        Ok(cert.chain)
    }

    /// The roots the CA last wrote for the agents.
    fn published(&self) -> Vec<CertificateDer<'static>> {
        ders(&std::fs::read_to_string(&self.root_out).unwrap())
    }
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    pem::parse_many(pem)
        .unwrap()
        .into_iter()
        .map(|block| CertificateDer::from(block.into_contents()))
        .collect()
}

/// Replaces `dir/name` with `text` as one new file, as a volume update lands.
fn replace(dir: &Path, name: &str, text: &str) {
    let next = dir.join(format!(".{name}.next"));
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, dir.join(name)).unwrap();
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// Istio's root rotation, step by step, against a CA that is never restarted: both roots
/// published; then the new intermediate signs and the CA serves a certificate of the new
/// chain; then the old root is dropped, and a client trusting only the new root still
/// reaches the CA.
#[tokio::test]
async fn a_root_rotation_in_the_ca_files_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = RunningCa::start(dir.path()).await;
    let second = dir.path().join("second");
    files::create(TD, &second).unwrap();
    let (old_pem, new_pem) = (read(&ca.cacerts, ROOT_CERT), read(&second, ROOT_CERT));
    let (old, new) = (ders(&old_pem).remove(0), ders(&new_pem).remove(0));
    let both = format!("{old_pem}{new_pem}");

    // Asked by name, as a waypoint asks for mesh-ca.istio-system.svc.
    let by_name = format!("localhost:{}", ca.addr.port()).parse().unwrap();
    let chain = ca.chain_at(&by_name, &old_pem).await.unwrap();
    assert_eq!(
        (chain.len(), chain.last()),
        (3, Some(&old)),
        "leaf, intermediate, old root"
    );

    // 1: both roots in root-cert.pem; the old intermediate still signs.
    replace(&ca.cacerts, ROOT_CERT, &both);
    until("both roots published", || async {
        anyhow::ensure!(ca.published() == [old.clone(), new.clone()]);
        Ok(())
    })
    .await;
    assert_eq!(ca.chain(&both).await.unwrap().last(), Some(&old));

    // 2: the new intermediate, its key and chain.
    for name in [CA_CERT, CA_KEY, CERT_CHAIN] {
        replace(&ca.cacerts, name, &read(&second, name));
    }
    until("the new intermediate signs", || async {
        let chain = ca.chain(&both).await?;
        anyhow::ensure!(
            chain.last() == Some(&new),
            "the chain still ends in the old root"
        );
        Ok(())
    })
    .await;

    // 3: the new root alone.
    replace(&ca.cacerts, ROOT_CERT, &new_pem);
    until("the new root alone published", || async {
        anyhow::ensure!(ca.published() == std::slice::from_ref(&new));
        Ok(())
    })
    .await;
    let chain = ca
        .chain(&new_pem)
        .await
        .expect("a client trusting only the new root reaches the CA");
    assert_eq!(chain.last(), Some(&new));
    let refused = ca.chain(&old_pem).await;
    assert!(
        refused.is_err(),
        "the CA still serves a certificate of the old root"
    );
}

/// A change is loaded once the files hold still; a version that does not load is reported
/// once, naming the file, and the next good version loads.
#[test]
fn ca_files_load_when_they_hold_still_and_bad_ones_are_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cacerts, other) = (dir.path().join("cacerts"), dir.path().join("other"));
    files::create(TD, &cacerts).unwrap();
    files::create(TD, &other).unwrap();
    let mut files = CaFiles::new(TD, &cacerts);
    let first = files.load().unwrap();
    assert!(files.poll().is_none(), "nothing changed");

    // A key that is not the signing certificate's.
    let good_key = read(&cacerts, CA_KEY);
    replace(&cacerts, CA_KEY, &read(&other, CA_KEY));
    assert!(files.poll().is_none(), "changed since the last poll: wait");
    match files.poll() {
        Some(Err(Error::CaFiles { path, message })) => {
            assert_eq!(path, cacerts.join(CA_KEY));
            assert!(message.contains("install the pair together"), "{message}");
        }
        other => panic!("expected the bad key reported, got {other:?}"),
    }
    assert!(files.poll().is_none(), "a bad version is reported once");

    replace(&cacerts, CA_KEY, &good_key);
    assert!(files.poll().is_none());
    let again = files.poll().expect("the good version").unwrap();
    assert_eq!(again.root(), first.root());
}

/// The serving certificate is made again at half its life, with a new key.
#[test]
fn the_serving_certificate_renews_at_half_its_life() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let ip = [std::net::Ipv4Addr::LOCALHOST.into()];
    let names = ["mesh-ca.istio-system.svc".to_owned()];
    let lasting = ServingCert::new(&ca, &names, &ip, Duration::from_secs(3600)).unwrap();
    assert!(!lasting.renew_if_due(&ca).unwrap(), "not half-way yet");
    let due = ServingCert::new(&ca, &names, &ip, Duration::ZERO).unwrap();
    let before = due.current().cert[0].clone();
    assert!(due.renew_if_due(&ca).unwrap());
    assert_ne!(due.current().cert[0], before, "a new certificate");

    use crate::ca::serve::renewal_wait;
    let (hour, year) = (
        Duration::from_secs(3600),
        Duration::from_secs(365 * 24 * 3600),
    );
    assert_eq!(renewal_wait(hour, year), hour / 2, "half the life left");
    assert_eq!(
        renewal_wait(Duration::ZERO, year),
        Duration::from_secs(60),
        "a signer at its end: a minute, not every poll"
    );
}
