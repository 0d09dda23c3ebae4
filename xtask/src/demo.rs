//! `cargo xtask demo`: sets up, builds, brings bookinfo up on a two-node lab, shows a few
//! requests and how to go on.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use mesh_sim::{Lab, LabOptions, MeshOptions};

use crate::{cargo, setup, sim};

const LAB: &str = "mesh";

pub(crate) fn run() -> Result<()> {
    setup::run()?;
    let sample_app = cargo::build_sample_app()?;
    let mesh_node = cargo::build_mesh_node()?;
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
    let run = |args: &[&str]| -> Result<String> {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let output = lab
            .exec_command(curl, "curl", &args)?
            .output()
            .context("running curl in the curl pod")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
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
        "\nThe lab stays up. Try:\n  cargo xtask sim get all\n  cargo xtask sim exec curl -- curl -s http://reviews:9080/reviews/0\n  cargo xtask sim exec curl -- curl -s -c /tmp/j -d username=jason -d passwd=x http://productpage:9080/login\n  cargo xtask sim logs default/{}\n  cargo xtask sim label ns default istio.io/dataplane-mode-   (leave the mesh)\n  cargo xtask sim apply -f ../shared/istio-samples/httpbin/httpbin.yaml\n  cargo xtask sim down",
        lab.pod("default/productpage-v1")?.name
    );
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
