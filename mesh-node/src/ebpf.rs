//! The one place that touches aya: loads the eBPF object built from `mesh-ebpf` (embedded at
//! build time), forwards its aya-log records into `tracing`, attaches programs to cgroups and
//! reads their maps, behind a small typed API. [`Dataplane`] is the pinned redirect install
//! the node agent runs; [`Ebpf`] is a bare, unpinned load for `ebpf-check` and tests.

mod dataplane;
mod pin_lock;
mod routing;

pub use dataplane::{Dataplane, DataplaneOptions, InterfaceSync, MapSizes, Redirect, uninstall};
pub use pin_lock::PinLock;

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{MapError, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, cgroup_sock_addr::CgroupSockAddrLink,
    },
};
use aya_log::EbpfLogger;
pub use mesh_ebpf_common::Connect4Stats;
use mesh_ebpf_common::{CONNECT4_STATS_TOTAL, map_names, program_names};
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, fstatfs};
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinHandle,
};
use tracing_log::LogTracer;

/// Where cgroup v2 is mounted on the machines this project targets (`/sys/fs/cgroup` holds the
/// v1 controllers there).
pub const CGROUP2_MOUNT: &str = "/sys/fs/cgroup/unified";

/// The eBPF object that `build.rs` built from `mesh-ebpf`.
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-ebpf"))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{what}: permission denied; loading and attaching eBPF needs root (or CAP_BPF, \
         CAP_NET_ADMIN and CAP_SYS_ADMIN): run mesh-node as root or grant it those capabilities"
    )]
    PermissionDenied {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "loading the embedded eBPF object into the kernel failed (the mesh needs Linux 6.6+ \
         (tcx) with BTF, cgroup v2 and ring buffer support; try `mesh-node ebpf-check`)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {name}: loading or attaching failed")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "eBPF {kind} {name} is not in the embedded object: mesh-ebpf and mesh-ebpf-common \
         disagree; rebuild mesh-node"
    )]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error(
        "the pinned programs were loaded from another eBPF object (stamp {stamp:#x}, another \
         build of mesh-node)"
    )]
    OtherObject { stamp: u64 },
    #[error("eBPF map {name}: reading failed")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "cgroup {path}: no such directory; give a cgroup v2 directory (cgroup v2 is mounted at \
         {CGROUP2_MOUNT} on these machines)"
    )]
    CgroupNotFound { path: PathBuf },
    #[error(
        "cgroup {path}: not a cgroup v2 directory (cgroup v2 is mounted at {CGROUP2_MOUNT} on \
         these machines; /sys/fs/cgroup holds the v1 controllers)"
    )]
    NotCgroupV2 { path: PathBuf },
    #[error("cgroup {path}: cannot open it")]
    CgroupOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "pinning eBPF {what} failed (is bpffs mounted at /sys/fs/bpf? `cargo xtask setup` mounts it)"
    )]
    Pin {
        what: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("bpffs pin folder {path}: {source} (is bpffs mounted at /sys/fs/bpf?)")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "bpffs pin folder {path} is held by a running mesh-node (it locks the folder while it \
         runs): stop that agent first; one node runs one agent per pin folder"
    )]
    PinsInUse { path: PathBuf },
    #[error("eBPF program {name}: its cgroup link is not a bpf_link (Linux 5.7+ is needed)")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("forwarding eBPF logs (aya-log map AYA_LOGS) could not start")]
    Logger(#[source] aya_log::Error),
    #[error("forwarding eBPF logs: cannot register the log ring buffer with Tokio")]
    LoggerFd(#[source] io::Error),
    #[error(
        "policy routing for the inbound capture: `{command}` failed: {detail} (mesh-node needs \
         CAP_NET_ADMIN in the node's network namespace)"
    )]
    Routing { command: String, detail: String },
    #[error("listing the network interfaces failed")]
    Interfaces(#[source] io::Error),
    #[error(
        "ebpf::Ebpf::load must run inside a Tokio runtime (it spawns the task that forwards \
         eBPF logs)"
    )]
    NoRuntime,
}

/// The loaded eBPF object: programs verified and loaded into the kernel, maps created, eBPF log
/// records forwarded into `tracing` (target `mesh_ebpf::…`, levels up to debug).
pub struct Ebpf {
    ebpf: aya::Ebpf,
    log_task: JoinHandle<()>,
}

/// The connect4 program attached to one cgroup; dropping it detaches the program.
#[must_use = "dropping the link detaches the program"]
pub struct Connect4Link {
    _link: CgroupSockAddrLink,
}

impl Ebpf {
    /// Loads the embedded object and every program in it (so the verifier runs now, not at
    /// attach time) and starts forwarding eBPF logs. Must run inside a Tokio runtime.
    pub fn load() -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let log_level = log_level() as u8;
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &log_level, false)
            .load(object())
            .map_err(|e| classify("loading the eBPF object", e, Error::Load))?;

        let logger =
            EbpfLogger::init_with_logger(&mut ebpf, LogTracer::new()).map_err(Error::Logger)?;
        let log_task = start_log_task(&runtime, logger)?;

        let mut this = Self { ebpf, log_task };
        this.connect4()?
            .load()
            .map_err(|e| program_error(program_names::CONNECT4, e))?;
        Ok(this)
    }

    /// Attaches the connect4 program to the cgroup v2 directory `cgroup`: it then sees every
    /// IPv4 `connect()` made by processes in that cgroup and its descendants.
    pub fn attach_connect4(&mut self, cgroup: &Path) -> Result<Connect4Link> {
        let cgroup_dir = open_cgroup_v2(cgroup)?;
        let program = self.connect4()?;
        // With bpf_link (Linux 5.7+, which aya uses) the kernel always stacks programs; the
        // flags must be 0, which is what `Single` passes.
        let link_id = program
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .map_err(|e| program_error(program_names::CONNECT4, e))?;
        let link = program
            .take_link(link_id)
            .map_err(|e| program_error(program_names::CONNECT4, e))?;
        Ok(Connect4Link { _link: link })
    }

    /// What the connect4 program has counted so far, summed over all CPUs and all cgroups it
    /// is attached to.
    pub fn connect4_stats(&self) -> Result<Connect4Stats> {
        let name = map_names::CONNECT4_STATS;
        let map = self
            .ebpf
            .map(name)
            .ok_or(Error::Missing { kind: "map", name })?;
        let map_error = |source| Error::Map { name, source };
        let stats = PerCpuArray::<_, Connect4Stats>::try_from(map).map_err(map_error)?;
        let per_cpu = stats.get(&CONNECT4_STATS_TOTAL, 0).map_err(map_error)?;
        let mut total = Connect4Stats::default();
        for cpu in per_cpu.iter() {
            total.accumulate(cpu);
        }
        Ok(total)
    }

    fn connect4(&mut self) -> Result<&mut CgroupSockAddr> {
        let name = program_names::CONNECT4;
        self.ebpf
            .program_mut(name)
            .ok_or(Error::Missing {
                kind: "program",
                name,
            })?
            .try_into()
            .map_err(|e| program_error(name, e))
    }
}

impl Drop for Ebpf {
    fn drop(&mut self) {
        self.log_task.abort();
    }
}

/// The most verbose level of the programs' records that this process's log shows for target
/// `mesh_ebpf` (`RUST_LOG=info,mesh_ebpf=debug`; a directive for one of its modules alone
/// does not count), which the programs are loaded with. The records are compiled in up to trace,
/// and the verifier prunes those above the level, a read-only global: a record nobody reads
/// costs nothing. With every record on, each `connect()` of every pod on the node (enrolled
/// or not) wrote two records to the ring buffer and woke the agent to read and drop them.
/// Programs adopted after a restart keep the level they were installed with.
pub(crate) fn log_level() -> aya_log::Level {
    use aya_log::Level;
    if tracing::enabled!(target: "mesh_ebpf", tracing::Level::TRACE) {
        Level::Trace
    } else if tracing::enabled!(target: "mesh_ebpf", tracing::Level::DEBUG) {
        Level::Debug
    } else if tracing::enabled!(target: "mesh_ebpf", tracing::Level::INFO) {
        Level::Info
    } else if tracing::enabled!(target: "mesh_ebpf", tracing::Level::WARN) {
        Level::Warn
    } else {
        Level::Error
    }
}

/// Registers the log ring buffer with Tokio and spawns the task that drains it.
fn start_log_task(
    runtime: &tokio::runtime::Handle,
    logger: EbpfLogger<LogTracer>,
) -> Result<JoinHandle<()>> {
    #[allow(unsafe_code, reason = "tokio's fd registration is unsafe (I/O safety)")]
    // SAFETY: the logger owns the ring buffer map's fd (an `OwnedFd` inside its `MapData`);
    // it stays open, and `as_raw_fd` keeps returning it, for as long as the `AsyncFd` owns
    // the logger.
    let logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| Error::LoggerFd(e.into()))?;
    Ok(runtime.spawn(forward_logs(logger)))
}

/// Moves records from the aya-log ring buffer into `tracing` whenever the kernel signals data.
async fn forward_logs(mut logger: AsyncFd<EbpfLogger<LogTracer>>) {
    loop {
        let mut guard = match logger.readable_mut().await {
            Ok(guard) => guard,
            Err(err) => {
                tracing::warn!(%err, "eBPF log forwarding stopped");
                return;
            }
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Opens `path` as a cgroup v2 directory, with errors that say what is wrong.
fn open_cgroup_v2(path: &Path) -> Result<File> {
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => Error::CgroupNotFound {
            path: path.to_owned(),
        },
        _ => Error::CgroupOpen {
            path: path.to_owned(),
            source,
        },
    })?;
    let fs = fstatfs(&file).map_err(|errno| Error::CgroupOpen {
        path: path.to_owned(),
        source: errno.into(),
    })?;
    if fs.filesystem_type() != CGROUP2_SUPER_MAGIC || !file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(Error::NotCgroupV2 {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

fn program_error(name: &'static str, source: ProgramError) -> Error {
    classify("loading or attaching an eBPF program", source, |source| {
        Error::Program { name, source }
    })
}

/// Turns `err` into [`Error::PermissionDenied`] when an `EPERM` is anywhere in its chain (the
/// kernel's answer to missing CAP_BPF / CAP_NET_ADMIN / CAP_SYS_ADMIN), else into `other(err)`.
/// `EACCES` is not a permission problem here: `BPF_PROG_LOAD` returns it when the verifier
/// rejects a program.
fn classify<E>(what: &'static str, err: E, other: impl FnOnce(E) -> Error) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(current) = cause {
        if let Some(io_err) = current.downcast_ref::<io::Error>()
            && io_err.raw_os_error() == Some(nix::libc::EPERM)
        {
            return Error::PermissionDenied {
                what,
                source: Box::new(err),
            };
        }
        cause = current.source();
    }
    other(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya_log::Level;

    #[test]
    fn embedded_object_has_the_shared_program_and_map_names() {
        let object = aya_obj::Object::parse(object()).expect("embedded eBPF object parses");
        assert!(
            object.programs.contains_key(program_names::CONNECT4),
            "program {} missing; programs: {:?}",
            program_names::CONNECT4,
            object.programs.keys().collect::<Vec<_>>()
        );
        assert!(
            object.maps.contains_key(map_names::CONNECT4_STATS),
            "map {} missing; maps: {:?}",
            map_names::CONNECT4_STATS,
            object.maps.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn missing_cgroup_is_reported_with_the_v2_mount() {
        let path = Path::new("/nonexistent/mesh-node-test-cgroup");
        let err = open_cgroup_v2(path).expect_err("no such path");
        assert!(matches!(err, Error::CgroupNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains(CGROUP2_MOUNT), "{err}");
    }

    #[test]
    fn directory_outside_cgroup2_is_rejected() {
        let err = open_cgroup_v2(&std::env::temp_dir()).expect_err("temp dir is not a cgroup");
        assert!(matches!(err, Error::NotCgroupV2 { .. }), "{err:?}");
    }

    #[test]
    fn eperm_anywhere_in_the_chain_means_permission_denied() {
        let eperm = io::Error::from_raw_os_error(nix::libc::EPERM);
        let err = classify("test", eperm, |_| Error::NoRuntime);
        assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");

        let eacces = io::Error::from_raw_os_error(nix::libc::EACCES);
        let err = classify("test", eacces, |_| Error::NoRuntime);
        assert!(matches!(err, Error::NoRuntime), "{err:?}");
    }

    fn under(filter: &str) -> Level {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, log_level)
    }

    #[test]
    fn the_programs_log_at_the_level_the_agents_log_shows_for_them() {
        assert_eq!(under("info") as u8, Level::Info as u8);
        assert_eq!(under("info,mesh_ebpf=debug") as u8, Level::Debug as u8);
        assert_eq!(
            under("warn,mesh_ebpf::connect=trace") as u8,
            Level::Warn as u8
        );
        assert_eq!(under("mesh_ebpf=trace") as u8, Level::Trace as u8);
        assert_eq!(under("error") as u8, Level::Error as u8);
    }
}
