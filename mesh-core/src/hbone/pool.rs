//! HBONE connections to node proxies and waypoints, pooled per (source identity, destination
//! identity, destination node): one mutual-TLS HTTP/2 connection carries every tunnel of that
//! key. A rotated source certificate starts a new connection for new tunnels; tunnels on the
//! old one run on until they end.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::hbone::{self, Connection, Tunnel};
use crate::identity::Identity;
use crate::identity::roots::Roots;
use crate::identity::tls::{client_config, server_name};
use tokio_rustls::TlsConnector;

use crate::identity::manager::Issued;

/// How long connecting and the handshakes may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TLS configuration for {0}: {1}")]
    Config(Identity, crate::identity::Error),
    #[error(transparent)]
    Hbone(#[from] hbone::Error),
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
}

type Key = (Identity, Identity, SocketAddr);

struct Entry {
    cert: Arc<Issued>,
    connection: Connection,
}

type Slot = Arc<tokio::sync::Mutex<Option<Entry>>>;

/// The pool. Cheap to share.
pub struct Pool {
    /// The trust anchors each new connection checks its server against.
    roots: Arc<Roots>,
    slots: Mutex<HashMap<Key, Slot>>,
}

impl Pool {
    pub fn new(roots: Arc<Roots>) -> Pool {
        Pool {
            roots,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Open connections (for the admin page and tests).
    pub fn connections(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .filter(|slot| {
                slot.try_lock()
                    .is_ok_and(|e| e.as_ref().is_some_and(|e| e.connection.is_open()))
            })
            .count()
    }

    /// A tunnel to `destination` through the node proxy at `node`, which must prove
    /// `peer`; this side proves `source`'s identity.
    pub async fn tunnel(
        &self,
        source: &Arc<Issued>,
        peer: &Identity,
        node: SocketAddr,
        destination: SocketAddr,
        forwarded_for: Option<IpAddr>,
    ) -> Result<Tunnel, Error> {
        let key = (source.cert.identity.clone(), peer.clone(), node);
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(key).or_default().clone()
        };
        // One retry: a pooled connection may have died since it was last used.
        for attempt in 0..2 {
            let connection = {
                let mut entry = slot.lock().await;
                match entry.as_ref() {
                    Some(e)
                        if attempt == 0
                            && e.connection.is_open()
                            && Arc::ptr_eq(&e.cert, source) =>
                    {
                        e.connection.clone()
                    }
                    _ => {
                        let connection = self.connect(source, peer, node).await?;
                        *entry = Some(Entry {
                            cert: source.clone(),
                            connection: connection.clone(),
                        });
                        connection
                    }
                }
            };
            match connection.tunnel(destination, forwarded_for).await {
                Ok(tunnel) => return Ok(tunnel),
                Err(hbone::Error::Http(error)) if attempt == 0 => {
                    tracing::debug!(%node, %error, "pooled HBONE connection failed; reconnecting");
                }
                Err(error) => return Err(error.into()),
            }
        }
        unreachable!("the second attempt always returns")
    }

    async fn connect(
        &self,
        source: &Issued,
        peer: &Identity,
        node: SocketAddr,
    ) -> Result<Connection, Error> {
        let config = client_config(&source.cert, &self.roots.certs(), peer.clone())
            .map_err(|e| Error::Config(peer.clone(), e))?;
        let name = server_name(peer).map_err(|e| Error::Config(peer.clone(), e))?;
        let connector = Arc::new(TlsConnector::from(Arc::new(config)));
        tracing::debug!(source = %source.cert.identity, %peer, %node, "opening an HBONE connection");
        tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(connector, node, name))
            .await
            .map_err(|_| Error::Timeout(node))?
            .map_err(Error::from)
    }
}
