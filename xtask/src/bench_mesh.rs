//! `cargo xtask bench mesh`: direct vs the L4 mesh (HBONE between two nodes), with the peer
//! figures' own load commands (../shared/PERF-BASELINE.md): `wrk -t1 -c16 -d10s --latency`
//! for 1 KB responses (requests/s, P50/P90/P99), the same with `Connection: close` (new
//! connections per second), and `iperf3` one-stream throughput. For the mesh it also prints
//! the node agents' CPU seconds per 1000 requests and their RSS. Client on node2, server on
//! node1, both run inside the pods (their netns and cgroup) so the eBPF redirect sees them.

use std::path::PathBuf;
use std::process::{Child, Stdio};

use anyhow::{Context as _, Result};
use clap::Args;
use mesh_sim::{Lab, MeshOptions, Pod};

use crate::bench_config::{agents_usage, exec, wait_in_mesh};

const LAB: &str = "benchmesh";

const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: httpbin}}
spec:
  containers:
  - {name: httpbin, image: mccutchen/go-httpbin, ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: curl}}
spec:
  containers:
  - {name: sleep, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
"#;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Seconds per wrk/iperf3 run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Use this mesh-node binary (e.g. target/release/mesh-node) instead of a debug build.
    #[arg(long)]
    mesh_node: Option<PathBuf>,
}

#[derive(Debug, Default, Clone)]
struct Row {
    rps: f64,
    p50: String,
    p90: String,
    p99: String,
    new_conns_per_s: f64,
    gbits: f64,
    /// Agent CPU seconds per 1000 requests (both agents), and their RSS in MB.
    cpu_per_1000: Option<f64>,
    rss_mb: Option<f64>,
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    let result = crate::bench_config::with_bench_lab(
        LAB,
        2,
        MANIFEST,
        args.mesh_node.as_deref(),
        |lab, mesh_node| scenarios(lab, mesh_node, args.seconds),
    );
    let (direct, mesh) = result?;
    println!(
        "\n1 KB responses, client on node2, server on node1, wrk -t1 -c16 -d{}s; iperf3 one stream\n",
        args.seconds
    );
    println!(
        "{:<10} {:>10} {:>9} {:>9} {:>9} {:>12} {:>10} {:>16} {:>9}",
        "path", "req/s", "P50", "P90", "P99", "new conn/s", "Gbit/s", "agent CPU-s/1k", "RSS MB"
    );
    for (name, row) in [("direct", &direct), ("mesh", &mesh)] {
        println!(
            "{name:<10} {:>10.0} {:>9} {:>9} {:>9} {:>12.0} {:>10.2} {:>16} {:>9}",
            row.rps,
            row.p50,
            row.p90,
            row.p99,
            row.new_conns_per_s,
            row.gbits,
            row.cpu_per_1000.map_or("-".into(), |c| format!("{c:.4}")),
            row.rss_mb.map_or("-".into(), |m| format!("{m:.1}")),
        );
    }
    println!(
        "\nmesh/direct: req/s {:.2}x, new conn/s {:.2}x, throughput {:.2}x",
        mesh.rps / direct.rps,
        mesh.new_conns_per_s / direct.new_conns_per_s,
        mesh.gbits / direct.gbits
    );
    Ok(())
}

fn scenarios(mut lab: Lab, mesh_node: &std::path::Path, seconds: u64) -> Result<(Row, Row)> {
    lab.start_mesh(&MeshOptions {
        binary: Some(mesh_node.to_owned()),
        ..MeshOptions::default()
    })?;
    let client = lab.pod("client")?.clone();
    let server = lab.pod("server")?.clone();
    let url = format!("http://{}:8080/bytes/1024", server.ip);
    let _iperf = IperfServer::start(&lab, &server)?;
    println!("bench: direct (namespace not enrolled)");
    let direct = measure(&lab, &client, &server, &url, seconds, false)?;
    lab.label("ns/default", &["istio.io/dataplane-mode=ambient".into()])?;
    wait_in_mesh(&lab, &client, &url)?;
    println!("bench: mesh (HBONE between the nodes)");
    let mesh = measure(&lab, &client, &server, &url, seconds, true)?;
    Ok((direct, mesh))
}

fn measure(
    lab: &Lab,
    client: &Pod,
    server: &Pod,
    url: &str,
    seconds: u64,
    agents: bool,
) -> Result<Row> {
    let duration = format!("{seconds}s");
    let cpu_before = agents_usage(lab)?.cpu_seconds;
    let keepalive = exec(
        lab,
        client,
        "wrk",
        &["-t1", "-c16", "-d", &duration, "--latency", url],
    )?;
    let after = agents_usage(lab)?;
    let mut row = parse_wrk(&keepalive)?;
    if agents {
        let requests = row.rps * seconds as f64;
        row.cpu_per_1000 = Some((after.cpu_seconds - cpu_before) / requests * 1000.0);
        row.rss_mb = Some(after.rss_kb as f64 / 1024.0);
    }
    let close = exec(
        lab,
        client,
        "wrk",
        &[
            "-t1",
            "-c16",
            "-d",
            &duration,
            "-H",
            "Connection: close",
            url,
        ],
    )?;
    row.new_conns_per_s = parse_wrk(&close)?.rps;
    let iperf = exec(
        lab,
        client,
        "iperf3",
        &[
            "-c",
            &server.ip.to_string(),
            "-t",
            &seconds.to_string(),
            "-f",
            "g",
        ],
    )?;
    row.gbits = iperf
        .lines()
        .filter(|l| l.contains("receiver"))
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == "Gbits/sec")?;
            fields.get(at - 1)?.parse().ok()
        })
        .with_context(|| format!("no receiver line in iperf3's output:\n{iperf}"))?;
    Ok(row)
}

fn parse_wrk(text: &str) -> Result<Row> {
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| {
                let mut fields = l.split_whitespace();
                (fields.next() == Some(p)).then(|| fields.next().map(str::to_owned))?
            })
            .unwrap_or_else(|| "-".into())
    };
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("bench: wrk reported errors:\n{text}");
    }
    Ok(Row {
        rps,
        p50: percentile("50%"),
        p90: percentile("90%"),
        p99: percentile("99%"),
        ..Row::default()
    })
}

/// `iperf3 -s` in the server pod for the run's length.
struct IperfServer(Child);

impl IperfServer {
    fn start(lab: &Lab, server: &Pod) -> Result<IperfServer> {
        let child = lab
            .exec_command(server, "iperf3", &["-s".into()])?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s in the server pod")?;
        Ok(IperfServer(child))
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
