//! Text the lab derives from its state: each pod's `/etc/hosts`, the nftables ruleset that
//! gives every node kube-proxy's ClusterIP load balancing, and the Kubernetes objects the
//! cluster itself would hold (Pods with IPs and nodes, EndpointSlices, Namespaces).

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::state::{Pod, Service, State};

/// The range ClusterIPs come from. Traffic to it that no rule DNATed (a service without
/// ready endpoints, or an unused address) is refused at once, as kube-proxy does.
pub(crate) const SERVICE_CIDR: &str = "10.96.0.0/16";

/// Marks hairpin connections (a pod reaching itself through a ClusterIP) for masquerade.
const HAIRPIN_MARK: u32 = 0x4000;

/// A ready endpoint of one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) ip: Ipv4Addr,
    pub(crate) port: u16,
}

/// Ready endpoints of a service port, in pod-key order.
pub(crate) fn endpoints(state: &State, service: &Service, port_index: usize) -> Vec<Endpoint> {
    let port = &service.ports[port_index];
    state
        .pods
        .values()
        .filter(|pod| pod.is_ready() && service.selects(pod))
        .filter_map(|pod| {
            pod.resolve_port(&port.target).map(|p| Endpoint {
                ip: pod.ip,
                port: p,
            })
        })
        .collect()
}

/// `/etc/hosts` for a pod: services of its own namespace by short name too, every service by
/// `name.ns`, `name.ns.svc` and the full name, as cluster DNS answers.
pub(crate) fn hosts_file(state: &State, pod: &Pod) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let _ = writeln!(out, "{}\t{}", pod.ip, hostname(&pod.name));
    for service in state.services.values() {
        let ips: Vec<Ipv4Addr> = match service.cluster_ip {
            Some(ip) => vec![ip],
            None => {
                let ready: BTreeSet<Ipv4Addr> = state
                    .pods
                    .values()
                    .filter(|p| p.is_ready() && service.selects(p))
                    .map(|p| p.ip)
                    .collect();
                ready.into_iter().collect()
            }
        };
        let (name, ns) = (&service.name, &service.namespace);
        let mut names = format!("{} {name}.{ns}.svc {name}.{ns}", service.fqdn());
        if *ns == pod.namespace {
            let _ = write!(names, " {name}");
        }
        for ip in ips {
            let _ = writeln!(out, "{ip}\t{names}");
        }
    }
    out
}

/// `/etc/resolv.conf` for a pod: Kubernetes' search path. Names resolve from `/etc/hosts`;
/// the nameserver is loopback, where nobody answers, so unknown names fail at once.
pub(crate) fn resolv_conf(pod: &Pod) -> String {
    format!(
        "search {}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\noptions ndots:5 attempts:1 timeout:1\n",
        pod.namespace
    )
}

/// A Linux hostname from a pod name (at most 63 bytes).
pub(crate) fn hostname(pod_name: &str) -> &str {
    &pod_name[..pod_name.len().min(63)]
}

/// The nftables ruleset for every node: each ClusterIP port picks a ready endpoint at random
/// and is DNATed to it, as kube-proxy's nftables mode does.
pub(crate) fn nft_ruleset(state: &State) -> String {
    let mut services = String::new();
    let mut chains = String::new();
    for (service_index, service) in state.services.values().enumerate() {
        let Some(cluster_ip) = service.cluster_ip else {
            continue;
        };
        for (port_index, port) in service.ports.iter().enumerate() {
            let endpoints = endpoints(state, service, port_index);
            if endpoints.is_empty() {
                continue;
            }
            let proto = port.protocol.to_lowercase();
            let chain = format!("svc_{service_index}_{port_index}");
            let _ = writeln!(
                services,
                "    ip daddr {cluster_ip} {proto} dport {} jump {chain}",
                port.port
            );
            let targets: Vec<String> = (0..endpoints.len())
                .map(|i| format!("{i} : jump {chain}_ep{i}"))
                .collect();
            let _ = writeln!(
                chains,
                "  chain {chain} {{\n    numgen random mod {} vmap {{ {} }}\n  }}",
                endpoints.len(),
                targets.join(", ")
            );
            for (i, endpoint) in endpoints.iter().enumerate() {
                let _ = writeln!(
                    chains,
                    "  chain {chain}_ep{i} {{\n    ip saddr {ip} meta mark set meta mark or {HAIRPIN_MARK:#x}\n    meta l4proto {proto} dnat to {ip}:{port}\n  }}",
                    ip = endpoint.ip,
                    port = endpoint.port
                );
            }
        }
    }
    format!(
        "table ip msim\ndelete table ip msim\ntable ip msim {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n    jump services\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    meta mark & {HAIRPIN_MARK:#x} == {HAIRPIN_MARK:#x} masquerade\n  }}\n  chain services {{\n{services}  }}\n  chain unserved_forward {{\n    type filter hook forward priority filter; policy accept;\n    jump unserved\n  }}\n  chain unserved_output {{\n    type filter hook output priority filter; policy accept;\n    jump unserved\n  }}\n  chain unserved {{\n    ip daddr {SERVICE_CIDR} meta l4proto tcp reject with tcp reset\n    ip daddr {SERVICE_CIDR} reject\n  }}\n{chains}}}\n"
    )
}

/// The Pod object the API server would hold for a running pod.
pub(crate) fn pod_object(pod: &Pod, host_ip: Option<Ipv4Addr>, template: Option<&Value>) -> Value {
    let mut object = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": pod.uid,
            "labels": pod.labels,
        },
        "spec": {
            "nodeName": pod.node,
            "serviceAccountName": pod.service_account,
            "containers": pod.containers.iter().map(|c| json!({
                "name": c.name,
                "image": match c.program {
                    crate::state::Program::SampleApp => format!("sample-app:{}", c.app),
                    crate::state::Program::Waypoint => crate::waypoint::WAYPOINT_IMAGE.to_owned(),
                },
                "ports": c.ports.iter().map(|p| {
                    let mut port = json!({"containerPort": p.port, "protocol": p.protocol});
                    if let Some(name) = &p.name { port["name"] = json!(name); }
                    port
                }).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        },
        "status": {
            "phase": if pod.phase == crate::state::PodPhase::Failed { "Failed" } else { "Running" },
            "hostIP": host_ip.map(|ip| ip.to_string()),
            "podIP": pod.ip.to_string(),
            "podIPs": [{"ip": pod.ip.to_string()}],
            "conditions": [{"type": "Ready", "status": if pod.is_ready() { "True" } else { "False" }}],
        },
    });
    if let Some(annotations) = template.and_then(|t| t.pointer("/metadata/annotations")) {
        object["metadata"]["annotations"] = annotations.clone();
    }
    if let Some(owner) = &pod.owner {
        object["metadata"]["labels"]["pod-template-hash"] = json!(pod.template_hash);
        object["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{owner}-{}", pod.template_hash), "controller": true}]);
    }
    object
}

/// The EndpointSlice of a Service: every selected pod, with its readiness.
pub(crate) fn endpoint_slice(state: &State, service: &Service) -> Value {
    let pods: Vec<&Pod> = state.pods.values().filter(|p| service.selects(p)).collect();
    let ports: Vec<Value> = service
        .ports
        .iter()
        .filter_map(|port| {
            let target = pods.iter().find_map(|pod| pod.resolve_port(&port.target))?;
            let mut value = json!({"port": target, "protocol": port.protocol});
            if let Some(name) = &port.name {
                value["name"] = json!(name);
            }
            Some(value)
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": service.name,
            "namespace": service.namespace,
            "labels": {"kubernetes.io/service-name": service.name},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": pods.iter().map(|pod| json!({
            "addresses": [pod.ip.to_string()],
            "conditions": {"ready": pod.is_ready()},
            "nodeName": pod.node,
            "targetRef": {"kind": "Pod", "namespace": pod.namespace, "name": pod.name},
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::state::{Container, ContainerPort, PodPhase, Program, ServicePort, TargetPort};

    fn pod(name: &str, ip: [u8; 4], ready: bool) -> Pod {
        Pod {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            owner: Some("reviews-v1".into()),
            template_hash: "abc".into(),
            node: "node1".into(),
            ip: ip.into(),
            labels: BTreeMap::from([("app".to_owned(), "reviews".to_owned())]),
            service_account: "default".into(),
            containers: vec![Container {
                name: "reviews".into(),
                program: Program::SampleApp,
                app: "reviews".into(),
                version: "v1".into(),
                ports: vec![ContainerPort {
                    name: Some("http".into()),
                    port: 9080,
                    protocol: "TCP".into(),
                }],
                args: vec![],
                env: vec![],
            }],
            netns: String::new(),
            cgroup: PathBuf::new(),
            host_veth: String::new(),
            phase: if ready {
                PodPhase::Running
            } else {
                PodPhase::NotReady
            },
        }
    }

    fn state() -> State {
        let mut state = State::default();
        for p in [
            pod("a", [10, 244, 1, 2], true),
            pod("b", [10, 244, 2, 2], true),
            pod("c", [10, 244, 1, 3], false),
        ] {
            state.pods.insert(p.key(), p);
        }
        let service = Service {
            namespace: "default".into(),
            name: "reviews".into(),
            cluster_ip: Some([10, 96, 0, 10].into()),
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target: TargetPort::Name("http".into()),
                protocol: "TCP".into(),
            }],
            selector: BTreeMap::from([("app".to_owned(), "reviews".to_owned())]),
        };
        state.services.insert(service.key(), service);
        state
    }

    #[test]
    fn only_ready_pods_are_endpoints_and_named_target_ports_resolve() {
        let state = state();
        let service = state.services.values().next().unwrap();
        let eps = endpoints(&state, service, 0);
        assert_eq!(
            eps,
            [
                Endpoint {
                    ip: [10, 244, 1, 2].into(),
                    port: 9080
                },
                Endpoint {
                    ip: [10, 244, 2, 2].into(),
                    port: 9080
                }
            ]
        );
    }

    #[test]
    fn hosts_file_has_short_names_only_in_the_pods_namespace() {
        let state = state();
        let mut other = pod("x", [10, 244, 1, 9], true);
        let own = hosts_file(&state, &other);
        assert!(own.contains("10.96.0.10\treviews.default.svc.cluster.local reviews.default.svc reviews.default reviews\n"), "{own}");
        other.namespace = "shop".into();
        let foreign = hosts_file(&state, &other);
        assert!(foreign.contains("reviews.default\n"), "{foreign}");
    }

    #[test]
    fn ruleset_balances_over_ready_endpoints() {
        let rules = nft_ruleset(&state());
        assert!(
            rules.contains("ip daddr 10.96.0.10 tcp dport 80 jump svc_0_0"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "numgen random mod 2 vmap { 0 : jump svc_0_0_ep0, 1 : jump svc_0_0_ep1 }"
            ),
            "{rules}"
        );
        assert!(rules.contains("dnat to 10.244.2.2:9080"), "{rules}");
        assert!(!rules.contains("10.244.1.3"), "unready pod in {rules}");
    }

    #[test]
    fn endpoint_slice_lists_readiness() {
        let state = state();
        let slice = endpoint_slice(&state, state.services.values().next().unwrap());
        assert_eq!(slice["endpoints"].as_array().unwrap().len(), 3);
        assert_eq!(slice["ports"][0]["port"], 9080);
        assert_eq!(slice["endpoints"][2]["conditions"]["ready"], false);
    }
}
