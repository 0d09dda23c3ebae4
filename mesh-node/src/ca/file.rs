//! The CA's authorizer for the lab (`--authorizer file`): a credentials file names each node
//! agent's credential and each pod's own, and the files config source says where pods run,
//! standing in for Kubernetes' service-account tokens, TokenReview and pod lookups
//! ([`super::kube`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mesh_core::config::{Model, Name};
use mesh_core::identity::Identity;
use mesh_core::identity::service::{Authorizer, Refusal};
use mesh_core::stamp::FileStamp;
use serde::Deserialize;
use tokio::sync::watch;

use super::{Error, Result};

/// Who a credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Principal {
    /// A node agent: the identities of pods scheduled on its node.
    Node(String),
    /// One pod (`namespace/name`): its own service account's identity.
    Pod { pod: String },
}

/// A node agent may obtain the identity of a service account only while a pod of that
/// account is scheduled on the agent's node; a pod credential only its pod's identity.
pub struct NodeAuthorizer {
    credentials: Credentials,
    model: watch::Receiver<Arc<Model>>,
}

/// Credential → principal.
type CredentialMap = Arc<HashMap<String, Principal>>;

/// The credentials file, re-read when a new version of it appears (pods come and go).
struct Credentials {
    path: PathBuf,
    loaded: Mutex<(Option<FileStamp>, CredentialMap)>,
}

impl Credentials {
    fn current(&self) -> CredentialMap {
        let stamp = FileStamp::of(&self.path);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if stamp.is_some() && stamp != loaded.0 {
            match read_credentials(&self.path) {
                Ok(credentials) => *loaded = (stamp, Arc::new(credentials)),
                // Keep serving with what was read last; the file may be mid-rewrite.
                Err(error) => tracing::warn!(%error, "node credentials not reloaded"),
            }
        }
        loaded.1.clone()
    }
}

impl NodeAuthorizer {
    /// Reads `path` now (failing on a bad file) and again whenever it changes.
    pub fn new(path: &Path, model: watch::Receiver<Arc<Model>>) -> Result<NodeAuthorizer> {
        let stamp = FileStamp::of(path);
        let credentials = read_credentials(path)?;
        Ok(NodeAuthorizer {
            credentials: Credentials {
                path: path.to_owned(),
                loaded: Mutex::new((stamp, Arc::new(credentials))),
            },
            model,
        })
    }
}

impl Authorizer for NodeAuthorizer {
    async fn authorize(&self, credential: &str, identity: &Identity) -> Result<(), Refusal> {
        let credentials = self.credentials.current();
        let principal = credentials.get(credential).ok_or_else(|| {
            Refusal::Unauthenticated("the credential belongs to no node agent or pod".into())
        })?;
        let model = self.model.borrow().clone();
        match principal {
            Principal::Node(node) => {
                let scheduled = model.pods().any(|pod| {
                    pod.node.as_deref() == Some(node.as_str())
                        && *pod.name.namespace == *identity.namespace
                        && *pod.service_account == *identity.service_account
                });
                if scheduled {
                    Ok(())
                } else {
                    Err(Refusal::Denied(format!(
                        "no pod of service account {}/{} is scheduled on node {node}",
                        identity.namespace, identity.service_account
                    )))
                }
            }
            Principal::Pod { pod } => {
                let (namespace, name) = pod.split_once('/').unwrap_or(("default", pod));
                let Some(found) = model.pod(&Name::new(namespace, name)) else {
                    return Err(Refusal::Denied(format!(
                        "pod {pod} does not exist (any more)"
                    )));
                };
                if *found.name.namespace == *identity.namespace
                    && *found.service_account == *identity.service_account
                {
                    Ok(())
                } else {
                    Err(Refusal::Denied(format!(
                        "pod {pod} runs as {}/{}, not {}/{}",
                        found.name.namespace,
                        found.service_account,
                        identity.namespace,
                        identity.service_account
                    )))
                }
            }
        }
    }
}

/// Reads the credentials file.
pub fn read_credentials(path: &Path) -> Result<HashMap<String, Principal>> {
    let fail = |message: String| Error::Credentials {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| {
        fail(format!(
            "{e}; expected a JSON object of credential to a node name or {{\"pod\": \"namespace/name\"}}"
        ))
    })
}
