//! Code shared by the node agent (`mesh-node`) and the waypoint (`mesh-waypoint`): Kubernetes
//! manifests, config sources (files, kube) and the typed config model, workload identity
//! (CA, mTLS, the certificate manager), HBONE tunnels and their pool, copying proxied
//! connections both ways, giving freed heap back to the system, policy (PeerAuthentication
//! modes, AuthorizationPolicy decisions at L4 and L7), and the tiny HTTP server of the proxies'
//! own pages. Free of eBPF and of process setup.

pub mod code_pages;
pub mod config;
pub mod copy;
pub mod hbone;
pub mod heap;
pub mod identity;
pub mod manifest;
pub mod pages;
pub mod policy;
pub mod runtime;
pub mod scheduling;
pub mod source;
pub mod stamp;
#[cfg(test)]
mod test_util;
