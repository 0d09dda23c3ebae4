//! The harness of the end-to-end tests: a lab per test with a unique name, removed when the
//! test ends however it ends, and helpers to run commands in its pods.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mesh_sim::{Lab, LabOptions, MeshOptions, Pod};

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
pub fn eventually<T>(deadline: Duration, mut check: impl FnMut() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() > deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
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
