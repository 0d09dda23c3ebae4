//! `meshctl analyze`: reads files and folders of manifests, runs
//! [`mesh_core::config::analyze`] over them as one set, adds what the waypoint reports for
//! each VirtualService, DestinationRule and RequestAuthentication, and prints the
//! diagnostics as text
//! (`error: Kind namespace/name: message`) or JSON.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use mesh_core::config::istio::DestinationRule;
use mesh_core::config::resource::{Kind, Resource};
use mesh_core::config::{Diagnostic, Report, Severity, analyze, support};
use mesh_core::manifest;
use mesh_waypoint::authn::Authenticator;
use mesh_waypoint::route::RouteTable;
use mesh_waypoint::upstream::{EffectivePolicy, Error as UpstreamError};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Manifest files or folders (a folder: its .yaml, .yml and .json files).
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    paths: Vec<PathBuf>,
    /// Read the folders' subfolders too, at any depth (as `kubectl apply -R`).
    #[arg(short = 'R', long)]
    recursive: bool,
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
    let folders = if args.recursive {
        manifest::Folders::Recursive
    } else {
        manifest::Folders::Flat
    };
    let loaded = manifest::load(&args.paths, folders);
    let routing: Vec<(Resource, String)> = loaded
        .objects
        .iter()
        .filter(|object| {
            ["VirtualService", "DestinationRule", "RequestAuthentication"]
                .contains(&object.kind.as_str())
        })
        .filter_map(|object| {
            let origin = object.origin.to_string();
            Resource::from_object(object.clone())
                .ok()
                .map(|resource| (resource, origin))
        })
        .collect();
    let mut report = analyze(loaded);
    waypoint_findings(&mut report, &routing);
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

/// What the waypoint reports when it loads each VirtualService, DestinationRule and
/// RequestAuthentication, field by field and value by value, in its own words: its route
/// compiler's findings (a retry condition it does not know, a header it cannot edit, a
/// VirtualService bound only to ingress gateways, a value it refuses), its DestinationRule
/// resolution's (an upstream TLS mode it does not use, a consistent hash without a key, a
/// header name it refuses) and its JWT rules' (a JWK Set it cannot use, a header name it
/// cannot set). Its warnings replace the support table's per-field warnings for these kinds
/// (unless it also found an error, after which it may not have looked further): a waypoint
/// test holds every field the table calls unsupported to a report here, so nothing is lost.
/// Its errors (what makes it leave a rule out, or refuse the rule) are errors here, but for a
/// field analyze's own checks already call wrong.
fn waypoint_findings(report: &mut Report, objects: &[(Resource, String)]) {
    for (resource, origin) in objects {
        let (kind, namespace, name, findings) = match resource {
            Resource::VirtualService(vs) => {
                let compiled = RouteTable::compile(&[Arc::clone(vs)]);
                let errors = compiled.errors().iter().map(|p| (Severity::Error, p));
                let unsupported = compiled
                    .unsupported()
                    .iter()
                    .map(|p| (Severity::Warning, p));
                let findings: Vec<Finding> = errors
                    .chain(unsupported)
                    .map(|(severity, p)| (severity, p.path.clone(), p.message.clone()))
                    .collect();
                (Kind::VirtualService, vs.namespace(), vs.name(), findings)
            }
            Resource::DestinationRule(rule) => (
                Kind::DestinationRule,
                rule.namespace(),
                rule.name(),
                resolved(rule),
            ),
            Resource::RequestAuthentication(policy) => {
                let compiled = Authenticator::compile(&[Arc::clone(policy)], None);
                let findings = compiled
                    .warnings()
                    .iter()
                    .map(|f| (Severity::Warning, f.path.clone(), f.message.clone()))
                    .collect();
                (
                    Kind::RequestAuthentication,
                    policy.namespace(),
                    policy.name(),
                    findings,
                )
            }
            _ => continue,
        };
        let is_this = |d: &Diagnostic| {
            d.kind.as_deref() == Some(kind.name())
                && d.namespace.as_deref() == Some(namespace)
                && d.name.as_deref() == Some(name)
        };
        // Where the waypoint stopped at an error it may not have reached every field, so the
        // table's warnings stay.
        if findings
            .iter()
            .all(|(severity, _, _)| *severity != Severity::Error)
        {
            let table = support::warnings(kind, &resource.to_value()["spec"]);
            report
                .diagnostics
                .retain(|d| !(is_this(d) && table.contains(&d.message)));
        }
        let already_wrong: Vec<String> = report
            .diagnostics
            .iter()
            .filter(|d| is_this(d) && d.severity == Severity::Error)
            .map(|d| d.message.clone())
            .collect();
        for (severity, field, message) in findings {
            let said = already_wrong.iter().any(|m| {
                m.strip_prefix(field.as_str())
                    .is_some_and(|rest| rest.starts_with([':', '.', '[']))
            });
            if severity == Severity::Error && said {
                continue;
            }
            report.diagnostics.push(Diagnostic {
                kind: Some(kind.name().into()),
                namespace: Some(namespace.to_owned()),
                name: Some(name.to_owned()),
                severity,
                message: format!("{field}: {message}"),
                origin: Some(origin.clone()),
            });
        }
    }
    report.diagnostics.sort();
    report.diagnostics.dedup();
}

/// A waypoint finding: its severity, the field under `spec`, and what it says.
type Finding = (Severity, String, String);

/// The waypoint's findings for a DestinationRule, resolved for no subset and each subset, at
/// each port a port-level setting names and at one none names: every group of settings is
/// then seen where it applies.
fn resolved(rule: &DestinationRule) -> Vec<Finding> {
    let spec = &rule.spec;
    let policies = spec.traffic_policy.as_deref().into_iter().chain(
        spec.subsets
            .iter()
            .filter_map(|s| s.traffic_policy.as_deref()),
    );
    let mut ports: BTreeSet<u16> = policies
        .flat_map(|p| &p.port_level_settings)
        .filter_map(|p| p.port.as_ref()?.number)
        .filter_map(|n| u16::try_from(n).ok())
        .collect();
    ports.insert(0);
    let subsets = std::iter::once(None).chain(spec.subsets.iter().map(|s| Some(s.name.as_str())));
    let mut found = BTreeSet::new();
    for subset in subsets {
        for port in &ports {
            match EffectivePolicy::resolve(Some(rule), subset, *port) {
                Ok(policy) => found.extend(
                    policy
                        .warnings
                        .into_iter()
                        .map(|w| (Severity::Warning, w.field, w.message)),
                ),
                Err(UpstreamError::Invalid { field, message, .. }) => {
                    found.insert((Severity::Error, field, message));
                }
                // Subsets are the rule's own here; nothing else comes out of a resolution.
                Err(other) => {
                    found.insert((Severity::Error, "subsets".into(), other.to_string()));
                }
            }
        }
    }
    found.into_iter().collect()
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
