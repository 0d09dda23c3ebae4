//! Which pods on this node are in the mesh, from the config source's Namespaces and Pods:
//! a pod is enrolled when its namespace is labelled `istio.io/dataplane-mode=ambient` and the
//! pod itself is not labelled `istio.io/dataplane-mode=none`. Pure bookkeeping, no kernel.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use mesh_core::manifest::Object;
use mesh_core::source::{ObjectKey, Update};
use serde::Serialize;

/// The label Istio's ambient mode reads on namespaces and pods.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";

/// A pod as the node agent needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    pub ip: Option<Ipv4Addr>,
    /// Enrolled by its namespace's and its own labels.
    pub enrolled: bool,
}

impl PodInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone)]
struct PodRecord {
    uid: String,
    node: Option<String>,
    ip: Option<Ipv4Addr>,
    mode: Option<String>,
}

/// Namespaces' labels and pods, as the config source last said.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    /// Namespace → its `istio.io/dataplane-mode` label, if any.
    namespaces: BTreeMap<String, Option<String>>,
    /// `(namespace, name)` → pod.
    pods: BTreeMap<(String, String), PodRecord>,
}

impl Inventory {
    /// Applies an update; returns whether anything this inventory tracks changed.
    pub fn apply(&mut self, update: &Update) -> bool {
        match update {
            Update::Snapshot(objects) => {
                self.namespaces.clear();
                self.pods.clear();
                for object in objects {
                    self.upsert(object);
                }
                true
            }
            Update::Upsert(object) => self.upsert(object),
            Update::Delete(key) => self.delete(key),
            Update::Problems(_) => false,
        }
    }

    fn upsert(&mut self, object: &Object) -> bool {
        if !object.group().is_empty() {
            return false;
        }
        match object.kind.as_str() {
            "Namespace" => {
                let mode = object.labels().get(DATAPLANE_MODE).cloned();
                self.namespaces.insert(object.name.clone(), mode);
                true
            }
            "Pod" => {
                let Some(namespace) = object.namespace.clone() else {
                    return false;
                };
                let text = |pointer: &str| {
                    object
                        .value
                        .pointer(pointer)
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_owned)
                };
                let record = PodRecord {
                    uid: text("/metadata/uid").unwrap_or_default(),
                    node: text("/spec/nodeName"),
                    ip: text("/status/podIP").and_then(|ip| ip.parse().ok()),
                    mode: object.labels().get(DATAPLANE_MODE).cloned(),
                };
                self.pods.insert((namespace, object.name.clone()), record);
                true
            }
            _ => false,
        }
    }

    fn delete(&mut self, key: &ObjectKey) -> bool {
        if !key.group.is_empty() {
            return false;
        }
        match key.kind.as_str() {
            "Namespace" => self.namespaces.remove(&key.name).is_some(),
            "Pod" => {
                let Some(namespace) = key.namespace.clone() else {
                    return false;
                };
                self.pods.remove(&(namespace, key.name.clone())).is_some()
            }
            _ => false,
        }
    }

    /// Every pod known, with its enrollment.
    pub fn pods(&self) -> Vec<PodInfo> {
        self.pods
            .iter()
            .map(|((namespace, name), record)| {
                let ns_mode = self.namespaces.get(namespace).cloned().flatten();
                let enrolled =
                    ns_mode.as_deref() == Some("ambient") && record.mode.as_deref() != Some("none");
                PodInfo {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    uid: record.uid.clone(),
                    node: record.node.clone(),
                    ip: record.ip,
                    enrolled,
                }
            })
            .collect()
    }

    /// The pods scheduled on `node`.
    pub fn local_pods(&self, node: &str) -> Vec<PodInfo> {
        self.pods()
            .into_iter()
            .filter(|p| p.node.as_deref() == Some(node))
            .collect()
    }
}

#[cfg(test)]
mod tests {
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
            "spec": {"nodeName": node},
            "status": {"podIP": "10.244.1.2"},
        }))
    }

    fn enrolled(inventory: &Inventory, node: &str) -> Vec<String> {
        inventory
            .local_pods(node)
            .into_iter()
            .filter(|p| p.enrolled)
            .map(|p| p.key())
            .collect()
    }

    #[test]
    fn pods_in_ambient_namespaces_on_this_node_are_enrolled_unless_they_opt_out() {
        let mut inventory = Inventory::default();
        inventory.apply(&Update::Snapshot(vec![
            namespace("shop", Some("ambient")),
            namespace("plain", None),
            pod("shop", "a", "node1", None),
            pod("shop", "out", "node1", Some("none")),
            pod("shop", "far", "node2", None),
            pod("plain", "b", "node1", None),
        ]));
        assert_eq!(enrolled(&inventory, "node1"), ["shop/a"]);
        let pods = inventory.local_pods("node1");
        let a = pods
            .iter()
            .find(|p| p.name == "a")
            .expect("pod a is on node1");
        assert_eq!(
            (a.uid.as_str(), a.ip),
            ("uid-a", Some(Ipv4Addr::new(10, 244, 1, 2)))
        );
    }

    #[test]
    fn label_changes_and_deletes_follow_without_a_resync() {
        let mut inventory = Inventory::default();
        inventory.apply(&Update::Snapshot(vec![
            namespace("shop", None),
            pod("shop", "a", "node1", None),
        ]));
        assert!(enrolled(&inventory, "node1").is_empty());
        assert!(inventory.apply(&Update::Upsert(namespace("shop", Some("ambient")))));
        assert_eq!(enrolled(&inventory, "node1"), ["shop/a"]);
        inventory.apply(&Update::Upsert(pod("shop", "a", "node1", Some("none"))));
        assert!(enrolled(&inventory, "node1").is_empty());
        inventory.apply(&Update::Upsert(pod("shop", "a", "node1", None)));
        assert_eq!(enrolled(&inventory, "node1"), ["shop/a"]);
        let key = ObjectKey::of(&namespace("shop", None));
        assert!(inventory.apply(&Update::Delete(key)));
        assert!(enrolled(&inventory, "node1").is_empty());
        assert!(!inventory.apply(&Update::Problems(vec!["bad".into()])));
    }
}
