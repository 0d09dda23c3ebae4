//! Code shared by the node agent (`mesh-node`) and the waypoint (`mesh-waypoint`): Kubernetes
//! manifests, config sources (files, kube) and the typed config model, workload identity
//! (CA, mTLS), HBONE tunnels and L4 policy (PeerAuthentication modes, AuthorizationPolicy
//! decisions). Free of eBPF and of process setup.

pub mod config;
pub mod hbone;
pub mod identity;
pub mod manifest;
pub mod policy;
pub mod source;
