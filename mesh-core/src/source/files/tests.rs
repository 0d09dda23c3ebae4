use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::test_util::temp_dir;

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

/// The names of the objects of the first sync, sorted, and what followed it at once.
async fn first_sync(rx: &mut mpsc::Receiver<Update>) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        match next(rx).await {
            Update::Upsert(object) => names.push(object.name),
            Update::Synced => break,
            other => panic!("only upserts before Synced, got {other:?}"),
        }
    }
    names.sort();
    names
}

/// Names the update's object and says what happened to it (`upsert a mode=two`).
fn describe(update: &Update) -> String {
    match update {
        Update::Upsert(object) => {
            format!("upsert {} mode={}", object.name, object.labels()["mode"])
        }
        Update::Delete(key) => format!("delete {}", key.name),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn first_sync_then_add_change_and_delete_arrive_within_a_second() {
    let dir = temp_dir("watch");
    std::fs::write(dir.path().join("a.yaml"), namespace("a", "one")).unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let _watch = FilesSource::new(dir.path()).spawn(tx).unwrap();
    assert_eq!(first_sync(&mut rx).await, ["a"]);

    std::fs::write(dir.path().join("b.yaml"), namespace("b", "one")).unwrap();
    let Update::Upsert(added) = next(&mut rx).await else {
        panic!("upsert")
    };
    assert_eq!(added.name, "b");

    std::fs::write(dir.path().join("a.yaml"), namespace("a", "two")).unwrap();
    let Update::Upsert(changed) = next(&mut rx).await else {
        panic!("upsert")
    };
    assert_eq!(changed.labels()["mode"], "two");

    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    let Update::Delete(key) = next(&mut rx).await else {
        panic!("delete")
    };
    assert_eq!(key.to_string(), "Namespace b");
}

#[tokio::test]
async fn a_changed_file_sends_only_the_objects_that_changed_or_went() {
    let dir = temp_dir("diff");
    let file = dir.path().join("all.yaml");
    let three = [
        namespace("a", "one"),
        namespace("b", "one"),
        namespace("c", "one"),
    ];
    std::fs::write(&file, three.join("---\n")).unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let _watch = FilesSource::new(dir.path()).spawn(tx).unwrap();
    assert_eq!(first_sync(&mut rx).await, ["a", "b", "c"]);

    std::fs::write(
        &file,
        [namespace("a", "one"), namespace("b", "two")].join("---\n"),
    )
    .unwrap();
    let updates = [next(&mut rx).await, next(&mut rx).await];
    assert_eq!(
        updates.map(|u| describe(&u)),
        ["upsert b mode=two", "delete c"]
    );
}

#[tokio::test]
async fn a_later_file_shadows_an_earlier_one_until_it_lets_go() {
    let dir = temp_dir("shadow");
    std::fs::write(dir.path().join("a.yaml"), namespace("x", "from-a")).unwrap();
    std::fs::write(dir.path().join("b.yaml"), namespace("x", "from-b")).unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let _watch = FilesSource::new(dir.path()).spawn(tx).unwrap();
    let mut store = crate::config::Store::new();
    let mut sync = Vec::new();
    while !matches!(sync.last(), Some(Update::Synced)) {
        sync.push(next(&mut rx).await);
    }
    store.apply_all(sync);
    let labels = store.model().namespace_labels("x").cloned();
    assert_eq!(
        labels
            .and_then(|l| l.get("mode").map(str::to_owned))
            .as_deref(),
        Some("from-b")
    );

    std::fs::write(dir.path().join("b.yaml"), namespace("y", "from-b")).unwrap();
    let updates = [next(&mut rx).await, next(&mut rx).await];
    assert_eq!(
        updates.map(|u| describe(&u)),
        ["upsert x mode=from-a", "upsert y mode=from-b"]
    );
}

#[tokio::test]
async fn a_bad_file_is_reported_and_keeps_its_last_good_objects() {
    let dir = temp_dir("bad");
    std::fs::write(dir.path().join("a.yaml"), namespace("a", "one")).unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let _watch = FilesSource::new(dir.path()).spawn(tx).unwrap();
    assert_eq!(first_sync(&mut rx).await, ["a"]);

    std::fs::write(dir.path().join("a.yaml"), "kind: [broken\n").unwrap();
    let Update::Problems(problems) = next(&mut rx).await else {
        panic!("problems")
    };
    assert!(problems[0].contains("a.yaml"), "{problems:?}");

    // The next good write applies as a change of the last good state.
    std::fs::write(dir.path().join("a.yaml"), namespace("a", "three")).unwrap();
    let Update::Upsert(object) = next(&mut rx).await else {
        panic!("upsert")
    };
    assert_eq!(object.labels()["mode"], "three");
}

#[tokio::test]
async fn the_good_objects_of_a_file_load_beside_its_bad_ones() {
    let dir = temp_dir("mixed");
    let bad = "apiVersion: v1\nkind: Namespace\nmetadata: {}\n";
    std::fs::write(
        dir.path().join("a.yaml"),
        [namespace("a", "one").as_str(), bad].join("---\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("ignored.txt"), "not yaml").unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let _watch = FilesSource::new(dir.path()).spawn(tx).unwrap();
    assert_eq!(first_sync(&mut rx).await, ["a"]);
    let Update::Problems(problems) = next(&mut rx).await else {
        panic!("problems")
    };
    assert!(problems[0].contains("a.yaml (document 2)"), "{problems:?}");
}

#[tokio::test]
async fn a_missing_folder_is_an_error_at_start() {
    let dir = temp_dir("missing");
    let (tx, _rx) = mpsc::channel(16);
    let error = FilesSource::new(dir.path().join("missing")).spawn(tx).err();
    assert!(error.is_some_and(|e| e.to_string().contains("missing")));
}

/// Reading a manifest (as this source and every other reader of the folder does after an
/// event) must not count as a change: inotify reports the open, and when it counted, two
/// readers of one folder woke each other for ever.
#[test]
fn opening_and_reading_a_file_is_not_a_change() {
    let dir = temp_dir("opens");
    let watched = dir.path().join("a.yaml");
    let sentinel = dir.path().join("z.yaml");
    std::fs::write(&watched, namespace("a", "one")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })
    .unwrap();
    watcher
        .watch(dir.path(), RecursiveMode::NonRecursive)
        .unwrap();
    std::fs::read_to_string(&watched).unwrap();
    // Events of one watch arrive in order: once the sentinel's write is seen, the read's
    // events have all been seen.
    std::fs::write(&sentinel, namespace("z", "one")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (mut read_events, mut sentinel_changes) = (0, 0);
    while sentinel_changes == 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let event = rx
            .recv_timeout(left)
            .expect("the sentinel's write seen within 5 s");
        let paths = event.as_ref().map(|e| e.paths.clone()).unwrap_or_default();
        if paths.contains(&watched) {
            read_events += 1;
            assert!(
                !may_change_objects(&event),
                "reading a file was taken for a change: {event:?}"
            );
        } else if paths.contains(&sentinel) && may_change_objects(&event) {
            sentinel_changes += 1;
        }
    }
    assert!(
        read_events > 0,
        "inotify reported no event for the read; this test no longer checks anything"
    );
}
