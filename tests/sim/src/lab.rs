//! A lab: bringing it up, applying and deleting manifests, reconciling pods and services,
//! running commands in pods, and tearing everything down.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mesh_core::manifest;
use nix::fcntl::{Flock, FlockArg};
use serde_json::{Value, json};

mod admission;
mod pods;
mod waypoints;

use crate::error::{Error, Result};
use crate::kinds::Kinds;
use crate::render::SERVICE_CIDR;
use crate::state::{Node, Pod, Service, State, object_key};
use crate::workload::{self, PodTemplate};
use crate::{cgroup, net, render};
use admission::{describe, display, namespace_for, validate_files};

/// Where labs keep their state.
pub const STATE_ROOT: &str = "/run/mesh-sim";
/// How long new pods get to accept connections on their ports.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_NODES: u8 = 16;

#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Lower-case letters and digits, at most 12: every name the lab creates starts with
    /// `msim-<name>-`.
    pub name: String,
    pub nodes: u8,
    /// The `sample-app` binary; found beside the running executable when `None`.
    pub sample_app: Option<PathBuf>,
}

/// What an apply or delete did, for the user.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    /// `Kind ns/name created|configured|unchanged|deleted`, in order.
    pub objects: Vec<String>,
    pub pods_started: Vec<String>,
    pub pods_removed: Vec<String>,
    /// Pods that did not become ready, with the reason and their last log lines.
    pub warnings: Vec<String>,
}

/// An open lab, holding its lock until dropped.
pub struct Lab {
    pub(crate) dir: PathBuf,
    pub(crate) state: State,
    _lock: Flock<File>,
}

impl Lab {
    pub fn check_name(name: &str) -> Result<()> {
        let valid = !name.is_empty()
            && name.len() <= 12
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "lab name {name:?} must be 1-12 lower-case letters or digits"
            )))
        }
    }

    pub fn state_dir(name: &str) -> PathBuf {
        Path::new(STATE_ROOT).join(name)
    }

    /// Creates the lab's nodes and network, then applies `files`. On failure everything
    /// created is removed again.
    pub fn up(options: &LabOptions, files: &[PathBuf]) -> Result<(Lab, Applied)> {
        Self::check_name(&options.name)?;
        require_root()?;
        if !(1..=MAX_NODES).contains(&options.nodes) {
            return Err(Error::Invalid(format!(
                "--nodes {} is out of range: 1 to {MAX_NODES}",
                options.nodes
            )));
        }
        let sample_app = match &options.sample_app {
            Some(path) => path.clone(),
            None => find_sample_app()?,
        };
        // Validate the manifests before building anything: a bad file leaves nothing behind.
        let preview = State {
            lab: options.name.clone(),
            objects: default_objects(),
            ..State::default()
        };
        validate_files(&preview, files, "default")?;

        let dir = Self::state_dir(&options.name);
        let network = netns_name(&options.name, "net");
        if dir.join("state.json").exists() || net::netns_exists(&network) {
            return Err(Error::AlreadyUp(options.name.clone()));
        }
        let built = Self::build(options, &dir, sample_app).and_then(|mut lab| {
            let applied = lab.apply(files, "default")?;
            Ok((lab, applied))
        });
        if built.is_err() {
            let _ = Self::down(&options.name);
        }
        built
    }

    fn build(options: &LabOptions, dir: &Path, sample_app: PathBuf) -> Result<Lab> {
        std::fs::create_dir_all(dir.join("config"))
            .map_err(Error::io(format!("creating {}", dir.display())))?;
        let lock = lock(dir)?;
        let network = netns_name(&options.name, "net");
        net::create_network(&network)?;
        let lab_cgroup = cgroup::lab_dir(&options.name)?;
        let mut nodes = Vec::new();
        for index in 1..=options.nodes {
            let name = format!("node{index}");
            let node = Node {
                netns: netns_name(&options.name, &name),
                ip: Ipv4Addr::new(10, 10, 0, 10 + index),
                pods_cgroup: lab_cgroup.join(&name).join("pods"),
                name,
                index,
            };
            net::create_node(&network, &node.netns, index, node.ip)?;
            // A route for the service range, as a real node's default route gives: a node-local
            // process (the node agent) connecting to a ClusterIP needs one before the output
            // hook's DNAT picks the endpoint.
            net::ip_in(
                &node.netns,
                &format!("route replace {SERVICE_CIDR} dev eth0"),
            )?;
            cgroup::create(&node.pods_cgroup)?;
            nodes.push(node);
        }
        for node in &nodes {
            for peer in nodes.iter().filter(|n| n.index != node.index) {
                net::route_pod_cidr(&node.netns, &pod_cidr(peer.index), peer.ip)?;
            }
        }
        let lab = Lab {
            dir: dir.to_owned(),
            state: State {
                lab: options.name.clone(),
                sample_app,
                nodes,
                objects: default_objects(),
                ..State::default()
            },
            _lock: lock,
        };
        lab.save()?;
        Ok(lab)
    }

    /// Opens a lab that is up, waiting for any other writer to finish.
    pub fn open(name: &str) -> Result<Lab> {
        Self::check_name(name)?;
        let dir = Self::state_dir(name);
        let path = dir.join("state.json");
        if !path.exists() {
            return Err(Error::NotUp {
                lab: name.to_owned(),
                state: path,
            });
        }
        let lock = lock(&dir)?;
        let text = std::fs::read_to_string(&path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        let state = serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!(
                "{} is damaged ({e}); remove the lab with `sim down`",
                path.display()
            ))
        })?;
        Ok(Lab {
            dir,
            state,
            _lock: lock,
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder with one YAML file per object, for config consumers.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// Applies manifests: all are checked first and nothing changes if any is bad.
    pub fn apply(&mut self, files: &[PathBuf], default_namespace: &str) -> Result<Applied> {
        let incoming = validate_files(&self.state, files, default_namespace)?;
        if incoming
            .iter()
            .any(|(_, v)| crate::waypoint::is_waypoint_gateway(v))
        {
            // Refused before anything changes: the waypoint's pod could not start.
            waypoints::find_waypoint(self.waypoint_binary())?;
        }
        let mut applied = Applied::default();
        for (key, value) in incoming {
            let what = describe(&value);
            let verb = match self.state.objects.insert(key, value.clone()) {
                None => "created",
                Some(old) if old == value => "unchanged",
                Some(_) => "configured",
            };
            applied.objects.push(format!("{what} {verb}"));
        }
        self.reconcile(&mut applied)?;
        Ok(applied)
    }

    /// Deletes the objects named in manifests (deleting a Namespace deletes what is in it).
    pub fn delete(&mut self, files: &[PathBuf], default_namespace: &str) -> Result<Applied> {
        let loaded = manifest::load_paths(files);
        let mut errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        let kinds = self.kinds(std::iter::empty());
        let mut keys = Vec::new();
        for object in &loaded.objects {
            match kinds.scope(object.group(), &object.kind, &object.api_version) {
                Ok(scope) => {
                    let ns = namespace_for(scope, object, default_namespace);
                    let key = object_key(object.group(), &object.kind, ns.as_deref(), &object.name);
                    if self.state.objects.contains_key(&key) {
                        keys.push(key);
                    } else {
                        errors.push(format!(
                            "{}: {} not found",
                            object.origin,
                            display(&object.kind, ns.as_deref(), &object.name)
                        ));
                    }
                }
                Err(message) => errors.push(format!("{}: {message}", object.origin)),
            }
        }
        if !errors.is_empty() {
            return Err(Error::Manifests(errors));
        }
        let mut applied = Applied::default();
        for key in keys {
            let Some(value) = self.state.objects.remove(&key) else {
                continue;
            };
            applied
                .objects
                .push(format!("{} deleted", describe(&value)));
            if value["kind"] == "Namespace" && value["apiVersion"] == "v1" {
                let ns = value["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let inside: Vec<String> = self
                    .state
                    .objects
                    .iter()
                    .filter(|(_, v)| {
                        v.pointer("/metadata/namespace").and_then(Value::as_str) == Some(&ns)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in inside {
                    if let Some(value) = self.state.objects.remove(&key) {
                        applied
                            .objects
                            .push(format!("{} deleted", describe(&value)));
                    }
                }
            }
        }
        self.reconcile(&mut applied)?;
        Ok(applied)
    }

    /// Changes labels live, as `kubectl label`: `key=value` sets, `key-` removes. `target`
    /// is `ns/NAME`, `pod/[NS/]NAME` or `KIND/[NS/]NAME` for any stored kind (`svc`, `sa`,
    /// `deploy` short names work). Pods keep running; services, endpoints, hosts files and
    /// the config folder follow.
    pub fn label(&mut self, target: &str, changes: &[String]) -> Result<String> {
        let (kind, rest) = target.split_once('/').ok_or_else(|| {
            Error::Invalid(format!(
                "{target:?}: name a KIND/NAME, e.g. ns/default or pod/default/curl"
            ))
        })?;
        let mut edits = Vec::new();
        for change in changes {
            let edit = match change.strip_suffix('-') {
                Some(key) if !change.contains('=') => (key.to_owned(), None),
                _ => match change.split_once('=') {
                    Some((key, value)) if !key.is_empty() => {
                        (key.to_owned(), Some(value.to_owned()))
                    }
                    _ => {
                        return Err(Error::Invalid(format!(
                            "label change {change:?} must be key=value (set) or key- (remove)"
                        )));
                    }
                },
            };
            edits.push(edit);
        }
        let apply = |labels: &mut BTreeMap<String, String>| {
            for (key, value) in &edits {
                match value {
                    Some(value) => labels.insert(key.clone(), value.clone()),
                    None => labels.remove(key),
                };
            }
        };
        let described = if matches!(kind, "pod" | "pods" | "po") {
            let key = self.pod(rest)?.key();
            let pod = self.state.pods.get_mut(&key).expect("found above");
            apply(&mut pod.labels);
            format!("pod/{key} labeled")
        } else {
            let (group, kind, scoped) = match kind {
                "ns" | "namespace" | "namespaces" => ("", "Namespace", false),
                "svc" | "service" | "services" => ("", "Service", true),
                "sa" | "serviceaccount" => ("", "ServiceAccount", true),
                "deploy" | "deployment" => ("apps", "Deployment", true),
                other => {
                    return Err(Error::Invalid(format!(
                        "cannot label {other:?}: use ns, pod, svc, sa or deploy"
                    )));
                }
            };
            let (ns, name) = match (scoped, rest.split_once('/')) {
                (false, _) => (None, rest),
                (true, Some((ns, name))) => (Some(ns), name),
                (true, None) => (Some("default"), rest),
            };
            let key = object_key(group, kind, ns, name);
            let object = self.state.objects.get_mut(&key).ok_or_else(|| {
                Error::Invalid(format!(
                    "{} not found in lab {}",
                    display(kind, ns, name),
                    self.state.lab
                ))
            })?;
            let mut labels: BTreeMap<String, String> = object
                .pointer("/metadata/labels")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default();
            apply(&mut labels);
            object["metadata"]["labels"] = json!(labels);
            format!("{} labeled", display(kind, ns, name))
        };
        let mut applied = Applied::default();
        self.reconcile(&mut applied)?;
        Ok(described)
    }

    fn kinds<'a>(&'a self, extra: impl IntoIterator<Item = &'a Value>) -> Kinds {
        let crds = self
            .state
            .objects
            .values()
            .filter(|v| v["kind"] == "CustomResourceDefinition");
        Kinds::new(crds.chain(extra))
    }

    /// Makes pods, services, routing rules, hosts files and the config folder match the
    /// stored objects.
    fn reconcile(&mut self, applied: &mut Applied) -> Result<()> {
        // Controllers first: what they derive is reconciled like any applied object.
        waypoints::reconcile(&mut self.state.objects, applied);
        self.reconcile_services()?;
        let templates = self.templates();
        // Pods whose owner is gone, whose template changed, or that are surplus.
        let mut keep: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for pod in self.state.pods.values() {
            let key = (
                pod.namespace.clone(),
                pod.owner.clone().unwrap_or_else(|| pod.name.clone()),
            );
            keep.entry(key).or_default().push(pod.key());
        }
        let mut remove = Vec::new();
        let mut create = Vec::new();
        let mut claimed = BTreeSet::new();
        for template in &templates {
            let key = (template.namespace.clone(), template.name.clone());
            let current: Vec<String> = keep
                .get(&key)
                .into_iter()
                .flatten()
                .filter(|k| {
                    let pod = &self.state.pods[*k];
                    pod.template_hash == template.template_hash && pod.owner == template.owner
                })
                .cloned()
                .collect();
            let wanted = template.replicas as usize;
            claimed.extend(current.iter().take(wanted).cloned());
            for _ in current.len()..wanted {
                create.push(template.clone());
            }
        }
        for key in self.state.pods.keys() {
            if !claimed.contains(key) {
                remove.push(key.clone());
            }
        }
        for key in remove {
            if let Some(pod) = self.state.pods.remove(&key) {
                self.remove_pod(&pod)?;
                applied.pods_removed.push(key);
            }
        }
        let mut started = Vec::new();
        for template in &create {
            let pod = self.start_pod(template)?;
            started.push(pod.key());
            self.state.pods.insert(pod.key(), pod);
        }
        if !started.is_empty() {
            // The new pods exist for config consumers (not ready yet) while they start: a
            // waypoint's certificate request needs its Pod in the CA's config.
            self.refresh_derived()?;
        }
        // New pods' hosts files were written before they started; now refresh everyone's.
        self.wait_ready(&started, applied);
        applied.pods_started.extend(started);
        self.refresh_derived()?;
        self.save()
    }

    fn templates(&self) -> Vec<PodTemplate> {
        self.state
            .objects
            .values()
            .filter(|v| {
                (v["apiVersion"] == "apps/v1" && v["kind"] == "Deployment")
                    || (v["apiVersion"] == "v1" && v["kind"] == "Pod")
            })
            .filter_map(|v| {
                let ns = v.pointer("/metadata/namespace").and_then(Value::as_str)?;
                workload::pod_template(ns, v).ok()
            })
            .collect()
    }

    fn reconcile_services(&mut self) -> Result<()> {
        let specs: Vec<(String, workload::ServiceSpec)> = self
            .state
            .objects
            .iter()
            .filter(|(_, v)| v["apiVersion"] == "v1" && v["kind"] == "Service")
            .filter_map(|(key, v)| {
                let ns = v.pointer("/metadata/namespace").and_then(Value::as_str)?;
                workload::service_spec(ns, v).ok().map(|s| (key.clone(), s))
            })
            .collect();
        let mut services = BTreeMap::new();
        let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
        // Keep addresses already given out.
        for (_, spec) in &specs {
            let key = format!("{}/{}", spec.namespace, spec.name);
            if let Some(ip) = self.state.services.get(&key).and_then(|s| s.cluster_ip) {
                used.insert(ip);
            }
        }
        for (object_key, spec) in specs {
            let key = format!("{}/{}", spec.namespace, spec.name);
            let previous = self.state.services.get(&key).and_then(|s| s.cluster_ip);
            let cluster_ip = if spec.external_name || spec.requested_ip.as_deref() == Some("None") {
                None
            } else if let Some(ip) = previous {
                Some(ip)
            } else {
                let requested = spec.requested_ip.as_deref().and_then(|ip| ip.parse().ok());
                let ip = match requested {
                    Some(ip) if !used.contains(&ip) => ip,
                    _ => allocate_cluster_ip(&used)?,
                };
                used.insert(ip);
                Some(ip)
            };
            if let (Some(ip), Some(object)) = (cluster_ip, self.state.objects.get_mut(&object_key))
            {
                object["spec"]["clusterIP"] = json!(ip.to_string());
                object["spec"]["clusterIPs"] = json!([ip.to_string()]);
            }
            services.insert(
                key,
                Service {
                    namespace: spec.namespace,
                    name: spec.name,
                    cluster_ip,
                    ports: spec.ports,
                    selector: spec.selector,
                },
            );
        }
        self.state.services = services;
        Ok(())
    }

    /// Rewrites what derives from pods and services: hosts files, routing rules, config.
    pub(crate) fn refresh_derived(&self) -> Result<()> {
        for pod in self.state.pods.values() {
            write_if_changed(
                &self.pod_dir(pod).join("hosts"),
                &render::hosts_file(&self.state, pod),
            )?;
        }
        let ruleset = render::nft_ruleset(&self.state);
        for node in &self.state.nodes {
            net::apply_nft(&node.netns, &ruleset)?;
        }
        self.write_config()
    }

    /// One YAML file per object in `config/`, written only when changed, stale ones removed.
    fn write_config(&self) -> Result<()> {
        let mut files: BTreeMap<String, Value> = BTreeMap::new();
        for value in self.state.objects.values() {
            files.insert(config_file_name(value), value.clone());
        }
        for pod in self.state.pods.values() {
            let template = self.state.objects.values().find(|v| {
                v["kind"] == "Deployment"
                    && v.pointer("/metadata/namespace").and_then(Value::as_str)
                        == Some(&pod.namespace)
                    && v.pointer("/metadata/name").and_then(Value::as_str) == pod.owner.as_deref()
            });
            let host_ip = self
                .state
                .nodes
                .iter()
                .find(|n| n.name == pod.node)
                .map(|n| n.ip);
            let object = render::pod_object(
                pod,
                host_ip,
                template.and_then(|d| d.pointer("/spec/template")),
            );
            files.insert(config_file_name(&object), object);
        }
        for service in self.state.services.values() {
            let slice = render::endpoint_slice(&self.state, service);
            files.insert(config_file_name(&slice), slice);
        }
        let config = self.config_dir();
        for (name, value) in &files {
            let text = serde_yaml_ng::to_string(value)
                .map_err(|e| Error::Invalid(format!("serialising {name}: {e}")))?;
            let path = config.join(name);
            if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
                continue;
            }
            // Renamed into place, so a watcher never reads half a file.
            write_atomically(&path, &text)?;
        }
        let entries = std::fs::read_dir(&config)
            .map_err(Error::io(format!("reading {}", config.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && !files.contains_key(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    pub(crate) fn save(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.state)
            .map_err(|e| Error::Invalid(format!("serialising the lab state: {e}")))?;
        write_atomically(&self.dir.join("state.json"), &text)
    }

    /// Finds a pod by `ns/name`, or by `name` in the default namespace; a Deployment name
    /// (or any unique prefix) picks its first pod, as `kubectl exec deploy/NAME` does.
    pub fn pod(&self, reference: &str) -> Result<&Pod> {
        let (ns, name) = reference.split_once('/').unwrap_or(("default", reference));
        if let Some(pod) = self.state.pods.get(&format!("{ns}/{name}")) {
            return Ok(pod);
        }
        let mut matches = self.state.pods.values().filter(|p| {
            p.namespace == ns && (p.owner.as_deref() == Some(name) || p.name.starts_with(name))
        });
        match (matches.next(), matches.next()) {
            (Some(pod), None) => Ok(pod),
            (Some(_), Some(_)) => Err(Error::Invalid(format!(
                "{reference} matches several pods; name one exactly (see `sim get pods`)"
            ))),
            _ => Err(Error::Invalid(format!(
                "no pod {ns}/{name} in lab {}; see `sim get pods`",
                self.state.lab
            ))),
        }
    }

    /// A command that runs inside a pod (its network, cgroup, hosts file and hostname).
    pub fn exec_command(&self, pod: &Pod, program: &str, args: &[String]) -> Result<Command> {
        let mut command = Command::new(program);
        command.args(args);
        self.enter(&mut command, pod, false)?;
        Ok(command)
    }

    pub fn node(&self, name: &str) -> Result<&Node> {
        self.state
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::Invalid(format!("no node {name} in lab {}", self.state.lab)))
    }

    /// Removes everything a lab created: processes (by cgroup), namespaces (by name), cgroups
    /// and the state folder. Works without the state file and when nothing is left.
    /// Returns what it removed.
    pub fn down(name: &str) -> Result<Vec<String>> {
        Self::check_name(name)?;
        require_root()?;
        let mut removed = Vec::new();
        let lab_cgroup = cgroup::lab_dir(name)?;
        if lab_cgroup.exists() {
            cgroup::remove_tree(&lab_cgroup)?;
            removed.push(format!("cgroup {}", lab_cgroup.display()));
        }
        // The node agents died with the cgroup; their pinned eBPF goes now.
        removed.extend(crate::agent::remove_pins(name)?);
        let prefix = netns_name(name, "");
        let mut namespaces: Vec<String> = net::list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        // Pods first, then nodes, then the network: each veth goes with the side it is in.
        namespaces.sort_by_key(|n| (n.ends_with("-net"), n.contains("-node")));
        for netns in namespaces {
            net::delete_netns(&netns)?;
            removed.push(format!("netns {netns}"));
        }
        let dir = Self::state_dir(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(Error::io(format!("removing {}", dir.display())))?;
            removed.push(format!("state {}", dir.display()));
        }
        Ok(removed)
    }

    /// Names of labs with state or namespaces on this machine.
    pub fn list() -> Vec<String> {
        let mut labs: BTreeSet<String> = std::fs::read_dir(STATE_ROOT)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        let pins = std::fs::read_dir(crate::agent::BPFFS)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for netns in net::list_netns().into_iter().chain(pins) {
            if let Some(rest) = netns.strip_prefix("msim-")
                && let Some((lab, _)) = rest.split_once('-')
            {
                labs.insert(lab.to_owned());
            }
        }
        labs.into_iter().collect()
    }
}

fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

fn lock(dir: &Path) -> Result<Flock<File>> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(Error::io(format!("opening {}", path.display())))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::Io {
        what: format!("locking {}", path.display()),
        source: errno.into(),
    })
}

/// `msim-<lab>-<suffix>`
fn netns_name(lab: &str, suffix: &str) -> String {
    format!("msim-{lab}-{suffix}")
}

fn pod_cidr(node_index: u8) -> String {
    format!("10.244.{node_index}.0/24")
}

fn allocate_cluster_ip(used: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr> {
    (10u32..65_534)
        .map(|n| Ipv4Addr::new(10, 96, (n >> 8) as u8, (n & 0xff) as u8))
        .find(|ip| !used.contains(ip) && ip.octets()[3] != 0 && ip.octets()[3] != 255)
        .ok_or_else(|| Error::Invalid("the service range 10.96.0.0/16 is full".into()))
}

/// The objects every cluster starts with.
fn default_objects() -> BTreeMap<String, Value> {
    let namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "default", "labels": {"kubernetes.io/metadata.name": "default"}},
    });
    BTreeMap::from([(object_key("", "Namespace", None, "default"), namespace)])
}

/// `<namespace>.<kind>.<group>.<name>.yaml` (namespace `_cluster` for cluster-scoped kinds).
fn config_file_name(value: &Value) -> String {
    let text = |p: &str| value.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let group = text("/apiVersion")
        .rsplit_once('/')
        .map_or("core", |(g, _)| g);
    let ns = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("_cluster");
    format!(
        "{ns}.{}.{group}.{}.yaml",
        text("/kind").to_lowercase(),
        text("/metadata/name")
    )
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    // Written in place, not renamed: pods see their hosts file through a bind mount of it.
    std::fs::write(path, text).map_err(Error::io(format!("writing {}", path.display())))
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(Error::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!("renaming {}", tmp.display())))
}

/// `sample-app` beside the running executable (or one folder up, for test binaries in
/// `target/*/deps`), unless `MESH_SIM_SAMPLE_APP` names it.
fn find_sample_app() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MESH_SIM_SAMPLE_APP") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(Error::io("finding the running executable"))?;
    let mut dirs = exe.ancestors().skip(1).take(2);
    dirs.find_map(|dir| Some(dir.join("sample-app")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            Error::Missing(format!(
                "the sample-app binary is not beside {}; build it with `cargo build -p sample-app` (cargo xtask does) or set MESH_SIM_SAMPLE_APP",
                exe.display()
            ))
        })
}
