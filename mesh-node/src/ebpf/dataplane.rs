//! The redirect data plane: every program loaded, attached and pinned under one bpffs folder
//! (`--pin-dir`), adopted as it is by a restarted mesh-node, removed by [`uninstall`].
//!
//! Pin layout: `maps/<MAP>`, `progs/<program>`, `links/<program>-<cgroup role>`, and
//! `links/mesh_inbound-<interface>-<ifindex>` for the tc ingress attachments, which follow the
//! node's interfaces ([`Dataplane::sync_interfaces`]). The sk_msg program is attached to the
//! `SOCKS` sockhash, which keeps it (and needs no link pin). The inbound capture's policy
//! routing ([`super::routing`]) is part of the install too.

use std::{
    collections::BTreeSet,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, SockHash},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, ProgramInfo, SchedClassifier, SkMsg, SockOps,
        TcAttachType, links::FdLink, tc::TcAttachOptions,
    },
};
use aya_log::EbpfLogger;
use mesh_ebpf_common::{
    CONNECT4_STATS_TOTAL, ConnKey, Connect4Stats, FlowKey, OrigDst, Settings, SockKey, map_names,
    program_names,
};
use tokio::task::JoinHandle;
use tracing_log::LogTracer;

use super::{
    Error, PinLock, Result, classify, object, open_cgroup_v2, program_error, routing,
    start_log_task,
};

/// What to attach where.
#[derive(Debug, Clone)]
pub struct DataplaneOptions {
    /// bpffs folder for this node's pins (created if missing).
    pub pin_dir: PathBuf,
    /// The cgroup v2 folder holding the node's pods.
    pub pods_cgroup: PathBuf,
    /// The node agent's own cgroup (sock_ops only: the proxy's side of the fast path).
    pub agent_cgroup: Option<PathBuf>,
}

/// Where the proxy is and whether the fast path is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    pub proxy: SocketAddrV4,
    pub fast_path: bool,
    /// The plaintext inbound listener's port on the proxy's address: TCP from outside the
    /// mesh to enrolled pods is captured to it. `None`: no inbound capture.
    pub inbound_port: Option<u16>,
    /// The HBONE listener's port on the proxy's address: captured connections to a pod's own
    /// port of that number are HBONE (Istio's form) and go there.
    pub hbone_port: u16,
}

/// Entry counts of the maps that track connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MapSizes {
    pub enrolled: usize,
    pub local_pods: usize,
    pub orig_by_cookie: usize,
    pub orig_dst: usize,
    pub fast_path_sockets: usize,
    pub capture: usize,
    pub captured_flows: usize,
}

/// What [`Dataplane::sync_interfaces`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct InterfaceSync {
    /// Interfaces the inbound program was attached to now.
    pub attached: Vec<String>,
    /// Attachments of interfaces that are gone, removed now.
    pub removed: Vec<String>,
}

/// The installed (or adopted) data plane: typed handles on its pinned maps.
pub struct Dataplane {
    pin_dir: PathBuf,
    /// Held while this mesh-node runs: no second agent, no uninstall under it.
    _lock: Option<PinLock>,
    adopted: bool,
    program_ids: Vec<u32>,
    stats: PerCpuArray<MapData, Connect4Stats>,
    settings: Array<MapData, Settings>,
    enrolled: HashMap<MapData, u64, u32>,
    local_pods: HashMap<MapData, u32, u32>,
    /// An LRU hash in the kernel; aya's `HashMap` handles both kinds.
    orig_by_cookie: HashMap<MapData, u64, OrigDst>,
    orig_dst: HashMap<MapData, ConnKey, OrigDst>,
    socks: SockHash<MapData, SockKey>,
    capture: HashMap<MapData, u32, u32>,
    /// An LRU hash in the kernel.
    captured_flows: HashMap<MapData, FlowKey, u32>,
    /// The inbound tc program, opened from its pin on first use.
    inbound: Option<SchedClassifier>,
    log_task: Option<JoinHandle<()>>,
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Some(task) = &self.log_task {
            task.abort();
        }
    }
}

/// A stamp of this binary's eBPF object (a hash of its bytes), written into `SETTINGS` so a
/// restarted mesh-node can tell its own programs from another build's. Never 0, which a
/// fresh map holds.
fn object_stamp() -> u64 {
    static STAMP: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *STAMP.get_or_init(|| {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::hash::DefaultHasher::new();
        super::object().hash(&mut hasher);
        hasher.finish().max(1)
    })
}

fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}
fn progs_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("progs")
}
fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// The link pins an install for these options creates.
fn expected_links(options: &DataplaneOptions) -> Vec<String> {
    let mut links = vec![
        format!("{}-pods", program_names::CONNECT4),
        format!("{}-pods", program_names::CONNECT6),
        format!("{}-pods", program_names::SOCK_OPS),
    ];
    if options.agent_cgroup.is_some() {
        links.push(format!("{}-agent", program_names::SOCK_OPS));
    }
    links
}

/// `true` when every pin an install makes is there.
fn complete(options: &DataplaneOptions) -> bool {
    let maps = maps_dir(&options.pin_dir);
    let progs = progs_dir(&options.pin_dir);
    let links = links_dir(&options.pin_dir);
    map_names::ALL.iter().all(|m| maps.join(m).exists())
        && program_names::ALL.iter().all(|p| progs.join(p).exists())
        && expected_links(options)
            .iter()
            .all(|l| links.join(l).exists())
}

impl Dataplane {
    /// Adopts a complete install found under `pin_dir` (programs keep running, nothing is
    /// detached, map contents stay), or installs afresh: a partial install left by a crash is
    /// removed first. `lock` is the pin folder's ([`PinLock::acquire`]); the data plane keeps
    /// it. Must run inside a Tokio runtime (eBPF logs are forwarded by a task).
    pub fn install_or_adopt(options: &DataplaneOptions, lock: PinLock) -> Result<Self> {
        debug_assert_eq!(lock.path(), options.pin_dir);
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let adoptable = if complete(options) {
            // A pinned install whose maps do not fit this binary's types (an older layout), or
            // whose programs another build loaded (an upgrade), is replaced, not adopted.
            Self::open_pins(&options.pin_dir, true)
                .and_then(|this| match this.installed_object()? {
                    stamp if stamp == object_stamp() => Ok(this),
                    stamp => Err(Error::OtherObject { stamp }),
                })
                .inspect_err(|err| tracing::warn!(%err, "the pinned eBPF install does not match this mesh-node; replacing it"))
                .ok()
        } else {
            None
        };
        if let Some(mut this) = adoptable {
            this._lock = Some(lock);
            // Logs of the adopted programs: from the ring buffer the running programs write.
            match this.program_ids.first() {
                Some(&id) => match EbpfLogger::init_from_id_with_logger(id, LogTracer::new()) {
                    Ok(logger) => this.log_task = Some(start_log_task(&runtime, logger)?),
                    Err(err) => tracing::warn!(%err, "adopted eBPF programs: logs not forwarded"),
                },
                None => tracing::warn!("adopted eBPF programs: no program id, logs not forwarded"),
            }
            return Ok(this);
        }
        if fs::read_dir(&options.pin_dir).is_ok_and(|mut entries| entries.next().is_some()) {
            tracing::warn!(pin_dir = %options.pin_dir.display(), "incomplete install found: removing it first");
            routing::remove()?;
            remove_pins(&options.pin_dir)?;
        }
        let mut this = install(options, &runtime)?;
        this._lock = Some(lock);
        Ok(this)
    }

    fn open_pins(pin_dir: &Path, adopted: bool) -> Result<Self> {
        let maps = maps_dir(pin_dir);
        let open = |name: &'static str| -> Result<Map> {
            let data =
                MapData::from_pin(maps.join(name)).map_err(|source| Error::Map { name, source })?;
            Map::from_map_data(data).map_err(|source| Error::Map { name, source })
        };
        macro_rules! typed {
            ($name:expr) => {{
                let name = $name;
                open(name)?
                    .try_into()
                    .map_err(|source| Error::Map { name, source })?
            }};
        }
        let mut program_ids = Vec::new();
        for name in program_names::ALL {
            let path = progs_dir(pin_dir).join(name);
            let info = ProgramInfo::from_pin(&path).map_err(|e| program_error(name, e))?;
            program_ids.push(info.id());
        }
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            _lock: None,
            adopted,
            program_ids,
            stats: typed!(map_names::CONNECT4_STATS),
            settings: typed!(map_names::SETTINGS),
            enrolled: typed!(map_names::ENROLLED),
            local_pods: typed!(map_names::LOCAL_PODS),
            orig_by_cookie: typed!(map_names::ORIG_BY_COOKIE),
            orig_dst: typed!(map_names::ORIG_DST),
            socks: typed!(map_names::SOCKS),
            capture: typed!(map_names::CAPTURE),
            captured_flows: typed!(map_names::CAPTURED_FLOWS),
            inbound: None,
            log_task: None,
        })
    }

    /// Whether the programs were found pinned and adopted (rather than loaded now).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Kernel ids of the programs (connect4, connect6, sock_ops, sk_msg, inbound).
    pub fn program_ids(&self) -> &[u32] {
        &self.program_ids
    }

    /// The eBPF object the pinned programs were loaded from, as [`object_stamp`] names it
    /// (0: not written yet, or by a build from before the stamp).
    fn installed_object(&self) -> Result<u64> {
        let name = map_names::SETTINGS;
        self.settings
            .get(&0, 0)
            .map(|settings| settings.object)
            .map_err(|source| Error::Map { name, source })
    }

    /// Turns redirection on (towards `redirect.proxy`) or off (`None`).
    pub fn configure(&mut self, redirect: Option<Redirect>) -> Result<()> {
        let mut settings = redirect.map_or_else(Settings::default, |r| Settings {
            proxy_ip4: u32::from(*r.proxy.ip()).to_be(),
            proxy_port: u32::from(r.proxy.port()),
            fast_path: u32::from(r.fast_path),
            enabled: 1,
            inbound_port: r.inbound_port.map_or(0, u32::from),
            inbound_mark: routing::MARK,
            hbone_port: u32::from(r.hbone_port),
            ..Settings::default()
        });
        settings.object = object_stamp();
        if redirect.is_some_and(|r| r.inbound_port.is_some()) {
            // Without the rule a captured SYN would be forwarded to the pod after all.
            routing::ensure()?;
        }
        let name = map_names::SETTINGS;
        self.settings
            .set(0, settings, 0)
            .map_err(|source| Error::Map { name, source })
    }

    /// Makes `ENROLLED` hold exactly these cgroup ids.
    pub fn sync_enrolled(&mut self, wanted: &BTreeSet<u64>) -> Result<()> {
        let name = map_names::ENROLLED;
        let map_error = |source| Error::Map { name, source };
        let present: BTreeSet<u64> = self
            .enrolled
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_error)?;
        for id in present.difference(wanted) {
            self.enrolled.remove(id).map_err(map_error)?;
        }
        for id in wanted.difference(&present) {
            self.enrolled.insert(id, 1, 0).map_err(map_error)?;
        }
        Ok(())
    }

    /// Makes `LOCAL_PODS` hold exactly these addresses.
    pub fn sync_local_pods(&mut self, wanted: &BTreeSet<Ipv4Addr>) -> Result<()> {
        let name = map_names::LOCAL_PODS;
        let map_error = |source| Error::Map { name, source };
        let wanted: BTreeSet<u32> = wanted.iter().map(|ip| u32::from(*ip).to_be()).collect();
        let present: BTreeSet<u32> = self
            .local_pods
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_error)?;
        for ip in present.difference(&wanted) {
            self.local_pods.remove(ip).map_err(map_error)?;
        }
        for ip in wanted.difference(&present) {
            self.local_pods.insert(ip, 1, 0).map_err(map_error)?;
        }
        Ok(())
    }

    /// Makes `CAPTURE` hold exactly these addresses.
    pub fn sync_capture(&mut self, wanted: &BTreeSet<Ipv4Addr>) -> Result<()> {
        let name = map_names::CAPTURE;
        let map_error = |source| Error::Map { name, source };
        let wanted: BTreeSet<u32> = wanted.iter().map(|ip| u32::from(*ip).to_be()).collect();
        let present: BTreeSet<u32> = self
            .capture
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_error)?;
        for ip in present.difference(&wanted) {
            self.capture.remove(ip).map_err(map_error)?;
        }
        for ip in wanted.difference(&present) {
            self.capture.insert(ip, 1, 0).map_err(map_error)?;
        }
        Ok(())
    }

    /// Attaches the inbound program (tc ingress, tcx) to every interface of this network
    /// namespace but `lo` that does not have it yet, and drops the pins of attachments whose
    /// interface is gone (the kernel detached those already). Call it whenever interfaces
    /// may have appeared: a pod's veth is created before its containers start.
    pub fn sync_interfaces(&mut self) -> Result<InterfaceSync> {
        let name = program_names::INBOUND;
        let links = links_dir(&self.pin_dir);
        let prefix = format!("{name}-");
        let interfaces: BTreeSet<String> = nix::net::if_::if_nameindex()
            .map_err(|errno| Error::Interfaces(errno.into()))?
            .iter()
            .filter_map(|i| {
                let ifname = i.name().to_str().ok()?;
                (ifname != "lo").then(|| format!("{prefix}{ifname}-{}", i.index()))
            })
            .collect();
        let pinned: BTreeSet<String> = fs::read_dir(&links)
            .map_err(|source| Error::PinDir {
                path: links.clone(),
                source,
            })?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|f| f.starts_with(&prefix))
            .collect();
        let mut done = InterfaceSync::default();
        for stale in pinned.difference(&interfaces) {
            let path = links.join(stale);
            fs::remove_file(&path).map_err(|source| Error::PinDir { path, source })?;
            done.removed.push(stale[prefix.len()..].to_owned());
        }
        for pin in interfaces.difference(&pinned) {
            let label = &pin[prefix.len()..];
            let Some((ifname, _)) = label.rsplit_once('-') else {
                continue;
            };
            if self.inbound.is_none() {
                let program = SchedClassifier::from_pin(progs_dir(&self.pin_dir).join(name))
                    .map_err(|e| program_error(name, e))?;
                self.inbound = Some(program);
            }
            let Some(program) = self.inbound.as_mut() else {
                continue;
            };
            let attached = program.attach_with_options(
                ifname,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            );
            let id = match attached {
                Ok(id) => id,
                // The interface went between the listing and now (a pod deleted): skip it.
                Err(err) if !interface_exists(ifname) => {
                    tracing::debug!(ifname, %err, "interface gone before attaching");
                    continue;
                }
                Err(err) => return Err(program_error(name, err)),
            };
            let link = program.take_link(id).map_err(|e| program_error(name, e))?;
            let link = FdLink::try_from(link).map_err(|e| Error::Link { name, source: e })?;
            link.pin(links.join(pin)).map_err(|source| Error::Pin {
                what: format!("link {pin}"),
                source,
            })?;
            done.attached.push(label.to_owned());
        }
        Ok(done)
    }

    /// The original destination of a connection the proxy accepted from `peer` on `local`,
    /// if it was redirected.
    pub fn original_dst(
        &self,
        peer: SocketAddrV4,
        local: SocketAddrV4,
    ) -> Result<Option<SocketAddrV4>> {
        let key = ConnKey {
            src_ip4: u32::from(*peer.ip()).to_be(),
            dst_ip4: u32::from(*local.ip()).to_be(),
            src_port: peer.port(),
            dst_port: local.port(),
        };
        match self.orig_dst.get(&key, 0) {
            Ok(orig) => Ok(Some(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(orig.ip4)),
                orig.port as u16,
            ))),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(Error::Map {
                name: map_names::ORIG_DST,
                source,
            }),
        }
    }

    /// What the programs counted, summed over the CPUs.
    pub fn stats(&self) -> Result<Connect4Stats> {
        let name = map_names::CONNECT4_STATS;
        let per_cpu = self
            .stats
            .get(&CONNECT4_STATS_TOTAL, 0)
            .map_err(|source| Error::Map { name, source })?;
        let mut total = Connect4Stats::default();
        for cpu in per_cpu.iter() {
            total.accumulate(cpu);
        }
        Ok(total)
    }

    /// Entry counts (walks the maps; for the admin page and tests, not the hot path).
    pub fn sizes(&self) -> MapSizes {
        MapSizes {
            enrolled: self.enrolled.keys().count(),
            local_pods: self.local_pods.keys().count(),
            orig_by_cookie: self.orig_by_cookie.keys().count(),
            orig_dst: self.orig_dst.keys().count(),
            fast_path_sockets: self.socks.keys().count(),
            capture: self.capture.keys().count(),
            captured_flows: self.captured_flows.keys().count(),
        }
    }
}

fn install(options: &DataplaneOptions, runtime: &tokio::runtime::Handle) -> Result<Dataplane> {
    let pin_error = |what: String| move |source: aya::pin::PinError| Error::Pin { what, source };
    for dir in [
        maps_dir(&options.pin_dir),
        progs_dir(&options.pin_dir),
        links_dir(&options.pin_dir),
    ] {
        fs::create_dir_all(&dir).map_err(|source| Error::PinDir {
            path: dir.clone(),
            source,
        })?;
    }
    let pods = open_cgroup_v2(&options.pods_cgroup)?;
    let agent = options
        .agent_cgroup
        .as_deref()
        .map(open_cgroup_v2)
        .transpose()?;

    let log_level = super::log_level() as u8;
    let mut ebpf = EbpfLoader::new()
        .override_global(aya_log::LEVEL, &log_level, false)
        .load(object())
        .map_err(|e| classify("loading the eBPF object", e, Error::Load))?;
    // Pin every map first (the log ring buffer before the logger takes it): the pins keep
    // them when this process goes.
    for name in map_names::ALL {
        let map = ebpf.map(name).ok_or(Error::Missing { kind: "map", name })?;
        map.pin(maps_dir(&options.pin_dir).join(name))
            .map_err(pin_error(format!("map {name}")))?;
    }
    let logger =
        EbpfLogger::init_with_logger(&mut ebpf, LogTracer::new()).map_err(Error::Logger)?;
    let log_task = start_log_task(runtime, logger)?;

    let link_path =
        |program: &str, role: &str| links_dir(&options.pin_dir).join(format!("{program}-{role}"));
    for name in [program_names::CONNECT4, program_names::CONNECT6] {
        let program: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?;
        program.load().map_err(|e| program_error(name, e))?;
        program
            .pin(progs_dir(&options.pin_dir).join(name))
            .map_err(pin_error(format!("program {name}")))?;
        let id = program
            .attach(&pods, CgroupAttachMode::Single)
            .map_err(|e| program_error(name, e))?;
        let link = program.take_link(id).map_err(|e| program_error(name, e))?;
        let link = FdLink::try_from(link).map_err(|e| Error::Link { name, source: e })?;
        link.pin(link_path(name, "pods"))
            .map_err(pin_error(format!("link {name}")))?;
    }
    {
        let name = program_names::SOCK_OPS;
        let program: &mut SockOps = program_mut(&mut ebpf, name)?;
        program.load().map_err(|e| program_error(name, e))?;
        program
            .pin(progs_dir(&options.pin_dir).join(name))
            .map_err(pin_error(format!("program {name}")))?;
        for (role, cgroup) in [("pods", Some(&pods)), ("agent", agent.as_ref())] {
            let Some(cgroup) = cgroup else { continue };
            let id = program
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(|e| program_error(name, e))?;
            let link = program.take_link(id).map_err(|e| program_error(name, e))?;
            let link = FdLink::try_from(link).map_err(|e| Error::Link { name, source: e })?;
            link.pin(link_path(name, role))
                .map_err(pin_error(format!("link {name}")))?;
        }
    }
    {
        let name = program_names::SK_MSG;
        let socks_name = map_names::SOCKS;
        let socks: SockHash<MapData, SockKey> = ebpf
            .take_map(socks_name)
            .ok_or(Error::Missing {
                kind: "map",
                name: socks_name,
            })?
            .try_into()
            .map_err(|source| Error::Map {
                name: socks_name,
                source,
            })?;
        let program: &mut SkMsg = program_mut(&mut ebpf, name)?;
        program.load().map_err(|e| program_error(name, e))?;
        program
            .pin(progs_dir(&options.pin_dir).join(name))
            .map_err(pin_error(format!("program {name}")))?;
        let id = program
            .attach(socks.fd())
            .map_err(|e| program_error(name, e))?;
        let link = program.take_link(id).map_err(|e| program_error(name, e))?;
        // The sockhash holds the attachment for as long as the map lives (its pin): dropping
        // this handle would detach it, so it is left to the kernel.
        std::mem::forget(link);
    }
    {
        // Attached per interface later (sync_interfaces), from its pin.
        let name = program_names::INBOUND;
        let program: &mut SchedClassifier = program_mut(&mut ebpf, name)?;
        program.load().map_err(|e| program_error(name, e))?;
        program
            .pin(progs_dir(&options.pin_dir).join(name))
            .map_err(pin_error(format!("program {name}")))?;
    }
    drop(ebpf);
    let mut this = Dataplane::open_pins(&options.pin_dir, false)?;
    this.log_task = Some(log_task);
    Ok(this)
}

fn program_mut<'a, P>(ebpf: &'a mut aya::Ebpf, name: &'static str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(Error::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|e| program_error(name, e))
}

fn interface_exists(ifname: &str) -> bool {
    nix::net::if_::if_nametoindex(ifname).is_ok()
}

/// Removes every pin under `pin_dir` and the folder itself, and the inbound capture's policy
/// routing. With the pins gone and no mesh-node holding them, the kernel detaches the
/// programs and frees them and their maps. Refused ([`Error::PinsInUse`]) while a mesh-node
/// runs on the folder. Returns what it removed; a missing folder is fine.
pub fn uninstall(pin_dir: &Path) -> Result<Vec<String>> {
    if !pin_dir.exists() {
        return routing::remove();
    }
    let _lock = PinLock::try_acquire(pin_dir)?.ok_or_else(|| Error::PinsInUse {
        path: pin_dir.to_owned(),
    })?;
    let mut removed = routing::remove()?;
    removed.extend(remove_pins(pin_dir)?);
    // Under the lock still: an agent waiting for it finds the folder gone and makes a new one.
    fs::remove_dir_all(pin_dir).map_err(|source| Error::PinDir {
        path: pin_dir.to_owned(),
        source,
    })?;
    removed.push(pin_dir.display().to_string());
    Ok(removed)
}

/// Removes the pins under `pin_dir`: links first (detaching the programs), then programs,
/// then maps; the folder itself stays.
fn remove_pins(pin_dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for dir in [links_dir(pin_dir), progs_dir(pin_dir), maps_dir(pin_dir)] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            fs::remove_file(&path).map_err(|source| Error::PinDir {
                path: path.clone(),
                source,
            })?;
            removed.push(path.display().to_string());
        }
        fs::remove_dir(&dir).map_err(|source| Error::PinDir {
            path: dir.clone(),
            source,
        })?;
    }
    Ok(removed)
}
