//! `meshctl`: the mesh's command line. Today: `meshctl analyze -f PATH...` checks Kubernetes
//! and Istio manifests against the mesh's config model and says what the data plane does
//! not support yet.

mod analyze;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Analyze(args) => analyze::run(&args),
    }
}
