//! `mesh-waypoint`: the L7 proxy a namespace, service or service account opts into with
//! `istio.io/use-waypoint`. It runs as a pod with its own identity, serves HBONE on 15008,
//! applies VirtualService and DestinationRule rules to what the node agents send it, and
//! forwards over HBONE to the chosen endpoint's node.

use mesh_waypoint::cli::Cli;
use mesh_waypoint::server;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    mesh_core::heap::configure();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::try_parse_checked(std::env::args_os()).unwrap_or_else(|error| error.exit());
    if let Err(error) = mesh_core::identity::protect_key_memory() {
        tracing::warn!(%error, "cannot keep the private keys out of core dumps");
    }
    let (workers, scheduling) = (usize::from(cli.worker_threads), cli.scheduling);
    let config = cli.into_config().unwrap_or_else(|error| error.exit());
    let runtime = mesh_core::runtime::build(workers, scheduling)?;
    Ok(runtime.block_on(server::run(config))?)
}
