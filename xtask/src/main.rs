//! `cargo xtask`: the one entry point for developers and CI.

mod bench_config;
mod bench_load;
mod bench_mesh;
mod bench_paced;
mod bench_redirect;
mod bench_waypoint;
mod cargo;
mod demo;
mod release;
mod setup;
mod sim;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer and CI tasks for the mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the Debian packages and bpf-linker the build needs (idempotent; root).
    Setup,
    /// Everything CI runs: setup, fmt, clippy, unit and integration tests (root).
    Test,
    /// The single-machine mesh lab: bookinfo on two simulated nodes, with requests shown.
    Demo,
    /// The simulated cluster: up, apply, delete, get, exec, logs, down.
    Sim(sim::SimArgs),
    /// Benchmarks that print a table: `bench config` (the config model).
    Bench(bench_config::BenchArgs),
    /// The proxies' release binaries optimised with a profile of the mesh at work (PGO: an
    /// instrumented build, a training run in the lab, the optimised build; root), in
    /// `target/pgo/<host>/release`; `--no-pgo`: plain `cargo build --release`.
    Release(release::ReleaseArgs),
    /// A benchmark's client or server, run inside a pod by `bench redirect` (internal).
    #[command(hide = true)]
    BenchPeer {
        #[command(subcommand)]
        peer: bench_redirect::Peer,
    },
}

fn main() -> Result<ExitCode> {
    match Cli::parse().command {
        Command::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Command::Test => test().map(|()| ExitCode::SUCCESS),
        Command::Demo => demo::run().map(|()| ExitCode::SUCCESS),
        Command::Sim(args) => sim::run(args),
        Command::BenchPeer { peer } => bench_redirect::peer(peer).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench_config::run(args).map(|()| ExitCode::SUCCESS),
        Command::Release(args) => release::run(&args).map(|()| ExitCode::SUCCESS),
    }
}

fn test() -> Result<()> {
    setup::run()?;
    cargo::step(
        "cargo fmt --check",
        cargo::cargo(&["fmt", "--all", "--", "--check"]),
    )?;
    cargo::step(
        "cargo fmt --check (mesh-ebpf)",
        cargo::cargo(&[
            "fmt",
            "--manifest-path",
            "mesh-ebpf/Cargo.toml",
            "--",
            "--check",
        ]),
    )?;
    cargo::step(
        "cargo clippy -D warnings",
        cargo::cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // Broken or private intra-doc links are how module comments drift from the code.
    let mut doc = cargo::cargo(&["doc", "--workspace", "--no-deps"]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    cargo::step("cargo doc -D warnings", doc)?;
    cargo::build_sample_app(cargo::Profile::Debug)?;
    cargo::build_mesh_waypoint()?;
    cargo::step(
        "cargo test (unit, eBPF and simulated-cluster tests)",
        cargo::cargo(&["test", "--workspace", "--no-fail-fast"]),
    )?;
    println!("all checks passed");
    Ok(())
}
