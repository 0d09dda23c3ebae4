//! HTTP/1.1 upgrades through the waypoint (WebSocket, or any other `Upgrade:` protocol but
//! h2c): which requests ask for one, the hop-by-hop headers they keep on the way up and on
//! the 101 on the way back, and — once the upstream has switched — the splice of the client's
//! and the upstream's upgraded connections, both ways, passing a half-close on.
//!
//! The request is routed like any other (authorization, matching, faults, rewrites, header
//! edits); only after a 101 does the waypoint stop reading HTTP on the connection. An answer
//! other than 101 is an ordinary response. HTTP/2 clients (extended CONNECT) and HTTP/2
//! upstreams are not upgraded: to an HTTP/2 upstream the request goes without its upgrade
//! headers, as a plain request.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Version, request};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Why a splice ended before both sides were done.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    #[error("the client's connection was not handed over after the 101: {0}")]
    Client(hyper::Error),
    #[error("the upstream's connection was not handed over after its 101: {0}")]
    Upstream(hyper::Error),
    #[error("copying between the upgraded connections: {0}")]
    Copy(#[from] std::io::Error),
}

pub(super) type Result<T, E = Error> = std::result::Result<T, E>;

/// An upgrade the client asked for: the protocol, and hyper's handle on the client's
/// connection once the 101 is written.
pub(super) struct Requested {
    pub(super) protocol: HeaderValue,
    pub(super) client: OnUpgrade,
}

/// The protocol an HTTP/1.1 request asks to switch to: its `Upgrade` header, when
/// `Connection` names `upgrade` among its tokens. `h2c` is left out: Envoy drops it too, and
/// a spliced h2c connection would take every later request on it past the routing.
pub(super) fn protocol(parts: &request::Parts) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = parts.headers.get(header::UPGRADE)?;
    let h2c = protocol
        .to_str()
        .is_ok_and(|p| p.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")));
    (asks && !h2c).then(|| protocol.clone())
}

/// Takes the upgrade a request asks for out of it (hyper's handle stays in the request's
/// extensions otherwise); `None` for a request that asks for none.
pub(super) fn take(parts: &mut request::Parts) -> Option<Requested> {
    let protocol = protocol(parts)?;
    let client = parts.extensions.remove::<OnUpgrade>()?;
    Some(Requested { protocol, client })
}

/// Puts back the headers that ask for `protocol` on a request (or a 101) whose hop-by-hop
/// headers were stripped.
pub(super) fn restore_headers(headers: &mut HeaderMap, protocol: &HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol.clone());
}

/// Copies between the client's and the upstream's upgraded connections once both are handed
/// over, until both directions are closed; a side that stops writing has the other side's
/// write half shut down, so a half-close reaches the far end. Returns the bytes sent from
/// the client to the upstream and back.
pub(super) async fn splice(client: OnUpgrade, upstream: OnUpgrade) -> Result<(u64, u64)> {
    let (client, upstream) =
        tokio::try_join!(async { client.await.map_err(Error::Client) }, async {
            upstream.await.map_err(Error::Upstream)
        },)?;
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    Ok(mesh_core::copy::bidirectional(&mut client, &mut upstream).await?)
}

/// Runs [`splice`] on its own task, holding `guard` (the upstream's lease and endpoint pick)
/// until the session ends.
pub(super) fn spawn_splice(
    client: OnUpgrade,
    upstream: OnUpgrade,
    cluster: String,
    guard: impl Send + 'static,
) {
    tokio::spawn(async move {
        match splice(client, upstream).await {
            Ok((sent, received)) => {
                tracing::debug!(%cluster, sent, received, "upgraded session ended");
            }
            Err(error) => tracing::debug!(%cluster, %error, "upgraded session failed"),
        }
        drop(guard);
    });
}

#[cfg(test)]
mod tests;
