//! Network plumbing through iproute2 and nftables: namespaces, the bridge, node and pod veths,
//! routes, and probes run from inside a namespace.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};

/// Where `ip netns` keeps its namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";
/// The MAC every node-side pod veth has, and the pods' gateway (as Calico does it).
const GATEWAY_MAC: &str = "ee:ee:ee:ee:ee:ee";
const GATEWAY_IP: &str = "169.254.1.1";

/// Runs a command, returning stdout; a failure carries the command line and stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

pub(crate) fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let command_line = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Missing(format!(
                "`{program}` is not installed; run `cargo xtask setup` (as root)"
            )),
            _ => Error::Io {
                what: format!("cannot run `{command_line}`"),
                source: e,
            },
        })?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(input.as_bytes())
            .map_err(Error::io(format!("writing to `{command_line}`")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(Error::io(format!("waiting for `{command_line}`")))?;
    if !output.status.success() {
        return Err(Error::Command {
            command: command_line,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip -n NETNS ARGS…`
pub(crate) fn ip_in(netns: &str, args: &str) -> Result<()> {
    let mut full = vec!["-n", netns];
    full.extend(args.split_whitespace());
    run("ip", &full).map(drop)
}

/// `ip netns exec NETNS PROGRAM ARGS…`
pub(crate) fn exec_in(
    netns: &str,
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String> {
    let mut full = vec!["netns", "exec", netns, program];
    full.extend(args);
    run_with_input("ip", &full, input)
}

/// Names of the namespaces under /run/netns.
pub(crate) fn list_netns() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn netns_exists(name: &str) -> bool {
    std::path::Path::new(NETNS_DIR).join(name).exists()
}

pub(crate) fn add_netns(name: &str) -> Result<()> {
    run("ip", &["netns", "add", name])?;
    ip_in(name, "link set lo up")
}

pub(crate) fn delete_netns(name: &str) -> Result<()> {
    if netns_exists(name) {
        run("ip", &["netns", "delete", name])?;
    }
    Ok(())
}

fn sysctl_in(netns: &str, settings: &[&str]) -> Result<()> {
    let mut args = vec!["-qw"];
    args.extend(settings);
    exec_in(netns, "sysctl", &args, None).map(drop)
}

/// The lab network: a namespace holding bridge `br0`.
pub(crate) fn create_network(netns: &str) -> Result<()> {
    add_netns(netns)?;
    ip_in(netns, "link add br0 type bridge")?;
    ip_in(netns, "link set br0 up")
}

/// A node: its namespace, `eth0` on the bridge with `ip/24`, forwarding on.
pub(crate) fn create_node(network: &str, netns: &str, index: u8, ip: Ipv4Addr) -> Result<()> {
    add_netns(netns)?;
    ip_in(
        network,
        &format!("link add node{index} type veth peer name eth0 netns {netns}"),
    )?;
    ip_in(network, &format!("link set node{index} master br0 up"))?;
    ip_in(netns, &format!("addr add {ip}/24 dev eth0"))?;
    ip_in(netns, "link set eth0 up")?;
    sysctl_in(
        netns,
        &[
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ],
    )
}

/// Routes a peer node's pod CIDR through that node.
pub(crate) fn route_pod_cidr(netns: &str, cidr: &str, via: Ipv4Addr) -> Result<()> {
    ip_in(netns, &format!("route replace {cidr} via {via} dev eth0"))
}

/// A pod's network: its namespace, `eth0` with `ip/32`, a veth to the node, routes both ways.
pub(crate) fn create_pod_network(
    node_netns: &str,
    pod_netns: &str,
    host_veth: &str,
    ip: Ipv4Addr,
) -> Result<()> {
    add_netns(pod_netns)?;
    ip_in(
        node_netns,
        &format!(
            "link add {host_veth} address {GATEWAY_MAC} type veth peer name eth0 netns {pod_netns}"
        ),
    )?;
    ip_in(node_netns, &format!("link set {host_veth} up"))?;
    ip_in(
        node_netns,
        &format!("route replace {ip}/32 dev {host_veth}"),
    )?;
    ip_in(pod_netns, &format!("addr add {ip}/32 dev eth0"))?;
    ip_in(pod_netns, "link set eth0 up")?;
    ip_in(
        pod_netns,
        &format!("route add {GATEWAY_IP} dev eth0 scope link"),
    )?;
    ip_in(
        pod_netns,
        &format!("route add default via {GATEWAY_IP} dev eth0"),
    )?;
    ip_in(
        pod_netns,
        &format!("neigh replace {GATEWAY_IP} lladdr {GATEWAY_MAC} dev eth0 nud permanent"),
    )
}

/// Removes a pod's network. The node-side veth is deleted first so its name and route are
/// free at once (a namespace is destroyed asynchronously by the kernel).
pub(crate) fn delete_pod_network(node_netns: &str, pod_netns: &str, host_veth: &str) -> Result<()> {
    if netns_exists(node_netns) {
        // Already gone when the pod namespace went first; that is fine.
        let _ = ip_in(node_netns, &format!("link del {host_veth}"));
    }
    delete_netns(pod_netns)
}

/// Replaces the lab's nftables table in a node namespace in one transaction.
pub(crate) fn apply_nft(netns: &str, ruleset: &str) -> Result<()> {
    exec_in(netns, "nft", &["-f", "-"], Some(ruleset)).map(drop)
}

/// Whether a TCP connect to `addr` succeeds from inside `netns`, within `timeout`.
pub(crate) fn can_connect_in(netns: &str, addr: SocketAddr, timeout: Duration) -> Result<bool> {
    let path = format!("{NETNS_DIR}/{netns}");
    let file = File::open(&path).map_err(Error::io(format!("opening network namespace {path}")))?;
    // setns changes only the calling thread's namespace, so probe from a thread of our own.
    std::thread::spawn(move || -> Result<bool> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
            Error::Io {
                what: "entering a pod's network namespace".into(),
                source: errno.into(),
            }
        })?;
        Ok(TcpStream::connect_timeout(&addr, timeout).is_ok())
    })
    .join()
    .map_err(|_| Error::Invalid("the namespace probe thread panicked".into()))?
}
