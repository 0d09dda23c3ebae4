//! `meshctl analyze`: reads files and folders of manifests, runs
//! [`mesh_core::config::analyze`] over them as one set, adds what the waypoint's route
//! compiler reports for each VirtualService, and prints the diagnostics as text
//! (`error: Kind namespace/name: message`) or JSON.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use mesh_core::config::resource::{Kind, Resource};
use mesh_core::config::{Diagnostic, Report, Severity, analyze, support};
use mesh_core::manifest;
use mesh_waypoint::route::RouteTable;

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
    let loaded = manifest::load_paths(&args.paths);
    let virtual_services: Vec<(Resource, String)> = loaded
        .objects
        .iter()
        .filter(|object| object.kind == "VirtualService")
        .filter_map(|object| {
            let origin = object.origin.to_string();
            Resource::from_object(object.clone())
                .ok()
                .map(|resource| (resource, origin))
        })
        .collect();
    let mut report = analyze(loaded);
    waypoint_findings(&mut report, &virtual_services);
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

/// What the waypoint's route compiler reports as not implemented in each VirtualService,
/// field by field and value by value (a retry condition it does not know, a header it cannot
/// edit, a VirtualService bound only to ingress gateways), in the waypoint's own words. These
/// replace the support table's per-field warnings for VirtualServices: a waypoint test holds
/// every field the table calls unsupported to a report here, so nothing is lost, and the
/// compiler says what happens instead and how to fix it.
fn waypoint_findings(report: &mut Report, virtual_services: &[(Resource, String)]) {
    for (resource, origin) in virtual_services {
        let Resource::VirtualService(vs) = resource else {
            continue;
        };
        let (namespace, name) = (vs.namespace().to_owned(), vs.name().to_owned());
        let is_this = |d: &Diagnostic| {
            d.kind.as_deref() == Some("VirtualService")
                && d.namespace.as_deref() == Some(namespace.as_str())
                && d.name.as_deref() == Some(name.as_str())
        };
        let table = support::warnings(Kind::VirtualService, &resource.to_value()["spec"]);
        report
            .diagnostics
            .retain(|d| !(is_this(d) && table.contains(&d.message)));
        let compiled = RouteTable::compile(&[Arc::clone(vs)]);
        for problem in compiled.unsupported() {
            report.diagnostics.push(Diagnostic {
                kind: Some("VirtualService".into()),
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                severity: Severity::Warning,
                message: format!("{}: {}", problem.path, problem.message),
                origin: Some(origin.clone()),
            });
        }
    }
    report.diagnostics.sort();
    report.diagnostics.dedup();
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
