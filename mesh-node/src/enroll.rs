//! Which pods on this node are in the mesh, from the config model: a pod is enrolled when its
//! namespace is labelled `istio.io/dataplane-mode=ambient` and the pod itself is not labelled
//! `istio.io/dataplane-mode=none` ([`Model::in_mesh`]). Pure bookkeeping, no kernel.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use mesh_core::config::Model;
use serde::Serialize;

/// A pod of this node as the agent shows and enrolls it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub ip: Option<Ipv4Addr>,
    /// In the mesh by its namespace's and its own labels.
    pub enrolled: bool,
}

impl LocalPod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The pods scheduled on `node`, sorted by namespace and name.
pub fn local_pods(model: &Model, node: &str) -> Vec<LocalPod> {
    let mut pods: Vec<LocalPod> = model
        .pods()
        .filter(|p| p.node.as_deref() == Some(node))
        .map(|p| LocalPod {
            namespace: p.name.namespace.to_string(),
            name: p.name.name.to_string(),
            uid: p.uid.as_deref().unwrap_or_default().to_owned(),
            service_account: p.service_account.to_string(),
            ip: p.ips.iter().find_map(|ip| match ip {
                IpAddr::V4(ip) => Some(*ip),
                IpAddr::V6(_) => None,
            }),
            enrolled: model.in_mesh(p),
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    pods
}

/// How deep below the pods' cgroup a pod's own cgroup may be found.
const POD_CGROUP_DEPTH: usize = 3;

/// A pod's cgroup below `pods_cgroup` (kubelet's root, e.g. `kubepods.slice`): the folder
/// named for its uid, as the lab (`pod<uid>`) and kubelet's cgroupfs driver
/// (`burstable/pod<uid>`) name it, or the systemd driver
/// (`kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice`), up to three levels
/// down.
pub fn pod_cgroup(pods_cgroup: &Path, uid: &str) -> Option<PathBuf> {
    if uid.is_empty() {
        return None;
    }
    let direct = pods_cgroup.join(format!("pod{uid}"));
    if direct.is_dir() {
        return Some(direct);
    }
    let wanted = [format!("pod{uid}"), format!("pod{}", uid.replace('-', "_"))];
    let names_pod = |name: &str| {
        wanted.iter().any(|w| {
            name == w.as_str()
                || name.ends_with(&format!("-{w}.slice"))
                || name == format!("{w}.slice")
        })
    };
    let mut level = vec![pods_cgroup.to_owned()];
    for _ in 0..POD_CGROUP_DEPTH {
        let mut next = Vec::new();
        for dir in &level {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                if names_pod(&name.to_string_lossy()) {
                    return Some(entry.path());
                }
                next.push(entry.path());
            }
        }
        level = next;
    }
    None
}

/// The addresses whose inbound TCP the node captures: its enrolled pods, and the ClusterIPs
/// of services with a ready endpoint among them (a same-node client's packets still carry
/// the ClusterIP when they enter the node; the service's DNAT comes after the capture).
pub fn capture_addresses(model: &Model, local: &[LocalPod]) -> BTreeSet<Ipv4Addr> {
    let enrolled: BTreeSet<IpAddr> = local
        .iter()
        .filter(|p| p.enrolled)
        .filter_map(|p| p.ip.map(IpAddr::V4))
        .collect();
    let mut addresses: BTreeSet<Ipv4Addr> = enrolled
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(ip) => Some(*ip),
            IpAddr::V6(_) => None,
        })
        .collect();
    if enrolled.is_empty() {
        return addresses;
    }
    for service in model.services() {
        let has_local_endpoint = service.ports.iter().any(|port| {
            model
                .ready_endpoints(service, port.port)
                .iter()
                .any(|e| enrolled.contains(&e.addr.ip()))
        });
        if has_local_endpoint {
            addresses.extend(service.cluster_ips.iter().filter_map(|ip| match ip {
                IpAddr::V4(ip) => Some(*ip),
                IpAddr::V6(_) => None,
            }));
        }
    }
    addresses
}

#[cfg(test)]
mod cgroup_tests {
    use super::*;

    #[test]
    fn pod_cgroups_are_found_in_the_lab_and_kubelet_layouts() {
        let root = std::env::temp_dir().join(format!("mesh-pod-cgroup-{}", std::process::id()));
        let uid = "1b2c3d4e-0000-4000-8000-00000000000a";
        let lab = root.join("lab");
        let cgroupfs = root.join("kubepods");
        let systemd = root.join("kubepods.slice");
        for dir in [
            lab.join(format!("pod{uid}")),
            cgroupfs
                .join("burstable")
                .join(format!("pod{uid}"))
                .join("ctr"),
            systemd
                .join("kubepods-besteffort.slice")
                .join(format!(
                    "kubepods-besteffort-pod{}.slice",
                    uid.replace('-', "_")
                ))
                .join("cri-containerd-abc.scope"),
        ] {
            std::fs::create_dir_all(&dir).unwrap();
        }
        assert_eq!(pod_cgroup(&lab, uid), Some(lab.join(format!("pod{uid}"))));
        assert_eq!(
            pod_cgroup(&cgroupfs, uid),
            Some(cgroupfs.join("burstable").join(format!("pod{uid}")))
        );
        assert_eq!(
            pod_cgroup(&systemd, uid),
            Some(systemd.join("kubepods-besteffort.slice").join(format!(
                "kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            )))
        );
        assert_eq!(pod_cgroup(&lab, "other"), None);
        assert_eq!(pod_cgroup(&lab, ""), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use mesh_core::config::Store;
    use mesh_core::config::model::DATAPLANE_MODE;
    use mesh_core::manifest::Object;
    use mesh_core::source::{ObjectKey, Update};
    use serde_json::json;

    use super::*;

    fn object(value: serde_json::Value) -> Object {
        mesh_core::manifest::object_from_value(
            value,
            mesh_core::manifest::Origin {
                file: "test.yaml".into(),
                document: 0,
            },
        )
        .expect("valid test object")
    }

    fn namespace(name: &str, mode: Option<&str>) -> Object {
        let labels = mode.map_or_else(|| json!({}), |m| json!({DATAPLANE_MODE: m}));
        object(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
        )
    }

    fn pod(ns: &str, name: &str, node: &str, mode: Option<&str>) -> Object {
        let labels = mode.map_or_else(|| json!({}), |m| json!({DATAPLANE_MODE: m}));
        object(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
            "spec": {"nodeName": node, "containers": []},
            "status": {"podIP": "10.244.1.2"},
        }))
    }

    fn enrolled(store: &Store, node: &str) -> Vec<String> {
        local_pods(&store.model(), node)
            .into_iter()
            .filter(|p| p.enrolled)
            .map(|p| p.key())
            .collect()
    }

    #[test]
    fn pods_in_ambient_namespaces_on_this_node_are_enrolled_unless_they_opt_out() {
        let mut store = Store::new();
        store.apply_all(Update::first_sync([
            namespace("shop", Some("ambient")),
            namespace("plain", None),
            pod("shop", "a", "node1", None),
            pod("shop", "out", "node1", Some("none")),
            pod("shop", "far", "node2", None),
            pod("plain", "b", "node1", None),
        ]));
        assert_eq!(enrolled(&store, "node1"), ["shop/a"]);
        let pods = local_pods(&store.model(), "node1");
        let a = pods
            .iter()
            .find(|p| p.name == "a")
            .expect("pod a is on node1");
        assert_eq!(
            (a.uid.as_str(), a.ip, a.service_account.as_str()),
            ("uid-a", Some(Ipv4Addr::new(10, 244, 1, 2)), "default")
        );
    }

    /// A host-network pod (the node agent's own, a node exporter) shares the node's network
    /// and address: never enrolled, even in an ambient namespace, and not found by the
    /// node's address.
    #[test]
    fn host_network_pods_are_never_enrolled_nor_found_by_address() {
        let mut host = pod("shop", "agent", "node1", None);
        host.value["spec"]["hostNetwork"] = json!(true);
        host.value["status"]["podIP"] = json!("10.10.0.11");
        let mut store = Store::new();
        store.apply_all(Update::first_sync([
            namespace("shop", Some("ambient")),
            pod("shop", "a", "node1", None),
            host,
        ]));
        assert_eq!(enrolled(&store, "node1"), ["shop/a"]);
        let model = store.model();
        assert!(model.pod_by_ip("10.10.0.11".parse().unwrap()).is_none());
        assert!(model.pod_by_ip("10.244.1.2".parse().unwrap()).is_some());
    }

    #[test]
    fn label_changes_and_deletes_follow_without_a_resync() {
        let mut store = Store::new();
        store.apply_all(Update::first_sync([
            namespace("shop", None),
            pod("shop", "a", "node1", None),
        ]));
        assert!(enrolled(&store, "node1").is_empty());
        store.apply(Update::Upsert(namespace("shop", Some("ambient"))));
        assert_eq!(enrolled(&store, "node1"), ["shop/a"]);
        store.apply(Update::Upsert(pod("shop", "a", "node1", Some("none"))));
        assert!(enrolled(&store, "node1").is_empty());
        store.apply(Update::Upsert(pod("shop", "a", "node1", None)));
        assert_eq!(enrolled(&store, "node1"), ["shop/a"]);
        store.apply(Update::Delete(ObjectKey::of(&namespace("shop", None))));
        assert!(enrolled(&store, "node1").is_empty());
    }
}
