//! Network namespaces made for one test and removed when dropped, on every path.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

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

    /// Feeds `script` to `nft -f -` inside; panics with nft's message and the script when
    /// it fails.
    pub fn nft_apply(&self, script: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .expect("nft's stdin")
            .write_all(script.as_bytes())
            .expect("write the script to nft");
        let out = child.wait_with_output().expect("wait for nft");
        assert!(
            out.status.success(),
            "nft -f - in {} failed: {}\nscript:\n{script}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
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

    /// The GSO and GRO sizes of link `dev` here, IPv4's included (which this machine's
    /// `ip` does not print), read over netlink.
    pub fn link_sizes(&self, dev: &str) -> ferry_netlink::big_tcp::Sizes {
        self.with_netlink(|nl| async move {
            let l = nl.get_link(dev).await.expect("get link");
            l.unwrap_or_else(|| panic!("no link {dev} in {}", self.name))
                .sizes
        })
    }

    /// Gives link `dev` here the GSO and GRO sizes `big`, as an operator turns BIG TCP on
    /// for a NIC.
    pub fn set_big_tcp(&self, dev: &str, big: ferry_netlink::BigTcp) {
        self.with_netlink(|nl| async move {
            let l = nl.get_link(dev).await.expect("get link");
            let l = l.unwrap_or_else(|| panic!("no link {dev} in {}", self.name));
            nl.set_big_tcp(l.index, dev, big).await.expect("set sizes");
        })
    }

    /// Runs `f` with a netlink connection in here, on a thread of its own (`setns` moves
    /// only the calling thread).
    fn with_netlink<T, F, Fut>(&self, f: F) -> T
    where
        T: Send,
        F: FnOnce(ferry_netlink::Netlink) -> Fut + Send,
        Fut: std::future::Future<Output = T>,
    {
        let file = std::fs::File::open(self.path()).expect("open the netns");
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(
                    async move { f(ferry_netlink::Netlink::open().expect("netlink")).await },
                )
            })
            .join()
            .expect("netlink thread")
        })
    }

    /// One of link `dev`'s counters here (`/sys/class/net/<dev>/statistics/<stat>`).
    pub fn link_stat(&self, dev: &str, stat: &str) -> u64 {
        let out = self.sh(&format!("cat /sys/class/net/{dev}/statistics/{stat}"));
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{dev} {stat} in {}: {out:?}", self.name))
    }

    /// Names of the ports of bridge `master` here.
    pub fn ports_of(&self, master: &str) -> Vec<String> {
        link_names(&self.sh(&format!("ip -o link show master {master}")))
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

/// A finished command's exit code and its stdout then stderr as one text, for a test
/// that checks what a tool said, wherever it said it.
pub fn code_and_text(out: &Output) -> (Option<i32>, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A finished command's exit code (-1 when a signal ended it), stdout and stderr.
pub fn code_out_err(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
