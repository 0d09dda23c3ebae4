//! From applied objects to what the lab runs: validation of the kinds the lab acts on
//! (Namespace, Pod, Deployment, Service, ServiceAccount) with typed Kubernetes structs, and the
//! pod templates and services they ask for.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Namespace, Pod as K8sPod, PodSpec, Service as K8sService, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::state::{Container, ContainerPort, Program, ServicePort, TargetPort};
use crate::waypoint;

/// Apps whose sample-app behaviour is a server: their containers must declare ports.
const SERVER_APPS: &[&str] = &[
    "productpage",
    "details",
    "reviews",
    "ratings",
    "httpbin",
    "helloworld",
    "tcp-echo",
];

/// Pods one Deployment (or a bare Pod) asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PodTemplate {
    pub(crate) namespace: String,
    /// The owning Deployment; `None` for a bare Pod, whose name is `name`.
    pub(crate) owner: Option<String>,
    pub(crate) name: String,
    pub(crate) template_hash: String,
    pub(crate) replicas: u32,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) service_account: String,
    pub(crate) containers: Vec<Container>,
}

/// A Service as the lab needs it; the ClusterIP is assigned by the lab.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServiceSpec {
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// `Some("None")` for headless, `Some(ip)` when the manifest asks for one.
    pub(crate) requested_ip: Option<String>,
    pub(crate) external_name: bool,
    pub(crate) ports: Vec<ServicePort>,
    pub(crate) selector: BTreeMap<String, String>,
}

/// Checks an object of a kind the lab acts on; other kinds are stored as they are.
/// `namespace` is the object's namespace after defaulting.
pub(crate) fn validate(
    group: &str,
    kind: &str,
    namespace: &str,
    value: &Value,
) -> Result<(), String> {
    match (group, kind) {
        ("", "Namespace") => typed::<Namespace>(value).map(drop),
        ("", "ServiceAccount") => typed::<ServiceAccount>(value).map(drop),
        ("", "Service") => service_spec(namespace, value).map(drop),
        ("", "Pod") => pod_template(namespace, value).map(drop),
        ("apps", "Deployment") => pod_template(namespace, value).map(drop),
        _ => Ok(()),
    }
}

/// Parses into a typed struct, naming the field path of any type error.
fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        format!("field {path}: {}", error.into_inner())
    })
}

/// The template for a Deployment or a bare Pod.
pub(crate) fn pod_template(namespace: &str, value: &Value) -> Result<PodTemplate, String> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (owner, name, replicas, labels, spec, template) = if kind == "Deployment" {
        let deployment: Deployment = typed(value)?;
        let name = deployment.metadata.name.unwrap_or_default();
        let spec = deployment
            .spec
            .ok_or("has no spec; a Deployment needs spec.selector and spec.template")?;
        let replicas = u32::try_from(spec.replicas.unwrap_or(1))
            .map_err(|_| "spec.replicas must not be negative".to_owned())?;
        let labels: BTreeMap<String, String> = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let selector = spec.selector.match_labels.unwrap_or_default();
        if selector.is_empty() && spec.selector.match_expressions.is_none() {
            return Err("spec.selector is empty; select the template's labels, e.g. matchLabels: {app: NAME}".into());
        }
        if let Some((k, v)) = selector.iter().find(|(k, v)| labels.get(*k) != Some(*v)) {
            return Err(format!(
                "spec.selector matchLabels {k}={v} does not match spec.template.metadata.labels; the selector must select the template"
            ));
        }
        let pod_spec = spec
            .template
            .spec
            .clone()
            .ok_or("has no spec.template.spec; add the pod's containers")?;
        let template = value
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(Value::Null);
        (
            Some(name.clone()),
            name,
            replicas,
            labels,
            pod_spec,
            template,
        )
    } else {
        let pod: K8sPod = typed(value)?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let spec = pod.spec.ok_or("has no spec; add the pod's containers")?;
        let template = value.get("spec").cloned().unwrap_or(Value::Null);
        (None, name, 1, labels, spec, template)
    };
    let containers = containers(&spec, &labels)?;
    Ok(PodTemplate {
        namespace: namespace.to_owned(),
        owner,
        name,
        template_hash: template_hash(&template),
        replicas,
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        labels,
        containers,
    })
}

fn containers(spec: &PodSpec, labels: &BTreeMap<String, String>) -> Result<Vec<Container>, String> {
    if spec.containers.is_empty() {
        return Err("spec.containers is empty; a pod needs at least one container".into());
    }
    let mut out = Vec::new();
    for container in &spec.containers {
        let app = labels
            .get("app")
            .cloned()
            .unwrap_or_else(|| container.name.clone());
        let version = labels
            .get("version")
            .cloned()
            .unwrap_or_else(|| "v1".to_owned());
        let mut ports = Vec::new();
        for port in container.ports.iter().flatten() {
            let number = u16::try_from(port.container_port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    format!(
                        "container {}: containerPort {} is not a port number (1-65535)",
                        container.name, port.container_port
                    )
                })?;
            ports.push(ContainerPort {
                name: port.name.clone(),
                port: number,
                protocol: port.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
            });
        }
        if ports.is_empty() && SERVER_APPS.contains(&app.as_str()) {
            return Err(format!(
                "container {} (app={app}) declares no ports; the sample app serves {app} on the container's ports: add e.g. `ports: [{{containerPort: 9080}}]`",
                container.name
            ));
        }
        let mut env = Vec::new();
        for var in container.env.iter().flatten() {
            if var.value_from.is_some() {
                continue;
            }
            env.push((var.name.clone(), var.value.clone().unwrap_or_default()));
        }
        let program = match container.image.as_deref() {
            Some(image) if waypoint::is_waypoint_image(image) => Program::Waypoint,
            _ => Program::SampleApp,
        };
        out.push(Container {
            name: container.name.clone(),
            program,
            app,
            version,
            ports,
            args: container.args.clone().unwrap_or_default(),
            env,
        });
    }
    Ok(out)
}

pub(crate) fn service_spec(namespace: &str, value: &Value) -> Result<ServiceSpec, String> {
    let service: K8sService = typed(value)?;
    let name = service.metadata.name.unwrap_or_default();
    let spec = service.spec.unwrap_or_default();
    let external_name = spec.type_.as_deref() == Some("ExternalName");
    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let number = u16::try_from(port.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port {} is not a port number (1-65535)", port.port))?;
        let target = match &port.target_port {
            None => TargetPort::Number(number),
            Some(IntOrString::Int(n)) => TargetPort::Number(
                u16::try_from(*n)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("targetPort {n} is not a port number (1-65535)"))?,
            ),
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n > 0 => TargetPort::Number(n),
                _ => TargetPort::Name(s.clone()),
            },
        };
        ports.push(ServicePort {
            name: port.name.clone(),
            port: number,
            target,
            protocol: port.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
        });
    }
    if ports.is_empty() && !external_name {
        return Err("spec.ports is empty; a Service needs at least one port".into());
    }
    if let Some(ip) = &spec.cluster_ip
        && ip != "None"
        && !ip.is_empty()
        && ip.parse::<std::net::Ipv4Addr>().is_err()
    {
        return Err(format!(
            "spec.clusterIP {ip:?} is not an IPv4 address or \"None\""
        ));
    }
    Ok(ServiceSpec {
        namespace: namespace.to_owned(),
        name,
        requested_ip: spec.cluster_ip.filter(|ip| !ip.is_empty()),
        external_name,
        ports,
        selector: spec.selector.unwrap_or_default(),
    })
}

/// A short stable hash of a pod template, spelled like Kubernetes' pod-template-hash.
fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let text = template.to_string();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (0..10)
        .map(|i| {
            let index = (hash >> (i * 6)) as usize % ALPHABET.len();
            char::from(ALPHABET[index])
        })
        .collect()
}

/// A random pod-name suffix, as a ReplicaSet makes.
pub(crate) fn pod_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

/// A random UUID (version 4), as the API server gives each object.
pub(crate) fn pod_uid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
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
    use serde_json::json;

    fn deployment(ports: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "reviews-v2"},
            "spec": {
                "selector": {"matchLabels": {"app": "reviews", "version": "v2"}},
                "template": {
                    "metadata": {"labels": {"app": "reviews", "version": "v2"}},
                    "spec": {"serviceAccountName": "bookinfo-reviews", "containers": [{
                        "name": "reviews", "image": "x",
                        "env": [{"name": "LOG_DIR", "value": "/tmp/logs"}],
                        "ports": ports
                    }]}
                }
            }
        })
    }

    #[test]
    fn deployment_becomes_a_template_with_app_version_ports_and_env() {
        let template =
            pod_template("default", &deployment(json!([{"containerPort": 9080}]))).unwrap();
        assert_eq!(template.owner.as_deref(), Some("reviews-v2"));
        assert_eq!(template.replicas, 1);
        assert_eq!(template.service_account, "bookinfo-reviews");
        let container = &template.containers[0];
        assert_eq!(
            (container.app.as_str(), container.version.as_str()),
            ("reviews", "v2")
        );
        assert_eq!(container.ports[0].port, 9080);
        assert_eq!(
            container.env,
            [("LOG_DIR".to_owned(), "/tmp/logs".to_owned())]
        );
        assert_eq!(template.template_hash.len(), 10);
    }

    #[test]
    fn server_app_without_ports_is_refused_with_the_fix() {
        let error = pod_template("default", &deployment(json!([]))).unwrap_err();
        assert!(
            error.contains("declares no ports") && error.contains("containerPort"),
            "{error}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let mut value = deployment(json!([{"containerPort": 9080}]));
        value["spec"]["replicas"] = json!("three");
        let error = validate("apps", "Deployment", "default", &value).unwrap_err();
        assert!(error.contains("spec.replicas"), "{error}");
    }

    #[test]
    fn selector_must_match_template() {
        let mut value = deployment(json!([{"containerPort": 9080}]));
        value["spec"]["selector"]["matchLabels"]["version"] = json!("v9");
        let error = pod_template("default", &value).unwrap_err();
        assert!(error.contains("version=v9"), "{error}");
    }

    #[test]
    fn template_hash_follows_the_template() {
        let a = pod_template("default", &deployment(json!([{"containerPort": 9080}]))).unwrap();
        let b = pod_template("default", &deployment(json!([{"containerPort": 9081}]))).unwrap();
        assert_ne!(a.template_hash, b.template_hash);
    }

    #[test]
    fn service_ports_default_target_and_protocol() {
        let spec = service_spec(
            "default",
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "tcp-echo"},
                    "spec": {"ports": [{"name": "tcp", "port": 9000}, {"port": 80, "targetPort": "http"}],
                             "selector": {"app": "tcp-echo"}}}),
        )
        .unwrap();
        assert_eq!(spec.ports[0].target, TargetPort::Number(9000));
        assert_eq!(spec.ports[0].protocol, "TCP");
        assert_eq!(spec.ports[1].target, TargetPort::Name("http".into()));
    }
}
