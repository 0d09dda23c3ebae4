//! `mesh-node ca`: the mesh CA as its own process (a Deployment in Kubernetes, a process on
//! the first node in the lab). It serves Istio's `CreateCertificate` over gRPC with TLS on
//! 15012, signs only identities the calling node agent may hold — service accounts of pods
//! scheduled on that agent's node, per its own view of the config source — and publishes
//! its root certificate (public) for the agents to trust. The root key never leaves memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::config::{Model, Store};
use mesh_core::identity::service::{Authorizer, CA_SERVER_NAME, CaService};
use mesh_core::identity::{CertificateAuthority, Identity};
use mesh_core::source::files::FilesSource;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

/// How long the CA's serving certificate lives (it is re-made at every start).
const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// `mesh-node ca`'s configuration, built from flags in `main.rs` and logged at start.
#[derive(Debug, Clone, Serialize)]
pub struct CaConfig {
    pub listen: SocketAddr,
    pub trust_domain: String,
    /// The files config source the CA checks pod placement against.
    pub config_dir: PathBuf,
    /// JSON `{"<credential>": "<node name>"}`: each node agent's credential (the lab's
    /// stand-in for a kubelet-bound service-account token).
    pub node_credentials: PathBuf,
    /// Where to write the root certificate (PEM), for the agents' `--ca-root`.
    pub root_cert_out: PathBuf,
    /// The longest certificate lifetime the CA grants.
    pub max_validity: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading node credentials {path}: {message}")]
    Credentials { path: PathBuf, message: String },
    #[error("the CA: {0}")]
    Identity(#[from] mesh_core::identity::Error),
    #[error(transparent)]
    Source(#[from] mesh_core::source::files::Error),
    #[error("writing the root certificate to {path}: {source}")]
    WriteRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("waiting for a stop signal: {0}")]
    Signal(std::io::Error),
    #[error("serving gRPC on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A node agent may obtain the identity of a service account only while a pod of that
/// account is scheduled on the agent's node.
pub struct NodeAuthorizer {
    /// Credential → node name.
    credentials: HashMap<String, String>,
    model: watch::Receiver<Arc<Model>>,
}

impl NodeAuthorizer {
    pub fn new(
        credentials: HashMap<String, String>,
        model: watch::Receiver<Arc<Model>>,
    ) -> NodeAuthorizer {
        NodeAuthorizer { credentials, model }
    }
}

impl Authorizer for NodeAuthorizer {
    fn authorize(&self, credential: &str, identity: &Identity) -> Result<(), String> {
        let node = self
            .credentials
            .get(credential)
            .ok_or("the credential belongs to no node agent")?;
        let model = self.model.borrow().clone();
        let scheduled = model.pods().any(|pod| {
            pod.node.as_deref() == Some(node.as_str())
                && pod.name.namespace == identity.namespace
                && pod.service_account == identity.service_account
        });
        if scheduled {
            Ok(())
        } else {
            Err(format!(
                "no pod of service account {}/{} is scheduled on node {node}",
                identity.namespace, identity.service_account
            ))
        }
    }
}

/// Reads the node credentials file.
pub fn read_credentials(path: &Path) -> Result<HashMap<String, String>> {
    let fail = |message: String| Error::Credentials {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| {
        fail(format!(
            "{e}; expected a JSON object of credential to node name"
        ))
    })
}

/// Runs the CA until SIGINT/SIGTERM.
pub async fn run(config: CaConfig) -> Result<()> {
    tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "mesh CA starting");
    let credentials = read_credentials(&config.node_credentials)?;
    let ca = Arc::new(CertificateAuthority::new(&config.trust_domain)?);
    write_atomically(&config.root_cert_out, &ca.root_pem())?;

    let mut store = Store::new();
    let model = store.subscribe();
    let (tx, mut updates) = mpsc::channel(64);
    let _watch = FilesSource::new(&config.config_dir).spawn(tx)?;
    tokio::spawn(async move {
        while let Some(update) = updates.recv().await {
            store.apply(update);
        }
    });

    let (chain, key) = ca.serving_certificate(
        &[CA_SERVER_NAME.to_owned()],
        &[config.listen.ip()],
        SERVING_VALIDITY,
    )?;
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(chain, key.pem()));
    let service = CaService::new(
        ca,
        NodeAuthorizer::new(credentials, model),
        config.max_validity,
    );
    tracing::info!(listen = %config.listen, root = %config.root_cert_out.display(), "mesh CA serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Error::Signal)?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    tonic::transport::Server::builder()
        .tls_config(tls)
        .map_err(|source| Error::Serve {
            addr: config.listen,
            source,
        })?
        .add_service(service.into_server())
        .serve_with_shutdown(config.listen, stop)
        .await
        .map_err(|source| Error::Serve {
            addr: config.listen,
            source,
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
