//! The waypoint's resilience policies on the lab, for real (root), with a namespace waypoint
//! (deployed from `meshctl waypoint generate`'s Gateway) and Istio's samples and task YAML:
//! retries counted on the server (VirtualService `retries`, `attempts: 0`, Istio's default,
//! and under a one-connection limit), request bodies streamed whole (chunked and with a
//! length) and retried with their body, circuit breaking (overflow 503s counted by the
//! client, `istio_requests_total` and Envoy's overflow counter alike), and outlier detection
//! (ejection, the metric, readmission).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use mesh_e2e::{
    CONFIG_DEADLINE, TestLab, access_lines, eventually, get_all, httpbin_with_waypoint,
    istio_sample, metric_sum, pods_of,
};

const HTTPBIN: &str = "httpbin.default.svc.cluster.local";
const HTTPBIN_CLUSTER: &str = "outbound|8000||httpbin.default.svc.cluster.local";

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

    let metrics = lab.waypoint_metrics().unwrap();
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
fn request_bodies_stream_through_whole_are_counted_and_retried_with_their_body() {
    let lab = httpbin_with_waypoint("wbo", |_| vec![istio_sample("httpbin/httpbin.yaml")]);
    let httpbin = pods_of(&lab, "httpbin").remove(0);
    let service = format!(r#"destination_service="{HTTPBIN}""#);
    let request_bytes = |lab: &TestLab| -> Result<u64> {
        let metrics = lab.waypoint_metrics()?;
        Ok(metric_sum(&metrics, "istio_request_bytes_sum", &[&service]))
    };
    let before = request_bytes(&lab).unwrap();

    // Under httpbin's 1 MiB limit, many frames long; sent with its length, then chunked.
    let size = 900_000;
    let text: String = (0..size)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let upload = format!("@{}", lab.manifest("upload.txt", &text).display());
    for (framing, header, value) in [
        ("length", "Content-Length", size.to_string()),
        ("chunked", "Transfer-Encoding", "chunked".to_owned()),
    ] {
        let mut args = vec![
            "-f",
            "-H",
            "content-type: text/plain",
            "--data-binary",
            &upload,
        ];
        if framing == "chunked" {
            args.extend(["-H", "transfer-encoding: chunked"]);
        }
        args.push("httpbin:8000/anything");
        let out = lab.curl("curl", &args).unwrap();
        let answer: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("not JSON: {}", &out[..out.len().min(200)]))
            .unwrap();
        assert_eq!(
            answer["data"].as_str().map(str::len),
            Some(size),
            "{framing}: httpbin got the whole body"
        );
        assert_eq!(
            answer["headers"][header][0], value,
            "{framing}: the body reached httpbin framed as sent"
        );
    }
    eventually(CONFIG_DEADLINE, || {
        let counted = request_bytes(&lab)? - before;
        ensure!(
            counted == 2 * size as u64,
            "istio_request_bytes counted {counted}"
        );
        Ok(())
    })
    .expect("the waypoint counts both bodies whole");

    // A POST answered 503 is retried (Istio's default: twice) with its body.
    let out = lab
        .curl(
            "curl",
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--data-binary",
                "retry me",
                "httpbin:8000/status/503?body=1",
            ],
        )
        .unwrap();
    assert_eq!(out, "503");
    eventually(CONFIG_DEADLINE, || {
        let log = lab.lab.logs(&httpbin)?;
        let tries = log
            .lines()
            .filter(|l| l.contains("\"POST /status/503?body=1 "))
            .count();
        ensure!(tries == 1 + 2, "httpbin logged {tries} tries");
        Ok(())
    })
    .expect("1 try + 2 retries of the POST");
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
    let metrics = lab.waypoint_metrics().unwrap();
    let (overflow_before, uo_before) = (overflow(&metrics), uo(&metrics));
    let codes = burst(&lab, 90).unwrap();
    let metrics = lab.waypoint_metrics().unwrap();
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
            &lab.waypoint_metrics()?,
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
