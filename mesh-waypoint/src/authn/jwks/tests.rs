//! JWK Sets fetched from an issuer served on loopback: by `jwksUri` over HTTP and HTTPS, by
//! OpenID discovery, followed through a key rotation, recovered after the issuer failed,
//! and the fetch task ending when no rule holds its keys (even mid-fetch).

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
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::super::testing::{Signer, now_plus};
use super::super::{Authenticator, Rejection};
use super::*;

const ISSUER: &str = "https://issuer.example";
/// Far longer than any wait here should take.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the issuer answers, by path (404 elsewhere), changed by the test.
type Answers = Arc<Mutex<HashMap<String, (StatusCode, String)>>>;

fn answers(pairs: &[(&str, StatusCode, String)]) -> Answers {
    Arc::new(Mutex::new(
        pairs
            .iter()
            .map(|(path, status, body)| ((*path).to_owned(), (*status, body.clone())))
            .collect(),
    ))
}

/// Serves `answers` on a loopback port, plain or with `tls`; the port.
async fn issuer(answers: Answers, tls: Option<Arc<rustls::ServerConfig>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let answers = answers.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (status, body) = answers
                    .lock()
                    .unwrap()
                    .get(request.uri().path())
                    .cloned()
                    .unwrap_or((StatusCode::NOT_FOUND, String::new()));
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = status;
                async move { Ok::<_, Infallible>(response) }
            });
            let tls = tls.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    Some(config) => {
                        let accepted = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await;
                        if let Ok(stream) = accepted {
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

/// An authenticator with one rule for [`ISSUER`]: `keys` (YAML-free JSON) beside it.
fn authenticator(keys: serde_json::Value, fetcher: &Arc<Fetcher>) -> Authenticator {
    let mut rule = json!({"issuer": ISSUER, "timeout": "10s"});
    rule.as_object_mut()
        .unwrap()
        .extend(keys.as_object().unwrap().clone());
    let value = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "shop"},
        "spec": {"jwtRules": [rule]},
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

type Checked = Result<Option<Arc<RequestAuth>>, Rejection>;

async fn check(auth: &Authenticator, token: &str) -> Checked {
    let mut parts = Request::get("/")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    within("a check", auth.authenticate(&mut parts)).await
}

/// Waits, up to [`DEADLINE`], until `token` gets what `wanted` accepts.
async fn until_checked(auth: &Authenticator, token: &str, wanted: fn(&Checked) -> bool) {
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

fn valid(got: &Checked) -> bool {
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
    let served = answers(&[("/jwks.json", StatusCode::OK, old.jwks())]);
    let port = issuer(served.clone(), None).await;
    let fetcher = Arc::new(Fetcher {
        nudge_every: Duration::ZERO,
        ..Fetcher::default()
    });
    let uri = format!("http://127.0.0.1:{port}/jwks.json");
    let auth = authenticator(json!({"jwksUri": uri}), &fetcher);
    // The first request waits for the first fetch.
    let first = check(&auth, &token(&old)).await;
    assert!(valid(&first), "{first:?}");
    // The issuer rotates: a token naming the new key makes the waypoint fetch again.
    served
        .lock()
        .unwrap()
        .insert("/jwks.json".into(), (StatusCode::OK, new.jwks()));
    until_checked(&auth, &token(&new), valid).await;
    assert_eq!(check(&auth, &token(&old)).await, Err(Rejection::UnknownKey));
    // Another rule naming the same URI shares the fetch.
    let again = fetcher.source(Origin::Uri(uri), DEFAULT_TIMEOUT);
    assert_eq!(fetcher.sources.lock().unwrap().len(), 1);
    assert!(again.current().is_some());
}

#[tokio::test]
async fn without_keys_or_uri_the_issuer_is_asked_by_openid_discovery() {
    let signer = Signer::new("k1");
    let served = answers(&[("/keys", StatusCode::OK, signer.jwks())]);
    let port = issuer(served.clone(), None).await;
    let issuer_url = format!("http://127.0.0.1:{port}/");
    served.lock().unwrap().insert(
        "/.well-known/openid-configuration".into(),
        (
            StatusCode::OK,
            json!({"issuer": issuer_url, "jwks_uri": format!("http://127.0.0.1:{port}/keys")})
                .to_string(),
        ),
    );
    let fetcher = Fetcher::default();
    let keys = fetcher
        .fetch(&Origin::Discovery(issuer_url.clone()), DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    // A rule with neither jwks nor jwksUri uses it.
    let fetcher = Arc::new(fetcher);
    let value = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": "jwt", "namespace": "shop"},
        "spec": {"jwtRules": [{"issuer": issuer_url}]},
    });
    let Ok(Resource::RequestAuthentication(policy)) =
        Resource::from_value(Kind::RequestAuthentication, value)
    else {
        panic!("a RequestAuthentication")
    };
    let auth = Authenticator::compile(&[policy], Some(&fetcher));
    let token = signer.token(&json!({"iss": issuer_url, "sub": "bob"}));
    let got = check(&auth, &token).await;
    assert!(valid(&got), "{got:?}");
    // A configuration without jwks_uri says so.
    served.lock().unwrap().insert(
        "/.well-known/openid-configuration".into(),
        (StatusCode::OK, "{}".into()),
    );
    let error = fetcher
        .fetch(&Origin::Discovery(issuer_url), DEFAULT_TIMEOUT)
        .await
        .unwrap_err();
    assert!(error.ends_with("names no jwks_uri"), "{error}");
}

#[tokio::test]
async fn tokens_are_refused_until_the_keys_can_be_fetched() {
    let signer = Signer::new("k1");
    let served = answers(&[("/keys", StatusCode::SERVICE_UNAVAILABLE, "down".into())]);
    let port = issuer(served.clone(), None).await;
    let fetcher = Arc::new(Fetcher::default());
    let auth = authenticator(
        json!({"jwksUri": format!("http://127.0.0.1:{port}/keys")}),
        &fetcher,
    );
    assert_eq!(
        check(&auth, &token(&signer)).await,
        Err(Rejection::KeysNotFetched)
    );
    // Retried with a backoff from 1 s: the keys arrive once the issuer serves them.
    served
        .lock()
        .unwrap()
        .insert("/keys".into(), (StatusCode::OK, signer.jwks()));
    until_checked(&auth, &token(&signer), valid).await;
}

#[tokio::test]
async fn a_fetch_says_what_went_wrong() {
    let fetcher = Fetcher::default();
    let served = answers(&[("/", StatusCode::OK, "{\"keys\": []}".into())]);
    let port = issuer(served.clone(), None).await;
    let origin = Origin::Uri(format!("http://127.0.0.1:{port}/"));
    let error = fetcher.fetch(&origin, DEFAULT_TIMEOUT).await.unwrap_err();
    assert!(error.contains("no usable key"), "{error}");
    served.lock().unwrap().clear();
    let error = fetcher.fetch(&origin, DEFAULT_TIMEOUT).await.unwrap_err();
    assert_eq!(error, "answered 404 Not Found");
    let error = fetcher
        .fetch(&Origin::Uri("ftp://host/keys".into()), DEFAULT_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(error, "not an http or https URL");
}

#[tokio::test]
async fn a_hanging_issuer_times_out_and_the_task_ends_with_its_keys() {
    // An issuer that takes the request and never answers; each connection reports when
    // the waypoint lets go of it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted_tx, mut accepted) = mpsc::unbounded_channel::<()>();
    let (closed_tx, mut closed) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = accepted_tx.send(());
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                let _ = closed_tx.send(());
            });
        }
    });
    let origin = Origin::Uri(format!("http://127.0.0.1:{port}/keys"));
    let error = Fetcher::default()
        .fetch(&origin, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(error, "no answer within 200ms");
    within("the timed-out connection closed", closed.recv()).await;
    within("the first connection", accepted.recv()).await;

    let fetcher = Arc::new(Fetcher::default());
    let source = fetcher.source(origin, Duration::from_secs(60));
    within("the task's fetch", accepted.recv()).await;
    drop(source);
    within("the fetch given up with its keys", closed.recv()).await;
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
    let served = answers(&[("/jwks.json", StatusCode::OK, signer.jwks())]);
    let port = issuer(served, Some(Arc::new(server))).await;
    let origin = Origin::Uri(format!("https://127.0.0.1:{port}/jwks.json"));
    let with_roots = |roots: RootCertStore| Fetcher {
        roots: Mutex::new(Some(Arc::new(roots))),
        ..Fetcher::default()
    };
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let keys = with_roots(roots)
        .fetch(&origin, DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let mut other = RootCertStore::empty();
    let stranger = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    other.add(stranger.der().clone()).unwrap();
    let error = with_roots(other)
        .fetch(&origin, DEFAULT_TIMEOUT)
        .await
        .unwrap_err();
    assert!(error.starts_with("TLS with 127.0.0.1"), "{error}");
}
