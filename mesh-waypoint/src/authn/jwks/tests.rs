//! JWKS fetched from a `jwksUri` served on loopback: over HTTP and HTTPS, followed through a
//! key rotation, and recovered after the issuer failed to serve it.

use std::convert::Infallible;
use std::future::Future;

use http::Response;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use mesh_core::config::Resource;
use mesh_core::config::resource::Kind;
use mesh_core::policy::RequestAuth;
use serde_json::json;
use tokio::net::TcpListener;

use super::super::testing::{Signer, now_plus};
use super::super::{Authenticator, Rejection};
use super::*;

const ISSUER: &str = "https://issuer.example";
/// Far longer than any wait here should take.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the issuer's JWKS endpoint answers: a status and a body, changed by the test.
type Answer = Arc<Mutex<(StatusCode, String)>>;

/// Serves `answer` for every request on a loopback port, plain or with `tls`; the port.
async fn issuer(answer: Answer, tls: Option<Arc<rustls::ServerConfig>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                let (status, body) = answer.lock().unwrap().clone();
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                async move { Ok::<_, Infallible>(response) }
            });
            let tls = tls.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(config) => {
                        if let Ok(stream) =
                            tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                        {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                    }
                }
            });
        }
    });
    port
}

fn answer(status: StatusCode, body: String) -> Answer {
    Arc::new(Mutex::new((status, body)))
}

/// An authenticator with one rule for [`ISSUER`] whose keys are at `uri`.
fn authenticator(uri: &str, fetcher: &Arc<Fetcher>) -> Authenticator {
    let value = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "shop"},
        "spec": {"jwtRules": [{"issuer": ISSUER, "jwksUri": uri, "timeout": "2s"}]},
    });
    let Ok(Resource::RequestAuthentication(policy)) =
        Resource::from_value(Kind::RequestAuthentication, value)
    else {
        panic!("a RequestAuthentication")
    };
    let compiled = Authenticator::compile(&[policy], Some(fetcher));
    assert!(compiled.warnings().is_empty(), "{:?}", compiled.warnings());
    compiled
}

async fn check(auth: &Authenticator, token: &str) -> Result<Option<RequestAuth>, Rejection> {
    let mut parts = Request::get("/")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    auth.authenticate(&mut parts).await
}

/// Waits, up to [`DEADLINE`], until `token` gets `wanted`.
async fn until_checked(
    auth: &Authenticator,
    token: &str,
    wanted: fn(&Result<Option<RequestAuth>, Rejection>) -> bool,
) {
    let start = Instant::now();
    loop {
        let got = check(auth, token).await;
        if wanted(&got) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "still {got:?} after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn token(signer: &Signer) -> String {
    signer.token(&json!({"iss": ISSUER, "sub": "alice", "exp": now_plus(300)}))
}

fn valid(got: &Result<Option<RequestAuth>, Rejection>) -> bool {
    matches!(got, Ok(Some(_)))
}

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {DEADLINE:?}"))
}

#[tokio::test]
async fn keys_are_fetched_on_first_use_and_follow_a_rotation() {
    let old = Signer::new("old");
    let new = Signer::new("new");
    let served = answer(StatusCode::OK, old.jwks());
    let port = issuer(served.clone(), None).await;
    let fetcher = Arc::new(Fetcher {
        nudge_every: Duration::ZERO,
        ..Fetcher::default()
    });
    let auth = authenticator(&format!("http://127.0.0.1:{port}/jwks.json"), &fetcher);
    // The first request waits for the first fetch.
    let first = within("the first check", check(&auth, &token(&old))).await;
    assert!(valid(&first), "{first:?}");
    // The issuer rotates: a token naming the new key makes the waypoint fetch again.
    *served.lock().unwrap() = (StatusCode::OK, new.jwks());
    until_checked(&auth, &token(&new), valid).await;
    assert_eq!(check(&auth, &token(&old)).await, Err(Rejection::UnknownKey));
    // Another rule naming the same URI shares the fetch.
    let again = fetcher.source(
        &format!("http://127.0.0.1:{port}/jwks.json"),
        DEFAULT_TIMEOUT,
    );
    assert_eq!(fetcher.sources.lock().unwrap().len(), 1);
    assert!(again.keys().await.is_some());
}

#[tokio::test]
async fn tokens_are_refused_until_the_keys_can_be_fetched() {
    let signer = Signer::new("k1");
    let served = answer(StatusCode::SERVICE_UNAVAILABLE, "down".into());
    let port = issuer(served.clone(), None).await;
    let fetcher = Arc::new(Fetcher::default());
    let auth = authenticator(&format!("http://127.0.0.1:{port}/keys"), &fetcher);
    let refused = within("the first check", check(&auth, &token(&signer))).await;
    assert_eq!(refused, Err(Rejection::NoKeys));
    // Retried with a backoff from 1 s: the keys arrive once the issuer serves them.
    *served.lock().unwrap() = (StatusCode::OK, signer.jwks());
    until_checked(&auth, &token(&signer), valid).await;
}

#[tokio::test]
async fn a_fetch_says_what_went_wrong() {
    let fetcher = Fetcher::default();
    let served = answer(StatusCode::OK, "{\"keys\": []}".into());
    let port = issuer(served.clone(), None).await;
    let uri = format!("http://127.0.0.1:{port}/");
    let error = fetcher.fetch(&uri, DEFAULT_TIMEOUT).await.unwrap_err();
    assert!(error.contains("no usable key"), "{error}");
    *served.lock().unwrap() = (StatusCode::NOT_FOUND, String::new());
    let error = fetcher.fetch(&uri, DEFAULT_TIMEOUT).await.unwrap_err();
    assert_eq!(error, "answered 404 Not Found");
    let error = fetcher
        .fetch("ftp://host/keys", DEFAULT_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(error, "not an http or https URL");
}

#[tokio::test]
async fn keys_are_fetched_over_https_from_a_trusted_issuer_only() {
    let signer = Signer::new("k1");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let port = issuer(
        answer(StatusCode::OK, signer.jwks()),
        Some(Arc::new(server)),
    )
    .await;
    let uri = format!("https://127.0.0.1:{port}/jwks.json");
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let keys = Fetcher::with_roots(roots)
        .fetch(&uri, DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let error = Fetcher::with_roots(RootCertStore::empty())
        .fetch(&uri, DEFAULT_TIMEOUT)
        .await
        .unwrap_err();
    assert!(error.starts_with("TLS with 127.0.0.1"), "{error}");
}
