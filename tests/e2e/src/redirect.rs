//! The lab of the eBPF redirection tests (`tests/redirect.rs`, `tests/redirect_restart.rs`):
//! two nodes, the mesh on, `default` enrolled, and helpers that read the node agents'
//! enrollment and counters.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use mesh_sim::MeshOptions;
use serde_json::Value;

use crate::TestLab;

/// The pods and services of [`mesh_lab`].
pub const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: curl}}
spec:
  containers:
  - {name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: server-a, labels: {app: httpbin, role: a}}
spec:
  containers:
  - {name: httpbin, image: mccutchen/go-httpbin, ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server-b, labels: {app: httpbin, role: b}}
spec:
  containers:
  - {name: httpbin, image: mccutchen/go-httpbin, ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: server-b}
spec:
  selector: {role: b}
  ports: [{name: http, port: 8000, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody}
spec:
  ports: [{name: http, port: 8000, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: plain, labels: {app: curl}}
spec:
  containers:
  - {name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
"#;

/// Enrollment must take effect for new connections within this.
pub const ENROLL_DEADLINE: Duration = Duration::from_secs(1);

/// A two-node lab with the mesh on and `default` enrolled: client and server-b on node1,
/// server-a and plain/outsider on node2.
pub fn mesh_lab(tag: &str, fast_path: bool) -> TestLab {
    mesh_lab_with(
        tag,
        &MeshOptions {
            fast_path,
            ..MeshOptions::default()
        },
    )
}

/// [`mesh_lab`] with the mesh run as `options` say.
pub fn mesh_lab_with(tag: &str, options: &MeshOptions) -> TestLab {
    let dir = std::env::temp_dir().join(format!("mesh-redirect-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lab.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let mut lab = TestLab::up(tag, 2, &[file]);
    let _ = std::fs::remove_dir_all(&dir);
    lab.lab
        .start_mesh(options)
        .unwrap_or_else(|e| panic!("lab {}: the mesh did not start: {e}", lab.name));
    for (pod, node) in [
        ("client", "node1"),
        ("server-b", "node1"),
        ("server-a", "node2"),
        ("plain/outsider", "node2"),
    ] {
        assert_eq!(lab.pod(pod).node, node, "scheduling of {pod} changed");
    }
    lab.lab
        .label("ns/default", &["istio.io/dataplane-mode=ambient".into()])
        .unwrap();
    within(ENROLL_DEADLINE, || {
        enrolled(&lab, "node1", "default/client")
    })
    .expect("the client is enrolled within 1 s of the namespace label");
    lab
}

/// Whether the node agent lists `pod` as enrolled.
pub fn enrolled(lab: &TestLab, node: &str, pod: &str) -> bool {
    let Ok((200, body)) = lab.lab.agent_get(node, "/config_dump") else {
        return false;
    };
    let dump: Value = serde_json::from_str(&body).unwrap_or_default();
    dump["local_pods"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| {
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or("")
            ) == pod
                && p["enrolled"] == true
        })
}

/// The peer address httpbin saw (its `/ip`), fetched by `pod`.
pub fn origin(lab: &TestLab, pod: &str, url: &str) -> Result<String> {
    let body = lab.curl(pod, &["--max-time", "5", url])?;
    let value: Value = serde_json::from_str(&body).with_context(|| format!("body {body:?}"))?;
    Ok(value["origin"].as_str().unwrap_or_default().to_owned())
}

/// The node agent's `/stats/redirect` page.
pub fn stats(lab: &TestLab, node: &str) -> Value {
    let (status, body) = lab.lab.agent_get(node, "/stats/redirect").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A pod's counter on a `/stats/redirect` page (0 if absent).
pub fn pod_counter(stats: &Value, pod: &str, counter: &str) -> u64 {
    stats["pods"][pod]["counters"][counter]
        .as_u64()
        .unwrap_or(0)
}

/// An eBPF counter on a `/stats/redirect` page (0 if absent).
pub fn ebpf_stat(stats: &Value, name: &str) -> u64 {
    stats["ebpf"]["stats"][name].as_u64().unwrap_or(0)
}

/// Starts a curl in a pod without waiting for it (output captured), for requests that must
/// be open while the test changes something.
pub fn slow_request(lab: &TestLab, pod: &mesh_sim::Pod, url: &str) -> std::process::Child {
    let args = [
        "-sS".into(),
        "--max-time".into(),
        "10".into(),
        url.to_owned(),
    ];
    lab.lab
        .exec_command(pod, "curl", &args)
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Polls until `check` is true, failing after `deadline`; returns how long it took.
pub fn within(deadline: Duration, mut check: impl FnMut() -> bool) -> Result<Duration> {
    let started = Instant::now();
    crate::poll_until(deadline, Duration::from_millis(20), || {
        ensure!(check(), "not within {deadline:?}");
        Ok(())
    })?;
    Ok(started.elapsed())
}

/// Whether a request from `pod` (on `node`) to `url` was redirected by the node's eBPF: its
/// `redirected` counter rose. The request itself must succeed.
pub fn redirected_by(lab: &TestLab, node: &str, pod: &str, url: &str) -> bool {
    let before = ebpf_stat(&stats(lab, node), "redirected");
    origin(lab, pod, url).unwrap();
    ebpf_stat(&stats(lab, node), "redirected") > before
}
