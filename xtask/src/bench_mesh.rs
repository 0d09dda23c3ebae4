//! `cargo xtask bench mesh`: direct vs the L4 mesh (HBONE between two nodes), with the peer
//! figures' own load commands (../shared/PERF-BASELINE.md): `wrk -t1 -c16 -d10s --latency`
//! for 1 KB responses (requests/s, P50/P90/P99), the same with `Connection: close` (new
//! connections per second), and `iperf3` one-stream throughput; and, for the tunnel issue's
//! latency target, 1 KB GETs at a fixed 1000 req/s (`xtask bench-peer paced`, open loop:
//! P50/P90/P99 and the P99 the mesh adds), in rounds where a direct run and a mesh run
//! alternate (the namespace unlabelled, then labelled again), so both sides of each
//! difference come from the same minute: this machine's pace drifts by ±15 % between
//! consecutive 10 s runs, pods and agents alike. The paced figures and targets are the
//! medians over the rounds; every round is printed, with the server pod's own CPU per request
//! beside the agents' as a yardstick of the machine's pace. For each node agent it prints CPU
//! seconds per 1000 requests under both loads and its CPU share over 5 s without traffic, RSS
//! idle, right after
//! the loads and once the agent has given freed heap back ([`SETTLE`]), and its peak RSS while
//! 1000 connections are open through it at once (and the file descriptors left once they
//! close).
//! Client and server on two nodes (the table names them), both run inside the pods (their
//! netns and cgroup) so the eBPF redirect sees them. The targets are printed beside the figures.
//! `--fast-path on` runs the agents with the sk_msg fast path (its `iperf3` run fails: see the
//! README on the fast path's missing backpressure).

use std::path::PathBuf;
use std::process::{Child, Stdio};

use anyhow::{Context as _, Result};
use clap::Args;
use mesh_sim::{AgentUsage, Lab, MeshOptions, Pod};

use crate::bench_config::{exec, wait_in_mesh, wait_out_of_mesh};
use crate::bench_load::{self, Figures};
use crate::sim::OnOff;

const LAB: &str = "benchmesh";
/// The paced load's rate, the tunnel issue's "fixed rate".
const RATE: u32 = 1000;
/// How long the agents' idle CPU is measured, enrolled pods and no traffic.
const IDLE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long after the loads the settled RSS is read: one period of the agents' heap release
/// check (`mesh_core::heap`), and a second for it to run.
const SETTLE: std::time::Duration =
    mesh_core::heap::CHECK_PERIOD.saturating_add(std::time::Duration::from_secs(1));
/// Connections held open at once for the memory figure.
const HELD: usize = 1000;
/// The node agents, by the side of the connection they serve: [`Sides`] holds their nodes,
/// read from where the lab placed the pods.
const SIDES: [&str; 2] = ["client side", "server side"];

/// The nodes of the client's agent and of the server's.
type Sides = [String; 2];

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
    /// Seconds per wrk/iperf3/paced run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Use this mesh-node binary (a release build: `cargo xtask release`) instead of a debug
    /// build.
    #[arg(long)]
    mesh_node: Option<PathBuf>,
    /// The agents' sock_ops + sk_msg fast path for the same-node legs (`mesh-node
    /// --fast-path`; off by default, as in mesh-node).
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    fast_path: OnOff,
    /// Rounds of the paced load (a direct run, then a mesh run, each `--seconds` long).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// One more round beside this many busy loops (processes that never sleep) in the
    /// client's pod: the latency with the client node's CPUs held, the case the agents'
    /// `auto` scheduling watches for. 0: no such round.
    #[arg(long, default_value_t = 0)]
    busy: u16,
    #[command(flatten)]
    server: crate::bench_config::ServerArgs,
}

/// What one path (direct or mesh) measured with the closed-loop loads.
#[derive(Debug, Default)]
struct Row {
    wrk: Figures,
    new_conns_per_s: f64,
    gbits: f64,
}

/// One round of the paced load: a direct run, then a mesh run.
#[derive(Debug, Default, Clone)]
struct Round {
    direct: Figures,
    mesh: Figures,
    /// Each agent's CPU seconds per 1000 requests over the mesh run, client side first.
    agents: [f64; 2],
    /// The server pod's CPU seconds per 1000 requests, direct and in the mesh: a release
    /// hyper server doing the same work both times, so the machine's pace at that minute.
    server: [f64; 2],
}

impl Round {
    fn added_p99(&self) -> Option<f64> {
        self.mesh.p99.zip(self.direct.p99).map(|(m, d)| m - d)
    }
}

/// One node agent's cost during the mesh runs.
#[derive(Debug, Default, Clone, Copy)]
struct Agent {
    /// CPU seconds per 1000 requests under wrk.
    cpu_wrk: f64,
    /// CPU seconds per 1000 requests at the fixed rate: the median over the rounds.
    cpu_paced: f64,
    /// CPU seconds per second with no traffic.
    idle_cpu: f64,
    idle_mb: f64,
    after_load_mb: f64,
    /// [`SETTLE`] after the loads.
    settled_mb: f64,
    /// Peak RSS while [`HELD`] connections were open, and fds before and after them.
    held_peak_mb: f64,
    /// The most heap in use seen while they were open (sampled).
    held_heap_mb: f64,
    fds_before: usize,
    fds_after: usize,
}

struct Report {
    sides: Sides,
    direct: Row,
    mesh: Row,
    rounds: Vec<Round>,
    /// The round beside busy loops (`--busy`).
    busy: Option<Round>,
    agents: [Agent; 2],
    /// How many of the held connections completed with 200.
    held_ok: usize,
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    let report = crate::bench_config::with_bench_lab(
        LAB,
        2,
        MANIFEST,
        args.server.profile(),
        args.mesh_node.as_deref(),
        |lab, mesh_node| scenarios(lab, mesh_node, args),
    )?;
    print(&report, args);
    Ok(())
}

fn scenarios(mut lab: Lab, mesh_node: &std::path::Path, args: &BenchArgs) -> Result<Report> {
    let seconds = args.seconds;
    lab.start_mesh(&MeshOptions {
        binary: Some(mesh_node.to_owned()),
        fast_path: args.fast_path == OnOff::On,
        ..MeshOptions::default()
    })?;
    let client = lab.pod("client")?.clone();
    let server = lab.pod("server")?.clone();
    let sides: Sides = [client.node.clone(), server.node.clone()];
    anyhow::ensure!(
        sides[0] != sides[1],
        "the lab placed the client and the server both on {}",
        sides[0]
    );
    let url = format!("http://{}:8080/bytes/1024", server.ip);
    let _iperf = IperfServer::start(&lab, &server)?;
    println!("bench: direct (namespace not enrolled)");
    let direct = measure(&lab, &client, &server, seconds, &mut |_| Ok(()))?;
    lab.label("ns/default", &[format!("{AMBIENT}=ambient")])?;
    wait_in_mesh(&lab, &client, &url)?;
    let quiet_from = usage(&lab, &sides)?;
    std::thread::sleep(IDLE);
    let idle = usage(&lab, &sides)?;
    let mut agents = [Agent::default(); 2];
    for ((agent, from), to) in agents.iter_mut().zip(&quiet_from).zip(&idle) {
        agent.idle_mb = mb(to.rss_kb);
        agent.idle_cpu = (to.cpu_seconds - from.cpu_seconds) / IDLE.as_secs_f64();
    }
    println!("bench: mesh (HBONE between the nodes)");
    let mut before = idle;
    let mesh = measure(&lab, &client, &server, seconds, &mut |step| {
        let now = usage(&lab, &sides)?;
        for ((agent, was), is) in agents.iter_mut().zip(&before).zip(&now) {
            let per_1000 = |requests: f64| (is.cpu_seconds - was.cpu_seconds) / requests * 1000.0;
            if let Step::Wrk(requests) = step {
                agent.cpu_wrk = per_1000(requests);
            }
            agent.after_load_mb = mb(is.rss_kb);
        }
        before = now;
        Ok(())
    })?;
    println!(
        "bench: {} rounds at {RATE} req/s, direct then mesh",
        args.rounds
    );
    let mut rounds = Vec::new();
    for _ in 0..args.rounds {
        let round = paced_round(&mut lab, &client, &server, &sides, seconds)?;
        let after = usage(&lab, &sides)?;
        for (agent, now) in agents.iter_mut().zip(&after) {
            agent.after_load_mb = agent.after_load_mb.max(mb(now.rss_kb));
        }
        rounds.push(round);
    }
    for (side, agent) in agents.iter_mut().enumerate() {
        agent.cpu_paced = median(rounds.iter().map(|r| r.agents[side]));
    }
    let busy = if args.busy > 0 {
        println!("bench: a round beside {} busy loops", args.busy);
        // They stop by themselves after the round's two runs and a margin.
        let _loops = BusyLoops::start(&lab, &client, args.busy, 2 * seconds + 60)?;
        Some(paced_round(&mut lab, &client, &server, &sides, seconds)?)
    } else {
        None
    };
    std::thread::sleep(SETTLE);
    for (agent, now) in agents.iter_mut().zip(&usage(&lab, &sides)?) {
        agent.settled_mb = mb(now.rss_kb);
    }
    println!("bench: {HELD} connections open at once through the mesh");
    let held_ok = hold_connections(&lab, &client, &server, &sides, &mut agents)?;
    Ok(Report {
        sides,
        direct,
        mesh,
        rounds,
        busy,
        agents,
        held_ok,
    })
}

/// Processes that never sleep, in a pod, until dropped (or `seconds` have passed).
struct BusyLoops(Vec<Child>);

impl BusyLoops {
    fn start(lab: &Lab, pod: &Pod, count: u16, seconds: u64) -> Result<BusyLoops> {
        let mut loops = BusyLoops(Vec::new());
        for _ in 0..count {
            let args = [
                seconds.to_string(),
                "sh".into(),
                "-c".into(),
                "while :; do :; done".into(),
            ];
            let child = lab
                .exec_command(pod, "timeout", &args)?
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting a busy loop in {}", pod.key()))?;
            loops.0.push(child);
        }
        Ok(loops)
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for child in &mut self.0 {
            // `timeout` passes the signal on to the loop.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

/// One paced run direct (the namespace unlabelled), then one through the mesh (labelled
/// again, as it was before).
fn paced_round(
    lab: &mut Lab,
    client: &Pod,
    server: &Pod,
    sides: &Sides,
    seconds: u64,
) -> Result<Round> {
    let url = format!("http://{}:8080/bytes/1024", server.ip);
    let host = server.ip.to_string();
    let target = (host.as_str(), 8080, "/bytes/1024");
    let mut round = Round::default();
    lab.label("ns/default", &[format!("{AMBIENT}-")])?;
    wait_out_of_mesh(lab, client, &url)?;
    let was = lab.pod_usage(server).cpu_seconds;
    round.direct = bench_load::paced(lab, client, target, RATE, seconds)?;
    round.server[0] = (lab.pod_usage(server).cpu_seconds - was) / round.direct.requests * 1000.0;
    lab.label("ns/default", &[format!("{AMBIENT}=ambient")])?;
    wait_in_mesh(lab, client, &url)?;
    let was = (usage(lab, sides)?, lab.pod_usage(server).cpu_seconds);
    round.mesh = bench_load::paced(lab, client, target, RATE, seconds)?;
    let is = (usage(lab, sides)?, lab.pod_usage(server).cpu_seconds);
    let per_1000 = |seconds: f64| seconds / round.mesh.requests * 1000.0;
    for (side, agent) in round.agents.iter_mut().enumerate() {
        *agent = per_1000(is.0[side].cpu_seconds - was.0[side].cpu_seconds);
    }
    round.server[1] = per_1000(is.1 - was.1);
    Ok(round)
}

/// The median of some figures (the mean of the middle two for an even count; 0 for none).
fn median(figures: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = figures.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median of the figures that are there.
fn median_of(figures: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = figures.flatten().collect();
    (!present.is_empty()).then(|| median(present.into_iter()))
}

/// The namespace label that enrolls the pods.
const AMBIENT: &str = "istio.io/dataplane-mode";

/// What just ran, for the agents' CPU accounting.
enum Step {
    Wrk(f64),
    Other,
}

/// The loads, one after another; `after` is called after each with what ran.
fn measure(
    lab: &Lab,
    client: &Pod,
    server: &Pod,
    seconds: u64,
    after: &mut dyn FnMut(Step) -> Result<()>,
) -> Result<Row> {
    let url = format!("http://{}:8080/bytes/1024", server.ip);
    after(Step::Other)?;
    let wrk = bench_load::wrk(lab, client, &url, seconds)?;
    after(Step::Wrk(wrk.requests))?;
    let host = server.ip.to_string();
    let duration = format!("{seconds}s");
    let close = [
        "-t1",
        "-c16",
        "-d",
        &duration,
        "-H",
        "Connection: close",
        &url,
    ];
    let new_conns_per_s = bench_load::parse_wrk(&exec(lab, client, "wrk", &close)?)?.rps;
    let iperf = exec(
        lab,
        client,
        "iperf3",
        &["-c", &host, "-t", &seconds.to_string(), "-f", "g"],
    )?;
    after(Step::Other)?;
    let gbits = iperf
        .lines()
        .filter(|l| l.contains("receiver"))
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == "Gbits/sec")?;
            fields.get(at - 1)?.parse().ok()
        })
        .with_context(|| format!("no receiver line in iperf3's output:\n{iperf}"))?;
    Ok(Row {
        wrk,
        new_conns_per_s,
        gbits,
    })
}

/// Opens [`HELD`] connections at once from the client to the server (curl, 4 × 250 parallel
/// transfers of `/delay/2`), reads each agent's peak RSS over them, then waits (at most
/// 10 s) for the agents' file descriptors to come back down. Returns how many answered 200.
fn hold_connections(
    lab: &Lab,
    client: &Pod,
    server: &Pod,
    sides: &Sides,
    agents: &mut [Agent; 2],
) -> Result<usize> {
    let before = usage(lab, sides)?;
    for node in sides {
        lab.reset_agent_peak_rss(node)?;
    }
    let per_curl = HELD / 4;
    let script = format!(
        "ulimit -n 4096; for i in 1 2 3 4; do curl -s --parallel --parallel-immediate \
         --parallel-max {per_curl} -o /dev/null -w '%{{http_code}}\\n' \
         'http://{}:8080/delay/2?[1-{per_curl}]' & done; wait",
        server.ip
    );
    // The agents' heap in use, sampled from /memory while the connections are open: the RSS
    // peak splits into what is live, what the allocator keeps, and code.
    let holding = std::sync::atomic::AtomicBool::new(true);
    let (out, heap_peak) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut most = [0u64; 2];
            while holding.load(std::sync::atomic::Ordering::Relaxed) {
                for (most, node) in most.iter_mut().zip(sides) {
                    *most = (*most).max(lab.agent_heap_in_use(node).unwrap_or(0));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            most
        });
        let out = exec(lab, client, "bash", &["-c", &script]);
        holding.store(false, std::sync::atomic::Ordering::Relaxed);
        (out, sampler.join().unwrap_or_default())
    });
    let out = out?;
    let ok = out.lines().filter(|l| *l == "200").count();
    let peak = usage(lab, sides)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        let now = usage(lab, sides)?;
        let settled = now
            .iter()
            .zip(&before)
            .all(|(now, before)| now.fds <= before.fds + 2);
        if settled || std::time::Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    for ((((agent, before), peak), after), heap) in agents
        .iter_mut()
        .zip(&before)
        .zip(&peak)
        .zip(&after)
        .zip(heap_peak)
    {
        agent.held_peak_mb = mb(peak.peak_rss_kb);
        agent.held_heap_mb = heap as f64 / (1024.0 * 1024.0);
        agent.fds_before = before.fds;
        agent.fds_after = after.fds;
    }
    Ok(ok)
}

/// Both agents' usage, client side first.
fn usage(lab: &Lab, sides: &Sides) -> Result<[AgentUsage; 2]> {
    let usage = |node: &str| lab.agent_usage(node).map_err(anyhow::Error::from);
    Ok([usage(&sides[0])?, usage(&sides[1])?])
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn print(report: &Report, args: &BenchArgs) {
    let seconds = args.seconds;
    let Report {
        sides,
        direct,
        mesh,
        rounds,
        busy,
        agents,
        held_ok,
    } = report;
    let paced = |f: fn(&Round) -> &Figures| Figures {
        p50: median_of(rounds.iter().map(|r| f(r).p50)),
        p90: median_of(rounds.iter().map(|r| f(r).p90)),
        p99: median_of(rounds.iter().map(|r| f(r).p99)),
        ..Figures::default()
    };
    let paced_rows = [paced(|r| &r.direct), paced(|r| &r.mesh)];
    let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    println!(
        "\n1 KB responses, client on {}, server on {}, fast path {}, {seconds} s per run; latencies in ms\n",
        sides[0],
        sides[1],
        if args.fast_path == OnOff::On {
            "on"
        } else {
            "off"
        }
    );
    println!(
        "{:<7} {:>9} {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}   {:>10} {:>8}",
        "path", "wrk req/s", "P50", "P90", "P99", "@1k P50", "P90", "P99", "new conn/s", "Gbit/s"
    );
    for ((name, row), paced) in [("direct", direct), ("mesh", mesh)]
        .into_iter()
        .zip(&paced_rows)
    {
        println!(
            "{name:<7} {:>9.0} {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}   {:>10.0} {:>8.2}",
            row.wrk.rps,
            opt(row.wrk.p50),
            opt(row.wrk.p90),
            opt(row.wrk.p99),
            opt(paced.p50),
            opt(paced.p90),
            opt(paced.p99),
            row.new_conns_per_s,
            row.gbits,
        );
    }
    println!(
        "\n(wrk -t1 -c16 --latency, closed loop; @1k: {RATE} req/s over 16 connections, open loop, \
         the median of {} rounds:)",
        rounds.len()
    );
    println!(
        "\n{:<6} {:>17} {:>17} {:>10}   {:>21}   {:>19}",
        "round",
        "direct P50/P99",
        "mesh P50/P99",
        "added P99",
        "agents CPU/1k (c, s)",
        "server pod CPU/1k"
    );
    let numbered = rounds
        .iter()
        .enumerate()
        .map(|(i, r)| ((i + 1).to_string(), r));
    let beside = busy.iter().map(|r| ("busy".to_string(), r));
    for (name, round) in numbered.chain(beside) {
        let pair = |f: &Figures| format!("{} / {}", opt(f.p50), opt(f.p99));
        println!(
            "{:<6} {:>17} {:>17} {:>10}   {:>21}   {:>19}",
            name,
            pair(&round.direct),
            pair(&round.mesh),
            opt(round.added_p99()),
            format!("{:.4}, {:.4}", round.agents[0], round.agents[1]),
            format!("{:.4} / {:.4}", round.server[0], round.server[1]),
        );
    }
    println!(
        "(server pod CPU in the direct / mesh run: a yardstick of the machine's pace{})",
        if busy.is_some() {
            format!(
                "; busy: beside {} busy loops in the client's pod, not in the medians",
                args.busy
            )
        } else {
            String::new()
        }
    );
    println!(
        "\n{:<20} {:>13} {:>13} {:>9} {:>8} {:>10} {:>11} {:>16} {:>9} {:>14}",
        "node agent",
        "CPU/1k (wrk)",
        "CPU/1k (@1k)",
        "idle CPU",
        "idle MB",
        "loaded MB",
        "settled MB",
        format!("peak MB, {HELD}c"),
        "heap MB",
        "fds before/after"
    );
    for ((side, node), agent) in SIDES.iter().zip(sides).zip(agents) {
        let side = format!("{side} ({node})");
        println!(
            "{side:<20} {:>13.4} {:>13.4} {:>8.2}% {:>8.1} {:>10.1} {:>11.1} {:>16.1} {:>9.1} {:>14}",
            agent.cpu_wrk,
            agent.cpu_paced,
            agent.idle_cpu * 100.0,
            agent.idle_mb,
            agent.after_load_mb,
            agent.settled_mb,
            agent.held_peak_mb,
            agent.held_heap_mb,
            format!("{}/{}", agent.fds_before, agent.fds_after),
        );
    }
    println!(
        "({held_ok} of {HELD} held connections answered 200; heap MB: the most heap in use \
         seen while they were open, from /memory)"
    );
    let worst = |f: fn(&Agent) -> f64| agents.iter().map(f).fold(0.0, f64::max);
    let added_p99 = median_of(rounds.iter().map(Round::added_p99));
    let targets: [(&str, String, &str, bool); 7] = [
        (
            "added P99 at 1000 req/s (med.)",
            format!("{} ms", opt(added_p99)),
            "<= 0.2 ms (tunnel issue)",
            added_p99.is_some_and(|a| a <= 0.2),
        ),
        (
            "agent CPU per 1000 rps (@1k)",
            format!("{:.4}", worst(|a| a.cpu_paced)),
            "<= 0.05 (tunnel issue)",
            worst(|a| a.cpu_paced) <= 0.05,
        ),
        (
            "agent RSS, 1000 conns",
            format!("{:.1} MB", worst(|a| a.held_peak_mb)),
            "<= 24 MB (tunnel issue)",
            worst(|a| a.held_peak_mb) <= 24.0,
        ),
        (
            "mesh req/s vs direct",
            format!("{:.2}x", mesh.wrk.rps / direct.wrk.rps),
            ">= 0.37x (baseline)",
            mesh.wrk.rps / direct.wrk.rps >= 0.37,
        ),
        (
            "one-stream throughput",
            format!("{:.2}x", mesh.gbits / direct.gbits),
            ">= 0.4x (baseline)",
            mesh.gbits / direct.gbits >= 0.4,
        ),
        (
            "agent CPU per 1000 req (wrk)",
            format!("{:.4}", worst(|a| a.cpu_wrk)),
            "<= 0.03 (baseline)",
            worst(|a| a.cpu_wrk) <= 0.03,
        ),
        (
            "agent RSS idle",
            format!("{:.1} MB", worst(|a| a.idle_mb)),
            "<= 10 MB (baseline)",
            worst(|a| a.idle_mb) <= 10.0,
        ),
    ];
    println!(
        "\nmesh/direct: new conn/s {:.2}x\n\ntargets (worst agent; tunnel issue and ../shared/PERF-BASELINE.md):",
        mesh.new_conns_per_s / direct.new_conns_per_s
    );
    for (what, figure, target, met) in targets {
        let verdict = if met { "met" } else { "NOT met" };
        println!("  {what:<30} {figure:<10} target {target:<26} {verdict}");
    }
}

/// `iperf3 -s` in the server pod for the run's length.
pub(crate) struct IperfServer(Child);

impl IperfServer {
    pub(crate) fn start(lab: &Lab, server: &Pod) -> Result<IperfServer> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median([0.3, 0.1, 0.2].into_iter()), 0.2);
        assert_eq!(median([0.4, 0.1, 0.3, 0.2].into_iter()), 0.25);
        assert_eq!(median([0.5].into_iter()), 0.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }

    #[test]
    fn median_of_skips_missing_figures_and_is_none_without_any() {
        assert_eq!(
            median_of([Some(0.3), None, Some(0.1)].into_iter()),
            Some(0.2)
        );
        assert_eq!(median_of([None, None].into_iter()), None);
    }

    #[test]
    fn a_round_adds_the_mesh_p99_over_the_direct_one() {
        let figures = |p99| Figures {
            p99,
            ..Figures::default()
        };
        let round = Round {
            direct: figures(Some(0.15)),
            mesh: figures(Some(0.40)),
            ..Round::default()
        };
        assert!((round.added_p99().unwrap() - 0.25).abs() < 1e-9);
        let missing = Round {
            direct: figures(None),
            ..round
        };
        assert_eq!(missing.added_p99(), None);
    }
}
