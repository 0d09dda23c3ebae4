//! `mesh-node run`: the node agent's main loop. Installs or adopts the redirect data plane,
//! serves the outbound listener (15001), HBONE (15008), the plaintext inbound listener
//! (15006, for captured non-mesh clients), admin (15000), metrics (15020) and
//! readiness (15021), keeps the enrollment maps and the workload certificates in sync with the
//! config source, and renews the certificates. Stopping it leaves the pinned data plane in
//! place (`uninstall` removes it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mesh_core::config::{Model, Store};
use mesh_core::identity::Identity;
pub use mesh_core::source::ConfigSource;
use mesh_core::source::Update;
use serde::Serialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::admin::Page;
use crate::ebpf::{Dataplane, DataplaneOptions, PinLock, Redirect};
use crate::enroll::{LocalPod, capture_addresses, local_pods, pod_cgroup};
use crate::links::LinkEvents;
use crate::metrics::Metrics;
use crate::outbound::{self, Counters, OriginalDst, SoOriginalDst};
use crate::proxy::{Proxy, inbound, listen_transparent, plaintext};
use mesh_core::identity::manager::{CaClientConfig, CertManager};

/// How connections reach the outbound listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RedirectMode {
    /// The eBPF programs (the mesh).
    Ebpf,
    /// Someone else's netfilter REDIRECT/DNAT rules; the listener reads SO_ORIGINAL_DST
    /// (for the benchmark's comparison; no eBPF is loaded).
    Netfilter,
}

/// The node agent's configuration, built from flags in `main.rs`, logged at start and served
/// on `/config_dump`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeConfig {
    pub node: String,
    pub source: ConfigSource,
    pub pods_cgroup: PathBuf,
    pub agent_cgroup: Option<PathBuf>,
    pub pin_dir: PathBuf,
    pub proxy_ip: Ipv4Addr,
    pub outbound_port: u16,
    pub hbone_port: u16,
    pub inbound_port: u16,
    /// Capture non-mesh TCP to enrolled pods into the inbound listener.
    pub inbound_capture: bool,
    pub admin_port: u16,
    pub admin_ip: Ipv4Addr,
    pub metrics_port: u16,
    pub readiness_port: u16,
    pub fast_path: bool,
    pub redirect: RedirectMode,
    /// Where workload certificates come from.
    pub ca: CaClientConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ebpf(#[from] crate::ebpf::Error),
    #[error(transparent)]
    Source(#[from] mesh_core::source::StartError),
    #[error("listening on {addr} failed: {source}; is another mesh-node running on this node?")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("waiting for a stop signal: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Identity(#[from] mesh_core::identity::manager::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the listeners and the admin page share. One writer (the config updater).
pub struct Shared {
    config: NodeConfig,
    /// The first config snapshot is applied (and the listeners are up).
    synced: AtomicBool,
    /// Latched by [`Shared::not_ready`] once everything is there.
    ready: AtomicBool,
    counters: Arc<Counters>,
    pods: RwLock<Vec<LocalPod>>,
    dataplane: Option<Arc<Mutex<Dataplane>>>,
    pub proxy: Arc<Proxy>,
}

impl Shared {
    /// Why the agent is not ready yet; `None` once it is, and from then on for good (a pod
    /// enrolled later must not take a serving agent out of rotation). Ready: the first config
    /// snapshot applied, the listeners up, and the CA has answered for the service account
    /// of every pod enrolled then (with a certificate, or a refusal the agent keeps retrying:
    /// an unreachable CA must not hold a node back forever).
    pub fn not_ready(&self) -> Option<String> {
        if self.ready.load(Ordering::Acquire) {
            return None;
        }
        if !self.synced.load(Ordering::Acquire) {
            return Some("waiting for the first config snapshot".to_owned());
        }
        let waiting = self.proxy.certs.unanswered();
        if !waiting.is_empty() {
            let waiting: Vec<String> = waiting.iter().map(ToString::to_string).collect();
            return Some(format!(
                "waiting for the CA's first answer for {}",
                waiting.join(", ")
            ));
        }
        if !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!(node = %self.config.node, "ready: config synced, listeners up, certificates of the enrolled pods requested");
        }
        None
    }

    pub fn config_dump(&self) -> serde_json::Value {
        let local = self.pods.read().unwrap_or_else(|e| e.into_inner()).clone();
        let ebpf = self.dataplane.as_ref().map(|d| {
            let d = d.lock().unwrap_or_else(|e| e.into_inner());
            json!({"adopted": d.adopted(), "program_ids": d.program_ids()})
        });
        json!({
            "config": self.config,
            "local_pods": local,
            "ebpf": ebpf,
            "certificates": self.proxy.certs.status(),
            "roots": self.proxy.certs.roots().status(),
            "hbone_connections": self.proxy.pool.connections(),
        })
    }

    pub fn redirect_stats(&self) -> serde_json::Value {
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner()).clone();
        let names: BTreeMap<Ipv4Addr, String> =
            pods.iter().filter_map(|p| Some((p.ip?, p.key()))).collect();
        let by_pod: BTreeMap<String, serde_json::Value> = self
            .counters
            .snapshot()
            .into_iter()
            .map(|(ip, c)| {
                let name = names.get(&ip).cloned().unwrap_or_else(|| ip.to_string());
                (name, json!({"ip": ip, "counters": c}))
            })
            .collect();
        let ebpf = self.dataplane.as_ref().map(|d| {
            let d = d.lock().unwrap_or_else(|e| e.into_inner());
            json!({"stats": d.stats().ok().map(|s| json!({
                "tcp_connects": s.tcp_connects, "other_connects": s.other_connects,
                "redirected": s.redirected, "established": s.established, "closed": s.closed,
                "fast_path_sockets": s.fast_path_sockets, "tcp6_connects": s.tcp6_connects,
                "msg_redirected": s.msg_redirected, "inbound_captured": s.inbound_captured,
                "inbound_no_listener": s.inbound_no_listener,
            })), "maps": d.sizes()})
        });
        json!({"pods": by_pod, "ebpf": ebpf})
    }
}

/// Looks original destinations up in the eBPF map.
struct EbpfOriginalDst(Arc<Mutex<Dataplane>>);

impl OriginalDst for EbpfOriginalDst {
    fn original_dst(
        &self,
        _stream: &TcpStream,
        peer: SocketAddrV4,
        local: SocketAddrV4,
    ) -> std::io::Result<Option<SocketAddrV4>> {
        let dataplane = self.0.lock().unwrap_or_else(|e| e.into_inner());
        dataplane
            .original_dst(peer, local)
            .map_err(std::io::Error::other)
    }
}

/// Binds a listener, naming the address in the error.
async fn listen(addr: SocketAddrV4) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(config: NodeConfig) -> Result<()> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "mesh-node starting");
    // The source first: a cluster that cannot be reached fails the start before anything is
    // installed.
    let (tx, mut updates) = mpsc::channel(64);
    let _watch = config.source.spawn(tx).await?;
    let dataplane = match config.redirect {
        RedirectMode::Ebpf => {
            // A restart's predecessor may still be stopping: wait for its lock to go.
            let lock = PinLock::acquire(&config.pin_dir).await?;
            let mut dataplane = Dataplane::install_or_adopt(
                &DataplaneOptions {
                    pin_dir: config.pin_dir.clone(),
                    pods_cgroup: config.pods_cgroup.clone(),
                    agent_cgroup: config.agent_cgroup.clone(),
                },
                lock,
            )?;
            tracing::info!(
                adopted = dataplane.adopted(),
                pin_dir = %config.pin_dir.display(),
                "eBPF data plane {}",
                if dataplane.adopted() { "adopted from its pins" } else { "installed and pinned" }
            );
            dataplane.configure(Some(Redirect {
                proxy: SocketAddrV4::new(config.proxy_ip, config.outbound_port),
                fast_path: config.fast_path,
                inbound_port: config.inbound_capture.then_some(config.inbound_port),
                hbone_port: config.hbone_port,
            }))?;
            // aya parsed the kernel's BTF (~10 MB) to load the programs, and freed it.
            mesh_core::heap::release();
            Some(Arc::new(Mutex::new(dataplane)))
        }
        RedirectMode::Netfilter => None,
    };
    let outbound_addr = SocketAddrV4::new(config.proxy_ip, config.outbound_port);
    let outbound = listen(outbound_addr).await?;
    // Both inbound listeners take captured connections addressed to pods (IP_TRANSPARENT).
    let transparent = |addr: SocketAddrV4| {
        listen_transparent(addr).map_err(|source| Error::Listen {
            addr: addr.to_string(),
            source,
        })
    };
    let hbone = transparent(SocketAddrV4::new(config.proxy_ip, config.hbone_port))?;
    let plaintext_listener = transparent(SocketAddrV4::new(config.proxy_ip, config.inbound_port))?;
    let admin_addr = SocketAddrV4::new(config.admin_ip, config.admin_port);
    let admin = listen(admin_addr).await?;
    let metrics_listener = listen(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        config.metrics_port,
    ))
    .await?;
    let readiness = listen(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        config.readiness_port,
    ))
    .await?;

    let mut store = Store::new();
    let certs = Arc::new(CertManager::new(config.ca.clone())?);
    let proxy = Arc::new(Proxy::new(
        config.node.clone(),
        store.subscribe(),
        certs.clone(),
        Arc::new(Metrics::default()),
    ));
    let shared = Arc::new(Shared {
        config: config.clone(),
        synced: AtomicBool::new(false),
        ready: AtomicBool::new(false),
        counters: Arc::new(Counters::default()),
        pods: RwLock::new(Vec::new()),
        dataplane: dataplane.clone(),
        proxy: proxy.clone(),
    });
    let lookup: Arc<dyn OriginalDst> = match &dataplane {
        Some(d) => Arc::new(EbpfOriginalDst(d.clone())),
        None => Arc::new(SoOriginalDst),
    };
    let tasks = [
        tokio::spawn(outbound::serve(
            outbound,
            lookup,
            shared.counters.clone(),
            proxy.clone(),
        )),
        tokio::spawn(inbound::serve(hbone, proxy.clone())),
        tokio::spawn(plaintext::serve(plaintext_listener, proxy.clone())),
        tokio::spawn(crate::admin::serve(admin, shared.clone(), Page::Admin)),
        tokio::spawn(crate::admin::serve(
            metrics_listener,
            shared.clone(),
            Page::Metrics,
        )),
        tokio::spawn(crate::admin::serve(
            readiness,
            shared.clone(),
            Page::Readiness,
        )),
        tokio::spawn(certs.clone().renew_forever()),
        tokio::spawn(mesh_core::heap::release_when_wasteful()),
    ];

    let mut resync = tokio::time::interval(Duration::from_secs(1));
    // New interfaces (pod veths) get the inbound capture program as the kernel announces
    // them; the slow poll is a safety net (and the only way when netlink is refused).
    let mut links = match config.inbound_capture.then(LinkEvents::open) {
        Some(Ok(links)) => Some(links),
        Some(Err(error)) => {
            tracing::warn!(%error, "no netlink link events; polling the interfaces");
            None
        }
        None => None,
    };
    let mut interfaces = interface_poll(links.is_some());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Signal)?;
    loop {
        tokio::select! {
            update = updates.recv() => {
                let Some(update) = update else { break };
                // What is already queued (up to a batch) goes in before one sync: a sync
                // walks every pod and service of the cluster, so a burst of changes (a
                // rollout) costs one walk, not one per object.
                let mut next = Some(update);
                let mut applied = 0;
                while let Some(update) = next.take() {
                    if let Update::Problems(problems) = &update {
                        tracing::warn!(?problems, "config source problems");
                    }
                    store.apply(update);
                    applied += 1;
                    if applied < SYNC_BATCH {
                        next = updates.try_recv().ok();
                    }
                }
                if store.synced() {
                    sync_beside(store.model(), &shared).await;
                }
            }
            _ = resync.tick(), if store.synced() => sync_beside(store.model(), &shared).await,
            _ = interfaces.tick(), if config.inbound_capture => sync_interfaces(&shared),
            changed = link_change(&mut links), if config.inbound_capture => {
                if let Err(error) = changed {
                    tracing::warn!(%error, "netlink link events failed; polling the interfaces");
                    links = None;
                    interfaces = interface_poll(false);
                }
                sync_interfaces(&shared);
            }
            res = tokio::signal::ctrl_c() => { res.map_err(Error::Signal)?; break; }
            _ = term.recv() => break,
        }
    }
    tracing::info!(
        "mesh-node stopping; the pinned eBPF data plane stays (`mesh-node uninstall` removes it)"
    );
    for task in tasks {
        task.abort();
    }
    Ok(())
}

/// The most config updates applied between two syncs of the node's pods.
const SYNC_BATCH: usize = 1024;

/// How often the interfaces are looked at: a safety net beside netlink's link events, or
/// the only way to see new ones without them.
fn interface_poll(netlink: bool) -> tokio::time::Interval {
    tokio::time::interval(if netlink {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(200)
    })
}

/// The next link change, or never without a netlink socket.
async fn link_change(links: &mut Option<LinkEvents>) -> std::io::Result<()> {
    match links {
        Some(links) => links.changed().await,
        None => std::future::pending().await,
    }
}

/// Attaches the inbound capture program to interfaces that appeared.
fn sync_interfaces(shared: &Shared) {
    let Some(dataplane) = &shared.dataplane else {
        return;
    };
    let mut dataplane = dataplane.lock().unwrap_or_else(|e| e.into_inner());
    match dataplane.sync_interfaces() {
        Ok(done) if done.attached.is_empty() && done.removed.is_empty() => {}
        Ok(done) => {
            tracing::debug!(attached = ?done.attached, removed = ?done.removed, "inbound capture interfaces")
        }
        Err(err) => tracing::warn!(%err, "attaching the inbound capture to interfaces failed"),
    }
}

/// [`sync`] on the blocking pool, waited for. With one worker the proxy runs on the thread
/// that runs the agent's loop, and a sync costs a system call or more per pod of the node
/// (its cgroup's inode, the maps' reads and writes): the proxy should not wait behind it.
async fn sync_beside(model: Arc<Model>, shared: &Arc<Shared>) {
    let shared = shared.clone();
    let synced = tokio::task::spawn_blocking(move || sync(&model, &shared));
    if let Err(error) = synced.await {
        tracing::warn!(%error, "syncing the node's pods did not finish");
    }
}

/// Publishes the local pods, makes the eBPF maps match the enrolled ones, and asks for the
/// certificates of their service accounts.
fn sync(model: &Model, shared: &Shared) {
    let config = &shared.config;
    let local = local_pods(model, &config.node);
    if let Some(dataplane) = &shared.dataplane {
        let mut enrolled = BTreeSet::new();
        for pod in local.iter().filter(|p| p.enrolled) {
            // The pod's cgroup; its inode is the id the connect programs compare the caller's
            // cgroup and its ancestors with (containers sit in cgroups inside it).
            match pod_cgroup(&config.pods_cgroup, &pod.uid).map(|c| std::fs::metadata(&c)) {
                Some(Ok(meta)) => {
                    enrolled.insert(meta.ino());
                }
                Some(Err(err)) => {
                    tracing::debug!(pod = %pod.key(), %err, "pod cgroup unreadable")
                }
                None => tracing::debug!(pod = %pod.key(), "pod cgroup not there (yet)"),
            }
        }
        let ips: BTreeSet<Ipv4Addr> = local.iter().filter_map(|p| p.ip).collect();
        let capture = if config.inbound_capture {
            capture_addresses(model, &local)
        } else {
            BTreeSet::new()
        };
        let mut dataplane = dataplane.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = dataplane.sync_capture(&capture) {
            tracing::warn!(%err, "updating the inbound capture map failed");
        }
        if let Err(err) = dataplane.sync_enrolled(&enrolled) {
            tracing::warn!(%err, "updating the enrolled pods map failed");
        }
        if let Err(err) = dataplane.sync_local_pods(&ips) {
            tracing::warn!(%err, "updating the local pods map failed");
        }
    }
    let identities: BTreeSet<Identity> = local
        .iter()
        .filter(|p| p.enrolled)
        .map(|p| {
            shared
                .proxy
                .certs
                .identity_of(&p.namespace, &p.service_account)
        })
        .collect();
    shared.proxy.certs.set_wanted(&identities);
    let mut published = shared.pods.write().unwrap_or_else(|e| e.into_inner());
    if *published != local {
        let enrolled: Vec<String> = local
            .iter()
            .filter(|p| p.enrolled)
            .map(LocalPod::key)
            .collect();
        tracing::info!(?enrolled, "enrollment");
        *published = local;
    }
    drop(published);
    if !shared.synced.swap(true, Ordering::AcqRel) {
        tracing::info!(node = %config.node, "config synced, listeners up");
    }
}
