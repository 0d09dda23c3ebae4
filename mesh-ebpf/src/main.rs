//! The mesh's eBPF programs, one entry per program, built for `bpfel-unknown-none` by
//! `mesh-node`'s build script and embedded in the `mesh-node` binary.
//!
//! - [`connect`]: cgroup `connect4`/`connect6`: enrolled pods' outbound TCP goes to the node
//!   proxy (15001); the original destination is recorded by socket cookie.
//! - [`sockops`]: `sock_ops` (original destination by 4-tuple while the socket lives; the
//!   fast-path sockhash) and `sk_msg` (same-node socket-to-socket delivery).
//! - [`inbound`]: tc ingress: TCP from outside the mesh to an enrolled pod goes to the
//!   proxy's plaintext inbound listener (15006), so PeerAuthentication decides it.
//! - [`maps`]: the maps the programs share.

#![no_std]
#![no_main]

#[macro_use]
mod ctx {
    /// Reads one context field with a single load at its own offset (the verifier rejects
    /// loads through a context pointer the compiler has moved).
    macro_rules! ctx_field {
        ($ptr:expr, $($field:tt)+) => {{
            #[allow(unsafe_code, reason = "reading a field of the kernel's context")]
            // SAFETY: the pointer is the context the kernel passed in; the field is readable for
            // this program type (the verifier checks every access against the layout).
            unsafe { core::ptr::read_volatile(&raw const (*$ptr).$($field)+) }
        }};
    }
}

mod connect;
mod inbound;
mod maps;
mod sockops;

/// The licence the kernel sees. GPL-compatible, as the sockhash helpers and aya's templates
/// use; the Rust sources stay under the workspace licence.
#[allow(
    unsafe_code,
    reason = "the kernel reads the licence from a named ELF section"
)]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // eBPF programs cannot unwind or abort; the verifier rejects any path that reaches here.
    loop {}
}
