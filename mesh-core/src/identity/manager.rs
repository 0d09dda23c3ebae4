//! Workload certificates held by a proxy: one per identity it serves (a node agent: the
//! service accounts of its enrolled pods; a waypoint: its own), obtained from the mesh CA
//! with the proxy's credential, kept in memory only, and renewed at
//! half their life (new connections use the new one; open ones keep theirs). Also the TLS
//! server side's certificate choice: the SNI a client sends names the identity to present.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::identity::roots::Roots;
use crate::identity::service::{CaAddress, CaClient, ca_client, request_certificate};
use crate::identity::tls::{certified_key, server_name};
use crate::identity::workload::CaCertSummary;
use crate::identity::{Identity, WorkloadCertificate};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;

/// How long a certificate request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The renewal loop looks at least this often.
const TICK: Duration = Duration::from_secs(1);
/// After a failed request, wait this long before the next try (doubling up to the tick).
const RETRY: Duration = Duration::from_millis(100);

/// Where the node's certificates come from.
#[derive(Clone, Serialize)]
pub struct CaClientConfig {
    pub addr: CaAddress,
    /// The CA's root certificate (PEM): the mesh's trust anchor.
    pub root: PathBuf,
    /// The file holding this node's credential for the CA.
    pub credential_file: PathBuf,
    pub trust_domain: String,
    /// The lifetime to ask for (the CA may grant less).
    pub validity: Duration,
}

impl fmt::Debug for CaClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaClientConfig")
            .field("addr", &self.addr)
            .field("root", &self.root)
            .field("credential_file", &self.credential_file)
            .field("trust_domain", &self.trust_domain)
            .field("validity", &self.validity)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Root(String),
    #[error("connecting to the CA at {addr}: {source}")]
    Channel {
        addr: CaAddress,
        source: tonic::transport::Error,
    },
    #[error("the CA refused a certificate for {identity}: {status}")]
    Refused {
        identity: Identity,
        status: Box<tonic::Status>,
    },
    #[error("no certificate for {0} yet (the CA has not answered)")]
    NotYet(Identity),
    #[error("the certificate for {identity} is unusable: {source}")]
    Unusable {
        identity: Identity,
        source: Box<crate::identity::Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A certificate ready for TLS, both ways.
pub struct Issued {
    pub cert: WorkloadCertificate,
    /// The same chain and key, as a server presents them.
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.cert.fmt(f)
    }
}

/// What the admin page shows of one certificate (never the key).
#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    pub identity: String,
    pub not_before_unix: u64,
    pub not_after_unix: u64,
    pub refresh_at_unix: u64,
    /// How many certificates this identity has had since the agent started.
    pub issued: u64,
    /// The CA certificates it chains through, as presented: intermediates, root last.
    pub chain: Vec<CaCertSummary>,
}

struct Slot {
    current: Option<Arc<Issued>>,
    issued: u64,
    /// No new attempt before this (after a failure).
    next_try: SystemTime,
    failures: u32,
}

/// The node's certificates, by identity, and the channel to the CA.
pub struct CertManager {
    /// Made again when the roots change (the CA's serving certificate chains to them).
    client: RwLock<CaClient>,
    credential: String,
    config: CaClientConfig,
    roots: Arc<Roots>,
    slots: Mutex<HashMap<Identity, Slot>>,
    /// SNI → server certificate, for the inbound listener.
    by_sni: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// Wakes the renewal loop when the wanted set changes.
    wake: tokio::sync::Notify,
    /// Bumped whenever the certificates held change, for those waiting on one.
    changed: tokio::sync::watch::Sender<u64>,
}

impl CertManager {
    /// Reads the root and the credential and prepares the CA channel (connected lazily).
    pub fn new(config: CaClientConfig) -> Result<CertManager> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })
        };
        let roots = Arc::new(Roots::load(&config.root).map_err(Error::Root)?);
        let credential = read(&config.credential_file)?.trim().to_owned();
        let client = ca_client(&config.addr, &roots.pem(), REQUEST_TIMEOUT).map_err(|source| {
            Error::Channel {
                addr: config.addr.clone(),
                source,
            }
        })?;
        Ok(CertManager {
            client: RwLock::new(client),
            credential,
            config,
            roots,
            slots: Mutex::new(HashMap::new()),
            by_sni: RwLock::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            changed: tokio::sync::watch::Sender::new(0),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.config.trust_domain
    }

    /// The mesh's trust anchors (following the root file).
    pub fn roots(&self) -> &Arc<Roots> {
        &self.roots
    }

    /// Reads the root file again if it changed; new handshakes, the pools' and the CA
    /// channel's, check against what it holds now.
    fn reload_roots(&self) {
        match self.roots.reload_if_changed() {
            Ok(false) => {}
            Ok(true) => {
                match ca_client(&self.config.addr, &self.roots.pem(), REQUEST_TIMEOUT) {
                    Ok(client) => *self.client.write().unwrap_or_else(|e| e.into_inner()) = client,
                    Err(error) => {
                        tracing::warn!(%error, "the CA channel keeps the roots it had");
                    }
                }
                tracing::info!(
                    path = %self.roots.path().display(),
                    roots = ?self.roots.status(),
                    "CA root file changed: new handshakes check against these roots"
                );
            }
            Err(message) => {
                tracing::warn!(%message, "CA root file changed but is unusable; the roots in use stay");
            }
        }
    }

    /// The identity of a pod's service account in this trust domain.
    pub fn identity_of(&self, namespace: &str, service_account: &str) -> Identity {
        Identity::new(&self.config.trust_domain, namespace, service_account)
    }

    /// Sets the identities the node needs (its enrolled pods' service accounts): new ones
    /// are requested at once, ones no longer needed are forgotten (open connections keep
    /// the certificate they hold).
    pub fn set_wanted(&self, wanted: &BTreeSet<Identity>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let before = slots.len();
        slots.retain(|identity, _| wanted.contains(identity));
        let removed = before != slots.len();
        let mut added = false;
        for identity in wanted {
            slots.entry(identity.clone()).or_insert_with(|| {
                added = true;
                Slot {
                    current: None,
                    issued: 0,
                    next_try: SystemTime::UNIX_EPOCH,
                    failures: 0,
                }
            });
        }
        drop(slots);
        if removed {
            self.publish_sni();
        }
        if added {
            self.wake.notify_one();
        }
    }

    /// The current certificate of an identity the node holds.
    pub fn get(&self, identity: &Identity) -> Result<Arc<Issued>> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .get(identity)
            .and_then(|s| s.current.clone())
            .filter(|issued| issued.cert.not_after > SystemTime::now())
            .ok_or_else(|| Error::NotYet(identity.clone()))
    }

    /// The current certificate, waiting up to `wait` for the CA's first answer.
    pub async fn wait_for(&self, identity: &Identity, wait: Duration) -> Result<Arc<Issued>> {
        self.wait_until(wait, || self.get(identity).is_ok()).await;
        self.get(identity)
    }

    /// Whether a certificate answers to the TLS server name `sni`, waiting up to `wait` for
    /// one of a wanted identity to arrive.
    pub async fn wait_for_server_name(&self, sni: &str, wait: Duration) -> bool {
        self.wait_until(wait, || {
            self.by_sni
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(sni)
        })
        .await
    }

    /// Waits until `ready` holds, re-checking whenever the certificates change, for at most
    /// `wait`; returns whether it holds.
    async fn wait_until(&self, wait: Duration, ready: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribed before the first check, so no change between check and wait is missed.
        let mut changes = self.changed.subscribe();
        while !ready() {
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return ready();
            }
        }
        true
    }

    /// Every certificate held, for the admin page.
    pub fn status(&self) -> Vec<CertStatus> {
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut status: Vec<CertStatus> = slots
            .iter()
            .filter_map(|(identity, slot)| {
                let issued = slot.current.as_ref()?;
                Some(CertStatus {
                    identity: identity.to_string(),
                    not_before_unix: unix(issued.cert.not_before),
                    not_after_unix: unix(issued.cert.not_after),
                    refresh_at_unix: unix(issued.cert.refresh_at()),
                    issued: slot.issued,
                    chain: (issued.cert.chain.iter().skip(1))
                        .filter_map(|der| CaCertSummary::of(der))
                        .collect(),
                })
            })
            .collect();
        status.sort_by(|a, b| a.identity.cmp(&b.identity));
        status
    }

    /// Wanted identities the CA has not answered yet: no certificate, and no failed request
    /// either (a refusal or an unreachable CA counts as an answer).
    pub fn unanswered(&self) -> Vec<Identity> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut waiting: Vec<Identity> = slots
            .iter()
            .filter(|(_, s)| s.current.is_none() && s.failures == 0)
            .map(|(identity, _)| identity.clone())
            .collect();
        waiting.sort();
        waiting
    }

    /// Requests missing certificates and renews those past half their life, forever.
    pub async fn renew_forever(self: Arc<Self>) {
        loop {
            self.reload_roots();
            let now = SystemTime::now();
            let due: Vec<Identity> = {
                let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                slots
                    .iter()
                    .filter(|(_, s)| {
                        s.next_try <= now
                            && s.current
                                .as_ref()
                                .is_none_or(|c| c.cert.refresh_at() <= now)
                    })
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            let requests = due.into_iter().map(|identity| {
                let this = self.clone();
                async move {
                    let result = this.request(&identity).await;
                    this.store(identity, result);
                }
            });
            futures::future::join_all(requests).await;
            let sleep = self.next_wake();
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// How long until something is due (at most [`TICK`]).
    fn next_wake(&self) -> Duration {
        let now = SystemTime::now();
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .map(|s| {
                let due = s
                    .current
                    .as_ref()
                    .map_or(s.next_try, |c| c.cert.refresh_at().max(s.next_try));
                due.duration_since(now).unwrap_or(Duration::ZERO)
            })
            .min()
            .unwrap_or(TICK)
            .min(TICK)
            .max(Duration::from_millis(5))
    }

    async fn request(&self, identity: &Identity) -> Result<Issued> {
        let mut client = self
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Read again each time: a projected service-account token is rotated by the kubelet
        // (an hour by default); the one read at start stands in if the file is unreadable.
        let credential = std::fs::read_to_string(&self.config.credential_file)
            .map(|c| c.trim().to_owned())
            .ok()
            .filter(|c| !c.is_empty());
        let cert = request_certificate(
            &mut client,
            credential.as_deref().unwrap_or(&self.credential),
            identity,
            self.config.validity,
        )
        .await
        .map_err(|status| Error::Refused {
            identity: identity.clone(),
            status: Box::new(status),
        })?;
        let key = certified_key(&cert).map_err(|source| Error::Unusable {
            identity: identity.clone(),
            source: Box::new(source),
        })?;
        Ok(Issued { cert, key })
    }

    fn store(&self, identity: Identity, result: Result<Issued>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = slots.get_mut(&identity) else {
            return; // no longer wanted
        };
        match result {
            Ok(issued) => {
                tracing::info!(%identity, not_after = ?issued.cert.not_after, renewal = slot.issued > 0, "workload certificate issued");
                slot.current = Some(Arc::new(issued));
                slot.issued += 1;
                slot.failures = 0;
                slot.next_try = SystemTime::UNIX_EPOCH;
            }
            Err(error) => {
                slot.failures += 1;
                let backoff = RETRY
                    .saturating_mul(1 << slot.failures.min(4))
                    .min(TICK * 5);
                slot.next_try = SystemTime::now() + backoff;
                tracing::warn!(%identity, %error, ?backoff, "certificate request failed; will retry");
            }
        }
        drop(slots);
        self.publish_sni();
    }

    /// Rebuilds the SNI map from the current certificates.
    fn publish_sni(&self) {
        let map: HashMap<String, Arc<CertifiedKey>> = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .iter()
                .filter_map(|(identity, slot)| {
                    let name = server_name(identity).ok()?.to_str().into_owned();
                    Some((name, slot.current.as_ref()?.key.clone()))
                })
                .collect()
        };
        *self.by_sni.write().unwrap_or_else(|e| e.into_inner()) = map;
        self.changed.send_modify(|generation| *generation += 1);
    }
}

impl fmt::Debug for CertManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertManager")
            .field("config", &self.config)
            .field("credential", &"<redacted>")
            .finish()
    }
}

/// The inbound listener's certificate choice: the one whose identity the client's SNI names.
#[derive(Debug)]
pub struct SniResolver(pub Arc<CertManager>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        let map = self.0.by_sni.read().unwrap_or_else(|e| e.into_inner());
        let found = map.get(name).cloned();
        if found.is_none() {
            tracing::debug!(sni = name, "no local identity for this server name");
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_identity_is_unanswered_until_the_ca_issues_or_fails() {
        let dir = std::env::temp_dir().join(format!("mesh-cert-manager-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = crate::identity::ca::CertificateAuthority::new("cluster.local").unwrap();
        std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
        std::fs::write(dir.join("credential"), "node credential").unwrap();
        // Nothing listens on the discard port: every request fails at once.
        let certs = Arc::new(
            CertManager::new(CaClientConfig {
                addr: "127.0.0.1:9".parse().unwrap(),
                root: dir.join("root.pem"),
                credential_file: dir.join("credential"),
                trust_domain: "cluster.local".to_owned(),
                validity: Duration::from_secs(3600),
            })
            .unwrap(),
        );
        let identity = certs.identity_of("default", "curl");
        assert!(certs.unanswered().is_empty(), "nothing wanted yet");
        certs.set_wanted(&BTreeSet::from([identity.clone()]));
        assert_eq!(certs.unanswered(), vec![identity.clone()]);

        let renew = tokio::spawn(certs.clone().renew_forever());
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            while !certs.unanswered().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        renew.abort();
        std::fs::remove_dir_all(&dir).unwrap();
        answered.expect("the failed request counts as the CA's answer");
        assert!(certs.get(&identity).is_err(), "no certificate was issued");
    }
}
