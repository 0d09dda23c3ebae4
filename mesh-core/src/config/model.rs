//! The indexed, read-only view the data planes use: destination `ip:port` → service → ready
//! endpoints (with pod labels, for subsets), the waypoint that applies, and the Istio rules
//! that apply. A [`Model`] is an immutable snapshot (cheap to clone); [`super::Store`]
//! publishes a new one after every update.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use super::host;
use super::istio::{
    AuthorizationPolicy, DestinationRule, PeerAuthentication, PolicyTargetReference,
    RequestAuthentication, VirtualService,
};
use super::key_set::KeySet;
use super::labels::{Labels, NO_LABELS};
use super::resource::{Kind, Resource, ResourceKey};
use super::shard_map::ShardMap;

/// The label that names a waypoint, on a namespace, service, pod or service account.
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Beside [`USE_WAYPOINT`]: the waypoint's namespace when it is not the object's own.
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The label Istio's ambient mode reads on namespaces and pods.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";

/// A namespaced name. Shared strings: the indexes hold a pod's name several times over, and
/// the store gives every object of a namespace the same namespace string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Name {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl Name {
    pub fn new(namespace: &str, name: &str) -> Name {
        Name {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// What the model keeps of a Namespace or ServiceAccount: its labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelledInfo {
    pub labels: Labels,
}

/// What the model keeps of a Pod.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodInfo {
    pub name: Name,
    /// Boxed, as `ips` below, for a smaller entry: 16 bytes less per pod.
    pub uid: Option<Box<str>>,
    pub labels: Labels,
    pub service_account: Arc<str>,
    pub node: Option<Arc<str>>,
    /// `status.hostIP`: the node's address, where the node proxy's HBONE listener is.
    pub host_ip: Option<IpAddr>,
    pub ips: Box<[IpAddr]>,
    /// The workload it belongs to, as Istio's metrics name it: the Deployment (from the
    /// ReplicaSet owner less its `pod-template-hash`), else the owner, else the pod's name.
    pub workload: Arc<str>,
    /// The pod's `Ready` condition is true (and it is not terminating).
    pub ready: bool,
    /// `spec.hostNetwork`: the pod shares its node's network namespace and address. Such a
    /// pod is never in the mesh (its traffic is the node's, as Istio's ambient mode has it)
    /// and is not found by address (the address is the node's, shared by every such pod).
    pub host_network: bool,
    /// Named container ports, for Services whose `targetPort` is a name (a few per pod: a
    /// slice, not a map, whose node alone would take ~300 bytes per pod).
    pub named_ports: Box<[(Arc<str>, u16)]>,
}

impl PodInfo {
    /// Istio's canonical service of the pod (its metrics' `*_canonical_service`): the label
    /// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else `app`, else
    /// the workload's name.
    pub fn canonical_service(&self) -> &str {
        [
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ]
        .iter()
        .find_map(|key| self.labels.get(key))
        .unwrap_or(&self.workload)
    }

    /// Istio's canonical revision (`*_canonical_revision`): the label
    /// `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`, else
    /// `version`, else `latest`.
    pub fn canonical_revision(&self) -> &str {
        [
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ]
        .iter()
        .find_map(|key| self.labels.get(key))
        .unwrap_or("latest")
    }
}

/// A Service's target port: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePortInfo {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

impl ServicePortInfo {
    /// The application protocol the port declares, lowercased: `appProtocol`, else the
    /// port's name (Istio reads a name's prefix: `http-web`, `grpc-api`); empty when neither
    /// is set.
    pub fn declared_protocol(&self) -> String {
        self.app_protocol
            .as_deref()
            .or(self.name.as_deref())
            .unwrap_or_default()
            .to_ascii_lowercase()
    }
}

/// What the model keeps of a Service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceInfo {
    pub name: Name,
    /// `name.namespace.svc.cluster.local`.
    pub hostname: String,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortInfo>,
    /// `None` for services without a selector (endpoints come from EndpointSlices only).
    pub selector: Option<Labels>,
    pub labels: Labels,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SliceEndpoint {
    pub ips: Vec<IpAddr>,
    pub ready: bool,
    pub pod: Option<Name>,
    pub node: Option<Arc<str>>,
}

/// What the model keeps of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SliceInfo {
    pub name: Name,
    pub service: Option<Name>,
    /// Port name (as the Service's port names it) → endpoint port.
    pub ports: Vec<(Option<String>, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

/// A ready endpoint of a service port, with the pod behind it (for its labels) if known.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub pod: Option<Arc<PodInfo>>,
    pub node: Option<Arc<str>>,
}

impl Endpoint {
    /// The pod's labels (empty when the endpoint has no known pod).
    pub fn labels(&self) -> &Labels {
        self.pod.as_ref().map_or(&NO_LABELS, |p| &p.labels)
    }
}

/// Where the `istio.io/use-waypoint` label that applies was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WaypointSource {
    Pod,
    ServiceAccount,
    Service,
    Namespace,
}

/// The waypoint that serves a service or workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waypoint {
    pub gateway: Name,
    pub source: WaypointSource,
}

/// The PeerAuthentications that apply to a workload, most specific first to win.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerAuthentications {
    /// A policy in the workload's namespace whose selector matches it.
    pub workload: Option<Arc<PeerAuthentication>>,
    /// The workload namespace's policy without a selector.
    pub namespace: Option<Arc<PeerAuthentication>>,
    /// The root namespace's policy without a selector.
    pub mesh: Option<Arc<PeerAuthentication>>,
}

/// An immutable snapshot of the config model.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub(crate) namespaces: ShardMap<String, Arc<LabelledInfo>>,
    pub(crate) service_accounts: ShardMap<Name, Arc<LabelledInfo>>,
    pub(crate) pods: ShardMap<Name, Arc<PodInfo>>,
    pub(crate) pods_by_ip: ShardMap<IpAddr, Name>,
    pub(crate) services: ShardMap<Name, Arc<ServiceInfo>>,
    pub(crate) services_by_host: ShardMap<String, Name>,
    pub(crate) services_by_addr: ShardMap<SocketAddr, Name>,
    /// Pods a service's selector picks (for services without EndpointSlices).
    pub(crate) selected: ShardMap<Name, Arc<KeySet<Arc<str>>>>,
    pub(crate) slices: ShardMap<Name, Arc<SliceInfo>>,
    /// Service → names of its EndpointSlices.
    pub(crate) slices_by_service: ShardMap<Name, Arc<BTreeSet<Arc<str>>>>,
    /// Istio objects by key.
    pub(crate) istio: ShardMap<ResourceKey, Resource>,
    /// Resolved host (exact) → VirtualServices / DestinationRules naming it.
    pub(crate) rules_by_host: ShardMap<(Kind, String), Arc<KeySet<ResourceKey>>>,
    /// Wildcard hosts of VirtualServices / DestinationRules (few; scanned).
    pub(crate) wildcard_rules: Arc<BTreeSet<(Kind, String, ResourceKey)>>,
    /// Namespace → PeerAuthentications / AuthorizationPolicies in it.
    pub(crate) policies_by_namespace: ShardMap<(Kind, String), Arc<KeySet<ResourceKey>>>,
    /// Objects refused, each with the reason and fix.
    pub(crate) problems: Arc<BTreeMap<String, String>>,
}

impl Model {
    pub fn pod(&self, name: &Name) -> Option<&Arc<PodInfo>> {
        self.pods.get(name)
    }

    /// Every pod, in no particular order.
    pub fn pods(&self) -> impl Iterator<Item = &Arc<PodInfo>> {
        self.pods.values()
    }

    /// A namespace's labels (`None` when the namespace is not known).
    pub fn namespace_labels(&self, namespace: &str) -> Option<&Labels> {
        self.namespaces.get(namespace).map(|ns| &ns.labels)
    }

    /// Whether a pod is in the ambient mesh: its namespace is labelled
    /// `istio.io/dataplane-mode=ambient`, the pod is not labelled
    /// `istio.io/dataplane-mode=none`, and it has a network of its own (not `hostNetwork`).
    pub fn in_mesh(&self, pod: &PodInfo) -> bool {
        if pod.host_network {
            return false;
        }
        let namespace_ambient = self
            .namespace_labels(&pod.name.namespace)
            .and_then(|labels| labels.get(DATAPLANE_MODE))
            .is_some_and(|mode| mode == "ambient");
        namespace_ambient
            && pod
                .labels
                .get(DATAPLANE_MODE)
                .is_none_or(|mode| mode != "none")
    }

    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Arc<PodInfo>> {
        self.pods_by_ip
            .get(&ip)
            .and_then(|name| self.pods.get(name))
    }

    /// Every service, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<ServiceInfo>> {
        self.services.values()
    }

    pub fn service(&self, name: &Name) -> Option<&Arc<ServiceInfo>> {
        self.services.get(name)
    }

    /// The service a destination `ip:port` (a ClusterIP and service port) belongs to.
    pub fn service_by_addr(&self, addr: SocketAddr) -> Option<&Arc<ServiceInfo>> {
        self.services_by_addr
            .get(&addr)
            .and_then(|name| self.services.get(name))
    }

    /// A service by hostname (`name.ns.svc.cluster.local`).
    pub fn service_by_host(&self, hostname: &str) -> Option<&Arc<ServiceInfo>> {
        self.services_by_host
            .get(hostname)
            .and_then(|name| self.services.get(name))
    }

    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::from([
            ("Namespace", self.namespaces.len()),
            ("ServiceAccount", self.service_accounts.len()),
            ("Pod", self.pods.len()),
            ("Service", self.services.len()),
            ("EndpointSlice", self.slices.len()),
        ]);
        for resource in self.istio.values() {
            *counts.entry(resource.kind().name()).or_default() += 1;
        }
        counts
    }

    /// Objects the store refused, as `Kind ns/name` → reason; they are not in the model.
    pub fn problems(&self) -> &BTreeMap<String, String> {
        &self.problems
    }

    /// The ready endpoints of a service port: from the service's EndpointSlices when it has
    /// any, else from the ready pods its selector picks.
    pub fn ready_endpoints(&self, service: &ServiceInfo, port: u16) -> Vec<Endpoint> {
        let Some(service_port) = service.ports.iter().find(|p| p.port == port) else {
            return Vec::new();
        };
        let mut endpoints = Vec::new();
        if let Some(slices) = self.slices_by_service.get(&service.name) {
            for slice in slices.iter().filter_map(|s| {
                self.slices
                    .get(&Name::new(&service.name.namespace, s))
                    .cloned()
            }) {
                let Some(target) = slice
                    .ports
                    .iter()
                    .find(|(name, _)| *name == service_port.name)
                    .map(|(_, p)| *p)
                else {
                    continue;
                };
                for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
                    let pod = endpoint
                        .pod
                        .as_ref()
                        .and_then(|p| self.pods.get(p))
                        .cloned();
                    for ip in &endpoint.ips {
                        endpoints.push(Endpoint {
                            addr: SocketAddr::new(*ip, target),
                            pod: pod.clone(),
                            node: endpoint.node.clone(),
                        });
                    }
                }
            }
            return endpoints;
        }
        let Some(selected) = self.selected.get(&service.name) else {
            return endpoints;
        };
        for pod_name in selected.iter() {
            let Some(pod) = self.pods.get(&Name::new(&service.name.namespace, pod_name)) else {
                continue;
            };
            if !pod.ready {
                continue;
            }
            let target = match &service_port.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => pod
                    .named_ports
                    .iter()
                    .find(|(port, _)| **port == **name)
                    .map(|(_, number)| *number),
            };
            let Some(target) = target else { continue };
            for ip in &pod.ips {
                endpoints.push(Endpoint {
                    addr: SocketAddr::new(*ip, target),
                    pod: Some(pod.clone()),
                    node: pod.node.clone(),
                });
            }
        }
        endpoints
    }

    fn label_waypoint(
        labels: &Labels,
        own_namespace: &str,
        source: WaypointSource,
    ) -> Option<Option<Waypoint>> {
        let name = labels.get(USE_WAYPOINT)?;
        if name == "none" {
            return Some(None);
        }
        let namespace = labels.get(USE_WAYPOINT_NAMESPACE).unwrap_or(own_namespace);
        Some(Some(Waypoint {
            gateway: Name::new(namespace, name),
            source,
        }))
    }

    fn namespace_waypoint(&self, namespace: &str) -> Option<Waypoint> {
        let ns = self.namespaces.get(namespace)?;
        Model::label_waypoint(&ns.labels, namespace, WaypointSource::Namespace).flatten()
    }

    /// The waypoint for traffic addressed to a service: the service's label, else its
    /// namespace's. `istio.io/use-waypoint: none` opts out at that level.
    pub fn waypoint_for_service(&self, service: &ServiceInfo) -> Option<Waypoint> {
        match Model::label_waypoint(
            &service.labels,
            &service.name.namespace,
            WaypointSource::Service,
        ) {
            Some(found) => found,
            None => self.namespace_waypoint(&service.name.namespace),
        }
    }

    /// The waypoint for traffic addressed to a workload: the pod's label, else its service
    /// account's, else its namespace's.
    pub fn waypoint_for_pod(&self, pod: &PodInfo) -> Option<Waypoint> {
        let ns = &pod.name.namespace;
        if let Some(found) = Model::label_waypoint(&pod.labels, ns, WaypointSource::Pod) {
            return found;
        }
        let account = self
            .service_accounts
            .get(&Name::new(ns, &pod.service_account));
        if let Some(found) = account
            .and_then(|sa| Model::label_waypoint(&sa.labels, ns, WaypointSource::ServiceAccount))
        {
            return found;
        }
        self.namespace_waypoint(ns)
    }

    /// Keys of VirtualServices or DestinationRules whose hosts match `hostname` (exact
    /// matches first, then wildcards), visible from `client_ns` per `exportTo`.
    fn rules_for(&self, kind: Kind, hostname: &str, client_ns: &str) -> Vec<ResourceKey> {
        let exact = self
            .rules_by_host
            .get(&(kind, hostname.to_owned()))
            .into_iter()
            .flat_map(|keys| keys.iter().cloned());
        let wildcard = self
            .wildcard_rules
            .iter()
            .filter(|(k, pattern, _)| *k == kind && host::matches(pattern, hostname))
            .map(|(_, _, key)| key.clone());
        let mut keys: Vec<ResourceKey> = Vec::new();
        for key in exact.chain(wildcard) {
            if !keys.contains(&key) && self.exported_to(&key, client_ns) {
                keys.push(key);
            }
        }
        keys
    }

    fn exported_to(&self, key: &ResourceKey, client_ns: &str) -> bool {
        match self.istio.get(key) {
            Some(Resource::VirtualService(vs)) => {
                host::visible(&vs.spec.export_to, &key.namespace, client_ns)
            }
            Some(Resource::DestinationRule(dr)) => {
                host::visible(&dr.spec.export_to, &key.namespace, client_ns)
            }
            _ => false,
        }
    }

    /// The VirtualServices for mesh traffic to `hostname` from `client_ns`, in the order
    /// they apply (exact host before wildcard, then by namespace/name). Rules bound only to
    /// gateways other than `mesh` are left out.
    pub fn virtual_services_for(
        &self,
        hostname: &str,
        client_ns: &str,
    ) -> Vec<Arc<VirtualService>> {
        self.rules_for(Kind::VirtualService, hostname, client_ns)
            .iter()
            .filter_map(|key| match self.istio.get(key) {
                Some(Resource::VirtualService(vs)) => Some(vs.clone()),
                _ => None,
            })
            .filter(|vs| {
                vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
            })
            .collect()
    }

    /// The DestinationRule for `hostname` seen from `client_ns`: Istio looks in the client's
    /// namespace, then the service's, then the root namespace; an exact host beats a wildcard.
    pub fn destination_rule_for(
        &self,
        hostname: &str,
        client_ns: &str,
    ) -> Option<Arc<DestinationRule>> {
        let keys = self.rules_for(Kind::DestinationRule, hostname, client_ns);
        let service_ns = self
            .service_by_host(hostname)
            .map(|s| s.name.namespace.clone());
        let rank = |key: &ResourceKey| {
            if key.namespace == client_ns {
                0
            } else if service_ns.as_deref() == Some(key.namespace.as_str()) {
                1
            } else if key.namespace == host::ROOT_NAMESPACE {
                2
            } else {
                3
            }
        };
        let best = keys.iter().min_by_key(|key| rank(key))?;
        match self.istio.get(best) {
            Some(Resource::DestinationRule(dr)) => Some(dr.clone()),
            _ => None,
        }
    }

    fn policies_in<'a>(
        &'a self,
        kind: Kind,
        namespace: &str,
    ) -> impl Iterator<Item = &'a Resource> {
        self.policies_by_namespace
            .get(&(kind, namespace.to_owned()))
            .into_iter()
            .flat_map(|keys| keys.iter())
            .filter_map(|key| self.istio.get(key))
    }

    /// The PeerAuthentications that apply to a pod.
    pub fn peer_authentications_for(&self, pod: &PodInfo) -> PeerAuthentications {
        let mut found = PeerAuthentications::default();
        for resource in self.policies_in(Kind::PeerAuthentication, &pod.name.namespace) {
            let Resource::PeerAuthentication(pa) = resource else {
                continue;
            };
            match pa
                .spec
                .selector
                .as_ref()
                .filter(|s| !s.match_labels.is_empty())
            {
                Some(selector) if selects(&selector.match_labels, &pod.labels) => {
                    found.workload.get_or_insert_with(|| pa.clone());
                }
                Some(_) => {}
                None => {
                    found.namespace.get_or_insert_with(|| pa.clone());
                }
            }
        }
        for resource in self.policies_in(Kind::PeerAuthentication, host::ROOT_NAMESPACE) {
            let Resource::PeerAuthentication(pa) = resource else {
                continue;
            };
            if pa
                .spec
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty())
            {
                found.mesh.get_or_insert_with(|| pa.clone());
            }
        }
        found
    }

    /// The AuthorizationPolicies (selector-based) that apply to a pod: the root namespace's
    /// and the pod namespace's whose selector is empty or matches. Policies with a
    /// `targetRef` attach to services and waypoints instead ([`Self::authorization_policies_for_service`]).
    pub fn authorization_policies_for(&self, pod: &PodInfo) -> Vec<Arc<AuthorizationPolicy>> {
        let mut namespaces = vec![host::ROOT_NAMESPACE];
        if *pod.name.namespace != *host::ROOT_NAMESPACE {
            namespaces.push(&pod.name.namespace);
        }
        namespaces
            .into_iter()
            .flat_map(|ns| self.policies_in(Kind::AuthorizationPolicy, ns))
            .filter_map(|resource| match resource {
                Resource::AuthorizationPolicy(ap) => Some(ap.clone()),
                _ => None,
            })
            .filter(|ap| ap.spec.target_ref.is_none() && ap.spec.target_refs.is_empty())
            .filter(|ap| {
                ap.spec
                    .selector
                    .as_ref()
                    .is_none_or(|s| selects(&s.match_labels, &pod.labels))
            })
            .collect()
    }

    /// The AuthorizationPolicies attached to a service by `targetRef(s)` of kind Service.
    pub fn authorization_policies_for_service(
        &self,
        service: &ServiceInfo,
    ) -> Vec<Arc<AuthorizationPolicy>> {
        self.attached(
            Kind::AuthorizationPolicy,
            &service.name,
            "Service",
            authorization_policy,
        )
    }

    /// The AuthorizationPolicies attached to a waypoint by `targetRef(s)` of kind Gateway
    /// (in the waypoint's namespace): they apply to all traffic through it.
    pub fn authorization_policies_for_waypoint(
        &self,
        gateway: &Name,
    ) -> Vec<Arc<AuthorizationPolicy>> {
        self.attached(
            Kind::AuthorizationPolicy,
            gateway,
            "Gateway",
            authorization_policy,
        )
    }

    /// The RequestAuthentications attached to a service by `targetRef(s)` of kind Service,
    /// which its waypoint applies (Istio's ambient mode; selector-based ones are for
    /// sidecars and gateways).
    pub fn request_authentications_for_service(
        &self,
        service: &ServiceInfo,
    ) -> Vec<Arc<RequestAuthentication>> {
        self.attached(
            Kind::RequestAuthentication,
            &service.name,
            "Service",
            request_authentication,
        )
    }

    /// The RequestAuthentications attached to a waypoint by `targetRef(s)` of kind Gateway:
    /// they apply to all traffic through it.
    pub fn request_authentications_for_waypoint(
        &self,
        gateway: &Name,
    ) -> Vec<Arc<RequestAuthentication>> {
        self.attached(
            Kind::RequestAuthentication,
            gateway,
            "Gateway",
            request_authentication,
        )
    }

    /// The policies of `kind` in `target`'s namespace whose `targetRef(s)` name `target` as
    /// a `target_kind`; `typed` gives the policy's typed form and its targets.
    fn attached<T: Clone>(
        &self,
        kind: Kind,
        target: &Name,
        target_kind: &str,
        typed: fn(&Resource) -> Option<(&T, Targets<'_>)>,
    ) -> Vec<T> {
        self.policies_in(kind, &target.namespace)
            .filter_map(typed)
            .filter(|(_, (one, many))| {
                one.iter()
                    .copied()
                    .chain(*many)
                    .any(|t| t.kind == target_kind && *t.name == *target.name)
            })
            .map(|(policy, _)| policy.clone())
            .collect()
    }

    /// An Istio object by key.
    pub fn istio_object(&self, key: &ResourceKey) -> Option<&Resource> {
        self.istio.get(key)
    }
}

/// A policy's `targetRef` and `targetRefs`.
type Targets<'a> = (
    Option<&'a PolicyTargetReference>,
    &'a [PolicyTargetReference],
);

fn authorization_policy(resource: &Resource) -> Option<(&Arc<AuthorizationPolicy>, Targets<'_>)> {
    match resource {
        Resource::AuthorizationPolicy(p) => {
            Some((p, (p.spec.target_ref.as_ref(), &p.spec.target_refs)))
        }
        _ => None,
    }
}

fn request_authentication(
    resource: &Resource,
) -> Option<(&Arc<RequestAuthentication>, Targets<'_>)> {
    match resource {
        Resource::RequestAuthentication(p) => {
            Some((p, (p.spec.target_ref.as_ref(), &p.spec.target_refs)))
        }
        _ => None,
    }
}

/// Whether a label selector as Istio's types hold it (all pairs must match; empty matches
/// all) selects `labels`.
pub fn selects(selector: &BTreeMap<String, String>, labels: &Labels) -> bool {
    labels.contains_all(selector.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

#[cfg(test)]
mod port_tests {
    use super::{ServicePortInfo, TargetPort};

    fn port(name: Option<&str>, app_protocol: Option<&str>) -> ServicePortInfo {
        ServicePortInfo {
            name: name.map(str::to_owned),
            port: 9080,
            target_port: TargetPort::Number(9080),
            protocol: "TCP".to_owned(),
            app_protocol: app_protocol.map(str::to_owned),
        }
    }

    #[test]
    fn a_port_declares_its_app_protocol_else_its_name_lowercased() {
        assert_eq!(port(Some("http-web"), None).declared_protocol(), "http-web");
        assert_eq!(port(Some("GRPC-api"), None).declared_protocol(), "grpc-api");
        assert_eq!(
            port(Some("http-web"), Some("kubernetes.io/h2c")).declared_protocol(),
            "kubernetes.io/h2c"
        );
        assert_eq!(port(None, Some("HTTP2")).declared_protocol(), "http2");
        assert_eq!(port(None, None).declared_protocol(), "");
    }
}
