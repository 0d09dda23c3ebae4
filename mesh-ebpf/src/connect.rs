//! cgroup `connect4`/`connect6` hooks: see every `connect()` made by a process in the cgroup
//! (or a descendant) they are attached to.
//!
//! For a TCP socket of an enrolled pod (its cgroup id is in `ENROLLED`), the destination is
//! rewritten to the node proxy's outbound listener and the original destination recorded by
//! socket cookie (`sock_ops` moves it to the 4-tuple once the socket is established). Other
//! sockets, other cgroups and non-TCP protocols pass untouched. The programs fail open:
//! whatever goes wrong in the bookkeeping, the `connect()` proceeds unchanged.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use mesh_ebpf_common::{OrigDst, Settings};

use crate::maps::{ENROLLED, ORIG_BY_COOKIE, count, settings};

/// Return value of a cgroup sock_addr program that lets the `connect()` proceed.
const ALLOW: i32 = 1;
/// `SOCK_STREAM` from `<linux/net.h>`.
const SOCK_STREAM: u32 = 1;
/// `IPPROTO_TCP` from `<linux/in.h>`: a stream socket of another protocol (SCTP, MPTCP) is
/// not the proxy's to take.
const IPPROTO_TCP: u32 = 6;

/// Whether the socket is TCP: a stream socket of the TCP protocol.
fn is_tcp(sock_type: u32, protocol: u32) -> bool {
    sock_type == SOCK_STREAM && protocol == IPPROTO_TCP
}

/// Entry point (program name `program_names::CONNECT4`).
#[cgroup_sock_addr(connect4)]
fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

/// Entry point (program name `program_names::CONNECT6`).
#[cgroup_sock_addr(connect6)]
fn mesh_connect6(ctx: SockAddrContext) -> i32 {
    match try_connect6(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    let (sock_type, protocol, ip, port) = (
        ctx_field!(sa, type_),
        ctx_field!(sa, protocol),
        ctx_field!(sa, user_ip4),
        ctx_field!(sa, user_port),
    );
    if !is_tcp(sock_type, protocol) {
        count(|s| &mut s.other_connects);
        return Ok(ALLOW);
    }
    count(|s| &mut s.tcp_connects);
    // Network order; the port sits in the low 16 bits of `user_port`.
    let host_port = u16::from_be(port as u16);
    debug!(ctx, "connect4: tcp to {:i}:{}", u32::from_be(ip), host_port);

    let Some(settings) = redirect_settings(ip, host_port) else {
        return Ok(ALLOW);
    };
    record(ctx, ip, host_port)?;
    #[allow(
        unsafe_code,
        reason = "rewriting the destination in the bpf_sock_addr context"
    )]
    // SAFETY: `user_ip4` and `user_port` are writable (4-byte stores) for connect4.
    unsafe {
        let sa = &mut *ctx.sock_addr;
        sa.user_ip4 = settings.proxy_ip4;
        sa.user_port = u32::from((settings.proxy_port as u16).to_be());
    }
    count(|s| &mut s.redirected);
    debug!(
        ctx,
        "connect4: redirected {:i}:{} to the node proxy",
        u32::from_be(ip),
        host_port
    );
    Ok(ALLOW)
}

/// IPv6 sockets: only IPv4-mapped destinations (`::ffff:a.b.c.d`) are redirected, to the
/// proxy's IPv4 address mapped the same way. The node proxy listens on IPv4 only, so native
/// IPv6 destinations pass untouched (and are counted).
fn try_connect6(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    let sock_type = ctx_field!(sa, type_);
    let protocol = ctx_field!(sa, protocol);
    let port = ctx_field!(sa, user_port);
    let ip6 = [
        ctx_field!(sa, user_ip6[0]),
        ctx_field!(sa, user_ip6[1]),
        ctx_field!(sa, user_ip6[2]),
        ctx_field!(sa, user_ip6[3]),
    ];
    if !is_tcp(sock_type, protocol) {
        count(|s| &mut s.other_connects);
        return Ok(ALLOW);
    }
    count(|s| &mut s.tcp6_connects);
    let mapped = ip6[0] == 0 && ip6[1] == 0 && u32::from_be(ip6[2]) == 0xffff;
    if !mapped {
        return Ok(ALLOW);
    }
    let ip = ip6[3];
    let host_port = u16::from_be(port as u16);
    let Some(settings) = redirect_settings(ip, host_port) else {
        return Ok(ALLOW);
    };
    record(ctx, ip, host_port)?;
    #[allow(
        unsafe_code,
        reason = "rewriting the destination in the bpf_sock_addr context"
    )]
    // SAFETY: `user_ip6[3]` and `user_port` are writable (4-byte stores) for connect6; the
    // first three words already hold the IPv4-mapped prefix.
    unsafe {
        let sa = &mut *ctx.sock_addr;
        sa.user_ip6[3] = settings.proxy_ip4;
        sa.user_port = u32::from((settings.proxy_port as u16).to_be());
    }
    count(|s| &mut s.redirected);
    Ok(ALLOW)
}

/// How deep below the cgroup root a pod's cgroup may sit (kubelet's systemd layout puts it
/// at depth 3: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`).
const MAX_CGROUP_DEPTH: i32 = 8;

/// The settings when this connect is to be redirected: the mesh is on, the caller's cgroup or
/// one of its ancestors (a container's cgroup sits inside its pod's) is enrolled, and the
/// destination is not the proxy itself.
fn redirect_settings(ip: u32, host_port: u16) -> Option<Settings> {
    let settings = settings()?;
    if ip == settings.proxy_ip4 && u32::from(host_port) == settings.proxy_port {
        return None;
    }
    // Level 0 is the root; an ancestor level below the caller's own depth returns 0.
    let mut level = 1;
    while level <= MAX_CGROUP_DEPTH {
        #[allow(unsafe_code, reason = "a BPF helper call")]
        // SAFETY: takes a level only; allowed for cgroup sock_addr programs.
        let cgroup = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if cgroup == 0 {
            return None;
        }
        #[allow(unsafe_code, reason = "reading a hash map value")]
        // SAFETY: the value is a plain u32 copied out at once; concurrent removal by
        // userspace only ever frees it after this program's RCU section.
        if unsafe { ENROLLED.get(&cgroup) }.is_some_and(|enrolled| *enrolled != 0) {
            return Some(settings);
        }
        level += 1;
    }
    None
}

/// Records the original destination under the socket's cookie.
fn record(ctx: &SockAddrContext, ip: u32, host_port: u16) -> Result<(), i32> {
    #[allow(unsafe_code, reason = "a BPF helper call")]
    // SAFETY: the context pointer is the one the kernel passed in.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OrigDst {
        ip4: ip,
        port: u32::from(host_port),
    };
    // Fail open: without a record the proxy could not forward, so do not redirect.
    ORIG_BY_COOKIE.insert(&cookie, &orig, 0).map_err(|_| ALLOW)
}
