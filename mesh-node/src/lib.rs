//! The mesh node agent. Today: loading and attaching the eBPF programs (`ebpf`); the L4 proxy,
//! identity and config sync come next.

pub mod ebpf;
