//! The waypoint on the lab, for real (root): bookinfo in the mesh with a namespace waypoint
//! (deployed from `meshctl waypoint generate`'s Gateway), and Istio's own sample
//! VirtualServices and DestinationRules applied unchanged: request routing by user, weighted
//! traffic shifting measured over 1000 requests, fault injection, request timeouts with
//! productpage's retry; AuthorizationPolicy per request, with JWTs a RequestAuthentication
//! validates.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use mesh_e2e::{CONFIG_DEADLINE, TestLab, eventually, istio_sample};
use mesh_sim::{MeshOptions, Pod};

/// Pages in a row that must agree before a change counts as applied (a random split could
/// agree by chance a few times).
const IN_A_ROW: usize = 8;

/// Bookinfo and curl, the mesh on, a waypoint for namespace `default` used by it, and
/// bookinfo's DestinationRules (the subsets v1, v2, v3).
fn bookinfo_with_waypoint(tag: &str) -> TestLab {
    let mut lab = TestLab::up(
        tag,
        2,
        &[
            istio_sample("bookinfo/platform/kube/bookinfo.yaml"),
            istio_sample("curl/curl.yaml"),
        ],
    );
    lab.start_mesh(&MeshOptions::default(), "default");
    lab.apply(&[istio_sample(
        "bookinfo/networking/destination-rule-all.yaml",
    )]);
    lab.use_waypoint("productpage", |lab| {
        let page = lab.curl("curl", &["-f", "productpage:9080/productpage"])?;
        ensure!(page.contains("Book Details"), "{page}");
        Ok(())
    });
    lab
}

fn waypoint_pod(lab: &TestLab) -> Pod {
    lab.lab
        .waypoint_pod("default", "waypoint")
        .expect("the waypoint pod exists")
        .clone()
}

/// The reviews versions one product page showed, for a signed-in `user` or anonymously.
fn page_version(lab: &TestLab, user: Option<&str>) -> Result<String> {
    let cookie = format!("cookie: user={}", user.unwrap_or(""));
    let page = lab.curl(
        "curl",
        &["-f", "-H", &cookie, "productpage:9080/productpage"],
    )?;
    ensure!(page.contains("Book Details"), "{page}");
    let versions: Vec<&str> = ["reviews-v1", "reviews-v2", "reviews-v3"]
        .into_iter()
        .filter(|v| page.contains(v))
        .collect();
    ensure!(
        versions.len() == 1,
        "one reviews version per page: {versions:?}"
    );
    Ok(versions[0].to_owned())
}

/// `count` requests to reviews in one curl (one keep-alive connection through the waypoint):
/// how many each version answered.
fn reviews_split(lab: &TestLab, count: usize) -> BTreeMap<String, usize> {
    let mut args = vec!["-f", "--max-time", "120"];
    args.extend(std::iter::repeat_n("reviews:9080/reviews/0", count));
    let out = lab.curl("curl", &args).expect("reviews answer");
    let mut split = BTreeMap::new();
    for version in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        let n = out.matches(&format!("\"podname\":\"{version}-")).count();
        if n > 0 {
            split.insert(version.to_owned(), n);
        }
    }
    assert_eq!(
        split.values().sum::<usize>(),
        count,
        "every request answered by one version: {split:?}"
    );
    split
}

fn share(split: &BTreeMap<String, usize>, version: &str, total: usize) -> f64 {
    *split.get(version).unwrap_or(&0) as f64 * 100.0 / total as f64
}

#[test]
fn request_routing_and_traffic_shifting_follow_istios_samples() {
    let mut lab = bookinfo_with_waypoint("wrt");

    lab.apply(&[istio_sample(
        "bookinfo/networking/virtual-service-all-v1.yaml",
    )]);
    eventually(CONFIG_DEADLINE, || {
        for _ in 0..IN_A_ROW {
            for user in [None, Some("jason")] {
                let version = page_version(&lab, user)?;
                ensure!(version == "reviews-v1", "all-v1: {user:?} saw {version}");
            }
        }
        Ok(())
    })
    .expect("virtual-service-all-v1: everyone sees v1");
    for _ in 0..5 {
        assert_eq!(page_version(&lab, Some("jason")).unwrap(), "reviews-v1");
    }

    lab.apply(&[istio_sample(
        "bookinfo/networking/virtual-service-reviews-test-v2.yaml",
    )]);
    eventually(CONFIG_DEADLINE, || {
        let version = page_version(&lab, Some("jason"))?;
        ensure!(version == "reviews-v2", "test-v2: jason saw {version}");
        Ok(())
    })
    .expect("virtual-service-reviews-test-v2: jason sees v2");
    for _ in 0..5 {
        assert_eq!(page_version(&lab, Some("jason")).unwrap(), "reviews-v2");
        assert_eq!(page_version(&lab, None).unwrap(), "reviews-v1");
        assert_eq!(page_version(&lab, Some("kim")).unwrap(), "reviews-v1");
    }

    lab.apply(&[istio_sample(
        "bookinfo/networking/virtual-service-reviews-jason-v2-v3.yaml",
    )]);
    eventually(CONFIG_DEADLINE, || {
        for _ in 0..IN_A_ROW {
            let version = page_version(&lab, None)?;
            ensure!(
                version == "reviews-v3",
                "jason-v2-v3: anonymous saw {version}"
            );
        }
        Ok(())
    })
    .expect("virtual-service-reviews-jason-v2-v3: others see v3");
    for _ in 0..5 {
        assert_eq!(page_version(&lab, Some("jason")).unwrap(), "reviews-v2");
        assert_eq!(page_version(&lab, None).unwrap(), "reviews-v3");
    }

    for (sample, weights) in [
        ("virtual-service-reviews-80-20.yaml", [80.0, 20.0, 0.0]),
        ("virtual-service-reviews-90-10.yaml", [90.0, 10.0, 0.0]),
        ("virtual-service-reviews-50-v3.yaml", [50.0, 0.0, 50.0]),
    ] {
        lab.apply(&[istio_sample(&format!("bookinfo/networking/{sample}"))]);
        // Applied once the smallest share shows up and no other version does.
        eventually(CONFIG_DEADLINE, || {
            let split = reviews_split(&lab, 50);
            for (i, version) in ["reviews-v1", "reviews-v2", "reviews-v3"]
                .iter()
                .enumerate()
            {
                ensure!(
                    (weights[i] == 0.0) != split.contains_key(*version),
                    "{sample}: not applied yet: {split:?}"
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let total = 1000;
        let split = reviews_split(&lab, total);
        eprintln!("{sample}: {split:?}");
        for (i, version) in ["reviews-v1", "reviews-v2", "reviews-v3"]
            .iter()
            .enumerate()
        {
            let seen = share(&split, version, total);
            assert!(
                (seen - weights[i]).abs() <= 5.0,
                "{sample}: {version} got {seen:.1} % of {total}, wanted {} ± 5: {split:?}",
                weights[i]
            );
        }
    }

    let metrics = lab.waypoint_metrics().unwrap();
    for expected in [
        "istio_requests_total{",
        r#"reporter="waypoint""#,
        r#"destination_version="v2""#,
        r#"response_code="200""#,
        r#"source_principal="spiffe://cluster.local/ns/default/sa/bookinfo-productpage""#,
        "istio_request_duration_milliseconds_bucket{",
    ] {
        assert!(
            metrics.contains(expected),
            "waypoint metrics lack {expected}"
        );
    }
}

#[test]
fn faults_and_timeouts_follow_istios_tasks() {
    let mut lab = bookinfo_with_waypoint("wft");
    lab.apply(&[istio_sample(
        "bookinfo/networking/virtual-service-all-v1.yaml",
    )]);
    lab.apply(&[istio_sample(
        "bookinfo/networking/virtual-service-reviews-test-v2.yaml",
    )]);
    eventually(CONFIG_DEADLINE, || {
        let version = page_version(&lab, Some("jason"))?;
        ensure!(version == "reviews-v2", "jason saw {version}");
        Ok(())
    })
    .expect("jason on v2");

    // Abort: ratings answers jason 500; reviews v2 shows its unavailable text.
    lab.apply(&[istio_sample(
        "bookinfo/networking/virtual-service-ratings-test-abort.yaml",
    )]);
    eventually(CONFIG_DEADLINE, || {
        let page = lab.curl(
            "curl",
            &[
                "-f",
                "-H",
                "cookie: user=jason",
                "productpage:9080/productpage",
            ],
        )?;
        ensure!(
            page.contains("Ratings service is currently unavailable"),
            "no abort yet"
        );
        Ok(())
    })
    .expect("virtual-service-ratings-test-abort: jason sees ratings unavailable");
    let anonymous = lab
        .curl("curl", &["-f", "productpage:9080/productpage"])
        .unwrap();
    assert!(!anonymous.contains("Ratings service is currently unavailable"));
    let metrics = lab.waypoint_metrics().unwrap();
    assert!(
        metrics.contains(r#"response_flags="FI""#) && metrics.contains(r#"response_code="500""#),
        "the abort is counted with flag FI:\n{metrics}"
    );

    // Delay: ratings waits 7 s for jason; reviews v2 waits for it, productpage gives up after
    // its 3 s timeout and one retry, and shows the reviews error.
    lab.apply(&[istio_sample(
        "bookinfo/networking/virtual-service-ratings-test-delay.yaml",
    )]);
    eventually(Duration::from_secs(30), || {
        let started = Instant::now();
        let page = lab.curl(
            "curl",
            &[
                "-f",
                "--max-time",
                "20",
                "-H",
                "cookie: user=jason",
                "productpage:9080/productpage",
            ],
        )?;
        let took = started.elapsed();
        ensure!(
            page.contains("Sorry, product reviews are currently unavailable for this book."),
            "no delay yet (took {took:?})"
        );
        ensure!(
            took >= Duration::from_secs(5),
            "the error came after {took:?}, before productpage's two 3 s tries"
        );
        Ok(())
    })
    .expect("virtual-service-ratings-test-delay: jason gets the reviews error");

    // Request timeouts (Istio's task): ratings delayed 2 s for everyone, reviews (to v2)
    // limited to 0.5 s: the page comes back in about 1 s (productpage tries twice) without
    // reviews.
    let timeouts = lab.manifest(
        "timeouts.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault:
      delay: {percentage: {value: 100}, fixedDelay: 2s}
    route:
    - destination: {host: ratings, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v2}
    timeout: 0.5s
"#,
    );
    lab.apply(&[timeouts]);
    eventually(CONFIG_DEADLINE, || {
        let started = Instant::now();
        let page = lab.curl("curl", &["-f", "productpage:9080/productpage"])?;
        let took = started.elapsed();
        ensure!(
            page.contains("Sorry, product reviews are currently unavailable for this book."),
            "reviews still shown (took {took:?})"
        );
        ensure!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "took {took:?}: two tries of 0.5 s each are about 1 s"
        );
        Ok(())
    })
    .expect("reviews timeout 0.5 s + ratings delay 2 s: the page in about 1 s");
    // The delayed ratings calls finish (or are given up by their client) after the page.
    eventually(CONFIG_DEADLINE, || {
        let metrics = lab.waypoint_metrics()?;
        ensure!(
            metrics.contains(r#"response_flags="UT""#) && metrics.contains(r#"response_flags="DI"#),
            "timeouts (UT) and delays (DI) are counted:\n{metrics}"
        );
        Ok(())
    })
    .unwrap();
}

/// The HTTP status a request from `pod` gets.
fn status(lab: &TestLab, pod: &str, extra: &[&str], url: &str) -> Result<String> {
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    args.extend(extra);
    args.push(url);
    lab.curl(pod, &args)
}

#[test]
fn authorization_policies_on_a_service_are_enforced_per_request_at_the_waypoint() {
    let mut lab = bookinfo_with_waypoint("wap");
    let other = lab.manifest(
        "other-client.yaml",
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata: {name: other, labels: {app: other}}
spec:
  serviceAccountName: other
  containers:
  - {name: curl, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
"#,
    );
    lab.apply(&[other]);
    // Istio's ambient task "Use Layer 7 security policy", unchanged but for the client's
    // service account name (the lab's curl sample runs as `curl`).
    let viewer = lab.manifest(
        "productpage-viewer.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-viewer}
spec:
  targetRefs:
  - {kind: Service, group: "", name: productpage}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/curl"]}
    to:
    - operation: {methods: ["GET"]}
"#,
    );
    lab.apply(std::slice::from_ref(&viewer));
    let url = "http://productpage:9080/productpage";
    eventually(CONFIG_DEADLINE, || {
        let seen = [
            status(&lab, "curl", &[], url)?,
            status(&lab, "curl", &["-X", "DELETE"], url)?,
            status(&lab, "other", &[], url)?,
        ];
        ensure!(
            seen == ["200", "403", "403"],
            "curl GET, curl DELETE, other GET answered {seen:?}"
        );
        Ok(())
    })
    .expect("GET from curl only");
    // The policy is on productpage alone: productpage's own calls to reviews still pass.
    let page = lab.curl("curl", &["-f", url]).unwrap();
    assert!(page.contains("Book Details") && !page.contains("Error fetching product reviews"));
    lab.lab.delete(&[viewer], "default").unwrap();
    eventually(CONFIG_DEADLINE, || {
        let seen = status(&lab, "other", &[], url)?;
        ensure!(seen == "200", "other GET answered {seen}");
        Ok(())
    })
    .expect("policy removed: other may GET again");
    assert!(
        lab.lab
            .logs(&waypoint_pod(&lab))
            .is_ok_and(|log| log.contains("request refused by AuthorizationPolicy")),
        "the waypoint logs why it refused"
    );
}

#[test]
fn request_authentication_at_the_waypoint_validates_jwts_for_authorization() {
    use mesh_waypoint::authn::testing::{Signer, now_plus, require_jwt_manifest};
    let mut lab = bookinfo_with_waypoint("wjw");
    let issuer = "https://issuer.example";
    let signer = Signer::new("k1");
    // Istio's task "JWT authentication" in ambient form: the RequestAuthentication and an
    // AuthorizationPolicy that requires a token from the issuer, both on productpage.
    let policies = lab.manifest(
        "jwt.yaml",
        &require_jwt_manifest("productpage", issuer, &signer),
    );
    lab.apply(&[policies]);
    let token = |signer: &Signer, exp: i64| {
        signer.token(&serde_json::json!({"iss": issuer, "sub": "alice", "exp": now_plus(exp)}))
    };
    let bearer = |token: String| format!("Authorization: Bearer {token}");
    let (valid, expired, forged) = (
        bearer(token(&signer, 600)),
        bearer(token(&signer, -3600)),
        bearer(token(&Signer::new("k1"), 600)),
    );
    let url = "http://productpage:9080/productpage";
    eventually(CONFIG_DEADLINE, || {
        let seen = [
            status(&lab, "curl", &[], url)?,
            status(&lab, "curl", &["-H", &valid], url)?,
            status(&lab, "curl", &["-H", &expired], url)?,
            status(&lab, "curl", &["-H", &forged], url)?,
        ];
        ensure!(
            seen == ["403", "200", "401", "401"],
            "no token, valid, expired, forged answered {seen:?}"
        );
        Ok(())
    })
    .expect("only a valid token from the issuer passes");
    let refusal = lab.curl("curl", &["-s", "-H", &expired, url]).unwrap();
    assert_eq!(refusal, "Jwt is expired");
    assert!(
        lab.lab
            .logs(&waypoint_pod(&lab))
            .is_ok_and(|log| log.contains("request refused by RequestAuthentication")),
        "the waypoint logs why it refused"
    );
}

#[test]
fn http2_passes_the_waypoint_both_ways_and_grpc_aborts_carry_grpc_status() {
    let mut lab = bookinfo_with_waypoint("wh2");
    // The same reviews pods behind a port declared HTTP/2: the waypoint speaks h2c upstream.
    let h2 = lab.manifest(
        "reviews-h2.yaml",
        r#"
apiVersion: v1
kind: Service
metadata: {name: reviews-h2, labels: {app: reviews}}
spec:
  selector: {app: reviews}
  ports: [{name: http2, port: 9080}]
"#,
    );
    lab.apply(&[h2]);
    let verbose = |lab: &TestLab, url: &str| {
        lab.curl(
            "curl",
            &[
                "-sS",
                "-i",
                "--http2-prior-knowledge",
                "--max-time",
                "5",
                url,
            ],
        )
    };
    eventually(CONFIG_DEADLINE, || {
        let out = verbose(&lab, "http://reviews-h2:9080/reviews/0")?;
        ensure!(out.starts_with("HTTP/2 200"), "{out}");
        ensure!(out.contains("\"podname\":\"reviews-v"), "{out}");
        let page = verbose(&lab, "http://productpage:9080/productpage")?;
        ensure!(
            page.starts_with("HTTP/2 200") && page.contains("Book Details"),
            "{page}"
        );
        Ok(())
    })
    .expect("HTTP/2 from the client, and to an HTTP/2 port upstream");

    let abort = lab.manifest(
        "grpc-abort.yaml",
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-h2}
spec:
  hosts: [reviews-h2]
  http:
  - match: [{headers: {x-fail: {exact: "yes"}}}]
    fault:
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}
    route: [{destination: {host: reviews-h2}}]
  - route: [{destination: {host: reviews-h2}}]
"#,
    );
    lab.apply(&[abort]);
    eventually(CONFIG_DEADLINE, || {
        let out = lab.curl(
            "curl",
            &[
                "-sS",
                "-i",
                "--http2-prior-knowledge",
                "-H",
                "x-fail: yes",
                "http://reviews-h2:9080/reviews/0",
            ],
        )?;
        ensure!(
            out.starts_with("HTTP/2 200") && out.contains("grpc-status: 14"),
            "{out}"
        );
        Ok(())
    })
    .expect("a gRPC abort answers 200 with grpc-status 14 (UNAVAILABLE)");
    let out = verbose(&lab, "http://reviews-h2:9080/reviews/0").unwrap();
    assert!(
        out.starts_with("HTTP/2 200") && !out.contains("grpc-status"),
        "{out}"
    );
}
