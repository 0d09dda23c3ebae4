//! Running cargo and other steps from xtask, with a progress line per step.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The repository root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `cargo ARGS…` in the workspace root, with the cargo that runs xtask.
pub(crate) fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.args(args).current_dir(workspace_root());
    command
}

/// Runs one named step with inherited output, timing it.
pub(crate) fn step(name: &str, mut command: Command) -> Result<()> {
    println!("==> {name}");
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("{name}: cannot start {command:?}"))?;
    if !status.success() {
        bail!(
            "{name} failed ({status}) after {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    println!("==> {name}: ok in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Which cargo profile to build with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    Debug,
    Release,
}

/// Builds `package`'s binary (named as the package) with `profile` and returns its path.
fn build_binary(package: &str, profile: Profile) -> Result<PathBuf> {
    let mut args = vec!["build", "--quiet", "--package", package];
    let dir = match profile {
        Profile::Debug => "debug",
        Profile::Release => {
            args.push("--release");
            "release"
        }
    };
    step(&format!("build {package}"), cargo(&args))?;
    let path = target_dir().join(dir).join(package);
    if !path.is_file() {
        bail!("cargo built {package} but {} is missing", path.display());
    }
    Ok(path)
}

/// Builds the binary every simulated container runs and returns its path. The benchmarks
/// take the release build: a debug server held wrk's direct path to about 15k req/s (1 KB),
/// against 50-58k with the release build, flattering the mesh.
pub(crate) fn build_sample_app(profile: Profile) -> Result<PathBuf> {
    build_binary("sample-app", profile)
}

/// Builds the node agent and returns its path.
pub(crate) fn build_mesh_node() -> Result<PathBuf> {
    build_binary("mesh-node", Profile::Debug)
}

/// Builds the L7 waypoint, which the lab runs for Gateways of class `istio-waypoint`, and
/// returns its path. `cargo test` does not build it (the crate has no integration tests),
/// but the lab tests find it beside their executables.
pub(crate) fn build_mesh_waypoint() -> Result<PathBuf> {
    build_binary("mesh-waypoint", Profile::Debug)
}

/// Istio's sample manifests, kept beside the repository in `../shared/istio-samples`.
pub(crate) fn istio_samples() -> Result<PathBuf> {
    let path = workspace_root().join("../shared/istio-samples");
    if !path.is_dir() {
        bail!(
            "{} is missing: the demo and tests use Istio's sample manifests from ../shared beside the repository",
            path.display()
        );
    }
    Ok(path)
}
