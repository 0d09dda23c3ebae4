//! `mesh-node ca`: the mesh CA as its own process (a Deployment in Kubernetes, a process on
//! the first node in the lab). It serves Istio's `CreateCertificate` over gRPC with TLS on
//! 15012, signs only identities the caller may hold — for a node agent, service accounts of
//! pods scheduled on its node; for a pod's own credential (a waypoint's), that pod's service
//! account while the pod exists — and publishes its root certificate (public) for the agents
//! to trust. It signs with Istio's plug-in CA files (`--ca-dir`, the `cacerts` Secret),
//! following them as they change ([`reload`]), or, without them, with a root made at start
//! whose key never leaves memory (a new root at every start: for labs and trials). Its TLS
//! endpoint serves a certificate it makes again when its files change ([`serve`]). Who
//! holds a credential is decided by the credentials file and the files config source
//! ([`file::NodeAuthorizer`], the lab) or by the Kubernetes API ([`kube::KubeAuthorizer`]:
//! TokenReview and pod lookups).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::config::Store;
use mesh_core::identity::CertificateAuthority;
use mesh_core::identity::service::{Authorizer, CA_SERVER_NAME, CurrentCa, Observer};
use mesh_core::pages::{OPENMETRICS, Page};
use mesh_core::source::files::FilesSource;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

#[cfg(test)]
mod fake_api;
pub mod file;
pub mod kube;
pub mod metrics;
pub mod publish;
pub mod reload;
pub mod serve;

use self::file::NodeAuthorizer;
use self::kube::{KubeAuthorizer, KubeAuthorizerConfig};

/// How long the CA's serving certificate lives (it is made again at half its life, at every
/// start, and when the CA files change).
const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// `mesh-node ca`'s configuration, built from flags in `main.rs` and logged at start.
#[derive(Debug, Clone, Serialize)]
pub struct CaConfig {
    pub listen: SocketAddr,
    /// Where `/metrics` is served ([`metrics`]).
    pub metrics_listen: SocketAddr,
    pub trust_domain: String,
    /// Who may obtain which identity.
    pub authorizer: AuthorizerConfig,
    /// Istio's plug-in CA files to sign with; `None`: a new self-signed root.
    pub ca_dir: Option<PathBuf>,
    /// The ConfigMap to keep the roots in, in every namespace ([`publish`]); Kubernetes only.
    pub publish_root: Option<String>,
    /// Where to write the root certificate (PEM), for the agents' `--ca-root`.
    pub root_cert_out: PathBuf,
    /// The longest certificate lifetime the CA grants.
    pub max_validity: Duration,
}

/// How the CA learns who holds a credential and where pods run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AuthorizerConfig {
    /// The lab: a credentials file and the files config source ([`file::NodeAuthorizer`]).
    File {
        /// The files config source the CA checks pod placement against.
        config_dir: PathBuf,
        /// JSON `{"<credential>": "<node name>" | {"pod": "<namespace>/<name>"}}`: each node
        /// agent's credential, and pods' own (the lab's stand-in for kubelet-bound and pod
        /// service-account tokens). Re-read when it changes.
        node_credentials: PathBuf,
    },
    /// Kubernetes: service-account tokens, TokenReview and pod lookups ([`KubeAuthorizer`]).
    Kube(KubeAuthorizerConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading node credentials {path}: {message}")]
    Credentials { path: PathBuf, message: String },
    #[error("the CA: {0}")]
    Identity(#[from] mesh_core::identity::Error),
    #[error(transparent)]
    Source(#[from] mesh_core::source::files::Error),
    #[error("connecting to the Kubernetes API (in-cluster service account or KUBECONFIG): {0}")]
    Kube(#[source] ::kube::Error),
    #[error("writing the root certificate to {path}: {source}")]
    WriteRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("waiting for a stop signal: {0}")]
    Signal(std::io::Error),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the CA on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: serve::ServeError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs the CA until SIGINT/SIGTERM.
pub async fn run(config: CaConfig) -> Result<()> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "mesh CA starting");
    let bind = |addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })
    };
    let listener = bind(config.listen).await?;
    let metrics_listener = bind(config.metrics_listen).await?;
    let signing = Signing::start(&config, reload::POLL)?;
    let metrics = Arc::new(metrics::CaMetrics::default());
    {
        let (metrics, ca) = (metrics.clone(), signing.ca.clone());
        tokio::spawn(mesh_core::pages::serve(
            metrics_listener,
            move |path| match path {
                "/metrics" => Page::ok(OPENMETRICS, metrics.encode(&ca.borrow())),
                _ => Page::not_found("/metrics"),
            },
        ));
    }
    let observer: Observer = Arc::new(move |outcome| metrics.observe(outcome));
    let stop = stop_signal()?;
    match &config.authorizer {
        AuthorizerConfig::File {
            config_dir,
            node_credentials,
        } => {
            let mut store = Store::new();
            let model = store.subscribe();
            let (tx, mut updates) = mpsc::channel(64);
            let _watch = FilesSource::new(config_dir).spawn(tx)?;
            tokio::spawn(async move {
                while let Some(update) = updates.recv().await {
                    store.apply(update);
                }
            });
            let authorizer = NodeAuthorizer::new(node_credentials, model)?;
            signing
                .serve(&config, listener, authorizer, observer, stop)
                .await
        }
        AuthorizerConfig::Kube(kube) => {
            let client = ::kube::Client::try_default().await.map_err(Error::Kube)?;
            if let Some(name) = &config.publish_root {
                let publisher =
                    publish::RootPublisher::new(client.clone(), name, signing.ca.clone());
                tokio::spawn(publisher.run(publish::EVERY));
            }
            let authorizer = KubeAuthorizer::new(client, kube.clone());
            signing
                .serve(&config, listener, authorizer, observer, stop)
                .await
        }
    }
}

/// What the CA signs with, followed as its files change ([`reload`]), and the certificate
/// it serves with.
pub struct Signing {
    pub ca: CurrentCa,
    pub serving: Arc<serve::ServingCert>,
}

impl Signing {
    /// Loads the CA (from `--ca-dir`, or a new root), writes its roots to
    /// `--root-cert-out`, makes its serving certificate, and follows its files every
    /// `every`.
    pub fn start(config: &CaConfig, every: Duration) -> Result<Signing> {
        let mut files = config
            .ca_dir
            .as_deref()
            .map(|dir| reload::CaFiles::new(&config.trust_domain, dir));
        let ca = match &mut files {
            Some(files) => files.load()?,
            None => {
                tracing::warn!(
                    "no --ca-dir: signing with a new root made now, which ends with this process; \
                     agents holding an earlier root refuse its certificates (use --ca-dir for a \
                     root that outlives restarts)"
                );
                CertificateAuthority::new(&config.trust_domain)?
            }
        };
        write_atomically(&config.root_cert_out, &ca.root_pem())?;
        let serving = serve::ServingCert::new(
            &ca,
            &[CA_SERVER_NAME.to_owned()],
            &[config.listen.ip()],
            SERVING_VALIDITY,
        )?;
        let (sender, current) = watch::channel(Arc::new(ca));
        tokio::spawn(reload::follow(
            files,
            sender,
            serving.clone(),
            config.root_cert_out.clone(),
            every,
        ));
        Ok(Signing {
            ca: current,
            serving,
        })
    }

    /// Serves the CA's gRPC service on `listener` until `stop`, telling `observer` how each
    /// request ended.
    pub async fn serve<A: Authorizer>(
        self,
        config: &CaConfig,
        listener: tokio::net::TcpListener,
        authorizer: A,
        observer: Observer,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        tracing::info!(listen = %config.listen, root = %config.root_cert_out.display(), "mesh CA serving");
        serve::serve(
            listener,
            self.serving,
            self.ca,
            authorizer,
            config.max_validity,
            observer,
            stop,
        )
        .await
        .map_err(|source| Error::Serve {
            addr: config.listen,
            source,
        })
    }
}

/// Completes at SIGINT or SIGTERM.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
}

/// Writes through a temporary file and a rename, so readers never see half a file.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let fail = |source| Error::WriteRoot {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
