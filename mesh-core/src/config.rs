//! The config model: Kubernetes and Istio resources in typed form, validated, and indexed the
//! way the data planes look things up. Sources ([`crate::source`]) feed it [`Update`]s;
//! [`Store`] applies them and publishes [`Model`] snapshots; [`analyze()`] checks a set of
//! manifests the way `meshctl analyze` reports them.
//!
//! [`Update`]: crate::source::Update

pub mod analyze;
#[cfg(any(test, feature = "testing"))]
pub mod crd_examples;
pub mod duration;
pub mod host;
pub mod istio;
mod key_set;
pub mod labels;
pub mod model;
pub mod resource;
mod shard_map;
pub mod store;
pub mod support;
pub mod validate;

pub use analyze::{Diagnostic, Report, analyze};
pub use labels::Labels;
pub use model::{Endpoint, Model, Name, PodInfo, ServiceInfo, Waypoint, WaypointSource};
pub use resource::{Kind, Resource, ResourceKey};
pub use store::Store;
pub use validate::Severity;

#[cfg(test)]
mod tests;
