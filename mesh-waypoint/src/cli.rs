//! `mesh-waypoint`'s command line (clap; most flags also read from the pod's environment).
//! In the library rather than in `main.rs` so that tests can parse the container the
//! waypoint template in `deploy/` runs, and fail when a flag or variable it sets is renamed.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser};
use mesh_core::identity::manager::CaClientConfig;
use mesh_core::identity::service::CaAddress;
use mesh_core::scheduling::Scheduling;

use crate::server::{ConfigSource, WaypointConfig};

#[derive(Debug, Parser)]
#[command(
    name = "mesh-waypoint",
    version,
    about = "L7 waypoint proxy of the mesh"
)]
pub struct Cli {
    /// The waypoint's name (its Gateway and Service are named so).
    #[arg(long, env = "WAYPOINT_NAME", default_value = "waypoint")]
    pub name: String,
    /// The namespace the waypoint runs in (and serves).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The waypoint's own service account: its identity.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "waypoint")]
    pub service_account: String,
    /// The pod's IP: HBONE is served there.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: IpAddr,
    /// Serve only traffic to workloads of this service account (a service-account waypoint).
    #[arg(long, env = "WAYPOINT_FOR_SERVICE_ACCOUNT")]
    pub for_service_account: Option<String>,
    /// Where the config model comes from.
    #[arg(long, env = "MESH_CONFIG_SOURCE", value_enum, default_value_t = SourceKind::Files)]
    pub config_source: SourceKind,
    /// The files config source (a folder of Kubernetes and Istio YAML, watched; files only).
    #[arg(long, env = "MESH_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    #[arg(long, default_value_t = mesh_core::hbone::PORT)]
    pub hbone_port: u16,
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// The address admin listens on: loopback, as Envoy's admin in an Istio waypoint, since
    /// `/config_dump` (the waypoint's certificates and tunnels) is the operator's. Metrics
    /// (15020) listen on the pod IP.
    #[arg(long, default_value_t = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))]
    pub admin_ip: IpAddr,
    #[arg(long, default_value_t = 15020)]
    pub metrics_port: u16,
    /// The mesh CA's gRPC address: `ip:port` or `name:port` (e.g.
    /// `mesh-ca.istio-system.svc:15012`, resolved at every connection).
    #[arg(long, env = "CA_ADDR")]
    pub ca_addr: CaAddress,
    /// The CA's root certificate (PEM).
    #[arg(long, env = "CA_ROOT")]
    pub ca_root: PathBuf,
    /// A file holding the pod's credential for the CA.
    #[arg(long, env = "CA_CREDENTIAL_FILE")]
    pub ca_credential_file: PathBuf,
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Certificate lifetime to ask for, e.g. 24h, 30m.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,
    /// Threads that run the proxy. One serves a waypoint's usual load at the least CPU per
    /// request (no wake-ups between threads); give more to one that proxies more than one
    /// core's worth.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: u16,
    /// How the kernel schedules the proxy's threads: `auto` (batch work, SCHED_BATCH, while
    /// they get a CPU promptly, SCHED_OTHER while CPU-bound neighbours make them wait),
    /// `batch` or `normal` (SCHED_OTHER). Batch: woken by a packet, the proxy waits for the
    /// sender to sleep instead of preempting it (bench mesh: about a fifth less CPU per request
    /// at 1000 req/s).
    #[arg(long, env = "SCHEDULING", default_value_t = Scheduling::Auto)]
    pub scheduling: Scheduling,
}

/// Where the config model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// A folder of Kubernetes YAML, watched (`--config-dir`).
    Files,
    /// The Kubernetes API (in-cluster service account or kubeconfig), every namespace.
    Kube,
}

impl Cli {
    /// Parses the arguments (and the environment) and checks what clap alone cannot (flags
    /// that belong to only one config source).
    pub fn try_parse_checked<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        cli.config_source()?;
        Ok(cli)
    }

    /// The config source the flags choose: `--config-dir` goes with `files` and only there.
    pub fn config_source(&self) -> Result<ConfigSource, clap::Error> {
        match (self.config_source, &self.config_dir) {
            (SourceKind::Files, Some(dir)) => Ok(ConfigSource::Files { dir: dir.clone() }),
            (SourceKind::Files, None) => Err(Cli::command().error(
                ErrorKind::MissingRequiredArgument,
                "--config-source files needs --config-dir <FOLDER> (or MESH_CONFIG_DIR)",
            )),
            (SourceKind::Kube, None) => Ok(ConfigSource::Kube),
            (SourceKind::Kube, Some(_)) => Err(Cli::command().error(
                ErrorKind::ArgumentConflict,
                "--config-dir (MESH_CONFIG_DIR) is read only with --config-source files; with kube the waypoint watches the Kubernetes API",
            )),
        }
    }

    /// The waypoint's configuration.
    pub fn into_config(self) -> Result<WaypointConfig, clap::Error> {
        let source = self.config_source()?;
        Ok(WaypointConfig {
            name: self.name,
            namespace: self.namespace,
            service_account: self.service_account,
            for_service_account: self.for_service_account,
            pod_ip: self.pod_ip,
            source,
            hbone_port: self.hbone_port,
            admin: SocketAddr::new(self.admin_ip, self.admin_port),
            metrics_port: self.metrics_port,
            ca: CaClientConfig {
                addr: self.ca_addr,
                root: self.ca_root,
                credential_file: self.ca_credential_file,
                trust_domain: self.trust_domain,
                validity: self.cert_ttl,
            },
        })
    }
}

/// A positive duration in Istio's (Go's) syntax: `10s`, `30m`, `24h`, `500ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    match mesh_core::config::duration::parse(text) {
        Ok(duration) if duration.is_zero() => Err(format!("{text:?}: a duration must be positive")),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[&str] = &[
        "mesh-waypoint",
        "--namespace",
        "shop",
        "--pod-ip",
        "10.0.0.7",
        "--ca-addr",
        "10.96.0.12:15012",
        "--ca-root",
        "/etc/mesh/root-cert.pem",
        "--ca-credential-file",
        "/var/run/secrets/token",
    ];

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_checked(FLAGS.iter().chain(extra))
    }

    #[test]
    fn kube_source_needs_no_config_dir() {
        let config = parse(&["--config-source", "kube"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(config.source, ConfigSource::Kube);
    }

    #[test]
    fn files_source_takes_the_folder_and_kube_refuses_it() {
        let config = parse(&["--config-dir", "/etc/mesh/config"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(
            config.source,
            ConfigSource::Files {
                dir: "/etc/mesh/config".into()
            }
        );
        let error = parse(&["--config-source", "kube", "--config-dir", "/x"]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict, "{error}");
    }
}
