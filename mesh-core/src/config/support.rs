//! What the data plane implements, field by field: one declarative table of Istio field paths
//! (under `spec`) and their [`Support`]. Later issues flip entries to `Supported` as they
//! implement them. Every field a user sets that is not supported gets one warning per field
//! path per object — never silence. A test checks that every property of the CRD schemas
//! falls under an entry.

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
/// below it.
pub const TABLE: &[(Kind, &str, Support)] = &[
    (VirtualService, "hosts", Model),
    (VirtualService, "exportTo", Model),
    (VirtualService, "gateways", Planned),
    (VirtualService, "http[].name", Planned),
    (VirtualService, "http[].match", Planned),
    (VirtualService, "http[].route", Planned),
    (VirtualService, "http[].redirect", Planned),
    (VirtualService, "http[].directResponse", Planned),
    (VirtualService, "http[].delegate", Planned),
    (VirtualService, "http[].rewrite", Planned),
    (VirtualService, "http[].timeout", Planned),
    (VirtualService, "http[].retries", Planned),
    (VirtualService, "http[].fault", Planned),
    (VirtualService, "http[].mirror", Planned),
    (VirtualService, "http[].mirrors", Planned),
    (VirtualService, "http[].mirrorPercent", Planned),
    (VirtualService, "http[].mirror_percent", Planned),
    (VirtualService, "http[].mirrorPercentage", Planned),
    (VirtualService, "http[].corsPolicy", Planned),
    (VirtualService, "http[].headers", Planned),
    (VirtualService, "tls[].match", Planned),
    (VirtualService, "tls[].route", Planned),
    (VirtualService, "tcp[].match", Planned),
    (VirtualService, "tcp[].route", Planned),
    (DestinationRule, "host", Model),
    (DestinationRule, "exportTo", Model),
    (DestinationRule, "workloadSelector", Planned),
    (DestinationRule, "subsets[].name", Planned),
    (DestinationRule, "subsets[].labels", Planned),
    (DestinationRule, "subsets[].trafficPolicy", Planned),
    (DestinationRule, "trafficPolicy.loadBalancer", Planned),
    (DestinationRule, "trafficPolicy.connectionPool", Planned),
    (DestinationRule, "trafficPolicy.outlierDetection", Planned),
    (DestinationRule, "trafficPolicy.tls", Planned),
    (DestinationRule, "trafficPolicy.portLevelSettings", Planned),
    (DestinationRule, "trafficPolicy.tunnel", Planned),
    (DestinationRule, "trafficPolicy.proxyProtocol", Planned),
    (DestinationRule, "trafficPolicy.retryBudget", Planned),
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
    (PeerAuthentication, "mtls", Planned),
    (PeerAuthentication, "portLevelMtls", Planned),
    (AuthorizationPolicy, "selector", Model),
    (AuthorizationPolicy, "targetRef", Model),
    (AuthorizationPolicy, "targetRefs", Model),
    (AuthorizationPolicy, "action", Planned),
    (AuthorizationPolicy, "provider", Planned),
    (AuthorizationPolicy, "rules", Planned),
    (RequestAuthentication, "selector", Model),
    (RequestAuthentication, "targetRef", Model),
    (RequestAuthentication, "targetRefs", Model),
    (RequestAuthentication, "jwtRules", Planned),
];

/// The entry covering a schema path (`a[].b.c`), if any: the longest prefix.
pub fn entry_for(kind: Kind, path: &str) -> Option<(&'static str, Support)> {
    TABLE
        .iter()
        .filter(|(k, p, _)| {
            *k == kind
                && (path == *p
                    || path
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with(['.', '[', '{'])))
        })
        .max_by_key(|(_, p, _)| p.len())
        .map(|(_, p, s)| (*p, *s))
}

/// One warning per table path the object's `spec` sets that the data plane does not
/// implement.
pub fn warnings(kind: Kind, spec: &Value) -> Vec<String> {
    let mut warnings = Vec::new();
    for (_, path, support) in TABLE.iter().filter(|(k, _, _)| *k == kind) {
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
            if !is_empty(value) && !TABLE.iter().any(|(k, p, _)| *k == kind && covers(p, field)) {
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
                {"fault": {"abort": {"httpStatus": 500}}, "route": [{"destination": {"host": "a"}}]},
                {"fault": {"delay": {"fixedDelay": "1s"}}, "route": [{"destination": {"host": "b"}}]}
            ]
        });
        let warnings = warnings(Kind::VirtualService, &spec);
        assert_eq!(
            warnings,
            vec![
                "http[].route is not supported yet by the data plane; it is stored and will be ignored",
                "http[].fault is not supported yet by the data plane; it is stored and will be ignored",
            ]
        );
    }

    #[test]
    fn model_fields_and_empty_values_do_not_warn() {
        let spec = json!({"hosts": ["a"], "exportTo": ["."], "gateways": []});
        assert!(warnings(Kind::VirtualService, &spec).is_empty());
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(
            entry_for(Kind::VirtualService, "http[].fault.abort.percentage.value"),
            Some(("http[].fault", Planned))
        );
        assert_eq!(entry_for(Kind::VirtualService, "http[].faults"), None);
    }
}
