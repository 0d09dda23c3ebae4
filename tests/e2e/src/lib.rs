//! The harness of the end-to-end tests: a lab per test with a unique name, removed when the
//! test ends however it ends, and helpers to run commands in its pods.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use mesh_sim::{Lab, LabOptions, MeshOptions, Pod};

pub mod redirect;

/// Fails the test (never skips it) when it cannot run for real.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the simulated-cluster tests need root (network namespaces, veths, cgroups, nftables); run them as root, e.g. via `cargo xtask test`"
    );
}

/// Istio's sample manifests from `../shared/istio-samples` beside the repository.
pub fn istio_sample(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/istio-samples")
        .join(relative);
    assert!(
        path.exists(),
        "{} is missing: the tests read Istio's samples from ../shared beside the repository",
        path.display()
    );
    path
}

/// A lab that belongs to one test and is taken down when dropped.
pub struct TestLab {
    pub name: String,
    pub lab: Lab,
}

/// A lab name no other test (or test run) uses: a tag, the process id and a counter.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_lowercase)
        .take(3)
        .collect();
    format!("{tag}{}{n}", std::process::id() % 100_000)
}

impl TestLab {
    /// Brings a lab up; any pod that does not become ready fails the test.
    pub fn up(tag: &str, nodes: u8, files: &[PathBuf]) -> TestLab {
        require_root();
        let name = unique_name(tag);
        let options = LabOptions {
            name: name.clone(),
            nodes,
            sample_app: None,
        };
        let (lab, applied) =
            Lab::up(&options, files).unwrap_or_else(|e| panic!("lab {name} did not come up: {e}"));
        let lab = TestLab { name, lab };
        assert!(
            applied.warnings.is_empty(),
            "pods not ready: {:#?}",
            applied.warnings
        );
        lab
    }

    pub fn pod(&self, reference: &str) -> &Pod {
        self.lab
            .pod(reference)
            .unwrap_or_else(|e| panic!("lab {}: {e}", self.name))
    }

    /// Runs a command in a pod; returns stdout, failing on a non-zero exit.
    pub fn exec(&self, pod: &str, program: &str, args: &[&str]) -> Result<String> {
        let pod = self.pod(pod);
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let output = self
            .lab
            .exec_command(pod, program, &args)?
            .output()
            .with_context(|| format!("running {program} in {}", pod.key()))?;
        if !output.status.success() {
            bail!(
                "{program} {args:?} in {} exited with {}: {}",
                pod.key(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `curl -sS --max-time 10 ARGS…` from a pod.
    pub fn curl(&self, pod: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["-sS", "--max-time", "10"];
        full.extend(args);
        self.exec(pod, "curl", &full)
    }
}

/// Polls `check` until it returns `Ok`, up to `deadline`; the last error otherwise.
pub fn eventually<T>(deadline: Duration, check: impl FnMut() -> Result<T>) -> Result<T> {
    poll_until(deadline, Duration::from_millis(50), check)
}

/// [`eventually`], polling every `interval` (finer where the time taken is measured).
pub fn poll_until<T>(
    deadline: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<T>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() > deadline => return Err(error),
            Err(_) => std::thread::sleep(interval),
        }
    }
}

impl TestLab {
    /// Writes `text` to a manifest file of this lab's own (removed with the temp dir's
    /// owner: the lab name is unique) and returns its path.
    pub fn manifest(&self, name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mesh-e2e-{}", self.name));
        std::fs::create_dir_all(&dir).expect("creating the manifest folder");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("writing a manifest");
        path
    }

    /// Applies manifests in namespace `default`, failing the test on any error.
    pub fn apply(&mut self, files: &[PathBuf]) {
        self.lab
            .apply(files, "default")
            .unwrap_or_else(|e| panic!("lab {}: applying {files:?}: {e}", self.name));
    }

    /// Starts the mesh, enrolls `namespace`, and waits until every agent has enrolled its
    /// pods there (so no connection of the test slips past the mesh while the label
    /// propagates).
    pub fn start_mesh(&mut self, options: &MeshOptions, namespace: &str) {
        self.lab
            .start_mesh(options)
            .unwrap_or_else(|e| panic!("lab {}: the mesh did not start: {e}", self.name));
        self.lab
            .label(
                &format!("ns/{namespace}"),
                &["istio.io/dataplane-mode=ambient".into()],
            )
            .unwrap();
        let nodes: Vec<String> = self
            .lab
            .state()
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect();
        eventually(Duration::from_secs(5), || {
            for node in &nodes {
                let (status, body) = self.lab.agent_get(node, "/config_dump")?;
                anyhow::ensure!(status == 200, "{node}: /config_dump answered {status}");
                let dump: serde_json::Value = serde_json::from_str(&body)?;
                let pending: Vec<&serde_json::Value> = dump["local_pods"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["namespace"] == namespace && p["enrolled"] != true)
                    .collect();
                anyhow::ensure!(pending.is_empty(), "{node}: not enrolled yet: {pending:?}");
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("lab {}: the agents enroll {namespace}: {e}", self.name));
    }
}

impl TestLab {
    /// Deploys a namespace waypoint for `default` (the Gateway `meshctl waypoint generate`
    /// prints), labels the namespace to use it, and waits until the waypoint has counted
    /// traffic to `service` (which `warm` sends).
    pub fn use_waypoint(&mut self, service: &str, warm: impl Fn(&TestLab) -> Result<()>) {
        let gateway = meshctl::waypoint::generate(&meshctl::waypoint::GenerateArgs {
            namespace: "default".into(),
            name: None,
            for_service_account: None,
        })
        .expect("a waypoint Gateway");
        let gateway = self.manifest("waypoint.yaml", &gateway);
        self.apply(&[gateway]);
        self.lab
            .label("ns/default", &["istio.io/use-waypoint=waypoint".into()])
            .unwrap();
        let counted = format!(r#"destination_service="{service}.default.svc.cluster.local""#);
        eventually(Duration::from_secs(10), || {
            warm(self)?;
            let metrics = self.waypoint_metrics()?;
            anyhow::ensure!(
                metrics.contains(&counted) && metrics.contains(r#"reporter="waypoint""#),
                "the waypoint has not seen {service} traffic yet"
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("lab {}: {service} through the waypoint: {e}", self.name));
    }

    /// The metrics of waypoint `default/waypoint`, read from the curl pod.
    pub fn waypoint_metrics(&self) -> Result<String> {
        let pod = self.lab.waypoint_pod("default", "waypoint")?;
        self.curl(
            "curl",
            &["-f", &format!("http://{}:15020/stats/prometheus", pod.ip)],
        )
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = Lab::down(&self.name) {
            eprintln!("cleaning up lab {}: {e}", self.name);
        }
        let _ =
            std::fs::remove_dir_all(std::env::temp_dir().join(format!("mesh-e2e-{}", self.name)));
    }
}

// Helpers of the mTLS tests (mtls_*.rs).

/// Writes `text` to a file of its own for the test tagged `tag` and returns the path; unlike
/// [`TestLab::manifest`], before the test's lab is up.
pub fn manifest(tag: &str, name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-mtls-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `node`'s agent's `/config_dump`, parsed.
pub fn config_dump(lab: &TestLab, node: &str) -> serde_json::Value {
    let (status, body) = lab.lab.agent_get(node, "/config_dump").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// How many certificates `identity` has had on `node`'s agent (0 if none).
pub fn certificates_issued(lab: &TestLab, node: &str, identity: &str) -> u64 {
    config_dump(lab, node)["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["identity"] == identity)
        .and_then(|c| c["issued"].as_u64())
        .unwrap_or(0)
}

/// The Prometheus metrics of node `node`'s agent.
pub fn metrics(lab: &TestLab, node: &str) -> String {
    lab.lab.agent_metrics(node).unwrap()
}

/// The Prometheus metrics of the lab's CA (on node1).
pub fn ca_metrics(lab: &TestLab) -> String {
    lab.lab.ca_metrics().unwrap()
}

/// The sum of the samples of metric `name` whose labels include every one of `labels`
/// (`key`, `value`) in a Prometheus/OpenMetrics text page; `None` when no series matches.
pub fn series_sum(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = page
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (series, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.rsplit_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(key, value)| {
                    series
                        .split(',')
                        .any(|pair| pair.trim() == format!("{key}=\"{value}\""))
                })
                .then(|| value.trim().parse().ok())?
        })
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// A lab of the mTLS tests: `server` (httpbin, service account httpbin); `remote` (service
/// account sleep) and `local` (no account of its own) in namespace `default`; `stranger` in
/// the ambient namespace `other`.
pub const POLICY_LAB: &str = r#"
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

/// An L4 AuthorizationPolicy of [`POLICY_LAB`]'s namespace `default`: DENY the `sleep`
/// service account (pod `remote`).
pub const DENY_SLEEP: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sleep}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]}]
"#;

// Helpers of the waypoint policy tests (waypoint_resilience.rs, waypoint_traffic.rs).

/// How long a config change may take to show in requests.
pub const CONFIG_DEADLINE: Duration = Duration::from_secs(10);

/// A lab with `files` and curl, the mesh on, and namespace `default` using a waypoint, once
/// the waypoint has counted traffic to `service` (which `warm` sends from curl).
pub fn lab_with_waypoint(
    tag: &str,
    files: impl FnOnce(&TestLab) -> Vec<PathBuf>,
    service: &str,
    warm: impl Fn(&TestLab) -> Result<()>,
) -> TestLab {
    let mut lab = TestLab::up(tag, 2, &[istio_sample("curl/curl.yaml")]);
    let files = files(&lab);
    lab.apply(&files);
    lab.start_mesh(&MeshOptions::default(), "default");
    lab.use_waypoint(service, warm);
    lab
}

/// httpbin (Istio's sample, or `files`) behind the waypoint.
pub fn httpbin_with_waypoint(tag: &str, files: impl FnOnce(&TestLab) -> Vec<PathBuf>) -> TestLab {
    lab_with_waypoint(tag, files, "httpbin", |lab| {
        lab.curl("curl", &["-f", "httpbin:8000/get"]).map(drop)
    })
}

/// The sum of the samples of metric `name` whose labels include every one of `labels`.
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

/// The pods of a Deployment.
pub fn pods_of(lab: &TestLab, deployment: &str) -> Vec<Pod> {
    let pods: Vec<Pod> = lab
        .lab
        .state()
        .pods
        .values()
        .filter(|p| p.owner.as_deref() == Some(deployment))
        .cloned()
        .collect();
    assert!(!pods.is_empty(), "deployment {deployment} has no pods");
    pods
}

/// The access-log lines of a pod (sample httpbin logs one per request, before answering)
/// for requests whose path and query are `target`.
pub fn access_lines(lab: &TestLab, pod: &Pod, target: &str) -> Vec<String> {
    let needle = format!("\"GET {target} ");
    lab.lab
        .logs(pod)
        .unwrap_or_else(|e| panic!("reading the log of {}: {e}", pod.key()))
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// GETs every URL in one curl (sequentially, on a keep-alive connection) with `headers`:
/// each answer's status code and body.
pub fn get_all(lab: &TestLab, urls: &[String], headers: &[&str]) -> Result<Vec<(u16, String)>> {
    let mut args: Vec<&str> = vec!["-w", "\n<<%{http_code}>>\n"];
    for header in headers {
        args.extend(["-H", header]);
    }
    args.extend(urls.iter().map(String::as_str));
    let out = lab.curl("curl", &args)?;
    let mut answers = Vec::new();
    let mut rest = out.as_str();
    while let Some(start) = rest.find("<<") {
        let code = rest[start + 2..]
            .get(..3)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status code in {out:?}"))?;
        answers.push((code, rest[..start].trim().to_owned()));
        rest = &rest[start + 7..];
    }
    ensure!(
        answers.len() == urls.len(),
        "{} answers to {} requests: {out}",
        answers.len(),
        urls.len()
    );
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::series_sum;

    #[test]
    fn series_sum_adds_the_series_that_carry_every_label() {
        let page = "# TYPE x counter\n\
            x_total{a=\"1\",b=\"2\"} 3\n\
            x_total{a=\"1\",b=\"9\"} 4\n\
            x_total{a=\"10\",b=\"2\"} 5\n\
            y_total{a=\"1\",b=\"2\"} 6\n";
        assert_eq!(series_sum(page, "x_total", &[("a", "1")]), Some(7.0));
        assert_eq!(
            series_sum(page, "x_total", &[("a", "1"), ("b", "2")]),
            Some(3.0)
        );
        assert_eq!(series_sum(page, "x_total", &[("b", "2")]), Some(8.0));
        assert_eq!(series_sum(page, "x_total", &[("a", "2")]), None);
        assert_eq!(series_sum(page, "x", &[("a", "1")]), None);
    }
}
