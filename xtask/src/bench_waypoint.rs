//! `cargo xtask bench waypoint`: what the L7 waypoint costs, with the waypoint issue's
//! targets printed beside the figures. Two nodes, the mesh on, namespace `default` enrolled;
//! the client pod GETs `/bytes/1024` (1 KB) from Service `httpbin:8000`, a port named `http`
//! so the waypoint serves it as HTTP. Every load runs twice: through the L4 mesh alone, then
//! through a namespace waypoint (the Gateway `meshctl waypoint generate` prints, used through
//! `istio.io/use-waypoint`) whose VirtualService has five routes — four that the
//! benchmark's requests do not match (header, cookie regex, URI prefixes, method + URI regex)
//! and a default route to a DestinationRule subset that sets a response header — so every
//! request walks the whole route table.
//!
//! Then, through the same waypoint with a RequestAuthentication (inline keys) and an
//! AuthorizationPolicy that requires its tokens, wrk again with a JWT on every request: one
//! token (what a client holding its token sends; the waypoint's verified-token cache
//! answers) and [`TOKENS`] tokens in turn (more than the cache holds: a signature check per
//! request).
//!
//! The loads, run inside the client pod (its netns and cgroup, so the redirect sees them):
//! `wrk -t1 -c16 --latency` (HTTP/1.1, closed loop: req/s, mean, P50, P99); 1000 req/s over
//! 16 connections from `xtask bench-peer paced` (HTTP/1.1, open loop, see
//! [`crate::bench_paced`]: P50/P99 at a fixed rate, hence the P99 the waypoint adds);
//! `h2load -c16 -m10` (HTTP/2 with prior knowledge, h2c: req/s, mean; h2load has no
//! percentiles). Around every run the waypoint's and the node agents' CPU time and RSS are
//! read from `/proc` (the waypoint's peak RSS, `VmHWM`, is reset before each run), and after
//! it the sockets in TIME-WAIT in the nodes' network namespaces (the connections the mesh
//! opened and closed). Thousands of those make every later `connect()` to the same
//! destination search the port range (in the kernel's `__inet_hash_connect`), so each run
//! first waits (at most a minute) for the previous run's to expire.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use mesh_sim::{Lab, MeshOptions, Pod};

use crate::bench_config::{agents_usage, exec, wait_in_mesh};
use crate::bench_load::{self, Figures};

const LAB: &str = "benchwp";
const URL: &str = "http://httpbin:8000/bytes/1024";
/// [`URL`] as the paced load takes it: host, port, path.
const TARGET: (&str, u16, &str) = ("httpbin", 8000, "/bytes/1024");
/// Requests per second of the paced load (the issue's latency target is at 1000).
const RATE: u32 = 1000;
/// Distinct tokens the rotating JWT load sends in turn: more than the waypoint's
/// verified-token cache keeps.
const TOKENS: usize = 1000;
const ISSUER: &str = "https://issuer.bench";

/// The waypoint issue's targets.
const TARGET_CPU_PER_1000: f64 = 0.1;
const TARGET_RSS_MB: f64 = 24.0;
const TARGET_ADDED_P99_MS: f64 = 0.5;

pub(crate) const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: httpbin, labels: {app: httpbin}}
spec:
  selector: {app: httpbin}
  ports: [{name: http, port: 8000, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: httpbin, version: v1}}
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

/// Applied with the waypoint: five routes, the benchmark's requests take the last.
const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin]
  http:
  - name: canary-header
    match: [{headers: {x-canary: {exact: "true"}}}]
    route: [{destination: {host: httpbin, subset: v2}}]
  - name: signed-in-user
    match: [{headers: {cookie: {regex: "^(.*?;)?(user=jason)(;.*)?$"}}}]
    route: [{destination: {host: httpbin, subset: v2}}]
  - name: admin-paths
    match: [{uri: {prefix: /admin}}, {uri: {prefix: /internal}}]
    route: [{destination: {host: httpbin, subset: v2}}]
  - name: numbered-writes
    match: [{method: {exact: POST}, uri: {regex: "/anything/[0-9]+"}}]
    route: [{destination: {host: httpbin, subset: v2}}]
  - name: default
    route: [{destination: {host: httpbin, subset: v1, port: {number: 8000}}}]
    headers: {response: {set: {x-bench-route: default}}}
"#;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Seconds per load run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Use this mesh-waypoint binary (a release build: `cargo xtask release`) instead of a
    /// debug build.
    #[arg(long)]
    waypoint: Option<PathBuf>,
    /// Use this mesh-node binary (a release build: `cargo xtask release`) instead of a debug
    /// build.
    #[arg(long)]
    mesh_node: Option<PathBuf>,
    #[command(flatten)]
    server: crate::bench_config::ServerArgs,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Load {
    Wrk,
    Paced,
    H2load,
    /// wrk with the same JWT on every request.
    WrkOneToken,
    /// wrk with [`TOKENS`] JWTs in turn.
    WrkManyTokens,
}

impl Load {
    pub(crate) const ALL: [Load; 3] = [Load::Wrk, Load::Paced, Load::H2load];

    fn label(self) -> String {
        match self {
            Load::Wrk => "wrk -t1 -c16, HTTP/1.1".into(),
            Load::Paced => format!("{RATE} req/s, 16 conns, HTTP/1.1"),
            Load::H2load => "h2load -c16 -m10, h2c".into(),
            Load::WrkOneToken => "wrk, one JWT".into(),
            Load::WrkManyTokens => format!("wrk, {TOKENS} JWTs in turn"),
        }
    }
}

/// CPU seconds per 1000 requests during a run, RSS after it and peak RSS during it, in MB.
#[derive(Debug)]
struct Cost {
    cpu_per_1000: f64,
    rss_mb: f64,
    peak_mb: f64,
}

#[derive(Debug)]
struct Row {
    load: Load,
    figures: Figures,
    /// `None` for the L4 mesh (no waypoint).
    waypoint: Option<Cost>,
    agents: Cost,
    /// Sockets in TIME-WAIT in the nodes' network namespaces after the run.
    time_wait: usize,
}

struct Report {
    placement: String,
    idle_rss_mb: f64,
    l4: Vec<Row>,
    waypoint: Vec<Row>,
    /// Through the waypoint with RequestAuthentication: the JWT loads.
    jwt: Vec<Row>,
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    let binary = |path: &Path, flag: &str| {
        std::fs::canonicalize(path).with_context(|| format!("{flag} {}", path.display()))
    };
    let waypoint = match &args.waypoint {
        Some(path) => binary(path, "--waypoint")?,
        None => crate::cargo::build_mesh_waypoint()?,
    };
    let mesh_node = match &args.mesh_node {
        Some(path) => Some(binary(path, "--mesh-node")?),
        None => None,
    };
    let report = crate::bench_config::with_bench_lab(
        LAB,
        2,
        MANIFEST,
        args.server.profile(),
        mesh_node.as_deref(),
        |lab, mesh_node| {
            println!(
                "bench: mesh-node {}, mesh-waypoint {}",
                mesh_node.display(),
                waypoint.display()
            );
            scenarios(lab, mesh_node, &waypoint, args.seconds)
        },
    )?;
    print(&report, args.seconds);
    Ok(())
}

/// Starts the mesh on a lab made from [`MANIFEST`] with these binaries, enrols namespace
/// `default` and waits until the client's requests pass the mesh: the client and server pods.
pub(crate) fn start_mesh(lab: &mut Lab, mesh_node: &Path, waypoint: &Path) -> Result<(Pod, Pod)> {
    lab.start_mesh(&MeshOptions {
        binary: Some(mesh_node.to_owned()),
        waypoint: Some(waypoint.to_owned()),
        ..MeshOptions::default()
    })?;
    lab.label("ns/default", &["istio.io/dataplane-mode=ambient".into()])?;
    let client = lab.pod("client")?.clone();
    let server = lab.pod("server")?.clone();
    wait_in_mesh(lab, &client, URL)?;
    Ok((client, server))
}

fn scenarios(mut lab: Lab, mesh_node: &Path, waypoint: &Path, seconds: u64) -> Result<Report> {
    let (client, server) = start_mesh(&mut lab, mesh_node, waypoint)?;
    let mut l4 = Vec::new();
    for load in Load::ALL {
        println!("bench: L4 mesh, {}", load.label());
        l4.push(measure(&lab, &client, None, load, seconds)?);
    }
    let waypoint = deploy_waypoint(&mut lab, &client)?;
    let idle_rss_mb = mb(lab.pod_usage(&waypoint).rss_kb);
    let mut through_waypoint = Vec::new();
    for load in Load::ALL {
        println!("bench: waypoint, {}", load.label());
        through_waypoint.push(measure(&lab, &client, Some(&waypoint), load, seconds)?);
    }
    require_jwts(&mut lab, &client)?;
    let mut jwt = Vec::new();
    for load in [Load::WrkOneToken, Load::WrkManyTokens] {
        println!(
            "bench: waypoint with RequestAuthentication, {}",
            load.label()
        );
        jwt.push(measure(&lab, &client, Some(&waypoint), load, seconds)?);
    }
    Ok(Report {
        placement: format!(
            "client on {}, server on {}, waypoint on {}",
            client.node, server.node, waypoint.node
        ),
        idle_rss_mb,
        l4,
        waypoint: through_waypoint,
        jwt,
    })
}

/// Sockets in TIME-WAIT in the nodes' network namespaces (where the agents connect from).
fn time_wait(lab: &Lab) -> Result<usize> {
    let mut count = 0;
    for node in &lab.state().nodes {
        let output = lab
            .node_command(&node.name, "ss")?
            .args(["-Htan", "state", "time-wait"])
            .output()
            .context("running ss in a node's network namespace")?;
        if !output.status.success() {
            bail!("ss failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        count += String::from_utf8_lossy(&output.stdout).lines().count();
    }
    Ok(count)
}

/// Waits until the TIME-WAIT sockets of earlier runs have expired (Linux keeps them 60 s),
/// at most 65 s.
fn await_time_wait_expiry(lab: &Lab) -> Result<()> {
    const FEW: usize = 500;
    let started = Instant::now();
    let mut count = time_wait(lab)?;
    if count > FEW {
        println!("bench: waiting for {count} sockets in TIME-WAIT to expire");
    }
    while count > FEW && started.elapsed() < Duration::from_secs(65) {
        std::thread::sleep(Duration::from_secs(1));
        count = time_wait(lab)?;
    }
    Ok(())
}

/// Applies the waypoint's Gateway and the routes, points the namespace at the waypoint and
/// waits until requests take the default route (its response header shows): the waypoint pod.
pub(crate) fn deploy_waypoint(lab: &mut Lab, client: &Pod) -> Result<Pod> {
    let gateway = meshctl::waypoint::generate(&meshctl::waypoint::GenerateArgs {
        namespace: "default".into(),
        name: None,
        for_service_account: None,
    })?;
    let mut files = Vec::new();
    for (name, text) in [("waypoint", gateway.as_str()), ("routes", ROUTES)] {
        let file = std::env::temp_dir().join(format!("mesh-{LAB}-{name}.yaml"));
        std::fs::write(&file, text)?;
        files.push(file);
    }
    let applied = lab.apply(&files, "default")?;
    if !applied.warnings.is_empty() {
        bail!("deploying the waypoint: {}", applied.warnings.join("\n"));
    }
    lab.label("ns/default", &["istio.io/use-waypoint=waypoint".into()])?;
    let pod = lab.waypoint_pod("default", "waypoint")?.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let headers = exec(
            lab,
            client,
            "curl",
            &["-s", "-D", "-", "-o", "/dev/null", URL],
        );
        if headers.is_ok_and(|h| h.to_ascii_lowercase().contains("x-bench-route: default")) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "requests do not take the waypoint's default route after 30 s; waypoint log:\n{}",
                lab.logs(&pod).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A rule the waypoint leaves out would make the route table shorter than it looks.
    let log = lab.logs(&pod).unwrap_or_default();
    for line in log.lines().filter(|l| {
        l.contains("VirtualService rule left out") || l.contains("not supported by the waypoint")
    }) {
        eprintln!("bench: the waypoint did not take all routes: {line}");
    }
    Ok(pod)
}

fn measure(
    lab: &Lab,
    client: &Pod,
    waypoint: Option<&Pod>,
    load: Load,
    seconds: u64,
) -> Result<Row> {
    await_time_wait_expiry(lab)?;
    let agents_before = agents_usage(lab)?;
    let waypoint_before = match waypoint {
        Some(pod) => {
            lab.reset_peak_rss(pod)?;
            Some(lab.pod_usage(pod))
        }
        None => None,
    };
    let figures = run_load(lab, client, load, seconds)?;
    let agents_after = agents_usage(lab)?;
    let per_1000 = |before: f64, after: f64| (after - before) / figures.requests * 1000.0;
    let waypoint = waypoint.zip(waypoint_before).map(|(pod, before)| {
        let after = lab.pod_usage(pod);
        Cost {
            cpu_per_1000: per_1000(before.cpu_seconds, after.cpu_seconds),
            rss_mb: mb(after.rss_kb),
            peak_mb: mb(after.peak_rss_kb),
        }
    });
    Ok(Row {
        load,
        time_wait: time_wait(lab)?,
        waypoint,
        agents: Cost {
            cpu_per_1000: per_1000(agents_before.cpu_seconds, agents_after.cpu_seconds),
            rss_mb: mb(agents_after.rss_kb),
            peak_mb: mb(agents_after.peak_rss_kb),
        },
        figures,
    })
}

pub(crate) fn run_load(lab: &Lab, client: &Pod, load: Load, seconds: u64) -> Result<Figures> {
    match load {
        Load::Wrk => bench_load::wrk(lab, client, URL, seconds),
        Load::Paced => bench_load::paced(lab, client, TARGET, RATE, seconds),
        Load::H2load => {
            let args = ["-c16", "-m10", "-D", &seconds.to_string(), URL];
            bench_load::parse_h2load(&exec(lab, client, "h2load", &args)?)
        }
        Load::WrkOneToken | Load::WrkManyTokens => {
            let script = jwt_file(if matches!(load, Load::WrkOneToken) {
                "one"
            } else {
                "many"
            });
            let script = script.to_str().context("the temp dir is not UTF-8")?;
            bench_load::wrk_with(lab, client, URL, seconds, &["-s", script])
        }
    }
}

/// The wrk script of a JWT load.
fn jwt_file(which: &str) -> PathBuf {
    std::env::temp_dir().join(format!("mesh-{LAB}-jwt-{which}.lua"))
}

/// Applies a RequestAuthentication for httpbin (keys inline) and an AuthorizationPolicy that
/// lets only its tokens in, writes the JWT loads' wrk scripts, and waits until a request
/// without a token is refused and one with a token passes.
fn require_jwts(lab: &mut Lab, client: &Pod) -> Result<()> {
    use mesh_waypoint::authn::testing::{Signer, now_plus, require_jwt_manifest};
    let signer = Signer::new("bench");
    let policies = require_jwt_manifest("httpbin", ISSUER, &signer);
    let file = std::env::temp_dir().join(format!("mesh-{LAB}-jwt.yaml"));
    std::fs::write(&file, policies)?;
    let applied = lab.apply(&[file], "default")?;
    if !applied.warnings.is_empty() {
        bail!("applying the JWT policies: {}", applied.warnings.join("\n"));
    }
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| {
            signer.token(&serde_json::json!({
                "iss": ISSUER, "sub": format!("user{i}"), "exp": now_plus(3600),
            }))
        })
        .collect();
    // wrk calls `request` for each request it sends.
    let script = |tokens: &[String]| {
        let list: Vec<String> = tokens.iter().map(|t| format!("\"{t}\"")).collect();
        format!(
            "local tokens = {{{}}}\nlocal i = 0\nrequest = function()\n  i = i % #tokens + 1\n  \
             return wrk.format(nil, nil, {{[\"Authorization\"] = \"Bearer \" .. tokens[i]}})\nend\n",
            list.join(",\n")
        )
    };
    std::fs::write(jwt_file("one"), script(&tokens[..1]))?;
    std::fs::write(jwt_file("many"), script(&tokens))?;
    let bearer = format!("Authorization: Bearer {}", tokens[0]);
    let status = |extra: &[&str]| -> Result<String> {
        let mut args = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"];
        args.extend(extra);
        args.push(URL);
        exec(lab, client, "curl", &args)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = [status(&[])?, status(&["-H", &bearer])?];
        if seen == ["403", "200"] {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the JWT policies do not apply after 30 s: without, with a token: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn print(report: &Report, seconds: u64) {
    println!(
        "\n1 KB responses (GET {URL}), {}; {seconds} s per run; latencies in ms; \
         +P99 = P99 over the L4 mesh's at the same load; CPU in CPU-seconds per 1000 requests\n",
        report.placement
    );
    println!(
        "{:<9} {:<30} {:>8} {:>7} {:>7} {:>7} {:>7} {:>10} {:>9} {:>9} {:>13} {:>10} {:>9}",
        "path",
        "load",
        "req/s",
        "mean",
        "P50",
        "P99",
        "+P99",
        "wp CPU/1k",
        "wp RSS MB",
        "wp peak",
        "agents CPU/1k",
        "agents RSS",
        "TIME-WAIT"
    );
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
    let rows = report
        .l4
        .iter()
        .map(|row| ("L4 mesh", row, None))
        .chain(
            report
                .waypoint
                .iter()
                .zip(&report.l4)
                .map(|(row, l4)| ("waypoint", row, Some(l4))),
        )
        .chain(
            report
                .jwt
                .iter()
                .map(|row| ("wp+JWT", row, report.l4.first())),
        );
    for (path, row, l4) in rows {
        let f = &row.figures;
        let added = l4.and_then(|l4| Some(f.p99? - l4.figures.p99?));
        let waypoint = row.waypoint.as_ref();
        println!(
            "{path:<9} {:<30} {:>8.0} {:>7.2} {:>7} {:>7} {:>7} {:>10} {:>9} {:>9} {:>13.4} {:>10.1} {:>9}",
            row.load.label(),
            f.rps,
            f.mean,
            opt(f.p50, 2),
            opt(f.p99, 2),
            opt(added, 2),
            opt(waypoint.map(|w| w.cpu_per_1000), 4),
            opt(waypoint.map(|w| w.rss_mb), 1),
            opt(waypoint.map(|w| w.peak_mb), 1),
            row.agents.cpu_per_1000,
            row.agents.rss_mb,
            row.time_wait,
        );
    }
    // (what, figure, target, met)
    let mut targets: Vec<(String, String, String, bool)> = Vec::new();
    let paced = report
        .waypoint
        .iter()
        .zip(&report.l4)
        .find(|(row, _)| matches!(row.load, Load::Paced));
    if let Some((row, l4)) = paced
        && let Some(cost) = &row.waypoint
    {
        targets.push((
            format!("CPU at {RATE} req/s"),
            format!("{:.4} vCPU per 1000 req/s", cost.cpu_per_1000),
            format!("<= {TARGET_CPU_PER_1000}"),
            cost.cpu_per_1000 <= TARGET_CPU_PER_1000,
        ));
        if let (Some(p99), Some(l4_p99)) = (row.figures.p99, l4.figures.p99) {
            let added = p99 - l4_p99;
            targets.push((
                format!("added P99 at {RATE} req/s"),
                format!("{added:.2} ms ({p99:.2} vs {l4_p99:.2})"),
                format!("<= {TARGET_ADDED_P99_MS} ms"),
                added <= TARGET_ADDED_P99_MS,
            ));
        }
    }
    let peak = report
        .waypoint
        .iter()
        .filter_map(|r| r.waypoint.as_ref())
        .map(|c| c.peak_mb)
        .fold(report.idle_rss_mb, f64::max);
    targets.push((
        "RSS, peak of all runs".into(),
        format!("{peak:.1} MB (idle {:.1} MB)", report.idle_rss_mb),
        format!("<= {TARGET_RSS_MB} MB"),
        peak <= TARGET_RSS_MB,
    ));
    println!("\nwaypoint targets (the waypoint issue):");
    for (what, figure, target, met) in targets {
        let verdict = if met { "met" } else { "NOT met" };
        println!("  {what:<25} {figure:<28} target {target:<10} {verdict}");
    }
}
