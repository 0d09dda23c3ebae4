//! The lab's waypoint controller at work: keeps the objects each `istio-waypoint` Gateway
//! asks for ([`crate::waypoint::derive`]) among the stored objects — created, updated, and
//! garbage-collected once their Gateway is gone, as Kubernetes does with owner references —
//! and finds the `mesh-waypoint` binary the waypoint pods run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::admission::describe;
use super::{Applied, Lab};
use crate::error::{Error, Result};
use crate::state::object_key;
use crate::waypoint::{self, owning_gateway};

/// Brings the Gateway-owned objects among `objects` in line with the waypoint Gateways
/// there, reporting each change in `applied`. An object of the same name that the Gateway
/// does not own is left alone: a ServiceAccount is shared silently (Istio names
/// per-account waypoints after the account), anything else is reported.
pub(super) fn reconcile(objects: &mut BTreeMap<String, Value>, applied: &mut Applied) {
    let mut wanted: BTreeMap<String, Value> = BTreeMap::new();
    for gateway in objects
        .values()
        .filter(|v| waypoint::is_waypoint_gateway(v))
    {
        let derived = match waypoint::derive(gateway) {
            Ok(derived) => derived,
            Err(message) => {
                applied.warnings.push(format!(
                    "{}: {message}; no waypoint deployed",
                    describe(gateway)
                ));
                continue;
            }
        };
        for object in derived.objects() {
            let key = key_of(object);
            if let Some(existing) = objects.get(&key)
                && owning_gateway(existing) != owning_gateway(object)
            {
                if object["kind"] != "ServiceAccount" {
                    applied.warnings.push(format!(
                        "{}: {} exists and is not the Gateway's; delete it so the waypoint can be deployed",
                        describe(gateway),
                        describe(existing)
                    ));
                }
                continue;
            }
            wanted.insert(key, object.clone());
        }
    }
    // Garbage collection: what a Gateway owned and no Gateway asks for any more.
    let stale: Vec<String> = objects
        .iter()
        .filter(|(key, value)| owning_gateway(value).is_some() && !wanted.contains_key(*key))
        .map(|(key, _)| key.clone())
        .collect();
    for key in stale {
        if let Some(value) = objects.remove(&key) {
            applied
                .objects
                .push(format!("{} deleted", describe(&value)));
        }
    }
    for (key, mut object) in wanted {
        let verb = match objects.get(&key) {
            None => "created",
            Some(existing) => {
                // The ClusterIP the lab gave the Service stays.
                for field in ["clusterIP", "clusterIPs"] {
                    if let Some(value) = existing.pointer(&format!("/spec/{field}")) {
                        object["spec"][field] = value.clone();
                    }
                }
                if *existing == object {
                    continue;
                }
                "configured"
            }
        };
        applied
            .objects
            .push(format!("{} {verb}", describe(&object)));
        objects.insert(key, object);
    }
}

/// The storage key of a derived object (always namespaced).
fn key_of(object: &Value) -> String {
    let text = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let group = text("/apiVersion")
        .rsplit_once('/')
        .map_or("", |(group, _)| group);
    object_key(
        group,
        text("/kind"),
        Some(text("/metadata/namespace")),
        text("/metadata/name"),
    )
}

impl Lab {
    /// The pod running waypoint `namespace/name` (the Gateway's), once the lab has started it.
    pub fn waypoint_pod(&self, namespace: &str, name: &str) -> Result<&crate::state::Pod> {
        self.state
            .pods
            .values()
            .find(|p| {
                p.namespace == namespace
                    && p.labels
                        .get(waypoint::GATEWAY_NAME_LABEL)
                        .is_some_and(|n| n == name)
            })
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no waypoint pod for Gateway {namespace}/{name}: apply its Gateway (class istio-waypoint) first"
                ))
            })
    }

    /// The waypoint binary the mesh options name, if they do.
    pub(super) fn waypoint_binary(&self) -> Option<&Path> {
        self.state.mesh.as_ref()?.waypoint.as_deref()
    }
}

/// `configured` if given; else `MESH_SIM_WAYPOINT`; else `mesh-waypoint` beside the running
/// executable (or one folder up, for test binaries in `target/*/deps`).
pub(crate) fn find_waypoint(configured: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = configured {
        return Ok(path.to_owned());
    }
    if let Some(path) = std::env::var_os("MESH_SIM_WAYPOINT") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(Error::io("finding the running executable"))?;
    let mut dirs = exe.ancestors().skip(1).take(2);
    dirs.find_map(|dir| Some(dir.join("mesh-waypoint")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            Error::Missing(format!(
                "a Gateway of class istio-waypoint needs the mesh-waypoint binary, which is not beside {}; build it with `cargo build -p mesh-waypoint` or set MESH_SIM_WAYPOINT",
                exe.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn gateway(class: &str) -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "shop"},
            "spec": {"gatewayClassName": class,
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
        })
    }

    const GATEWAY: &str = "gateway.networking.k8s.io/Gateway/shop/waypoint";
    const DERIVED: [&str; 3] = [
        "/ServiceAccount/shop/waypoint",
        "apps/Deployment/shop/waypoint",
        "/Service/shop/waypoint",
    ];

    fn with_gateway(class: &str) -> BTreeMap<String, Value> {
        BTreeMap::from([(GATEWAY.to_owned(), gateway(class))])
    }

    #[test]
    fn waypoint_gateway_gets_its_objects_and_deleting_it_collects_them() {
        let mut objects = with_gateway("istio-waypoint");
        let mut applied = Applied::default();
        reconcile(&mut objects, &mut applied);
        for key in DERIVED {
            assert!(objects.contains_key(key), "{key} missing: {objects:#?}");
        }
        assert_eq!(
            applied.objects,
            [
                "Service shop/waypoint created",
                "ServiceAccount shop/waypoint created",
                "Deployment shop/waypoint created",
            ]
        );
        assert!(applied.warnings.is_empty());

        objects.remove(GATEWAY);
        let mut applied = Applied::default();
        reconcile(&mut objects, &mut applied);
        assert!(objects.is_empty(), "left: {objects:#?}");
        assert_eq!(applied.objects.len(), 3, "{applied:#?}");
        assert!(applied.objects.iter().all(|o| o.ends_with(" deleted")));
    }

    #[test]
    fn other_gateway_classes_deploy_nothing() {
        let mut objects = with_gateway("istio");
        let mut applied = Applied::default();
        reconcile(&mut objects, &mut applied);
        assert_eq!(objects.len(), 1);
        assert!(applied.objects.is_empty());
    }

    #[test]
    fn reconciling_again_changes_nothing_and_keeps_the_cluster_ip() {
        let mut objects = with_gateway("istio-waypoint");
        reconcile(&mut objects, &mut Applied::default());
        let service = objects.get_mut("/Service/shop/waypoint").unwrap();
        service["spec"]["clusterIP"] = json!("10.96.0.12");
        service["spec"]["clusterIPs"] = json!(["10.96.0.12"]);
        let before = objects.clone();
        let mut applied = Applied::default();
        reconcile(&mut objects, &mut applied);
        assert!(applied.objects.is_empty(), "{applied:#?}");
        assert_eq!(objects, before);
    }

    #[test]
    fn changed_class_collects_the_waypoint() {
        let mut objects = with_gateway("istio-waypoint");
        reconcile(&mut objects, &mut Applied::default());
        objects.insert(GATEWAY.to_owned(), gateway("istio"));
        reconcile(&mut objects, &mut Applied::default());
        assert_eq!(objects.keys().collect::<Vec<_>>(), [GATEWAY]);
    }

    #[test]
    fn existing_service_account_is_shared_and_survives_the_gateway() {
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                             "metadata": {"name": "waypoint", "namespace": "shop"}});
        let mut objects = with_gateway("istio-waypoint");
        objects.insert(DERIVED[0].to_owned(), account.clone());
        let mut applied = Applied::default();
        reconcile(&mut objects, &mut applied);
        assert_eq!(objects[DERIVED[0]], account, "the user's account is kept");
        assert!(objects.contains_key(DERIVED[1]) && objects.contains_key(DERIVED[2]));
        assert!(applied.warnings.is_empty(), "{applied:#?}");

        objects.remove(GATEWAY);
        reconcile(&mut objects, &mut Applied::default());
        assert_eq!(objects.keys().collect::<Vec<_>>(), [DERIVED[0]]);
    }

    #[test]
    fn someone_elses_service_is_not_replaced_and_is_reported() {
        let service = json!({"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": "waypoint", "namespace": "shop"},
                             "spec": {"ports": [{"port": 80}]}});
        let mut objects = with_gateway("istio-waypoint");
        objects.insert(DERIVED[2].to_owned(), service.clone());
        let mut applied = Applied::default();
        reconcile(&mut objects, &mut applied);
        assert_eq!(objects[DERIVED[2]], service);
        assert_eq!(applied.warnings.len(), 1, "{applied:#?}");
        assert!(
            applied.warnings[0].contains("Service shop/waypoint exists and is not the Gateway's"),
            "{}",
            applied.warnings[0]
        );
    }
}
