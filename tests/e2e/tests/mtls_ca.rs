//! The lab's CA and HBONE as Istio speaks it, for real (root): the CA signs only identities
//! of pods on the caller's node, keeps its root (plug-in CA files) across a restart, and an
//! Istio-style client (HBONE straight to a pod address, no SNI) is served as that pod, with
//! its certificate, under policy.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use mesh_e2e::{
    DENY_SLEEP, POLICY_LAB, TestLab, certificates_issued, eventually, manifest, series_sum,
};
use mesh_sim::MeshOptions;

/// What a client inside node `from` needs to ask the lab's CA: its address, root, and the
/// node's credential.
struct CaAccess {
    ca: SocketAddr,
    root: String,
    credential: String,
}

impl CaAccess {
    fn of(lab: &TestLab, from: &str) -> Result<CaAccess> {
        let ca_dir = lab.lab.dir().join("ca");
        Ok(CaAccess {
            ca: SocketAddr::from((lab.lab.node("node1")?.ip, mesh_sim::CA_PORT)),
            // The lab CA's own root (its files), not the agents' root file, which a test may
            // change.
            root: std::fs::read_to_string(ca_dir.join("cacerts/root-cert.pem"))?,
            credential: std::fs::read_to_string(ca_dir.join(format!("{from}.credential")))?,
        })
    }

    /// A certificate for `namespace/service_account`, or the CA's refusal.
    async fn certificate(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<mesh_core::identity::WorkloadCertificate> {
        self.certificate_for(namespace, service_account, Duration::from_secs(60))
            .await
    }

    /// A certificate valid for `validity`, or the CA's refusal.
    async fn certificate_for(
        &self,
        namespace: &str,
        service_account: &str,
        validity: Duration,
    ) -> Result<mesh_core::identity::WorkloadCertificate> {
        use mesh_core::identity::Identity;
        use mesh_core::identity::service::{ca_client, request_certificate};
        let identity = Identity::new("cluster.local", namespace, service_account);
        let mut client = ca_client(&self.ca.into(), &self.root, Duration::from_secs(5))?;
        let cert = request_certificate(&mut client, self.credential.trim(), &identity, validity)
            .await
            .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))?;
        ensure!(cert.identity == identity, "signed {}", cert.identity);
        Ok(cert)
    }
}

/// Runs `work` on a thread of its own inside node `node`'s network namespace (setns changes
/// only the calling thread), on a runtime of its own.
fn in_node<T, F>(lab: &TestLab, node: &str, work: impl FnOnce() -> F + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>>,
{
    let netns = std::fs::File::open(format!("/run/netns/{}", lab.lab.node(node)?.netns))?;
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in {node}'s network namespace panicked"))?
}

/// Asks the lab's CA, from inside node `from`'s network namespace with that node's
/// credential, for a certificate of `namespace/service_account`.
fn ask_ca(lab: &TestLab, from: &str, namespace: &str, service_account: &str) -> Result<()> {
    ask_ca_with(
        lab,
        from,
        CaAccess::of(lab, from)?,
        namespace,
        service_account,
    )
}

/// [`ask_ca`] with the access (credential) `access`.
fn ask_ca_with(
    lab: &TestLab,
    from: &str,
    access: CaAccess,
    namespace: &str,
    service_account: &str,
) -> Result<()> {
    let (namespace, service_account) = (namespace.to_owned(), service_account.to_owned());
    in_node(lab, from, move || async move {
        access
            .certificate(&namespace, &service_account)
            .await
            .map(drop)
    })
}

/// The certificate an HBONE client presents.
enum ClientCert {
    /// From the lab's CA, for this service account of `default`.
    Mesh(&'static str),
    /// From the lab's CA, valid for one second, and used once it has surely expired: the
    /// certificate's times have whole seconds (the end may round up by one) and a verifier
    /// compares whole seconds, so 3.5 s after issue.
    Expired(&'static str),
    /// From another CA of the same trust domain: a root the mesh does not trust.
    Foreign(&'static str),
    /// From the CA whose plug-in files are in this folder.
    OtherCa(&'static str, std::path::PathBuf),
}

/// From inside node `from`'s network namespace, as an Istio ztunnel would: a certificate for
/// `client_sa` from the CA (with the node's credential), then HBONE straight to the pod
/// `server` (`<pod ip>:15008`, no SNI), expecting the server to prove `expect_sa`; an HTTP
/// GET of `/ip` on port 8080 through the tunnel. Returns the HTTP response.
fn istio_style_get(
    lab: &TestLab,
    from: &str,
    client_sa: &'static str,
    server: std::net::IpAddr,
    expect_sa: &str,
) -> Result<String> {
    hbone_get(lab, from, ClientCert::Mesh(client_sa), server, expect_sa)
}

/// [`istio_style_get`] with the client certificate of `client`.
fn hbone_get(
    lab: &TestLab,
    from: &str,
    client: ClientCert,
    server: std::net::IpAddr,
    expect_sa: &str,
) -> Result<String> {
    use mesh_core::hbone::Connection;
    use mesh_core::identity::tls::client_config;
    use mesh_core::identity::{CertificateAuthority, Identity};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let access = CaAccess::of(lab, from)?;
    let expected = Identity::new("cluster.local", "default", expect_sa);
    in_node(lab, from, move || async move {
        let cert = match client {
            ClientCert::Mesh(sa) => access.certificate("default", sa).await?,
            ClientCert::Expired(sa) => {
                let cert = access
                    .certificate_for("default", sa, Duration::from_secs(1))
                    .await?;
                tokio::time::sleep(Duration::from_millis(3500)).await;
                cert
            }
            ClientCert::Foreign(sa) => signed_by(&CertificateAuthority::new("cluster.local")?, sa)?,
            ClientCert::OtherCa(sa, dir) => {
                signed_by(&CertificateAuthority::from_dir("cluster.local", &dir)?, sa)?
            }
        };
        let roots: Vec<_> = pem::parse_many(&access.root)?
            .into_iter()
            .map(|p| rustls::pki_types::CertificateDer::from(p.into_contents()))
            .collect();
        let config = client_config(&cert, &roots, expected)?;
        let connector = std::sync::Arc::new(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            config,
        )));
        let connection = Connection::connect(
            connector,
            SocketAddr::new(server, mesh_core::hbone::PORT),
            rustls::pki_types::ServerName::IpAddress(server.into()),
        )
        .await?;
        let mut tunnel = connection
            .tunnel(SocketAddr::new(server, 8080), None)
            .await?;
        tunnel
            .write_all(b"GET /ip HTTP/1.0\r\nHost: server\r\n\r\n")
            .await?;
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_string(&mut response))
            .await??;
        Ok(response)
    })
}

/// A certificate for `default/<sa>` signed directly by `ca`, not by the lab's CA service.
fn signed_by(
    ca: &mesh_core::identity::CertificateAuthority,
    sa: &str,
) -> Result<mesh_core::identity::WorkloadCertificate> {
    use mesh_core::identity::{Identity, WorkloadCertificate, WorkloadKey};
    let identity = Identity::new("cluster.local", "default", sa);
    let key = WorkloadKey::generate()?;
    let chain = ca.sign(&key.csr(&identity)?, &identity, Duration::from_secs(60))?;
    Ok(WorkloadCertificate::new(key, chain)?)
}

#[test]
fn istio_style_hbone_to_a_pod_address_without_sni_is_served_as_that_pod() {
    let file = manifest("ist", "lab.yaml", POLICY_LAB);
    let mut lab = TestLab::up("ist", 2, &[file]);
    lab.start_mesh(&MeshOptions::default(), "default");
    // server (sa httpbin) on node1; node2 may have sleep's identity (remote runs there).
    let server = lab.pod("server").ip;
    let response = eventually(Duration::from_secs(5), || {
        istio_style_get(&lab, "node2", "sleep", server.into(), "httpbin")
    })
    .expect("HBONE to <pod ip>:15008 without SNI, as Istio's ztunnel sends it");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    // The certificate presented is the pod's own: a client expecting another identity fails.
    let wrong = istio_style_get(&lab, "node2", "sleep", server.into(), "sleep");
    assert!(wrong.is_err(), "{wrong:?}");
    // Policy applies as for any tunnel.
    let deny = manifest("ist", "deny.yaml", DENY_SLEEP);
    lab.lab
        .apply(std::slice::from_ref(&deny), "default")
        .unwrap();
    eventually(Duration::from_secs(5), || {
        let refused = istio_style_get(&lab, "node2", "sleep", server.into(), "httpbin");
        ensure!(refused.is_err(), "still served: {refused:?}");
        Ok(())
    })
    .expect("a DENY policy refuses the tunnel");
}

/// The HBONE listener refuses clients whose certificate does not chain to the mesh's root,
/// or has expired, whatever identity it names; the same client with a valid certificate is
/// served. The client sees the server's alert, or a broken connection when its own first
/// write comes after the server closed; the server's log says why it refused.
#[test]
fn clients_with_another_root_or_an_expired_certificate_are_refused() {
    let file = manifest("rej", "lab.yaml", POLICY_LAB);
    let mut lab = TestLab::up("rej", 2, &[file]);
    lab.start_mesh(
        &MeshOptions {
            log: Some("info,mesh_node::proxy=debug".into()),
            ..MeshOptions::default()
        },
        "default",
    );
    let server = lab.pod("server").ip;
    eventually(Duration::from_secs(5), || {
        hbone_get(
            &lab,
            "node2",
            ClientCert::Mesh("sleep"),
            server.into(),
            "httpbin",
        )
    })
    .expect("a mesh client with a valid certificate is served");
    // The foreign root has the mesh root's name (the same trust domain), so the server finds
    // the mesh root as issuer and the signature does not verify.
    for (client, alert, reason) in [
        (ClientCert::Foreign("sleep"), "DecryptError", "BadSignature"),
        (
            ClientCert::Expired("sleep"),
            "CertificateExpired",
            "expired",
        ),
    ] {
        let refused = hbone_get(&lab, "node2", client, server.into(), "httpbin");
        let error = format!("{:#}", refused.expect_err("served"));
        eprintln!("refused: {error}");
        assert!(
            !error.contains("fatal alert") || error.contains(&format!("fatal alert: {alert}")),
            "{error}"
        );
        eventually(Duration::from_secs(5), || {
            let log = lab.lab.agent_log("node1");
            ensure!(
                log.lines()
                    .any(|l| l.contains("TLS handshake") && l.contains(reason)),
                "no refusal for {reason} in node1's log"
            );
            Ok(())
        })
        .unwrap();
    }
}

#[test]
fn the_ca_signs_only_identities_of_pods_on_the_callers_node() {
    let file = manifest("ca", "lab.yaml", POLICY_LAB);
    let mut lab = TestLab::up("ca", 2, &[file]);
    lab.start_mesh(&MeshOptions::default(), "default");
    // server (sa httpbin) runs on node1, remote (sa sleep) on node2.
    ask_ca(&lab, "node1", "default", "httpbin").expect("node1 may have httpbin's identity");
    ask_ca(&lab, "node2", "default", "sleep").expect("node2 may have sleep's identity");
    let refused = ask_ca(&lab, "node2", "default", "httpbin")
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("PermissionDenied") && refused.contains("is scheduled on node node2"),
        "{refused}"
    );
    let unknown = ask_ca(&lab, "node1", "default", "nobody")
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("PermissionDenied"), "{unknown}");
    // A forged credential is refused too, from the pod's own node.
    let forged = CaAccess {
        credential: "not-a-credential".into(),
        ..CaAccess::of(&lab, "node1").unwrap()
    };
    let forged = ask_ca_with(&lab, "node1", forged, "default", "httpbin")
        .unwrap_err()
        .to_string();
    assert!(forged.contains("Unauthenticated"), "{forged}");

    // The CA counted all of it under Istio's names (its /metrics on 15014).
    let page = mesh_e2e::ca_metrics(&lab);
    let count =
        |name: &str, labels: &[(&str, &str)]| series_sum(&page, name, labels).unwrap_or(0.0);
    let issued = count("citadel_server_success_cert_issuance_count_total", &[]);
    let denied = count("mesh_ca_refused_count_total", &[("reason", "denied")]);
    let unauthenticated = count("citadel_server_authentication_failure_count_total", &[]);
    assert!(issued >= 2.0, "the two asks and the agents' own:\n{page}");
    assert!(denied >= 2.0 && unauthenticated >= 1.0, "{page}");
    assert!(
        count("citadel_server_csr_count_total", &[]) >= issued + denied + unauthenticated,
        "{page}"
    );
    assert!(
        count("citadel_server_root_cert_expiry_timestamp", &[]) > 0.0,
        "{page}"
    );
}

/// The lab's CA signs with plug-in CA files (`mesh-node ca-init`, then `ca --ca-dir`), as a
/// CA fed from Istio's `cacerts` Secret does: what it signs chains through the intermediate,
/// and after a restart it keeps the root, so agents that started before the restart renew
/// from it and keep carrying new connections with what it signs.
#[test]
fn a_restarted_ca_keeps_its_root_and_the_agents_renew_from_it() {
    let lab = renewing_lab("car");
    let chain = {
        let access = CaAccess::of(&lab, "node2").unwrap();
        in_node(&lab, "node2", move || async move {
            Ok(access.certificate("default", "sleep").await?.chain.len())
        })
        .unwrap()
    };
    assert_eq!(chain, 3, "leaf, intermediate, root");

    let root_file = lab.lab.dir().join("ca/root-cert.pem");
    let root = std::fs::read_to_string(&root_file).unwrap();
    let before = issued(&lab);
    lab.lab.restart_ca().unwrap();
    assert_eq!(
        std::fs::read_to_string(&root_file).unwrap(),
        root,
        "the restarted CA published the same root"
    );
    // By then the certificates of before the restart have expired.
    renewed_twice(&lab, before).expect("both agents renew from the restarted CA");
    remote_get(&lab).expect("a new connection with certificates from the restarted CA");
    let log = lab.lab.agent_log("ca");
    assert!(
        !log.contains("no --ca-dir"),
        "the lab's CA signs with its CA files:\n{log}"
    );
}

/// Agents follow their root file (in Kubernetes the mounted `mesh-ca-root` ConfigMap), so a
/// root rotation needs no restart: a client whose certificate comes from a second CA is
/// refused while the file holds the first root, served once it holds both, and the first
/// root's clients are refused once it holds the second alone.
#[test]
fn agents_follow_a_root_rotation_in_their_root_file_without_restarting() {
    use mesh_core::identity::ca::files;
    let file = manifest("rrt", "lab.yaml", POLICY_LAB);
    let mut lab = TestLab::up("rrt", 2, &[file]);
    lab.start_mesh(&MeshOptions::default(), "default");
    let server = lab.pod("server").ip;
    let get = |client: ClientCert| hbone_get(&lab, "node2", client, server.into(), "httpbin");
    eventually(Duration::from_secs(5), || get(ClientCert::Mesh("sleep")))
        .expect("a client of the first root is served");
    let second = lab.lab.dir().join("ca/second");
    files::create("cluster.local", &second).unwrap();
    let other = || ClientCert::OtherCa("sleep", second.clone());
    assert!(get(other()).is_err(), "the second root is not trusted yet");

    let root_file = lab.lab.dir().join("ca/root-cert.pem");
    let first = std::fs::read_to_string(&root_file).unwrap();
    let second_root = std::fs::read_to_string(second.join(files::ROOT_CERT)).unwrap();
    let publish = |text: &str| {
        // As a ConfigMap update lands: a new file in place of the old one.
        let next = root_file.with_extension("next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, &root_file).unwrap();
    };
    publish(&(first + &second_root));
    eventually(Duration::from_secs(5), || get(other()))
        .expect("with both roots in the file, the second root's client is served");
    get(ClientCert::Mesh("sleep")).expect("and the first root's still");
    let roots = mesh_e2e::config_dump(&lab, "node1")["roots"].clone();
    assert_eq!(roots.as_array().map(Vec::len), Some(2), "{roots}");

    publish(&second_root);
    eventually(Duration::from_secs(5), || {
        let refused = get(ClientCert::Mesh("sleep"));
        ensure!(refused.is_err(), "still served: {refused:?}");
        Ok(())
    })
    .expect("with the second root alone, the first root's client is refused");
    get(other()).expect("the second root's client is served");
    ensure_logged(&lab, "node1", "CA root file changed");
}

/// Istio's root rotation done the way an operator does it in a cluster: only the CA's
/// plug-in files change (the `cacerts` Secret), and the CA, agents and workloads keep
/// running. The CA follows its files, publishes both roots, then signs with the new
/// intermediate, then publishes the new root alone; the agents follow the published roots,
/// renew into the new chain, keep reaching the CA (it serves a certificate of the new chain)
/// and keep carrying new connections at every step.
#[test]
fn a_root_rotation_in_the_ca_files_reaches_every_agent_without_a_restart() {
    use mesh_core::identity::ca::files::{self, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
    let lab = renewing_lab("rcf");

    let cacerts = lab.lab.dir().join("ca/cacerts");
    let second = lab.lab.dir().join("ca/second");
    files::create("cluster.local", &second).unwrap();
    let read = |dir: &std::path::Path| std::fs::read_to_string(dir.join(ROOT_CERT)).unwrap();
    let (old_pem, new_pem) = (read(&cacerts), read(&second));
    let (old, new) = (serial(&old_pem), serial(&new_pem));
    let nodes = ["node1", "node2"];

    // 1: both roots.
    replace(&cacerts, ROOT_CERT, &format!("{old_pem}{new_pem}"));
    eventually(Duration::from_secs(10), || {
        for node in nodes {
            let roots = root_serials(&lab, node);
            ensure!(
                roots == [old.as_str(), new.as_str()],
                "{node} trusts {roots:?}"
            );
        }
        Ok(())
    })
    .expect("both roots reach every agent");
    remote_get(&lab).expect("a new connection while both roots are trusted");

    // 2: the new intermediate signs.
    for name in [CA_CERT, CA_KEY, CERT_CHAIN] {
        let text = std::fs::read_to_string(second.join(name)).unwrap();
        replace(&cacerts, name, &text);
    }
    eventually(Duration::from_secs(20), || {
        for node in nodes {
            let chains = chain_roots(&lab, node);
            ensure!(
                !chains.is_empty() && chains.iter().all(|root| *root == new),
                "{node}'s certificates end in {chains:?}"
            );
        }
        Ok(())
    })
    .expect("every agent renews into the new chain");
    remote_get(&lab).expect("a new connection with certificates of the new chain");

    // 3: the new root alone.
    replace(&cacerts, ROOT_CERT, &new_pem);
    eventually(Duration::from_secs(10), || {
        for node in nodes {
            let roots = root_serials(&lab, node);
            ensure!(roots == [new.as_str()], "{node} trusts {roots:?}");
        }
        Ok(())
    })
    .expect("the new root alone reaches every agent");
    renewed_twice(&lab, issued(&lab))
        .expect("agents trusting only the new root still renew from the CA");
    remote_get(&lab).expect("a new connection with the new root alone");
    let log = lab.lab.agent_log("ca");
    assert_eq!(
        log.matches("the CA files changed: signing with them")
            .count(),
        3,
        "the CA loaded each step once:\n{log}"
    );
}

/// The identities [`renewing_lab`]'s agents hold, by node: `remote` (sa sleep) on node2
/// calls `server` (sa httpbin) on node1 through both agents.
const RENEWING: [(&str, &str); 2] = [
    ("node1", "spiffe://cluster.local/ns/default/sa/httpbin"),
    ("node2", "spiffe://cluster.local/ns/default/sa/sleep"),
];

/// A two-node lab whose agents hold 4 s certificates (renewed at about half their life),
/// once `remote` reaches `server` through the mesh.
fn renewing_lab(name: &str) -> TestLab {
    let file = manifest(name, "lab.yaml", POLICY_LAB);
    let mut lab = TestLab::up(name, 2, &[file]);
    lab.start_mesh(
        &MeshOptions {
            cert_ttl: Some("4s".into()),
            ..MeshOptions::default()
        },
        "default",
    );
    eventually(Duration::from_secs(5), || remote_get(&lab)).expect("the mesh carries the request");
    lab
}

/// A new connection from `remote` to `server` (HTTP GET of /ip).
fn remote_get(lab: &TestLab) -> Result<String> {
    let url = format!("http://{}:8080/ip", lab.pod("server").ip);
    lab.curl("remote", &["-sf", "--max-time", "5", &url])
}

/// How many certificates each of [`RENEWING`] has had.
fn issued(lab: &TestLab) -> [u64; 2] {
    RENEWING.map(|(node, id)| certificates_issued(lab, node, id))
}

/// Waits until each of [`RENEWING`] has had two certificates more than `before`.
fn renewed_twice(lab: &TestLab, before: [u64; 2]) -> Result<()> {
    eventually(Duration::from_secs(20), || {
        let now = issued(lab);
        ensure!(
            now.iter()
                .zip(&before)
                .all(|(now, before)| *now >= before + 2),
            "certificates issued {before:?} before, {now:?} now"
        );
        Ok(())
    })
}

/// Replaces `dir/name` with `text` as one new file, as a Secret update lands.
fn replace(dir: &std::path::Path, name: &str, text: &str) {
    let next = dir.join(format!(".{name}.next"));
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, dir.join(name)).unwrap();
}

/// The serial of the first certificate in `pem`, as the admin page prints serials.
fn serial(pem: &str) -> String {
    let der = pem::parse(pem).unwrap().into_contents();
    mesh_core::identity::workload::CaCertSummary::of(&der)
        .unwrap()
        .serial
}

/// The serials of the roots `node`'s agent trusts.
fn root_serials(lab: &TestLab, node: &str) -> Vec<String> {
    serials(&mesh_e2e::config_dump(lab, node)["roots"])
}

/// The serial of the root each certificate on `node`'s agent chains to.
fn chain_roots(lab: &TestLab, node: &str) -> Vec<String> {
    let dump = mesh_e2e::config_dump(lab, node);
    dump["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|cert| serials(&cert["chain"]).pop())
        .collect()
}

fn serials(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["serial"].as_str().map(str::to_owned))
        .collect()
}

/// Fails unless `node`'s agent logged a line containing `text`.
fn ensure_logged(lab: &TestLab, node: &str, text: &str) {
    let log = lab.lab.agent_log(node);
    assert!(
        log.lines().any(|l| l.contains(text)),
        "no {text:?} in {node}'s log"
    );
}
