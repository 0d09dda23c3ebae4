//! What the data plane implements, field by field: one declarative table of Istio field paths
//! (under `spec`) and their [`Support`]. Every field a user sets that is not supported gets
//! one warning per field path per object — never silence. Tests check that every property of
//! the CRD schemas falls under an entry, and that every entry names a property.

use std::sync::LazyLock;

use serde_json::Value;

use super::resource::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// The data plane implements it.
    Supported,
    /// Used by the config model itself (host resolution, visibility, policy selection);
    /// carries no data-plane behaviour of its own.
    Model,
    /// Stored, not implemented yet.
    Planned,
    /// Has no meaning in ambient mode (sidecar-only settings).
    NotApplicable,
}

use Kind::*;
use Support::*;

/// `(kind, path under spec, support)`. `x[]` is an array field; a path covers everything
/// below it, and a longer path inside it says what differs there (a `Planned` field inside a
/// `Supported` group). DestinationRule traffic-policy fields are in [`TRAFFIC_POLICY`].
///
/// What is `Supported` here is what the node agents (PeerAuthentication,
/// AuthorizationPolicy) and the waypoint (VirtualService, DestinationRule, L7
/// AuthorizationPolicy, RequestAuthentication) read; what is `Planned` is what they report,
/// when they load the object, as not implemented. Value-dependent limits (a retry condition
/// the waypoint does not know, a header it cannot edit) are reported by the proxies only.
const FIELDS: &[(Kind, &str, Support)] = &[
    (VirtualService, "hosts", Model),
    (VirtualService, "exportTo", Model),
    (VirtualService, "gateways", Supported),
    (VirtualService, "http[].name", Supported),
    (VirtualService, "http[].match", Supported),
    (VirtualService, "http[].match[].statPrefix", Planned),
    (VirtualService, "http[].route", Supported),
    (VirtualService, "http[].redirect", Supported),
    (VirtualService, "http[].directResponse", Supported),
    (VirtualService, "http[].delegate", Planned),
    (VirtualService, "http[].rewrite", Supported),
    (VirtualService, "http[].timeout", Supported),
    (VirtualService, "http[].retries", Supported),
    (
        VirtualService,
        "http[].retries.retryRemoteLocalities",
        Planned,
    ),
    (VirtualService, "http[].fault", Supported),
    (
        VirtualService,
        "http[].fault.delay.exponentialDelay",
        Planned,
    ),
    (VirtualService, "http[].fault.abort.http2Error", Planned),
    (VirtualService, "http[].mirror", Supported),
    (VirtualService, "http[].mirrors", Supported),
    (VirtualService, "http[].mirrorPercent", Supported),
    (VirtualService, "http[].mirror_percent", Supported),
    (VirtualService, "http[].mirrorPercentage", Supported),
    (VirtualService, "http[].corsPolicy", Supported),
    (VirtualService, "http[].headers", Supported),
    (VirtualService, "tls[].match", Planned),
    (VirtualService, "tls[].route", Planned),
    (VirtualService, "tcp[].match", Supported),
    (VirtualService, "tcp[].route", Supported),
    (DestinationRule, "host", Model),
    (DestinationRule, "exportTo", Model),
    (DestinationRule, "workloadSelector", Planned),
    (DestinationRule, "subsets[].name", Supported),
    (DestinationRule, "subsets[].labels", Supported),
    (Gateway, "servers", Planned),
    (Gateway, "selector", Planned),
    (ServiceEntry, "hosts", Planned),
    (ServiceEntry, "addresses", Planned),
    (ServiceEntry, "ports", Planned),
    (ServiceEntry, "location", Planned),
    (ServiceEntry, "resolution", Planned),
    (ServiceEntry, "endpoints", Planned),
    (ServiceEntry, "workloadSelector", Planned),
    (ServiceEntry, "exportTo", Planned),
    (ServiceEntry, "subjectAltNames", Planned),
    (Sidecar, "workloadSelector", NotApplicable),
    (Sidecar, "ingress", NotApplicable),
    (Sidecar, "egress", NotApplicable),
    (Sidecar, "inboundConnectionPool", NotApplicable),
    (Sidecar, "outboundTrafficPolicy", NotApplicable),
    (PeerAuthentication, "selector", Model),
    (PeerAuthentication, "mtls", Supported),
    (PeerAuthentication, "portLevelMtls", Supported),
    (AuthorizationPolicy, "selector", Model),
    (AuthorizationPolicy, "targetRef", Model),
    (AuthorizationPolicy, "targetRefs", Model),
    (AuthorizationPolicy, "action", Supported),
    // Only names the authorizer of a CUSTOM policy; CUSTOM is not enforced, and
    // `policy::lint` says so for each such policy.
    (AuthorizationPolicy, "provider", Model),
    (AuthorizationPolicy, "rules", Supported),
    (RequestAuthentication, "selector", Model),
    (RequestAuthentication, "targetRef", Model),
    (RequestAuthentication, "targetRefs", Model),
    (RequestAuthentication, "jwtRules", Supported),
];

/// A DestinationRule traffic policy's fields, relative to each place one can stand: the
/// rule's, a subset's, and the port-level settings of either (see also [`WHOLE_POLICY`]).
const TRAFFIC_POLICY: &[(&str, Support)] = &[
    ("loadBalancer", Supported),
    ("loadBalancer.localityLbSetting", Planned),
    ("loadBalancer.warmupDurationSecs", Planned),
    ("loadBalancer.warmup", Planned),
    ("loadBalancer.zoneAwareLbSetting", Planned),
    ("loadBalancer.backendUtilization", Planned),
    ("loadBalancer.consistentHash.maglev", Planned),
    ("connectionPool", Supported),
    ("connectionPool.tcp.tcpKeepalive", Planned),
    ("connectionPool.tcp.maxConnectionDuration", Planned),
    ("connectionPool.tcp.idleTimeout", Planned),
    ("connectionPool.http.h2UpgradePolicy", Planned),
    ("connectionPool.http.useClientProtocol", Planned),
    ("connectionPool.http.maxConcurrentStreams", Planned),
    ("connectionPool.http.http2KeepAlive", Planned),
    ("outlierDetection", Supported),
    ("outlierDetection.consecutiveErrors", Planned),
    ("outlierDetection.outlierDetectionHttpErrorCodes", Planned),
    // Upstream connections always use HBONE with mesh mTLS: `mode: ISTIO_MUTUAL` asks for
    // just that, anything else is ignored (the waypoint says so when it loads the rule).
    ("tls", Supported),
    ("tls.clientCertificate", Planned),
    ("tls.privateKey", Planned),
    ("tls.caCertificates", Planned),
    ("tls.credentialName", Planned),
    ("tls.subjectAltNames", Planned),
    ("tls.sni", Planned),
    ("tls.insecureSkipVerify", Planned),
    ("tls.caCrl", Planned),
];

/// Traffic-policy fields that port-level settings do not have.
const WHOLE_POLICY: &[(&str, Support)] = &[
    ("tunnel", Planned),
    ("proxyProtocol", Planned),
    ("retryBudget", Planned),
];

type Entry = (Kind, String, Support);

/// [`FIELDS`], with [`TRAFFIC_POLICY`] under each of its four places and [`WHOLE_POLICY`]
/// under the two that are not port-level.
static TABLE: LazyLock<Vec<Entry>> = LazyLock::new(|| {
    let mut table: Vec<Entry> = FIELDS
        .iter()
        .map(|(kind, path, support)| (*kind, (*path).to_owned(), *support))
        .collect();
    for policy in ["trafficPolicy", "subsets[].trafficPolicy"] {
        table.push((DestinationRule, policy.to_owned(), Supported));
        let port_level = format!("{policy}.portLevelSettings");
        table.push((DestinationRule, port_level.clone(), Supported));
        let places = [
            (policy.to_owned(), TRAFFIC_POLICY.iter().chain(WHOLE_POLICY)),
            (format!("{port_level}[]"), TRAFFIC_POLICY.iter().chain(&[])),
        ];
        for (place, fields) in places {
            for (field, support) in fields {
                table.push((DestinationRule, format!("{place}.{field}"), *support));
            }
        }
    }
    table
});

/// The table's entries for `kind`: `(path under spec, support)`.
pub fn entries(kind: Kind) -> impl Iterator<Item = (&'static str, Support)> {
    TABLE
        .iter()
        .filter(move |(k, _, _)| *k == kind)
        .map(|(_, path, support)| (path.as_str(), *support))
}

/// The entry covering a schema path (`a[].b.c`), if any: the longest prefix.
pub fn entry_for(kind: Kind, path: &str) -> Option<(&'static str, Support)> {
    entries(kind)
        .filter(|(p, _)| {
            path == *p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with(['.', '[', '{']))
        })
        .max_by_key(|(p, _)| p.len())
}

/// One warning per table path the object's `spec` sets that the data plane does not
/// implement; one for the whole object when its kind has no field the data plane reads;
/// none for a kind the table does not cover (Kubernetes' own).
pub fn warnings(kind: Kind, spec: &Value) -> Vec<String> {
    if entries(kind).next().is_none() {
        return Vec::new();
    }
    if entries(kind).all(|(_, support)| support == Planned) {
        return vec![format!(
            "the data plane does not support {kind} yet; the object is stored and will be ignored"
        )];
    }
    if entries(kind).all(|(_, support)| support == NotApplicable) {
        return vec![format!(
            "{kind} has no effect in ambient mode (there are no sidecars); the object is stored and ignored"
        )];
    }
    let mut warnings = Vec::new();
    for (path, support) in entries(kind) {
        if !is_set(spec, &path.split('.').collect::<Vec<_>>()) {
            continue;
        }
        match support {
            Supported | Model => {}
            Planned => warnings.push(format!(
                "{path} is not supported yet by the data plane; it is stored and will be ignored"
            )),
            NotApplicable => warnings.push(format!(
                "{path} has no effect in ambient mode (there are no sidecars); it is stored and ignored"
            )),
        }
    }
    // Anything set that no entry covers is unsupported too (the coverage test keeps this
    // empty for every schema field).
    if let Some(map) = spec.as_object() {
        for (field, value) in map {
            if !is_empty(value) && !entries(kind).any(|(p, _)| covers(p, field)) {
                warnings.push(format!(
                    "{field} is not supported yet by the data plane; it is stored and will be ignored"
                ));
            }
        }
    }
    warnings
}

fn covers(entry: &str, field: &str) -> bool {
    entry == field
        || entry
            .strip_prefix(field)
            .is_some_and(|rest| rest.starts_with(['.', '[', '{']))
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// Whether the path (segments like `http[]`, `fault`) holds a non-empty value anywhere.
fn is_set(value: &Value, segments: &[&str]) -> bool {
    let Some((first, rest)) = segments.split_first() else {
        return !is_empty(value);
    };
    let (field, array) = match first.strip_suffix("[]") {
        Some(field) => (field, true),
        None => (*first, false),
    };
    let Some(child) = value.get(field) else {
        return false;
    };
    if array {
        child
            .as_array()
            .is_some_and(|items| items.iter().any(|item| is_set(item, rest)))
    } else {
        is_set(child, rest)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn one_warning_per_field_path_not_per_array_element() {
        let spec = json!({
            "hosts": ["reviews"],
            "http": [
                {"delegate": {"name": "a"}, "fault": {"abort": {"http2Error": "x"}}},
                {"delegate": {"name": "b"}, "route": [{"destination": {"host": "b"}}]}
            ]
        });
        let warnings = warnings(Kind::VirtualService, &spec);
        assert_eq!(
            warnings,
            vec![
                "http[].delegate is not supported yet by the data plane; it is stored and will be ignored",
                "http[].fault.abort.http2Error is not supported yet by the data plane; it is stored and will be ignored",
            ]
        );
    }

    #[test]
    fn model_fields_and_empty_values_do_not_warn() {
        let spec = json!({"hosts": ["a"], "exportTo": ["."], "gateways": []});
        assert!(warnings(Kind::VirtualService, &spec).is_empty());
    }

    #[test]
    fn a_kind_the_data_plane_does_not_read_at_all_gets_one_warning() {
        let entry =
            json!({"hosts": ["api.example.com"], "ports": [{"number": 443}], "resolution": "DNS"});
        assert_eq!(
            warnings(Kind::ServiceEntry, &entry),
            vec![
                "the data plane does not support ServiceEntry yet; the object is stored and will be ignored"
            ]
        );
        assert_eq!(
            warnings(Kind::Sidecar, &json!({"egress": [{"hosts": ["./*"]}]})),
            vec![
                "Sidecar has no effect in ambient mode (there are no sidecars); the object is stored and ignored"
            ]
        );
    }

    #[test]
    fn kinds_the_table_does_not_cover_get_no_warning() {
        assert!(warnings(Kind::Service, &json!({"ports": [{"port": 80}]})).is_empty());
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(
            entry_for(Kind::VirtualService, "http[].fault.abort.percentage.value"),
            Some(("http[].fault", Supported))
        );
        assert_eq!(
            entry_for(Kind::VirtualService, "http[].fault.abort.http2Error"),
            Some(("http[].fault.abort.http2Error", Planned))
        );
        assert_eq!(entry_for(Kind::VirtualService, "http[].faults"), None);
    }

    #[test]
    fn traffic_policy_fields_are_judged_wherever_the_policy_stands() {
        let policy = json!({
            "loadBalancer": {"simple": "ROUND_ROBIN"},
            "tunnel": {"protocol": "CONNECT", "targetHost": "h", "targetPort": 1},
        });
        let spec = json!({
            "host": "reviews",
            "trafficPolicy": policy,
            "subsets": [{"name": "v1", "labels": {"version": "v1"},
                         "trafficPolicy": {"portLevelSettings": [{"port": {"number": 9080}, "tls": {"mode": "ISTIO_MUTUAL", "sni": "x"}}]}}],
        });
        assert_eq!(
            warnings(Kind::DestinationRule, &spec),
            vec![
                "trafficPolicy.tunnel is not supported yet by the data plane; it is stored and will be ignored",
                "subsets[].trafficPolicy.portLevelSettings[].tls.sni is not supported yet by the data plane; it is stored and will be ignored",
            ]
        );
    }
}
