//! The waypoint's traffic policies on the lab, for real (root), each with a namespace waypoint
//! (deployed from `meshctl waypoint generate`'s Gateway) and Istio's samples and task YAML:
//! retries counted on the server (VirtualService `retries`, `attempts: 0`, Istio's default,
//! and under a one-connection limit),
//! circuit breaking (overflow 503s counted by the client, `istio_requests_total` and Envoy's
//! overflow counter alike), mirroring to a `-shadow` host, TCP traffic shifting (the sample
//! bound to its ingress gateway is not applied; bound to the mesh it is), consistent hashing
//! on a header, and outlier detection (ejection, the metric, readmission).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use mesh_e2e::{TestLab, eventually, istio_sample};
use mesh_sim::{MeshOptions, Pod};
use serde_json::{Value, json};

/// How long a config change may take to show in requests.
const CONFIG_DEADLINE: Duration = Duration::from_secs(10);
const HTTPBIN: &str = "httpbin.default.svc.cluster.local";
const HTTPBIN_CLUSTER: &str = "outbound|8000||httpbin.default.svc.cluster.local";

/// A lab with `files` and curl, the mesh on, and namespace `default` using a waypoint, once
/// the waypoint has counted traffic to `service` (which `warm` sends from curl).
fn lab_with_waypoint(
    tag: &str,
    files: impl FnOnce(&TestLab) -> Vec<PathBuf>,
    service: &str,
    warm: impl Fn(&TestLab) -> Result<()>,
) -> TestLab {
    let mut lab = TestLab::up(tag, 2, &[istio_sample("curl/curl.yaml")]);
    let files = files(&lab);
    lab.apply(&files);
    lab.start_mesh(&MeshOptions::default(), "default");
    lab.use_waypoint(service, warm);
    lab
}

/// httpbin (Istio's sample, or `files`) behind the waypoint.
fn httpbin_with_waypoint(tag: &str, files: impl FnOnce(&TestLab) -> Vec<PathBuf>) -> TestLab {
    lab_with_waypoint(tag, files, "httpbin", |lab| {
        lab.curl("curl", &["-f", "httpbin:8000/get"]).map(drop)
    })
}

fn waypoint_metrics(lab: &TestLab) -> Result<String> {
    lab.waypoint_metrics()
}

/// The sum of the samples of metric `name` whose labels include every one of `labels`.
fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

/// The pods of a Deployment.
fn pods_of(lab: &TestLab, deployment: &str) -> Vec<Pod> {
    let pods: Vec<Pod> = lab
        .lab
        .state()
        .pods
        .values()
        .filter(|p| p.owner.as_deref() == Some(deployment))
        .cloned()
        .collect();
    assert!(!pods.is_empty(), "deployment {deployment} has no pods");
    pods
}

/// The access-log lines of a pod (sample httpbin logs one per request, before answering)
/// for requests whose path and query are `target`.
fn access_lines(lab: &TestLab, pod: &Pod, target: &str) -> Vec<String> {
    let needle = format!("\"GET {target} ");
    lab.lab
        .logs(pod)
        .unwrap_or_else(|e| panic!("reading the log of {}: {e}", pod.key()))
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// GETs every URL in one curl (sequentially, on a keep-alive connection) with `headers`:
/// each answer's status code and body.
fn get_all(lab: &TestLab, urls: &[String], headers: &[&str]) -> Result<Vec<(u16, String)>> {
    let mut args: Vec<&str> = vec!["-w", "\n<<%{http_code}>>\n"];
    for header in headers {
        args.extend(["-H", header]);
    }
    args.extend(urls.iter().map(String::as_str));
    let out = lab.curl("curl", &args)?;
    let mut answers = Vec::new();
    let mut rest = out.as_str();
    while let Some(start) = rest.find("<<") {
        let code = rest[start + 2..]
            .get(..3)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status code in {out:?}"))?;
        answers.push((code, rest[..start].trim().to_owned()));
        rest = &rest[start + 7..];
    }
    ensure!(
        answers.len() == urls.len(),
        "{} answers to {} requests: {out}",
        answers.len(),
        urls.len()
    );
    Ok(answers)
}

/// `requests` GETs of httpbin's /get over 3 concurrent connections (as the circuit-breaking
/// task's `fortio -c 3`): how many got each status code.
fn burst(lab: &TestLab, requests: usize) -> Result<BTreeMap<u16, usize>> {
    let mut args = vec![
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "3",
        "-w",
        "%{http_code}\n",
    ];
    for _ in 0..requests {
        args.extend(["-o", "/dev/null", "httpbin:8000/get"]);
    }
    let out = lab.curl("curl", &args)?;
    let mut codes = BTreeMap::new();
    for code in out.lines() {
        *codes.entry(code.trim().parse()?).or_default() += 1;
    }
    ensure!(
        codes.values().sum::<usize>() == requests,
        "{requests} requests, answers {codes:?}"
    );
    Ok(codes)
}

/// The pod a `/hostname` answer names.
fn hostname(body: &str) -> Result<String> {
    let value: Value = serde_json::from_str(body).with_context(|| format!("not JSON: {body}"))?;
    value["hostname"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no hostname in {body}"))
}

#[test]
fn retries_follow_the_virtual_service_and_istios_default() {
    let mut lab = httpbin_with_waypoint("wre", |_| vec![istio_sample("httpbin/httpbin.yaml")]);
    let httpbin = pods_of(&lab, "httpbin").remove(0);
    let mut next = 0;
    // One GET /status/503 with a query of its own: the client's status, and the tries the
    // server logged for it.
    let mut tries = |lab: &TestLab| -> Result<usize> {
        next += 1;
        let target = format!("/status/503?try={next}");
        let answers = get_all(lab, &[format!("httpbin:8000{target}")], &[])?;
        ensure!(answers[0].0 == 503, "the client got {:?}", answers[0]);
        Ok(access_lines(lab, &httpbin, &target).len())
    };

    // No VirtualService: Istio's default retries 503 twice.
    for _ in 0..3 {
        assert_eq!(
            tries(&lab).unwrap(),
            1 + 2,
            "Istio's default: 1 try + 2 retries"
        );
    }

    let retries = |attempts: u32| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: httpbin}}
spec:
  hosts: [httpbin]
  http:
  - route:
    - destination: {{host: httpbin}}
    retries: {{attempts: {attempts}, perTryTimeout: 1s, retryOn: 5xx}}
"#
        )
    };
    let three = lab.manifest("retries-3.yaml", &retries(3));
    lab.apply(&[three]);
    eventually(CONFIG_DEADLINE, || {
        let seen = tries(&lab)?;
        ensure!(seen == 1 + 3, "attempts 3: the server saw {seen} tries");
        Ok(())
    })
    .expect("retries.attempts 3: the server sees 4 tries");
    for _ in 0..3 {
        assert_eq!(tries(&lab).unwrap(), 1 + 3, "attempts 3");
    }

    let none = lab.manifest("retries-0.yaml", &retries(0));
    lab.apply(&[none]);
    eventually(CONFIG_DEADLINE, || {
        let seen = tries(&lab)?;
        ensure!(seen == 1, "attempts 0: the server saw {seen} tries");
        Ok(())
    })
    .expect("retries.attempts 0: the server sees 1 try");
    for _ in 0..3 {
        assert_eq!(tries(&lab).unwrap(), 1, "attempts 0");
    }

    // Under a connection limit of 1, each try gives its connection back before the next:
    // the retries still happen (and do not wait for the slot the failed try holds).
    let three = lab.manifest("retries-3.yaml", &retries(3));
    let limit = lab.manifest(
        "one-connection.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
"#,
    );
    lab.apply(&[three, limit]);
    eventually(CONFIG_DEADLINE, || {
        let codes = burst(&lab, 30)?;
        ensure!(
            codes.contains_key(&503),
            "no connection limit yet: {codes:?}"
        );
        Ok(())
    })
    .expect("the connection limit applies");
    for _ in 0..3 {
        assert_eq!(
            tries(&lab).unwrap(),
            1 + 3,
            "attempts 3 with maxConnections 1"
        );
    }

    let metrics = waypoint_metrics(&lab).unwrap();
    assert!(
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[r#"response_code="503""#, r#"response_flags="URX""#]
        ) > 0,
        "503s after retries are counted with flag URX:\n{metrics}"
    );
}

#[test]
fn circuit_breaker_overflow_is_answered_503_and_counted() {
    let mut lab = httpbin_with_waypoint("wcb", |_| vec![istio_sample("httpbin/httpbin.yaml")]);
    // Istio's circuit-breaking task's DestinationRule.
    let rule = lab.manifest(
        "circuit-breaker.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"#,
    );
    let before = burst(&lab, 30).unwrap();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        [&200],
        "no limits yet: {before:?}"
    );

    lab.apply(&[rule]);
    eventually(CONFIG_DEADLINE, || {
        let codes = burst(&lab, 30)?;
        ensure!(codes.contains_key(&503), "no overflow yet: {codes:?}");
        Ok(())
    })
    .expect("the circuit breaker trips");

    let overflow = |metrics: &str| {
        metric_sum(
            metrics,
            "envoy_cluster_upstream_rq_pending_overflow_total",
            &[&format!(r#"cluster_name="{HTTPBIN_CLUSTER}""#)],
        )
    };
    let uo = |metrics: &str| {
        metric_sum(
            metrics,
            "istio_requests_total",
            &[
                &format!(r#"destination_service="{HTTPBIN}""#),
                r#"response_code="503""#,
                r#"response_flags="UO""#,
            ],
        )
    };
    let metrics = waypoint_metrics(&lab).unwrap();
    let (overflow_before, uo_before) = (overflow(&metrics), uo(&metrics));
    let codes = burst(&lab, 90).unwrap();
    let metrics = waypoint_metrics(&lab).unwrap();
    let refused = codes.get(&503).copied().unwrap_or(0);
    let pending_overflow = overflow(&metrics) - overflow_before;
    let flagged = uo(&metrics) - uo_before;
    eprintln!(
        "3 × 30 requests: {codes:?}; pending overflow +{pending_overflow}, 503 UO +{flagged}"
    );
    assert!(
        codes.keys().all(|c| [200, 503].contains(c)),
        "only 200 and 503: {codes:?}"
    );
    assert!(
        refused > 0 && codes.get(&200).is_some_and(|n| *n > 0),
        "some requests pass and some overflow: {codes:?}"
    );
    assert_eq!(
        pending_overflow, refused as u64,
        "envoy_cluster_upstream_rq_pending_overflow counts every 503 the clients saw"
    );
    assert_eq!(
        flagged, refused as u64,
        "istio_requests_total counts every 503 the clients saw with flag UO"
    );
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
    let metrics = waypoint_metrics(&lab).unwrap();
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

#[test]
fn outlier_detection_ejects_a_failing_pod_and_tries_it_again() {
    let mut lab = httpbin_with_waypoint("wod", |lab| {
        let broken = lab.manifest(
            "httpbin-broken.yaml",
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin-broken}
spec:
  replicas: 1
  selector:
    matchLabels: {app: httpbin, version: broken}
  template:
    metadata:
      labels: {app: httpbin, version: broken}
    spec:
      serviceAccountName: httpbin
      containers:
      - name: httpbin
        image: docker.io/mccutchen/go-httpbin:v2.15.0
        env: [{name: FAIL_WITH, value: "500"}]
        ports: [{containerPort: 8080}]
"#,
        );
        vec![istio_sample("httpbin/httpbin.yaml"), broken]
    });
    let broken = pods_of(&lab, "httpbin-broken").remove(0);
    let urls = vec!["httpbin:8000/hostname".to_owned(); 10];
    let codes = |lab: &TestLab| -> Result<Vec<u16>> {
        Ok(get_all(lab, &urls, &[])?
            .into_iter()
            .map(|(c, _)| c)
            .collect())
    };
    eventually(CONFIG_DEADLINE, || {
        let codes = codes(&lab)?;
        ensure!(
            codes.contains(&500),
            "the broken pod got nothing: {codes:?}"
        );
        Ok(())
    })
    .expect("without a rule the broken pod answers some requests (500)");

    let rule = lab.manifest(
        "outlier-detection.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 3s
      maxEjectionPercent: 100
"#,
    );
    lab.apply(&[rule]);
    let ejections = |lab: &TestLab| -> Result<u64> {
        Ok(metric_sum(
            &waypoint_metrics(lab)?,
            "envoy_cluster_outlier_detection_ejections_enforced_total",
            &[&format!(r#"cluster_name="{HTTPBIN_CLUSTER}""#)],
        ))
    };
    // The ejection happens during the batch after which the metric first shows it (only
    // this test's requests reach httpbin): not before that batch started.
    let mut batch_started = Instant::now();
    eventually(CONFIG_DEADLINE, || {
        batch_started = Instant::now();
        codes(&lab)?;
        let ejected = ejections(&lab)?;
        ensure!(ejected >= 1, "no ejection yet");
        Ok(())
    })
    .expect("the broken pod is ejected, and counted");
    let ejected_after = batch_started;
    let served_before = access_lines(&lab, &broken, "/hostname").len();

    // Ejected: every request goes to the healthy pod, until baseEjectionTime (3 s) is over
    // and the broken pod is tried again.
    let mut healthy = 0;
    let back = eventually(Duration::from_secs(15), || {
        let codes = codes(&lab)?;
        if codes.iter().all(|c| *c == 200) {
            healthy += codes.len();
        }
        ensure!(codes.contains(&500), "still ejected: {codes:?}");
        Ok(codes)
    })
    .expect("the broken pod is tried again after baseEjectionTime");
    let out_for = ejected_after.elapsed();
    eprintln!(
        "ejected: {healthy} requests all 200; the broken pod answered again {out_for:?} after the ejecting batch began: {back:?}; ejections {}",
        ejections(&lab).unwrap()
    );
    assert!(
        healthy >= 20 && out_for >= Duration::from_secs(3),
        "after the ejection the healthy pod alone answers for baseEjectionTime (3 s): {healthy} requests, the broken pod back after {out_for:?}"
    );
    assert!(
        access_lines(&lab, &broken, "/hostname").len() > served_before,
        "the broken pod's own log shows it tried again"
    );
}
