use std::path::Path;

use super::*;

fn parse(text: &str) -> Loaded {
    parse_documents(text, Path::new("test.yaml"))
}

#[test]
fn multi_document_file_yields_each_object_with_its_origin() {
    let loaded = parse(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: reviews\n---\n# only a comment\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: reviews-v1\n  namespace: shop\n",
    );
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(loaded.objects.len(), 2);
    let deployment = &loaded.objects[1];
    assert_eq!(deployment.display_name(), "Deployment shop/reviews-v1");
    assert_eq!(deployment.group(), "apps");
    assert_eq!(deployment.origin.document, 3);
    assert_eq!(loaded.objects[0].group(), "");
}

#[test]
fn bad_document_is_reported_and_good_ones_still_load() {
    let loaded = parse(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: good\n---\nkind: Service\nmetadata:\n  name: no-version\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
    );
    assert_eq!(loaded.objects.len(), 1);
    assert_eq!(loaded.objects[0].name, "good");
    let messages: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("(document 2)") && messages[0].contains("apiVersion"));
    assert!(messages[1].contains("Bad_Name") && messages[1].contains("DNS-1123"));
}

#[test]
fn invalid_yaml_names_file_and_document() {
    let loaded = parse("apiVersion: v1\nkind: Service\nmetadata: [unclosed\n");
    assert!(loaded.objects.is_empty());
    let message = loaded.errors[0].to_string();
    assert!(
        message.starts_with("test.yaml (document 1): invalid YAML"),
        "{message}"
    );
}

#[test]
fn alias_bomb_is_an_error_not_a_hang() {
    let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..12 {
        let prev = level - 1;
        text.push_str(&format!(
            "l{level}: &l{level} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
            p = if prev == 0 {
                "a".to_owned()
            } else {
                format!("l{prev}")
            }
        ));
    }
    let loaded = parse(&text);
    assert!(loaded.objects.is_empty());
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
}

#[test]
fn labels_must_be_strings() {
    let loaded =
        parse("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels:\n    ready: true\n");
    assert!(loaded.errors[0].to_string().contains("quote values"));
}

#[test]
fn list_kind_is_expanded() {
    let loaded = parse(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: a\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: b\n",
    );
    let names: Vec<&str> = loaded.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[test]
fn folder_loads_manifest_files_in_order() {
    let dir = std::env::temp_dir().join(format!("mesh-core-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("a.yml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n",
    )
    .unwrap();
    std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
    let loaded = load_paths(&[&dir]);
    std::fs::remove_dir_all(&dir).unwrap();
    let names: Vec<&str> = loaded.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(loaded.errors.is_empty());
}

#[test]
fn a_subfolder_is_read_only_when_recursive() {
    let dir = crate::test_util::temp_dir("manifest-recursive");
    let sub = dir.path().join("sub/deeper");
    std::fs::create_dir_all(&sub).unwrap();
    let namespace =
        |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n");
    std::fs::write(dir.path().join("top.yaml"), namespace("top")).unwrap();
    std::fs::write(
        sub.join("deep.json"),
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "deep"}}"#,
    )
    .unwrap();
    let names = |loaded: &Loaded| -> Vec<String> {
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        loaded.objects.iter().map(|o| o.name.clone()).collect()
    };
    assert_eq!(names(&load(&[dir.path()], Folders::Flat)), ["top"]);
    assert_eq!(
        names(&load(&[dir.path()], Folders::Recursive)),
        ["deep", "top"]
    );
    // A folder with manifests only below it is empty unless recursive.
    let flat = load(&[dir.path().join("sub")], Folders::Flat);
    assert!(
        matches!(flat.errors[..], [Error::EmptyFolder { .. }]),
        "{:?}",
        flat.errors
    );
    // A symbolic link to a folder is not followed (here it would loop).
    std::os::unix::fs::symlink(dir.path(), sub.join("loop")).unwrap();
    assert_eq!(
        names(&load(&[dir.path()], Folders::Recursive)),
        ["deep", "top"]
    );
}

#[test]
fn every_istio_sample_manifest_parses() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/istio-samples");
    assert!(
        samples.is_dir(),
        "{} is missing: the tests read Istio's samples from ../shared beside the repository",
        samples.display()
    );
    let loaded = load(&[samples], Folders::Recursive);
    let files: std::collections::BTreeSet<_> =
        loaded.objects.iter().map(|o| &o.origin.file).collect();
    assert!(files.len() > 40, "found only {} sample files", files.len());
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    assert!(loaded.objects.len() > 150, "{}", loaded.objects.len());
    assert!(loaded.objects.iter().any(|o| o.kind == "VirtualService"
        && o.name == "reviews"
        && o.group() == "networking.istio.io"));
}
