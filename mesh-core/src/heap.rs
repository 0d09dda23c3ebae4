//! Giving freed heap memory, and code that ran once, back to the system. glibc's malloc
//! keeps the pages of chunks freed in the middle of its arenas mapped, so a proxy that once
//! carried a burst (a thousand connections, a bulk transfer's large frames, a large config
//! snapshot) would keep that burst's peak as its resident size for the rest of its life.
//! [`configure`] puts the whole process in one arena, the only one whose free top glibc can
//! give back; [`release_when_wasteful`] runs beside the proxy and hands free pages back once
//! they outweigh what is in use; [`release`] does it at once, after a known one-off (the
//! eBPF loader's BTF parse). Elsewhere than glibc, all three do nothing: other allocators
//! return memory their own way. The same loop unmaps code ([`crate::code_pages`]).

use std::time::Duration;

/// How often [`release_when_wasteful`] looks at the heap: rarely enough that an idle proxy
/// stays idle, soon enough that a burst's memory is back within seconds.
pub const CHECK_PERIOD: Duration = Duration::from_secs(5);

/// Resident memory the heap is not using, below which a release is not worth its page faults.
const WASTE_FLOOR: u64 = 2 << 20;

/// Growth of the resident file pages (mostly code) that has code unmapped again. Mapping
/// the hot path back costs a few dozen minor faults (its 2-3 MB in 64 KiB windows).
const CODE_FLOOR: u64 = 1 << 20;

/// Makes every thread allocate from glibc's main arena. By default each thread that
/// allocates gets an arena of its own, and `malloc_trim` cannot shrink the free top of those:
/// after one bulk transfer a node agent kept 6.7 MB resident for 0.9 MB in use, against
/// 2.1 MB with one arena. The proxies run one or two worker threads, whose small allocations
/// come from glibc's per-thread caches without taking the arena's lock. Call it first thing in
/// `main`, before any thread starts.
pub fn configure() {
    #[cfg(target_env = "gnu")]
    #[allow(unsafe_code, reason = "mallopt has no safe wrapper")]
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes effect for threads
    // that have not allocated yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands the pages of every free heap chunk back to the system now.
pub fn release() {
    #[cfg(target_env = "gnu")]
    #[allow(unsafe_code, reason = "malloc_trim has no safe wrapper")]
    // SAFETY: malloc_trim only returns whole free pages of the heap to the kernel; no live
    // allocation is touched, and glibc takes its arena locks itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Every [`CHECK_PERIOD`], releases the heap's free pages when the resident memory the heap
/// does not use is at least what it does use (and at least `WASTE_FLOOR`, 2 MiB): after a burst,
/// not in the churn of steady load, where freed chunks are soon reused. And unmaps the
/// binary's code ([`crate::code_pages::release`]) when its resident file pages grew by
/// `CODE_FLOOR` (1 MiB) since the last time: code that ran once (the start-up, a certificate
/// request) is let go, and the steady state, whose code stays mapped, does not trigger it
/// again. Runs until dropped.
pub async fn release_when_wasteful() {
    let mut ticks = tokio::time::interval(CHECK_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the last release left resident.
    let mut settled = 0;
    // The resident file pages the last code release left.
    let mut code_settled = 0;
    loop {
        ticks.tick().await;
        let Some(usage) = Usage::now() else {
            return;
        };
        if usage.code_grew(code_settled) {
            match crate::code_pages::release() {
                Ok(released) => tracing::debug!(released, "unmapped code that ran once"),
                Err(error) => tracing::debug!(%error, "could not unmap code"),
            }
            code_settled = Usage::now().map_or(usage.resident_file, |u| u.resident_file);
        }
        if usage.worth_releasing(settled) {
            release();
            let after = Usage::now().map_or(0, |u| u.resident_anon);
            tracing::debug!(
                in_use = usage.in_use,
                before = usage.resident_anon,
                after,
                "gave free heap pages back"
            );
            settled = after;
        }
    }
}

/// What the heap holds and what the process has resident, in bytes: the proxies' `/memory`
/// admin page, and what [`release_when_wasteful`] decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Bytes in live allocations.
    pub in_use: u64,
    /// Bytes of free chunks the allocator keeps (resident or not).
    pub free_in_heap: u64,
    /// Resident pages not backed by a file: the heap, stacks, relocated data.
    pub resident_anon: u64,
    /// Resident pages of mapped files: mostly the binary's code.
    pub resident_file: u64,
}

impl Usage {
    /// Now, from glibc's `mallinfo2` (all arenas) and `/proc/self/statm`; `None` where either
    /// is missing.
    pub fn now() -> Option<Usage> {
        let (in_use, free_in_heap) = heap()?;
        let (resident_anon, resident_file) = resident()?;
        Some(Usage {
            in_use,
            free_in_heap,
            resident_anon,
            resident_file,
        })
    }

    /// Whether the resident memory the heap does not use (which includes a little that is not
    /// heap at all: stacks, relocated data) is worth a release.
    pub fn wasteful(&self) -> bool {
        let waste = self.resident_anon.saturating_sub(self.in_use);
        waste >= self.in_use.max(WASTE_FLOOR)
    }

    /// Whether to release now, given what the last release left resident (`settled`):
    /// [`Usage::wasteful`], and grown since. Free space in chunks smaller than a page, between
    /// live ones, stays resident whatever the allocator does, and is not worth a walk of the
    /// whole heap every period.
    pub fn worth_releasing(&self, settled: u64) -> bool {
        self.wasteful() && self.resident_anon >= settled.saturating_add(WASTE_FLOOR)
    }

    /// Whether the resident file pages grew by `CODE_FLOOR` since a code release left
    /// `settled`: code that had not run before did.
    pub fn code_grew(&self, settled: u64) -> bool {
        self.resident_file >= settled.saturating_add(CODE_FLOOR)
    }
}

/// Bytes in use and free in the heap.
#[cfg(target_env = "gnu")]
fn heap() -> Option<(u64, u64)> {
    #[allow(unsafe_code, reason = "mallinfo2 has no safe wrapper")]
    // SAFETY: mallinfo2 only reads the allocator's statistics under its own locks.
    let info = unsafe { libc::mallinfo2() };
    // Small chunks in the arenas, plus the large ones malloc mapped on their own.
    Some(((info.uordblks + info.hblkhd) as u64, info.fordblks as u64))
}

#[cfg(not(target_env = "gnu"))]
fn heap() -> Option<(u64, u64)> {
    None
}

/// Resident anonymous and file-backed bytes, from `/proc/self/statm` (`resident - shared`
/// and `shared`).
fn resident() -> Option<(u64, u64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    let page = page_size();
    Some((resident.saturating_sub(shared) * page, shared * page))
}

fn page_size() -> u64 {
    // sysconf cannot fail for _SC_PAGESIZE; 4 KiB if it ever did.
    #[allow(unsafe_code, reason = "sysconf has no safe wrapper in libc")]
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests;
