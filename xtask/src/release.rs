//! `cargo xtask release`: the proxies' release binaries, `mesh-node` and `mesh-waypoint`,
//! optimised with a profile of the mesh at work (profile-guided optimisation, PGO).
//!
//! 1. An instrumented build (`-Cprofile-generate`) into `target/pgo/instrumented`, with the
//!    release profile unchanged: the profile is keyed by symbol names, whose hashes change
//!    with the profile's settings (LTO, codegen units), not with `RUSTFLAGS`.
//! 2. The training run ([`train`]): a two-node lab on those binaries carries the loads the
//!    benchmarks use (HTTP/1.1, h2c, a bulk stream) through the L4 mesh and through a
//!    waypoint with routes; then every mesh process is stopped with SIGTERM, and each writes
//!    its counters as it exits.
//! 3. `llvm-profdata merge`, from LLVM 22 (rustc's own LLVM; `cargo xtask setup` installs it).
//! 4. The release build with `-Cprofile-use`, into `target/pgo`.
//!
//! Both builds pass `--target`, so the flags reach the proxies' code and not build scripts or
//! proc macros (which would write profiles of the build itself). Every build here links with
//! packed relative relocations ([`LINK_FLAGS`]). `--no-pgo` is `cargo build --release` with
//! those.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use mesh_sim::{Lab, Pod};

use crate::bench_config::exec;
use crate::bench_waypoint::{self, Load};
use crate::cargo::{cargo, step, target_dir};

const LAB: &str = "pgo";
/// Seconds per training load: thousands of runs of every path.
const SECONDS: u64 = 3;
const LLVM_PROFDATA: &str = "/usr/lib/llvm-22/bin/llvm-profdata";
const BINARIES: [&str; 2] = ["mesh-node", "mesh-waypoint"];
/// Packed relative relocations (`DT_RELR`, glibc 2.36+, binutils 2.38+): the dynamic loader
/// reads them once at start, and the half megabyte of `.rela.dyn` they replace stayed
/// resident for the process's life.
const LINK_FLAGS: &str = "-Clink-arg=-Wl,-z,pack-relative-relocs";

#[derive(clap::Args)]
pub(crate) struct ReleaseArgs {
    /// `cargo build --release` with the same link flags, without the profile (no lab, no
    /// root).
    #[arg(long)]
    no_pgo: bool,
}

pub(crate) fn run(args: &ReleaseArgs) -> Result<()> {
    let packages: Vec<&str> = BINARIES.iter().flat_map(|b| ["-p", b]).collect();
    if args.no_pgo {
        let mut command = cargo(&[&["build", "--release"][..], &packages].concat());
        command.env("RUSTFLAGS", LINK_FLAGS);
        step("cargo build --release", command)?;
        return report(&target_dir().join("release"));
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the profile's training run needs root (it runs the lab): run as root, or \
             `cargo xtask release --no-pgo` for a build without the profile"
        );
    }
    let host = host_triple()?;
    let pgo = target_dir().join("pgo");
    let profiles = pgo.join("profiles");
    if profiles.exists() {
        std::fs::remove_dir_all(&profiles)
            .with_context(|| format!("removing the old profiles in {}", profiles.display()))?;
    }
    std::fs::create_dir_all(&profiles)?;
    let build = [&["build", "--release", "--target", &host][..], &packages].concat();

    let instrumented = pgo.join("instrumented");
    let mut command = cargo(&build);
    command.env("CARGO_TARGET_DIR", &instrumented).env(
        "RUSTFLAGS",
        format!("{LINK_FLAGS} -Cprofile-generate={}", profiles.display()),
    );
    step("build the instrumented proxies", command)?;
    let bin = instrumented.join(&host).join("release");
    train(&bin.join("mesh-node"), &bin.join("mesh-waypoint"))?;

    let raw: Vec<PathBuf> = std::fs::read_dir(&profiles)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "profraw"))
        .collect();
    if raw.len() < BINARIES.len() {
        bail!(
            "the training run left {} profile(s) in {}, at least one per binary expected: \
             did the proxies exit cleanly (their logs are in the lab's state folder)?",
            raw.len(),
            profiles.display()
        );
    }
    let merged = profiles.join("merged.profdata");
    let mut merge = Command::new(LLVM_PROFDATA);
    merge.arg("merge").arg("-o").arg(&merged).args(&raw);
    step("llvm-profdata merge", merge)?;

    let mut command = cargo(&build);
    command.env("CARGO_TARGET_DIR", &pgo).env(
        "RUSTFLAGS",
        format!("{LINK_FLAGS} -Cprofile-use={}", merged.display()),
    );
    step("build the proxies with the profile", command)?;
    report(&pgo.join(&host).join("release"))
}

/// The training run: a two-node lab on the instrumented binaries carries the [`loads`] and
/// one iperf3 stream through the L4 mesh, then the loads through a namespace waypoint with
/// the waypoint benchmark's five routes, and stops the mesh cleanly.
fn train(mesh_node: &Path, waypoint: &Path) -> Result<()> {
    crate::bench_config::with_bench_lab(
        LAB,
        2,
        bench_waypoint::MANIFEST,
        crate::cargo::Profile::Release,
        Some(mesh_node),
        |mut lab, mesh_node| {
            let (client, server) = bench_waypoint::start_mesh(&mut lab, mesh_node, waypoint)?;
            println!("pgo: the L4 mesh: wrk, 1000 req/s, h2load, iperf3");
            loads(&lab, &client)?;
            bulk(&lab, &client, &server)?;
            println!("pgo: the waypoint: wrk, 1000 req/s, h2load");
            bench_waypoint::deploy_waypoint(&mut lab, &client)?;
            loads(&lab, &client)?;
            lab.stop_mesh()?;
            Ok(())
        },
    )
}

/// The waypoint benchmark's loads from `client` to its service, [`SECONDS`] each: wrk
/// (HTTP/1.1), 1000 req/s paced (HTTP/1.1, the rate of the CPU and latency targets) and
/// h2load (h2c).
fn loads(lab: &Lab, client: &Pod) -> Result<()> {
    for load in Load::ALL {
        bench_waypoint::run_load(lab, client, load, SECONDS)?;
    }
    Ok(())
}

/// One iperf3 stream from `client` to `server`, retried while the server is starting.
fn bulk(lab: &Lab, client: &Pod, server: &Pod) -> Result<()> {
    let _server = crate::bench_mesh::IperfServer::start(lab, server)?;
    let host = server.ip.to_string();
    let seconds = SECONDS.to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match exec(lab, client, "iperf3", &["-c", &host, "-t", &seconds]) {
            Ok(_) => return Ok(()),
            Err(error) if std::time::Instant::now() > deadline => {
                return Err(error.context("iperf3 through the mesh"));
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> Result<String> {
    let output = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host line")
}

fn report(dir: &Path) -> Result<()> {
    for binary in BINARIES {
        let path = dir.join(binary);
        if !path.is_file() {
            bail!("cargo built {binary} but {} is missing", path.display());
        }
        println!("release: {}", path.display());
    }
    Ok(())
}
