//! The real eBPF programs in the real kernel: loads the embedded object, attaches connect4 to a
//! fresh cgroup v2 and checks it counts exactly the TCP connects made inside that cgroup, lets
//! them through, and that its aya-log records reach `tracing`.
//!
//! Needs root and cgroup v2 at /sys/fs/cgroup/unified; without them it fails, naming what is
//! missing (it never passes silently).

use std::{
    fs, io,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail, ensure};
use mesh_node::ebpf::{CGROUP2_MOUNT, Ebpf};
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

/// TCP connects the child makes from inside the cgroup.
const CHILD_TCP_CONNECTS: u64 = 3;
const DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn connect4_counts_tcp_connects_made_inside_its_cgroup_only() -> anyhow::Result<()> {
    require_root_and_cgroup2();
    let logs = capture_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let _in_runtime = runtime.enter();

    let cgroup = TempCgroup::create()?;
    let mut ebpf = Ebpf::load()?;
    let _link = ebpf.attach_connect4(cgroup.path())?;
    assert_eq!(
        ebpf.connect4_stats()?,
        Default::default(),
        "fresh map must start at zero"
    );

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();

    // The test process is outside the cgroup: its connect must not be counted. The program runs
    // inside connect(), so the count is final once connect() returns.
    let _own = TcpStream::connect(("127.0.0.1", port))?;
    assert_eq!(
        ebpf.connect4_stats()?.tcp_connects,
        0,
        "a connect from outside the cgroup was counted"
    );

    // The child moves itself into the cgroup, then connects N times over TCP and once over UDP
    // (bash's /dev/tcp and /dev/udp redirections call connect()).
    let child = Command::new("bash")
        .arg("-c")
        .arg(
            r#"set -e
            echo $$ > "$CGROUP_PROCS"
            for ((i = 0; i < N; i++)); do exec 3<>"/dev/tcp/127.0.0.1/$PORT"; exec 3>&-; done
            exec 3<>"/dev/udp/127.0.0.1/$PORT"; exec 3>&-"#,
        )
        .env("CGROUP_PROCS", cgroup.path().join("cgroup.procs"))
        .env("N", CHILD_TCP_CONNECTS.to_string())
        .env("PORT", port.to_string())
        .spawn()
        .context("spawning bash (the connecting child)")?;
    let status = ChildGuard(child).wait_with_deadline(DEADLINE)?;
    ensure!(status.success(), "the connecting child failed: {status}");

    let stats = ebpf.connect4_stats()?;
    assert_eq!(
        stats.tcp_connects, CHILD_TCP_CONNECTS,
        "TCP connects counted in the cgroup: {stats:?}"
    );
    assert_eq!(
        stats.other_connects, 1,
        "the UDP connect is counted apart: {stats:?}"
    );

    // The program allows every connect: the listener gets ours plus the child's.
    let accepted = accept_all(&listener, 1 + CHILD_TCP_CONNECTS as usize)?;
    assert_eq!(accepted, 1 + CHILD_TCP_CONNECTS as usize);

    // The eBPF debug log line reached tracing (forwarded asynchronously by a Tokio task).
    let expected = format!("connect4: tcp to 127.0.0.1:{port}");
    wait_for(DEADLINE, || {
        logs.contents().matches(&expected).count() as u64 >= CHILD_TCP_CONNECTS
    })
    .with_context(|| {
        format!(
            "eBPF log {expected:?} x{CHILD_TCP_CONNECTS} not seen; got:\n{}",
            logs.contents()
        )
    })?;
    Ok(())
}

/// Panics with what is missing when this test cannot run for real.
fn require_root_and_cgroup2() {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (loading eBPF and creating cgroups needs it)".to_owned());
    }
    match statfs(CGROUP2_MOUNT) {
        Ok(fs) if fs.filesystem_type() == CGROUP2_SUPER_MAGIC => {}
        Ok(_) => missing.push(format!(
            "cgroup v2 at {CGROUP2_MOUNT} (mounted, but not cgroup2)"
        )),
        Err(err) => missing.push(format!("cgroup v2 at {CGROUP2_MOUNT} ({err})")),
    }
    assert!(
        missing.is_empty(),
        "this test loads real eBPF into the kernel and cannot run without: {}",
        missing.join("; ")
    );
}

/// A fresh cgroup under the cgroup v2 mount, removed on drop (also when the test fails).
struct TempCgroup(PathBuf);

impl TempCgroup {
    fn create() -> anyhow::Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let path =
            Path::new(CGROUP2_MOUNT).join(format!("mesh-node-test-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempCgroup {
    fn drop(&mut self) {
        // rmdir fails with EBUSY while a (dying) process is still a member; retry briefly.
        let result = wait_for(DEADLINE, || match fs::remove_dir(&self.0) {
            Ok(()) => true,
            Err(err) if err.raw_os_error() == Some(nix::libc::EBUSY) => false,
            Err(err) => panic!("removing cgroup {}: {err}", self.0.display()),
        });
        if let Err(err) = result {
            eprintln!("cgroup {} left behind: {err}", self.0.display());
        }
    }
}

/// Kills the child on drop if it is still running, so the cgroup can be removed.
struct ChildGuard(Child);

impl ChildGuard {
    fn wait_with_deadline(mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let mut status = None;
        wait_for(deadline, || {
            status = self.0.try_wait().expect("waiting for the child");
            status.is_some()
        })
        .context("the connecting child did not finish")?;
        Ok(status.expect("set when wait_for succeeds"))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Accepts connections until `expected` arrived or the deadline passed; returns how many came.
fn accept_all(listener: &TcpListener, expected: usize) -> anyhow::Result<usize> {
    listener.set_nonblocking(true)?;
    let mut accepted = 0;
    let _ = wait_for(DEADLINE, || {
        loop {
            match listener.accept() {
                Ok(_) => accepted += 1,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => panic!("accept: {err}"),
            }
        }
        accepted >= expected
    });
    Ok(accepted)
}

/// Polls `done` until it returns true or `timeout` passes.
fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            bail!("still not done after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Everything `tracing` prints, captured (and echoed to stderr for `--nocapture`).
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn capture_tracing() -> CapturedLogs {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("info,mesh_ebpf=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber per test binary");
    logs
}
