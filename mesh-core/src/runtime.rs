//! The proxies' async runtime. One worker thread (the default for both proxies) gets tokio's
//! current-thread scheduler: the thread that calls `block_on` runs every task and waits on
//! epoll itself, with none of the multi-thread scheduler's hand-offs between the `block_on`
//! thread and a worker, atomics on every wake, or work-stealing bookkeeping. Measured through
//! a waypoint (`cargo xtask bench waypoint`, plain release builds, two rounds each): CPU per
//! 1000 requests under wrk 0.040 / 0.039 against 0.051 / 0.051 with `multi_thread(1)`, under
//! h2load 0.031 / 0.032 against 0.043 / 0.042, at a paced 1000 req/s 0.127 / 0.137 against
//! 0.148 / 0.141. More than one worker gets the multi-thread scheduler.
//!
//! The threads are scheduled as batch work (`SCHED_BATCH`, [`Scheduling::Batch`]) unless
//! asked otherwise: a proxy is woken by every packet of the processes it serves, and under
//! the kernel's default policy each of those wake-ups may preempt the process that caused it
//! (the client in the middle of its write), costing a switch there and another back. A batch
//! thread is never woken into preempting; it runs when the waker sleeps or its time slice
//! ends. Measured on a two-node lab at a paced 1000 req/s (plain release, 10 s runs,
//! alternating): each node agent's CPU per request 66–76 µs against 91–97 µs, the
//! requests' P50 0.22–0.24 ms against 0.30–0.34 ms.

use std::{fmt, io, str::FromStr};

use tokio::runtime::{Builder, Runtime};

/// How the kernel schedules the proxy's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduling {
    /// `SCHED_BATCH`: the proxy's wake-ups never preempt the running task.
    Batch,
    /// `SCHED_OTHER`, the kernel's default.
    Normal,
}

impl FromStr for Scheduling {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "batch" => Ok(Scheduling::Batch),
            "normal" => Ok(Scheduling::Normal),
            other => Err(format!("{other:?} is not a scheduling: batch or normal")),
        }
    }
}

impl fmt::Display for Scheduling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheduling::Batch => "batch",
            Scheduling::Normal => "normal",
        })
    }
}

/// Puts the calling thread, and every thread it starts from now on, under `scheduling`.
/// Neither policy needs a privilege.
pub fn set_scheduling(scheduling: Scheduling) -> io::Result<()> {
    let policy = match scheduling {
        Scheduling::Batch => libc::SCHED_BATCH,
        Scheduling::Normal => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    #[allow(unsafe_code, reason = "sched_setscheduler has no safe wrapper")]
    // SAFETY: `param` outlives the call, which only reads it; pid 0 is the calling thread.
    let status = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A runtime with `workers` threads running tasks (at least one), I/O and timers enabled,
/// its threads (the calling one included) under `scheduling`. A policy the kernel refuses
/// (a seccomp profile, say) is logged and the runtime runs under the one it has.
pub fn build(workers: usize, scheduling: Scheduling) -> io::Result<Runtime> {
    match set_scheduling(scheduling) {
        Ok(()) => tracing::debug!(%scheduling, "proxy threads scheduled"),
        Err(error) => {
            tracing::warn!(%error, %scheduling, "could not set the threads' scheduling; running under the default")
        }
    }
    let mut builder = if workers <= 1 {
        Builder::new_current_thread()
    } else {
        let mut builder = Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's policy, as the kernel reports it (`SCHED_OTHER` 0, `SCHED_BATCH` 3).
    fn policy() -> u32 {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").unwrap();
        let line = sched.lines().find(|l| l.starts_with("policy")).unwrap();
        line.rsplit(' ').next().unwrap().trim().parse().unwrap()
    }

    #[test]
    fn threads_started_after_take_the_scheduling_too() {
        std::thread::spawn(|| {
            set_scheduling(Scheduling::Normal).unwrap();
            assert_eq!(policy(), 0);
            set_scheduling(Scheduling::Batch).unwrap();
            assert_eq!(policy(), 3);
            assert_eq!(std::thread::spawn(policy).join().unwrap(), 3);
            set_scheduling(Scheduling::Normal).unwrap();
            assert_eq!(std::thread::spawn(policy).join().unwrap(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn scheduling_reads_back_as_written() {
        for scheduling in [Scheduling::Batch, Scheduling::Normal] {
            assert_eq!(scheduling.to_string().parse(), Ok(scheduling));
        }
        assert!(
            "fifo"
                .parse::<Scheduling>()
                .unwrap_err()
                .contains("batch or normal")
        );
    }
}
