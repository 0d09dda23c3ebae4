//! `cargo xtask bench redirect`: connect() and 1 KB request/response latency (P50/P99) from a
//! pod to a pod on the same node, for: direct (no mesh); the eBPF redirect through the interim
//! forwarder with the fast path off and on; the same forwarder behind a netfilter NAT rule
//! (what iptables REDIRECT does; the forwarder reads SO_ORIGINAL_DST). Prints a table.
//!
//! The eBPF rows run the agent with `--inbound-capture off`, as the netfilter row has no
//! capture either: both measure the outbound redirect alone. One more row turns the capture
//! on (the tc program on every pod veth and the policy routing that send traffic addressed
//! to pods to the agent, which the mTLS data path needs) to show what it adds.
//!
//! The client and the echo server are this binary (`xtask bench-peer …`), started inside the
//! pods (their network namespace and cgroup), so the eBPF programs see the client.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Subcommand};
use mesh_sim::{Lab, MeshOptions, pin_dir};
use nix::sys::signal::Signal;

const LAB: &str = "bench";
const PORT: u16 = 7000;
const SIZE: usize = 1024;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - {name: sleep, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: server}
spec:
  containers:
  - {name: sleep, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
"#;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Samples per measurement.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Use this mesh-node binary (a release build: `cargo xtask release`) instead of a debug
    /// build.
    #[arg(long)]
    mesh_node: Option<std::path::PathBuf>,
}

/// The two ends of the benchmark, and `bench waypoint`'s paced client, run inside pods.
#[derive(Subcommand)]
pub(crate) enum Peer {
    /// Echo SIZE-byte messages back on every connection.
    Serve {
        #[arg(long)]
        port: u16,
    },
    /// Measure and print `connect_p50 connect_p99 newconn_p50 newconn_p99 rr_p50 rr_p99` (µs).
    Client {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        samples: usize,
    },
    /// HTTP/1.1 GETs at a fixed rate; print `requests errors mean P50 P99 max` (µs), for
    /// `bench waypoint`.
    Paced(crate::bench_paced::PacedArgs),
}

pub(crate) fn peer(peer: Peer) -> Result<()> {
    match peer {
        Peer::Serve { port } => serve(port),
        Peer::Client { addr, samples } => {
            let row = measure(addr, samples)?;
            println!(
                "{}",
                row.iter()
                    .map(|d| d.as_micros().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            Ok(())
        }
        Peer::Paced(args) => crate::bench_paced::run(&args),
    }
}

fn serve(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut buf = [0u8; SIZE];
            while stream.read_exact(&mut buf).is_ok() {
                if stream.write_all(&buf).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

fn round_trip(stream: &mut TcpStream, buf: &mut [u8; SIZE]) -> Result<()> {
    stream.write_all(&buf[..])?;
    stream.read_exact(&mut buf[..])?;
    Ok(())
}

/// connect() P50/P99, new connection + first 1 KB round trip P50/P99, 1 KB round trip on an
/// open connection P50/P99.
fn measure(addr: SocketAddr, samples: usize) -> Result<[Duration; 6]> {
    let mut buf = [7u8; SIZE];
    let mut connects = Vec::with_capacity(samples);
    let mut new_conn = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr)?;
        connects.push(started.elapsed());
        stream.set_nodelay(true)?;
        round_trip(&mut stream, &mut buf)?;
        new_conn.push(started.elapsed());
        drop(stream);
    }
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut rr = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        round_trip(&mut stream, &mut buf)?;
        rr.push(started.elapsed());
    }
    let [c50, c99] = percentiles(&mut connects);
    let [n50, n99] = percentiles(&mut new_conn);
    let [r50, r99] = percentiles(&mut rr);
    Ok([c50, c99, n50, n99, r50, r99])
}

fn percentiles(samples: &mut [Duration]) -> [Duration; 2] {
    samples.sort();
    let at = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    [at(50), at(99)]
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    let result = crate::bench_config::with_bench_lab(
        LAB,
        1,
        MANIFEST,
        args.mesh_node.as_deref(),
        |lab, mesh_node| scenarios(lab, mesh_node, args.samples),
    );
    let rows = result?;
    let direct = rows[0].1;
    println!(
        "\n1 KB messages, same node, {} samples each; microseconds (added = P50 over direct)\n",
        args.samples
    );
    println!(
        "{:<34} {:>9} {:>9} {:>11} {:>11} {:>8} {:>8} {:>10} {:>13} {:>9}",
        "path",
        "conn P50",
        "conn P99",
        "new+RR P50",
        "new+RR P99",
        "RR P50",
        "RR P99",
        "added conn",
        "added new+RR",
        "added RR"
    );
    let us = |d: Duration| d.as_micros() as i128;
    // What a row adds over direct, at P50: connect, new connection + RR, RR.
    let added = |row: &[Duration; 6]| [0, 2, 4].map(|i| us(row[i]) - us(direct[i]));
    for (name, row) in &rows {
        let [conn, new_rr, rr] = added(row);
        println!(
            "{name:<34} {:>9} {:>9} {:>11} {:>11} {:>8} {:>8} {conn:>10} {new_rr:>13} {rr:>9}",
            us(row[0]),
            us(row[1]),
            us(row[2]),
            us(row[3]),
            us(row[4]),
            us(row[5]),
        );
    }
    // The issue's target: the eBPF redirect adds at most half of what netfilter adds.
    let Some(netfilter) = rows
        .iter()
        .find(|(name, _)| name.starts_with("netfilter"))
        .map(|(_, row)| added(row))
    else {
        return Ok(());
    };
    println!("\ntarget: the eBPF redirect adds at most half of what netfilter's NAT adds (P50)");
    for (name, row) in rows
        .iter()
        .filter(|(name, _)| name.starts_with("eBPF redirect,"))
    {
        let ours = added(row);
        for (i, what) in ["connect", "new conn + RR", "RR"].iter().enumerate() {
            let met = 2 * ours[i] <= netfilter[i];
            println!(
                "  {name:<30} {what:<14} {:>4} vs {:>4} µs  {}",
                ours[i],
                netfilter[i],
                if met { "met" } else { "NOT met" }
            );
        }
    }
    Ok(())
}

fn scenarios(
    mut lab: Lab,
    mesh_node: &Path,
    samples: usize,
) -> Result<Vec<(String, [Duration; 6])>> {
    let exe = std::env::current_exe()?;
    let server = lab.pod("default/server")?.clone();
    let client = lab.pod("default/client")?.clone();
    let node = lab.node(&client.node)?.clone();
    let _server: ChildGuard = ChildGuard(
        lab.exec_command(
            &server,
            exe.to_str().context("xtask path")?,
            &[
                "bench-peer".into(),
                "serve".into(),
                "--port".into(),
                PORT.to_string(),
            ],
        )?
        .spawn()?,
    );
    let addr = SocketAddr::from((server.ip, PORT));
    let client_run = |lab: &Lab, samples: usize| -> Result<[Duration; 6]> {
        let output = lab
            .exec_command(
                &client,
                exe.to_str().unwrap_or_default(),
                &[
                    "bench-peer".into(),
                    "client".into(),
                    "--addr".into(),
                    addr.to_string(),
                    "--samples".into(),
                    samples.to_string(),
                ],
            )?
            .output()?;
        ensure!(
            output.status.success(),
            "bench client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout);
        let values: Vec<u64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        ensure!(values.len() == 6, "bench client printed {text:?}");
        Ok(std::array::from_fn(|i| Duration::from_micros(values[i])))
    };
    // The server needs a moment to listen: retry a tiny run until it works.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client_run(&lab, 1).is_err() {
        if Instant::now() > deadline {
            bail!("the bench server in pod {} did not answer", server.key());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rows = Vec::new();
    println!("==> direct (no mesh)");
    rows.push(("direct (no mesh)".to_owned(), client_run(&lab, samples)?));

    lab.label(
        "ns/default",
        &["istio.io/dataplane-mode=ambient".to_owned()],
    )?;
    // (name, fast path, netfilter, inbound capture)
    for (name, fast_path, netfilter, inbound_capture) in [
        ("eBPF redirect, fast path off", false, false, false),
        ("eBPF redirect, fast path on", true, false, false),
        ("eBPF redirect + inbound capture", false, false, true),
        ("netfilter DNAT (iptables REDIRECT)", false, true, false),
    ] {
        println!("==> {name}");
        if lab.state().mesh.is_some() {
            lab.stop_agent(&node.name, Signal::SIGTERM)?;
            let status = Command::new(mesh_node)
                .arg("uninstall")
                .arg("--pin-dir")
                .arg(pin_dir(LAB, &node.name))
                .status()?;
            ensure!(status.success(), "mesh-node uninstall failed");
        }
        if netfilter {
            nft(
                &node.netns,
                &format!(
                    "table ip meshbench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat - 1;\n    \
                 ip saddr {} tcp dport {PORT} dnat to {}:15001\n  }}\n}}\n",
                    client.ip, node.ip
                ),
            )?;
        }
        lab.start_mesh(&MeshOptions {
            binary: Some(mesh_node.to_owned()),
            fast_path,
            netfilter,
            no_inbound_capture: !inbound_capture,
            ..MeshOptions::default()
        })?;
        // Wait until the path is really in place: the agent counts the client's connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            client_run(&lab, 1)?;
            let (_, body) = lab.agent_get(&node.name, "/stats/redirect")?;
            if body.contains(&client.key()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{name}: the client's connections do not reach the forwarder");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        rows.push((name.to_owned(), client_run(&lab, samples)?));
    }
    Ok(rows)
}

fn nft(netns: &str, ruleset: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(ruleset.as_bytes())?;
    ensure!(child.wait()?.success(), "nft -f failed for {ruleset}");
    Ok(())
}

/// Kills the process on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
