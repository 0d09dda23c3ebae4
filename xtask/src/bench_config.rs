//! `cargo xtask bench config`: builds and runs the config model benchmark (a release build
//! of mesh-core's `bench_config` example) and prints its table.

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    what: Bench,
}

#[derive(clap::Subcommand)]
enum Bench {
    /// Load and index 10k Services, 50k Pods, 2k VirtualServices, 2k DestinationRules.
    Config,
    /// Connect and 1 KB request/response latency: direct, eBPF redirect (fast path off/on),
    /// netfilter NAT, through the node proxy (root; builds a one-node lab).
    Redirect(crate::bench_redirect::BenchArgs),
    /// Direct vs the L4 mesh between two nodes: wrk req/s and P50/P90/P99, new connections/s,
    /// iperf3 throughput, agent CPU per 1000 requests and RSS (root; builds a two-node lab).
    Mesh(crate::bench_mesh::BenchArgs),
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        Bench::Config => {
            let status = std::process::Command::new(env!("CARGO"))
                .args([
                    "run",
                    "--release",
                    "-q",
                    "-p",
                    "mesh-core",
                    "--example",
                    "bench_config",
                ])
                .status()?;
            if !status.success() {
                bail!("the config benchmark failed: {status}");
            }
            Ok(())
        }
        Bench::Redirect(args) => crate::bench_redirect::run(&args),
        Bench::Mesh(args) => crate::bench_mesh::run(&args),
    }
}
