//! L7: HTTP/1.1 and HTTP/2 (gRPC) on a tunnel a node agent opened to the waypoint for one
//! service port. Per request: the VirtualService decision ([`crate::route`]), then CORS,
//! faults, redirect or direct response, or forwarding — a weighted destination, rewrites and
//! header edits, the DestinationRule's upstream ([`crate::upstream`]: endpoint choice, circuit
//! breaker, outlier detection), retries with jittered backoff, per-try and route timeouts,
//! mirrors — and Istio's request metrics with response flags. This file decides; the
//! upstream side (the request as sent, the tries, kept connections, mirrors) is `forward`.
//!
//! Request bodies stream to the upstream as the client sends them, and responses stream
//! back, so gRPC client and bidirectional streams pass; a retry resends the body from a
//! replay buffer of [`body::REPLAY_LIMIT`] bytes, and a body that outgrew it is not retried
//! ([`body`]). A request answered here (403, a fault, a redirect, a circuit breaker's 503) is
//! answered without reading its body. An HTTP/1.1 upgrade (WebSocket) is routed like any
//! request and, once the upstream answers 101, spliced through (`upgrade`).
//!
//! Each exchange is counted in the request metrics when its response ends (or the client
//! goes away), as Envoy's stats do at the end of a stream: by then the request body's size
//! is known.

use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::config::labels::NO_LABELS;
use mesh_core::hbone::Tunnel;
use mesh_core::policy::RequestAuth;

use crate::metrics::{RequestLabels, SeriesKey};
use crate::route::{
    AbortError, HeaderEdits, HttpAction, HttpDecision, NO_EDITS, RequestFacts, RetryPolicy, Source,
    Target,
};
use crate::server::Stream;

pub mod body;
mod deadline;
mod forward;
mod upgrade;

use body::RequestBody;
use deadline::{Deadline, RouteTimeout};
use forward::{forward, spawn_mirror};

pub type Body = BoxBody<Bytes, BodyError>;
/// Why a response body ended early: the upstream's error, or the route's timeout.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Envoy's default retry backoff: 25 ms base, at most 10 times that.
const BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Serves HTTP on the tunnel until the client closes it.
pub async fn serve(stream: Arc<Stream>, tunnel: Tunnel) {
    serve_connection(stream, TokioIo::new(tunnel)).await;
}

/// Serves HTTP on one client connection (a tunnel's, or a test's) until the client closes
/// it.
async fn serve_connection<I>(stream: Arc<Stream>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let stream = stream.clone();
        async move { Ok::<_, Infallible>(handle(stream, request).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // With upgrades: after a 101 hyper hands the connection over instead of closing it.
    if let Err(error) = builder.serve_connection_with_upgrades(io, service).await {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// What happened to a request, for the metrics.
#[derive(Default)]
struct Record {
    flags: Vec<&'static str>,
    destination: Option<mesh_core::config::Endpoint>,
    /// The body, once the request is forwarded: its size is known when it has been read.
    request: Option<RequestBody>,
}

fn local(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

async fn handle(stream: Arc<Stream>, request: Request<Incoming>) -> Response<CountedBody> {
    let mut exchange = Exchange {
        stream: stream.clone(),
        started: Instant::now(),
        record: Record::default(),
        answer: None,
    };
    let response = respond(&stream, request, &mut exchange.record).await;
    exchange.answer = Some(Answer {
        code: response.status().as_u16(),
        grpc_status: response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        bytes: 0,
    });
    response.map(|body| CountedBody { body, exchange })
}

/// A response body that counts its exchange when hyper is done with it: sent, or the
/// client gone. It adds up the body's bytes as they pass (a chunked or streamed response
/// has no length to read), and takes a `grpc-status` from the trailers, where gRPC sends it
/// for every call that got as far as a response.
struct CountedBody {
    body: Body,
    /// Counted when dropped.
    exchange: Exchange,
}

impl hyper::body::Body for CountedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(error))) = &polled
            && error.is::<RouteTimeout>()
        {
            this.exchange.record.flags.push("UT");
        }
        if let (std::task::Poll::Ready(Some(Ok(frame))), Some(answer)) =
            (&polled, this.exchange.answer.as_mut())
        {
            if let Some(data) = frame.data_ref() {
                answer.bytes += data.len() as u64;
            } else if let Some(status) = frame
                .trailers_ref()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
            {
                status.clone_into(&mut answer.grpc_status);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The response the client got, for the metrics.
struct Answer {
    code: u16,
    grpc_status: String,
    bytes: u64,
}

/// One request and its response, counted in the metrics when dropped: with its response's
/// end, or, dropped before its response (the client went away: hyper drops the handler),
/// as Envoy counts it: response code 0, flag DC.
struct Exchange {
    stream: Arc<Stream>,
    started: Instant,
    record: Record,
    answer: Option<Answer>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let answer = self.answer.take().unwrap_or_else(|| {
            self.record.flags.push("DC");
            Answer {
                code: 0,
                grpc_status: String::new(),
                bytes: 0,
            }
        });
        let key = SeriesKey {
            destination: self.record.destination.as_ref().and_then(|e| e.pod.clone()),
            code: answer.code,
            grpc_status: answer.grpc_status,
            flags: std::mem::take(&mut self.record.flags),
        };
        let stream = &self.stream;
        let series = stream
            .series
            .get(&stream.waypoint.metrics, key, |key| labels(stream, key));
        series.record(
            self.started.elapsed().as_secs_f64() * 1000.0,
            self.record
                .request
                .as_ref()
                .map_or(0, RequestBody::bytes_read),
            answer.bytes,
        );
    }
}

/// Where a request goes once routing has decided to forward it: borrowed from the route
/// table (or the tunnel) and the request, so that deciding allocates nothing but a rewritten
/// path.
struct Plan<'a> {
    target: &'a Target,
    /// The rewritten path and query; `None`: the client's.
    path: Option<String>,
    /// The rewritten authority; `None`: the client's.
    authority: Option<&'a str>,
    /// In the order they apply.
    request_edits: [&'a HeaderEdits; 2],
    response_edits: [&'a HeaderEdits; 2],
    timeout: Option<Duration>,
    retries: Option<&'a RetryPolicy>,
    mirrors: Vec<&'a Target>,
    extra_response_headers: HeaderMap,
}

/// Istio's retry policy for a route that sets none (and for traffic no route names).
static ISTIO_DEFAULT_RETRIES: LazyLock<RetryPolicy> = LazyLock::new(RetryPolicy::istio_default);

async fn respond(
    stream: &Stream,
    request: Request<Incoming>,
    record: &mut Record,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let asked_upgrade = upgrade::take(&mut parts);
    let model = stream.waypoint.model();
    let client = &stream.client;
    let source = Source {
        namespace: Some(client.identity.namespace.as_str()),
        labels: client.pod.as_ref().map_or(&NO_LABELS, |p| &p.labels),
        ip: client.ip,
    };
    let table = stream.cache.routes(
        &stream.waypoint.destinations,
        &model,
        &stream.service.hostname,
        &client.identity.namespace,
    );
    let auth = match authenticate(stream, &model, &mut parts).await {
        Ok(auth) => auth,
        Err(response) => return response,
    };
    let mut facts = RequestFacts::from_parts(&parts, stream.port, source);
    facts.auth = auth.as_deref();
    let request = mesh_core::policy::HttpRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        host: facts.authority,
        headers: &parts.headers,
        auth: auth.as_deref(),
    };
    if crate::authz::decide(stream, &model, Some(request)).is_some_and(|d| !d.is_allowed()) {
        return local(StatusCode::FORBIDDEN, "RBAC: access denied");
    }
    let decision = table.route_http(&facts);
    let mut plan = match &decision {
        None if table.serves_http(stream.port, &facts.source) => {
            record.flags.push("NR");
            return local(StatusCode::NOT_FOUND, "no route matched\n");
        }
        None => Plan {
            target: &stream.default_target,
            path: None,
            authority: None,
            request_edits: [&NO_EDITS; 2],
            response_edits: [&NO_EDITS; 2],
            timeout: None,
            retries: Some(&ISTIO_DEFAULT_RETRIES),
            mirrors: Vec::new(),
            extra_response_headers: HeaderMap::new(),
        },
        Some(decision) => match decide(decision, &facts, record).await {
            Ok(plan) => plan,
            Err(response) => return response,
        },
    };
    let body = RequestBody::new(body);
    record.request = Some(body.clone());
    // A mirror cannot take part in an upgraded session (its answers are dropped): upgrade
    // requests are not mirrored.
    if asked_upgrade.is_none() {
        for mirror in &plan.mirrors {
            spawn_mirror(stream, &model, mirror, &parts, &plan, &body);
        }
    }
    let forwarded = forward(stream, &model, &parts, &plan, &body, asked_upgrade, record);
    let mut response = match plan.timeout {
        Some(timeout) => {
            // As Envoy: the route timeout runs from the end of the client's request (a body
            // still streaming does not count against it) to the end of the response: before
            // the headers it is a 504, after them the response is cut off ([`deadline`]).
            let request_body = body.clone();
            let mut expired = Box::pin(async move {
                request_body.ended().await;
                tokio::time::sleep(timeout).await;
            });
            let answered = tokio::select! {
                biased;
                response = forwarded => Some(response),
                () = &mut expired => None,
            };
            match answered {
                Some(response) => response.map(|body| Deadline::new(body, expired).boxed()),
                None => {
                    record.flags.push("UT");
                    local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                }
            }
        }
        None => forwarded.await,
    };
    for edits in plan.response_edits {
        edits.apply(response.headers_mut());
    }
    response
        .headers_mut()
        .extend(std::mem::take(&mut plan.extra_response_headers));
    response
}

/// The request's JWT checked against the RequestAuthentications for its service: its facts
/// when valid, nothing without a token, or the 401 that refuses it.
async fn authenticate(
    stream: &Stream,
    model: &Arc<mesh_core::config::Model>,
    parts: &mut http::request::Parts,
) -> Result<Option<Arc<RequestAuth>>, Response<Body>> {
    let authenticator = stream.cache.authenticator(model, || {
        let config = &stream.waypoint.config;
        stream.waypoint.destinations.authenticator(
            model,
            &stream.service,
            &mesh_core::config::Name::new(&config.namespace, &config.name),
        )
    });
    if authenticator.is_empty() {
        return Ok(None);
    }
    authenticator.authenticate(parts).await.map_err(|why| {
        tracing::info!(
            client = %stream.client.identity,
            service = %stream.service.hostname,
            path = parts.uri.path(),
            reason = why.message(),
            "request refused by RequestAuthentication"
        );
        let host = match crate::route::authority(parts) {
            "" => &*stream.service.hostname,
            sent => sent,
        };
        let scheme = parts.uri.scheme_str().unwrap_or("http");
        let realm = format!("{scheme}://{host}{}", parts.uri.path());
        let mut response = local(why.status(), why.message());
        if let Ok(value) = HeaderValue::from_str(&why.challenge(&realm)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    })
}

/// Applies the parts of a matched rule that may answer at once (CORS preflight, faults,
/// redirect, direct response); otherwise the forwarding plan.
async fn decide<'a>(
    decision: &'a HttpDecision,
    facts: &RequestFacts<'_>,
    record: &mut Record,
) -> Result<Plan<'a>, Response<Body>> {
    let mut extra_response_headers = HeaderMap::new();
    if let Some(cors) = decision.cors() {
        match cors.evaluate(facts.method, facts.headers) {
            crate::route::CorsResponse::Preflight { headers } => {
                let mut response = local(StatusCode::OK, Bytes::new());
                response.headers_mut().extend(headers);
                return Err(response);
            }
            crate::route::CorsResponse::Forward { response_headers } => {
                extra_response_headers = response_headers;
            }
        }
    }
    if let Some(fault) = decision.fault() {
        let outcome = fault.roll(&mut rand::rng());
        if let Some(delay) = outcome.delay {
            record.flags.push("DI");
            tokio::time::sleep(delay).await;
        }
        match outcome.abort {
            Some(AbortError::Http(status)) => {
                record.flags.push("FI");
                return Err(local(status, "fault filter abort"));
            }
            Some(AbortError::Grpc(code)) => {
                record.flags.push("FI");
                let mut response = local(StatusCode::OK, Bytes::new());
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                headers.insert("grpc-status", HeaderValue::from(code));
                headers.insert(
                    "grpc-message",
                    HeaderValue::from_static("fault filter abort"),
                );
                return Err(response);
            }
            None => {}
        }
    }
    let forward = match decision.action() {
        HttpAction::Redirect(redirect) => {
            let location = decision.redirect_location(facts).unwrap_or_default();
            let mut response = local(redirect.status, Bytes::new());
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            return Err(response);
        }
        HttpAction::DirectResponse(direct) => {
            return Err(local(
                direct.status,
                direct.body.clone().unwrap_or_default(),
            ));
        }
        HttpAction::Forward(forward) => forward,
    };
    let destination = forward.destinations.pick(&mut rand::rng());
    let mirrors = forward
        .mirrors
        .iter()
        .filter(|m| m.roll(&mut rand::rng()))
        .map(|m| &m.target)
        .collect();
    Ok(Plan {
        target: &destination.target,
        path: decision.rewrite_path(facts.path),
        authority: decision.authority_for(destination),
        request_edits: [&decision.headers().request, &destination.headers.request],
        response_edits: [&destination.headers.response, &decision.headers().response],
        timeout: forward.timeout,
        retries: forward.retries.as_ref(),
        mirrors,
        extra_response_headers,
    })
}

/// The labels of a stream's series to `destination` (a pod of the service, when known): the
/// source, the destination and the connection, without the protocol or the response.
pub(crate) fn peer_labels(
    stream: &Stream,
    destination: Option<&mesh_core::config::PodInfo>,
) -> RequestLabels {
    let unknown = || "unknown".to_owned();
    let client = &stream.client;
    let source = client.pod.as_deref();
    let label = |pod: Option<&mesh_core::config::PodInfo>, key: &str| {
        pod.and_then(|p| p.labels.get(key).map(str::to_owned))
            .unwrap_or_else(unknown)
    };
    let canonical = |pod: Option<&mesh_core::config::PodInfo>| {
        pod.map_or_else(
            || (unknown(), unknown()),
            |p| {
                (
                    p.canonical_service().to_owned(),
                    p.canonical_revision().to_owned(),
                )
            },
        )
    };
    let (source_canonical_service, source_canonical_revision) = canonical(source);
    let (destination_canonical_service, destination_canonical_revision) = canonical(destination);
    RequestLabels {
        reporter: "waypoint",
        source_workload: source.map_or_else(unknown, |p| p.workload.to_string()),
        source_workload_namespace: client.identity.namespace.clone(),
        source_principal: client.identity.to_string(),
        source_app: label(source, "app"),
        source_version: label(source, "version"),
        source_canonical_service,
        source_canonical_revision,
        destination_service: stream.service.hostname.clone(),
        destination_service_name: stream.service.name.name.to_string(),
        destination_service_namespace: stream.service.name.namespace.to_string(),
        destination_workload: destination.map_or_else(unknown, |p| p.workload.to_string()),
        destination_workload_namespace: destination
            .map_or_else(unknown, |p| p.name.namespace.to_string()),
        destination_principal: destination.map_or_else(unknown, |p| {
            stream
                .waypoint
                .destinations
                .certs
                .identity_of(&p.name.namespace, &p.service_account)
                .to_string()
        }),
        destination_app: label(destination, "app"),
        destination_version: label(destination, "version"),
        destination_canonical_service,
        destination_canonical_revision,
        connection_security_policy: "mutual_tls",
        ..RequestLabels::default()
    }
}

fn labels(stream: &Stream, key: &SeriesKey) -> RequestLabels {
    RequestLabels {
        request_protocol: if stream
            .service
            .ports
            .iter()
            .any(|p| p.port == stream.port && p.declared_protocol().starts_with("grpc"))
        {
            "grpc"
        } else {
            "http"
        },
        response_code: key.code,
        grpc_response_status: key.grpc_status.clone(),
        response_flags: if key.flags.is_empty() {
            "-".to_owned()
        } else {
            key.flags.join(",")
        },
        ..peer_labels(stream, key.destination.as_deref())
    }
}

#[cfg(test)]
mod tests;
