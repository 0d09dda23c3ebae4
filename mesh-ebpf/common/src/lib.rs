//! Map names and `#[repr(C)]` map key/value types shared by the eBPF programs (`mesh-ebpf`)
//! and their loader (`mesh-node`).
//!
//! Everything here is `no_std` and plain data: no padding, no `bool`, no `Option`, so the
//! kernel and userspace agree on every byte. The `user` feature adds `aya::Pod` impls.

#![no_std]

/// Names of the eBPF programs in the object built from `mesh-ebpf`.
pub mod program_names {
    /// The cgroup `connect4` program. Today it counts TCP `connect()` calls and always allows
    /// them; it is where the redirect of enrolled pods' outbound TCP to the node proxy will go.
    pub const CONNECT4: &str = "mesh_connect4";
}

/// Names of the maps in the object built from `mesh-ebpf`.
pub mod map_names {
    /// `PerCpuArray<Connect4Stats>` with [`CONNECT4_STATS_LEN`](crate::CONNECT4_STATS_LEN)
    /// slot(s): what the `connect4` program saw.
    pub const CONNECT4_STATS: &str = "CONNECT4_STATS";
}

/// Number of slots in the `CONNECT4_STATS` map: one, holding the totals.
pub const CONNECT4_STATS_LEN: u32 = 1;

/// The slot of `CONNECT4_STATS` that holds the totals for the attached cgroup.
pub const CONNECT4_STATS_TOTAL: u32 = 0;

/// Counters kept by the `connect4` program, per CPU (userspace sums the CPUs).
///
/// Fields are all `u64`, so the layout has no padding. New counters (redirected, skipped
/// because the pod is not enrolled, ...) are appended at the end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connect4Stats {
    /// `connect()` calls on TCP (`SOCK_STREAM`) sockets.
    pub tcp_connects: u64,
    /// `connect()` calls on other IPv4 sockets (UDP, ...), which the program leaves alone.
    pub other_connects: u64,
}

impl Connect4Stats {
    /// Adds `other` into `self`, field by field (used to sum the per-CPU values).
    pub fn accumulate(&mut self, other: &Self) {
        self.tcp_connects = self.tcp_connects.wrapping_add(other.tcp_connects);
        self.other_connects = self.other_connects.wrapping_add(other.other_connects);
    }
}

const _: () = assert!(core::mem::size_of::<Connect4Stats>() == 16);

/// `true` when two strings are equal; usable in `const` assertions that tie a `#[map]` name
/// literal in the eBPF crate to the constant in [`map_names`].
pub const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `Connect4Stats` is `#[repr(C)]`, `Copy`, made only of `u64`s (no padding), and
    // every bit pattern is a valid value.
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::Connect4Stats {}
}
