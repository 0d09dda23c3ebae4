//! The kube source against a fake API server on a tower-test mock: lists, watches, watch
//! restarts, `410 Gone`, objects deleted while disconnected (through a [`Store`], which
//! removes what a re-list no longer names), and equality with the files source.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::config::{self, Kind, Name, Store};
use crate::manifest;
use crate::source::files::FilesSource;

type ResponseBody = BoxBody<Bytes, std::io::Error>;

/// The fake API server's data: objects per plural, the resource version, open watches.
#[derive(Default)]
struct Cluster {
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    version: u64,
    watches: Vec<Watch>,
    /// The next watch of this plural is answered with `410 Gone` (an expired version).
    expire_next_watch: Option<String>,
}

struct Watch {
    plural: String,
    events: mpsc::UnboundedSender<Bytes>,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<Cluster>>);

fn key_of(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap()
    )
}

impl FakeApi {
    /// Adds or changes an object, as the API server would, and tells the watches.
    fn apply(&self, plural: &str, mut object: Value) {
        let mut cluster = self.0.lock().unwrap();
        cluster.version += 1;
        let version = cluster.version.to_string();
        object["metadata"]["resourceVersion"] = json!(version);
        object["metadata"]["creationTimestamp"] = json!("2026-11-23T10:00:00Z");
        object["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply"}]);
        let objects = cluster.objects.entry(plural.to_owned()).or_default();
        let kind = if objects.insert(key_of(&object), object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        cluster.send(plural, kind, &object);
    }

    fn delete(&self, plural: &str, key: &str, tell_watches: bool) {
        let mut cluster = self.0.lock().unwrap();
        cluster.version += 1;
        let object = cluster
            .objects
            .get_mut(plural)
            .unwrap()
            .remove(key)
            .unwrap();
        if tell_watches {
            cluster.send(plural, "DELETED", &object);
        }
    }

    /// Ends every open watch, as a dropped connection or an API server restart does; with
    /// `expire`, the next watch of that plural finds its resource version expired.
    fn disconnect(&self, expire: Option<&str>) {
        let mut cluster = self.0.lock().unwrap();
        cluster.watches.clear();
        cluster.expire_next_watch = expire.map(str::to_owned);
    }

    fn watch_count(&self) -> usize {
        self.0.lock().unwrap().watches.len()
    }

    fn client(&self) -> kube::Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<ResponseBody>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                respond.send_response(api.answer(&request));
            }
        });
        kube::Client::new(service, "default")
    }

    fn answer(&self, request: &Request<kube::client::Body>) -> Response<ResponseBody> {
        let plural = request.uri().path().rsplit('/').next().unwrap().to_owned();
        let query = request.uri().query().unwrap_or("");
        // A node agent routes to pods on every node by their records (identity, node): no
        // watch may be narrowed to one node's pods.
        assert!(
            !query.contains("fieldSelector"),
            "{plural} asked with a field selector: {query}"
        );
        let mut cluster = self.0.lock().unwrap();
        if query.contains("watch=true") {
            let (events, rx) = mpsc::unbounded_channel();
            if cluster.expire_next_watch.as_deref() == Some(plural.as_str()) {
                cluster.expire_next_watch = None;
                let gone = json!({"type": "ERROR", "object": {
                    "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                    "message": "too old resource version", "reason": "Expired", "code": 410}});
                events.send(Bytes::from(format!("{gone}\n"))).unwrap();
            } else {
                cluster.watches.push(Watch { plural, events });
            }
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|bytes| (Ok(Frame::data(bytes)), rx))
            });
            return Response::new(BodyExt::boxed(StreamBody::new(stream)));
        }
        let items: Vec<Value> = cluster
            .objects
            .get(&plural)
            .into_iter()
            .flat_map(|objects| objects.values())
            .cloned()
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": cluster.version.to_string()}, "items": items});
        let body = http_body_util::Full::new(Bytes::from(list.to_string()))
            .map_err(|never| match never {})
            .boxed();
        Response::new(body)
    }
}

impl Cluster {
    fn send(&mut self, plural: &str, kind: &str, object: &Value) {
        // `type` first, as the API server writes it (the source relies on it).
        let line = Bytes::from(format!("{{\"type\":\"{kind}\",\"object\":{object}}}\n"));
        self.watches.retain(|w| {
            if w.plural != plural {
                return true;
            }
            w.events.send(line.clone()).is_ok()
        });
    }
}

fn resources(kinds: &[&str]) -> Vec<Resource> {
    RESOURCES
        .iter()
        .filter(|r| kinds.contains(&r.kind))
        .copied()
        .collect()
}

fn namespace(name: &str, mode: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"istio.io/dataplane-mode": mode}}})
}

fn pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
           "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x"}]}})
}

const WAIT: Duration = Duration::from_secs(10);

async fn next(rx: &mut mpsc::Receiver<Update>) -> Update {
    loop {
        let update = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("an update in time")
            .expect("the source is running");
        // Problems are reported when watches fail on purpose; the tests look past them.
        if !matches!(update, Update::Problems(_)) {
            return update;
        }
    }
}

/// The updates up to and including [`Update::Synced`].
async fn first_sync(rx: &mut mpsc::Receiver<Update>) -> Vec<Update> {
    let mut updates = Vec::new();
    loop {
        let update = next(rx).await;
        let synced = matches!(update, Update::Synced);
        updates.push(update);
        if synced {
            return updates;
        }
    }
}

/// The objects of a first sync.
fn upserted(updates: &[Update]) -> Vec<&JsonObject> {
    updates
        .iter()
        .filter_map(|u| match u {
            Update::UpsertJson(object) => Some(object),
            _ => None,
        })
        .collect()
}

/// An object as the model holds it.
fn typed(object: &JsonObject) -> config::Resource {
    let kind = Kind::of(&object.key.group, &object.key.kind).unwrap();
    let (namespace, name) = (object.key.namespace.as_deref(), &object.key.name);
    config::Resource::from_json(kind, namespace, name, object.json.get()).unwrap()
}

fn labels(object: &JsonObject) -> Value {
    let value: Value = serde_json::from_str(object.json.get()).unwrap();
    value["metadata"]["labels"].clone()
}

fn kind(kind: &str) -> ObjectKind {
    ObjectKind {
        group: String::new(),
        kind: kind.to_owned(),
    }
}

async fn until_watching(api: &FakeApi, count: usize) {
    tokio::time::timeout(WAIT, async {
        while api.watch_count() < count {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the watchers re-established their watches");
}

#[tokio::test]
async fn watches_follow_changes_restarts_and_deletions_while_disconnected() {
    let api = FakeApi::default();
    api.apply("namespaces", namespace("default", "ambient"));
    api.apply("pods", pod("local", "node1"));
    api.apply("pods", pod("elsewhere", "node2"));
    let options = KubeOptions {
        resources: resources(&["Namespace", "Pod"]),
    };
    let (tx, mut rx) = mpsc::channel(64);
    let _watch = KubeSource::new(api.client(), options).spawn(tx);

    let updates = first_sync(&mut rx).await;
    for kind in [kind("Namespace"), kind("Pod")] {
        let listing = updates
            .iter()
            .position(|u| matches!(u, Update::Listing(k) if *k == kind));
        let listed = updates
            .iter()
            .position(|u| matches!(u, Update::Listed(k) if *k == kind));
        assert!(
            listing.is_some() && listing < listed,
            "each kind's list is announced and completed: {updates:?}"
        );
    }
    let objects = upserted(&updates);
    let mut names: Vec<&str> = objects.iter().map(|o| o.key.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["default", "elsewhere", "local"],
        "every node's pods (an agent routes to pods elsewhere by their records)"
    );
    let local = typed(objects.iter().find(|o| o.key.name == "local").unwrap());
    let metadata = local.metadata();
    assert_eq!(
        metadata.resource_version, None,
        "server metadata is dropped"
    );
    assert_eq!(metadata.managed_fields, None, "server metadata is dropped");
    assert_eq!(metadata.uid.as_deref(), Some("uid-local"));
    let mut store = Store::new();
    store.apply_all(updates);
    until_watching(&api, 2).await;

    api.apply("pods", pod("second", "node1"));
    api.apply("pods", pod("other-node", "node2"));
    for name in ["second", "other-node"] {
        let Update::UpsertJson(added) = next(&mut rx).await else {
            panic!("upsert")
        };
        assert_eq!(added.key.name, name);
        store.apply(Update::UpsertJson(added));
    }

    api.apply("namespaces", namespace("default", "none"));
    let Update::UpsertJson(changed) = next(&mut rx).await else {
        panic!("upsert")
    };
    assert_eq!(labels(&changed)["istio.io/dataplane-mode"], "none");
    store.apply(Update::UpsertJson(changed));

    // A watch restart resumes where it stopped.
    api.disconnect(None);
    until_watching(&api, 2).await;
    api.delete("pods", "default/second", true);
    let Update::Delete(key) = next(&mut rx).await else {
        panic!("delete")
    };
    assert_eq!(key.to_string(), "Pod default/second");
    store.apply(Update::Delete(key));

    // Deleted while disconnected, and the resource version expired: the pods are listed
    // again, and the store drops the one the list no longer names.
    api.delete("pods", "default/local", false);
    api.disconnect(Some("pods"));
    let mut relist = vec![next(&mut rx).await];
    while !matches!(relist.last(), Some(Update::Listed(_))) {
        relist.push(next(&mut rx).await);
    }
    let relisted: Vec<&str> = relist
        .iter()
        .filter_map(|u| match u {
            Update::UpsertJson(o) => Some(o.key.name.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        matches!((relist.first(), relist.last()), (Some(Update::Listing(a)), Some(Update::Listed(b))) if *a == kind("Pod") && *b == kind("Pod"))
            && relisted == ["elsewhere", "other-node"],
        "{relist:?}"
    );
    assert!(store.model().pod(&Name::new("default", "local")).is_some());
    store.apply_all(relist);
    let model = store.model();
    assert!(model.pod(&Name::new("default", "local")).is_none());
    assert!(
        model.namespace_labels("default").is_some(),
        "other kinds stay"
    );
}

#[tokio::test]
async fn kinds_the_cluster_does_not_serve_do_not_hold_back_the_first_sync() {
    let (service, mut handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<ResponseBody>>();
    let api = FakeApi::default();
    api.apply("namespaces", namespace("default", "ambient"));
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            if request.uri().path().contains("networking.istio.io") {
                let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                    "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404});
                let body = http_body_util::Full::new(Bytes::from(status.to_string()))
                    .map_err(|never| match never {})
                    .boxed();
                let mut response = Response::new(body);
                *response.status_mut() = http::StatusCode::NOT_FOUND;
                respond.send_response(response);
            } else {
                respond.send_response(api.answer(&request));
            }
        }
    });
    let options = KubeOptions {
        resources: resources(&["Namespace", "VirtualService"]),
    };
    let (tx, mut rx) = mpsc::channel(64);
    let _watch = KubeSource::new(kube::Client::new(service, "default"), options).spawn(tx);
    let mut problems = Vec::new();
    let mut objects = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await.unwrap() {
                Update::Synced => return,
                Update::UpsertJson(object) => objects.push(object),
                Update::Problems(p) => problems.extend(p),
                Update::Listing(_) | Update::Listed(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the first sync completes despite the missing CRD");
    assert_eq!(objects.len(), 1);
    while let Ok(Some(Update::Problems(p))) =
        tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
    {
        problems.extend(p);
    }
    assert!(
        problems
            .iter()
            .any(|p| p.contains("networking.istio.io/v1/VirtualService is not served")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn kube_and_files_sources_lead_to_identical_resources() {
    let samples =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/istio-samples");
    let loaded = manifest::load_paths(&[
        samples.join("bookinfo/platform/kube/bookinfo.yaml"),
        samples.join("bookinfo/networking/virtual-service-reviews-80-20.yaml"),
        samples.join("bookinfo/networking/destination-rule-all.yaml"),
    ]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let watched: Vec<Resource> = resources(&[
        "Service",
        "ServiceAccount",
        "VirtualService",
        "DestinationRule",
    ]);
    let dir = std::env::temp_dir().join(format!("mesh-kube-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let api = FakeApi::default();
    for object in &loaded.objects {
        let Some(resource) = watched.iter().find(|r| r.kind == object.kind) else {
            continue;
        };
        let mut value = object.value.clone();
        value["metadata"]["namespace"] = json!("default");
        api.apply(resource.plural, value.clone());
        let file = dir.join(format!("{}-{}.yaml", object.kind, object.name));
        std::fs::write(file, serde_yaml_ng::to_string(&value).unwrap()).unwrap();
    }
    let (tx, mut rx) = mpsc::channel(64);
    let watch = FilesSource::new(&dir).spawn(tx).unwrap();
    let from_files = first_sync(&mut rx).await;
    drop(watch);
    std::fs::remove_dir_all(&dir).unwrap();

    let (tx, mut rx) = mpsc::channel(64);
    let options = KubeOptions { resources: watched };
    let _watch = KubeSource::new(api.client(), options).spawn(tx);
    let from_kube = first_sync(&mut rx).await;

    // As the model holds them: typed, the API server's own metadata dropped.
    let files: BTreeMap<ObjectKey, config::Resource> = from_files
        .into_iter()
        .filter_map(|u| match u {
            Update::Upsert(object) => Some(object),
            _ => None,
        })
        .map(|o| (ObjectKey::of(&o), config::Resource::from_object(o).unwrap()))
        .collect();
    let from_kube: BTreeMap<ObjectKey, config::Resource> = upserted(&from_kube)
        .into_iter()
        .map(|o| (o.key.clone(), typed(o)))
        .collect();
    assert_eq!(
        files.len(),
        4 + 4 + 1 + 4,
        "services, accounts, a virtual service, rules"
    );
    assert_eq!(files, from_kube);
}
