//! The waypoint process: its certificate from the mesh CA (its own service account), the
//! config model from the files or the kube source, HBONE on `<pod ip>:15008`, and per tunnel
//! the choice of L7 ([`crate::http`]) or L4 ([`crate::tcp`]) by the service port's declared
//! protocol.
//! Admin (127.0.0.1:15000): `/config_dump`, `/healthz/ready`, `/memory`; metrics (pod IP, 15020):
//! `/stats/prometheus`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use mesh_core::config::{Model, PodInfo, ServiceInfo, Store};
use mesh_core::hbone::{self, Inbound, Tunnel};
use mesh_core::identity::Identity;
use mesh_core::identity::manager::{CaClientConfig, CertManager, SniResolver};
use mesh_core::identity::tls::server_config_verifying;
use mesh_core::pages::Page;
pub use mesh_core::source::ConfigSource;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::destinations::{Destinations, TunnelCache};
use crate::metrics::{Metrics, SeriesCache};
use crate::route::Target;

/// The waypoint's configuration, from flags and the environment the pod gets.
#[derive(Debug, Clone, Serialize)]
pub struct WaypointConfig {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// A service-account waypoint serves only traffic to that account's workloads.
    pub for_service_account: Option<String>,
    pub pod_ip: IpAddr,
    pub source: ConfigSource,
    pub hbone_port: u16,
    /// Admin's address (loopback unless told otherwise).
    pub admin: SocketAddr,
    pub metrics_port: u16,
    pub ca: CaClientConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] mesh_core::identity::manager::Error),
    #[error(transparent)]
    Tls(#[from] mesh_core::identity::Error),
    #[error(transparent)]
    Source(#[from] mesh_core::source::StartError),
    #[error("waiting for a stop signal: {0}")]
    Signal(std::io::Error),
}

/// What every tunnel shares.
pub struct Waypoint {
    pub config: WaypointConfig,
    model: watch::Receiver<Arc<Model>>,
    pub destinations: Destinations,
    pub metrics: Arc<Metrics>,
}

impl Waypoint {
    /// The shared state over the config snapshots `model` receives.
    pub fn new(
        config: WaypointConfig,
        model: watch::Receiver<Arc<Model>>,
        destinations: Destinations,
    ) -> Waypoint {
        Waypoint {
            config,
            model,
            destinations,
            metrics: Arc::new(Metrics::default()),
        }
    }

    pub fn model(&self) -> Arc<Model> {
        self.model.borrow().clone()
    }
}

/// Who opened a tunnel: the client workload (the node agent proxies for it).
#[derive(Debug, Clone)]
pub struct Client {
    pub identity: Identity,
    pub ip: Option<IpAddr>,
    pub pod: Option<Arc<PodInfo>>,
}

/// One tunnel's context: the service port it is for and the client.
pub struct Stream {
    pub waypoint: Arc<Waypoint>,
    pub service: Arc<ServiceInfo>,
    pub port: u16,
    pub client: Client,
    /// The request metrics' series its requests used last.
    pub series: SeriesCache,
    /// The route table and upstreams its requests used last.
    pub cache: TunnelCache,
    /// Where requests go that no route names: the service port itself.
    pub default_target: Target,
}

impl Stream {
    pub fn new(
        waypoint: Arc<Waypoint>,
        service: Arc<ServiceInfo>,
        port: u16,
        client: Client,
    ) -> Stream {
        Stream {
            default_target: Target {
                host: service.hostname.clone(),
                subset: None,
                port: Some(port),
            },
            waypoint,
            service,
            port,
            client,
            series: SeriesCache::default(),
            cache: TunnelCache::default(),
        }
    }
}

/// Runs until SIGINT or SIGTERM.
pub async fn run(config: WaypointConfig) -> Result<(), Error> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "mesh-waypoint starting");
    // The source first: a cluster that cannot be reached fails the start at once.
    let mut store = Store::new();
    let model = store.subscribe();
    let (tx, mut updates) = mpsc::channel(64);
    let _watch = config.source.spawn(tx).await?;
    let apply = tokio::spawn(async move {
        while let Some(update) = updates.recv().await {
            store.apply(update);
        }
    });
    // The CA's root may not be published yet (the waypoint can start before the mesh).
    let certs = loop {
        match CertManager::new(config.ca.clone()) {
            Ok(certs) => break Arc::new(certs),
            Err(error) => {
                tracing::info!(%error, "waiting for the mesh CA's root and this pod's credential");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let identity = certs.identity_of(&config.namespace, &config.service_account);
    certs.set_wanted(&BTreeSet::from([identity.clone()]));
    let renew = tokio::spawn(certs.clone().renew_forever());

    let waypoint = Arc::new(Waypoint::new(
        config.clone(),
        model,
        Destinations::new(certs.clone(), identity.clone()),
    ));
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr, source })
    };
    let listen = |port| bind(SocketAddr::new(config.pod_ip, port));
    let admin = bind(config.admin).await?;
    let metrics = listen(config.metrics_port).await?;
    let pages = [
        tokio::spawn(serve_pages(admin, waypoint.clone(), false)),
        tokio::spawn(serve_pages(metrics, waypoint.clone(), true)),
    ];
    // HBONE only once the certificate is there: a listening port is the pod's readiness.
    while certs
        .wait_for(&identity, Duration::from_secs(5))
        .await
        .is_err()
    {
        tracing::info!(%identity, "waiting for the waypoint's certificate");
    }
    let tls = server_config_verifying(
        Arc::new(SniResolver(certs.clone())),
        certs.roots().client_verifier(),
    )?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let hbone_listener = listen(config.hbone_port).await?;
    tracing::info!(%identity, addr = %SocketAddr::new(config.pod_ip, config.hbone_port), "waypoint serving HBONE");
    let accept = tokio::spawn(accept(hbone_listener, acceptor, waypoint.clone()));
    let heap = tokio::spawn(mesh_core::heap::release_when_wasteful());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Signal)?;
    tokio::select! {
        res = tokio::signal::ctrl_c() => res.map_err(Error::Signal)?,
        _ = term.recv() => {}
    }
    tracing::info!("mesh-waypoint stopping");
    for task in [renew, apply, accept, heap].into_iter().chain(pages) {
        task.abort();
    }
    Ok(())
}

async fn accept(listener: TcpListener, acceptor: TlsAcceptor, waypoint: Arc<Waypoint>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "HBONE listener: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let waypoint = waypoint.clone();
        tokio::spawn(async move {
            let tls = match hbone::accept_tls(&acceptor, tcp, peer).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(%error, "HBONE connection refused");
                    return;
                }
            };
            let handler = move |inbound: Inbound| {
                let waypoint = waypoint.clone();
                async move { tunnel(waypoint, inbound) }
            };
            if let Err(error) = hbone::serve_tunnels(tls, peer, handler).await {
                tracing::debug!(%peer, %error, "HBONE connection ended with an error");
            }
        });
    }
}

/// The protocol a service port declares (`appProtocol`, else the port name's prefix, as
/// Istio reads it).
fn is_http(service: &ServiceInfo, port: u16) -> bool {
    service
        .ports
        .iter()
        .find(|p| p.port == port)
        .is_some_and(|p| {
            let declared = p.declared_protocol();
            let prefix = declared.split('-').next().unwrap_or_default();
            matches!(prefix, "http" | "http2" | "grpc" | "h2c")
                || declared == "kubernetes.io/h2c"
                || declared.starts_with("grpc-web")
        })
}

/// Decides what a tunnel is for; the task that serves it, or the refusal.
type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

#[allow(
    clippy::result_large_err,
    reason = "the error is a status code; the Ok side is a boxed closure"
)]
fn tunnel(
    waypoint: Arc<Waypoint>,
    inbound: Inbound,
) -> Result<impl FnOnce(Tunnel) -> Task + Send + 'static, StatusCode> {
    let model = waypoint.model();
    let destination = inbound.destination;
    let Some(service) = model.service_by_addr(destination).cloned() else {
        tracing::info!(%destination, peer = %inbound.peer_identity, "tunnel to an address that is no service; refused");
        return Err(StatusCode::NOT_FOUND);
    };
    if let Some(account) = &waypoint.config.for_service_account {
        let serves = model
            .ready_endpoints(&service, destination.port())
            .iter()
            .any(|e| {
                e.pod
                    .as_ref()
                    .is_some_and(|p| *p.service_account == **account)
            });
        if !serves {
            tracing::info!(service = %service.hostname, account, "service has no workload of this waypoint's service account; refused");
            return Err(StatusCode::FORBIDDEN);
        }
    }
    let ip = inbound.vouched_source(&model);
    let client = Client {
        identity: inbound.peer_identity.clone(),
        ip,
        pod: ip.and_then(|ip| model.pod_by_ip(ip).cloned()),
    };
    let http = is_http(&service, destination.port());
    let stream = Arc::new(Stream::new(waypoint, service, destination.port(), client));
    Ok(move |tunnel: Tunnel| -> Task {
        if http {
            Box::pin(crate::http::serve(stream, tunnel))
        } else {
            Box::pin(crate::tcp::serve(stream, tunnel))
        }
    })
}

async fn serve_pages(listener: TcpListener, waypoint: Arc<Waypoint>, metrics: bool) {
    mesh_core::pages::serve(listener, move |path: &str| page(&waypoint, metrics, path)).await;
}

fn page(waypoint: &Waypoint, metrics: bool, path: &str) -> Page {
    match (metrics, path) {
        (true, "/stats/prometheus" | "/metrics") => {
            Page::ok(mesh_core::pages::OPENMETRICS, waypoint.metrics.encode())
        }
        (true, _) => Page::not_found("/stats/prometheus"),
        (false, "/healthz/ready") => Page::ok("text/plain", "ready\n".to_owned()),
        (false, "/config_dump") => Page::json(&json!({
            "config": waypoint.config,
            "certificates": waypoint.destinations.certs.status(),
            "roots": waypoint.destinations.certs.roots().status(),
            "hbone_connections": waypoint.destinations.pool.connections(),
        })),
        (false, "/memory") => Page::memory(),
        (false, _) => Page::not_found("/healthz/ready, /config_dump or /memory"),
    }
}
