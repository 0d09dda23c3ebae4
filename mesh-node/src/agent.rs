//! `mesh-node run`: the node agent's main loop. Installs or adopts the redirect data plane,
//! serves the outbound listener and the admin endpoint, and keeps the enrollment maps in sync
//! with the config source. Stopping it leaves the pinned data plane in place (`uninstall`
//! removes it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mesh_core::source::Update;
use mesh_core::source::files::FilesSource;
use serde::Serialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::ebpf::{Dataplane, DataplaneOptions, Redirect};
use crate::enroll::{Inventory, PodInfo};
use crate::outbound::{self, Counters, OriginalDst, SoOriginalDst};

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
    pub config_dir: PathBuf,
    pub pods_cgroup: PathBuf,
    pub agent_cgroup: Option<PathBuf>,
    pub pin_dir: PathBuf,
    pub proxy_ip: Ipv4Addr,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub fast_path: bool,
    pub redirect: RedirectMode,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ebpf(#[from] crate::ebpf::Error),
    #[error(transparent)]
    Source(#[from] mesh_core::source::files::Error),
    #[error("listening on {addr} failed: {source}; is another mesh-node running on this node?")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("waiting for a stop signal: {0}")]
    Signal(std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the listeners and the admin page share. One writer (the config updater).
pub struct Shared {
    config: NodeConfig,
    ready: AtomicBool,
    counters: Arc<Counters>,
    pods: RwLock<Vec<PodInfo>>,
    dataplane: Option<Arc<Mutex<Dataplane>>>,
}

impl Shared {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn config_dump(&self) -> serde_json::Value {
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner()).clone();
        let local: Vec<&PodInfo> = pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(self.config.node.as_str()))
            .collect();
        let ebpf = self.dataplane.as_ref().map(|d| {
            let d = d.lock().unwrap_or_else(|e| e.into_inner());
            json!({"adopted": d.adopted(), "program_ids": d.program_ids()})
        });
        json!({"config": self.config, "local_pods": local, "ebpf": ebpf})
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
                "msg_redirected": s.msg_redirected,
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

/// Runs until SIGINT or SIGTERM.
pub async fn run(config: NodeConfig) -> Result<()> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "mesh-node starting");
    let dataplane = match config.redirect {
        RedirectMode::Ebpf => {
            let mut dataplane = Dataplane::install_or_adopt(&DataplaneOptions {
                pin_dir: config.pin_dir.clone(),
                pods_cgroup: config.pods_cgroup.clone(),
                agent_cgroup: config.agent_cgroup.clone(),
            })?;
            tracing::info!(
                adopted = dataplane.adopted(),
                pin_dir = %config.pin_dir.display(),
                "eBPF data plane {}",
                if dataplane.adopted() { "adopted from its pins" } else { "installed and pinned" }
            );
            dataplane.configure(Some(Redirect {
                proxy: SocketAddrV4::new(config.proxy_ip, config.outbound_port),
                fast_path: config.fast_path,
            }))?;
            Some(Arc::new(Mutex::new(dataplane)))
        }
        RedirectMode::Netfilter => None,
    };
    let outbound_addr = SocketAddrV4::new(config.proxy_ip, config.outbound_port);
    let outbound = TcpListener::bind(outbound_addr)
        .await
        .map_err(|source| Error::Listen {
            addr: outbound_addr.to_string(),
            source,
        })?;
    let admin_addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.admin_port);
    let admin = TcpListener::bind(admin_addr)
        .await
        .map_err(|source| Error::Listen {
            addr: admin_addr.to_string(),
            source,
        })?;

    let shared = Arc::new(Shared {
        config: config.clone(),
        ready: AtomicBool::new(false),
        counters: Arc::new(Counters::default()),
        pods: RwLock::new(Vec::new()),
        dataplane: dataplane.clone(),
    });
    let lookup: Arc<dyn OriginalDst> = match &dataplane {
        Some(d) => Arc::new(EbpfOriginalDst(d.clone())),
        None => Arc::new(SoOriginalDst),
    };
    let outbound_task = tokio::spawn(outbound::serve(outbound, lookup, shared.counters.clone()));
    let admin_task = tokio::spawn(crate::admin::serve(admin, shared.clone()));

    let (tx, mut updates) = mpsc::channel(64);
    let _watch = FilesSource::new(&config.config_dir).spawn(tx)?;
    let mut inventory = Inventory::default();
    let mut synced = false;
    let mut resync = tokio::time::interval(Duration::from_secs(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Signal)?;
    loop {
        tokio::select! {
            update = updates.recv() => {
                let Some(update) = update else { break };
                if let Update::Problems(problems) = &update {
                    tracing::warn!(?problems, "config source problems");
                }
                let first = matches!(update, Update::Snapshot(_));
                if inventory.apply(&update) || first {
                    sync(&config, &inventory, &shared);
                    synced = synced || first;
                    if synced && !shared.is_ready() {
                        shared.ready.store(true, Ordering::Release);
                        tracing::info!("ready: config synced, listening on {outbound_addr} and {admin_addr}");
                    }
                }
            }
            _ = resync.tick(), if synced => sync(&config, &inventory, &shared),
            res = tokio::signal::ctrl_c() => { res.map_err(Error::Signal)?; break; }
            _ = term.recv() => break,
        }
    }
    tracing::info!(
        "mesh-node stopping; the pinned eBPF data plane stays (`mesh-node uninstall` removes it)"
    );
    outbound_task.abort();
    admin_task.abort();
    Ok(())
}

/// Publishes the pods and makes the eBPF maps match the enrolled local pods.
fn sync(config: &NodeConfig, inventory: &Inventory, shared: &Shared) {
    let pods = inventory.pods();
    let local: Vec<&PodInfo> = pods
        .iter()
        .filter(|p| p.node.as_deref() == Some(config.node.as_str()))
        .collect();
    if let Some(dataplane) = &shared.dataplane {
        let mut enrolled = BTreeSet::new();
        for pod in local.iter().filter(|p| p.enrolled) {
            // The kubelet-style pod cgroup; its inode is the id bpf_get_current_cgroup_id sees.
            let cgroup = config.pods_cgroup.join(format!("pod{}", pod.uid));
            match std::fs::metadata(&cgroup) {
                Ok(meta) => {
                    enrolled.insert(meta.ino());
                }
                Err(err) => {
                    tracing::debug!(pod = %pod.key(), cgroup = %cgroup.display(), %err, "pod cgroup not there (yet)")
                }
            }
        }
        let ips: BTreeSet<Ipv4Addr> = local.iter().filter_map(|p| p.ip).collect();
        let mut dataplane = dataplane.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = dataplane.sync_enrolled(&enrolled) {
            tracing::warn!(%err, "updating the enrolled pods map failed");
        }
        if let Err(err) = dataplane.sync_local_pods(&ips) {
            tracing::warn!(%err, "updating the local pods map failed");
        }
    }
    let enrolled: Vec<String> = local
        .iter()
        .filter(|p| p.enrolled)
        .map(|p| p.key())
        .collect();
    let mut published = shared.pods.write().unwrap_or_else(|e| e.into_inner());
    if *published != pods {
        tracing::info!(?enrolled, "enrollment");
        *published = pods;
    }
}
