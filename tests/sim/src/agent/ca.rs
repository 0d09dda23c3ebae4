//! The mesh CA in the lab: its folder (`ca/`: the plug-in CA files, the root it publishes,
//! the credentials map), the per-node and per-pod credentials (the stand-ins for
//! service-account tokens), and starting and restarting `mesh-node ca` on the first node.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{CA_PORT, log_filter, node_cgroup, stop_cgroup, tcp_open_in};
use crate::cgroup;
use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::state::{Node, Pod};

impl Lab {
    pub(super) fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// The CA's credentials map: `{"<token>": "<node>" | {"pod": "<ns>/<name>"}}`.
    pub(super) fn credentials_file(&self) -> PathBuf {
        self.ca_dir().join("node-credentials.json")
    }

    fn read_credentials(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let path = self.credentials_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                Error::Invalid(format!(
                    "{} is damaged ({e}); restart the mesh or remove the lab with `sim down`",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(serde_json::Map::new()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()))(e)),
        }
    }

    fn write_credentials(
        &self,
        credentials: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let dir = self.ca_dir();
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        // Renamed into place: the CA re-reads the file when it changes, never half of it.
        write_private_atomically(
            &self.credentials_file(),
            &serde_json::Value::Object(credentials).to_string(),
        )
    }

    /// Gives a pod a CA credential of its own (the stand-in for its projected service-account
    /// token): a fresh token in `path` (mode 0600) and in the CA's credentials map as
    /// `{"pod": "<ns>/<name>"}`, which the CA honours for that pod's own service account
    /// only. Works whether or not the CA runs (`start_ca` keeps pods' entries).
    pub(crate) fn grant_pod_credential(&self, pod: &Pod, path: &Path) -> Result<()> {
        let token = fresh_token();
        write_private(path, &token)?;
        let mut credentials = self.read_credentials()?;
        let owner = serde_json::json!({"pod": pod.key()});
        credentials.retain(|_, v| *v != owner);
        credentials.insert(token, owner);
        self.write_credentials(credentials)
    }

    /// Removes a pod's credential from the CA's credentials map.
    pub(crate) fn revoke_pod_credential(&self, pod: &Pod) -> Result<()> {
        let mut credentials = self.read_credentials()?;
        let owner = serde_json::json!({"pod": pod.key()});
        let before = credentials.len();
        credentials.retain(|_, v| *v != owner);
        if credentials.len() == before {
            return Ok(());
        }
        self.write_credentials(credentials)
    }

    /// The environment of a pod process that talks to the mesh CA with its own credential
    /// (a waypoint): the config folder the agents read, the CA's address and root, the
    /// credential file, the trust domain and the agents' log filter.
    pub(crate) fn ca_client_env(&self, credential: &Path) -> Result<Vec<(&'static str, OsString)>> {
        let (_, ca_addr) = self.ca_node()?;
        Ok(vec![
            ("MESH_CONFIG_DIR", self.config_dir().into()),
            ("CA_ADDR", ca_addr.to_string().into()),
            ("CA_ROOT", self.ca_dir().join("root-cert.pem").into()),
            ("CA_CREDENTIAL_FILE", credential.into()),
            ("TRUST_DOMAIN", "cluster.local".into()),
            ("RUST_LOG", log_filter().into()),
        ])
    }

    /// The node the CA runs on, and its gRPC address.
    pub(super) fn ca_node(&self) -> Result<(Node, SocketAddr)> {
        let node = self
            .state
            .nodes
            .first()
            .ok_or_else(|| Error::Invalid("the lab has no nodes".into()))?
            .clone();
        let addr = SocketAddr::from((node.ip, CA_PORT));
        Ok((node, addr))
    }

    /// Writes a fresh credential per node (keeping those of pods still there), starts the CA
    /// on the first node and waits until it serves and has published its root. The CA signs
    /// with plug-in CA files (`ca/cacerts`, Istio's `cacerts` layout: an intermediate under a
    /// root), made by `mesh-node ca-init` at the lab's first start, so the root outlives a
    /// restart of the CA as it does in a cluster.
    pub(super) fn start_ca(&self) -> Result<()> {
        let (node, addr) = self.ca_node()?;
        let dir = self.ca_dir();
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let mut credentials = self.read_credentials()?;
        credentials.retain(|_, v| {
            v.get("pod")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|pod| self.state.pods.contains_key(pod))
        });
        for node in &self.state.nodes {
            let token = fresh_token();
            write_private(&dir.join(format!("{}.credential", node.name)), &token)?;
            credentials.insert(token, node.name.clone().into());
        }
        self.write_credentials(credentials)?;
        let credentials_file = self.credentials_file();
        let root = dir.join("root-cert.pem");
        let _ = std::fs::remove_file(&root);
        let cacerts = dir.join("cacerts");
        if !cacerts.is_dir() {
            self.ca_init(&cacerts)?;
        }
        let config_dir = self.config_dir();
        self.spawn_mesh_node(
            &node,
            "ca",
            "the mesh CA",
            |command| {
                command
                    .arg("ca")
                    .args(["--listen", &addr.to_string()])
                    .arg("--config-dir")
                    .arg(&config_dir)
                    .arg("--node-credentials")
                    .arg(&credentials_file)
                    .arg("--ca-dir")
                    .arg(&cacerts)
                    .arg("--root-cert-out")
                    .arg(&root);
            },
            || root.is_file() && tcp_open_in(&node.netns, addr),
        )
    }

    /// Writes a new root and intermediate into `cacerts` with `mesh-node ca-init`.
    fn ca_init(&self, cacerts: &Path) -> Result<()> {
        let binary = self.mesh_binary()?;
        let output = Command::new(&binary)
            .args(["ca-init", "--out"])
            .arg(cacerts)
            .stdin(Stdio::null())
            .output()
            .map_err(Error::io(format!("running {} ca-init", binary.display())))?;
        if !output.status.success() {
            return Err(Error::Invalid(format!(
                "{} ca-init --out {} failed: {}",
                binary.display(),
                cacerts.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Stops the CA (SIGTERM) and starts it again on the same CA files, with fresh node
    /// credentials (the agents read theirs again for every request).
    pub fn restart_ca(&self) -> Result<()> {
        let (node, _) = self.ca_node()?;
        stop_cgroup(
            &node_cgroup(&node, "ca"),
            nix::sys::signal::Signal::SIGTERM,
            "the mesh CA",
        )?;
        self.start_ca()
    }

    /// The CA's Prometheus metrics (`/metrics` on [`super::CA_METRICS_PORT`]).
    pub fn ca_metrics(&self) -> Result<String> {
        let (node, _) = self.ca_node()?;
        self.node_page(&node, super::CA_METRICS_PORT, "/metrics")
    }

    /// An error if the CA already runs: a second one would find the CA port taken.
    pub(super) fn refuse_a_second_ca(&self) -> Result<()> {
        let (node, _) = self.ca_node()?;
        let running = cgroup::pids(&node_cgroup(&node, "ca"));
        if running.is_empty() {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "the mesh CA runs already on {} (pid {running:?}); stop the mesh first",
            node.name
        )))
    }
}

/// A random credential: 32 bytes, hex.
fn fresh_token() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Writes a file only root may read, renamed into place so a reader never sees half of it.
fn write_private_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write_private(&tmp, text)?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!("renaming {}", tmp.display())))
}

/// Writes a file only root may read (credentials).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("creating {}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(Error::io(format!("writing {}", path.display())))
}
