//! A node as kind makes one, as far as this machine allows: a network namespace on the
//! cluster's switch (kind's Docker network) with a private mount namespace and its own
//! containerd serving the CRI, driven by a kubelet stand-in.
//!
//! What the node sees is only what the test gives it: its own disk (a directory of the
//! test, bound over `/var/lib`, `/var/log`, `/etc/cni` and `/opt/cni`; overlays over
//! `/etc`, `/opt` and `/usr/lib` where a mount point must be made), a fresh tmpfs `/run`
//! at every boot, an empty `/lib/modules` (kind mounts the host's; this machine's kernel
//! has everything built in), and the reference plugins kind's node image ships in
//! `/opt/cni/bin`. Its kernel state starts as a fresh kind host's: forwarding and bridge
//! netfilter off. Kubelet's iptables hint chain (`KUBE-IPTABLES-HINT`) marks the iptables
//! backend the node's kubelet and kube-proxy use, legacy or nft.
//!
//! A reboot ends every process of the node, drops its network namespace (links, routes,
//! tables, conntrack and sysctls with it) and its `/run`, and boots it again on the same
//! disk, as a machine comes back.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{Switch, UNDERLAY_GW, UNDERLAY_GW_V6};
use crate::cri::{image, procs, Cri};
use crate::kind::kubelet::{Kubelet, NodeView, Wiring};
use crate::netns::Netns;
use crate::proc::{wait_until, Bg};

/// The iptables backend a node's kubelet and kube-proxy use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    /// `iptables-nft` or `iptables-legacy` (and `ip6tables-…`).
    pub fn tool(self, v6: bool) -> String {
        let fam = if v6 { "ip6tables" } else { "iptables" };
        match self {
            Backend::Nft => format!("{fam}-nft"),
            Backend::Legacy => format!("{fam}-legacy"),
        }
    }
}

pub struct KindNode {
    pub name: String,
    /// The node's addresses on the switch, `status.hostIP` first.
    pub ips: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub backend: Backend,
    pub host: Netns,
    /// The node's disk, and its logs beside it.
    pub dir: tempfile::TempDir,
    holder: Option<Bg>,
    containerd: Option<Bg>,
    pub kubelet: Option<Kubelet>,
    /// When the node last booted.
    pub booted: Instant,
}

/// The reference plugins kind's node image ships (its conflist chains portmap; the
/// runtime execs loopback itself).
const KIND_PLUGINS: &[&str] = &["loopback", "portmap", "host-local", "ptp"];

impl KindNode {
    /// Boots a node named `name` with addresses `ips` (primary first) on `switch`.
    pub fn boot(switch: &Switch, name: &str, ips: &[String], backend: Backend) -> KindNode {
        let dir = tempfile::tempdir().expect("node dir");
        for sub in [
            "var-lib", "var-log", "etc-up", "etc-work", "etc-cni", "opt-up", "opt-work", "opt-cni",
            "lib-up", "lib-work",
        ] {
            std::fs::create_dir_all(dir.path().join("disk").join(sub)).expect("node dir");
        }
        let mut labels = BTreeMap::new();
        labels.insert("kubernetes.io/os".to_string(), "linux".to_string());
        labels.insert("kubernetes.io/hostname".to_string(), name.to_string());
        let mut node = KindNode {
            name: name.to_string(),
            ips: ips.to_vec(),
            labels,
            backend,
            host: Netns::new("fyk"),
            dir,
            holder: None,
            containerd: None,
            kubelet: None,
            booted: Instant::now(),
        };
        node.power_on(switch, true);
        node
    }

    fn disk(&self, sub: &str) -> PathBuf {
        self.dir.path().join("disk").join(sub)
    }

    /// Everything a boot does, on the node's (new) network namespace.
    fn power_on(&mut self, switch: &Switch, first: bool) {
        self.booted = Instant::now();
        self.plug(switch);
        // A fresh kind host: nothing has turned forwarding or bridge netfilter on.
        self.host.sh(
            "sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0 \
             net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0",
        );
        self.mount();
        if first {
            for p in KIND_PLUGINS {
                let from = Path::new(crate::REFERENCE_PLUGINS).join(p);
                let to = self.disk("opt-cni").join("bin").join(p);
                std::fs::create_dir_all(to.parent().expect("bin dir")).expect("mkdir");
                std::fs::copy(&from, &to)
                    .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
            }
        }
        std::fs::write(
            self.dir.path().join("containerd.toml"),
            containerd_config(self.dir.path()),
        )
        .expect("containerd config");
        self.start_containerd();
        if first {
            self.import(&image::pause_tar().display().to_string());
        }
        // kubelet marks the iptables backend it uses (and kube-proxy follows it).
        for v6 in [false, true] {
            let t = self.backend.tool(v6);
            self.host.sh(&format!(
                "{t} -w -t mangle -N KUBE-IPTABLES-HINT && {t} -w -t mangle -N KUBE-KUBELET-CANARY"
            ));
        }
    }

    /// Plugs the node's namespace into the switch with its addresses and default routes.
    fn plug(&self, switch: &Switch) {
        let v4 = self.ips.iter().find(|ip| !ip.contains(':'));
        let v6 = self.ips.iter().find(|ip| ip.contains(':'));
        match v4 {
            Some(ip) => switch.plug(&self.host, ip),
            None => switch.port(&self.host, "eth0"),
        }
        if let Some(ip6) = v6 {
            self.host.sh(&format!(
                "ip -6 addr add {ip6}/64 dev eth0 nodad && ip link set eth0 up && \
                 ip -6 route add default via {UNDERLAY_GW_V6} dev eth0"
            ));
        }
        if v4.is_none() {
            self.host.sh("ip link set eth0 up");
        }
        let _ = UNDERLAY_GW;
    }

    /// The node's mount namespace, held by a sleeping process.
    fn mount(&mut self) {
        let d = self.dir.path().join("disk");
        let d = d.display();
        let mounted = self.dir.path().join("mounted");
        let _ = std::fs::remove_file(&mounted);
        let script = format!(
            "set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/containerd /run/runc /run/.cgroup
# A sysfs of the node's own network namespace, as a kind node's container has: its
# links' /sys/class/net entries (a plugin writes a veth's rps_cpus there). The cgroup
# mounts runc needs are carried over.
mount --rbind /sys/fs/cgroup /run/.cgroup
mount -t sysfs sysfs /sys
mount --move /run/.cgroup /sys/fs/cgroup
rmdir /run/.cgroup
mount --bind {d}/var-lib /var/lib
mount --bind {d}/var-log /var/log
mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc-up,workdir={d}/etc-work /etc
mkdir -p /etc/cni
mount --bind {d}/etc-cni /etc/cni
mkdir -p /etc/cni/net.d
mount -t overlay overlay -o lowerdir=/opt,upperdir={d}/opt-up,workdir={d}/opt-work /opt
mkdir -p /opt/cni
mount --bind {d}/opt-cni /opt/cni
mkdir -p /opt/cni/bin
mount -t overlay overlay -o lowerdir=/usr/lib,upperdir={d}/lib-up,workdir={d}/lib-work /usr/lib
mkdir -p /usr/lib/modules
touch {m}
exec sleep infinity",
            m = mounted.display()
        );
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.host.path().display()))
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "slave",
                "sh",
                "-c",
                &script,
            ]);
        // Its own process group: a terminal's Ctrl-C goes to the test's group, and the
        // holder must outlive it, since the node's processes are found by its mounts.
        cmd.process_group(0);
        self.holder = Some(Bg::spawn_cmd_logged(
            cmd,
            &self.dir.path().join("holder.log"),
        ));
        let ok = wait_until(Duration::from_secs(10), || mounted.exists());
        assert!(
            ok,
            "{}: mount namespace not set up: {}",
            self.name,
            std::fs::read_to_string(self.dir.path().join("holder.log")).unwrap_or_default()
        );
    }

    pub fn holder_pid(&self) -> u32 {
        self.holder.as_ref().map(Bg::pid).expect("node is up")
    }

    /// A path of the node's file system, as the host reaches it.
    pub fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/{}",
            self.holder_pid(),
            p.trim_start_matches('/')
        ))
    }

    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder_pid()))
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn cri(&self) -> Cri {
        Cri::connect(&self.sock())
    }

    /// A command inside the node (its network and mount namespaces).
    pub fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--target={}", self.holder_pid()))
            .args(["--mount", "--net"]);
        c
    }

    /// Runs a shell command inside the node; panics with its output when it fails.
    pub fn sh(&self, cmd: &str) -> String {
        let out = self
            .enter()
            .args(["sh", "-c", cmd])
            .output()
            .expect("nsenter");
        crate::netns::stdout_ok(out, &self.name, cmd)
    }

    pub fn try_sh(&self, cmd: &str) -> std::process::Output {
        self.enter()
            .args(["sh", "-c", cmd])
            .output()
            .expect("nsenter")
    }

    pub fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{what}.log"))).unwrap_or_default()
    }

    fn start_containerd(&mut self) {
        let mut c = self.enter();
        c.arg("containerd")
            .arg("--config")
            .arg(self.dir.path().join("containerd.toml"));
        self.containerd = Some(Bg::spawn_cmd_logged(
            c,
            &self.dir.path().join("containerd.log"),
        ));
        let cri = self.cri();
        let up = wait_until(Duration::from_secs(20), || cri.network_ready().is_ok());
        assert!(
            up,
            "{}: containerd's CRI did not answer:\n{}",
            self.name,
            self.log("containerd")
        );
    }

    /// containerd stopped with SIGTERM and started again, as `systemctl restart containerd`
    /// does on a node: its shims, and the pods and containers they hold, keep running, and
    /// the new containerd finds them.
    pub fn restart_containerd(&mut self) {
        if let Some(c) = self.containerd.take() {
            let code = c.stop(libc::SIGTERM, Duration::from_secs(10));
            assert!(
                code.is_some(),
                "{}: containerd did not stop on SIGTERM:\n{}",
                self.name,
                self.log("containerd")
            );
        }
        self.start_containerd();
    }

    /// What the node leaves running when it is not powered off (the demo's `--keep`), for
    /// another program to remove later.
    pub fn leftovers(&self) -> Leftovers {
        let mut pids = procs::of_node(self.holder_pid());
        pids.push(self.holder_pid() as i32);
        Leftovers {
            netns: self.host.name.clone(),
            dir: self.dir.path().to_path_buf(),
            cgroups: procs::sandbox_cgroups(&pids),
            processes: pids
                .into_iter()
                .filter_map(|pid| Some((pid, procs::start_time(pid)?)))
                .collect(),
        }
    }

    /// `ctr images import` of an image tar (what `kind load` does).
    pub fn import(&self, tar: &str) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.sock())
            .args(["-n", "k8s.io", "images", "import"])
            .arg(tar)
            .output()
            .expect("ctr");
        assert!(
            out.status.success(),
            "{}: import {tar}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the node's kubelet stand-in.
    pub fn start_kubelet(&mut self, wiring: Wiring) {
        let view = NodeView {
            name: self.name.clone(),
            ips: self.ips.clone(),
            netns: self.host.path(),
            sock: self.sock(),
            root: self.root(),
            wiring,
        };
        let kubelet = Kubelet::new(view);
        // After a reboot: the sandboxes the runtime still lists (its metadata is on disk)
        // are stopped and removed, as kubelet's garbage collection does.
        let cri = self.cri();
        for id in cri.not_ready_pods().unwrap_or_default() {
            let _ = cri.stop_pod(&id);
            let _ = cri.remove_pod(&id);
        }
        self.kubelet = Some(kubelet);
    }

    pub fn kubelet(&self) -> &Kubelet {
        self.kubelet.as_ref().expect("the node's kubelet runs")
    }

    /// The runtime's `NetworkReady` (what kubelet reports as the node's readiness).
    pub fn network_ready(&self) -> (bool, String) {
        self.cri()
            .network_ready()
            .unwrap_or((false, "no CRI".into()))
    }

    /// Ends the node's processes and its kernel state, keeping its disk.
    pub fn power_off(&mut self) {
        if let Some(k) = self.kubelet.take() {
            k.abandon_all();
        }
        if let Some(h) = &self.holder {
            procs::end_node(h.pid());
        }
        self.containerd.take();
        self.holder.take();
    }

    /// A reboot: power off, a new network namespace, power on with the same disk. The
    /// kubelet is started again by the caller (`start_kubelet`), as the machine's init
    /// starts it.
    pub fn reboot(&mut self, switch: &Switch) {
        self.power_off();
        self.host = Netns::new("fyk");
        self.power_on(switch, false);
    }

    /// Links of the node named like ferry's host veths (`fy…`) or tombstones (`fz…`).
    pub fn ferry_links(&self) -> Vec<String> {
        self.host
            .links()
            .into_iter()
            .filter(|l| l.starts_with("fy") || l.starts_with("fz"))
            .collect()
    }
}

/// What a node left running leaves: its namespace, its directory, its processes and its
/// sandboxes' cgroups.
pub struct Leftovers {
    pub netns: String,
    pub dir: PathBuf,
    /// Each process with its start time (in clock ticks after boot, field 22 of
    /// /proc/PID/stat): a later kill checks it, so as not to hit a process that reused
    /// the PID.
    pub processes: Vec<(i32, u64)>,
    /// `/k8s.io/<container ID>`, under each cgroup hierarchy.
    pub cgroups: Vec<String>,
}

/// Files and directories ferry makes on a node.
pub const FERRY_FILES: &[&str] = &[
    "/run/ferry",
    "/var/lib/ferry",
    "/var/lib/ferry-etcd",
    "/etc/cni/net.d/00-ferry.conflist",
    "/etc/cni/net.d/10-ferry.conflist",
    "/opt/cni/bin/ferry",
    "/opt/cni/bin/ferry-ipam",
];

impl KindNode {
    /// Everything of ferry found on the node, looked for independently of ferry's own
    /// uninstall: links, routes of protocol 102 (both families, every table), nftables
    /// tables, iptables and ip6tables chains of both backends, files.
    pub fn ferry_leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .host
            .links()
            .into_iter()
            .filter(|l| {
                l == "ferry0"
                    || l.starts_with("ferry.")
                    || l.starts_with("fy")
                    || l.starts_with("fz")
            })
            .map(|l| format!("link {l}"))
            .collect();
        for fam in ["-4", "-6"] {
            let routes = self
                .host
                .sh(&format!("ip {fam} route show table all proto 102"));
            left.extend(routes.lines().map(|r| format!("route {r}")));
        }
        let tables = self.host.sh("nft list tables");
        left.extend(
            tables
                .lines()
                .filter(|t| t.contains("ferry"))
                .map(|t| format!("nftables {t}")),
        );
        for tool in [
            "iptables-legacy-save",
            "ip6tables-legacy-save",
            "iptables-nft-save",
            "ip6tables-nft-save",
        ] {
            let out = self.host.try_sh(tool);
            let text = String::from_utf8_lossy(&out.stdout);
            left.extend(
                text.lines()
                    .filter(|l| l.contains("FERRY"))
                    .map(|l| format!("{tool}: {l}")),
            );
        }
        for f in FERRY_FILES {
            if self.path(f).exists() {
                left.push(format!("file {f}"));
            }
        }
        left
    }
}

impl Drop for KindNode {
    fn drop(&mut self) {
        self.power_off();
    }
}

fn containerd_config(d: &Path) -> String {
    let d = d.display();
    format!(
        r#"version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "/opt/containerd"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "/run/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
"#,
        image = image::IMAGE
    )
}
