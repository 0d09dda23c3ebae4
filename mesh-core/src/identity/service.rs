//! The CA over gRPC, in the shape of Istio's `istio.v1.auth.IstioCertificateService/
//! CreateCertificate` (PEM CSR and validity in, PEM chain out). A caller authenticates with
//! a bearer credential; an [`Authorizer`] decides which identities that caller may obtain
//! (a node agent: only those of pods scheduled on its node). The identity signed is the one
//! the CSR asks for, and only after that check.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::ca::{certificate_pem, requested_identity};
use super::{CertificateAuthority, Identity, WorkloadCertificate, WorkloadKey};

mod address;

pub use address::CaAddress;

/// The generated protocol types, client and server.
pub mod proto {
    tonic::include_proto!("istio.v1.auth");
}

use proto::istio_certificate_service_server::IstioCertificateService;
use proto::{IstioCertificateRequest, IstioCertificateResponse};

/// The DNS name in the CA's serving certificate; clients check it (the address may vary).
pub const CA_SERVER_NAME: &str = "mesh-ca.istio-system.svc";

/// A client of the CA's gRPC service.
pub type CaClient = proto::istio_certificate_service_client::IstioCertificateServiceClient<
    tonic::transport::Channel,
>;

/// A client for the CA at `addr` over TLS, trusting `root_pem` and checking the CA's name
/// ([`CA_SERVER_NAME`], whatever address or name was dialled); it connects on first use.
pub fn ca_client(
    addr: &CaAddress,
    root_pem: &str,
    timeout: Duration,
) -> Result<CaClient, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root_pem))
                .domain_name(CA_SERVER_NAME),
        )?
        .timeout(timeout)
        .connect_timeout(timeout)
        .connect_lazy();
    Ok(CaClient::new(channel))
}

/// The CA's default and longest certificate lifetime.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Decides which identities the holder of a credential may obtain. It may do I/O (ask the
/// Kubernetes API), so it answers with a future.
pub trait Authorizer: Send + Sync + 'static {
    /// `Err` says why not, for the caller: it names the caller and the reason, never the
    /// credential.
    fn authorize(
        &self,
        credential: &str,
        identity: &Identity,
    ) -> impl Future<Output = Result<(), Refusal>> + Send;
}

/// Why an [`Authorizer`] said no, which also picks the gRPC status the caller gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The credential proves no one (unknown, expired, for another audience):
    /// `Unauthenticated`.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not hold the identity: `PermissionDenied`.
    #[error("{0}")]
    Denied(String),
    /// The authorizer could not decide (its backend, e.g. the Kubernetes API, failed):
    /// `Unavailable`, which the caller retries.
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    /// The gRPC status for a refusal of `identity`.
    pub fn into_status(self, identity: &Identity) -> Status {
        match self {
            Refusal::Unauthenticated(why) => Status::unauthenticated(format!("{identity}: {why}")),
            Refusal::Denied(why) => Status::permission_denied(format!("{identity}: {why}")),
            Refusal::Unavailable(why) => Status::unavailable(format!("{identity}: {why}")),
        }
    }
}

/// The CA a service signs with now: the CA process swaps in a new one when its plug-in
/// files change (a root rotation, a new intermediate).
pub type CurrentCa = watch::Receiver<Arc<CertificateAuthority>>;

pub struct CaService<A> {
    ca: CurrentCa,
    authorizer: A,
    max_validity: Duration,
    observer: Option<Observer>,
}

impl<A: Authorizer> CaService<A> {
    pub fn new(ca: CurrentCa, authorizer: A, max_validity: Duration) -> Self {
        CaService {
            ca,
            authorizer,
            max_validity,
            observer: None,
        }
    }

    /// Tells `observer` how each request ended.
    pub fn observed_by(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn into_server(
        self,
    ) -> proto::istio_certificate_service_server::IstioCertificateServiceServer<Self> {
        proto::istio_certificate_service_server::IstioCertificateServiceServer::new(self)
    }
}

/// How a certificate request ended, for the CA's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Signed and answered.
    Issued,
    /// No bearer credential, or one that proves no one.
    Unauthenticated,
    /// The CSR is not PEM, not a CSR, or asks for no SPIFFE identity.
    BadCsr,
    /// The caller may not hold the identity.
    Denied,
    /// The authorizer's backend (the Kubernetes API) failed.
    Unavailable,
    /// Signing failed (e.g. an identity outside the CA's trust domain).
    SignFailed,
}

/// Told the outcome of every request.
pub type Observer = Arc<dyn Fn(Outcome) + Send + Sync>;

#[tonic::async_trait]
impl<A: Authorizer> IstioCertificateService for CaService<A> {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let (outcome, answer) = match self.answer(request).await {
            Ok(response) => (Outcome::Issued, Ok(response)),
            Err((outcome, status)) => (outcome, Err(status)),
        };
        if let Some(observer) = &self.observer {
            observer(outcome);
        }
        answer
    }
}

impl<A: Authorizer> CaService<A> {
    async fn answer(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, (Outcome, Status)> {
        let bad_csr = |status| (Outcome::BadCsr, status);
        let credential = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                (
                    Outcome::Unauthenticated,
                    Status::unauthenticated("no `authorization: Bearer <credential>` metadata"),
                )
            })?
            .to_owned();
        let request = request.into_inner();
        let csr = pem::parse(&request.csr)
            .map_err(|e| bad_csr(Status::invalid_argument(format!("csr is not PEM: {e}"))))?;
        let identity = requested_identity(csr.contents())
            .map_err(|e| bad_csr(Status::invalid_argument(e.to_string())))?;
        if let Err(refusal) = self.authorizer.authorize(&credential, &identity).await {
            let outcome = match &refusal {
                Refusal::Unavailable(why) => {
                    tracing::warn!(%identity, reason = %why, "could not authorize a certificate request");
                    Outcome::Unavailable
                }
                Refusal::Unauthenticated(why) => {
                    tracing::info!(%identity, reason = %why, "refused a certificate request");
                    Outcome::Unauthenticated
                }
                Refusal::Denied(why) => {
                    tracing::info!(%identity, reason = %why, "refused a certificate request");
                    Outcome::Denied
                }
            };
            return Err((outcome, refusal.into_status(&identity)));
        }
        let asked = u64::try_from(request.validity_duration).unwrap_or(0);
        let validity = match asked {
            0 => DEFAULT_VALIDITY.min(self.max_validity),
            seconds => Duration::from_secs(seconds).min(self.max_validity),
        };
        let ca = self.ca.borrow().clone();
        let chain = ca
            .sign(csr.contents(), &identity, validity)
            .map_err(|e| (Outcome::SignFailed, Status::invalid_argument(e.to_string())))?;
        tracing::info!(%identity, ?validity, "issued a workload certificate");
        let cert_chain = chain.iter().map(|der| certificate_pem(der)).collect();
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}

/// Asks the CA for a certificate for `identity` with a fresh key.
pub async fn request_certificate(
    client: &mut CaClient,
    credential: &str,
    identity: &Identity,
    validity: Duration,
) -> Result<WorkloadCertificate, Status> {
    let key = WorkloadKey::generate().map_err(|e| Status::internal(e.to_string()))?;
    let csr = key
        .csr(identity)
        .map_err(|e| Status::internal(e.to_string()))?;
    let mut request = Request::new(IstioCertificateRequest {
        csr: pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr)),
        validity_duration: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
    });
    let bearer = format!("Bearer {credential}")
        .parse()
        .map_err(|_| Status::invalid_argument("the credential is not valid header text"))?;
    request.metadata_mut().insert("authorization", bearer);
    let response = client.create_certificate(request).await?.into_inner();
    let chain = response
        .cert_chain
        .iter()
        .map(|text| pem::parse(text).map(|p| p.into_contents().into()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::internal(format!("the CA returned a chain that is not PEM: {e}")))?;
    WorkloadCertificate::new(key, chain).map_err(|e| Status::internal(e.to_string()))
}

#[cfg(test)]
mod tests;
