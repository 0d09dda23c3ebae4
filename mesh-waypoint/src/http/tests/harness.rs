//! A waypoint in the test's process: the config model from YAML, client connections served by
//! [`super::serve_connection`] over in-memory pipes, and upstreams on loopback addresses
//! (pods outside the mesh, reached over plain TCP) whose handlers the tests write.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hyper::body::Body as HttpBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use mesh_core::config::Store;
use mesh_core::identity::Identity;
use mesh_core::identity::ca::CertificateAuthority;
use mesh_core::identity::manager::{CaClientConfig, CertManager};
use mesh_core::manifest;
use mesh_core::source::{ConfigSource, Update};
use tokio::net::TcpListener;

use super::*;
use crate::destinations::Destinations;
use crate::server::{Client, Waypoint, WaypointConfig};

/// Far more than an exchange on loopback takes; what does not happen by then fails the test.
const DEADLINE: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `future`'s output, or a failed test naming `what` did not happen.
pub(super) async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
}

/// Waits, up to the deadline, until `check` holds.
pub(super) async fn until(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A Service `name` in namespace `default`, port 8000 named `port_name`, with one ready pod
/// at `ip` listening on `target_port`.
pub(super) fn service(name: &str, ip: &str, port_name: &str, target_port: u16) -> String {
    let last = ip.rsplit('.').next().unwrap_or("1");
    format!(
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: 10.96.0.{last}
  selector: {{app: {name}}}
  ports: [{{name: {port_name}, port: 8000, targetPort: {target_port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}-0, namespace: default, labels: {{app: {name}}}}}
spec: {{nodeName: node1, containers: [{{name: app, image: x, ports: [{{containerPort: {target_port}}}]}}]}}
status: {{podIP: {ip}, conditions: [{{type: Ready, status: "True"}}]}}
"#
    )
}

/// Serves HTTP/1.1 or HTTP/2 (prior knowledge) on `ip` with `handler`; the port.
pub(super) async fn upstream<H, F, B>(ip: &str, h2: bool, handler: H) -> u16
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind((ip, 0)).await.expect("an upstream port");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handler = handler.clone();
            let service = hyper::service::service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let io = TokioIo::new(tcp);
            tokio::spawn(async move {
                // A connection the waypoint resets ends here; the test sees the outcome.
                let _ = if h2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                };
            });
        }
    });
    port
}

/// The waypoint, serving the `echo` service's port 8000 to a client in namespace `default`.
pub(super) struct TestWaypoint {
    stream: Arc<Stream>,
    /// The config the waypoint serves; [`TestWaypoint::upsert`] changes it live.
    store: Store,
    /// The CA files the certificate manager reads; removed when the test ends.
    dir: PathBuf,
}

impl TestWaypoint {
    /// A waypoint whose config is the YAML `documents` (Services, Pods, Istio resources).
    pub(super) fn new(documents: &[String]) -> TestWaypoint {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mesh-waypoint-http-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = CertificateAuthority::new("cluster.local").unwrap();
        std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
        std::fs::write(dir.join("credential"), "unused: no endpoint is in the mesh").unwrap();

        let text = documents.concat();
        let loaded = manifest::parse_documents(&text, Path::new("test.yaml"));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let mut store = Store::new();
        store.apply_all(Update::first_sync(loaded.objects));
        let model = store.model();
        assert!(model.problems().is_empty(), "{:?}", model.problems());

        let config = WaypointConfig {
            name: "waypoint".to_owned(),
            namespace: "default".to_owned(),
            service_account: "waypoint".to_owned(),
            for_service_account: None,
            pod_ip: "127.0.0.1".parse().unwrap(),
            source: ConfigSource::Files { dir: dir.clone() },
            hbone_port: 0,
            admin: "127.0.0.1:0".parse().unwrap(),
            metrics_port: 0,
            ca: CaClientConfig {
                addr: "127.0.0.1:9".parse().unwrap(),
                root: dir.join("root.pem"),
                credential_file: dir.join("credential"),
                trust_domain: "cluster.local".to_owned(),
                validity: Duration::from_secs(3600),
            },
        };
        let certs = Arc::new(CertManager::new(config.ca.clone()).unwrap());
        let identity = certs.identity_of("default", "waypoint");
        let destinations = Destinations::new(certs, identity);
        let waypoint = Arc::new(Waypoint::new(config, store.subscribe(), destinations));
        let service = model
            .service_by_host("echo.default.svc.cluster.local")
            .expect("the config has the echo service")
            .clone();
        let client = Client {
            identity: Identity::new("cluster.local", "default", "client"),
            ip: None,
            pod: None,
        };
        let stream = Arc::new(Stream::new(waypoint, service, 8000, client));
        TestWaypoint { stream, store, dir }
    }

    /// Adds or replaces the objects of the YAML `documents`, as a config source would.
    pub(super) fn upsert(&mut self, documents: &[String]) {
        let loaded = manifest::parse_documents(&documents.concat(), Path::new("change.yaml"));
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        self.store
            .apply_all(loaded.objects.into_iter().map(Update::Upsert));
    }

    /// A client connection to the waypoint, served as a tunnel's would be.
    fn connect(&self) -> TokioIo<tokio::io::DuplexStream> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve_connection(self.stream.clone(), TokioIo::new(server)));
        TokioIo::new(client)
    }

    /// An HTTP/1.1 client on a new connection.
    pub(super) async fn http1<B>(&self) -> http1::SendRequest<B>
    where
        B: HttpBody + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (sender, connection) = http1::handshake(self.connect()).await.unwrap();
        tokio::spawn(connection);
        sender
    }

    /// An HTTP/2 (h2c) client on a new connection.
    pub(super) async fn http2<B>(&self) -> http2::SendRequest<B>
    where
        B: HttpBody + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), self.connect())
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    }

    /// Sends `request` on a new HTTP/2 or HTTP/1.1 connection, on a task of its own, so the
    /// test can go on feeding the request's body while it is on its way.
    pub(super) async fn send<B>(
        &self,
        h2: bool,
        request: Request<B>,
    ) -> tokio::task::JoinHandle<hyper::Result<Response<Incoming>>>
    where
        B: HttpBody + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if h2 {
            tokio::spawn(self.http2().await.send_request(request))
        } else {
            tokio::spawn(self.http1().await.send_request(request))
        }
    }

    /// The sum of the samples of metric `name` whose line has every one of `labels`.
    pub(super) fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.stream
            .waypoint
            .metrics
            .encode()
            .lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .filter(|line| labels.iter().all(|label| line.contains(label)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for TestWaypoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
