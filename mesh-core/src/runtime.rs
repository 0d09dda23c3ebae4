//! The proxies' async runtime. One worker thread (the default for both proxies) gets tokio's
//! current-thread scheduler: the thread that calls `block_on` runs every task and waits on
//! epoll itself, with none of the multi-thread scheduler's hand-offs between the `block_on`
//! thread and a worker, atomics on every wake, or work-stealing bookkeeping. Measured through
//! a waypoint (`cargo xtask bench waypoint`, plain release builds, two rounds each): CPU per
//! 1000 requests under wrk 0.040 / 0.039 against 0.051 / 0.051 with `multi_thread(1)`, under
//! h2load 0.031 / 0.032 against 0.043 / 0.042, at a paced 1000 req/s 0.127 / 0.137 against
//! 0.148 / 0.141. More than one worker gets the multi-thread scheduler.
//!
//! The threads start under the policy [`Scheduling`] asks for, and under `auto` a task moves
//! them between batch and normal scheduling as the node's CPUs allow ([`crate::scheduling`]).

use std::io;

use tokio::runtime::{Builder, Runtime};

use crate::scheduling::{self, Scheduling};

/// A runtime with `workers` threads running tasks (at least one), I/O and timers enabled,
/// its threads (the calling one included) under `scheduling`. A policy the kernel refuses
/// (a seccomp profile, say) is logged and the runtime runs under the one it has.
pub fn build(workers: usize, scheduling: Scheduling) -> io::Result<Runtime> {
    if let Err(error) = scheduling::apply(scheduling.initial()) {
        tracing::warn!(%error, %scheduling, "cannot set the threads' scheduling; running under the default");
    }
    let mut builder = if workers <= 1 {
        Builder::new_current_thread()
    } else {
        let mut builder = Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let runtime = builder.enable_all().build()?;
    if scheduling == Scheduling::Auto {
        runtime.spawn(scheduling::adapt());
    }
    Ok(runtime)
}
