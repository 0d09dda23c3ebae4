//! The mesh node agent: the eBPF redirect data plane (`ebpf`, the only module touching aya),
//! enrollment from the config model (`enroll`), interface events (`links`), the L4 proxy — outbound listener
//! (`outbound`), HBONE tunnels and the inbound side (`proxy`) — workload certificates
//! (`identity`), Istio's TCP metrics (`metrics`), the admin pages (`admin`), the main loop
//! that ties them together (`agent`), the mesh CA as a process (`ca`), and the command line
//! (`cli`).

pub mod admin;
pub mod agent;
pub mod ca;
pub mod cli;
pub mod ebpf;
pub mod enroll;
pub mod links;
pub mod metrics;
pub mod outbound;
pub mod proxy;
#[cfg(test)]
mod test_util;
