//! `meshctl`: the mesh's command line. Today: `meshctl analyze -f PATH...` checks Kubernetes
//! and Istio manifests against the mesh's config model and says what the data plane does
//! not support yet; `meshctl waypoint generate -n NS` prints the Gateway that deploys a
//! waypoint.

mod analyze;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshctl::waypoint;

#[derive(Parser)]
#[command(name = "meshctl", about = "The mesh's command line", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check manifests: errors and warnings as `Kind namespace/name: message`; exit 1 on errors.
    Analyze(analyze::Args),
    /// Waypoints (L7 proxies): `generate` prints the Gateway that asks for one.
    #[command(subcommand)]
    Waypoint(WaypointCommand),
}

#[derive(Subcommand)]
enum WaypointCommand {
    /// Print the Gateway (class istio-waypoint) that deploys a waypoint; apply it to deploy.
    Generate(waypoint::GenerateArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Analyze(args) => analyze::run(&args),
        Command::Waypoint(WaypointCommand::Generate(args)) => match waypoint::generate(&args) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("meshctl: {error}");
                ExitCode::from(2)
            }
        },
    }
}
