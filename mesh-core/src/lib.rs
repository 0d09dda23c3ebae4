//! Code shared by the node agent (`mesh-node`) and the waypoint (`mesh-waypoint`): reading
//! Kubernetes manifests today; the config model, identity/TLS and HBONE as they land.
//! Free of eBPF and of process setup.

pub mod config;
pub mod hbone;
pub mod identity;
pub mod manifest;
pub mod source;
