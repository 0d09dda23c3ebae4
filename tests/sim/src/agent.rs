//! The mesh in the lab: the mesh CA (`mesh-node ca`, on the first node, in cgroup
//! `<lab>/<node1>/ca`) and one `mesh-node` per node, started inside the node's network
//! namespace and in its own cgroup (`<lab>/<node>/agent`, beside the pods' cgroup, so the
//! redirect never sees the agent's own sockets), reading the lab's config folder as its files
//! config source, pinning its eBPF under `/sys/fs/bpf/msim-<lab>-<node>/`. Each agent proves
//! itself to the CA with a random per-node credential the lab writes under `ca/` (the stand-in
//! for a kubelet-bound service-account token); a pod that talks to the CA itself (a
//! waypoint) gets a credential of its own, granting only its own service account. `down`
//! kills CA and agents with the rest of the lab's cgroup and removes the pins.
#![allow(unsafe_code)] // pre_exec runs between fork and exec; the kernel calls need libc.

mod ca;

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::process::log_to;
use crate::state::{Node, Pod, PodPhase};
use crate::{cgroup, net};

/// Where bpffs is mounted (`cargo xtask setup` mounts it).
pub const BPFFS: &str = "/sys/fs/bpf";
/// The agent's admin port (readiness, config dump, counters).
pub const ADMIN_PORT: u16 = 15000;
/// The outbound listener the redirect sends pods' connections to.
pub const OUTBOUND_PORT: u16 = 15001;
/// The agents' Prometheus metrics.
pub const METRICS_PORT: u16 = 15020;
/// The node agents' readiness port (`/healthz/ready`), on the node's address.
pub const READINESS_PORT: u16 = 15021;
/// The mesh CA's gRPC port.
pub const CA_PORT: u16 = 15012;
/// The mesh CA's metrics port (`mesh-node ca`'s default `--metrics-listen`).
pub const CA_METRICS_PORT: u16 = 15014;
/// How long an agent gets to become ready.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How the lab runs its node agents; kept in the lab state so restarts use the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshOptions {
    /// The `mesh-node` binary; found beside the running executable when `None`.
    pub binary: Option<PathBuf>,
    /// The sock_ops + sk_msg fast path.
    pub fast_path: bool,
    /// Run the agents with `--redirect netfilter` (no eBPF: someone else's NAT rules send
    /// traffic to the outbound listener; for the benchmark's comparison).
    #[serde(default)]
    pub netfilter: bool,
    /// Run the agents with `--inbound-capture off` (the tc programs and policy routing that
    /// send traffic addressed to pods to the agent; for the redirect benchmark's rows that
    /// measure the outbound redirect alone, as the netfilter row does).
    #[serde(default)]
    pub no_inbound_capture: bool,
    /// Workload certificate lifetime (`mesh-node --cert-ttl`, e.g. `10s`); the default 24 h
    /// when `None`.
    #[serde(default)]
    pub cert_ttl: Option<String>,
    /// The `mesh-waypoint` binary of the waypoint pods started once the mesh runs (e.g.
    /// target/release/mesh-waypoint); `MESH_SIM_WAYPOINT`, or the one beside the running
    /// executable, when `None` (and for waypoint pods started before the mesh).
    #[serde(default)]
    pub waypoint: Option<PathBuf>,
    /// The mesh processes' log filter (`RUST_LOG`, e.g. `info,mesh_ebpf=debug`);
    /// `MESH_SIM_AGENT_LOG`, else `info`, when `None`.
    #[serde(default)]
    pub log: Option<String>,
}

/// What a node agent's (or a pod's) processes use, from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AgentUsage {
    pub fds: usize,
    pub rss_kb: u64,
    /// Peak resident memory (`VmHWM`): since the process started, or since
    /// [`Lab::reset_peak_rss`].
    pub peak_rss_kb: u64,
    /// User plus system CPU time since it started.
    pub cpu_seconds: f64,
}

/// The bpffs folder of one node's pins.
pub fn pin_dir(lab: &str, node: &str) -> PathBuf {
    Path::new(BPFFS).join(format!("msim-{lab}-{node}"))
}

/// Every pin folder of a lab (`/sys/fs/bpf/msim-<lab>-*`).
pub(crate) fn pin_dirs(lab: &str) -> Vec<PathBuf> {
    let prefix = format!("msim-{lab}-");
    std::fs::read_dir(BPFFS)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes a lab's pins (after its agents are gone): the kernel then frees the programs.
pub(crate) fn remove_pins(lab: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for dir in pin_dirs(lab) {
        std::fs::remove_dir_all(&dir)
            .map_err(Error::io(format!("removing pins {}", dir.display())))?;
        removed.push(format!("pins {}", dir.display()));
    }
    Ok(removed)
}

/// A cgroup beside the node's pods one (`<lab>/<node>/<name>`): the programs attached to the
/// pods' cgroup never see its sockets.
fn node_cgroup(node: &Node, name: &str) -> PathBuf {
    node.pods_cgroup
        .parent()
        .map_or_else(|| node.pods_cgroup.join(name), |p| p.join(name))
}

fn agent_cgroup(node: &Node) -> PathBuf {
    node_cgroup(node, "agent")
}

/// Sends `signal` to every process in `cgroup` and waits (at most 10 s) until none is left.
fn stop_cgroup(cgroup: &Path, signal: nix::sys::signal::Signal, what: &str) -> Result<()> {
    for pid in cgroup::pids(cgroup) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cgroup::pids(cgroup).is_empty() {
        if Instant::now() > deadline {
            return Err(Error::Invalid(format!(
                "{what} still running 10 s after {signal}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

impl Lab {
    /// Starts a mesh-node on every node and waits until each is ready.
    pub fn start_mesh(&mut self, options: &MeshOptions) -> Result<()> {
        let binary = match &options.binary {
            Some(path) => path.clone(),
            None => find_mesh_node()?,
        };
        // Before anything changes: a second CA would find the CA port taken.
        self.refuse_a_second_ca()?;
        self.state.mesh = Some(MeshOptions {
            binary: Some(binary),
            ..options.clone()
        });
        self.save()?;
        self.start_ca()?;
        let nodes: Vec<String> = self.state.nodes.iter().map(|n| n.name.clone()).collect();
        for node in nodes {
            self.start_agent(&node)?;
        }
        self.await_waypoints()
    }

    /// Waypoint pods started before the mesh have waited for the CA; now they can get their
    /// certificates and serve. Those still not ready after the deadline stay NotReady (and
    /// [`Lab::refresh_phases`] promotes them once they serve).
    fn await_waypoints(&mut self) -> Result<()> {
        let waiting: Vec<String> = self
            .state
            .pods
            .values()
            .filter(|p| p.runs_waypoint() && p.phase == PodPhase::NotReady)
            .map(Pod::key)
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        self.wait_ready(&waiting, &mut crate::lab::Applied::default());
        self.refresh_derived()?;
        self.save()
    }

    /// Starts `mesh-node` with the arguments `args` adds, inside `node`'s network namespace,
    /// in cgroup `<lab>/<node>/<name>`, logging to `agents/<name or node>.log`, and waits
    /// until `ready` holds (failing with its last log lines if it exits or times out).
    fn spawn_mesh_node(
        &self,
        node: &Node,
        name: &str,
        what: &str,
        args: impl FnOnce(&mut Command),
        ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let binary = self.mesh_binary()?;
        let cgroup = node_cgroup(node, name);
        cgroup::create(&cgroup)?;
        let logs = self.dir.join("agents");
        std::fs::create_dir_all(&logs)
            .map_err(Error::io(format!("creating {}", logs.display())))?;
        let log_name = if name == "agent" { &node.name } else { name };
        let log_path = logs.join(format!("{log_name}.log"));
        let mut command = Command::new(&binary);
        args(&mut command);
        let log = self.state.mesh.as_ref().and_then(|m| m.log.clone());
        command
            .env("RUST_LOG", log.unwrap_or_else(log_filter))
            .stdin(Stdio::null());
        log_to(&mut command, &log_path)?;
        enter_node(&mut command, &node.netns, &cgroup)?;
        let mut child = command.spawn().map_err(Error::io(format!(
            "starting {} on {} ({what})",
            binary.display(),
            node.name
        )))?;
        let pid = child.id();
        std::thread::spawn(move || child.wait());
        wait_until(&log_path, pid, &cgroup, what, ready)
    }

    /// How the lab runs its mesh (an error when it runs none).
    fn mesh_options(&self) -> Result<MeshOptions> {
        self.state.mesh.clone().ok_or_else(|| {
            Error::Invalid(format!(
                "lab {} runs no mesh; start it with `sim up --mesh`",
                self.state.lab
            ))
        })
    }

    /// The `mesh-node` binary the lab's mesh runs.
    fn mesh_binary(&self) -> Result<PathBuf> {
        self.mesh_options()?.binary.map_or_else(find_mesh_node, Ok)
    }

    /// Starts the node's agent (the mesh must be on) and waits for its readiness.
    pub fn start_agent(&self, node: &str) -> Result<()> {
        let mesh = self.mesh_options()?;
        let node = self.node(node)?.clone();
        let (_, ca_addr) = self.ca_node()?;
        let config_dir = self.config_dir();
        let pin_dir = pin_dir(&self.state.lab, &node.name);
        let ca_dir = self.ca_dir();
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT));
        self.spawn_mesh_node(
            &node,
            "agent",
            &format!("mesh-node on {}", node.name),
            |command| {
                command
                    .arg("run")
                    .args(["--node", &node.name])
                    .arg("--config-dir")
                    .arg(&config_dir)
                    .arg("--pods-cgroup")
                    .arg(&node.pods_cgroup)
                    .arg("--agent-cgroup")
                    .arg(agent_cgroup(&node))
                    .arg("--pin-dir")
                    .arg(&pin_dir)
                    .args(["--proxy-ip", &node.ip.to_string()])
                    .args(["--fast-path", if mesh.fast_path { "on" } else { "off" }])
                    .args([
                        "--redirect",
                        if mesh.netfilter { "netfilter" } else { "ebpf" },
                    ])
                    .args([
                        "--inbound-capture",
                        if mesh.no_inbound_capture { "off" } else { "on" },
                    ])
                    .args(["--ca-addr", &ca_addr.to_string()])
                    .arg("--ca-root")
                    .arg(ca_dir.join("root-cert.pem"))
                    .arg("--ca-credential-file")
                    .arg(ca_dir.join(format!("{}.credential", node.name)))
                    .args(["--cert-ttl", mesh.cert_ttl.as_deref().unwrap_or("24h")]);
            },
            || {
                matches!(
                    http_get_in(&node.netns, admin, "/healthz/ready"),
                    Ok((200, _))
                )
            },
        )
    }

    /// Stops the node's agent with `signal` (SIGTERM: a clean stop; SIGKILL: a crash) and
    /// waits until it is gone. Its pinned eBPF stays.
    pub fn stop_agent(&self, node: &str, signal: nix::sys::signal::Signal) -> Result<()> {
        let node = self.node(node)?;
        stop_cgroup(
            &agent_cgroup(node),
            signal,
            &format!("mesh-node on {}", node.name),
        )
    }

    /// Runs `mesh-node uninstall` for the node's (stopped) agent: in the node's network
    /// namespace, where the inbound capture's policy routing is (with `nsenter`, not `ip netns
    /// exec`, which would hide bpffs behind a fresh /sys). `binary` defaults to the mesh's.
    pub fn uninstall_agent(&self, node: &str, binary: Option<&Path>) -> Result<()> {
        let node = self.node(node)?;
        let binary = match binary {
            Some(binary) => binary.to_owned(),
            None => self.mesh_binary()?,
        };
        let output = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.netns))
            .arg(&binary)
            .arg("uninstall")
            .arg("--pin-dir")
            .arg(pin_dir(&self.state.lab, &node.name))
            .output()
            .map_err(|error| Error::Invalid(format!("nsenter {}: {error}", binary.display())))?;
        if !output.status.success() {
            return Err(Error::Invalid(format!(
                "mesh-node uninstall on {} failed ({}): {}",
                node.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Stops every process of the mesh with SIGTERM, as a clean shutdown does, and waits
    /// until each is gone: the waypoint pods, then the node agents, then the CA. What a
    /// process writes as it exits (a profile-instrumented build's counters) is written then;
    /// `down` kills with SIGKILL.
    pub fn stop_mesh(&self) -> Result<()> {
        let term = nix::sys::signal::Signal::SIGTERM;
        for pod in self.state.pods.values().filter(|p| p.runs_waypoint()) {
            stop_cgroup(&pod.cgroup, term, &format!("waypoint pod {}", pod.key()))?;
        }
        for node in &self.state.nodes {
            self.stop_agent(&node.name, term)?;
        }
        let (node, _) = self.ca_node()?;
        stop_cgroup(&node_cgroup(&node, "ca"), term, "the mesh CA")
    }

    /// `GET path` on the node agent's admin port: the status code and body.
    pub fn agent_get(&self, node: &str, path: &str) -> Result<(u16, String)> {
        let node = self.node(node)?;
        http_get_in(
            &node.netns,
            SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT)),
            path,
        )
    }

    /// The node agent's Prometheus metrics (15020 `/stats/prometheus`).
    pub fn agent_metrics(&self, node: &str) -> Result<String> {
        self.node_page(self.node(node)?, METRICS_PORT, "/stats/prometheus")
    }

    /// `GET path` from `port` at `node`'s address, from inside its network namespace; an
    /// error unless it answers 200.
    fn node_page(&self, node: &Node, port: u16, path: &str) -> Result<String> {
        let (status, body) = http_get_in(&node.netns, SocketAddr::from((node.ip, port)), path)?;
        if status != 200 {
            return Err(Error::Invalid(format!(
                "{}: {path} answered {status}",
                node.name
            )));
        }
        Ok(body)
    }

    /// The heap bytes the node agent has in use (its `/memory` page).
    pub fn agent_heap_in_use(&self, node: &str) -> Result<u64> {
        let (status, body) = self.agent_get(node, "/memory")?;
        let memory: serde_json::Value = serde_json::from_str(&body).map_err(|error| {
            Error::Invalid(format!("{node}: /memory is not JSON ({error}): {body}"))
        })?;
        match (status, memory["in_use"].as_u64()) {
            (200, Some(in_use)) => Ok(in_use),
            _ => Err(Error::Invalid(format!(
                "{node}: /memory answered {status} without in_use: {body}"
            ))),
        }
    }

    /// What the node agent's processes use now: open files, resident memory, CPU time.
    pub fn agent_usage(&self, node: &str) -> Result<AgentUsage> {
        Ok(usage(&agent_cgroup(self.node(node)?)))
    }

    /// Starts a new peak resident memory for a node agent, as [`Lab::reset_peak_rss`] does
    /// for a pod.
    pub fn reset_agent_peak_rss(&self, node: &str) -> Result<()> {
        reset_peak_rss(&agent_cgroup(self.node(node)?))
    }

    /// The node agent's log.
    pub fn agent_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.join("agents").join(format!("{node}.log")))
            .unwrap_or_default()
    }

    /// A command that runs in the node's network namespace (not in any pod's cgroup), as a
    /// node-local process such as the kubelet or a host-network pod would.
    pub fn node_command(&self, node: &str, program: &str) -> Result<Command> {
        let node = self.node(node)?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &node.netns, program]);
        Ok(command)
    }
}

/// Polls `ready` until it holds, failing with the process's last log lines if it exits or
/// [`AGENT_READY_TIMEOUT`] passes.
fn wait_until(
    log_path: &Path,
    pid: u32,
    cgroup: &Path,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + AGENT_READY_TIMEOUT;
    loop {
        if ready() {
            return Ok(());
        }
        let alive =
            std::fs::metadata(format!("/proc/{pid}")).is_ok() && !cgroup::pids(cgroup).is_empty();
        if !alive || Instant::now() > deadline {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            return Err(Error::Invalid(format!(
                "{what} did not become ready ({}); last log lines ({}):\n{}",
                if alive { "timed out" } else { "it exited" },
                log_path.display(),
                log_excerpt(&log)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last 15 lines of a mesh process's log; when it ended with an error and a backtrace
/// (`RUST_BACKTRACE` set), the error's first lines instead, which say what went wrong.
fn log_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let start = match lines.iter().rposition(|l| l.starts_with("Error: ")) {
        Some(error) => error,
        None => lines.len().saturating_sub(15),
    };
    lines[start..]
        .iter()
        .take(15)
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// The log filter of the mesh's processes (agents, CA, waypoints): `MESH_SIM_AGENT_LOG`, or
/// `info`.
fn log_filter() -> String {
    std::env::var("MESH_SIM_AGENT_LOG").unwrap_or_else(|_| "info".into())
}

/// Whether something accepts TCP connections at `addr` inside a network namespace.
fn tcp_open_in(netns: &str, addr: SocketAddr) -> bool {
    in_netns(netns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map(|_| ())
    })
    .is_ok()
}

/// Runs `f` on a thread of its own inside a network namespace (setns changes only the
/// calling thread's namespace).
fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T> {
    let ns_path = format!("{}/{netns}", net::NETNS_DIR);
    let file =
        File::open(&ns_path).map_err(Error::io(format!("opening network namespace {ns_path}")))?;
    std::thread::spawn(move || -> io::Result<T> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        f()
    })
    .join()
    .map_err(|_| Error::Invalid("a network-namespace thread panicked".into()))?
    .map_err(Error::io(format!("in network namespace {netns}")))
}

/// Starts a new peak (`VmHWM`) for the processes of a cgroup at their current resident
/// memory, as `echo 5 > /proc/<pid>/clear_refs` does.
pub(crate) fn reset_peak_rss(cgroup: &Path) -> Result<()> {
    for pid in cgroup::pids(cgroup) {
        let path = format!("/proc/{pid}/clear_refs");
        std::fs::write(&path, "5").map_err(Error::io(format!("writing {path}")))?;
    }
    Ok(())
}

/// What the processes of a cgroup (not its children) use now, from `/proc`.
pub(crate) fn usage(cgroup: &Path) -> AgentUsage {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut usage = AgentUsage::default();
    for pid in cgroup::pids(cgroup) {
        usage.fds += std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        usage.rss_kb += kb("VmRSS:");
        usage.peak_rss_kb += kb("VmHWM:");
        // After the command name (which may hold spaces): utime is the 12th field, stime
        // the 13th.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks_used: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
            .sum();
        usage.cpu_seconds += ticks_used / ticks;
    }
    usage
}

/// A one-shot HTTP/1.1 GET from inside a network namespace.
pub fn http_get_in(netns: &str, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_owned();
    in_netns(netns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    })
}

/// Configures `command` to start in the node's network namespace and the given cgroup, in a
/// session of its own (it outlives the command that started it).
fn enter_node(command: &mut Command, netns: &str, cgroup: &Path) -> Result<()> {
    let netns_path = format!("{}/{netns}", net::NETNS_DIR);
    let netns: OwnedFd = File::open(&netns_path)
        .map_err(Error::io(format!("opening {netns_path}")))?
        .into();
    let procs_path = cgroup.join("cgroup.procs");
    let procs: OwnedFd = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(Error::io(format!("opening {}", procs_path.display())))?
        .into();
    // SAFETY: the closure only makes async-signal-safe system calls on fds opened before
    // fork; it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// `mesh-node` beside the running executable (or one folder up, for test binaries in
/// `target/*/deps`), unless `MESH_SIM_MESH_NODE` names it.
fn find_mesh_node() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MESH_SIM_MESH_NODE") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(Error::io("finding the running executable"))?;
    let mut dirs = exe.ancestors().skip(1).take(2);
    dirs.find_map(|dir| Some(dir.join("mesh-node")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            Error::Missing(format!(
                "the mesh-node binary is not beside {}; build it with `cargo build -p mesh-node` or set MESH_SIM_MESH_NODE",
                exe.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::log_excerpt;

    #[test]
    fn a_log_that_ends_in_an_error_and_a_backtrace_shows_the_error() {
        let mut log = String::from("INFO starting\nINFO listening\n");
        log.push_str("Error: binding 10.10.0.11:15012: Address in use (os error 98)\n\n");
        log.push_str("Caused by:\n    Address in use\n\nStack backtrace:\n");
        for frame in 0..40 {
            log.push_str(&format!("  {frame}: some::frame\n"));
        }
        let excerpt = log_excerpt(&log);
        assert!(
            excerpt.starts_with("Error: binding 10.10.0.11:15012: Address in use"),
            "{excerpt}"
        );
        assert_eq!(excerpt.lines().count(), 15);
    }

    #[test]
    fn otherwise_the_last_fifteen_lines() {
        let log: String = (0..40).map(|i| format!("line {i}\n")).collect();
        let excerpt = log_excerpt(&log);
        assert!(excerpt.starts_with("line 25\n"), "{excerpt}");
        assert!(excerpt.ends_with("line 39"), "{excerpt}");
    }
}
