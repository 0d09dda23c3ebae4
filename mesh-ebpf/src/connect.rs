//! cgroup `connect4` hook: sees every IPv4 `connect()` made by a process in the cgroup (or a
//! descendant) it is attached to.
//!
//! Today it counts TCP connects in [`CONNECT4_STATS`] and always lets the call proceed. This
//! is the seed of the redirect: the later version checks whether the caller is an enrolled pod,
//! records the original destination and rewrites it to the node proxy (15001).

use aya_ebpf::{
    macros::{cgroup_sock_addr, map},
    maps::PerCpuArray,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use mesh_ebpf_common::{
    CONNECT4_STATS_LEN, CONNECT4_STATS_TOTAL, Connect4Stats, map_names, str_eq,
};

/// Return value of a cgroup sock_addr program that lets the `connect()` proceed.
const ALLOW: i32 = 1;

/// `SOCK_STREAM` from `<linux/net.h>`: TCP, for an `AF_INET` socket.
const SOCK_STREAM: u32 = 1;

#[map(name = "CONNECT4_STATS")]
static CONNECT4_STATS: PerCpuArray<Connect4Stats> =
    PerCpuArray::with_max_entries(CONNECT4_STATS_LEN, 0);
const _: () = assert!(str_eq(map_names::CONNECT4_STATS, "CONNECT4_STATS"));

/// Entry point (program name `program_names::CONNECT4`). Fails open: whatever goes wrong in
/// our bookkeeping, the pod's `connect()` proceeds.
#[cgroup_sock_addr(connect4)]
fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i32> {
    #[allow(unsafe_code, reason = "reading the kernel's bpf_sock_addr context")]
    // SAFETY: `sock_addr` is the context pointer the kernel passed to this program; `type_`,
    // `user_ip4` and `user_port` are readable fields for connect4 (the verifier checks each
    // access against the context layout).
    let (sock_type, ip, port) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.type_, sa.user_ip4, sa.user_port)
    };

    let stats = CONNECT4_STATS
        .get_ptr_mut(CONNECT4_STATS_TOTAL)
        .ok_or(ALLOW)?;

    if sock_type != SOCK_STREAM {
        #[allow(unsafe_code, reason = "updating a per-CPU map value in place")]
        // SAFETY: `stats` comes from a successful lookup of this CPU's slot, which stays valid
        // for the whole program run; no other program instance writes this CPU's slot meanwhile.
        unsafe {
            (*stats).other_connects += 1;
        }
        return Ok(ALLOW);
    }

    #[allow(unsafe_code, reason = "updating a per-CPU map value in place")]
    // SAFETY: as above.
    unsafe {
        (*stats).tcp_connects += 1;
    }

    // Both are in network byte order; the port sits in the low 16 bits of `user_port`.
    let ip = u32::from_be(ip);
    let port = u16::from_be(port as u16);
    debug!(ctx, "connect4: tcp to {:i}:{}", ip, port);

    Ok(ALLOW)
}
