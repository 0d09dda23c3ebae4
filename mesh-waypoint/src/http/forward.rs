//! The upstream side of a request at the waypoint: the request as sent (rewrites, header
//! edits, hop-by-hop headers), the tries with retries and backoff against the DestinationRule's
//! upstream (endpoint choice, circuit breaker, outlier detection), kept connections to
//! endpoints, and mirrors. A 101 to an upgrade request ends the tries: the upgraded
//! connections are spliced ([`super::upgrade`]) and the upstream one is never kept.
//!
//! The request body streams to the try in flight and to the mirrors as the client sends it
//! ([`super::body`]); a retry resends it from the replay buffer, and a request whose body
//! outgrew that buffer is not retried.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::config::Model;
use rand::Rng as _;

use super::body::{MIRROR_LAG, Outgoing, RequestBody};
use super::upgrade::{self, Requested};
use super::{BACKOFF_BASE, Body, Plan, Record, local};
use crate::destinations::InUse;
use crate::metrics::{Metrics, Overflow as OverflowMetric};
use crate::route::{Target, UpstreamFailure};
use crate::server::Stream;
use crate::upstream::{HashInput, Outcome, Overflow, RetrySlot, Upstream};

/// Headers that belong to one hop, not the request. `Trailer` is not one (RFC 9110 §6.6.2):
/// it goes on, and an HTTP/1.1 sender sends only the trailer fields it declares.
const HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::CONTENT_LENGTH,
];

/// Removes the hop-by-hop headers: the fixed ones, and those the `Connection` header names
/// (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| header::HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request to send upstream for `plan`; with the headers that ask for `upgrade` to an
/// HTTP/1.1 upstream (HTTP/2 has no `Upgrade`: there the request goes as a plain one).
fn upstream_request(
    parts: &http::request::Parts,
    plan: &Plan<'_>,
    authority: &str,
    h2: bool,
    upgrade: Option<&HeaderValue>,
    body: Outgoing,
) -> Option<Request<Outgoing>> {
    let path_and_query = match &plan.path {
        Some(rewritten) => rewritten.parse().ok()?,
        // As the client sent it: shares its bytes.
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let uri = if h2 {
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .ok()?
    } else {
        Uri::from(path_and_query)
    };
    let mut request = Request::new(body);
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
    if !h2 && let Some(protocol) = upgrade {
        upgrade::restore_headers(headers, protocol);
    }
    for edits in plan.request_edits {
        edits.apply(headers);
    }
    if h2 {
        headers.remove(header::HOST);
    } else if headers
        .get(header::HOST)
        .is_none_or(|host| host.as_bytes() != authority.as_bytes())
    {
        // (The client's own Host, most often, is kept as it is.)
        headers.remove(header::HOST);
        if let Ok(host) = HeaderValue::from_str(authority) {
            headers.insert(header::HOST, host);
        }
    }
    Some(request)
}

/// The authority to send: the route's rewrite, else the one the client used (Host or
/// `:authority`).
fn authority<'a>(plan: &Plan<'a>, parts: &'a http::request::Parts) -> &'a str {
    plan.authority
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default()
}

/// Gives up the request body's try in flight when dropped armed: the client is answered
/// some other way than by that try (a local answer, a timeout), so the body must stop
/// streaming to it.
struct GiveUp<'a>(Option<&'a RequestBody>);

impl GiveUp<'_> {
    /// The try in flight answers the client: the body goes on streaming to it, and the
    /// replay buffer is no longer needed.
    fn answered(&mut self) {
        if let Some(body) = self.0.take() {
            body.last_try();
        }
    }
}

impl Drop for GiveUp<'_> {
    fn drop(&mut self) {
        if let Some(body) = self.0 {
            body.abandon();
        }
    }
}

/// Sends with retries; the response, or the local answer when every try failed. For an
/// upgrade the upstream accepts, the 101, with the splice of the two connections spawned.
/// A retry resends the body from the replay buffer; a body that outgrew it is not retried.
pub(super) async fn forward(
    stream: &Stream,
    model: &Arc<Model>,
    parts: &http::request::Parts,
    plan: &Plan<'_>,
    body: &RequestBody,
    mut upgrade: Option<Requested>,
    record: &mut Record,
) -> Response<Body> {
    let mut give_up = GiveUp(Some(body));
    let mut try_body = body.first_try();
    let waypoint = &stream.waypoint;
    let port = plan.target.port.unwrap_or(stream.port);
    let client_ns = stream.client.identity.namespace.as_str();
    let (upstream, h2) = match stream.cache.upstream(
        &waypoint.destinations,
        model,
        &plan.target.host,
        plan.target.subset.as_deref(),
        port,
        client_ns,
    ) {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(host = %plan.target.host, subset = ?plan.target.subset, %error, "no upstream");
            record.flags.push("NC");
            return local(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n"));
        }
    };
    let cluster = upstream.name();
    let authority = authority(plan, parts);
    let retries = plan.retries;
    let max_retries = retries.map_or(0, |r| r.attempts);
    let query = parts.uri.query();
    let mut retry_slot = None;
    let mut attempt = 0;
    loop {
        if attempt > 0 {
            let backoff = retries.and_then(|r| r.backoff).unwrap_or(BACKOFF_BASE);
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
                waypoint.metrics.overflow(cluster, which);
                record.flags.push("UO");
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                );
            }
        };
        let protocol = upgrade.as_ref().map(|u| &u.protocol);
        let Some(request) = upstream_request(parts, plan, authority, h2, protocol, try_body) else {
            return local(StatusCode::BAD_REQUEST, "the request cannot be forwarded\n");
        };
        let per_try = retries.and_then(|r| r.per_try_timeout);
        // As Envoy: a try's timeout runs from the end of the client's request, so a body
        // still streaming (a slow upload, a gRPC client stream) does not count against it.
        let expiry = async {
            match per_try {
                Some(limit) => {
                    body.ended().await;
                    tokio::time::sleep(limit).await;
                }
                None => std::future::pending().await,
            }
        };
        let attempt_result = send(stream, model, &upstream, &pick, request, h2, expiry).await;
        let (attempt_result, in_use) = match attempt_result {
            Ok((response, in_use)) => (Ok(response), in_use),
            Err(failure) => (Err(failure), None),
        };
        let retry_on = retries.map(|r| &r.retry_on);
        // A retry is decided as the try ends, as Envoy decides it at the response headers:
        // with a `maxRetries` slot the try is dropped — its connection, pool lease and
        // endpoint pick go back before the next try asks for them — and without one the
        // client gets this try's answer.
        let may_retry = attempt < max_retries;
        if attempt_result.is_err() && body.failed() {
            // The client went away mid-body: not the upstream's doing, and nothing to retry.
            record.flags.push("DC");
            return local(StatusCode::BAD_REQUEST, "the request body was cut off\n");
        }
        let outcome = match &attempt_result {
            Ok(response) => Outcome::Status(response.status().as_u16()),
            Err(failure) => failure.outcome(),
        };
        if upstream.record(pick.endpoint(), outcome) {
            waypoint.metrics.ejected(cluster);
        }
        let retriable = match &attempt_result {
            Ok(response) => {
                let status = response.status();
                let grpc_status = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                // A 101 is never retried: the upstream has switched protocols.
                status != StatusCode::SWITCHING_PROTOCOLS
                    && retry_on.is_some_and(|r| r.retries_response(status, grpc_status))
            }
            Err(_) => {
                let kind = match outcome {
                    Outcome::ConnectFailed => UpstreamFailure::ConnectFailure,
                    _ => UpstreamFailure::Reset { request_sent: true },
                };
                outcome == Outcome::Timeout || retry_on.is_some_and(|r| r.retries_failure(kind))
            }
        };
        let exceeded = match retry(
            retriable,
            may_retry,
            attempt,
            &upstream,
            &waypoint.metrics,
            cluster,
            body,
        ) {
            Retry::Again(slot, next) => {
                retry_slot = Some(slot);
                try_body = next;
                attempt += 1;
                continue;
            }
            Retry::Exceeded => true,
            Retry::No => false,
        };
        let response = match attempt_result {
            Ok(response) => response,
            Err(failure) => {
                let (status, flag, message) = failure.answer();
                record.flags.push(flag);
                if exceeded {
                    record.flags.push("URX");
                }
                return local(status, message);
            }
        };
        if exceeded {
            record.flags.push("URX");
        }
        let status = response.status();
        let (mut head, incoming) = response.into_parts();
        let switched_to = head.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut head.headers);
        if let Some(cookie) = pick.set_cookie()
            && let Ok(value) = HeaderValue::from_str(&cookie.to_string())
        {
            head.headers.append(header::SET_COOKIE, value);
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            let upstream_io = head.extensions.remove::<OnUpgrade>();
            let (Some(asked), Some(upstream_io)) = (upgrade.take(), upstream_io) else {
                record.flags.push("UPE");
                return local(
                    StatusCode::BAD_GATEWAY,
                    "upstream switched protocols without being asked to\n",
                );
            };
            let protocol = switched_to.unwrap_or_else(|| asked.protocol.clone());
            upgrade::restore_headers(&mut head.headers, &protocol);
            // The connection is the upgraded session's now, never a kept one; the
            // lease and the endpoint pick stay taken until the session ends.
            let guard = (lease, pick, in_use.map(InUse::upgraded));
            upgrade::spawn_splice(asked.client, upstream_io, cluster.to_owned(), guard);
            let empty = Empty::new().map_err(|never| match never {}).boxed();
            give_up.answered();
            return Response::from_parts(head, empty);
        }
        // The slots stay taken until the response body is done.
        // The connection goes back for reuse then too.
        let guard = (lease, pick, retry_slot.take(), in_use);
        let body = incoming
            .map_frame(move |frame| {
                let _ = &guard;
                frame
            })
            .map_err(super::BodyError::from)
            .boxed();
        // The request body goes on streaming to this try (a bidirectional stream).
        give_up.answered();
        return Response::from_parts(head, body);
    }
}

/// What follows a try that has ended.
enum Retry {
    /// Another try, with its `maxRetries` slot and the request body from its start.
    Again(RetrySlot, Outgoing),
    /// The try's answer goes to the client, flagged URX: the try could be retried, but the
    /// attempts are used up or no `maxRetries` slot is free (counted as retry overflow).
    Exceeded,
    /// The try's answer goes to the client as it is: not retriable, a first try the policy
    /// allows no retry of, or a request body that outgrew the replay buffer and has been
    /// partly let go (as Envoy gives up a retry whose body no longer fits its buffer).
    No,
}

/// Whether a try that has ended is tried again. `retriable`: its outcome is one the route's
/// retry policy retries; `may_retry`: attempts are left.
fn retry(
    retriable: bool,
    may_retry: bool,
    attempt: u32,
    upstream: &Upstream,
    metrics: &Metrics,
    cluster: &str,
    body: &RequestBody,
) -> Retry {
    if !retriable {
        return Retry::No;
    }
    if !may_retry {
        return if attempt > 0 {
            Retry::Exceeded
        } else {
            Retry::No
        };
    }
    let not_replayed = || {
        metrics.retry_or_shadow_abandoned(cluster);
        tracing::debug!(
            %cluster,
            limit = super::body::REPLAY_LIMIT,
            "not retried: the request body outgrew the replay buffer"
        );
        Retry::No
    };
    if !body.replays() {
        return not_replayed();
    }
    let Ok(slot) = upstream.pool().try_acquire_retry() else {
        metrics.overflow(cluster, OverflowMetric::Retries);
        return Retry::Exceeded;
    };
    // The try in flight may have let go of part of the body since the check above.
    match body.retry() {
        Some(next) => Retry::Again(slot, next),
        None => not_replayed(),
    }
}

enum Failure {
    Connect(String),
    Reset(String),
    Timeout,
}

impl Failure {
    /// What the failure is to outlier detection.
    fn outcome(&self) -> Outcome {
        match self {
            Failure::Connect(_) => Outcome::ConnectFailed,
            Failure::Reset(_) => Outcome::Reset,
            Failure::Timeout => Outcome::Timeout,
        }
    }

    /// The client's answer when this failure ends the request: status, response flag, body.
    fn answer(self) -> (StatusCode, &'static str, String) {
        match self {
            Failure::Connect(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UF",
                format!("upstream connect error: {message}"),
            ),
            Failure::Reset(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "UR",
                format!("upstream reset before response: {message}"),
            ),
            Failure::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "UT",
                "upstream request timeout".to_owned(),
            ),
        }
    }
}

/// One attempt: a connection to the endpoint and the request on it.
async fn send(
    stream: &Stream,
    model: &Model,
    upstream: &Upstream,
    pick: &crate::upstream::Pick,
    request: Request<Outgoing>,
    h2: bool,
    expiry: impl Future<Output = ()>,
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
        // Boxed, as the handshake below: opening takes kilobytes of future state, which
        // would otherwise be part of every request's for as long as it runs.
        let io = Box::pin(stream.waypoint.destinations.connect(
            model,
            addr,
            endpoint.pod.as_deref(),
            stream.client.ip,
            limits.connect_timeout,
        ))
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
        let io = TokioIo::new(io);
        if h2 {
            let (mut sender, connection) = Box::pin(hyper::client::conn::http2::handshake(
                TokioExecutor::new(),
                io,
            ))
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
            // With upgrades: after a 101 hyper hands the connection over.
            tokio::spawn(connection.with_upgrades());
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
    tokio::select! {
        biased;
        result = attempt => result,
        () = expiry => Err(Failure::Timeout),
    }
}

/// Sends a copy to a mirror destination, authority suffixed `-shadow`; its answer is dropped.
/// The body streams to it as the client sends it; a mirror that falls behind loses its copy
/// and its request is reset (counted as `retry_or_shadow_abandoned`), never holding up the
/// request.
pub(super) fn spawn_mirror(
    stream: &Stream,
    model: &Arc<Model>,
    target: &Target,
    parts: &http::request::Parts,
    plan: &Plan<'_>,
    body: &RequestBody,
) {
    let port = target.port.unwrap_or(stream.port);
    let (upstream, h2) = match stream.cache.upstream(
        &stream.waypoint.destinations,
        model,
        &target.host,
        target.subset.as_deref(),
        port,
        &stream.client.identity.namespace,
    ) {
        Ok(found) => found,
        Err(error) => {
            tracing::debug!(host = %target.host, %error, "mirror has no upstream");
            return;
        }
    };
    let authority = authority(plan, parts);
    let shadow = match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => format!("{host}-shadow:{port}"),
        _ => format!("{authority}-shadow"),
    };
    let (body, copy) = body.mirror();
    let Some(request) = upstream_request(parts, plan, &shadow, h2, None, body) else {
        return;
    };
    let input_headers = parts.headers.clone();
    let client_ip = stream.client.ip;
    let waypoint = stream.waypoint.clone();
    let stream = Stream::new(
        waypoint.clone(),
        stream.service.clone(),
        stream.port,
        stream.client.clone(),
    );
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
        let pending = std::future::pending();
        let exchange = async {
            let (response, _in_use) = send(&stream, &model, &upstream, &pick, request, h2, pending)
                .await
                .ok()?;
            // Read and drop the answer, so the connection ends cleanly.
            response.into_body().collect().await.ok()
        };
        let answered = tokio::select! {
            answered = exchange => answered.is_some(),
            // Dropping the exchange resets the mirror's request, read or not.
            () = copy.cut() => false,
        };
        let cluster = upstream.name();
        if copy.fell_behind() {
            waypoint.metrics.retry_or_shadow_abandoned(cluster);
            tracing::debug!(%cluster, lag = MIRROR_LAG, "the mirror fell behind the request: its copy is dropped");
        } else if !answered {
            tracing::debug!(%cluster, "mirror request failed");
        }
    });
}

#[cfg(test)]
mod tests;
