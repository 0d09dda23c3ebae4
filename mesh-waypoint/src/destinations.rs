//! What the waypoint keeps per config snapshot: compiled route tables per (host, client
//! namespace), upstreams (Envoy's clusters: endpoints, load balancer, circuit breaker,
//! outlier detection) per (host, subset, port, client namespace), and the way to reach an
//! endpoint: HBONE to its node for a mesh pod, plain TCP otherwise.
//!
//! A new snapshot keeps an upstream (and its counters and ejections) when its
//! DestinationRule did not change, with the endpoints refreshed; a changed rule starts it
//! anew.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use mesh_core::config::istio::{AuthorizationPolicy, DestinationRule, RequestAuthentication};
use mesh_core::config::{Model, Name, PodInfo, ServiceInfo};
use mesh_core::hbone::pool::Pool;
use mesh_core::identity::manager::CertManager;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::authn::Authenticator;
use crate::authn::jwks::Fetcher;
use crate::route::RouteTable;
use crate::upstream::{self, EffectivePolicy, Upstream, UpstreamKey};

/// How long the waypoint waits for its own certificate when a request needs it.
const CERT_WAIT: Duration = Duration::from_secs(5);

/// A byte stream to an endpoint.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type RouteKey = (String, String);
/// A compiled table and the snapshot it was compiled from.
type CachedRoutes = (Arc<Model>, Arc<RouteTable>);
/// A service's JWT rules through this waypoint, with the RequestAuthentications they were
/// compiled from.
type CachedAuthenticator = (Vec<Arc<RequestAuthentication>>, Arc<Authenticator>);
type UpstreamCacheKey = (String, Option<String>, u16, String);

struct CachedUpstream {
    /// The snapshot the endpoints come from (held, so its address cannot be reused by a
    /// newer snapshot and mistaken for it).
    model: Arc<Model>,
    rule: Option<Arc<DestinationRule>>,
    upstream: Arc<Upstream>,
    _sweeper: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for CachedUpstream {
    fn drop(&mut self) {
        if let Some(sweeper) = &self._sweeper {
            sweeper.abort();
        }
    }
}

type Http1 = hyper::client::conn::http1::SendRequest<crate::http::body::Outgoing>;
type Http2 = hyper::client::conn::http2::SendRequest<crate::http::body::Outgoing>;

/// Idle HTTP/1.1 connections kept per endpoint: enough for the concurrency one waypoint sees
/// (h2load -c16 -m10 is 160 requests at once); `maxConnections` limits them further.
const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// HTTP connections to endpoints kept for reuse (each rides one HBONE tunnel, so reuse also
/// spares the destination node a new connection to the pod per request): idle HTTP/1.1
/// connections, and one shared HTTP/2 connection per endpoint.
#[derive(Default)]
pub struct HttpConnections {
    idle: Mutex<HashMap<SocketAddr, Vec<(Http1, u32)>>>,
    shared: Mutex<HashMap<SocketAddr, Http2>>,
}

impl HttpConnections {
    /// An idle HTTP/1.1 connection to `addr` ready for a request, with the number of
    /// requests it has carried.
    pub fn take_http1(&self, addr: SocketAddr) -> Option<(Http1, u32)> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        list.retain(|(sender, _)| !sender.is_closed());
        // One still finishing its last response (not ready yet) stays for a later request.
        let ready = list.iter().rposition(|(sender, _)| sender.is_ready())?;
        Some(list.swap_remove(ready))
    }

    /// Keeps an HTTP/1.1 connection for the next request, unless it is closed or has carried
    /// `max_requests` already (`maxRequestsPerConnection`).
    fn put_http1(&self, addr: SocketAddr, sender: Http1, used: u32, max_requests: Option<u32>) {
        if sender.is_closed() || max_requests.is_some_and(|max| used >= max) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push((sender, used));
        }
    }

    /// The shared HTTP/2 connection to `addr`, if one is open.
    pub fn http2(&self, addr: SocketAddr) -> Option<Http2> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.get(&addr).filter(|s| !s.is_closed()).cloned()
    }

    pub fn set_http2(&self, addr: SocketAddr, sender: Http2) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.insert(addr, sender);
    }
}

/// An HTTP/1.1 connection in use; dropped (when the response body is done), it goes back to
/// the idle list if it can carry another request.
pub struct InUse {
    pub connections: Arc<HttpConnections>,
    pub addr: SocketAddr,
    pub sender: Option<Http1>,
    pub used: u32,
    pub max_requests: Option<u32>,
}

impl InUse {
    /// The connection was taken over by an upgrade (a 101): it never goes back to the idle
    /// list, whatever state hyper shows for it.
    pub fn upgraded(mut self) -> InUse {
        self.sender = None;
        self
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.connections
                .put_http1(self.addr, sender, self.used, self.max_requests);
        }
    }
}

/// What one tunnel's requests looked up last, for the config snapshot they saw. A tunnel
/// serves one service port for one client, so its requests share a route table and mostly
/// a few upstreams; this spares each of them the shared caches' owned-string keys, hashing
/// and locks. A new snapshot empties it.
#[derive(Default)]
pub struct TunnelCache {
    inner: Mutex<TunnelCacheInner>,
}

#[derive(Default)]
struct TunnelCacheInner {
    /// The snapshot the entries are for. Weak: an idle tunnel does not keep an old snapshot
    /// alive, and the allocation it points to cannot be reused by a newer one while held.
    model: Weak<Model>,
    routes: Option<Arc<RouteTable>>,
    /// The AuthorizationPolicies for the tunnel's service through this waypoint.
    policies: Option<Arc<[Arc<AuthorizationPolicy>]>>,
    /// The JWT rules for the tunnel's service through this waypoint.
    authenticator: Option<Arc<Authenticator>>,
    /// Upstreams with whether they speak HTTP/2; a handful (weighted routes, mirrors).
    upstreams: Vec<(Arc<Upstream>, bool)>,
}

/// Upstreams one tunnel keeps at most.
const TUNNEL_UPSTREAMS: usize = 8;

impl TunnelCacheInner {
    /// Empties the entries if they are for another snapshot than `model`.
    fn for_model(&mut self, model: &Arc<Model>) -> &mut TunnelCacheInner {
        if !std::ptr::eq(self.model.as_ptr(), Arc::as_ptr(model)) {
            *self = TunnelCacheInner {
                model: Arc::downgrade(model),
                ..TunnelCacheInner::default()
            };
        }
        self
    }
}

impl TunnelCache {
    /// [`Destinations::routes`] for `host` from `client_ns`, which must be the same on every
    /// call (the tunnel's service and client).
    pub fn routes(
        &self,
        destinations: &Destinations,
        model: &Arc<Model>,
        host: &str,
        client_ns: &str,
    ) -> Arc<RouteTable> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = inner.for_model(model);
        inner
            .routes
            .get_or_insert_with(|| destinations.routes(model, host, client_ns))
            .clone()
    }

    /// The tunnel's AuthorizationPolicies, as `find` finds them in `model`.
    pub fn policies(
        &self,
        model: &Arc<Model>,
        find: impl FnOnce() -> Vec<Arc<AuthorizationPolicy>>,
    ) -> Arc<[Arc<AuthorizationPolicy>]> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = inner.for_model(model);
        inner.policies.get_or_insert_with(|| find().into()).clone()
    }

    /// The tunnel's JWT rules, as `find` compiles them for `model`.
    pub fn authenticator(
        &self,
        model: &Arc<Model>,
        find: impl FnOnce() -> Arc<Authenticator>,
    ) -> Arc<Authenticator> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = inner.for_model(model);
        inner.authenticator.get_or_insert_with(find).clone()
    }

    /// [`Destinations::upstream`] from `client_ns` (the same on every call), and whether the
    /// upstream speaks HTTP/2.
    pub fn upstream(
        &self,
        destinations: &Destinations,
        model: &Arc<Model>,
        host: &str,
        subset: Option<&str>,
        port: u16,
        client_ns: &str,
    ) -> Result<(Arc<Upstream>, bool), Error> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = inner.for_model(model);
        let found = inner.upstreams.iter().find(|(upstream, _)| {
            let key = upstream.key();
            key.port == port && key.subset.as_deref() == subset && key.host == host
        });
        if let Some((upstream, h2)) = found {
            return Ok((upstream.clone(), *h2));
        }
        let upstream = destinations.upstream(model, host, subset, port, client_ns)?;
        let h2 = upstream_h2(model, host, port);
        if inner.upstreams.len() == TUNNEL_UPSTREAMS {
            inner.upstreams.remove(0);
        }
        inner.upstreams.push((upstream.clone(), h2));
        Ok((upstream, h2))
    }
}

/// Whether the upstream speaks HTTP/2 (the service port says gRPC or HTTP/2).
fn upstream_h2(model: &Model, host: &str, port: u16) -> bool {
    model
        .service_by_host(host)
        .and_then(|s| s.ports.iter().find(|p| p.port == port))
        .is_some_and(|p| {
            let protocol = p.declared_protocol();
            protocol.starts_with("grpc")
                || protocol.starts_with("http2")
                || protocol.starts_with("h2c")
                || protocol == "kubernetes.io/h2c"
        })
}

/// The caches and the HBONE pool.
pub struct Destinations {
    routes: Mutex<HashMap<RouteKey, CachedRoutes>>,
    /// By service hostname.
    authenticators: Mutex<HashMap<String, CachedAuthenticator>>,
    /// The JWKS fetches of the RequestAuthentications' `jwksUri`s and issuers.
    pub jwks: Arc<Fetcher>,
    upstreams: Mutex<HashMap<UpstreamCacheKey, CachedUpstream>>,
    pub pool: Pool,
    pub http: Arc<HttpConnections>,
    pub certs: Arc<CertManager>,
    pub identity: mesh_core::identity::Identity,
}

/// Why no upstream could be had for a destination.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no service {0} in the mesh's config")]
    NoService(String),
    #[error(transparent)]
    Policy(#[from] upstream::Error),
    #[error("connecting to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
}

impl Destinations {
    pub fn new(certs: Arc<CertManager>, identity: mesh_core::identity::Identity) -> Destinations {
        Destinations {
            routes: Mutex::new(HashMap::new()),
            authenticators: Mutex::new(HashMap::new()),
            jwks: Arc::new(Fetcher::default()),
            upstreams: Mutex::new(HashMap::new()),
            pool: Pool::new(certs.roots().clone()),
            http: Arc::new(HttpConnections::default()),
            certs,
            identity,
        }
    }

    /// The compiled VirtualServices for `host` seen from `client_ns`. Compile problems are
    /// logged once per snapshot.
    pub fn routes(&self, model: &Arc<Model>, host: &str, client_ns: &str) -> Arc<RouteTable> {
        let key = (host.to_owned(), client_ns.to_owned());
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, table)) = routes.get(&key)
            && Arc::ptr_eq(seen, model)
        {
            return table.clone();
        }
        let table = Arc::new(RouteTable::compile(
            &model.virtual_services_for(host, client_ns),
        ));
        for problem in table.errors() {
            tracing::warn!(%problem, "VirtualService rule left out");
        }
        for problem in table.unsupported() {
            tracing::warn!(%problem, "not supported by the waypoint yet");
        }
        routes.retain(|_, (seen, _)| Arc::ptr_eq(seen, model));
        routes.insert(key, (model.clone(), table.clone()));
        table
    }

    /// The JWT rules for `service` through the waypoint `waypoint`: the
    /// RequestAuthentications attached to either. They are compiled again only when those
    /// objects change (not on every snapshot), so fetched keys and verified tokens are kept
    /// across unrelated config changes; what the rules ask that the waypoint cannot do is
    /// logged when they are compiled.
    pub fn authenticator(
        &self,
        model: &Arc<Model>,
        service: &ServiceInfo,
        waypoint: &Name,
    ) -> Arc<Authenticator> {
        let mut policies = model.request_authentications_for_service(service);
        policies.extend(model.request_authentications_for_waypoint(waypoint));
        let mut cached = self
            .authenticators
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((compiled_from, authenticator)) = cached.get(&*service.hostname)
            && compiled_from.len() == policies.len()
            && compiled_from
                .iter()
                .zip(&policies)
                .all(|(a, b)| Arc::ptr_eq(a, b))
        {
            return authenticator.clone();
        }
        let authenticator = Arc::new(Authenticator::compile(&policies, Some(&self.jwks)));
        for warning in authenticator.warnings() {
            tracing::warn!(%warning, "RequestAuthentication");
        }
        // Services gone from the config take their rules with them.
        cached.retain(|host, _| model.service_by_host(host).is_some());
        cached.insert(
            service.hostname.to_string(),
            (policies, authenticator.clone()),
        );
        authenticator
    }

    /// The upstream for (`host`, `subset`, `port`) seen from `client_ns`.
    pub fn upstream(
        &self,
        model: &Arc<Model>,
        host: &str,
        subset: Option<&str>,
        port: u16,
        client_ns: &str,
    ) -> Result<Arc<Upstream>, Error> {
        let service = model
            .service_by_host(host)
            .ok_or_else(|| Error::NoService(host.to_owned()))?;
        let rule = model.destination_rule_for(host, client_ns);
        let key = (
            host.to_owned(),
            subset.map(str::to_owned),
            port,
            client_ns.to_owned(),
        );
        let mut upstreams = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = upstreams.get_mut(&key) {
            let same_rule = match (&cached.rule, &rule) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                _ => false,
            };
            if same_rule {
                if !Arc::ptr_eq(&cached.model, model) {
                    cached
                        .upstream
                        .update_endpoints(model.ready_endpoints(service, port));
                    cached.model = model.clone();
                }
                return Ok(cached.upstream.clone());
            }
        }
        let policy = EffectivePolicy::resolve(rule.as_deref(), subset, port)?;
        for warning in &policy.warnings {
            tracing::warn!(%warning, "DestinationRule field not supported by the waypoint yet");
        }
        let upstream = Arc::new(Upstream::new(
            UpstreamKey::new(host, subset, port),
            policy,
            model.ready_endpoints(service, port),
        ));
        let sweeper = upstream.spawn_sweeper();
        upstreams.insert(
            key,
            CachedUpstream {
                model: model.clone(),
                rule,
                upstream: upstream.clone(),
                _sweeper: sweeper,
            },
        );
        Ok(upstream)
    }

    /// A connection to `addr`: HBONE through the node of `pod` when it is a mesh pod (the
    /// waypoint proves its own identity; the node proxy checks the destination's policies),
    /// plain TCP otherwise. `client` goes along as `Forwarded: for=`.
    pub async fn connect(
        &self,
        model: &Model,
        addr: SocketAddr,
        pod: Option<&PodInfo>,
        client: Option<IpAddr>,
        connect_timeout: Duration,
    ) -> Result<Box<dyn Io>, Error> {
        let fail = |message: String| Error::Connect { addr, message };
        let mesh_pod = pod.filter(|p| model.in_mesh(p));
        let attempt = async {
            match mesh_pod.and_then(|p| p.host_ip.map(|host| (p, host))) {
                Some((pod, host)) => {
                    let cert = self
                        .certs
                        .wait_for(&self.identity, CERT_WAIT)
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                    let peer = self
                        .certs
                        .identity_of(&pod.name.namespace, &pod.service_account);
                    let node = SocketAddr::new(host, mesh_core::hbone::PORT);
                    let tunnel = self
                        .pool
                        .tunnel(&cert, &peer, node, addr, client)
                        .await
                        .map_err(|e| fail(format!("HBONE via {node}: {e}")))?;
                    Ok(Box::new(tunnel) as Box<dyn Io>)
                }
                None => {
                    let tcp = TcpStream::connect(addr)
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                    let _ = tcp.set_nodelay(true);
                    Ok(Box::new(tcp) as Box<dyn Io>)
                }
            }
        };
        tokio::time::timeout(connect_timeout, attempt)
            .await
            .map_err(|_| fail(format!("no connection within {connect_timeout:?}")))?
    }
}
