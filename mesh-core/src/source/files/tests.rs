use std::time::Duration;

use tokio::sync::mpsc;

use super::*;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("mesh-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn namespace(name: &str, label: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    mode: {label}\n"
    )
}

async fn next(rx: &mut mpsc::Receiver<Update>) -> Update {
    tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("an update within 1 s")
        .expect("the source is running")
}

#[tokio::test]
async fn snapshot_then_add_change_and_delete_arrive_within_a_second() {
    let dir = TempDir::new("watch");
    std::fs::write(dir.0.join("a.yaml"), namespace("a", "one")).unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let _watch = FilesSource::new(&dir.0).spawn(tx).unwrap();

    let Update::Snapshot(objects) = next(&mut rx).await else {
        panic!("snapshot first")
    };
    assert_eq!(objects.len(), 1);

    std::fs::write(dir.0.join("b.yaml"), namespace("b", "one")).unwrap();
    let Update::Upsert(added) = next(&mut rx).await else {
        panic!("upsert")
    };
    assert_eq!(added.name, "b");

    std::fs::write(dir.0.join("a.yaml"), namespace("a", "two")).unwrap();
    let Update::Upsert(changed) = next(&mut rx).await else {
        panic!("upsert")
    };
    assert_eq!(changed.labels()["mode"], "two");

    std::fs::remove_file(dir.0.join("b.yaml")).unwrap();
    let Update::Delete(key) = next(&mut rx).await else {
        panic!("delete")
    };
    assert_eq!(key.to_string(), "Namespace b");
}

#[tokio::test]
async fn a_bad_file_is_reported_and_keeps_its_last_good_objects() {
    let dir = TempDir::new("bad");
    std::fs::write(dir.0.join("a.yaml"), namespace("a", "one")).unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let _watch = FilesSource::new(&dir.0).spawn(tx).unwrap();
    assert!(matches!(next(&mut rx).await, Update::Snapshot(_)));

    std::fs::write(dir.0.join("a.yaml"), "kind: [broken\n").unwrap();
    let Update::Problems(problems) = next(&mut rx).await else {
        panic!("problems")
    };
    assert!(problems[0].contains("a.yaml"), "{problems:?}");

    // The next good write applies as a change of the last good state.
    std::fs::write(dir.0.join("a.yaml"), namespace("a", "three")).unwrap();
    let Update::Upsert(object) = next(&mut rx).await else {
        panic!("upsert")
    };
    assert_eq!(object.labels()["mode"], "three");
}

#[test]
fn load_reads_the_folder_once() {
    let dir = TempDir::new("load");
    std::fs::write(dir.0.join("a.yaml"), namespace("a", "one")).unwrap();
    std::fs::write(dir.0.join("ignored.txt"), "not yaml").unwrap();
    let (objects, problems) = FilesSource::load(&dir.0).unwrap();
    assert_eq!(objects.len(), 1);
    assert!(problems.is_empty());
    assert!(FilesSource::load(dir.0.join("missing")).is_err());
}
