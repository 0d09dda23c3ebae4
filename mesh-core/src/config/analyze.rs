//! `meshctl analyze`: every problem in a set of manifests, as errors and warnings naming
//! `Kind namespace/name`. Checks each object alone (conversion, [`super::validate`],
//! [`super::support`], and [`crate::policy::lint`] or [`crate::policy::lint_l7`] for an
//! AuthorizationPolicy, as its enforcer would) and the set together: hosts claimed by two
//! VirtualServices, subsets no DestinationRule defines, destination hosts that match no
//! Service or ServiceEntry. (`meshctl` adds the waypoint's own findings for VirtualServices
//! and DestinationRules.)

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::istio::{Destination, VirtualService};
use super::resource::{self, Resource, ResourceKey};
use super::store::key_of;
use super::validate::{self, Severity};
use super::{host, support};
use crate::manifest::{Loaded, Origin};

/// One error or warning.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    /// `None` for problems of a file rather than an object (unreadable YAML, ...).
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub severity: Severity,
    pub message: String,
    /// `file (document N)`.
    pub origin: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.namespace, &self.name) {
            (Some(kind), Some(ns), Some(name)) => write!(f, "{kind} {ns}/{name}: ")?,
            (Some(kind), None, Some(name)) => write!(f, "{kind} {name}: ")?,
            _ => {}
        }
        f.write_str(&self.message)
    }
}

/// The result of an analysis: diagnostics sorted by object, errors first within each.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }
}

struct Collector {
    diagnostics: Vec<Diagnostic>,
}

impl Collector {
    fn object(&mut self, key: &ResourceKey, origin: &Origin, severity: Severity, message: String) {
        self.diagnostics.push(Diagnostic {
            kind: Some(key.kind.to_string()),
            namespace: key.kind.namespaced().then(|| key.namespace.clone()),
            name: Some(key.name.clone()),
            severity,
            message,
            origin: Some(origin.to_string()),
        });
    }
}

/// Analyzes what [`crate::manifest::load_paths`] read.
pub fn analyze(loaded: Loaded) -> Report {
    let mut out = Collector {
        diagnostics: Vec::new(),
    };
    for error in &loaded.errors {
        out.diagnostics.push(Diagnostic {
            kind: None,
            namespace: None,
            name: None,
            severity: Severity::Error,
            message: error.to_string(),
            origin: None,
        });
    }
    let mut resources: BTreeMap<ResourceKey, (Resource, Origin)> = BTreeMap::new();
    for object in loaded.objects {
        let origin = object.origin.clone();
        let group = object.group().to_owned();
        let (kind_name, ns, name) = (
            object.kind.clone(),
            object.namespace.clone(),
            object.name.clone(),
        );
        match Resource::from_object(object) {
            Ok(resource) => {
                let key = key_of(&resource);
                check_one(&mut out, &key, &resource, &origin);
                if let Some((_, first)) = resources.get(&key) {
                    let message =
                        format!("defined twice (also in {first}); the last one read wins");
                    out.object(&key, &origin, Severity::Warning, message);
                }
                resources.insert(key, (resource, origin));
            }
            Err(resource::Error::UnknownKind { .. }) => {
                if group.ends_with("istio.io") || group == "gateway.networking.k8s.io" {
                    out.diagnostics.push(Diagnostic {
                        kind: Some(kind_name.clone()),
                        namespace: ns.or_else(|| Some(resource::DEFAULT_NAMESPACE.to_owned())),
                        name: Some(name),
                        severity: Severity::Warning,
                        message: format!(
                            "{group}/{kind_name} is not supported yet by the mesh; it will be ignored"
                        ),
                        origin: Some(origin.to_string()),
                    });
                }
            }
            Err(error) => match error.key() {
                Some(key) => out.object(key, &origin, Severity::Error, error.detail()),
                None => out.diagnostics.push(Diagnostic {
                    kind: Some(kind_name),
                    namespace: ns,
                    name: Some(name),
                    severity: Severity::Error,
                    message: error.to_string(),
                    origin: Some(origin.to_string()),
                }),
            },
        }
    }
    check_set(&mut out, &resources);
    check_jwt_sources(&mut out, &resources);
    let mut diagnostics = out.diagnostics;
    diagnostics.sort();
    diagnostics.dedup();
    Report { diagnostics }
}

fn check_one(out: &mut Collector, key: &ResourceKey, resource: &Resource, origin: &Origin) {
    for finding in validate::object(resource) {
        out.object(key, origin, finding.severity, finding.message);
    }
    if key.kind.is_istio() {
        let value = resource.to_value();
        let spec = value.get("spec").cloned().unwrap_or_default();
        for warning in support::warnings(key.kind, &spec) {
            out.object(key, origin, Severity::Warning, warning);
        }
    }
    if let Resource::RequestAuthentication(policy) = resource
        && policy.spec.target_ref.is_none()
        && policy.spec.target_refs.is_empty()
    {
        out.object(
            key,
            origin,
            Severity::Warning,
            "applies to no traffic in this mesh: waypoints enforce a RequestAuthentication that \
             names their Service or the waypoint (kind Gateway) in targetRefs; one with a \
             selector, or with neither, is for sidecars and ingress gateways"
                .into(),
        );
    }
    if let Resource::AuthorizationPolicy(policy) = resource {
        // Who enforces it, as the proxies choose: a policy bound by targetRefs is a
        // waypoint's (L7), any other the node agents' (L4). Each proxy logs the same lint.
        let spec = &policy.spec;
        let warnings = if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
            crate::policy::lint_l7(policy)
        } else {
            crate::policy::lint(policy)
        };
        for warning in warnings {
            out.object(key, origin, Severity::Warning, warning.message);
        }
    }
}

/// AuthorizationPolicies a waypoint enforces (bound by `targetRefs`) that read a validated
/// JWT while no RequestAuthentication in the files given attaches to anything in their
/// namespace: no request would carry one, so those attributes never match.
fn check_jwt_sources(out: &mut Collector, resources: &BTreeMap<ResourceKey, (Resource, Origin)>) {
    let with_jwt: BTreeSet<&str> = resources
        .iter()
        .filter_map(|(key, (resource, _))| match resource {
            Resource::RequestAuthentication(ra)
                if ra.spec.target_ref.is_some() || !ra.spec.target_refs.is_empty() =>
            {
                Some(key.namespace.as_str())
            }
            _ => None,
        })
        .collect();
    for (key, (resource, origin)) in resources {
        let Resource::AuthorizationPolicy(policy) = resource else {
            continue;
        };
        let at_waypoint = policy.spec.target_ref.is_some() || !policy.spec.target_refs.is_empty();
        if !at_waypoint || with_jwt.contains(key.namespace.as_str()) {
            continue;
        }
        for (i, rule) in policy.spec.rules.iter().enumerate() {
            let jwt = crate::policy::jwt_attributes(rule);
            if jwt.is_empty() {
                continue;
            }
            out.object(
                key,
                origin,
                Severity::Warning,
                format!(
                    "rules[{i}] uses {}, but no RequestAuthentication in the files given attaches \
                     to a Service or waypoint in namespace {}: no request carries a validated \
                     JWT, so they never match (attach one with targetRefs)",
                    jwt.join(", "),
                    key.namespace
                ),
            );
        }
    }
}

/// Every destination of a VirtualService, with its field path.
fn destinations(vs: &VirtualService) -> Vec<(String, &Destination)> {
    let mut found = Vec::new();
    for (i, route) in vs.spec.http.iter().enumerate() {
        for (d, dest) in route.route.iter().enumerate() {
            found.push((
                format!("http[{i}].route[{d}].destination"),
                &dest.destination,
            ));
        }
        if let Some(mirror) = &route.mirror {
            found.push((format!("http[{i}].mirror"), mirror));
        }
        for (m, mirror) in route.mirrors.iter().enumerate() {
            found.push((
                format!("http[{i}].mirrors[{m}].destination"),
                &mirror.destination,
            ));
        }
    }
    for (i, route) in vs.spec.tls.iter().enumerate() {
        for (d, dest) in route.route.iter().enumerate() {
            found.push((
                format!("tls[{i}].route[{d}].destination"),
                &dest.destination,
            ));
        }
    }
    for (i, route) in vs.spec.tcp.iter().enumerate() {
        for (d, dest) in route.route.iter().enumerate() {
            found.push((
                format!("tcp[{i}].route[{d}].destination"),
                &dest.destination,
            ));
        }
    }
    found
}

fn check_set(out: &mut Collector, resources: &BTreeMap<ResourceKey, (Resource, Origin)>) {
    let mut known_hosts: Vec<String> = Vec::new();
    let mut rules = Vec::new();
    for (key, (resource, origin)) in resources {
        match resource {
            Resource::Service(_) => known_hosts.push(host::service_fqdn(&key.name, &key.namespace)),
            Resource::ServiceEntry(se) => known_hosts.extend(
                se.spec
                    .hosts
                    .iter()
                    .map(|h| host::resolve(h, &key.namespace)),
            ),
            Resource::DestinationRule(dr) => rules.push((
                key,
                origin,
                dr,
                host::resolve(&dr.spec.host, &key.namespace),
            )),
            _ => {}
        }
    }
    let is_known = |hostname: &str| known_hosts.iter().any(|h| host::overlaps(h, hostname));
    let mut mesh_hosts: BTreeMap<String, Vec<&ResourceKey>> = BTreeMap::new();
    for (key, (resource, origin)) in resources {
        match resource {
            Resource::VirtualService(vs) => {
                let mesh =
                    vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
                if mesh {
                    for h in &vs.spec.hosts {
                        let resolved = host::resolve(h, &key.namespace);
                        let claimed = mesh_hosts.entry(resolved).or_default();
                        if !claimed.contains(&key) {
                            claimed.push(key);
                        }
                    }
                }
                for (path, dest) in destinations(vs) {
                    let resolved = host::resolve(&dest.host, &key.namespace);
                    if !dest.host.is_empty() && !is_known(&resolved) {
                        out.object(key, origin, Severity::Warning, format!(
                            "{path}.host: {resolved} matches no Service or ServiceEntry in the files given"
                        ));
                    }
                    let Some(subset) = &dest.subset else { continue };
                    let visible: Vec<_> = rules
                        .iter()
                        .filter(|(dr_key, _, dr, dr_host)| {
                            host::matches(dr_host, &resolved)
                                && host::visible(
                                    &dr.spec.export_to,
                                    &dr_key.namespace,
                                    &key.namespace,
                                )
                        })
                        .collect();
                    let defined = visible
                        .iter()
                        .any(|(_, _, dr, _)| dr.spec.subsets.iter().any(|s| &s.name == subset));
                    if defined {
                        continue;
                    }
                    let message = match visible.first() {
                        None => format!(
                            "{path}.subset: subset {subset:?} of {resolved} is not defined: no DestinationRule for this host; add one with the subset"
                        ),
                        Some((dr_key, _, dr, _)) => format!(
                            "{path}.subset: subset {subset:?} is not defined in DestinationRule {}/{} (it has {}); add it or fix the name",
                            dr_key.namespace,
                            dr_key.name,
                            dr.spec
                                .subsets
                                .iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    out.object(key, origin, Severity::Error, message);
                }
            }
            Resource::DestinationRule(dr) => {
                let resolved = host::resolve(&dr.spec.host, &key.namespace);
                if !dr.spec.host.is_empty() && !is_known(&resolved) {
                    out.object(
                        key,
                        origin,
                        Severity::Warning,
                        format!(
                            "host: {resolved} matches no Service or ServiceEntry in the files given"
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    for (hostname, keys) in mesh_hosts.iter().filter(|(_, keys)| keys.len() > 1) {
        for key in keys {
            let others: Vec<String> = keys
                .iter()
                .filter(|k| *k != key)
                .map(|k| format!("{}/{}", k.namespace, k.name))
                .collect();
            let origin = &resources[*key].1;
            out.object(key, origin, Severity::Error, format!(
                "host {hostname} is also claimed by VirtualService {} for the mesh; Istio would use only one of them: merge them into one VirtualService",
                others.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests;
