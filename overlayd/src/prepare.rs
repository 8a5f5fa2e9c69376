//! `ferry-overlayd prepare-node`: what the node's kernel must do for ferry, turned on by
//! the DaemonSet's privileged init container.

use std::process::ExitCode;

use crate::args::Args;
use crate::node_check::{self, Outcome};

/// Sets every sysctl of `node_check::SYSCTLS` the cluster needs (the IPv6 ones only with
/// `--cluster-cidr-v6`), one line each on stdout; exit 1 naming each it could not set.
pub fn run(args: &Args) -> ExitCode {
    let ipv6 = args.cluster_cidr_v6.is_some();
    let modprobe = if node_check::bridge_loaded() {
        None
    } else {
        node_check::load_br_netfilter().err()
    };
    let mut failed = Vec::new();
    for s in node_check::needed(ipv6) {
        match node_check::set(s, modprobe.as_deref()) {
            Outcome::Already => println!("{}: already {}", s.name, s.value),
            Outcome::Set => println!("{}: set to {}", s.name, s.value),
            Outcome::Failed(why) => {
                println!("{}: not set to {}: {why}", s.name, s.value);
                failed.push(format!("{} ({why}; ferry needs it: {})", s.name, s.why));
            }
        }
    }
    if failed.is_empty() {
        return ExitCode::SUCCESS;
    }
    tracing::error!(
        "prepare-node could not set {}: {}. It needs root with a writable /proc/sys (a privileged container) and, for the bridge's sysctls, the br_netfilter module",
        if failed.len() == 1 { "this sysctl" } else { "these sysctls" },
        failed.join("; ")
    );
    ExitCode::FAILURE
}
