//! The Kubernetes authorizer against a fake API server on a tower-test mock: TokenReviews
//! answered from a table of tokens, pods got and listed by node, and the requests checked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::*;
use crate::ca::fake_api::{self, ResponseBody, Seen, ok, status};

const TD: &str = "cluster.local";

/// The fake API server: what each token reviews as, the pods, and the requests seen.
#[derive(Default)]
struct Cluster {
    reviews: BTreeMap<String, Value>,
    pods: BTreeMap<(String, String), Value>,
    seen: Vec<Seen>,
    /// TokenReviews are refused with `403`, as without `system:auth-delegator`.
    forbid_reviews: bool,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<Cluster>>);

impl FakeApi {
    /// `token` reviews as `status` (a TokenReviewStatus).
    fn token(&self, token: &str, status: Value) -> &Self {
        self.0
            .lock()
            .unwrap()
            .reviews
            .insert(token.to_owned(), status);
        self
    }

    fn pod(&self, pod: Value) -> &Self {
        let key = (
            pod["metadata"]["namespace"].as_str().unwrap().to_owned(),
            pod["metadata"]["name"].as_str().unwrap().to_owned(),
        );
        self.0.lock().unwrap().pods.insert(key, pod);
        self
    }

    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().seen.clone()
    }

    fn authorizer(&self) -> KubeAuthorizer {
        let api = self.clone();
        KubeAuthorizer::new(
            fake_api::client(move |seen| api.answer(seen)),
            KubeAuthorizerConfig::default(),
        )
    }

    fn answer(&self, seen: Seen) -> Response<ResponseBody> {
        let mut cluster = self.0.lock().unwrap();
        cluster.seen.push(seen.clone());
        match (&seen.method, seen.segments().as_slice()) {
            (&Method::POST, ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
                if cluster.forbid_reviews {
                    return status(
                        StatusCode::FORBIDDEN,
                        "tokenreviews.authentication.k8s.io is forbidden: User \
                         \"system:serviceaccount:istio-system:mesh-ca\" cannot create resource",
                    );
                }
                let token = seen.body["spec"]["token"].as_str().unwrap_or("");
                let review_status = cluster.reviews.get(token).cloned().unwrap_or_else(
                    || json!({"authenticated": false, "error": "invalid bearer token"}),
                );
                let mut review = seen.body.clone();
                review["status"] = review_status;
                ok(review)
            }
            (&Method::GET, ["api", "v1", "namespaces", namespace, "pods", name]) => {
                match cluster
                    .pods
                    .get(&((*namespace).to_owned(), (*name).to_owned()))
                {
                    Some(pod) => ok(pod.clone()),
                    None => status(StatusCode::NOT_FOUND, &format!("pods \"{name}\" not found")),
                }
            }
            (&Method::GET, ["api", "v1", "namespaces", namespace, "pods"]) => {
                let node = seen
                    .query
                    .split('&')
                    .find_map(|p| p.strip_prefix("fieldSelector=spec.nodeName%3D"));
                let items: Vec<Value> = cluster
                    .pods
                    .iter()
                    .filter(|((ns, _), _)| ns == namespace)
                    .map(|(_, pod)| pod)
                    .filter(|pod| node.is_none_or(|n| pod["spec"]["nodeName"] == n))
                    .cloned()
                    .collect();
                ok(json!({"apiVersion": "v1", "kind": "PodList",
                          "metadata": {"resourceVersion": "7"}, "items": items}))
            }
            _ => status(
                StatusCode::NOT_FOUND,
                &format!("no route for {}", seen.path),
            ),
        }
    }
}

fn pod(namespace: &str, name: &str, service_account: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
           "spec": {"nodeName": node, "serviceAccountName": service_account,
                    "containers": [{"name": "app", "image": "x"}]}})
}

/// A TokenReviewStatus for a token of `namespace/sa` bound to pod `pod` (on `node`, when
/// the API server is new enough to say).
fn review(namespace: &str, sa: &str, pod: Option<&str>, node: Option<&str>) -> Value {
    let mut extra = serde_json::Map::new();
    if let Some(pod) = pod {
        extra.insert(EXTRA_POD_NAME.into(), json!([pod]));
        extra.insert(EXTRA_POD_UID.into(), json!([format!("uid-{pod}")]));
    }
    if let Some(node) = node {
        extra.insert(EXTRA_NODE_NAME.into(), json!([node]));
    }
    json!({"authenticated": true, "audiences": [DEFAULT_AUDIENCE],
           "user": {"username": format!("system:serviceaccount:{namespace}:{sa}"),
                    "uid": "u-1", "groups": ["system:serviceaccounts"], "extra": extra}})
}

/// Two nodes: reviews on node1, ratings on node2, an agent pod on each, a waypoint.
fn cluster() -> FakeApi {
    let api = FakeApi::default();
    api.pod(pod("default", "reviews-v1", "bookinfo-reviews", "node1"))
        .pod(pod("default", "ratings-v1", "bookinfo-ratings", "node2"))
        .pod(pod("istio-system", "mesh-node-a", "mesh-node", "node1"))
        .pod(pod("istio-system", "mesh-node-b", "mesh-node", "node2"))
        .pod(pod("default", "waypoint-0", "waypoint", "node2"))
        .token(
            "agent-a",
            review(
                "istio-system",
                "mesh-node",
                Some("mesh-node-a"),
                Some("node1"),
            ),
        )
        .token(
            "agent-b-old-apiserver",
            review("istio-system", "mesh-node", Some("mesh-node-b"), None),
        )
        .token(
            "waypoint",
            review("default", "waypoint", Some("waypoint-0"), Some("node2")),
        );
    api
}

fn identity(namespace: &str, sa: &str) -> Identity {
    Identity::new(TD, namespace, sa)
}

fn denied(result: Result<(), Refusal>) -> String {
    match result {
        Err(Refusal::Denied(why)) => why,
        other => panic!("expected Denied, got {other:?}"),
    }
}

#[tokio::test]
async fn node_agent_obtains_identities_of_pods_on_its_node() {
    let api = cluster();
    let authorizer = api.authorizer();
    authorizer
        .authorize("agent-a", &identity("default", "bookinfo-reviews"))
        .await
        .unwrap();

    let seen = api.seen();
    assert_eq!(seen.len(), 2, "a TokenReview, then one pod list: {seen:?}");
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(seen[0].path, "/apis/authentication.k8s.io/v1/tokenreviews");
    assert_eq!(seen[0].body["spec"]["token"], "agent-a");
    assert_eq!(seen[0].body["spec"]["audiences"], json!(["istio-ca"]));
    assert_eq!(seen[1].method, Method::GET);
    assert_eq!(seen[1].path, "/api/v1/namespaces/default/pods");
    assert!(
        seen[1]
            .query
            .contains("fieldSelector=spec.nodeName%3Dnode1"),
        "{}",
        seen[1].query
    );
    assert!(
        !seen[1].query.contains("resourceVersion"),
        "a consistent read, not the watch cache: {}",
        seen[1].query
    );
}

#[tokio::test]
async fn node_agent_is_refused_identities_of_pods_on_another_node() {
    let authorizer = cluster().authorizer();
    let why = denied(
        authorizer
            .authorize("agent-a", &identity("default", "bookinfo-ratings"))
            .await,
    );
    assert!(
        why.contains("service account istio-system/mesh-node (pod istio-system/mesh-node-a)")
            && why.contains(
                "no pod of service account default/bookinfo-ratings is scheduled on node node1"
            ),
        "{why}"
    );
}

#[tokio::test]
async fn node_name_missing_from_the_token_falls_back_to_the_agents_pod() {
    let api = cluster();
    let authorizer = api.authorizer();
    authorizer
        .authorize(
            "agent-b-old-apiserver",
            &identity("default", "bookinfo-ratings"),
        )
        .await
        .unwrap();
    let seen = api.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        seen[1].path,
        "/api/v1/namespaces/istio-system/pods/mesh-node-b"
    );
    assert!(
        seen[2]
            .query
            .contains("fieldSelector=spec.nodeName%3Dnode2")
    );

    let why = denied(
        authorizer
            .authorize(
                "agent-b-old-apiserver",
                &identity("default", "bookinfo-reviews"),
            )
            .await,
    );
    assert!(why.contains("scheduled on node node2"), "{why}");
}

#[tokio::test]
async fn node_agent_token_bound_to_no_pod_or_node_is_refused() {
    let api = cluster();
    api.token(
        "agent-legacy",
        review("istio-system", "mesh-node", None, None),
    );
    let why = denied(
        api.authorizer()
            .authorize("agent-legacy", &identity("default", "bookinfo-reviews"))
            .await,
    );
    assert!(why.contains("bound to no pod or node"), "{why}");
}

#[tokio::test]
async fn unauthenticated_token_is_refused_without_echoing_it() {
    let api = cluster();
    api.token(
        "expired-token",
        json!({"authenticated": false, "error": "token expired-token has expired"}),
    );
    let authorizer = api.authorizer();
    for token in ["forged-token", "expired-token"] {
        match authorizer
            .authorize(token, &identity("default", "bookinfo-reviews"))
            .await
        {
            Err(Refusal::Unauthenticated(why)) => {
                assert!(why.contains("audience istio-ca"), "{why}");
                assert!(!why.contains(token), "the token leaked: {why}");
            }
            other => panic!("expected Unauthenticated, got {other:?}"),
        }
    }
    assert_eq!(api.seen().len(), 2, "no pod lookups for unknown callers");
}

#[tokio::test]
async fn audience_the_api_server_did_not_confirm_is_refused() {
    let api = cluster();
    let mut status = review("default", "waypoint", Some("waypoint-0"), None);
    status["audiences"] = json!([]);
    api.token("no-audience", status);
    let result = api
        .authorizer()
        .authorize("no-audience", &identity("default", "waypoint"))
        .await;
    assert!(
        matches!(&result, Err(Refusal::Unauthenticated(why)) if why.contains("did not confirm")),
        "{result:?}"
    );
}

#[tokio::test]
async fn pod_token_obtains_its_own_identity_only() {
    let api = cluster();
    let authorizer = api.authorizer();
    authorizer
        .authorize("waypoint", &identity("default", "waypoint"))
        .await
        .unwrap();
    let seen = api.seen();
    assert_eq!(
        seen.last().unwrap().path,
        "/api/v1/namespaces/default/pods/waypoint-0",
        "the token's pod must exist"
    );

    let why = denied(
        authorizer
            .authorize("waypoint", &identity("default", "bookinfo-ratings"))
            .await,
    );
    assert!(
        why.contains("service account default/waypoint (pod default/waypoint-0)")
            && why.contains("only its own identity"),
        "{why}"
    );
}

#[tokio::test]
async fn pod_token_of_a_deleted_or_replaced_pod_is_refused() {
    let api = cluster();
    api.token(
        "gone",
        review("default", "waypoint", Some("waypoint-1"), None),
    );
    let authorizer = api.authorizer();
    let why = denied(
        authorizer
            .authorize("gone", &identity("default", "waypoint"))
            .await,
    );
    assert!(
        why.contains("pod default/waypoint-1 no longer exists"),
        "{why}"
    );

    // Same name, new pod: the token's UID no longer matches.
    let mut replaced = pod("default", "waypoint-0", "waypoint", "node2");
    replaced["metadata"]["uid"] = json!("uid-new");
    api.pod(replaced);
    let why = denied(
        authorizer
            .authorize("waypoint", &identity("default", "waypoint"))
            .await,
    );
    assert!(why.contains("no longer exists"), "{why}");
}

#[tokio::test]
async fn non_service_account_users_are_refused() {
    let api = cluster();
    api.token(
        "alice",
        json!({"authenticated": true, "audiences": ["istio-ca"],
               "user": {"username": "alice@example.com"}}),
    );
    let why = denied(
        api.authorizer()
            .authorize("alice", &identity("default", "bookinfo-reviews"))
            .await,
    );
    assert!(
        why.contains("\"alice@example.com\" is not a service account"),
        "{why}"
    );
}

#[tokio::test]
async fn api_failure_is_unavailable_not_a_denial() {
    let api = cluster();
    api.0.lock().unwrap().forbid_reviews = true;
    let result = api
        .authorizer()
        .authorize("agent-a", &identity("default", "bookinfo-reviews"))
        .await;
    match result {
        Err(Refusal::Unavailable(why)) => {
            assert!(why.contains("creating a TokenReview failed"), "{why}");
            assert!(!why.contains("agent-a"), "the token leaked: {why}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn service_accounts_parse_as_namespace_slash_name() {
    assert_eq!(
        parse_service_account("istio-system/mesh-node").unwrap(),
        Name::new("istio-system", "mesh-node")
    );
    for bad in ["mesh-node", "/mesh-node", "istio-system/", "a/b/c"] {
        assert!(parse_service_account(bad).is_err(), "{bad}");
    }
}
