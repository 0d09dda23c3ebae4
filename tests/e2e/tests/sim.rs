//! The simulated cluster itself, for real (root): lifecycle and cleanup, pod networking,
//! ClusterIP and names, Istio's sample apps, refusal of bad manifests, and the waypoint
//! controller (a Gateway of class `istio-waypoint` deploys a `mesh-waypoint` pod).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mesh_e2e::{TestLab, istio_sample, require_root, unique_name};
use mesh_sim::{Lab, LabOptions};

fn netns_of(lab: &str) -> Vec<String> {
    let prefix = format!("msim-{lab}-");
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn cgroup_of(lab: &str) -> PathBuf {
    PathBuf::from("/sys/fs/cgroup/unified/mesh-sim").join(lab)
}

fn pids_below(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.parse::<i32>().ok()));
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    pids
}

/// Alive and not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn assert_nothing_left(lab: &str, pids: &[i32]) {
    assert!(
        netns_of(lab).is_empty(),
        "namespaces left: {:?}",
        netns_of(lab)
    );
    assert!(
        !cgroup_of(lab).exists(),
        "cgroup {} left",
        cgroup_of(lab).display()
    );
    assert!(!Lab::state_dir(lab).exists(), "state folder left");
    let pins: Vec<String> = std::fs::read_dir(mesh_sim::BPFFS)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("msim-{lab}-")))
        .collect();
    assert!(pins.is_empty(), "bpffs pins left: {pins:?}");
    let alive: Vec<i32> = pids.iter().copied().filter(|p| running(*p)).collect();
    assert!(alive.is_empty(), "processes left: {alive:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let needle = format!("msim-{lab}-");
    assert!(!mounts.contains(&needle), "mounts left for {needle}");
}

#[test]
fn up_then_down_leaves_nothing_behind_even_without_state() {
    require_root();
    let httpbin = istio_sample("httpbin/httpbin.yaml");
    let curl = istio_sample("curl/curl.yaml");

    // A normal lifecycle.
    let mut lab = TestLab::up("dwn", 2, &[httpbin.clone(), curl.clone()]);
    let name = lab.name.clone();
    assert_eq!(netns_of(&name).len(), 1 + 2 + 2, "network, 2 nodes, 2 pods");
    // With the mesh on: node agents (processes in the lab cgroup) and their bpffs pins.
    lab.lab
        .start_mesh(&mesh_sim::MeshOptions {
            binary: None,
            ..mesh_sim::MeshOptions::default()
        })
        .unwrap();
    assert!(mesh_sim::pin_dir(&name, "node1").exists());
    let pids = pids_below(&cgroup_of(&name));
    assert!(pids.len() >= 4, "pod and agent processes: {pids:?}");
    drop(lab);
    assert_nothing_left(&name, &pids);

    // A crashed `sim up`: the state file is gone, the namespaces and processes are not.
    let lab = TestLab::up("crs", 2, &[httpbin, curl]);
    let name = lab.name.clone();
    let pids = pids_below(&cgroup_of(&name));
    std::fs::remove_file(Lab::state_dir(&name).join("state.json")).unwrap();
    let removed = Lab::down(&name).unwrap();
    assert!(
        removed.iter().any(|r| r.starts_with("netns")),
        "{removed:?}"
    );
    assert_nothing_left(&name, &pids);
    assert!(Lab::down(&name).unwrap().is_empty(), "down is idempotent");
    drop(lab);
}

#[test]
fn pods_reach_each_other_by_pod_ip_cluster_ip_and_service_names() {
    let lab = TestLab::up(
        "net",
        2,
        &[
            istio_sample("httpbin/httpbin.yaml"),
            istio_sample("curl/curl.yaml"),
        ],
    );
    let server = lab.pod("httpbin").clone();
    let client = lab.pod("curl").clone();
    assert_ne!(
        server.node, client.node,
        "round-robin puts them on different nodes"
    );
    let cluster_ip = lab.lab.state().services["default/httpbin"]
        .cluster_ip
        .unwrap();

    for url in [
        format!("http://{}:8080/ip", server.ip),
        format!("http://{cluster_ip}:8000/ip"),
        "http://httpbin:8000/ip".to_owned(),
        "http://httpbin.default:8000/ip".to_owned(),
        "http://httpbin.default.svc.cluster.local:8000/ip".to_owned(),
    ] {
        let body = lab
            .curl("curl", &[&url])
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let origin: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            origin["origin"],
            client.ip.to_string(),
            "{url}: the server sees the client pod's IP"
        );
    }

    // Another namespace: qualified names resolve, the short name does not.
    let dir = std::env::temp_dir().join(format!("{}-other", lab.name));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("other.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  namespace: other\n  labels:\n    app: curl\nspec:\n  containers:\n  - name: curl\n    image: curlimages/curl\n",
    )
    .unwrap();
    let mut lab = lab;
    lab.lab.apply(&[manifest], "default").unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let body = lab
        .curl("other/client", &["http://httpbin.default:8000/get"])
        .unwrap();
    assert!(body.contains("\"url\""), "{body}");
    assert!(
        lab.curl("other/client", &["http://httpbin:8000/get"])
            .is_err()
    );

    // A pod reaching itself through its own service (hairpin).
    let body = lab.curl("httpbin", &["http://httpbin:8000/ip"]).unwrap();
    assert!(body.contains("origin"), "{body}");
}

#[test]
fn bookinfo_from_istios_file_renders_every_review_version_and_its_apis() {
    let lab = TestLab::up(
        "bki",
        2,
        &[
            istio_sample("bookinfo/platform/kube/bookinfo.yaml"),
            istio_sample("curl/curl.yaml"),
        ],
    );
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let page = lab
            .curl("curl", &["http://productpage:9080/productpage"])
            .unwrap();
        assert!(page.contains("<title>Simple Bookstore App</title>"));
        assert!(page.contains("The Comedy of Errors"));
        seen.insert(if page.contains("<font color=\"red\">") {
            "v3"
        } else if page.contains("<font color=\"black\">") {
            "v2"
        } else {
            "v1"
        });
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        3,
        "review versions seen in 60 requests: {seen:?}"
    );

    let products: serde_json::Value = serde_json::from_str(
        &lab.curl("curl", &["http://productpage:9080/api/v1/products"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(products[0]["id"], 0);
    assert_eq!(products[0]["title"], "The Comedy of Errors");
    let details: serde_json::Value = serde_json::from_str(
        &lab.curl("curl", &["http://productpage:9080/api/v1/products/0"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(details["author"], "William Shakespeare");
    assert_eq!(details["ISBN-10"], "1234567890");
    let ratings: serde_json::Value = serde_json::from_str(
        &lab.curl(
            "curl",
            &["http://productpage:9080/api/v1/products/0/ratings"],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(ratings["ratings"]["Reviewer1"], 5);
    let reviews: serde_json::Value = serde_json::from_str(
        &lab.curl(
            "curl",
            &["http://productpage:9080/api/v1/products/0/reviews"],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(reviews["reviews"].as_array().unwrap().len(), 2);
    assert!(
        reviews["podname"]
            .as_str()
            .unwrap()
            .starts_with("reviews-v")
    );

    // Sign in as jason: the page greets him, and end-user reaches ratings through reviews.
    let jar = format!("/tmp/{}-cookies", lab.name);
    lab.curl(
        "curl",
        &[
            "-c",
            &jar,
            "-d",
            "username=jason",
            "-d",
            "passwd=x",
            "http://productpage:9080/login",
        ],
    )
    .unwrap();
    let mut greeted = false;
    for _ in 0..30 {
        let page = lab
            .curl("curl", &["-b", &jar, "http://productpage:9080/productpage"])
            .unwrap();
        greeted |= page.contains("jason");
        if page.contains("<font color=") {
            break;
        }
    }
    let _ = std::fs::remove_file(&jar);
    assert!(greeted, "productpage does not show the signed-in user");
    let ratings_log = lab.lab.logs(lab.pod("ratings-v1")).unwrap();
    assert!(
        ratings_log.contains("jason"),
        "ratings never saw end-user: jason:\n{ratings_log}"
    );
}

#[test]
fn tcp_echo_and_helloworld_behave_as_istios_samples() {
    let lab = TestLab::up(
        "smp",
        2,
        &[
            istio_sample("tcp-echo/tcp-echo-services.yaml"),
            istio_sample("helloworld/helloworld.yaml"),
            istio_sample("curl/curl.yaml"),
        ],
    );
    let mut words = BTreeSet::new();
    for _ in 0..40 {
        let reply = lab
            .exec(
                "curl",
                "bash",
                &[
                    "-c",
                    "exec 3<>/dev/tcp/tcp-echo/9000; echo world >&3; head -n1 <&3",
                ],
            )
            .unwrap();
        words.insert(reply.trim().to_owned());
        if words.len() == 2 {
            break;
        }
    }
    assert_eq!(
        words,
        BTreeSet::from(["one world".to_owned(), "two world".to_owned()])
    );

    let mut versions = BTreeSet::new();
    for _ in 0..40 {
        let reply = lab.curl("curl", &["http://helloworld:5000/hello"]).unwrap();
        let pod = reply.trim().rsplit("instance: ").next().unwrap().to_owned();
        assert!(reply.starts_with("Hello version: v"), "{reply}");
        assert!(pod.starts_with("helloworld-v"), "{reply}");
        let version = reply.split(',').next().unwrap().to_owned();
        versions.insert(version);
        if versions.len() == 2 {
            break;
        }
    }
    assert_eq!(
        versions,
        BTreeSet::from([
            "Hello version: v1".to_owned(),
            "Hello version: v2".to_owned()
        ])
    );
}

#[test]
fn bad_manifests_are_refused_with_clear_errors_and_change_nothing() {
    require_root();
    let dir = std::env::temp_dir().join(unique_name("bad"));
    std::fs::create_dir_all(&dir).unwrap();
    let good_service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: good\nspec:\n  ports:\n  - port: 80\n  selector:\n    app: good\n---\n";
    let cases = [
        (
            "invalid-yaml",
            "apiVersion: v1\nkind: Service\nmetadata: [oops\n",
            "invalid YAML",
        ),
        (
            "no-ports",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels:\n      app: httpbin\n  template:\n    metadata:\n      labels:\n        app: httpbin\n    spec:\n      containers:\n      - name: httpbin\n        image: x\n",
            "declares no ports",
        ),
        (
            "unknown-kind",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
            "no kind \"Widget\"",
        ),
        (
            "duplicate",
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: twice\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: twice\n",
            "defined twice",
        ),
        (
            "no-namespace",
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  namespace: nowhere\n",
            "namespace \"nowhere\" not found",
        ),
    ];

    // `up` with a bad file builds nothing.
    let bad_up = dir.join("bad-up.yaml");
    std::fs::write(&bad_up, format!("{good_service}{}", cases[1].1)).unwrap();
    let name = unique_name("bup");
    let options = LabOptions {
        name: name.clone(),
        nodes: 2,
        sample_app: None,
    };
    let error = Lab::up(&options, &[bad_up])
        .err()
        .expect("a bad manifest fails `up`")
        .to_string();
    assert!(error.contains("declares no ports"), "{error}");
    assert!(
        netns_of(&name).is_empty() && !Lab::state_dir(&name).exists(),
        "`up` left state behind"
    );

    // `apply` of a bad file changes nothing, even the good object beside the bad one.
    let mut lab = TestLab::up("bap", 1, &[]);
    let before = lab.lab.state().objects.clone();
    for (case, text, expected) in cases {
        let file = dir.join(format!("{case}.yaml"));
        std::fs::write(&file, format!("{good_service}{text}")).unwrap();
        let error = lab
            .lab
            .apply(std::slice::from_ref(&file), "default")
            .err()
            .unwrap_or_else(|| panic!("{case} was accepted"))
            .to_string();
        assert!(error.contains(expected), "{case}: {error}");
        assert!(
            error.contains(&file.display().to_string()),
            "{case}: the error names the file: {error}"
        );
        assert_eq!(lab.lab.state().objects, before, "{case} changed the lab");
        assert!(lab.lab.state().pods.is_empty() && lab.lab.state().services.is_empty());
    }
    assert_eq!(
        netns_of(&lab.name).len(),
        2,
        "only the network and the node"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn labels_change_live_without_restarting_pods() {
    let mut lab = TestLab::up(
        "lbl",
        2,
        &[
            istio_sample("httpbin/httpbin.yaml"),
            istio_sample("curl/curl.yaml"),
        ],
    );
    let config = lab.lab.config_dir();
    let server = lab.pod("httpbin").clone();
    let pids_before = pids_below(&server.cgroup);

    lab.lab
        .label(
            "ns/default",
            &["istio.io/dataplane-mode=ambient".to_owned()],
        )
        .unwrap();
    let namespace =
        std::fs::read_to_string(config.join("_cluster.namespace.core.default.yaml")).unwrap();
    assert!(
        namespace.contains("istio.io/dataplane-mode: ambient"),
        "{namespace}"
    );

    // Without its app label the pod leaves the service: no endpoint, a fast failure.
    lab.lab
        .label(&format!("pod/{}", server.key()), &["app-".to_owned()])
        .unwrap();
    let slice =
        std::fs::read_to_string(config.join("default.endpointslice.discovery.k8s.io.httpbin.yaml"))
            .unwrap();
    assert!(!slice.contains(&server.ip.to_string()), "{slice}");
    let started = std::time::Instant::now();
    assert!(lab.curl("curl", &["http://httpbin:8000/ip"]).is_err());
    assert!(
        started.elapsed().as_secs() < 5,
        "a ClusterIP without endpoints must fail fast"
    );

    lab.lab
        .label(
            &format!("pod/{}", server.key()),
            &["app=httpbin".to_owned()],
        )
        .unwrap();
    assert!(
        lab.curl("curl", &["http://httpbin:8000/ip"])
            .unwrap()
            .contains("origin")
    );
    assert_eq!(
        pids_below(&server.cgroup),
        pids_before,
        "the pod kept running"
    );

    let error = lab
        .lab
        .label("ns/nowhere", &["a=b".to_owned()])
        .unwrap_err()
        .to_string();
    assert!(error.contains("Namespace nowhere not found"), "{error}");
    let error = lab
        .lab
        .label("ns/default", &["=b".to_owned()])
        .unwrap_err()
        .to_string();
    assert!(error.contains("key=value"), "{error}");
}

/// The environment of a running process, from `/proc`.
fn environ(pid: i32) -> BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (key, value) = entry.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

fn yaml_file(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} is missing: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap()
}

/// The CA's credentials map entries that name a pod: pod key -> token.
fn pod_credentials(lab: &str) -> BTreeMap<String, String> {
    let path = Lab::state_dir(lab).join("ca/node-credentials.json");
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    map.into_iter()
        .filter_map(|(token, owner)| Some((owner["pod"].as_str()?.to_owned(), token)))
        .collect()
}

#[test]
fn waypoint_gateway_deploys_a_waypoint_and_deleting_it_removes_everything() {
    use std::os::unix::fs::PermissionsExt as _;

    let mut lab = TestLab::up("wpt", 2, &[]);
    lab.lab
        .start_mesh(&mesh_sim::MeshOptions::default())
        .unwrap_or_else(|e| panic!("lab {}: the mesh did not start: {e}", lab.name));
    let yaml = meshctl::waypoint::generate(&meshctl::waypoint::GenerateArgs {
        namespace: "default".into(),
        name: Some("waypoint".into()),
        for_service_account: Some("reviews".into()),
    })
    .unwrap();
    let gateway = lab.manifest("waypoint.yaml", &yaml);

    let applied = lab
        .lab
        .apply(std::slice::from_ref(&gateway), "default")
        .unwrap();
    for expected in [
        "Gateway default/waypoint created",
        "ServiceAccount default/waypoint created",
        "Deployment default/waypoint created",
        "Service default/waypoint created",
    ] {
        assert!(
            applied.objects.iter().any(|o| o == expected),
            "{expected}: {applied:#?}"
        );
    }

    // The objects, as istiod would make them.
    let objects = &lab.lab.state().objects;
    assert!(objects.contains_key("/ServiceAccount/default/waypoint"));
    let service = &objects["/Service/default/waypoint"];
    assert_eq!(
        service["spec"]["selector"],
        serde_json::json!({"gateway.networking.k8s.io/gateway-name": "waypoint"})
    );
    assert_eq!(
        service["spec"]["ports"][0],
        serde_json::json!({"name": "mesh", "port": 15008, "targetPort": 15008,
                           "appProtocol": "hbone", "protocol": "TCP"})
    );
    let cluster_ip = lab.lab.state().services["default/waypoint"]
        .cluster_ip
        .expect("the waypoint Service has a ClusterIP");
    assert_eq!(service["spec"]["clusterIP"], cluster_ip.to_string());

    // The pod: a normal lab pod running mesh-waypoint, never captured itself.
    let pod = lab.pod("default/waypoint").clone();
    assert_eq!(pod.owner.as_deref(), Some("waypoint"));
    assert_eq!(pod.service_account, "waypoint");
    assert_eq!(
        pod.labels.get("gateway.networking.k8s.io/gateway-name"),
        Some(&"waypoint".to_owned())
    );
    assert_eq!(
        pod.labels.get("istio.io/dataplane-mode"),
        Some(&"none".to_owned())
    );
    assert_eq!(pod.containers[0].program, mesh_sim::Program::Waypoint);
    assert_eq!(pod.containers[0].ports[0].port, 15008);

    // Its credential: a 0600 file in the pod's folder, and the CA's map names the pod.
    let state_dir = Lab::state_dir(&lab.name);
    let credential_file = state_dir
        .join("pods")
        .join(format!("default_{}", pod.name))
        .join("ca.credential");
    let token = std::fs::read_to_string(&credential_file).unwrap();
    let mode = std::fs::metadata(&credential_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", credential_file.display());
    assert_eq!(
        pod_credentials(&lab.name).get(&pod.key()),
        Some(&token),
        "the CA's credentials map has the pod's token"
    );

    // The process: mesh-waypoint inside the pod, with the env contract.
    let pids = pids_below(&pod.cgroup);
    assert_eq!(pids.len(), 1, "one process in the pod: {pids:?}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", pids[0])).unwrap();
    assert!(
        exe.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("mesh-waypoint")),
        "the pod runs {}",
        exe.display()
    );
    let env = environ(pids[0]);
    let config_dir = lab.lab.config_dir();
    let expected = [
        ("WAYPOINT_NAME", "waypoint".to_owned()),
        ("POD_NAMESPACE", "default".to_owned()),
        ("SERVICE_ACCOUNT", "waypoint".to_owned()),
        ("POD_IP", pod.ip.to_string()),
        ("WAYPOINT_FOR_SERVICE_ACCOUNT", "reviews".to_owned()),
        ("MESH_CONFIG_DIR", config_dir.display().to_string()),
        ("CA_ADDR", format!("10.10.0.11:{}", mesh_sim::CA_PORT)),
        (
            "CA_ROOT",
            state_dir.join("ca/root-cert.pem").display().to_string(),
        ),
        ("CA_CREDENTIAL_FILE", credential_file.display().to_string()),
        ("TRUST_DOMAIN", "cluster.local".to_owned()),
    ];
    for (key, value) in expected {
        assert_eq!(env.get(key), Some(&value), "{key} in {env:#?}");
    }
    assert!(env.contains_key("RUST_LOG"), "{env:#?}");

    // Ready: HBONE accepts on the pod IP, so the Service has a ready endpoint on 15008.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !lab.pod("default/waypoint").is_ready() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        lab.lab.refresh_phases().unwrap();
    }
    let pod = lab.pod("default/waypoint").clone();
    assert!(
        pod.is_ready(),
        "the waypoint did not accept on {}:15008 within the deadline ({:?}); its log:\n{}\nCA log:\n{}",
        pod.ip,
        pod.phase,
        lab.lab.logs(&pod).unwrap_or_default(),
        std::fs::read_to_string(state_dir.join("agents/ca.log")).unwrap_or_default()
    );
    assert!(
        applied.warnings.is_empty(),
        "ready, but only after apply stopped waiting: {:#?}",
        applied.warnings
    );

    // The config folder the agents read: Gateway, ServiceAccount, Pod, Service, EndpointSlice.
    assert!(
        config_dir
            .join("default.gateway.gateway.networking.k8s.io.waypoint.yaml")
            .is_file()
    );
    assert!(
        config_dir
            .join("default.serviceaccount.core.waypoint.yaml")
            .is_file()
    );
    let pod_object = yaml_file(&config_dir.join(format!("default.pod.core.{}.yaml", pod.name)));
    assert_eq!(
        pod_object["spec"]["containers"][0]["image"],
        "mesh-waypoint"
    );
    assert_eq!(pod_object["spec"]["serviceAccountName"], "waypoint");
    let service_object = yaml_file(&config_dir.join("default.service.core.waypoint.yaml"));
    assert_eq!(service_object["spec"]["clusterIP"], cluster_ip.to_string());
    let slice = yaml_file(&config_dir.join("default.endpointslice.discovery.k8s.io.waypoint.yaml"));
    assert_eq!(
        slice["ports"],
        serde_json::json!([{"name": "mesh", "port": 15008, "protocol": "TCP"}])
    );
    assert_eq!(
        slice["endpoints"],
        serde_json::json!([{
            "addresses": [pod.ip.to_string()],
            "conditions": {"ready": true},
            "nodeName": pod.node,
            "targetRef": {"kind": "Pod", "namespace": "default", "name": pod.name},
        }])
    );

    // Re-applying changes nothing (the pod keeps running).
    let again = lab
        .lab
        .apply(std::slice::from_ref(&gateway), "default")
        .unwrap();
    assert!(again.pods_started.is_empty() && again.pods_removed.is_empty());
    assert_eq!(lab.pod("default/waypoint").name, pod.name);

    // Deleting the Gateway removes what it owns, the pod and its credential.
    let deleted = lab
        .lab
        .delete(std::slice::from_ref(&gateway), "default")
        .unwrap();
    assert_eq!(deleted.pods_removed, [pod.key()]);
    let objects = &lab.lab.state().objects;
    for key in [
        "gateway.networking.k8s.io/Gateway/default/waypoint",
        "/ServiceAccount/default/waypoint",
        "apps/Deployment/default/waypoint",
        "/Service/default/waypoint",
    ] {
        assert!(!objects.contains_key(key), "{key} left");
    }
    assert!(!lab.lab.state().services.contains_key("default/waypoint"));
    assert!(lab.lab.state().pods.is_empty());
    assert!(
        !netns_of(&lab.name).iter().any(|n| n.contains("waypoint")),
        "the pod's namespace is left: {:?}",
        netns_of(&lab.name)
    );
    assert!(pids.iter().all(|p| !running(*p)), "the waypoint still runs");
    assert!(
        !pod_credentials(&lab.name).contains_key(&pod.key()),
        "the credential was not revoked"
    );
    let left: Vec<String> = std::fs::read_dir(&config_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("waypoint"))
        .collect();
    assert!(left.is_empty(), "config files left: {left:?}");
}

#[test]
fn waypoint_applied_before_the_mesh_waits_for_the_ca_then_becomes_ready() {
    let dir = std::env::temp_dir().join(unique_name("wpe"));
    std::fs::create_dir_all(&dir).unwrap();
    let gateway = dir.join("waypoint.yaml");
    let yaml = meshctl::waypoint::generate(&meshctl::waypoint::GenerateArgs {
        namespace: "default".into(),
        name: None,
        for_service_account: None,
    })
    .unwrap();
    std::fs::write(&gateway, yaml).unwrap();

    // No mesh, so no CA: the pod is created and left NotReady at once, the apply succeeds.
    let mut lab = TestLab::up("wpe", 2, std::slice::from_ref(&gateway));
    std::fs::remove_dir_all(&dir).unwrap();
    let pod = lab.pod("default/waypoint").clone();
    assert_eq!(pod.phase, mesh_sim::PodPhase::NotReady);
    assert!(pids_below(&pod.cgroup).iter().any(|p| running(*p)));
    let env = environ(pids_below(&pod.cgroup)[0]);
    assert!(
        !env.contains_key("WAYPOINT_FOR_SERVICE_ACCOUNT"),
        "a namespace waypoint serves every account: {env:#?}"
    );
    assert!(pod_credentials(&lab.name).contains_key(&pod.key()));

    // Starting the mesh keeps the pod's credential and waits for the waypoint to serve.
    lab.lab
        .start_mesh(&mesh_sim::MeshOptions::default())
        .unwrap_or_else(|e| panic!("lab {}: the mesh did not start: {e}", lab.name));
    let pod = lab.pod("default/waypoint").clone();
    assert!(
        pod.is_ready(),
        "the waypoint is not ready after the mesh started ({:?}); its log:\n{}",
        pod.phase,
        lab.lab.logs(&pod).unwrap_or_default()
    );
    assert!(pod_credentials(&lab.name).contains_key(&pod.key()));
    let slice = yaml_file(
        &lab.lab
            .config_dir()
            .join("default.endpointslice.discovery.k8s.io.waypoint.yaml"),
    );
    assert_eq!(
        slice["endpoints"][0]["conditions"]["ready"], true,
        "{slice}"
    );
}
