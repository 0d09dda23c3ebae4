//! Builds `../mesh-ebpf` for `bpfel-unknown-none` with Debian's cargo/rustc and bpf-linker, and
//! leaves the object in `OUT_DIR/mesh-ebpf` for `aya::include_bytes_aligned!`.
//!
//! The recipe is `../../shared/TOOLCHAIN.md`. `aya_build::build_ebpf` (0.2.0) spawns `cargo` and
//! `rustc` by name, looks for `rustup` on this process's `PATH`, and passes this process's
//! environment on to the child. So the steering happens here, on our own environment, before we
//! call it:
//!
//! - `PATH` = `/usr/bin`, the bpf-linker dir, the system dirs; no `~/.cargo/bin`, so no rustup is
//!   found (no `rustup run nightly` wrapper) and Debian's `cargo`/`rustc` 1.96 are the ones run;
//! - `RUSTC_BOOTSTRAP=aya_ebpf`: unstable features only for aya-ebpf, and (being neither `1` nor
//!   our package name) no `-Z build-std=core`, so Debian's prebuilt bpfel `core` is used;
//! - `RUSTUP_TOOLCHAIN`, `RUSTUP_HOME`, `CARGO`, `RUSTDOC`, `RUSTC_WRAPPER` removed (aya-build
//!   itself removes `RUSTC` and `RUSTC_WORKSPACE_WRAPPER`);
//! - the current directory is `mesh-ebpf/`, because aya-build runs `cargo build --package
//!   mesh-ebpf` without a manifest path, and `mesh-ebpf` is its own workspace.

use std::{
    env,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// Where `cargo xtask setup` installs bpf-linker, unless `MESH_TOOLS_DIR` says otherwise.
const DEFAULT_TOOLS_DIR: &str = "/opt/mesh-tools";
/// Debian's cargo (package `cargo-web`), which drives the eBPF build.
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
/// Debian's rustc (package `rustc-web`).
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// Debian's prebuilt `core` for the BPF target (package `libstd-rust-web-dev-bpf`).
const BPFEL_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";

const EBPF_PACKAGE: &str = "mesh-ebpf";

fn main() {
    // Print the error ourselves: a `main` returning `Err` adds a backtrace under
    // RUST_BACKTRACE=1, which buries the message.
    if let Err(err) = run() {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .join("..")
        .join(EBPF_PACKAGE)
        .canonicalize()
        .context("mesh-ebpf/ next to mesh-node/ not found")?;

    // aya-build prints rerun-if-changed for the whole mesh-ebpf dir (sources, common/,
    // Cargo.toml, Cargo.lock); these name the parts we mean, and the env we read.
    for rel in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "common/src",
        "common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(rel).display());
    }
    println!("cargo:rerun-if-env-changed=MESH_TOOLS_DIR");

    let tools_bin = env::var_os("MESH_TOOLS_DIR")
        .map_or_else(|| PathBuf::from(DEFAULT_TOOLS_DIR), PathBuf::from)
        .join("bin");
    check_toolchain(&tools_bin)?;
    steer_environment(&tools_bin, &ebpf_dir)?;

    let root_dir = ebpf_dir.to_str().context("mesh-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        // Only used when rustup is on PATH, which the steering above prevents.
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (mesh-ebpf) failed")
}

/// Fails with what is missing and how to get it.
fn check_toolchain(tools_bin: &Path) -> anyhow::Result<()> {
    let bpf_linker = tools_bin.join("bpf-linker");
    let mut missing = Vec::new();
    if !bpf_linker.is_file() {
        missing.push(format!("bpf-linker 0.13.0 at {}", bpf_linker.display()));
    }
    for (path, what) in [
        (DEBIAN_CARGO, "Debian's cargo (package cargo-web)"),
        (DEBIAN_RUSTC, "Debian's rustc (package rustc-web)"),
    ] {
        if !Path::new(path).is_file() {
            missing.push(format!("{what} at {path}"));
        }
    }
    let has_core = std::fs::read_dir(BPFEL_CORE_DIR).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
    });
    if !has_core {
        missing.push(format!(
            "the prebuilt bpfel-unknown-none core library in {BPFEL_CORE_DIR} \
             (package libstd-rust-web-dev-bpf)"
        ));
    }
    if !missing.is_empty() {
        bail!(
            "cannot build the eBPF programs, missing:\n  - {}\nrun `cargo xtask setup` (as root) \
             to install them (set MESH_TOOLS_DIR if bpf-linker lives elsewhere)",
            missing.join("\n  - ")
        );
    }
    Ok(())
}

/// Points this process's environment (inherited by aya-build's `cargo` child) at Debian's
/// toolchain; see the module docs.
fn steer_environment(tools_bin: &Path, ebpf_dir: &Path) -> anyhow::Result<()> {
    let path = env::join_paths([
        Path::new("/usr/bin"),
        tools_bin,
        Path::new("/usr/sbin"),
        Path::new("/sbin"),
        Path::new("/bin"),
    ])
    .context("bpf-linker dir cannot be put on PATH")?;

    #[allow(
        unsafe_code,
        reason = "build scripts are single-threaded; set_var is unsafe in 2024"
    )]
    // SAFETY: nothing else runs in this build-script process yet (no threads spawned), so no
    // one reads the environment concurrently.
    unsafe {
        env::set_var("PATH", path);
        env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf");
        // aya-build turns every stderr line of the inner cargo into a `cargo:warning`; keep
        // that to real diagnostics (no "Compiling ..." lines).
        env::set_var("CARGO_TERM_QUIET", "true");
        for key in [
            "RUSTUP_TOOLCHAIN",
            "RUSTUP_HOME",
            "CARGO",
            "RUSTDOC",
            "RUSTC_WRAPPER",
        ] {
            env::remove_var(key);
        }
    }
    env::set_current_dir(ebpf_dir).with_context(|| format!("cannot enter {}", ebpf_dir.display()))
}
