//! The waypoint's traffic policies on the lab, for real (root), with a namespace waypoint
//! (deployed from `meshctl waypoint generate`'s Gateway) and Istio's samples and task YAML:
//! mirroring to a `-shadow` host, TCP traffic shifting (the sample bound to its ingress
//! gateway is not applied; bound to the mesh it is), and consistent hashing on a header.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use mesh_e2e::{
    CONFIG_DEADLINE, TestLab, access_lines, eventually, get_all, httpbin_with_waypoint,
    istio_sample, lab_with_waypoint, metric_sum, pods_of,
};
use serde_json::{Value, json};

/// The pod a `/hostname` answer names.
fn hostname(body: &str) -> Result<String> {
    let value: Value = serde_json::from_str(body).with_context(|| format!("not JSON: {body}"))?;
    value["hostname"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no hostname in {body}"))
}

/// Istio's mirroring task: httpbin v1 and v2 behind one Service.
const MIRRORING_APPS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: httpbin
  labels: {app: httpbin}
spec:
  ports:
  - {name: http, port: 8000, targetPort: 8080}
  selector: {app: httpbin}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin-v1}
spec:
  replicas: 1
  selector:
    matchLabels: {app: httpbin, version: v1}
  template:
    metadata:
      labels: {app: httpbin, version: v1}
    spec:
      containers:
      - image: docker.io/mccutchen/go-httpbin:v2.15.0
        imagePullPolicy: IfNotPresent
        name: httpbin
        command: ["/bin/go-httpbin"]
        args: ["-port", "8080", "-max-duration", "600s"]
        ports:
        - containerPort: 8080
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin-v2}
spec:
  replicas: 1
  selector:
    matchLabels: {app: httpbin, version: v2}
  template:
    metadata:
      labels: {app: httpbin, version: v2}
    spec:
      containers:
      - image: docker.io/mccutchen/go-httpbin:v2.15.0
        imagePullPolicy: IfNotPresent
        name: httpbin
        command: ["/bin/go-httpbin"]
        args: ["-port", "8080", "-max-duration", "600s"]
        ports:
        - containerPort: 8080
"#;

#[test]
fn mirrored_requests_reach_v2_as_shadow_while_clients_see_v1() {
    let mut lab = httpbin_with_waypoint("wmi", |lab| {
        vec![lab.manifest("httpbin-v1-v2.yaml", MIRRORING_APPS)]
    });
    let v1 = pods_of(&lab, "httpbin-v1").remove(0);
    let v2 = pods_of(&lab, "httpbin-v2").remove(0);
    let route = |mirror: &str| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin}}
spec:
  hosts: [httpbin]
  http:
  - route:
    - destination: {{host: httpbin, subset: v1}}
      weight: 100
{mirror}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: httpbin}}
spec:
  host: httpbin
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"#
        )
    };
    let answered_by = |lab: &TestLab, id: &str, count: usize| -> Result<BTreeSet<String>> {
        let urls: Vec<String> = (0..count)
            .map(|i| format!("httpbin:8000/hostname?id={id}{i}"))
            .collect();
        get_all(lab, &urls, &[])?
            .into_iter()
            .map(|(code, body)| {
                ensure!(code == 200, "{code}: {body}");
                hostname(&body)
            })
            .collect()
    };

    // All to v1 first (the task's first step); v2 gets nothing.
    let all_v1 = lab.manifest("all-v1.yaml", &route(""));
    lab.apply(&[all_v1]);
    let mut round = 0;
    eventually(CONFIG_DEADLINE, || {
        round += 1;
        let pods = answered_by(&lab, &format!("v1-{round}-"), 10)?;
        ensure!(
            pods == BTreeSet::from([v1.name.clone()]),
            "answered by {pods:?}"
        );
        Ok(())
    })
    .expect("all traffic to v1");

    let mirrored = lab.manifest(
        "mirror-v2.yaml",
        &route("    mirror: {host: httpbin, subset: v2}\n    mirrorPercentage: {value: 100.0}"),
    );
    lab.apply(&[mirrored]);
    eventually(CONFIG_DEADLINE, || {
        round += 1;
        let id = format!("warm-{round}-");
        answered_by(&lab, &id, 1)?;
        ensure!(
            !access_lines(&lab, &v2, &format!("/hostname?id={id}0")).is_empty(),
            "no mirrored copy yet"
        );
        Ok(())
    })
    .expect("the mirror starts");

    let count = 20;
    let pods = answered_by(&lab, "m", count).unwrap();
    assert_eq!(
        pods,
        BTreeSet::from([v1.name.clone()]),
        "clients see only v1's answers"
    );
    for i in 0..count {
        let target = format!("/hostname?id=m{i}");
        let original = access_lines(&lab, &v1, &target);
        assert!(
            original.len() == 1 && original[0].ends_with("host=httpbin:8000"),
            "v1 served {target} once with the client's Host: {original:?}"
        );
        // The copy is sent beside the request; it may land a moment after the answer.
        eventually(Duration::from_secs(5), || {
            let copies = access_lines(&lab, &v2, &target);
            ensure!(
                copies.len() == 1 && copies[0].ends_with("host=httpbin-shadow:8000"),
                "v2 got {target} once, with Host httpbin-shadow:8000: {copies:?}"
            );
            Ok(())
        })
        .unwrap();
    }
}

/// A copy of the VirtualServices in an Istio tcp-echo sample bound to the mesh instead of
/// the ingress gateway `tcp-echo-gateway`: `gateways` dropped, `hosts: ["*"]` (which Istio
/// refuses for the mesh) becomes the service, and the match on the gateway's port 31400
/// becomes the service port 9000. Routes and weights are kept.
fn bound_to_mesh(sample: &str) -> String {
    let text = std::fs::read_to_string(istio_sample(sample)).unwrap();
    let mut out = Vec::new();
    for document in text.split("\n---") {
        let mut value: Value = serde_yaml_ng::from_str(document).unwrap();
        if value["kind"] != "VirtualService" {
            continue;
        }
        let spec = value["spec"].as_object_mut().unwrap();
        assert_eq!(spec.remove("gateways"), Some(json!(["tcp-echo-gateway"])));
        assert_eq!(
            spec.insert("hosts".into(), json!(["tcp-echo"])),
            Some(json!(["*"]))
        );
        for rule in spec["tcp"].as_array_mut().unwrap() {
            for block in rule["match"].as_array_mut().unwrap() {
                assert_eq!(block["port"], 31400, "{sample}: {block}");
                block["port"] = json!(9000);
            }
        }
        out.push(serde_yaml_ng::to_string(&value).unwrap());
    }
    assert!(!out.is_empty(), "{sample} has no VirtualService");
    out.join("---\n")
}

/// `count` TCP connections from curl to tcp-echo:9000, one line each: how many each prefix
/// ("one", "two") answered.
fn echo_split(lab: &TestLab, count: usize) -> Result<BTreeMap<String, usize>> {
    let script = format!(
        r#"for i in $(seq 1 {count}); do
  exec 3<>/dev/tcp/tcp-echo/9000 || {{ echo "connect-failed"; continue; }}
  echo "hello $i" >&3
  if read -t 5 -r line <&3; then echo "$line"; else echo "no-answer"; fi
  exec 3<&- 3>&-
done"#
    );
    let out = lab.exec("curl", "bash", &["-c", &script])?;
    let mut split = BTreeMap::new();
    for (i, line) in out.lines().enumerate() {
        let Some((prefix, rest)) = line.split_once(' ') else {
            bail!("connection {}: {line:?}", i + 1);
        };
        ensure!(
            rest == format!("hello {}", i + 1),
            "connection {}: {line:?}",
            i + 1
        );
        *split.entry(prefix.to_owned()).or_default() += 1;
    }
    ensure!(
        split.values().sum::<usize>() == count,
        "{count} connections, answers {split:?}"
    );
    Ok(split)
}

fn share(split: &BTreeMap<String, usize>, prefix: &str) -> f64 {
    let total: usize = split.values().sum();
    *split.get(prefix).unwrap_or(&0) as f64 * 100.0 / total as f64
}

#[test]
fn tcp_traffic_shifts_by_weight_when_bound_to_the_mesh() {
    let mut lab = lab_with_waypoint(
        "wtc",
        |_| vec![istio_sample("tcp-echo/tcp-echo-services.yaml")],
        "tcp-echo",
        |lab| echo_split(lab, 1).map(drop),
    );
    // All to v1, bound to the mesh: the waypoint applies it.
    let all_v1 = lab.manifest(
        "all-v1-mesh.yaml",
        &bound_to_mesh("tcp-echo/tcp-echo-all-v1.yaml"),
    );
    lab.apply(&[istio_sample("tcp-echo/tcp-echo-all-v1.yaml")]);
    lab.apply(std::slice::from_ref(&all_v1));
    eventually(CONFIG_DEADLINE, || {
        let split = echo_split(&lab, 20)?;
        ensure!(split.keys().eq(["one"]), "not all to v1 yet: {split:?}");
        Ok(())
    })
    .expect("all-v1 bound to the mesh: all connections to v1");

    // Istio's 80/20 sample as it is, bound to the ingress gateway: it replaces the rule
    // above, and the waypoint does not apply it — connections spread over both versions.
    lab.apply(&[istio_sample("tcp-echo/tcp-echo-20-v2.yaml")]);
    eventually(CONFIG_DEADLINE, || {
        let split = echo_split(&lab, 10)?;
        ensure!(split.contains_key("two"), "v2 gets nothing yet: {split:?}");
        Ok(())
    })
    .expect("the gateway-bound rule replaces the mesh one");
    let split = echo_split(&lab, 100).unwrap();
    eprintln!("tcp-echo-20-v2.yaml (gateway-bound): {split:?}");
    let two = share(&split, "two");
    assert!(
        (30.0..=70.0).contains(&two),
        "a gateway-bound rule must not shift mesh traffic: v2 got {two:.1} % {split:?}"
    );

    // The same 80/20 rule bound to the mesh: after all-v1 again, the first "two" shows it.
    lab.apply(&[all_v1]);
    eventually(CONFIG_DEADLINE, || {
        let split = echo_split(&lab, 20)?;
        ensure!(split.keys().eq(["one"]), "not all to v1 yet: {split:?}");
        Ok(())
    })
    .unwrap();
    let shifted = lab.manifest(
        "20-v2-mesh.yaml",
        &bound_to_mesh("tcp-echo/tcp-echo-20-v2.yaml"),
    );
    lab.apply(&[shifted]);
    eventually(CONFIG_DEADLINE, || {
        let split = echo_split(&lab, 10)?;
        ensure!(split.contains_key("two"), "no shift yet: {split:?}");
        Ok(())
    })
    .expect("tcp-echo-20-v2 bound to the mesh applies");
    let total = 500;
    let split = echo_split(&lab, total).unwrap();
    let two = share(&split, "two");
    eprintln!("tcp-echo-20-v2.yaml bound to the mesh, {total} connections: {split:?}");
    assert!(
        (two - 20.0).abs() <= 7.0,
        "v2 got {two:.1} % of {total} connections, wanted 20 ± 7: {split:?}"
    );
    let metrics = lab.waypoint_metrics().unwrap();
    assert!(
        metric_sum(
            &metrics,
            "istio_tcp_connections_opened_total",
            &[r#"destination_version="v2""#, r#"reporter="waypoint""#]
        ) > 0,
        "the waypoint counts TCP connections to v2:\n{metrics}"
    );
}

/// Istio's httpbin sample with `replicas` pods.
fn httpbin_replicas(lab: &TestLab, replicas: u32) -> PathBuf {
    let text = std::fs::read_to_string(istio_sample("httpbin/httpbin.yaml")).unwrap();
    assert!(text.contains("replicas: 1\n"));
    lab.manifest(
        "httpbin.yaml",
        &text.replace("replicas: 1\n", &format!("replicas: {replicas}\n")),
    )
}

#[test]
fn consistent_hash_on_a_header_keeps_a_user_on_one_pod() {
    let mut lab = httpbin_with_waypoint("wch", |lab| vec![httpbin_replicas(lab, 3)]);
    assert_eq!(pods_of(&lab, "httpbin").len(), 3);
    let pods_for = |lab: &TestLab, user: &str, count: usize| -> Result<BTreeMap<String, usize>> {
        let urls = vec!["httpbin:8000/hostname".to_owned(); count];
        let mut pods = BTreeMap::new();
        for (code, body) in get_all(lab, &urls, &[&format!("x-user: {user}")])? {
            ensure!(code == 200, "{code}: {body}");
            *pods.entry(hostname(&body)?).or_default() += 1;
        }
        Ok(pods)
    };
    let before = pods_for(&lab, "alice", 30).unwrap();
    assert!(
        before.len() >= 2,
        "without a rule alice's requests spread: {before:?}"
    );

    let rule = lab.manifest(
        "consistent-hash.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
"#,
    );
    lab.apply(&[rule]);
    eventually(CONFIG_DEADLINE, || {
        let pods = pods_for(&lab, "alice", 20)?;
        ensure!(pods.len() == 1, "alice still spread: {pods:?}");
        Ok(())
    })
    .expect("the consistent hash applies");
    let mut homes = BTreeSet::new();
    for user in ["alice", "bob", "carol"] {
        let pods = pods_for(&lab, user, 50).unwrap();
        assert_eq!(pods.len(), 1, "{user}'s 50 requests on one pod: {pods:?}");
        homes.extend(pods.into_keys());
    }
    let mut spread = BTreeMap::new();
    for i in 0..30 {
        for pod in pods_for(&lab, &format!("user-{i}"), 1).unwrap().into_keys() {
            *spread.entry(pod).or_insert(0) += 1;
        }
    }
    eprintln!("30 users over the pods: {spread:?}");
    assert!(
        spread.len() >= 2,
        "different users spread over the pods: {spread:?}"
    );
}
