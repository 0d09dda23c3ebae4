//! The proxies' async runtime. One worker thread (the default for both proxies) gets tokio's
//! current-thread scheduler: the thread that calls `block_on` runs every task and waits on
//! epoll itself, with none of the multi-thread scheduler's hand-offs between the `block_on`
//! thread and a worker, atomics on every wake, or work-stealing bookkeeping. Measured through
//! a waypoint (`cargo xtask bench waypoint`, plain release builds, two rounds each): CPU per
//! 1000 requests under wrk 0.040 / 0.039 against 0.051 / 0.051 with `multi_thread(1)`, under
//! h2load 0.031 / 0.032 against 0.043 / 0.042, at a paced 1000 req/s 0.127 / 0.137 against
//! 0.148 / 0.141. More than one worker gets the multi-thread scheduler.

use std::io;

use tokio::runtime::{Builder, Runtime};

/// A runtime with `workers` threads running tasks (at least one), I/O and timers enabled.
pub fn build(workers: usize) -> io::Result<Runtime> {
    let mut builder = if workers <= 1 {
        Builder::new_current_thread()
    } else {
        let mut builder = Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build()
}
