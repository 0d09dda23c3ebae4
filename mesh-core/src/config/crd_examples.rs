//! Objects built from Istio's CRD schemas (`../shared/istio-samples/crds`, beside the
//! repository), for tests: this crate's, that every schema property has a typed field and a
//! support-table entry, and the waypoint's, that the support table and the waypoint agree.
//! Behind the `testing` feature.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::resource::Kind;

/// Istio's CRDs, from `../shared/istio-samples` beside the repository.
pub fn crds_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/istio-samples/crds/crd-all.gen.yaml")
}

/// The kinds the model types and their CRD schemas (`openAPIV3Schema` per version).
pub fn crd_schemas() -> Vec<(Kind, String, Value)> {
    let path = crds_file();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (Istio's CRDs, from ../shared)", path.display()));
    let mut schemas = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let crd: Value = serde::Deserialize::deserialize(document).expect("CRD YAML");
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
        let Some(kind) = Kind::of(group, kind) else {
            continue;
        };
        for version in crd["spec"]["versions"].as_array().expect("versions") {
            let name = version["name"].as_str().expect("version name").to_owned();
            schemas.push((kind, name, version["schema"]["openAPIV3Schema"].clone()));
        }
    }
    schemas
}

/// A value with every property the schema defines, each with a value of the right type (an
/// enum's first value, `"x"` for a string, 1 or the minimum for an integer); `paths` gets the
/// path of every property below `path` (`a[].b`, `labels{}` for a map's values).
pub fn maximal(schema: &Value, path: &str, paths: &mut Vec<String>) -> Value {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values[0].clone();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let mut map = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    let child = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    paths.push(child.clone());
                    map.insert(name.clone(), maximal(prop, &child, paths));
                }
            } else if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object())
            {
                map.insert("8080".into(), maximal(extra, &format!("{path}{{}}"), paths));
            }
            Value::Object(map)
        }
        Some("array") => json!([maximal(&schema["items"], &format!("{path}[]"), paths)]),
        Some("string") => json!("x"),
        Some("integer") => json!(
            schema
                .get("minimum")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .max(1)
        ),
        Some("number") => json!(1.5),
        Some("boolean") => json!(true),
        other => panic!("{path}: schema type {other:?} not handled"),
    }
}
