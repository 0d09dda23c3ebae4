//! The node's L4 proxy: where each redirected connection goes (`route`), HBONE tunnels to
//! other nodes (`pool`), and the inbound side that admits connections to this node's pods
//! (`inbound`: 15008, and the same checks in-process for same-node traffic).

pub mod inbound;
pub mod plaintext;

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::Duration;

use mesh_core::config::{Model, PodInfo, ServiceInfo};
use mesh_core::identity::Identity;
use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::metrics::Metrics;
use mesh_core::hbone::pool;
use mesh_core::identity::manager::CertManager;

/// How long a plain TCP upstream (a pod, or a destination outside the mesh) gets to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A plain TCP connection (no delay), failing after `CONNECT_TIMEOUT`.
pub async fn connect_tcp(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{addr} did not accept in time"),
            )
        })??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A listener that may accept connections addressed to other hosts (`IP_TRANSPARENT`): the
/// connections the eBPF inbound program captures keep the pod's address as their local one,
/// and the replies go out from it.
pub fn listen_transparent(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    setsockopt(&socket, sockopt::IpTransparent, &true).map_err(|errno| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "IP_TRANSPARENT on fd {}: {errno} (needs CAP_NET_ADMIN)",
                socket.as_raw_fd()
            ),
        )
    })?;
    socket.bind(addr.into())?;
    socket.listen(1024)
}

/// Accepts connections until the task is dropped, running `handle` for each on a task of
/// its own. An accept error (out of file descriptors, say) is logged and retried after a
/// short pause rather than ending the listener.
pub async fn accept_forever<F, Fut>(listener: TcpListener, what: &'static str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle(stream, peer));
            }
            Err(error) => {
                tracing::warn!(%error, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Closes with a RST, so the client fails at once (as a refused connect would). A zero
/// linger never blocks: the close sends the RST at once.
pub fn reset(client: TcpStream) -> io::Result<()> {
    #[allow(
        deprecated,
        reason = "SO_LINGER 0 is the way to reset; it does not block"
    )]
    client.set_linger(Some(Duration::ZERO))?;
    drop(client);
    Ok(())
}

/// A byte stream of any kind (a TCP socket, a tunnel).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What the outbound and inbound sides share.
pub struct Proxy {
    pub node: String,
    model: watch::Receiver<Arc<Model>>,
    pub certs: Arc<CertManager>,
    pub pool: pool::Pool,
    pub metrics: Arc<Metrics>,
}

/// Where a redirected connection goes.
#[derive(Debug)]
pub enum Route {
    /// Not a mesh workload (outside the cluster, or a pod not in the mesh): plain TCP to the
    /// address, as the client asked.
    Passthrough {
        addr: SocketAddr,
        service: Option<Arc<ServiceInfo>>,
    },
    /// A mesh workload on this node: the inbound checks in-process, no TLS.
    Local(Target),
    /// A mesh workload on another node: HBONE to its node proxy.
    Remote { target: Target, node: SocketAddr },
    /// A service with a waypoint (`istio.io/use-waypoint`): HBONE to the waypoint pod, which
    /// applies the L7 rules and picks the endpoint. `service_addr` is what the client dialed.
    Waypoint {
        waypoint: Target,
        service_addr: SocketAddr,
    },
    /// Nothing can serve it (a service without ready endpoints): reset the client.
    Refuse(String),
}

/// A mesh endpoint chosen for a connection.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub pod: Arc<PodInfo>,
    pub identity: Identity,
    pub service: Option<Arc<ServiceInfo>>,
}

impl Proxy {
    pub fn new(
        node: String,
        model: watch::Receiver<Arc<Model>>,
        certs: Arc<CertManager>,
        metrics: Arc<Metrics>,
    ) -> Proxy {
        let pool = pool::Pool::new(certs.roots().clone());
        Proxy {
            node,
            model,
            certs,
            pool,
            metrics,
        }
    }

    /// The current config snapshot.
    pub fn model(&self) -> Arc<Model> {
        self.model.borrow().clone()
    }

    /// The identity of a pod's service account.
    pub fn identity_of(&self, pod: &PodInfo) -> Identity {
        self.certs
            .identity_of(&pod.name.namespace, &pod.service_account)
    }

    /// A mesh source: a pod of this node that is in the mesh.
    pub fn local_mesh_pod(&self, model: &Model, ip: IpAddr) -> Option<Arc<PodInfo>> {
        model
            .pod_by_ip(ip)
            .filter(|p| p.node.as_deref() == Some(self.node.as_str()) && model.in_mesh(p))
            .cloned()
    }

    /// Where a connection to `destination` goes: a service address picks one of its ready
    /// endpoints at random (as kube-proxy and ztunnel do); a pod address is taken as it is; a mesh pod on this node is
    /// served locally, one elsewhere through its node's HBONE listener.
    pub fn route(&self, model: &Model, destination: SocketAddr) -> Route {
        let (addr, service) = match model.service_by_addr(destination) {
            Some(service) if model.waypoint_for_service(service).is_some() => {
                return self.waypoint_route(model, service, destination);
            }
            Some(service) => {
                let endpoints = model.ready_endpoints(service, destination.port());
                if endpoints.is_empty() {
                    return Route::Refuse(format!(
                        "service {}/{} has no ready endpoint for port {}",
                        service.name.namespace,
                        service.name.name,
                        destination.port()
                    ));
                }
                let i = rand::random_range(0..endpoints.len());
                (endpoints[i].addr, Some(service.clone()))
            }
            None => (destination, None),
        };
        let pod = model.pod_by_ip(addr.ip()).cloned();
        let Some(pod) = pod.filter(|p| model.in_mesh(p)) else {
            return Route::Passthrough { addr, service };
        };
        let target = Target {
            addr,
            identity: self.identity_of(&pod),
            pod: pod.clone(),
            service,
        };
        if pod.node.as_deref() == Some(self.node.as_str()) {
            return Route::Local(target);
        }
        match pod.host_ip {
            Some(host) => Route::Remote {
                target,
                node: SocketAddr::new(host, mesh_core::hbone::PORT),
            },
            None => Route::Refuse(format!(
                "pod {}/{} has no hostIP: its node proxy cannot be reached",
                pod.name.namespace, pod.name.name
            )),
        }
    }

    /// The waypoint pod for traffic to `service`: a ready endpoint of the waypoint's own
    /// Service (named like its Gateway) on the HBONE port. No waypoint pod ready: refused,
    /// as Istio does (the L7 rules must not be skipped).
    fn waypoint_route(
        &self,
        model: &Model,
        service: &Arc<ServiceInfo>,
        service_addr: SocketAddr,
    ) -> Route {
        let Some(waypoint) = model.waypoint_for_service(service) else {
            return Route::Refuse("no waypoint".to_owned());
        };
        let gateway = &waypoint.gateway;
        let Some(waypoint_service) = model.service(gateway) else {
            return Route::Refuse(format!(
                "service {}/{} uses waypoint {}/{}, which does not exist: deploy it (`meshctl \
                 waypoint generate -n {}`) or remove the istio.io/use-waypoint label",
                service.name.namespace,
                service.name.name,
                gateway.namespace,
                gateway.name,
                gateway.namespace
            ));
        };
        let endpoints = model.ready_endpoints(waypoint_service, mesh_core::hbone::PORT);
        let ready: Vec<_> = endpoints.iter().filter(|e| e.pod.is_some()).collect();
        if ready.is_empty() {
            return Route::Refuse(format!(
                "waypoint {}/{} has no ready pod on port {}",
                gateway.namespace,
                gateway.name,
                mesh_core::hbone::PORT
            ));
        }
        let endpoint = ready[rand::random_range(0..ready.len())];
        let Some(pod) = endpoint.pod.clone() else {
            return Route::Refuse("waypoint endpoint without a pod".to_owned());
        };
        Route::Waypoint {
            waypoint: Target {
                addr: endpoint.addr,
                identity: self.identity_of(&pod),
                pod,
                service: Some(service.clone()),
            },
            service_addr,
        }
    }
}
