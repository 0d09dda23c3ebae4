//! eBPF redirection on the lab, for real (root): enrolled pods' TCP passes the node proxy,
//! everything else does not; enrollment follows labels live; restarts adopt the pinned data
//! plane; uninstall removes it. Every scenario runs with the fast path off and on.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use mesh_e2e::TestLab;
use mesh_sim::{MeshOptions, pin_dir};
use nix::sys::signal::Signal;
use serde_json::Value;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: curl}}
spec:
  containers:
  - {name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: server-a, labels: {app: httpbin, role: a}}
spec:
  containers:
  - {name: httpbin, image: mccutchen/go-httpbin, ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server-b, labels: {app: httpbin, role: b}}
spec:
  containers:
  - {name: httpbin, image: mccutchen/go-httpbin, ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: server-b}
spec:
  selector: {role: b}
  ports: [{name: http, port: 8000, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody}
spec:
  ports: [{name: http, port: 8000, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: plain, labels: {app: curl}}
spec:
  containers:
  - {name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
"#;

/// Enrollment must take effect for new connections within this.
const ENROLL_DEADLINE: Duration = Duration::from_secs(1);

/// A two-node lab with the mesh on and `default` enrolled: client and server-b on node1,
/// server-a and plain/outsider on node2.
fn mesh_lab(tag: &str, fast_path: bool) -> TestLab {
    mesh_lab_with(
        tag,
        &MeshOptions {
            fast_path,
            ..MeshOptions::default()
        },
    )
}

/// [`mesh_lab`] with the mesh run as `options` say.
fn mesh_lab_with(tag: &str, options: &MeshOptions) -> TestLab {
    let dir = std::env::temp_dir().join(format!("mesh-redirect-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lab.yaml");
    std::fs::write(&file, MANIFEST).unwrap();
    let mut lab = TestLab::up(tag, 2, &[file]);
    let _ = std::fs::remove_dir_all(&dir);
    lab.lab
        .start_mesh(options)
        .unwrap_or_else(|e| panic!("lab {}: the mesh did not start: {e}", lab.name));
    for (pod, node) in [
        ("client", "node1"),
        ("server-b", "node1"),
        ("server-a", "node2"),
        ("plain/outsider", "node2"),
    ] {
        assert_eq!(lab.pod(pod).node, node, "scheduling of {pod} changed");
    }
    lab.lab
        .label("ns/default", &["istio.io/dataplane-mode=ambient".into()])
        .unwrap();
    within(ENROLL_DEADLINE, || {
        enrolled(&lab, "node1", "default/client")
    })
    .expect("the client is enrolled within 1 s of the namespace label");
    lab
}

/// Whether the node agent lists `pod` as enrolled.
fn enrolled(lab: &TestLab, node: &str, pod: &str) -> bool {
    let Ok((200, body)) = lab.lab.agent_get(node, "/config_dump") else {
        return false;
    };
    let dump: Value = serde_json::from_str(&body).unwrap_or_default();
    dump["local_pods"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| {
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or("")
            ) == pod
                && p["enrolled"] == true
        })
}

/// The peer address httpbin saw (its `/ip`), fetched by `pod`.
fn origin(lab: &TestLab, pod: &str, url: &str) -> Result<String> {
    let body = lab.curl(pod, &["--max-time", "5", url])?;
    let value: Value = serde_json::from_str(&body).with_context(|| format!("body {body:?}"))?;
    Ok(value["origin"].as_str().unwrap_or_default().to_owned())
}

fn stats(lab: &TestLab, node: &str) -> Value {
    let (status, body) = lab.lab.agent_get(node, "/stats/redirect").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn pod_counter(stats: &Value, pod: &str, counter: &str) -> u64 {
    stats["pods"][pod]["counters"][counter]
        .as_u64()
        .unwrap_or(0)
}

fn ebpf_stat(stats: &Value, name: &str) -> u64 {
    stats["ebpf"]["stats"][name].as_u64().unwrap_or(0)
}

/// Starts a curl in a pod without waiting for it (output captured), for requests that must
/// be open while the test changes something.
fn slow_request(lab: &TestLab, pod: &mesh_sim::Pod, url: &str) -> std::process::Child {
    let args = [
        "-sS".into(),
        "--max-time".into(),
        "10".into(),
        url.to_owned(),
    ];
    lab.lab
        .exec_command(pod, "curl", &args)
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Polls until `check` is true, failing after `deadline`; returns how long it took.
fn within(deadline: Duration, mut check: impl FnMut() -> bool) -> Result<Duration> {
    let started = Instant::now();
    while !check() {
        if started.elapsed() > deadline {
            bail!("not within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(started.elapsed())
}

fn acceptance(tag: &str, fast_path: bool) {
    let lab = mesh_lab(tag, fast_path);
    let node1_ip = lab.lab.node("node1").unwrap().ip.to_string();
    let node2_ip = lab.lab.node("node2").unwrap().ip.to_string();
    let client = lab.pod("client").clone();
    let server_a = lab.pod("server-a").ip;
    let server_b = lab.pod("server-b").ip;
    let client_key = client.key();

    // From an enrolled pod: a ClusterIP, a pod on the other node, a pod on the same node.
    // The server sees the proxy of its own node: node2's for server-a (the HBONE tunnel
    // from node1's proxy ends there), node1's for server-b.
    let before = stats(&lab, "node1");
    for (url, proxy) in [
        ("http://server-b:8000/ip".to_owned(), &node1_ip),
        (format!("http://{server_a}:8080/ip"), &node2_ip),
        (format!("http://{server_b}:8080/ip"), &node1_ip),
    ] {
        let seen = origin(&lab, "client", &url).unwrap();
        assert_eq!(&seen, proxy, "{url}: the server must see the node proxy");
    }
    let after = stats(&lab, "node1");
    let connections = |s: &Value| pod_counter(s, &client_key, "connections");
    assert_eq!(connections(&after) - connections(&before), 3, "{after:#}");
    assert!(
        pod_counter(&after, &client_key, "bytes_received") > 0,
        "{after:#}"
    );
    // Only the pods' connects were redirected: the agent's own upstream connects were not.
    assert_eq!(
        ebpf_stat(&after, "redirected"),
        connections(&after),
        "{after:#}"
    );
    if fast_path {
        assert!(ebpf_stat(&after, "fast_path_sockets") > 0, "{after:#}");
        assert!(ebpf_stat(&after, "msg_redirected") > 0, "{after:#}");
    } else {
        assert_eq!(ebpf_stat(&after, "fast_path_sockets"), 0, "{after:#}");
    }

    // An IPv6 socket (connect6) to an IPv4 service, written as an IPv4-mapped address, is
    // redirected like an IPv4 one; a native IPv6 destination (here the pod's own loopback,
    // where nobody listens) is left alone.
    let cluster_ip = lab.lab.state().services["default/server-b"]
        .cluster_ip
        .expect("server-b has a ClusterIP");
    let before = stats(&lab, "node1");
    let seen = origin(
        &lab,
        "client",
        &format!("http://[::ffff:{cluster_ip}]:8000/ip"),
    )
    .unwrap();
    assert_eq!(seen, node1_ip, "an IPv6 socket to ::ffff:{cluster_ip}");
    let refused = lab.curl("client", &["--max-time", "5", "http://[::1]:9/"]);
    assert!(refused.is_err(), "{refused:?}");
    let after = stats(&lab, "node1");
    let delta = |name: &str| ebpf_stat(&after, name) - ebpf_stat(&before, name);
    assert_eq!(delta("tcp6_connects"), 2, "{after:#}");
    assert_eq!(delta("redirected"), 1, "only the mapped address: {after:#}");
    assert_eq!(connections(&after) - connections(&before), 1, "{after:#}");

    // A process in a cgroup inside the pod's (where kubelet puts each container) is the pod's
    // too: its connects are redirected.
    let before = ebpf_stat(&stats(&lab, "node1"), "redirected");
    let nested = client.cgroup.join("container");
    let script = format!(
        "mkdir -p {dir} && echo $$ > {dir}/cgroup.procs && exec curl -sS --max-time 5 -o /dev/null http://{server_a}:8080/ip",
        dir = nested.display()
    );
    lab.exec("client", "sh", &["-c", &script])
        .expect("curl from a cgroup nested in the pod's");
    assert!(
        ebpf_stat(&stats(&lab, "node1"), "redirected") > before,
        "a connect from {} was not redirected",
        nested.display()
    );

    // Not enrolled: plain/outsider's connects are not redirected at its node. The server is
    // enrolled, so its node captures the plaintext connection (PERMISSIVE) and delivers it.
    let seen = origin(
        &lab,
        "plain/outsider",
        &format!("http://{server_a}:8080/ip"),
    )
    .unwrap();
    assert_eq!(seen, lab.lab.node("node2").unwrap().ip.to_string());
    assert_eq!(ebpf_stat(&stats(&lab, "node2"), "redirected"), 0);

    // The host (a node-local process outside the pods' cgroup) is not redirected.
    let before = stats(&lab, "node1");
    let output = lab
        .lab
        .node_command("node1", "curl")
        .unwrap()
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://{server_b}:8080/ip"),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let after = stats(&lab, "node1");
    assert_eq!(
        ebpf_stat(&after, "tcp_connects"),
        ebpf_stat(&before, "tcp_connects")
    );
    assert_eq!(connections(&after), connections(&before));

    // Nobody listening: the client fails fast (reset by the proxy), no hang, whether the port
    // is closed on a pod of this node or of the other (the tunnel's CONNECT is refused), or
    // the service has no endpoints.
    for url in [
        format!("http://{server_b}:9/"),
        format!("http://{server_a}:9/"),
        "http://nobody:8000/".to_owned(),
    ] {
        let before = pod_counter(&stats(&lab, "node1"), &client_key, "failed");
        let started = Instant::now();
        let result = lab.curl("client", &["--max-time", "5", &url]);
        let took = started.elapsed();
        assert!(result.is_err(), "{url}: {result:?}");
        assert!(took < Duration::from_secs(1), "{url}: took {took:?}");
        let after = stats(&lab, "node1");
        assert!(
            pod_counter(&after, &client_key, "failed") > before,
            "{url}: not counted as failed by the proxy: {after:#}"
        );
    }

    // UDP is left alone: a connected UDP socket keeps the address it named.
    let before = stats(&lab, "node1");
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        s.connect((sys.argv[1], 5353))\n\
        s.send(b'x')\n\
        print('%s:%d' % s.getpeername())";
    let peer = lab
        .exec("client", "python3", &["-c", script, &server_a.to_string()])
        .expect("a UDP connect from the client");
    assert_eq!(
        peer.trim(),
        format!("{server_a}:5353"),
        "UDP was redirected"
    );
    let after = stats(&lab, "node1");
    assert!(
        ebpf_stat(&after, "other_connects") > ebpf_stat(&before, "other_connects"),
        "{after:#}"
    );
    assert_eq!(
        ebpf_stat(&after, "redirected"),
        ebpf_stat(&before, "redirected"),
        "{after:#}"
    );

    // An open connection survives its pod leaving the mesh; new ones then go direct within 1 s.
    let slow = slow_request(&lab, &client, &format!("http://{server_a}:8080/delay/2"));
    within(Duration::from_secs(5), || {
        pod_counter(&stats(&lab, "node1"), &client_key, "open") > 0
    })
    .expect("the slow request is open through the proxy");
    let mut lab = lab;
    lab.lab
        .label(
            &format!("pod/{client_key}"),
            &["istio.io/dataplane-mode=none".into()],
        )
        .unwrap();
    // server-a is enrolled, so node2 delivers either way; what changes is the redirect at
    // the client's node.
    let took = within(ENROLL_DEADLINE, || {
        !redirected_by(
            &lab,
            "node1",
            "client",
            &format!("http://{server_a}:8080/ip"),
        )
    })
    .expect("opt-out by pod label takes effect for new connections");
    eprintln!("opt-out took {took:?}");
    let output = slow.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("origin"));

    // Enroll a namespace live, then take it out again.
    lab.lab
        .label("ns/plain", &["istio.io/dataplane-mode=ambient".into()])
        .unwrap();
    // The server is enrolled, so it sees node2's proxy either way: what changes is whether
    // the outsider's own connects are redirected at its node.
    let url = format!("http://{server_a}:8080/ip");
    let took = within(ENROLL_DEADLINE, || {
        redirected_by(&lab, "node2", "plain/outsider", &url)
    })
    .expect("enrollment by namespace label takes effect within 1 s");
    eprintln!("enroll took {took:?}");
    lab.lab
        .label("ns/plain", &["istio.io/dataplane-mode-".into()])
        .unwrap();
    let took = within(ENROLL_DEADLINE, || {
        !redirected_by(&lab, "node2", "plain/outsider", &url)
    })
    .expect("un-enrollment takes effect within 1 s");
    eprintln!("un-enroll took {took:?}");

    // The client's opt-out removed again: it is back in the mesh.
    lab.lab
        .label(
            &format!("pod/{client_key}"),
            &["istio.io/dataplane-mode-".into()],
        )
        .unwrap();
    within(ENROLL_DEADLINE, || {
        redirected_by(&lab, "node1", "client", &url)
    })
    .expect("removing the opt-out label takes effect within 1 s");

    // A pod started in an enrolled namespace is in the mesh within 2 s of running (the
    // agent enrolls it once both its object and its cgroup are there: at once, or at the
    // next resync, each second); deleted, it leaves the enrollment map.
    let enrolled_cgroups = |lab: &TestLab| {
        let stats = stats(lab, "node1");
        stats["ebpf"]["maps"]["enrolled"].as_u64()
    };
    let before = enrolled_cgroups(&lab);
    let late = lab.manifest(
        "late.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: late, labels: {app: curl}}
spec:
  containers:
  - {name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
"#,
    );
    lab.apply(std::slice::from_ref(&late));
    assert_eq!(lab.pod("late").node, "node1", "scheduling changed");
    let took = within(Duration::from_secs(2), || {
        redirected_by(&lab, "node1", "late", &url)
    })
    .expect("a new pod in an enrolled namespace is redirected within 2 s");
    eprintln!("new pod enrolled after {took:?}");
    assert!(enrolled_cgroups(&lab) > before);
    lab.lab.delete(&[late], "default").unwrap();
    within(ENROLL_DEADLINE, || enrolled_cgroups(&lab) == before)
        .expect("a deleted pod leaves the enrollment map within 1 s");
}

/// Whether a request from `pod` (on `node`) to `url` was redirected by the node's eBPF: its
/// `redirected` counter rose. The request itself must succeed.
fn redirected_by(lab: &TestLab, node: &str, pod: &str, url: &str) -> bool {
    let before = ebpf_stat(&stats(lab, node), "redirected");
    origin(lab, pod, url).unwrap();
    ebpf_stat(&stats(lab, node), "redirected") > before
}

#[test]
fn enrolled_pods_pass_the_node_proxy_and_nothing_else_does_fast_path_off() {
    acceptance("rdo", false);
}

#[test]
fn enrolled_pods_pass_the_node_proxy_and_nothing_else_does_fast_path_on() {
    acceptance("rdn", true);
}

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
    let (_, dump) = lab.lab.agent_get("node1", "/config_dump").unwrap();
    let dump: Value = serde_json::from_str(&dump).unwrap();
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
    let program_ids: Vec<u64> = dump["ebpf"]["program_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
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
    let (_, dump) = lab.lab.agent_get("node1", "/config_dump").unwrap();
    let dump: Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["ebpf"]["adopted"], false, "{dump:#}");
    let replaced = program_ids;
    let program_ids: Vec<u64> = dump["ebpf"]["program_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
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

/// The programs' aya-log records reach the agent's `tracing` output at debug level: with
/// `mesh_ebpf=debug` the redirect of a connect shows in the agent's log.
#[test]
fn ebpf_log_records_reach_the_agents_log_at_debug_level() {
    let lab = mesh_lab_with(
        "rlg",
        &MeshOptions {
            log: Some("info,mesh_ebpf=debug".into()),
            ..MeshOptions::default()
        },
    );
    let server_a = lab.pod("server-a").ip;
    origin(&lab, "client", &format!("http://{server_a}:8080/ip")).unwrap();
    let wanted = format!("connect4: redirected {server_a}:8080 to the node proxy");
    within(Duration::from_secs(5), || {
        lab.lab.agent_log("node1").contains(&wanted)
    })
    .unwrap_or_else(|_| {
        panic!(
            "{wanted:?} not in the agent's log:\n{}",
            lab.lab.agent_log("node1")
        )
    });
}

/// The original-destination map (and, with the fast path, the sockhash) tracks open
/// connections only: after 100k connections through the proxy, most closed with a reset and
/// 10k closed normally (through TIME_WAIT), they hold about as many entries as before; every
/// 10 000th connection carries a request, so forwarding worked throughout.
fn map_growth(tag: &str, fast_path: bool) -> Result<()> {
    const RESET: u32 = 90_000;
    const CLOSED: u32 = 10_000;
    let lab = mesh_lab(tag, fast_path);
    let client = lab.pod("client").clone();
    let server_b = lab.pod("server-b").ip.to_string();
    // Reset closes do not wait out TIME_WAIT on the client's ports (100k normal closes to the
    // one listener would run out of them).
    let script = r#"
import socket, struct, sys
host, port, resets, closes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
linger = struct.pack("ii", 1, 0)
connected = answered = 0
for i in range(resets + closes):
    s = socket.socket()
    if i < resets:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    try:
        s.connect((host, port)); connected += 1
        if i % 10000 == 0:
            s.sendall(b"GET /ip HTTP/1.0\r\n\r\n")
            s.settimeout(5)
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
            answered += b"origin" in reply
    except OSError:
        pass
    s.close()
print(connected, answered)
"#;
    let output = lab
        .lab
        .exec_command(
            &client,
            "python3",
            &[
                "-c".into(),
                script.into(),
                server_b,
                "8080".into(),
                RESET.to_string(),
                CLOSED.to_string(),
            ],
        )?
        .output()?;
    ensure!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (connected, answered) = stdout.trim().split_once(' ').context("two counts")?;
    let (connected, answered): (u32, u32) = (connected.parse()?, answered.parse()?);
    let total = RESET + CLOSED;
    let stats = stats(&lab, "node1");
    eprintln!(
        "{connected} connections, {answered} requests answered; node1 eBPF: {:#}",
        stats["ebpf"]
    );
    ensure!(connected >= total * 99 / 100, "only {connected} connected");
    ensure!(
        answered == total / 10_000,
        "only {answered} requests answered"
    );
    ensure!(ebpf_stat(&stats, "redirected") >= u64::from(connected));
    within(Duration::from_secs(10), || {
        let stats = self::stats(&lab, "node1");
        let maps = &stats["ebpf"]["maps"];
        let small = |name: &str| maps[name].as_u64().unwrap_or(u64::MAX) < 100;
        small("orig_dst")
            && small("fast_path_sockets")
            && ebpf_stat(&stats, "established") - ebpf_stat(&stats, "closed") < 100
    })
    .with_context(|| {
        format!(
            "the maps still hold entries of closed connections: {:#}",
            self::stats(&lab, "node1")["ebpf"]
        )
    })?;
    Ok(())
}

#[test]
fn original_destination_map_does_not_grow_over_100k_connections_fast_path_off() -> Result<()> {
    map_growth("grwo", false)
}

#[test]
fn original_destination_map_does_not_grow_over_100k_connections_fast_path_on() -> Result<()> {
    map_growth("grwn", true)
}
