//! Config model benchmark (run by `cargo xtask bench config`): loads and indexes 10k
//! Services, 50k Pods, 2k VirtualServices and 2k DestinationRules as one first sync, then
//! applies single pod updates, and prints the time and the process's peak memory.

use std::path::Path;
use std::time::{Duration, Instant};

use mesh_core::config::Store;
use mesh_core::manifest::{Object, Origin, object_from_value};
use mesh_core::source::Update;
use serde_json::{Value, json};

const NAMESPACES: usize = 100;
const SERVICES: usize = 10_000;
const PODS: usize = 50_000;
const RULES: usize = 2_000;
const UPDATES: usize = 1_000;

fn object(value: Value) -> Object {
    let origin = Origin {
        file: Path::new("bench").to_owned(),
        document: 1,
    };
    object_from_value(value, origin).expect("valid bench object")
}

fn pod(i: usize, version: &str) -> Object {
    let svc = i % SERVICES;
    let ns = svc % NAMESPACES;
    object(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("svc-{svc}-{i}"), "namespace": format!("ns-{ns}"),
                     "labels": {"app": format!("svc-{svc}"), "version": version}},
        "spec": {"serviceAccountName": format!("svc-{svc}"), "nodeName": format!("node-{}", i % 50),
                 "containers": [{"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256),
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
}

/// The benchmark's objects, generated lazily (services first, as a snapshot is ordered).
fn objects() -> impl Iterator<Item = Object> {
    let services = (0..SERVICES).map(|i| {
        object(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % NAMESPACES)},
            "spec": {"clusterIP": format!("10.96.{}.{}", i / 256, i % 256), "selector": {"app": format!("svc-{i}")},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        }))
    });
    let pods = (0..PODS).map(|i| pod(i, "v1"));
    let rules = (0..RULES).flat_map(|i| {
        let ns = format!("ns-{}", i % NAMESPACES);
        let host = format!("svc-{i}");
        let vs = object(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": host, "namespace": ns},
            "spec": {"hosts": [host], "http": [{"match": [{"headers": {"end-user": {"exact": "jason"}}}],
                     "route": [{"destination": {"host": host, "subset": "v2"}}]},
                     {"route": [{"destination": {"host": host, "subset": "v1"}, "weight": 90},
                                {"destination": {"host": host, "subset": "v2"}, "weight": 10}], "timeout": "3s"}]}
        }));
        let dr = object(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": host, "namespace": ns},
            "spec": {"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                               {"name": "v2", "labels": {"version": "v2"}}]}
        }));
        [vs, dr]
    });
    services.chain(pods).chain(rules)
}

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    // Mode `snapshot` (default): all objects built in memory first, then applied. Mode
    // `stream`: objects generated one at a time into one batch, so the peak memory is the
    // model's own (plus the allocator's slack).
    let stream = std::env::args().nth(1).as_deref() == Some("stream");
    let mut store = Store::new();
    let (generate, load);
    let start = Instant::now();
    if stream {
        store.apply_all(Update::first_sync(objects()));
        generate = Duration::ZERO;
        load = start.elapsed();
    } else {
        let input: Vec<Object> = objects().collect();
        generate = start.elapsed();
        let start = Instant::now();
        store.apply_all(Update::first_sync(input));
        load = start.elapsed();
    }
    let peak_kb = status_kb("VmHWM:");
    let model = store.model();
    let counts = model.counts();
    assert_eq!(counts["Pod"], PODS);
    assert_eq!(counts["Service"], SERVICES);

    // Single pod updates: flip readiness-relevant labels on existing pods.
    let updates: Vec<Object> = (0..UPDATES).map(|i| pod(i * 37 % PODS, "v2")).collect();
    let mut worst = Duration::ZERO;
    let start = Instant::now();
    for update in updates {
        let one = Instant::now();
        store.apply(Update::Upsert(update));
        worst = worst.max(one.elapsed());
    }
    let mean = start.elapsed() / UPDATES as u32;
    let check = store.model();
    let svc = check
        .service_by_host("svc-0.ns-0.svc.cluster.local")
        .expect("svc-0");
    let endpoints = check.ready_endpoints(svc, 80);

    let mode = if stream {
        "stream: objects generated one by one into one batch"
    } else {
        "snapshot: all input JSON in memory, then applied as one first sync"
    };
    println!("config model benchmark, {mode} ({NAMESPACES} namespaces)");
    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!(
        "| objects | {SERVICES} Services, {PODS} Pods, {RULES} VirtualServices, {RULES} DestinationRules | |"
    );
    if !stream {
        println!(
            "| generate the input JSON objects (not part of the target) | {:.0} ms | |",
            generate.as_secs_f64() * 1e3
        );
    }
    let what = if stream {
        "generate + convert + validate + index"
    } else {
        "convert + validate + index (one first sync)"
    };
    println!(
        "| {what} | {:.0} ms | ≤ 1000 ms |",
        load.as_secs_f64() * 1e3
    );
    println!(
        "| peak memory of the process (VmHWM) | {} MB | ≤ 64 MB |",
        peak_kb / 1024
    );
    println!(
        "| one pod update applied and published (mean of {UPDATES}) | {:.1} µs | ≤ 1000 µs |",
        mean.as_secs_f64() * 1e6
    );
    println!(
        "| one pod update, worst | {:.1} µs | |",
        worst.as_secs_f64() * 1e6
    );
    println!(
        "| sanity: ready endpoints of svc-0:80 | {} | 5 |",
        endpoints.len()
    );
}
