//! `meshctl analyze` warns from `mesh_core::config::support`'s table; the waypoint warns from
//! its own compilers when it loads an object. These tests hold the two to the same story:
//! every VirtualService and DestinationRule field the table calls `Planned` is one the
//! waypoint reports as not implemented when it is set.

use mesh_core::config::crd_examples;
use mesh_core::config::resource::{Kind, Resource};
use mesh_core::config::support::{self, Support};
use mesh_waypoint::route::RouteTable;
use mesh_waypoint::upstream::EffectivePolicy;
use serde_json::{Value, json};

/// The `spec` schema of `kind`'s v1 CRD.
fn spec_schema(kind: Kind) -> Value {
    crd_examples::crd_schemas()
        .into_iter()
        .find(|(k, version, _)| *k == kind && version == "v1")
        .map(|(_, _, schema)| schema["properties"]["spec"].clone())
        .unwrap_or_else(|| panic!("no v1 CRD for {kind}"))
}

/// The schema of the field at `path` (`a[].b.c`) under `schema`.
fn schema_at<'a>(mut schema: &'a Value, path: &str) -> &'a Value {
    for segment in path.split('.') {
        let (field, array) = match segment.strip_suffix("[]") {
            Some(field) => (field, true),
            None => (segment, false),
        };
        schema = &schema["properties"][field];
        if array {
            schema = &schema["items"];
        }
    }
    assert!(!schema.is_null(), "{path}: not in the schema");
    schema
}

/// A value with every property the schema defines.
fn maximal(schema: &Value) -> Value {
    crd_examples::maximal(schema, "", &mut Vec::new())
}

/// `spec` with `value` at `path`, creating what lies on the way (one element per array).
fn set(spec: &mut Value, path: &str, value: Value) {
    let segments: Vec<&str> = path.split('.').collect();
    let mut at = spec;
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let (field, array) = match segment.strip_suffix("[]") {
            Some(field) => (field, true),
            None => (*segment, false),
        };
        let object = at.as_object_mut().expect("an object on the path");
        if array {
            let items = object.entry(field).or_insert_with(|| json!([{}]));
            at = &mut items[0];
        } else if last {
            object.insert(field.to_owned(), value);
            return;
        } else {
            at = object.entry(field).or_insert_with(|| json!({}));
        }
    }
    *at = value;
}

/// `http[0].match[1].uri` → `http[].match[].uri`.
fn without_indices(path: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Whether a warning about `field` covers the table's `entry` (the field itself, or the group
/// it belongs to).
fn covers(field: &str, entry: &str) -> bool {
    let field = without_indices(field);
    entry == field
        || entry
            .strip_prefix(field.as_str())
            .is_some_and(|rest| rest.starts_with(['.', '[']))
}

/// The object of `kind` with `spec`, in which the table warns about `path` (else the test
/// would check nothing).
fn object(kind: Kind, path: &str, spec: &Value) -> Resource {
    assert!(
        support::warnings(kind, spec)
            .iter()
            .any(|w| w.starts_with(path)),
        "{path}: the table does not warn"
    );
    let value = json!({
        "apiVersion": format!("{}/v1", kind.group()),
        "kind": kind.name(),
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": spec,
    });
    Resource::from_value(kind, value.clone()).unwrap_or_else(|e| panic!("{e}: {value:#}"))
}

fn planned(kind: Kind) -> Vec<&'static str> {
    let found: Vec<_> = support::entries(kind)
        .filter(|(_, support)| *support == Support::Planned)
        .map(|(path, _)| path)
        .collect();
    assert!(!found.is_empty(), "{kind}: nothing planned?");
    found
}

#[test]
fn every_planned_virtual_service_field_is_one_the_waypoint_reports() {
    let schema = spec_schema(Kind::VirtualService);
    for path in planned(Kind::VirtualService) {
        let mut spec = json!({"hosts": ["reviews"]});
        set(&mut spec, path, maximal(schema_at(&schema, path)));
        // An HTTP rule needs somewhere to send (a delegate is one); retry settings count
        // only when there are retries.
        if let Some(rule) = spec.get_mut("http").and_then(|http| http.get_mut(0)) {
            if rule.get("delegate").is_none() {
                rule["route"] = json!([{"destination": {"host": "reviews"}}]);
            }
            if let Some(retries) = rule.get_mut("retries") {
                retries["attempts"] = json!(2);
            }
        }
        let Resource::VirtualService(vs) = object(Kind::VirtualService, path, &spec) else {
            unreachable!("a VirtualService")
        };
        let table = RouteTable::compile(&[vs]);
        assert!(
            table.unsupported().iter().any(|p| covers(&p.path, path)),
            "{path} is Planned in the support table, but the waypoint does not report it: \
             unsupported {:?}, errors {:?}, spec {spec:#}",
            table.unsupported(),
            table.errors()
        );
    }
}

#[test]
fn every_planned_destination_rule_field_is_one_the_waypoint_reports() {
    let schema = spec_schema(Kind::DestinationRule);
    for path in planned(Kind::DestinationRule) {
        let mut spec = json!({"host": "reviews"});
        let mut value = maximal(schema_at(&schema, path));
        if path.ends_with("consistentHash.maglev") {
            // A hash without a key is spread at random, before the maglev check.
            value = json!({"tableSize": 65537});
            set(
                &mut spec,
                &path.replace(".maglev", ".httpHeaderName"),
                json!("x-user"),
            );
        }
        set(&mut spec, path, value);
        if let Some(subset) = spec.get_mut("subsets").and_then(|s| s.get_mut(0)) {
            subset["name"] = json!("v1");
            subset["labels"] = json!({"version": "v1"});
        }
        for policy in ["/trafficPolicy", "/subsets/0/trafficPolicy"] {
            if let Some(port) = spec.pointer_mut(&format!("{policy}/portLevelSettings/0")) {
                port["port"] = json!({"number": 9080});
            }
        }
        let Resource::DestinationRule(rule) = object(Kind::DestinationRule, path, &spec) else {
            unreachable!("a DestinationRule")
        };
        let subset = path.starts_with("subsets[]").then_some("v1");
        let policy = EffectivePolicy::resolve(Some(&rule), subset, 9080)
            .unwrap_or_else(|e| panic!("{path}: {e}: {spec:#}"));
        assert!(
            policy.warnings.iter().any(|w| covers(&w.field, path)),
            "{path} is Planned in the support table, but the waypoint does not report it: \
             {:?}, spec {spec:#}",
            policy.warnings
        );
    }
}
