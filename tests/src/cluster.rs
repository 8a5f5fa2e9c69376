//! A cluster on one machine: an underlay switch (a bridge in its own namespace), a host
//! running a real etcd, nodes running `ferry-overlayd` with pods added through `ferry`, and
//! a host outside the cluster. Every cluster has its own switch namespace, so parallel
//! tests reuse the 192.0.2.0/24 addresses without meeting. An IPv6 underlay
//! (`Cluster::builder().v6_only()`) has every host on 2001:db8::/64 instead, with no IPv4 address.
//!
//! The daemons keep the cluster's state in etcd or in the Kubernetes API
//! ([`Datastore`], from `FERRY_TEST_DATASTORE` unless the test pins one). With the API
//! (the Kubernetes datastore, or `ClusterBuilder::kube_api`) the kit serves the API
//! stand-in ([`KubeApi`]) on the etcd host over HTTPS, enforcing the shipped manifest's RBAC
//! on the daemons, which reach it with the `ferry` service account's token; the test's own
//! writes go through [`KubeApi`]'s methods and need none. In the Kubernetes datastore each
//! node has a `Node` object, made before its daemon starts, with the pod CIDRs the
//! controller-manager would have allocated it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as NodeObject;
use serde_json::{json, Value};

use crate::cni::{cni_path, pod_ip, Call, Reply};
use crate::kapi::KubeApi;
use crate::netns::{run_ok, Netns};
use crate::proc::{wait_until, Bg};

pub const UNDERLAY_GW: &str = "192.0.2.254";
pub const ETCD_IP: &str = "192.0.2.2";
pub const OUTSIDE_IP: &str = "192.0.2.200";
/// The same roles on an IPv6 underlay.
pub const UNDERLAY_GW_V6: &str = "2001:db8::fe";
pub const ETCD_IP_V6: &str = "2001:db8::2";
/// Where each node's daemon serves health and metrics, inside the node's namespace.
/// The outside host's IPv6 address, with `Cluster::add_underlay_v6`.
pub const OUTSIDE_IP_V6: &str = "2001:db8::100";
pub const HEALTH_ADDR: &str = "127.0.0.1:9797";

/// Two L2 segments of `ClusterBuilder::two_segments`, each a /25 of 192.0.2.0/24.
pub const SEGMENT_A_GW: &str = "192.0.2.126";
pub const SEGMENT_B_GW: &str = "192.0.2.254";
/// The outside host of a two-segment cluster, on segment A.
pub const OUTSIDE_IP_A: &str = "192.0.2.100";

/// The underlay L2 segment.
pub struct Switch {
    pub ns: Netns,
    /// The IPv4 prefix length of its hosts, and their default gateway.
    prefix: u8,
    gw: &'static str,
}

impl Switch {
    /// One segment for the whole 192.0.2.0/24 (and 2001:db8::/64).
    pub fn new() -> Switch {
        Self::segment(24, UNDERLAY_GW)
    }

    /// A segment whose IPv4 hosts get `/prefix` and a default route via `gw`.
    pub fn segment(prefix: u8, gw: &'static str) -> Switch {
        let ns = Netns::new("fys");
        ns.sh("ip link add sw0 type bridge && ip link set sw0 up");
        Switch { ns, prefix, gw }
    }

    /// A port of the switch, as `ifname` (down, no address) in `host`.
    pub fn port(&self, host: &Netns, ifname: &str) {
        let port = crate::unique("sp");
        run_ok(Command::new("ip").args([
            "-n",
            &self.ns.name,
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            &host.name,
        ]));
        self.ns.sh(&format!("ip link set {port} master sw0 up"));
    }

    /// Gives every port of the switch the GSO and GRO sizes `big`: a network whose NICs
    /// have BIG TCP on.
    pub fn set_big_tcp(&self, big: ferry_netlink::BigTcp) {
        for port in self.ns.ports_of("sw0") {
            self.ns.set_big_tcp(&port, big);
        }
    }

    /// Plugs `host` in as `eth0` with `ip` and the segment's prefix (an IPv6 `ip`: /64,
    /// and no IPv4 address at all) and a default route (to nowhere on a single segment:
    /// only the test's own namespaces are ever reached).
    pub fn plug(&self, host: &Netns, ip: &str) {
        self.port(host, "eth0");
        if ip.contains(':') {
            host.sh(&format!(
                "ip -6 addr add {ip}/64 dev eth0 nodad && ip link set eth0 up && \
                 ip -6 route add default via {UNDERLAY_GW_V6} dev eth0"
            ));
            return;
        }
        let (prefix, gw) = (self.prefix, self.gw);
        host.sh(&format!(
            "ip addr add {ip}/{prefix} dev eth0 && ip link set eth0 up && ip route add default via {gw}"
        ));
    }
}

/// A second segment joined to the first by a router namespace (`ClusterBuilder::two_segments`).
pub struct Routed {
    pub switch: Switch,
    /// `eth0` on segment A at `SEGMENT_A_GW`, `eth1` on segment B at `SEGMENT_B_GW`,
    /// forwarding between them.
    pub router: Netns,
}

impl Routed {
    fn new(a: &Switch) -> Routed {
        let switch = Switch::segment(25, SEGMENT_B_GW);
        let router = Netns::new("fyr");
        a.port(&router, "eth0");
        switch.port(&router, "eth1");
        router.sh(&format!(
            "ip addr add {SEGMENT_A_GW}/25 dev eth0 && ip link set eth0 up && \
             ip addr add {SEGMENT_B_GW}/25 dev eth1 && ip link set eth1 up && \
             sysctl -qw net.ipv4.ip_forward=1"
        ));
        Routed { switch, router }
    }
}

impl Default for Switch {
    fn default() -> Self {
        Self::new()
    }
}

/// A single-member etcd in its own namespace.
pub struct Etcd {
    pub host: Netns,
    pub dir: tempfile::TempDir,
    /// Whether clients must speak TLS and present a certificate of the test CA.
    pub tls: bool,
    /// Its address on the underlay.
    pub ip: String,
    proc: Option<Bg>,
}

impl Etcd {
    pub fn start(switch: &Switch) -> Etcd {
        Self::start_with(switch, false)
    }

    /// With `tls`: a throwaway CA, a server certificate for the etcd host's address and a
    /// client certificate; etcd requires client certificates.
    pub fn start_with(switch: &Switch, tls: bool) -> Etcd {
        Self::start_on(switch, tls, ETCD_IP)
    }

    /// At `ip` on the switch, of either family.
    pub fn start_on(switch: &Switch, tls: bool, ip: &str) -> Etcd {
        let host = Netns::new("fye");
        switch.plug(&host, ip);
        let dir = tempfile::tempdir().expect("tempdir");
        if tls {
            make_certs(dir.path(), ip);
        }
        let mut e = Etcd {
            host,
            dir,
            tls,
            ip: ip.to_string(),
            proc: None,
        };
        e.resume();
        e
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:2379", url_host(&self.ip))
    }

    /// The daemon's flags for reaching this etcd.
    pub fn client_flags(&self) -> String {
        let d = self.dir.path().display();
        let mut f = format!("--etcd-endpoints {}", self.endpoint());
        if self.tls {
            f += &format!(
                " --etcd-cacert {d}/ca.pem --etcd-cert {d}/client.pem --etcd-key {d}/client.key"
            );
        }
        f
    }

    /// Starts (again) on the same data directory.
    pub fn resume(&mut self) {
        let d = self.dir.path().display();
        let ep = self.endpoint();
        let tls = if self.tls {
            format!(
                " --cert-file {d}/server.pem --key-file {d}/server.key --client-cert-auth \
                 --trusted-ca-file {d}/ca.pem"
            )
        } else {
            String::new()
        };
        let cmd = format!(
            "etcd --name t --data-dir {d}/data --listen-client-urls {ep} \
             --advertise-client-urls {ep} --listen-peer-urls http://127.0.0.1:2380 \
             --initial-advertise-peer-urls http://127.0.0.1:2380 \
             --initial-cluster t=http://127.0.0.1:2380{tls}"
        );
        self.proc = Some(Bg::spawn_logged(
            &self.host,
            &cmd,
            &self.dir.path().join("etcd.log"),
        ));
        let up = wait_until(Duration::from_secs(20), || {
            self.host
                .try_sh(&format!(
                    "ETCDCTL_API=3 etcdctl {} endpoint health",
                    self.ctl_flags()
                ))
                .status
                .success()
        });
        assert!(up, "etcd did not start: {}", self.log());
    }

    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.stop(libc::SIGTERM, Duration::from_secs(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn ctl_flags(&self) -> String {
        let d = self.dir.path().display();
        let mut f = format!("--endpoints {}", self.endpoint());
        if self.tls {
            f += &format!(" --cacert {d}/ca.pem --cert {d}/client.pem --key {d}/client.key");
        }
        f
    }

    /// Runs etcdctl against this etcd.
    pub fn ctl(&self, args: &str) -> String {
        self.host.sh(&format!(
            "ETCDCTL_API=3 etcdctl {} {args}",
            self.ctl_flags()
        ))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An address as the host part of a URL: IPv6 in brackets.
pub fn url_host(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// A CA, a server certificate for the etcd host at `ip` and a client certificate, in `dir`.
fn make_certs(dir: &Path, ip: &str) {
    let d = dir.display();
    let script = format!(
        "set -e; cd {d}
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=ferry-test-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=etcd 2>/dev/null
printf 'subjectAltName=IP:{ip}\\nextendedKeyUsage=serverAuth,clientAuth\\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=ferry 2>/dev/null
printf 'extendedKeyUsage=clientAuth\\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null"
    );
    run_ok(Command::new("sh").args(["-c", &script]));
}

pub struct Pod {
    pub ns: Netns,
    pub id: String,
    pub ip: String,
    pub result: Value,
}

/// One node: a host namespace on the switch, its state and IPAM directories, its daemon.
pub struct Node {
    pub name: String,
    pub host: Netns,
    pub ip: String,
    pub dir: tempfile::TempDir,
    pub daemon: Option<Bg>,
    pub daemon_args: String,
    /// Keys merged into the top of the plugin's network config (e.g. an IPAM range).
    pub conf_extra: Value,
}

impl Node {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("overlayd.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn start_daemon(&mut self) {
        self.start_daemon_under("");
    }

    /// Starts the daemon through `wrapper` (a command prefix such as `prlimit
    /// --nofile=1024:1024`), as a container runtime would with its own limits.
    pub fn start_daemon_under(&mut self, wrapper: &str) {
        let cmd = format!(
            "{wrapper} env FERRY_LOG=info {} {}",
            crate::bin("ferry-overlayd").display(),
            self.daemon_args
        );
        self.daemon = Some(Bg::spawn_logged(&self.host, &cmd, &self.log_path()));
    }

    /// Stops the daemon and starts it again, waiting until it answers `/readyz`.
    pub fn restart_daemon(&mut self) {
        self.stop_daemon();
        self.start_daemon();
        self.wait_answering();
    }

    /// Waits until the daemon answers `/readyz` with 200 (node.json may be an earlier
    /// daemon's).
    pub fn wait_answering(&mut self) {
        let ok = wait_until(Duration::from_secs(40), || {
            http_get(&self.host, HEALTH_ADDR, "/readyz").0 == 200
                || self.daemon.as_mut().is_some_and(|d| d.exited().is_some())
        });
        assert!(
            ok && http_get(&self.host, HEALTH_ADDR, "/readyz").0 == 200,
            "{} not ready:\n{}",
            self.name,
            self.log()
        );
    }

    /// Deletes this node's IPv6 route and neighbour entry of the remote IPv6 subnet `s6`
    /// (`net::/len`) by hand, and waits until the daemon's resync has put both back.
    pub fn assert_mends_v6(&self, s6: &str) {
        let vtep = s6.split('/').next().unwrap_or(s6).to_string();
        self.host.sh(&format!(
            "ip -6 route del {s6} dev ferry.1 && ip -6 neigh del {vtep} dev ferry.1"
        ));
        let mended = wait_until(Duration::from_secs(10), || {
            self.overlay_routes_v6().contains(s6)
                && self
                    .host
                    .sh("ip -6 neigh show dev ferry.1")
                    .contains(&format!("{vtep} lladdr"))
        });
        assert!(
            mended,
            "not mended: {}\n{}",
            self.overlay_routes_v6(),
            self.log()
        );
    }

    /// The VXLAN device's FDB, as `bridge fdb` prints it.
    pub fn overlay_fdb(&self) -> String {
        self.host
            .sh("bridge fdb show dev ferry.1 2>/dev/null || true")
    }

    /// The VXLAN device's neighbours, as `ip neigh` prints them.
    pub fn overlay_neighs(&self) -> String {
        self.host
            .sh("ip neigh show dev ferry.1 2>/dev/null || true")
    }

    /// Waits until the daemon has written node.json.
    pub fn wait_ready(&mut self) {
        let path = self.state_dir().join("node.json");
        let ok = wait_until(Duration::from_secs(30), || {
            path.exists() || self.daemon.as_mut().is_some_and(|d| d.exited().is_some())
        });
        assert!(
            ok && path.exists(),
            "{} not ready:\n{}",
            self.name,
            self.log()
        );
    }

    /// The pid of the daemon this node started, while it runs (`start_daemon` execs it in
    /// place of the shell, so the child is the daemon itself).
    pub fn daemon_pid(&self) -> Option<u32> {
        let pid = self.daemon.as_ref()?.pid();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "ferry-overlayd").then_some(pid)
    }

    /// The daemon's resident memory in KiB (`VmRSS` in `/proc/<pid>/status`).
    pub fn daemon_rss_kib(&self) -> Option<u64> {
        let pid = self.daemon_pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGKILL, as the OOM killer or a crash ends the daemon: no cleanup of its own. Waits
    /// until it is gone.
    pub fn kill_daemon(&mut self) {
        if let Some(d) = self.daemon.take() {
            // Reaped here (or, past the timeout, when the handle drops): gone either way.
            d.stop(libc::SIGKILL, Duration::from_secs(10));
        }
    }

    /// SIGTERM; the exit code.
    pub fn stop_daemon(&mut self) -> Option<i32> {
        self.daemon
            .take()
            .and_then(|d| d.stop(libc::SIGTERM, Duration::from_secs(10)))
    }

    pub fn node_state(&self) -> Value {
        serde_json::from_slice(
            &std::fs::read(self.state_dir().join("node.json")).expect("node.json"),
        )
        .expect("node.json parses")
    }

    /// The node's IPv4 subnet; an IPv6-only node's IPv6 one.
    pub fn subnet(&self) -> String {
        let st = self.node_state();
        st["podCIDR"]
            .as_str()
            .or(st["podCIDRv6"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    pub fn conf(&self) -> String {
        let mut conf = json!({
            "cniVersion": "1.1.0", "name": "ferry", "type": "ferry",
            "stateDir": self.state_dir(),
            "ipam": {"type": "ferry-ipam", "dataDir": self.dir.path().join("ipam")}
        });
        crate::cni::merge(&mut conf, self.conf_extra.clone());
        conf.to_string()
    }

    pub fn cni(&self, command: &str, id: &str, pod: Option<&Netns>) -> Reply {
        self.cni_as(command, id, pod, None)
    }

    /// As `cni`, with `CNI_ARGS` naming the Kubernetes pod as a kubelet's runtime does.
    pub fn cni_as(
        &self,
        command: &str,
        id: &str,
        pod: Option<&Netns>,
        cni_args: Option<&str>,
    ) -> Reply {
        Call {
            host: &self.host,
            plugin: crate::bin("ferry"),
            command,
            container_id: id,
            netns: pod.map(Netns::path),
            ifname: "eth0",
            cni_path: cni_path(),
        }
        .run_with_args(&self.conf(), cni_args)
    }

    pub fn add_pod(&self, id: &str) -> Pod {
        self.add_pod_as(id, None)
    }

    /// A pod whose ADD names it in `CNI_ARGS` (`K8S_POD_NAMESPACE=x;K8S_POD_NAME=a`).
    pub fn add_pod_as(&self, id: &str, cni_args: Option<&str>) -> Pod {
        let ns = Netns::new("fyp");
        let result = self.cni_as("ADD", id, Some(&ns), cni_args).ok();
        let ip = pod_ip(&result);
        Pod {
            ns,
            id: id.to_string(),
            ip,
            result,
        }
    }

    /// DEL of `pod` through the plugin, which must succeed.
    pub fn del_pod(&self, pod: &Pod) {
        self.cni("DEL", &pod.id, Some(&pod.ns)).ok();
    }

    /// A pod made by the plugin in a dual-stack cluster; its namespace and IPv6 address.
    pub fn add_pod_ipv6(&self) -> (Netns, String) {
        let pod = self.add_pod(&crate::unique("v6"));
        let ip = pod.result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str())
            .find(|a| a.contains(':'))
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no IPv6 address in {}", pod.result))
            .to_string();
        (pod.ns, ip)
    }

    /// The routes of the VXLAN device, as `ip route` prints them.
    pub fn overlay_routes(&self) -> String {
        self.host
            .sh("ip route show dev ferry.1 2>/dev/null || true")
    }

    /// Every route ferry made, on either path (VXLAN or direct), of both families.
    pub fn ferry_routes(&self) -> String {
        self.host
            .sh("ip route show proto 102; ip -6 route show proto 102")
    }

    /// ferry's direct routes (DirectRouting: on the underlay, not on the VXLAN device).
    pub fn direct_routes(&self) -> String {
        self.host
            .sh("ip route show proto 102 dev eth0; ip -6 route show proto 102 dev eth0")
    }

    /// The transmit checksum offload of `dev` in this node (`ethtool -k`'s `tx-checksumming`,
    /// through the ioctl: no ethtool binary needed); with `set`, sets it first.
    pub fn tx_checksum(&self, dev: &str, set: Option<bool>) -> bool {
        let set = match set {
            Some(on) => format!("io(0x17, {})\n", u8::from(on)),
            None => String::new(),
        };
        let script = format!(
            "import array, fcntl, socket, struct\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             def io(cmd, data):\n\
             \x20   buf = array.array('B', struct.pack('II', cmd, data))\n\
             \x20   ifr = struct.pack('16sP16x', b'{dev}', buf.buffer_info()[0])\n\
             \x20   fcntl.ioctl(s.fileno(), 0x8946, ifr)\n\
             \x20   return struct.unpack('II', buf.tobytes())[1]\n\
             {set}print(io(0x16, 0))\n"
        );
        let out = self.host.sh(&format!("python3 -c \"{script}\""));
        out.trim() != "0"
    }

    /// Packets the VXLAN device sent and received so far (tx + rx).
    pub fn vxlan_packets(&self) -> u64 {
        self.host.link_stat("ferry.1", "tx_packets") + self.host.link_stat("ferry.1", "rx_packets")
    }

    /// The IPv6 routes ferry made on the VXLAN device, as `ip -6 route` prints them.
    pub fn overlay_routes_v6(&self) -> String {
        self.host
            .sh("ip -6 route show dev ferry.1 proto 102 2>/dev/null || true")
    }

    pub fn vtep_mac(&self) -> String {
        self.host
            .sh("cat /sys/class/net/ferry.1/address")
            .trim()
            .to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop(libc::SIGKILL, Duration::from_secs(5));
        }
    }
}

/// A step of `ClusterBuilder::build_reporting` just done, and how long it took.
pub enum Progress<'a> {
    /// etcd answers.
    Etcd(&'a Etcd, Duration),
    /// The API stand-in listens (with the Kubernetes datastore or `kube_api`; after etcd,
    /// before any daemon starts).
    Api(&'a KubeApi, Duration),
    /// The node's daemon wrote node.json (the time since the daemons were started).
    NodeReady(&'a Node, Duration),
    /// Every node routes to every other node's subnet.
    Converged(Duration),
}

pub struct Cluster {
    pub switch: Switch,
    pub etcd: Etcd,
    pub nodes: Vec<Node>,
    pub outside: Netns,
    /// The cluster CIDR of the daemons' `--cluster-cidr` (an IPv6-only cluster's
    /// `--cluster-cidr-v6`).
    pub cidr: String,
    /// The etcd prefix of this cluster's records.
    pub prefix: String,
    /// The daemon flags every node gets beyond the kit's own.
    pub flags: Vec<String>,
    /// Whether the underlay is IPv6 (2001:db8::/64) and the cluster IPv6-only.
    pub v6: bool,
    /// With `two_segments`: segment B and its router (`switch` is segment A).
    pub routed: Option<Routed>,
    /// Where the daemons keep the cluster's state.
    pub datastore: Datastore,
    /// The API stand-in, with the Kubernetes datastore or `ClusterBuilder::kube_api`: in the
    /// etcd host's namespace, at its underlay address. Declared after `nodes`, so the
    /// daemons stop before it does.
    pub api: Option<KubeApi>,
    /// The daemons' kubeconfig (the `ferry` service account's token) in its own directory.
    kubeconfig: Option<tempfile::TempDir>,
    /// A dual-stack cluster's IPv6 cluster CIDR (`cidr` is the IPv4 one).
    cidr6: Option<String>,
    /// How many nodes were given pod CIDRs so far: the next one's index in the range.
    pod_cidrs_given: u32,
}

/// Where the daemons keep the cluster's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datastore {
    /// etcd (`--etcd-endpoints`, `--etcd-prefix`): leases under `Cluster::prefix`.
    Etcd,
    /// The Kubernetes API (`--datastore kubernetes --kubeconfig`): every node's `Node`
    /// object, its `spec.podCIDRs` and ferry's annotations.
    Kubernetes,
}

impl Datastore {
    /// The variable choosing the datastore of every cluster a test does not pin.
    pub const ENV: &'static str = "FERRY_TEST_DATASTORE";

    /// `FERRY_TEST_DATASTORE`: `etcd` (also when unset or empty) or `kubernetes`. Any other
    /// value panics, naming the variable: a typo must not quietly test etcd again.
    pub fn from_env() -> Datastore {
        match std::env::var(Self::ENV) {
            Err(std::env::VarError::NotPresent) => Datastore::Etcd,
            Ok(v) if v.is_empty() || v == "etcd" => Datastore::Etcd,
            Ok(v) if v == "kubernetes" => Datastore::Kubernetes,
            Ok(v) => panic!("{}={v:?}: expected etcd or kubernetes", Self::ENV),
            Err(e) => panic!("{}: {e}", Self::ENV),
        }
    }
}

/// Which address families a cluster's pods get, and on which underlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 pods on an IPv4 underlay (192.0.2.0/24).
    V4,
    /// IPv4 and IPv6 pods (`--cluster-cidr-v6`) on the IPv4 underlay.
    Dual,
    /// IPv6 pods only, on an IPv6 underlay (2001:db8::/64, no IPv4 address at all): etcd
    /// at `ETCD_IP_V6`, the outside host at `OUTSIDE_IP_V6`, nodes at 2001:db8::11, ::12, …
    V6Only,
}

/// How a test asks for a cluster: `Cluster::builder().nodes(2).build()`.
///
/// The cluster CIDRs are the kit's (a fresh /16 and /56 per cluster) unless a test that
/// asserts on the exact range names it with `cluster_cidr`/`cluster_cidr_v6`.
#[must_use]
pub struct ClusterBuilder {
    nodes: usize,
    family: Family,
    direct_routing: Option<bool>,
    tls: bool,
    segments: Option<(usize, usize)>,
    cidr: Option<String>,
    cidr6: Option<String>,
    flags: Vec<String>,
    datastore: Datastore,
    kube_api: bool,
}

/// A cluster CIDR pair no other cluster of this test process has: 10.128.0.0/16 to
/// 10.227.0.0/16 and fd00:<n>::/56 (each cluster is in namespaces of its own, so this is
/// for reading logs, not for isolation).
pub(crate) fn next_cidrs() -> (String, String) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) + std::process::id();
    (
        format!("10.{}.0.0/16", 128 + n % 100),
        format!("fd00:{:x}::/56", 0x100 + n % 0xfe00),
    )
}

impl ClusterBuilder {
    /// How many nodes (default 1), each ready (lease taken, data path up, node.json
    /// written) and converged when `build` returns. 0: etcd, the switch and the outside
    /// host only; the test adds nodes itself (`Cluster::add_node*`).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Pods of both families (IPv4 underlay).
    pub fn dual_stack(mut self) -> Self {
        self.family = Family::Dual;
        self
    }

    /// IPv6-only pods over an IPv6 underlay.
    pub fn v6_only(mut self) -> Self {
        self.family = Family::V6Only;
        self
    }

    pub fn family(mut self, f: Family) -> Self {
        self.family = f;
        self
    }

    /// `--direct-routing=<on>`; unset, the daemon's default (on).
    pub fn direct_routing(mut self, on: bool) -> Self {
        self.direct_routing = Some(on);
        self
    }

    /// etcd speaks only TLS and requires client certificates.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// An IPv4 cluster on two L2 segments joined by a router: segment A (192.0.2.0/25,
    /// etcd, the outside host and `on_a` nodes at .11, .12, …) and segment B
    /// (192.0.2.128/25, `on_b` nodes at .139, .140, …). Nodes of one segment are on-link
    /// to each other; across, their underlay packets go through the router. Replaces
    /// `nodes`.
    pub fn two_segments(mut self, on_a: usize, on_b: usize) -> Self {
        self.segments = Some((on_a, on_b));
        self
    }

    /// This exact IPv4 cluster CIDR (V4, Dual), for a test that asserts on the range.
    pub fn cluster_cidr(mut self, cidr: &str) -> Self {
        self.cidr = Some(cidr.to_string());
        self
    }

    /// This exact IPv6 cluster CIDR (Dual, V6Only); setting it makes a V4 cluster Dual.
    pub fn cluster_cidr_v6(mut self, cidr: &str) -> Self {
        self.cidr6 = Some(cidr.to_string());
        if self.family == Family::V4 {
            self.family = Family::Dual;
        }
        self
    }

    /// More daemon flags, each word its own element (`["--lease-grace", "10s"]`).
    pub fn flags<S: AsRef<str>>(mut self, flags: impl IntoIterator<Item = S>) -> Self {
        self.flags
            .extend(flags.into_iter().map(|f| f.as_ref().to_string()));
        self
    }

    /// Where the daemons keep the cluster's state; unset, `FERRY_TEST_DATASTORE`'s
    /// (`Datastore::from_env`). A test that reads or writes etcd itself pins `Etcd`.
    pub fn datastore(mut self, d: Datastore) -> Self {
        self.datastore = d;
        self
    }

    /// The API stand-in (`Cluster::api`) whatever the datastore, and `--kubeconfig` naming
    /// it for every daemon: for a test of what the daemon reads from the API besides its
    /// datastore (NetworkPolicy). The Kubernetes datastore has it anyway.
    pub fn kube_api(mut self) -> Self {
        self.kube_api = true;
        self
    }

    pub fn build(self) -> Cluster {
        self.build_reporting(&mut |_| {})
    }

    /// As `build`, telling `report` each step as it is done: etcd is up before any
    /// daemon starts (where a test starts what the daemons need, such as the API
    /// stand-in); the demo shows them, so that a slow start never looks like a hang.
    pub fn build_reporting(self, report: &mut dyn FnMut(Progress)) -> Cluster {
        let (auto4, auto6) = next_cidrs();
        let cidr4 = self.cidr.unwrap_or(auto4);
        let cidr6 = self.cidr6.unwrap_or(auto6);
        let v6 = self.family == Family::V6Only;
        let mut flags = Vec::new();
        if self.family == Family::Dual {
            flags.extend(["--cluster-cidr-v6".to_string(), cidr6.clone()]);
        }
        if let Some(on) = self.direct_routing {
            flags.push(format!("--direct-routing={on}"));
        }
        flags.extend(self.flags);
        let dual = (self.family == Family::Dual).then(|| cidr6.clone());
        let cidr = if v6 { cidr6 } else { cidr4 };
        let setup = Setup {
            cidr,
            cidr6: dual,
            flags,
            tls: self.tls,
            v6,
            datastore: self.datastore,
            kube_api: self.kube_api || self.datastore == Datastore::Kubernetes,
        };
        let Some((on_a, on_b)) = self.segments else {
            return Cluster::build_with(Switch::new(), self.nodes, setup, report);
        };
        assert!(!v6, "two segments are IPv4");
        let switch = Switch::segment(25, SEGMENT_A_GW);
        let mut c = Cluster::build_with(switch, 0, setup, report);
        c.routed = Some(Routed::new(&c.switch));
        for _ in 0..on_a {
            c.add_node();
        }
        for i in 0..on_b {
            c.add_node_on_b(&format!("192.0.2.{}", 139 + i));
        }
        for node in &mut c.nodes {
            node.wait_ready();
        }
        c.wait_converged();
        c
    }
}

/// What `ClusterBuilder` decided, for `Cluster::build_with`.
struct Setup {
    cidr: String,
    cidr6: Option<String>,
    flags: Vec<String>,
    tls: bool,
    v6: bool,
    datastore: Datastore,
    kube_api: bool,
}

/// The name of the kubeconfig in the kit's directory for it.
const KUBECONFIG: &str = "kubeconfig";

/// The API stand-in in `host`'s namespace at `ip` (any port), as a cluster serves its API:
/// HTTPS, the shipped manifest's RBAC enforced; and the daemons' kubeconfig, carrying the
/// `ferry` service account's token, in a directory of its own.
fn start_api(host: &Netns, ip: &str) -> (KubeApi, tempfile::TempDir) {
    let addr = std::net::SocketAddr::new(
        ip.parse()
            .unwrap_or_else(|e| panic!("the API's address {ip}: {e}")),
        0,
    );
    let api = crate::inside::run(host, move || KubeApi::bind_tls(addr, &[]))
        .unwrap_or_else(|e| panic!("the API stand-in in {} at {ip}: {e}", host.name));
    let token = api.service_account_token("kube-system", "ferry");
    let (roles, bindings) = crate::manifest::rbac();
    api.set_rbac(roles, bindings);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(KUBECONFIG);
    api.write_kubeconfig_with_token(&path, &token)
        .unwrap_or_else(|e| panic!("the daemons' kubeconfig: {e}"));
    (api, dir)
}

/// The Node object of node `name` at underlay address `ip`, as the kubelet registers it
/// and the controller-manager gives it `pod_cidrs` (none: not allocated yet).
fn new_node_object(name: &str, ip: &str, pod_cidrs: &[String]) -> NodeObject {
    let mut v = json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [ready_condition(true)],
        },
    });
    if let Some(first) = pod_cidrs.first() {
        v["spec"] = json!({"podCIDR": first, "podCIDRs": pod_cidrs});
    }
    serde_json::from_value(v).unwrap_or_else(|e| panic!("Node {name}: {e}"))
}

/// A node's `Ready` condition, as the kubelet posts it.
fn ready_condition(ready: bool) -> Value {
    // k8s-openapi's jiff has no clock of its own here.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let now = k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let (status, reason, message) = if ready {
        ("True", "KubeletReady", "kubelet is posting ready status")
    } else {
        (
            "False",
            "KubeletNotReady",
            "the kubelet stopped posting ready status",
        )
    };
    json!({"type": "Ready", "status": status, "reason": reason, "message": message,
           "lastHeartbeatTime": now, "lastTransitionTime": now})
}

/// Subnet `index` of length `len` of `cidr` (`a.b.c.d/n` or IPv6), counting from the
/// range's first address, as the controller-manager's range allocator hands them out.
fn nth_subnet(cidr: &str, len: u8, index: u32) -> String {
    let (net, prefix) = cidr
        .split_once('/')
        .and_then(|(a, p)| Some((a.parse::<std::net::IpAddr>().ok()?, p.parse::<u8>().ok()?)))
        .unwrap_or_else(|| panic!("cluster CIDR {cidr:?} is not address/length"));
    let bits = if net.is_ipv4() { 32 } else { 128 };
    assert!(
        prefix <= len && u32::from(len - prefix) < 32 && index < 1 << (len - prefix),
        "no subnet {index} of /{len} in {cidr}"
    );
    let step = u128::from(index) << (bits - u32::from(len));
    match net {
        std::net::IpAddr::V4(a) => {
            let a = std::net::Ipv4Addr::from(u32::from(a) + step as u32);
            format!("{a}/{len}")
        }
        std::net::IpAddr::V6(a) => {
            let a = std::net::Ipv6Addr::from(u128::from(a) + step);
            format!("{a}/{len}")
        }
    }
}

impl Cluster {
    /// A cluster to the test's order; see `ClusterBuilder`.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            nodes: 1,
            family: Family::V4,
            direct_routing: None,
            tls: false,
            segments: None,
            cidr: None,
            cidr6: None,
            flags: Vec::new(),
            datastore: Datastore::from_env(),
            kube_api: false,
        }
    }

    /// A node on segment B at `ip`, its daemon started (not waited for).
    pub fn add_node_on_b(&mut self, ip: &str) -> &mut Node {
        let routed = self.routed.as_ref().expect("a two-segment cluster");
        let host = Netns::new("fyn");
        routed.switch.plug(&host, ip);
        self.add_node_in(host, ip.to_string())
    }

    /// Unplugs node `i` from its segment and plugs it into the other (segment B at
    /// `ip`, or segment A when `ip` is in 192.0.2.0/25), as a moved machine would be;
    /// its daemon is left as it is (it reads its underlay address at start).
    pub fn move_node(&mut self, i: usize, ip: &str) {
        let routed = self.routed.as_ref().expect("a two-segment cluster");
        let last: u8 = ip
            .rsplit('.')
            .next()
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        let to = if last < 128 {
            &self.switch
        } else {
            &routed.switch
        };
        let n = &mut self.nodes[i];
        n.host.sh("ip link del eth0");
        to.plug(&n.host, ip);
        n.ip = ip.to_string();
        // Its kubelet reports the new address.
        self.set_node_addresses(i, &[ip.to_string()]);
    }

    fn build_with(
        switch: Switch,
        n: usize,
        setup: Setup,
        report: &mut dyn FnMut(Progress),
    ) -> Cluster {
        let Setup {
            cidr,
            cidr6,
            flags,
            tls,
            v6,
            datastore,
            kube_api,
        } = setup;
        let t = Instant::now();
        let etcd_ip = if v6 { ETCD_IP_V6 } else { ETCD_IP };
        let etcd = Etcd::start_on(&switch, tls, etcd_ip);
        report(Progress::Etcd(&etcd, t.elapsed()));
        let (api, kubeconfig) = if kube_api {
            let t = Instant::now();
            let (api, kubeconfig) = start_api(&etcd.host, etcd_ip);
            report(Progress::Api(&api, t.elapsed()));
            (Some(api), Some(kubeconfig))
        } else {
            (None, None)
        };
        let outside = Netns::new("fyo");
        let outside_ip = match (v6, switch.prefix) {
            (true, _) => OUTSIDE_IP_V6,
            (false, 24) => OUTSIDE_IP,
            (false, _) => OUTSIDE_IP_A,
        };
        switch.plug(&outside, outside_ip);
        let mut c = Cluster {
            switch,
            etcd,
            nodes: Vec::new(),
            outside,
            cidr,
            prefix: format!("/ferry-{}", crate::unique("t")),
            flags,
            v6,
            routed: None,
            datastore,
            api,
            kubeconfig,
            cidr6,
            pod_cidrs_given: 0,
        };
        let t = Instant::now();
        for _ in 0..n {
            c.add_node();
        }
        for node in &mut c.nodes {
            node.wait_ready();
            report(Progress::NodeReady(node, t.elapsed()));
        }
        let t = Instant::now();
        c.wait_converged();
        report(Progress::Converged(t.elapsed()));
        c
    }

    /// A new node with its daemon started (not waited for).
    pub fn add_node(&mut self) -> &mut Node {
        self.add_node_prepared(|_| {})
    }

    /// A new node whose namespace `prepare` sets up first (as the node's other software
    /// would have: kubelet's chains, an earlier install's leftovers), then its daemon
    /// started (not waited for).
    pub fn add_node_prepared(&mut self, prepare: impl FnOnce(&Netns)) -> &mut Node {
        let (host, ip) = self.next_host();
        prepare(&host);
        self.add_node_in(host, ip)
    }

    /// A node in `host`, already plugged in at `ip`, its daemon started.
    fn add_node_in(&mut self, host: Netns, ip: String) -> &mut Node {
        let node = self.add_node_stopped_in(host, ip);
        node.start_daemon();
        node
    }

    /// A new node whose daemon is not started: the test starts it its own way
    /// (`Node::start_daemon_under`).
    pub fn add_node_stopped(&mut self) -> &mut Node {
        let (host, ip) = self.next_host();
        self.add_node_stopped_in(host, ip)
    }

    /// A node whose Node object has no pod CIDR (the controller-manager has not allocated
    /// one, or allocates none: `--allocate-node-cidrs=false`), its daemon started (not
    /// waited for). The Kubernetes datastore only.
    pub fn add_node_without_pod_cidr(&mut self) -> &mut Node {
        assert_eq!(
            self.datastore,
            Datastore::Kubernetes,
            "a Node object without podCIDRs is the Kubernetes datastore's"
        );
        let (host, ip) = self.next_host();
        let node = self.add_node_object_and_stopped_in(host, ip, false);
        node.start_daemon();
        node
    }

    /// The API stand-in; panics when the cluster has none (neither the Kubernetes
    /// datastore nor `ClusterBuilder::kube_api`).
    pub fn api(&self) -> &KubeApi {
        self.api
            .as_ref()
            .expect("no API: the Kubernetes datastore or ClusterBuilder::kube_api starts it")
    }

    /// The daemons' kubeconfig (the `ferry` service account's), when the cluster has an API.
    pub fn kubeconfig_path(&self) -> Option<PathBuf> {
        self.kubeconfig.as_ref().map(|d| d.path().join(KUBECONFIG))
    }

    /// The next node's pod CIDRs, as the controller-manager allocates them: the next /24 of
    /// the IPv4 cluster CIDR and /64 of the IPv6 one, of each family the cluster has.
    fn allocate_pod_cidrs(&mut self) -> Vec<String> {
        let i = self.pod_cidrs_given;
        self.pod_cidrs_given += 1;
        let len = |cidr: &str| if cidr.contains(':') { 64 } else { 24 };
        std::iter::once(&self.cidr)
            .chain(self.cidr6.as_ref())
            .map(|c| nth_subnet(c, len(c), i))
            .collect()
    }

    /// Node `i`'s Node object as the API holds it now.
    pub fn node_object(&self, i: usize) -> NodeObject {
        let name = &self.nodes[i].name;
        self.api()
            .get(None, name)
            .unwrap_or_else(|| panic!("no Node {name} in the API"))
    }

    /// Sets (`Some`) or removes (`None`) annotations of node `i`'s Node object by a merge
    /// patch, as an operator's `kubectl annotate` (or an intruder) would; returns the Node.
    pub fn patch_node_annotations(
        &self,
        i: usize,
        annotations: &[(&str, Option<&str>)],
    ) -> NodeObject {
        let map: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.map_or(Value::Null, |v| json!(v))))
            .collect();
        self.patch_node(i, &json!({"metadata": {"annotations": map}}))
    }

    /// A merge patch of node `i`'s Node object, through the API's own methods.
    pub fn patch_node(&self, i: usize, patch: &Value) -> NodeObject {
        let name = &self.nodes[i].name;
        self.api()
            .merge_patch(None, name, patch)
            .unwrap_or_else(|e| panic!("patching Node {name} with {patch}: {e}"))
    }

    /// Deletes node `i`'s Node object, as `kubectl delete node` does (the node's namespace
    /// and daemon stay).
    pub fn delete_node_object(&self, i: usize) {
        let name = &self.nodes[i].name;
        self.api()
            .delete::<NodeObject>(None, name)
            .unwrap_or_else(|e| panic!("deleting Node {name}: {e}"));
    }

    /// Node `i`'s `Ready` condition, as the kubelet posts it (`false`: as the node
    /// lifecycle controller marks a node that stopped posting).
    pub fn set_node_ready(&self, i: usize, ready: bool) {
        self.patch_node(
            i,
            &json!({"status": {"conditions": [ready_condition(ready)]}}),
        );
    }

    /// Node `i`'s `status.addresses`: an InternalIP for each of `ips`, and its Hostname,
    /// as its kubelet reports them (with the Kubernetes datastore; nothing otherwise).
    pub fn set_node_addresses(&self, i: usize, ips: &[String]) {
        if self.datastore != Datastore::Kubernetes {
            return;
        }
        let mut addresses: Vec<Value> = ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip}))
            .collect();
        addresses.push(json!({"type": "Hostname", "address": self.nodes[i].name}));
        self.patch_node(i, &json!({"status": {"addresses": addresses}}));
    }

    /// The next node's namespace, plugged into the switch at the next node address.
    fn next_host(&self) -> (Netns, String) {
        let i = self.nodes.len();
        let host = Netns::new("fyn");
        let ip = if self.v6 {
            format!("2001:db8::{:x}", 0x11 + i)
        } else {
            format!("192.0.2.{}", 11 + i)
        };
        self.switch.plug(&host, &ip);
        (host, ip)
    }

    fn add_node_stopped_in(&mut self, host: Netns, ip: String) -> &mut Node {
        self.add_node_object_and_stopped_in(host, ip, true)
    }

    /// The node (and, with the Kubernetes datastore, its Node object first, with pod CIDRs
    /// when `pod_cidrs`), its daemon not started.
    fn add_node_object_and_stopped_in(
        &mut self,
        host: Netns,
        ip: String,
        pod_cidrs: bool,
    ) -> &mut Node {
        let name = format!("node{}", self.nodes.len());
        let cidr_flag = if self.v6 {
            "--cluster-cidr-v6"
        } else {
            "--cluster-cidr"
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let datastore = match self.datastore {
            Datastore::Etcd => {
                let mut f = format!("{} --etcd-prefix {}", self.etcd.client_flags(), self.prefix);
                if let Some(kc) = self.kubeconfig_path() {
                    f += &format!(" --kubeconfig {}", kc.display());
                }
                f
            }
            Datastore::Kubernetes => {
                let cidrs = if pod_cidrs {
                    self.allocate_pod_cidrs()
                } else {
                    Vec::new()
                };
                let object = new_node_object(&name, &ip, &cidrs);
                self.api()
                    .create(object)
                    .unwrap_or_else(|e| panic!("creating Node {name}: {e}"));
                let kc = self
                    .kubeconfig_path()
                    .expect("the Kubernetes datastore's kubeconfig");
                format!("--datastore kubernetes --kubeconfig {}", kc.display())
            }
        };
        // Each node its own secret, in its own directory: a machine of its own, and the
        // host's /var/lib/ferry untouched.
        let daemon_args = format!(
            "{datastore} --node-name {name} --state-dir {} --node-secret {} \
             --ipam-data-dir {} {cidr_flag} {} --health-addr {HEALTH_ADDR} --resync-interval 2s {}",
            dir.path().join("run").display(),
            dir.path().join("node-secret").display(),
            dir.path().join("ipam").display(),
            self.cidr,
            self.flags.join(" ")
        );
        let node = Node {
            name,
            host,
            ip,
            dir,
            daemon: None,
            daemon_args,
            conf_extra: json!({}),
        };
        self.nodes.push(node);
        self.nodes.last_mut().expect("just pushed")
    }

    /// Waits until every running node routes to every other node's subnet.
    /// What an operator does to turn BIG TCP on for the nodes' NICs: every node's `eth0`
    /// and the switch's ports (the network between them) get `big`, and each daemon
    /// restarts, since it reads the underlay's sizes when it starts.
    pub fn turn_big_tcp_on(&mut self, big: ferry_netlink::BigTcp) {
        self.switch.set_big_tcp(big);
        for n in self.nodes.iter_mut() {
            n.host.set_big_tcp("eth0", big);
            n.restart_daemon();
        }
    }

    pub fn wait_converged(&self) {
        let subnets: Vec<String> = self.nodes.iter().map(Node::subnet).collect();
        self.wait_routing_to(&subnets, Node::ferry_routes, Node::overlay_routes);
    }

    /// Waits until every node routes to every other node's IPv6 subnet on the VXLAN
    /// device (a dual-stack cluster: `wait_converged` looks at the IPv4 ones).
    pub fn wait_converged_v6(&self) {
        let subnets: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.node_state()["podCIDRv6"].as_str().unwrap().to_string())
            .collect();
        self.wait_routing_to(&subnets, Node::overlay_routes_v6, Node::overlay_routes_v6);
    }

    /// Waits until `routes` of every running node i names every `subnets[j]`, j != i;
    /// a failure shows `shown` of the node that did not.
    fn wait_routing_to(
        &self,
        subnets: &[String],
        routes: impl Fn(&Node) -> String,
        shown: impl Fn(&Node) -> String,
    ) {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.daemon.is_none() {
                continue;
            }
            let ok = wait_until(Duration::from_secs(20), || {
                let routes = routes(node);
                subnets
                    .iter()
                    .enumerate()
                    .all(|(j, s)| i == j || routes.contains(s.as_str()))
            });
            assert!(
                ok,
                "{} did not converge: {}\n{}",
                node.name,
                shown(node),
                node.log()
            );
        }
    }

    /// The names of every namespace of this cluster (pods not included).
    pub fn all_namespaces(&self) -> Vec<String> {
        let mut v = vec![
            self.switch.ns.name.clone(),
            self.etcd.host.name.clone(),
            self.outside.name.clone(),
        ];
        if let Some(r) = &self.routed {
            v.extend([r.switch.ns.name.clone(), r.router.name.clone()]);
        }
        v.extend(self.nodes.iter().map(|n| n.host.name.clone()));
        v
    }

    /// The temporary directories of this cluster.
    pub fn all_dirs(&self) -> Vec<PathBuf> {
        let mut v = vec![self.etcd.dir.path().to_path_buf()];
        v.extend(self.kubeconfig.iter().map(|d| d.path().to_path_buf()));
        v.extend(self.nodes.iter().map(|n| n.dir.path().to_path_buf()));
        v
    }

    /// The etcd key of the lease of `subnet` (`a.b.c.d/len`; an IPv6 one is an IPv6-only
    /// cluster's record key).
    pub fn lease_key(&self, subnet: &str) -> String {
        let dir = if subnet.contains(':') {
            "leases-v6"
        } else {
            "leases"
        };
        format!("{}/v1/{dir}/{}", self.prefix, subnet.replace('/', "-"))
    }

    /// Writes `value` at `key` with etcdctl, as an operator (or an intruder) would.
    pub fn etcd_put(&self, key: &str, value: &str) {
        self.etcd.ctl(&format!("put {key} '{value}'"));
    }

    /// The value at `key` (empty when there is none).
    pub fn etcd_get(&self, key: &str) -> String {
        self.etcd.ctl(&format!("get --print-value-only {key}"))
    }

    /// Gives every node and the outside host an IPv6 address on the switch too
    /// (`2001:db8::11`, … and `OUTSIDE_IP_V6`), for a dual-stack underlay.
    pub fn add_underlay_v6(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let ip6 = format!("2001:db8::{:x}", 0x11 + i);
            n.host
                .sh(&format!("ip -6 addr add {ip6}/64 dev eth0 nodad"));
            // A dual-stack kubelet (`--node-ip` of both) reports both.
            self.set_node_addresses(i, &[n.ip.clone(), ip6]);
        }
        self.outside
            .sh(&format!("ip -6 addr add {OUTSIDE_IP_V6}/64 dev eth0 nodad"));
    }

    /// Waits until `from` gets an answer from `ip` (either family): the first packets of a
    /// new pod wait for neighbour discovery.
    pub fn wait_reachable(&self, from: &Netns, ip: &str) {
        let up = wait_until(Duration::from_secs(10), || {
            from.try_sh(&format!("ping -c1 -W1 {ip}")).status.success()
        });
        assert!(
            up,
            "{ip} unreachable from {}:\n{}",
            from.name,
            self.nodes[0].log()
        );
    }

    /// Stops every node's daemon (SIGTERM must exit 0) and starts it again, one after
    /// the other, waiting until each answers; then checks that each kept its subnet and
    /// VTEP MAC and says it reused its lease.
    pub fn restart_daemons_keeping_leases(&mut self) {
        let before: Vec<_> = self
            .nodes
            .iter()
            .map(|n| (n.subnet(), n.vtep_mac()))
            .collect();
        for n in &mut self.nodes {
            assert_eq!(
                n.stop_daemon(),
                Some(0),
                "SIGTERM must exit 0:\n{}",
                n.log()
            );
            n.start_daemon();
            n.wait_answering();
        }
        let after: Vec<_> = self
            .nodes
            .iter()
            .map(|n| (n.subnet(), n.vtep_mac()))
            .collect();
        assert_eq!(before, after, "subnet or VTEP MAC moved across a restart");
        // A lease is etcd's; with the Kubernetes datastore the subnet is the Node's anyway.
        if self.datastore == Datastore::Etcd {
            for n in &self.nodes {
                assert!(n.log().contains("reused=true"), "{}", n.log());
            }
        }
    }

    /// Pod `a` on node 0 and pod `b` on node 1 (in that order): the pair most tests
    /// send traffic between.
    pub fn pods_across(&self, a: &str, b: &str) -> (Pod, Pod) {
        (self.nodes[0].add_pod(a), self.nodes[1].add_pod(b))
    }

    /// Every node's underlay address.
    pub fn node_ips(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.ip.as_str()).collect()
    }

    /// `ferry-ipam leases` of this cluster run on node 0, with `extra` flags (`-o json`),
    /// from the cluster's datastore (`--kubeconfig`: the daemons' own).
    pub fn ipam_leases(&self, extra: &str) -> String {
        // With the Kubernetes datastore the cluster CIDRs come from the flags, as
        // ferry's container has them from the ConfigMap.
        let mut cidrs = String::new();
        if self.datastore == Datastore::Kubernetes {
            let v4 = if self.v6 { "-v6" } else { "" };
            cidrs = format!("--cluster-cidr{v4} {}", self.cidr);
            if let Some(c6) = &self.cidr6 {
                cidrs += &format!(" --cluster-cidr-v6 {c6}");
            }
        }
        self.nodes[0].host.sh(&format!(
            "{} leases {} {cidrs} {extra}",
            crate::bin("ferry-ipam").display(),
            self.datastore_flags()
        ))
    }

    /// The flags naming the cluster's datastore for ferry's tools: etcd's endpoint and
    /// prefix, or `--kubeconfig`.
    pub fn datastore_flags(&self) -> String {
        match (self.datastore, self.kubeconfig_path()) {
            (Datastore::Kubernetes, Some(kc)) => format!("--kubeconfig {}", kc.display()),
            _ => format!("{} --etcd-prefix {}", self.etcd.client_flags(), self.prefix),
        }
    }

    /// A host on the underlay that is not a node.
    pub fn stranger(&self, ip: &str) -> Netns {
        let ns = Netns::new("fyx");
        self.switch.plug(&ns, ip);
        ns
    }

    /// The metrics a node serves, fetched from inside its namespace.
    pub fn metrics(&self, node: usize) -> String {
        http_get(&self.nodes[node].host, HEALTH_ADDR, "/metrics").1
    }

    /// Asserts node `node` serves metric `name` (with any labels and value).
    pub fn assert_metric_served(&self, node: usize, name: &str) {
        let m = self.metrics(node);
        assert!(m.contains(name), "{name} not served by node {node}:\n{m}");
    }

    /// One series of a node's metrics (`name` or `name{labels}`, as served); 0 when absent.
    pub fn metric(&self, node: usize, series: &str) -> u64 {
        self.metrics(node)
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }
}

/// A GET from inside `ns`: (status, body). Python keeps the tests free of curl.
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> (u16, String) {
    let (host, port) = addr.split_once(':').expect("host:port");
    let script = format!(
        "import http.client\n\
         c=http.client.HTTPConnection('{host}',{port},timeout=3)\n\
         c.request('GET','{path}')\n\
         r=c.getresponse()\n\
         print(r.status)\n\
         print(r.read().decode())\n"
    );
    let out = ns.try_sh(&format!("python3 -c \"{script}\""));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or(("0", ""));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// Runs `ferry-overlayd ARGS` in the foreground inside `ns`, killed after `secs`
/// (`timeout`'s code 124 then): its exit code and stderr. Without `--node-secret` in
/// `ARGS` it gets a fresh one of its own (a machine never seen), never the host's.
pub fn run_overlayd(ns: &Netns, args: &str, secs: u32) -> (Option<i32>, String) {
    let secret = tempfile::tempdir().expect("tempdir");
    let env = if args.contains("--node-secret") {
        String::new()
    } else {
        format!(
            "FERRY_NODE_SECRET={} ",
            secret.path().join("node-secret").display()
        )
    };
    let out = ns.try_sh(&format!(
        "{env}timeout {secs} {} {args}",
        crate::bin("ferry-overlayd").display()
    ));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
