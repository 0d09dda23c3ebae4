//! HBONE, Istio's tunnel: HTTP/2 `CONNECT` to port 15008 over mutual TLS, `:authority` the
//! destination `ip:port`, one TLS connection carrying many tunnels. The server side hands
//! each tunnel, with the client's verified identity, to a handler that decides where it
//! goes; the client side opens tunnels over a connection it keeps.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::identity::{Identity, tls::peer_identity};

pub mod pool;
mod tunnel;

pub use tunnel::Tunnel;

/// The port HBONE listens on.
pub const PORT: u16 = 15008;
/// HTTP/2 windows: large, so one tunnel can fill a fast link (the defaults are 64 KiB).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// The largest HTTP/2 frame each side accepts (the default is 16 KiB): a bulk transfer's
/// large writes go out as a few large DATA frames, not many small ones.
const MAX_FRAME: u32 = 1024 * 1024;
/// What one tunnel may have written and not yet sent (hyper's default for HTTP/2).
const SEND_BUFFER: usize = 1024 * 1024;
/// Tunnels one connection may carry at once; a client past it waits for a stream to end.
const MAX_STREAMS: u32 = 2048;
/// The largest header block a peer may send (hyper's default): a `CONNECT` needs far less.
const MAX_HEADERS: u32 = 16 * 1024;
/// The CONNECT header naming the original client's address (`for=<ip>`), as Istio's
/// ztunnel sends it: the TLS peer is the client's node proxy, not the workload.
const FORWARDED: &str = "forwarded";

/// How long a client of the HBONE listener has for each step of setting up its connection:
/// the TLS handshake (from its TCP connect, ClientHello included), then the HTTP/2 preface.
/// A client that stays silent is closed then, so idle connects cannot pile up on a listener
/// and hold its file descriptors.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an HBONE connection may stay quiet before TCP asks the peer whether it is still
/// there (keepalive probes, every [`KEEPALIVE_INTERVAL`] after that).
pub const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// The time between keepalive probes.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long sent data (or keepalive probes) may stay unacknowledged before the connection
/// is given up (`TCP_USER_TIMEOUT`): a peer node that vanished under open tunnels fails them
/// within this, rather than after TCP's retransmissions (about 15 minutes).
pub const USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Makes an HBONE connection's socket notice a peer that is gone: keepalive probes once it
/// has been quiet for [`KEEPALIVE_IDLE`], and [`USER_TIMEOUT`] for unacknowledged data.
/// Either end calls it on its socket.
pub fn watch_peer(tcp: &TcpStream) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(3),
    )?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

/// How long a tunnel's CONNECT waits for the server's answer. The server answers once it
/// has connected to the pod (at most 10 s, see the node proxy's connect timeout), so a
/// server that says nothing for longer is gone; the client is failed rather than left
/// hanging.
pub const TUNNEL_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TLS handshake with {peer}: {source}")]
    Handshake {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {peer} has no usable identity: {message}")]
    Identity { peer: SocketAddr, message: String },
    #[error("HTTP/2: {0}")]
    Http(#[from] h2::Error),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the tunnel to {authority} was refused with {status}")]
    Refused {
        authority: SocketAddr,
        status: StatusCode,
    },
    #[error("{peer} did not finish {stage} within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout {
        peer: SocketAddr,
        stage: &'static str,
    },
    #[error("the tunnel to {authority} had no answer within {TUNNEL_ANSWER_TIMEOUT:?}")]
    NoAnswer { authority: SocketAddr },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One tunnel request the server accepted, for the handler to route.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The client's verified SPIFFE identity.
    pub peer_identity: Identity,
    pub peer: SocketAddr,
    /// Where the client wants to go (`:authority`).
    pub destination: SocketAddr,
    /// The original client's address, from the `Forwarded: for=` header, if sent. Claimed
    /// by the peer, not verified: [`Inbound::vouched_source`] is what to act on.
    pub forwarded_for: Option<std::net::IpAddr>,
}

impl Inbound {
    /// The original client's address, when the peer's own identity vouches for it: the
    /// `Forwarded: for=` address is a pod of `model` running as the identity the peer's
    /// certificate proved (a node proxy presents its source workload's certificate). Any
    /// other claim is ignored: a holder of one mesh certificate must not pass for another
    /// workload's address (`ipBlocks`, the source labels of metrics). A waypoint, which
    /// speaks for many clients with one identity of its own, is seen as itself, as Istio's
    /// node proxy sees it.
    pub fn vouched_source(&self, model: &crate::config::model::Model) -> Option<std::net::IpAddr> {
        let ip = self.forwarded_for?;
        let pod = model.pod_by_ip(ip)?;
        (*pod.name.namespace == *self.peer_identity.namespace
            && *pod.service_account == *self.peer_identity.service_account)
            .then_some(ip)
    }
}

/// Serves HBONE on one accepted TCP connection: TLS (the acceptor requires client
/// certificates), then HTTP/2; each CONNECT is given to `handler`, which returns the
/// upstream to splice to, or the status to refuse with.
pub async fn serve_connection<H, F, U>(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    handler: H,
) -> Result<()>
where
    H: Fn(Inbound) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<U, StatusCode>> + Send + 'static,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tls = accept_tls(&acceptor, tcp, peer).await?;
    serve_tls(tls, peer, handler).await
}

/// The server side of an accepted HBONE connection up to its TLS: the socket set up (no
/// delay, [`watch_peer`]) and the handshake, within [`HANDSHAKE_TIMEOUT`].
pub async fn accept_tls(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let _ = tcp.set_nodelay(true);
    if let Err(error) = watch_peer(&tcp) {
        tracing::debug!(%peer, %error, "HBONE socket options");
    }
    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| Error::HandshakeTimeout {
            peer,
            stage: "its TLS handshake",
        })?
        .map_err(|source| Error::Handshake { peer, source })
}

/// Serves HBONE on a connection whose TLS handshake (with a client certificate) is done:
/// for servers that choose their certificate after reading the ClientHello.
pub async fn serve_tls<H, F, U>(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    handler: H,
) -> Result<()>
where
    H: Fn(Inbound) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<U, StatusCode>> + Send + 'static,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    serve_tunnels(tls, peer, move |inbound: Inbound| {
        let upstream = handler(inbound.clone());
        async move {
            let mut upstream = upstream.await?;
            Ok(move |mut tunnel: Tunnel| async move {
                if let Err(error) = crate::copy::with_tunnel(&mut tunnel, &mut upstream).await
                {
                    tracing::debug!(destination = %inbound.destination, %error, "tunnel ended with an error");
                }
            })
        }
    })
    .await
}

/// Serves HBONE like [`serve_tls`], for servers that use each tunnel themselves (a waypoint
/// runs HTTP on it): the handler answers with what to do once the tunnel is open, or the
/// status to refuse with. Each tunnel runs on a task of its own, from the handler's decision
/// to the tunnel's end.
pub async fn serve_tunnels<H, F, T, G>(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    handler: H,
) -> Result<()>
where
    H: Fn(Inbound) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<T, StatusCode>> + Send + 'static,
    T: FnOnce(Tunnel) -> G + Send + 'static,
    G: Future<Output = ()> + Send + 'static,
{
    let peer_identity =
        peer_identity(tls.get_ref().1.peer_certificates()).map_err(|e| Error::Identity {
            peer,
            message: e.to_string(),
        })?;
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(SEND_BUFFER)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADERS)
        .handshake::<_, Bytes>(tls);
    let mut connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| Error::HandshakeTimeout {
            peer,
            stage: "its HTTP/2 preface",
        })??;
    // Accepting also drives the connection: it runs until the client closes it.
    while let Some(accepted) = connection.accept().await {
        let (request, respond) = accepted?;
        tokio::spawn(accept_tunnel(
            request,
            respond,
            peer,
            peer_identity.clone(),
            handler.clone(),
        ));
    }
    Ok(())
}

async fn accept_tunnel<H, F, T, G>(
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    peer: SocketAddr,
    peer_identity: Identity,
    handler: H,
) where
    H: Fn(Inbound) -> F,
    F: Future<Output = Result<T, StatusCode>>,
    T: FnOnce(Tunnel) -> G,
    G: Future<Output = ()>,
{
    let mut refuse = |code| {
        let mut response = Response::new(());
        *response.status_mut() = code;
        if let Err(error) = respond.send_response(response, true) {
            tracing::debug!(%peer, %error, "refusing a tunnel");
        }
    };
    if request.method() != Method::CONNECT {
        return refuse(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(destination) = request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return refuse(StatusCode::BAD_REQUEST);
    };
    let forwarded_for = request
        .headers()
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_forwarded_for);
    let inbound = Inbound {
        peer_identity,
        peer,
        destination,
        forwarded_for,
    };
    // Boxed, so what deciding takes (a connect to the pod, say) is given back before the
    // tunnel's long life.
    let task = match Box::pin(handler(inbound)).await {
        Ok(task) => task,
        Err(code) => return refuse(code),
    };
    match respond.send_response(Response::new(()), false) {
        Ok(send) => task(Tunnel::new(send, request.into_body(), None)).await,
        Err(error) => tracing::debug!(%destination, %error, "the tunnel closed before it opened"),
    }
}

/// A client connection to one HBONE server, carrying many tunnels.
#[derive(Clone)]
pub struct Connection {
    sender: h2::client::SendRequest<Bytes>,
    /// Set when the connection's task ends.
    closed: Arc<AtomicBool>,
    /// How many tunnels are open on it (the connection's task closes it once none has been
    /// for [`IDLE_TIMEOUT`]).
    open: Arc<tokio::sync::watch::Sender<usize>>,
}

/// How long a client connection with no tunnel open stays open. A pooled connection to a
/// node (or an identity there) no longer talked to is closed then, on both ends; the next
/// tunnel opens a new one.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// One open tunnel of a client connection, counted while it lives.
pub(crate) struct OpenTunnel(Arc<tokio::sync::watch::Sender<usize>>);

impl OpenTunnel {
    fn new(open: &Arc<tokio::sync::watch::Sender<usize>>) -> OpenTunnel {
        open.send_modify(|n| *n += 1);
        OpenTunnel(open.clone())
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Completes once no tunnel has been open for `timeout` (never, once the connection is gone).
async fn idle(mut open: tokio::sync::watch::Receiver<usize>, timeout: std::time::Duration) {
    loop {
        if open.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        match tokio::time::timeout(timeout, open.changed()).await {
            Err(_idle) => return,
            Ok(Ok(())) => {}
            Ok(Err(_gone)) => return std::future::pending().await,
        }
    }
}

impl Connection {
    /// Connects and handshakes (TLS with the connector's identity checks, sending `name` as
    /// SNI when it is a DNS name, then HTTP/2).
    pub async fn connect(
        connector: Arc<TlsConnector>,
        server: SocketAddr,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Connection> {
        Self::connect_closing_after(connector, server, name, IDLE_TIMEOUT).await
    }

    /// [`Connection::connect`], closing the connection once no tunnel has been open for
    /// `idle_timeout`.
    pub(crate) async fn connect_closing_after(
        connector: Arc<TlsConnector>,
        server: SocketAddr,
        name: rustls::pki_types::ServerName<'static>,
        idle_timeout: std::time::Duration,
    ) -> Result<Connection> {
        let tcp = TcpStream::connect(server)
            .await
            .map_err(|source| Error::Connect {
                addr: server,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        if let Err(error) = watch_peer(&tcp) {
            tracing::debug!(%server, %error, "HBONE socket options");
        }
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|source| Error::Handshake {
                peer: server,
                source,
            })?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(SEND_BUFFER)
            .max_header_list_size(MAX_HEADERS)
            .handshake::<_, Bytes>(tls)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        let (open, watching) = tokio::sync::watch::channel(0);
        tokio::spawn(async move {
            tokio::select! {
                result = connection => if let Err(error) = result {
                    tracing::debug!(%server, %error, "HBONE connection ended");
                },
                () = idle(watching, idle_timeout) => {
                    tracing::debug!(%server, "HBONE connection idle for {idle_timeout:?}: closed");
                }
            }
            ended.store(true, Ordering::Relaxed);
        });
        Ok(Connection {
            sender,
            closed,
            open: Arc::new(open),
        })
    }

    /// Whether new tunnels can still be opened on it.
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Relaxed)
    }

    /// Opens a tunnel to `destination` through the server, telling it the original client's
    /// address when there is one. Waits while the connection carries as many tunnels as
    /// the server allows.
    pub async fn tunnel(
        &self,
        destination: SocketAddr,
        forwarded_for: Option<std::net::IpAddr>,
    ) -> Result<Tunnel> {
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(destination.to_string());
        if let Some(ip) = forwarded_for {
            let value = match ip {
                std::net::IpAddr::V4(ip) => format!("for={ip}"),
                std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
            };
            request = request.header(FORWARDED, value);
        }
        let request = request
            .body(())
            .expect("a CONNECT request to a socket address is valid");
        let open = OpenTunnel::new(&self.open);
        let mut sender = self.sender.clone().ready().await?;
        let (response, send) = sender.send_request(request, false)?;
        let response = tokio::time::timeout(TUNNEL_ANSWER_TIMEOUT, response)
            .await
            .map_err(|_| Error::NoAnswer {
                authority: destination,
            })??;
        if response.status() != StatusCode::OK {
            return Err(Error::Refused {
                authority: destination,
                status: response.status(),
            });
        }
        Ok(Tunnel::new(send, response.into_body(), Some(open)))
    }
}

/// The first `for=` address of a `Forwarded` header (RFC 7239), with or without quotes and
/// brackets.
fn parse_forwarded_for(value: &str) -> Option<std::net::IpAddr> {
    value
        .split([';', ','])
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| key.eq_ignore_ascii_case("for"))
        .and_then(|(_, v)| {
            v.trim_matches('"')
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests;
