//! `mesh-node`: the node agent's command line.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mesh_node::ebpf::Ebpf;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "mesh-node", about = "The mesh's node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF programs, attach the connect4 counter to a cgroup and print what it counts
    /// (checks that this kernel and these privileges support the mesh; needs root).
    EbpfCheck {
        /// A cgroup v2 directory, e.g. /sys/fs/cgroup/unified on these machines.
        #[arg(long)]
        cgroup: PathBuf,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,mesh_ebpf=debug")),
        )
        .init();
    match Cli::parse().command {
        Command::EbpfCheck { cgroup, seconds } => ebpf_check(cgroup, seconds).await,
    }
}

async fn ebpf_check(cgroup: PathBuf, seconds: Option<u64>) -> anyhow::Result<()> {
    let mut ebpf = Ebpf::load()?;
    let _link = ebpf.attach_connect4(&cgroup)?;
    println!(
        "connect4 counter attached to {}; counting TCP connect() calls ({})",
        cgroup.display(),
        seconds.map_or("Ctrl-C to stop".to_owned(), |s| format!("for {s} s")),
    );
    let deadline = seconds.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            res = tokio::signal::ctrl_c() => {
                res.context("waiting for Ctrl-C")?;
                break;
            }
            () = sleep_until(deadline) => break,
        }
        let stats = ebpf.connect4_stats()?;
        println!(
            "tcp connects: {}  other: {}",
            stats.tcp_connects, stats.other_connects
        );
    }
    let stats = ebpf.connect4_stats()?;
    println!(
        "final: tcp connects: {}  other: {}",
        stats.tcp_connects, stats.other_connects
    );
    Ok(())
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
