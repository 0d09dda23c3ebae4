//! Routing decisions against Istio's own samples (bookinfo, tcp-echo), plus focused tests of
//! each feature in the submodules. VirtualServices are parsed the way the config sources
//! parse them (mesh-core's manifest reader and typed resources).

mod actions;
mod matching;
mod policy;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use mesh_core::config::istio::VirtualService;
use mesh_core::config::{Labels, Resource};
use mesh_core::manifest::parse_documents;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;

fn parse(yaml: &str) -> Vec<Arc<VirtualService>> {
    let loaded = parse_documents(yaml, Path::new("test.yaml"));
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded
        .objects
        .into_iter()
        .map(|object| match Resource::from_object(object) {
            Ok(Resource::VirtualService(vs)) => vs,
            Ok(other) => panic!("expected a VirtualService, got {:?}", other.kind()),
            Err(error) => panic!("{error}"),
        })
        .collect()
}

fn sample(relative: &str) -> Vec<Arc<VirtualService>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/istio-samples")
        .join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (Istio samples belong beside the repository)",
            path.display()
        )
    });
    parse(&text)
}

/// A VirtualService `shop/<name>` with this spec (YAML, unindented).
fn vs_doc(name: &str, spec: &str) -> String {
    let mut doc = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n"
    );
    for line in spec.lines() {
        doc.push_str("  ");
        doc.push_str(line);
        doc.push('\n');
    }
    doc
}

/// Compiles one VirtualService and insists it compiled without errors.
fn table(spec: &str) -> RouteTable {
    let table = RouteTable::compile(&parse(&vs_doc("reviews", spec)));
    assert!(table.errors().is_empty(), "{:#?}", table.errors());
    table
}

/// Compiles one VirtualService whatever its problems.
fn table_with_problems(spec: &str) -> RouteTable {
    RouteTable::compile(&parse(&vs_doc("reviews", spec)))
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

/// An owned request to borrow [`RequestFacts`] from.
struct Req {
    method: Method,
    scheme: &'static str,
    authority: String,
    path: String,
    headers: HeaderMap,
    port: u16,
    namespace: Option<String>,
    labels: Labels,
    auth: Option<mesh_core::policy::RequestAuth>,
}

impl Req {
    fn get(path: &str) -> Req {
        Req {
            method: Method::GET,
            scheme: "http",
            authority: "reviews:9080".into(),
            path: path.into(),
            headers: HeaderMap::new(),
            port: 9080,
            namespace: Some("shop".into()),
            labels: Labels::default(),
            auth: None,
        }
    }

    /// The request carries a validated JWT with `claims`.
    fn jwt(mut self, claims: serde_json::Value) -> Req {
        self.auth = Some(mesh_core::policy::RequestAuth::from_claims(
            claims.as_object().cloned().unwrap_or_default(),
            &[],
        ));
        self
    }

    fn method(mut self, method: Method) -> Req {
        self.method = method;
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        self
    }

    fn authority(mut self, authority: &str) -> Req {
        self.authority = authority.into();
        self
    }

    fn port(mut self, port: u16) -> Req {
        self.port = port;
        self
    }

    fn from(mut self, namespace: Option<&str>, labels: &[(&str, &str)]) -> Req {
        self.namespace = namespace.map(str::to_owned);
        self.labels = labels.iter().copied().collect();
        self
    }

    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            method: &self.method,
            scheme: self.scheme,
            authority: &self.authority,
            path: &self.path,
            headers: &self.headers,
            destination_port: self.port,
            source: Source {
                namespace: self.namespace.as_deref(),
                labels: &self.labels,
                ip: None,
            },
            auth: self.auth.as_ref(),
        }
    }
}

/// `(host, subset)` of the only destination of the matched rule.
fn only_destination(table: &RouteTable, req: &Req) -> (String, Option<String>) {
    let decision = table.route_http(&req.facts()).expect("a rule matches");
    let forward = decision.forward().expect("a forwarding rule");
    assert_eq!(forward.destinations.len(), 1);
    let target = &forward.destinations.pick(&mut rng()).target;
    (target.host.clone(), target.subset.clone())
}

fn subset(table: &RouteTable, req: &Req) -> Option<String> {
    table.route_http(&req.facts()).map(|decision| {
        let forward = decision.forward().expect("a forwarding rule");
        let target = &forward.destinations.pick(&mut rng()).target;
        target.subset.clone().unwrap_or_default()
    })
}

/// Share (in %) of 10 000 seeded picks per subset.
fn split<T>(
    destinations: &WeightedDestinations<T>,
    subset_of: impl Fn(&T) -> String,
) -> BTreeMap<String, f64> {
    let mut rng = rng();
    let mut counts = BTreeMap::new();
    for _ in 0..10_000 {
        *counts
            .entry(subset_of(destinations.pick(&mut rng)))
            .or_insert(0.0) += 1.0;
    }
    counts.values_mut().for_each(|c| *c /= 100.0);
    counts
}

fn bookinfo(file: &str) -> RouteTable {
    let table = RouteTable::compile(&sample(&format!("bookinfo/networking/{file}")));
    assert!(table.errors().is_empty(), "{:#?}", table.errors());
    assert!(table.unsupported().is_empty(), "{:#?}", table.unsupported());
    table
}

#[test]
fn bookinfo_test_v2_sends_jason_to_v2_and_everyone_else_to_v1() {
    let table = bookinfo("virtual-service-reviews-test-v2.yaml");
    let jason = Req::get("/reviews/0").header("end-user", "jason");
    assert_eq!(
        only_destination(&table, &jason),
        (
            "reviews.default.svc.cluster.local".into(),
            Some("v2".into())
        )
    );
    for other in [
        Req::get("/reviews/0"),
        Req::get("/reviews/0").header("end-user", "mallory"),
        Req::get("/reviews/0").header("end-user", "Jason"),
    ] {
        assert_eq!(subset(&table, &other).as_deref(), Some("v1"));
    }
}

#[test]
fn bookinfo_jason_v2_v3_sends_others_to_v3() {
    let table = bookinfo("virtual-service-reviews-jason-v2-v3.yaml");
    let jason = Req::get("/reviews/0").header("end-user", "jason");
    assert_eq!(subset(&table, &jason).as_deref(), Some("v2"));
    assert_eq!(
        subset(&table, &Req::get("/reviews/0")).as_deref(),
        Some("v3")
    );
}

#[test]
fn bookinfo_80_20_split_follows_weights() {
    let table = bookinfo("virtual-service-reviews-80-20.yaml");
    let decision = table.route_http(&Req::get("/").facts()).unwrap();
    let destinations = &decision.forward().unwrap().destinations;
    let weights: Vec<_> = destinations
        .iter()
        .map(|(w, d)| (w, d.target.subset.clone().unwrap()))
        .collect();
    assert_eq!(weights, [(80, "v1".into()), (20, "v2".into())]);
    let shares = split(destinations, |d| d.target.subset.clone().unwrap());
    assert!((shares["v1"] - 80.0).abs() <= 2.0, "{shares:?}");
    assert!((shares["v2"] - 20.0).abs() <= 2.0, "{shares:?}");
}

#[test]
fn bookinfo_ratings_delay_holds_jason_for_seven_seconds() {
    let table = bookinfo("virtual-service-ratings-test-delay.yaml");
    let jason = Req::get("/ratings/0").header("end-user", "jason");
    let decision = table.route_http(&jason.facts()).unwrap();
    let fault = decision.fault().expect("jason's rule injects a fault");
    let mut rng = rng();
    for _ in 0..100 {
        assert_eq!(
            fault.roll(&mut rng),
            FaultOutcome {
                delay: Some(Duration::from_secs(7)),
                abort: None
            }
        );
    }
    let other = table.route_http(&Req::get("/ratings/0").facts()).unwrap();
    assert!(other.fault().is_none());
    assert_eq!(
        only_destination(&table, &jason),
        (
            "ratings.default.svc.cluster.local".into(),
            Some("v1".into())
        )
    );
}

#[test]
fn bookinfo_ratings_abort_answers_jason_with_500() {
    let table = bookinfo("virtual-service-ratings-test-abort.yaml");
    let jason = Req::get("/ratings/0").header("end-user", "jason");
    let fault = table
        .route_http(&jason.facts())
        .unwrap()
        .fault()
        .cloned()
        .unwrap();
    let outcome = fault.roll(&mut rng());
    assert_eq!(
        outcome.abort,
        Some(AbortError::Http(StatusCode::INTERNAL_SERVER_ERROR))
    );
    assert_eq!(outcome.delay, None);
    let other = table.route_http(&Req::get("/ratings/0").facts()).unwrap();
    assert!(other.fault().is_none());
}

#[test]
fn bookinfo_all_v1_routes_each_service_to_v1_with_default_retries() {
    let all = sample("bookinfo/networking/virtual-service-all-v1.yaml");
    assert_eq!(all.len(), 4);
    for vs in &all {
        let table = RouteTable::compile(std::slice::from_ref(vs));
        assert!(table.errors().is_empty() && table.unsupported().is_empty());
        let decision = table.route_http(&Req::get("/").facts()).unwrap();
        assert_eq!(decision.virtual_service(), format!("default/{}", vs.name()));
        let forward = decision.forward().unwrap();
        let target = &forward.destinations.pick(&mut rng()).target;
        assert_eq!(
            target.host,
            format!("{}.default.svc.cluster.local", vs.name())
        );
        assert_eq!(target.subset.as_deref(), Some("v1"));
        assert_eq!(forward.retries, Some(RetryPolicy::istio_default()));
        assert_eq!(forward.timeout, None);
    }
}

#[test]
fn tcp_echo_gateway_rule_is_skipped_with_a_reason_and_splits_80_20_on_the_mesh() {
    let mut vs = sample("tcp-echo/tcp-echo-20-v2.yaml");
    let skipped = RouteTable::compile(&vs);
    assert_eq!(skipped.tcp_rule_count(), 0);
    let reason = &skipped.unsupported()[0];
    assert_eq!(reason.object, "VirtualService default/tcp-echo");
    assert_eq!(reason.path, "gateways");
    assert!(reason.message.contains("add \"mesh\""), "{reason}");

    // The same rules bound to the mesh, as a waypoint user would write them.
    Arc::make_mut(&mut vs[0]).spec.gateways = vec!["mesh".into()];
    let table = RouteTable::compile(&vs);
    assert!(table.errors().is_empty() && table.unsupported().is_empty());
    let labels = Labels::default();
    let facts = |port| TcpFacts {
        destination_port: port,
        destination_ip: None,
        source: Source {
            namespace: Some("default"),
            labels: &labels,
            ip: None,
        },
    };
    assert!(
        table.route_tcp(&facts(9000)).is_none(),
        "only port 31400 matches"
    );
    let decision = table.route_tcp(&facts(31400)).unwrap();
    let target = decision.pick(&mut rng());
    assert_eq!(target.host, "tcp-echo.default.svc.cluster.local");
    assert_eq!(target.port, Some(9000));
    let shares = split(decision.destinations(), |t| t.subset.clone().unwrap());
    assert!((shares["v1"] - 80.0).abs() <= 2.0, "{shares:?}");
    assert!((shares["v2"] - 20.0).abs() <= 2.0, "{shares:?}");
}

#[test]
fn tcp_matches_on_subnets_namespace_and_labels() {
    let table = table(
        r#"
hosts: [db]
tcp:
- match:
  - destinationSubnets: [10.96.0.0/16]
    sourceSubnet: 10.1.0.0/24
    sourceNamespace: shop
    sourceLabels: {app: cart}
  route:
  - destination: {host: db, subset: primary}
- route:
  - destination: {host: db.other.svc.cluster.local}
"#,
    );
    let cart: Labels = [("app", "cart")].into_iter().collect();
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    let facts = |dst, src, ns| TcpFacts {
        destination_port: 5432,
        destination_ip: ip(dst),
        source: Source {
            namespace: ns,
            labels: &cart,
            ip: ip(src),
        },
    };
    let pick = |f: TcpFacts<'_>| table.route_tcp(&f).unwrap().pick(&mut rng()).clone();
    assert_eq!(
        pick(facts("10.96.3.4", "10.1.0.9", Some("shop")))
            .subset
            .as_deref(),
        Some("primary")
    );
    for miss in [
        facts("10.97.3.4", "10.1.0.9", Some("shop")),
        facts("10.96.3.4", "10.1.1.9", Some("shop")),
        facts("10.96.3.4", "10.1.0.9", Some("other")),
        facts("10.96.3.4", "10.1.0.9", None),
    ] {
        assert_eq!(pick(miss).host, "db.other.svc.cluster.local");
    }
}
