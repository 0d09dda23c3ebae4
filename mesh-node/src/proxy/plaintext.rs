//! The plaintext inbound listener (15006): TCP from outside the mesh to this node's enrolled
//! pods, captured by the eBPF inbound program (`bpf_sk_assign`, the eBPF form of TPROXY).
//! An accepted socket's local address is where the client was going (the pod, after any
//! ClusterIP DNAT), its peer the client itself.
//!
//! The pod's PeerAuthentication decides first: STRICT refuses plaintext (the client gets a
//! reset), PERMISSIVE (Istio's default) lets it through to the same AuthorizationPolicy
//! checks mesh clients get, with no identity. A destination that is not an enrolled pod of
//! this node (a DNAT that chose another backend, a pod that just left the mesh) is forwarded
//! as it is.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::policy;
use tokio::net::{TcpListener, TcpStream};

use super::inbound::{Counted, admit};
use super::{Proxy, accept_forever, connect_tcp, reset};
use crate::metrics::TcpLabels;

/// Accepts until the task is dropped.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    accept_forever(listener, "plaintext inbound", |stream, peer| {
        let proxy = proxy.clone();
        async move {
            if let Err(error) = handle(&proxy, stream, peer).await {
                tracing::debug!(%peer, %error, "plaintext inbound connection ended with an error");
            }
        }
    })
    .await;
}

async fn handle(proxy: &Proxy, mut client: TcpStream, peer: SocketAddr) -> io::Result<()> {
    let destination = client.local_addr()?;
    let _ = client.set_nodelay(true);
    let model = proxy.model();
    let Some(pod) = proxy.local_mesh_pod(&model, destination.ip()) else {
        // Not ours to judge: forward as the client asked (the destination's node captures it
        // again if it is a mesh pod there).
        let mut upstream = connect_tcp(destination).await?;
        mesh_core::copy::bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    };
    let mtls = policy::mtls_mode(&model.peer_authentications_for(&pod), destination.port());
    if !mtls.accepts_plaintext() {
        proxy.metrics.denied();
        tracing::info!(
            %peer,
            pod = %format_args!("{}/{}", pod.name.namespace, pod.name.name),
            port = destination.port(),
            mode = %mtls,
            "plaintext connection refused: the pod takes mutual TLS only"
        );
        return reset(client);
    }
    let pod = match admit(proxy, &model, None, peer.ip(), destination) {
        Ok(pod) => pod,
        Err(refusal) => {
            tracing::info!(%peer, %destination, %refusal, "plaintext connection refused");
            return reset(client);
        }
    };
    let upstream = match connect_tcp(destination).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::debug!(%destination, %error, "the pod refused");
            return reset(client);
        }
    };
    let labels = TcpLabels::new(
        "destination",
        (model.pod_by_ip(peer.ip()).map(|p| &**p), None),
        Some((&pod, &proxy.identity_of(&pod))),
        None,
        false,
    );
    let mut upstream = Counted::new(upstream, proxy.metrics.clone(), labels);
    mesh_core::copy::bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
