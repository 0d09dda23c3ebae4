//! Config sources behind one interface: wherever objects come from (a watched folder of YAML,
//! or the Kubernetes API), consumers see the same [`Update`]s, and nothing downstream knows
//! which source it is. [`ConfigSource`] is the choice the binaries offer
//! (`--config-source`).

pub mod files;
pub mod kube;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::manifest::Object;

/// Where a proxy's config model comes from (`--config-source`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ConfigSource {
    /// A folder of Kubernetes YAML, watched.
    Files { dir: PathBuf },
    /// The Kubernetes API.
    Kube,
}

/// Keeps a started config source running; dropping it stops the watch.
pub enum SourceHandle {
    Files(files::WatchHandle),
    Kube(kube::WatchHandle),
}

/// Why a config source could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Files(#[from] files::Error),
    #[error(
        "--config-source kube: no Kubernetes API configuration found ({0}); run in a pod with a service account, set KUBECONFIG, or use --config-source files"
    )]
    KubeConfig(String),
    #[error(
        "--config-source kube: the Kubernetes API at {url} cannot be reached: {message}; check the address, the network and the service account's credentials"
    )]
    KubeUnreachable { url: String, message: String },
}

/// How long the API server may take to answer the first request before a proxy gives up.
const KUBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConfigSource {
    /// Starts the source: its first sync, then changes, of every namespace and node.
    pub async fn spawn(&self, updates: mpsc::Sender<Update>) -> Result<SourceHandle, StartError> {
        match self {
            ConfigSource::Files { dir } => Ok(SourceHandle::Files(
                files::FilesSource::new(dir).spawn(updates)?,
            )),
            ConfigSource::Kube => Ok(SourceHandle::Kube(
                kube::KubeSource::new(kube_client().await?, kube::KubeOptions::default())
                    .spawn(updates),
            )),
        }
    }
}

/// A client for the cluster this process runs in (or the kubeconfig's), checked to answer.
pub async fn kube_client() -> Result<::kube::Client, StartError> {
    let config = ::kube::Config::infer()
        .await
        .map_err(|e| StartError::KubeConfig(e.to_string()))?;
    let url = config.cluster_url.to_string();
    let unreachable = |message: String| StartError::KubeUnreachable {
        url: url.clone(),
        message,
    };
    let client = ::kube::Client::try_from(config).map_err(|e| unreachable(e.to_string()))?;
    let version = tokio::time::timeout(KUBE_CONNECT_TIMEOUT, client.apiserver_version())
        .await
        .map_err(|_| unreachable(format!("no answer within {KUBE_CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    tracing::info!(%url, version = %version.git_version, "Kubernetes API reached");
    Ok(client)
}

/// Identifies an object: API group, kind, namespace as written (`None` when the object
/// names none) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn of(object: &Object) -> ObjectKey {
        ObjectKey {
            group: object.group().to_owned(),
            kind: object.kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// An object as JSON text, with the key that names it.
#[derive(Debug, Clone)]
pub struct JsonObject {
    pub key: ObjectKey,
    pub json: Box<RawValue>,
}

/// A kind as sources name it: its API group (empty for the core group) and kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKind {
    pub group: String,
    pub kind: String,
}

/// What a source tells its consumer. Objects always travel one at a time, the first sync
/// included: a source never holds, nor hands over, the whole set at once (at 50k pods that
/// set is several times the size of the indexed model).
#[derive(Debug, Clone)]
pub enum Update {
    /// An object was added or changed.
    Upsert(Object),
    /// An object was added or changed, as the JSON text the API server sent: the store
    /// decodes it straight into its typed form, which costs half of building the JSON tree
    /// of an [`Object`] first (most of the work of loading 50k pods).
    UpsertJson(JsonObject),
    /// An object is gone.
    Delete(ObjectKey),
    /// A full list of one kind begins (its first list, or a re-list after `410 Gone` or an
    /// error): the upserts of that kind up to the matching [`Update::Listed`] are every
    /// object of it, and the objects of that kind they do not name are gone. A `Listing`
    /// for a kind already being listed starts that list over.
    Listing(ObjectKind),
    /// The list that [`Update::Listing`] began is complete.
    Listed(ObjectKind),
    /// Everything the source had when it started has been sent: the model is complete and
    /// may be served. Sent once, after the first sync.
    Synced,
    /// Input that could not be read, each message naming where and why. Objects read
    /// before keep serving; the good objects around the bad input still arrive.
    Problems(Vec<String>),
}

impl Update {
    /// A whole set of objects the way a source's first sync delivers it: one upsert each,
    /// then [`Update::Synced`].
    pub fn first_sync(objects: impl IntoIterator<Item = Object>) -> impl Iterator<Item = Update> {
        objects
            .into_iter()
            .map(Update::Upsert)
            .chain([Update::Synced])
    }
}
