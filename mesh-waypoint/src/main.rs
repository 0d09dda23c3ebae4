//! `mesh-waypoint`: the L7 proxy a namespace, service or service account opts into with
//! `istio.io/use-waypoint`. It runs as a pod with its own identity, serves HBONE on 15008,
//! applies VirtualService and DestinationRule rules to what the node agents send it, and
//! forwards over HBONE to the chosen endpoint's node.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mesh_core::identity::manager::CaClientConfig;
use mesh_waypoint::server::{self, WaypointConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "mesh-waypoint",
    version,
    about = "L7 waypoint proxy of the mesh"
)]
struct Cli {
    /// The waypoint's name (its Gateway and Service are named so).
    #[arg(long, env = "WAYPOINT_NAME", default_value = "waypoint")]
    name: String,
    /// The namespace the waypoint runs in (and serves).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// The waypoint's own service account: its identity.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "waypoint")]
    service_account: String,
    /// The pod's IP: HBONE is served there.
    #[arg(long, env = "POD_IP")]
    pod_ip: IpAddr,
    /// Serve only traffic to workloads of this service account (a service-account waypoint).
    #[arg(long, env = "WAYPOINT_FOR_SERVICE_ACCOUNT")]
    for_service_account: Option<String>,
    /// The files config source (a folder of Kubernetes and Istio YAML, watched).
    #[arg(long, env = "MESH_CONFIG_DIR")]
    config_dir: PathBuf,
    #[arg(long, default_value_t = mesh_core::hbone::PORT)]
    hbone_port: u16,
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    #[arg(long, default_value_t = 15020)]
    metrics_port: u16,
    /// The mesh CA's gRPC address.
    #[arg(long, env = "CA_ADDR")]
    ca_addr: SocketAddr,
    /// The CA's root certificate (PEM).
    #[arg(long, env = "CA_ROOT")]
    ca_root: PathBuf,
    /// A file holding the pod's credential for the CA.
    #[arg(long, env = "CA_CREDENTIAL_FILE")]
    ca_credential_file: PathBuf,
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Certificate lifetime to ask for, e.g. 24h, 30m.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match mesh_core::config::duration::parse(text) {
        Ok(duration) if duration.is_zero() => Err(format!("{text:?}: a duration must be positive")),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let config = WaypointConfig {
        name: cli.name,
        namespace: cli.namespace,
        service_account: cli.service_account,
        for_service_account: cli.for_service_account,
        pod_ip: cli.pod_ip,
        config_dir: cli.config_dir,
        hbone_port: cli.hbone_port,
        admin_port: cli.admin_port,
        metrics_port: cli.metrics_port,
        ca: CaClientConfig {
            addr: cli.ca_addr,
            root: cli.ca_root,
            credential_file: cli.ca_credential_file,
            trust_domain: cli.trust_domain,
            validity: cli.cert_ttl,
        },
    };
    Ok(server::run(config).await?)
}
