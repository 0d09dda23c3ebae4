//! The lab's waypoint controller, as istiod's: a Gateway API `Gateway` of class
//! `istio-waypoint` asks for a waypoint, and the controller derives the objects that deploy
//! it — a ServiceAccount, a Deployment of one `mesh-waypoint` pod and a Service on the HBONE
//! port — each owned by the Gateway (an `ownerReference`), so they go when it goes. Pure:
//! objects in, objects out; the lab stores them and runs the pod.

use serde_json::{Value, json};

/// The GatewayClass whose Gateways are waypoints.
pub(crate) const WAYPOINT_CLASS: &str = "istio-waypoint";
/// The image whose containers the lab runs with the `mesh-waypoint` binary.
pub(crate) const WAYPOINT_IMAGE: &str = "mesh-waypoint";
/// The waypoint's HBONE port.
pub(crate) const HBONE_PORT: u16 = 15008;
/// The label selecting a Gateway's pods (Gateway API's convention).
pub(crate) const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Istio's per-service-account waypoints carry this annotation.
pub(crate) const FOR_SERVICE_ACCOUNT_ANNOTATION: &str = "istio.io/for-service-account";
/// The label istiod puts on what it deploys for a Gateway.
const MANAGED_LABEL: &str = "gateway.istio.io/managed";
const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// Whether an object is a Gateway API Gateway that asks for a waypoint.
pub(crate) fn is_waypoint_gateway(value: &Value) -> bool {
    value["kind"] == "Gateway"
        && value["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("gateway.networking.k8s.io/"))
        && value.pointer("/spec/gatewayClassName") == Some(&json!(WAYPOINT_CLASS))
}

/// Whether a container image is the waypoint's (`mesh-waypoint`, with any registry or tag).
pub(crate) fn is_waypoint_image(image: &str) -> bool {
    let last = image.rsplit('/').next().unwrap_or(image);
    let name = last.split([':', '@']).next().unwrap_or(last);
    name == WAYPOINT_IMAGE
}

/// The `namespace/name` of the Gateway that owns (controls) an object, if one does.
pub(crate) fn owning_gateway(value: &Value) -> Option<String> {
    let namespace = value.pointer("/metadata/namespace")?.as_str()?;
    value
        .pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| {
            r["kind"] == "Gateway"
                && r["controller"] == true
                && r["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("gateway.networking.k8s.io/"))
        })
        .and_then(|r| r["name"].as_str())
        .map(|name| format!("{namespace}/{name}"))
}

/// What a waypoint Gateway asks for, each object owned by the Gateway.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Derived {
    /// Named after the Gateway; the lab creates it only if no such account exists.
    pub(crate) service_account: Value,
    /// One replica, running the waypoint image, never captured by the mesh itself.
    pub(crate) deployment: Value,
    /// The HBONE port, selecting the Deployment's pod.
    pub(crate) service: Value,
}

impl Derived {
    pub(crate) fn objects(&self) -> [&Value; 3] {
        [&self.service_account, &self.deployment, &self.service]
    }
}

/// The objects that deploy a waypoint Gateway (stored, so its namespace is set).
pub(crate) fn derive(gateway: &Value) -> Result<Derived, String> {
    let text = |pointer: &str| gateway.pointer(pointer).and_then(Value::as_str);
    let name = text("/metadata/name").ok_or("the Gateway has no metadata.name")?;
    let namespace = text("/metadata/namespace").ok_or("the Gateway has no namespace")?;
    let for_service_account = gateway
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(FOR_SERVICE_ACCOUNT_ANNOTATION))
        .and_then(Value::as_str);
    let metadata = || {
        json!({
            "name": name,
            "namespace": namespace,
            "labels": {GATEWAY_NAME_LABEL: name, MANAGED_LABEL: "istio.io-mesh-controller"},
            "ownerReferences": [{
                "apiVersion": GATEWAY_API_VERSION,
                "kind": "Gateway",
                "name": name,
                "uid": owner_uid(namespace, name),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        })
    };
    let pod_labels = json!({GATEWAY_NAME_LABEL: name, "istio.io/dataplane-mode": "none"});
    let mut env = vec![
        json!({"name": "WAYPOINT_NAME", "value": name}),
        json!({"name": "TRUST_DOMAIN", "value": "cluster.local"}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        json!({"name": "SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}}),
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
    ];
    if let Some(account) = for_service_account {
        env.push(json!({"name": "WAYPOINT_FOR_SERVICE_ACCOUNT", "value": account}));
    }
    Ok(Derived {
        service_account: json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(),
        }),
        deployment: json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {
                        "serviceAccountName": name,
                        "containers": [{
                            "name": "istio-proxy",
                            "image": WAYPOINT_IMAGE,
                            "ports": [{"name": "hbone", "containerPort": HBONE_PORT, "protocol": "TCP"}],
                            "env": env,
                        }],
                    },
                },
            },
        }),
        service: json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(),
            "spec": {
                "selector": {GATEWAY_NAME_LABEL: name},
                "ports": [{
                    "name": "mesh",
                    "port": HBONE_PORT,
                    "targetPort": HBONE_PORT,
                    "appProtocol": "hbone",
                    "protocol": "TCP",
                }],
            },
        }),
    })
}

/// A stable UUID-shaped id for the Gateway, for `ownerReferences[].uid` (the lab's API
/// server gives objects no uids of their own).
fn owner_uid(namespace: &str, name: &str) -> String {
    let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for byte in format!("Gateway/{namespace}/{name}").bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    let hex = format!("{hash:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload;

    fn gateway(class: &str, annotations: Option<Value>) -> Value {
        let mut value = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "shop",
                         "labels": {"istio.io/waypoint-for": "service"}},
            "spec": {"gatewayClassName": class,
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
        });
        if let Some(annotations) = annotations {
            value["metadata"]["annotations"] = annotations;
        }
        value
    }

    #[test]
    fn only_istio_waypoint_gateways_are_waypoints() {
        assert!(is_waypoint_gateway(&gateway("istio-waypoint", None)));
        assert!(!is_waypoint_gateway(&gateway("istio", None)));
        let mut istio_gateway = gateway("istio-waypoint", None);
        istio_gateway["apiVersion"] = json!("networking.istio.io/v1");
        assert!(!is_waypoint_gateway(&istio_gateway));
    }

    #[test]
    fn waypoint_image_matches_with_registry_and_tag() {
        assert!(is_waypoint_image("mesh-waypoint"));
        assert!(is_waypoint_image("ghcr.io/example/mesh-waypoint:0.1"));
        assert!(!is_waypoint_image("mesh-waypoint-debug"));
        assert!(!is_waypoint_image(
            "docker.io/istio/examples-bookinfo-reviews-v1"
        ));
    }

    #[test]
    fn every_derived_object_is_named_after_and_owned_by_the_gateway() {
        let derived = derive(&gateway("istio-waypoint", None)).unwrap();
        for object in derived.objects() {
            assert_eq!(object["metadata"]["name"], "waypoint");
            assert_eq!(object["metadata"]["namespace"], "shop");
            assert_eq!(owning_gateway(object).as_deref(), Some("shop/waypoint"));
            assert_eq!(
                object["metadata"]["labels"][GATEWAY_NAME_LABEL], "waypoint",
                "{object}"
            );
        }
        assert_eq!(derived.service_account["kind"], "ServiceAccount");
        assert_eq!(
            derived.deployment["metadata"]["ownerReferences"][0]["uid"],
            derived.service["metadata"]["ownerReferences"][0]["uid"]
        );
        assert_eq!(owning_gateway(&gateway("istio-waypoint", None)), None);
    }

    #[test]
    fn deployment_runs_one_uncaptured_waypoint_pod_as_the_gateways_account() {
        let derived = derive(&gateway("istio-waypoint", None)).unwrap();
        let template = workload::pod_template("shop", &derived.deployment).unwrap();
        assert_eq!(template.owner.as_deref(), Some("waypoint"));
        assert_eq!(template.replicas, 1);
        assert_eq!(template.service_account, "waypoint");
        assert_eq!(template.labels[GATEWAY_NAME_LABEL], "waypoint");
        assert_eq!(template.labels["istio.io/dataplane-mode"], "none");
        let container = &template.containers[0];
        assert_eq!(container.program, crate::state::Program::Waypoint);
        assert_eq!(container.ports.len(), 1);
        assert_eq!(container.ports[0].port, 15008);
        assert!(
            container
                .env
                .contains(&("WAYPOINT_NAME".to_owned(), "waypoint".to_owned()))
        );
        assert!(
            container
                .env
                .contains(&("TRUST_DOMAIN".to_owned(), "cluster.local".to_owned()))
        );
        assert!(
            !container
                .env
                .iter()
                .any(|(k, _)| k == "WAYPOINT_FOR_SERVICE_ACCOUNT")
        );
    }

    #[test]
    fn service_account_annotation_reaches_the_waypoints_env() {
        let annotated = gateway(
            "istio-waypoint",
            Some(json!({FOR_SERVICE_ACCOUNT_ANNOTATION: "reviews"})),
        );
        let derived = derive(&annotated).unwrap();
        let template = workload::pod_template("shop", &derived.deployment).unwrap();
        assert!(template.containers[0].env.contains(&(
            "WAYPOINT_FOR_SERVICE_ACCOUNT".to_owned(),
            "reviews".to_owned()
        )));
        // The waypoint itself still runs as its own account.
        assert_eq!(template.service_account, "waypoint");
    }

    #[test]
    fn service_selects_the_pod_on_the_hbone_port() {
        let derived = derive(&gateway("istio-waypoint", None)).unwrap();
        let spec = workload::service_spec("shop", &derived.service).unwrap();
        assert_eq!(
            spec.selector,
            [(GATEWAY_NAME_LABEL.to_owned(), "waypoint".to_owned())].into()
        );
        assert_eq!(spec.ports.len(), 1);
        assert_eq!(spec.ports[0].name.as_deref(), Some("mesh"));
        assert_eq!(spec.ports[0].port, 15008);
        assert_eq!(
            spec.ports[0].target,
            crate::state::TargetPort::Number(15008)
        );
        assert_eq!(derived.service["spec"]["ports"][0]["appProtocol"], "hbone");
        assert_eq!(
            spec.requested_ip, None,
            "the ClusterIP is allocated as usual"
        );
    }

    #[test]
    fn derived_objects_pass_the_labs_admission_checks() {
        let derived = derive(&gateway("istio-waypoint", None)).unwrap();
        for (group, object) in [
            ("", &derived.service_account),
            ("apps", &derived.deployment),
            ("", &derived.service),
        ] {
            let kind = object["kind"].as_str().unwrap();
            workload::validate(group, kind, "shop", object)
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
        }
    }

    #[test]
    fn derivation_is_stable_so_reapplying_restarts_nothing() {
        let a = derive(&gateway("istio-waypoint", None)).unwrap();
        let b = derive(&gateway("istio-waypoint", None)).unwrap();
        assert_eq!(a, b);
        let mut other = gateway("istio-waypoint", None);
        other["metadata"]["name"] = json!("other");
        assert_ne!(
            a.deployment["metadata"]["ownerReferences"][0]["uid"],
            derive(&other).unwrap().deployment["metadata"]["ownerReferences"][0]["uid"]
        );
    }
}
