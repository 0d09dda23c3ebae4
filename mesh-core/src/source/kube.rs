//! The `kube` source: the Kubernetes API, the one place this project talks to it. One
//! kube-runtime watcher per kind (re-listing after errors with backoff, after `410 Gone`
//! and after a lost watch); a node agent watches only the pods on its node. It sends the
//! same [`Update`]s of the same [`Object`]s as the files source: a snapshot once every kind
//! has listed, then changes; a re-list sends what changed while disconnected, deletions
//! included.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::{StreamExt, stream::BoxStream};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{ObjectKey, Update};
use crate::manifest::{self, Object, Origin};

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

/// Metadata the API server maintains for itself: dropped, so that an object read from the
/// API equals the same object read from a file.
const SERVER_METADATA: &[&str] = &[
    "resourceVersion",
    "managedFields",
    "creationTimestamp",
    "generation",
    "selfLink",
];

#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Watch only the pods scheduled on this node (a node agent); `None` watches all.
    pub node: Option<String>,
    pub resources: Vec<Resource>,
}

impl Default for KubeOptions {
    fn default() -> KubeOptions {
        KubeOptions {
            node: None,
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

    /// Starts the watchers: a [`Update::Snapshot`] once every kind has listed, then changes.
    pub fn spawn(self, updates: mpsc::Sender<Update>) -> WatchHandle {
        let streams: Vec<BoxStream<'static, (usize, WatchResult)>> = self
            .options
            .resources
            .iter()
            .enumerate()
            .map(|(index, resource)| {
                let api: Api<DynamicObject> =
                    Api::all_with(self.client.clone(), &resource.api_resource());
                let mut config = watcher::Config::default();
                if resource.kind == "Pod"
                    && let Some(node) = &self.options.node
                {
                    config = config.fields(&format!("spec.nodeName={node}"));
                }
                watcher(api, config)
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

type WatchResult = Result<watcher::Event<DynamicObject>, watcher::Error>;

/// The source's view of the cluster, fed by the watchers' events.
struct State {
    resources: Vec<Resource>,
    objects: BTreeMap<ObjectKey, Object>,
    /// Objects of a kind being re-listed, until its list is complete.
    listing: Vec<Option<Vec<Object>>>,
    /// Kinds that have listed at least once (or are not served at all).
    listed: Vec<bool>,
    /// Kinds whose last event was an error (reported once until they recover).
    failing: Vec<bool>,
    snapshot_sent: bool,
}

impl State {
    fn new(resources: Vec<Resource>) -> State {
        let n = resources.len();
        State {
            resources,
            objects: BTreeMap::new(),
            listing: vec![None; n],
            listed: vec![false; n],
            failing: vec![false; n],
            snapshot_sent: false,
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
            watcher::Event::Init => {
                self.listing[index] = Some(Vec::new());
                Vec::new()
            }
            watcher::Event::InitApply(object) => {
                match to_object(&resource, object) {
                    Ok(object) => self.listing[index].get_or_insert_default().push(object),
                    Err(problem) => return vec![Update::Problems(vec![problem])],
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listed = self.listing[index].take().unwrap_or_default();
                let updates = self.replace_kind(&resource, listed);
                self.listed[index] = true;
                self.after_list(updates)
            }
            watcher::Event::Apply(object) => match to_object(&resource, object) {
                Ok(object) => {
                    let key = ObjectKey::of(&object);
                    let changed = self
                        .objects
                        .get(&key)
                        .is_none_or(|old| old.value != object.value);
                    self.objects.insert(key, object.clone());
                    self.live(changed.then_some(Update::Upsert(object)))
                }
                Err(problem) => vec![Update::Problems(vec![problem])],
            },
            watcher::Event::Delete(object) => match to_object(&resource, object) {
                Ok(object) => {
                    let key = ObjectKey::of(&object);
                    let removed = self.objects.remove(&key).is_some();
                    self.live(removed.then_some(Update::Delete(key)))
                }
                Err(problem) => vec![Update::Problems(vec![problem])],
            },
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
        // A kind the cluster does not serve must not hold back the first snapshot.
        if not_served && !self.listed[index] {
            self.listed[index] = true;
            return self.after_list(updates);
        }
        updates
    }

    /// Replaces every object of one kind with a fresh list, returning what changed.
    fn replace_kind(&mut self, resource: &Resource, listed: Vec<Object>) -> Vec<Update> {
        let of_kind = |key: &ObjectKey| key.group == resource.group && key.kind == resource.kind;
        let mut updates = Vec::new();
        let fresh: BTreeMap<ObjectKey, Object> =
            listed.into_iter().map(|o| (ObjectKey::of(&o), o)).collect();
        let gone: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|k| of_kind(k) && !fresh.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.objects.remove(&key);
            updates.push(Update::Delete(key));
        }
        for (key, object) in fresh {
            if self
                .objects
                .get(&key)
                .is_none_or(|old| old.value != object.value)
            {
                updates.push(Update::Upsert(object.clone()));
            }
            self.objects.insert(key, object);
        }
        updates
    }

    /// After a list: the first complete set goes out as one snapshot; later lists as changes.
    fn after_list(&mut self, updates: Vec<Update>) -> Vec<Update> {
        if self.snapshot_sent {
            return updates;
        }
        let problems: Vec<Update> = updates
            .into_iter()
            .filter(|u| matches!(u, Update::Problems(_)))
            .collect();
        if !self.listed.iter().all(|l| *l) {
            return problems;
        }
        self.snapshot_sent = true;
        let mut out = vec![Update::Snapshot(self.objects.values().cloned().collect())];
        out.extend(problems);
        out
    }

    /// Changes flow once the first snapshot is out; before, they wait in the state.
    fn live(&self, update: Option<Update>) -> Vec<Update> {
        match update {
            Some(update) if self.snapshot_sent => vec![update],
            _ => Vec::new(),
        }
    }
}

/// An API object as a manifest [`Object`]: apiVersion and kind filled in (list items may
/// lack them), server bookkeeping removed.
fn to_object(resource: &Resource, object: DynamicObject) -> Result<Object, String> {
    let mut value = serde_json::to_value(&object)
        .map_err(|e| format!("{} from the API server: {e}", resource.kind))?;
    value["apiVersion"] = Value::String(resource.api_version());
    value["kind"] = Value::String(resource.kind.to_owned());
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_METADATA {
            metadata.remove(*field);
        }
        metadata.retain(|_, v| !v.is_null());
    }
    let origin = Origin {
        file: PathBuf::from(format!(
            "kubernetes:/{}/{}",
            resource.api_version(),
            resource.plural
        )),
        document: 1,
    };
    manifest::object_from_value(value, origin).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
