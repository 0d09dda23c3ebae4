//! Each merged policy group turned into what the waypoint runs, Istio's and Envoy's defaults
//! filled in (see the constants of each module for their sources), with a warning for every
//! field set that the waypoint does not implement.

use std::num::NonZeroU32;

use http::HeaderName;
use mesh_core::config::istio::{
    ConnectionPoolSettings, ConsistentHashLb, HttpCookie, LoadBalancerSettings, OutlierDetection,
    SimpleLb,
};

use super::{Context, Sourced};
use crate::upstream::Result;
use crate::upstream::balance::{
    CookieKey, DEFAULT_MINIMUM_RING_SIZE, HashKey, LoadBalancer, MAXIMUM_RING_SIZE,
};
use crate::upstream::outlier::{
    DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURES, DEFAULT_MAX_EJECTION_TIME, OutlierConfig,
};
use crate::upstream::pool::PoolLimits;

/// Envoy's `healthy_panic_threshold` default, which applies when Istio leaves it unset (a
/// negative `minHealthPercent`).
const ENVOY_DEFAULT_PANIC_THRESHOLD: u32 = 50;

const IGNORED: &str = "is not implemented by the waypoint; ignored";

fn warn_set(cx: &mut Context, path: &str, fields: &[(&str, bool)]) {
    for (field, set) in fields {
        if *set {
            cx.warn(format!("{path}.{field}"), IGNORED);
        }
    }
}

pub(super) fn load_balancer(
    cx: &mut Context,
    lb: Option<&Sourced<'_, LoadBalancerSettings>>,
) -> Result<LoadBalancer> {
    let Some(Sourced { value: lb, path }) = lb else {
        return Ok(LoadBalancer::default());
    };
    warn_set(
        cx,
        path,
        &[
            ("localityLbSetting", lb.locality_lb_setting.is_some()),
            ("zoneAwareLbSetting", lb.zone_aware_lb_setting.is_some()),
            ("warmupDurationSecs", lb.warmup_duration_secs.is_some()),
            ("warmup", lb.warmup.is_some()),
        ],
    );
    if lb.backend_utilization.is_some() {
        cx.warn(
            format!("{path}.backendUtilization"),
            "is not implemented by the waypoint; LEAST_REQUEST is used",
        );
    }
    if let Some(hash) = &lb.consistent_hash {
        return consistent_hash(cx, &format!("{path}.consistentHash"), hash);
    }
    Ok(match lb.simple {
        None | Some(SimpleLb::Unspecified) => LoadBalancer::default(),
        Some(SimpleLb::RoundRobin) => LoadBalancer::RoundRobin,
        Some(SimpleLb::Random) => LoadBalancer::Random,
        Some(SimpleLb::LeastRequest | SimpleLb::LeastConn) => LoadBalancer::LeastRequest,
        Some(SimpleLb::Passthrough) => {
            cx.warn(
                format!("{path}.simple"),
                "PASSTHROUGH (forwarding to the original destination address) is not \
                 implemented by the waypoint; LEAST_REQUEST is used",
            );
            LoadBalancer::default()
        }
    })
}

fn consistent_hash(cx: &mut Context, path: &str, hash: &ConsistentHashLb) -> Result<LoadBalancer> {
    let key = if let Some(name) = &hash.http_header_name {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            cx.invalid(
                format!("{path}.httpHeaderName"),
                format!("{name:?} is not a valid HTTP header name"),
            )
        })?;
        HashKey::Header(name)
    } else if let Some(cookie) = &hash.http_cookie {
        HashKey::Cookie(cookie_key(cx, &format!("{path}.httpCookie"), cookie)?)
    } else if hash.use_source_ip == Some(true) {
        HashKey::SourceIp
    } else if let Some(name) = &hash.http_query_parameter_name {
        HashKey::QueryParameter(name.clone())
    } else {
        cx.warn(
            path,
            "names no hash key (httpHeaderName, httpCookie, useSourceIp or \
             httpQueryParameterName); requests are spread at random",
        );
        return Ok(LoadBalancer::Random);
    };
    // Istio: ringHash.minimumRingSize, else the deprecated minimumRingSize; 0 is Envoy's 1024.
    let requested = match &hash.ring_hash {
        Some(ring) => ring.minimum_ring_size,
        None => hash.minimum_ring_size,
    };
    let mut minimum_ring_size = requested
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MINIMUM_RING_SIZE);
    if minimum_ring_size > MAXIMUM_RING_SIZE {
        cx.warn(
            format!("{path}.ringHash.minimumRingSize"),
            format!("{minimum_ring_size} is above Envoy's maximum ring size {MAXIMUM_RING_SIZE}; clamped"),
        );
        minimum_ring_size = MAXIMUM_RING_SIZE;
    }
    if hash.maglev.is_some() {
        cx.warn(
            format!("{path}.maglev"),
            "Maglev is not implemented by the waypoint; a ring hash with the same keys is \
             used (tableSize ignored)",
        );
    }
    Ok(LoadBalancer::RingHash {
        key,
        minimum_ring_size,
    })
}

/// RFC 6265 token characters (cookie and attribute names).
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// Text that can sit in a `Set-Cookie` value: visible ASCII and spaces, no `;`.
fn is_cookie_text(text: &str) -> bool {
    text.bytes()
        .all(|b| (b.is_ascii_graphic() || b == b' ') && b != b';')
}

fn cookie_key(cx: &mut Context, path: &str, cookie: &HttpCookie) -> Result<CookieKey> {
    if !is_token(&cookie.name) {
        return Err(cx.invalid(
            format!("{path}.name"),
            format!("{:?} is not a valid cookie name", cookie.name),
        ));
    }
    if let Some(cookie_path) = &cookie.path
        && !is_cookie_text(cookie_path)
    {
        return Err(cx.invalid(
            format!("{path}.path"),
            format!("{cookie_path:?} cannot be sent in Set-Cookie"),
        ));
    }
    let ttl = match &cookie.ttl {
        Some(text) => Some(cx.duration(format!("{path}.ttl"), text)?),
        None => None,
    };
    let mut attributes = Vec::with_capacity(cookie.attributes.len());
    for (i, attribute) in cookie.attributes.iter().enumerate() {
        let valid =
            is_token(&attribute.name) && attribute.value.as_deref().is_none_or(is_cookie_text);
        if !valid {
            return Err(cx.invalid(
                format!("{path}.attributes[{i}]"),
                "cannot be sent in Set-Cookie: use a token name and a value without `;`",
            ));
        }
        let value = attribute.value.clone().filter(|v| !v.is_empty());
        attributes.push((attribute.name.clone(), value));
    }
    Ok(CookieKey {
        name: cookie.name.clone(),
        path: cookie.path.clone().filter(|p| !p.is_empty()),
        ttl,
        attributes,
    })
}

/// Istio reads 0 and negative counts as "unset".
fn positive(value: Option<i32>) -> Option<u32> {
    value.filter(|v| *v > 0).map(|v| v as u32)
}

pub(super) fn connection_pool(
    cx: &mut Context,
    pool: Option<&Sourced<'_, ConnectionPoolSettings>>,
) -> Result<PoolLimits> {
    let mut limits = PoolLimits::default();
    let Some(Sourced { value: pool, path }) = pool else {
        return Ok(limits);
    };
    if let Some(tcp) = &pool.tcp {
        let path = format!("{path}.tcp");
        if let Some(n) = positive(tcp.max_connections) {
            limits.max_connections = n;
        }
        if let Some(text) = &tcp.connect_timeout {
            limits.connect_timeout = cx.duration(format!("{path}.connectTimeout"), text)?;
        }
        warn_set(
            cx,
            &path,
            &[
                ("tcpKeepalive", tcp.tcp_keepalive.is_some()),
                (
                    "maxConnectionDuration",
                    tcp.max_connection_duration.is_some(),
                ),
                ("idleTimeout", tcp.idle_timeout.is_some()),
            ],
        );
    }
    if let Some(http) = &pool.http {
        let path = format!("{path}.http");
        if let Some(n) = positive(http.http1_max_pending_requests) {
            limits.max_pending_requests = n;
        }
        if let Some(n) = positive(http.http2_max_requests) {
            limits.max_requests = n;
        }
        if let Some(n) = positive(http.max_retries) {
            limits.max_retries = n;
        }
        limits.max_requests_per_connection =
            positive(http.max_requests_per_connection).and_then(NonZeroU32::new);
        if let Some(text) = &http.idle_timeout {
            let timeout = cx.duration(format!("{path}.idleTimeout"), text)?;
            limits.idle_timeout = (!timeout.is_zero()).then_some(timeout);
        }
        warn_set(
            cx,
            &path,
            &[
                ("h2UpgradePolicy", http.h2_upgrade_policy.is_some()),
                ("useClientProtocol", http.use_client_protocol.is_some()),
                (
                    "maxConcurrentStreams",
                    http.max_concurrent_streams.is_some(),
                ),
                ("http2KeepAlive", http.http2_keep_alive.is_some()),
            ],
        );
    }
    Ok(limits)
}

pub(super) fn outlier_detection(
    cx: &mut Context,
    od: Option<&Sourced<'_, OutlierDetection>>,
) -> Result<Option<OutlierConfig>> {
    let Some(Sourced { value: od, path }) = od else {
        return Ok(None);
    };
    let mut config = OutlierConfig::default();
    if let Some(n) = od.consecutive5xx_errors {
        config.consecutive_5xx = (n > 0).then_some(n);
    }
    if let Some(n) = od.consecutive_gateway_errors {
        config.consecutive_gateway_errors = (n > 0).then_some(n);
    }
    if od.split_external_local_origin_errors == Some(true) {
        config.split_local_origin_errors = true;
        config.consecutive_local_origin_failures = Some(
            od.consecutive_local_origin_failures
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURES),
        );
    } else if od.consecutive_local_origin_failures.is_some() {
        cx.warn(
            format!("{path}.consecutiveLocalOriginFailures"),
            "has no effect unless splitExternalLocalOriginErrors is true (as in Istio)",
        );
    }
    if let Some(text) = &od.interval {
        config.interval = cx.duration(format!("{path}.interval"), text)?;
    }
    if let Some(text) = &od.base_ejection_time {
        config.base_ejection_time = cx.duration(format!("{path}.baseEjectionTime"), text)?;
        config.max_ejection_time = config.base_ejection_time.max(DEFAULT_MAX_EJECTION_TIME);
    }
    if let Some(percent) = positive(od.max_ejection_percent) {
        config.max_ejection_percent = percent.min(100);
    }
    config.min_health_percent = match od.min_health_percent {
        Some(percent) if percent < 0 => ENVOY_DEFAULT_PANIC_THRESHOLD,
        Some(percent) => (percent as u32).min(100),
        None => 0,
    };
    if od.consecutive_errors.is_some() {
        cx.warn(
            format!("{path}.consecutiveErrors"),
            "is deprecated and Istio no longer reads it; ignored (use consecutiveGatewayErrors \
             or consecutive5xxErrors)",
        );
    }
    if !od.outlier_detection_http_error_codes.is_empty() {
        cx.warn(format!("{path}.outlierDetectionHttpErrorCodes"), IGNORED);
    }
    Ok(Some(config))
}
