//! The Kubernetes datastore's side of `join` and `scale`, and `rollout` (issue 25): Node
//! objects in the API stand-in ([`KubeApi`]) instead of leases in etcd.
//!
//! Every simulated node is a Node as a kubelet and the controller-manager leave it: a pod
//! CIDR, an InternalIP, ferry's annotations, and (for realism: the daemon reads every Node
//! whole off the wire) labels, capacity, 5 conditions, 15 images and nodeInfo, a few KB each.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_tests::cluster::{Cluster, Node, Switch, HEALTH_ADDR};
use ferry_tests::kapi::{KubeApi, Request};
use ferry_tests::netns::Netns;
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node as NodeObject;
use serde_json::{json, Value};

use super::{cold_start, route_appears, Cold};

/// Where the stand-in listens, on the switch (the etcd host's address in the etcd runs).
const API_IP: &str = "192.0.2.2";
/// The daemon's user: the `ferry` service account of the shipped manifest.
const DAEMON_USER: &str = "system:serviceaccount:kube-system:ferry";
const PUBLIC_IP: &str = "ferry.dev/public-ip";
const VTEP_MAC: &str = "ferry.dev/vtep-mac";
const USAGE: &str = "ferry.dev/usage";

/// Simulated node `i`'s subnet: the (i+1)th /24 of 10.0.0.0/8, as the etcd runs lease them.
pub fn sim_subnet(i: usize) -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 + ((i as u32 + 1) << 8)), 24).expect("subnet")
}

/// Simulated node `i`'s underlay address, as the etcd runs give it.
pub fn sim_ip(i: usize) -> String {
    format!("192.0.2.{}", 100 + i % 100)
}

/// Simulated node `i`'s VTEP MAC in generation `gen` (0: the etcd runs' MACs; a rollout
/// rewrites them to generation 1).
pub fn sim_mac(gen: u8, i: usize) -> String {
    format!(
        "0e:{gen:02x}:00:{:02x}:{:02x}:{:02x}",
        i >> 16 & 0xff,
        i >> 8 & 0xff,
        i & 0xff
    )
}

/// A Node named `name` with pod CIDR `pod_cidr` at InternalIP `ip`, with ferry's
/// annotations when `published` gives them (public IP, MAC), and a full status.
pub fn sim_node(
    name: &str,
    pod_cidr: &str,
    ip: &str,
    published: Option<(&str, &str)>,
) -> NodeObject {
    let now = "2026-12-07T15:00:00Z";
    let mut annotations = json!({
        "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
    });
    if let Some((public_ip, mac)) = published {
        annotations[PUBLIC_IP] = json!(public_ip);
        annotations[VTEP_MAC] = json!(mac);
        annotations[USAGE] = json!(r#"{"used":3,"capacity":254}"#);
    }
    let conditions: Vec<Value> = [
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        (
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
        (
            "NetworkUnavailable",
            "False",
            "RouteCreated",
            "RouteController created a route",
        ),
    ]
    .iter()
    .map(|(t, s, r, m)| {
        json!({"type": t, "status": s, "reason": r, "message": m,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    })
    .collect();
    let seed = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let images: Vec<Value> = (0..15u64)
        .map(|j| {
            let h = (seed ^ j).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let digest = format!("{h:016x}{:016x}{h:016x}{:016x}", !h, h.rotate_left(7));
            json!({
                "names": [
                    format!("registry.k8s.io/example/image-{j}@sha256:{digest}"),
                    format!("registry.k8s.io/example/image-{j}:v1.{j}.0"),
                ],
                "sizeBytes": 10_000_000 + j * 1_234_567,
            })
        })
        .collect();
    let resources = json!({"cpu": "8", "ephemeral-storage": "101430960Ki",
        "hugepages-1Gi": "0", "hugepages-2Mi": "0", "memory": "32779304Ki", "pods": "110"});
    let v = json!({
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "m5.2xlarge",
                "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": "eu-west-1a",
            },
            "annotations": annotations,
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "providerID": format!("aws:///eu-west-1a/i-{seed:017x}")},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "allocatable": resources.clone(),
            "capacity": resources,
            "conditions": conditions,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": images,
            "nodeInfo": {
                "architecture": "amd64", "bootID": format!("{seed:032x}"),
                "containerRuntimeVersion": "containerd://1.7.24", "kernelVersion": "6.1.0-28-cloud-amd64",
                "kubeProxyVersion": "v1.31.4", "kubeletVersion": "v1.31.4",
                "machineID": format!("{:032x}", !seed), "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)", "systemUUID": format!("{seed:032x}"),
            },
        },
    });
    serde_json::from_value(v).unwrap_or_else(|e| panic!("Node {name}: {e}"))
}

/// The API stand-in on its own switch, as the kit serves it (HTTPS, the manifest's RBAC,
/// the `ferry` service account's kubeconfig), holding `n` simulated nodes' Nodes.
pub struct World {
    pub switch: Switch,
    _api_host: Netns,
    pub api: KubeApi,
    dir: tempfile::TempDir,
    token: String,
    /// One simulated Node's JSON, in bytes.
    pub node_bytes: usize,
}

impl World {
    pub fn new(n: usize) -> World {
        let switch = Switch::new();
        let api_host = Netns::new("fya");
        switch.plug(&api_host, API_IP);
        let addr = SocketAddr::new(API_IP.parse().expect("ip"), 0);
        let api = ferry_tests::inside::run(&api_host, move || KubeApi::bind_tls(addr, &[]))
            .expect("the API stand-in");
        let token = api.service_account_token("kube-system", "ferry");
        let (roles, bindings) = ferry_tests::manifest::rbac();
        api.set_rbac(roles, bindings);
        let dir = tempfile::tempdir().expect("tempdir");
        api.write_kubeconfig_with_token(&dir.path().join("kubeconfig"), &token)
            .expect("kubeconfig");
        std::fs::write(dir.path().join("ca.pem"), api.ca_pem()).expect("ca.pem");
        let mut node_bytes = 0;
        for i in 0..n {
            let (ip, mac) = (sim_ip(i), sim_mac(0, i));
            let obj = sim_node(
                &format!("sim{i}"),
                &sim_subnet(i).to_string(),
                &ip,
                Some((&ip, &mac)),
            );
            if i == 0 {
                node_bytes = serde_json::to_vec(&obj).map_or(0, |v| v.len());
            }
            api.create(obj).expect("a simulated Node");
        }
        World {
            switch,
            _api_host: api_host,
            api,
            dir,
            token,
            node_bytes,
        }
    }

    /// Lists every Node with curl from `client` (on the switch), as the daemon pages it
    /// (500 a time) and in one page: curl's own `time_total`s, summed, and the bytes.
    pub fn list_time(&self, client: &Netns) -> (Duration, Duration, usize) {
        let ca = self.dir.path().join("ca.pem");
        let body = self.dir.path().join("page.json");
        let get = |query: &str| {
            let out = client.sh(&format!(
                "curl -sS --fail --cacert {} -H 'Authorization: Bearer {}' -o {} -w '%{{time_total}} %{{size_download}}' '{}/api/v1/nodes?{query}'",
                ca.display(),
                self.token,
                body.display(),
                self.api.url()
            ));
            let mut f = out.split_whitespace();
            let secs: f64 = f.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
            let bytes: usize = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            (Duration::from_secs_f64(secs), bytes)
        };
        let (mut paged, mut query) = (Duration::ZERO, "limit=500".to_string());
        loop {
            let (t, _) = get(&query);
            paged += t;
            let page: Value =
                serde_json::from_slice(&std::fs::read(&body).expect("page")).expect("a list");
            match page["metadata"]["continue"]
                .as_str()
                .filter(|c| !c.is_empty())
            {
                Some(c) => {
                    query = form_urlencoded::Serializer::new(String::new())
                        .append_pair("limit", "500")
                        .append_pair("continue", c)
                        .finish()
                }
                None => break,
            }
        }
        let (whole, bytes) = get("");
        (paged, whole, bytes)
    }

    /// The cold node `cold` at 192.0.2.11 (its Node made first, pod CIDR 10.0.0.0/24,
    /// no annotations yet: its daemon publishes them), its daemon not started.
    pub fn node(&self) -> Node {
        let host = Netns::new("fyn");
        self.switch.plug(&host, "192.0.2.11");
        self.api
            .create(sim_node("cold", "10.0.0.0/24", "192.0.2.11", None))
            .expect("Node cold");
        let dir = tempfile::tempdir().expect("tempdir");
        Node {
            name: "cold".into(),
            host,
            ip: "192.0.2.11".into(),
            daemon: None,
            daemon_args: format!(
                "--datastore kubernetes --kubeconfig {} --cluster-cidr 10.0.0.0/8 --node-name cold --state-dir {} --node-secret {} --ipam-data-dir {} --health-addr {HEALTH_ADDR}",
                self.dir.path().join("kubeconfig").display(),
                dir.path().join("run").display(),
                dir.path().join("node-secret").display(),
                dir.path().join("ipam").display(),
            ),
            dir,
            conf_extra: json!({}),
        }
    }

    /// The requests the daemon made from index `from` of the stand-in's record on.
    fn daemon_requests(&self, from: usize) -> Vec<Request> {
        self.api
            .requests()
            .into_iter()
            .skip(from)
            .filter(|r| r.user.as_deref() == Some(DAEMON_USER))
            .collect()
    }
}

/// `scale`'s Kubernetes side: `n` Nodes in the stand-in, the stand-in's list time alone,
/// then one daemon from a cold start.
pub fn scale(n: usize) -> (Cold, String) {
    println!("== scale: {n} simulated nodes' Node objects in the API stand-in, one daemon from a cold start");
    let t = Instant::now();
    let w = World::new(n);
    let made = t.elapsed();
    let client = Netns::new("fyc");
    w.switch.plug(&client, "192.0.2.3");
    let (paged, whole, bytes) = w.list_time(&client);
    let list = format!(
        "stand-in alone (curl): every Node listed 500 a page in {:.0} ms, in one page in {:.0} ms ({:.1} MB, {} bytes a Node); the {n} Nodes made in {:.2} s",
        paged.as_secs_f64() * 1000.0,
        whole.as_secs_f64() * 1000.0,
        bytes as f64 / 1e6,
        w.node_bytes,
        made.as_secs_f64()
    );
    println!("{list}");
    // The daemon's requests only: the curls above went as the same user.
    let from = w.api.requests().len();
    let mut node = w.node();
    let cold = cold_start(&mut node);
    let reqs = w.daemon_requests(from);
    println!("the daemon's requests from its start: {}\n", by_verb(&reqs));
    if std::env::var("FERRY_BENCH_REQUESTS").is_ok_and(|v| v == "1") {
        for r in &reqs {
            println!("  {} {}?{} -> {:?}", r.method, r.path, r.query, r.status);
        }
    }
    drop(node);
    (cold, list)
}

/// The verb of a request, as the API server's audit log names it.
fn verb(r: &Request) -> &'static str {
    match r.method.as_str() {
        "GET" if r.is_watch() => "watch",
        "GET" if r.path.trim_end_matches('/').ends_with("/nodes") => "list",
        "GET" => "get",
        "PATCH" => "patch",
        "POST" => "create",
        "PUT" => "update",
        "DELETE" => "delete",
        _ => "other",
    }
}

/// `list 2, patch 1, watch 1` (and how many were not 2xx, if any).
fn by_verb(reqs: &[Request]) -> String {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reqs {
        *m.entry(verb(r)).or_default() += 1;
    }
    let failed = reqs
        .iter()
        .filter(|r| !matches!(r.status, Some(200..=299) | None))
        .count();
    let mut s = if m.is_empty() {
        "none".to_string()
    } else {
        m.iter()
            .map(|(v, c)| format!("{v} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if failed > 0 {
        s += &format!(" ({failed} not 2xx)");
    }
    s
}

/// The process's CPU time so far (utime + stime of /proc/PID/stat), in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // After the comm: state is field 3, utime 14, stime 15.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

/// How many of the daemon's FDB entries and neighbours on ferry.1 carry a MAC of
/// generation `gen`.
pub fn macs_of(node: &Node, gen: u8) -> (usize, usize) {
    let count = |cmd: &str| {
        node.host
            .sh(&format!("{cmd} || true"))
            .trim()
            .parse::<usize>()
            .unwrap_or(0)
    };
    (
        count(&format!(
            "bridge fdb show dev ferry.1 | grep -c '^0e:{gen:02x}:'"
        )),
        count(&format!(
            "ip neigh show dev ferry.1 | grep -c 'lladdr 0e:{gen:02x}:'"
        )),
    )
}

/// One window of the rollout: the daemon's CPU seconds, the wall time, its requests.
pub struct Window {
    pub cpu: f64,
    pub wall: Duration,
    /// How long writing the patches took (the bench's side, in the stand-in).
    pub patching: Duration,
    pub requests: String,
}

/// `rollout`: `n` Nodes and one real daemon, ready and watching; then an idle window, every
/// Node's `ferry.dev/usage` rewritten (the daemon must not reprogram anything), and every
/// Node's `ferry.dev/vtep-mac` rewritten (until its FDB and neighbours carry every new MAC).
pub fn rollout(n: usize) -> (Window, Window, Window) {
    const FIXED: Duration = Duration::from_secs(3);
    println!("== rollout: {n} Nodes in the API stand-in, one daemon; every Node's annotations patched at once");
    let w = World::new(n);
    let mut node = w.node();
    let cold = cold_start(&mut node);
    let pid = node.daemon_pid().expect("the daemon's pid");
    // Its watch is open (the watcher's own list, after ready, is done by then).
    let watching = ferry_tests::proc::wait_until(Duration::from_secs(60), || {
        w.daemon_requests(0).iter().any(Request::is_watch)
    });
    assert!(watching, "the daemon never watched:\n{}", node.log());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(macs_of(&node, 0), (n, n), "every peer programmed first");
    // `settled` is asked every 50 ms with the time since the last patch was written.
    let window = |patch: &dyn Fn(usize) -> Value, settled: &dyn Fn(Duration) -> bool| {
        let (cpu0, r0) = (cpu_secs(pid), w.api.requests().len());
        let t = Instant::now();
        for i in 0..n {
            w.api
                .merge_patch::<NodeObject>(None, &format!("sim{i}"), &patch(i))
                .expect("patch");
        }
        let patching = t.elapsed();
        let last = Instant::now();
        while !settled(last.elapsed()) && t.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let wall = t.elapsed();
        Window {
            cpu: cpu_secs(pid) - cpu0,
            wall,
            patching,
            requests: by_verb(&w.daemon_requests(r0)),
        }
    };
    let idle = {
        let (cpu0, r0) = (cpu_secs(pid), w.api.requests().len());
        std::thread::sleep(FIXED);
        Window {
            cpu: cpu_secs(pid) - cpu0,
            wall: FIXED,
            patching: Duration::ZERO,
            requests: by_verb(&w.daemon_requests(r0)),
        }
    };
    // A fixed settle time from the last patch: there is nothing to see if all is well.
    let usage = window(
        &|i| json!({"metadata": {"annotations": {USAGE: format!(r#"{{"used":{},"capacity":254}}"#, 4 + i % 7)}}}),
        &|since| since >= FIXED,
    );
    let unchanged = macs_of(&node, 0);
    let perf = Profile::start(pid);
    let mac = window(
        &|i| json!({"metadata": {"annotations": {VTEP_MAC: sim_mac(1, i)}}}),
        &|_| macs_of(&node, 1) == (n, n),
    );
    let done = macs_of(&node, 1);
    if let Some(p) = perf {
        p.report("the daemon during the vtep-mac rollout");
    }
    println!(
        "cold start before it: ready after {:.2} s, peak RSS {:.1} MiB",
        cold.ready_s, cold.hwm_mib
    );
    println!(
        "idle, {:.0} s: CPU {:.2} s; requests: {}",
        idle.wall.as_secs_f64(),
        idle.cpu,
        idle.requests
    );
    println!(
        "usage rewritten on {n} Nodes (patches written in {:.2} s), {:.0} s from the first patch: CPU {:.2} s; requests: {}; FDB/neighbours with the old MACs after it: {unchanged:?}",
        usage.patching.as_secs_f64(),
        usage.wall.as_secs_f64(),
        usage.cpu,
        usage.requests
    );
    println!(
        "vtep-mac rewritten on {n} Nodes (patches written in {:.2} s): settled (every new MAC in FDB and neighbours: {done:?}) {:.2} s after the first patch; CPU {:.2} s; requests: {}\n",
        mac.patching.as_secs_f64(),
        mac.wall.as_secs_f64(),
        mac.cpu,
        mac.requests
    );
    drop(node);
    (idle, usage, mac)
}

/// One simulated join in a Kubernetes-datastore cluster whose cluster CIDR is 10.83.0.0/16:
/// Node `simK` made with pod CIDR 10.83.(200+k).0/24 and its annotations; from the create's
/// return to the route on the last node, in ms.
pub fn join_one(c: &Cluster, k: usize) -> f64 {
    let subnet: Ipv4Network = format!("10.83.{}.0/24", 200 + k).parse().expect("subnet");
    let obj = sim_node(
        &format!("sim{k}"),
        &subnet.to_string(),
        "192.0.2.240",
        Some(("192.0.2.240", &format!("0e:00:00:00:02:{k:02x}"))),
    );
    let start = Instant::now();
    let watchers: Vec<_> = c
        .nodes
        .iter()
        .map(|n| route_appears(&n.host, subnet, start))
        .collect();
    c.api().create(obj).expect("Node");
    let created = start.elapsed();
    let done = watchers
        .into_iter()
        .map(|w| w.join().expect("watcher"))
        .max()
        .unwrap_or_default();
    done.saturating_sub(created).as_secs_f64() * 1000.0
}

/// `perf record` of one process, with FERRY_BENCH_PROFILE=1 (needs perf).
struct Profile {
    child: std::process::Child,
    data: std::path::PathBuf,
}

impl Profile {
    fn start(pid: u32) -> Option<Profile> {
        if !std::env::var("FERRY_BENCH_PROFILE").is_ok_and(|v| v == "1") {
            return None;
        }
        let data = std::env::temp_dir().join(format!("ferry-bench-rollout-{pid}.data"));
        let child = std::process::Command::new("perf")
            .args(["record", "-q", "-F", "999", "-p", &pid.to_string(), "-o"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        std::thread::sleep(Duration::from_millis(300));
        Some(Profile { child, data })
    }

    /// Stops the recording and prints the functions with the most samples.
    fn report(mut self, what: &str) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let out = std::process::Command::new("perf")
            .args(["report", "--stdio", "--sort", "sym", "-i"])
            .arg(&self.data)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let _ = std::fs::remove_file(&self.data);
        println!("profile, {what}: functions with the most samples, % of the process's samples");
        for l in out
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .take(20)
        {
            println!("  {}", l.trim());
        }
    }
}
