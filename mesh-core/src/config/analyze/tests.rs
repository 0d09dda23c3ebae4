//! The bad-input corpus and the multi-object checks, end to end from YAML text.

use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::manifest::parse_documents;

fn run(text: &str) -> Report {
    analyze(parse_documents(text, Path::new("test.yaml")))
}

fn lines(report: &Report, severity: Severity) -> Vec<String> {
    report
        .diagnostics
        .iter()
        .filter(|d| d.severity == severity)
        .map(ToString::to_string)
        .collect()
}

fn has(report: &Report, severity: Severity, needle: &str) -> bool {
    lines(report, severity).iter().any(|l| l.contains(needle))
}

const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn with_good(bad: &str) -> Report {
    let report = run(&format!("{GOOD}---\n{bad}"));
    // The good objects around the bad one still load: nothing is said against them but
    // support warnings.
    let against_good = report.diagnostics.iter().filter(|d| {
        d.severity == Severity::Error
            && d.name.as_deref() == Some("reviews")
            && d.kind.as_deref() != Some("VirtualService")
    });
    assert_eq!(against_good.count(), 0, "{:#?}", report.diagnostics);
    report
}

#[test]
fn bad_regex_is_an_error_naming_the_field() {
    let report = with_good(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad-regex}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {regex: "/api/(v1"}}]
    route: [{destination: {host: reviews}}]
"#,
    );
    assert!(
        has(
            &report,
            Severity::Error,
            "VirtualService default/bad-regex: http[0].match[0].uri.regex: \"/api/(v1\" is not a valid RE2 regex"
        ),
        "{:#?}",
        lines(&report, Severity::Error)
    );
}

#[test]
fn weights_summing_to_90_are_an_error() {
    let report = with_good(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v2}, weight: 40}
"#,
    );
    assert_eq!(
        lines(&report, Severity::Error),
        vec![
            "VirtualService default/reviews: http[0].route: route weights sum to 90; with several destinations they must sum to 100"
        ]
    );
}

#[test]
fn missing_host_is_an_error() {
    let report = with_good(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: no-host}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {subset: v1}}]
"#,
    );
    assert!(
        has(
            &report,
            Severity::Error,
            "VirtualService default/no-host: spec.http[0].route[0].destination: missing field `host`"
        ),
        "{:#?}",
        report.diagnostics
    );
}

#[test]
fn unknown_subset_is_an_error_listing_the_defined_ones() {
    let report = with_good(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v9}}]
"#,
    );
    assert_eq!(
        lines(&report, Severity::Error),
        vec![
            "VirtualService default/reviews: http[0].route[0].destination.subset: subset \"v9\" is not defined in DestinationRule default/reviews (it has v1, v2); add it or fix the name"
        ]
    );
}

#[test]
fn wrong_types_name_the_field_path() {
    let report = with_good(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typed}
spec:
  hosts: reviews
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: typed}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {tcp: {maxConnections: lots}}}
"#,
    );
    let errors = lines(&report, Severity::Error);
    assert!(errors.iter().any(|e| e.starts_with("VirtualService default/typed: spec.hosts: invalid type: string \"reviews\", expected a sequence")), "{errors:#?}");
    assert!(errors.iter().any(|e| e.starts_with("DestinationRule default/typed: spec.trafficPolicy.connectionPool.tcp.maxConnections: invalid type: string \"lots\"")), "{errors:#?}");
}

#[test]
fn conflicting_hosts_across_virtual_services_are_errors_on_both() {
    let report = with_good(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http: [{route: [{destination: {host: reviews}}]}]
"#,
    );
    let errors = lines(&report, Severity::Error);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with("VirtualService default/a: host reviews.default.svc.cluster.local is also claimed by VirtualService default/b"));
    assert!(errors[1].starts_with("VirtualService default/b: host reviews.default.svc.cluster.local is also claimed by VirtualService default/a"));
}

#[test]
fn unsupported_fields_warn_once_per_path_and_unknown_hosts_warn() {
    let report = with_good(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - fault: {abort: {http2Error: CANCEL, percentage: {value: 10}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - fault: {abort: {http2Error: CANCEL}, delay: {fixedDelay: 2s}}
    route: [{destination: {host: ratings}}]
"#,
    );
    let warnings = lines(&report, Severity::Warning);
    let fault: Vec<_> = warnings
        .iter()
        .filter(|w| w.contains("http[].fault"))
        .collect();
    assert_eq!(
        fault,
        vec![
            "VirtualService default/reviews: http[].fault.abort.http2Error is not supported yet by the data plane; it is stored and will be ignored"
        ]
    );
    assert!(warnings.iter().any(|w| w == "VirtualService default/reviews: http[1].route[0].destination.host: ratings.default.svc.cluster.local matches no Service or ServiceEntry in the files given"), "{warnings:#?}");
    assert!(lines(&report, Severity::Error).is_empty());
}

#[test]
fn a_10_mb_document_is_refused_quickly() {
    let big = "x".repeat(10 * 1024 * 1024);
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: big\n  annotations:\n    blob: \"{big}\"\n"
    );
    let start = Instant::now();
    let report = with_good(&text);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        has(
            &report,
            Severity::Error,
            "Service default/big: the object is 10485"
        ),
        "{:#?}",
        lines(&report, Severity::Error)
    );
}

#[test]
fn a_yaml_alias_bomb_is_refused_quickly() {
    let mut text = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\ndata:\n  a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        text.push_str(&format!(
            "  a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
        ));
    }
    let start = Instant::now();
    let report = run(&format!("{GOOD}---\n{text}"));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    let errors = lines(&report, Severity::Error);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("test.yaml (document 3)"), "{errors:#?}");
}

#[test]
fn deeply_nested_documents_are_refused() {
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let report = run(&format!(
        "{GOOD}---\napiVersion: v1\nkind: Service\nmetadata: {{name: deep}}\nspec: {deep}\n"
    ));
    let errors = lines(&report, Severity::Error);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("recursion limit"), "{errors:#?}");
    // Deep but under the YAML reader's limit: refused by the model's own guard.
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let report = run(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: deep}}\nspec: {{ports: {deep}}}\n"
    ));
    assert_eq!(
        lines(&report, Severity::Error),
        vec!["Service default/deep: nested more than 64 levels deep; no Service needs that"]
    );
}

#[test]
fn istio_kinds_the_model_lacks_are_reported_not_ignored() {
    let report = run(
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: f, namespace: x}\nspec: {}\n",
    );
    assert_eq!(
        lines(&report, Severity::Warning),
        vec![
            "EnvoyFilter x/f: networking.istio.io/EnvoyFilter is not supported yet by the mesh; it will be ignored"
        ]
    );
}

#[test]
fn bookinfo_samples_analyze_without_errors() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/istio-samples/bookinfo");
    let report = analyze(crate::manifest::load_paths(&[
        samples.join("platform/kube/bookinfo.yaml"),
        samples.join("networking/destination-rule-all.yaml"),
        samples.join("networking/virtual-service-reviews-90-10.yaml"),
    ]));
    assert_eq!(lines(&report, Severity::Error), Vec::<String>::new());
    // Subsets and weighted routes are what the waypoint does: nothing is reported unsupported.
    assert_eq!(lines(&report, Severity::Warning), Vec::<String>::new());
}

/// Every VirtualService and DestinationRule among Istio's bookinfo samples uses only what the
/// waypoint implements (the waypoint tests apply them unchanged), so `meshctl analyze` must
/// not call any of their fields unsupported. (Their Gateways and ServiceEntry are not
/// implemented, and are reported.)
#[test]
fn no_field_of_the_bookinfo_routing_samples_is_called_unsupported() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/istio-samples/bookinfo");
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(samples.join("networking")).expect("bookinfo samples") {
        paths.push(entry.expect("sample entry").path());
    }
    assert!(paths.len() > 10, "bookinfo samples missing: {paths:?}");
    let mut unsupported = Vec::new();
    for path in &paths {
        let report = analyze(crate::manifest::load_paths(std::slice::from_ref(path)));
        unsupported.extend(
            lines(&report, Severity::Warning)
                .into_iter()
                .filter(|w| w.starts_with("VirtualService ") || w.starts_with("DestinationRule "))
                .filter(|w| w.contains("not supported yet by the data plane"))
                .map(|w| format!("{}: {w}", path.display())),
        );
    }
    assert_eq!(unsupported, Vec::<String>::new());
}

/// An AuthorizationPolicy is linted as the proxy that enforces it would: a node agent (L4)
/// for one bound by selector, a waypoint (L7) for one bound by targetRefs.
#[test]
fn authorization_policies_are_linted_by_their_enforcer() {
    let policy = |name: &str, binding: &str| {
        format!(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}}}
spec:
  {binding}
  action: ALLOW
  rules:
  - to: [{{operation: {{methods: [GET]}}}}]
  - from: [{{source: {{requestPrincipals: ["*"]}}}}]
    when: [{{key: request.auth.subject, values: [alice]}}]
"#
        )
    };
    let report = run(&format!(
        "{}---{}",
        policy("by-selector", "selector: {matchLabels: {app: reviews}}"),
        policy(
            "by-waypoint",
            "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]"
        ),
    ));
    let warnings = lines(&report, Severity::Warning);
    let about = |name: &str| -> Vec<&String> {
        warnings
            .iter()
            .filter(|w| w.starts_with(&format!("AuthorizationPolicy default/{name}: rules")))
            .collect()
    };
    assert_eq!(
        about("by-selector"),
        vec![
            "AuthorizationPolicy default/by-selector: rules[0] uses methods, which need L7 processing (a waypoint); at L4 this ALLOW rule never matches",
            "AuthorizationPolicy default/by-selector: rules[1] uses requestPrincipals, request.auth.subject, which need L7 processing (a waypoint); at L4 this ALLOW rule never matches",
        ],
        "{warnings:#?}"
    );
    assert_eq!(
        about("by-waypoint"),
        vec![
            "AuthorizationPolicy default/by-waypoint: rules[1] uses request.auth.subject, which the waypoint does not provide (request.auth keys are principal, audiences, presenter and claims[name]); they never match",
            "AuthorizationPolicy default/by-waypoint: rules[1] uses requestPrincipals, request.auth.subject, but no RequestAuthentication in the files given attaches to a Service or waypoint in namespace default: no request carries a validated JWT, so they never match (attach one with targetRefs)",
        ],
        "{warnings:#?}"
    );
}

#[test]
fn request_authentications_say_what_applies_them() {
    let report = run(r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: by-selector}
spec:
  selector: {matchLabels: {app: reviews}}
  jwtRules: [{issuer: "https://issuer.example", jwks: '{"keys": []}'}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: on-service}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  jwtRules: [{issuer: "https://issuer.example", jwksUri: "https://issuer.example/jwks.json"}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  rules: [{from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]}]
"#);
    assert_eq!(
        lines(&report, Severity::Warning),
        [
            "RequestAuthentication default/by-selector: applies to no traffic in this mesh: \
             waypoints enforce a RequestAuthentication that names their Service or the \
             waypoint (kind Gateway) in targetRefs; one with a selector, or with neither, is \
             for sidecars and ingress gateways",
        ]
    );
}
