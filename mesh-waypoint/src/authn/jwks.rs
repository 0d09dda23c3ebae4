//! JWK Sets: parsed into verification keys (`parse_jwk_set`), and, for a rule that does
//! not carry its keys inline, fetched: the waypoint fetches the JWK Set itself (istiod fetches
//! it for Envoy in Istio) from the rule's `jwksUri`, or, when the rule gives neither, finds
//! it from the issuer by OpenID Connect discovery (`<issuer>/.well-known/openid-configuration`,
//! its `jwks_uri`), over HTTP or HTTPS (the machine's trusted roots). It keeps the set fresh:
//! again every [`REFRESH`], after a failure with a backoff from 1 s to [`MAX_BACKOFF`] (the
//! last good set stays in use meanwhile), and early, at most once per [`NUDGE_EVERY`], when a
//! token names a key the set does not have (the issuer rotated its keys). One fetch task per
//! origin serves every rule that names it; it ends as soon as no compiled rule holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::Warn;

/// How often a fetched set is fetched again (istiod's default,
/// `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`).
pub const REFRESH: Duration = Duration::from_secs(20 * 60);
/// The longest wait between retries of a set that cannot be fetched.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The least time between fetches asked for by tokens naming an unknown key.
pub const NUDGE_EVERY: Duration = Duration::from_secs(60);
/// Istio's default for a rule's `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest document (JWK Set, OpenID configuration) the waypoint takes.
const MAX_BODY: usize = 1 << 20;

/// One verification key of a JWK Set.
pub struct Key {
    pub(super) kid: Option<String>,
    /// The algorithm the JWK names, if it names one.
    pub(super) alg: Option<Algorithm>,
    pub(super) key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.key.family())
            .finish_non_exhaustive()
    }
}

/// The usable keys of a JWK Set; the others are reported.
pub(super) fn parse_jwk_set(jwks: &str, warn: &mut Warn<'_>) -> Vec<Key> {
    let set: JwkSet = match serde_json::from_str(jwks) {
        Ok(set) => set,
        Err(error) => {
            warn(
                ".jwks",
                format!("not a JSON Web Key Set ({error}); the rule's tokens are refused"),
            );
            return Vec::new();
        }
    };
    let mut keys = Vec::new();
    for (k, jwk) in set.keys.iter().enumerate() {
        match decoding_key(jwk) {
            Ok(key) => keys.push(key),
            Err(error) => warn(
                ".jwks",
                format!("keys[{k}] is not usable ({error}); left out"),
            ),
        }
    }
    if keys.is_empty() {
        warn(
            ".jwks",
            "no usable key; the rule's tokens are refused".into(),
        );
    }
    keys
}

fn decoding_key(jwk: &Jwk) -> Result<Key, String> {
    let alg = match jwk.common.key_algorithm {
        Some(alg) => Some(
            alg.to_string()
                .parse::<Algorithm>()
                .map_err(|_| format!("algorithm {alg} is not one for signatures"))?,
        ),
        None => None,
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// Where a rule's keys are found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The rule's `jwksUri`.
    Uri(String),
    /// The rule's issuer, by OpenID Connect discovery.
    Discovery(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Uri(uri) => f.write_str(uri),
            Origin::Discovery(issuer) => write!(f, "{issuer} (OpenID discovery)"),
        }
    }
}

/// The keys of one origin, as last fetched.
pub struct RemoteKeys {
    origin: Origin,
    set: RwLock<Option<Arc<[Key]>>>,
    /// Whether the first fetch has ended (with keys or not): requests wait for it rather
    /// than fail while the waypoint starts. Dropping it (with these keys) ends the task.
    first_done: watch::Receiver<bool>,
    nudge: Arc<Notify>,
    last_fetch: Mutex<Option<Instant>>,
    timeout: Duration,
    nudge_every: Duration,
}

impl RemoteKeys {
    /// The keys, once the first fetch has ended (waiting for it up to the rule's timeout);
    /// `None` when none could be fetched.
    pub async fn keys(&self) -> Option<Arc<[Key]>> {
        let mut first_done = self.first_done.clone();
        // A fetch that has not ended by the timeout has failed.
        let _ = tokio::time::timeout(self.timeout, first_done.wait_for(|done| *done)).await;
        self.current()
    }

    /// The keys fetched so far, without waiting.
    pub fn current(&self) -> Option<Arc<[Key]>> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A token named a key the set lacks: fetch again, unless a fetch was this recent.
    pub fn nudge(&self) {
        let last = *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() >= self.nudge_every) {
            self.nudge.notify_one();
        }
    }
}

/// The waypoint's JWKS fetches, one per origin.
pub struct Fetcher {
    sources: Mutex<HashMap<Origin, Weak<RemoteKeys>>>,
    /// Roots for HTTPS: the machine's, read at the first HTTPS fetch that finds some.
    roots: Mutex<Option<Arc<RootCertStore>>>,
    /// [`NUDGE_EVERY`], shorter in tests.
    nudge_every: Duration,
}

impl Default for Fetcher {
    fn default() -> Fetcher {
        Fetcher {
            sources: Mutex::new(HashMap::new()),
            roots: Mutex::new(None),
            nudge_every: NUDGE_EVERY,
        }
    }
}

impl Fetcher {
    /// The keys of `origin`, shared with every rule that names it; the first call starts
    /// their fetches (on the current tokio runtime).
    pub fn source(self: &Arc<Self>, origin: Origin, timeout: Duration) -> Arc<RemoteKeys> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(source) = sources.get(&origin).and_then(Weak::upgrade) {
            return source;
        }
        let (done_tx, first_done) = watch::channel(false);
        let source = Arc::new(RemoteKeys {
            origin: origin.clone(),
            set: RwLock::new(None),
            first_done,
            nudge: Arc::new(Notify::new()),
            last_fetch: Mutex::new(None),
            timeout,
            nudge_every: self.nudge_every,
        });
        sources.retain(|_, s| s.strong_count() > 0);
        sources.insert(origin, Arc::downgrade(&source));
        tokio::spawn(keep_fresh(
            self.clone(),
            Arc::downgrade(&source),
            source.nudge.clone(),
            done_tx,
        ));
        source
    }

    async fn roots(&self) -> Result<Arc<RootCertStore>, String> {
        if let Some(roots) = &*self.roots.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(roots.clone());
        }
        // Reading the machine's certificate files is blocking work.
        let found = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs)
            .await
            .map_err(|e| e.to_string())?;
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(format!(
                "no trusted root certificates on this machine (install the ca-certificates \
                 package, or set SSL_CERT_FILE){}",
                found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
        let roots = Arc::new(roots);
        *self.roots.lock().unwrap_or_else(|e| e.into_inner()) = Some(roots.clone());
        Ok(roots)
    }

    /// Fetches and parses the set of `origin`, all within `timeout`.
    pub async fn fetch(&self, origin: &Origin, timeout: Duration) -> Result<Vec<Key>, String> {
        let body = tokio::time::timeout(timeout, async {
            let uri = match origin {
                Origin::Uri(uri) => uri.clone(),
                Origin::Discovery(issuer) => self.jwks_uri_of(issuer).await?,
            };
            self.get(&uri).await
        })
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
        let text = std::str::from_utf8(&body).map_err(|_| "the body is not UTF-8".to_owned())?;
        let mut unusable = Vec::new();
        let keys = parse_jwk_set(text, &mut |_, message| unusable.push(message));
        if keys.is_empty() {
            return Err(unusable.join("; "));
        }
        for message in unusable {
            tracing::warn!(%origin, %message, "JWKS key left out");
        }
        Ok(keys)
    }

    /// The `jwks_uri` of an issuer's OpenID configuration.
    async fn jwks_uri_of(&self, issuer: &str) -> Result<String, String> {
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let body = self
            .get(&discovery)
            .await
            .map_err(|e| format!("{discovery}: {e}"))?;
        let config: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("{discovery}: not JSON ({e})"))?;
        config["jwks_uri"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{discovery}: names no jwks_uri"))
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
            .with_root_certificates(self.roots().await?)
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
        let Some((origin, timeout)) = source.upgrade().map(|s| (s.origin.clone(), s.timeout))
        else {
            return;
        };
        let fetched = tokio::select! {
            fetched = fetcher.fetch(&origin, timeout) => fetched,
            () = first_done.closed() => return,
        };
        let Some(keys) = source.upgrade() else {
            return;
        };
        *keys.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let wait = match fetched {
            Ok(fetched) => {
                tracing::info!(%origin, keys = fetched.len(), "JWKS fetched");
                *keys.set.write().unwrap_or_else(|e| e.into_inner()) = Some(fetched.into());
                backoff = Duration::from_secs(1);
                REFRESH
            }
            Err(error) => {
                let kept = keys.current().is_some();
                tracing::warn!(
                    %origin,
                    %error,
                    retry_in = ?backoff,
                    kept_last_keys = kept,
                    "JWKS fetch failed; tokens needing these keys are refused until one succeeds"
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
            () = first_done.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests;
