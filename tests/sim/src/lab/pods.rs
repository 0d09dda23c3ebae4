//! A lab's pods: scheduling, addresses, network and cgroup, starting their containers inside
//! them (`sample-app`, or `mesh-waypoint` with a CA credential of the pod's own), readiness,
//! logs, resource usage and removal.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::waypoints::find_waypoint;
use super::{Applied, Lab, READY_TIMEOUT, netns_name, write_if_changed};
use crate::agent::AgentUsage;
use crate::error::{Error, Result};
use crate::process::{PodContext, enter_pod, log_to};
use crate::state::{Node, Pod, PodPhase, Program};
use crate::workload::{self, PodTemplate};
use crate::{cgroup, net, render};

impl Lab {
    pub(super) fn pod_dir(&self, pod: &Pod) -> PathBuf {
        self.dir
            .join("pods")
            .join(format!("{}_{}", pod.namespace, pod.name))
    }

    pub(super) fn start_pod(&mut self, template: &PodTemplate) -> Result<Pod> {
        let node = self.state.nodes
            [(self.state.scheduled % self.state.nodes.len() as u64) as usize]
            .clone();
        self.state.scheduled += 1;
        let ip = self.allocate_pod_ip(&node)?;
        let name = match &template.owner {
            Some(owner) => format!(
                "{owner}-{}-{}",
                template.template_hash,
                workload::pod_suffix()
            ),
            None => template.name.clone(),
        };
        let uid = workload::pod_uid();
        let pod = Pod {
            netns: netns_name(&self.state.lab, &format!("{}.{name}", template.namespace)),
            // Named as kubelet's cgroupfs driver names pod cgroups, so a node agent finds a
            // pod's cgroup from the Pod's metadata.uid the same way on a real node.
            cgroup: node.pods_cgroup.join(format!("pod{uid}")),
            uid,
            host_veth: format!("pod{}", ip.octets()[3]),
            namespace: template.namespace.clone(),
            name,
            owner: template.owner.clone(),
            template_hash: template.template_hash.clone(),
            node: node.name.clone(),
            ip,
            labels: template.labels.clone(),
            service_account: template.service_account.clone(),
            containers: template.containers.clone(),
            phase: PodPhase::NotReady,
        };
        let started = self.create_pod(&node, &pod);
        if started.is_err() {
            let _ = self.remove_pod(&pod);
        }
        started.map(|()| pod)
    }

    pub(super) fn create_pod(&self, node: &Node, pod: &Pod) -> Result<()> {
        let dir = self.pod_dir(pod);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        net::create_pod_network(&node.netns, &pod.netns, &pod.host_veth, pod.ip)?;
        cgroup::create(&pod.cgroup)?;
        write_if_changed(&dir.join("hosts"), &render::hosts_file(&self.state, pod))?;
        write_if_changed(&dir.join("resolv.conf"), &render::resolv_conf(pod))?;
        // A waypoint talks to the CA itself, with a credential only its process reads.
        let waypoint = if pod.runs_waypoint() {
            let binary = find_waypoint(self.waypoint_binary())?;
            let credential = dir.join("ca.credential");
            self.grant_pod_credential(pod, &credential)?;
            Some((binary, self.ca_client_env(&credential)?))
        } else {
            None
        };
        for container in &pod.containers {
            let log_path = dir.join(format!("{}.log", container.name));
            let mut command = match (&container.program, &waypoint) {
                (Program::Waypoint, Some((binary, _))) => {
                    let mut command = Command::new(binary);
                    command.args(&container.args);
                    command
                }
                _ => {
                    let mut command = Command::new(&self.state.sample_app);
                    command
                        .args(["--app", &container.app, "--version", &container.version])
                        .args(["--pod", &pod.name, "--namespace", &pod.namespace]);
                    for port in &container.ports {
                        command.args(["--port", &port.port.to_string()]);
                    }
                    if !container.args.is_empty() {
                        command.arg("--").args(&container.args);
                    }
                    command
                }
            };
            command
                .envs(container.env.iter().map(|(k, v)| (k, v)))
                .env("POD_NAME", &pod.name)
                .env("POD_NAMESPACE", &pod.namespace)
                .env("POD_IP", pod.ip.to_string())
                .env("NODE_NAME", &pod.node)
                .env("SERVICE_ACCOUNT", &pod.service_account)
                .stdin(Stdio::null());
            if let (Program::Waypoint, Some((_, env))) = (&container.program, &waypoint) {
                command.envs(env.iter().map(|(k, v)| (k, v)));
            }
            log_to(&mut command, &log_path)?;
            self.enter(&mut command, pod, true)?;
            let mut child = command.spawn().map_err(Error::io(format!(
                "starting {} for pod {}",
                command.get_program().to_string_lossy(),
                pod.key()
            )))?;
            // Reap it whenever it exits, so no zombie outlives it in a long-running caller.
            std::thread::spawn(move || child.wait());
        }
        Ok(())
    }

    pub(super) fn enter(&self, command: &mut Command, pod: &Pod, detach: bool) -> Result<()> {
        let dir = self.pod_dir(pod);
        enter_pod(
            command,
            &PodContext {
                netns: &pod.netns,
                cgroup: &pod.cgroup,
                hosts: &dir.join("hosts"),
                resolv: &dir.join("resolv.conf"),
                hostname: render::hostname(&pod.name),
                detach,
            },
        )
    }

    pub(super) fn remove_pod(&self, pod: &Pod) -> Result<()> {
        cgroup::remove_tree(&pod.cgroup)?;
        if pod.runs_waypoint() {
            self.revoke_pod_credential(pod)?;
        }
        let node_netns = self
            .state
            .nodes
            .iter()
            .find(|n| n.name == pod.node)
            .map(|n| n.netns.clone())
            .unwrap_or_default();
        net::delete_pod_network(&node_netns, &pod.netns, &pod.host_veth)?;
        let dir = self.pod_dir(pod);
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }

    pub(super) fn allocate_pod_ip(&self, node: &Node) -> Result<Ipv4Addr> {
        let used: BTreeSet<Ipv4Addr> = self
            .state
            .pods
            .values()
            .filter(|p| p.node == node.name)
            .map(|p| p.ip)
            .collect();
        (2..=254)
            .map(|host| Ipv4Addr::new(10, 244, node.index, host))
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| Error::Invalid(format!("node {} has no free pod address", node.name)))
    }

    /// Waits until every port of the new pods accepts connections, or the deadline. A
    /// waypoint cannot serve before it has a certificate: while the lab runs no mesh (no CA)
    /// it is left NotReady at once, and `start_mesh` waits for it.
    pub(crate) fn wait_ready(&mut self, started: &[String], applied: &mut Applied) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for key in started {
            let pod = &self.state.pods[key];
            if pod.runs_waypoint() && self.state.mesh.is_none() {
                let pod = self.state.pods.get_mut(key).expect("pod was just started");
                pod.phase = PodPhase::NotReady;
                continue;
            }
            let mut pending = tcp_ports(pod);
            let phase = loop {
                if pod.containers.is_empty() || cgroup::pids(&pod.cgroup).is_empty() {
                    break PodPhase::Failed;
                }
                pending.retain(|port| !accepts(pod, *port));
                if pending.is_empty() {
                    break PodPhase::Running;
                }
                if Instant::now() > deadline {
                    break PodPhase::NotReady;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if phase != PodPhase::Running {
                let reason = match phase {
                    PodPhase::Failed => "its process exited".to_owned(),
                    _ => format!(
                        "ports {pending:?} did not accept connections within {READY_TIMEOUT:?}"
                    ),
                };
                applied.warnings.push(format!(
                    "pod {key} is not ready: {reason}\n{}",
                    self.logs_tail(pod, 10)
                ));
            }
            let pod = self.state.pods.get_mut(key).expect("pod was just started");
            pod.phase = phase;
        }
    }

    /// Marks pods whose processes are gone as failed (a pod is not restarted), and NotReady
    /// pods whose ports all accept connections now as running (a readiness probe).
    pub fn refresh_phases(&mut self) -> Result<()> {
        let mut changed = false;
        for pod in self.state.pods.values_mut() {
            if pod.phase != PodPhase::Failed && cgroup::pids(&pod.cgroup).is_empty() {
                pod.phase = PodPhase::Failed;
                changed = true;
            } else if pod.phase == PodPhase::NotReady
                && tcp_ports(pod).into_iter().all(|port| accepts(pod, port))
            {
                pod.phase = PodPhase::Running;
                changed = true;
            }
        }
        if changed {
            self.refresh_derived()?;
            self.save()?;
        }
        Ok(())
    }

    /// What a pod's processes use now: open files, resident memory (now and peak), CPU time.
    pub fn pod_usage(&self, pod: &Pod) -> AgentUsage {
        crate::agent::usage(&pod.cgroup)
    }

    /// Starts a new peak (`VmHWM`) for a pod's processes at their current resident memory.
    pub fn reset_peak_rss(&self, pod: &Pod) -> Result<()> {
        crate::agent::reset_peak_rss(&pod.cgroup)
    }

    /// Every container log of a pod, each headed by the container name when there are several.
    pub fn logs(&self, pod: &Pod) -> Result<String> {
        let mut out = String::new();
        for container in &pod.containers {
            let path = self.pod_dir(pod).join(format!("{}.log", container.name));
            let text = std::fs::read_to_string(&path)
                .map_err(Error::io(format!("reading {}", path.display())))?;
            if pod.containers.len() > 1 {
                out.push_str(&format!("==> {} <==\n", container.name));
            }
            out.push_str(&text);
        }
        Ok(out)
    }

    pub(super) fn logs_tail(&self, pod: &Pod, lines: usize) -> String {
        let text = self.logs(pod).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The TCP ports a pod's containers declare: it is ready when all accept connections.
fn tcp_ports(pod: &Pod) -> Vec<u16> {
    pod.containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter(|p| p.protocol == "TCP")
        .map(|p| p.port)
        .collect()
}

/// Whether the pod accepts connections on `port` (checked from inside it).
fn accepts(pod: &Pod, port: u16) -> bool {
    let addr = SocketAddr::from((pod.ip, port));
    net::can_connect_in(&pod.netns, addr, Duration::from_millis(200)).unwrap_or(false)
}
