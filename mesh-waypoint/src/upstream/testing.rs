//! Fixtures shared by the upstream tests: DestinationRules from YAML (parsed by mesh-core as
//! the config sources parse them), labelled endpoints, Istio's samples.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_core::config::istio::DestinationRule;
use mesh_core::config::{Endpoint, Labels, Name, PodInfo, Resource};
use mesh_core::manifest;

use super::{EffectivePolicy, Upstream, UpstreamKey};

/// `../shared/istio-samples`, beside the repository.
pub(crate) fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/istio-samples")
}

/// Every DestinationRule in a YAML text.
pub(crate) fn rules(yaml: &str) -> Vec<DestinationRule> {
    let loaded = manifest::parse_documents(yaml, Path::new("test.yaml"));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded
        .objects
        .into_iter()
        .map(|object| match Resource::from_object(object) {
            Ok(Resource::DestinationRule(rule)) => (*rule).clone(),
            other => panic!("expected a DestinationRule, got {other:?}"),
        })
        .collect()
}

/// The one DestinationRule in a YAML text.
pub(crate) fn rule(yaml: &str) -> DestinationRule {
    let mut found = rules(yaml);
    assert_eq!(found.len(), 1, "one DestinationRule expected");
    found.remove(0)
}

pub(crate) fn sample_rules(file: &str) -> Vec<DestinationRule> {
    let path = samples().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (Istio's samples belong beside the repository)",
            path.display()
        )
    });
    rules(&text)
}

pub(crate) fn addr(text: &str) -> SocketAddr {
    text.parse().expect("socket address")
}

/// An endpoint whose pod has these labels.
pub(crate) fn endpoint(address: &str, labels: &[(&str, &str)]) -> Endpoint {
    let addr = addr(address);
    let labels: Labels = labels.iter().copied().collect();
    let pod = PodInfo {
        name: Name::new("shop", &format!("pod-{}", addr.ip())),
        uid: None,
        labels,
        service_account: "default".into(),
        node: Some("node1".into()),
        host_ip: None,
        ips: Box::new([addr.ip()]),
        workload: "app".into(),
        ready: true,
        host_network: false,
        named_ports: Box::new([]),
    };
    Endpoint {
        addr,
        pod: Some(Arc::new(pod)),
        node: Some("node1".into()),
    }
}

/// `n` unlabelled endpoints 10.0.0.1:9080, 10.0.0.2:9080, ...
pub(crate) fn endpoints(n: usize) -> Vec<Endpoint> {
    (1..=n)
        .map(|i| endpoint(&format!("10.0.0.{i}:9080"), &[]))
        .collect()
}

/// An upstream for `reviews` port 9080 under the rule in `yaml` (no subset).
pub(crate) fn upstream(yaml: &str, endpoints: Vec<Endpoint>) -> Upstream {
    let policy = EffectivePolicy::resolve(Some(&rule(yaml)), None, 9080).expect("policy");
    Upstream::new(
        UpstreamKey::new("reviews.shop.svc.cluster.local", None, 9080),
        policy,
        endpoints,
    )
}
