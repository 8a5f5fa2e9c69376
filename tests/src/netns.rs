//! Network namespaces made for one test and removed when dropped, on every path.

use std::path::PathBuf;
use std::process::{Command, Output};

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = crate::unique(prefix);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// A name for the network namespace of process `pid` (one a runtime made), so the
    /// same helpers reach it; dropping it removes only the name.
    pub fn attach(prefix: &str, pid: u32) -> Netns {
        let name = crate::unique(prefix);
        run_ok(Command::new("ip").args(["netns", "attach", &name, &pid.to_string()]));
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs a shell command inside; panics with its output when it fails.
    pub fn sh(&self, cmd: &str) -> String {
        stdout_ok(self.try_sh(cmd), &self.name, cmd)
    }

    pub fn try_sh(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("run ip netns exec")
    }

    /// Whether a link exists here.
    pub fn has_link(&self, name: &str) -> bool {
        self.try_sh(&format!("ip link show dev {name}"))
            .status
            .success()
    }

    /// Names of the links here.
    pub fn links(&self) -> Vec<String> {
        link_names(&self.sh("ip -o link show"))
    }

    /// Names of the links here in link group `group`.
    pub fn links_in_group(&self, group: u32) -> Vec<String> {
        link_names(&self.sh(&format!("ip -o link show group {group}")))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects two namespaces with a veth pair, addresses given as CIDRs.
pub fn link(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    run_ok(Command::new("ip").args([
        "-n", &a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]));
    a.sh(&format!(
        "ip addr add {a_addr} dev {a_if} && ip link set {a_if} up"
    ));
    b.sh(&format!(
        "ip addr add {b_addr} dev {b_if} && ip link set {b_if} up"
    ));
}

/// The stdout of a shell command run in `place`; panics with its output when it failed.
pub fn stdout_ok(out: Output, place: &str, cmd: &str) -> String {
    assert!(
        out.status.success(),
        "in {place}: `{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names in `ip -o link show` output (without `@peer`).
fn link_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}
