//! eBPF redirection on the lab, for real (root): enrolled pods' TCP passes the node proxy,
//! everything else does not; enrollment follows labels live; the programs' logs reach the
//! agent's; the original-destination map does not grow. (Restarts and uninstall:
//! `redirect_restart.rs`.) Every scenario runs with the fast path off and on.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use mesh_e2e::TestLab;
use mesh_e2e::redirect::{
    ENROLL_DEADLINE, ebpf_stat, mesh_lab, mesh_lab_with, origin, pod_counter, redirected_by,
    slow_request, stats, within,
};
use mesh_sim::MeshOptions;
use serde_json::Value;

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

#[test]
fn enrolled_pods_pass_the_node_proxy_and_nothing_else_does_fast_path_off() {
    acceptance("rdo", false);
}

#[test]
fn enrolled_pods_pass_the_node_proxy_and_nothing_else_does_fast_path_on() {
    acceptance("rdn", true);
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
