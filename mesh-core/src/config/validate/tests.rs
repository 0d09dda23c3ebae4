//! Istio's per-object rules, one behaviour per test.

use serde_json::{Value, json};

use super::*;
use crate::config::resource::Kind;

fn errors(kind: Kind, spec: Value) -> Vec<String> {
    let group = kind.group();
    let value = json!({"apiVersion": format!("{group}/v1"), "kind": kind.name(), "metadata": {"name": "x"}, "spec": spec});
    let resource = Resource::from_value(kind, value).unwrap_or_else(|e| panic!("{e}"));
    object(&resource)
        .into_iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| f.message)
        .collect()
}

fn route(extra: Value) -> Value {
    let mut http = json!({"route": [{"destination": {"host": "r"}}]});
    http.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"hosts": ["r"], "http": [http]})
}

#[test]
fn a_single_destination_may_omit_its_weight() {
    assert!(errors(Kind::VirtualService, route(json!({}))).is_empty());
}

#[test]
fn durations_must_be_istio_durations_of_at_least_1ms() {
    assert_eq!(
        errors(Kind::VirtualService, route(json!({"timeout": "5 seconds"}))),
        vec![
            "http[0].timeout: \"5 seconds\" has unknown unit \" seconds\": use one of ns, us, ms, s, m, h"
        ]
    );
    assert_eq!(
        errors(
            Kind::VirtualService,
            route(json!({"retries": {"perTryTimeout": "100us"}}))
        ),
        vec![
            "http[0].retries.perTryTimeout: \"100us\" is shorter than 1ms, the least Istio accepts"
        ]
    );
    assert!(errors(Kind::VirtualService, route(json!({"timeout": "1.5s"}))).is_empty());
}

#[test]
fn percentages_must_be_within_0_and_100() {
    let fault = json!({"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 150.0}}}});
    assert_eq!(
        errors(Kind::VirtualService, route(fault)),
        vec![
            "http[0].fault.abort.percentage.value: 150 is not a percentage; use a value from 0 to 100"
        ]
    );
}

#[test]
fn string_matches_take_exactly_one_form() {
    let m = json!({"match": [{"uri": {"exact": "/a", "prefix": "/"}}]});
    assert_eq!(
        errors(Kind::VirtualService, route(m)),
        vec!["http[0].match[0].uri: set only one of exact, prefix or regex"]
    );
}

#[test]
fn ports_must_be_in_range() {
    let spec = json!({"hosts": ["r"], "tcp": [{"route": [{"destination": {"host": "r", "port": {"number": 70000}}}]}]});
    assert_eq!(
        errors(Kind::VirtualService, spec),
        vec!["tcp[0].route[0].destination.port.number: port 70000 is out of range; use 1 to 65535"]
    );
}

#[test]
fn destination_rules_need_unique_subsets_and_one_load_balancer() {
    let spec = json!({
        "host": "r",
        "trafficPolicy": {"loadBalancer": {"simple": "RANDOM", "consistentHash": {"useSourceIp": true}}},
        "subsets": [{"name": "v1"}, {"name": "v1"}]
    });
    assert_eq!(
        errors(Kind::DestinationRule, spec),
        vec![
            "trafficPolicy.loadBalancer: simple and consistentHash are set; set only one of simple, consistentHash, backendUtilization",
            "subsets[1].name: subset \"v1\" is defined twice",
        ]
    );
}

#[test]
fn custom_authorization_needs_a_provider() {
    assert_eq!(
        errors(Kind::AuthorizationPolicy, json!({"action": "CUSTOM"})),
        vec!["provider: action CUSTOM needs provider.name"]
    );
}

#[test]
fn port_level_mtls_needs_a_selector() {
    assert_eq!(
        errors(
            Kind::PeerAuthentication,
            json!({"portLevelMtls": {"8080": {"mode": "DISABLE"}}})
        ),
        vec!["portLevelMtls: port-level mTLS needs a workload selector (selector.matchLabels)"]
    );
}
