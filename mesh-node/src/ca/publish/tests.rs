//! The publisher against a fake API server: namespaces, ConfigMaps, and what was written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock, Mutex};

use http::{Method, Response, StatusCode};
use mesh_core::identity::CertificateAuthority;
use mesh_core::identity::service::CurrentCa;
use serde_json::{Value, json};

use super::*;
use crate::ca::fake_api::{self, ResponseBody, Seen, ok, status};
use crate::test_util::until;

const NAME: &str = "mesh-ca-root";

/// The CA whose roots the tests publish.
static CA: LazyLock<Arc<CertificateAuthority>> =
    LazyLock::new(|| Arc::new(CertificateAuthority::new("cluster.local").unwrap()));

fn roots() -> String {
    CA.root_pem()
}

#[derive(Default)]
struct Cluster {
    /// Namespace → its phase.
    namespaces: BTreeMap<String, &'static str>,
    /// (namespace, name) → ConfigMap.
    configmaps: BTreeMap<(String, String), Value>,
    /// Namespaces where writes are refused.
    refusing: BTreeSet<String>,
    /// Lists fail, as when the API server is unreachable or RBAC is missing.
    lists_fail: bool,
    patches: Vec<Seen>,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<Cluster>>);

impl FakeApi {
    fn with_namespaces(names: &[&str]) -> FakeApi {
        let api = FakeApi::default();
        for name in names {
            api.namespace(name, "Active");
        }
        api
    }

    fn namespace(&self, name: &str, phase: &'static str) {
        self.0
            .lock()
            .unwrap()
            .namespaces
            .insert(name.to_owned(), phase);
    }

    fn publisher(&self) -> RootPublisher {
        self.publisher_of(tokio::sync::watch::channel(CA.clone()).1)
    }

    fn publisher_of(&self, ca: CurrentCa) -> RootPublisher {
        let api = self.clone();
        RootPublisher::new(fake_api::client(move |seen| api.answer(seen)), NAME, ca)
    }

    fn configmap(&self, namespace: &str) -> Option<Value> {
        let cluster = self.0.lock().unwrap();
        cluster
            .configmaps
            .get(&(namespace.to_owned(), NAME.to_owned()))
            .cloned()
    }

    fn answer(&self, seen: Seen) -> Response<ResponseBody> {
        let mut cluster = self.0.lock().unwrap();
        match (&seen.method, seen.segments().as_slice()) {
            (&Method::GET, _) if cluster.lists_fail => {
                status(StatusCode::FORBIDDEN, "namespaces is forbidden")
            }
            (&Method::GET, ["api", "v1", "namespaces"]) => {
                let items: Vec<Value> = cluster
                    .namespaces
                    .iter()
                    .map(|(name, phase)| {
                        json!({"metadata": {"name": name}, "status": {"phase": phase}})
                    })
                    .collect();
                ok(json!({"apiVersion": "v1", "kind": "NamespaceList",
                          "metadata": {"resourceVersion": "1"}, "items": items}))
            }
            (&Method::GET, ["api", "v1", "configmaps"]) => {
                assert_eq!(
                    seen.query, "&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmesh-ca",
                    "only the ConfigMaps this CA manages"
                );
                let items: Vec<Value> = cluster
                    .configmaps
                    .values()
                    .filter(|cm| cm["metadata"]["labels"][MANAGED_BY] == FIELD_MANAGER)
                    .cloned()
                    .collect();
                ok(json!({"apiVersion": "v1", "kind": "ConfigMapList",
                          "metadata": {"resourceVersion": "1"}, "items": items}))
            }
            (&Method::PATCH, ["api", "v1", "namespaces", namespace, "configmaps", name]) => {
                let key = ((*namespace).to_owned(), (*name).to_owned());
                cluster.patches.push(seen.clone());
                if cluster.refusing.contains(*namespace) {
                    return status(StatusCode::FORBIDDEN, "configmaps is forbidden");
                }
                cluster.configmaps.insert(key, seen.body.clone());
                ok(seen.body)
            }
            _ => status(
                StatusCode::NOT_FOUND,
                &format!("no route for {} {}", seen.method, seen.path),
            ),
        }
    }

    fn patches(&self) -> usize {
        self.0.lock().unwrap().patches.len()
    }
}

#[tokio::test]
async fn every_namespace_but_the_clusters_own_gets_the_roots_once() {
    let api = FakeApi::with_namespaces(&[
        "default",
        "istio-system",
        "shop",
        "kube-system",
        "kube-public",
        "kube-node-lease",
    ]);
    api.namespace("leaving", "Terminating");
    let publisher = api.publisher();
    let round = publisher.round().await.unwrap();
    assert_eq!(round.written, ["default", "istio-system", "shop"]);
    assert_eq!((round.current, round.failed.len()), (0, 0));
    let configmap = api.configmap("shop").unwrap();
    assert_eq!(configmap["data"][ROOT_KEY], roots());
    assert_eq!(configmap["metadata"]["labels"][MANAGED_BY], FIELD_MANAGER);
    let patch = api.0.lock().unwrap().patches[0].clone();
    assert!(
        patch.query.contains("fieldManager=mesh-ca") && patch.query.contains("force=true"),
        "server-side apply as mesh-ca: {}",
        patch.query
    );
    assert!(api.configmap("kube-system").is_none());
    assert!(api.configmap("leaving").is_none());

    let again = publisher.round().await.unwrap();
    assert_eq!(
        again,
        Round {
            current: 3,
            ..Round::default()
        }
    );
    assert_eq!(api.patches(), 3, "nothing written when all are current");
}

#[tokio::test]
async fn edited_deleted_or_foreign_copies_and_new_namespaces_are_written() {
    let api = FakeApi::with_namespaces(&["default", "istio-system", "shop"]);
    let publisher = api.publisher();
    publisher.round().await.unwrap();
    {
        let mut cluster = api.0.lock().unwrap();
        let edited = cluster
            .configmaps
            .get_mut(&("default".to_owned(), NAME.to_owned()))
            .unwrap();
        edited["data"][ROOT_KEY] = json!("someone else's root");
        cluster
            .configmaps
            .remove(&("shop".to_owned(), NAME.to_owned()));
        // One the operator made by hand, before: not labelled as this CA's.
        cluster.configmaps.insert(
            ("istio-system".to_owned(), NAME.to_owned()),
            json!({"metadata": {"name": NAME, "namespace": "istio-system"},
                   "data": {ROOT_KEY: roots()}}),
        );
        cluster.namespaces.insert("new".to_owned(), "Active");
    }
    let round = publisher.round().await.unwrap();
    assert_eq!(round.written, ["default", "istio-system", "new", "shop"]);
    for namespace in ["default", "istio-system", "new", "shop"] {
        assert_eq!(api.configmap(namespace).unwrap()["data"][ROOT_KEY], roots());
    }
}

#[tokio::test]
async fn a_namespace_refusing_writes_does_not_hold_up_the_others() {
    let api = FakeApi::with_namespaces(&["default", "locked", "shop"]);
    api.0.lock().unwrap().refusing.insert("locked".to_owned());
    let round = api.publisher().round().await.unwrap();
    assert_eq!(round.written, ["default", "shop"]);
    assert_eq!(round.failed.len(), 1);
    assert_eq!(round.failed[0].0, "locked");
    assert!(
        round.failed[0].1.contains("forbidden"),
        "{:?}",
        round.failed
    );
}

#[tokio::test]
async fn a_failed_list_fails_the_round_and_writes_nothing() {
    let api = FakeApi::with_namespaces(&["default"]);
    api.0.lock().unwrap().lists_fail = true;
    let error = api.publisher().round().await.unwrap_err();
    assert!(error.to_string().contains("forbidden"), "{error}");
    assert_eq!(api.patches(), 0);
}

/// When the CA's files change (a root rotation), the new roots go out at once, not at the
/// next periodic round.
#[tokio::test]
async fn new_roots_are_published_as_soon_as_the_ca_changes() {
    let api = FakeApi::with_namespaces(&["default", "shop"]);
    let (ca, current) = tokio::sync::watch::channel(CA.clone());
    let publisher = tokio::spawn(api.publisher_of(current).run(Duration::from_secs(3600)));
    let published = |roots: String| {
        let api = api.clone();
        until("the roots published in every namespace", move || {
            let (api, roots) = (api.clone(), roots.clone());
            async move {
                for namespace in ["default", "shop"] {
                    let found = api.configmap(namespace);
                    anyhow::ensure!(
                        found
                            .as_ref()
                            .is_some_and(|configmap| configmap["data"][ROOT_KEY] == roots.as_str()),
                        "{namespace} holds {found:?}"
                    );
                }
                Ok(())
            }
        })
    };
    published(roots()).await;
    let next = Arc::new(CertificateAuthority::new("cluster.local").unwrap());
    ca.send_replace(next.clone());
    published(next.root_pem()).await;
    publisher.abort();
}
