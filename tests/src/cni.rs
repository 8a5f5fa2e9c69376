//! Running CNI plugins as a runtime does: `CNI_*` variables, config on stdin, inside the
//! host's namespace.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::netns::Netns;

#[derive(Debug)]
pub struct Reply {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The result of a successful call (panics with the whole reply otherwise).
    pub fn ok(&self) -> Value {
        assert_eq!(self.status, 0, "plugin failed: {self:?}");
        assert!(
            !self.stderr.contains("panicked"),
            "plugin panicked: {self:?}"
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// The CNI error code of a failed call; checks the error's shape on the way.
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.status, 0, "plugin should have failed: {self:?}");
        assert!(
            !self.stderr.contains("panicked"),
            "plugin panicked: {self:?}"
        );
        let v = self.json();
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "no msg: {v}"
        );
        v["code"].as_u64().unwrap_or_else(|| panic!("no code: {v}"))
    }

    pub fn msg(&self) -> String {
        self.json()["msg"].as_str().unwrap_or_default().to_string()
    }
}

/// One invocation.
pub struct Call<'a> {
    pub host: &'a Netns,
    pub plugin: PathBuf,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<PathBuf>,
    pub ifname: &'a str,
    pub cni_path: String,
}

impl Call<'_> {
    pub fn run(&self, conf: &str) -> Reply {
        self.run_with_args(conf, None)
    }

    /// As `run`, with `CNI_ARGS` set as a Kubernetes runtime sets it
    /// (`K8S_POD_NAMESPACE=..;K8S_POD_NAME=..`).
    pub fn run_with_args(&self, conf: &str, cni_args: Option<&str>) -> Reply {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host.name])
            .arg(&self.plugin)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_NETNS",
                self.netns
                    .as_deref()
                    .map(Path::as_os_str)
                    .unwrap_or_default(),
            );
        if let Some(args) = cni_args {
            cmd.env("CNI_ARGS", args);
        }
        exec(cmd, conf)
    }
}

pub fn exec(mut cmd: Command, stdin: &str) -> Reply {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    // A plugin that refuses an oversized config stops reading: judged by its reply.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    let out = child.wait_with_output().expect("wait plugin");
    Reply {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The search path: ferry's binaries first, then the reference plugins.
pub fn cni_path() -> String {
    format!(
        "{}:{}",
        crate::bin_dir().display(),
        crate::REFERENCE_PLUGINS
    )
}

/// A ferry network config: `ipam` keys merged into ferry-ipam's, `extra` into the top.
pub fn ferry_conf(version: &str, data_dir: &Path, ipam: Value, extra: Value) -> String {
    let mut ipam_obj = json!({"type": "ferry-ipam", "dataDir": data_dir});
    merge(&mut ipam_obj, ipam);
    let mut conf = json!({
        "cniVersion": version,
        "name": "ferrytest",
        "type": "ferry",
        "ipam": ipam_obj,
    });
    merge(&mut conf, extra);
    conf.to_string()
}

/// Shallow merge of `b`'s keys into `a` (a `null` removes the key).
pub fn merge(a: &mut Value, b: Value) {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        for (k, v) in b {
            if v.is_null() {
                a.remove(&k);
            } else {
                a.insert(k, v);
            }
        }
    }
}

/// One node: its host namespace and IPAM data directory, with a helper per verb.
pub struct Node {
    pub host: Netns,
    pub data: tempfile::TempDir,
    pub conf: String,
}

impl Node {
    pub fn new(subnet: &str) -> Node {
        Self::with(|data| ferry_conf("1.1.0", data, json!({"subnet": subnet}), json!({})))
    }

    /// `n` pods, namespaces named `ns_prefix…`, each added (and required to succeed) as
    /// container `<id>0`, `<id>1`, … in that order.
    pub fn add_pods(&self, ns_prefix: &str, id: &str, n: usize) -> Vec<Netns> {
        let pods: Vec<Netns> = (0..n).map(|_| Netns::new(ns_prefix)).collect();
        for (i, p) in pods.iter().enumerate() {
            self.add(&format!("{id}{i}"), p).ok();
        }
        pods
    }

    /// A node whose ferry conf is `ferry_conf(version, <its data dir>, ipam, extra)`.
    pub fn ferry(version: &str, ipam: Value, extra: Value) -> Node {
        Self::with(|d| ferry_conf(version, d, ipam, extra))
    }

    pub fn with(conf: impl FnOnce(&Path) -> String) -> Node {
        let host = Netns::new("fyh");
        let data = tempfile::tempdir().expect("tempdir");
        let conf = conf(data.path());
        Node { host, data, conf }
    }

    /// CHECK of container `id` in `pod` with `prev` as the prevResult, as a runtime runs
    /// it after ADD returned `prev`.
    pub fn check(&self, id: &str, pod: &Netns, prev: &Value) -> Reply {
        let mut conf: Value = serde_json::from_str(&self.conf).expect("the node's conf");
        conf["prevResult"] = prev.clone();
        self.call("CHECK", id, Some(pod)).run(&conf.to_string())
    }

    pub fn call<'a>(&'a self, command: &'a str, cid: &'a str, pod: Option<&Netns>) -> Call<'a> {
        Call {
            host: &self.host,
            plugin: crate::bin("ferry"),
            command,
            container_id: cid,
            netns: pod.map(Netns::path),
            ifname: "eth0",
            cni_path: cni_path(),
        }
    }

    pub fn add(&self, cid: &str, pod: &Netns) -> Reply {
        self.call("ADD", cid, Some(pod)).run(&self.conf)
    }

    pub fn del(&self, cid: &str, pod: Option<&Netns>) -> Reply {
        self.call("DEL", cid, pod).run(&self.conf)
    }

    /// The allocations in the store, as `ferry-ipam show -o json` reports them.
    pub fn allocations(&self) -> Vec<Value> {
        let out = Command::new(crate::bin("ferry-ipam"))
            .args(["show", "-o", "json", "--data-dir"])
            .arg(self.data.path())
            .env_remove("CNI_COMMAND")
            .output()
            .expect("ferry-ipam show");
        assert!(out.status.success(), "show failed: {out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("show json");
        v["allocations"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until DEL's background reaper has removed every retired veth and `pod` (if
    /// given) has no `eth0`; false on timeout.
    pub fn reaped(&self, pod: Option<&Netns>) -> bool {
        crate::proc::wait_until(std::time::Duration::from_secs(5), || {
            tombstones(&self.host).is_empty() && pod.is_none_or(|p| !p.has_link("eth0"))
        })
    }

    /// Links on the host named like ferry's host veths, retired ones left out.
    /// Asserts that a failed ADD into `pod` left nothing: no allocation, no host veth and
    /// no interface in the pod (`what` names the case).
    pub fn assert_nothing_made(&self, pod: &Netns, what: &str) {
        assert!(
            self.allocations().is_empty(),
            "{what}: {:?}",
            self.allocations()
        );
        assert!(
            self.host_veths().is_empty(),
            "{what}: {:?}",
            self.host_veths()
        );
        assert!(!pod.has_link("eth0"), "{what}: the pod has an eth0");
    }

    pub fn host_veths(&self) -> Vec<String> {
        // A retired veth keeps its name until the reaper deletes it: not an attachment's.
        let retired = tombstones(&self.host);
        self.host
            .links()
            .into_iter()
            .filter(|l| l.starts_with("fy") && !retired.contains(l))
            .collect()
    }
}

/// The pod's IPv4 address (without prefix) from an ADD result.
pub fn pod_ip(result: &Value) -> String {
    let a = result["ips"][0]["address"]
        .as_str()
        .expect("ips[0].address");
    a.split('/').next().unwrap_or(a).to_string()
}

/// The host end of the pod's veth, as ferry's ADD result names it (the interface after the
/// bridge).
pub fn host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("no host veth in {result}"))
        .to_string()
}

/// The receive steering of `veth` in `host`: its `rx-0/rps_cpus`, as the kernel prints it.
pub fn rps_cpus(host: &Netns, veth: &str) -> String {
    host.sh(&format!("cat /sys/class/net/{veth}/queues/rx-0/rps_cpus"))
        .trim()
        .to_string()
}

/// Whether the pod's `eth0` carries ferry's flow-hash program on its egress.
pub fn hashes_by_flow(pod: &Netns) -> bool {
    pod.sh("tc filter show dev eth0 egress")
        .contains(ferry_netlink::flow_hash::PROG_NAME)
}

/// `ferry-ipam` run as a runtime runs an IPAM plugin: `CNI_*` variables and nothing else
/// in its environment. Needs no root: the store is just a directory.
pub fn ipam_plugin(command: &str, cid: &str) -> Command {
    let mut cmd = Command::new(crate::bin("ferry-ipam"));
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent");
    cmd
}

/// A `ferry-ipam` network config for the store in `data_dir`.
pub fn ipam_conf(data_dir: &Path, subnet: &str) -> String {
    json!({"cniVersion": "1.1.0", "name": "ipamtest", "type": "ferry",
           "ipam": {"type": "ferry-ipam", "subnet": subnet, "dataDir": data_dir}})
    .to_string()
}

/// `plugin` run inside the host namespace `host` (opened by the caller) by `setns` in the
/// child: no `ip netns exec` and its mount work, for the benchmarks and the churn test
/// where thousands of calls are made. The caller adds the `CNI_*` variables.
pub fn in_host(host: &File, plugin: &Path) -> Command {
    let mut cmd = Command::new(plugin);
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    enter_in_child(&mut cmd, host, libc::CLONE_NEWNET);
    cmd
}

/// Makes the child of `cmd` enter the namespace `ns` (of type `kind`) before its exec.
fn enter_in_child(cmd: &mut Command, ns: &File, kind: libc::c_int) {
    let fd = ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe, and the forked child is single-threaded, as
    // entering a mount namespace requires.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, kind) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The mount namespace a runtime on a node runs in: one whose `/sys` shows the host's
/// network namespace (as on a real node, where the runtime and the host share both).
/// `ip netns exec` makes it; a sleeping process holds it until this is dropped.
pub struct HostMounts {
    holder: std::process::Child,
    pub mnt: File,
}

impl HostMounts {
    pub fn new(host: &Netns) -> HostMounts {
        let holder = Command::new("ip")
            .args(["netns", "exec", &host.name, "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the mount namespace holder");
        let path = format!("/proc/{}/ns/mnt", holder.id());
        // `ip netns exec` unshares, remounts /sys, then execs: wait until the holder is
        // `sleep` in a mount namespace other than ours.
        let ours = std::fs::read_link("/proc/self/ns/mnt").expect("own mount namespace");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let comm =
                std::fs::read_to_string(format!("/proc/{}/comm", holder.id())).unwrap_or_default();
            let theirs = std::fs::read_link(&path).ok();
            if comm.trim() == "sleep" && theirs.is_some_and(|t| t != ours) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the mount namespace holder of {} did not start",
                host.name
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mnt = File::open(&path).expect("open the holder's mount namespace");
        HostMounts { holder, mnt }
    }
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// `in_host`, and also in `mounts`: a runtime's view of the node, with a `/sys` of the
/// host's network namespace.
pub fn in_host_mounted(host: &File, mounts: &HostMounts, plugin: &Path) -> Command {
    let mut cmd = in_host(host, plugin);
    enter_in_child(&mut cmd, &mounts.mnt, libc::CLONE_NEWNS);
    cmd
}

/// The link group DEL retires host veths into until its reaper deletes them.
pub use ferry_node_ipam::attachment::TOMBSTONE_GROUP;

/// Veths in `host` waiting for DEL's reaper: retired into its group, or renamed to
/// `fz…` by an ADD that needed the name.
pub fn tombstones(host: &Netns) -> Vec<String> {
    let mut t = host.links_in_group(TOMBSTONE_GROUP);
    t.extend(host.links().into_iter().filter(|l| l.starts_with("fz")));
    t.sort();
    t.dedup();
    t
}

/// The abstract socket name DEL's reaper listens on.
pub use ferry_node_ipam::attachment::REAPER_SOCKET;

/// How a process holds the reaper's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameHold {
    /// A stream socket listening on it, as a reaper does, that never accepts.
    Listening,
    /// A stream socket bound to it that does not listen: connections are refused, yet
    /// no reaper can bind it.
    Bound,
    /// A datagram socket bound to it (the reaper's socket before it was a stream one).
    Datagram,
}

/// A process in `host` (`sleep`, ended when dropped) that holds the reaper's name as
/// `uid`/`gid`: a squatter, or as root a reaper that hangs. It holds the name before
/// this returns.
pub fn hold_reaper_name(host: &Netns, how: NameHold, uid: u32, gid: u32) -> crate::proc::Bg {
    let ns = File::open(host.path()).expect("open the host namespace");
    let ns_fd = ns.as_raw_fd();
    // SAFETY: sockaddr_un is plain data, valid as all zeroes.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path[1..].iter_mut().zip(REAPER_SOCKET) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + REAPER_SOCKET.len())
        as libc::socklen_t;
    let kind = match how {
        NameHold::Listening | NameHold::Bound => libc::SOCK_STREAM,
        NameHold::Datagram => libc::SOCK_DGRAM,
    };
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    // SAFETY: only async-signal-safe calls in the forked child, on memory made before the
    // fork. The socket is made without close-on-exec, so `sleep` holds it.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return fail();
            }
            if uid != 0
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return fail();
            }
            let s = libc::socket(libc::AF_UNIX, kind, 0);
            if s < 0 || libc::bind(s, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                return fail();
            }
            if how == NameHold::Listening && libc::listen(s, libc::SOMAXCONN) != 0 {
                return fail();
            }
            Ok(())
        });
    }
    let holder = crate::proc::Bg::spawn_cmd(cmd);
    drop(ns);
    holder
}

/// Whether a stream socket (a reaper's, or a squatter's) holds the reaper's name in `host`.
pub fn reaper_name_held(host: &Netns) -> bool {
    let name = format!("@{}", String::from_utf8_lossy(REAPER_SOCKET));
    // /proc/net/unix: Num RefCount Protocol Flags Type St Inode Path; 0001 is a stream.
    host.sh("cat /proc/net/unix").lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 8 && f[4] == "0001" && f[7] == name
    })
}

/// The uid and gid of the user `nobody`.
pub fn nobody() -> (u32, u32) {
    // SAFETY: getpwnam's result is read at once, before any other call could reuse it.
    unsafe {
        let pw = libc::getpwnam(c"nobody".as_ptr());
        assert!(!pw.is_null(), "no user nobody");
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}
