//! Compiling the policies of a rule: retries, faults, mirrors and CORS.

use http::{HeaderValue, StatusCode};
use mesh_core::config::istio::{
    CorsPolicy, HttpFaultInjection, HttpRetry, HttpRoute, UnmatchedPreflights,
};

use super::Ctx;
use crate::route::cors::Cors;
use crate::route::matching::StringMatcher;
use crate::route::policy::{
    AbortError, Fault, FaultAbort, FaultDelay, GRPC_STATUS, Mirror, Percentage, RetryOn,
    RetryPolicy,
};

/// Istio's retry policy: absent means the default; `attempts` 0 (or unset) disables.
pub(super) fn retries(
    ctx: &mut Ctx<'_>,
    path: &str,
    retries: Option<&HttpRetry>,
) -> Option<RetryPolicy> {
    let Some(retries) = retries else {
        return Some(RetryPolicy::istio_default());
    };
    let attempts = retries.attempts.unwrap_or(0);
    if attempts < 0 {
        ctx.error(
            format!("{path}.attempts"),
            format!("{attempts} is negative; use 0 to disable retries"),
        );
    }
    let attempts = u32::try_from(attempts).ok().filter(|a| *a > 0)?;
    let mut policy = RetryPolicy {
        attempts,
        ..RetryPolicy::istio_default()
    };
    if let Some(text) = retries.retry_on.as_deref().filter(|t| !t.trim().is_empty()) {
        let (retry_on, unknown) = RetryOn::parse(text);
        for name in unknown {
            ctx.unsupported(
                format!("{path}.retryOn"),
                format!(
                    "{name:?} is not a retry condition the waypoint implements (5xx, gateway-error, reset, reset-before-request, connect-failure, refused-stream, retriable-4xx, retriable-status-codes, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable, or an HTTP status code); it is ignored"
                ),
            );
        }
        policy.retry_on = retry_on;
    }
    policy.per_try_timeout = retries
        .per_try_timeout
        .as_deref()
        .and_then(|t| ctx.duration(format!("{path}.perTryTimeout"), t))
        .filter(|t| !t.is_zero());
    policy.backoff = retries
        .backoff
        .as_deref()
        .and_then(|t| ctx.duration(format!("{path}.backoff"), t));
    policy.ignore_previous_hosts = retries.retry_ignore_previous_hosts.unwrap_or(true);
    if retries.retry_remote_localities == Some(true) {
        ctx.unsupported(
            format!("{path}.retryRemoteLocalities"),
            "the waypoint does not balance by locality; retries pick endpoints as the first try does",
        );
    }
    Some(policy)
}

pub(super) fn fault(ctx: &mut Ctx<'_>, path: &str, fault: &HttpFaultInjection) -> Option<Fault> {
    let delay = fault.delay.as_ref().and_then(|delay| {
        let dpath = format!("{path}.delay");
        if delay.exponential_delay.is_some() {
            ctx.unsupported(
                format!("{dpath}.exponentialDelay"),
                "exponential delays are not implemented (Istio ignores them too); no delay is injected for it",
            );
        }
        let duration = match &delay.fixed_delay {
            Some(text) => ctx.duration(format!("{dpath}.fixedDelay"), text)?,
            None if delay.exponential_delay.is_some() => return None,
            None => {
                ctx.error(&dpath, "set fixedDelay (e.g. \"5s\")");
                return None;
            }
        };
        let percentage = match (&delay.percentage, delay.percent) {
            (Some(p), _) => ctx.percentage(format!("{dpath}.percentage"), p)?,
            (None, Some(p)) => ctx.int_percentage(format!("{dpath}.percent"), i64::from(p))?,
            (None, None) => Percentage::NONE,
        };
        Some(FaultDelay {
            duration,
            percentage,
        })
    });
    let abort = fault.abort.as_ref().and_then(|abort| {
        let apath = format!("{path}.abort");
        let error = match (abort.http_status, &abort.grpc_status, &abort.http2_error) {
            (Some(status), None, None) => {
                let code = u16::try_from(status)
                    .ok()
                    .filter(|s| (200..=599).contains(s))
                    .and_then(|s| StatusCode::from_u16(s).ok());
                if code.is_none() {
                    ctx.error(
                        format!("{apath}.httpStatus"),
                        format!("{status} is not an HTTP status from 200 to 599"),
                    );
                }
                AbortError::Http(code?)
            }
            (None, Some(name), None) => {
                let code = GRPC_STATUS
                    .iter()
                    .position(|known| known == name)
                    .and_then(|c| u32::try_from(c).ok());
                if code.is_none() {
                    ctx.error(
                        format!("{apath}.grpcStatus"),
                        format!("{name:?} is not a gRPC status; use a name like \"UNAVAILABLE\""),
                    );
                }
                AbortError::Grpc(code?)
            }
            (None, None, Some(_)) => {
                ctx.unsupported(
                    format!("{apath}.http2Error"),
                    "HTTP/2 error aborts are not implemented (Istio ignores them too); no abort is injected",
                );
                return None;
            }
            (None, None, None) => {
                ctx.error(&apath, "set httpStatus (e.g. 503) or grpcStatus");
                return None;
            }
            _ => {
                ctx.error(&apath, "set only one of httpStatus, grpcStatus or http2Error");
                return None;
            }
        };
        let percentage = match &abort.percentage {
            Some(p) => ctx.percentage(format!("{apath}.percentage"), p)?,
            None => Percentage::NONE,
        };
        Some(FaultAbort { error, percentage })
    });
    (delay.is_some() || abort.is_some()).then_some(Fault { delay, abort })
}

/// `mirror` (with `mirrorPercentage`, or the older `mirrorPercent`/`mirror_percent`) and
/// `mirrors`; 100 % unless set, and left out at 0 % as Istio does.
pub(super) fn mirrors(ctx: &mut Ctx<'_>, path: &str, route: &HttpRoute) -> Vec<Mirror> {
    let mut mirrors = Vec::new();
    if let Some(destination) = &route.mirror {
        let percentage = match (
            &route.mirror_percentage,
            route.mirror_percent.or(route.mirror_percent_legacy),
        ) {
            (Some(p), _) => ctx.percentage(format!("{path}.mirrorPercentage"), p),
            (None, Some(p)) => ctx.int_percentage(format!("{path}.mirrorPercent"), i64::from(p)),
            (None, None) => Some(Percentage::ALL),
        };
        if let (Some(target), Some(percentage)) = (
            ctx.target(&format!("{path}.mirror"), destination),
            percentage,
        ) {
            mirrors.push(Mirror { target, percentage });
        }
    }
    for (i, mirror) in route.mirrors.iter().enumerate() {
        let mpath = format!("{path}.mirrors[{i}]");
        let percentage = match &mirror.percentage {
            Some(p) => ctx.percentage(format!("{mpath}.percentage"), p),
            None => Some(Percentage::ALL),
        };
        if let (Some(target), Some(percentage)) = (
            ctx.target(&format!("{mpath}.destination"), &mirror.destination),
            percentage,
        ) {
            mirrors.push(Mirror { target, percentage });
        }
    }
    mirrors.retain(|m| m.percentage > Percentage::NONE);
    mirrors
}

pub(super) fn cors(ctx: &mut Ctx<'_>, path: &str, policy: &CorsPolicy) -> Option<Cors> {
    let origins = if policy.allow_origins.is_empty() {
        // The deprecated `allowOrigin`: exact origins.
        policy
            .allow_origin
            .iter()
            .map(|o| StringMatcher::Exact(o.clone()))
            .collect()
    } else {
        let mut origins = Vec::new();
        for (i, origin) in policy.allow_origins.iter().enumerate() {
            let opath = format!("{path}.allowOrigins[{i}]");
            match ctx.string_matcher(&opath, origin, false) {
                Some(StringMatcher::Any) => ctx.unsupported(
                    opath,
                    "an empty entry matches no origin (as in Istio); set exact, prefix or regex",
                ),
                Some(matcher) => origins.push(matcher),
                None => {}
            }
        }
        origins
    };
    let mut joined = |field: &str, values: &[String]| -> Option<HeaderValue> {
        if values.is_empty() {
            return None;
        }
        let text = values.join(",");
        HeaderValue::from_str(&text)
            .map_err(|_| {
                ctx.error(
                    format!("{path}.{field}"),
                    format!("{text:?} is not a valid header value"),
                )
            })
            .ok()
    };
    let allow_methods = joined("allowMethods", &policy.allow_methods);
    let allow_headers = joined("allowHeaders", &policy.allow_headers);
    let expose_headers = joined("exposeHeaders", &policy.expose_headers);
    let max_age = policy
        .max_age
        .as_deref()
        .and_then(|t| ctx.duration(format!("{path}.maxAge"), t))
        .map(|age| HeaderValue::from(age.as_secs()));
    Some(Cors {
        origins,
        allow_methods,
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials: policy.allow_credentials.unwrap_or(false),
        forward_unmatched_preflights: policy.unmatched_preflights
            != Some(UnmatchedPreflights::Ignore),
    })
}
