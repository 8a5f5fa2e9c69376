//! `ferry-ipam doctor`: this node's actual state against what ferry needs and what its
//! daemon wants, as findings in the order a person should fix them, each with what was
//! seen, why it matters, how to fix it and the docs/troubleshooting.md section. Exit 0
//! with no finding, 1 with any (notes never fail it).
//!
//! It only reads: files of the state directory, /proc/sys, /sys/class/net, the CNI
//! directories, the daemon's and kube-proxy's HTTP endpoints, and the output of `ip`,
//! `iptables-*-save` and `nft list tables` (all in ferry's image). So it runs as it is in
//! ferry's container (read-only root, read-only /proc/sys). The data path's entries are
//! judged by the daemon itself (drift.json, its last full check), not by a second diff.

mod checks;
mod http;
mod mtu;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use super::Output;

#[derive(clap::Args)]
pub struct Args {
    /// The daemon's state directory (its --state-dir): node.json, peers.json, drift.json.
    #[arg(long, env = "FERRY_STATE_DIR", value_name = "DIR", default_value = ferry_node_ipam::node_state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Where the daemon serves /readyz (its --health-addr).
    #[arg(
        long,
        env = "FERRY_HEALTH_ADDR",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:9797"
    )]
    pub health_addr: SocketAddr,
    /// The runtime's CNI config directory (the daemon's --cni-conf-dir).
    #[arg(
        long,
        env = "FERRY_CNI_CONF_DIR",
        value_name = "DIR",
        default_value = "/etc/cni/net.d"
    )]
    pub cni_conf_dir: PathBuf,
    /// The runtime's CNI plugin directory (default /opt/cni/bin; in ferry's container,
    /// where the node's is mounted at /host/opt/cni/bin, that one).
    #[arg(long, env = "FERRY_CNI_BIN_DIR", value_name = "DIR")]
    pub cni_bin_dir: Option<PathBuf>,
    /// Where kube-proxy serves /proxyMode (its --metrics-bind-address).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:10249")]
    pub kube_proxy_addr: SocketAddr,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something is broken or will break.
    Error,
    /// Something may break, or hides what is.
    Warning,
}

/// What was checked. The order is the order to fix them in: what the others depend on
/// first (a daemon that is down explains stale files; a sysctl off keeps it not ready; a
/// config of another network gives pods no ferry address at all), then the path between
/// nodes, then what rides on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    Daemon,
    NodeState,
    IpForward,
    BridgeNetfilter,
    RpFilter,
    CniConfig,
    CniPlugins,
    Mtu,
    Datapath,
    PeerHealth,
    KubeProxy,
}

impl Check {
    pub fn name(self) -> &'static str {
        match self {
            Check::Daemon => "daemon",
            Check::NodeState => "node-state",
            Check::IpForward => "ip-forward",
            Check::BridgeNetfilter => "bridge-netfilter",
            Check::RpFilter => "rp-filter",
            Check::CniConfig => "cni-config",
            Check::CniPlugins => "cni-plugins",
            Check::Mtu => "mtu",
            Check::Datapath => "datapath",
            Check::PeerHealth => "peer-health",
            Check::KubeProxy => "kube-proxy",
        }
    }

    /// Its section of docs/troubleshooting.md (each check's heading is its name).
    pub fn doc(self) -> String {
        format!("docs/troubleshooting.md#{}", self.name())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub check: Check,
    pub saw: String,
    pub why: String,
    pub fix: String,
    pub doc: String,
}

impl Finding {
    pub fn new(severity: Severity, check: Check, saw: String, why: &str, fix: String) -> Self {
        Finding {
            severity,
            check,
            saw,
            why: why.to_string(),
            fix,
            doc: check.doc(),
        }
    }
}

/// Something worth knowing that is no fault (kube-proxy not on the node, a mend the
/// daemon just made).
#[derive(Debug, Clone, Serialize)]
pub struct Note {
    pub check: Check,
    pub text: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub findings: Vec<Finding>,
    pub notes: Vec<Note>,
}

impl Report {
    pub fn find(&mut self, f: Finding) {
        self.findings.push(f);
    }

    pub fn note(&mut self, check: Check, text: String) {
        self.notes.push(Note { check, text });
    }

    /// Findings in the order to fix them: by check, errors before warnings within one,
    /// otherwise as found (stable).
    pub fn order(&mut self) {
        self.findings.sort_by_key(|f| (f.check, f.severity));
        self.notes.sort_by_key(|n| n.check);
    }
}

/// The node's CNI bin dir as this process sees it: ferry's container mounts it under
/// /host (the image has no /opt/cni/bin of its own).
const BIN_DIRS: [&str; 2] = ["/opt/cni/bin", "/host/opt/cni/bin"];

impl Args {
    pub fn bin_dir(&self) -> PathBuf {
        if let Some(d) = &self.cni_bin_dir {
            return d.clone();
        }
        let found = BIN_DIRS.iter().find(|d| std::path::Path::new(d).is_dir());
        PathBuf::from(found.unwrap_or(&BIN_DIRS[0]))
    }
}

pub fn run(args: Args) -> Result<i32> {
    let mut report = checks::run(&args);
    report.order();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print(&report),
    }
    Ok(i32::from(!report.findings.is_empty()))
}

fn print(r: &Report) {
    let on = r
        .node
        .as_deref()
        .map_or(String::new(), |n| format!(" on {n}"));
    match r.findings.len() {
        0 => println!("no findings{on}"),
        n => println!(
            "{n} finding{}{on}, in the order to fix them:",
            if n == 1 { "" } else { "s" }
        ),
    }
    for (i, f) in r.findings.iter().enumerate() {
        let sev = match f.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
        };
        println!();
        println!("{}. {sev} {}", i + 1, f.check.name());
        println!("   saw: {}", f.saw);
        println!("   why: {}", f.why);
        println!("   fix: {}", f.fix);
        println!("   doc: {}", f.doc);
    }
    if !r.notes.is_empty() {
        println!();
        println!("notes:");
        for n in &r.notes {
            println!("- {}: {}", n.check.name(), n.text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(check: Check, severity: Severity, saw: &str) -> Finding {
        Finding::new(severity, check, saw.into(), "why", "fix".into())
    }

    #[test]
    fn findings_come_in_the_order_to_fix_them() {
        let mut r = Report::default();
        r.find(f(Check::KubeProxy, Severity::Error, "k"));
        r.find(f(Check::Mtu, Severity::Warning, "m1"));
        r.find(f(Check::BridgeNetfilter, Severity::Error, "b"));
        r.find(f(Check::Mtu, Severity::Error, "m2"));
        r.find(f(Check::Daemon, Severity::Error, "d"));
        r.find(f(Check::Mtu, Severity::Error, "m3"));
        r.order();
        let saw: Vec<&str> = r.findings.iter().map(|f| f.saw.as_str()).collect();
        assert_eq!(saw, ["d", "b", "m2", "m3", "m1", "k"]);
        let v = serde_json::to_value(&r).unwrap();
        let first = &v["findings"][0];
        for k in ["severity", "check", "saw", "why", "doc"] {
            assert!(first.get(k).is_some(), "{k} missing in {first}");
        }
        assert_eq!(first["check"], "daemon");
        assert_eq!(first["severity"], "error");
        assert_eq!(first["doc"], "docs/troubleshooting.md#daemon");
        assert_eq!(v["findings"][1]["check"], "bridge-netfilter");
    }

    #[test]
    fn every_check_is_named_as_it_serializes() {
        for c in [
            Check::Daemon,
            Check::NodeState,
            Check::IpForward,
            Check::BridgeNetfilter,
            Check::RpFilter,
            Check::CniConfig,
            Check::CniPlugins,
            Check::Mtu,
            Check::Datapath,
            Check::PeerHealth,
            Check::KubeProxy,
        ] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.name());
        }
    }
}
