//! Map names and `#[repr(C)]` map key/value types shared by the eBPF programs (`mesh-ebpf`)
//! and their loader (`mesh-node`).
//!
//! Everything here is `no_std` and plain data: no padding, no `bool`, no `Option`, so the
//! kernel and userspace agree on every byte. The `user` feature adds `aya::Pod` impls.
//!
//! Byte orders follow the kernel's contexts, so the programs copy fields without converting:
//! IPv4 addresses are kept as the kernel stores them (network order, read as a native `u32`);
//! ports are kept in host order.

#![no_std]

/// Names of the eBPF programs in the object built from `mesh-ebpf`.
pub mod program_names {
    /// cgroup `connect4`: redirects enrolled pods' TCP to the node proxy, records the
    /// original destination by socket cookie, counts what it sees.
    pub const CONNECT4: &str = "mesh_connect4";
    /// cgroup `connect6`: the same for IPv4-mapped destinations on IPv6 sockets.
    pub const CONNECT6: &str = "mesh_connect6";
    /// `sock_ops`: moves the original destination from cookie to 4-tuple when a redirected
    /// socket is established, removes it when the socket closes, and fills the fast-path
    /// sockhash.
    pub const SOCK_OPS: &str = "mesh_sock_ops";
    /// `sk_msg` on the fast-path sockhash: hands bytes straight to the peer socket.
    pub const SK_MSG: &str = "mesh_sk_msg";
    /// tc ingress (tcx) on every interface of the node: TCP to an enrolled pod from outside
    /// the mesh goes to the proxy's plaintext inbound listener (15006) by `bpf_sk_assign`.
    pub const INBOUND: &str = "mesh_inbound";

    /// Every program, in load order.
    pub const ALL: [&str; 5] = [CONNECT4, CONNECT6, SOCK_OPS, SK_MSG, INBOUND];
}

/// Names of the maps in the object built from `mesh-ebpf`.
pub mod map_names {
    /// `PerCpuArray<Connect4Stats>` with [`CONNECT4_STATS_LEN`](crate::CONNECT4_STATS_LEN)
    /// slot(s): what the programs saw.
    pub const CONNECT4_STATS: &str = "CONNECT4_STATS";
    /// `Array<Settings>` with one slot: where the proxy listens, whether the fast path is on.
    pub const SETTINGS: &str = "SETTINGS";
    /// `HashMap<u64, u32>`: cgroup ids of enrolled pods (value: 1).
    pub const ENROLLED: &str = "ENROLLED";
    /// `HashMap<u32, u32>`: IPv4 addresses of the pods on this node (value: 1), for the fast
    /// path's proxy → pod leg.
    pub const LOCAL_PODS: &str = "LOCAL_PODS";
    /// `LruHashMap<u64, OrigDst>`: socket cookie → original destination, from `connect()` to
    /// establishment (an LRU, so sockets that never connect cannot fill it).
    pub const ORIG_BY_COOKIE: &str = "ORIG_BY_COOKIE";
    /// `HashMap<ConnKey, OrigDst>`: the proxy's lookup of an accepted connection; removed
    /// when the pod's socket closes.
    pub const ORIG_DST: &str = "ORIG_DST";
    /// `SockHash<SockKey>`: the fast path's established sockets.
    pub const SOCKS: &str = "SOCKS";
    /// `HashMap<u32, u32>`: IPv4 addresses whose inbound TCP is captured (value: 1): the
    /// enrolled pods of this node and the ClusterIPs of services with such a pod.
    pub const CAPTURE: &str = "CAPTURE";
    /// `LruHashMap<FlowKey, u32>`: flows captured at their SYN, so their later packets are
    /// delivered to the proxy's socket too (an LRU: closed flows age out).
    pub const CAPTURED_FLOWS: &str = "CAPTURED_FLOWS";
    /// The aya-log ring buffer.
    pub const AYA_LOGS: &str = "AYA_LOGS";

    /// Every map mesh-node pins (the log ring buffer included).
    pub const ALL: [&str; 10] = [
        CONNECT4_STATS,
        SETTINGS,
        ENROLLED,
        LOCAL_PODS,
        ORIG_BY_COOKIE,
        ORIG_DST,
        SOCKS,
        CAPTURE,
        CAPTURED_FLOWS,
        AYA_LOGS,
    ];
}

/// Number of slots in the `CONNECT4_STATS` map: one, holding the totals.
pub const CONNECT4_STATS_LEN: u32 = 1;
/// The slot of `CONNECT4_STATS` that holds the totals for the attached cgroup.
pub const CONNECT4_STATS_TOTAL: u32 = 0;
/// Capacity of `ENROLLED` and `LOCAL_PODS`: pods on one node.
pub const MAX_PODS: u32 = 4096;
/// Capacity of `ORIG_BY_COOKIE`: connects between `connect()` and establishment.
pub const MAX_PENDING: u32 = 16_384;
/// Capacity of `ORIG_DST` and `SOCKS`: open redirected connections on one node.
pub const MAX_CONNECTIONS: u32 = 65_536;
/// Capacity of `CAPTURE`: enrolled pods plus their services' ClusterIPs on one node.
pub const MAX_CAPTURE: u32 = 16_384;
/// Capacity of `CAPTURED_FLOWS`: captured inbound flows remembered (least recent dropped).
pub const MAX_CAPTURED_FLOWS: u32 = 65_536;

/// Counters kept by the programs, per CPU (userspace sums the CPUs).
///
/// Fields are all `u64`, so the layout has no padding. New counters are appended at the end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connect4Stats {
    /// `connect()` calls on IPv4 TCP sockets.
    pub tcp_connects: u64,
    /// `connect()` calls on sockets other than TCP (UDP, SCTP, ...), IPv4 or IPv6, which the
    /// programs leave alone.
    pub other_connects: u64,
    /// TCP connects rewritten to the node proxy.
    pub redirected: u64,
    /// Redirected sockets established: original destination moved to its 4-tuple.
    pub established: u64,
    /// Redirected sockets closed: 4-tuple entry removed.
    pub closed: u64,
    /// Sockets put into the fast-path sockhash.
    pub fast_path_sockets: u64,
    /// IPv6 TCP connects (connect6), redirected or not.
    pub tcp6_connects: u64,
    /// Sends the fast path handed straight to the peer socket (`sk_msg` redirects).
    pub msg_redirected: u64,
    /// Inbound SYNs to a captured address handed to the plaintext inbound listener.
    pub inbound_captured: u64,
    /// Inbound SYNs to a captured address dropped because no listener was there (mesh-node
    /// down: the capture fails closed, the client retries).
    pub inbound_no_listener: u64,
}

impl Connect4Stats {
    /// Adds `other` into `self`, field by field (used to sum the per-CPU values).
    pub fn accumulate(&mut self, other: &Self) {
        self.tcp_connects = self.tcp_connects.wrapping_add(other.tcp_connects);
        self.other_connects = self.other_connects.wrapping_add(other.other_connects);
        self.redirected = self.redirected.wrapping_add(other.redirected);
        self.established = self.established.wrapping_add(other.established);
        self.closed = self.closed.wrapping_add(other.closed);
        self.fast_path_sockets = self.fast_path_sockets.wrapping_add(other.fast_path_sockets);
        self.tcp6_connects = self.tcp6_connects.wrapping_add(other.tcp6_connects);
        self.msg_redirected = self.msg_redirected.wrapping_add(other.msg_redirected);
        self.inbound_captured = self.inbound_captured.wrapping_add(other.inbound_captured);
        self.inbound_no_listener = self
            .inbound_no_listener
            .wrapping_add(other.inbound_no_listener);
    }
}

const _: () = assert!(core::mem::size_of::<Connect4Stats>() == 80);

/// The one slot of `SETTINGS`. All zero (the state of a fresh map) means "redirect nothing".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The node proxy's IPv4 address, network order as the kernel stores it.
    pub proxy_ip4: u32,
    /// The outbound listener's port, host order.
    pub proxy_port: u32,
    /// 1: put pod ↔ proxy sockets into the sockhash (the fast path); 0: do not.
    pub fast_path: u32,
    /// 1: redirect enrolled pods; 0: leave every connect alone.
    pub enabled: u32,
    /// The plaintext inbound listener's port (on `proxy_ip4`), host order; 0: capture nothing.
    pub inbound_port: u32,
    /// The packet mark that policy routing delivers locally (`ip rule fwmark ... lookup`).
    pub inbound_mark: u32,
    /// The HBONE listener's port (on `proxy_ip4`), host order: captured connections to a
    /// pod's own HBONE port (Istio's form: `<pod ip>:15008`) go there, not to the plaintext
    /// listener. 0: none.
    pub hbone_port: u32,
    /// Unused: keeps `object` aligned with no implicit padding.
    pub reserved: u32,
    /// Which eBPF object the install was loaded from (a hash of it, written by mesh-node;
    /// the programs ignore it): a restarted mesh-node adopts pinned programs only when they
    /// are its own, and replaces those of another build.
    pub object: u64,
}

const _: () = assert!(core::mem::size_of::<Settings>() == 40);

/// A TCP flow as the packet carries it on arrival (before any DNAT): all network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_ip4: u32,
    pub dst_ip4: u32,
    pub src_port: u16,
    pub dst_port: u16,
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 12);

/// A connection as the proxy sees it: the pod's address (source) and the proxy's (dest).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Network order.
    pub src_ip4: u32,
    /// Network order.
    pub dst_ip4: u32,
    /// Host order.
    pub src_port: u16,
    /// Host order.
    pub dst_port: u16,
}

const _: () = assert!(core::mem::size_of::<ConnKey>() == 12);

/// Where a redirected connection was going.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Network order.
    pub ip4: u32,
    /// Host order (in a `u32`, so there is no padding).
    pub port: u32,
}

const _: () = assert!(core::mem::size_of::<OrigDst>() == 8);

/// A socket in the fast-path sockhash, from its own side.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Network order.
    pub local_ip4: u32,
    /// Network order.
    pub remote_ip4: u32,
    /// Host order.
    pub local_port: u32,
    /// Host order.
    pub remote_port: u32,
}

impl SockKey {
    /// The key of the socket at the other end of the same connection.
    pub const fn peer(&self) -> SockKey {
        SockKey {
            local_ip4: self.remote_ip4,
            remote_ip4: self.local_ip4,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

const _: () = assert!(core::mem::size_of::<SockKey>() == 16);

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
    // SAFETY (all impls): each type is `#[repr(C)]`, `Copy`, made only of unsigned integers
    // with no padding (sizes asserted above), and every bit pattern is a valid value.
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::Connect4Stats {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::Settings {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::ConnKey {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::OrigDst {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::SockKey {}
    #[allow(unsafe_code, reason = "aya::Pod is an unsafe marker trait")]
    unsafe impl aya::Pod for super::FlowKey {}
}
