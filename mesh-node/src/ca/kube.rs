//! The CA's Kubernetes authorizer (`mesh-node ca --authorizer kube`): a caller's bearer
//! credential is a service-account token, proved with a TokenReview for the CA's audience.
//! The node agent's service account may obtain the identities of pods scheduled on the
//! agent's node (the node bound into its token); any other service account only its own.
//!
//! Freshness: every request asks the API server (one TokenReview, then one pod list or
//! get), with no cache, so a pod that has left the node stops granting its identity at
//! once. Certificate requests are rare (one per service account per node per renewal), so
//! the cost is small. The CA's service account needs `create` on `tokenreviews` (the
//! `system:auth-delegator` ClusterRole) and `get`, `list` on `pods`.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use mesh_core::config::Name;
use mesh_core::identity::Identity;
use mesh_core::identity::service::{Authorizer, Refusal};
use serde::Serialize;

/// The audience node agents' and waypoints' projected tokens are made for (Istio's).
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// The node agent DaemonSet's service account.
pub const DEFAULT_NODE_AGENT: &str = "istio-system/mesh-node";

/// Extra fields the API server puts in tokens bound to a pod.
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// Since Kubernetes 1.32 (beta from 1.30): the node of the pod (or node) the token is bound to.
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:";

/// How long one API call may take before the request is answered `Unavailable`.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The Kubernetes authorizer's settings (`mesh-node ca --authorizer kube`).
#[derive(Debug, Clone, Serialize)]
pub struct KubeAuthorizerConfig {
    /// The audience tokens must be bound to.
    pub audience: String,
    /// The node agent's service account.
    pub node_agent: Name,
}

impl Default for KubeAuthorizerConfig {
    fn default() -> Self {
        KubeAuthorizerConfig {
            audience: DEFAULT_AUDIENCE.to_owned(),
            node_agent: parse_service_account(DEFAULT_NODE_AGENT).expect("a valid default"),
        }
    }
}

/// Parses `namespace/name`.
pub fn parse_service_account(text: &str) -> Result<Name, String> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(Name::new(namespace, name))
        }
        _ => Err(format!(
            "{text:?}: a service account is written namespace/name, e.g. {DEFAULT_NODE_AGENT}"
        )),
    }
}

/// Authorizes with the Kubernetes API: TokenReview, then pod placement.
pub struct KubeAuthorizer {
    client: kube::Client,
    config: KubeAuthorizerConfig,
}

/// Whom a reviewed token belongs to.
#[derive(Debug)]
struct Caller {
    account: Name,
    /// The pod the token is bound to (in the account's namespace), and its UID.
    pod: Option<(String, Option<String>)>,
    /// The node the token is bound to.
    node: Option<String>,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service account {}/{}",
            self.account.namespace, self.account.name
        )?;
        if let Some((pod, _)) = &self.pod {
            write!(f, " (pod {}/{pod})", self.account.namespace)?;
        }
        Ok(())
    }
}

impl KubeAuthorizer {
    pub fn new(client: kube::Client, config: KubeAuthorizerConfig) -> KubeAuthorizer {
        KubeAuthorizer { client, config }
    }

    /// Who holds `token`, per a TokenReview for the CA's audience.
    async fn review(&self, token: &str) -> Result<Caller, Refusal> {
        let audience = &self.config.audience;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api_call(
            "creating a TokenReview",
            reviews.create(&PostParams::default(), &review),
        )
        .await?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                // Defensive: the API server's message must not carry the token back out.
                .map(|e| format!(": {}", e.replace(token, "<token>")))
                .unwrap_or_default();
            return Err(Refusal::Unauthenticated(format!(
                "the bearer token is not a valid service-account token for audience {audience}{why}"
            )));
        }
        // Kubernetes asks TokenReview clients to check this: an authenticator that ignores
        // audiences confirms none, and its yes says nothing about ours.
        if !status.audiences.unwrap_or_default().contains(audience) {
            return Err(Refusal::Unauthenticated(format!(
                "the API server did not confirm the token is for audience {audience}"
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, name)) = username
            .strip_prefix(SERVICE_ACCOUNT_USER)
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(Refusal::Denied(format!(
                "user {username:?} is not a service account (system:serviceaccount:<ns>:<sa>)"
            )));
        };
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| {
            extra
                .get(key)
                .and_then(|values| values.first())
                .filter(|value| !value.is_empty())
                .cloned()
        };
        Ok(Caller {
            account: Name::new(namespace, name),
            pod: first(EXTRA_POD_NAME).map(|pod| (pod, first(EXTRA_POD_UID))),
            node: first(EXTRA_NODE_NAME),
        })
    }

    /// The pod the caller's token is bound to, which must still exist (the same pod, by UID).
    async fn bound_pod(
        &self,
        caller: &Caller,
        pod: &str,
        uid: Option<&str>,
    ) -> Result<Pod, Refusal> {
        let namespace = &caller.account.namespace;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let found = api_call("getting the caller's pod", pods.get_opt(pod)).await?;
        let gone = || Refusal::Denied(format!("{caller}: pod {namespace}/{pod} no longer exists"));
        let found = found.ok_or_else(gone)?;
        match uid {
            Some(uid) if found.metadata.uid.as_deref() != Some(uid) => Err(gone()),
            _ => Ok(found),
        }
    }

    /// The node agent's node: bound into its token, else its pod's `spec.nodeName`.
    async fn node_of(&self, caller: &Caller) -> Result<String, Refusal> {
        if let Some(node) = &caller.node {
            return Ok(node.clone());
        }
        let Some((pod, uid)) = &caller.pod else {
            return Err(Refusal::Denied(format!(
                "{caller}: the token is bound to no pod or node, so the agent's node is unknown \
                 (mount a projected service-account token)"
            )));
        };
        self.bound_pod(caller, pod, uid.as_deref())
            .await?
            .spec
            .and_then(|spec| spec.node_name)
            .filter(|node| !node.is_empty())
            .ok_or_else(|| Refusal::Denied(format!("{caller}: the pod is not scheduled on a node")))
    }

    /// A node agent: some pod of `identity`'s service account must be on `node` now.
    async fn check_on_node(
        &self,
        caller: &Caller,
        node: &str,
        identity: &Identity,
    ) -> Result<(), Refusal> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &identity.namespace);
        let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
        let listed = api_call("listing the node's pods", pods.list(&on_node)).await?;
        let scheduled = listed
            .items
            .iter()
            .any(|pod| service_account_of(pod) == identity.service_account);
        if scheduled {
            Ok(())
        } else {
            Err(Refusal::Denied(format!(
                "{caller}, node agent of node {node}: no pod of service account {}/{} is \
                 scheduled on node {node}",
                identity.namespace, identity.service_account
            )))
        }
    }

    /// Any other caller: its own service account only, while its pod (if bound) exists.
    async fn check_own(&self, caller: &Caller, identity: &Identity) -> Result<(), Refusal> {
        if *caller.account.namespace != *identity.namespace
            || *caller.account.name != *identity.service_account
        {
            return Err(Refusal::Denied(format!(
                "{caller} may obtain only its own identity, not that of service account {}/{}",
                identity.namespace, identity.service_account
            )));
        }
        if let Some((pod, uid)) = &caller.pod {
            self.bound_pod(caller, pod, uid.as_deref()).await?;
        }
        Ok(())
    }
}

impl Authorizer for KubeAuthorizer {
    async fn authorize(&self, credential: &str, identity: &Identity) -> Result<(), Refusal> {
        let caller = self.review(credential).await?;
        if caller.account == self.config.node_agent {
            let node = self.node_of(&caller).await?;
            self.check_on_node(&caller, &node, identity).await
        } else {
            self.check_own(&caller, identity).await
        }
    }
}

/// A pod's service account (`default` when unset, as admission fills it in).
fn service_account_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.as_deref())
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default")
}

/// Runs one API call with [`API_TIMEOUT`]; a failure means the CA cannot decide now.
async fn api_call<T>(
    what: &str,
    call: impl Future<Output = kube::Result<T>>,
) -> Result<T, Refusal> {
    match tokio::time::timeout(API_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Refusal::Unavailable(format!(
            "Kubernetes API: {what} failed: {error}"
        ))),
        Err(_) => Err(Refusal::Unavailable(format!(
            "Kubernetes API: {what} got no answer within {API_TIMEOUT:?}"
        ))),
    }
}

#[cfg(test)]
mod tests;
