//! Keys from a rule's `jwksUri`: the waypoint fetches the JWK Set itself (istiod fetches it
//! for Envoy in Istio), over HTTP or HTTPS (the machine's trusted roots), and keeps it
//! fresh: again every [`REFRESH`], after a failure with a backoff from 1 s to
//! [`MAX_BACKOFF`] (the last good set stays in use), and early, at most once per
//! [`NUDGE_EVERY`], when a token names a key the set does not have (the issuer rotated its
//! keys). One fetcher per URI serves every rule that names it; its task ends once no
//! compiled rule holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use super::Key;

/// How often a fetched set is fetched again (istiod's default,
/// `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`).
pub const REFRESH: Duration = Duration::from_secs(20 * 60);
/// The longest wait between retries of a set that cannot be fetched.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The least time between fetches asked for by tokens naming an unknown key.
pub const NUDGE_EVERY: Duration = Duration::from_secs(60);
/// Istio's default for a rule's `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWK Set the waypoint takes.
const MAX_BODY: usize = 1 << 20;

/// The keys of one `jwksUri`, as last fetched.
pub struct RemoteKeys {
    uri: String,
    keys: RwLock<Option<Arc<[Key]>>>,
    /// Whether the first fetch has ended (with keys or not): requests wait for it rather
    /// than fail while the waypoint starts.
    first_done: watch::Receiver<bool>,
    nudge: Arc<Notify>,
    last_fetch: Mutex<Option<Instant>>,
    timeout: Duration,
    nudge_every: Duration,
}

impl RemoteKeys {
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The keys, once the first fetch has ended (waiting for it up to the rule's timeout);
    /// `None` when none could be fetched.
    pub async fn keys(&self) -> Option<Arc<[Key]>> {
        let mut first_done = self.first_done.clone();
        // A fetch that has not ended by the timeout has failed.
        let _ = tokio::time::timeout(self.timeout, first_done.wait_for(|done| *done)).await;
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A token named a key the set lacks: fetch again, unless a fetch was this recent.
    pub fn nudge(&self) {
        let last = *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= self.nudge_every) {
            self.nudge.notify_one();
        }
    }
}

/// The waypoint's JWKS fetches, one per URI.
pub struct Fetcher {
    sources: Mutex<HashMap<String, Weak<RemoteKeys>>>,
    /// Roots for HTTPS: the machine's, read at the first HTTPS fetch, unless given.
    roots: OnceLock<Result<Arc<RootCertStore>, String>>,
    /// [`NUDGE_EVERY`], shorter in tests.
    nudge_every: Duration,
}

impl Default for Fetcher {
    fn default() -> Fetcher {
        Fetcher {
            sources: Mutex::new(HashMap::new()),
            roots: OnceLock::new(),
            nudge_every: NUDGE_EVERY,
        }
    }
}

impl Fetcher {
    /// A fetcher that trusts `roots` for HTTPS instead of the machine's roots.
    pub fn with_roots(roots: RootCertStore) -> Fetcher {
        let fetcher = Fetcher::default();
        let _ = fetcher.roots.set(Ok(Arc::new(roots)));
        fetcher
    }

    /// The keys of `uri`, shared with every rule that names it; the first call starts their
    /// fetches (on the current tokio runtime).
    pub fn source(self: &Arc<Self>, uri: &str, timeout: Duration) -> Arc<RemoteKeys> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(source) = sources.get(uri).and_then(Weak::upgrade) {
            return source;
        }
        let (done_tx, first_done) = watch::channel(false);
        let source = Arc::new(RemoteKeys {
            uri: uri.to_owned(),
            keys: RwLock::new(None),
            first_done,
            nudge: Arc::new(Notify::new()),
            last_fetch: Mutex::new(None),
            timeout,
            nudge_every: self.nudge_every,
        });
        sources.retain(|_, s| s.strong_count() > 0);
        sources.insert(uri.to_owned(), Arc::downgrade(&source));
        tokio::spawn(keep_fresh(
            self.clone(),
            Arc::downgrade(&source),
            source.nudge.clone(),
            done_tx,
        ));
        source
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, String> {
        self.roots
            .get_or_init(|| {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(format!(
                        "no trusted root certificates on this machine (install the \
                         ca-certificates package, or set SSL_CERT_FILE){}",
                        found
                            .errors
                            .first()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    ));
                }
                Ok(Arc::new(roots))
            })
            .clone()
    }

    /// Fetches and parses the set at `uri`.
    pub async fn fetch(&self, uri: &str, timeout: Duration) -> Result<Vec<Key>, String> {
        let body = tokio::time::timeout(timeout, self.get(uri))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))??;
        let text = std::str::from_utf8(&body).map_err(|_| "the body is not UTF-8".to_owned())?;
        let mut unusable = Vec::new();
        let keys = super::keys(text, &mut |_, message| unusable.push(message));
        if keys.is_empty() {
            return Err(unusable.join("; "));
        }
        for message in unusable {
            tracing::warn!(uri, %message, "JWKS key left out");
        }
        Ok(keys)
    }

    /// The body of a GET for `uri` (HTTP/1.1, one connection).
    async fn get(&self, uri: &str) -> Result<Bytes, String> {
        let parsed: Uri = uri.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("not an http or https URL".into()),
        };
        let host = parsed.host().ok_or("the URL has no host")?;
        let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((bare_host, port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let authority = parsed
            .authority()
            .map_or_else(|| host.to_owned(), |a| a.as_str().to_owned());
        let path = parsed
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let request = Request::get(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "mesh-waypoint")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        if https {
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(self.roots()?)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = rustls::pki_types::ServerName::try_from(bare_host.to_owned())
                .map_err(|e| format!("{host}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            send(tls, request).await
        } else {
            send(tcp, request).await
        }
    }
}

/// Sends `request` on `io` and reads the answer's body; anything but 200 is an error.
async fn send<I>(io: I, request: Request<Empty<Bytes>>) -> Result<Bytes, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|e| format!("reading the body: {e}"))
}

/// Fetches `source`'s keys until no rule holds it any more.
async fn keep_fresh(
    fetcher: Arc<Fetcher>,
    source: Weak<RemoteKeys>,
    nudge: Arc<Notify>,
    first_done: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some((uri, timeout)) = source.upgrade().map(|s| (s.uri.clone(), s.timeout)) else {
            return;
        };
        let fetched = fetcher.fetch(&uri, timeout).await;
        let Some(keys) = source.upgrade() else {
            return;
        };
        *keys.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let wait = match fetched {
            Ok(fetched) => {
                tracing::info!(uri, keys = fetched.len(), "JWKS fetched");
                *keys.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(fetched.into());
                backoff = Duration::from_secs(1);
                REFRESH
            }
            Err(error) => {
                let kept = keys
                    .keys
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some();
                tracing::warn!(
                    uri,
                    %error,
                    retry_in = ?backoff,
                    kept_last_keys = kept,
                    "JWKS fetch failed; tokens needing these keys are refused until it succeeds"
                );
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        first_done.send_replace(true);
        drop(keys);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = nudge.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests;
