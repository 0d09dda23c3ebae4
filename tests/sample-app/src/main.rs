//! `sample-app`: parses the simulator's command line, logs to stderr, and runs the app until
//! SIGTERM/SIGINT.

use clap::Parser;
use sample_app::{Cli, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = Config::from_cli(Cli::parse())?;
    tokio::select! {
        result = sample_app::run(config) => result?,
        () = sample_app::shutdown_signal() => {}
    }
    Ok(())
}
