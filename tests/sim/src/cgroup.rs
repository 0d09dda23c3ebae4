//! cgroup v2 directories for nodes and pods: created empty (no controllers), emptied with
//! `cgroup.kill`, removed deepest first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Where cgroup v2 is mounted on these machines (hybrid mode); plain `/sys/fs/cgroup` is
/// used when it is itself the v2 mount.
pub(crate) fn root() -> Result<PathBuf> {
    for candidate in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        if Path::new(candidate).join("cgroup.procs").exists()
            && Path::new(candidate).join("cgroup.subtree_control").exists()
        {
            return Ok(PathBuf::from(candidate));
        }
    }
    Err(Error::Missing(
        "no cgroup v2 mount found at /sys/fs/cgroup/unified or /sys/fs/cgroup; mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`".into(),
    ))
}

/// The folder holding every cgroup of a lab.
pub(crate) fn lab_dir(lab: &str) -> Result<PathBuf> {
    Ok(root()?.join("mesh-sim").join(lab))
}

pub(crate) fn create(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(Error::io(format!("creating cgroup {}", path.display())))
}

/// Process ids in this cgroup (not its children).
pub(crate) fn pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills every process in the cgroup and its children, waits until they are gone (with a
/// deadline), then removes the whole tree. Missing paths are fine.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let kill = path.join("cgroup.kill");
    if kill.exists() {
        std::fs::write(&kill, "1").map_err(Error::io(format!("writing {}", kill.display())))?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // `populated 0` once no live process is left in the subtree; removal can still meet
        // EBUSY for a moment while the kernel finishes tearing exiting tasks down.
        if !populated(path) {
            match remove_dirs(path) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    return Err(Error::Io {
                        what: format!("removing cgroup {}", path.display()),
                        source: e,
                    });
                }
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Invalid(format!(
                "cgroup {} still has processes 10 s after cgroup.kill; see its cgroup.procs",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether any live process is in the cgroup or below it.
fn populated(path: &Path) -> bool {
    std::fs::read_to_string(path.join("cgroup.events"))
        .map(|events| events.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Removes the cgroup and its children, deepest first (a cgroup with children cannot go).
fn remove_dirs(path: &Path) -> std::io::Result<()> {
    let mut dirs = Vec::new();
    collect_dirs(path, &mut dirs);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in dirs {
        match std::fs::remove_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn collect_dirs(path: &Path, out: &mut Vec<PathBuf>) {
    out.push(path.to_owned());
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}
