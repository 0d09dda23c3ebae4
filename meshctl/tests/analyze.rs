//! `meshctl analyze` as users run it: text and JSON output, exit status.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

fn write_dir(name: &str, files: &[(&str, &str)]) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("meshctl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    for (file, text) in files {
        std::fs::write(dir.join(file), text)?;
    }
    Ok(dir)
}

/// `meshctl analyze -f DIR` over `files` written to a fresh folder: the exit status and the
/// lines printed.
fn analyze_dir(name: &str, files: &[(&str, &str)]) -> Result<(i32, Vec<String>)> {
    let dir = write_dir(name, files)?;
    let (code, out) = meshctl(&["analyze", "-f", dir.to_str().unwrap_or_default()])?;
    Ok((code, out.lines().map(str::to_owned).collect()))
}

fn meshctl(args: &[&str]) -> Result<(i32, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout)?,
    ))
}

const BAD_VS: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews}, weight: 50}
    - {destination: {host: reviews}, weight: 40}
"#;

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec: {ports: [{port: 9080}]}\n";

#[test]
fn errors_print_sorted_and_exit_1() -> Result<()> {
    let (code, lines) = analyze_dir("errors", &[("vs.yaml", BAD_VS), ("svc.yaml", SERVICE)])?;
    assert_eq!(code, 1, "{lines:#?}");
    assert_eq!(
        lines,
        vec![
            "error: VirtualService shop/reviews: http[0].route: route weights sum to 90; with several destinations they must sum to 100",
            "1 error(s), 0 warning(s)",
        ]
    );
    Ok(())
}

#[test]
fn warnings_alone_exit_0_and_json_is_machine_readable() -> Result<()> {
    // Valid, with one warning: a delegate, which the waypoint does not implement.
    let good = BAD_VS.replace("weight: 40", "weight: 50")
        + "  - delegate: {name: reviews-v1, namespace: shop}\n";
    let dir = write_dir("json", &[("vs.yaml", &good), ("svc.yaml", SERVICE)])?;
    let file = dir.join("vs.yaml");
    let (code, out) = meshctl(&[
        "analyze",
        "-f",
        file.to_str().unwrap_or_default(),
        "-f",
        dir.join("svc.yaml").to_str().unwrap_or_default(),
        "-o",
        "json",
    ])?;
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out)?;
    let diagnostics = report["diagnostics"].as_array().expect("diagnostics array");
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0]["severity"], "warning");
    assert_eq!(diagnostics[0]["kind"], "VirtualService");
    assert_eq!(diagnostics[0]["namespace"], "shop");
    assert_eq!(diagnostics[0]["name"], "reviews");
    // The waypoint's own words (its route compiler's), with the field's index.
    assert_eq!(
        diagnostics[0]["message"],
        "http[1].delegate: delegation to another VirtualService is not implemented; this rule is left out, so requests fall through to the next rule (inline the delegate's routes instead)"
    );
    Ok(())
}

/// Value by value, what the waypoint would report when it loads the VirtualService: a retry
/// condition it does not know, a VirtualService only an ingress gateway would serve.
#[test]
fn the_waypoint_s_findings_are_reported() -> Result<()> {
    let vs = BAD_VS.replace("weight: 40", "weight: 50")
        + "    retries: {attempts: 2, retryOn: \"5xx,bogus\"}\n"
        + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        + "metadata: {name: ingress, namespace: shop}\n"
        + "spec: {hosts: [shop.example.com], gateways: [shop-gateway], http: [{route: [{destination: {host: reviews}}]}]}\n";
    let (code, lines) = analyze_dir("waypoint", &[("vs.yaml", &vs), ("svc.yaml", SERVICE)])?;
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(
        lines,
        vec![
            "warning: VirtualService shop/ingress: gateways: bound only to gateways [\"shop-gateway\"]; the waypoint serves mesh traffic, so it skips this VirtualService (add \"mesh\" to gateways to apply it here)",
            "warning: VirtualService shop/reviews: http[0].retries.retryOn: \"bogus\" is not a retry condition the waypoint implements (5xx, gateway-error, reset, reset-before-request, connect-failure, refused-stream, retriable-4xx, retriable-status-codes, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable, or an HTTP status code); it is ignored",
            "0 error(s), 2 warning(s)",
        ]
    );
    Ok(())
}

/// A DestinationRule as the waypoint resolves it, for every subset and port: what it ignores
/// and why, wherever the setting stands.
#[test]
fn the_waypoint_s_destination_rule_findings_are_reported() -> Result<()> {
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
        metadata: {name: reviews, namespace: shop}\n\
        spec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: SIMPLE}\n\
        \x20   portLevelSettings:\n    - port: {number: 9080}\n\
        \x20     loadBalancer: {consistentHash: {minimumRingSize: 16}}\n\
        \x20 subsets:\n  - name: v1\n    labels: {version: v1}\n";
    let (code, lines) = analyze_dir(
        "destination-rule",
        &[("dr.yaml", rule), ("svc.yaml", SERVICE)],
    )?;
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(
        lines,
        vec![
            "warning: DestinationRule shop/reviews: trafficPolicy.portLevelSettings[0].loadBalancer.consistentHash: names no hash key (httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName); requests are spread at random",
            "warning: DestinationRule shop/reviews: trafficPolicy.tls: is not implemented by the waypoint (upstream connections always use HBONE with mesh mTLS); ignored",
            "0 error(s), 2 warning(s)",
        ]
    );
    Ok(())
}

#[test]
fn the_waypoint_s_request_authentication_findings_are_reported() -> Result<()> {
    let policy = r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  jwtRules:
  - issuer: https://issuer.example
    jwks: '{"keys": [{"kty": "EC", "crv": "P-256", "x": "bad", "y": "bad", "kid": "k1"}]}'
    outputClaimToHeaders: [{header: "x user", claim: sub}]
  - issuer: https://other.example
    jwksUri: https://other.example/.well-known/jwks.json
"#;
    let (code, lines) = analyze_dir("request-authentication", &[("ra.yaml", policy)])?;
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(
        lines.len(),
        4,
        "the bad key, no usable key, the header name: {lines:#?}"
    );
    assert!(
        lines[0].starts_with(
            "warning: RequestAuthentication shop/jwt: jwtRules[0].jwks: keys[0] is not usable ("
        ),
        "{lines:#?}"
    );
    assert_eq!(
        lines[1..],
        [
            "warning: RequestAuthentication shop/jwt: jwtRules[0].jwks: no usable key; the rule's tokens are refused",
            "warning: RequestAuthentication shop/jwt: jwtRules[0].outputClaimToHeaders[0].header: \"x user\" is not a header name; ignored",
            "0 error(s), 3 warning(s)",
        ]
    );
    Ok(())
}

#[test]
fn recursive_reads_subfolders() -> Result<()> {
    let dir = write_dir("recursive", &[("svc.yaml", SERVICE)])?;
    std::fs::create_dir_all(dir.join("routing"))?;
    std::fs::write(dir.join("routing/vs.yaml"), BAD_VS)?;
    let path = dir.to_str().unwrap_or_default();
    let (code, out) = meshctl(&["analyze", "-f", path])?;
    assert_eq!((code, out.as_str()), (0, "no problems found\n"));
    let (code, out) = meshctl(&["analyze", "-R", "-f", path])?;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("VirtualService shop/reviews: http[0].route: route weights sum to 90"),
        "{out}"
    );
    Ok(())
}

/// What the waypoint refuses is an error (exit 1); after one, the support table's warnings
/// for the object stay, as the waypoint may not have looked further.
#[test]
fn what_the_waypoint_refuses_is_an_error() -> Result<()> {
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
        metadata: {name: reviews, namespace: shop}\n\
        spec:\n  host: reviews\n  workloadSelector: {matchLabels: {app: x}}\n\
        \x20 trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: \"bad header\"}}\n";
    let vs = BAD_VS.replace("weight: 40", "weight: 50")
        + "    fault: {abort: {grpcStatus: NOPE, percentage: {value: 10}}}\n";
    let (code, lines) = analyze_dir(
        "refused",
        &[("dr.yaml", rule), ("vs.yaml", &vs), ("svc.yaml", SERVICE)],
    )?;
    assert_eq!(code, 1, "{lines:#?}");
    assert_eq!(
        lines,
        vec![
            "error: DestinationRule shop/reviews: trafficPolicy.loadBalancer.consistentHash.httpHeaderName: \"bad header\" is not a valid HTTP header name",
            "warning: DestinationRule shop/reviews: workloadSelector is not supported yet by the data plane; it is stored and will be ignored",
            "error: VirtualService shop/reviews: http[0].fault.abort.grpcStatus: \"NOPE\" is not a gRPC status; use a name like \"UNAVAILABLE\"; rule http[0] is left out until this is fixed, so requests fall through to the next rule",
            "2 error(s), 1 warning(s)",
        ]
    );
    Ok(())
}

#[test]
fn unreadable_paths_are_errors() -> Result<()> {
    let (code, out) = meshctl(&["analyze", "-f", "/nonexistent/meshctl.yaml"])?;
    assert_eq!(code, 1);
    assert!(
        out.starts_with("error: /nonexistent/meshctl.yaml: cannot read"),
        "{out}"
    );
    Ok(())
}
