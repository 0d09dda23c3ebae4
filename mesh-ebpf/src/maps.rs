//! The maps shared by the programs; their names are constants in `mesh-ebpf-common`, tied to
//! the literals here by `const` assertions.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash},
};
use mesh_ebpf_common::{
    CONNECT4_STATS_LEN, CONNECT4_STATS_TOTAL, ConnKey, Connect4Stats, FlowKey, MAX_CAPTURE,
    MAX_CAPTURED_FLOWS, MAX_CONNECTIONS, MAX_PENDING, MAX_PODS, OrigDst, Settings, SockKey,
    map_names, str_eq,
};

#[map(name = "CONNECT4_STATS")]
pub(crate) static CONNECT4_STATS: PerCpuArray<Connect4Stats> =
    PerCpuArray::with_max_entries(CONNECT4_STATS_LEN, 0);
const _: () = assert!(str_eq(map_names::CONNECT4_STATS, "CONNECT4_STATS"));

#[map(name = "SETTINGS")]
pub(crate) static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
const _: () = assert!(str_eq(map_names::SETTINGS, "SETTINGS"));

#[map(name = "ENROLLED")]
pub(crate) static ENROLLED: HashMap<u64, u32> = HashMap::with_max_entries(MAX_PODS, 0);
const _: () = assert!(str_eq(map_names::ENROLLED, "ENROLLED"));

#[map(name = "LOCAL_PODS")]
pub(crate) static LOCAL_PODS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PODS, 0);
const _: () = assert!(str_eq(map_names::LOCAL_PODS, "LOCAL_PODS"));

#[map(name = "ORIG_BY_COOKIE")]
pub(crate) static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(MAX_PENDING, 0);
const _: () = assert!(str_eq(map_names::ORIG_BY_COOKIE, "ORIG_BY_COOKIE"));

#[map(name = "ORIG_DST")]
pub(crate) static ORIG_DST: HashMap<ConnKey, OrigDst> =
    HashMap::with_max_entries(MAX_CONNECTIONS, 0);
const _: () = assert!(str_eq(map_names::ORIG_DST, "ORIG_DST"));

#[map(name = "SOCKS")]
pub(crate) static SOCKS: SockHash<SockKey> = SockHash::with_max_entries(MAX_CONNECTIONS, 0);
const _: () = assert!(str_eq(map_names::SOCKS, "SOCKS"));

#[map(name = "CAPTURE")]
pub(crate) static CAPTURE: HashMap<u32, u32> = HashMap::with_max_entries(MAX_CAPTURE, 0);
const _: () = assert!(str_eq(map_names::CAPTURE, "CAPTURE"));

#[map(name = "CAPTURED_FLOWS")]
pub(crate) static CAPTURED_FLOWS: LruHashMap<FlowKey, u32> =
    LruHashMap::with_max_entries(MAX_CAPTURED_FLOWS, 0);
const _: () = assert!(str_eq(map_names::CAPTURED_FLOWS, "CAPTURED_FLOWS"));

/// The settings, or `None` while mesh-node has not written them (redirect nothing then).
pub(crate) fn settings() -> Option<Settings> {
    SETTINGS.get(0).copied().filter(|s| s.enabled != 0)
}

/// Adds to one counter of this CPU's slot.
pub(crate) fn count(field: fn(&mut Connect4Stats) -> &mut u64) {
    if let Some(stats) = CONNECT4_STATS.get_ptr_mut(CONNECT4_STATS_TOTAL) {
        #[allow(unsafe_code, reason = "updating a per-CPU map value in place")]
        // SAFETY: `stats` comes from a successful lookup of this CPU's slot, which stays valid
        // for the whole program run; no other program instance writes this CPU's slot meanwhile.
        unsafe {
            *field(&mut *stats) += 1;
        }
    }
}
