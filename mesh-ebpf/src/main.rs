//! The mesh's eBPF programs, one entry per program, built for `bpfel-unknown-none` by
//! `mesh-node`'s build script and embedded in the `mesh-node` binary.
//!
//! - [`connect`]: cgroup `connect4` hook (today: counts TCP `connect()` calls; later: the
//!   redirect of enrolled pods' outbound TCP to the node proxy on 15001).

#![no_std]
#![no_main]

mod connect;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // eBPF programs cannot unwind or abort; the verifier rejects any path that reaches here.
    loop {}
}
