//! `cargo xtask bench …`: dispatches the benchmarks; `bench config` builds and runs the
//! config model benchmark (a release build of mesh-core's `bench_config` example) and prints
//! its table; [`with_bench_lab`] and the helpers below are what the lab benchmarks share.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use mesh_sim::{AgentUsage, Lab, Pod};

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    what: Bench,
}

#[derive(clap::Subcommand)]
enum Bench {
    /// Load and index 10k Services, 50k Pods, 2k VirtualServices, 2k DestinationRules: as a
    /// proxy starts (the kube source listing them from a fake API server), and generated
    /// straight into the store.
    Config,
    /// Connect and 1 KB request/response latency: direct, eBPF redirect (fast path off/on),
    /// netfilter NAT, through the node proxy (root; builds a one-node lab).
    Redirect(crate::bench_redirect::BenchArgs),
    /// Direct vs the L4 mesh between two nodes: wrk req/s and P50/P90/P99, new connections/s,
    /// iperf3 throughput, agent CPU per 1000 requests and RSS (root; builds a two-node lab).
    Mesh(crate::bench_mesh::BenchArgs),
    /// The L4 mesh vs a namespace waypoint with five routes: wrk req/s and P50/P99, P99 at
    /// 1000 req/s, h2load over h2c, the waypoint's CPU per 1000 requests and RSS (root;
    /// builds a two-node lab).
    Waypoint(crate::bench_waypoint::BenchArgs),
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        Bench::Config => {
            // One process per mode: each reports its own peak memory.
            for mode in ["startup", "stream"] {
                let status = std::process::Command::new(env!("CARGO"))
                    .args([
                        "run",
                        "--release",
                        "-q",
                        "-p",
                        "mesh-core",
                        "--example",
                        "bench_config",
                        "--",
                        mode,
                    ])
                    .status()?;
                if !status.success() {
                    bail!("the config benchmark ({mode}) failed: {status}");
                }
            }
            Ok(())
        }
        Bench::Redirect(args) => crate::bench_redirect::run(&args),
        Bench::Mesh(args) => crate::bench_mesh::run(&args),
        Bench::Waypoint(args) => crate::bench_waypoint::run(&args),
    }
}

/// What the lab benchmarks' pods run.
#[derive(clap::Args)]
pub(crate) struct ServerArgs {
    /// Run the pods on the sample app's debug build, which needs no release build: a quick
    /// check that the driver works end to end (the tests use it). The figures are then not
    /// the benchmark's: the debug server is several times slower.
    #[arg(long)]
    debug_server: bool,
}

impl ServerArgs {
    pub(crate) fn profile(&self) -> crate::cargo::Profile {
        if self.debug_server {
            crate::cargo::Profile::Debug
        } else {
            crate::cargo::Profile::Release
        }
    }
}

/// Builds what a lab benchmark runs (the sample app with `server`; `mesh_node` unless
/// given), brings lab `name` up afresh with `nodes` nodes from `manifest`, runs `scenarios`
/// on it with the mesh-node binary, and takes the lab down whatever happened.
pub(crate) fn with_bench_lab<T>(
    name: &str,
    nodes: u8,
    manifest: &str,
    server: crate::cargo::Profile,
    mesh_node: Option<&std::path::Path>,
    scenarios: impl FnOnce(mesh_sim::Lab, &std::path::Path) -> Result<T>,
) -> Result<T> {
    let sample_app = crate::cargo::build_sample_app(server)?;
    let mesh_node = match mesh_node {
        Some(path) => path.to_owned(),
        None => crate::cargo::build_mesh_node()?,
    };
    if Lab::list().iter().any(|l| l == name) {
        Lab::down(name)?;
    }
    let file = std::env::temp_dir().join(format!("mesh-{name}.yaml"));
    std::fs::write(&file, manifest)?;
    let options = mesh_sim::LabOptions {
        name: name.into(),
        nodes,
        sample_app: Some(sample_app),
    };
    let (lab, _) = Lab::up(&options, &[file])?;
    let result = scenarios(lab, &mesh_node);
    let _ = Lab::down(name);
    result
}

/// Runs `program args…` inside `pod` to the end: its stdout, or an error with its stderr.
pub(crate) fn exec(lab: &Lab, pod: &Pod, program: &str, args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = lab
        .exec_command(pod, program, &args)?
        .output()
        .with_context(|| format!("running {program} in {}", pod.key()))?;
    if !output.status.success() {
        bail!(
            "{program} {args:?} in {} failed: {}",
            pod.key(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Open files, RSS and CPU time of every node agent of the lab, summed.
pub(crate) fn agents_usage(lab: &Lab) -> Result<AgentUsage> {
    let mut total = AgentUsage::default();
    for node in &lab.state().nodes {
        let usage = lab.agent_usage(&node.name)?;
        total.fds += usage.fds;
        total.rss_kb += usage.rss_kb;
        total.peak_rss_kb += usage.peak_rss_kb;
        total.cpu_seconds += usage.cpu_seconds;
    }
    Ok(total)
}

/// Waits until `client`'s new connections pass the mesh (its node agent counts one more
/// across a request to `url`, which answers: enrolled, certificates issued, tunnel up), at
/// most 10 s.
pub(crate) fn wait_in_mesh(lab: &Lab, client: &Pod, url: &str) -> Result<()> {
    wait_for_path(lab, client, url, true)
}

/// Waits until `client`'s new connections bypass the mesh again (its node agent's count of
/// them stays put across a request to `url`, which answers), at most 10 s.
pub(crate) fn wait_out_of_mesh(lab: &Lab, client: &Pod, url: &str) -> Result<()> {
    wait_for_path(lab, client, url, false)
}

fn wait_for_path(lab: &Lab, client: &Pod, url: &str, in_mesh: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = client_connections(lab, client)?;
        let answered = exec(lab, client, "curl", &["-sf", "-o", "/dev/null", url]).is_ok();
        if answered && (client_connections(lab, client)? > before) == in_mesh {
            return Ok(());
        }
        if Instant::now() > deadline {
            let state = if in_mesh { "enter" } else { "leave" };
            bail!("the client's traffic did not {state} the mesh within 10 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many of `client`'s connections its node agent has counted (`/stats/redirect`; 0 before
/// the first).
pub(crate) fn client_connections(lab: &Lab, client: &Pod) -> Result<u64> {
    let (_, body) = lab.agent_get(&client.node, "/stats/redirect")?;
    let stats: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("{}: /stats/redirect is not JSON", client.node))?;
    Ok(stats["pods"][client.key()]["counters"]["connections"]
        .as_u64()
        .unwrap_or(0))
}
