//! Publishing the CA's roots to the cluster (`mesh-node ca --publish-root-configmap NAME`,
//! with `--authorizer kube`), as istiod writes `istio-ca-root-cert` to every namespace: a
//! ConfigMap `NAME` with key `root-cert.pem` (every root the CA trusts, its `--ca-dir`
//! `root-cert.pem`) in every namespace but `kube-system`, `kube-public` and
//! `kube-node-lease`, so node agents (in `istio-system`) and waypoints (in their own
//! namespaces) mount it without an operator copying it around.
//!
//! Every round (at start, then every [`EVERY`], and at once when the CA's roots change) lists namespaces and the ConfigMaps this CA
//! manages (label `app.kubernetes.io/managed-by=mesh-ca`: two calls, whatever the cluster's
//! size) and writes only where the ConfigMap is missing or differs (server-side apply, field
//! manager `mesh-ca`), so a deleted or edited copy is put back within a round and a new
//! namespace gets one within a round. The CA's service account needs `list` on
//! `namespaces` and `list`, `create`, `patch` on `configmaps`.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams};
use mesh_core::identity::service::CurrentCa;
use serde_json::json;

/// The key of the roots in the ConfigMap (the agents' `--ca-root` file name).
pub const ROOT_KEY: &str = "root-cert.pem";
/// How often a round runs after the first.
pub const EVERY: Duration = Duration::from_secs(30);
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
const FIELD_MANAGER: &str = "mesh-ca";
/// Namespaces of the cluster's own, left alone (as istiod leaves them).
const SKIPPED: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Keeps ConfigMap `name` holding the roots of the current CA in every namespace.
pub struct RootPublisher {
    client: kube::Client,
    name: String,
    ca: CurrentCa,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Namespaces whose ConfigMap was written.
    pub written: Vec<String>,
    /// Namespaces whose ConfigMap was already current.
    pub current: usize,
    /// Namespaces where writing failed (the next round tries again), with why.
    pub failed: Vec<(String, String)>,
}

impl RootPublisher {
    pub fn new(client: kube::Client, name: &str, ca: CurrentCa) -> RootPublisher {
        RootPublisher {
            client,
            name: name.to_owned(),
            ca,
        }
    }

    /// A round now, then one every `every` or when the CA changes, forever.
    pub async fn run(mut self, every: Duration) {
        loop {
            match self.round().await {
                Ok(round) => {
                    if !round.written.is_empty() {
                        tracing::info!(configmap = %self.name, namespaces = ?round.written, "published the CA roots");
                    }
                    for (namespace, error) in &round.failed {
                        tracing::warn!(configmap = %self.name, %namespace, %error, "publishing the CA roots failed; the next round tries again");
                    }
                }
                Err(error) => {
                    tracing::warn!(configmap = %self.name, %error, "listing namespaces or ConfigMaps failed; the next round tries again");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                Ok(()) = self.ca.changed() => {}
            }
        }
    }

    /// One round: writes the ConfigMap where it is missing or differs.
    pub async fn round(&self) -> Result<Round, kube::Error> {
        let roots = self.ca.borrow().root_pem();
        let managed = ListParams::default().labels(&format!("{MANAGED_BY}={FIELD_MANAGER}"));
        let published: HashMap<String, Option<String>> = Api::<ConfigMap>::all(self.client.clone())
            .list(&managed)
            .await?
            .items
            .into_iter()
            .filter(|configmap| configmap.metadata.name.as_deref() == Some(self.name.as_str()))
            .filter_map(|configmap| {
                let roots = configmap.data.and_then(|mut data| data.remove(ROOT_KEY));
                Some((configmap.metadata.namespace?, roots))
            })
            .collect();
        let namespaces = Api::<Namespace>::all(self.client.clone())
            .list(&ListParams::default())
            .await?;
        let mut round = Round::default();
        for namespace in namespaces.items {
            let terminating = namespace
                .status
                .and_then(|status| status.phase)
                .is_some_and(|phase| phase == "Terminating");
            let Some(name) = namespace.metadata.name else {
                continue;
            };
            if terminating || SKIPPED.contains(&name.as_str()) {
                continue;
            }
            if published.get(&name).and_then(Option::as_deref) == Some(roots.as_str()) {
                round.current += 1;
                continue;
            }
            match self.write(&name, &roots).await {
                Ok(()) => round.written.push(name),
                Err(error) => round.failed.push((name, error.to_string())),
            }
        }
        Ok(round)
    }

    async fn write(&self, namespace: &str, roots: &str) -> Result<(), kube::Error> {
        let configmap = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": namespace,
                "labels": {MANAGED_BY: FIELD_MANAGER},
            },
            "data": {ROOT_KEY: roots},
        });
        Api::<ConfigMap>::namespaced(self.client.clone(), namespace)
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(configmap),
            )
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests;
