//! tc ingress (tcx), attached to every interface of the node's network namespace: the eBPF
//! form of TPROXY.
//!
//! A TCP SYN addressed to a captured address (an enrolled pod of this node, or the ClusterIP
//! of a service with one) is assigned to the proxy's plaintext inbound listener with
//! `bpf_sk_assign` and marked; the node's policy routing (`fwmark` → a table whose only route
//! is `local 0.0.0.0/0 dev lo`) then delivers it locally instead of forwarding it. The flow is
//! remembered, so its later packets are marked too and reach the accepted socket, whose local
//! address is the pod's (after any ClusterIP DNAT). Packets of flows that were not captured
//! (opened before the pod joined the mesh, replies to the pod's own connections) pass as
//! they are. Mesh traffic never comes this way: it arrives on the node's HBONE port, and the
//! node proxy's own connections to its pods are sent, not received, here.
//!
//! A SYN to a captured address on the HBONE port (15008) goes to the node's HBONE listener
//! instead: that is how Istio's ztunnel reaches a pod (`<pod ip>:15008`, no SNI), so an
//! Istio node can tunnel to pods here.
//!
//! When a SYN must be captured but no listener is there (mesh-node is restarting), the
//! packet is dropped: the capture fails closed and the client's SYN retransmission retries.

use aya_ebpf::{
    bindings::{
        TC_ACT_OK, TC_ACT_SHOT, bpf_sock, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as SockTupleV4,
    },
    helpers::{bpf_sk_assign, bpf_sk_lookup_tcp, bpf_sk_release},
    macros::classifier,
    programs::TcContext,
};
use mesh_ebpf_common::FlowKey;

use crate::maps::{CAPTURE, CAPTURED_FLOWS, count, settings};

/// Verdicts: carry on (with the socket and mark set, for a captured SYN), or drop.
const PASS: i32 = TC_ACT_OK as i32;
const DROP: i32 = TC_ACT_SHOT as i32;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
/// `BPF_TCP_LISTEN` from `<linux/bpf.h>`.
const BPF_TCP_LISTEN: u32 = 10;
/// `BPF_F_CURRENT_NETNS`: look sockets up in the packet's own network namespace.
const CURRENT_NETNS: u64 = u64::MAX;

/// Entry point (program name `program_names::INBOUND`).
#[classifier]
fn mesh_inbound(ctx: TcContext) -> i32 {
    match try_inbound(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_inbound(ctx: &TcContext) -> Result<i32, i32> {
    // Any read past the packet's end means "not ours": pass it.
    let pass = |_| PASS;
    let Some(settings) = settings() else {
        return Ok(PASS);
    };
    if settings.inbound_port == 0 {
        return Ok(PASS);
    }
    if u16::from_be(ctx.load::<u16>(12).map_err(pass)?) != ETH_P_IP {
        return Ok(PASS);
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).map_err(pass)?;
    let protocol: u8 = ctx.load(ETH_HLEN + 9).map_err(pass)?;
    // Only the first fragment carries the TCP header.
    let fragment_offset = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).map_err(pass)?) & 0x1fff;
    if version_ihl >> 4 != 4 || protocol != IPPROTO_TCP || fragment_offset != 0 {
        return Ok(PASS);
    }
    let dst_ip4: u32 = ctx.load(ETH_HLEN + 16).map_err(pass)?;
    #[allow(unsafe_code, reason = "reading a hash map value")]
    // SAFETY: only presence is checked; nothing is kept.
    if unsafe { CAPTURE.get(&dst_ip4) }.is_none() {
        return Ok(PASS);
    }
    let src_ip4: u32 = ctx.load(ETH_HLEN + 12).map_err(pass)?;
    let tcp = ETH_HLEN + usize::from(version_ihl & 0x0f) * 4;
    let src_port: u16 = ctx.load(tcp).map_err(pass)?;
    let dst_port: u16 = ctx.load(tcp + 2).map_err(pass)?;
    let flags: u8 = ctx.load(tcp + 13).map_err(pass)?;
    let flow = FlowKey {
        src_ip4,
        dst_ip4,
        src_port,
        dst_port,
    };

    if flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAG_ACK == 0 {
        // HBONE addressed to the pod itself (Istio's ztunnel dials <pod ip>:15008) goes to the
        // node's HBONE listener; everything else is plaintext.
        let hbone =
            settings.hbone_port != 0 && u32::from(u16::from_be(dst_port)) == settings.hbone_port;
        let port = if hbone {
            settings.hbone_port
        } else {
            settings.inbound_port
        };
        if !assign_listener(ctx, &flow, settings.proxy_ip4, port) {
            count(|s| &mut s.inbound_no_listener);
            return Ok(DROP);
        }
        // Without the record later packets would be forwarded to the pod, which would reset
        // them; better to refuse the connection now.
        if CAPTURED_FLOWS.insert(&flow, &1, 0).is_err() {
            return Ok(DROP);
        }
        ctx.set_mark(settings.inbound_mark);
        count(|s| &mut s.inbound_captured);
        return Ok(PASS);
    }
    #[allow(unsafe_code, reason = "reading an LRU hash map value")]
    // SAFETY: only presence is checked; nothing is kept.
    if unsafe { CAPTURED_FLOWS.get(&flow) }.is_some() {
        ctx.set_mark(settings.inbound_mark);
    }
    Ok(PASS)
}

/// Assigns the packet to the listener on `proxy_ip4:port` (both as settings keep them:
/// address network order, port host order). `false` when there is no listener.
fn assign_listener(ctx: &TcContext, flow: &FlowKey, proxy_ip4: u32, port: u32) -> bool {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: SockTupleV4 {
                saddr: flow.src_ip4,
                daddr: proxy_ip4,
                sport: flow.src_port,
                dport: (port as u16).to_be(),
            },
        },
    };
    let tuple_size = core::mem::size_of::<SockTupleV4>();
    #[allow(
        unsafe_code,
        reason = "BPF helper calls on the packet and a socket reference"
    )]
    // SAFETY: `ctx.skb.skb` is the context the kernel passed in; the tuple lives on this
    // stack for the call; the socket reference is released on every path.
    unsafe {
        let sk: *mut bpf_sock = bpf_sk_lookup_tcp(
            ctx.skb.skb.cast(),
            &raw mut tuple,
            tuple_size as u32,
            CURRENT_NETNS,
            0,
        );
        if sk.is_null() {
            return false;
        }
        let listening = core::ptr::read_volatile(&raw const (*sk).state) == BPF_TCP_LISTEN;
        let assigned = listening && bpf_sk_assign(ctx.skb.skb.cast(), sk.cast(), 0) == 0;
        bpf_sk_release(sk.cast());
        assigned
    }
}
