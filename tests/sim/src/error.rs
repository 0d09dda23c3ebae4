//! The lab's one error type: every message names the object or command and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the simulated cluster must run as root: it creates network namespaces, veths, cgroups and nftables rules"
    )]
    NotRoot,
    #[error("{0}")]
    Missing(String),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{}", .0.join("\n"))]
    Manifests(Vec<String>),
    #[error("lab {lab:?} is not up (no {}); start it with `cargo xtask sim up`", .state.display())]
    NotUp { lab: String, state: PathBuf },
    #[error("lab {0:?} is already up; use `sim apply` to change it or `sim down` first")]
    AlreadyUp(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
