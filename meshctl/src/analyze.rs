//! `meshctl analyze`: reads files and folders of manifests, runs
//! [`mesh_core::config::analyze`] over them as one set, and prints the diagnostics as text
//! (`error: Kind namespace/name: message`) or JSON.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use mesh_core::config::{Report, Severity, analyze};
use mesh_core::manifest;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Manifest files or folders (a folder: its .yaml, .yml and .json files).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    output: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let report = analyze(manifest::load_paths(&args.paths));
    let printed = match args.output {
        Format::Text => print_text(&report),
        Format::Json => print_json(&report),
    };
    if let Err(error) = printed {
        eprintln!("meshctl: cannot write the report: {error}");
        return ExitCode::from(2);
    }
    if report.errors() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_text(report: &Report) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for diagnostic in &report.diagnostics {
        let label = match diagnostic.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(out, "{label}: {diagnostic}")?;
    }
    let (errors, warnings) = (report.errors(), report.warnings());
    if errors + warnings == 0 {
        writeln!(out, "no problems found")?;
    } else {
        writeln!(out, "{errors} error(s), {warnings} warning(s)")?;
    }
    Ok(())
}

fn print_json(report: &Report) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, report)?;
    writeln!(out)
}
