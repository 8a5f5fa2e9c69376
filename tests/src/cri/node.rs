//! A node the way kubelet sees one: a network namespace on the cluster's switch, with its
//! own private containerd serving the CRI, and ferry installed on it exactly as the
//! DaemonSet installs it (the real `deploy/install-cni.sh` with the ConfigMap's conflist,
//! `ferry-overlayd` with the DaemonSet's args and env).
//!
//! The node has a mount namespace of its own, held by a sleeping process: tmpfs over `/run`
//! and `/var/lib` (containerd's shim sockets, libcni's cache, `/run/ferry`,
//! `/var/lib/ferry` are all at fixed paths) and overlays over `/etc` and `/opt` (the CNI
//! config and binaries), so the host's directories stay untouched. containerd and
//! `ferry-overlayd` run inside it, entered with `nsenter` (not `ip netns exec`, which
//! remounts /sys and hides the cgroup mounts runc needs). Every process started in it is
//! ended on drop: they are found by that mount namespace, which only this node's
//! processes are in.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::cri::client::{Cri, PodSpec};
use crate::cri::{image, procs};
use crate::netns::Netns;
use crate::proc::{wait_until, Bg};

pub struct CriNode {
    pub name: String,
    pub host: Netns,
    pub ip: String,
    pub dir: tempfile::TempDir,
    holder: Option<Bg>,
    containerd: Option<Bg>,
    overlayd: Option<Bg>,
    /// The Kubernetes API stand-in, inside the node, when the DaemonSet enforces
    /// NetworkPolicy (no API server runs on these machines).
    api: Option<crate::kapi::KubeApi>,
    pub cri: Cri,
    /// `FERRY_ETCD_ENDPOINTS`: the one value of the ConfigMap the test replaces (its etcd).
    etcd_endpoints: String,
}

/// A pod made through the CRI, with a name for its network namespace.
pub struct CriPod {
    pub id: String,
    pub spec: PodSpec,
    pub ip: String,
    pub ns: Netns,
}

impl CriNode {
    /// Node `i` of `cluster`: namespace, mount namespace, containerd with the pause image,
    /// serving the CRI. ferry is not installed yet (`install_ferry`).
    pub fn start(cluster: &Cluster, i: usize) -> CriNode {
        let node = Self::boot(cluster, i);
        node.import_pause();
        node
    }

    /// `start` without the pause image (`import_pause`): the two steps the demo times
    /// apart.
    pub fn boot(cluster: &Cluster, i: usize) -> CriNode {
        let name = format!("cri{i}");
        let host = Netns::new("fyk");
        let ip = format!("192.0.2.{}", 31 + i);
        cluster.switch.plug(&host, &ip);
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        for sub in ["eu", "ew", "ou", "ow", "root", "state", "runc"] {
            std::fs::create_dir_all(d.join(sub)).expect("node dir");
        }
        let dd = d.display();
        let script = format!(
            "set -e
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/lib
mkdir -p /run/ferry /run/containerd /var/lib/cni /var/lib/ferry
mount -t overlay overlay -o lowerdir=/etc,upperdir={dd}/eu,workdir={dd}/ew /etc
mount -t overlay overlay -o lowerdir=/opt,upperdir={dd}/ou,workdir={dd}/ow /opt
mkdir -p /opt/cni/bin /etc/cni/net.d
touch {dd}/mounted
exec sleep infinity"
        );
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", host.path().display())).args([
            "unshare",
            "--mount",
            "--propagation",
            "slave",
            "sh",
            "-c",
            &script,
        ]);
        // Its own process group: a terminal's Ctrl-C goes to the demo's group, and the
        // holder must outlive it, since the node's processes are found by its mounts.
        cmd.process_group(0);
        let holder = Bg::spawn_cmd_logged(cmd, &d.join("holder.log"));
        let sock = d.join("containerd.sock");
        let mut node = CriNode {
            name,
            host,
            ip,
            cri: Cri::connect(&sock),
            holder: Some(holder),
            containerd: None,
            overlayd: None,
            api: None,
            etcd_endpoints: cluster.etcd.endpoint(),
            dir,
        };
        let mounted = wait_until(Duration::from_secs(10), || {
            node.dir.path().join("mounted").exists()
        });
        assert!(
            mounted,
            "{}: mount namespace not set up: {}",
            node.name,
            std::fs::read_to_string(node.dir.path().join("holder.log")).unwrap_or_default()
        );
        std::fs::write(d.join("config.toml"), containerd_config(d)).expect("config.toml");
        // What a kind node image ships beside the CNI config: the reference plugins the
        // runtime execs itself (loopback) and the conflist chains (portmap).
        node.sh("cp /usr/lib/cni/loopback /usr/lib/cni/portmap /usr/lib/cni/bridge /usr/lib/cni/host-local /opt/cni/bin/");
        node.start_containerd();
        node
    }

    /// Imports the pause image into the node's containerd (`ctr images import`), as a
    /// node image ships it: no sandbox starts without it.
    pub fn import_pause(&self) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-n", "k8s.io", "images", "import"])
            .arg(image::pause_tar())
            .output()
            .expect("ctr");
        assert!(
            out.status.success(),
            "{}: import the pause image: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn holder_pid(&self) -> u32 {
        self.holder.as_ref().map(Bg::pid).expect("holder running")
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

    /// A path of the node's own file system, as the host reaches it.
    pub fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root{}",
            self.holder_pid(),
            p.trim_end_matches('/')
        ))
    }

    pub fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{what}.log"))).unwrap_or_default()
    }

    pub fn start_containerd(&mut self) {
        let mut c = self.enter();
        c.arg("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"));
        self.containerd = Some(Bg::spawn_cmd_logged(
            c,
            &self.dir.path().join("containerd.log"),
        ));
        let up = wait_until(Duration::from_secs(20), || self.cri.network_ready().is_ok());
        assert!(
            up,
            "{}: containerd's CRI did not answer:\n{}",
            self.name,
            self.log("containerd")
        );
    }

    /// SIGTERM to containerd (its shims and pods keep running, as on a real node).
    pub fn stop_containerd(&mut self) {
        if let Some(c) = self.containerd.take() {
            c.stop(libc::SIGTERM, Duration::from_secs(10));
        }
    }

    /// What the DaemonSet's init container does: `install-cni.sh` with the ConfigMap's
    /// conflist (the node's /opt/cni/bin and /etc/cni/net.d are its `/host/...`).
    pub fn install_ferry(&self) {
        let conflist = self.dir.path().join("10-ferry.conflist");
        std::fs::write(&conflist, crate::manifest::shipped_conflist().to_string())
            .expect("conflist");
        let out = self
            .enter()
            .env("FERRY_BIN_SRC", crate::bin_dir())
            .env("FERRY_CONFLIST_SRC", &conflist)
            .arg(crate::manifest::repo().join("deploy/install-cni.sh"))
            .arg("/")
            .output()
            .expect("install-cni.sh");
        assert!(
            out.status.success(),
            "install-cni.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ferry-overlayd` as the DaemonSet runs it: its args, its env (the ConfigMap's values,
    /// the node's name), the etcd endpoint replaced by the test's, and, when it enforces
    /// NetworkPolicy, the in-cluster API replaced by a stand-in serving no objects.
    pub fn start_overlayd(&mut self) {
        let spec = crate::manifest::overlayd(&self.name);
        let mut c = self.enter();
        c.arg("env")
            .arg("-i")
            .arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin");
        let policy = spec
            .env
            .iter()
            .any(|(k, v)| k == "FERRY_NETWORK_POLICY" && v == "true");
        if policy {
            let api = match &self.api {
                Some(api) => api,
                None => self.api.insert(
                    crate::inside::run(&self.host, || {
                        crate::kapi::KubeApi::bind("127.0.0.1:0".parse().expect("addr"))
                    })
                    .expect("the API stand-in in the node"),
                ),
            };
            let kubeconfig = self.dir.path().join("kubeconfig");
            api.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
            c.arg(format!("FERRY_KUBECONFIG={}", kubeconfig.display()));
        }
        for (k, v) in &spec.env {
            let v = if k == "FERRY_ETCD_ENDPOINTS" {
                &self.etcd_endpoints
            } else {
                v
            };
            c.arg(format!("{k}={v}"));
        }
        c.arg(crate::bin("ferry-overlayd")).args(&spec.args);
        self.overlayd = Some(Bg::spawn_cmd_logged(
            c,
            &self.dir.path().join("overlayd.log"),
        ));
        let state = self.path("/run/ferry/node.json");
        let ready = wait_until(Duration::from_secs(30), || state.exists());
        assert!(
            ready,
            "{}: ferry-overlayd not ready:\n{}",
            self.name,
            self.log("overlayd")
        );
    }

    pub fn stop_overlayd(&mut self) -> Option<i32> {
        self.overlayd
            .take()
            .and_then(|d| d.stop(libc::SIGTERM, Duration::from_secs(10)))
    }

    /// The node's pod subnet, from the node state ferry-overlayd wrote.
    pub fn subnet(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.path("/run/ferry/node.json")).expect("node.json"),
        )
        .expect("node.json parses");
        v["podCIDR"].as_str().unwrap_or_default().to_string()
    }

    /// Waits until the runtime reports `NetworkReady` as `want`; the last condition seen.
    pub fn wait_network_ready(&self, want: bool, timeout: Duration) -> (bool, String) {
        let mut last = (false, String::new());
        wait_until(timeout, || {
            if let Ok(c) = self.cri.network_ready() {
                last = c;
            }
            last.0 == want
        });
        last
    }

    /// RunPodSandbox, then a name for the pod's network namespace.
    pub fn run_pod(&self, spec: PodSpec) -> Result<CriPod, tonic::Status> {
        let id = self.cri.run_pod(&spec)?;
        let (ip, pid) = self.cri.pod_status(&id)?;
        assert!(pid > 0, "no pid for sandbox {id}");
        Ok(CriPod {
            id,
            spec,
            ip,
            ns: Netns::attach("fyq", pid),
        })
    }

    /// `ferry-ipam show -o json` on the node's store.
    pub fn ipam_show(&self) -> serde_json::Value {
        let out = self
            .enter()
            .arg(crate::bin("ferry-ipam"))
            .args(["show", "-o", "json"])
            .output()
            .expect("ferry-ipam show");
        assert!(
            out.status.success(),
            "ferry-ipam show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("show json")
    }

    /// Links of the node named like ferry's host veths (`fy…`) or tombstones (`fz…`).
    pub fn ferry_links(&self) -> Vec<String> {
        self.host
            .links()
            .into_iter()
            .filter(|l| l.starts_with("fy") || l.starts_with("fz"))
            .collect()
    }

    /// What the node leaves running when it is not dropped (the demo's `--keep`), for a
    /// cleanup done later by another program.
    pub fn leftovers(&self) -> Leftovers {
        let mut pids = self.processes();
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

    /// The PID of the process holding the node's mount namespace: `nsenter --target` it to
    /// be inside the node.
    pub fn holder(&self) -> u32 {
        self.holder_pid()
    }

    /// The PIDs of every process this node started (`procs::of_node`).
    fn processes(&self) -> Vec<i32> {
        self.holder
            .as_ref()
            .map(|h| procs::of_node(h.pid()))
            .unwrap_or_default()
    }
}

/// What a kept node leaves: its namespace, its directory, its processes and its
/// sandboxes' cgroups.
pub struct Leftovers {
    pub netns: String,
    pub dir: PathBuf,
    /// Each process with its start time (in clock ticks after boot, field 22 of
    /// /proc/PID/stat): a later kill checks it, so as not to hit a process that reused
    /// the PID.
    pub processes: Vec<(i32, u64)>,
    /// `/k8s.io/<sandbox ID>`, under each cgroup hierarchy.
    pub cgroups: Vec<String>,
}

/// Waits until every node routes to every other node's subnet (VXLAN or direct); panics
/// with the log of the first that does not.
pub fn wait_converged(nodes: &[CriNode]) {
    for n in nodes {
        let ok = wait_until(Duration::from_secs(20), || {
            let routes = n
                .host
                .sh("ip route show proto 102; ip -6 route show proto 102");
            nodes
                .iter()
                .filter(|o| o.name != n.name)
                .all(|o| routes.contains(&o.subnet()))
        });
        assert!(ok, "{} did not converge:\n{}", n.name, n.log("overlayd"));
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        // The daemon first; then every process of the node.
        self.overlayd.take();
        if let Some(h) = &self.holder {
            procs::end_node(h.pid());
        }
        self.containerd.take();
        self.holder.take();
    }
}

fn containerd_config(d: &Path) -> String {
    let d = d.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
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
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
"#,
        image = image::IMAGE
    )
}
