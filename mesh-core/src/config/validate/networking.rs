//! VirtualService validation: hosts, HTTP/TLS/TCP routes, matches, weights, faults,
//! retries, mirrors, rewrites, redirects and CORS.

use super::{Check, weights};
use crate::config::istio::{HttpMatchRequest, HttpRoute, VirtualServiceSpec};

pub(super) fn virtual_service(check: &mut Check, spec: &VirtualServiceSpec) {
    if spec.hosts.is_empty() {
        check.warn(
            "hosts",
            "no hosts: this VirtualService is only usable as a delegate of another one's http[].delegate",
        );
    }
    let mesh_bound = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    for (i, host) in spec.hosts.iter().enumerate() {
        check.host(format!("hosts[{i}]"), host);
        if host == "*" && mesh_bound {
            check.error(
                format!("hosts[{i}]"),
                "the wildcard host \"*\" is not allowed for the mesh; name the hosts or bind the VirtualService to a gateway",
            );
        }
    }
    for (i, gateway) in spec.gateways.iter().enumerate() {
        let name = gateway.rsplit('/').next().unwrap_or_default();
        if gateway != "mesh" && crate::manifest::check_dns_name(name).is_err() {
            check.error(
                format!("gateways[{i}]"),
                format!("{gateway:?} is not \"mesh\" or a gateway name ([namespace/]name)"),
            );
        }
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        check.error("spec", "no http, tcp or tls routes: add at least one route");
    }
    for (i, route) in spec.http.iter().enumerate() {
        http_route(check, &format!("http[{i}]"), route);
    }
    for (i, route) in spec.tls.iter().enumerate() {
        let path = format!("tls[{i}]");
        if route.matches.is_empty() {
            check.error(
                format!("{path}.match"),
                "a TLS route needs at least one match (sniHosts)",
            );
        }
        for (m, attrs) in route.matches.iter().enumerate() {
            if attrs.sni_hosts.is_empty() {
                check.error(
                    format!("{path}.match[{m}].sniHosts"),
                    "sniHosts is empty; name at least one SNI host",
                );
            }
            for (s, sni) in attrs.sni_hosts.iter().enumerate() {
                check.host(format!("{path}.match[{m}].sniHosts[{s}]"), sni);
            }
            check.port(format!("{path}.match[{m}].port"), attrs.port.map(i64::from));
        }
        if route.route.is_empty() {
            check.error(
                format!("{path}.route"),
                "a TLS route needs at least one destination",
            );
        }
        for (d, dest) in route.route.iter().enumerate() {
            check.destination(format!("{path}.route[{d}].destination"), &dest.destination);
        }
        let w: Vec<Option<i32>> = route.route.iter().map(|r| r.weight).collect();
        weights(check, format!("{path}.route"), &w);
    }
    for (i, route) in spec.tcp.iter().enumerate() {
        let path = format!("tcp[{i}]");
        for (m, attrs) in route.matches.iter().enumerate() {
            check.port(format!("{path}.match[{m}].port"), attrs.port.map(i64::from));
        }
        if route.route.is_empty() {
            check.error(
                format!("{path}.route"),
                "a TCP route needs at least one destination",
            );
        }
        for (d, dest) in route.route.iter().enumerate() {
            check.destination(format!("{path}.route[{d}].destination"), &dest.destination);
        }
        let w: Vec<Option<i32>> = route.route.iter().map(|r| r.weight).collect();
        weights(check, format!("{path}.route"), &w);
    }
    check.export_to(&spec.export_to);
}

fn http_route(check: &mut Check, path: &str, route: &HttpRoute) {
    let has_route = !route.route.is_empty();
    let actions = [
        has_route,
        route.redirect.is_some(),
        route.direct_response.is_some(),
        route.delegate.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => check.error(
            path,
            "needs one of route, redirect, directResponse or delegate",
        ),
        1 => {}
        _ => check.one_of(
            path,
            &["route", "redirect", "directResponse", "delegate"],
            &actions,
        ),
    }
    for (i, m) in route.matches.iter().enumerate() {
        http_match(check, &format!("{path}.match[{i}]"), m);
    }
    for (i, dest) in route.route.iter().enumerate() {
        let dpath = format!("{path}.route[{i}]");
        check.destination(format!("{dpath}.destination"), &dest.destination);
        check.headers(format!("{dpath}.headers"), dest.headers.as_ref());
    }
    let w: Vec<Option<i32>> = route.route.iter().map(|r| r.weight).collect();
    weights(check, format!("{path}.route"), &w);
    if let Some(redirect) = &route.redirect {
        check.one_of(
            format!("{path}.redirect"),
            &["port", "derivePort"],
            &[redirect.port.is_some(), redirect.derive_port.is_some()],
        );
        check.port(
            format!("{path}.redirect.port"),
            redirect.port.map(i64::from),
        );
        if let Some(code) = redirect.redirect_code
            && !matches!(code, 301 | 302 | 303 | 307 | 308)
        {
            check.error(
                format!("{path}.redirect.redirectCode"),
                format!("{code} is not a redirect code; use 301, 302, 303, 307 or 308"),
            );
        }
    }
    if let Some(direct) = &route.direct_response {
        if !(200..=599).contains(&direct.status) {
            check.error(
                format!("{path}.directResponse.status"),
                format!("{} is not an HTTP status from 200 to 599", direct.status),
            );
        }
        if let Some(body) = &direct.body {
            check.one_of(
                format!("{path}.directResponse.body"),
                &["string", "bytes"],
                &[body.string.is_some(), body.bytes.is_some()],
            );
        }
    }
    if let Some(rewrite) = &route.rewrite {
        check.one_of(
            format!("{path}.rewrite"),
            &["uri", "uriRegexRewrite"],
            &[rewrite.uri.is_some(), rewrite.uri_regex_rewrite.is_some()],
        );
        if let Some(re) = rewrite
            .uri_regex_rewrite
            .as_ref()
            .and_then(|r| r.matches.as_ref())
        {
            check.regex(format!("{path}.rewrite.uriRegexRewrite.match"), re);
        }
    }
    check.duration(format!("{path}.timeout"), route.timeout.as_ref());
    if let Some(retries) = &route.retries {
        if let Some(attempts) = retries.attempts
            && attempts < 0
        {
            check.error(
                format!("{path}.retries.attempts"),
                format!("{attempts} is negative"),
            );
        }
        check.duration(
            format!("{path}.retries.perTryTimeout"),
            retries.per_try_timeout.as_ref(),
        );
        check.duration(format!("{path}.retries.backoff"), retries.backoff.as_ref());
    }
    if let Some(fault) = &route.fault {
        let fpath = format!("{path}.fault");
        if fault.delay.is_none() && fault.abort.is_none() {
            check.error(&fpath, "a fault needs a delay or an abort");
        }
        if let Some(delay) = &fault.delay {
            let set = [
                delay.fixed_delay.is_some(),
                delay.exponential_delay.is_some(),
            ];
            check.one_of(
                format!("{fpath}.delay"),
                &["fixedDelay", "exponentialDelay"],
                &set,
            );
            if !set.contains(&true) {
                check.error(format!("{fpath}.delay"), "set fixedDelay (e.g. \"5s\")");
            }
            check.duration(
                format!("{fpath}.delay.fixedDelay"),
                delay.fixed_delay.as_ref(),
            );
            check.duration(
                format!("{fpath}.delay.exponentialDelay"),
                delay.exponential_delay.as_ref(),
            );
            check.percentage(
                format!("{fpath}.delay.percentage"),
                delay.percentage.as_ref(),
            );
            check.int_percent(
                format!("{fpath}.delay.percent"),
                delay.percent.map(i64::from),
            );
        }
        if let Some(abort) = &fault.abort {
            let set = [
                abort.http_status.is_some(),
                abort.grpc_status.is_some(),
                abort.http2_error.is_some(),
            ];
            check.one_of(
                format!("{fpath}.abort"),
                &["httpStatus", "grpcStatus", "http2Error"],
                &set,
            );
            if !set.contains(&true) {
                check.error(format!("{fpath}.abort"), "set httpStatus (e.g. 503)");
            }
            if let Some(status) = abort.http_status
                && !(200..=599).contains(&status)
            {
                check.error(
                    format!("{fpath}.abort.httpStatus"),
                    format!("{status} is not an HTTP status from 200 to 599"),
                );
            }
            check.percentage(
                format!("{fpath}.abort.percentage"),
                abort.percentage.as_ref(),
            );
        }
    }
    if let Some(mirror) = &route.mirror {
        check.destination(format!("{path}.mirror"), mirror);
    }
    for (i, mirror) in route.mirrors.iter().enumerate() {
        check.destination(
            format!("{path}.mirrors[{i}].destination"),
            &mirror.destination,
        );
        check.percentage(
            format!("{path}.mirrors[{i}].percentage"),
            mirror.percentage.as_ref(),
        );
    }
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        check.error(path, "mirror and mirrors are both set; use mirrors");
    }
    check.int_percent(
        format!("{path}.mirrorPercent"),
        route.mirror_percent.map(i64::from),
    );
    check.int_percent(
        format!("{path}.mirror_percent"),
        route.mirror_percent_legacy.map(i64::from),
    );
    check.percentage(
        format!("{path}.mirrorPercentage"),
        route.mirror_percentage.as_ref(),
    );
    if let Some(cors) = &route.cors_policy {
        for (i, origin) in cors.allow_origins.iter().enumerate() {
            check.string_match(format!("{path}.corsPolicy.allowOrigins[{i}]"), origin);
        }
        check.duration(format!("{path}.corsPolicy.maxAge"), cors.max_age.as_ref());
    }
    check.headers(format!("{path}.headers"), route.headers.as_deref());
}

fn http_match(check: &mut Check, path: &str, m: &HttpMatchRequest) {
    for (name, value) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(value) = value {
            check.string_match(format!("{path}.{name}"), value);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("queryParams", &m.query_params),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, value) in map {
            check.string_match(format!("{path}.{field}[{name}]"), value);
            if field != "queryParams" && *name != name.to_lowercase() {
                check.error(
                    format!("{path}.{field}[{name}]"),
                    format!(
                        "header names must be lower case; write {:?}",
                        name.to_lowercase()
                    ),
                );
            }
        }
    }
    check.port(format!("{path}.port"), m.port.map(i64::from));
}
