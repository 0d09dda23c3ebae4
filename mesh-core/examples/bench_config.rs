//! Config model benchmark (run by `cargo xtask bench config`): 10k Services, 50k Pods, 2k
//! VirtualServices and 2k DestinationRules loaded and indexed, then single pod updates;
//! prints the time and the process's peak memory. One mode per process:
//!
//! - `startup` (default): what a waypoint (which watches every pod) does when it starts, on
//!   the same runtime (one worker thread). The kube source lists every kind from an API
//!   server, in pages of 500 as kube-runtime asks for them, and the store, applying them in
//!   a task of its own, indexes each object as it arrives and publishes once the first sync
//!   is complete. The API server is an in-process fake answering with pages that a child
//!   process wrote to files beforehand, so that producing them costs this process neither
//!   time nor memory (a real API server is another process).
//! - `stream`: the same objects generated one by one straight into the store: the model's
//!   own cost, without a source.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, combinators::BoxBody};
use mesh_core::config::Store;
use mesh_core::manifest::{Object, Origin, object_from_value};
use mesh_core::source::Update;
use mesh_core::source::kube::{KubeOptions, KubeSource};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const NAMESPACES: usize = 100;
const SERVICES: usize = 10_000;
const PODS: usize = 50_000;
const RULES: usize = 2_000;
const UPDATES: usize = 1_000;
/// kube-runtime's default list page size.
const PAGE: usize = 500;

fn service(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % NAMESPACES)},
        "spec": {"clusterIP": format!("10.96.{}.{}", i / 256, i % 256), "selector": {"app": format!("svc-{i}")},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    })
}

fn pod(i: usize, version: &str) -> Value {
    let svc = i % SERVICES;
    let ns = svc % NAMESPACES;
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("svc-{svc}-{i}"), "namespace": format!("ns-{ns}"),
                     "labels": {"app": format!("svc-{svc}"), "version": version}},
        "spec": {"serviceAccountName": format!("svc-{svc}"), "nodeName": format!("node-{}", i % 50),
                 "containers": [{"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256),
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn virtual_service(i: usize) -> Value {
    let host = format!("svc-{i}");
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": host, "namespace": format!("ns-{}", i % NAMESPACES)},
        "spec": {"hosts": [host], "http": [{"match": [{"headers": {"end-user": {"exact": "jason"}}}],
                 "route": [{"destination": {"host": host, "subset": "v2"}}]},
                 {"route": [{"destination": {"host": host, "subset": "v1"}, "weight": 90},
                            {"destination": {"host": host, "subset": "v2"}, "weight": 10}], "timeout": "3s"}]}
    })
}

fn destination_rule(i: usize) -> Value {
    let host = format!("svc-{i}");
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": host, "namespace": format!("ns-{}", i % NAMESPACES)},
        "spec": {"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                           {"name": "v2", "labels": {"version": "v2"}}]}
    })
}

/// Each kind's objects by the API path it is listed at, generated lazily.
fn kinds() -> Vec<(&'static str, Box<dyn Iterator<Item = Value>>)> {
    vec![
        ("/api/v1/services", Box::new((0..SERVICES).map(service))),
        ("/api/v1/pods", Box::new((0..PODS).map(|i| pod(i, "v1")))),
        (
            "/apis/networking.istio.io/v1/virtualservices",
            Box::new((0..RULES).map(virtual_service)),
        ),
        (
            "/apis/networking.istio.io/v1/destinationrules",
            Box::new((0..RULES).map(destination_rule)),
        ),
    ]
}

fn object(value: Value) -> Object {
    let origin = Origin {
        file: Path::new("bench").to_owned(),
        document: 1,
    };
    object_from_value(value, origin).expect("valid bench object")
}

/// The fake API server's data: each kind's list pages as files (`<kind>-<page>.json`).
struct Pages(PathBuf);

impl Pages {
    /// Has a child process (this program, `write-pages DIR`) write the pages.
    fn prepare() -> Pages {
        let dir = std::env::temp_dir().join(format!("mesh-bench-config-{}", std::process::id()));
        let pages = Pages(dir);
        let program = std::env::current_exe().expect("the benchmark's own path");
        let status = std::process::Command::new(program)
            .arg("write-pages")
            .arg(&pages.0)
            .status()
            .expect("the page writer runs");
        assert!(status.success(), "the page writer failed: {status}");
        pages
    }

    fn write(dir: &Path) {
        std::fs::create_dir_all(dir).expect("a folder for the list pages");
        for (path, objects) in kinds() {
            let mut objects = objects.peekable();
            let mut page = 0;
            while objects.peek().is_some() {
                let items: Vec<Value> = objects
                    .by_ref()
                    .take(PAGE)
                    .map(|mut item| {
                        // Set by every API server; the kube source drops it.
                        item["metadata"]["resourceVersion"] = json!("1");
                        item
                    })
                    .collect();
                let more = objects.peek().is_some();
                let list = json!({"apiVersion": "v1", "kind": "List", "items": items,
                    "metadata": {"resourceVersion": "1", "continue": if more { (page + 1).to_string() } else { String::new() }}});
                let file = dir.join(format!("{}-{page}.json", path.replace('/', "_")));
                std::fs::write(file, list.to_string()).expect("a list page written");
                page += 1;
            }
        }
    }

    /// The answer to a list (its page from the file, or an empty list for a kind without
    /// objects) or a watch (a stream that stays open with no events).
    fn answer(
        &self,
        request: &Request<kube::client::Body>,
    ) -> Response<BoxBody<Bytes, std::io::Error>> {
        let query = request.uri().query().unwrap_or("");
        if query.contains("watch=true") {
            let never =
                futures::stream::pending::<Result<http_body::Frame<Bytes>, std::io::Error>>();
            return Response::new(BodyExt::boxed(http_body_util::StreamBody::new(never)));
        }
        let page = query
            .split('&')
            .find_map(|p| p.strip_prefix("continue="))
            .unwrap_or("0");
        let file = self.0.join(format!(
            "{}-{page}.json",
            request.uri().path().replace('/', "_")
        ));
        let body = std::fs::read(file).unwrap_or_else(|_| {
            br#"{"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}"#
                .to_vec()
        });
        Response::new(
            http_body_util::Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
    }

    /// A client whose requests the pages answer.
    fn client(self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<
            Request<kube::client::Body>,
            Response<BoxBody<Bytes, std::io::Error>>,
        >();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                respond.send_response(self.answer(&request));
            }
        });
        kube::Client::new(service, "default")
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The startup path: the kube source's lists into the store, applied in a task as the
/// waypoint applies them, until the first sync is complete.
async fn startup(mut store: Store, pages: Pages) -> Store {
    let (tx, mut updates) = mpsc::channel(64);
    let _watch = KubeSource::new(pages.client(), KubeOptions::default()).spawn(tx);
    let apply = tokio::spawn(async move {
        while let Some(update) = updates.recv().await {
            store.apply(update);
            if store.synced() {
                return store;
            }
        }
        panic!("the kube source stopped before its first sync was complete");
    });
    apply.await.expect("the store's task")
}

/// Single pod updates (readiness-relevant labels flipped on existing pods), each applied and
/// published: the mean and the worst time.
fn pod_updates(store: &mut Store) -> (Duration, Duration) {
    let updates: Vec<Object> = (0..UPDATES)
        .map(|i| object(pod(i * 37 % PODS, "v2")))
        .collect();
    let mut worst = Duration::ZERO;
    let start = Instant::now();
    for update in updates {
        let one = Instant::now();
        store.apply(Update::Upsert(update));
        worst = worst.max(one.elapsed());
    }
    (start.elapsed() / UPDATES as u32, worst)
}

/// The CPU time the process has used, all threads (user and system).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses): utime and stime are the
    // 12th and 13th, in ticks of 1/100 s (USER_HZ).
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    Duration::from_millis(ticks * 10)
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
    let mode = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "startup".to_owned());
    if mode == "write-pages" {
        let dir = std::env::args().nth(2).expect("write-pages DIR");
        return Pages::write(Path::new(&dir));
    }
    let stream = match mode.as_str() {
        "stream" => true,
        "startup" => false,
        other => panic!("unknown mode {other:?}: startup or stream"),
    };
    // As the proxies run by default: one worker thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let pages = (!stream).then(Pages::prepare);
    let (start, cpu_start) = (Instant::now(), cpu_time());
    let store = match pages {
        Some(pages) => runtime.block_on(startup(Store::new(), pages)),
        None => {
            let mut store = Store::new();
            let objects = kinds().into_iter().flat_map(|(_, values)| values);
            store.apply_all(Update::first_sync(objects.map(object)));
            store
        }
    };
    let (load, load_cpu) = (start.elapsed(), cpu_time() - cpu_start);
    let mut store = store;
    let peak_kb = status_kb("VmHWM:");
    let model = store.model();
    let counts = model.counts();
    assert_eq!(counts["Pod"], PODS);
    assert_eq!(counts["Service"], SERVICES);

    // Where the store was loaded: on the runtime's worker for `startup`.
    let (store, (mean, worst)) = if stream {
        let times = pod_updates(&mut store);
        (store, times)
    } else {
        let task = runtime.spawn(async move {
            let times = pod_updates(&mut store);
            (store, times)
        });
        runtime.block_on(task).expect("the pod updates' task")
    };
    let check = store.model();
    let svc = check
        .service_by_host("svc-0.ns-0.svc.cluster.local")
        .expect("svc-0");
    let endpoints = check.ready_endpoints(svc, 80);

    let (mode, what) = if stream {
        (
            "stream: objects generated one by one straight into the store",
            "generate + convert + validate + index",
        )
    } else {
        (
            "startup: kube source (pages of 500 from a fake API server) into the store",
            "list + decode + validate + index, until synced",
        )
    };
    println!("config model benchmark, {mode} ({NAMESPACES} namespaces)");
    println!("| figure | value | target |");
    println!("|---|---|---|");
    println!(
        "| objects | {SERVICES} Services, {PODS} Pods, {RULES} VirtualServices, {RULES} DestinationRules | |"
    );
    println!(
        "| {what} | {:.0} ms | ≤ 1000 ms |",
        load.as_secs_f64() * 1e3
    );
    println!(
        "| the same, CPU time of all threads | {:.0} ms | |",
        load_cpu.as_secs_f64() * 1e3
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
