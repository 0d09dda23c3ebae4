//! The `kube` source: the Kubernetes API, the one place this project talks to it. One
//! kube-runtime watcher per kind (re-listing after errors with backoff, after `410 Gone`
//! and after a lost watch); a node agent watches only the pods on its node. Each object
//! goes on as its list page or watch event brings it, as the JSON text the API server sent
//! ([`Update::UpsertJson`]): every list (the first, or a re-list) between
//! [`Update::Listing`] and [`Update::Listed`], so that objects deleted while disconnected
//! go too; [`Update::Synced`] once every kind has listed; then changes. The model it leads
//! to is the one the files source leads to from the same objects.

use std::borrow::Cow;

use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, ApiResource};
use kube::core::DynamicResourceScope;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::{JsonObject, ObjectKey, ObjectKind, Update};

/// A kind the source watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl Resource {
    const fn new(
        group: &'static str,
        version: &'static str,
        kind: &'static str,
        plural: &'static str,
    ) -> Resource {
        Resource {
            group,
            version,
            kind,
            plural,
        }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn key_of(&self, metadata: ObjectMeta) -> ObjectKey {
        ObjectKey {
            group: self.group.to_owned(),
            kind: self.kind.to_owned(),
            namespace: metadata.namespace,
            name: metadata.name.unwrap_or_default(),
        }
    }

    fn object_kind(&self) -> ObjectKind {
        ObjectKind {
            group: self.group.to_owned(),
            kind: self.kind.to_owned(),
        }
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_owned(),
            version: self.version.to_owned(),
            api_version: self.api_version(),
            kind: self.kind.to_owned(),
            plural: self.plural.to_owned(),
        }
    }
}

/// Everything the data planes read: the core kinds and Istio's networking and security
/// kinds at their storage version.
pub const RESOURCES: &[Resource] = &[
    Resource::new("", "v1", "Namespace", "namespaces"),
    Resource::new("", "v1", "Pod", "pods"),
    Resource::new("", "v1", "Service", "services"),
    Resource::new("", "v1", "ServiceAccount", "serviceaccounts"),
    Resource::new("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    Resource::new(
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    ),
    Resource::new(
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    ),
    Resource::new("networking.istio.io", "v1", "Gateway", "gateways"),
    Resource::new(
        "networking.istio.io",
        "v1",
        "ServiceEntry",
        "serviceentries",
    ),
    Resource::new("networking.istio.io", "v1", "Sidecar", "sidecars"),
    Resource::new(
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        "peerauthentications",
    ),
    Resource::new(
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        "authorizationpolicies",
    ),
    Resource::new(
        "security.istio.io",
        "v1",
        "RequestAuthentication",
        "requestauthentications",
    ),
];

#[derive(Debug, Clone)]
pub struct KubeOptions {
    pub resources: Vec<Resource>,
}

impl Default for KubeOptions {
    fn default() -> KubeOptions {
        KubeOptions {
            resources: RESOURCES.to_vec(),
        }
    }
}

pub struct KubeSource {
    client: Client,
    options: KubeOptions,
}

/// Keeps the watchers running; drop it to stop them.
pub struct WatchHandle {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeSource {
    pub fn new(client: Client, options: KubeOptions) -> KubeSource {
        KubeSource { client, options }
    }

    /// Starts the watchers: each kind's list, [`Update::Synced`] once every kind has listed,
    /// then changes.
    pub fn spawn(self, updates: mpsc::Sender<Update>) -> WatchHandle {
        let streams: Vec<BoxStream<'static, (usize, WatchResult)>> = self
            .options
            .resources
            .iter()
            .enumerate()
            .map(|(index, resource)| {
                let api: Api<ApiObject> =
                    Api::all_with(self.client.clone(), &resource.api_resource());
                // Every namespace and every node: a node agent needs the pods of other nodes
                // too (their identity and node, to tunnel to them), as ztunnel holds every
                // workload.
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .map(move |event| (index, event))
                    .boxed()
            })
            .collect();
        let mut state = State::new(self.options.resources);
        let task = tokio::spawn(async move {
            let mut events = futures::stream::select_all(streams);
            while let Some((index, event)) = events.next().await {
                for update in state.on_event(index, event) {
                    if updates.send(update).await.is_err() {
                        return;
                    }
                }
            }
        });
        WatchHandle { task }
    }
}

type WatchResult = Result<watcher::Event<ApiObject>, watcher::Error>;

/// An object as the API server sends it, kept as the JSON text it came in: the store decodes
/// that straight into its typed form, a list page of 500 pods weighs its text (~0.5 MB
/// here) rather than 500 decoded objects (~4 MB), and there is no detour through kube's
/// `DynamicObject` (typed metadata beside the rest, serialized back into JSON). The watcher
/// reads only the name, namespace and resourceVersion, copied into `metadata`. Keeping the
/// text needs serde_json's own deserializer, which the API server's JSON always meets: list
/// items, and watch events whose `type` comes before their `object`.
#[derive(Debug, Clone)]
struct ApiObject {
    metadata: ObjectMeta,
    json: Box<RawValue>,
}

impl<'de> Deserialize<'de> for ApiObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ApiObject, D::Error> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(default)]
            metadata: Meta,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            name: Option<String>,
            namespace: Option<String>,
            resource_version: Option<String>,
        }
        let json = Box::<RawValue>::deserialize(deserializer)?;
        let Head { metadata } = serde_json::from_str(json.get()).map_err(D::Error::custom)?;
        let metadata = ObjectMeta {
            name: metadata.name,
            namespace: metadata.namespace,
            resource_version: metadata.resource_version,
            ..ObjectMeta::default()
        };
        Ok(ApiObject { metadata, json })
    }
}

impl kube::Resource for ApiObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What the source remembers between watcher events: which kinds have listed, which are
/// failing. No objects: each goes on to the consumer as it arrives, and a re-list is
/// announced ([`Update::Listing`] … [`Update::Listed`]) so the consumer, which holds the
/// model anyway, removes what the list no longer names.
struct State {
    resources: Vec<Resource>,
    /// Kinds that have listed at least once (or are not served at all).
    listed: Vec<bool>,
    /// Kinds whose last event was an error (reported once until they recover).
    failing: Vec<bool>,
    synced: bool,
}

impl State {
    fn new(resources: Vec<Resource>) -> State {
        let n = resources.len();
        State {
            resources,
            listed: vec![false; n],
            failing: vec![false; n],
            synced: false,
        }
    }

    fn on_event(&mut self, index: usize, event: WatchResult) -> Vec<Update> {
        let resource = self.resources[index];
        let event = match event {
            Ok(event) => {
                self.failing[index] = false;
                event
            }
            Err(error) => return self.on_error(index, &error),
        };
        match event {
            watcher::Event::Init => vec![Update::Listing(resource.object_kind())],
            watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
                vec![Update::UpsertJson(JsonObject {
                    key: resource.key_of(object.metadata),
                    json: object.json,
                })]
            }
            watcher::Event::InitDone => {
                self.listed[index] = true;
                let mut updates = vec![Update::Listed(resource.object_kind())];
                updates.extend(self.first_sync_complete());
                updates
            }
            watcher::Event::Delete(object) => {
                vec![Update::Delete(resource.key_of(object.metadata))]
            }
        }
    }

    fn on_error(&mut self, index: usize, error: &watcher::Error) -> Vec<Update> {
        let resource = self.resources[index];
        let not_served = matches!(
            error,
            watcher::Error::InitialListFailed(kube::Error::Api(status))
                | watcher::Error::WatchStartFailed(kube::Error::Api(status))
                if status.code == 404
        );
        tracing::warn!(kind = resource.kind, %error, "watch failed; retrying with backoff");
        let mut updates = Vec::new();
        if !self.failing[index] {
            self.failing[index] = true;
            let message = if not_served {
                format!(
                    "{}/{} is not served by the API server (is its CustomResourceDefinition installed?); it counts as empty and is retried",
                    resource.api_version(),
                    resource.kind
                )
            } else {
                format!(
                    "watching {} failed: {error}; objects read before keep serving, retrying with backoff",
                    resource.kind
                )
            };
            updates.push(Update::Problems(vec![message]));
        }
        // A kind the cluster does not serve must not hold back the first sync.
        if not_served && !self.listed[index] {
            self.listed[index] = true;
            updates.extend(self.first_sync_complete());
        }
        updates
    }

    /// [`Update::Synced`] once every kind has listed for the first time.
    fn first_sync_complete(&mut self) -> Option<Update> {
        if self.synced || !self.listed.iter().all(|l| *l) {
            return None;
        }
        self.synced = true;
        Some(Update::Synced)
    }
}

#[cfg(test)]
mod tests;
