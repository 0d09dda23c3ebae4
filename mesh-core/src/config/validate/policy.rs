//! Validation of DestinationRule (traffic policies), Gateway, ServiceEntry, Sidecar and the
//! security kinds (PeerAuthentication, AuthorizationPolicy, RequestAuthentication).

use std::collections::BTreeSet;

use super::Check;
use crate::config::istio::{
    AuthorizationAction, AuthorizationPolicySpec, ClientTlsMode, ClientTlsSettings,
    ConnectionPoolSettings, DestinationRuleSpec, GatewaySpec, LoadBalancerSettings,
    OutlierDetection, PeerAuthenticationSpec, PolicyTargetReference, RequestAuthenticationSpec,
    ServiceEntrySpec, SidecarSpec, TrafficPolicy, WorkloadSelector,
};

pub(super) fn destination_rule(check: &mut Check, spec: &DestinationRuleSpec) {
    if spec.host.is_empty() {
        check.error("host", "host is empty; name the service the rule is for");
    } else {
        check.host("host", &spec.host);
    }
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy(check, "trafficPolicy", policy);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = format!("subsets[{i}]");
        if crate::manifest::check_dns_label(&subset.name).is_err() {
            check.error(
                format!("{path}.name"),
                format!(
                    "{:?} is not a valid subset name (a DNS-1123 label)",
                    subset.name
                ),
            );
        }
        if !names.insert(&subset.name) {
            check.error(
                format!("{path}.name"),
                format!("subset {:?} is defined twice", subset.name),
            );
        }
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(check, &format!("{path}.trafficPolicy"), policy);
        }
    }
    selector(check, spec.workload_selector.as_ref(), "workloadSelector");
    check.export_to(&spec.export_to);
}

/// The settings a traffic policy and each of its port-level policies share.
fn policy_settings(
    check: &mut Check,
    path: &str,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    od: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        load_balancer(check, &format!("{path}.loadBalancer"), lb);
    }
    if let Some(pool) = pool {
        connection_pool(check, &format!("{path}.connectionPool"), pool);
    }
    if let Some(od) = od {
        outlier_detection(check, &format!("{path}.outlierDetection"), od);
    }
    if let Some(tls) = tls {
        client_tls(check, &format!("{path}.tls"), tls);
    }
}

fn traffic_policy(check: &mut Check, path: &str, policy: &TrafficPolicy) {
    policy_settings(
        check,
        path,
        policy.load_balancer.as_ref(),
        policy.connection_pool.as_ref(),
        policy.outlier_detection.as_ref(),
        policy.tls.as_ref(),
    );
    let mut ports = BTreeSet::new();
    for (i, port_policy) in policy.port_level_settings.iter().enumerate() {
        let ppath = format!("{path}.portLevelSettings[{i}]");
        match port_policy.port.as_ref().and_then(|p| p.number) {
            None => check.error(format!("{ppath}.port"), "port.number is required"),
            Some(n) => {
                check.port(format!("{ppath}.port.number"), Some(i64::from(n)));
                if !ports.insert(n) {
                    check.error(
                        format!("{ppath}.port"),
                        format!("port {n} has two policies"),
                    );
                }
            }
        }
        policy_settings(
            check,
            &ppath,
            port_policy.load_balancer.as_ref(),
            port_policy.connection_pool.as_ref(),
            port_policy.outlier_detection.as_ref(),
            port_policy.tls.as_ref(),
        );
    }
    if let Some(tunnel) = &policy.tunnel {
        check.port(
            format!("{path}.tunnel.targetPort"),
            Some(i64::from(tunnel.target_port)),
        );
        if let Some(protocol) = &tunnel.protocol
            && !matches!(protocol.as_str(), "CONNECT" | "POST")
        {
            check.error(
                format!("{path}.tunnel.protocol"),
                format!("{protocol:?} is not CONNECT or POST"),
            );
        }
    }
    if let Some(budget) = &policy.retry_budget {
        check.percent(format!("{path}.retryBudget.percent"), budget.percent);
        check.duration(
            format!("{path}.retryBudget.budgetInterval"),
            budget.budget_interval.as_ref(),
        );
    }
}

fn load_balancer(check: &mut Check, path: &str, lb: &LoadBalancerSettings) {
    check.one_of(
        path,
        &["simple", "consistentHash", "backendUtilization"],
        &[
            lb.simple.is_some(),
            lb.consistent_hash.is_some(),
            lb.backend_utilization.is_some(),
        ],
    );
    if let Some(hash) = &lb.consistent_hash {
        check.one_of(
            format!("{path}.consistentHash"),
            &[
                "httpHeaderName",
                "httpCookie",
                "useSourceIp",
                "httpQueryParameterName",
            ],
            &[
                hash.http_header_name.is_some(),
                hash.http_cookie.is_some(),
                hash.use_source_ip.is_some(),
                hash.http_query_parameter_name.is_some(),
            ],
        );
        check.one_of(
            format!("{path}.consistentHash"),
            &["ringHash", "maglev"],
            &[hash.ring_hash.is_some(), hash.maglev.is_some()],
        );
        if let Some(cookie) = &hash.http_cookie {
            check.duration(
                format!("{path}.consistentHash.httpCookie.ttl"),
                cookie.ttl.as_ref(),
            );
        }
    }
    if let Some(bu) = &lb.backend_utilization {
        let bpath = format!("{path}.backendUtilization");
        check.duration(
            format!("{bpath}.weightExpirationPeriod"),
            bu.weight_expiration_period.as_ref(),
        );
        check.duration(
            format!("{bpath}.weightUpdatePeriod"),
            bu.weight_update_period.as_ref(),
        );
        check.duration(
            format!("{bpath}.weightStabilizationPeriod"),
            bu.weight_stabilization_period.as_ref(),
        );
    }
    if let Some(locality) = &lb.locality_lb_setting {
        let lpath = format!("{path}.localityLbSetting");
        if !locality.distribute.is_empty() && !locality.failover.is_empty() {
            check.error(&lpath, "distribute and failover are both set; use one");
        }
        for (i, d) in locality.distribute.iter().enumerate() {
            let sum: u64 = d.to.values().map(|v| u64::from(*v)).sum();
            if sum != 100 {
                check.error(
                    format!("{lpath}.distribute[{i}].to"),
                    format!("weights sum to {sum}; they must sum to 100"),
                );
            }
        }
    }
    check.duration(
        format!("{path}.warmupDurationSecs"),
        lb.warmup_duration_secs.as_ref(),
    );
    if let Some(warmup) = &lb.warmup {
        check.duration(format!("{path}.warmup.duration"), Some(&warmup.duration));
        check.percent(
            format!("{path}.warmup.minimumPercent"),
            warmup.minimum_percent,
        );
        if let Some(a) = warmup.aggression
            && a < 1.0
        {
            check.error(
                format!("{path}.warmup.aggression"),
                format!("{a} is below 1.0"),
            );
        }
    }
}

fn connection_pool(check: &mut Check, path: &str, pool: &ConnectionPoolSettings) {
    if let Some(tcp) = &pool.tcp {
        non_negative(
            check,
            &format!("{path}.tcp.maxConnections"),
            tcp.max_connections,
        );
        check.duration(
            format!("{path}.tcp.connectTimeout"),
            tcp.connect_timeout.as_ref(),
        );
        check.duration(format!("{path}.tcp.idleTimeout"), tcp.idle_timeout.as_ref());
        check.duration(
            format!("{path}.tcp.maxConnectionDuration"),
            tcp.max_connection_duration.as_ref(),
        );
        if let Some(ka) = &tcp.tcp_keepalive {
            check.duration(format!("{path}.tcp.tcpKeepalive.time"), ka.time.as_ref());
            check.duration(
                format!("{path}.tcp.tcpKeepalive.interval"),
                ka.interval.as_ref(),
            );
        }
    }
    if let Some(http) = &pool.http {
        let h = format!("{path}.http");
        non_negative(
            check,
            &format!("{h}.http1MaxPendingRequests"),
            http.http1_max_pending_requests,
        );
        non_negative(
            check,
            &format!("{h}.http2MaxRequests"),
            http.http2_max_requests,
        );
        non_negative(
            check,
            &format!("{h}.maxRequestsPerConnection"),
            http.max_requests_per_connection,
        );
        non_negative(check, &format!("{h}.maxRetries"), http.max_retries);
        non_negative(
            check,
            &format!("{h}.maxConcurrentStreams"),
            http.max_concurrent_streams,
        );
        check.duration(format!("{h}.idleTimeout"), http.idle_timeout.as_ref());
        if let Some(ka) = &http.http2_keep_alive {
            check.duration(format!("{h}.http2KeepAlive.interval"), ka.interval.as_ref());
            check.duration(format!("{h}.http2KeepAlive.timeout"), ka.timeout.as_ref());
        }
    }
}

fn non_negative(check: &mut Check, path: &str, value: Option<i32>) {
    if let Some(v) = value
        && v < 0
    {
        check.error(path, format!("{v} is negative"));
    }
}

fn outlier_detection(check: &mut Check, path: &str, od: &OutlierDetection) {
    check.duration(format!("{path}.interval"), od.interval.as_ref());
    check.duration(
        format!("{path}.baseEjectionTime"),
        od.base_ejection_time.as_ref(),
    );
    check.int_percent(
        format!("{path}.maxEjectionPercent"),
        od.max_ejection_percent.map(i64::from),
    );
    check.int_percent(
        format!("{path}.minHealthPercent"),
        od.min_health_percent.map(i64::from),
    );
    non_negative(
        check,
        &format!("{path}.consecutiveErrors"),
        od.consecutive_errors,
    );
    for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            check.error(
                format!("{path}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("{code} is not an HTTP status from 100 to 599"),
            );
        }
    }
}

fn client_tls(check: &mut Check, path: &str, tls: &ClientTlsSettings) {
    if tls.mode == Some(ClientTlsMode::Mutual)
        && tls.credential_name.is_none()
        && (tls.client_certificate.is_none() || tls.private_key.is_none())
    {
        check.error(
            path,
            "mode MUTUAL needs credentialName, or clientCertificate and privateKey",
        );
    }
}

fn selector(check: &mut Check, selector: Option<&WorkloadSelector>, path: &str) {
    for (key, value) in selector.iter().flat_map(|s| &s.match_labels) {
        if key.is_empty() || key.contains('*') || value.contains('*') {
            check.error(
                format!("{path}.matchLabels"),
                format!("{key:?}: {value:?}: labels may not be empty or use wildcards"),
            );
        }
    }
}

pub(super) fn gateway(check: &mut Check, spec: &GatewaySpec) {
    for (i, server) in spec.servers.iter().enumerate() {
        let path = format!("servers[{i}]");
        if server.hosts.is_empty() {
            check.error(
                format!("{path}.hosts"),
                "hosts is empty; name at least one host",
            );
        }
        for (h, host) in server.hosts.iter().enumerate() {
            let name = host.split_once('/').map_or(host.as_str(), |(_, h)| h);
            check.host(format!("{path}.hosts[{h}]"), name);
        }
        check.port(
            format!("{path}.port.number"),
            Some(i64::from(server.port.number)),
        );
        check.port(
            format!("{path}.port.targetPort"),
            server.port.target_port.map(i64::from),
        );
    }
}

pub(super) fn service_entry(check: &mut Check, spec: &ServiceEntrySpec) {
    if spec.hosts.is_empty() {
        check.error("hosts", "hosts is empty; name at least one host");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        if host == "*" {
            check.error(
                format!("hosts[{i}]"),
                "\"*\" is not allowed in a ServiceEntry",
            );
        } else {
            check.host(format!("hosts[{i}]"), host);
        }
    }
    let mut numbers = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        check.port(format!("ports[{i}].number"), Some(i64::from(port.number)));
        check.port(
            format!("ports[{i}].targetPort"),
            port.target_port.map(i64::from),
        );
        if !numbers.insert(port.number) {
            check.error(
                format!("ports[{i}].number"),
                format!("port {} is listed twice", port.number),
            );
        }
    }
    for (i, address) in spec.addresses.iter().enumerate() {
        let ip = address
            .split_once('/')
            .map_or(address.as_str(), |(ip, _)| ip);
        if ip.parse::<std::net::IpAddr>().is_err() {
            check.error(
                format!("addresses[{i}]"),
                format!("{address:?} is not an IP or CIDR"),
            );
        }
    }
    if spec.workload_selector.is_some() && !spec.endpoints.is_empty() {
        check.error(
            "spec",
            "workloadSelector and endpoints are both set; use one",
        );
    }
    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        for (name, port) in &endpoint.ports {
            check.port(
                format!("endpoints[{i}].ports[{name}]"),
                Some(i64::from(*port)),
            );
        }
    }
    check.export_to(&spec.export_to);
}

pub(super) fn sidecar(check: &mut Check, spec: &SidecarSpec) {
    for (i, egress) in spec.egress.iter().enumerate() {
        if egress.hosts.is_empty() {
            check.error(
                format!("egress[{i}].hosts"),
                "hosts is empty; use \"namespace/host\" entries such as \"./*\"",
            );
        }
        for (h, host) in egress.hosts.iter().enumerate() {
            if !host.contains('/') {
                check.error(
                    format!("egress[{i}].hosts[{h}]"),
                    format!("{host:?} must be written \"namespace/host\", e.g. \"./*\" or \"istio-system/*\""),
                );
            }
        }
        if let Some(port) = &egress.port {
            check.port(
                format!("egress[{i}].port.number"),
                port.number.map(i64::from),
            );
        }
    }
    for (i, ingress) in spec.ingress.iter().enumerate() {
        check.port(
            format!("ingress[{i}].port.number"),
            ingress.port.number.map(i64::from),
        );
    }
}

pub(super) fn peer_authentication(check: &mut Check, spec: &PeerAuthenticationSpec) {
    selector(check, spec.selector.as_ref(), "selector");
    let has_selector = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !spec.port_level_mtls.is_empty() && !has_selector {
        check.error(
            "portLevelMtls",
            "port-level mTLS needs a workload selector (selector.matchLabels)",
        );
    }
    for port in spec.port_level_mtls.keys() {
        match port.parse::<i64>() {
            Ok(n) => check.port(format!("portLevelMtls[{port}]"), Some(n)),
            Err(_) => check.error(
                format!("portLevelMtls[{port}]"),
                "keys must be port numbers",
            ),
        }
    }
}

fn targets(
    check: &mut Check,
    selector_set: bool,
    one: Option<&PolicyTargetReference>,
    many: &[PolicyTargetReference],
) {
    check.one_of(
        "spec",
        &["selector", "targetRef", "targetRefs"],
        &[selector_set, one.is_some(), !many.is_empty()],
    );
    for (i, target) in one.into_iter().chain(many).enumerate() {
        if target.namespace.as_ref().is_some_and(|ns| !ns.is_empty()) {
            check.error(
                format!("targetRefs[{i}].namespace"),
                "cross-namespace targets are not allowed; leave namespace empty",
            );
        }
    }
}

pub(super) fn authorization_policy(check: &mut Check, spec: &AuthorizationPolicySpec) {
    selector(check, spec.selector.as_ref(), "selector");
    targets(
        check,
        spec.selector.is_some(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    let custom = spec.action == Some(AuthorizationAction::Custom);
    if custom
        && spec
            .provider
            .as_ref()
            .and_then(|p| p.name.as_ref())
            .is_none()
    {
        check.error("provider", "action CUSTOM needs provider.name");
    }
    if !custom && spec.provider.is_some() {
        check.error("provider", "provider is only allowed with action CUSTOM");
    }
    for (r, rule) in spec.rules.iter().enumerate() {
        for (f, from) in rule.from.iter().enumerate() {
            let path = format!("rules[{r}].from[{f}].source");
            let Some(source) = &from.source else {
                check.error(&path, "source is required");
                continue;
            };
            let accounts =
                !source.service_accounts.is_empty() || !source.not_service_accounts.is_empty();
            let others = !source.principals.is_empty()
                || !source.not_principals.is_empty()
                || !source.namespaces.is_empty()
                || !source.not_namespaces.is_empty();
            if accounts && others {
                check.error(
                    &path,
                    "serviceAccounts cannot be combined with principals or namespaces",
                );
            }
        }
        for (t, to) in rule.to.iter().enumerate() {
            let path = format!("rules[{r}].to[{t}].operation");
            let Some(operation) = &to.operation else {
                check.error(&path, "operation is required");
                continue;
            };
            for (p, port) in operation
                .ports
                .iter()
                .chain(&operation.not_ports)
                .enumerate()
            {
                match port.parse::<i64>() {
                    Ok(n) => check.port(format!("{path}.ports[{p}]"), Some(n)),
                    Err(_) => check.error(
                        format!("{path}.ports[{p}]"),
                        format!("{port:?} is not a port number"),
                    ),
                }
            }
        }
        for (w, when) in rule.when.iter().enumerate() {
            if when.values.is_empty() && when.not_values.is_empty() {
                check.error(format!("rules[{r}].when[{w}]"), "set values or notValues");
            }
        }
    }
}

pub(super) fn request_authentication(check: &mut Check, spec: &RequestAuthenticationSpec) {
    selector(check, spec.selector.as_ref(), "selector");
    targets(
        check,
        spec.selector.is_some(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let path = format!("jwtRules[{i}]");
        if rule.issuer.as_deref().unwrap_or_default().is_empty() {
            check.error(format!("{path}.issuer"), "issuer is required");
        }
        check.one_of(
            &path,
            &["jwksUri", "jwks_uri", "jwks"],
            &[
                rule.jwks_uri.is_some(),
                rule.jwks_uri_legacy.is_some(),
                rule.jwks.is_some(),
            ],
        );
        for uri in rule.jwks_uri.iter().chain(&rule.jwks_uri_legacy) {
            if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                check.error(
                    format!("{path}.jwksUri"),
                    format!("{uri:?} must be an http or https URL"),
                );
            }
        }
        check.duration(format!("{path}.timeout"), rule.timeout.as_ref());
    }
}
