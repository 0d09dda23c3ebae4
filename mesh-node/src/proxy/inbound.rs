//! The inbound side: HBONE on 15008 (mutual TLS; the certificate presented is the one of the
//! identity the client's SNI names, or, without SNI — Istio's form, dialing `<pod ip>:15008`,
//! which the eBPF inbound program steers here — that pod's own), then for each tunnel the admission checks — the
//! destination is a mesh pod on this node, and its AuthorizationPolicies allow the client —
//! then a plain connection to the pod. Same-node connections take the same checks
//! in-process ([`admit`]), without TLS.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use mesh_core::config::{Model, PodInfo};
use mesh_core::hbone::{self, Inbound};
use mesh_core::identity::Identity;
use mesh_core::identity::tls::{server_config_for_key, server_config_verifying};
use mesh_core::policy;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use super::{Proxy, accept_forever, connect_tcp};
use crate::metrics::TcpLabels;
use mesh_core::identity::manager::SniResolver;

/// How long a handshake waits for a certificate the node is about to receive.
const CERT_WAIT: Duration = Duration::from_secs(5);

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The address is not a mesh pod on this node.
    NotHere(String),
    /// Policy said no.
    Denied(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::NotHere(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Denied(_) => StatusCode::UNAUTHORIZED,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotHere(why) | Refusal::Denied(why) => f.write_str(why),
        }
    }
}

/// Serves HBONE until the task is dropped.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    let config = match server_config_verifying(
        Arc::new(SniResolver(proxy.certs.clone())),
        proxy.certs.roots().client_verifier(),
    ) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "the HBONE listener cannot be configured");
            return;
        }
    };
    let config = Arc::new(config);
    accept_forever(listener, "HBONE", |tcp, peer| {
        let proxy = proxy.clone();
        let config = config.clone();
        async move {
            if let Err(error) = connection(proxy, config, tcp, peer).await {
                tracing::debug!(%peer, %error, "HBONE connection ended with an error");
            }
        }
    })
    .await;
}

/// One HBONE connection: the certificate the ClientHello asks for, the handshake (within
/// [`hbone::HANDSHAKE_TIMEOUT`] of the connect), then its tunnels.
async fn connection(
    proxy: Arc<Proxy>,
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<(), String> {
    let tls = tokio::time::timeout(
        hbone::HANDSHAKE_TIMEOUT,
        handshake(&proxy, config, tcp, peer),
    )
    .await
    .map_err(|_| format!("no TLS handshake within {:?}", hbone::HANDSHAKE_TIMEOUT))??;
    let handler = move |inbound: Inbound| {
        let proxy = proxy.clone();
        async move { tunnel(&proxy, inbound).await }
    };
    hbone::serve_tls(tls, peer, handler)
        .await
        .map_err(|e| e.to_string())
}

/// The TLS handshake of an HBONE connection, with the certificate its ClientHello asks for.
async fn handshake(
    proxy: &Arc<Proxy>,
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    let _ = tcp.set_nodelay(true);
    if let Err(error) = hbone::watch_peer(&tcp) {
        tracing::debug!(%peer, %error, "HBONE socket options");
    }
    let local = tcp.local_addr();
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
        .await
        .map_err(|e| format!("reading the ClientHello: {e}"))?;
    // A client may ask for an identity whose certificate is on its way (a pod just scheduled
    // here): wait for it rather than fail the handshake.
    let sni = start.client_hello().server_name().map(str::to_owned);
    let config = match &sni {
        Some(sni) => {
            if !proxy.certs.wait_for_server_name(sni, CERT_WAIT).await {
                tracing::debug!(%peer, sni, "no certificate for this server name");
            }
            config
        }
        // No SNI: Istio's form, the client dialed the pod's own address (captured here by
        // the eBPF inbound program): present that pod's identity.
        None => {
            let local = local.map_err(|e| format!("local address: {e}"))?;
            pod_config(proxy, local.ip()).await?
        }
    };
    start
        .into_stream(config)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// The TLS server config for a connection that dialed `ip` (a pod of this node in the mesh)
/// without SNI: the pod's own certificate.
async fn pod_config(proxy: &Proxy, ip: IpAddr) -> Result<Arc<rustls::ServerConfig>, String> {
    let model = proxy.model();
    let pod = proxy
        .local_mesh_pod(&model, ip)
        .ok_or_else(|| format!("HBONE without SNI to {ip}, which is no mesh pod of this node"))?;
    let identity = proxy.identity_of(&pod);
    let issued = proxy
        .certs
        .wait_for(&identity, CERT_WAIT)
        .await
        .map_err(|e| format!("no certificate for {identity}: {e}"))?;
    server_config_for_key(issued.key.clone(), &proxy.certs.roots().certs())
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// One tunnel: admit it, connect to the pod, and count the connection when it ends.
async fn tunnel(proxy: &Proxy, inbound: Inbound) -> Result<Counted<TcpStream>, StatusCode> {
    let model = proxy.model();
    let source_ip = inbound.vouched_source(&model).unwrap_or(inbound.peer.ip());
    let pod = admit(
        proxy,
        &model,
        Some(&inbound.peer_identity),
        source_ip,
        inbound.destination,
    )
    .map_err(|refusal| {
        tracing::info!(peer = %inbound.peer_identity, destination = %inbound.destination, %refusal, "inbound tunnel refused");
        refusal.status()
    })?;
    let source_pod = model.pod_by_ip(source_ip);
    let labels = TcpLabels::new(
        "destination",
        (source_pod.map(|p| &**p), Some(&inbound.peer_identity)),
        Some((&pod, &proxy.identity_of(&pod))),
        None,
        true,
    );
    let upstream = connect_tcp(inbound.destination).await.map_err(|error| {
        tracing::debug!(destination = %inbound.destination, %error, "the pod refused");
        StatusCode::SERVICE_UNAVAILABLE
    })?;
    Ok(Counted::new(upstream, proxy.metrics.clone(), labels))
}

/// The admission checks for a connection from `source` (a verified identity, or `None` for
/// plaintext) at `source_ip` to `destination`: the pod behind it, or why not.
pub fn admit(
    proxy: &Proxy,
    model: &Model,
    source: Option<&Identity>,
    source_ip: IpAddr,
    destination: SocketAddr,
) -> Result<Arc<PodInfo>, Refusal> {
    let pod = model
        .pod_by_ip(destination.ip())
        .filter(|p| p.node.as_deref() == Some(proxy.node.as_str()))
        .ok_or_else(|| Refusal::NotHere(format!("{destination} is not a pod on this node")))?;
    if !model.in_mesh(pod) {
        return Err(Refusal::NotHere(format!(
            "pod {}/{} is not in the mesh",
            pod.name.namespace, pod.name.name
        )));
    }
    let policies = model.authorization_policies_for(pod);
    let connection = policy::Connection {
        source_identity: source,
        source_ip,
        destination_ip: destination.ip(),
        destination_port: destination.port(),
        destination_namespace: Some(&pod.name.namespace),
        request: None,
    };
    let decision = policy::authorize(&policies, &connection);
    for warning in &decision.warnings {
        tracing::debug!(%warning, "authorization");
    }
    if !decision.is_allowed() {
        proxy.metrics.denied();
        return Err(Refusal::Denied(format!(
            "{} → {}/{}:{}: {}",
            source.map_or_else(|| source_ip.to_string(), ToString::to_string),
            pod.name.namespace,
            pod.name.name,
            destination.port(),
            decision.verdict
        )));
    }
    Ok(pod.clone())
}

/// A stream that counts its bytes and reports the connection's metrics when dropped: opened
/// at creation, closed with bytes read (sent to the client) and written (received from it).
pub struct Counted<S> {
    inner: S,
    read: u64,
    written: u64,
    metrics: Arc<crate::metrics::Metrics>,
    labels: TcpLabels,
}

impl<S> Counted<S> {
    pub fn new(inner: S, metrics: Arc<crate::metrics::Metrics>, labels: TcpLabels) -> Counted<S> {
        metrics.opened(&labels);
        Counted {
            inner,
            read: 0,
            written: 0,
            metrics,
            labels,
        }
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.metrics.closed(&self.labels, self.written, self.read);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &poll {
            self.written += *n as u64;
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
