//! The `files` source: a folder of Kubernetes YAML (`.yaml`, `.yml`, `.json`, not recursive),
//! watched with inotify. A change to any file is applied within a fraction of a second as
//! upserts and deletes of the objects that changed; a bad file is reported and leaves the
//! objects of every other file, and its own last good ones, in place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{ObjectKey, Update};
use crate::manifest::{self, Object};

/// How long the folder must be quiet before a batch of file events is applied: writers
/// often touch a file several times in a row.
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("watching config folder {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A watched folder. Dropping the handle returned by [`FilesSource::spawn`] stops it.
pub struct FilesSource {
    dir: PathBuf,
    /// What each file held when last read well: its objects' keys and fingerprints, in file
    /// order. Enough to tell which objects a change of the file added, changed or removed,
    /// without keeping the objects (the consumer holds the model).
    files: BTreeMap<PathBuf, Vec<(ObjectKey, u64)>>,
}

/// Keeps the watch running; drop it to stop.
pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One file, read again.
enum FileRead {
    Gone,
    /// Nothing good in it: its last good objects stay.
    Unreadable(Vec<String>),
    /// Its objects by key (where a file defines a key twice, the later document wins), and
    /// the problems of the documents that were bad.
    Read(HashMap<ObjectKey, Object>, Vec<String>),
}

/// Whether a watch event may mean a file's objects changed. Opening and reading a file do
/// not: inotify reports them too (notify 8 watches `IN_OPEN`), and since reading a file after
/// an event opens it, letting them through made every reader of the folder (this source
/// included) wake every other, rereading the folder's files for ever.
fn may_change_objects(event: &notify::Result<notify::Event>) -> bool {
    match event {
        Ok(event) => {
            event.need_rescan()
                || !matches!(event.kind, EventKind::Access(kind)
                    if kind != AccessKind::Close(AccessMode::Write))
        }
        Err(_) => true,
    }
}

impl FilesSource {
    pub fn new(dir: impl Into<PathBuf>) -> FilesSource {
        FilesSource {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    /// Starts watching: sends the folder's objects one by one and [`Update::Synced`], then
    /// updates as files change, until the handle is dropped or the receiver is closed.
    pub fn spawn(mut self, updates: mpsc::Sender<Update>) -> Result<WatchHandle> {
        let (events_tx, mut events) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |event| {
            if may_change_objects(&event) {
                let _ = events_tx.send(event);
            }
        })
        .map_err(|source| self.watch_error(source))?;
        // Watch before the first read, so no change between the two is missed.
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|source| self.watch_error(source))?;
        let paths = self.manifest_paths()?;
        let task = tokio::spawn(async move {
            // One file at a time: only one file's objects are ever in memory here.
            let mut problems = Vec::new();
            for path in paths {
                let objects = match self.read(&path) {
                    FileRead::Read(objects, found) => {
                        problems.extend(found);
                        objects
                    }
                    FileRead::Unreadable(found) => {
                        problems.extend(found);
                        continue;
                    }
                    FileRead::Gone => continue,
                };
                for object in objects.into_values() {
                    if updates.send(Update::Upsert(object)).await.is_err() {
                        return;
                    }
                }
            }
            if updates.send(Update::Synced).await.is_err() {
                return;
            }
            if !problems.is_empty() && updates.send(Update::Problems(problems)).await.is_err() {
                return;
            }
            while let Some(first) = events.recv().await {
                let mut batch = vec![first];
                while let Ok(Some(event)) = tokio::time::timeout(SETTLE, events.recv()).await {
                    batch.push(event);
                }
                for update in self.apply_events(batch) {
                    if updates.send(update).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(WatchHandle {
            _watcher: watcher,
            task,
        })
    }

    fn watch_error(&self, source: notify::Error) -> Error {
        Error::Watch {
            path: self.dir.clone(),
            source,
        }
    }

    /// The folder's manifest files, sorted: where two files define one key, the later wins.
    fn manifest_paths(&self) -> Result<BTreeSet<PathBuf>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| Error::Folder {
            path: self.dir.clone(),
            source,
        })?;
        Ok(entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_manifest(p))
            .collect())
    }

    /// Reads one file; a file read well (even with some bad documents) becomes its new
    /// known content.
    fn read(&mut self, path: &Path) -> FileRead {
        if !path.exists() {
            self.files.remove(path);
            return FileRead::Gone;
        }
        let loaded = manifest::load_paths(&[path]);
        let problems: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        if loaded.objects.is_empty() && !problems.is_empty() {
            return FileRead::Unreadable(problems);
        }
        let entries = loaded
            .objects
            .iter()
            .map(|o| (ObjectKey::of(o), fingerprint(o)))
            .collect();
        self.files.insert(path.to_owned(), entries);
        let objects = loaded
            .objects
            .into_iter()
            .map(|o| (ObjectKey::of(&o), o))
            .collect();
        FileRead::Read(objects, problems)
    }

    /// Where each of `keys` is defined now (the file and the fingerprint that wins).
    fn winners(&self, keys: &BTreeSet<ObjectKey>) -> HashMap<ObjectKey, (PathBuf, u64)> {
        let mut winners = HashMap::new();
        for (path, entries) in &self.files {
            for (key, fingerprint) in entries.iter().filter(|(key, _)| keys.contains(key)) {
                winners.insert(key.clone(), (path.clone(), *fingerprint));
            }
        }
        winners
    }

    /// Re-reads the files a batch of events names (or the whole folder, when the watch lost
    /// track) and returns upserts for the objects that are new or changed, deletes for the
    /// ones that are gone.
    fn apply_events(&mut self, batch: Vec<notify::Result<notify::Event>>) -> Vec<Update> {
        let mut problems = Vec::new();
        let mut rescan = false;
        let mut paths = BTreeSet::new();
        for event in batch {
            match event {
                Ok(event) if event.need_rescan() => rescan = true,
                Ok(event) => paths.extend(event.paths.into_iter().filter(|p| is_manifest(p))),
                Err(error) => {
                    tracing::warn!(dir = %self.dir.display(), %error, "file watch error; rereading the folder");
                    rescan = true;
                }
            }
        }
        if rescan {
            match self.manifest_paths() {
                Ok(found) => {
                    paths.extend(found);
                    paths.extend(self.files.keys().cloned());
                }
                // The objects read before keep serving.
                Err(error) => problems.push(error.to_string()),
            }
        }
        // The keys a changed file held before and holds now.
        let mut affected: BTreeSet<ObjectKey> = paths
            .iter()
            .filter_map(|path| self.files.get(path))
            .flatten()
            .map(|(key, _)| key.clone())
            .collect();
        let before = self.winners(&affected);
        let mut read = HashMap::new();
        for path in paths {
            match self.read(&path) {
                FileRead::Read(objects, found) => {
                    problems.extend(found);
                    affected.extend(objects.keys().cloned());
                    read.insert(path, objects);
                }
                FileRead::Unreadable(found) => problems.extend(found),
                FileRead::Gone => {}
            }
        }
        let after = self.winners(&affected);
        let mut updates = Vec::new();
        for key in affected {
            match (before.get(&key), after.get(&key)) {
                (Some(_), None) => updates.push(Update::Delete(key)),
                (was, Some(now)) if was != Some(now) => {
                    let (path, _) = now;
                    // A file the batch did not touch: a definition another file shadowed
                    // until now.
                    let object = match read.get_mut(path) {
                        Some(objects) => objects.remove(&key),
                        None => manifest::load_paths(&[path])
                            .objects
                            .into_iter()
                            .rfind(|o| ObjectKey::of(o) == key),
                    };
                    updates.extend(object.map(Update::Upsert));
                }
                _ => {}
            }
        }
        if !problems.is_empty() {
            updates.push(Update::Problems(problems));
        }
        updates
    }
}

/// A hash of the object's JSON: a change of the object changes it (short of a 1 in 2^64
/// collision), and it costs 8 bytes where the object costs kilobytes.
fn fingerprint(object: &Object) -> u64 {
    struct Hashing(DefaultHasher);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hashing = Hashing(DefaultHasher::new());
    // Writing to a hasher cannot fail.
    let _ = serde_json::to_writer(&mut hashing, &object.value);
    hashing.0.finish()
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

#[cfg(test)]
mod tests;
