//! The lab's persisted state: nodes, pods, services and the objects applied, in
//! `state.json`. One writer at a time (the lab holds an exclusive lock while it changes it).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub lab: String,
    /// The `sample-app` binary every container runs.
    pub sample_app: PathBuf,
    pub nodes: Vec<Node>,
    /// Keyed by `namespace/name`.
    pub pods: BTreeMap<String, Pod>,
    /// Keyed by `namespace/name`.
    pub services: BTreeMap<String, Service>,
    /// Every object applied, keyed by [`object_key`], with namespaces defaulted and
    /// `spec.clusterIP` filled in for Services.
    pub objects: BTreeMap<String, Value>,
    /// Round-robin scheduling counter.
    pub scheduled: u64,
    /// The node agents, when the lab runs the mesh (`sim up --mesh`).
    #[serde(default)]
    pub mesh: Option<crate::agent::MeshOptions>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// The Kubernetes node name, e.g. `node1`.
    pub name: String,
    /// 1-based; picks the node's IP and pod CIDR.
    pub index: u8,
    pub ip: Ipv4Addr,
    pub netns: String,
    /// The cgroup holding this node's pods (`…/<node>/pods`).
    pub pods_cgroup: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    /// Every container port accepts connections.
    Running,
    /// Started, but a port did not accept connections in time.
    NotReady,
    /// A container process is gone.
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// `metadata.uid`; the pod's cgroup is `<node pods cgroup>/pod<uid>`.
    pub uid: String,
    /// The Deployment that owns it, if any.
    pub owner: Option<String>,
    /// Hash of the pod template: a changed template replaces the pod.
    pub template_hash: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub containers: Vec<Container>,
    pub netns: String,
    pub cgroup: PathBuf,
    /// The node-side veth.
    pub host_veth: String,
    pub phase: PodPhase,
}

impl Pod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn is_ready(&self) -> bool {
        self.phase == PodPhase::Running
    }

    /// Whether a container runs the waypoint (the pod then has a CA credential of its own).
    pub fn runs_waypoint(&self) -> bool {
        self.containers
            .iter()
            .any(|c| c.program == Program::Waypoint)
    }

    /// Resolves a Service's targetPort (a number or a container port name) on this pod.
    pub fn resolve_port(&self, target: &TargetPort) -> Option<u16> {
        match target {
            TargetPort::Number(port) => Some(*port),
            TargetPort::Name(name) => self
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.port),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    /// The binary the lab runs for it (from the image).
    #[serde(default)]
    pub program: Program,
    /// The sample-app behaviour (`app` label, else the container name).
    pub app: String,
    pub version: String,
    pub ports: Vec<ContainerPort>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// What a container runs: the lab has one binary per kind of image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Program {
    /// `sample-app`, behaving as the pod's `app` label says (any image but the waypoint's).
    #[default]
    SampleApp,
    /// `mesh-waypoint` (image `mesh-waypoint`), with the mesh's CA settings and a credential
    /// of the pod's own.
    Waypoint,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `None` for a headless Service (`clusterIP: None`): its name resolves to the pods.
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    pub selector: BTreeMap<String, String>,
}

impl Service {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.namespace
            && !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
    }

    /// `name.namespace.svc.cluster.local`
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target: TargetPort,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// The key objects are stored under: `group/Kind/namespace/name` (namespace empty for
/// cluster-scoped kinds).
pub fn object_key(group: &str, kind: &str, namespace: Option<&str>, name: &str) -> String {
    format!("{group}/{kind}/{}/{name}", namespace.unwrap_or(""))
}
