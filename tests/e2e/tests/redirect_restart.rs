//! eBPF redirection across restarts, for real (root): a restarted mesh-node adopts the
//! pinned data plane (or replaces another build's), the inbound capture fails closed while
//! no agent runs, uninstall is refused under a running agent and otherwise removes
//! everything. Fast path off and on.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mesh_e2e::redirect::{
    ebpf_stat, mesh_lab, origin, pod_counter, redirected_by, slow_request, stats, within,
};
use mesh_e2e::{TestLab, config_dump};
use mesh_sim::pin_dir;
use nix::sys::signal::Signal;
use serde_json::Value;

/// A client in the pod that connects every 10 ms for `seconds` and prints, per attempt,
/// `ms ok|fail`, after printing `started` once the first attempt succeeded.
const LOOP: &str = r#"
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
start = time.monotonic(); said = False
while time.monotonic() - start < seconds:
    t = time.monotonic()
    ok = False
    try:
        s = socket.create_connection((host, port), timeout=1)
        s.sendall(b"GET /ip HTTP/1.0\r\n\r\n")
        ok = b" 200 " in s.recv(64)[:16]
        s.close()
    except OSError:
        pass
    print(f"{(t - start) * 1000:.0f} {'ok' if ok else 'fail'}", flush=True)
    if ok and not said:
        print("started", flush=True); said = True
    time.sleep(0.01)
"#;

fn restart_and_uninstall(tag: &str, fast_path: bool) {
    let lab = mesh_lab(tag, fast_path);
    let client = lab.pod("client").clone();
    let server_b = lab.pod("server-b").ip.to_string();
    let server_a = lab.pod("server-a").ip;

    let mut load = lab
        .lab
        .exec_command(
            &client,
            "python3",
            &[
                "-c".into(),
                LOOP.into(),
                server_b.clone(),
                "8080".into(),
                "4".into(),
            ],
        )
        .unwrap();
    let mut load = load.stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(load.stdout.take().unwrap()).lines();
    let mut attempts = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line == "started" {
            break;
        }
        attempts.push(line);
    }
    // An in-flight connection through the forwarder: it is the forwarder's socket, so it dies
    // with the agent (the README says so; this checks it stays true).
    let in_flight = slow_request(&lab, &client, &format!("http://{server_a}:8080/delay/2"));
    within(Duration::from_secs(5), || {
        pod_counter(&stats(&lab, "node1"), &client.key(), "open") > 0
    })
    .expect("the slow request is open through the proxy");
    let killed = Instant::now();
    lab.lab.stop_agent("node1", Signal::SIGKILL).unwrap();
    lab.lab.start_agent("node1").unwrap();
    let restarted = killed.elapsed();
    attempts.extend(lines.map(|l| l.unwrap()));
    load.wait().unwrap();
    let failures: Vec<u64> = attempts
        .iter()
        .filter(|l| l.ends_with("fail"))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    let last_ok_after_failures = attempts.last().is_some_and(|l| l.ends_with("ok"));
    eprintln!(
        "restart (SIGKILL, fast path {fast_path}): agent ready again after {restarted:?}; {} of {} connects failed, spanning {:?} ms",
        failures.len(),
        attempts.len(),
        failures.first().zip(failures.last()).map(|(a, b)| b - a)
    );
    assert!(last_ok_after_failures, "{attempts:?}");
    let in_flight = in_flight.wait_with_output().unwrap();
    eprintln!(
        "in-flight request across the restart: {} ({})",
        in_flight.status,
        String::from_utf8_lossy(&in_flight.stderr).trim()
    );
    assert!(
        !in_flight.status.success(),
        "an in-flight connection survived the forwarder's death: update the README"
    );

    // The restarted agent adopted the pinned programs and redirects again.
    let dump = config_dump(&lab, "node1");
    assert_eq!(dump["ebpf"]["adopted"], true, "{dump:#}");
    // Ready means the CA has answered for every enrolled pod: the lab's CA issues, so the
    // certificates are there the moment readiness says 200.
    let held: Vec<&Value> = dump["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| &c["identity"])
        .collect();
    for pod in dump["local_pods"].as_array().unwrap() {
        if pod["enrolled"] == true {
            let identity = format!(
                "spiffe://cluster.local/ns/{}/sa/{}",
                pod["namespace"].as_str().unwrap(),
                pod["service_account"].as_str().unwrap()
            );
            assert!(
                held.iter().any(|h| **h == identity),
                "ready without a certificate for {identity}: {dump:#}"
            );
        }
    }
    let program_ids = agent_program_ids(&dump);
    // New connections to a pod on the other node and to one on the same node are redirected
    // by the adopted programs and pass the new agent (its per-pod counter starts from zero).
    for url in [
        format!("http://{server_a}:8080/ip"),
        format!("http://{server_b}:8080/ip"),
    ] {
        assert!(
            redirected_by(&lab, "node1", "client", &url),
            "{url}: not redirected after the restart"
        );
    }
    assert!(
        pod_counter(&stats(&lab, "node1"), &client.key(), "connections") >= 2,
        "the restarted agent did not proxy the client's connections"
    );
    let node2_ip = lab.lab.node("node2").unwrap().ip.to_string();

    // While the agent is down, the inbound capture fails closed: a plaintext client from
    // outside the mesh (plain/outsider, node2) cannot reach an enrolled pod of node1 past
    // it; once the agent is back it can.
    lab.lab.stop_agent("node1", Signal::SIGKILL).unwrap();
    let url_b = format!("http://{server_b}:8080/ip");
    let bypass = lab.curl("plain/outsider", &["--max-time", "2", &url_b]);
    assert!(
        bypass.is_err(),
        "reached {server_b} while its node's agent was down: {bypass:?}"
    );
    lab.lab.start_agent("node1").unwrap();
    origin(&lab, "plain/outsider", &url_b).expect("served through the restarted agent");
    assert!(
        ebpf_stat(&stats(&lab, "node1"), "inbound_no_listener") > 0,
        "the capture counted no dropped SYN"
    );

    // An install another build made (its object stamp differs, as after an upgrade) is
    // replaced on start, not adopted: the new programs run.
    lab.lab.stop_agent("node1", Signal::SIGTERM).unwrap();
    restamp_settings(&pin_dir(&lab.name, "node1").join("maps/SETTINGS"));
    lab.lab.start_agent("node1").unwrap();
    let dump = config_dump(&lab, "node1");
    assert_eq!(dump["ebpf"]["adopted"], false, "{dump:#}");
    let replaced = program_ids;
    let program_ids = agent_program_ids(&dump);
    assert!(
        program_ids.iter().all(|id| !replaced.contains(id)),
        "{program_ids:?} against {replaced:?}"
    );
    assert!(redirected_by(
        &lab,
        "node1",
        "client",
        &format!("http://{server_a}:8080/ip")
    ));

    // A running agent holds its pin folder: uninstall refuses, says why, and disturbs nothing.
    let pins = pin_dir(&lab.name, "node1");
    let refused = lab
        .lab
        .uninstall_agent("node1", None)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("held by a running mesh-node") && refused.contains("stop that agent"),
        "{refused}"
    );
    assert!(
        pins.join("maps/SETTINGS").exists(),
        "a refused uninstall removed pins"
    );
    assert!(redirected_by(
        &lab,
        "node1",
        "client",
        &format!("http://{server_a}:8080/ip")
    ));

    // Uninstall: stop the agent, remove everything it pinned; the kernel drops the programs.
    lab.lab.stop_agent("node1", Signal::SIGTERM).unwrap();
    assert!(pins.exists());
    lab.lab.uninstall_agent("node1", None).unwrap();
    assert!(!pins.exists(), "pins left at {}", pins.display());
    let rules = lab
        .lab
        .node_command("node1", "ip")
        .unwrap()
        .args(["-4", "rule", "show"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.contains("lookup 15006"), "rule left:\n{rules}");
    within(Duration::from_secs(5), || {
        let loaded = loaded_program_ids();
        program_ids.iter().all(|id| !loaded.contains(id))
    })
    .expect("the uninstalled programs are gone from the kernel");
    // The client now connects directly, in plaintext: server-a's node captures it on
    // arrival (the server is enrolled; PERMISSIVE) instead of receiving an HBONE tunnel.
    let captured = |lab: &TestLab| ebpf_stat(&stats(lab, "node2"), "inbound_captured");
    let before = captured(&lab);
    assert_eq!(
        origin(&lab, "client", &format!("http://{server_a}:8080/ip")).unwrap(),
        node2_ip,
    );
    assert!(
        captured(&lab) > before,
        "after uninstall the client connects directly"
    );
}

/// Overwrites the object stamp in a pinned `SETTINGS` map (its last 8 bytes), as an install
/// by another build of mesh-node would have left it.
fn restamp_settings(map: &std::path::Path) {
    let bpftool = |args: &[&str]| {
        let output = std::process::Command::new("bpftool")
            .args(args)
            .output()
            .expect("bpftool (cargo xtask setup installs it)");
        assert!(output.status.success(), "bpftool {args:?}: {output:?}");
        output.stdout
    };
    let map = map.to_str().unwrap();
    let entry: Value = serde_json::from_slice(&bpftool(&[
        "-j", "map", "lookup", "pinned", map, "key", "0", "0", "0", "0",
    ]))
    .unwrap();
    let mut value: Vec<String> = entry["value"]
        .as_array()
        .expect("a SETTINGS entry")
        .iter()
        .map(|byte| byte.as_str().unwrap().trim_start_matches("0x").to_owned())
        .collect();
    let len = value.len();
    for byte in &mut value[len - 8..] {
        *byte = "5a".into();
    }
    let mut args = vec![
        "map", "update", "pinned", map, "key", "0", "0", "0", "0", "value", "hex",
    ];
    args.extend(value.iter().map(String::as_str));
    bpftool(&args);
}

/// Ids of the eBPF programs an agent's `/config_dump` says it runs.
fn agent_program_ids(dump: &Value) -> Vec<u64> {
    dump["ebpf"]["program_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

/// Ids of the eBPF programs loaded now (`bpftool prog list` would say the same).
fn loaded_program_ids() -> Vec<u64> {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "prog", "list"])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    let list: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

#[test]
fn restart_adopts_pins_and_uninstall_removes_them_fast_path_off() {
    restart_and_uninstall("rso", false);
}

#[test]
fn restart_adopts_pins_and_uninstall_removes_them_fast_path_on() {
    restart_and_uninstall("rsn", true);
}
