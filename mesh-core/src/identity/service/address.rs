//! The CA's address as its clients are told it (`--ca-addr`, `CA_ADDR`).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::Serialize;

/// Where the CA listens: `ip:port`, or `name:port` (e.g. `mesh-ca.istio-system.svc:15012`,
/// as Istio's `CA_ADDRESS` names istiod), a name being resolved again at every connection, so
/// a recreated Service (a new ClusterIP) is found without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaAddress {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl CaAddress {
    pub fn port(&self) -> u16 {
        match self {
            CaAddress::Ip(addr) => addr.port(),
            CaAddress::Name { port, .. } => *port,
        }
    }
}

impl From<SocketAddr> for CaAddress {
    fn from(addr: SocketAddr) -> Self {
        CaAddress::Ip(addr)
    }
}

impl FromStr for CaAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(CaAddress::Ip(addr));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| {
            format!(
                "{text:?} is not host:port (e.g. mesh-ca.istio-system.svc:15012 or 10.96.0.12:15012)"
            )
        })?;
        let port = port
            .parse()
            .map_err(|_| format!("{text:?}: {port:?} is not a port number"))?;
        let name = host.strip_suffix('.').unwrap_or(host);
        let label_ok = |label: &str| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(format!(
                "{text:?}: {host:?} is neither an IP address (IPv6 in brackets: [::1]:15012) nor a DNS name"
            ));
        }
        Ok(CaAddress::Name {
            host: name.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for CaAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaAddress::Ip(addr) => addr.fmt(f),
            CaAddress::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl Serialize for CaAddress {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
