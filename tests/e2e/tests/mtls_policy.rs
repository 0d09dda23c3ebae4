//! L4 policy on the mTLS data path, for real (root): AuthorizationPolicy allows and denies as
//! Istio documents, and PeerAuthentication STRICT refuses plaintext while PERMISSIVE (the
//! default) takes it through the node proxy, per namespace and per port.

use std::time::Duration;

use anyhow::ensure;
use mesh_e2e::{DENY_SLEEP, POLICY_LAB, TestLab, eventually, manifest, metrics, series_sum};
use mesh_sim::MeshOptions;
use serde_json::Value;

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

    let remote_ip = lab.pod("remote").ip;
    let by_ip_block = format!(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-remote-ip}}
spec:
  action: ALLOW
  rules: [{{from: [{{source: {{ipBlocks: ["{remote_ip}/32"]}}}}]}}]
"#
    );
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
        (
            "allow-other",
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-other}
spec:
  action: ALLOW
  rules: [{from: [{source: {namespaces: ["other"]}}]}]
"#,
            [false, false, true],
            "ALLOW by namespace: only namespace other",
        ),
        (
            "deny-sleep",
            DENY_SLEEP,
            [false, true, true],
            "DENY by principal: all but the sleep account",
        ),
        (
            "deny-8080",
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-8080}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ["8080"]}}]}]
"#,
            [false, false, false],
            "DENY by port: nobody reaches 8080",
        ),
        (
            "deny-over-allow",
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all-namespaces}
spec:
  action: ALLOW
  rules: [{from: [{source: {namespaces: ["default", "other"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-other-too}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: ["other"]}}]}]
"#,
            [true, true, false],
            "DENY wins over a matching ALLOW",
        ),
        (
            "allow-remote-ip",
            by_ip_block.as_str(),
            [true, false, false],
            "ALLOW by ipBlocks: only the remote pod's address (across nodes, from the tunnel's vouched Forwarded address)",
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
    // Same-node connections (local → server, both on node1, no TLS inside the process) are
    // reported by both sides with the full set of Istio's labels, as mutual TLS.
    let page = metrics(&lab, "node1");
    for reporter in ["source", "destination"] {
        let labels = [
            ("reporter", reporter),
            ("source_workload", "local"),
            ("source_workload_namespace", "default"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/default",
            ),
            ("source_canonical_service", "local"),
            ("source_canonical_revision", "latest"),
            ("destination_workload", "server"),
            ("destination_workload_namespace", "default"),
            ("destination_canonical_service", "httpbin"),
            ("destination_canonical_revision", "latest"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/default/sa/httpbin",
            ),
            ("connection_security_policy", "mutual_tls"),
        ];
        for name in [
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
            "istio_tcp_sent_bytes_total",
            "istio_tcp_received_bytes_total",
        ] {
            let sum = series_sum(&page, name, &labels);
            assert!(
                sum.is_some_and(|sum| sum > 0.0),
                "{name} {labels:?}: {sum:?} in\n{page}"
            );
        }
    }
    let log = lab.lab.agent_log("node1");
    assert!(
        log.contains("no ALLOW policy matched")
            && log.contains("denied by DENY policy default/deny-other"),
        "the agent logs why it refused:\n{log}"
    );
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
