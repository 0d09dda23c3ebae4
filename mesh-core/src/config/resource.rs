//! The kinds the mesh reads and their typed form: a [`crate::manifest::Object`] becomes a
//! [`Resource`] (k8s-openapi types for the Kubernetes kinds, [`super::istio`] for Istio's),
//! or an [`Error`] that names the object, the field path and what to do.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;

use super::istio::{
    AuthorizationPolicy, DestinationRule, Gateway, PeerAuthentication, RequestAuthentication,
    ServiceEntry, Sidecar, VirtualService,
};
use crate::manifest::Object;

/// Namespaced objects that name no namespace live here, as `kubectl apply` would put them.
pub const DEFAULT_NAMESPACE: &str = "default";

/// No object of a modelled kind comes near this depth; deeper input is refused before it is
/// deserialized (the YAML reader itself stops at 128 levels).
pub const MAX_DEPTH: usize = 64;

/// Kubernetes (etcd) stores objects of at most 1.5 MiB; larger input is refused.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// The kinds of the config model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    ServiceAccount,
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
}

const NETWORKING: &str = "networking.istio.io";
const SECURITY: &str = "security.istio.io";

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ServiceAccount,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
    ];

    /// The kind of an API group and kind name, if the model has it.
    pub fn of(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.name() == kind)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Sidecar => "Sidecar",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::ServiceAccount => "",
            Kind::EndpointSlice => "discovery.k8s.io",
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::Gateway
            | Kind::ServiceEntry
            | Kind::Sidecar => NETWORKING,
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                SECURITY
            }
        }
    }

    /// The API versions served for the kind, the preferred one first.
    pub fn versions(self) -> &'static [&'static str] {
        match self.group() {
            NETWORKING => &["v1", "v1beta1", "v1alpha3"],
            SECURITY => &["v1", "v1beta1"],
            _ => &["v1"],
        }
    }

    /// `group/version` (`version` for the core group) of the preferred version.
    pub fn preferred_api_version(self) -> String {
        match self.group() {
            "" => self.versions()[0].to_owned(),
            group => format!("{group}/{}", self.versions()[0]),
        }
    }

    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }

    /// An Istio kind (the ones [`super::support`] describes).
    pub fn is_istio(self) -> bool {
        matches!(self.group(), NETWORKING | SECURITY)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies an object of the model: kind, namespace (defaulted; empty for Namespaces) and
/// name. Displays as `Kind namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: Kind, namespace: Option<&str>, name: &str) -> ResourceKey {
        let namespace = if kind.namespaced() {
            namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned()
        } else {
            String::new()
        };
        ResourceKey {
            kind,
            namespace,
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.namespaced() {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        } else {
            write!(f, "{} {}", self.kind, self.name)
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(
        "{kind} {name}: {group}/{kind} is not part of the mesh config model; the mesh ignores it"
    )]
    UnknownKind {
        group: String,
        kind: String,
        name: String,
    },
    #[error("{key}: apiVersion {api_version} is not served; use {preferred}")]
    Version {
        key: ResourceKey,
        api_version: String,
        preferred: String,
    },
    #[error("{key}: {path}: {message}")]
    Invalid {
        key: ResourceKey,
        path: String,
        message: String,
    },
    #[error(
        "{key}: the object is {size} bytes; Kubernetes stores at most {MAX_OBJECT_BYTES} bytes per object"
    )]
    TooLarge { key: ResourceKey, size: usize },
    #[error("{key}: nested more than {MAX_DEPTH} levels deep; no {} needs that", key.kind)]
    TooDeep { key: ResourceKey },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The object the error is about, where it is one of the model's kinds.
    pub fn key(&self) -> Option<&ResourceKey> {
        match self {
            Error::UnknownKind { .. } => None,
            Error::Version { key, .. }
            | Error::Invalid { key, .. }
            | Error::TooLarge { key, .. }
            | Error::TooDeep { key } => Some(key),
        }
    }

    /// The message without the `Kind namespace/name: ` prefix.
    pub fn detail(&self) -> String {
        let full = self.to_string();
        match self.key() {
            Some(key) => full
                .strip_prefix(&format!("{key}: "))
                .unwrap_or(&full)
                .to_owned(),
            None => full,
        }
    }
}

/// One typed object. Shared (`Arc`) so snapshots can hold it without copying.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Namespace(Arc<Namespace>),
    Pod(Arc<Pod>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    ServiceAccount(Arc<ServiceAccount>),
    VirtualService(Arc<VirtualService>),
    DestinationRule(Arc<DestinationRule>),
    Gateway(Arc<Gateway>),
    ServiceEntry(Arc<ServiceEntry>),
    Sidecar(Arc<Sidecar>),
    PeerAuthentication(Arc<PeerAuthentication>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    RequestAuthentication(Arc<RequestAuthentication>),
}

impl Resource {
    /// Converts a manifest object: checks kind, version and depth, defaults the namespace,
    /// and deserializes into the typed form.
    pub fn from_object(object: Object) -> Result<Resource> {
        let Some(kind) = Kind::of(object.group(), &object.kind) else {
            return Err(Error::UnknownKind {
                group: object.group().to_owned(),
                kind: object.kind,
                name: object.name,
            });
        };
        Resource::from_value(kind, object.value)
    }

    /// Converts an object of a known kind from the JSON text the API server sent, straight
    /// into the typed form: building the JSON tree first would cost as much again. The API
    /// server has already checked the version (it converts to the one asked for), the text
    /// is what it stores, so its length is the size that counts, and serde_json's own
    /// nesting limit guards the stack. The metadata the API server keeps for itself is
    /// dropped, so that an object read from the API equals the same object read from a file.
    pub fn from_json(
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        json: &str,
    ) -> Result<Resource> {
        let key = ResourceKey::new(kind, namespace, name);
        if json.len() > MAX_OBJECT_BYTES {
            return Err(Error::TooLarge {
                key,
                size: json.len(),
            });
        }
        fn typed<T: serde::de::DeserializeOwned>(json: &str, key: &ResourceKey) -> Result<T> {
            // Tracking the field path costs a third more; only a refusal needs it.
            serde_json::from_str(json).or_else(|_| {
                let mut deserializer = serde_json::Deserializer::from_str(json);
                serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                    Error::Invalid {
                        key: key.clone(),
                        path: display_path(error.path()),
                        message: error.inner().to_string(),
                    }
                })
            })
        }
        let mut resource = match kind {
            Kind::Namespace => Resource::Namespace(Arc::new(typed(json, &key)?)),
            Kind::Pod => Resource::Pod(Arc::new(typed(json, &key)?)),
            Kind::Service => Resource::Service(Arc::new(typed(json, &key)?)),
            Kind::EndpointSlice => Resource::EndpointSlice(Arc::new(typed(json, &key)?)),
            Kind::ServiceAccount => Resource::ServiceAccount(Arc::new(typed(json, &key)?)),
            // Kept whole in the model (the kinds above are not): decoded through a JSON tree,
            // whose arrays know their length, their lists get no more room than they need.
            // Straight from text a list of two gets room for four: +6 MB at 2k
            // VirtualServices. List items may lack apiVersion and kind.
            _ => {
                let mut value: Value =
                    serde_json::from_str(json).map_err(|error| Error::Invalid {
                        key: key.clone(),
                        path: "(top level)".to_owned(),
                        message: error.to_string(),
                    })?;
                if let Some(object) = value.as_object_mut() {
                    object
                        .entry("apiVersion")
                        .or_insert_with(|| kind.preferred_api_version().into());
                    object.entry("kind").or_insert_with(|| kind.name().into());
                }
                Resource::from_value(kind, value)?
            }
        };
        let metadata = resource.metadata_mut();
        if kind.namespaced() {
            metadata
                .namespace
                .get_or_insert_with(|| DEFAULT_NAMESPACE.to_owned());
        }
        metadata.resource_version = None;
        metadata.managed_fields = None;
        metadata.creation_timestamp = None;
        metadata.generation = None;
        metadata.self_link = None;
        Ok(resource)
    }

    /// Converts the JSON of an object of a known kind.
    pub fn from_value(kind: Kind, mut value: Value) -> Result<Resource> {
        let text = |pointer: &str| value.pointer(pointer).and_then(Value::as_str);
        let key = ResourceKey::new(
            kind,
            text("/metadata/namespace"),
            text("/metadata/name").unwrap_or_default(),
        );
        let api_version = text("/apiVersion").unwrap_or_default().to_owned();
        let version = api_version.rsplit('/').next().unwrap_or_default();
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        if group != kind.group() || !kind.versions().contains(&version) {
            return Err(Error::Version {
                key,
                api_version,
                preferred: kind.preferred_api_version(),
            });
        }
        let Some(bound) = size_bound(&value, MAX_DEPTH) else {
            return Err(Error::TooDeep { key });
        };
        // Counting exactly means writing the JSON out: only when the bound does not decide.
        if bound > MAX_OBJECT_BYTES {
            let size = json_size(&value);
            if size > MAX_OBJECT_BYTES {
                return Err(Error::TooLarge { key, size });
            }
        }
        if kind.namespaced()
            && let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut)
        {
            metadata
                .entry("namespace")
                .or_insert_with(|| Value::String(DEFAULT_NAMESPACE.to_owned()));
        }
        fn typed<T: serde::de::DeserializeOwned>(value: Value, key: &ResourceKey) -> Result<T> {
            serde_path_to_error::deserialize(value).map_err(|error| Error::Invalid {
                key: key.clone(),
                path: display_path(error.path()),
                message: error.inner().to_string(),
            })
        }
        Ok(match kind {
            Kind::Namespace => Resource::Namespace(Arc::new(typed(value, &key)?)),
            Kind::Pod => Resource::Pod(Arc::new(typed(value, &key)?)),
            Kind::Service => Resource::Service(Arc::new(typed(value, &key)?)),
            Kind::EndpointSlice => Resource::EndpointSlice(Arc::new(typed(value, &key)?)),
            Kind::ServiceAccount => Resource::ServiceAccount(Arc::new(typed(value, &key)?)),
            Kind::VirtualService => Resource::VirtualService(Arc::new(typed(value, &key)?)),
            Kind::DestinationRule => Resource::DestinationRule(Arc::new(typed(value, &key)?)),
            Kind::Gateway => Resource::Gateway(Arc::new(typed(value, &key)?)),
            Kind::ServiceEntry => Resource::ServiceEntry(Arc::new(typed(value, &key)?)),
            Kind::Sidecar => Resource::Sidecar(Arc::new(typed(value, &key)?)),
            Kind::PeerAuthentication => Resource::PeerAuthentication(Arc::new(typed(value, &key)?)),
            Kind::AuthorizationPolicy => {
                Resource::AuthorizationPolicy(Arc::new(typed(value, &key)?))
            }
            Kind::RequestAuthentication => {
                Resource::RequestAuthentication(Arc::new(typed(value, &key)?))
            }
        })
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Namespace(o) => &o.metadata,
            Resource::Pod(o) => &o.metadata,
            Resource::Service(o) => &o.metadata,
            Resource::EndpointSlice(o) => &o.metadata,
            Resource::ServiceAccount(o) => &o.metadata,
            Resource::VirtualService(o) => &o.metadata,
            Resource::DestinationRule(o) => &o.metadata,
            Resource::Gateway(o) => &o.metadata,
            Resource::ServiceEntry(o) => &o.metadata,
            Resource::Sidecar(o) => &o.metadata,
            Resource::PeerAuthentication(o) => &o.metadata,
            Resource::AuthorizationPolicy(o) => &o.metadata,
            Resource::RequestAuthentication(o) => &o.metadata,
        }
    }

    /// The metadata to change (copying the object first if a snapshot shares it).
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Resource::Namespace(o) => &mut Arc::make_mut(o).metadata,
            Resource::Pod(o) => &mut Arc::make_mut(o).metadata,
            Resource::Service(o) => &mut Arc::make_mut(o).metadata,
            Resource::EndpointSlice(o) => &mut Arc::make_mut(o).metadata,
            Resource::ServiceAccount(o) => &mut Arc::make_mut(o).metadata,
            Resource::VirtualService(o) => &mut Arc::make_mut(o).metadata,
            Resource::DestinationRule(o) => &mut Arc::make_mut(o).metadata,
            Resource::Gateway(o) => &mut Arc::make_mut(o).metadata,
            Resource::ServiceEntry(o) => &mut Arc::make_mut(o).metadata,
            Resource::Sidecar(o) => &mut Arc::make_mut(o).metadata,
            Resource::PeerAuthentication(o) => &mut Arc::make_mut(o).metadata,
            Resource::AuthorizationPolicy(o) => &mut Arc::make_mut(o).metadata,
            Resource::RequestAuthentication(o) => &mut Arc::make_mut(o).metadata,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Resource::Namespace(_) => Kind::Namespace,
            Resource::Pod(_) => Kind::Pod,
            Resource::Service(_) => Kind::Service,
            Resource::EndpointSlice(_) => Kind::EndpointSlice,
            Resource::ServiceAccount(_) => Kind::ServiceAccount,
            Resource::VirtualService(_) => Kind::VirtualService,
            Resource::DestinationRule(_) => Kind::DestinationRule,
            Resource::Gateway(_) => Kind::Gateway,
            Resource::ServiceEntry(_) => Kind::ServiceEntry,
            Resource::Sidecar(_) => Kind::Sidecar,
            Resource::PeerAuthentication(_) => Kind::PeerAuthentication,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::RequestAuthentication(_) => Kind::RequestAuthentication,
        }
    }

    /// The object serialized back to JSON (what round-trip tests compare).
    pub fn to_value(&self) -> Value {
        let value = match self {
            Resource::Namespace(o) => serde_json::to_value(&**o),
            Resource::Pod(o) => serde_json::to_value(&**o),
            Resource::Service(o) => serde_json::to_value(&**o),
            Resource::EndpointSlice(o) => serde_json::to_value(&**o),
            Resource::ServiceAccount(o) => serde_json::to_value(&**o),
            Resource::VirtualService(o) => serde_json::to_value(&**o),
            Resource::DestinationRule(o) => serde_json::to_value(&**o),
            Resource::Gateway(o) => serde_json::to_value(&**o),
            Resource::ServiceEntry(o) => serde_json::to_value(&**o),
            Resource::Sidecar(o) => serde_json::to_value(&**o),
            Resource::PeerAuthentication(o) => serde_json::to_value(&**o),
            Resource::AuthorizationPolicy(o) => serde_json::to_value(&**o),
            Resource::RequestAuthentication(o) => serde_json::to_value(&**o),
        };
        // Serializing these types to a JSON value cannot fail: maps have string keys.
        value.unwrap_or(Value::Null)
    }
}

/// `spec.http[0].route` rather than serde_path_to_error's `spec.http[0].route` with
/// leading dots or `?` for unknown segments.
fn display_path(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." || text.is_empty() {
        "(top level)".to_owned()
    } else {
        text
    }
}

/// A size `value` written as compact JSON cannot exceed, found in one walk that writes
/// nothing (a string byte takes at most six once escaped, a number at most 24 characters);
/// `None` if it nests deeper than `depth_limit`. Iterative: deep input cannot overflow the
/// stack.
fn size_bound(value: &Value, depth_limit: usize) -> Option<usize> {
    fn bound<'a>(
        value: &'a Value,
        depth: usize,
        containers: &mut Vec<(&'a Value, usize)>,
    ) -> usize {
        match value {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 24,
            Value::String(s) => 6 * s.len() + 2,
            Value::Array(_) | Value::Object(_) => {
                containers.push((value, depth));
                2
            }
        }
    }
    let mut containers = Vec::new();
    let mut size = bound(value, 0, &mut containers);
    while let Some((value, depth)) = containers.pop() {
        let entries = match value {
            Value::Array(items) => items.len(),
            Value::Object(map) => map.len(),
            _ => 0,
        };
        if entries == 0 {
            continue;
        }
        if depth + 1 > depth_limit {
            return None;
        }
        size += entries - 1;
        match value {
            Value::Array(items) => {
                for item in items {
                    size += bound(item, depth + 1, &mut containers);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    size += 6 * key.len() + 3 + bound(item, depth + 1, &mut containers);
                }
            }
            _ => {}
        }
    }
    Some(size)
}

/// The size of `value` serialized as compact JSON, without building the text.
fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}
