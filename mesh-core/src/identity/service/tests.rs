use std::collections::BTreeMap;

use tokio::net::TcpListener;

use super::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use super::*;

const TD: &str = "cluster.local";

/// Node credentials, and which service accounts have pods on which node.
struct NodeAuthorizer {
    tokens: BTreeMap<String, String>,
    accounts_on_node: BTreeMap<String, Vec<Identity>>,
}

impl Authorizer for NodeAuthorizer {
    async fn authorize(&self, credential: &str, identity: &Identity) -> Result<(), Refusal> {
        if credential == "token-backend-down" {
            return Err(Refusal::Unavailable("the backend did not answer".into()));
        }
        let node = self
            .tokens
            .get(credential)
            .ok_or_else(|| Refusal::Unauthenticated("unknown credential".into()))?;
        let local = self.accounts_on_node.get(node).into_iter().flatten();
        local
            .into_iter()
            .any(|id| id == identity)
            .then_some(())
            .ok_or_else(|| {
                Refusal::Denied(format!(
                    "no pod of this service account runs on node {node}"
                ))
            })
    }
}

/// How the requests to a [`serve`]d CA ended, in order.
type Outcomes = Arc<std::sync::Mutex<Vec<Outcome>>>;

async fn serve() -> (
    IstioCertificateServiceClient<tonic::transport::Channel>,
    Outcomes,
) {
    let reviews = Identity::new(TD, "default", "bookinfo-reviews");
    let ratings = Identity::new(TD, "default", "bookinfo-ratings");
    let authorizer = NodeAuthorizer {
        tokens: BTreeMap::from([
            ("token-node1".into(), "node1".into()),
            ("token-node2".into(), "node2".into()),
        ]),
        accounts_on_node: BTreeMap::from([
            ("node1".into(), vec![reviews]),
            ("node2".into(), vec![ratings]),
        ]),
    };
    let (_, ca) = tokio::sync::watch::channel(Arc::new(CertificateAuthority::new(TD).unwrap()));
    let outcomes = Outcomes::default();
    let seen = outcomes.clone();
    let service = CaService::new(ca, authorizer, Duration::from_secs(3600))
        .observed_by(Arc::new(move |outcome| seen.lock().unwrap().push(outcome)))
        .into_server();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let client = IstioCertificateServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (client, outcomes)
}

#[tokio::test]
async fn a_node_gets_certificates_for_its_own_pods_only() {
    let (mut client, outcomes) = serve().await;
    let reviews = Identity::new(TD, "default", "bookinfo-reviews");
    let cert = request_certificate(
        &mut client,
        "token-node1",
        &reviews,
        Duration::from_secs(7200),
    )
    .await
    .unwrap();
    assert_eq!(cert.identity, reviews);
    assert_eq!(cert.chain.len(), 2);
    let life = cert.not_after.duration_since(cert.not_before).unwrap();
    assert!(
        life <= Duration::from_secs(3600 + 60),
        "capped at the CA's maximum: {life:?}"
    );

    let ratings = Identity::new(TD, "default", "bookinfo-ratings");
    let refused = request_certificate(
        &mut client,
        "token-node1",
        &ratings,
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("node1"), "{}", refused.message());

    let stranger = request_certificate(&mut client, "forged", &reviews, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), tonic::Code::Unauthenticated);
    let undecided = request_certificate(
        &mut client,
        "token-backend-down",
        &reviews,
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert_eq!(
        undecided.code(),
        tonic::Code::Unavailable,
        "worth a retry, not a denial"
    );
    assert!(
        !stranger.message().contains("forged"),
        "the credential stays out of the answer: {}",
        stranger.message()
    );
    assert_eq!(
        *outcomes.lock().unwrap(),
        [
            Outcome::Issued,
            Outcome::Denied,
            Outcome::Unauthenticated,
            Outcome::Unavailable
        ]
    );
}

#[tokio::test]
async fn requests_without_credentials_or_with_bad_csrs_are_refused() {
    let (mut client, outcomes) = serve().await;
    let bare = client
        .create_certificate(IstioCertificateRequest {
            csr: "x".into(),
            validity_duration: 60,
        })
        .await
        .unwrap_err();
    assert_eq!(bare.code(), tonic::Code::Unauthenticated);
    let mut request = Request::new(IstioCertificateRequest {
        csr: "not pem".into(),
        validity_duration: 60,
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer token-node1".parse().unwrap());
    let bad = client.create_certificate(request).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        *outcomes.lock().unwrap(),
        [Outcome::Unauthenticated, Outcome::BadCsr]
    );
}

#[test]
fn ca_addresses_are_ips_or_dns_names_with_a_port() {
    let parse = |text: &str| text.parse::<CaAddress>();
    assert_eq!(
        parse("10.96.0.12:15012"),
        Ok(CaAddress::Ip("10.96.0.12:15012".parse().unwrap()))
    );
    assert_eq!(
        parse("[fd00::12]:15012").map(|a| a.to_string()),
        Ok("[fd00::12]:15012".to_owned())
    );
    let name = parse("Mesh-CA.istio-system.svc.cluster.local.:15012").unwrap();
    assert_eq!(
        name.to_string(),
        "mesh-ca.istio-system.svc.cluster.local:15012"
    );
    assert_eq!(name.port(), 15012);
    for (bad, says) in [
        ("mesh-ca.istio-system.svc", "not host:port"),
        ("mesh-ca:http", "not a port number"),
        ("mesh-ca:99999", "not a port number"),
        ("CA_CLUSTER_IP:15012", "neither an IP address"),
        ("fd00::12:15012", "neither an IP address"),
        (":15012", "neither an IP address"),
        ("mesh..ca:15012", "neither an IP address"),
        ("-mesh-ca:15012", "neither an IP address"),
    ] {
        let error = parse(bad).unwrap_err();
        assert!(error.contains(says), "{bad}: {error}");
    }
}
