//! The harness of the end-to-end tests: a lab per test with a unique name, removed when the
//! test ends however it ends, and helpers to run commands in its pods.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use mesh_sim::{Lab, LabOptions, Pod};

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

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = Lab::down(&self.name) {
            eprintln!("cleaning up lab {}: {e}", self.name);
        }
    }
}
