//! What the node's kernel must do for ferry, in one table: `prepare-node` sets it, the
//! daemon checks it before it publishes anything of the node and on every resync.
//!
//! The daemon's container cannot write /proc/sys, so it only tries (which works where it
//! runs as root on a host, or in a test's namespace), then checks: a node that cannot
//! route pods must not lease a subnet that other nodes would route to.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::status::{Cause, Status};

pub struct Sysctl {
    /// As `sysctl` names it.
    pub name: &'static str,
    pub value: &'static str,
    /// Why ferry needs it, for the operator who finds it off.
    pub why: &'static str,
    /// Needed only when the cluster has IPv6.
    pub ipv6: bool,
}

pub const SYSCTLS: [Sysctl; 4] = [
    Sysctl {
        name: "net.ipv4.ip_forward",
        value: "1",
        why: "the node routes pods' packets between the bridge, the VXLAN device and the underlay",
        ipv6: false,
    },
    Sysctl {
        name: "net.bridge.bridge-nf-call-iptables",
        value: "1",
        why: "kube-proxy's Service rules must see traffic between two pods of one bridge, or a reply skips the reverse NAT",
        ipv6: false,
    },
    Sysctl {
        name: "net.ipv6.conf.all.forwarding",
        value: "1",
        why: "the node routes pods' IPv6 packets between the bridge, the VXLAN device and the underlay",
        ipv6: true,
    },
    Sysctl {
        name: "net.bridge.bridge-nf-call-ip6tables",
        value: "1",
        why: "kube-proxy's IPv6 Service rules must see traffic between two pods of one bridge, or a reply skips the reverse NAT",
        ipv6: true,
    },
];

/// Where the bridge's sysctls appear once br_netfilter is loaded.
const BRIDGE_DIR: &str = "/proc/sys/net/bridge";
/// A failed `modprobe` (no module, no right to load it) is tried again this seldom.
const MODPROBE_AGAIN: Duration = Duration::from_secs(60);
/// How often a node found wrong at start is checked again.
pub const RECHECK: Duration = Duration::from_secs(2);

impl Sysctl {
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/proc/sys").join(self.name.replace('.', "/"))
    }

    fn read(&self) -> std::io::Result<String> {
        std::fs::read_to_string(self.path()).map(|s| s.trim().to_string())
    }

    fn bridge(&self) -> bool {
        self.name.starts_with("net.bridge.")
    }
}

/// The sysctls a cluster with (or without) IPv6 needs.
pub fn needed(ipv6: bool) -> impl Iterator<Item = &'static Sysctl> {
    SYSCTLS.iter().filter(move |s| ipv6 || !s.ipv6)
}

/// What setting one sysctl came to.
pub enum Outcome {
    Already,
    Set,
    /// Why it could not be set.
    Failed(String),
}

/// Whether br_netfilter's sysctls are there (built in, or the module loaded).
pub fn bridge_loaded() -> bool {
    std::path::Path::new(BRIDGE_DIR).exists()
}

/// Loads br_netfilter, which most distributions build as a module; only called when
/// its sysctls are absent. `Err` says why it did not load.
pub fn load_br_netfilter() -> Result<(), String> {
    let out = Command::new("modprobe")
        .arg("br_netfilter")
        .output()
        .map_err(|e| format!("run modprobe br_netfilter: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "modprobe br_netfilter: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Sets `s` when it differs (read first: a read-only /proc/sys that already holds the
/// value is fine); `modprobe` is why the bridge's sysctls may be absent.
pub fn set(s: &Sysctl, modprobe: Option<&str>) -> Outcome {
    let path = s.path();
    match s.read() {
        Ok(v) if v == s.value => return Outcome::Already,
        Ok(_) => {}
        Err(e) => {
            let mut why = format!("{}: {e}", path.display());
            if let Some(m) = modprobe.filter(|_| s.bridge()) {
                why += &format!(" (br_netfilter is not loaded: {m})");
            }
            return Outcome::Failed(why);
        }
    }
    if let Err(e) = std::fs::write(&path, s.value) {
        return Outcome::Failed(format!("write {}: {e}", path.display()));
    }
    match s.read() {
        Ok(v) if v == s.value => Outcome::Set,
        Ok(v) => Outcome::Failed(format!("wrote {} but it reads {v}", s.value)),
        Err(e) => Outcome::Failed(format!("{}: {e}", path.display())),
    }
}

/// A sysctl found wrong: its value (or why it cannot be read) and why setting it failed.
pub struct Wrong {
    pub sysctl: &'static Sysctl,
    pub have: String,
    pub set_failed: String,
}

impl std::fmt::Display for Wrong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.sysctl;
        write!(
            f,
            "{} is {}, ferry needs {} ({}); setting it here failed: {}",
            s.name, self.have, s.value, s.why, self.set_failed
        )
    }
}

/// The fix of `wrong`, as the operator applies it.
fn fix(wrong: &[Wrong]) -> String {
    let sets: Vec<String> = wrong
        .iter()
        .map(|w| format!("{}={}", w.sysctl.name, w.sysctl.value))
        .collect();
    format!(
        "the DaemonSet's prepare-node init container sets it; on a host: sysctl -w {}",
        sets.join(" ")
    )
}

/// The daemon's side: try, check, say what is wrong (each sysctl once while it stays
/// wrong), and keep `/readyz` saying so.
pub struct NodeCheck {
    /// The sysctls wrong at the last check, each logged when it became so.
    wrong: BTreeSet<&'static str>,
    modprobe_at: Option<Instant>,
    modprobe_failed: Option<String>,
}

impl NodeCheck {
    pub fn new() -> NodeCheck {
        NodeCheck {
            wrong: BTreeSet::new(),
            modprobe_at: None,
            modprobe_failed: None,
        }
    }

    /// Tries to set every sysctl needed, then checks each: those still wrong.
    pub fn run(&mut self, ipv6: bool) -> Vec<Wrong> {
        if !bridge_loaded()
            && self
                .modprobe_at
                .is_none_or(|t| t.elapsed() >= MODPROBE_AGAIN)
        {
            self.modprobe_at = Some(Instant::now());
            self.modprobe_failed = load_br_netfilter().err();
        }
        needed(ipv6)
            .filter_map(|s| match set(s, self.modprobe_failed.as_deref()) {
                Outcome::Already | Outcome::Set => None,
                Outcome::Failed(why) => Some(Wrong {
                    sysctl: s,
                    have: s.read().unwrap_or_else(|_| "absent".into()),
                    set_failed: why,
                }),
            })
            .collect()
    }

    /// At start, before anything of the node is written to etcd: returns once every
    /// sysctl is right, checking again every `RECHECK`.
    pub async fn wait(&mut self, ipv6: bool, status: &Status) {
        loop {
            let wrong = self.run(ipv6);
            if wrong.is_empty() {
                if !self.wrong.is_empty() {
                    tracing::info!("the node's sysctls are right now; going on");
                }
                self.wrong.clear();
                status.clear(Cause::Node);
                return;
            }
            self.report(&wrong, status, true);
            tokio::time::sleep(RECHECK).await;
        }
    }

    /// On every resync: whether the node is prepared. A sysctl turned off makes the
    /// daemon not ready (never stops it: the data path it has keeps working as far as the
    /// kernel lets it).
    pub fn resync(&mut self, ipv6: bool, status: &Status) -> bool {
        let wrong = self.run(ipv6);
        if wrong.is_empty() {
            if !self.wrong.is_empty() {
                tracing::info!("the node's sysctls are right again");
                self.wrong.clear();
            }
            status.clear(Cause::Node);
            return true;
        }
        self.report(&wrong, status, false);
        false
    }

    /// Logs each sysctl that became wrong (an error at start, a warning later) and sets
    /// the readiness reason.
    fn report(&mut self, wrong: &[Wrong], status: &Status, starting: bool) {
        let fix = fix(wrong);
        for w in wrong.iter().filter(|w| !self.wrong.contains(w.sysctl.name)) {
            if starting {
                tracing::error!(
                    "node not prepared: {w}; {fix}. Waiting, checking every {}s",
                    RECHECK.as_secs()
                );
            } else {
                tracing::warn!("node not prepared: {w}; {fix}. Not ready until it is set");
            }
        }
        self.wrong = wrong.iter().map(|w| w.sysctl.name).collect();
        let each: Vec<String> = wrong.iter().map(Wrong::to_string).collect();
        status.set(
            Cause::Node,
            format!("node not prepared: {}; {fix}", each.join("; ")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_once_with_a_reason() {
        let v4: Vec<&str> = needed(false).map(|s| s.name).collect();
        assert_eq!(
            v4,
            ["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"]
        );
        assert_eq!(needed(true).count(), 4);
        for s in &SYSCTLS {
            assert!(!s.why.is_empty());
            assert!(s.path().starts_with("/proc/sys/net/"));
            assert!(!s.path().to_string_lossy().contains('.'), "{}", s.name);
        }
        let w = [Wrong {
            sysctl: &SYSCTLS[1],
            have: "0".into(),
            set_failed: "Read-only file system".into(),
        }];
        let f = fix(&w);
        assert!(
            f.contains("prepare-node")
                && f.ends_with("sysctl -w net.bridge.bridge-nf-call-iptables=1")
        );
        assert!(w[0]
            .to_string()
            .starts_with("net.bridge.bridge-nf-call-iptables is 0, ferry needs 1"));
    }
}
