//! The mesh node agent: the eBPF redirect data plane (`ebpf`, the only module touching aya),
//! enrollment from the config source (`enroll`), the interim outbound listener (`outbound`),
//! the admin endpoint (`admin`) and the main loop that ties them together (`agent`).

pub mod admin;
pub mod agent;
pub mod ebpf;
pub mod enroll;
pub mod outbound;
