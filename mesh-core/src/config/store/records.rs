//! What the model keeps of each Kubernetes object: the store's conversions from the typed
//! objects to the model's records, their strings shared through the store's interner.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::host;
use crate::config::labels::{Interner, Labels};
use crate::config::model::{
    Name, PodInfo, SERVICE_NAME_LABEL, ServiceInfo, ServicePortInfo, SliceEndpoint, SliceInfo,
    TargetPort,
};

/// The object's name, its namespace shared through `strings`.
pub(super) fn meta_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    strings: &mut Interner,
) -> Name {
    let namespace = meta
        .namespace
        .as_deref()
        .unwrap_or(crate::config::resource::DEFAULT_NAMESPACE);
    Name {
        namespace: strings.get(namespace),
        name: meta.name.as_deref().unwrap_or_default().into(),
    }
}

fn parse_ips<'a>(ips: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips.into_iter().filter_map(|s| s.parse().ok()) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    // Kept for the object's life: no room for more (a push reserves four).
    out.shrink_to_fit();
    out
}

fn port_u16(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

pub(super) fn interned_labels(
    labels: Option<&BTreeMap<String, String>>,
    strings: &mut Interner,
) -> Labels {
    let pairs = labels.into_iter().flatten();
    Labels::interned(pairs.map(|(k, v)| (k.as_str(), v.as_str())), strings)
}

/// What the model keeps of a Pod.
pub(crate) fn pod_info(pod: &Pod, strings: &mut Interner) -> PodInfo {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let ready = pod.metadata.deletion_timestamp.is_none()
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let ips = status.map_or_else(Vec::new, |s| {
        parse_ips(
            s.pod_ip
                .iter()
                .chain(s.pod_ips.iter().flatten().map(|p| &p.ip)),
        )
    });
    let named_ports = spec
        .into_iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((strings.get(p.name.as_deref()?), port_u16(p.container_port)?)))
        .collect::<Vec<_>>()
        .into_boxed_slice();
    let name = meta_name(&pod.metadata, strings);
    let workload = match workload_name(pod) {
        Some(workload) => strings.get(workload),
        None => name.name.clone(),
    };
    PodInfo {
        name,
        uid: pod.metadata.uid.as_deref().map(Box::from),
        labels: interned_labels(pod.metadata.labels.as_ref(), strings),
        service_account: strings.get(
            spec.and_then(|s| s.service_account_name.as_deref())
                .unwrap_or("default"),
        ),
        node: spec
            .and_then(|s| s.node_name.as_deref())
            .map(|node| strings.get(node)),
        host_ip: status
            .and_then(|s| s.host_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        ips: ips.into_boxed_slice(),
        workload,
        ready,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        named_ports,
    }
}

/// The Deployment behind a pod (its ReplicaSet owner's name less the `pod-template-hash`),
/// else its controller's name.
fn workload_name(pod: &Pod) -> Option<&str> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    match hash {
        Some(hash) if owner.kind == "ReplicaSet" => owner
            .name
            .strip_suffix(hash.as_str())
            .and_then(|n| n.strip_suffix('-'))
            .or(Some(&owner.name)),
        _ => Some(&owner.name),
    }
}

/// What the model keeps of a Service.
pub(crate) fn service_info(service: &Service, strings: &mut Interner) -> ServiceInfo {
    let name = meta_name(&service.metadata, strings);
    let spec = service.spec.as_ref();
    let cluster_ips = spec.map_or_else(Vec::new, |s| {
        parse_ips(s.cluster_ip.iter().chain(s.cluster_ips.iter().flatten()))
    });
    let mut ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = port_u16(p.port)?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(port_u16(*n)?),
                Some(IntOrString::String(s)) => match s.parse::<i32>() {
                    Ok(n) => TargetPort::Number(port_u16(n)?),
                    Err(_) => TargetPort::Name(s.clone()),
                },
            };
            Some(ServicePortInfo {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port,
                target_port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect::<Vec<_>>();
    ports.shrink_to_fit();
    ServiceInfo {
        hostname: host::service_fqdn(&name.name, &name.namespace),
        name,
        cluster_ips,
        ports,
        selector: spec
            .and_then(|s| s.selector.as_ref())
            .map(|selector| interned_labels(Some(selector), strings)),
        labels: interned_labels(service.metadata.labels.as_ref(), strings),
    }
}

/// What the model keeps of an EndpointSlice.
pub(crate) fn slice_info(slice: &EndpointSlice, strings: &mut Interner) -> SliceInfo {
    let name = meta_name(&slice.metadata, strings);
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|s| Name::new(&name.namespace, s));
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone().filter(|n| !n.is_empty()), port_u16(p.port?)?)))
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .map(|e| SliceEndpoint {
            ips: parse_ips(&e.addresses),
            // Kubernetes: an unknown readiness is to be taken as ready.
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            pod: e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    Some(Name::new(
                        r.namespace.as_deref().unwrap_or(&name.namespace),
                        r.name.as_deref()?,
                    ))
                }),
            node: e.node_name.as_deref().map(|node| strings.get(node)),
        })
        .collect();
    SliceInfo {
        name,
        service,
        ports,
        endpoints,
    }
}
