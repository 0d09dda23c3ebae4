//! `deploy/` kept true to the code. Every manifest parses with mesh-core's manifest parser;
//! every container that runs `mesh-node` or `mesh-waypoint` passes that binary's own argument
//! parser (its `command` and `args`, and the environment variables the binary reads, with the
//! downward API and Service variables Kubernetes would fill in replaced by stand-ins), so a
//! renamed flag or variable fails here; what the parsed flags name exists in the manifests
//! (mounted files, probe ports, the CA's audience and node agent account); and the RBAC grants
//! what each binary reads from the Kubernetes API. Needs no root and no cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use mesh_core::identity::service::CaAddress;
use mesh_core::manifest::{self, Object};
use mesh_core::source::kube::RESOURCES;
use mesh_node::cli::{AuthorizerKind, CaArgs, Command as NodeCommand, RunArgs};
use mesh_waypoint::server::{ConfigSource as WaypointSource, WaypointConfig};
use serde_json::Value;

/// Variables every container may set although no flag reads them.
const READ_ELSEWHERE: &[&str] = &["RUST_LOG"];

/// What `mesh-node ca --authorizer kube` asks the API server (mesh-node/src/ca/kube.rs says
/// so in prose; it keeps no machine-readable list): (group, resource, verb).
const CA_KUBE_AUTHORIZER_NEEDS: &[(&str, &str, &str)] = &[
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("", "pods", "get"),
    ("", "pods", "list"),
];

/// What `mesh-node ca --publish-root-configmap` asks of it (mesh-node/src/ca/publish.rs).
const CA_PUBLISHER_NEEDS: &[(&str, &str, &str)] = &[
    ("", "namespaces", "list"),
    ("", "configmaps", "list"),
    ("", "configmaps", "create"),
    ("", "configmaps", "patch"),
];

/// What a kube-runtime watcher does with each kind the kube source watches.
const WATCH_VERBS: &[&str] = &["get", "list", "watch"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every object in `deploy/`, failing on any problem the parser reports.
fn objects() -> Vec<Object> {
    let loaded = manifest::load_paths(&[deploy_dir()]);
    let problems: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "deploy/ does not parse: {problems:#?}");
    loaded.objects
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn list<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn strings(value: &Value, pointer: &str) -> Vec<String> {
    list(value, pointer)
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binary {
    Node,
    Waypoint,
}

impl Binary {
    fn of(name: &str) -> Option<Binary> {
        let last = name.rsplit('/').next().unwrap_or(name);
        match last.split([':', '@']).next().unwrap_or(last) {
            "mesh-node" => Some(Binary::Node),
            "mesh-waypoint" => Some(Binary::Waypoint),
            _ => None,
        }
    }
}

/// One container of a workload that runs a mesh binary.
struct Container<'a> {
    /// `Kind namespace/name container`, for messages.
    what: String,
    workload: &'a Object,
    namespace: String,
    pod: &'a Value,
    value: &'a Value,
    binary: Binary,
}

impl Container<'_> {
    fn service_account(&self) -> (String, String) {
        let account = text(self.pod, "/serviceAccountName").unwrap_or("default");
        (self.namespace.clone(), account.to_owned())
    }

    /// The volume a file the binary reads lives in, and the file's path inside it.
    fn volume_of(&self, path: &Path) -> Option<(&Value, PathBuf)> {
        list(self.value, "/volumeMounts").iter().find_map(|mount| {
            let inside = path.strip_prefix(text(mount, "/mountPath")?).ok()?;
            let name = text(mount, "/name")?;
            let volume = list(self.pod, "/volumes")
                .iter()
                .find(|v| text(v, "/name") == Some(name))?;
            Some((volume, inside.to_owned()))
        })
    }

    /// Fails unless the volume mount holding `path` lets kubelet update it (no `subPath`:
    /// kubelet never updates a file mounted that way), for a file read again when it
    /// changes (`what` it holds).
    fn assert_followed(&self, path: &Path, what: &str) {
        let mount = list(self.value, "/volumeMounts")
            .iter()
            .find(|m| text(m, "/mountPath").is_some_and(|p| path.starts_with(p)))
            .unwrap_or_else(|| panic!("{}: {} is on no mounted volume", self.what, path.display()));
        assert!(
            mount.get("subPath").is_none(),
            "{}: the mount of {what} must not use subPath (kubelet would never update it)",
            self.what
        );
    }

    /// The audience of the projected service-account token at `path`.
    fn token_audience(&self, path: &Path) -> Result<String, String> {
        let (volume, inside) = self
            .volume_of(path)
            .ok_or_else(|| format!("{}: {} is on no mounted volume", self.what, path.display()))?;
        list(volume, "/projected/sources")
            .iter()
            .filter_map(|s| s.get("serviceAccountToken"))
            .find(|t| text(t, "/path").map(Path::new) == Some(inside.as_path()))
            .map(|t| text(t, "/audience").unwrap_or_default().to_owned())
            .ok_or_else(|| {
                format!(
                    "{}: {} is not a projected service-account token",
                    self.what,
                    path.display()
                )
            })
    }

    /// Fails unless the container declares `port` and its pod asks Prometheus to scrape
    /// `path` there (the `prometheus.io/*` annotations Istio's pods carry).
    fn assert_scraped(&self, port: u16, path: &str) {
        let declared = list(self.value, "/ports")
            .iter()
            .any(|p| p.pointer("/containerPort").and_then(Value::as_u64) == Some(u64::from(port)));
        assert!(
            declared,
            "{}: metrics port {port} is not among its ports",
            self.what
        );
        let annotations = match self.workload.kind.as_str() {
            "Pod" => self.workload.value.pointer("/metadata/annotations"),
            _ => self
                .workload
                .value
                .pointer("/spec/template/metadata/annotations"),
        };
        let annotation = |key: &str| {
            annotations
                .and_then(|a| a.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        assert_eq!(
            [
                annotation("prometheus.io/scrape"),
                annotation("prometheus.io/port"),
                annotation("prometheus.io/path"),
            ],
            [
                Some("true".to_owned()),
                Some(port.to_string()),
                Some(path.to_owned())
            ],
            "{}: the pod's prometheus.io annotations must point at its metrics",
            self.what
        );
    }

    fn probe_port(&self, probe: &str) -> Option<u16> {
        let probe = self.value.get(probe)?;
        let port = probe
            .pointer("/httpGet/port")
            .or_else(|| probe.pointer("/tcpSocket/port"))?;
        port.as_u64().and_then(|p| u16::try_from(p).ok())
    }
}

/// Every container in `deploy/` whose command (or image) is a mesh binary.
fn mesh_containers(objects: &[Object]) -> Vec<Container<'_>> {
    let mut found = Vec::new();
    for object in objects {
        let pod = match object.kind.as_str() {
            "Pod" => object.value.get("spec"),
            "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => {
                object.value.pointer("/spec/template/spec")
            }
            _ => None,
        };
        let Some(pod) = pod else { continue };
        for container in list(pod, "/initContainers")
            .iter()
            .chain(list(pod, "/containers"))
        {
            let image = text(container, "/image").unwrap_or_default();
            let command = strings(container, "/command");
            let binary = command
                .first()
                .and_then(|c| Binary::of(c))
                .or_else(|| Binary::of(image));
            let Some(binary) = binary else { continue };
            found.push(Container {
                what: format!(
                    "{} container {}",
                    object.display_name(),
                    text(container, "/name").unwrap_or("?")
                ),
                workload: object,
                namespace: object.namespace.clone().unwrap_or_else(|| "default".into()),
                pod,
                value: container,
                binary,
            });
        }
    }
    found
}

/// Stand-ins for what Kubernetes fills in: the container's environment (downward API fields
/// by their path) and the variables of the Services in the pod's namespace.
fn environment(container: &Container<'_>, objects: &[Object]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if container.pod.get("enableServiceLinks") != Some(&Value::Bool(false)) {
        let services = objects.iter().filter(|o| {
            o.kind == "Service" && o.namespace.as_deref() == Some(container.namespace.as_str())
        });
        for service in services {
            let prefix = service.name.to_uppercase().replace('-', "_");
            let ip = text(&service.value, "/spec/clusterIP").unwrap_or("10.96.0.12");
            env.insert(format!("{prefix}_SERVICE_HOST"), ip.to_owned());
            if let Some(port) = service.value.pointer("/spec/ports/0/port") {
                env.insert(format!("{prefix}_SERVICE_PORT"), port.to_string());
            }
        }
    }
    for var in list(container.value, "/env") {
        let name = text(var, "/name").unwrap_or_default().to_owned();
        let value = if let Some(value) = text(var, "/value") {
            value.to_owned()
        } else if let Some(path) = text(var, "/valueFrom/fieldRef/fieldPath") {
            match path {
                "spec.nodeName" => "node-1".to_owned(),
                "status.hostIP" => "192.0.2.10".to_owned(),
                "status.podIP" => "192.0.2.20".to_owned(),
                "metadata.name" => "pod-1".to_owned(),
                "metadata.namespace" => container.namespace.clone(),
                "spec.serviceAccountName" => container.service_account().1,
                other => panic!(
                    "{}: env {name} reads fieldPath {other}, which this test has no stand-in for",
                    container.what
                ),
            }
        } else {
            "stand-in".to_owned()
        };
        env.insert(name, value);
    }
    env
}

/// Expands `$(VAR)` as kubelet does, failing on a reference it would leave unexpanded.
fn expand(
    text: &str,
    env: &BTreeMap<String, String>,
    what: &str,
    used: &mut BTreeSet<String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find(')')
            .ok_or_else(|| format!("{what}: unclosed $( in {text:?}"))?;
        let name = &after[..end];
        let value = env.get(name).ok_or_else(|| {
            format!("{what}: {text:?} refers to $({name}), which neither the container's env nor a Service in its namespace defines")
        })?;
        used.insert(name.to_owned());
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The command line a container runs: `command` + `args` expanded, then each environment
/// variable the binary reads (clap's `env`) as its flag, unless the command line sets it
/// (clap prefers the flag too). Fails on a variable the container sets that nothing reads.
fn command_line(container: &Container<'_>, objects: &[Object]) -> Result<Vec<String>, String> {
    let what = &container.what;
    let env = environment(container, objects);
    let mut used = BTreeSet::new();
    let mut argv: Vec<String> = strings(container.value, "/command")
        .into_iter()
        .chain(strings(container.value, "/args"))
        .map(|a| expand(&a, &env, what, &mut used))
        .collect::<Result<_, _>>()?;
    if argv.first().and_then(|c| Binary::of(c)) != Some(container.binary) {
        return Err(format!(
            "{what}: the container must name its binary in `command` (the image's entrypoint is not checked here)"
        ));
    }
    let root = match container.binary {
        Binary::Node => mesh_node::cli::Cli::command(),
        Binary::Waypoint => mesh_waypoint::cli::Cli::command(),
    };
    let command = match (container.binary, argv.get(1)) {
        (Binary::Node, Some(sub)) => root
            .find_subcommand(sub)
            .cloned()
            .ok_or_else(|| format!("{what}: mesh-node has no subcommand {sub:?}"))?,
        _ => root,
    };
    let reads: BTreeMap<String, String> = command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            Some((env, arg.get_long()?.to_owned()))
        })
        .collect();
    for var in list(container.value, "/env") {
        let name = text(var, "/name").unwrap_or_default();
        match reads.get(name) {
            Some(long) => {
                let flag = format!("--{long}");
                let given = argv
                    .iter()
                    .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
                if !given {
                    argv.push(format!("{flag}={}", env[name]));
                }
            }
            None if used.contains(name) || READ_ELSEWHERE.contains(&name) => {}
            None => {
                return Err(format!(
                    "{what}: env {name} is set, but {} reads no such variable (renamed?) and no argument refers to it",
                    argv[0],
                ));
            }
        }
    }
    Ok(argv)
}

/// What a container's command line parses to.
enum Parsed {
    Run(RunArgs),
    Ca(CaArgs),
    Waypoint(WaypointConfig),
}

fn parse(container: &Container<'_>, objects: &[Object]) -> Parsed {
    let argv = command_line(container, objects).unwrap_or_else(|error| panic!("{error}"));
    let what = &container.what;
    match container.binary {
        Binary::Node => match mesh_node::cli::Cli::try_parse_checked(&argv) {
            Ok(cli) => match cli.command {
                NodeCommand::Run(args) => Parsed::Run(args),
                NodeCommand::Ca(args) => Parsed::Ca(args),
                other => panic!("{what}: runs {other:?}, neither `run` nor `ca`"),
            },
            Err(error) => panic!("{what}: mesh-node refuses {argv:?}:\n{error}"),
        },
        Binary::Waypoint => {
            match mesh_waypoint::cli::Cli::try_parse_checked(&argv).and_then(|c| c.into_config()) {
                Ok(config) => Parsed::Waypoint(config),
                Err(error) => panic!("{what}: mesh-waypoint refuses {argv:?}:\n{error}"),
            }
        }
    }
}

/// Whether the ClusterRoles bound to a service account grant `verb` on `group/resource`.
fn granted(
    objects: &[Object],
    account: &(String, String),
    group: &str,
    resource: &str,
    verb: &str,
) -> bool {
    let roles: BTreeSet<&str> = objects
        .iter()
        .filter(|o| o.kind == "ClusterRoleBinding")
        .filter(|binding| {
            list(&binding.value, "/subjects").iter().any(|s| {
                text(s, "/kind") == Some("ServiceAccount")
                    && text(s, "/name") == Some(account.1.as_str())
                    && text(s, "/namespace") == Some(account.0.as_str())
            })
        })
        .filter(|binding| text(&binding.value, "/roleRef/kind") == Some("ClusterRole"))
        .filter_map(|binding| text(&binding.value, "/roleRef/name"))
        .collect();
    let matches =
        |values: Vec<String>, wanted: &str| values.iter().any(|v| v == "*" || v == wanted);
    objects
        .iter()
        .filter(|o| o.kind == "ClusterRole" && roles.contains(o.name.as_str()))
        .flat_map(|role| list(&role.value, "/rules"))
        .any(|rule| {
            matches(strings(rule, "/apiGroups"), group)
                && matches(strings(rule, "/resources"), resource)
                && matches(strings(rule, "/verbs"), verb)
        })
}

#[test]
fn every_manifest_parses_and_every_mesh_binary_is_deployed() {
    let objects = objects();
    let containers = mesh_containers(&objects);
    let parsed: Vec<Parsed> = containers.iter().map(|c| parse(c, &objects)).collect();
    let runs = parsed
        .iter()
        .filter(|p| matches!(p, Parsed::Run(_)))
        .count();
    let cas = parsed.iter().filter(|p| matches!(p, Parsed::Ca(_))).count();
    let waypoints = parsed
        .iter()
        .filter(|p| matches!(p, Parsed::Waypoint(_)))
        .count();
    assert_eq!(
        (runs, cas, waypoints),
        (1, 1, 1),
        "deploy/ should run one node agent, one CA and one waypoint template"
    );
    for container in &containers {
        let (namespace, account) = container.service_account();
        assert!(
            objects.iter().any(|o| o.kind == "ServiceAccount"
                && o.name == account
                && o.namespace.as_deref() == Some(namespace.as_str())),
            "{}: runs as ServiceAccount {namespace}/{account}, which deploy/ does not create",
            container.what
        );
    }
}

#[test]
fn mesh_containers_name_files_ports_and_accounts_the_manifests_provide() {
    let objects = objects();
    let containers = mesh_containers(&objects);
    let ca = containers
        .iter()
        .find_map(|c| match parse(c, &objects) {
            Parsed::Ca(args) => Some((c, args)),
            _ => None,
        })
        .expect("deploy/ runs `mesh-node ca`");
    let (ca_container, ca_args) = ca;
    assert_eq!(
        ca_args.authorizer,
        AuthorizerKind::Kube,
        "the CA on Kubernetes proves tokens with TokenReview"
    );
    assert_eq!(
        ca_container.probe_port("readinessProbe"),
        Some(ca_args.listen.port())
    );
    assert!(
        ca_container.volume_of(&ca_args.root_cert_out).is_some(),
        "{}: --root-cert-out {} is on no mounted volume (the root file system is read-only)",
        ca_container.what,
        ca_args.root_cert_out.display()
    );
    // The CA signs with Istio's plug-in CA Secret, so its root outlives the pod.
    let ca_dir = ca_args
        .ca_dir
        .as_deref()
        .expect("the deployed CA signs with --ca-dir files, so its root outlives restarts");
    let (volume, inside) = ca_container
        .volume_of(&ca_dir.join("ca-key.pem"))
        .unwrap_or_else(|| {
            panic!(
                "{}: --ca-dir {} is on no mounted volume",
                ca_container.what,
                ca_dir.display()
            )
        });
    assert_eq!(
        (text(volume, "/secret/secretName"), inside.as_path()),
        (Some("cacerts"), Path::new("ca-key.pem")),
        "{}: --ca-dir is Istio's cacerts Secret, mounted whole",
        ca_container.what
    );
    // The CA follows its files (a root rotation restarts nothing).
    ca_container.assert_followed(&ca_dir.join("ca-key.pem"), "the cacerts Secret");
    let ca_service = objects
        .iter()
        .find(|o| {
            o.kind == "Service"
                && o.name == "mesh-ca"
                && o.namespace == ca_container.workload.namespace
        })
        .expect("a Service mesh-ca beside the CA");
    // Evictions (a node drain) leave a replica to renew from.
    let replicas = ca_container
        .workload
        .value
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let pod_labels = ca_container
        .workload
        .value
        .pointer("/spec/template/metadata/labels");
    let budget = objects
        .iter()
        .find(|o| {
            o.kind == "PodDisruptionBudget"
                && o.namespace == ca_container.workload.namespace
                && o.value
                    .pointer("/spec/selector/matchLabels")
                    .and_then(Value::as_object)
                    .is_some_and(|wanted| {
                        wanted
                            .iter()
                            .all(|(k, v)| pod_labels.and_then(|l| l.get(k)) == Some(v))
                    })
        })
        .expect("a PodDisruptionBudget selecting the CA's pods");
    let min_available = budget
        .value
        .pointer("/spec/minAvailable")
        .and_then(Value::as_u64);
    assert!(
        replicas >= 2 && min_available.is_some_and(|m| (1..replicas).contains(&m)),
        "the CA runs {replicas} replicas and its budget keeps {min_available:?}: at least one must stay and one may go"
    );
    let ca_port = ca_service
        .value
        .pointer("/spec/ports/0/port")
        .and_then(Value::as_u64);
    assert_eq!(
        ca_service
            .value
            .pointer("/spec/ports/0/targetPort")
            .and_then(Value::as_u64),
        Some(u64::from(ca_args.listen.port())),
        "the mesh-ca Service must target the CA's --listen port"
    );

    // The ConfigMap the clients mount is the one the CA keeps in every namespace.
    assert_eq!(
        ca_args.publish_root_configmap.as_deref(),
        Some("mesh-ca-root"),
        "{}: the CA publishes the mesh-ca-root ConfigMap the agents and waypoints mount",
        ca_container.what
    );
    // What a client of the CA must hold: the root from the ConfigMap, a token for the CA's
    // audience, the CA's address.
    let ca_namespace = ca_container.namespace.clone();
    let ca_ip = text(&ca_service.value, "/spec/clusterIP").unwrap_or("10.96.0.12");
    let client = |container: &Container<'_>, root: &Path, credential: &Path, addr: &CaAddress| {
        let (volume, _) = container.volume_of(root).unwrap_or_else(|| {
            panic!(
                "{}: --ca-root {} is on no mounted volume",
                container.what,
                root.display()
            )
        });
        assert_eq!(
            text(volume, "/configMap/name"),
            Some("mesh-ca-root"),
            "{}: the root comes from the mesh-ca-root ConfigMap",
            container.what
        );
        // The agents read the root file again when it changes (a root rotation).
        container.assert_followed(root, "the CA root");
        let audience = container.token_audience(credential).unwrap();
        assert_eq!(
            audience, ca_args.token_audience,
            "{}: its token must be made for the CA's --token-audience",
            container.what
        );
        assert_eq!(
            Some(u64::from(addr.port())),
            ca_port,
            "{}: CA port",
            container.what
        );
        // The mesh-ca Service, by its ClusterIP (the Service's variables) or its name.
        let reaches_the_service = match addr {
            CaAddress::Ip(ip) => ip.ip().to_string() == ca_ip,
            CaAddress::Name { host, .. } => [
                format!("mesh-ca.{ca_namespace}.svc"),
                format!("mesh-ca.{ca_namespace}.svc.cluster.local"),
            ]
            .contains(host),
        };
        assert!(
            reaches_the_service,
            "{}: the CA address {addr} is not the mesh-ca Service's",
            container.what
        );
    };
    for container in &containers {
        match parse(container, &objects) {
            Parsed::Run(args) => {
                assert_eq!(
                    args.config_source().unwrap(),
                    mesh_node::agent::ConfigSource::Kube,
                    "{}: a cluster's agents read the Kubernetes API",
                    container.what
                );
                assert_eq!(
                    container.probe_port("readinessProbe"),
                    Some(args.readiness_port),
                    "{}: readiness probe port",
                    container.what
                );
                container.assert_scraped(args.metrics_port, "/stats/prometheus");
                client(
                    container,
                    &args.ca_root,
                    &args.ca_credential_file,
                    &args.ca_addr,
                );
                let (namespace, account) = container.service_account();
                assert_eq!(
                    ca_args.node_agent_service_account,
                    mesh_core::config::Name::new(&namespace, &account),
                    "the CA's --node-agent-service-account must be the DaemonSet's account"
                );
            }
            Parsed::Waypoint(config) => {
                assert_eq!(config.source, WaypointSource::Kube, "{}", container.what);
                assert_eq!(
                    container.probe_port("readinessProbe"),
                    Some(config.hbone_port),
                    "{}: the waypoint is ready once HBONE listens",
                    container.what
                );
                container.assert_scraped(config.metrics_port, "/stats/prometheus");
                client(
                    container,
                    &config.ca.root,
                    &config.ca.credential_file,
                    &config.ca.addr,
                );
            }
            Parsed::Ca(args) => container.assert_scraped(args.metrics_listen.port(), "/metrics"),
        }
    }
}

#[test]
fn rbac_grants_what_each_binary_reads_from_the_api() {
    let objects = objects();
    let containers = mesh_containers(&objects);
    let mut missing = Vec::new();
    for container in &containers {
        let account = container.service_account();
        let needs: Vec<(&str, &str, &str)> = match parse(container, &objects) {
            // The kube config source: a watcher per kind in RESOURCES, cluster-wide.
            Parsed::Run(_) | Parsed::Waypoint(_) => RESOURCES
                .iter()
                .flat_map(|r| WATCH_VERBS.iter().map(|v| (r.group, r.plural, *v)))
                .collect(),
            Parsed::Ca(args) => {
                let mut needs = match args.authorizer {
                    AuthorizerKind::Kube => CA_KUBE_AUTHORIZER_NEEDS.to_vec(),
                    AuthorizerKind::File => Vec::new(),
                };
                if args.publish_root_configmap.is_some() {
                    needs.extend_from_slice(CA_PUBLISHER_NEEDS);
                }
                needs
            }
        };
        for (group, resource, verb) in needs {
            if !granted(&objects, &account, group, resource, verb) {
                missing.push(format!(
                    "{}: ServiceAccount {}/{} may not {verb} {resource}.{group}",
                    container.what, account.0, account.1
                ));
            }
        }
    }
    assert!(missing.is_empty(), "RBAC in deploy/ is short: {missing:#?}");
}

#[test]
fn a_renamed_flag_or_variable_is_caught() {
    let objects = objects();
    let containers = mesh_containers(&objects);
    let agent = containers
        .iter()
        .find(|c| c.binary == Binary::Node && c.workload.kind == "DaemonSet")
        .expect("the node agent DaemonSet");
    let mut argv = command_line(agent, &objects).unwrap();
    for arg in &mut argv {
        if let Some(value) = arg.strip_prefix("--pods-cgroup=") {
            *arg = format!("--pod-cgroup={value}");
        }
    }
    let error = mesh_node::cli::Cli::try_parse_checked(&argv).unwrap_err();
    assert!(error.to_string().contains("--pod-cgroup"), "{error}");

    let waypoint = containers
        .iter()
        .find(|c| c.binary == Binary::Waypoint)
        .expect("the waypoint template");
    let mut renamed = waypoint.value.clone();
    for var in renamed["env"].as_array_mut().expect("env") {
        if var["name"] == "POD_IP" {
            var["name"] = "POD_ADDRESS".into();
        }
    }
    let changed = Container {
        what: waypoint.what.clone(),
        workload: waypoint.workload,
        namespace: waypoint.namespace.clone(),
        pod: waypoint.pod,
        value: &renamed,
        binary: waypoint.binary,
    };
    let error = command_line(&changed, &objects).unwrap_err();
    assert!(error.contains("env POD_ADDRESS"), "{error}");
}

#[test]
fn admin_pages_stay_on_loopback_as_deployed() {
    let objects = objects();
    for container in mesh_containers(&objects) {
        let admin = match parse(&container, &objects) {
            Parsed::Run(args) => std::net::IpAddr::V4(args.admin_ip),
            Parsed::Waypoint(config) => config.admin.ip(),
            Parsed::Ca(_) => continue,
        };
        assert!(
            admin.is_loopback(),
            "{}: admin (/config_dump) listens on {admin}; it is the operator's, keep it on loopback",
            container.what
        );
    }
}
