//! The lab benchmark drivers run end to end (root: each builds a lab). The figures are the
//! benchmarks' to print, never a test's to judge; this checks that each driver still gets
//! through every path and prints its table and its targets. A driver nothing exercised once
//! stopped at its first round for several sessions unnoticed.
//!
//! Each runs briefly (`--debug-server`, one round, one-second loads), one after another, as
//! they would compete for the two CPUs.

use std::path::Path;
use std::process::Command;

/// `xtask bench ARGS…`: its output; panics with it unless the driver succeeded and printed
/// every one of `expected`.
fn bench(args: &[&str], expected: &[&str]) {
    let xtask = Path::new(env!("CARGO_BIN_EXE_xtask"));
    let mut command = Command::new(xtask);
    command.arg("bench").args(args);
    // The mesh-node `cargo test` built, when it is there; else the driver builds one.
    let mesh_node = xtask.with_file_name("mesh-node");
    if mesh_node.is_file() {
        command.arg("--mesh-node").arg(mesh_node);
    }
    let output = command.output().expect("running xtask");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "xtask bench {} failed ({}); it needs root, the lab's tools (`cargo xtask setup`) and \
         bpffs:\n{text}",
        args.join(" "),
        output.status
    );
    for line in expected {
        assert!(
            text.contains(line),
            "xtask bench {}: {line:?} is missing from its output:\n{text}",
            args.join(" ")
        );
    }
}

#[test]
fn each_lab_benchmark_driver_runs_end_to_end() {
    bench(
        &[
            "redirect",
            "--debug-server",
            "--samples",
            "40",
            "--rounds",
            "1",
        ],
        &[
            "direct (no mesh)",
            "eBPF redirect, fast path off",
            "eBPF redirect, fast path on",
            "eBPF redirect + inbound capture",
            "netfilter DNAT (iptables REDIRECT)",
            "target: the eBPF redirect adds at most half of what netfilter's NAT adds",
        ],
    );
    bench(
        &["mesh", "--debug-server", "--seconds", "1", "--rounds", "1"],
        &[
            "held connections answered 200",
            "targets (worst agent",
            "one-stream throughput",
        ],
    );
    bench(
        &["waypoint", "--debug-server", "--seconds", "1"],
        &[
            "waypoint  h2load -c16 -m10, h2c",
            "wp+JWT    wrk, one JWT",
            "wp+JWT    wrk, 1000 JWTs in turn",
            "waypoint targets",
        ],
    );
}
