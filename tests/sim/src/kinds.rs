//! Which kinds the lab's API server accepts: the built-in Kubernetes kinds, the Istio and
//! Gateway API kinds (as if their CRDs were installed), and any kind a stored
//! CustomResourceDefinition defines. Anything else is refused, as Kubernetes refuses it.

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Namespaced,
    Cluster,
}

/// (group, kind, scope) of every kind known without a CRD.
const BUILT_IN: &[(&str, &str, Scope)] = &[
    ("", "Namespace", Scope::Cluster),
    ("", "Pod", Scope::Namespaced),
    ("", "Service", Scope::Namespaced),
    ("", "ServiceAccount", Scope::Namespaced),
    ("", "ConfigMap", Scope::Namespaced),
    ("", "Secret", Scope::Namespaced),
    ("", "Endpoints", Scope::Namespaced),
    ("", "PersistentVolumeClaim", Scope::Namespaced),
    ("", "PersistentVolume", Scope::Cluster),
    ("", "LimitRange", Scope::Namespaced),
    ("", "ResourceQuota", Scope::Namespaced),
    ("apps", "Deployment", Scope::Namespaced),
    ("apps", "StatefulSet", Scope::Namespaced),
    ("apps", "DaemonSet", Scope::Namespaced),
    ("apps", "ReplicaSet", Scope::Namespaced),
    ("batch", "Job", Scope::Namespaced),
    ("batch", "CronJob", Scope::Namespaced),
    ("autoscaling", "HorizontalPodAutoscaler", Scope::Namespaced),
    ("policy", "PodDisruptionBudget", Scope::Namespaced),
    ("discovery.k8s.io", "EndpointSlice", Scope::Namespaced),
    ("networking.k8s.io", "Ingress", Scope::Namespaced),
    ("networking.k8s.io", "IngressClass", Scope::Cluster),
    ("networking.k8s.io", "NetworkPolicy", Scope::Namespaced),
    ("rbac.authorization.k8s.io", "Role", Scope::Namespaced),
    (
        "rbac.authorization.k8s.io",
        "RoleBinding",
        Scope::Namespaced,
    ),
    ("rbac.authorization.k8s.io", "ClusterRole", Scope::Cluster),
    (
        "rbac.authorization.k8s.io",
        "ClusterRoleBinding",
        Scope::Cluster,
    ),
    (
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        Scope::Cluster,
    ),
    ("networking.istio.io", "VirtualService", Scope::Namespaced),
    ("networking.istio.io", "DestinationRule", Scope::Namespaced),
    ("networking.istio.io", "Gateway", Scope::Namespaced),
    ("networking.istio.io", "ServiceEntry", Scope::Namespaced),
    ("networking.istio.io", "Sidecar", Scope::Namespaced),
    ("networking.istio.io", "WorkloadEntry", Scope::Namespaced),
    ("networking.istio.io", "WorkloadGroup", Scope::Namespaced),
    ("networking.istio.io", "EnvoyFilter", Scope::Namespaced),
    ("networking.istio.io", "ProxyConfig", Scope::Namespaced),
    ("security.istio.io", "PeerAuthentication", Scope::Namespaced),
    (
        "security.istio.io",
        "AuthorizationPolicy",
        Scope::Namespaced,
    ),
    (
        "security.istio.io",
        "RequestAuthentication",
        Scope::Namespaced,
    ),
    ("telemetry.istio.io", "Telemetry", Scope::Namespaced),
    ("extensions.istio.io", "WasmPlugin", Scope::Namespaced),
    ("gateway.networking.k8s.io", "GatewayClass", Scope::Cluster),
    ("gateway.networking.k8s.io", "Gateway", Scope::Namespaced),
    ("gateway.networking.k8s.io", "HTTPRoute", Scope::Namespaced),
    ("gateway.networking.k8s.io", "GRPCRoute", Scope::Namespaced),
    ("gateway.networking.k8s.io", "TCPRoute", Scope::Namespaced),
    ("gateway.networking.k8s.io", "TLSRoute", Scope::Namespaced),
    ("gateway.networking.k8s.io", "UDPRoute", Scope::Namespaced),
    (
        "gateway.networking.k8s.io",
        "ReferenceGrant",
        Scope::Namespaced,
    ),
];

/// The kinds known now: built-ins plus those defined by stored or incoming CRDs.
#[derive(Debug, Clone)]
pub(crate) struct Kinds {
    known: BTreeMap<(String, String), Scope>,
}

impl Kinds {
    pub(crate) fn new<'a>(crds: impl IntoIterator<Item = &'a Value>) -> Kinds {
        let mut known: BTreeMap<(String, String), Scope> = BUILT_IN
            .iter()
            .map(|(group, kind, scope)| (((*group).to_owned(), (*kind).to_owned()), *scope))
            .collect();
        for crd in crds {
            let group = crd.pointer("/spec/group").and_then(Value::as_str);
            let kind = crd.pointer("/spec/names/kind").and_then(Value::as_str);
            let scope = match crd.pointer("/spec/scope").and_then(Value::as_str) {
                Some("Cluster") => Scope::Cluster,
                _ => Scope::Namespaced,
            };
            if let (Some(group), Some(kind)) = (group, kind) {
                known.insert((group.to_owned(), kind.to_owned()), scope);
            }
        }
        Kinds { known }
    }

    /// The scope of a kind, or an error message saying it is unknown.
    pub(crate) fn scope(
        &self,
        group: &str,
        kind: &str,
        api_version: &str,
    ) -> Result<Scope, String> {
        if let Some(scope) = self.known.get(&(group.to_owned(), kind.to_owned())) {
            return Ok(*scope);
        }
        let same_kind: Vec<&str> = self
            .known
            .keys()
            .filter(|(_, k)| k.eq_ignore_ascii_case(kind))
            .map(|(g, _)| {
                if g.is_empty() {
                    "v1 (core)"
                } else {
                    g.as_str()
                }
            })
            .collect();
        let hint = if same_kind.is_empty() {
            "apply the CustomResourceDefinition that defines it first".to_owned()
        } else {
            format!("did you mean the group {}?", same_kind.join(" or "))
        };
        Err(format!(
            "no kind {kind:?} is known in apiVersion {api_version:?}; {hint}"
        ))
    }
}
