//! Telling one version of a file from the next without reading it: for the files the
//! processes follow while they run (the CA root file, the CA's plug-in files, the lab CA's
//! credentials file). A Kubernetes volume update swaps in a new file (a new inode behind the
//! same name, through the `..data` symlink); an edit in place changes size or time.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    /// The version of the file at `path` (following symlinks); `None` if there is none.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}
