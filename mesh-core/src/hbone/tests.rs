use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::identity::tls::{client_config, server_config};
use crate::identity::{CertificateAuthority, WorkloadCertificate};

const TD: &str = "cluster.local";

fn issue(ca: &CertificateAuthority, sa: &str) -> WorkloadCertificate {
    let identity = Identity::new(TD, "default", sa);
    crate::test_util::issue(ca, &identity, Duration::from_secs(3600))
}

/// An echo server that upper-cases nothing: it writes back what it reads until EOF, then
/// closes, so half-close is observable.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An HBONE server whose handler connects to the requested destination and records who
/// asked; destinations on port 1 are refused with 403.
async fn hbone_server(
    ca: &CertificateAuthority,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Inbound>) {
    let cert = issue(ca, "server");
    let acceptor = TlsAcceptor::from(Arc::new(
        server_config(&cert, &[ca.root().clone()]).unwrap(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let seen_tx = seen_tx.clone();
            let handler = move |inbound: Inbound| {
                let seen_tx = seen_tx.clone();
                async move {
                    let destination = inbound.destination;
                    let _ = seen_tx.send(inbound);
                    if destination.port() == 1 {
                        return Err(StatusCode::FORBIDDEN);
                    }
                    TcpStream::connect(destination)
                        .await
                        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)
                }
            };
            tokio::spawn(serve_connection(acceptor.clone(), tcp, peer, handler));
        }
    });
    (addr, seen)
}

fn connector(ca: &CertificateAuthority, client: &str, server: &str) -> Arc<TlsConnector> {
    let cert = issue(ca, client);
    let config = client_config(
        &cert,
        &[ca.root().clone()],
        Identity::new(TD, "default", server),
    )
    .unwrap();
    Arc::new(TlsConnector::from(Arc::new(config)))
}

#[tokio::test]
async fn tunnels_carry_bytes_both_ways_with_half_close_and_share_a_connection() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let echo = echo_server().await;
    let (server, mut seen) = hbone_server(&ca).await;
    let connection =
        Connection::connect(connector(&ca, "client", "server"), server, ip_name(server))
            .await
            .unwrap();

    let mut tunnels = Vec::new();
    for i in 0..3u8 {
        let mut tunnel = connection
            .tunnel(echo, Some("10.244.1.7".parse().unwrap()))
            .await
            .unwrap();
        let payload = vec![i; 256 * 1024];
        tunnel.write_all(&payload).await.unwrap();
        tunnel.shutdown().await.unwrap();
        tunnels.push((tunnel, payload));
    }
    for (mut tunnel, payload) in tunnels {
        let mut back = Vec::new();
        tunnel.read_to_end(&mut back).await.unwrap();
        assert_eq!(
            back, payload,
            "echoed through the tunnel, ended by the half-close"
        );
    }
    let first = seen.recv().await.unwrap();
    assert_eq!(
        first.peer_identity.to_string(),
        "spiffe://cluster.local/ns/default/sa/client"
    );
    assert_eq!(first.destination, echo);
    assert_eq!(
        first.forwarded_for,
        Some("10.244.1.7".parse().unwrap()),
        "the original client's address travels in the Forwarded header"
    );
    let peers: Vec<SocketAddr> = [
        first,
        seen.recv().await.unwrap(),
        seen.recv().await.unwrap(),
    ]
    .iter()
    .map(|i| i.peer)
    .collect();
    assert!(
        peers.iter().all(|p| *p == peers[0]),
        "one TLS connection carried every tunnel"
    );
    assert!(connection.is_open());
}

#[tokio::test]
async fn a_bulk_transfer_copied_into_and_out_of_tunnels_arrives_whole() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let echo = echo_server().await;
    let (server, _seen) = hbone_server(&ca).await;
    let connection =
        Connection::connect(connector(&ca, "client", "server"), server, ip_name(server))
            .await
            .unwrap();
    let mut tunnel = connection.tunnel(echo, None).await.unwrap();
    // As a node agent's outbound side does: a client socket copied into the tunnel (the
    // server side copies out of it to the echo server the same way).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        crate::copy::with_tunnel(&mut tunnel, &mut client).await
    });
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    // Bytes that show their offset, so a reordered or dropped chunk is caught.
    let payload: Vec<u8> = (0..16 << 20).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let writing = tokio::spawn(async move {
        writer.write_all(&sent).await.unwrap();
        writer.shutdown().await.unwrap();
        writer
    });
    let mut back = Vec::new();
    reader.read_to_end(&mut back).await.unwrap();
    let _writer = writing.await.unwrap();
    assert!(
        back == payload,
        "{} bytes echoed of {}",
        back.len(),
        payload.len()
    );
    let len = payload.len() as u64;
    assert_eq!(proxy.await.unwrap().unwrap(), (len, len));
}

/// A destination that accepts and then neither reads nor closes, until the test ends.
async fn stalled_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

#[tokio::test]
async fn a_writer_faster_than_the_destination_is_held_back() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let (server, _seen) = hbone_server(&ca).await;
    let stalled = stalled_server().await;
    let connection =
        Connection::connect(connector(&ca, "client", "server"), server, ip_name(server))
            .await
            .unwrap();
    let mut tunnel = connection.tunnel(stalled, None).await.unwrap();
    // What may be in flight: the stream's window (4 MiB), the tunnel's send buffer (1 MiB),
    // and the sockets' buffers on the way. Without backpressure every write succeeds.
    const BOUND: usize = 32 << 20;
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0;
    loop {
        match tokio::time::timeout(Duration::from_millis(200), tunnel.write(&chunk)).await {
            Ok(Ok(n)) => written += n,
            Ok(Err(error)) => panic!("write failed after {written} bytes: {error}"),
            // Held back: nobody downstream takes the bytes.
            Err(_) => break,
        }
        assert!(
            written <= BOUND,
            "{written} bytes taken for a destination that reads nothing"
        );
    }
    assert!(written > 0, "not even the first write went through");
}

#[tokio::test]
async fn a_destination_that_resets_ends_the_tunnel() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let (server, _seen) = hbone_server(&ca).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resetting = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            // Reset once the client has sent something: a reset before that could fail the
            // HBONE server's connect instead.
            let _ = socket.read(&mut [0u8; 1]).await;
            #[allow(
                deprecated,
                reason = "SO_LINGER 0 is the way to reset; it does not block"
            )]
            socket.set_linger(Some(Duration::ZERO)).unwrap();
            drop(socket);
        }
    });
    let connection =
        Connection::connect(connector(&ca, "client", "server"), server, ip_name(server))
            .await
            .unwrap();
    let mut tunnel = connection.tunnel(resetting, None).await.unwrap();
    tunnel.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), tunnel.read(&mut buf))
        .await
        .expect("the reset reaches the client, not a hang");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "no data from a destination that reset: {read:?}"
    );
    // The connection outlives the tunnel and carries the next one.
    let echo = echo_server().await;
    let mut next = connection.tunnel(echo, None).await.unwrap();
    next.write_all(b"still here").await.unwrap();
    next.shutdown().await.unwrap();
    let mut back = Vec::new();
    next.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"still here");
}

#[tokio::test]
async fn a_refused_destination_is_an_error_not_a_hang() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let (server, _seen) = hbone_server(&ca).await;
    let connection =
        Connection::connect(connector(&ca, "client", "server"), server, ip_name(server))
            .await
            .unwrap();
    let forbidden = tokio::time::timeout(
        Duration::from_secs(5),
        connection.tunnel("127.0.0.1:1".parse().unwrap(), None),
    )
    .await
    .expect("an answer in time");
    assert!(
        matches!(
            forbidden,
            Err(Error::Refused {
                status: StatusCode::FORBIDDEN,
                ..
            })
        ),
        "{forbidden:?}"
    );
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let unavailable = connection.tunnel(closed, None).await;
    assert!(
        matches!(
            unavailable,
            Err(Error::Refused {
                status: StatusCode::SERVICE_UNAVAILABLE,
                ..
            })
        ),
        "{unavailable:?}"
    );
}

#[tokio::test]
async fn a_server_with_the_wrong_identity_is_refused() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let (server, _seen) = hbone_server(&ca).await;
    let result = Connection::connect(
        connector(&ca, "client", "someone-else"),
        server,
        ip_name(server),
    )
    .await;
    assert!(
        matches!(result, Err(Error::Handshake { .. })),
        "{:?}",
        result.err()
    );
}

fn ip_name(server: SocketAddr) -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::IpAddress(server.ip().into())
}

#[test]
fn forwarded_header_forms_parse() {
    assert_eq!(
        parse_forwarded_for("for=10.1.2.3"),
        Some("10.1.2.3".parse().unwrap())
    );
    assert_eq!(
        parse_forwarded_for("proto=http; For=\"[2001:db8::1]\""),
        Some("2001:db8::1".parse().unwrap())
    );
    assert_eq!(parse_forwarded_for("by=10.0.0.1"), None);
    assert_eq!(parse_forwarded_for("for=unknown"), None);
}

/// A `Forwarded: for=` address counts only when it is a pod running as the identity the
/// peer's certificate proved.
#[test]
fn a_forwarded_address_counts_only_for_the_peers_own_workload() {
    use crate::config::Store;
    use crate::source::Update;

    let pod = |name: &str, sa: &str, ip: &str| {
        crate::manifest::object_from_value(
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": "node1", "serviceAccountName": sa, "containers": []},
                "status": {"podIP": ip},
            }),
            crate::manifest::Origin {
                file: "test.yaml".into(),
                document: 0,
            },
        )
        .unwrap()
    };
    let mut store = Store::new();
    store.apply_all(Update::first_sync([
        pod("client", "sleep", "10.244.1.2"),
        pod("admin", "admin", "10.244.1.3"),
    ]));
    let model = store.model();
    let inbound = |identity: Identity, forwarded: Option<&str>| Inbound {
        peer_identity: identity,
        peer: "10.10.0.11:40000".parse().unwrap(),
        destination: "10.244.2.2:8080".parse().unwrap(),
        forwarded_for: forwarded.map(|ip| ip.parse().unwrap()),
    };
    let sleep = Identity::new(TD, "default", "sleep");
    let client: std::net::IpAddr = "10.244.1.2".parse().unwrap();
    assert_eq!(
        inbound(sleep.clone(), Some("10.244.1.2")).vouched_source(&model),
        Some(client)
    );
    // Another workload's address, an address of no pod, another namespace's account of
    // the same name, or no header at all: not vouched for.
    assert_eq!(
        inbound(sleep.clone(), Some("10.244.1.3")).vouched_source(&model),
        None
    );
    assert_eq!(
        inbound(sleep.clone(), Some("10.244.9.9")).vouched_source(&model),
        None
    );
    assert_eq!(
        inbound(Identity::new(TD, "other", "sleep"), Some("10.244.1.2")).vouched_source(&model),
        None
    );
    assert_eq!(inbound(sleep, None).vouched_source(&model), None);
}

/// A server that accepts TLS from the test's client and hands the server side over.
async fn tls_pair(
    ca: &CertificateAuthority,
) -> (
    tokio_rustls::server::TlsStream<TcpStream>,
    SocketAddr,
    tokio_rustls::client::TlsStream<TcpStream>,
) {
    let cert = issue(ca, "server");
    let acceptor = TlsAcceptor::from(Arc::new(
        server_config(&cert, &[ca.root().clone()]).unwrap(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        connector(ca, "client", "server")
            .connect(ip_name(addr), tcp)
            .await
            .unwrap()
    };
    let server = async {
        let (tcp, peer) = listener.accept().await.unwrap();
        (acceptor.accept(tcp).await.unwrap(), peer)
    };
    let (client, (server, peer)) = tokio::join!(client, server);
    (server, peer, client)
}

/// Clients that connect and then say nothing are closed after [`HANDSHAKE_TIMEOUT`]: before
/// their TLS handshake, and after it, before their HTTP/2 preface.
#[tokio::test(start_paused = true)]
async fn silent_clients_are_closed_after_the_handshake_timeout() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let refuse = |_: Inbound| async { Err::<TcpStream, _>(StatusCode::FORBIDDEN) };

    let cert = issue(&ca, "server");
    let acceptor = TlsAcceptor::from(Arc::new(
        server_config(&cert, &[ca.root().clone()]).unwrap(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _silent = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (tcp, peer) = listener.accept().await.unwrap();
    let started = tokio::time::Instant::now();
    let result = serve_connection(acceptor, tcp, peer, refuse).await;
    assert!(
        matches!(result, Err(Error::HandshakeTimeout { stage, .. }) if stage.contains("TLS")),
        "{result:?}"
    );
    assert_eq!(started.elapsed(), HANDSHAKE_TIMEOUT);

    let (server, peer, _client) = tls_pair(&ca).await;
    let started = tokio::time::Instant::now();
    let result = serve_tls(server, peer, refuse).await;
    assert!(
        matches!(result, Err(Error::HandshakeTimeout { stage, .. }) if stage.contains("HTTP/2")),
        "{result:?}"
    );
    assert_eq!(started.elapsed(), HANDSHAKE_TIMEOUT);
}

/// A server that takes a tunnel's CONNECT and never answers fails the tunnel after
/// [`TUNNEL_ANSWER_TIMEOUT`] instead of leaving its client hanging.
#[tokio::test(start_paused = true)]
async fn a_tunnel_without_an_answer_fails_after_its_timeout() {
    let ca = CertificateAuthority::new(TD).unwrap();
    let (server, _, client) = tls_pair(&ca).await;
    tokio::spawn(async move {
        let mut connection = h2::server::Builder::new()
            .handshake::<_, Bytes>(server)
            .await
            .unwrap();
        let mut held = Vec::new();
        while let Some(Ok(accepted)) = connection.accept().await {
            held.push(accepted);
        }
    });
    let (sender, connection) = h2::client::Builder::new()
        .handshake::<_, Bytes>(client)
        .await
        .unwrap();
    tokio::spawn(connection);
    let connection = Connection {
        sender,
        closed: Arc::new(AtomicBool::new(false)),
        open: Arc::new(tokio::sync::watch::channel(0).0),
    };
    let destination: SocketAddr = "10.244.2.2:8080".parse().unwrap();
    let started = tokio::time::Instant::now();
    let result = connection.tunnel(destination, None).await;
    assert!(
        matches!(result, Err(Error::NoAnswer { authority }) if authority == destination),
        "{:?}",
        result.err()
    );
    assert_eq!(started.elapsed(), TUNNEL_ANSWER_TIMEOUT);
}

/// The pool keeps one connection per key while the source certificate stays the same; a
/// rotated certificate opens a new connection (so the server sees the new certificate) and
/// tunnels on the old connection run on.
#[tokio::test]
async fn a_rotated_source_certificate_opens_a_new_connection_and_old_tunnels_run_on() {
    use crate::identity::manager::Issued;
    use crate::identity::tls::certified_key;

    let ca = CertificateAuthority::new(TD).unwrap();
    let echo = echo_server().await;
    let (server, mut seen) = hbone_server(&ca).await;
    let pool = pool::Pool::new(Arc::new(
        crate::identity::roots::Roots::fixed(&[ca.root().clone()]).unwrap(),
    ));
    let issued = |cert: WorkloadCertificate| {
        Arc::new(Issued {
            key: certified_key(&cert).unwrap(),
            cert,
        })
    };
    let peer = Identity::new(TD, "default", "server");
    let first = issued(issue(&ca, "client"));
    let mut old = pool
        .tunnel(&first, &peer, server, echo, None)
        .await
        .unwrap();
    let _again = pool
        .tunnel(&first, &peer, server, echo, None)
        .await
        .unwrap();
    let rotated = issued(issue(&ca, "client"));
    let _new = pool
        .tunnel(&rotated, &peer, server, echo, None)
        .await
        .unwrap();
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(seen.recv().await.unwrap().peer);
    }
    assert_eq!(
        peers[0], peers[1],
        "one connection while the certificate stays"
    );
    assert_ne!(
        peers[1], peers[2],
        "a new connection for the rotated certificate"
    );

    old.write_all(b"still here").await.unwrap();
    old.shutdown().await.unwrap();
    let mut back = Vec::new();
    old.read_to_end(&mut back).await.unwrap();
    assert_eq!(
        back, b"still here",
        "the tunnel on the old connection runs on"
    );
}

/// [`idle`] completes once the count has stayed at zero for the timeout, counted from its
/// last change, and never while a tunnel is open.
#[tokio::test(start_paused = true)]
async fn idle_waits_for_a_whole_timeout_without_tunnels() {
    let timeout = Duration::from_secs(300);
    let (open, watching) = tokio::sync::watch::channel(1usize);
    let started = tokio::time::Instant::now();
    let waiter = tokio::spawn(idle(watching, timeout));
    tokio::time::sleep(timeout * 3).await;
    assert!(!waiter.is_finished(), "idle under an open tunnel");
    open.send_modify(|n| *n -= 1);
    tokio::time::sleep(timeout / 2).await;
    open.send_modify(|n| *n += 1);
    open.send_modify(|n| *n -= 1);
    let last_change = tokio::time::Instant::now();
    waiter.await.unwrap();
    assert_eq!(last_change - started, timeout * 3 + timeout / 2);
    assert_eq!(tokio::time::Instant::now() - last_change, timeout);
}

/// A client connection stays open under an open tunnel, past its idle timeout, and closes
/// once it has had none for that long.
#[tokio::test]
async fn a_connection_without_tunnels_closes_after_its_idle_timeout() {
    let idle_timeout = Duration::from_millis(300);
    let ca = CertificateAuthority::new(TD).unwrap();
    let echo = echo_server().await;
    let (server, _seen) = hbone_server(&ca).await;
    let connection = Connection::connect_closing_after(
        connector(&ca, "client", "server"),
        server,
        ip_name(server),
        idle_timeout,
    )
    .await
    .unwrap();
    let mut tunnel = connection.tunnel(echo, None).await.unwrap();
    tokio::time::sleep(idle_timeout * 3).await;
    assert!(connection.is_open(), "closed under an open tunnel");
    tunnel.write_all(b"ping").await.unwrap();
    let mut back = [0; 4];
    tunnel.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    drop(tunnel);
    tokio::time::timeout(Duration::from_secs(10), async {
        while connection.is_open() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("closed once idle");
}

/// Both ends of an HBONE connection watch for a vanished peer: keepalive probes after a
/// quiet minute, and a user timeout for unacknowledged data.
#[tokio::test]
async fn hbone_sockets_watch_for_a_vanished_peer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    watch_peer(&tcp).unwrap();
    let socket = socket2::SockRef::from(&tcp);
    assert!(socket.keepalive().unwrap());
    assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
    assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
    assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
    assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
}
