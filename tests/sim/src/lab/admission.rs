//! What the lab's API server accepts: every manifest of one command is checked (known kind,
//! existing namespace, unique name, the typed checks of the kinds the lab runs) before any
//! of them applies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use mesh_core::manifest;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::kinds::{Kinds, Scope};
use crate::state::{State, object_key};
use crate::workload;

pub(super) fn namespace_for(
    scope: Scope,
    object: &manifest::Object,
    default_namespace: &str,
) -> Option<String> {
    match scope {
        Scope::Cluster => None,
        Scope::Namespaced => Some(
            object
                .namespace
                .clone()
                .unwrap_or_else(|| default_namespace.to_owned()),
        ),
    }
}

pub(super) fn display(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

pub(super) fn describe(value: &Value) -> String {
    let text = |p: &str| value.pointer(p).and_then(Value::as_str);
    display(
        text("/kind").unwrap_or_default(),
        text("/metadata/namespace"),
        text("/metadata/name").unwrap_or_default(),
    )
}

/// Reads and checks manifests against the lab's current objects. Returns the objects keyed
/// for storage (namespace defaulted) or every error found.
pub(super) fn validate_files(
    state: &State,
    files: &[PathBuf],
    default_namespace: &str,
) -> Result<Vec<(String, Value)>> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let loaded = manifest::load_paths(files);
    let mut errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    let incoming_crds = loaded
        .objects
        .iter()
        .filter(|o| o.kind == "CustomResourceDefinition")
        .map(|o| &o.value);
    let crds = state
        .objects
        .values()
        .filter(|v| v["kind"] == "CustomResourceDefinition")
        .chain(incoming_crds);
    let kinds = Kinds::new(crds);
    let mut namespaces: BTreeSet<String> = state
        .objects
        .values()
        .filter(|v| v["apiVersion"] == "v1" && v["kind"] == "Namespace")
        .filter_map(|v| {
            v.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    namespaces.extend(
        loaded
            .objects
            .iter()
            .filter(|o| o.api_version == "v1" && o.kind == "Namespace")
            .map(|o| o.name.clone()),
    );
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for object in loaded.objects {
        let scope = match kinds.scope(object.group(), &object.kind, &object.api_version) {
            Ok(scope) => scope,
            Err(message) => {
                errors.push(format!("{}: {message}", object.origin));
                continue;
            }
        };
        let ns = namespace_for(scope, &object, default_namespace);
        let name = display(&object.kind, ns.as_deref(), &object.name);
        if let Some(ns) = &ns
            && !namespaces.contains(ns)
        {
            errors.push(format!(
                "{}: {name}: namespace {ns:?} not found; apply a Namespace named {ns} first (or in the same files)",
                object.origin
            ));
            continue;
        }
        let key = object_key(object.group(), &object.kind, ns.as_deref(), &object.name);
        if let Some(first) = seen.insert(key.clone(), object.origin.to_string()) {
            errors.push(format!(
                "{}: {name} is defined twice (first in {first}); names must be unique per kind and namespace",
                object.origin
            ));
            continue;
        }
        if let Err(message) = workload::validate(
            object.group(),
            &object.kind,
            ns.as_deref().unwrap_or_default(),
            &object.value,
        ) {
            errors.push(format!("{}: {name}: {message}", object.origin));
            continue;
        }
        let mut value = object.value;
        if let Some(ns) = &ns {
            value["metadata"]["namespace"] = json!(ns);
        } else if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.remove("namespace");
        }
        out.push((key, value));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(Error::Manifests(errors))
    }
}
