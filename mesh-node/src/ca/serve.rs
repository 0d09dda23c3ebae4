//! The CA's gRPC endpoint: TLS with a serving certificate the CA signs for itself, made
//! again whenever the CA's signing files change (so it chains to the roots the agents are
//! told to trust, through a root rotation) and at half its life. tonic's own TLS setting
//! holds one certificate for the life of the server, so this module terminates TLS itself
//! (tokio-rustls, with a certificate resolver that answers with the current certificate)
//! and hands tonic the finished connections.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures::Stream;
use mesh_core::identity::CertificateAuthority;
use mesh_core::identity::service::{Authorizer, CaService, CurrentCa, Observer};
use mesh_core::identity::tls;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a serving certificate made from a signing certificate at its end is kept before
/// the next try.
const RETRY_EXPIRED: Duration = Duration::from_secs(60);
/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The CA's serving certificate, current.
pub struct ServingCert {
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
    validity: Duration,
    current: RwLock<Served>,
}

struct Served {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("dns_names", &self.dns_names)
            .field("ips", &self.ips)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// A serving certificate from `ca` naming `dns_names` and `ips`, for `validity` (cut to
    /// the signing certificate's end).
    pub fn new(
        ca: &CertificateAuthority,
        dns_names: &[String],
        ips: &[IpAddr],
        validity: Duration,
    ) -> mesh_core::identity::Result<Arc<ServingCert>> {
        let served = issue(ca, dns_names, ips, validity)?;
        Ok(Arc::new(ServingCert {
            dns_names: dns_names.to_vec(),
            ips: ips.to_vec(),
            validity,
            current: RwLock::new(served),
        }))
    }

    /// Makes a new certificate from `ca`, served from the next handshake on.
    pub fn renew(&self, ca: &CertificateAuthority) -> mesh_core::identity::Result<()> {
        let served = issue(ca, &self.dns_names, &self.ips, self.validity)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = served;
        Ok(())
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .key
            .clone()
    }

    /// [`Self::renew`] once half the certificate's life has passed; `Ok(true)` if it did.
    pub fn renew_if_due(&self, ca: &CertificateAuthority) -> mesh_core::identity::Result<bool> {
        let due = SystemTime::now()
            >= self
                .current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .renew_at;
        if due {
            self.renew(ca)?;
        }
        Ok(due)
    }
}

fn issue(
    ca: &CertificateAuthority,
    dns_names: &[String],
    ips: &[IpAddr],
    validity: Duration,
) -> mesh_core::identity::Result<Served> {
    let now = SystemTime::now();
    let key = ca.serving_certificate(dns_names, ips, validity)?;
    let ends = (now + validity).min(ca.signer_not_after());
    let life = ends.duration_since(now).unwrap_or_default();
    Ok(Served {
        key,
        renew_at: now + renewal_wait(life, validity),
    })
}

/// How long a serving certificate with `life` left (of `validity` asked) is kept: half its
/// life. A signing certificate at its end leaves no life to halve: then a minute (or half
/// the validity asked, if shorter), not every poll.
pub(crate) fn renewal_wait(life: Duration, validity: Duration) -> Duration {
    (life / 2).max(RETRY_EXPIRED.min(validity / 2))
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Serves the CA (`ca`, current; `authorizer` decides who gets what; `observer` hears how
/// each request ended) on `listener` with TLS presenting `serving`, until `stop` completes.
pub async fn serve<A: Authorizer>(
    listener: TcpListener,
    serving: Arc<ServingCert>,
    ca: CurrentCa,
    authorizer: A,
    max_validity: Duration,
    observer: Observer,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let config = tls::ca_server_config(serving).map_err(ServeError::Tls)?;
    let incoming = tls_incoming(listener, TlsAcceptor::from(Arc::new(config)));
    tonic::transport::Server::builder()
        .add_service(
            CaService::new(ca, authorizer, max_validity)
                .observed_by(observer)
                .into_server(),
        )
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .map_err(ServeError::Grpc)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("setting up TLS: {0}")]
    Tls(mesh_core::identity::Error),
    #[error("serving gRPC: {0}")]
    Grpc(tonic::transport::Error),
}

/// The connections accepted on `listener` once their TLS handshake is done; each handshake
/// runs on its own task, so a slow client holds up no one else.
fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let (done, handshaken) = mpsc::channel(64);
    tokio::spawn(accept(listener, acceptor, done));
    futures::stream::unfold(handshaken, |mut handshaken| async move {
        let stream = handshaken.recv().await?;
        Some((Ok(stream), handshaken))
    })
}

/// Accepts connections until the server stops taking them.
async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    done: mpsc::Sender<TlsStream<TcpStream>>,
) {
    loop {
        let (stream, peer): (TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%error, "the CA could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = done.closed() => return,
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, done) = (acceptor.clone(), done.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = done.send(stream).await;
                }
                // Probes (the Deployment's TCP readiness check) open and close without TLS.
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake with a CA client failed")
                }
                Err(_) => tracing::debug!(%peer, "a CA client's TLS handshake timed out"),
            }
        });
    }
}
