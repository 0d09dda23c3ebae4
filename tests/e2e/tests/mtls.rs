//! The L4 mTLS data path on the lab, for real (root): HBONE between nodes carries only TLS,
//! AuthorizationPolicy allows and denies as Istio documents, the CA signs only identities of
//! pods on the caller's node, certificates rotate under open connections, and a thousand
//! concurrent connections pass one node agent and leave nothing behind.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use mesh_e2e::{TestLab, eventually, istio_sample};
use mesh_sim::{MeshOptions, http_get_in};
use serde_json::Value;

/// Writes `text` to a file of its own for this test and returns the path.
fn manifest(tag: &str, name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-mtls-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config_dump(lab: &TestLab, node: &str) -> Value {
    let (status, body) = lab.lab.agent_get(node, "/config_dump").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn metrics(lab: &TestLab, node: &str) -> String {
    let node = lab.lab.node(node).unwrap();
    let (status, body) = http_get_in(
        &node.netns,
        SocketAddr::from((node.ip, mesh_sim::METRICS_PORT)),
        "/stats/prometheus",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// How many certificates `identity` has had on `node`'s agent (0 if none).
fn issued(lab: &TestLab, node: &str, identity: &str) -> u64 {
    config_dump(lab, node)["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["identity"] == identity)
        .and_then(|c| c["issued"].as_u64())
        .unwrap_or(0)
}

#[test]
fn bookinfo_in_the_mesh_crosses_nodes_only_as_mutual_tls() {
    let mut lab = TestLab::up(
        "tls",
        2,
        &[
            istio_sample("bookinfo/platform/kube/bookinfo.yaml"),
            istio_sample("curl/curl.yaml"),
        ],
    );
    lab.start_mesh(&MeshOptions::default(), "default");
    eventually(Duration::from_secs(10), || {
        let page = lab.curl("curl", &["-f", "productpage:9080/productpage"])?;
        ensure!(page.contains("Book Details"), "{page}");
        Ok(())
    })
    .expect("the product page through the mesh");

    // Capture everything between the nodes (the bridge's ports) during the requests.
    let pcap = std::env::temp_dir().join(format!("mesh-mtls-{}.pcap", lab.name));
    let mut tcpdump = Command::new("ip")
        .args(["netns", "exec", &format!("msim-{}-net", lab.name)])
        // Every port of the bridge: frames switched between nodes never reach br0 itself.
        // Immediate mode: a SIGINT must not lose what sits in the capture ring.
        .args([
            "tcpdump",
            "--immediate-mode",
            "-i",
            "any",
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(&pcap)
        .arg("tcp")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (cargo xtask setup installs it)");
    let mut stderr = BufReader::new(tcpdump.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("listening on") {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("tcpdump ended before it was listening: {said}");
        }
        said.push_str(&line);
    }
    let mut versions = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let page = lab
            .curl(
                "curl",
                &[
                    "-f",
                    "-H",
                    "cookie: session=x",
                    "productpage:9080/productpage?u=normal",
                ],
            )
            .unwrap();
        assert!(page.contains("Book Details"), "{page}");
        for version in ["reviews-v1", "reviews-v2", "reviews-v3"] {
            if page.contains(version) {
                versions.insert(version);
            }
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tcpdump.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    tcpdump.wait().unwrap();
    assert!(
        versions.len() >= 2,
        "reviews are balanced over versions: {versions:?}"
    );

    let read = |filter: &[&str]| {
        let output = Command::new("tcpdump")
            .args(["-nn", "-A", "-r"])
            .arg(&pcap)
            .args(filter)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let all = read(&[]);
    let hbone_packets = read(&["tcp port 15008"])
        .lines()
        .filter(|l| l.contains(" IP "))
        .count();
    assert!(hbone_packets > 0, "no HBONE traffic between nodes:\n{all}");
    // (Service-account names do cross in the clear, in the TLS SNI; the payload must not.)
    for plaintext in [
        "HTTP/1.1",
        "GET /",
        "Book Details",
        "Reviewer1",
        "content-type",
    ] {
        if let Some(at) = all.find(plaintext) {
            let from = all[..at].rfind(" IP ").unwrap_or(0);
            panic!(
                "{plaintext:?} crossed the bridge in the clear:\n{}",
                &all[from..(at + 200).min(all.len())]
            );
        }
    }
    let non_hbone = read(&["tcp and not port 15008 and not port 15012"]);
    assert!(
        !non_hbone.lines().any(|l| l.contains(" IP ")),
        "traffic between nodes outside HBONE:\n{non_hbone}"
    );

    let _ = std::fs::remove_file(&pcap);

    // Both sides report Istio's TCP metrics, as mutual TLS, with workload identities.
    let reported: String = ["node1", "node2"]
        .iter()
        .map(|n| metrics(&lab, n))
        .collect();
    for expected in [
        r#"reporter="source""#,
        r#"reporter="destination""#,
        r#"destination_principal="spiffe://cluster.local/ns/default/sa/bookinfo-reviews""#,
        r#"source_workload="productpage-v1""#,
        r#"connection_security_policy="mutual_tls""#,
    ] {
        assert!(
            reported.contains(expected),
            "metrics lack {expected}:\n{reported}"
        );
    }
    assert!(reported.contains("istio_tcp_connections_opened_total{"));
    assert!(reported.contains("istio_tcp_received_bytes_total{"));
}

const POLICY_LAB: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: httpbin}
---
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: httpbin}}
spec:
  serviceAccountName: httpbin
  containers:
  - {name: httpbin, image: mccutchen/go-httpbin, ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sleep}
---
apiVersion: v1
kind: Pod
metadata: {name: remote, labels: {app: sleep}}
spec:
  serviceAccountName: sleep
  containers:
  - {name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: local, labels: {app: local}}
spec:
  containers:
  - {name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: other, labels: {app: stranger}}
spec:
  containers:
  - {name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
"#;

/// Which of the clients reach the server now.
fn reach(lab: &TestLab, server: &str) -> [bool; 3] {
    ["remote", "local", "other/stranger"].map(|client| {
        lab.curl(
            client,
            &["--max-time", "3", "-f", &format!("http://{server}:8080/ip")],
        )
        .is_ok()
    })
}

#[test]
fn authorization_policies_allow_and_deny_as_istio_documents() {
    let file = manifest("pol", "lab.yaml", POLICY_LAB);
    let mut lab = TestLab::up("pol", 2, &[file]);
    for (pod, node) in [
        ("server", "node1"),
        ("remote", "node2"),
        ("local", "node1"),
        ("other/stranger", "node2"),
    ] {
        assert_eq!(lab.pod(pod).node, node, "scheduling of {pod} changed");
    }
    lab.start_mesh(&MeshOptions::default(), "default");
    let server = lab.pod("server").ip.to_string();
    let expect = |lab: &TestLab, wanted: [bool; 3], why: &str| {
        eventually(Duration::from_secs(5), || {
            let seen = reach(lab, &server);
            ensure!(
                seen == wanted,
                "{why}: remote, local, stranger reach = {seen:?}"
            );
            Ok(())
        })
        .unwrap();
    };
    expect(&lab, [true, true, true], "no policy: everyone");

    let policies = [
        (
            "allow-sleep",
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]}]
"#,
            [true, false, false],
            "ALLOW by principal: only the sleep account",
        ),
        (
            "deny-other",
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-other}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{from: [{source: {namespaces: ["other"]}}]}]
"#,
            [true, true, false],
            "DENY by namespace: all but namespace other",
        ),
        (
            "allow-port",
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-port}
spec:
  action: ALLOW
  rules: [{to: [{operation: {ports: ["9999"]}}]}]
"#,
            [false, false, false],
            "ALLOW only port 9999: nobody reaches 8080 (default deny)",
        ),
        (
            "allow-8080-not-other",
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-8080-not-other}
spec:
  action: ALLOW
  rules:
  - from: [{source: {notNamespaces: ["other"]}}]
    to: [{operation: {ports: ["8080"]}}]
"#,
            [true, true, false],
            "ALLOW port 8080 from every namespace but other",
        ),
    ];
    for (name, yaml, wanted, why) in policies {
        let file = manifest("pol", &format!("{name}.yaml"), yaml);
        lab.lab
            .apply(std::slice::from_ref(&file), "default")
            .unwrap();
        expect(&lab, wanted, why);
        lab.lab.delete(&[file], "default").unwrap();
        expect(&lab, [true, true, true], "policy removed: everyone again");
    }
    let log = lab.lab.agent_log("node1");
    assert!(
        log.contains("no ALLOW policy matched")
            && log.contains("denied by DENY policy default/deny-other"),
        "the agent logs why it refused:\n{log}"
    );
}

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
            root: std::fs::read_to_string(ca_dir.join("root-cert.pem"))?,
            credential: std::fs::read_to_string(ca_dir.join(format!("{from}.credential")))?,
        })
    }

    /// A certificate for `namespace/service_account`, or the CA's refusal.
    async fn certificate(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<mesh_core::identity::WorkloadCertificate> {
        use mesh_core::identity::Identity;
        use mesh_core::identity::service::{ca_client, request_certificate};
        let identity = Identity::new("cluster.local", namespace, service_account);
        let mut client = ca_client(self.ca, &self.root, Duration::from_secs(5))?;
        let cert = request_certificate(
            &mut client,
            self.credential.trim(),
            &identity,
            Duration::from_secs(60),
        )
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
    let access = CaAccess::of(lab, from)?;
    let (namespace, service_account) = (namespace.to_owned(), service_account.to_owned());
    in_node(lab, from, move || async move {
        access
            .certificate(&namespace, &service_account)
            .await
            .map(drop)
    })
}

/// From inside node `from`'s network namespace, as an Istio ztunnel would: a certificate for
/// `client_sa` from the CA (with the node's credential), then HBONE straight to the pod
/// `server` (`<pod ip>:15008`, no SNI), expecting the server to prove `expect_sa`; an HTTP
/// GET of `/ip` on port 8080 through the tunnel. Returns the HTTP response.
fn istio_style_get(
    lab: &TestLab,
    from: &str,
    client_sa: &str,
    server: std::net::IpAddr,
    expect_sa: &str,
) -> Result<String> {
    use mesh_core::hbone::Connection;
    use mesh_core::identity::Identity;
    use mesh_core::identity::tls::client_config;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let access = CaAccess::of(lab, from)?;
    let client_sa = client_sa.to_owned();
    let expected = Identity::new("cluster.local", "default", expect_sa);
    in_node(lab, from, move || async move {
        let cert = access.certificate("default", &client_sa).await?;
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
    let deny = manifest(
        "ist",
        "deny.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sleep}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]}]
"#,
    );
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
    // A forged credential is refused too.
    std::fs::write(
        lab.lab.dir().join("ca/forged.credential"),
        "not-a-credential",
    )
    .unwrap();
    let forged = ask_ca(&lab, "forged", "default", "httpbin");
    assert!(forged.is_err(), "{forged:?}");
}

#[test]
fn certificates_rotate_under_open_connections_and_new_ones_use_the_new_certificate() {
    let mut lab = TestLab::up(
        "rot",
        2,
        &[
            istio_sample("curl/curl.yaml"),
            istio_sample("tcp-echo/tcp-echo-services.yaml"),
        ],
    );
    lab.start_mesh(
        &MeshOptions {
            cert_ttl: Some("4s".into()),
            ..MeshOptions::default()
        },
        "default",
    );
    let client = lab.pod("curl").clone();
    let echo = lab
        .lab
        .state()
        .pods
        .values()
        .find(|p| p.labels.get("app").is_some_and(|a| a == "tcp-echo") && p.node != client.node)
        .expect("a tcp-echo pod on the other node")
        .clone();
    let client_id = "spiffe://cluster.local/ns/default/sa/curl";
    eventually(Duration::from_secs(5), || {
        ensure!(issued(&lab, &client.node, client_id) >= 1);
        Ok(())
    })
    .expect("the client's first certificate");
    let first = issued(&lab, &client.node, client_id);

    // One connection, open for ~10 s, one echo a second.
    let script = format!(
        "exec 3<>/dev/tcp/{}/9000; for i in $(seq 1 10); do echo ping$i >&3; head -n1 <&3; sleep 1; done",
        echo.ip
    );
    let long = lab
        .lab
        .exec_command(&client, "bash", &["-c".into(), script])
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(15), || {
        let now = issued(&lab, &client.node, client_id);
        ensure!(now >= first + 3, "{now} certificates so far");
        Ok(())
    })
    .expect("three rotations during the connection");
    let output = long.wait_with_output().unwrap();
    let echoed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    for i in 1..=10 {
        assert!(
            echoed.lines().any(|l| l.ends_with(&format!("ping{i}"))),
            "echo {i} missing: {echoed}"
        );
    }
    // The first certificates have expired by now: a new connection works only with new ones.
    let reply = lab
        .exec(
            "curl",
            "bash",
            &[
                "-c",
                &format!(
                    "exec 3<>/dev/tcp/{}/9000; echo new >&3; head -n1 <&3",
                    echo.ip
                ),
            ],
        )
        .unwrap();
    assert!(reply.trim().ends_with("new"), "{reply}");
    let server_id = "spiffe://cluster.local/ns/default/sa/default";
    assert!(
        issued(&lab, &echo.node, server_id) >= 3,
        "the server side rotated too"
    );
}

/// What both node agents use now.
fn usage(lab: &TestLab) -> [mesh_sim::AgentUsage; 2] {
    ["node1", "node2"].map(|node| lab.lab.agent_usage(node).unwrap())
}

#[test]
fn a_thousand_concurrent_connections_complete_and_leave_nothing_behind() {
    let file = manifest("thousand", "lab.yaml", POLICY_LAB);
    let mut lab = TestLab::up("thd", 2, &[file]);
    lab.start_mesh(&MeshOptions::default(), "default");
    let server = lab.pod("server").ip.to_string();
    eventually(Duration::from_secs(5), || {
        lab.curl("remote", &["-f", &format!("http://{server}:8080/ip")])
    })
    .expect("the mesh carries the client's requests");
    let start = usage(&lab);
    let before = start.map(|u| u.fds);
    // curl runs at most 300 transfers at once: four of them, 250 each, all held open ~2 s.
    let script = format!(
        "ulimit -n 4096; for i in 1 2 3 4; do curl -s --parallel --parallel-immediate --parallel-max 250 \
         -o /dev/null -w '%{{http_code}}\\n' 'http://{server}:8080/delay/2?[1-250]' & done; wait"
    );
    let started = Instant::now();
    let out = lab.exec("remote", "bash", &["-c", &script]).unwrap();
    let took = started.elapsed();
    let ok = out.lines().filter(|l| *l == "200").count();
    assert_eq!(ok, 1000, "every connection completes ({took:?}):\n{out}");
    assert!(
        took < Duration::from_secs(20),
        "they ran concurrently, not one after another ({took:?})"
    );
    let after = eventually(Duration::from_secs(10), || {
        let now = usage(&lab).map(|u| u.fds);
        if now[0] <= before[0] + 2 && now[1] <= before[1] + 2 {
            Ok(now)
        } else {
            bail!("fds before {before:?}, now {now:?}")
        }
    })
    .expect("no file descriptors remain once the connections closed");
    let rss_before = start.map(|u| u.rss_kb);
    let rss_after = usage(&lab).map(|u| u.rss_kb);
    eprintln!(
        "1000 concurrent connections in {took:?}; agent fds {before:?} -> {after:?}; RSS kB {rss_before:?} -> {rss_after:?}"
    );
    let (status, _) = lab.lab.agent_get("node2", "/healthz/ready").unwrap();
    assert_eq!(status, 200);
}

const PEER_AUTH_LAB: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: httpbin}
---
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: httpbin}}
spec:
  serviceAccountName: httpbin
  containers:
  - {name: httpbin, image: mccutchen/go-httpbin, ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 8000, targetPort: 8080}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sleep}
---
apiVersion: v1
kind: Pod
metadata: {name: meshclient, labels: {app: sleep}}
spec:
  serviceAccountName: sleep
  containers:
  - {name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: near, namespace: plain, labels: {app: near}}
spec:
  containers:
  - {name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: far, namespace: plain, labels: {app: far}}
spec:
  containers:
  - {name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
"#;

/// What each client gets from the server, by pod IP and by service: the address the server
/// saw the connection come from, or `None` when it failed.
fn origins(lab: &TestLab, clients: &[&str]) -> Vec<[Option<String>; 2]> {
    let server = lab.pod("server").ip.to_string();
    clients
        .iter()
        .map(|client| {
            [
                format!("http://{server}:8080/ip"),
                "http://httpbin.default:8000/ip".to_owned(),
            ]
            .map(|url| {
                let body = lab.curl(client, &["--max-time", "3", "-f", &url]).ok()?;
                let seen: Value = serde_json::from_str(&body).ok()?;
                seen["origin"].as_str().map(|o| {
                    o.rsplit_once(':')
                        .map_or(o, |(ip, _)| ip)
                        .trim_matches(['[', ']'])
                        .to_owned()
                })
            })
        })
        .collect()
}

#[test]
fn peer_authentication_strict_refuses_plaintext_and_permissive_takes_it_through_the_proxy() {
    let file = manifest("peer", "lab.yaml", PEER_AUTH_LAB);
    let mut lab = TestLab::up("peer", 2, &[file]);
    for (pod, node) in [
        ("server", "node2"),
        ("meshclient", "node1"),
        ("plain/near", "node2"),
        ("plain/far", "node1"),
    ] {
        assert_eq!(lab.pod(pod).node, node, "scheduling of {pod} changed");
    }
    // Before the mesh, plaintext clients reach the pod directly: it sees their addresses.
    let direct = origins(&lab, &["plain/near", "plain/far"]);
    let own_ips = ["plain/near", "plain/far"].map(|p| lab.pod(p).ip.to_string());
    for (seen, ip) in direct.iter().zip(&own_ips) {
        assert_eq!(seen, &[Some(ip.clone()), Some(ip.clone())], "no mesh yet");
    }

    lab.start_mesh(&MeshOptions::default(), "default");
    let node_ip = lab.lab.node("node2").unwrap().ip.to_string();
    let clients = ["meshclient", "plain/near", "plain/far"];
    // Istio's default is PERMISSIVE: plaintext still works, but now through node2's proxy
    // (the pod sees the node's address), by pod IP and by ClusterIP, same node and across.
    let through_proxy = vec![[Some(node_ip.clone()), Some(node_ip.clone())]; 3];
    let expect = |lab: &TestLab, wanted: &[[Option<String>; 2]], why: &str| {
        eventually(Duration::from_secs(5), || {
            let seen = origins(lab, &clients);
            ensure!(
                seen == wanted,
                "{why}: (mesh client, same-node plaintext, other-node plaintext) × (pod IP, \
                 service) saw {seen:?}, wanted {wanted:?}"
            );
            Ok(())
        })
        .unwrap();
    };
    expect(&lab, &through_proxy, "default PERMISSIVE");
    let plaintext_opened = |lab: &TestLab| {
        metrics(lab, "node2")
            .lines()
            .filter(|l| {
                l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains(r#"reporter="destination""#)
                    && l.contains(r#"connection_security_policy="none""#)
                    && l.contains(r#"source_workload_namespace="plain""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(
        plaintext_opened(&lab) >= 4.0,
        "node2 reports the plaintext connections it delivered:\n{}",
        metrics(&lab, "node2")
    );

    let strict = manifest(
        "peer",
        "strict.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec:
  mtls: {mode: STRICT}
"#,
    );
    lab.lab
        .apply(std::slice::from_ref(&strict), "default")
        .unwrap();
    let mesh_only = vec![
        [Some(node_ip.clone()), Some(node_ip.clone())],
        [None, None],
        [None, None],
    ];
    expect(&lab, &mesh_only, "namespace STRICT");

    // A workload policy with a PERMISSIVE port overrides the namespace's STRICT there.
    let port_permissive = manifest(
        "peer",
        "port.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin-port}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
  portLevelMtls:
    "8080": {mode: PERMISSIVE}
"#,
    );
    lab.lab
        .apply(std::slice::from_ref(&port_permissive), "default")
        .unwrap();
    expect(&lab, &through_proxy, "port 8080 PERMISSIVE on the workload");
    lab.lab.delete(&[port_permissive], "default").unwrap();
    expect(&lab, &mesh_only, "back to STRICT");
    lab.lab.delete(&[strict], "default").unwrap();
    expect(&lab, &through_proxy, "policy removed: PERMISSIVE again");

    let log = lab.lab.agent_log("node2");
    assert!(
        log.contains("plaintext connection refused: the pod takes mutual TLS only"),
        "the agent logs why it refused:\n{log}"
    );
    let dump = redirect_stats(&lab, "node2");
    assert!(
        dump["ebpf"]["stats"]["inbound_captured"].as_u64() > Some(0),
        "{dump:#}"
    );
}

fn redirect_stats(lab: &TestLab, node: &str) -> Value {
    let (status, body) = lab.lab.agent_get(node, "/stats/redirect").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}
