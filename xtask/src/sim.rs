//! `cargo xtask sim …`: the command line of the simulated cluster (see the `mesh-sim` crate).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use mesh_sim::{Applied, Lab, LabOptions, MeshOptions, State};

use crate::cargo;

#[derive(Args)]
pub(crate) struct SimArgs {
    /// Which lab: every name it creates starts with `msim-<lab>-`.
    #[arg(long, global = true, env = "MESH_SIM_LAB", default_value = "mesh")]
    lab: String,
    #[command(subcommand)]
    command: SimCommand,
}

#[derive(Subcommand)]
enum SimCommand {
    /// Create the nodes and network, then apply manifests.
    Up {
        #[arg(long, default_value_t = 2)]
        nodes: u8,
        /// Manifest files or folders (repeatable).
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// Run the mesh: one mesh-node per node (eBPF redirect of enrolled pods).
        #[arg(long)]
        mesh: bool,
        /// The sock_ops + sk_msg fast path of the node agents (with --mesh).
        #[arg(long, value_enum, default_value_t = OnOff::Off)]
        fast_path: OnOff,
        /// Run this mesh-node binary (e.g. target/release/mesh-node) instead of a debug
        /// build (with --mesh).
        #[arg(long, requires = "mesh")]
        mesh_node: Option<PathBuf>,
    },
    /// Create or update objects from manifests (all are checked before any applies).
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Namespace for objects that name none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Delete the objects named in manifests.
    Delete {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Change labels live: `sim label ns default istio.io/dataplane-mode=ambient`,
    /// `sim label pod default/curl app-`, `sim label svc default/reviews k=v`.
    Label {
        /// ns, pod, svc, sa or deploy.
        kind: String,
        /// NAME or NAMESPACE/NAME.
        name: String,
        /// key=value to set, key- to remove.
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Show nodes, pods or services.
    Get {
        what: What,
        #[arg(short = 'o', long)]
        output: Option<Output>,
    },
    /// Run a command inside a pod (its network, cgroup and /etc/hosts): NS/POD or a
    /// Deployment name, e.g. `sim exec curl -- curl -s productpage:9080/productpage`.
    Exec {
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a pod's container logs.
    Logs { pod: String },
    /// Remove everything the lab created (idempotent; works after a crash).
    Down,
    /// List the labs on this machine.
    List,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum What {
    Nodes,
    Pods,
    #[value(alias = "services")]
    Svc,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Json,
    Wide,
}

pub(crate) fn run(args: SimArgs) -> Result<ExitCode> {
    let lab = args.lab;
    match args.command {
        SimCommand::Up {
            nodes,
            files,
            mesh,
            fast_path,
            mesh_node,
        } => {
            let sample_app = cargo::build_sample_app(cargo::Profile::Debug)?;
            // Gateways of class istio-waypoint run it.
            cargo::build_mesh_waypoint()?;
            let mesh_node = match mesh_node {
                Some(path) => Some(
                    std::fs::canonicalize(&path)
                        .with_context(|| format!("--mesh-node {}", path.display()))?,
                ),
                None if mesh => Some(cargo::build_mesh_node()?),
                None => None,
            };
            let started = Instant::now();
            let options = LabOptions {
                name: lab.clone(),
                nodes,
                sample_app: Some(sample_app),
            };
            let (mut lab_handle, applied) = Lab::up(&options, &files)?;
            report(&applied);
            if let Some(binary) = mesh_node {
                let mesh = MeshOptions {
                    binary: Some(binary),
                    fast_path: fast_path == OnOff::On,
                    ..MeshOptions::default()
                };
                if let Err(err) = lab_handle.start_mesh(&mesh) {
                    drop(lab_handle);
                    let _ = Lab::down(&lab);
                    return Err(err.into());
                }
                println!(
                    "mesh on: a mesh-node per node (fast path {}); label a namespace \
                     istio.io/dataplane-mode=ambient to enroll its pods",
                    if mesh.fast_path { "on" } else { "off" }
                );
            }
            println!(
                "lab {lab} is up: {nodes} nodes, {} pods, {} services in {:.1} s (state in {})",
                lab_handle.state().pods.len(),
                lab_handle.state().services.len(),
                started.elapsed().as_secs_f64(),
                lab_handle.dir().display()
            );
            Ok(exit_for(&applied))
        }
        SimCommand::Apply { files, namespace } => {
            cargo::build_mesh_waypoint()?;
            let applied = Lab::open(&lab)?.apply(&files, &namespace)?;
            report(&applied);
            Ok(exit_for(&applied))
        }
        SimCommand::Delete { files, namespace } => {
            let applied = Lab::open(&lab)?.delete(&files, &namespace)?;
            report(&applied);
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Label {
            kind,
            name,
            changes,
        } => {
            println!(
                "{}",
                Lab::open(&lab)?.label(&format!("{kind}/{name}"), &changes)?
            );
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Get { what, output } => {
            let mut lab = Lab::open(&lab)?;
            lab.refresh_phases()?;
            print_get(lab.state(), what, output)?;
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Exec { pod, command } => {
            let mut process = {
                // Release the lab's lock before the command runs: it may run for long.
                let lab = Lab::open(&lab)?;
                let pod = lab.pod(&pod)?;
                lab.exec_command(pod, &command[0], &command[1..])?
            };
            let status = process
                .status()
                .with_context(|| format!("running {:?} in the pod", command[0]))?;
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
        SimCommand::Logs { pod } => {
            let lab = Lab::open(&lab)?;
            print!("{}", lab.logs(lab.pod(&pod)?)?);
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Down => {
            let removed = Lab::down(&lab)?;
            if removed.is_empty() {
                println!("lab {lab}: nothing to remove");
            }
            for item in removed {
                println!("removed {item}");
            }
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::List => {
            for name in Lab::list() {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn report(applied: &Applied) {
    for line in &applied.objects {
        println!("{line}");
    }
    for pod in &applied.pods_removed {
        println!("pod {pod} removed");
    }
    for pod in &applied.pods_started {
        println!("pod {pod} started");
    }
    for warning in &applied.warnings {
        eprintln!("warning: {warning}");
    }
}

fn exit_for(applied: &Applied) -> ExitCode {
    if applied.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_get(state: &State, what: What, output: Option<Output>) -> Result<()> {
    if output == Some(Output::Json) {
        let value = match what {
            What::Nodes => serde_json::to_value(&state.nodes)?,
            What::Pods => serde_json::to_value(&state.pods)?,
            What::Svc => serde_json::to_value(&state.services)?,
            What::All => serde_json::to_value(state)?,
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let wide = output == Some(Output::Wide);
    if matches!(what, What::Nodes | What::All) {
        let mut rows = vec![vec![
            "NODE".into(),
            "IP".into(),
            "POD CIDR".into(),
            "NETNS".into(),
        ]];
        for node in &state.nodes {
            rows.push(vec![
                node.name.clone(),
                node.ip.to_string(),
                format!("10.244.{}.0/24", node.index),
                node.netns.clone(),
            ]);
        }
        print_table(&rows);
    }
    if matches!(what, What::Pods | What::All) {
        let mut header = vec!["NAMESPACE", "NAME", "STATUS", "IP", "NODE"];
        if wide {
            header.extend(["SERVICE ACCOUNT", "NETNS"]);
        }
        let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
        for pod in state.pods.values() {
            let mut row = vec![
                pod.namespace.clone(),
                pod.name.clone(),
                format!("{:?}", pod.phase),
                pod.ip.to_string(),
                pod.node.clone(),
            ];
            if wide {
                row.extend([pod.service_account.clone(), pod.netns.clone()]);
            }
            rows.push(row);
        }
        print_table(&rows);
    }
    if matches!(what, What::Svc | What::All) {
        let mut rows = vec![
            ["NAMESPACE", "NAME", "CLUSTER-IP", "PORT(S)", "ENDPOINTS"]
                .map(String::from)
                .to_vec(),
        ];
        for service in state.services.values() {
            let ports: Vec<String> = service
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.port, p.protocol))
                .collect();
            let endpoints = state
                .pods
                .values()
                .filter(|p| p.is_ready() && service.selects(p))
                .count();
            rows.push(vec![
                service.namespace.clone(),
                service.name.clone(),
                service
                    .cluster_ip
                    .map_or_else(|| "None".into(), |ip| ip.to_string()),
                ports.join(","),
                endpoints.to_string(),
            ]);
        }
        print_table(&rows);
    }
    Ok(())
}

fn print_table(rows: &[Vec<String>]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", cells.join("   ").trim_end());
    }
    println!();
}
