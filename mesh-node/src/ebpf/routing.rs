//! The policy routing the inbound capture needs: a packet the tc program assigned to the
//! proxy's listener carries [`MARK`], and a rule sends marked packets to table [`TABLE`],
//! whose only route is `local 0.0.0.0/0 dev lo`, so the kernel delivers them locally rather
//! than forwarding them to the pod (the same routing TPROXY setups use; no iptables).
//!
//! Set with iproute2's `ip` in the node's network namespace.

use std::process::Command;

use super::{Error, Result};

/// The packet mark (and mask) of captured inbound packets.
pub(super) const MARK: u32 = 0x0080_0000;
/// The routing table of captured packets and the rule's priority (the listener's port).
pub(super) const TABLE: u32 = 15006;

fn ip(args: &[&str]) -> Result<String> {
    let command = format!("ip {}", args.join(" "));
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::Routing {
            command: command.clone(),
            detail: format!("{e} (iproute2's `ip` is needed)"),
        })?;
    if !output.status.success() {
        return Err(Error::Routing {
            command,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn rule_args(verb: &str) -> Vec<String> {
    [
        "-4",
        "rule",
        verb,
        "priority",
        &TABLE.to_string(),
        "fwmark",
        &format!("{MARK:#x}/{MARK:#x}"),
        "lookup",
        &TABLE.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Installs the rule and the route unless they are there already.
pub(super) fn ensure() -> Result<()> {
    let table = TABLE.to_string();
    ip(&[
        "-4",
        "route",
        "replace",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        &table,
    ])?;
    let rules = ip(&["-4", "rule", "show", "priority", &table])?;
    if !rules.contains(&format!("lookup {table}")) {
        let args = rule_args("add");
        ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    Ok(())
}

/// Removes the rule and the table's routes; what was there is returned, for the report.
pub(super) fn remove() -> Result<Vec<String>> {
    let table = TABLE.to_string();
    let mut removed = Vec::new();
    let rules = ip(&["-4", "rule", "show", "priority", &table])?;
    for _ in rules.lines().filter(|l| !l.trim().is_empty()) {
        ip(&["-4", "rule", "del", "priority", &table])?;
        removed.push(format!("ip rule priority {table}"));
    }
    // A table that never had a route does not exist: nothing to remove then.
    let routes = ip(&["-4", "route", "show", "table", &table]).unwrap_or_default();
    if !routes.trim().is_empty() {
        ip(&["-4", "route", "flush", "table", &table])?;
        removed.push(format!("ip route table {table}"));
    }
    Ok(removed)
}
