//! `cargo xtask bench …`: dispatches the benchmarks; `bench config` builds and runs the
//! config model benchmark (a release build of mesh-core's `bench_config` example) and prints
//! its table; [`with_bench_lab`] is the lab setup the lab benchmarks share.

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

/// Builds what a lab benchmark runs (the sample app; `mesh_node` unless given), brings lab
/// `name` up afresh with `nodes` nodes from `manifest`, runs `scenarios` on it with the
/// mesh-node binary, and takes the lab down whatever happened.
pub(crate) fn with_bench_lab<T>(
    name: &str,
    nodes: u8,
    manifest: &str,
    mesh_node: Option<&std::path::Path>,
    scenarios: impl FnOnce(mesh_sim::Lab, &std::path::Path) -> Result<T>,
) -> Result<T> {
    use mesh_sim::{Lab, LabOptions};
    let sample_app = crate::cargo::build_sample_app()?;
    let mesh_node = match mesh_node {
        Some(path) => path.to_owned(),
        None => crate::cargo::build_mesh_node()?,
    };
    if Lab::list().iter().any(|l| l == name) {
        Lab::down(name)?;
    }
    let file = std::env::temp_dir().join(format!("mesh-{name}.yaml"));
    std::fs::write(&file, manifest)?;
    let options = LabOptions {
        name: name.into(),
        nodes,
        sample_app: Some(sample_app),
    };
    let (lab, _) = Lab::up(&options, &[file])?;
    let result = scenarios(lab, &mesh_node);
    let _ = Lab::down(name);
    result
}
