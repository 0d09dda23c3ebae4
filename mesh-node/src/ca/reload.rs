//! Following the CA's plug-in files (`--ca-dir`; in Kubernetes the mounted `cacerts`
//! Secret), so a new intermediate or a root rotation takes effect without restarting the CA:
//! within a poll or two of the files changing, the CA signs with the new ones, writes the
//! new roots to `--root-cert-out` (and its publisher to the ConfigMaps), and serves a new
//! certificate of its own from the new chain.
//!
//! A change is loaded once the files have held still for one poll (kubelet swaps a Secret's
//! files all at once; a hand edit writes them one by one). Files that do not load, for
//! whatever [`CertificateAuthority::from_dir`] finds, are reported once and the CA keeps
//! signing with what it had: nothing already serving is disturbed by a bad Secret.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::identity::CertificateAuthority;
use mesh_core::identity::ca::files::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
use mesh_core::stamp::FileStamp;
use tokio::sync::watch;

use super::serve::ServingCert;

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

type Stamps = [Option<FileStamp>; 4];

/// The plug-in files in one folder, and which version of them the CA signs with.
pub struct CaFiles {
    trust_domain: String,
    dir: PathBuf,
    /// The version last loaded (or found bad).
    loaded: Stamps,
    /// The version the last poll saw.
    seen: Stamps,
}

impl CaFiles {
    pub fn new(trust_domain: &str, dir: &Path) -> CaFiles {
        CaFiles {
            trust_domain: trust_domain.to_owned(),
            dir: dir.to_owned(),
            loaded: [None; 4],
            seen: [None; 4],
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the files as they are now.
    pub fn load(&mut self) -> mesh_core::identity::Result<CertificateAuthority> {
        self.loaded = self.stamps();
        self.seen = self.loaded;
        CertificateAuthority::from_dir(&self.trust_domain, &self.dir)
    }

    /// The CA of the files, if they changed since last loaded and have not changed since the
    /// previous poll; `Some(Err)` once per version that does not load.
    pub fn poll(&mut self) -> Option<mesh_core::identity::Result<CertificateAuthority>> {
        let now = self.stamps();
        let still = now == self.seen;
        self.seen = now;
        if now == self.loaded || !still {
            return None;
        }
        self.loaded = now;
        Some(CertificateAuthority::from_dir(
            &self.trust_domain,
            &self.dir,
        ))
    }

    fn stamps(&self) -> Stamps {
        [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN].map(|name| FileStamp::of(&self.dir.join(name)))
    }
}

/// Every `every`: loads changed CA files (if the CA has any) into `ca`, writes their roots to
/// `root_out` and renews `serving` from them; renews `serving` at half its life. Runs until
/// every receiver of `ca` is gone.
pub async fn follow(
    mut files: Option<CaFiles>,
    ca: watch::Sender<Arc<CertificateAuthority>>,
    serving: Arc<ServingCert>,
    root_out: PathBuf,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !ca.is_closed() {
        tick.tick().await;
        if let Some(files) = &mut files {
            match files.poll() {
                None => {}
                Some(Ok(next)) => {
                    tracing::info!(
                        dir = %files.dir().display(),
                        signer = %next.signer_subject(),
                        roots = next.root_count(),
                        "the CA files changed: signing with them from now on"
                    );
                    if let Err(error) = super::write_atomically(&root_out, &next.root_pem()) {
                        tracing::error!(%error, "the new roots were not written; agents reading the file keep the old ones");
                    }
                    if let Err(error) = serving.renew(&next) {
                        tracing::error!(%error, "the CA's serving certificate was not renewed from the new CA files");
                    }
                    ca.send_replace(Arc::new(next));
                }
                Some(Err(error)) => tracing::error!(
                    %error,
                    "the CA files changed but do not load; still signing with the ones loaded before"
                ),
            }
        }
        let current = ca.borrow().clone();
        match serving.renew_if_due(&current) {
            Ok(true) => tracing::info!("renewed the CA's serving certificate at half its life"),
            Ok(false) => {}
            Err(error) => tracing::error!(%error, "the CA's serving certificate was not renewed"),
        }
    }
}

#[cfg(test)]
mod tests;
