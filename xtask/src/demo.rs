//! `cargo xtask demo`: sets up, builds, brings bookinfo up on a two-node lab in the mesh,
//! shows identities, metrics, a waypoint routing by Istio's samples and a JWT required at
//! the waypoint, and how to go on.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use mesh_sim::{Lab, LabOptions, MeshOptions};

use crate::{cargo, setup, sim};

const LAB: &str = "mesh";

pub(crate) fn run() -> Result<()> {
    setup::run()?;
    let sample_app = cargo::build_sample_app(cargo::Profile::Debug)?;
    let mesh_node = cargo::build_mesh_node()?;
    cargo::build_mesh_waypoint()?;
    let samples = cargo::istio_samples()?;
    if Lab::list().iter().any(|l| l == LAB) {
        println!("==> lab {LAB} is already up: taking it down first");
        Lab::down(LAB)?;
    }
    println!("==> sim up: 2 nodes, Istio's bookinfo and curl samples, unchanged");
    let started = Instant::now();
    let files = [
        samples.join("bookinfo/platform/kube/bookinfo.yaml"),
        samples.join("curl/curl.yaml"),
    ];
    let options = LabOptions {
        name: LAB.into(),
        nodes: 2,
        sample_app: Some(sample_app),
    };
    let (mut lab, applied) = Lab::up(&options, &files)?;
    sim::report(&applied);
    if !applied.warnings.is_empty() {
        bail!(
            "some pods did not become ready (see the warnings above); `cargo xtask sim down` removes the lab"
        );
    }
    println!(
        "==> lab up in {:.1} s: {} pods on {} nodes\n",
        started.elapsed().as_secs_f64(),
        lab.state().pods.len(),
        lab.state().nodes.len()
    );
    for pod in lab.state().pods.values() {
        println!("  {:<45} {:<15} {}", pod.key(), pod.ip, pod.node);
    }
    println!(
        "\n==> mesh on: a mesh-node per node; label namespace default istio.io/dataplane-mode=ambient"
    );
    lab.start_mesh(&MeshOptions {
        binary: Some(mesh_node),
        ..MeshOptions::default()
    })?;
    lab.label(
        "ns/default",
        &["istio.io/dataplane-mode=ambient".to_owned()],
    )?;
    wait_enrolled(&lab)?;
    println!("    every pod's outbound TCP now passes its node's proxy (eBPF connect4 redirect)");
    println!();
    let curl = lab.pod("default/curl")?;
    let run = |args: &[&str]| curl_in(&lab, curl, args);
    println!(
        "==> from pod {}: curl http://productpage:9080/productpage",
        curl.key()
    );
    let page = run(&[
        "-s",
        "--max-time",
        "10",
        "http://productpage:9080/productpage",
    ])?;
    let title = page
        .split("<title>")
        .nth(1)
        .and_then(|rest| rest.split("</title>").next())
        .unwrap_or("(no title: is productpage up?)");
    println!("    title: {title}");
    println!("==> curl http://details:9080/details/0");
    println!(
        "    {}",
        run(&["-s", "--max-time", "10", "http://details:9080/details/0"])?.trim()
    );
    println!(
        "==> six requests to productpage's reviews API (ClusterIP load balancing over v1, v2, v3)"
    );
    for _ in 0..6 {
        let body = run(&[
            "-s",
            "--max-time",
            "10",
            "http://productpage:9080/api/v1/products/0/reviews",
        ])?;
        let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let pod = value["podname"].as_str().unwrap_or("?");
        let color = value["reviews"][0]["rating"]["color"]
            .as_str()
            .unwrap_or("no stars");
        println!("    served by {pod:<40} ratings: {color}");
    }
    println!("==> per-pod counters of the node proxies (GET :15000/stats/redirect on each node)");
    for node in &lab.state().nodes {
        let (_, body) = lab.agent_get(&node.name, "/stats/redirect")?;
        let stats: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        for (pod, entry) in stats["pods"].as_object().into_iter().flatten() {
            let c = &entry["counters"];
            println!(
                "    {:<6} {pod:<45} connections {:>3}  sent {:>6} B  received {:>7} B",
                node.name, c["connections"], c["bytes_sent"], c["bytes_received"]
            );
        }
    }
    println!(
        "==> identities in use (GET :15000/config_dump on each node: certificates, never keys)"
    );
    for node in &lab.state().nodes {
        let (_, body) = lab.agent_get(&node.name, "/config_dump")?;
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        for cert in dump["certificates"].as_array().into_iter().flatten() {
            println!(
                "    {:<6} {}",
                node.name,
                cert["identity"].as_str().unwrap_or("?")
            );
        }
    }
    let ca_node = lab.node("node1")?;
    let ca_metrics = std::net::SocketAddr::from((ca_node.ip, mesh_sim::CA_METRICS_PORT));
    println!("==> the CA's metrics, under istiod's names (GET {ca_metrics}/metrics)");
    let page = lab.ca_metrics()?;
    for line in page.lines().filter(|l| {
        l.starts_with("citadel_server_success_cert_issuance_count")
            || l.starts_with("citadel_server_root_cert_expiry_timestamp")
    }) {
        println!("    {line}");
    }
    println!("==> Istio's TCP metrics (GET :15020/stats/prometheus), mutual TLS between workloads");
    for node in &lab.state().nodes {
        let metrics = lab.agent_metrics(&node.name)?;
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .filter(|l| l.contains("reporter=\"destination\""))
            .take(3)
        {
            println!("    {:<6} {}", node.name, short_metric(line));
        }
    }
    waypoint_demo(&mut lab, &samples)?;
    jwt_demo(&mut lab)?;
    println!(
        "\nThe lab stays up. Try:\n  cargo xtask sim get all\n  cargo xtask sim exec curl -- curl -s http://reviews:9080/reviews/0\n  cargo xtask sim exec curl -- curl -s -c /tmp/j -d username=jason -d passwd=x http://productpage:9080/login\n  cargo xtask sim logs default/{}\n  cargo xtask sim apply -f ../shared/istio-samples/bookinfo/networking/virtual-service-reviews-80-20.yaml\n  cargo xtask sim label ns default istio.io/use-waypoint-     (no waypoint)\n  cargo xtask sim label ns default istio.io/dataplane-mode-   (leave the mesh)\n  cargo xtask sim apply -f ../shared/istio-samples/httpbin/httpbin.yaml\n  cargo xtask sim down",
        lab.pod("default/productpage-v1")?.name
    );
    Ok(())
}

/// `curl ARGS…` in `pod`: what it printed.
fn curl_in(lab: &Lab, pod: &mesh_sim::Pod, args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let output = lab
        .exec_command(pod, "curl", &args)?
        .output()
        .with_context(|| format!("running curl in {}", pod.key()))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `name{a="1",b="2"} 3` with only the labels a reader needs.
fn short_metric(line: &str) -> String {
    let keep = [
        "source_workload",
        "destination_workload",
        "destination_principal",
        "connection_security_policy",
        "response_code",
        "destination_version",
    ];
    let (name, rest) = line.split_once('{').unwrap_or((line, ""));
    let (labels, value) = rest.rsplit_once('}').unwrap_or((rest, ""));
    let labels: Vec<String> = labels
        .split("\",")
        .filter(|l| keep.iter().any(|k| l.starts_with(&format!("{k}="))))
        .map(|l| format!("{}\"", l.trim_end_matches('"')))
        .collect();
    format!("{name}{{{}}}{value}", labels.join(","))
}

/// Deploys a waypoint for namespace default (the Gateway `meshctl waypoint generate`
/// prints), applies Istio's bookinfo rules for user-based routing and shows who sees what.
fn waypoint_demo(lab: &mut Lab, samples: &std::path::Path) -> Result<()> {
    println!(
        "\n==> waypoint: meshctl waypoint generate -n default | sim apply; label the namespace"
    );
    let gateway = meshctl::waypoint::generate(&meshctl::waypoint::GenerateArgs {
        namespace: "default".into(),
        name: None,
        for_service_account: None,
    })?;
    let dir = Lab::state_dir(LAB).join("demo");
    std::fs::create_dir_all(&dir).context("creating the demo folder")?;
    let gateway_file = dir.join("waypoint.yaml");
    std::fs::write(&gateway_file, gateway).context("writing the waypoint Gateway")?;
    sim::report(&lab.apply(&[gateway_file], "default")?);
    lab.label("ns/default", &["istio.io/use-waypoint=waypoint".to_owned()])?;
    println!(
        "==> apply destination-rule-all.yaml and virtual-service-reviews-test-v2.yaml (unchanged)"
    );
    let networking = samples.join("bookinfo/networking");
    sim::report(&lab.apply(&[networking.join("destination-rule-all.yaml")], "default")?);
    sim::report(&lab.apply(
        &[networking.join("virtual-service-reviews-test-v2.yaml")],
        "default",
    )?);
    let lab: &Lab = lab;
    let curl = lab.pod("default/curl")?;
    let run = |args: &[&str]| curl_in(lab, curl, args);
    let version = |user: &str| -> Result<String> {
        let page = run(&[
            "-s",
            "--max-time",
            "10",
            "-H",
            &format!("cookie: user={user}"),
            "http://productpage:9080/productpage",
        ])?;
        Ok(["reviews-v1", "reviews-v2", "reviews-v3"]
            .into_iter()
            .find(|v| page.contains(v))
            .unwrap_or("no reviews")
            .to_owned())
    };
    // The rules reach the waypoint within moments; wait for jason's first v2 page.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while version("jason")? != "reviews-v2" {
        if Instant::now() > deadline {
            bail!(
                "jason did not see reviews v2 through the waypoint within 10 s; see /run/mesh-sim/{LAB}/pods/"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for user in ["jason", "jason", "kim", "kim", "", ""] {
        let who = if user.is_empty() { "(anonymous)" } else { user };
        println!("    {who:<12} sees {}", version(user)?);
    }
    let waypoint = lab.waypoint_pod("default", "waypoint")?.clone();
    println!(
        "==> the waypoint's request metrics (GET {}:15020/stats/prometheus)",
        waypoint.ip
    );
    let metrics = run(&[
        "-s",
        "--max-time",
        "10",
        &format!("http://{}:15020/stats/prometheus", waypoint.ip),
    ])?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("reviews"))
    {
        println!("    {}", short_metric(line));
    }
    Ok(())
}

/// Requires a JWT for productpage at the waypoint (a RequestAuthentication with an issuer
/// key made for the demo, and an AuthorizationPolicy admitting only its tokens), shows who
/// gets in, then removes both so the lab is left as it was.
fn jwt_demo(lab: &mut Lab) -> Result<()> {
    use mesh_waypoint::authn::testing::{Signer, now_plus, require_jwt_manifest};
    const ISSUER: &str = "https://issuer.demo";
    println!("\n==> RequestAuthentication: productpage requires a JWT from {ISSUER} (keys inline)");
    let signer = Signer::new("demo");
    let file = Lab::state_dir(LAB).join("demo").join("require-jwt.yaml");
    std::fs::write(&file, require_jwt_manifest("productpage", ISSUER, &signer))
        .context("writing the JWT policies")?;
    sim::report(&lab.apply(std::slice::from_ref(&file), "default")?);
    let token = |exp: i64| {
        let claims = serde_json::json!({"iss": ISSUER, "sub": "alice", "exp": now_plus(exp)});
        format!("Authorization: Bearer {}", signer.token(&claims))
    };
    let forged = format!(
        "Authorization: Bearer {}",
        Signer::new("demo").token(&serde_json::json!({"iss": ISSUER, "sub": "mallory"}))
    );
    let cases = [
        ("no token", None),
        ("alice's token", Some(token(600))),
        ("an expired token", Some(token(-3600))),
        ("a forged token", Some(forged)),
    ];
    let curl = lab.pod("default/curl")?.clone();
    let answer = |header: Option<&String>| -> Result<String> {
        let mut args = vec!["-s", "--max-time", "10", "-w", " (%{http_code})"];
        if let Some(header) = header {
            args.extend(["-H", header.as_str()]);
        }
        args.push("http://productpage:9080/productpage");
        let out = curl_in(lab, &curl, &args)?;
        // The page itself is long: show its title.
        Ok(if out.contains("Book Details") {
            format!("the product page{}", &out[out.rfind(" (").unwrap_or(0)..])
        } else {
            out
        })
    };
    // The policies reach the waypoint within moments: wait for the anonymous refusal.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !answer(None)?.ends_with("(403)") {
        if Instant::now() > deadline {
            bail!("the JWT policies did not apply within 10 s; see /run/mesh-sim/{LAB}/pods/");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for (who, header) in &cases {
        println!("    {who:<17} -> {}", answer(header.as_ref())?);
    }
    sim::report(&lab.delete(&[file], "default")?);
    Ok(())
}

/// Waits until every node agent lists the curl pod's namespace as enrolled (1 s budget).
fn wait_enrolled(lab: &Lab) -> Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let curl = lab.pod("default/curl")?;
    loop {
        let (_, body) = lab.agent_get(&curl.node, "/config_dump")?;
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let enrolled = dump["local_pods"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == curl.name.as_str() && p["enrolled"] == true);
        if enrolled {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the curl pod was not enrolled within 5 s; see /run/mesh-sim/{LAB}/agents/");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
