//! `ferry-bench-netpol latency [ROUNDS] | datapath [--small] | memory [--small]`, as root
//! (each also takes `--pods N --policies N`; `latency` then loads the API as `memory` does).
//!
//! NetworkPolicy's figures, each mode in one run with the Kubernetes API served by the
//! test's stand-in (`KubeApi`, in the etcd host's namespace, reached by every node over the
//! underlay):
//!
//! - latency: a 3-node cluster with `--network-policy`, two pods per node made as a kubelet
//!   makes them (the Pod object first, then ADD with `CNI_ARGS`, then `status.podIPs`).
//!   Each round changes what a policy allows through the API, alternately a client pod's
//!   label that the policy's peer selector matches and the policy's port, and times, per
//!   node, the API write to the node's kernel set showing the change (polled every 2 ms
//!   through one `nft -i` per node); p50/p99 per node and for every node, and a check
//!   that each node's whole table then equals what the API's objects call for.
//! - datapath: single-stream pod-to-pod throughput across two nodes (iperf3) and new TCP
//!   connections per second (a connect-and-close loop), with no policy and with 1,000
//!   policies whose peer sets hold 10,000 pod addresses (Pod objects on fake nodes, only
//!   in the API) and 1,000 ipBlocks, one of them allowing the measured pair; alternating
//!   rounds, medians, and the ratio.
//! - memory: one node against an API holding 10,000 pods in 100 namespaces on 100 fake
//!   nodes and 1,000 policies, from a cold start: time until the table is applied, the
//!   table's size and the daemon's peak RSS.
//!
//! `--cnps N` adds N ClusterNetworkPolicies (half Admin, half Baseline tier, each
//! selecting its own namespace's pods, two of them the measured pods too, none matching
//! the measured pair; `--cnps-everywhere`: each selecting every pod, so that each new
//! connection of the measured pods meets all their rules before its NetworkPolicy
//! decides); `latency --cnp`
//! times changes of an Admin-tier ClusterNetworkPolicy instead of a NetworkPolicy.
//! `--small` divides the API's objects by ten (a quick check that the mode works);
//! `--pods N` and `--policies N` set them. `FERRY_BENCH_DAEMON_WRAPPER` is a command prefix
//! for the daemon of the memory mode (`env MALLOC_ARENA_MAX=2`, `heaptrack -o FILE`).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_netpol::desired::SetKind;
use ferry_netpol::{ClusterNetworkPolicy, LocalPods, Ruleset, Table, TableFamily, TABLE};
use ferry_tests::cluster::{
    http_get, Cluster, Datastore, Node, Pod as PodNs, ETCD_IP, HEALTH_ADDR,
};
use ferry_tests::kapi::{KubeApi, Served};
use ferry_tests::netns::Netns;
use ferry_tests::proc::wait_until;
use ferry_tests::stats::{median, ms, percentile};
use ferry_tests::traffic::{connect_rate, iperf};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

/// Where the API stand-in listens, in the etcd host's namespace (every cluster has its own
/// underlay, so a fixed port never meets another run's).
const API_PORT: u16 = 6443;
/// The namespace of the real pods the benchmarks measure.
const BENCH_NS: &str = "bench";

fn main() {
    if !ferry_tests::is_root() {
        eprintln!("ferry-bench-netpol needs root (it makes network namespaces)");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().collect();
    let rest: Vec<&str> = args.iter().skip(2).map(String::as_str).collect();
    let small = rest.contains(&"--small");
    let mut scale = if small { Scale::SMALL } else { Scale::FULL };
    // `--pods N`, `--policies N`: other sizes, to see which part of the state costs what.
    let flag = |name: &str| {
        rest.iter()
            .position(|a| *a == name)
            .and_then(|i| rest.get(i + 1)?.parse::<usize>().ok())
    };
    scale.pods = flag("--pods").unwrap_or(scale.pods);
    scale.policies = flag("--policies").unwrap_or(scale.policies);
    scale.cnps = flag("--cnps").unwrap_or(0);
    scale.cnps_everywhere = rest.contains(&"--cnps-everywhere");
    // `--cnp`: the latency mode changes a ClusterNetworkPolicy instead of a NetworkPolicy.
    let cnp_latency = rest.contains(&"--cnp");
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let header = || {
        println!("$ {}", args.join(" "));
        println!("load average at start: {}", load_average());
    };
    match mode {
        "latency" => {
            let rounds = rest
                .first()
                .and_then(|a| a.parse::<usize>().ok())
                .unwrap_or(100);
            header();
            // With --pods or --policies the API also holds that many (as in `memory`),
            // so each change is computed against a large state.
            let load = (flag("--pods").is_some()
                || flag("--policies").is_some()
                || flag("--cnps").is_some())
            .then_some(scale);
            latency(rounds, load, cnp_latency);
        }
        "datapath" => {
            header();
            datapath(scale);
        }
        "memory" => {
            header();
            memory(scale);
        }
        _ => {
            eprintln!("usage: ferry-bench-netpol latency [ROUNDS] [--cnp] | datapath [--small] | memory [--small], each with [--pods N] [--policies N] [--cnps N]");
            std::process::exit(2);
        }
    }
    println!("load average at end: {}", load_average());
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// How many objects the API holds beside the measured pods.
#[derive(Debug, Clone, Copy)]
struct Scale {
    pods: usize,
    namespaces: usize,
    policies: usize,
    fake_nodes: usize,
    /// ClusterNetworkPolicies (`--cnps N`): half in each tier (see [`synthetic_cnps`]).
    cnps: usize,
    /// Whether every one of them selects every pod (`--cnps-everywhere`), not only its
    /// own namespace's.
    cnps_everywhere: bool,
}

impl Scale {
    const FULL: Scale = Scale {
        pods: 10_000,
        namespaces: 100,
        policies: 1_000,
        fake_nodes: 100,
        cnps: 0,
        cnps_everywhere: false,
    };
    const SMALL: Scale = Scale {
        pods: 1_000,
        namespaces: 10,
        policies: 100,
        fake_nodes: 10,
        cnps: 0,
        cnps_everywhere: false,
    };
}

fn k8s<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid Kubernetes object")
}

fn namespace(name: &str) -> Namespace {
    k8s(json!({"metadata": {"name": name}}))
}

/// A pod as the kubelet's API shows it: on `node`, with `ip` once it has one.
fn pod(
    ns: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    node: &str,
    ip: Option<&str>,
) -> Pod {
    let mut v = json!({
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]},
    });
    if let Some(ip) = ip {
        v["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]});
    }
    k8s(v)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An ingress policy in `ns` selecting `app=<app>` and admitting `from` (a pod selector's
/// labels, in the same namespace) and `blocks` on TCP `ports`.
fn policy(
    ns: &str,
    name: &str,
    app: &str,
    from: Value,
    blocks: &[String],
    ports: &[Value],
) -> NetworkPolicy {
    let mut peers = vec![json!({"podSelector": {"matchLabels": from}})];
    peers.extend(blocks.iter().map(|b| json!({"ipBlock": {"cidr": b}})));
    k8s(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": ports}],
        },
    }))
}

/// The API's objects beside the measured pods: `pods` pods in `namespaces` namespaces on
/// `fake_nodes` nodes that do not exist (each with a /24 of 10.200.0.0/16), and `policies`
/// policies spread over the namespaces. Policy k of a namespace admits, from its own
/// namespace, the pods of group k (so the peer sets together hold every pod's address once)
/// and one ipBlock of its own, on TCP 80 and 8000-8100.
struct Synthetic {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    policies: Vec<NetworkPolicy>,
}

fn synthetic(s: Scale, policies: usize) -> Synthetic {
    let per_ns = s.pods / s.namespaces;
    let groups = (policies / s.namespaces).max(1);
    let namespaces = (0..s.namespaces)
        .map(|n| namespace(&format!("load{n}")))
        .collect();
    let pods = (0..s.pods)
        .map(|i| {
            let (n, j) = (i / per_ns, i % per_ns);
            let node = i % s.fake_nodes;
            let ip = format!("10.200.{node}.{}", i / s.fake_nodes + 2);
            let l = labels(&[
                ("app", &format!("app{}", j % groups)),
                ("grp", &format!("g{}", (j / groups) % groups)),
            ]);
            pod(
                &format!("load{n}"),
                &format!("p{i}"),
                &l,
                &format!("fake{node}"),
                Some(&ip),
            )
        })
        .collect();
    let ports = [
        json!({"protocol": "TCP", "port": 80}),
        json!({"protocol": "TCP", "port": 8000, "endPort": 8100}),
    ];
    let policies = (0..policies)
        .map(|p| {
            let (n, k) = (p % s.namespaces, p / s.namespaces);
            let block = format!("172.16.{}.{}/30", p / 64, (p % 64) * 4);
            policy(
                &format!("load{n}"),
                &format!("pol{k}"),
                &format!("app{}", k % groups),
                json!({"grp": format!("g{}", k % groups)}),
                &[block],
                &ports,
            )
        })
        .collect();
    Synthetic {
        namespaces,
        pods,
        policies,
    }
}

/// `n` ClusterNetworkPolicies, the first half in the Admin tier, the rest in the Baseline
/// tier. Each selects the pods of its own namespace load<i> and, the first of each tier,
/// the measured pods' namespace too (a tenant's policies: a pod meets the rules of the
/// few that select it); with `everywhere` each selects every pod (the worst case: a new
/// connection meets all their rules). Admin policy i denies ingress from the pods of group
/// g<i> of namespace load<i> on TCP 80 and passes egress to a /30 of 172.17/16; Baseline
/// policy i denies ingress from the same group on TCP 8000-8100 and egress to a /30 of
/// 172.18/16. None matches the measured pods' traffic.
fn synthetic_cnps(n: usize, s: Scale) -> Vec<ClusterNetworkPolicy> {
    (0..n)
        .map(|i| {
            let subject = if s.cnps_everywhere {
                json!({"namespaces": {}})
            } else {
                let mut names = vec![format!("load{}", i % s.namespaces)];
                if i == 0 || i == n / 2 {
                    names.push(BENCH_NS.to_string());
                }
                json!({"namespaces": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": names}]}})
            };
            let spec = if i < n / 2 {
                json!({
                    "tier": "Admin", "priority": i % 1001, "subject": subject,
                    "ingress": [{"name": "deny-group", "action": "Deny",
                                 "from": [{"pods": {
                                     "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": format!("load{}", i % s.namespaces)}},
                                     "podSelector": {"matchLabels": {"grp": format!("g{}", i % 10)}}}}],
                                 "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]}],
                    "egress": [{"name": "pass-net", "action": "Pass",
                                "to": [{"networks": [format!("172.17.{}.{}/30", i / 64, (i % 64) * 4)]}]}],
                })
            } else {
                json!({
                    "tier": "Baseline", "priority": i % 1001, "subject": subject,
                    "ingress": [{"name": "deny-group", "action": "Deny",
                                 "from": [{"pods": {
                                     "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": format!("load{}", i % s.namespaces)}},
                                     "podSelector": {"matchLabels": {"grp": format!("g{}", i % 10)}}}}],
                                 "protocols": [{"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8100}}}}]}],
                    "egress": [{"name": "deny-net", "action": "Deny",
                                "to": [{"networks": [format!("172.18.{}.{}/30", i / 64, (i % 64) * 4)]}]}],
                })
            };
            ClusterNetworkPolicy::new(&format!("cnp{i}"), spec)
        })
        .collect()
}

/// The API stand-in and what it holds, for computing what each node should enforce.
struct Api {
    api: KubeApi,
    /// The daemons' kubeconfig, read again on every start.
    _kubeconfig: tempfile::TempDir,
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<(String, String), Pod>,
    policies: BTreeMap<(String, String), NetworkPolicy>,
    cnps: BTreeMap<(String, String), ClusterNetworkPolicy>,
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Creates `obj`, or replaces it when `known` holds it; `known` keeps the server's copy.
fn put<K: Served>(api: &KubeApi, known: &mut BTreeMap<(String, String), K>, obj: K) {
    let k = key(obj.metadata());
    let obj = if known.contains_key(&k) {
        api.update(obj)
    } else {
        api.create(obj)
    }
    .unwrap_or_else(|e| panic!("writing {k:?} to the API: {e}"));
    known.insert(k, obj);
}

impl Api {
    /// Listening in `ns` on `ETCD_IP:API_PORT`; `kubeconfig` (the daemons') is kept as
    /// long as the API.
    fn start(ns: &Netns, kubeconfig: tempfile::TempDir) -> Api {
        let addr: SocketAddr = format!("{ETCD_IP}:{API_PORT}").parse().expect("address");
        let api =
            ferry_tests::inside::run(ns, move || KubeApi::bind(addr)).expect("the API stand-in");
        Api {
            api,
            _kubeconfig: kubeconfig,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            policies: BTreeMap::new(),
            cnps: BTreeMap::new(),
        }
    }

    /// The kubeconfig of a daemon started before the API is (it retries until the API
    /// answers), naming where `start` will listen.
    fn kubeconfig_for_later() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubeconfig");
        ferry_tests::kapi::write_kubeconfig(&path, &format!("http://{ETCD_IP}:{API_PORT}"))
            .expect("kubeconfig");
        (dir, path)
    }

    fn add_namespace(&mut self, ns: Namespace) {
        let ns = self.api.create(ns).expect("create namespace");
        self.namespaces
            .insert(ns.metadata.name.clone().unwrap_or_default(), ns);
    }

    fn put_pod(&mut self, pod: Pod) {
        put(&self.api, &mut self.pods, pod);
    }

    fn put_policy(&mut self, p: NetworkPolicy) {
        put(&self.api, &mut self.policies, p);
    }

    fn put_cnp(&mut self, p: ClusterNetworkPolicy) {
        put(&self.api, &mut self.cnps, p);
    }

    fn delete_policies(&mut self) {
        for (ns, name) in std::mem::take(&mut self.policies).into_keys() {
            self.api
                .delete::<NetworkPolicy>(Some(&ns), &name)
                .expect("delete policy");
        }
        for (_, name) in std::mem::take(&mut self.cnps).into_keys() {
            self.api
                .delete::<ClusterNetworkPolicy>(None, &name)
                .expect("delete ClusterNetworkPolicy");
        }
    }

    fn load(&mut self, s: Synthetic) {
        s.namespaces.into_iter().for_each(|n| self.add_namespace(n));
        s.pods.into_iter().for_each(|p| self.put_pod(p));
        s.policies.into_iter().for_each(|p| self.put_policy(p));
    }

    /// A pod made as a kubelet makes it: the Pod object, then ADD naming it in
    /// `CNI_ARGS` (which returns once the node's table covers it), then its address.
    fn kubelet_pod(&mut self, node: &Node, name: &str, l: &BTreeMap<String, String>) -> PodNs {
        self.put_pod(pod(BENCH_NS, name, l, &node.name, None));
        let args = format!("K8S_POD_NAMESPACE={BENCH_NS};K8S_POD_NAME={name}");
        let p = node.add_pod_as(name, Some(&args));
        self.put_pod(pod(BENCH_NS, name, l, &node.name, Some(&p.ip)));
        p
    }

    /// Waits until every one of `nodes` enforces what the API's objects call for; the time
    /// until the last one did (at the poll that showed it).
    fn enforced_everywhere(&self, nodes: &[Node], every: Duration, timeout: Duration) -> Duration {
        let t = Instant::now();
        nodes
            .iter()
            .map(|n| wait_enforced(n, &self.desired(&n.name), every, timeout))
            .max()
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(t))
    }

    /// What `node` should hold, computed from the API's objects as the daemon computes it.
    fn desired(&self, node: &str) -> Table {
        let ns: Vec<Namespace> = self.namespaces.values().cloned().collect();
        let pods: Vec<Pod> = self.pods.values().cloned().collect();
        let pols: Vec<NetworkPolicy> = self.policies.values().cloned().collect();
        let (mut cluster, mut errors) = ferry_netpol::Cluster::from_k8s(&ns, &pods, &pols);
        errors.extend(cluster.add_cluster_policies(self.cnps.values()));
        assert!(errors.is_empty(), "invalid objects: {errors:?}");
        // The inet table: the one that holds the policies' peers and pods. (The bridge
        // table's port sets need the node's bridge ports, which only the daemon lists.)
        Ruleset::compute(&cluster, &LocalPods::on_node(&cluster, node)).inet
    }
}

/// A table's size: set elements (the kernel-filled denial counters left out) and rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    sets: usize,
    elements: usize,
    rules: usize,
}

fn size(rs: &Table) -> Size {
    let planned = || {
        rs.sets
            .values()
            .filter(|s| !matches!(s.kind, SetKind::Counters(_)))
    };
    Size {
        sets: rs.sets.len(),
        elements: planned().map(|s| s.elements.len()).sum(),
        rules: rs.chains.values().map(|c| c.rules.len()).sum(),
    }
}

/// The node's table as the kernel holds it (None: no table, or not readable).
fn applied(ns: &Netns) -> Option<Table> {
    let out = ns.try_sh(&format!("nft -j list table inet {TABLE}"));
    if !out.status.success() {
        return None;
    }
    Table::parse_json(&String::from_utf8_lossy(&out.stdout), TableFamily::Inet).ok()
}

/// Whether the kernel holds `want`: the same elements in every set (rule order is the
/// daemon's store order, so rules are compared by count).
fn holds(have: &Table, want: &Table) -> bool {
    let elements = |rs: &Table| -> BTreeMap<String, _> {
        rs.sets
            .iter()
            .filter(|(_, s)| !matches!(s.kind, SetKind::Counters(_)))
            .map(|(n, s)| (n.clone(), s.elements.clone()))
            .collect()
    };
    size(have).rules == size(want).rules && elements(have) == elements(want)
}

/// Waits (polling every `every`) until `node` enforces `want`; returns when the listing
/// that showed it was taken (the table was applied by then, at most `every` earlier).
fn wait_enforced(node: &Node, want: &Table, every: Duration, timeout: Duration) -> Instant {
    let start = Instant::now();
    loop {
        let asked = Instant::now();
        if applied(&node.host).is_some_and(|have| holds(&have, want)) {
            return asked;
        }
        assert!(
            start.elapsed() < timeout,
            "{} does not enforce the expected table after {timeout:?}; have {:?}, want {:?}\n{}",
            node.name,
            applied(&node.host).map(|r| size(&r)),
            size(want),
            node.log()
        );
        std::thread::sleep(every);
    }
}

/// One `nft -i` in a node's namespace, asked for a set again and again: a query costs
/// well under a millisecond where starting nft costs ten. (`nft monitor` would tell each
/// commit as it happens, but nft 1.0.6's crashes printing a concatenated interval set's
/// elements, which the port sets are.)
struct Poller {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Poller {
    fn start(ns: &Netns) -> Poller {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "stdbuf", "-oL", "nft", "-i"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nft -i");
        let stdin = child.stdin.take().expect("nft stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("nft stdout"));
        Poller {
            child,
            stdin,
            stdout,
        }
    }

    /// `list set inet ferry_policy <set>` as nft prints it (up to the table's `}`).
    fn list(&mut self, set: &str) -> String {
        writeln!(self.stdin, "list set inet {TABLE} {set}").expect("ask nft");
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read nft");
            assert!(n > 0, "nft -i ended (does set {set} exist?)");
            text += &line;
            if line.trim_end() == "}" {
                return text;
            }
        }
    }

    /// When the set first differs from `before`, polling every 2 ms (None: not in
    /// `timeout`).
    fn changed(&mut self, set: &str, before: &str, timeout: Duration) -> Option<Instant> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            let at = Instant::now();
            if self.list(set) != before {
                return Some(at);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster of `n` nodes enforcing NetworkPolicy against the API stand-in.
fn policy_cluster(n: usize, cidr: &str) -> (Cluster, Api) {
    let (kc_dir, kc) = Api::kubeconfig_for_later();
    // Its own API stand-in, started after the daemons on a fixed port: etcd is the datastore.
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(n)
        .cluster_cidr(cidr)
        .flags([
            "--network-policy",
            "--kubeconfig",
            &kc.display().to_string(),
        ])
        .build();
    let mut api = Api::start(&c.etcd.host, kc_dir);
    api.add_namespace(namespace(BENCH_NS));
    (c, api)
}

fn latency(rounds: usize, load: Option<Scale>, cnp: bool) {
    let what = if cnp {
        "an Admin-tier ClusterNetworkPolicy"
    } else {
        "a NetworkPolicy"
    };
    println!("== latency: a change of what {what} allows written to the API -> committed in every node's table (3 nodes, {rounds} rounds)");
    let (c, mut api) = policy_cluster(3, "10.90.0.0/16");
    if let Some(s) = load {
        println!(
            "the API also holds {} pods in {} namespaces on {} fake nodes and {} policies",
            s.pods, s.namespaces, s.fake_nodes, s.policies
        );
        api.load(synthetic(s, s.policies));
        println!("and {} ClusterNetworkPolicies", s.cnps);
        synthetic_cnps(s.cnps, s)
            .into_iter()
            .for_each(|p| api.put_cnp(p));
    }
    let server = labels(&[("app", "server")]);
    let client = labels(&[("app", "client")]);
    let mut clients = Vec::new();
    let mut pods = Vec::new();
    for (i, node) in c.nodes.iter().enumerate() {
        pods.push(api.kubelet_pod(node, &format!("srv{i}"), &server));
        pods.push(api.kubelet_pod(node, &format!("cli{i}"), &client));
        clients.push((format!("cli{i}"), false));
    }
    let latency_policy = |port: u16| {
        policy(
            BENCH_NS,
            "latency",
            "server",
            json!({"role": "client"}),
            &[],
            &[json!({"protocol": "TCP", "port": port})],
        )
    };
    // The same allowance as an Admin-tier ClusterNetworkPolicy: its peer set is
    // `cin_latency_0_src4`, its selected pods' ports `cin_latency_0_dst4`.
    let latency_cnp = |port: u16| {
        ClusterNetworkPolicy::new(
            "latency",
            json!({"tier": "Admin", "priority": 0,
                   "subject": {"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": BENCH_NS}},
                                        "podSelector": {"matchLabels": {"app": "server"}}}},
                   "ingress": [{"name": "clients", "action": "Accept",
                                "from": [{"pods": {"podSelector": {"matchLabels": {"role": "client"}}}}],
                                "protocols": [{"tcp": {"destinationPort": {"number": port}}}]}]}),
        )
    };
    let mut port = 8080;
    if cnp {
        api.put_cnp(latency_cnp(port));
    } else {
        api.put_policy(latency_policy(port));
    }
    let prefix = if cnp {
        "cin_latency"
    } else {
        "in_bench_latency"
    };
    api.enforced_everywhere(
        &c.nodes,
        Duration::from_millis(200),
        Duration::from_secs(60),
    );
    let mut pollers: Vec<Poller> = c.nodes.iter().map(|n| Poller::start(&n.host)).collect();
    // Per node and round: the time until the node's table showed the change.
    let mut times: Vec<Vec<Option<Duration>>> = vec![Vec::new(); c.nodes.len()];
    let mut kinds = Vec::new();
    let mut wrong = 0;
    for r in 0..rounds {
        // A label selects the peers (the source set); the port is in the selected pods' set.
        let (kind, set) = if r % 2 == 0 {
            ("label", format!("{prefix}_0_src4"))
        } else {
            ("port", format!("{prefix}_0_dst4"))
        };
        let set = set.as_str();
        let before: Vec<String> = pollers.iter_mut().map(|p| p.list(set)).collect();
        let start = Instant::now();
        let seen: Vec<Option<Instant>> = std::thread::scope(|scope| {
            let watches: Vec<_> = pollers
                .iter_mut()
                .zip(&before)
                .map(|(p, b)| scope.spawn(move || p.changed(set, b, Duration::from_secs(10))))
                .collect();
            if kind == "label" {
                let (name, on) = &mut clients[(r / 2) % c.nodes.len()];
                *on = !*on;
                let mut l = client.clone();
                if *on {
                    l.insert("role".into(), "client".into());
                }
                let mut p = api.pods[&(BENCH_NS.to_string(), name.clone())].clone();
                p.metadata.labels = Some(l);
                api.put_pod(p);
            } else {
                port = if port == 8080 { 8081 } else { 8080 };
                if cnp {
                    api.put_cnp(latency_cnp(port));
                } else {
                    api.put_policy(latency_policy(port));
                }
            }
            watches
                .into_iter()
                .map(|w| w.join().expect("poller"))
                .collect()
        });
        kinds.push(kind);
        for (i, at) in seen.into_iter().enumerate() {
            times[i].push(at.map(|at| at.saturating_duration_since(start)));
        }
        // The commit must be the change asked for: the table now equals the API's state.
        for node in &c.nodes {
            let want = api.desired(&node.name);
            if !applied(&node.host).is_some_and(|have| holds(&have, &want)) {
                wrong += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(pods);
    let row = |what: &str, v: &[Duration], missed: usize| {
        println!(
            "{what:<28} {:>10} {:>10} {:>10} {:>7}",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(percentile(v, 1.0)),
            missed
        );
    };
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>7}",
        "", "p50", "p99", "max", "missed"
    );
    for (i, node) in c.nodes.iter().enumerate() {
        let got: Vec<Duration> = times[i].iter().flatten().copied().collect();
        row(&node.name, &got, times[i].len() - got.len());
    }
    for kind in ["label", "port"] {
        let every: Vec<Duration> = (0..rounds)
            .filter(|r| kinds[*r] == kind)
            .filter_map(|r| every_node(&times, r))
            .collect();
        row(&format!("every node, {kind} change"), &every, 0);
    }
    let every: Vec<Duration> = (0..rounds).filter_map(|r| every_node(&times, r)).collect();
    let missed = rounds - every.len();
    row("every node (target p99 500 ms)", &every, missed);
    println!("rounds whose table did not match the API afterwards (node-rounds): {wrong}\n");
}

/// When the last node committed round `r` (None when one never did).
fn every_node(times: &[Vec<Option<Duration>>], r: usize) -> Option<Duration> {
    times
        .iter()
        .map(|t| t.get(r).copied().flatten())
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .max()
}

fn datapath(s: Scale) {
    const ROUNDS: usize = 5;
    const SECS: u32 = 5;
    println!(
        "== datapath: pod to pod across two nodes, no policy against {} policies, {} ClusterNetworkPolicies and {} pods in the API ({ROUNDS} alternating rounds, medians)",
        s.policies, s.cnps, s.pods
    );
    let cnps = synthetic_cnps(s.cnps, s);
    let (c, mut api) = policy_cluster(2, "10.91.0.0/16");
    let mut load = synthetic(s, s.policies - 1);
    let policies = std::mem::take(&mut load.policies);
    api.load(load);
    let srv = api.kubelet_pod(&c.nodes[1], "server", &labels(&[("app", "server")]));
    let cli = api.kubelet_pod(&c.nodes[0], "client", &labels(&[("role", "client")]));
    // The measured pair's policy, one of the many: it admits the client on iperf3's port
    // and the connection loop's.
    let ours = policy(
        BENCH_NS,
        "measured",
        "server",
        json!({"role": "client"}),
        &[],
        &[
            json!({"protocol": "TCP", "port": 5201}),
            json!({"protocol": "TCP", "port": 7000}),
        ],
    );
    let enforce = |api: &Api| {
        api.enforced_everywhere(
            &c.nodes,
            Duration::from_millis(500),
            Duration::from_secs(300),
        )
    };
    let t = enforce(&api);
    println!(
        "no policy enforced on both nodes {:.1} s after the last write",
        t.as_secs_f64()
    );
    let mut tables = None;
    let (mut tp, mut cps) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let mut failed = [0, 0];
    // The daemons' CPU seconds and table applies while measuring, per state.
    let mut cost = [(0.0, 0.0), (0.0, 0.0)];
    let mut switch = Vec::new();
    for round in 0..ROUNDS {
        for (state, with) in [false, true].into_iter().enumerate() {
            if with {
                policies.iter().cloned().for_each(|p| api.put_policy(p));
                cnps.iter().cloned().for_each(|p| api.put_cnp(p));
                api.put_policy(ours.clone());
            } else if round > 0 {
                api.delete_policies();
            }
            if with || round > 0 {
                switch.push(enforce(&api));
            }
            if with && tables.is_none() {
                tables = applied(&c.nodes[1].host).map(|r| (size(&r), rule_position(&r)));
            }
            let ((t, r), cpu, applies) = daemon_cost(&c.nodes, || {
                let t = iperf(&cli.ns, &srv.ns, &srv.ip, SECS);
                let r = connect_rate(
                    &cli.ns,
                    &srv.ns,
                    &srv.ip,
                    7000,
                    Duration::from_secs(SECS.into()),
                );
                (t, r)
            });
            tp[state].push(t);
            cps[state].push(r.per_second);
            failed[state] += r.failed;
            cost[state].0 += cpu;
            cost[state].1 += applies;
        }
    }
    let (t0, t1) = (median(&tp[0]), median(&tp[1]));
    let (c0, c1) = (median(&cps[0]), median(&cps[1]));
    println!("{:<46} {:>14} {:>14}", "", "Gbit/s", "connections/s");
    println!("{:<46} {:>14.2} {:>14.0}", "(a) no policy", t0, c0);
    println!(
        "{:<46} {:>14.2} {:>14.0}",
        format!(
            "(b) {} policies + {} CNPs, {} pods",
            s.policies, s.cnps, s.pods
        ),
        t1,
        c1
    );
    println!(
        "{:<46} {:>14.2} {:>14.2}",
        "b / a (targets 0.95 and 0.9)",
        t1 / t0,
        c1 / c0
    );
    println!("runs: throughput a {:.2?}, b {:.2?}", tp[0], tp[1]);
    println!("runs: connections/s a {:.0?}, b {:.0?}", cps[0], cps[1]);
    println!("failed connects: a {}, b {}", failed[0], failed[1]);
    println!(
        "while measuring (both daemons, {ROUNDS} x {} s per state): CPU a {:.1} s, b {:.1} s; table applies a {}, b {}",
        2 * SECS,
        cost[0].0,
        cost[1].0,
        cost[0].1,
        cost[1].1
    );
    if let Some((t, (at, of))) = tables {
        println!(
            "the server's node with (b): {} sets, {} elements, {} rules; the measured pair's \
             rule is rule {at} of the {of} of its pod's chain (a new connection meets them in order)",
            t.sets, t.elements, t.rules
        );
    }
    println!(
        "switching a <-> b (all policies written, then enforced on both nodes): median {}, max {}\n",
        ms(percentile(&switch, 0.5)),
        ms(percentile(&switch, 1.0))
    );
    drop((srv, cli));
}

/// How long the memory mode watches a daemon in which nothing changes: long enough for
/// one whole read-back of the table (every sixth 5 s resync).
const STEADY: Duration = Duration::from_secs(35);

fn memory(s: Scale) {
    println!(
        "== memory: one node from a cold start against {} pods in {} namespaces on {} fake nodes and {} policies",
        s.pods, s.namespaces, s.fake_nodes, s.policies
    );
    let (mut c, mut api) = policy_cluster(1, "10.92.0.0/16");
    // A cold start: no daemon and no table while the API is filled.
    c.nodes[0].stop_daemon();
    c.nodes[0].host.sh(&format!(
        "nft delete table inet {TABLE} 2>/dev/null || true"
    ));
    let t = Instant::now();
    api.load(synthetic(s, s.policies));
    println!("API filled in {:.1} s", t.elapsed().as_secs_f64());
    let node = &mut c.nodes[0];
    let want = api.desired(&node.name);
    let start = Instant::now();
    // A command prefix for the daemon (`env MALLOC_ARENA_MAX=2`, `heaptrack -o FILE`).
    node.start_daemon_under(&std::env::var("FERRY_BENCH_DAEMON_WRAPPER").unwrap_or_default());
    let pid = node.daemon.as_ref().expect("daemon").pid();
    let took = wait_enforced(
        node,
        &want,
        Duration::from_millis(500),
        Duration::from_secs(600),
    )
    .saturating_duration_since(start);
    let at_applied = status_kib(pid, "VmHWM:");
    // What each resync costs the daemon: reading the table back is one such listing.
    let t = Instant::now();
    let table = applied(&node.host).map(|r| size(&r)).expect("the table");
    let listing = t.elapsed();
    let ok = wait_until(Duration::from_secs(30), || {
        http_get(&node.host, HEALTH_ADDR, "/readyz").0 == 200
    });
    // Steady state: a few resyncs (every 5 s) read the table back and recompute.
    let cpu_applied = cpu_seconds(pid);
    let ((), cpu_steady, applies) =
        daemon_cost(std::slice::from_ref(node), || std::thread::sleep(STEADY));
    let cpu = cpu_applied + cpu_steady;
    println!(
        "table applied {:.2} s after the daemon started (ready: {ok}); {} sets, {} elements, {} rules",
        took.as_secs_f64(),
        table.sets,
        table.elements,
        table.rules
    );
    println!(
        "peak RSS (VmHWM): {:.1} MiB when applied, {:.1} MiB after {} s of resyncs (target under 100 MB); RSS now {:.1} MiB; CPU used {cpu:.1} s",
        at_applied as f64 / 1024.0,
        status_kib(pid, "VmHWM:") as f64 / 1024.0,
        STEADY.as_secs(),
        status_kib(pid, "VmRSS:") as f64 / 1024.0,
    );
    println!(
        "steady state ({} s, nothing changing): {cpu_steady:.2} s of CPU (with its nft and conntrack runs), {applies} table applies; \
         one `nft -j list table` and its parsing here: {}\n",
        STEADY.as_secs(),
        ms(listing)
    );
}

/// Where the measured policy's IPv4 rule is in the chain holding it (1-based) and how
/// many rules that chain has: the rules a new connection to the server meets, in order.
/// (0, 0) when it is nowhere.
fn rule_position(rs: &Table) -> (usize, usize) {
    let measured = |r: &ferry_netpol::desired::Rule| {
        r.comment
            .as_deref()
            .is_some_and(|c| c.starts_with(&format!("{BENCH_NS}/measured")))
            && r.sets().any(|s| s.ends_with('4'))
    };
    rs.chains
        .values()
        .find_map(|c| {
            let at = c.rules.iter().position(measured)?;
            Some((at + 1, c.rules.len()))
        })
        .unwrap_or((0, 0))
}

/// A counter or gauge the node's daemon serves on `/metrics` (0 when absent).
fn metric(node: &Node, name: &str) -> f64 {
    let (_, body) = http_get(&node.host, HEALTH_ADDR, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The daemons' CPU seconds and table applies while `f` runs, summed over `nodes`.
fn daemon_cost<T>(nodes: &[Node], f: impl FnOnce() -> T) -> (T, f64, f64) {
    let pids: Vec<u32> = nodes
        .iter()
        .filter_map(|n| n.daemon.as_ref().map(|d| d.pid()))
        .collect();
    let cpu = || pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let applies = || {
        nodes
            .iter()
            .map(|n| metric(n, "ferry_policy_applies_total"))
            .sum::<f64>()
    };
    let (c0, a0) = (cpu(), applies());
    let out = f();
    (out, cpu() - c0, applies() - a0)
}

/// A `kB` field of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// User and system CPU time of a process and of the children it has waited for (the
/// daemon's `nft` and `conntrack` runs), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime, stime, cutime and cstime are fields 14 to 17 of stat, 12 to 15 after the name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / hz
}
