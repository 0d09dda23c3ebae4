//! `cargo xtask setup`: brings a fresh Debian machine of our kind to one that can build and test
//! the mesh (see ../shared/TOOLCHAIN.md), skipping whatever is already there. Runs as root.
//!
//! 1. Debian packages: Debian's rustc/cargo with the prebuilt bpfel `core`, LLVM 22 for
//!    bpf-linker, and the tools the lab and tests use.
//! 2. bpf-linker 0.13.0, built against LLVM 22, into `$MESH_TOOLS_DIR` (default /opt/mesh-tools).
//! 3. bpffs mounted at /sys/fs/bpf, where the node agent pins maps.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};

/// The eBPF toolchain (TOOLCHAIN.md, step 1).
const TOOLCHAIN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22",
    "llvm-22-dev",
    "clang-22",
    "lld-22",
    "bpftool",
    "libbpf-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libpolly-22-dev",
];

/// What the simulated cluster, the tests and the benchmarks run.
const LAB_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "curl",
    "tcpdump",
    "iperf3",
    "wrk",
    "nghttp2-client",
    "procps",
    "psmisc",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const DEFAULT_TOOLS_DIR: &str = "/opt/mesh-tools";
/// bpf-linker links against this LLVM; its default feature (llvm-23) is not available here.
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPFFS: &str = "/sys/fs/bpf";

pub(crate) fn run() -> anyhow::Result<()> {
    ensure!(
        is_root()?,
        "cargo xtask setup must run as root: it installs Debian packages (try `sudo -E cargo xtask setup`)"
    );
    let started = Instant::now();
    apt_packages()?;
    bpf_linker()?;
    bpffs()?;
    println!("setup: done in {:.0?}", started.elapsed());
    Ok(())
}

/// Where bpf-linker (and later tools) live: `$MESH_TOOLS_DIR/bin`, default /opt/mesh-tools/bin.
/// mesh-node's build.rs reads the same variable.
pub(crate) fn tools_bin_dir() -> PathBuf {
    tools_dir().join("bin")
}

fn tools_dir() -> PathBuf {
    env::var_os("MESH_TOOLS_DIR").map_or_else(|| PathBuf::from(DEFAULT_TOOLS_DIR), PathBuf::from)
}

fn apt_packages() -> anyhow::Result<()> {
    let wanted: Vec<&str> = TOOLCHAIN_PACKAGES
        .iter()
        .chain(LAB_PACKAGES)
        .copied()
        .collect();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        println!(
            "setup: apt packages: all {} present, skipping",
            wanted.len()
        );
        return Ok(());
    }
    println!(
        "setup: apt packages: {} missing ({}), installing (about 40 s)",
        missing.len(),
        missing.join(" ")
    );
    run_cmd(apt_get().arg("update").arg("-q"), "apt-get update")?;
    let install = run_cmd(
        apt_get().args(["install", "-y", "-q"]).args(&missing),
        "apt-get install",
    );
    // Name the packages that still are not there: that is what the operator needs to fix.
    let still_missing: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !still_missing.is_empty() {
        bail!(
            "could not install Debian package(s): {} (are the Debian sources with them \
             configured in /etc/apt/sources.list*?){}",
            still_missing.join(", "),
            install
                .err()
                .map(|e| format!(": {e:#}"))
                .unwrap_or_default()
        );
    }
    install
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// `true` when dpkg reports the package as installed.
fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| {
            out.status.success() && String::from_utf8_lossy(&out.stdout).ends_with(" installed")
        })
}

fn bpf_linker() -> anyhow::Result<()> {
    let root = tools_dir();
    let linker = tools_bin_dir().join("bpf-linker");
    if let Some(version) = bpf_linker_version(&linker) {
        if version == BPF_LINKER_VERSION {
            println!(
                "setup: bpf-linker {version} present at {}, skipping",
                linker.display()
            );
            return Ok(());
        }
        println!(
            "setup: bpf-linker at {} is {version}, replacing",
            linker.display()
        );
    }
    println!(
        "setup: bpf-linker {BPF_LINKER_VERSION}: building against LLVM 22 into {} (about 90 s)",
        root.display()
    );
    let path = env::join_paths(
        std::iter::once(PathBuf::from(LLVM_BIN))
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    run_cmd(
        Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                "llvm-22",
                "--force",
                "--root",
            ])
            .arg(&root)
            .env("PATH", path),
        "cargo install bpf-linker",
    )?;
    let installed = bpf_linker_version(&linker);
    ensure!(
        installed.as_deref() == Some(BPF_LINKER_VERSION),
        "bpf-linker at {} reports {installed:?} after installing, expected {BPF_LINKER_VERSION}",
        linker.display()
    );
    Ok(())
}

/// The version `bpf-linker --version` reports ("bpf-linker 0.13.0"), if it runs.
fn bpf_linker_version(linker: &Path) -> Option<String> {
    let out = Command::new(linker).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status
        .success()
        .then(|| text.split_whitespace().nth(1).map(str::to_owned))
        .flatten()
}

fn bpffs() -> anyhow::Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.nth(1) == Some(BPFFS) && fields.next() == Some("bpf")
    });
    if mounted {
        println!("setup: bpffs already mounted at {BPFFS}, skipping");
        return Ok(());
    }
    println!("setup: mounting bpffs at {BPFFS}");
    std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    run_cmd(
        Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]),
        "mount bpffs",
    )
}

/// Runs `cmd` with inherited output; fails naming `what` and the exit status.
fn run_cmd(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {cmd:?}"))?;
    ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

/// Effective uid 0, read from /proc so xtask needs no libc binding.
fn is_root() -> anyhow::Result<bool> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    Ok(euid == "0")
}
