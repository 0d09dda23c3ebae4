//! The `files` source: a folder of Kubernetes YAML (`.yaml`, `.yml`, `.json`, not recursive),
//! watched with inotify. A change to any file is applied within a fraction of a second as
//! upserts and deletes of the objects that changed; a bad file is reported and leaves the
//! objects of every other file, and its own last good ones, in place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
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
    /// The objects each file held when last read well.
    files: BTreeMap<PathBuf, Vec<Object>>,
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

impl FilesSource {
    pub fn new(dir: impl Into<PathBuf>) -> FilesSource {
        FilesSource {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    /// Starts watching: sends a [`Update::Snapshot`] of the folder, then updates as files
    /// change, until the handle is dropped or the receiver is closed.
    pub fn spawn(mut self, updates: mpsc::Sender<Update>) -> Result<WatchHandle> {
        let (events_tx, mut events) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = events_tx.send(event);
        })
        .map_err(|source| self.watch_error(source))?;
        // Watch before the first read, so no change between the two is missed.
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .map_err(|source| self.watch_error(source))?;
        let problems = self.rescan()?;
        let task = tokio::spawn(async move {
            let snapshot = Update::Snapshot(self.objects().into_values().collect());
            if updates.send(snapshot).await.is_err() {
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

    /// Reads the whole folder once, returning the objects (keyed) and any problems.
    pub fn load(dir: impl Into<PathBuf>) -> Result<(Vec<Object>, Vec<String>)> {
        let mut source = FilesSource::new(dir);
        let problems = source.rescan()?;
        Ok((source.objects().into_values().collect(), problems))
    }

    /// Re-reads every manifest file in the folder.
    fn rescan(&mut self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| Error::Folder {
            path: self.dir.clone(),
            source,
        })?;
        let paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_manifest(p))
            .collect();
        self.files.retain(|path, _| paths.contains(path));
        let mut problems = Vec::new();
        for path in paths {
            problems.extend(self.read(&path));
        }
        Ok(problems)
    }

    /// Reads one file; on errors keeps the file's last good objects and returns the problems.
    fn read(&mut self, path: &Path) -> Vec<String> {
        if !path.exists() {
            self.files.remove(path);
            return Vec::new();
        }
        let loaded = manifest::load_paths(&[path]);
        let problems: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        let unreadable = loaded.objects.is_empty() && !problems.is_empty();
        if !unreadable {
            self.files.insert(path.to_owned(), loaded.objects);
        }
        problems
    }

    /// All objects by key; where two files define one key, the later file name wins.
    fn objects(&self) -> BTreeMap<ObjectKey, Object> {
        self.files
            .values()
            .flatten()
            .map(|o| (ObjectKey::of(o), o.clone()))
            .collect()
    }

    fn apply_events(&mut self, batch: Vec<notify::Result<notify::Event>>) -> Vec<Update> {
        let before = self.objects();
        let mut problems = Vec::new();
        let mut rescan = false;
        let mut paths = Vec::new();
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
            match self.rescan() {
                Ok(found) => problems.extend(found),
                Err(error) => problems.push(error.to_string()),
            }
        } else {
            paths.sort();
            paths.dedup();
            for path in paths {
                problems.extend(self.read(&path));
            }
        }
        let after = self.objects();
        let mut updates = diff(&before, &after);
        if !problems.is_empty() {
            updates.push(Update::Problems(problems));
        }
        updates
    }
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// Upserts for new or changed objects, deletes for vanished ones.
fn diff(before: &BTreeMap<ObjectKey, Object>, after: &BTreeMap<ObjectKey, Object>) -> Vec<Update> {
    let mut updates = Vec::new();
    for (key, object) in after {
        if before.get(key).is_none_or(|old| old.value != object.value) {
            updates.push(Update::Upsert(object.clone()));
        }
    }
    for key in before.keys() {
        if !after.contains_key(key) {
            updates.push(Update::Delete(key.clone()));
        }
    }
    updates
}

#[cfg(test)]
mod tests;
