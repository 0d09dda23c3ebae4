//! Compiling `http[].match[]` and `tcp[].match[]` blocks.

use std::collections::BTreeMap;

use mesh_core::config::istio::{HttpMatchRequest, L4MatchAttributes, StringMatch};

use super::Ctx;
use crate::route::matching::{
    HeaderCondition, HeaderKey, HttpMatch, L4Match, MESH_GATEWAY, SourceCondition, StringMatcher,
    Subnet, UriMatch,
};

pub(super) fn http_match(
    ctx: &mut Ctx<'_>,
    path: &str,
    rule_name: Option<&str>,
    m: &HttpMatchRequest,
) -> HttpMatch {
    let route_name = match &m.name {
        Some(name) => Some(format!("{}.{name}", rule_name.unwrap_or_default())),
        None => rule_name.map(str::to_owned),
    };
    let mut out = HttpMatch {
        route_name,
        ..HttpMatch::default()
    };
    if let Some(uri) = &m.uri {
        out.uri = ctx
            .string_matcher(&format!("{path}.uri"), uri, false)
            .map(|matcher| UriMatch {
                matcher,
                ignore_case: m.ignore_uri_case.unwrap_or(false),
            });
    }
    out.scheme = field_matcher(ctx, path, "scheme", m.scheme.as_ref());
    out.method = field_matcher(ctx, path, "method", m.method.as_ref());
    out.authority = field_matcher(ctx, path, "authority", m.authority.as_ref());
    for (field, conditions, invert) in [
        ("headers", &m.headers, false),
        ("withoutHeaders", &m.without_headers, true),
    ] {
        for (name, value) in conditions {
            let hpath = format!("{path}.{field}[{name}]");
            let key = HeaderKey::parse(name)
                .map_err(|why| ctx.error(&hpath, why))
                .ok();
            let matcher = ctx.string_matcher(&hpath, value, true);
            if let (Some(key), Some(matcher)) = (key, matcher) {
                out.headers.push(HeaderCondition {
                    key,
                    matcher,
                    invert,
                });
            }
        }
    }
    for (name, value) in &m.query_params {
        let qpath = format!("{path}.queryParams[{name}]");
        if let Some(matcher) = ctx.string_matcher(&qpath, value, true) {
            out.query_params.push((name.clone(), matcher));
        }
    }
    out.port = match m.port {
        None | Some(0) => None,
        Some(port) => u16::try_from(port)
            .map_err(|_| {
                ctx.error(
                    format!("{path}.port"),
                    format!("port {port} is out of range; use 1 to 65535"),
                )
            })
            .ok(),
    };
    out.source = source_condition(&m.gateways, &m.source_labels, m.source_namespace.as_deref());
    if m.stat_prefix.is_some() {
        ctx.unsupported(
            format!("{path}.statPrefix"),
            "per-route stats prefixes are not implemented; routing is unaffected",
        );
    }
    out
}

fn field_matcher(
    ctx: &mut Ctx<'_>,
    path: &str,
    field: &str,
    m: Option<&StringMatch>,
) -> Option<StringMatcher> {
    ctx.string_matcher(&format!("{path}.{field}"), m?, true)
}

fn source_condition(
    gateways: &[String],
    labels: &BTreeMap<String, String>,
    namespace: Option<&str>,
) -> SourceCondition {
    SourceCondition {
        mesh_gateway: (!gateways.is_empty()).then(|| gateways.iter().any(|g| g == MESH_GATEWAY)),
        labels: labels.clone(),
        namespace: namespace.filter(|ns| !ns.is_empty()).map(str::to_owned),
    }
}

pub(super) fn l4_match(ctx: &mut Ctx<'_>, path: &str, m: &L4MatchAttributes) -> L4Match {
    let mut subnet = |field: String, text: &str| {
        Subnet::parse(text)
            .map_err(|why| ctx.error(field, why))
            .ok()
    };
    let destination_subnets = m
        .destination_subnets
        .iter()
        .enumerate()
        .filter_map(|(i, s)| subnet(format!("{path}.destinationSubnets[{i}]"), s))
        .collect();
    let source_subnet = m
        .source_subnet
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| subnet(format!("{path}.sourceSubnet"), s));
    let port = match m.port {
        None | Some(0) => None,
        Some(port) => u16::try_from(port)
            .map_err(|_| {
                ctx.error(
                    format!("{path}.port"),
                    format!("port {port} is out of range; use 1 to 65535"),
                )
            })
            .ok(),
    };
    L4Match {
        port,
        destination_subnets,
        source_subnet,
        source: source_condition(&m.gateways, &m.source_labels, m.source_namespace.as_deref()),
    }
}
