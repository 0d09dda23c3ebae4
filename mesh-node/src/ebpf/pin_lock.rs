//! One mesh-node per pin folder: a running agent holds an exclusive `flock` on its bpffs
//! folder for as long as it lives (the kernel drops it when the process exits, however it
//! exits). A second agent waits for the first to be gone instead of reprogramming the maps
//! under it, and `mesh-node uninstall` refuses to pull the programs from under a running
//! agent.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{Error, Result};

/// How long a starting agent waits for the one before it (a restart still shutting down).
const WAIT: Duration = Duration::from_secs(60);

/// The lock on a pin folder; released on drop.
#[derive(Debug)]
pub struct PinLock {
    path: PathBuf,
    _dir: Flock<fs::File>,
}

impl PinLock {
    /// Creates the folder if need be and locks it; `Ok(None)` while another process holds it.
    pub fn try_acquire(pin_dir: &Path) -> Result<Option<PinLock>> {
        let io = |source| Error::PinDir {
            path: pin_dir.to_owned(),
            source,
        };
        loop {
            fs::create_dir_all(pin_dir).map_err(io)?;
            let dir = fs::File::open(pin_dir).map_err(io)?;
            let locked = match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => locked,
                Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, errno)) => return Err(io(errno.into())),
            };
            // The holder may have removed the folder (an uninstall) while this one waited:
            // the lock counts only on the folder the path names now.
            let held = locked.metadata().map_err(io)?.ino();
            if fs::metadata(pin_dir).is_ok_and(|now| now.ino() == held) {
                return Ok(Some(PinLock {
                    path: pin_dir.to_owned(),
                    _dir: locked,
                }));
            }
        }
    }

    /// Locks the folder, waiting up to `WAIT` for a mesh-node that holds it to exit.
    pub async fn acquire(pin_dir: &Path) -> Result<PinLock> {
        Self::acquire_within(pin_dir, WAIT).await
    }

    async fn acquire_within(pin_dir: &Path, wait: Duration) -> Result<PinLock> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut told = false;
        loop {
            if let Some(lock) = Self::try_acquire(pin_dir)? {
                return Ok(lock);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::PinsInUse {
                    path: pin_dir.to_owned(),
                });
            }
            if !told {
                tracing::warn!(pin_dir = %pin_dir.display(), "another mesh-node holds the pin folder; waiting for it to exit");
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder of its own under the temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Scratch {
            let path =
                std::env::temp_dir().join(format!("mesh-pin-lock-{}-{test}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let tmp = Scratch::new("one");
        let dir = tmp.0.join("pins");
        let first = PinLock::try_acquire(&dir).unwrap().expect("a free folder");
        assert!(dir.is_dir(), "the folder is created");
        assert!(PinLock::try_acquire(&dir).unwrap().is_none(), "held twice");
        drop(first);
        assert!(
            PinLock::try_acquire(&dir).unwrap().is_some(),
            "not released"
        );
    }

    #[test]
    fn a_folder_removed_by_the_holder_is_recreated_and_locked_afresh() {
        let tmp = Scratch::new("removed");
        let dir = tmp.0.join("pins");
        let first = PinLock::try_acquire(&dir).unwrap().unwrap();
        let old = fs::metadata(&dir).unwrap().ino();
        fs::remove_dir(&dir).unwrap();
        // The old inode stays locked; a new folder at the path is free.
        let second = PinLock::try_acquire(&dir).unwrap().expect("the new folder");
        assert_ne!(fs::metadata(second.path()).unwrap().ino(), old);
        drop(first);
    }

    #[tokio::test]
    async fn acquire_waits_for_the_holder_and_gives_up_naming_the_folder() {
        let tmp = Scratch::new("wait");
        let dir = tmp.0.join("pins");
        let held = PinLock::try_acquire(&dir).unwrap().unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(held);
        });
        PinLock::acquire_within(&dir, Duration::from_secs(10))
            .await
            .expect("the lock once its holder let go");
        release.await.unwrap();

        let _held = PinLock::try_acquire(&dir).unwrap().unwrap();
        let error = PinLock::acquire_within(&dir, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::PinsInUse { .. }), "{error}");
        assert!(error.to_string().contains(&dir.display().to_string()));
    }
}
