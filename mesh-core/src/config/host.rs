//! Istio's host rules: a short name (no dot) in a rule means `<name>.<rule namespace>.svc.
//! cluster.local`; anything with a dot is taken as written (a fully qualified name, or a
//! `*.`-prefixed wildcard); `*` matches every host. `exportTo` says which namespaces see a
//! rule: `.` (its own), `*` (all, the default), `~` (none) or namespace names.

/// The cluster's DNS domain.
pub const DOMAIN: &str = "cluster.local";

/// Istio's root namespace: mesh-wide policies live here.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// `name.namespace.svc.cluster.local`, a Service's hostname.
pub fn service_fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc.{DOMAIN}")
}

/// Resolves a host written in a rule of `namespace` the way Istio does.
pub fn resolve(host: &str, namespace: &str) -> String {
    if host == "*" || host.contains('.') {
        host.to_owned()
    } else {
        service_fqdn(host, namespace)
    }
}

/// Whether `pattern` (a resolved host, maybe a wildcard) matches the concrete `host`.
pub fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// Whether two resolved hosts (either maybe a wildcard) can both match one host.
pub fn overlaps(a: &str, b: &str) -> bool {
    if a == b || a == "*" || b == "*" {
        return true;
    }
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb) || sb.ends_with(sa),
        (Some(_), None) => matches(a, b),
        (None, Some(_)) => matches(b, a),
        (None, None) => false,
    }
}

/// Whether a rule of `owner_ns` with this `exportTo` is visible to clients in `client_ns`.
pub fn visible(export_to: &[String], owner_ns: &str, client_ns: &str) -> bool {
    if export_to.is_empty() {
        return true;
    }
    export_to.iter().any(|to| match to.as_str() {
        "*" => true,
        "." => owner_ns == client_ns,
        "~" => false,
        ns => ns == client_ns,
    })
}

/// Checks a host as a rule may write it: `*`, `*.suffix`, a short name or a DNS name.
pub fn check(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host is empty; write a service name or a fully qualified host".into());
    }
    if host == "*" {
        return Ok(());
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.len() > 255 {
        return Err(format!("host {host:?} is longer than 255 characters"));
    }
    let bad_label = name.split('.').find(|label| {
        label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    match bad_label {
        Some(label) if label.contains('*') => Err(format!(
            "host {host:?}: a wildcard may only be the whole first label, as in \"*.example.com\""
        )),
        Some(label) => Err(format!(
            "host {host:?}: {label:?} is not a valid DNS label (letters, digits and '-', at most 63)"
        )),
        None => Ok(()),
    }
}

/// Checks an `exportTo` list: `.`, `*`, `~` or namespace names; `~` and `*` stand alone.
pub fn check_export_to(export_to: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, to) in export_to.iter().enumerate() {
        if export_to[..i].contains(to) {
            problems.push(format!("exportTo lists {to:?} twice"));
        }
        if !matches!(to.as_str(), "." | "*" | "~") && crate::manifest::check_dns_label(to).is_err()
        {
            problems.push(format!(
                "exportTo {to:?} is not \".\", \"*\", \"~\" or a namespace name"
            ));
        }
    }
    for alone in ["~", "*"] {
        if export_to.len() > 1 && export_to.iter().any(|to| to == alone) {
            problems.push(format!(
                "exportTo {alone:?} cannot be combined with other entries"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_relative_to_the_rule_namespace() {
        assert_eq!(resolve("reviews", "shop"), "reviews.shop.svc.cluster.local");
        assert_eq!(resolve("reviews.shop", "default"), "reviews.shop");
        assert_eq!(resolve("*.example.com", "shop"), "*.example.com");
        assert_eq!(resolve("*", "shop"), "*");
    }

    #[test]
    fn wildcards_match_suffixes_only() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("*", "anything.at.all"));
        assert!(!matches("a.example.com", "b.example.com"));
        assert!(overlaps(
            "*.svc.cluster.local",
            "*.default.svc.cluster.local"
        ));
        assert!(!overlaps("*.a.com", "*.b.com"));
    }

    #[test]
    fn export_to_limits_visibility() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(visible(&[], "a", "b"));
        assert!(visible(&list(&["."]), "a", "a"));
        assert!(!visible(&list(&["."]), "a", "b"));
        assert!(visible(&list(&[".", "b"]), "a", "b"));
        assert!(!visible(&list(&["~"]), "a", "a"));
        assert!(check_export_to(&list(&["~", "."])).len() == 1);
        assert!(check_export_to(&list(&["Bad_NS"])).len() == 1);
    }

    #[test]
    fn host_syntax_is_checked() {
        assert!(check("reviews").is_ok());
        assert!(check("*.example.com").is_ok());
        assert!(check("*").is_ok());
        assert!(check("").is_err());
        assert!(check("a.*.com").is_err());
        assert!(check("bad host").is_err());
    }
}
