//! A simulated Kubernetes cluster on one machine, for the demo, the end-to-end tests and the
//! benchmarks.
//!
//! A lab is a set of network namespaces: one holding a bridge (the "network"), one per node
//! (routing between nodes, kube-proxy-like ClusterIP load balancing with nftables), and one per
//! pod (veth to its node, its own cgroup v2, its own `/etc/hosts` for service names). Every
//! container runs the repository's `sample-app` binary, but the waypoint's: for a Gateway of
//! class `istio-waypoint` the lab deploys a `mesh-waypoint` pod, as istiod does. Everything a
//! lab creates is named after it (`msim-<lab>-…`), so `down` can remove it all even when the
//! state file is lost.
//!
//! The lab's state lives in `/run/mesh-sim/<lab>/`: `state.json` (nodes, pods, services),
//! `config/` (every applied object plus the Pods, Services and EndpointSlices the cluster
//! made, one YAML file each, for config consumers such as the node agent), and per-pod logs.

mod agent;
mod cgroup;
mod error;
mod kinds;
mod lab;
mod net;
mod process;
mod render;
mod state;
mod waypoint;
mod workload;

pub use agent::{
    ADMIN_PORT, AgentUsage, BPFFS, CA_METRICS_PORT, CA_PORT, METRICS_PORT, MeshOptions,
    OUTBOUND_PORT, READINESS_PORT, http_get_in, pin_dir,
};
pub use error::{Error, Result};
pub use lab::{Applied, Lab, LabOptions, STATE_ROOT};
pub use state::{
    Container, ContainerPort, Node, Pod, PodPhase, Program, Service, ServicePort, State,
    TargetPort, object_key,
};
