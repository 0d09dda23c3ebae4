//! Config sources behind one interface: wherever objects come from (a watched folder of YAML
//! today, the Kubernetes API next), consumers see the same [`Update`]s of the same
//! [`Object`]s, and nothing downstream knows which source it is.

pub mod files;
pub mod kube;

use std::fmt;

use crate::manifest::Object;

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

/// What a source tells its consumer.
#[derive(Debug, Clone)]
pub enum Update {
    /// Every object the source has: replaces all that was known before (the first sync,
    /// and any resync after an error or a lost watch).
    Snapshot(Vec<Object>),
    /// An object was added or changed.
    Upsert(Object),
    /// An object is gone.
    Delete(ObjectKey),
    /// Input that could not be read, each message naming where and why. Objects read
    /// before keep serving; the good objects around the bad input still arrive.
    Problems(Vec<String>),
}
