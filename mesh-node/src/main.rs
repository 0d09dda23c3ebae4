//! `mesh-node`: the node agent's command line.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use mesh_core::identity::manager::CaClientConfig;
use mesh_core::scheduling::Scheduling;
use mesh_node::agent::NodeConfig;
use mesh_node::ca::kube::KubeAuthorizerConfig;
use mesh_node::ca::{AuthorizerConfig, CaConfig};
use mesh_node::cli::{AuthorizerKind, Cli, Command, OnOff};
use mesh_node::ebpf::Ebpf;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    mesh_core::heap::configure();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::try_parse_checked(std::env::args_os()).unwrap_or_else(|error| error.exit());
    if matches!(cli.command, Command::Run(_) | Command::Ca(_))
        && let Err(error) = mesh_core::identity::protect_key_memory()
    {
        tracing::warn!(%error, "cannot keep the private keys out of core dumps");
    }
    let (workers, scheduling) = match &cli.command {
        Command::Run(args) => (usize::from(args.worker_threads), args.scheduling),
        // The CA and the one-shot commands: two, as for any small server.
        _ => (2, Scheduling::Normal),
    };
    mesh_core::runtime::build(workers, scheduling)
        .context("starting the async runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::EbpfCheck { cgroup, seconds } => ebpf_check(cgroup, seconds).await,
        Command::Run(args) => {
            raise_fd_limit();
            let source = args.config_source()?;
            let agent_cgroup = match args.agent_cgroup {
                Some(path) => Some(path),
                None => own_cgroup()?,
            };
            let config = NodeConfig {
                source,
                node: args.node,
                pods_cgroup: args.pods_cgroup,
                agent_cgroup,
                pin_dir: args.pin_dir,
                proxy_ip: args.proxy_ip,
                outbound_port: args.outbound_port,
                hbone_port: args.hbone_port,
                inbound_port: args.inbound_port,
                inbound_capture: args.inbound_capture == OnOff::On,
                admin_port: args.admin_port,
                admin_ip: args.admin_ip,
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
        Command::Ca(args) => {
            let authorizer = match args.authorizer {
                AuthorizerKind::File => AuthorizerConfig::File {
                    config_dir: args.config_dir.context("--config-dir is required")?,
                    node_credentials: args
                        .node_credentials
                        .context("--node-credentials is required")?,
                },
                AuthorizerKind::Kube => AuthorizerConfig::Kube(KubeAuthorizerConfig {
                    audience: args.token_audience,
                    node_agent: args.node_agent_service_account,
                }),
            };
            if args.publish_root_configmap.is_some() && args.authorizer != AuthorizerKind::Kube {
                anyhow::bail!(
                    "--publish-root-configmap writes to the Kubernetes API: it needs --authorizer kube"
                );
            }
            Ok(mesh_node::ca::run(CaConfig {
                listen: args.listen,
                metrics_listen: args.metrics_listen,
                trust_domain: args.trust_domain,
                authorizer,
                ca_dir: args.ca_dir,
                publish_root: args.publish_root_configmap,
                root_cert_out: args.root_cert_out,
                max_validity: args.max_cert_ttl,
            })
            .await?)
        }
        Command::CaInit { trust_domain, out } => {
            let written = mesh_core::identity::ca::files::create(&trust_domain, &out)?;
            for path in written {
                println!("wrote {}", path.display());
            }
            println!(
                "serve with `mesh-node ca --ca-dir {dir}` (in Kubernetes: a Secret of every file \
                 but root-key.pem, see deploy/README.md); keep root-key.pem offline",
                dir = out.display()
            );
            Ok(())
        }
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
