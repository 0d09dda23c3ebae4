//! `cargo xtask bench redirect`: connect() and 1 KB request/response latency (P50/P99) from a
//! pod to a pod on the same node, for: direct (no mesh); the eBPF redirect to the node proxy's
//! outbound listener with the fast path off and on; the same proxy behind a netfilter NAT rule
//! (what iptables REDIRECT does; the proxy reads SO_ORIGINAL_DST). Prints a table.
//!
//! The eBPF rows run the agent with `--inbound-capture off`, as the netfilter row has no
//! capture either: both measure the outbound redirect alone. One more row turns the capture
//! on (the tc program on every pod veth and the policy routing that send traffic addressed
//! to pods to the agent, which the mTLS data path needs) to show what it adds.
//!
//! The client and the echo server are this binary (`xtask bench-peer …`), started inside the
//! pods (their network namespace and cgroup), so the eBPF programs see the client.
//!
//! The paths are measured in `--rounds` rounds, each path once per round in turn (the agent
//! restarted, or stopped and uninstalled for the direct path), so every path sees the same
//! minutes of a machine whose pace drifts; the table gives each figure's median over the
//! rounds, and what a path adds is the median of its per-round differences from the direct
//! path of the same round.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Subcommand};
use mesh_sim::{Lab, MeshOptions};

use crate::bench_config::client_connections;

const LAB: &str = "bench";
const PORT: u16 = 7000;
const SIZE: usize = 1024;
/// Unmeasured samples before each path's measured ones in a round.
const WARM_UP: usize = 200;

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
    /// Samples per path, split evenly over the rounds.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Use this mesh-node binary (a release build: `cargo xtask release`) instead of a debug
    /// build.
    #[arg(long)]
    mesh_node: Option<std::path::PathBuf>,
    /// Rounds: every path once per round, in turn.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    #[command(flatten)]
    server: crate::bench_config::ServerArgs,
}

/// The paths, in the order each round measures them; the first is the direct one.
const PATHS: [PathSetup; 5] = [
    PathSetup {
        name: "direct (no mesh)",
        mesh: None,
    },
    PathSetup {
        name: "eBPF redirect, fast path off",
        mesh: Some(Agent {
            fast_path: false,
            netfilter: false,
            inbound_capture: false,
        }),
    },
    PathSetup {
        name: "eBPF redirect, fast path on",
        mesh: Some(Agent {
            fast_path: true,
            netfilter: false,
            inbound_capture: false,
        }),
    },
    PathSetup {
        name: "eBPF redirect + inbound capture",
        mesh: Some(Agent {
            fast_path: false,
            netfilter: false,
            inbound_capture: true,
        }),
    },
    PathSetup {
        name: "netfilter DNAT (iptables REDIRECT)",
        mesh: Some(Agent {
            fast_path: false,
            netfilter: true,
            inbound_capture: false,
        }),
    },
];

/// One path: its name and how the node agent runs for it (`None`: no agent, nothing
/// installed).
struct PathSetup {
    name: &'static str,
    mesh: Option<Agent>,
}

#[derive(Clone, Copy)]
struct Agent {
    fast_path: bool,
    netfilter: bool,
    inbound_capture: bool,
}

/// One path's six figures (see [`measure`]) in one round.
type Figures = [Duration; 6];

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
    let rounds = crate::bench_config::with_bench_lab(
        LAB,
        1,
        MANIFEST,
        args.server.profile(),
        args.mesh_node.as_deref(),
        |lab, mesh_node| {
            // Split over the rounds: every measured connection leaves a port in TIME_WAIT
            // for a minute, and the client's port range holds about 28k.
            let per_round = args.samples.div_ceil(usize::from(args.rounds)).max(1);
            scenarios(lab, mesh_node, per_round, args.rounds)
        },
    )?;
    println!(
        "\n1 KB messages, same node, {} samples per path in {} rounds, the median of the rounds' \
         figures; microseconds (added = P50 over direct's in the same round)\n",
        args.samples,
        rounds.len()
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
    let added = |path: usize| per_round_added(&rounds, path);
    for (path, setup) in PATHS.iter().enumerate() {
        let figure = |i: usize| median(rounds.iter().map(|r| us(r[path][i])));
        let [conn, new_rr, rr] = added(path).map(|per_round| median(per_round.into_iter()));
        println!(
            "{:<34} {:>9} {:>9} {:>11} {:>11} {:>8} {:>8} {conn:>10} {new_rr:>13} {rr:>9}",
            setup.name,
            figure(0),
            figure(1),
            figure(2),
            figure(3),
            figure(4),
            figure(5),
        );
    }
    // The issue's target: the eBPF redirect adds at most half of what netfilter adds.
    let netfilter = added(PATHS.len() - 1);
    println!(
        "\ntarget: the eBPF redirect adds at most half of what netfilter's NAT adds (P50; \
         medians, then each round's)"
    );
    for (path, setup) in PATHS.iter().enumerate() {
        if !setup.name.starts_with("eBPF redirect,") {
            continue;
        }
        let ours = added(path);
        for (i, what) in ["connect", "new conn + RR", "RR"].iter().enumerate() {
            let (mine, theirs) = (
                median(ours[i].iter().copied()),
                median(netfilter[i].iter().copied()),
            );
            let list = |v: &[i128]| v.iter().map(i128::to_string).collect::<Vec<_>>().join(" ");
            println!(
                "  {:<30} {what:<14} {mine:>4} vs {theirs:>4} µs  {:<7}  ({} vs {})",
                setup.name,
                if 2 * mine <= theirs { "met" } else { "NOT met" },
                list(&ours[i]),
                list(&netfilter[i]),
            );
        }
    }
    Ok(())
}

fn us(d: Duration) -> i128 {
    d.as_micros() as i128
}

/// What `path` added over the direct path of the same round, at P50, for connect, new
/// connection + RR and RR: each a list over the rounds.
fn per_round_added(rounds: &[Vec<Figures>], path: usize) -> [Vec<i128>; 3] {
    [0, 2, 4].map(|i| {
        rounds
            .iter()
            .map(|r| us(r[path][i]) - us(r[0][i]))
            .collect()
    })
}

/// The median (the lower middle for an even count; 0 for none).
fn median(values: impl Iterator<Item = i128>) -> i128 {
    let mut v: Vec<i128> = values.collect();
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}

fn scenarios(
    mut lab: Lab,
    mesh_node: &Path,
    samples: usize,
    rounds: u16,
) -> Result<Vec<Vec<Figures>>> {
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
    let client_run = |lab: &Lab, samples: usize| -> Result<Figures> {
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
    lab.label(
        "ns/default",
        &["istio.io/dataplane-mode=ambient".to_owned()],
    )?;
    let netfilter_rule = format!(
        "table ip meshbench {{\n  chain pre {{\n    type nat hook prerouting priority dstnat - 1;\n    \
         ip saddr {} tcp dport {PORT} dnat to {}:15001\n  }}\n}}\n",
        client.ip, node.ip
    );
    // The netfilter path's DNAT entries would outlive it in connection tracking (120 s in
    // TIME_WAIT) and clash with the eBPF paths' connections to the same listener: the kernel
    // would then remap their source ports, and the node proxy would find no original
    // destination under the port it sees. In this lab node only, connections in TIME_WAIT are
    // forgotten after a second, and the next path waits until they are.
    in_node(
        &lab,
        &node.name,
        "sysctl",
        &[
            "-q",
            "-w",
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
        ],
    )?;
    // What is in place now: the agent runs (and its install), the netfilter rule.
    let (mut agent_running, mut rule_in_place) = (false, false);
    let mut all = Vec::new();
    for round in 1..=rounds {
        let mut figures = Vec::new();
        for setup in &PATHS {
            println!("==> round {round}: {}", setup.name);
            if agent_running {
                // The CA too: start_mesh starts one with the agents, and a second would find
                // the CA port taken.
                lab.stop_mesh()?;
                lab.uninstall_agent(&node.name, Some(mesh_node))?;
                agent_running = false;
            }
            let netfilter = setup.mesh.is_some_and(|a| a.netfilter);
            if rule_in_place && !netfilter {
                nft(&lab, &node.name, "delete table ip meshbench\n")?;
                rule_in_place = false;
                wait_for_no_dnat(&lab, &node.name)?;
            }
            if let Some(agent) = setup.mesh {
                if netfilter && !rule_in_place {
                    nft(&lab, &node.name, &netfilter_rule)?;
                    rule_in_place = true;
                }
                lab.start_mesh(&MeshOptions {
                    binary: Some(mesh_node.to_owned()),
                    fast_path: agent.fast_path,
                    netfilter,
                    no_inbound_capture: !agent.inbound_capture,
                    ..MeshOptions::default()
                })?;
                agent_running = true;
                wait_for_proxy(&lab, &client, setup.name, || {
                    client_run(&lab, 1).map(|_| ())
                })?;
            }
            // Unmeasured first: the agent's start (its install, first certificates, config)
            // settles, and the path's caches are warm, as in the single long run this replaced.
            client_run(&lab, WARM_UP)?;
            figures.push(client_run(&lab, samples)?);
        }
        all.push(figures);
    }
    Ok(all)
}

/// Waits until the path is really in place: a tiny run succeeds and the agent counts one
/// more connection of the client's across it.
fn wait_for_proxy(
    lab: &Lab,
    client: &mesh_sim::Pod,
    name: &str,
    run: impl Fn() -> Result<()>,
) -> Result<()> {
    let connections = || client_connections(lab, client).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = connections();
        // A connection the agent resets while it settles (its first certificates, its view
        // of the pods) counts as not yet.
        let ran = run();
        if ran.is_ok() && connections() > before {
            return Ok(());
        }
        if Instant::now() > deadline {
            let why = ran.err().map_or(String::new(), |e| format!(" (last: {e})"));
            bail!("{name}: the client's connections do not reach the node proxy{why}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (at most 10 s) until connection tracking in `node`'s network namespace holds no entry of the
/// netfilter path's DNAT (to the bench port, answered from the listener's).
fn wait_for_no_dnat(lab: &Lab, node: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let to = format!("dport={PORT} ");
    loop {
        let table = in_node(lab, node, "cat", &["/proc/net/nf_conntrack"])?;
        let left = table
            .lines()
            .filter(|l| l.contains(&to) && l.contains("sport=15001 "))
            .count();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} DNAT entries still tracked on {node} 10 s after the rule went");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `program args…` in a node's network namespace: its stdout.
fn in_node(lab: &Lab, node: &str, program: &str, args: &[&str]) -> Result<String> {
    let output = lab.node_command(node, program)?.args(args).output()?;
    ensure!(
        output.status.success(),
        "{program} {args:?} on {node}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Loads an nftables ruleset in a node's network namespace.
fn nft(lab: &Lab, node: &str, ruleset: &str) -> Result<()> {
    let mut child = lab
        .node_command(node, "nft")?
        .args(["-f", "-"])
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
