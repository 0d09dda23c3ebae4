//! The store: snapshots, incremental pod and service updates, waypoints, rule lookup and
//! refusal of bad objects.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde_json::{Value, json};

use super::*;
use crate::config::istio::{AuthorizationPolicy, RequestAuthentication};
use crate::config::model::{Waypoint, WaypointSource};
use crate::manifest::{Object, Origin, object_from_value};

fn object(value: Value) -> Object {
    let origin = Origin {
        file: Path::new("test.yaml").to_owned(),
        document: 1,
    };
    object_from_value(value, origin).expect("valid object")
}

fn pod(name: &str, ip: &str, labels: Value, ready: bool) -> Object {
    object(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"serviceAccountName": "reviews", "nodeName": "node1",
                 "containers": [{"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 9080}]}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    }))
}

fn service(name: &str, ip: &str, selector: Value, labels: Value) -> Object {
    object(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"clusterIP": ip, "selector": selector, "ports": [{"name": "http", "port": 9080, "targetPort": "http"}]}
    }))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn endpoint_ips(model: &Model, svc: &str) -> Vec<SocketAddr> {
    let service = model
        .service_by_addr(addr(svc))
        .expect("service by address");
    let mut ips: Vec<_> = model
        .ready_endpoints(service, 9080)
        .iter()
        .map(|e| e.addr)
        .collect();
    ips.sort();
    ips
}

fn store_with(objects: Vec<Object>) -> Store {
    let mut store = Store::new();
    store.apply_all(Update::first_sync(objects));
    store
}

#[test]
fn destination_address_leads_to_ready_endpoints_with_labels() {
    let store = store_with(vec![
        pod(
            "r1",
            "10.0.0.1",
            json!({"app": "reviews", "version": "v1"}),
            true,
        ),
        pod(
            "r2",
            "10.0.0.2",
            json!({"app": "reviews", "version": "v2"}),
            true,
        ),
        pod(
            "r3",
            "10.0.0.3",
            json!({"app": "reviews", "version": "v3"}),
            false,
        ),
        pod("other", "10.0.0.4", json!({"app": "ratings"}), true),
        service("reviews", "10.96.0.7", json!({"app": "reviews"}), json!({})),
    ]);
    let model = store.model();
    assert_eq!(
        endpoint_ips(&model, "10.96.0.7:9080"),
        vec![addr("10.0.0.1:9080"), addr("10.0.0.2:9080")]
    );
    let service = model
        .service_by_host("reviews.shop.svc.cluster.local")
        .unwrap();
    let v2: Vec<_> = model
        .ready_endpoints(service, 9080)
        .into_iter()
        .filter(|e| e.labels().get("version") == Some("v2"))
        .collect();
    assert_eq!(v2.len(), 1);
    assert!(model.service_by_addr(addr("10.96.0.7:80")).is_none());
}

#[test]
fn pod_updates_change_endpoints_incrementally() {
    let mut store = store_with(vec![
        service("reviews", "10.96.0.7", json!({"app": "reviews"}), json!({})),
        pod("r1", "10.0.0.1", json!({"app": "reviews"}), false),
    ]);
    let before = store.model();
    store.apply(Update::Upsert(pod(
        "r1",
        "10.0.0.1",
        json!({"app": "reviews"}),
        true,
    )));
    store.apply(Update::Upsert(pod(
        "r2",
        "10.0.0.2",
        json!({"app": "reviews"}),
        true,
    )));
    assert_eq!(
        endpoint_ips(&store.model(), "10.96.0.7:9080"),
        vec![addr("10.0.0.1:9080"), addr("10.0.0.2:9080")]
    );
    // Relabelled out of the service, then deleted.
    store.apply(Update::Upsert(pod(
        "r1",
        "10.0.0.1",
        json!({"app": "other"}),
        true,
    )));
    store.apply(Update::Delete(ObjectKey {
        group: String::new(),
        kind: "Pod".into(),
        namespace: Some("shop".into()),
        name: "r2".into(),
    }));
    assert_eq!(
        endpoint_ips(&store.model(), "10.96.0.7:9080"),
        Vec::<SocketAddr>::new()
    );
    assert!(
        store
            .model()
            .pod_by_ip("10.0.0.2".parse::<IpAddr>().unwrap())
            .is_none()
    );
    // Earlier snapshots are unchanged.
    assert_eq!(
        endpoint_ips(&before, "10.96.0.7:9080"),
        Vec::<SocketAddr>::new()
    );
    assert_eq!(before.pods.len(), 1);
}

#[test]
fn endpoint_slices_take_precedence_over_selectors() {
    let slice = object(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "reviews-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "reviews"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9080}],
        "endpoints": [
            {"addresses": ["10.0.0.9"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "r9", "namespace": "shop"}},
            {"addresses": ["10.0.0.8"], "conditions": {"ready": false}}
        ]
    }));
    let store = store_with(vec![
        service("reviews", "10.96.0.7", json!({"app": "reviews"}), json!({})),
        pod("r1", "10.0.0.1", json!({"app": "reviews"}), true),
        pod("r9", "10.0.0.9", json!({"version": "v9"}), true),
        slice,
    ]);
    let model = store.model();
    let service = model.service_by_addr(addr("10.96.0.7:9080")).unwrap();
    let endpoints = model.ready_endpoints(service, 9080);
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].addr, addr("10.0.0.9:9080"));
    assert_eq!(endpoints[0].labels().get("version"), Some("v9"));
}

#[test]
fn waypoint_precedence_follows_istio() {
    let namespace = object(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"istio.io/use-waypoint": "ns-wp"}}}),
    );
    let account = object(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reviews", "namespace": "shop", "labels": {"istio.io/use-waypoint": "sa-wp"}}}),
    );
    let store = store_with(vec![
        namespace,
        account,
        service(
            "reviews",
            "10.96.0.7",
            json!({"app": "reviews"}),
            json!({"istio.io/use-waypoint": "svc-wp", "istio.io/use-waypoint-namespace": "mesh"}),
        ),
        service("ratings", "10.96.0.8", json!({"app": "ratings"}), json!({})),
        service(
            "details",
            "10.96.0.9",
            json!({"app": "details"}),
            json!({"istio.io/use-waypoint": "none"}),
        ),
        pod("r1", "10.0.0.1", json!({"app": "reviews"}), true),
        pod(
            "r2",
            "10.0.0.2",
            json!({"app": "reviews", "istio.io/use-waypoint": "pod-wp"}),
            true,
        ),
    ]);
    let model = store.model();
    let wp = |w: Option<Waypoint>| w.map(|w| (w.gateway.namespace, w.gateway.name, w.source));
    let svc = |ip: &str| model.service_by_addr(addr(ip)).unwrap().clone();
    assert_eq!(
        wp(model.waypoint_for_service(&svc("10.96.0.7:9080"))),
        Some(("mesh".into(), "svc-wp".into(), WaypointSource::Service))
    );
    assert_eq!(
        wp(model.waypoint_for_service(&svc("10.96.0.8:9080"))),
        Some(("shop".into(), "ns-wp".into(), WaypointSource::Namespace))
    );
    assert_eq!(wp(model.waypoint_for_service(&svc("10.96.0.9:9080"))), None);
    let pod = |ip: &str| model.pod_by_ip(ip.parse().unwrap()).unwrap().clone();
    assert_eq!(
        wp(model.waypoint_for_pod(&pod("10.0.0.1"))),
        Some((
            "shop".into(),
            "sa-wp".into(),
            WaypointSource::ServiceAccount
        ))
    );
    assert_eq!(
        wp(model.waypoint_for_pod(&pod("10.0.0.2"))),
        Some(("shop".into(), "pod-wp".into(), WaypointSource::Pod))
    );
}

fn istio(kind: &str, group: &str, name: &str, namespace: &str, spec: Value) -> Object {
    object(
        json!({"apiVersion": format!("{group}/v1"), "kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}),
    )
}

#[test]
fn rules_resolve_short_names_wildcards_and_export_to() {
    let net = "networking.istio.io";
    let store = store_with(vec![
        service("reviews", "10.96.0.7", json!({"app": "reviews"}), json!({})),
        istio(
            "VirtualService",
            net,
            "short",
            "shop",
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        ),
        istio(
            "VirtualService",
            net,
            "wild",
            "other",
            json!({"hosts": ["*.shop.svc.cluster.local"], "http": [{"route": [{"destination": {"host": "reviews.shop.svc.cluster.local"}}]}]}),
        ),
        istio(
            "VirtualService",
            net,
            "private",
            "other",
            json!({"hosts": ["reviews.shop.svc.cluster.local"], "exportTo": ["."], "http": [{"route": [{"destination": {"host": "reviews.shop.svc.cluster.local"}}]}]}),
        ),
        istio(
            "VirtualService",
            net,
            "wrong-ns",
            "other",
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        ),
        istio(
            "DestinationRule",
            net,
            "in-service-ns",
            "shop",
            json!({"host": "reviews"}),
        ),
        istio(
            "DestinationRule",
            net,
            "in-client-ns",
            "client",
            json!({"host": "reviews.shop.svc.cluster.local"}),
        ),
    ]);
    let model = store.model();
    let names = |client: &str| -> Vec<String> {
        model
            .virtual_services_for("reviews.shop.svc.cluster.local", client)
            .iter()
            .map(|vs| vs.name().to_owned())
            .collect()
    };
    assert_eq!(names("shop"), vec!["short", "wild"]);
    assert_eq!(names("other"), vec!["private", "short", "wild"]);
    let dr = |client: &str| {
        model
            .destination_rule_for("reviews.shop.svc.cluster.local", client)
            .map(|d| d.name().to_owned())
    };
    assert_eq!(dr("client").as_deref(), Some("in-client-ns"));
    assert_eq!(dr("elsewhere").as_deref(), Some("in-service-ns"));
}

#[test]
fn policies_attach_to_services_and_waypoints_by_target_refs() {
    let sec = "security.istio.io";
    let to = |kind: &str, name: &str| json!([{"kind": kind, "group": "", "name": name}]);
    let jwt = json!([{"issuer": "https://issuer.example", "jwks": "{\"keys\": []}"}]);
    let with_rules = |targets: Value| {
        let mut spec = json!({"jwtRules": jwt.clone()});
        spec["targetRefs"] = targets;
        spec
    };
    let store = store_with(vec![
        service("reviews", "10.96.0.1", json!({"app": "reviews"}), json!({})),
        istio(
            "RequestAuthentication",
            sec,
            "on-reviews",
            "shop",
            with_rules(to("Service", "reviews")),
        ),
        istio(
            "RequestAuthentication",
            sec,
            "on-ratings",
            "shop",
            with_rules(to("Service", "ratings")),
        ),
        istio(
            "RequestAuthentication",
            sec,
            "on-waypoint",
            "shop",
            with_rules(to("Gateway", "waypoint")),
        ),
        // Another namespace's Service of the same name is another Service.
        istio(
            "RequestAuthentication",
            sec,
            "elsewhere",
            "web",
            with_rules(to("Service", "reviews")),
        ),
        // A selector is for sidecars: no waypoint applies it.
        istio(
            "RequestAuthentication",
            sec,
            "by-selector",
            "shop",
            json!({"selector": {"matchLabels": {"app": "reviews"}}, "jwtRules": jwt}),
        ),
        istio(
            "AuthorizationPolicy",
            sec,
            "allow-reviews",
            "shop",
            json!({"targetRefs": to("Service", "reviews")}),
        ),
        istio(
            "AuthorizationPolicy",
            sec,
            "via-waypoint",
            "shop",
            json!({"targetRefs": to("Gateway", "waypoint")}),
        ),
    ]);
    let model = store.model();
    let reviews = model
        .service_by_host("reviews.shop.svc.cluster.local")
        .unwrap();
    let waypoint = Name::new("shop", "waypoint");
    let ra = |found: Vec<Arc<RequestAuthentication>>| -> Vec<String> {
        found.iter().map(|p| p.name().to_owned()).collect()
    };
    let ap = |found: Vec<Arc<AuthorizationPolicy>>| -> Vec<String> {
        found.iter().map(|p| p.name().to_owned()).collect()
    };
    assert_eq!(
        ra(model.request_authentications_for_service(reviews)),
        ["on-reviews"]
    );
    assert_eq!(
        ra(model.request_authentications_for_waypoint(&waypoint)),
        ["on-waypoint"]
    );
    assert_eq!(
        ap(model.authorization_policies_for_service(reviews)),
        ["allow-reviews"]
    );
    assert_eq!(
        ap(model.authorization_policies_for_waypoint(&waypoint)),
        ["via-waypoint"]
    );
}

#[test]
fn peer_authentication_and_authorization_policies_apply_by_scope() {
    let sec = "security.istio.io";
    let store = store_with(vec![
        pod("r1", "10.0.0.1", json!({"app": "reviews"}), true),
        istio(
            "PeerAuthentication",
            sec,
            "mesh",
            "istio-system",
            json!({"mtls": {"mode": "STRICT"}}),
        ),
        istio(
            "PeerAuthentication",
            sec,
            "ns",
            "shop",
            json!({"mtls": {"mode": "PERMISSIVE"}}),
        ),
        istio(
            "PeerAuthentication",
            sec,
            "workload",
            "shop",
            json!({"selector": {"matchLabels": {"app": "reviews"}}, "mtls": {"mode": "DISABLE"}}),
        ),
        istio(
            "AuthorizationPolicy",
            sec,
            "allow-reviews",
            "shop",
            json!({"selector": {"matchLabels": {"app": "reviews"}}, "action": "ALLOW"}),
        ),
        istio(
            "AuthorizationPolicy",
            sec,
            "allow-ratings",
            "shop",
            json!({"selector": {"matchLabels": {"app": "ratings"}}}),
        ),
        istio(
            "AuthorizationPolicy",
            sec,
            "deny-all",
            "istio-system",
            json!({"action": "DENY"}),
        ),
        istio(
            "AuthorizationPolicy",
            sec,
            "on-service",
            "shop",
            json!({"targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}]}),
        ),
    ]);
    let model = store.model();
    let pod = model.pod_by_ip("10.0.0.1".parse().unwrap()).unwrap();
    let pa = model.peer_authentications_for(pod);
    assert_eq!(
        pa.workload.map(|p| p.name().to_owned()).as_deref(),
        Some("workload")
    );
    assert_eq!(
        pa.namespace.map(|p| p.name().to_owned()).as_deref(),
        Some("ns")
    );
    assert_eq!(
        pa.mesh.map(|p| p.name().to_owned()).as_deref(),
        Some("mesh")
    );
    let mut aps: Vec<_> = model
        .authorization_policies_for(pod)
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    aps.sort();
    assert_eq!(aps, vec!["allow-reviews", "deny-all"]);
}

#[test]
fn a_bad_update_is_refused_and_the_last_good_version_keeps_serving() {
    let net = "networking.istio.io";
    let good = istio(
        "VirtualService",
        net,
        "reviews",
        "shop",
        json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
    );
    let bad = istio(
        "VirtualService",
        net,
        "reviews",
        "shop",
        json!({"hosts": ["reviews"], "http": [{"route": [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 40}]}]}),
    );
    let mut store = store_with(vec![good]);
    store.apply(Update::Upsert(bad));
    let model = store.model();
    let served = model.virtual_services_for("reviews.shop.svc.cluster.local", "shop");
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].spec.http[0].route.len(), 1);
    assert_eq!(
        model
            .problems()
            .get("VirtualService shop/reviews")
            .map(String::as_str),
        Some(
            "VirtualService shop/reviews: http[0].route: route weights sum to 90; with several destinations they must sum to 100"
        )
    );
    // A namespace-less object lands in `default`.
    store.apply(Update::Upsert(object(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa"}}),
    )));
    assert!(
        store
            .model()
            .service_accounts
            .get(&Name::new("default", "sa"))
            .is_some()
    );
}

#[test]
fn pods_share_their_namespace_label_account_and_node_strings() {
    let store = store_with(vec![
        pod("a", "10.1.0.1", json!({"app": "reviews"}), true),
        pod("b", "10.1.0.2", json!({"app": "reviews"}), true),
    ]);
    let model = store.model();
    let a = model.pod(&Name::new("shop", "a")).expect("pod a");
    let b = model.pod(&Name::new("shop", "b")).expect("pod b");
    assert!(Arc::ptr_eq(&a.name.namespace, &b.name.namespace));
    assert!(Arc::ptr_eq(&a.service_account, &b.service_account));
    assert!(Arc::ptr_eq(
        a.node.as_ref().expect("node"),
        b.node.as_ref().expect("node")
    ));
    assert!(Arc::ptr_eq(&a.named_ports[0].0, &b.named_ports[0].0));
    assert_eq!(a.labels, b.labels);
    assert_eq!(a.labels.get("app"), Some("reviews"));
}

fn kind(kind: &str, group: &str) -> ObjectKind {
    ObjectKind {
        group: group.to_owned(),
        kind: kind.to_owned(),
    }
}

#[test]
fn nothing_is_published_until_the_first_sync_is_complete() {
    let mut store = Store::new();
    let mut model = store.subscribe();
    store.apply(Update::Listing(kind("Pod", "")));
    store.apply(Update::Upsert(pod("r1", "10.0.0.1", json!({}), true)));
    store.apply(Update::Listed(kind("Pod", "")));
    assert!(!model.has_changed().unwrap());
    assert_eq!(store.model().pods.len(), 0);
    store.apply(Update::Synced);
    assert!(model.has_changed().unwrap());
    assert_eq!(model.borrow_and_update().pods.len(), 1);
    assert!(store.synced());
}

#[test]
fn a_relist_removes_the_objects_of_its_kind_it_does_not_name() {
    let net = "networking.istio.io";
    let rule = |name: &str, weight: i32| {
        istio(
            "VirtualService",
            net,
            name,
            "shop",
            json!({"hosts": [name], "http": [{"route": [{"destination": {"host": name}, "weight": weight}]}]}),
        )
    };
    let mut store = store_with(vec![
        service("reviews", "10.96.0.7", json!({"app": "reviews"}), json!({})),
        pod("r1", "10.0.0.1", json!({"app": "reviews"}), true),
        pod("r2", "10.0.0.2", json!({"app": "reviews"}), true),
        rule("kept", 100),
        rule("refused-then-gone", -1),
    ]);
    assert_eq!(store.model().problems().len(), 1);

    store.apply_all([
        Update::Listing(kind("Pod", "")),
        Update::Upsert(pod("r1", "10.0.0.1", json!({"app": "reviews"}), true)),
        Update::Listed(kind("Pod", "")),
        // The refused object the list does not name goes, with its problem.
        Update::Listing(kind("VirtualService", net)),
        Update::Upsert(rule("kept", 100)),
        Update::Listed(kind("VirtualService", net)),
    ]);
    let model = store.model();
    assert_eq!(
        endpoint_ips(&model, "10.96.0.7:9080"),
        vec![addr("10.0.0.1:9080")]
    );
    assert!(model.pod(&Name::new("shop", "r2")).is_none());
    assert!(
        model
            .service_by_host("reviews.shop.svc.cluster.local")
            .is_some(),
        "other kinds stay"
    );
    assert_eq!(
        model
            .virtual_services_for("kept.shop.svc.cluster.local", "shop")
            .len(),
        1
    );
    assert!(model.problems().is_empty(), "{:?}", model.problems());
}

#[test]
fn a_refused_object_a_relist_names_keeps_its_last_good_version() {
    let net = "networking.istio.io";
    let rule = |weight: i32| {
        istio(
            "VirtualService",
            net,
            "reviews",
            "shop",
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}, "weight": weight}]}]}),
        )
    };
    let mut store = store_with(vec![rule(100)]);
    store.apply_all([
        Update::Listing(kind("VirtualService", net)),
        Update::Upsert(rule(-1)),
        Update::Listed(kind("VirtualService", net)),
    ]);
    let model = store.model();
    let served = model.virtual_services_for("reviews.shop.svc.cluster.local", "shop");
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].spec.http[0].route[0].weight, Some(100));
    assert!(model.problems().contains_key("VirtualService shop/reviews"));
}

#[test]
fn a_list_started_over_drops_what_the_abandoned_list_brought() {
    let mut store = store_with(vec![]);
    store.apply_all([
        Update::Listing(kind("Pod", "")),
        Update::Upsert(pod("r1", "10.0.0.1", json!({}), true)),
        Update::Upsert(pod("r2", "10.0.0.2", json!({}), true)),
        // The list failed midway; the watcher lists again, and r2 has gone meanwhile.
        Update::Listing(kind("Pod", "")),
        Update::Upsert(pod("r1", "10.0.0.1", json!({}), true)),
        Update::Listed(kind("Pod", "")),
    ]);
    let model = store.model();
    assert!(model.pod(&Name::new("shop", "r1")).is_some());
    assert!(model.pod(&Name::new("shop", "r2")).is_none());
}

#[test]
fn an_unchanged_object_publishes_nothing() {
    let mut store = store_with(vec![pod("r1", "10.0.0.1", json!({"app": "reviews"}), true)]);
    let model = store.subscribe();
    store.apply(Update::Upsert(pod(
        "r1",
        "10.0.0.1",
        json!({"app": "reviews"}),
        true,
    )));
    assert!(!model.has_changed().unwrap());
    store.apply(Update::Upsert(pod(
        "r1",
        "10.0.0.1",
        json!({"app": "reviews"}),
        false,
    )));
    assert!(model.has_changed().unwrap());
}

/// A pod's canonical service and revision follow Istio's order of labels, then fall back to
/// the workload's name and `latest`.
#[test]
fn canonical_service_and_revision_follow_istios_labels() {
    let mut store = Store::new();
    store.apply_all(Update::first_sync([
        pod("bare", "10.0.0.1", json!({}), true),
        pod(
            "app",
            "10.0.0.2",
            json!({"app": "reviews", "version": "v2"}),
            true,
        ),
        pod(
            "k8s",
            "10.0.0.3",
            json!({"app": "reviews", "app.kubernetes.io/name": "reviews-k8s",
                   "version": "v2", "app.kubernetes.io/version": "2.1"}),
            true,
        ),
        pod(
            "istio",
            "10.0.0.4",
            json!({"app": "reviews", "app.kubernetes.io/name": "reviews-k8s",
                   "service.istio.io/canonical-name": "reviews-istio",
                   "version": "v2", "service.istio.io/canonical-revision": "canary"}),
            true,
        ),
    ]));
    let model = store.model();
    let canonical = |ip: &str| {
        let pod = model.pod_by_ip(ip.parse().unwrap()).unwrap();
        (
            pod.canonical_service().to_owned(),
            pod.canonical_revision().to_owned(),
        )
    };
    assert_eq!(canonical("10.0.0.1"), ("bare".into(), "latest".into()));
    assert_eq!(canonical("10.0.0.2"), ("reviews".into(), "v2".into()));
    assert_eq!(canonical("10.0.0.3"), ("reviews-k8s".into(), "2.1".into()));
    assert_eq!(
        canonical("10.0.0.4"),
        ("reviews-istio".into(), "canary".into())
    );
}
