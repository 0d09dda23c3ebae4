//! Per-object validation with Istio's rules where they exist: route weights, RE2 regex
//! syntax, durations, percentages 0–100, ports, one-of groups, hosts and `exportTo`.
//! Findings name the field path (without `spec.`) and say what to do; errors keep the
//! object out of the model, warnings do not. Checks across objects live in
//! [`mod@super::analyze`]; "not supported yet" warnings in [`super::support`].

mod networking;
mod policy;

use std::fmt::Display;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use serde::Serialize;

use super::istio::{Destination, Headers, Percent, StringMatch};
use super::model::USE_WAYPOINT;
use super::resource::Resource;
use super::{duration, host};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in one object, without the object's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

/// Everything wrong with one object on its own.
pub fn object(resource: &Resource) -> Vec<Finding> {
    let mut check = Check::default();
    match resource {
        Resource::VirtualService(vs) => networking::virtual_service(&mut check, &vs.spec),
        Resource::DestinationRule(dr) => policy::destination_rule(&mut check, &dr.spec),
        Resource::Gateway(gw) => policy::gateway(&mut check, &gw.spec),
        Resource::ServiceEntry(se) => policy::service_entry(&mut check, &se.spec),
        Resource::Sidecar(sc) => policy::sidecar(&mut check, &sc.spec),
        Resource::PeerAuthentication(pa) => policy::peer_authentication(&mut check, &pa.spec),
        Resource::AuthorizationPolicy(ap) => policy::authorization_policy(&mut check, &ap.spec),
        Resource::RequestAuthentication(ra) => policy::request_authentication(&mut check, &ra.spec),
        Resource::Service(svc) => service(&mut check, svc),
        Resource::Pod(pod) => pod_ports(&mut check, pod),
        Resource::Namespace(ns) => waypoint_label(&mut check, ns.metadata.labels.as_ref()),
        Resource::ServiceAccount(sa) => waypoint_label(&mut check, sa.metadata.labels.as_ref()),
        Resource::EndpointSlice(_) => {}
    }
    check.findings
}

/// Collects findings; helpers for the checks every kind shares.
#[derive(Default)]
pub(crate) struct Check {
    pub(crate) findings: Vec<Finding>,
}

impl Check {
    pub(crate) fn error(&mut self, path: impl Display, message: impl Display) {
        self.findings.push(Finding {
            severity: Severity::Error,
            message: format!("{path}: {message}"),
        });
    }

    pub(crate) fn warn(&mut self, path: impl Display, message: impl Display) {
        self.findings.push(Finding {
            severity: Severity::Warning,
            message: format!("{path}: {message}"),
        });
    }

    /// A duration field: Go/Istio syntax, at least 1ms.
    pub(crate) fn duration(&mut self, path: impl Display, value: Option<&String>) {
        let Some(text) = value else { return };
        match duration::parse(text) {
            Ok(d) if d < Duration::from_millis(1) => self.error(
                path,
                format!("{text:?} is shorter than 1ms, the least Istio accepts"),
            ),
            Ok(_) => {}
            Err(error) => self.error(path, error),
        }
    }

    /// A percentage: 0 to 100.
    pub(crate) fn percent(&mut self, path: impl Display, value: Option<f64>) {
        if let Some(v) = value
            && !(0.0..=100.0).contains(&v)
        {
            self.error(
                path,
                format!("{v} is not a percentage; use a value from 0 to 100"),
            );
        }
    }

    pub(crate) fn percentage(&mut self, path: impl Display, value: Option<&Percent>) {
        if let Some(p) = value {
            self.percent(format!("{path}.value"), p.value);
        }
    }

    /// An integer percentage: 0 to 100.
    pub(crate) fn int_percent(&mut self, path: impl Display, value: Option<i64>) {
        if let Some(v) = value
            && !(0..=100).contains(&v)
        {
            self.error(
                path,
                format!("{v} is not a percentage; use a value from 0 to 100"),
            );
        }
    }

    /// A port number: 1 to 65535.
    pub(crate) fn port(&mut self, path: impl Display, value: Option<i64>) {
        if let Some(v) = value
            && !(1..=65535).contains(&v)
        {
            self.error(path, format!("port {v} is out of range; use 1 to 65535"));
        }
    }

    /// A regular expression in RE2 syntax (Envoy's dialect).
    pub(crate) fn regex(&mut self, path: impl Display, pattern: &str) {
        if pattern.is_empty() {
            return self.error(path, "regex is empty");
        }
        if let Err(error) = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
        {
            let reason = error.to_string().replace('\n', " ");
            self.error(
                path,
                format!("{pattern:?} is not a valid RE2 regex: {reason}"),
            );
        }
    }

    /// A StringMatch: exactly one of exact, prefix, regex.
    pub(crate) fn string_match(&mut self, path: impl Display, m: &StringMatch) {
        let set = [&m.exact, &m.prefix, &m.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set > 1 {
            self.error(&path, "set only one of exact, prefix or regex");
        }
        if let Some(re) = &m.regex {
            self.regex(format!("{path}.regex"), re);
        }
    }

    /// At most one of a schema `oneOf` group may be set.
    pub(crate) fn one_of(&mut self, path: impl Display, names: &[&str], set: &[bool]) {
        let chosen: Vec<&str> = names
            .iter()
            .zip(set)
            .filter(|(_, s)| **s)
            .map(|(n, _)| *n)
            .collect();
        if chosen.len() > 1 {
            self.error(
                path,
                format!(
                    "{} are set; set only one of {}",
                    chosen.join(" and "),
                    names.join(", ")
                ),
            );
        }
    }

    pub(crate) fn host(&mut self, path: impl Display, value: &str) {
        if let Err(why) = host::check(value) {
            self.error(path, why);
        }
    }

    pub(crate) fn export_to(&mut self, export_to: &[String]) {
        for problem in host::check_export_to(export_to) {
            self.error("exportTo", problem);
        }
    }

    pub(crate) fn destination(&mut self, path: impl Display, d: &Destination) {
        if d.host.is_empty() {
            self.error(
                format!("{path}.host"),
                "host is empty; name the destination service",
            );
        } else {
            self.host(format!("{path}.host"), &d.host);
        }
        if let Some(subset) = &d.subset
            && crate::manifest::check_dns_label(subset).is_err()
        {
            self.error(
                format!("{path}.subset"),
                format!("{subset:?} is not a valid subset name (a DNS-1123 label)"),
            );
        }
        if let Some(port) = &d.port {
            self.port(format!("{path}.port.number"), port.number.map(i64::from));
        }
    }

    pub(crate) fn headers(&mut self, path: impl Display, headers: Option<&Headers>) {
        let Some(headers) = headers else { return };
        for (side, ops) in [
            ("request", &headers.request),
            ("response", &headers.response),
        ] {
            let Some(ops) = ops else { continue };
            let names = ops.set.keys().chain(ops.add.keys()).chain(&ops.remove);
            for name in names {
                if name.is_empty()
                    || name.bytes().any(|b| b.is_ascii_whitespace() || b == b':')
                        && !name.starts_with(':')
                {
                    self.error(
                        format!("{path}.{side}"),
                        format!("{name:?} is not a valid header name"),
                    );
                }
            }
        }
    }
}

fn waypoint_label(check: &mut Check, labels: Option<&std::collections::BTreeMap<String, String>>) {
    if let Some(name) = labels.and_then(|l| l.get(USE_WAYPOINT))
        && crate::manifest::check_dns_label(name).is_err()
    {
        check.error(
            format!("metadata.labels[{USE_WAYPOINT}]"),
            format!("{name:?} is not a waypoint name (a Gateway name) or \"none\""),
        );
    }
}

fn service(check: &mut Check, service: &Service) {
    waypoint_label(check, service.metadata.labels.as_ref());
    let ports = service.spec.iter().flat_map(|s| s.ports.iter().flatten());
    for (i, port) in ports.enumerate() {
        check.port(format!("spec.ports[{i}].port"), Some(i64::from(port.port)));
        if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) =
            port.target_port
        {
            check.port(format!("spec.ports[{i}].targetPort"), Some(i64::from(n)));
        }
    }
}

fn pod_ports(check: &mut Check, pod: &Pod) {
    waypoint_label(check, pod.metadata.labels.as_ref());
    let containers = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().enumerate());
    for (c, container) in containers {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            check.port(
                format!("spec.containers[{c}].ports[{p}].containerPort"),
                Some(i64::from(port.container_port)),
            );
        }
    }
}

/// Route weights: none negative; with several destinations they must sum to 100.
pub(crate) fn weights(check: &mut Check, path: impl Display, weights: &[Option<i32>]) {
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = w
            && *w < 0
        {
            check.error(
                format!("{path}[{i}].weight"),
                format!("weight {w} is negative"),
            );
        }
    }
    if weights.len() > 1 {
        let sum: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
        if sum != 100 {
            check.error(
                path,
                format!(
                    "route weights sum to {sum}; with several destinations they must sum to 100"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests;
