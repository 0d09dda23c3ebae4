//! Acceptance tests of the typed model against Istio's own material: every Istio sample
//! parses and round-trips, and every property of the CRD schemas has a typed home (and a
//! support-table entry).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::crd_examples::{crd_schemas, maximal};
use super::resource::{Kind, Resource};
use super::support;
use crate::manifest;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/istio-samples")
}

/// `input` is contained in `output`: every value set in the input is there, equal
/// (numbers compared as numbers; empty maps and lists may be dropped).
pub(crate) fn contained(input: &Value, output: Option<&Value>, path: &str) -> Result<(), String> {
    match (input, output) {
        (Value::Null, _) => Ok(()),
        (Value::Object(m), None) if m.is_empty() => Ok(()),
        (Value::Array(a), None) if a.is_empty() => Ok(()),
        (Value::Object(inp), Some(Value::Object(out))) => inp
            .iter()
            .try_for_each(|(k, v)| contained(v, out.get(k), &format!("{path}.{k}"))),
        (Value::Array(inp), Some(Value::Array(out))) if inp.len() == out.len() => inp
            .iter()
            .zip(out)
            .enumerate()
            .try_for_each(|(i, (a, b))| contained(a, Some(b), &format!("{path}[{i}]"))),
        (Value::Number(a), Some(Value::Number(b))) if a.as_f64() == b.as_f64() => Ok(()),
        (a, Some(b)) if a == b => Ok(()),
        (a, b) => Err(format!("{path}: input {a} became {b:?}")),
    }
}

fn round_trip(value: Value, kind: Kind) -> Resource {
    let first = Resource::from_value(kind, value.clone()).unwrap_or_else(|e| panic!("{e}"));
    let serialized = first.to_value();
    contained(&value, Some(&serialized), "")
        .unwrap_or_else(|e| panic!("{kind}: field dropped: {e}\n{serialized:#}"));
    let second = Resource::from_value(kind, serialized).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first, second, "{kind}: parse → serialize → parse differs");
    first
}

#[test]
fn every_istio_sample_parses_and_round_trips() {
    let loaded = manifest::load(&[shared()], manifest::Folders::Recursive);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let mut istio = 0;
    let mut kube = 0;
    let samples = loaded
        .objects
        .into_iter()
        .filter(|o| !o.origin.file.ends_with("crds/crd-all.gen.yaml"));
    for object in samples {
        let Some(kind) = Kind::of(object.group(), &object.kind) else {
            assert!(
                !object.group().ends_with("istio.io"),
                "{} is an Istio kind the model lacks",
                object.display_name()
            );
            continue;
        };
        round_trip(object.value, kind);
        if kind.is_istio() {
            istio += 1;
        } else {
            kube += 1;
        }
    }
    assert!(
        istio >= 40,
        "only {istio} Istio objects found in the samples"
    );
    assert!(
        kube >= 20,
        "only {kube} Kubernetes objects found in the samples"
    );
}

#[test]
fn every_crd_property_has_a_typed_field() {
    let schemas = crd_schemas();
    let kinds: std::collections::BTreeSet<Kind> = schemas.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(kinds.len(), 8, "all eight Istio kinds have CRDs: {kinds:?}");
    for (kind, version, schema) in schemas {
        let mut paths = Vec::new();
        let spec = maximal(&schema["properties"]["spec"], "", &mut paths);
        let object = json!({
            "apiVersion": format!("{}/{version}", kind.group()),
            "kind": kind.name(),
            "metadata": {"name": "maximal", "namespace": "default"},
            "spec": spec,
        });
        // deny_unknown_fields refuses any property without a typed field; the round trip
        // checks no field is dropped or changed.
        let resource = round_trip(object, kind);
        let back = resource.to_value();
        contained(&back["spec"], Some(&spec), "spec").expect("nothing added");
        let leaves = paths.iter().filter(|p| {
            !paths.iter().any(|q| {
                q.len() > p.len()
                    && q.starts_with(p.as_str())
                    && q[p.len()..].starts_with(['.', '[', '{'])
            })
        });
        for path in leaves {
            assert!(
                support::entry_for(kind, path).is_some(),
                "{kind} {path}: no entry in the support table"
            );
        }
    }
}

#[test]
fn every_support_entry_names_a_crd_property() {
    let mut properties: std::collections::BTreeMap<Kind, Vec<String>> = Default::default();
    for (kind, _, schema) in crd_schemas() {
        let mut paths = Vec::new();
        maximal(&schema["properties"]["spec"], "", &mut paths);
        properties.entry(kind).or_default().extend(paths);
    }
    for (kind, paths) in &properties {
        for (entry, _) in support::entries(*kind) {
            assert!(
                paths.iter().any(|p| p == entry
                    || p.strip_prefix(entry)
                        .is_some_and(|rest| rest.starts_with(['.', '[', '{']))),
                "{kind} {entry}: the support table names no property of the CRD schemas"
            );
        }
    }
}

#[test]
fn unknown_fields_are_refused_not_dropped() {
    let value = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "r"},
        "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}], "retry": {}}]}
    });
    let error = Resource::from_value(Kind::VirtualService, value)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("VirtualService default/r: spec.http[0]"),
        "{error}"
    );
    assert!(error.contains("unknown field `retry`"), "{error}");
}

#[test]
fn all_served_versions_parse_to_the_same_model() {
    for version in ["v1", "v1beta1", "v1alpha3"] {
        let value = json!({
            "apiVersion": format!("networking.istio.io/{version}"),
            "kind": "DestinationRule",
            "metadata": {"name": "r"},
            "spec": {"host": "r", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}
        });
        let Resource::DestinationRule(dr) =
            Resource::from_value(Kind::DestinationRule, value).unwrap()
        else {
            panic!("not a DestinationRule")
        };
        assert_eq!(dr.spec.subsets[0].name, "v1");
        assert_eq!(dr.metadata.namespace.as_deref(), Some("default"));
    }
    let value = json!({"apiVersion": "networking.istio.io/v2", "kind": "DestinationRule", "metadata": {"name": "r"}, "spec": {"host": "r"}});
    let error = Resource::from_value(Kind::DestinationRule, value)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "DestinationRule default/r: apiVersion networking.istio.io/v2 is not served; use networking.istio.io/v1"
    );
}

#[test]
fn objects_over_the_size_limit_are_refused_counting_escapes() {
    let service = |note: String| {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "big", "annotations": {"note": note}}, "spec": {}})
    };
    let size = |value: &Value| serde_json::to_string(value).unwrap().len();
    // Quotes are written escaped, two bytes each: 300k of them stay under the limit…
    let under = service("\"".repeat(300_000));
    assert!(Resource::from_value(Kind::Service, under).is_ok());
    // …800k do not, though the string itself is shorter than the limit.
    let over = service("\"".repeat(800_000));
    let expected = size(&over);
    let error = Resource::from_value(Kind::Service, over)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        format!(
            "Service default/big: the object is {expected} bytes; Kubernetes stores at most 1572864 bytes per object"
        )
    );
}
