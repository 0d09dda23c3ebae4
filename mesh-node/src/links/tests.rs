use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use super::*;

/// A network namespace of this test's own, deleted when dropped.
struct Netns(String);

impl Netns {
    fn add(name: String) -> Netns {
        ip(&["netns", "add", &name]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("running ip (iproute2)");
    assert!(
        status.success(),
        "ip {args:?} failed (this test needs root and veth support)"
    );
}

#[test]
fn a_link_added_or_removed_in_the_namespace_wakes_the_watcher() {
    let netns = Netns::add(format!("mesh-links-test-{}", std::process::id()));
    let path = format!("/run/netns/{}", netns.0);
    let (tx, rx) = mpsc::channel::<io::Result<&str>>();
    // The socket is opened inside the namespace, on a thread of its own; it reports when it
    // is listening and after each wake.
    std::thread::spawn(move || {
        let watch = || -> io::Result<()> {
            let file = std::fs::File::open(&path)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut events = LinkEvents::open()?;
                tx.send(Ok("listening")).ok();
                loop {
                    events.changed().await?;
                    if tx.send(Ok("changed")).is_err() {
                        return Ok(());
                    }
                }
            })
        };
        if let Err(error) = watch() {
            tx.send(Err(error)).ok();
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the watcher reports within 5 s")
            .expect("the watcher runs")
    };
    assert_eq!(next(), "listening");
    ip(&[
        "-n", &netns.0, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    assert_eq!(next(), "changed", "adding a link wakes it");
    // Whatever else the add queued is taken with the first wake: only the delete is left.
    while rx.try_recv().is_ok() {}
    ip(&["-n", &netns.0, "link", "del", "v0"]);
    assert_eq!(next(), "changed", "removing a link wakes it");
}
