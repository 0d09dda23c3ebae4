//! The DestinationRule policy of one upstream (host, subset, port), merged the way Istio
//! merges it (pilot's `MergeSubsetTrafficPolicy`), defaults filled in:
//!
//! 1. The host-level `trafficPolicy`; if its `portLevelSettings` has an entry for the port,
//!    that entry replaces `loadBalancer`, `connectionPool`, `outlierDetection` and `tls` as a
//!    whole, including the ones it leaves unset (they fall back to defaults: "settings
//!    specified at the destination-level will not be inherited when overridden by port-level
//!    settings").
//! 2. The subset's `trafficPolicy`: each of those four groups it sets replaces the merged
//!    group as a whole (a subset `connectionPool` with only `http` loses the host's `tcp`).
//!    If the subset's own `portLevelSettings` has an entry for the port, that entry alone
//!    stands for the subset and again replaces all four groups, set or not.
//!
//! Fields the waypoint does not implement come back as [`Warning`]s naming the rule and the
//! field path (as `meshctl analyze` names them); only the fields of the groups that take
//! effect are reported.

mod convert;

use std::collections::BTreeMap;
use std::fmt;

use mesh_core::config::Endpoint;
use mesh_core::config::istio::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule,
    LoadBalancerSettings, OutlierDetection, ProxyProtocol, RetryBudget, TrafficPolicy,
    TunnelSettings,
};
use mesh_core::config::model::selects;

use super::balance::LoadBalancer;
use super::outlier::OutlierConfig;
use super::pool::PoolLimits;
use super::{Error, Result};

/// A DestinationRule field that changes nothing in the waypoint: not implemented, deprecated,
/// or without effect in its combination. Serve them on the admin page and log them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// `DestinationRule namespace/name`.
    pub object: String,
    /// The field path under `spec`, e.g. `subsets[1].trafficPolicy.tls`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// Everything the waypoint applies to traffic for one upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EffectivePolicy {
    /// `DestinationRule namespace/name`, when one applies.
    pub rule: Option<String>,
    pub subset: Option<String>,
    /// The subset's labels: the endpoints it selects (empty: all of them).
    pub subset_labels: BTreeMap<String, String>,
    pub load_balancer: LoadBalancer,
    pub connection_pool: PoolLimits,
    /// `None`: no `outlierDetection` applies, nothing is ever ejected.
    pub outlier_detection: Option<OutlierConfig>,
    pub warnings: Vec<Warning>,
}

/// A policy group and the field path it came from.
#[derive(Debug)]
struct Sourced<'a, T> {
    value: &'a T,
    path: String,
}

fn sourced<'a, T>(value: Option<&'a T>, path: &str, field: &str) -> Option<Sourced<'a, T>> {
    value.map(|value| Sourced {
        value,
        path: format!("{path}.{field}"),
    })
}

/// The groups of a traffic policy as they stand after merging.
#[derive(Debug, Default)]
struct Merged<'a> {
    load_balancer: Option<Sourced<'a, LoadBalancerSettings>>,
    connection_pool: Option<Sourced<'a, ConnectionPoolSettings>>,
    outlier_detection: Option<Sourced<'a, OutlierDetection>>,
    tls: Option<Sourced<'a, ClientTlsSettings>>,
    tunnel: Option<Sourced<'a, TunnelSettings>>,
    proxy_protocol: Option<Sourced<'a, ProxyProtocol>>,
    retry_budget: Option<Sourced<'a, RetryBudget>>,
}

impl<'a> Merged<'a> {
    /// One level's policy for `port` (Istio's `GetPortLevelTrafficPolicy`): its matching
    /// port-level entry if it has one (then only the four port-level groups, and `true`),
    /// else its own groups.
    fn level(policy: &'a TrafficPolicy, path: &str, port: u16) -> (Merged<'a>, bool) {
        let entry = policy
            .port_level_settings
            .iter()
            .enumerate()
            .find(|(_, p)| p.port.as_ref().and_then(|s| s.number) == Some(u32::from(port)));
        match entry {
            Some((i, entry)) => {
                let path = format!("{path}.portLevelSettings[{i}]");
                let merged = Merged {
                    load_balancer: sourced(entry.load_balancer.as_ref(), &path, "loadBalancer"),
                    connection_pool: sourced(
                        entry.connection_pool.as_ref(),
                        &path,
                        "connectionPool",
                    ),
                    outlier_detection: sourced(
                        entry.outlier_detection.as_ref(),
                        &path,
                        "outlierDetection",
                    ),
                    tls: sourced(entry.tls.as_ref(), &path, "tls"),
                    ..Merged::default()
                };
                (merged, true)
            }
            None => {
                let merged = Merged {
                    load_balancer: sourced(policy.load_balancer.as_ref(), path, "loadBalancer"),
                    connection_pool: sourced(
                        policy.connection_pool.as_ref(),
                        path,
                        "connectionPool",
                    ),
                    outlier_detection: sourced(
                        policy.outlier_detection.as_ref(),
                        path,
                        "outlierDetection",
                    ),
                    tls: sourced(policy.tls.as_ref(), path, "tls"),
                    tunnel: sourced(policy.tunnel.as_ref(), path, "tunnel"),
                    proxy_protocol: sourced(policy.proxy_protocol.as_ref(), path, "proxyProtocol"),
                    retry_budget: sourced(policy.retry_budget.as_ref(), path, "retryBudget"),
                };
                (merged, false)
            }
        }
    }

    /// Istio's `mergeTrafficPolicy`: the subset's groups replace ours; all four when the
    /// subset's policy is a port-level entry.
    fn override_with(&mut self, subset: Merged<'a>, port_level: bool) {
        if subset.load_balancer.is_some() || port_level {
            self.load_balancer = subset.load_balancer;
        }
        if subset.connection_pool.is_some() || port_level {
            self.connection_pool = subset.connection_pool;
        }
        if subset.outlier_detection.is_some() || port_level {
            self.outlier_detection = subset.outlier_detection;
        }
        if subset.tls.is_some() || port_level {
            self.tls = subset.tls;
        }
        if subset.tunnel.is_some() {
            self.tunnel = subset.tunnel;
        }
        if subset.proxy_protocol.is_some() {
            self.proxy_protocol = subset.proxy_protocol;
        }
        if subset.retry_budget.is_some() {
            self.retry_budget = subset.retry_budget;
        }
    }
}

/// Collects warnings and names the rule in errors.
struct Context {
    object: String,
    warnings: Vec<Warning>,
}

impl Context {
    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Warning {
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn invalid(&self, field: impl Into<String>, message: impl fmt::Display) -> Error {
        Error::Invalid {
            rule: self.object.clone(),
            field: field.into(),
            message: message.to_string(),
        }
    }

    fn duration(&self, field: String, text: &str) -> Result<std::time::Duration> {
        mesh_core::config::duration::parse(text).map_err(|error| self.invalid(field, error))
    }
}

impl EffectivePolicy {
    /// The policy for traffic to `port` of the rule's host, for `subset` if routing named
    /// one. Without a rule, Istio's defaults; a subset the rule does not define (or a subset
    /// without any rule) is an error, as Istio then has no cluster to send to.
    pub fn resolve(
        rule: Option<&DestinationRule>,
        subset: Option<&str>,
        port: u16,
    ) -> Result<EffectivePolicy> {
        let Some(rule) = rule else {
            return match subset {
                Some(subset) => Err(Error::NoDestinationRule {
                    subset: subset.to_owned(),
                }),
                None => Ok(EffectivePolicy::default()),
            };
        };
        let mut cx = Context {
            object: format!("DestinationRule {}/{}", rule.namespace(), rule.name()),
            warnings: Vec::new(),
        };
        let spec = &rule.spec;
        let mut merged = match &spec.traffic_policy {
            Some(policy) => Merged::level(policy, "trafficPolicy", port).0,
            None => Merged::default(),
        };
        let mut subset_labels = BTreeMap::new();
        if let Some(name) = subset {
            let Some((i, found)) = spec
                .subsets
                .iter()
                .enumerate()
                .find(|(_, s)| s.name == name)
            else {
                return Err(Error::UnknownSubset {
                    rule: cx.object,
                    subset: name.to_owned(),
                    defined: spec.subsets.iter().map(|s| s.name.clone()).collect(),
                });
            };
            subset_labels = found.labels.clone();
            if let Some(policy) = &found.traffic_policy {
                let (level, port_level) =
                    Merged::level(policy, &format!("subsets[{i}].trafficPolicy"), port);
                merged.override_with(level, port_level);
            }
        }
        let load_balancer = convert::load_balancer(&mut cx, merged.load_balancer.as_ref())?;
        let connection_pool = convert::connection_pool(&mut cx, merged.connection_pool.as_ref())?;
        let outlier_detection =
            convert::outlier_detection(&mut cx, merged.outlier_detection.as_ref())?;
        unsupported_groups(&mut cx, &merged);
        if spec.workload_selector.is_some() {
            cx.warn(
                "workloadSelector",
                "is not implemented by the waypoint; the rule applies to every client",
            );
        }
        Ok(EffectivePolicy {
            rule: Some(cx.object),
            subset: subset.map(str::to_owned),
            subset_labels,
            load_balancer,
            connection_pool,
            outlier_detection,
            warnings: cx.warnings,
        })
    }

    /// Whether the subset selects the endpoint (every subset label on its pod).
    pub fn selects(&self, endpoint: &Endpoint) -> bool {
        selects(&self.subset_labels, endpoint.labels())
    }
}

/// The groups the waypoint has no implementation for.
fn unsupported_groups(cx: &mut Context, merged: &Merged<'_>) {
    if let Some(tls) = &merged.tls {
        // ISTIO_MUTUAL alone asks for what the waypoint always does: HBONE with mesh mTLS.
        let mesh_mtls_only = ClientTlsSettings {
            mode: Some(ClientTlsMode::IstioMutual),
            ..ClientTlsSettings::default()
        };
        if *tls.value != mesh_mtls_only {
            cx.warn(
                &tls.path,
                "is not implemented by the waypoint (upstream connections always use HBONE \
                 with mesh mTLS); ignored",
            );
        }
    }
    for (path, what) in [
        (merged.tunnel.as_ref().map(|s| &s.path), "tunnel"),
        (
            merged.proxy_protocol.as_ref().map(|s| &s.path),
            "proxyProtocol",
        ),
        (merged.retry_budget.as_ref().map(|s| &s.path), "retryBudget"),
    ] {
        if let Some(path) = path {
            cx.warn(
                path,
                format!("{what} is not implemented by the waypoint; ignored"),
            );
        }
    }
}

#[cfg(test)]
mod tests;
