//! Kubernetes manifests: multi-document YAML (or JSON) files split into objects that each
//! know their apiVersion, kind, namespace, name and where they came from.
//!
//! This layer checks only what every Kubernetes object must have; what a kind means is for
//! its consumers. Every problem is reported with the file and document it is in, and one bad
//! document never hides the good ones around it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// Files larger than this are refused outright: no real manifest comes near it.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One Kubernetes object read from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    /// `metadata.namespace` as written; `None` for cluster-scoped kinds or when omitted.
    pub namespace: Option<String>,
    pub name: String,
    /// The whole object as JSON.
    pub value: Value,
    pub origin: Origin,
}

impl Object {
    /// The API group: `apps` for `apps/v1`, empty for the core group (`v1`).
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _version)| group)
    }

    /// `kind namespace/name` (or `kind name`), the way error messages name an object.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// `metadata.labels` as a map of strings (missing labels are an empty map).
    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        self.value
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Where an object (or an error) came from: a file and the 1-based document in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: file is {size} bytes, over the {MAX_FILE_BYTES}-byte limit for a manifest")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{origin}: invalid YAML: {message}")]
    Yaml { origin: Origin, message: String },
    #[error("{origin}: {message}")]
    Object { origin: Origin, message: String },
    #[error("{path}: no .yaml, .yml or .json files in this folder")]
    EmptyFolder { path: PathBuf },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything read from a set of paths: the good objects and every problem found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Vec<Object>,
    pub errors: Vec<Error>,
}

/// How [`load`] reads a folder named among its paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folders {
    /// Its own `.yaml`, `.yml` and `.json` files, like `kubectl apply -f DIR`.
    Flat,
    /// Those of its subfolders too, at any depth, like `kubectl apply -R -f DIR`.
    Recursive,
}

/// Reads files and folders (a folder: its `.yaml`, `.yml` and `.json` files, sorted, not
/// recursive, like `kubectl apply -f DIR`).
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Loaded {
    load(paths, Folders::Flat)
}

/// Reads files and folders, each folder's manifest files sorted by path.
pub fn load<P: AsRef<Path>>(paths: &[P], folders: Folders) -> Loaded {
    let mut loaded = Loaded::default();
    for path in paths {
        for file in manifest_files(path.as_ref(), folders, &mut loaded.errors) {
            load_file(&file, &mut loaded);
        }
    }
    loaded
}

/// The manifest files `path` names: itself, or a folder's. A folder that cannot be read is an
/// error beside the files of the others.
fn manifest_files(path: &Path, folders: Folders, errors: &mut Vec<Error>) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_owned()];
    }
    let mut files = Vec::new();
    let unreadable = errors.len();
    collect(path, folders, &mut files, errors);
    if files.is_empty() && errors.len() == unreadable {
        errors.push(Error::EmptyFolder {
            path: path.to_owned(),
        });
    }
    files.sort();
    files
}

/// The manifest files in `dir`, and with [`Folders::Recursive`] in its subfolders (not those
/// behind a symbolic link, as `kubectl apply -R` does not follow them either).
fn collect(dir: &Path, folders: Folders, files: &mut Vec<PathBuf>, errors: &mut Vec<Error>) {
    let read_error = |source| Error::Read {
        path: dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => return errors.push(read_error(source)),
    };
    for entry in entries {
        let (path, file_type) = match entry.and_then(|e| Ok((e.path(), e.file_type()?))) {
            Ok(found) => found,
            Err(source) => {
                errors.push(read_error(source));
                continue;
            }
        };
        if file_type.is_dir() {
            if folders == Folders::Recursive {
                collect(&path, folders, files, errors);
            }
            continue;
        }
        let is_manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if is_manifest && path.is_file() {
            files.push(path);
        }
    }
}

fn load_file(path: &Path, loaded: &mut Loaded) {
    let size = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(source) => {
            loaded.errors.push(Error::Read {
                path: path.to_owned(),
                source,
            });
            return;
        }
    };
    if size > MAX_FILE_BYTES {
        loaded.errors.push(Error::TooLarge {
            path: path.to_owned(),
            size,
        });
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let parsed = parse_documents(&text, path);
            loaded.objects.extend(parsed.objects);
            loaded.errors.extend(parsed.errors);
        }
        Err(source) => loaded.errors.push(Error::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Splits one file's text into objects. Empty documents are skipped; `kind: List` is
/// expanded into its items.
pub fn parse_documents(text: &str, file: &Path) -> Loaded {
    let mut loaded = Loaded::default();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let origin = Origin {
            file: file.to_owned(),
            document: index + 1,
        };
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                loaded.errors.push(Error::Yaml {
                    origin,
                    message: error.to_string(),
                });
                // A syntax error leaves the YAML stream unusable past this point.
                if error.location().is_some() {
                    break;
                }
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(Value::as_str) == Some("List") {
            match value.get("items").and_then(Value::as_array) {
                Some(items) => {
                    for item in items {
                        push_object(item.clone(), &origin, &mut loaded);
                    }
                }
                None => loaded.errors.push(Error::Object {
                    origin,
                    message: "kind List without an `items` array".into(),
                }),
            }
            continue;
        }
        push_object(value, &origin, &mut loaded);
    }
    loaded
}

fn push_object(value: Value, origin: &Origin, loaded: &mut Loaded) {
    match object_from_value(value, origin.clone()) {
        Ok(object) => loaded.objects.push(object),
        Err(error) => loaded.errors.push(error),
    }
}

/// Checks the fields every Kubernetes object has and wraps the value.
pub fn object_from_value(value: Value, origin: Origin) -> Result<Object> {
    let fail = |message: String| Error::Object {
        origin: origin.clone(),
        message,
    };
    if !value.is_object() {
        return Err(fail(format!(
            "expected a Kubernetes object (a YAML mapping), found {}",
            json_type(&value)
        )));
    }
    let text_field = |pointer: &str, what: &str| -> Result<Option<String>> {
        match value.pointer(pointer) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(fail(format!(
                "{what} must be a string, found {}",
                json_type(other)
            ))),
        }
    };
    let kind = text_field("/kind", "kind")?
        .filter(|k| !k.is_empty())
        .ok_or_else(|| fail("object has no `kind`; add e.g. `kind: Service`".into()))?;
    let api_version = text_field("/apiVersion", "apiVersion")?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            fail(format!(
                "{kind} has no `apiVersion`; add e.g. `apiVersion: v1`"
            ))
        })?;
    let name = text_field("/metadata/name", "metadata.name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            fail(format!(
                "{kind} has no `metadata.name`; every object needs one"
            ))
        })?;
    check_dns_name(&name).map_err(|why| fail(format!("{kind} {name}: metadata.name {why}")))?;
    let namespace = text_field("/metadata/namespace", "metadata.namespace")?;
    if let Some(ns) = &namespace {
        check_dns_label(ns)
            .map_err(|why| fail(format!("{kind} {name}: metadata.namespace {ns:?} {why}")))?;
    }
    if let Some(labels) = value.pointer("/metadata/labels") {
        let all_strings = labels
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string));
        if !labels.is_null() && !all_strings {
            return Err(fail(format!(
                "{kind} {name}: metadata.labels must map strings to strings (quote values like \"true\" or \"1\")"
            )));
        }
    }
    Ok(Object {
        api_version,
        kind,
        namespace,
        name,
        value,
        origin,
    })
}

/// RFC 1123 subdomain, as Kubernetes requires of most object names.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("is longer than 253 characters".into());
    }
    name.split('.').try_for_each(check_dns_label)
}

/// RFC 1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric.
pub fn check_dns_label(label: &str) -> Result<(), String> {
    let valid_chars = label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let valid_ends = !label.starts_with('-') && !label.ends_with('-');
    if label.is_empty() || label.len() > 63 || !valid_chars || !valid_ends {
        return Err(format!(
            "{label:?} is not a valid DNS-1123 label (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests;
