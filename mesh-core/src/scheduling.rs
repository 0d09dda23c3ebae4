//! How the kernel schedules the proxies' threads.
//!
//! A proxy is woken by every packet of the processes it serves. Under the kernel's default
//! policy (`SCHED_OTHER`) such a wake-up may preempt the process that caused it, a client in
//! the middle of its write, costing a switch there and another back. Threads scheduled as
//! batch work (`SCHED_BATCH`) are never woken into preempting: the proxy runs once the waker
//! sleeps or its time slice ends. On a node with CPU to spare that is cheaper and quicker (two-node
//! lab, plain release, 1000 req/s: each agent's CPU per request 66–76 µs against 91–97 µs,
//! the requests' P50 0.16–0.22 ms against 0.21–0.27 ms). On a node whose CPUs are taken by
//! work that does not sleep, it is not: a woken batch thread waits for the running task's
//! time slice to end (two busy loops on the two CPUs: P90 3.2–5.4 ms against 0.26–1.05 ms).
//!
//! So [`Scheduling::Auto`], the proxies' default, runs as batch work while wake-ups are served
//! promptly and falls back to the default policy when they are not: [`adapt`] reads, once a
//! second, how long the proxy's threads waited on a run queue, per run and against the time
//! they ran (`/proc/self/task/*/schedstat`; `SLOW_WAIT_NS` has what was measured). Under
//! the default policy the wait no longer tells whether batch would do, so batch is tried
//! again after a while, the while doubling each time the trial fails.

use std::{
    fmt, io,
    str::FromStr,
    time::{Duration, Instant},
};

/// How the proxy's threads are scheduled, as asked on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduling {
    /// Batch work while the threads get a CPU promptly, the default policy while they don't.
    Auto,
    /// Always `SCHED_BATCH`.
    Batch,
    /// Always `SCHED_OTHER`, the kernel's default.
    Normal,
}

impl FromStr for Scheduling {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Scheduling::Auto),
            "batch" => Ok(Scheduling::Batch),
            "normal" => Ok(Scheduling::Normal),
            other => Err(format!(
                "{other:?} is not a scheduling: auto, batch or normal"
            )),
        }
    }
}

impl fmt::Display for Scheduling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheduling::Auto => "auto",
            Scheduling::Batch => "batch",
            Scheduling::Normal => "normal",
        })
    }
}

/// A kernel scheduling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `SCHED_BATCH`.
    Batch,
    /// `SCHED_OTHER`.
    Normal,
}

impl Scheduling {
    /// The policy to start with.
    pub fn initial(self) -> Policy {
        match self {
            Scheduling::Auto | Scheduling::Batch => Policy::Batch,
            Scheduling::Normal => Policy::Normal,
        }
    }
}

/// Puts every thread of the process under `policy`; threads started later take it from the
/// thread that starts them. Neither policy needs a privilege.
pub fn apply(policy: Policy) -> io::Result<()> {
    for tid in threads()? {
        match set_policy(tid, policy) {
            // The thread has exited since the listing.
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {}
            result => result?,
        }
    }
    Ok(())
}

fn set_policy(tid: libc::pid_t, policy: Policy) -> io::Result<()> {
    let policy = match policy {
        Policy::Batch => libc::SCHED_BATCH,
        Policy::Normal => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    #[allow(unsafe_code, reason = "sched_setscheduler has no safe wrapper")]
    // SAFETY: `param` outlives the call, which only reads it.
    let status = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The process's thread ids.
fn threads() -> io::Result<Vec<libc::pid_t>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// The process's threads' CPU time, time on run queues and runs, summed from
/// `/proc/self/task/*/schedstat` (CPU time and run-queue wait in ns, runs).
fn waits() -> io::Result<Waits> {
    let mut total = Waits::default();
    for tid in threads()? {
        // A thread that exits between the listing and the read is skipped.
        let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")) else {
            continue;
        };
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(ran_ns)), Some(Ok(waited_ns)), Some(Ok(runs))) =
            (fields.next(), fields.next(), fields.next())
        {
            total.ran_ns += ran_ns;
            total.waited_ns += waited_ns;
            total.runs += runs;
        }
    }
    Ok(total)
}

/// What the proxy's threads have counted since they started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waits {
    /// Time on a CPU.
    pub ran_ns: u64,
    /// Time runnable on a run queue, waiting for a CPU.
    pub waited_ns: u64,
    /// Times they were put on a CPU.
    pub runs: u64,
}

/// How often [`adapt`] looks.
const PERIOD: Duration = Duration::from_secs(1);

/// The mean wait per run above which batch scheduling is given up, if the threads also
/// waited longer than they ran. Both, because a node saturated by work that sleeps (the
/// proxy's own load) makes waits as long as busy loops do, but in proportion to the work:
/// measured under batch, 71-101 µs per run and 0.5-0.85 µs of wait per µs run under wrk,
/// 59-272 µs and 1.7-7.2 beside two busy loops, 13-26 µs and 0.5-0.8 at a calm 1000 req/s.
const SLOW_WAIT_NS: u64 = 50_000;

/// Fewer runs in a period than this say nothing about the node.
const MIN_RUNS: u64 = 20;

/// How long the default policy is kept before batch is tried again, at first and at most.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const LAST_RETRY: Duration = Duration::from_secs(64);

/// How long batch must go without a fallback before the next fallback starts again from
/// [`FIRST_RETRY`]. Busy neighbours leave calm seconds between slow ones, so one calm period
/// proves nothing (measured: a client-side agent beside two busy loops fell back every 4-11 s).
const CALM: Duration = Duration::from_secs(60);

/// Decides, from each period's waits, which policy the proxy's threads should run under.
#[derive(Debug)]
pub struct Controller {
    last: Option<Waits>,
    /// When batch is tried again: set while the threads run under the default policy.
    retry_at: Option<Instant>,
    /// Since when batch has run without a fallback (from the first observation).
    batch_since: Option<Instant>,
    /// How long the next fallback keeps the default policy.
    backoff: Duration,
}

impl Default for Controller {
    fn default() -> Self {
        Controller {
            last: None,
            retry_at: None,
            batch_since: None,
            backoff: FIRST_RETRY,
        }
    }
}

/// A change of policy and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// To the default policy: under batch the threads waited `mean_wait_ns` per run, and
    /// longer than they ran; batch is tried again in `retry_in`.
    FallBack {
        mean_wait_ns: u64,
        retry_in: Duration,
    },
    /// Batch is tried again.
    Retry,
}

impl Controller {
    /// Takes the waits counted up to `now`; returns the change to make, if any.
    pub fn observe(&mut self, now: Instant, waits: Waits) -> Option<Change> {
        let last = self.last.replace(waits);
        match self.retry_at {
            Some(at) if now < at => None,
            Some(_) => {
                self.retry_at = None;
                self.batch_since = Some(now);
                Some(Change::Retry)
            }
            None => {
                let since = *self.batch_since.get_or_insert(now);
                let last = last?;
                let runs = waits.runs.saturating_sub(last.runs);
                if runs < MIN_RUNS {
                    return None;
                }
                let waited_ns = waits.waited_ns.saturating_sub(last.waited_ns);
                let ran_ns = waits.ran_ns.saturating_sub(last.ran_ns);
                let mean_wait_ns = waited_ns / runs;
                if mean_wait_ns <= SLOW_WAIT_NS || waited_ns <= ran_ns {
                    if now.duration_since(since) >= CALM {
                        // Batch works here: a later fallback starts again from the shortest wait.
                        self.backoff = FIRST_RETRY;
                    }
                    return None;
                }
                let retry_in = self.backoff;
                self.retry_at = Some(now + retry_in);
                self.backoff = (retry_in * 2).min(LAST_RETRY);
                Some(Change::FallBack {
                    mean_wait_ns,
                    retry_in,
                })
            }
        }
    }

    /// The policy the threads should be under now.
    pub fn policy(&self) -> Policy {
        if self.retry_at.is_some() {
            Policy::Normal
        } else {
            Policy::Batch
        }
    }
}

/// Runs beside a proxy started with [`Scheduling::Auto`]: once a period, moves its threads
/// between batch and the default policy as [`Controller`] decides. Ends (leaving the threads
/// as they are) if the kernel refuses a policy or the counters cannot be read.
pub async fn adapt() {
    let mut controller = Controller::default();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let waits = match waits() {
            Ok(waits) => waits,
            Err(error) => {
                tracing::warn!(%error, "cannot read the threads' run-queue waits; scheduling stays as it is");
                return;
            }
        };
        let Some(change) = controller.observe(Instant::now(), waits) else {
            continue;
        };
        match change {
            Change::FallBack {
                mean_wait_ns,
                retry_in,
            } => tracing::info!(
                mean_wait_us = mean_wait_ns / 1000,
                retry_in_s = retry_in.as_secs(),
                "woken proxy threads waited for a CPU: scheduling them normally, batch tried again later"
            ),
            Change::Retry => tracing::debug!("scheduling the proxy threads as batch work again"),
        }
        if let Err(error) = apply(controller.policy()) {
            tracing::warn!(%error, "cannot change the threads' scheduling; it stays as it is");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread's policy, as the kernel reports it (`SCHED_OTHER` 0, `SCHED_BATCH` 3).
    fn policy_of(tid: &str) -> u32 {
        let sched = std::fs::read_to_string(format!("/proc/self/task/{tid}/sched")).unwrap();
        let line = sched.lines().find(|l| l.starts_with("policy")).unwrap();
        line.rsplit(' ').next().unwrap().trim().parse().unwrap()
    }

    fn own_policy() -> u32 {
        policy_of(&gettid().to_string())
    }

    fn gettid() -> libc::pid_t {
        std::fs::read_link("/proc/thread-self")
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_policy_reaches_every_thread_and_the_threads_they_start() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            tid_tx.send(gettid()).unwrap();
            go_rx.recv().unwrap();
            (own_policy(), std::thread::spawn(own_policy).join().unwrap())
        });
        let tid = tid_rx.recv().unwrap().to_string();
        apply(Policy::Batch).unwrap();
        let batch = (own_policy(), policy_of(&tid));
        go_tx.send(()).unwrap();
        let (other_batch, started_batch) = other.join().unwrap();
        apply(Policy::Normal).unwrap();
        assert_eq!(batch, (3, 3));
        assert_eq!((other_batch, started_batch), (3, 3));
        assert_eq!(std::thread::spawn(own_policy).join().unwrap(), 0);
    }

    #[test]
    fn the_waits_are_counted() {
        let waits = waits().unwrap();
        assert!(waits.runs > 0, "{waits:?}");
    }

    #[test]
    fn scheduling_reads_back_as_written() {
        for scheduling in [Scheduling::Auto, Scheduling::Batch, Scheduling::Normal] {
            assert_eq!(scheduling.to_string().parse(), Ok(scheduling));
        }
        let error = "fifo".parse::<Scheduling>().unwrap_err();
        assert!(error.contains("auto, batch or normal"), "{error}");
    }

    /// Feeds the controller one period at a time: `runs` runs that waited `wait_us` each
    /// and ran 40 µs each.
    struct Feed {
        controller: Controller,
        now: Instant,
        waits: Waits,
    }

    impl Feed {
        fn new() -> Feed {
            let mut feed = Feed {
                controller: Controller::default(),
                now: Instant::now(),
                waits: Waits::default(),
            };
            assert_eq!(feed.controller.observe(feed.now, feed.waits), None);
            feed
        }

        fn period(&mut self, runs: u64, wait_us: u64) -> Option<Change> {
            self.period_running(runs, wait_us, 40)
        }

        fn period_running(&mut self, runs: u64, wait_us: u64, run_us: u64) -> Option<Change> {
            self.now += PERIOD;
            self.waits.runs += runs;
            self.waits.ran_ns += runs * run_us * 1000;
            self.waits.waited_ns += runs * wait_us * 1000;
            self.controller.observe(self.now, self.waits)
        }
    }

    #[test]
    fn batch_stays_while_wakeups_are_prompt() {
        let mut feed = Feed::new();
        for _ in 0..10 {
            assert_eq!(feed.period(5000, 15), None);
        }
        assert_eq!(feed.controller.policy(), Policy::Batch);
    }

    #[test]
    fn long_waits_in_proportion_to_the_work_keep_batch() {
        // A node saturated by the proxy's own load: as measured under wrk.
        let mut feed = Feed::new();
        assert_eq!(feed.period_running(3000, 101, 119), None);
        assert_eq!(feed.period_running(3000, 71, 153), None);
        assert_eq!(feed.controller.policy(), Policy::Batch);
        // Beside busy loops, the client side's agent: waits of 59 µs for runs of 34 µs.
        assert!(matches!(
            feed.period_running(3000, 59, 34),
            Some(Change::FallBack { .. })
        ));
    }

    #[test]
    fn slow_wakeups_fall_back_and_batch_is_retried_ever_later() {
        let mut feed = Feed::new();
        let fall_back = |retry_in: u64| {
            Some(Change::FallBack {
                mean_wait_ns: 135_000,
                retry_in: Duration::from_secs(retry_in),
            })
        };
        assert_eq!(feed.period(3000, 135), fall_back(2));
        assert_eq!(feed.controller.policy(), Policy::Normal);
        // Under the default policy the waits say nothing; the retry comes on time.
        assert_eq!(feed.period(3000, 500), None);
        assert_eq!(feed.period(3000, 5), Some(Change::Retry));
        assert_eq!(feed.controller.policy(), Policy::Batch);
        // The retry fails: the next wait is twice as long, and so on up to the longest.
        assert_eq!(feed.period(3000, 135), fall_back(4));
        for _ in 0..3 {
            assert_eq!(feed.period(3000, 135), None);
        }
        assert_eq!(feed.period(3000, 135), Some(Change::Retry));
        assert_eq!(feed.period(3000, 135), fall_back(8));
        for retry_in in [16, 32, 64, 64] {
            while feed.period(3000, 135) != Some(Change::Retry) {}
            assert_eq!(feed.period(3000, 135), fall_back(retry_in));
        }
        // A retry that holds for a calm second proves nothing; one that holds for a minute
        // resets the wait.
        while feed.period(3000, 135) != Some(Change::Retry) {}
        assert_eq!(feed.period(3000, 15), None);
        assert_eq!(feed.period(3000, 135), fall_back(64));
        while feed.period(3000, 135) != Some(Change::Retry) {}
        for _ in 0..CALM.as_secs() {
            assert_eq!(feed.period(3000, 15), None);
        }
        assert_eq!(feed.period(3000, 135), fall_back(2));
    }

    #[test]
    fn a_quiet_period_decides_nothing() {
        let mut feed = Feed::new();
        assert_eq!(feed.period(MIN_RUNS - 1, 10_000), None);
        assert_eq!(feed.controller.policy(), Policy::Batch);
        assert_eq!(
            feed.period(MIN_RUNS, 60),
            Some(Change::FallBack {
                mean_wait_ns: 60_000,
                retry_in: FIRST_RETRY,
            })
        );
    }
}
