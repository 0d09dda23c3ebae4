//! Starting processes inside a pod: its network namespace, its cgroup, a private mount
//! namespace where the pod's `/etc/hosts` and `/etc/resolv.conf` are bind-mounted, and a UTS
//! namespace with the pod's hostname — what a container runtime would give the container.
#![allow(unsafe_code)] // pre_exec runs between fork and exec; the kernel calls need libc.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

/// What a process needs to enter a pod.
pub(crate) struct PodContext<'a> {
    pub(crate) netns: &'a str,
    pub(crate) cgroup: &'a Path,
    pub(crate) hosts: &'a Path,
    pub(crate) resolv: &'a Path,
    pub(crate) hostname: &'a str,
    /// A new session, so the process outlives the terminal that started the lab.
    pub(crate) detach: bool,
}

/// Everything opened and allocated before fork: the child may only make system calls.
struct Prepared {
    netns: OwnedFd,
    cgroup_procs: OwnedFd,
    hosts: CString,
    resolv: CString,
    hostname: CString,
    detach: bool,
}

/// Sends a command's stdout and stderr to the end of a log file.
pub(crate) fn log_to(command: &mut Command, path: &Path) -> Result<()> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(Error::io(format!("opening {}", path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(Error::io("duplicating a log file"))?;
    command.stdout(log).stderr(log_err);
    Ok(())
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("path {} contains a NUL byte", path.display())))
}

/// Configures `command` to start inside the pod.
pub(crate) fn enter_pod(command: &mut Command, pod: &PodContext<'_>) -> Result<()> {
    let netns_path = format!("{}/{}", crate::net::NETNS_DIR, pod.netns);
    let netns = File::open(&netns_path).map_err(Error::io(format!("opening {netns_path}")))?;
    let procs_path = pod.cgroup.join("cgroup.procs");
    let cgroup_procs = OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(Error::io(format!("opening {}", procs_path.display())))?;
    let prepared = Prepared {
        netns: netns.into(),
        cgroup_procs: cgroup_procs.into(),
        hosts: c_path(pod.hosts)?,
        resolv: c_path(pod.resolv)?,
        hostname: CString::new(pod.hostname)
            .map_err(|_| Error::Invalid("hostname contains a NUL byte".into()))?,
        detach: pod.detach,
    };
    // SAFETY: the closure only makes async-signal-safe system calls on values prepared
    // before fork; it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || prepared.enter());
    }
    Ok(())
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Prepared {
    /// Runs in the child between fork and exec.
    fn enter(&self) -> io::Result<()> {
        // SAFETY: plain system calls with valid fds and NUL-terminated strings owned by self.
        unsafe {
            // Join the cgroup first, so even a failing start is cleaned up with the pod.
            let written = libc::write(self.cgroup_procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
            if written != 1 {
                return Err(io::Error::last_os_error());
            }
            check(libc::setns(self.netns.as_raw_fd(), libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            for (source, target) in [
                (&self.hosts, c"/etc/hosts"),
                (&self.resolv, c"/etc/resolv.conf"),
            ] {
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            check(libc::sethostname(
                self.hostname.as_ptr(),
                self.hostname.as_bytes().len(),
            ))?;
            if self.detach {
                check(libc::setsid())?;
            }
        }
        Ok(())
    }
}
