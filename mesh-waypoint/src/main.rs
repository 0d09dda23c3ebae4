//! `mesh-waypoint`: the L7 proxy a namespace or service account opts into with
//! `istio.io/use-waypoint`. Its HBONE server and VirtualService/DestinationRule engine are
//! tracked in the waypoint issue; until they land this binary says so instead of pretending.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "mesh-waypoint",
    version,
    about = "L7 waypoint proxy (not built yet)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    anyhow::bail!(
        "mesh-waypoint: the L7 engine is not built yet; namespaces labelled istio.io/use-waypoint get L4 service only"
    )
}
