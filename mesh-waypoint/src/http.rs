//! L7: HTTP/1.1 and HTTP/2 (gRPC) on a tunnel a node agent opened to the waypoint for one
//! service port. Per request: the VirtualService decision ([`crate::route`]), then CORS,
//! faults, redirect or direct response, or forwarding — a weighted destination, rewrites and
//! header edits, the DestinationRule's upstream ([`crate::upstream`]: endpoint choice, circuit
//! breaker, outlier detection), retries with jittered backoff, per-try and route timeouts,
//! mirrors — and Istio's request metrics with response flags.
//!
//! Request bodies are read whole before forwarding (retries and mirrors replay them), so
//! streaming request bodies (gRPC client streaming) are buffered; responses stream through.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::config::Model;
use mesh_core::hbone::Tunnel;
use rand::Rng as _;

use crate::destinations::InUse;
use crate::metrics::{Metrics, Overflow as OverflowMetric, RequestLabels};
use crate::route::{
    AbortError, HeaderEdits, HttpAction, HttpDecision, RequestFacts, RetryPolicy, Source, Target,
    UpstreamFailure,
};
use crate::server::Stream;
use crate::upstream::{HashInput, Outcome, Overflow, RetrySlot, Upstream};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Envoy's default retry backoff: 25 ms base, at most 10 times that.
const BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Serves HTTP on the tunnel until the client closes it.
pub async fn serve(stream: Arc<Stream>, tunnel: Tunnel) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let stream = stream.clone();
        async move { Ok::<_, Infallible>(handle(&stream, request).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(error) = builder.serve_connection(tunnel.into_inner(), service).await {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// What happened to a request, for the metrics.
struct Record {
    flags: Vec<&'static str>,
    destination: Option<mesh_core::config::Endpoint>,
    request_bytes: u64,
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

async fn handle(stream: &Stream, request: Request<Incoming>) -> Response<Body> {
    let mut pending = Pending {
        stream,
        started: Instant::now(),
        record: Record {
            flags: Vec::new(),
            destination: None,
            request_bytes: 0,
        },
        done: false,
    };
    let response = respond(stream, request, &mut pending.record).await;
    pending.done = true;
    stream.waypoint.metrics.request(
        &labels(
            stream,
            &pending.record,
            response.status().as_u16(),
            response.headers(),
        ),
        pending.started.elapsed().as_secs_f64() * 1000.0,
        pending.record.request_bytes,
        response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0),
    );
    response
}

/// A request in progress. Dropped before its response (the client went away: hyper drops
/// the handler), it is still counted, as Envoy does: response code 0, flag DC.
struct Pending<'a> {
    stream: &'a Stream,
    started: Instant,
    record: Record,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.record.flags.push("DC");
        let labels = labels(self.stream, &self.record, 0, &HeaderMap::new());
        self.stream.waypoint.metrics.request(
            &labels,
            self.started.elapsed().as_secs_f64() * 1000.0,
            self.record.request_bytes,
            0,
        );
    }
}

/// Where a request goes once routing has decided to forward it.
struct Plan {
    target: Target,
    path: String,
    authority: Option<String>,
    request_edits: Vec<HeaderEdits>,
    response_edits: Vec<HeaderEdits>,
    timeout: Option<Duration>,
    retries: Option<RetryPolicy>,
    mirrors: Vec<Target>,
    extra_response_headers: HeaderMap,
}

async fn respond(
    stream: &Stream,
    request: Request<Incoming>,
    record: &mut Record,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let model = stream.waypoint.model();
    let client = &stream.client;
    let empty = Default::default();
    let source = Source {
        namespace: Some(client.identity.namespace.as_str()),
        labels: client.pod.as_ref().map_or(&empty, |p| &p.labels),
        ip: client.ip,
    };
    let client_ns = client.identity.namespace.clone();
    let hostname = stream.service.hostname.clone();
    let table = stream
        .waypoint
        .destinations
        .routes(&model, &hostname, &client_ns);
    let facts = RequestFacts::from_parts(&parts, stream.port, source);
    let request = mesh_core::policy::HttpRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        host: facts.authority,
        headers: &parts.headers,
    };
    if crate::authz::decide(stream, &model, Some(request)).is_some_and(|d| !d.is_allowed()) {
        return local(StatusCode::FORBIDDEN, "RBAC: access denied");
    }
    let plan = match table.route_http(&facts) {
        None if table.serves_http(stream.port, &facts.source) => {
            record.flags.push("NR");
            return local(StatusCode::NOT_FOUND, "no route matched\n");
        }
        None => Plan {
            target: Target {
                host: hostname.clone(),
                subset: None,
                port: Some(stream.port),
            },
            path: facts.path.to_owned(),
            authority: None,
            request_edits: Vec::new(),
            response_edits: Vec::new(),
            timeout: None,
            retries: Some(RetryPolicy::istio_default()),
            mirrors: Vec::new(),
            extra_response_headers: HeaderMap::new(),
        },
        Some(decision) => match decide(&decision, &facts, record).await {
            Ok(plan) => plan,
            Err(response) => return response,
        },
    };
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::debug!(%error, "reading the request body failed");
            record.flags.push("DC");
            return local(StatusCode::BAD_REQUEST, "the request body was cut off\n");
        }
    };
    record.request_bytes = body.len() as u64;
    for mirror in &plan.mirrors {
        spawn_mirror(stream, &model, mirror, &parts, &plan, body.clone());
    }
    let forwarded = forward(stream, &model, &parts, &plan, body, record);
    let mut response = match plan.timeout {
        Some(timeout) => match tokio::time::timeout(timeout, forwarded).await {
            Ok(response) => response,
            Err(_) => {
                record.flags.push("UT");
                local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
            }
        },
        None => forwarded.await,
    };
    for edits in &plan.response_edits {
        edits.apply(response.headers_mut());
    }
    response
        .headers_mut()
        .extend(plan.extra_response_headers.clone());
    response
}

/// Applies the parts of a matched rule that may answer at once (CORS preflight, faults,
/// redirect, direct response); otherwise the forwarding plan.
async fn decide(
    decision: &HttpDecision,
    facts: &RequestFacts<'_>,
    record: &mut Record,
) -> Result<Plan, Response<Body>> {
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
        .map(|m| m.target.clone())
        .collect();
    Ok(Plan {
        target: destination.target.clone(),
        path: decision
            .rewrite_path(facts.path)
            .unwrap_or_else(|| facts.path.to_owned()),
        authority: decision.authority_for(destination).map(str::to_owned),
        request_edits: vec![
            decision.headers().request.clone(),
            destination.headers.request.clone(),
        ],
        response_edits: vec![
            destination.headers.response.clone(),
            decision.headers().response.clone(),
        ],
        timeout: forward.timeout,
        retries: forward.retries.clone(),
        mirrors,
        extra_response_headers,
    })
}

/// Whether the upstream speaks HTTP/2 (the service port says gRPC or HTTP/2).
fn upstream_h2(model: &Model, host: &str, port: u16) -> bool {
    model
        .service_by_host(host)
        .and_then(|s| s.ports.iter().find(|p| p.port == port).cloned())
        .is_some_and(|p| {
            let protocol = p
                .app_protocol
                .clone()
                .or(p.name.clone())
                .unwrap_or_default()
                .to_ascii_lowercase();
            protocol.starts_with("grpc")
                || protocol.starts_with("http2")
                || protocol.starts_with("h2c")
                || protocol == "kubernetes.io/h2c"
        })
}

/// Headers that belong to one hop, not the request.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request to send upstream for `plan`.
fn upstream_request(
    parts: &http::request::Parts,
    plan: &Plan,
    authority: &str,
    h2: bool,
    body: Bytes,
) -> Option<Request<Full<Bytes>>> {
    let uri = if h2 {
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(plan.path.as_str())
            .build()
            .ok()?
    } else {
        plan.path.parse().ok()?
    };
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let headers = request.headers_mut();
    *headers = parts.headers.clone();
    let keep_te_trailers = parts
        .headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip_hop_by_hop(headers);
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    for edits in &plan.request_edits {
        edits.apply(headers);
    }
    headers.remove(header::HOST);
    if !h2 && let Ok(host) = HeaderValue::from_str(authority) {
        headers.insert(header::HOST, host);
    }
    Some(request)
}

/// The authority the client used (Host or `:authority`).
fn client_authority(parts: &http::request::Parts) -> String {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Sends with retries; the response, or the local answer when every try failed.
async fn forward(
    stream: &Stream,
    model: &Arc<Model>,
    parts: &http::request::Parts,
    plan: &Plan,
    body: Bytes,
    record: &mut Record,
) -> Response<Body> {
    let waypoint = &stream.waypoint;
    let port = plan.target.port.unwrap_or(stream.port);
    let client_ns = stream.client.identity.namespace.as_str();
    let upstream = match waypoint.destinations.upstream(
        model,
        &plan.target.host,
        plan.target.subset.as_deref(),
        port,
        client_ns,
    ) {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::warn!(host = %plan.target.host, subset = ?plan.target.subset, %error, "no upstream");
            record.flags.push("NC");
            return local(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n"));
        }
    };
    let cluster = upstream.key().to_string();
    let authority = plan
        .authority
        .clone()
        .unwrap_or_else(|| client_authority(parts));
    let h2 = upstream_h2(model, &plan.target.host, port);
    let retries = plan.retries.clone();
    let max_retries = retries.as_ref().map_or(0, |r| r.attempts);
    let query = parts.uri.query();
    let mut retry_slot = None;
    let mut attempt = 0;
    loop {
        if attempt > 0 {
            let backoff = retries
                .as_ref()
                .and_then(|r| r.backoff)
                .unwrap_or(BACKOFF_BASE);
            // Envoy: a random wait up to base × 2^(n−1), capped at 10 × base.
            let ceiling = (backoff * 2u32.saturating_pow(attempt - 1)).min(backoff * 10);
            let wait = rand::rng().random_range(Duration::ZERO..=ceiling);
            tokio::time::sleep(wait).await;
        }
        let input = HashInput {
            headers: &parts.headers,
            query,
            source_ip: stream.client.ip,
        };
        let pick = match upstream.pick(&input, &mut rand::rng()) {
            Ok(pick) => pick,
            Err(error) => {
                record.flags.push("UH");
                return local(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n"));
            }
        };
        record.destination = Some(pick.endpoint().endpoint().clone());
        let lease = match upstream.pool().acquire().await {
            Ok(lease) => lease,
            Err(overflow) => {
                let which = match overflow {
                    Overflow::Pending { .. } => OverflowMetric::Pending,
                    Overflow::Requests { .. } => OverflowMetric::Requests,
                    Overflow::Connections { .. } => OverflowMetric::Connections,
                    Overflow::Retries { .. } => OverflowMetric::Retries,
                };
                waypoint.metrics.overflow(&cluster, which);
                record.flags.push("UO");
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                );
            }
        };
        let Some(request) = upstream_request(parts, plan, &authority, h2, body.clone()) else {
            return local(StatusCode::BAD_REQUEST, "the request cannot be forwarded\n");
        };
        let per_try = retries.as_ref().and_then(|r| r.per_try_timeout);
        let attempt_result = send(stream, model, &upstream, &pick, request, h2, per_try).await;
        let (attempt_result, in_use) = match attempt_result {
            Ok((response, in_use)) => (Ok(response), in_use),
            Err(failure) => (Err(failure), None),
        };
        let retry_on = retries.as_ref().map(|r| &r.retry_on);
        // A retry is decided as the try ends, as Envoy decides it at the response headers:
        // with a `maxRetries` slot the try is dropped — its connection, pool lease and
        // endpoint pick go back before the next try asks for them — and without one the
        // client gets this try's answer.
        let may_retry = attempt < max_retries;
        match attempt_result {
            Ok(response) => {
                let status = response.status();
                let grpc_status = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                if upstream.record(pick.endpoint(), Outcome::Status(status.as_u16())) {
                    waypoint.metrics.ejected(&cluster);
                }
                let retriable = retry_on.is_some_and(|r| r.retries_response(status, grpc_status));
                if retriable && may_retry {
                    if let Some(slot) = take_retry(&upstream, &waypoint.metrics, &cluster) {
                        retry_slot = Some(slot);
                        attempt += 1;
                        continue;
                    }
                    record.flags.push("URX");
                } else if retriable && attempt > 0 {
                    record.flags.push("URX");
                }
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                if let Some(cookie) = pick.set_cookie()
                    && let Ok(value) = HeaderValue::from_str(&cookie.to_string())
                {
                    head.headers.append(header::SET_COOKIE, value);
                }
                // The slots stay taken until the response body is done.
                // The connection goes back for reuse then too.
                let guard = (lease, pick, retry_slot.take(), in_use);
                let body = incoming
                    .map_frame(move |frame| {
                        let _ = &guard;
                        frame
                    })
                    .boxed();
                return Response::from_parts(head, body);
            }
            Err(failure) => {
                let (outcome, flag, message) = match failure {
                    Failure::Connect(message) => (
                        Outcome::ConnectFailed,
                        "UF",
                        format!("upstream connect error: {message}"),
                    ),
                    Failure::Reset(message) => (
                        Outcome::Reset,
                        "UR",
                        format!("upstream reset before response: {message}"),
                    ),
                    Failure::Timeout => (
                        Outcome::Timeout,
                        "UT",
                        "upstream request timeout".to_owned(),
                    ),
                };
                if upstream.record(pick.endpoint(), outcome) {
                    waypoint.metrics.ejected(&cluster);
                }
                let kind = match outcome {
                    Outcome::ConnectFailed => UpstreamFailure::ConnectFailure,
                    _ => UpstreamFailure::Reset { request_sent: true },
                };
                let retriable = outcome == Outcome::Timeout
                    || retry_on.is_some_and(|r| r.retries_failure(kind));
                if retriable
                    && may_retry
                    && let Some(slot) = take_retry(&upstream, &waypoint.metrics, &cluster)
                {
                    retry_slot = Some(slot);
                    attempt += 1;
                    continue;
                }
                let status = if outcome == Outcome::Timeout {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                record.flags.push(flag);
                if retriable && (may_retry || attempt > 0) {
                    record.flags.push("URX");
                }
                return local(status, message);
            }
        }
    }
}

/// A `maxRetries` slot for another try, or `None` (counted as retry overflow): no retry.
fn take_retry(upstream: &Upstream, metrics: &Metrics, cluster: &str) -> Option<RetrySlot> {
    match upstream.pool().try_acquire_retry() {
        Ok(slot) => Some(slot),
        Err(_) => {
            metrics.overflow(cluster, OverflowMetric::Retries);
            None
        }
    }
}

enum Failure {
    Connect(String),
    Reset(String),
    Timeout,
}

/// One attempt: a connection to the endpoint and the request on it.
async fn send(
    stream: &Stream,
    model: &Model,
    upstream: &Upstream,
    pick: &crate::upstream::Pick,
    request: Request<Full<Bytes>>,
    h2: bool,
    per_try: Option<Duration>,
) -> Result<(Response<Incoming>, Option<InUse>), Failure> {
    let endpoint = pick.endpoint().endpoint();
    let addr = endpoint.addr;
    let limits = &upstream.policy().connection_pool;
    let max_requests = limits.max_requests_per_connection.map(|n| n.get());
    let connections = stream.waypoint.destinations.http.clone();
    let attempt = async {
        // A kept connection first. A request is only sent on one that is open and idle; a
        // close racing the send fails the try like any reset.
        if h2 && let Some(mut sender) = connections.http2(addr) {
            return sender
                .send_request(request)
                .await
                .map(|r| (r, None))
                .map_err(|e| Failure::Reset(e.to_string()));
        }
        if !h2
            && max_requests != Some(1)
            && let Some((mut sender, used)) = connections.take_http1(addr)
        {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| Failure::Reset(e.to_string()))?;
            let in_use = InUse {
                connections: connections.clone(),
                addr,
                sender: Some(sender),
                used: used + 1,
                max_requests,
            };
            return Ok((response, Some(in_use)));
        }
        let io = stream
            .waypoint
            .destinations
            .connect(
                model,
                addr,
                endpoint.pod.as_deref(),
                stream.client.ip,
                limits.connect_timeout,
            )
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let io = TokioIo::new(io);
        if h2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| Failure::Connect(e.to_string()))?;
            tokio::spawn(connection);
            connections.set_http2(addr, sender.clone());
            sender
                .send_request(request)
                .await
                .map(|r| (r, None))
                .map_err(|e| Failure::Reset(e.to_string()))
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| Failure::Connect(e.to_string()))?;
            tokio::spawn(connection);
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| Failure::Reset(e.to_string()))?;
            let in_use = InUse {
                connections: connections.clone(),
                addr,
                sender: Some(sender),
                used: 1,
                max_requests,
            };
            Ok((response, Some(in_use)))
        }
    };
    match per_try {
        Some(limit) => tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| Failure::Timeout)?,
        None => attempt.await,
    }
}

/// Sends a copy to a mirror destination, authority suffixed `-shadow`; its answer is dropped.
fn spawn_mirror(
    stream: &Stream,
    model: &Arc<Model>,
    target: &Target,
    parts: &http::request::Parts,
    plan: &Plan,
    body: Bytes,
) {
    let port = target.port.unwrap_or(stream.port);
    let client_ns = stream.client.identity.namespace.clone();
    let upstream = match stream.waypoint.destinations.upstream(
        model,
        &target.host,
        target.subset.as_deref(),
        port,
        &client_ns,
    ) {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::debug!(host = %target.host, %error, "mirror has no upstream");
            return;
        }
    };
    let authority = plan
        .authority
        .clone()
        .unwrap_or_else(|| client_authority(parts));
    let shadow = match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => format!("{host}-shadow:{port}"),
        _ => format!("{authority}-shadow"),
    };
    let h2 = upstream_h2(model, &target.host, port);
    let Some(request) = upstream_request(parts, plan, &shadow, h2, body) else {
        return;
    };
    let input_headers = parts.headers.clone();
    let client_ip = stream.client.ip;
    let waypoint = stream.waypoint.clone();
    let stream = Stream {
        waypoint: waypoint.clone(),
        service: stream.service.clone(),
        port: stream.port,
        client: stream.client.clone(),
    };
    let model = model.clone();
    tokio::spawn(async move {
        let input = HashInput {
            headers: &input_headers,
            query: None,
            source_ip: client_ip,
        };
        let Ok(pick) = upstream.pick(&input, &mut rand::rng()) else {
            return;
        };
        match send(&stream, &model, &upstream, &pick, request, h2, None).await {
            Ok((response, _in_use)) => {
                // Read and drop the answer, so the connection ends cleanly.
                let _ = response.into_body().collect().await;
            }
            Err(_) => tracing::debug!(host = %upstream.key(), "mirror request failed"),
        }
    });
}

fn labels(stream: &Stream, record: &Record, code: u16, headers: &HeaderMap) -> RequestLabels {
    let unknown = || "unknown".to_owned();
    let client = &stream.client;
    let source_pod = client.pod.as_deref();
    let destination_pod = record.destination.as_ref().and_then(|e| e.pod.as_deref());
    let label = |pod: Option<&mesh_core::config::PodInfo>, key: &str| {
        pod.and_then(|p| p.labels.get(key).cloned())
            .unwrap_or_else(unknown)
    };
    RequestLabels {
        reporter: "waypoint",
        source_workload: source_pod.map_or_else(unknown, |p| p.workload.clone()),
        source_workload_namespace: client.identity.namespace.clone(),
        source_principal: client.identity.to_string(),
        source_app: label(source_pod, "app"),
        source_version: label(source_pod, "version"),
        destination_service: stream.service.hostname.clone(),
        destination_service_name: stream.service.name.name.clone(),
        destination_service_namespace: stream.service.name.namespace.clone(),
        destination_workload: destination_pod.map_or_else(unknown, |p| p.workload.clone()),
        destination_workload_namespace: destination_pod
            .map_or_else(unknown, |p| p.name.namespace.clone()),
        destination_principal: destination_pod.map_or_else(unknown, |p| {
            stream
                .waypoint
                .destinations
                .certs
                .identity_of(&p.name.namespace, &p.service_account)
                .to_string()
        }),
        destination_app: label(destination_pod, "app"),
        destination_version: label(destination_pod, "version"),
        request_protocol: if stream.service.ports.iter().any(|p| {
            p.port == stream.port
                && p.app_protocol
                    .as_deref()
                    .or(p.name.as_deref())
                    .is_some_and(|n| n.starts_with("grpc"))
        }) {
            "grpc"
        } else {
            "http"
        },
        response_code: code,
        grpc_response_status: headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        response_flags: if record.flags.is_empty() {
            "-".to_owned()
        } else {
            record.flags.join(",")
        },
        connection_security_policy: "mutual_tls",
    }
}
