//! `mesh-node`'s command line (clap). In the library rather than in `main.rs` so that tests
//! can parse the commands the Kubernetes manifests in `deploy/` run, and fail when a flag
//! they use is renamed or removed.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser, Subcommand};

use mesh_core::config::Name;
use mesh_core::identity::service::CaAddress;
use mesh_core::scheduling::Scheduling;

use crate::agent::{ConfigSource, RedirectMode};
use crate::ca::kube::{DEFAULT_AUDIENCE, DEFAULT_NODE_AGENT, parse_service_account};

#[derive(Debug, Parser)]
#[command(name = "mesh-node", about = "The mesh's node agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the arguments and checks what clap alone cannot (flags that belong to only one
    /// config source).
    pub fn try_parse_checked<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        if let Command::Run(run) = &cli.command {
            run.config_source()?;
        }
        Ok(cli)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: redirect enrolled pods' TCP to the outbound listener with eBPF,
    /// carry it in mutual TLS (HBONE) to the destination's node, admit inbound tunnels by
    /// policy, keep enrollment and certificates in sync with the config source (root).
    Run(RunArgs),
    /// Run the mesh CA: Istio's CreateCertificate over gRPC with TLS, for node agents.
    Ca(CaArgs),
    /// Write a new root and an intermediate CA for `ca --ca-dir` (Istio's plug-in CA files:
    /// ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem, plus root-key.pem to keep
    /// offline). Never overwrites a file.
    CaInit {
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// The folder to write (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
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

/// Where the config model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// A folder of Kubernetes YAML, watched (`--config-dir`).
    Files,
    /// The Kubernetes API (in-cluster service account or kubeconfig); the agent watches only
    /// the pods of `--node`.
    Kube,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The node this agent serves (pods with spec.nodeName equal to it).
    #[arg(long)]
    pub node: String,
    /// Where the config model comes from.
    #[arg(long, value_enum, default_value_t = SourceKind::Files)]
    pub config_source: SourceKind,
    /// The files config source: a folder of Kubernetes YAML, watched (files only).
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// The cgroup v2 folder holding the node's pod cgroups (`pod<uid>`).
    #[arg(long)]
    pub pods_cgroup: PathBuf,
    /// The agent's own cgroup, for the fast path's proxy side (default: the one it runs in).
    #[arg(long)]
    pub agent_cgroup: Option<PathBuf>,
    /// bpffs folder for this node's pins.
    #[arg(long)]
    pub pin_dir: PathBuf,
    /// The address the outbound listener binds (the node's IP).
    #[arg(long)]
    pub proxy_ip: Ipv4Addr,
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    #[arg(long, default_value_t = mesh_core::hbone::PORT)]
    pub hbone_port: u16,
    /// The plaintext inbound listener (non-mesh clients of enrolled pods, captured by eBPF).
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// Capture TCP from outside the mesh to enrolled pods (so PeerAuthentication STRICT can
    /// refuse it); off leaves such traffic to reach the pods directly.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub inbound_capture: OnOff,
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// The address the admin port binds: loopback, as Istio's ztunnel, since its pages
    /// (`/config_dump`: every pod of the node and its identity) are the operator's, not the
    /// pods'. Metrics (15020) and readiness (15021) listen on every address.
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    pub admin_ip: Ipv4Addr,
    #[arg(long, default_value_t = 15020)]
    pub metrics_port: u16,
    #[arg(long, default_value_t = 15021)]
    pub readiness_port: u16,
    /// The mesh CA's gRPC address: `ip:port` or `name:port` (resolved at every connection).
    #[arg(long)]
    pub ca_addr: CaAddress,
    /// The CA's root certificate (PEM): the mesh's trust anchor.
    #[arg(long)]
    pub ca_root: PathBuf,
    /// A file holding this node's credential for the CA.
    #[arg(long)]
    pub ca_credential_file: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Workload certificate lifetime to ask for, e.g. 24h, 30m, 10s.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,
    /// The sock_ops + sk_msg sockhash fast path for same-node legs. Off by default: the
    /// kernel's ingress redirect has no backpressure, so a pod that sends faster than this
    /// agent reads fills the agent's socket until TCP memory runs out (see the README).
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    pub fast_path: OnOff,
    #[arg(long, value_enum, default_value_t = RedirectMode::Ebpf)]
    pub redirect: RedirectMode,
    /// Threads that run the proxy. One serves a node's usual load at the least CPU per
    /// request (no wake-ups between threads; bench mesh: ~40 % less CPU at 1000 req/s than
    /// two); give more to a node that proxies more than one core's worth.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: u16,
    /// How the kernel schedules the proxy's threads: `auto` (batch work, SCHED_BATCH, while
    /// they get a CPU promptly, SCHED_OTHER while CPU-bound neighbours make them wait),
    /// `batch` or `normal` (SCHED_OTHER). Batch: woken by a packet, the proxy waits for the
    /// sender to sleep instead of preempting it (bench mesh: about a fifth less CPU per request
    /// at 1000 req/s).
    #[arg(long, default_value_t = Scheduling::Auto)]
    pub scheduling: Scheduling,
}

impl RunArgs {
    /// The config source the flags choose: `--config-dir` goes with `files` and only there.
    pub fn config_source(&self) -> Result<ConfigSource, clap::Error> {
        let conflict = |message: &str| Cli::command().error(ErrorKind::ArgumentConflict, message);
        match (self.config_source, &self.config_dir) {
            (SourceKind::Files, Some(dir)) => Ok(ConfigSource::Files { dir: dir.clone() }),
            (SourceKind::Files, None) => Err(Cli::command().error(
                ErrorKind::MissingRequiredArgument,
                "--config-source files needs --config-dir <FOLDER>",
            )),
            (SourceKind::Kube, None) => Ok(ConfigSource::Kube),
            (SourceKind::Kube, Some(_)) => Err(conflict(
                "--config-dir is read only with --config-source files; with kube the agent watches the Kubernetes API",
            )),
        }
    }
}

/// How `mesh-node ca` decides who may obtain which identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthorizerKind {
    /// The lab: a credentials file (`--node-credentials`) and the files config source
    /// (`--config-dir`).
    File,
    /// Kubernetes: service-account tokens checked with TokenReview, pods looked up in the API.
    Kube,
}

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// The gRPC address to serve.
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,
    /// Where the CA's Prometheus metrics are served (`/metrics`; istiod's monitoring port).
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub metrics_listen: SocketAddr,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Who may obtain which identity.
    #[arg(long, value_enum, default_value_t = AuthorizerKind::File)]
    pub authorizer: AuthorizerKind,
    /// The files config source (pods and their nodes); `--authorizer file` only.
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// JSON object of node agent credential → node name; `--authorizer file` only.
    #[arg(long)]
    pub node_credentials: Option<PathBuf>,
    /// The audience service-account tokens must be bound to; `--authorizer kube` only.
    #[arg(long, default_value = DEFAULT_AUDIENCE)]
    pub token_audience: String,
    /// The node agent's service account (`namespace/name`); `--authorizer kube` only.
    #[arg(long, default_value = DEFAULT_NODE_AGENT, value_parser = parse_service_account)]
    pub node_agent_service_account: Name,
    /// Sign with Istio's plug-in CA files in this folder (ca-cert.pem, ca-key.pem,
    /// root-cert.pem, optional cert-chain.pem: the keys of Istio's `cacerts` Secret; `ca-init`
    /// writes them), so the root outlives this process. Without it the CA makes a new root at
    /// every start.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// Where to write the root certificate (PEM) for the agents.
    #[arg(long)]
    pub root_cert_out: PathBuf,
    /// Keep a ConfigMap of this name with the roots (key root-cert.pem) in every namespace
    /// but kube-system, kube-public and kube-node-lease, as istiod does with
    /// istio-ca-root-cert; `--authorizer kube` only.
    #[arg(long)]
    pub publish_root_configmap: Option<String>,
    /// The longest certificate lifetime granted, e.g. 24h.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub max_cert_ttl: Duration,
}

/// A positive duration in Istio's (Go's) syntax: `10s`, `30m`, `24h`, `500ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    match mesh_core::config::duration::parse(text) {
        Ok(duration) if duration.is_zero() => Err(format!("{text:?}: a duration must be positive")),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &[&str] = &[
        "mesh-node",
        "run",
        "--node",
        "node1",
        "--pods-cgroup",
        "/sys/fs/cgroup/kubepods.slice",
        "--pin-dir",
        "/sys/fs/bpf/mesh",
        "--proxy-ip",
        "10.0.0.1",
        "--ca-addr",
        "10.96.0.12:15012",
        "--ca-root",
        "/etc/mesh/root-cert.pem",
        "--ca-credential-file",
        "/var/run/secrets/token",
    ];

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = RUN.iter().chain(extra);
        match Cli::try_parse_checked(argv)?.command {
            Command::Run(args) => Ok(args),
            other => panic!("parsed {other:?}, not run"),
        }
    }

    #[test]
    fn files_source_is_the_default_and_needs_a_config_dir() {
        let error = run_args(&[]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument, "{error}");
        assert!(error.to_string().contains("--config-dir"), "{error}");
        let args = run_args(&["--config-dir", "/etc/mesh/config"]).unwrap();
        assert_eq!(
            args.config_source().unwrap(),
            ConfigSource::Files {
                dir: "/etc/mesh/config".into()
            }
        );
    }

    #[test]
    fn kube_source_needs_no_config_dir_and_refuses_one() {
        let args = run_args(&["--config-source", "kube"]).unwrap();
        assert_eq!(args.config_source().unwrap(), ConfigSource::Kube);
        let error = run_args(&["--config-source", "kube", "--config-dir", "/x"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{error}");
        assert!(
            error.to_string().contains("--config-source files"),
            "{error}"
        );
    }

    #[test]
    fn unknown_config_source_is_refused() {
        let error = run_args(&["--config-source", "etcd"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidValue, "{error}");
    }
}
