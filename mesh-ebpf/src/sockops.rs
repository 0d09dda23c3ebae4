//! `sock_ops` and `sk_msg`.
//!
//! `sock_ops` (attached to the pods' cgroup and the node agent's):
//! - a redirected socket is established: its original destination moves from the cookie map
//!   to `ORIG_DST` under the 4-tuple the proxy sees, and the socket asks for state callbacks;
//! - it closes: the `ORIG_DST` entry goes, so the map tracks open connections only;
//! - with the fast path on, the same-node legs (pod ↔ proxy listener, proxy ↔ local pod) go
//!   into the `SOCKS` sockhash, where `sk_msg` hands each send straight to the peer socket's
//!   receive queue. A socket whose peer is not in the sockhash goes the normal way.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, sk_action::SK_PASS,
    },
    helpers::bpf_get_socket_cookie,
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use mesh_ebpf_common::{ConnKey, SockKey};

use crate::maps::{LOCAL_PODS, ORIG_BY_COOKIE, ORIG_DST, SOCKS, count, settings};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// `TCP_CLOSE` from `<net/tcp_states.h>`.
const TCP_CLOSE: u32 = 7;

/// Entry point (program name `program_names::SOCK_OPS`). Always returns 1 (carry on).
#[sock_ops]
fn mesh_sock_ops(ctx: SockOpsContext) -> u32 {
    match try_sock_ops(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// Entry point (program name `program_names::SK_MSG`).
#[sk_msg]
fn mesh_sk_msg(ctx: SkMsgContext) -> u32 {
    match try_sk_msg(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_sock_ops(ctx: &SockOpsContext) -> Result<u32, u32> {
    let Some(key) = sock_key(ctx) else {
        return Ok(1);
    };
    match ctx_field!(ctx.ops, op) {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            #[allow(unsafe_code, reason = "a BPF helper call")]
            // SAFETY: the context pointer is the one the kernel passed in.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            #[allow(unsafe_code, reason = "reading an LRU hash map value")]
            // SAFETY: the value is copied out at once.
            let orig = unsafe { ORIG_BY_COOKIE.get(&cookie) }.copied();
            if let Some(orig) = orig {
                let conn = conn_key(&key);
                if ORIG_DST.insert(&conn, &orig, 0).is_ok() {
                    count(|s| &mut s.established);
                    let flags =
                        ctx_field!(ctx.ops, bpf_sock_ops_cb_flags) | BPF_SOCK_OPS_STATE_CB_FLAG;
                    let _ = ctx.set_cb_flags(flags as i32);
                }
                let _ = ORIG_BY_COOKIE.remove(&cookie);
            }
            fast_path(ctx, key);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => fast_path(ctx, key),
        BPF_SOCK_OPS_STATE_CB => {
            if ctx_field!(ctx.ops, __bindgen_anon_1.args[1]) == TCP_CLOSE
                && ORIG_DST.remove(&conn_key(&key)).is_ok()
            {
                count(|s| &mut s.closed);
            }
        }
        _ => {}
    }
    Ok(1)
}

/// The socket's 4-tuple, for IPv4 sockets and IPv6 sockets with IPv4-mapped ends.
fn sock_key(ctx: &SockOpsContext) -> Option<SockKey> {
    let ops = ctx.ops;
    let (local_ip4, remote_ip4) = match ctx_field!(ops, family) {
        AF_INET => (ctx_field!(ops, local_ip4), ctx_field!(ops, remote_ip4)),
        AF_INET6 => (
            mapped(
                ctx_field!(ops, local_ip6[0]),
                ctx_field!(ops, local_ip6[1]),
                ctx_field!(ops, local_ip6[2]),
                ctx_field!(ops, local_ip6[3]),
            )?,
            mapped(
                ctx_field!(ops, remote_ip6[0]),
                ctx_field!(ops, remote_ip6[1]),
                ctx_field!(ops, remote_ip6[2]),
                ctx_field!(ops, remote_ip6[3]),
            )?,
        ),
        _ => return None,
    };
    Some(SockKey {
        local_ip4,
        remote_ip4,
        // local_port is host order; remote_port is the network-order port in the upper half
        // (so `from_be` of the whole word gives it in host order).
        local_port: ctx_field!(ops, local_port),
        remote_port: u32::from_be(ctx_field!(ops, remote_port)),
    })
}

fn mapped(a: u32, b: u32, c: u32, d: u32) -> Option<u32> {
    (a == 0 && b == 0 && u32::from_be(c) == 0xffff).then_some(d)
}

/// The pod's socket as the proxy sees the connection.
fn conn_key(key: &SockKey) -> ConnKey {
    ConnKey {
        src_ip4: key.local_ip4,
        dst_ip4: key.remote_ip4,
        src_port: key.local_port as u16,
        dst_port: key.remote_port as u16,
    }
}

/// Puts a same-node leg into the sockhash when the fast path is on.
fn fast_path(ctx: &SockOpsContext, mut key: SockKey) {
    let Some(settings) = settings() else {
        return;
    };
    if settings.fast_path == 0 {
        return;
    }
    let proxy = settings.proxy_ip4;
    let listener = |ip: u32, port: u32| ip == proxy && port == settings.proxy_port;
    #[allow(unsafe_code, reason = "reading hash map values")]
    // SAFETY: only presence is checked; nothing is kept.
    let local_pod = |ip: u32| unsafe { LOCAL_PODS.get(&ip) }.is_some();
    let same_node_leg = listener(key.local_ip4, key.local_port)
        || listener(key.remote_ip4, key.remote_port)
        || (key.local_ip4 == proxy && local_pod(key.remote_ip4))
        || (key.remote_ip4 == proxy && local_pod(key.local_ip4));
    if !same_node_leg {
        return;
    }
    #[allow(unsafe_code, reason = "the sockhash helper takes the raw context")]
    // SAFETY: `ops` is the context pointer the kernel passed in, valid for this run.
    let ops = unsafe { &mut *ctx.ops };
    if SOCKS.update(&mut key, ops, 0).is_ok() {
        count(|s| &mut s.fast_path_sockets);
    }
}

/// Hands the message to the peer socket when it is in the sockhash; otherwise (no peer, or
/// the redirect fails) the message takes the normal path: the verdict is always SK_PASS, and
/// the kernel redirects only when the helper succeeded.
fn try_sk_msg(ctx: &SkMsgContext) -> Result<u32, u32> {
    let md = ctx.msg;
    let family = ctx_field!(md, family);
    let local_ip4 = ctx_field!(md, local_ip4);
    let remote_ip4 = ctx_field!(md, remote_ip4);
    let local_port = ctx_field!(md, local_port);
    let remote_port = ctx_field!(md, remote_port);
    if family != AF_INET {
        return Ok(SK_PASS);
    }
    let mut peer = SockKey {
        local_ip4,
        remote_ip4,
        local_port,
        remote_port: u32::from_be(remote_port),
    }
    .peer();
    if SOCKS.redirect_msg(ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        count(|s| &mut s.msg_redirected);
    }
    Ok(SK_PASS)
}
