//! `mesh-node`: the node agent's command line.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mesh_core::identity::manager::CaClientConfig;
use mesh_node::agent::{NodeConfig, RedirectMode};
use mesh_node::ca::CaConfig;
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
    /// Run the node agent: redirect enrolled pods' TCP to the outbound listener with eBPF,
    /// carry it in mutual TLS (HBONE) to the destination's node, admit inbound tunnels by
    /// policy, keep enrollment and certificates in sync with the config folder (root).
    Run(RunArgs),
    /// Run the mesh CA: Istio's CreateCertificate over gRPC with TLS, for node agents.
    Ca(CaArgs),
    /// Remove every eBPF program, link, map and pin a `run` left under --pin-dir (stop the
    /// agent first).
    Uninstall {
        #[arg(long)]
        pin_dir: PathBuf,
    },
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

#[derive(clap::Args)]
struct RunArgs {
    /// The node this agent serves (pods with spec.nodeName equal to it).
    #[arg(long)]
    node: String,
    /// The files config source: a folder of Kubernetes YAML, watched.
    #[arg(long)]
    config_dir: PathBuf,
    /// The cgroup v2 folder holding the node's pod cgroups (`pod<uid>`).
    #[arg(long)]
    pods_cgroup: PathBuf,
    /// The agent's own cgroup, for the fast path's proxy side (default: the one it runs in).
    #[arg(long)]
    agent_cgroup: Option<PathBuf>,
    /// bpffs folder for this node's pins.
    #[arg(long)]
    pin_dir: PathBuf,
    /// The address the outbound listener binds (the node's IP).
    #[arg(long)]
    proxy_ip: Ipv4Addr,
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    #[arg(long, default_value_t = mesh_core::hbone::PORT)]
    hbone_port: u16,
    /// The plaintext inbound listener (non-mesh clients of enrolled pods, captured by eBPF).
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Capture TCP from outside the mesh to enrolled pods (so PeerAuthentication STRICT can
    /// refuse it); off leaves such traffic to reach the pods directly.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    inbound_capture: OnOff,
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    #[arg(long, default_value_t = 15020)]
    metrics_port: u16,
    #[arg(long, default_value_t = 15021)]
    readiness_port: u16,
    /// The mesh CA's gRPC address.
    #[arg(long)]
    ca_addr: SocketAddr,
    /// The CA's root certificate (PEM): the mesh's trust anchor.
    #[arg(long)]
    ca_root: PathBuf,
    /// A file holding this node's credential for the CA.
    #[arg(long)]
    ca_credential_file: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Workload certificate lifetime to ask for, e.g. 24h, 30m, 10s.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// The sock_ops + sk_msg sockhash fast path for same-node legs.
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    fast_path: OnOff,
    #[arg(long, value_enum, default_value_t = RedirectMode::Ebpf)]
    redirect: RedirectMode,
}

#[derive(clap::Args)]
struct CaArgs {
    /// The gRPC address to serve.
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The files config source (pods and their nodes).
    #[arg(long)]
    config_dir: PathBuf,
    /// JSON object of node agent credential → node name.
    #[arg(long)]
    node_credentials: PathBuf,
    /// Where to write the root certificate (PEM) for the agents.
    #[arg(long)]
    root_cert_out: PathBuf,
    /// The longest certificate lifetime granted, e.g. 24h.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    max_cert_ttl: Duration,
}

/// A positive duration in Istio's (Go's) syntax: `10s`, `30m`, `24h`, `500ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    match mesh_core::config::duration::parse(text) {
        Ok(duration) if duration.is_zero() => Err(format!("{text:?}: a duration must be positive")),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
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
        Command::Run(args) => {
            raise_fd_limit();
            let agent_cgroup = match args.agent_cgroup {
                Some(path) => Some(path),
                None => own_cgroup()?,
            };
            let config = NodeConfig {
                node: args.node,
                config_dir: args.config_dir,
                pods_cgroup: args.pods_cgroup,
                agent_cgroup,
                pin_dir: args.pin_dir,
                proxy_ip: args.proxy_ip,
                outbound_port: args.outbound_port,
                hbone_port: args.hbone_port,
                inbound_port: args.inbound_port,
                inbound_capture: args.inbound_capture == OnOff::On,
                admin_port: args.admin_port,
                metrics_port: args.metrics_port,
                readiness_port: args.readiness_port,
                fast_path: args.fast_path == OnOff::On,
                redirect: args.redirect,
                ca: CaClientConfig {
                    addr: args.ca_addr,
                    root: args.ca_root,
                    credential_file: args.ca_credential_file,
                    trust_domain: args.trust_domain,
                    validity: args.cert_ttl,
                },
            };
            Ok(mesh_node::agent::run(config).await?)
        }
        Command::Ca(args) => Ok(mesh_node::ca::run(CaConfig {
            listen: args.listen,
            trust_domain: args.trust_domain,
            config_dir: args.config_dir,
            node_credentials: args.node_credentials,
            root_cert_out: args.root_cert_out,
            max_validity: args.max_cert_ttl,
        })
        .await?),
        Command::Uninstall { pin_dir } => {
            let removed = mesh_node::ebpf::uninstall(&pin_dir)?;
            if removed.is_empty() {
                println!("nothing pinned under {}", pin_dir.display());
            }
            for path in removed {
                println!("removed {path}");
            }
            Ok(())
        }
    }
}

/// A proxy holds two sockets per connection: lift the soft open-file limit (often 1024) to
/// the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "could not raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not read the open-file limit"),
    }
}

/// The cgroup v2 folder this process runs in (from `/proc/self/cgroup`), unless it is the
/// root (attaching sock_ops there would cover the whole host).
fn own_cgroup() -> anyhow::Result<Option<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_start_matches('/'))
        .filter(|p| !p.is_empty());
    Ok(relative.map(|p| PathBuf::from(mesh_node::ebpf::CGROUP2_MOUNT).join(p)))
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
