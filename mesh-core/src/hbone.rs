//! HBONE, Istio's tunnel: HTTP/2 `CONNECT` to port 15008 over mutual TLS, `:authority` the
//! destination `ip:port`, one TLS connection carrying many tunnels. The server side hands
//! each tunnel, with the client's verified identity, to a handler that decides where it
//! goes; the client side opens tunnels over a connection it keeps.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::identity::{Identity, tls::peer_identity};

pub mod pool;

/// The port HBONE listens on.
pub const PORT: u16 = 15008;
/// HTTP/2 windows: large, so one tunnel can fill a fast link (the defaults are 64 KiB).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// The largest HTTP/2 frame each side accepts (the default is 16 KiB): a bulk transfer's
/// large writes go out as a few large DATA frames, not many small ones.
const MAX_FRAME: u32 = 1024 * 1024;
/// Tunnels one connection may carry at once; a client past it waits for a stream to end.
const MAX_STREAMS: u32 = 2048;
/// The CONNECT header naming the original client's address (`for=<ip>`), as Istio's
/// ztunnel sends it: the TLS peer is the client's node proxy, not the workload.
const FORWARDED: &str = "forwarded";

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
    Http(#[from] hyper::Error),
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A tunnel: bytes both ways, half-close included.
pub type Tunnel = TokioIo<Upgraded>;

/// One tunnel request the server accepted, for the handler to route.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The client's verified SPIFFE identity.
    pub peer_identity: Identity,
    pub peer: SocketAddr,
    /// Where the client wants to go (`:authority`).
    pub destination: SocketAddr,
    /// The original client's address, from the `Forwarded: for=` header, if sent.
    pub forwarded_for: Option<std::net::IpAddr>,
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
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tls = acceptor
        .accept(tcp)
        .await
        .map_err(|source| Error::Handshake { peer, source })?;
    serve_tls(tls, peer, handler).await
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
    U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_tunnels(tls, peer, move |inbound: Inbound| {
        let upstream = handler(inbound.clone());
        async move {
            let mut upstream = upstream.await?;
            Ok(move |mut tunnel: Tunnel| async move {
                if let Err(error) = crate::copy::bidirectional(&mut tunnel, &mut upstream).await
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
/// status to refuse with.
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
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        let peer_identity = peer_identity.clone();
        async move { Ok::<_, Infallible>(accept_tunnel(request, peer, peer_identity, handler).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS)
        .serve_connection(TokioIo::new(tls), service)
        .await?;
    Ok(())
}

async fn accept_tunnel<H, F, T, G>(
    request: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    peer_identity: Identity,
    handler: H,
) -> Response<Empty<Bytes>>
where
    H: Fn(Inbound) -> F,
    F: Future<Output = Result<T, StatusCode>>,
    T: FnOnce(Tunnel) -> G + Send + 'static,
    G: Future<Output = ()> + Send + 'static,
{
    let status = |code| {
        let mut response = Response::new(Empty::new());
        *response.status_mut() = code;
        response
    };
    if request.method() != Method::CONNECT {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let Some(destination) = request
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return status(StatusCode::BAD_REQUEST);
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
    let task = match handler(inbound).await {
        Ok(task) => task,
        Err(code) => return status(code),
    };
    tokio::spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => task(TokioIo::new(upgraded)).await,
            Err(error) => tracing::debug!(%destination, %error, "CONNECT upgrade failed"),
        }
    });
    status(StatusCode::OK)
}

/// A client connection to one HBONE server, carrying many tunnels.
#[derive(Clone)]
pub struct Connection {
    sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
}

impl Connection {
    /// Connects and handshakes (TLS with the connector's identity checks, sending `name` as
    /// SNI when it is a DNS name, then HTTP/2).
    pub async fn connect(
        connector: Arc<TlsConnector>,
        server: SocketAddr,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Connection> {
        let tcp = TcpStream::connect(server)
            .await
            .map_err(|source| Error::Connect {
                addr: server,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|source| Error::Handshake {
                peer: server,
                source,
            })?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%server, %error, "HBONE connection ended");
            }
        });
        Ok(Connection { sender })
    }

    /// Whether new tunnels can still be opened on it.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Opens a tunnel to `destination` through the server, telling it the original client's
    /// address when there is one.
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
            .body(Empty::new())
            .expect("a CONNECT request to a socket address is valid");
        let mut sender = self.sender.clone();
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(Error::Refused {
                authority: destination,
                status: response.status(),
            });
        }
        Ok(TokioIo::new(hyper::upgrade::on(response).await?))
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
