//! `ferry-demo`: a 3-node cluster built out of namespaces on this machine, with a real
//! etcd, `ferry-overlayd` on every node and pods added through `ferry`. It shows the job an
//! operator cares about, one line per check: localhost inside a pod, pod to pod on one node
//! and across, a Service's ClusterIP (hairpin included), a NodePort from outside, a pod
//! reaching outside masqueraded; then `ferry-ipam` as an operator would run it. It removes
//! everything, or with `--keep` leaves it running and says what to try by hand.
//! With `--cri` the pods are made as kubelet makes them on a kind node: each node runs its
//! own containerd, ferry is installed by `install-cni.sh` and `ferry-overlayd` run with the
//! DaemonSet's args and env, and every pod is a RunPodSandbox through the CRI; the same
//! checks follow, then the runtime's own view of the network.
//! Exit status: 0 when every check passed, 1 otherwise, 2 when it cannot run here, 130
//! when interrupted (after removing what it made).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use ferry_tests::cluster::{Cluster, Pod, Progress, ETCD_IP, HEALTH_ADDR, OUTSIDE_IP};
use ferry_tests::cri::{wait_converged, CriNode, CriPod, Leftovers, PodSpec};
use ferry_tests::interrupt;
use ferry_tests::netns::Netns;
use ferry_tests::proc::{connect, echo_peer_server_on};
use ferry_tests::services::Service;

const CIDR: &str = "10.244.0.0/16";
const NODES: usize = 3;
const PODS_PER_NODE: usize = 2;
/// Where every pod's server (and the outside host's) listens.
const PORT: u16 = 7000;
/// The server of pod-00 bound to 127.0.0.1 only.
const LOCAL_PORT: u16 = 8080;
const CLUSTER_IP: &str = "10.96.0.10";
const SERVICE_PORT: u16 = 80;
const NODE_PORT: u16 = 30080;
const TROUBLESHOOTING: &str = "docs/troubleshooting.md";
/// The width of a progress line's label, so that the times line up.
const LABEL: usize = 60;

/// The tools the demo runs besides ferry's own binaries, and the Debian package of each.
const TOOLS: [(&str, &str); 7] = [
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("ss", "iproute2"),
    ("iptables", "iptables"),
    ("python3", "python3"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
];

/// What `--cri` runs besides: containerd and its runtime, the tools that enter a node,
/// the compiler of the pause image, the reference plugin the shipped conflist chains.
const CRI_TOOLS: [(&str, &str); 7] = [
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("nsenter", "util-linux"),
    ("unshare", "util-linux"),
    ("cc", "gcc libc6-dev"),
    ("/usr/lib/cni/portmap", "containernetworking-plugins"),
];

/// The Kubernetes namespace of the pods `--cri` makes.
const POD_NAMESPACE: &str = "demo";

const USAGE: &str = "usage: ferry-demo [--keep] [--cri]   (as root)
  --keep  leave the cluster running and print what to try by hand
  --cri   make the pods through containerd's CRI, as kubelet does (a containerd per node)";

fn main() {
    let mut keep = false;
    let mut cri = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--keep" => keep = true,
            "--cri" => cri = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            _ => {
                eprintln!("ferry-demo: unknown argument {a}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("ferry-demo needs root (it makes network namespaces)");
        std::process::exit(2);
    }
    let tools: Vec<(&str, &str)> = TOOLS
        .iter()
        .chain(cri.then_some(&CRI_TOOLS).into_iter().flatten())
        .copied()
        .collect();
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(tool, _)| *tool)
        .collect();
    if !missing.is_empty() {
        let mut packages: Vec<&str> = tools
            .iter()
            .filter(|(tool, _)| missing.contains(tool))
            .map(|(_, pkg)| *pkg)
            .collect();
        packages.dedup();
        eprintln!(
            "ferry-demo: not found: {} (Debian: {}); deploy/install-deps.sh installs them",
            missing.join(", "),
            packages.join(" ")
        );
        std::process::exit(2);
    }
    // The signal only sets a flag; the steps look at it, and unwinding removes the
    // namespaces and processes made so far (an interrupted demo leaves nothing behind).
    interrupt::install();
    // A harness step that cannot be done panics with what went wrong (and the log of the
    // part that failed): one message, no backtrace, then where to look.
    std::panic::set_hook(Box::new(|info| {
        if interrupt::interrupted() {
            // The steps that broke because their processes got the signal too.
            return;
        }
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("a step failed");
        eprintln!("\nferry-demo: {msg}");
    }));
    let start = Instant::now();
    let failed = match std::panic::catch_unwind(AssertUnwindSafe(|| run(keep, cri, start))) {
        Ok(failed) => failed,
        Err(_) if interrupt::interrupted() => {
            println!("Interrupted: everything the demo made is removed.");
            std::process::exit(130);
        }
        Err(_) => {
            println!(
                "\nFAIL the demo stopped: the message above says which step.\n     \
                 look at {TROUBLESHOOTING}, \"Running the demo\""
            );
            std::process::exit(1);
        }
    };
    if failed > 0 {
        std::process::exit(1);
    }
}

fn on_path(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What the sections need of a node, however its pods were made.
struct NodeView<'a> {
    name: &'a str,
    ip: &'a str,
    /// Its network namespace: where the kube-proxy-style rules go.
    host: &'a Netns,
}

/// What the sections need of a pod.
struct PodView<'a> {
    /// `pod-NK`: the K-th pod of node N.
    name: &'a str,
    /// Its node, an index into the nodes.
    node: usize,
    ip: &'a str,
    ns: &'a Netns,
}

/// The nodes and pods, made by exec'ing `ferry` (the cluster's own nodes) or through
/// containerd's CRI (nodes of their own beside the cluster's switch and etcd).
enum Pods {
    Plugin(Vec<(usize, Pod)>),
    Cri(Vec<CriNode>, Vec<(usize, CriPod)>),
}

impl Pods {
    fn nodes<'a>(&'a self, c: &'a Cluster) -> Vec<NodeView<'a>> {
        let parts: Vec<(&str, &str, &Netns)> = match self {
            Pods::Plugin(_) => c
                .nodes
                .iter()
                .map(|n| (&*n.name, &*n.ip, &n.host))
                .collect(),
            Pods::Cri(nodes, _) => nodes.iter().map(|n| (&*n.name, &*n.ip, &n.host)).collect(),
        };
        parts
            .into_iter()
            .map(|(name, ip, host)| NodeView { name, ip, host })
            .collect()
    }

    fn pods(&self) -> Vec<PodView<'_>> {
        let parts: Vec<(usize, &str, &str, &Netns)> = match self {
            Pods::Plugin(pods) => pods
                .iter()
                .map(|(i, p)| (*i, &*p.id, &*p.ip, &p.ns))
                .collect(),
            // The pod's name, as kubelet knows it; its ID is the runtime's sandbox ID.
            Pods::Cri(_, pods) => pods
                .iter()
                .map(|(i, p)| (*i, &*p.spec.name, &*p.ip, &p.ns))
                .collect(),
        };
        parts
            .into_iter()
            .map(|(node, name, ip, ns)| PodView { name, node, ip, ns })
            .collect()
    }
}

/// Runs `f` on every item at once (each waits on the network or on another process, not
/// on the CPU), a panic in one carried on here; the results in order.
fn on_each<I, R>(items: I, f: impl Fn(I::Item) -> R + Sync) -> Vec<R>
where
    I: IntoIterator,
    I::Item: Send,
    R: Send,
{
    let f = &f;
    std::thread::scope(|s| {
        let started: Vec<_> = items
            .into_iter()
            .map(|item| s.spawn(move || f(item)))
            .collect();
        started
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Builds the cluster, runs every check, prints them; the number of failed checks.
fn run(keep: bool, cri: bool, start: Instant) -> usize {
    if cri {
        println!(
            "ferry demo: a {NODES}-node cluster of network namespaces on this machine, \
             pods made through containerd's CRI"
        );
    } else {
        println!("ferry demo: a {NODES}-node cluster of network namespaces on this machine");
    }
    step_begin(&format!(
        "starting an underlay switch and etcd ({ETCD_IP}:2379)"
    ));
    // With --cri the cluster gives the switch, etcd and the outside host; its nodes are
    // the CRI nodes, made next.
    let plugin_nodes = if cri { 0 } else { NODES };
    let c = Cluster::build_reporting(plugin_nodes, CIDR, "", false, &mut |p| match p {
        Progress::Etcd(_, t) => {
            step_end(t.as_secs_f64());
            if !cri {
                println!("  starting ferry-overlayd on {NODES} nodes (each leases a subnet)");
            }
        }
        Progress::NodeReady(n, t) => {
            step_begin(&format!(
                "{} {}: ferry-overlayd ready, lease {}",
                n.name,
                n.ip,
                n.subnet()
            ));
            step_end(t.as_secs_f64());
        }
        Progress::Converged(t) => {
            if !cri {
                step_begin("overlay converged: each node routes to the others");
                step_end(t.as_secs_f64());
            }
        }
    });
    let made = if cri {
        cri_pods(&c)
    } else {
        Pods::Plugin(step(
            &format!(
                "adding {} pods through ferry (CNI ADD)",
                NODES * PODS_PER_NODE
            ),
            || {
                c.nodes
                    .iter()
                    .enumerate()
                    .flat_map(|(i, n)| {
                        (0..PODS_PER_NODE).map(move |k| (i, n.add_pod(&format!("pod-{i}{k}"))))
                    })
                    .collect()
            },
        ))
    };
    let nodes = made.nodes(&c);
    let pods = made.pods();
    let servers = step("starting a TCP server in each pod and outside", || {
        let mut at: Vec<(&Netns, &str, u16)> =
            pods.iter().map(|p| (p.ns, "0.0.0.0", PORT)).collect();
        at.push((&c.outside, "0.0.0.0", PORT));
        at.push((pods[0].ns, "127.0.0.1", LOCAL_PORT));
        // All at once: each one's start is mostly Python's.
        on_each(at, |(ns, addr, port)| echo_peer_server_on(ns, addr, port))
    });
    let backend = pods.last().expect("pods");
    let svc = Service {
        cluster_ip: CLUSTER_IP.into(),
        port: SERVICE_PORT,
        node_port: NODE_PORT,
        endpoint_ip: backend.ip.to_string(),
        endpoint_port: PORT,
    };
    step(
        &format!(
            "kube-proxy-style rules: {CLUSTER_IP}:{SERVICE_PORT} -> {}",
            backend.name
        ),
        || {
            for n in &nodes {
                n.host.sh(&svc.rules());
            }
        },
    );

    let names = Names::new(&nodes, &pods);
    let mut r = Report::default();
    localhost(&mut r, &names, &pods[0]);
    pod_to_pod(&mut r, &nodes, &pods);
    services(&mut r, &nodes, &pods, &names);
    outside(&mut r, &c, &nodes, &pods, &names);
    match &made {
        Pods::Plugin(_) => operator(&mut r, &c),
        Pods::Cri(cri_nodes, cri_pods) => operator_cri(&mut r, &c, cri_nodes, cri_pods),
    }

    interrupt::stop_if_interrupted();
    let total = r.passed + r.failed;
    let secs = start.elapsed().as_secs_f64();
    if r.failed == 0 {
        println!("\nAll {total} checks passed ({secs:.1}s).");
    } else {
        println!(
            "\n{} of {total} checks FAILED ({secs:.1}s): see the FAIL lines above.",
            r.failed
        );
    }
    if keep {
        print_keep_hints(&c, &made, &nodes, &pods);
        // Everything stays: the cleanup script the hints name removes it.
        std::mem::forget(servers);
        std::mem::forget(made);
        std::mem::forget(c);
    } else {
        step(
            "removing the cluster (--keep leaves it running)",
            move || {
                // The servers first (they run in the pods), then the pods and nodes,
                // then the switch and etcd they hang on. CRI nodes at once: each waits
                // for init to reap its killed pods.
                drop(servers);
                match made {
                    Pods::Plugin(pods) => drop(pods),
                    Pods::Cri(nodes, pods) => {
                        drop(pods);
                        on_each(nodes, drop);
                    }
                }
                drop(c);
            },
        );
    }
    r.failed
}

/// The CRI nodes, each brought up as a kind node is (containerd, the pause image, ferry's
/// install container, its daemon), every step on all nodes at once; then two pods each
/// through RunPodSandbox.
fn cri_pods(c: &Cluster) -> Pods {
    let mut nodes: Vec<CriNode> = step(
        &format!("starting containerd on {NODES} nodes (each its own mounts)"),
        || on_each(0..NODES, |i| CriNode::boot(c, i)),
    );
    step("importing the pause image into each containerd", || {
        on_each(&nodes, CriNode::import_pause)
    });
    step(
        "installing ferry: install-cni.sh, the shipped conflist",
        || on_each(&nodes, CriNode::install_ferry),
    );
    println!("  starting ferry-overlayd on {NODES} nodes (the DaemonSet's args and env)");
    let t = Instant::now();
    on_each(&mut nodes, CriNode::start_overlayd);
    for n in &nodes {
        step_begin(&format!(
            "{} {}: ferry-overlayd ready, lease {}",
            n.name,
            n.ip,
            n.subnet()
        ));
        step_end(t.elapsed().as_secs_f64());
    }
    step("overlay converged: each node routes to the others", || {
        wait_converged(&nodes)
    });
    step(
        "containerd's NetworkReady on every node (CRI Status)",
        || {
            on_each(&nodes, |n| {
                let (ready, why) = n.wait_network_ready(true, Duration::from_secs(15));
                assert!(ready, "{}: NetworkReady stays false: {why}", n.name);
            })
        },
    );
    let pods = step(
        &format!(
            "adding {} pods through containerd's CRI (RunPodSandbox)",
            NODES * PODS_PER_NODE
        ),
        || {
            // The nodes at once; on a node one after the other, as its kubelet does.
            on_each(nodes.iter().enumerate(), |(i, n)| {
                (0..PODS_PER_NODE)
                    .map(|k| {
                        let spec = PodSpec::new(POD_NAMESPACE, &format!("pod-{i}{k}"));
                        let pod = n.run_pod(spec).unwrap_or_else(|e| {
                            panic!(
                                "RunPodSandbox pod-{i}{k} on {}: {}\n{}",
                                n.name,
                                e.message(),
                                n.log("containerd")
                            )
                        });
                        (i, pod)
                    })
                    .collect::<Vec<_>>()
            })
            .into_iter()
            .flatten()
            .collect()
        },
    );
    Pods::Cri(nodes, pods)
}

fn step_begin(label: &str) {
    interrupt::stop_if_interrupted();
    print!("  {label:<LABEL$}");
    let _ = std::io::stdout().flush();
}

fn step_end(secs: f64) {
    println!("{secs:>5.1}s");
    interrupt::stop_if_interrupted();
}

/// Says what is being done, does it, says how long it took.
fn step<T>(label: &str, f: impl FnOnce() -> T) -> T {
    step_begin(label);
    let t = Instant::now();
    let v = f();
    step_end(t.elapsed().as_secs_f64());
    v
}

/// The checks' tally, and where to look when a section had a failure.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
    failed_in_section: bool,
}

impl Report {
    fn section(&mut self, title: &str) {
        interrupt::stop_if_interrupted();
        self.failed_in_section = false;
        println!("\n{title}");
    }

    /// One line: what was tried and whom the server saw; when that is not `want` (or
    /// nothing answered), what was expected on the next.
    fn probe(&mut self, names: &Names, tried: &str, seen: Option<String>, want: Option<&str>) {
        let ok = seen.is_some() && (want.is_none() || seen.as_deref() == want);
        self.count(ok);
        println!(
            "{} {tried}: {}",
            if ok { "ok  " } else { "FAIL" },
            names.saw(&seen)
        );
        if !ok {
            match want {
                Some(w) => println!("     expected {}", names.who(w)),
                None => println!("     expected an answer"),
            }
        }
    }

    fn count(&mut self, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failed_in_section = true;
        }
    }

    /// After a section: where to look if it had a failure.
    fn look_at(&self, doc: &str, section: &str) {
        if self.failed_in_section {
            println!("     look at {doc}, \"{section}\"");
        }
    }
}

/// What each address of the cluster is, to say who the server saw.
struct Names(HashMap<String, String>);

impl Names {
    fn new(nodes: &[NodeView], pods: &[PodView]) -> Names {
        let mut m: HashMap<String, String> = pods
            .iter()
            .map(|p| (p.ip.to_string(), p.name.to_string()))
            .collect();
        for n in nodes {
            // Every node has 127.0.0.1: it names nobody.
            for (dev, ip) in addresses(n.host).into_iter().filter(|(dev, _)| dev != "lo") {
                let what = if dev == "eth0" {
                    n.name.to_string()
                } else {
                    format!("{} {dev}", n.name)
                };
                m.insert(ip, what);
            }
        }
        Names(m)
    }

    /// "10.244.1.2 (pod-10)".
    fn who(&self, ip: &str) -> String {
        match self.0.get(ip) {
            Some(what) => format!("{ip} ({what})"),
            None => ip.to_string(),
        }
    }

    /// "server saw 10.244.1.2 (pod-10)", or that nothing answered.
    fn saw(&self, seen: &Option<String>) -> String {
        match seen {
            Some(ip) => format!("server saw {}", self.who(ip)),
            None => "no answer within 3s".into(),
        }
    }
}

/// The IPv4 addresses of a node's namespace, with their devices.
fn addresses(host: &Netns) -> Vec<(String, String)> {
    host.sh("ip -o -4 addr show")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev = f.get(1)?;
            let ip = f.get(3)?.split('/').next()?;
            Some((dev.to_string(), ip.to_string()))
        })
        .collect()
}

fn localhost(r: &mut Report, names: &Names, pod: &PodView) {
    r.section("1. Containers of one pod, over localhost");
    let seen = connect(pod.ns, "127.0.0.1", LOCAL_PORT);
    r.probe(
        names,
        &format!("{}: client -> server on 127.0.0.1:{LOCAL_PORT}", pod.name),
        seen,
        Some("127.0.0.1"),
    );
    r.look_at(TROUBLESHOOTING, "1. Container to container (localhost)");
}

fn pod_to_pod(r: &mut Report, nodes: &[NodeView], pods: &[PodView]) {
    r.section("2. Pod to pod, on one node and across nodes");
    // "node" or "cri": the nodes' names without their number.
    let node_kind = nodes.first().map_or("node", |n| {
        n.name.trim_end_matches(|c: char| c.is_ascii_digit())
    });
    println!("   ok: the server saw the client's own pod IP; pod-NK is on {node_kind}N");
    // Every pair at once: each probe waits on the network, not on the CPU.
    let seen: Vec<Vec<Option<String>>> = on_each(pods, |a| {
        pods.iter()
            .map(|b| (a.name != b.name).then(|| connect(a.ns, b.ip, PORT))?)
            .collect()
    });
    let mut table = format!("   {:<20}", "from \\ to");
    for p in pods {
        let _ = write!(table, "{:<8}", p.name);
    }
    let (mut near, mut far, mut bad) = (0, 0, 0);
    for (a, row) in pods.iter().zip(&seen) {
        table = table.trim_end().to_string();
        let _ = write!(table, "\n   {:<20}", format!("{} {}", a.name, a.ip));
        for (b, s) in pods.iter().zip(row) {
            let cell = if a.name == b.name {
                "-"
            } else {
                let ok = s.as_deref() == Some(a.ip);
                r.count(ok);
                match (ok, a.node == b.node) {
                    (true, true) => near += 1,
                    (true, false) => far += 1,
                    (false, _) => bad += 1,
                }
                match s {
                    _ if ok => "ok",
                    Some(_) => "NAT",
                    None => "FAIL",
                }
            };
            let _ = write!(table, "{cell:<8}");
        }
    }
    interrupt::stop_if_interrupted();
    println!("{}", table.trim_end());
    let pairs = near + far + bad;
    if bad == 0 {
        println!("ok   {pairs} of {pairs} pairs: {near} on one node, {far} across nodes");
    } else {
        println!(
            "FAIL {} of {pairs} pairs ok (FAIL: no answer, NAT: saw another address)",
            near + far
        );
    }
    r.look_at(TROUBLESHOOTING, "2. Pod to pod");
}

fn services(r: &mut Report, nodes: &[NodeView], pods: &[PodView], names: &Names) {
    let backend = pods.last().expect("pods");
    let svc = format!("{CLUSTER_IP}:{SERVICE_PORT}");
    r.section(&format!(
        "3. Pod to Service: ClusterIP {svc}, backend {} on {}",
        backend.name, nodes[backend.node].name
    ));
    // From another node, and from the backend's own node (the reply crosses the bridge).
    let other = pods.iter().find(|p| p.node != backend.node);
    let same = pods
        .iter()
        .find(|p| p.node == backend.node && p.name != backend.name);
    for p in other.into_iter().chain(same) {
        let seen = connect(p.ns, CLUSTER_IP, SERVICE_PORT);
        let tried = format!("{} ({}) -> {svc}", p.name, nodes[p.node].name);
        r.probe(names, &tried, seen, Some(p.ip));
    }
    let seen = connect(backend.ns, CLUSTER_IP, SERVICE_PORT);
    let tried = format!("{} -> itself (hairpin)", backend.name);
    r.probe(names, &tried, seen, None);
    r.look_at(TROUBLESHOOTING, "3. Pod to Service");
}

fn outside(r: &mut Report, c: &Cluster, nodes: &[NodeView], pods: &[PodView], names: &Names) {
    r.section(&format!(
        "4. Outside ({OUTSIDE_IP}) to NodePort {NODE_PORT}; pod to outside"
    ));
    // On a node without the backend (the reply must come back through it) and on its own.
    for n in [nodes.first(), nodes.last()].into_iter().flatten() {
        let seen = connect(&c.outside, n.ip, NODE_PORT);
        let tried = format!("outside -> {}:{NODE_PORT}", n.name);
        r.probe(names, &tried, seen, None);
    }
    // One pod per node: masqueraded to its node's address.
    for p in pods.iter().step_by(PODS_PER_NODE) {
        let seen = connect(p.ns, OUTSIDE_IP, PORT);
        let tried = format!("{} -> outside", p.name);
        r.probe(names, &tried, seen, Some(nodes[p.node].ip));
    }
    r.look_at(TROUBLESHOOTING, "4. Outside to Service, pod to outside");
}

/// Prints a command as typed and its real output; counts it as a check (exit 0).
fn typed(r: &mut Report, shown: &str, out: std::process::Output) {
    println!("$ {shown}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        print!("{}", String::from_utf8_lossy(&out.stderr));
        println!("FAIL {shown} exited with {}", out.status);
    }
    r.count(out.status.success());
}

/// `ferry-ipam leases` and `show`, run for real in node0, each shown as typed.
fn operator(r: &mut Report, c: &Cluster) {
    let n0 = &c.nodes[0];
    r.section(&format!("5. What an operator types next (on {})", n0.name));
    // Run exactly as shown: the shell takes the backslash-newline as a continuation.
    let args = [
        format!(
            "leases --etcd-endpoints {} \\\n    --etcd-prefix {}",
            c.etcd.endpoint(),
            c.prefix
        ),
        format!("show --data-dir {}", n0.dir.path().join("ipam").display()),
    ];
    for shown in &args {
        let out = n0.host.try_sh(&format!(
            "{} {shown}",
            ferry_tests::bin("ferry-ipam").display()
        ));
        typed(r, &format!("ferry-ipam {shown}"), out);
    }
    r.look_at("docs/ipam.md", "`ferry-ipam`: the operator CLI");
}

/// `ferry-ipam leases` and `show` typed inside the first CRI node, as on a kind node
/// (`docker exec`): the installed binary, the DaemonSet's defaults (etcd prefix, store).
/// Then the runtime's view: its `NetworkReady` condition, and the address it reports for
/// pod-00, which must be the one ferry recorded for that pod.
fn operator_cri(r: &mut Report, c: &Cluster, nodes: &[CriNode], pods: &[(usize, CriPod)]) {
    let n0 = &nodes[0];
    r.section(&format!(
        "5. What an operator types next (inside {}, where install-cni.sh put ferry-ipam)",
        n0.name
    ));
    for shown in [
        format!("ferry-ipam leases --etcd-endpoints {}", c.etcd.endpoint()),
        "ferry-ipam show".to_string(),
    ] {
        let out = n0
            .enter()
            .args(["env", "PATH=/opt/cni/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(["sh", "-c", &shown])
            .output()
            .expect("nsenter");
        typed(r, &shown, out);
    }
    r.look_at("docs/ipam.md", "`ferry-ipam`: the operator CLI");

    let (_, p0) = &pods[0];
    let pod = format!("{}/{}", p0.spec.namespace, p0.spec.name);
    println!(
        "\nThe runtime's view (containerd's CRI, as kubelet asks it) on {}:",
        n0.name
    );
    let (ready, why) = n0
        .cri
        .network_ready()
        .unwrap_or_else(|e| (false, format!("Status failed: {}", e.message())));
    r.count(ready);
    let why = why.trim_matches(|c: char| c == ':' || c.is_whitespace());
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    };
    println!(
        "{} Status: NetworkReady={ready}{why}",
        if ready { "ok  " } else { "FAIL" }
    );
    let reported = n0.cri.pod_status(&p0.id).map(|(ip, _)| ip).ok();
    let recorded = n0.ipam_show()["allocations"]
        .as_array()
        .and_then(|a| {
            a.iter().find(|a| {
                a["pod"]["namespace"] == p0.spec.namespace.as_str()
                    && a["pod"]["name"] == p0.spec.name.as_str()
            })
        })
        .and_then(|a| a["ip"].as_str().map(str::to_string));
    let ok = reported.is_some() && reported == recorded;
    r.count(ok);
    let show = |ip: &Option<String>| ip.clone().unwrap_or_else(|| "none".into());
    println!(
        "{} PodSandboxStatus of {pod}: ip {}; ferry-ipam's for {pod}: {}",
        if ok { "ok  " } else { "FAIL" },
        show(&reported),
        show(&recorded)
    );
    r.look_at(TROUBLESHOOTING, "Running the demo");
}

/// How to look around a kept cluster, and the script that removes it.
fn print_keep_hints(c: &Cluster, made: &Pods, nodes: &[NodeView], pods: &[PodView]) {
    let path = std::env::temp_dir().join(format!("ferry-demo-cleanup-{}.sh", std::process::id()));
    let kept: Vec<Leftovers> = match made {
        Pods::Plugin(_) => Vec::new(),
        Pods::Cri(cri_nodes, _) => cri_nodes.iter().map(CriNode::leftovers).collect(),
    };
    let script = cleanup_script(c, nodes, pods, &kept);
    if let Err(e) = std::fs::write(&path, &script) {
        println!(
            "\nCould not write {}: {e}. It would run:\n{script}",
            path.display()
        );
    }
    let n0 = &nodes[0];
    let p0 = &pods[0];
    let ipam = ferry_tests::bin("ferry-ipam");
    let h = format!("ip netns exec {}", n0.host.name);
    let ep = c.etcd.endpoint();
    // Where ferry-ipam finds the store and the leases: the harness's flags, or (--cri) the
    // DaemonSet's defaults inside the node, whose own /opt holds the installed binary.
    let (prefix, operator) = match made {
        Pods::Plugin(_) => (
            c.prefix.clone(),
            format!(
                "\x20 {h} {ipam} leases \\\n\
                 \x20     --etcd-endpoints {ep} --etcd-prefix {prefix}\n\
                 \x20 {h} {ipam} show \\\n\
                 \x20     --data-dir {data}\n",
                ipam = ipam.display(),
                prefix = c.prefix,
                data = c.nodes[0].dir.path().join("ipam").display(),
            ),
        ),
        Pods::Cri(cri_nodes, _) => (
            "/ferry".to_string(),
            format!(
                "\x20 nsenter -t {holder} -m -n /opt/cni/bin/ferry-ipam show   # inside {name}\n\
                 \x20 nsenter -t {holder} -m -n cat /etc/cni/net.d/10-ferry.conflist\n\
                 \x20 {h} {ipam} leases --etcd-endpoints {ep}\n\
                 \x20 ctr --address {sock} -n k8s.io containers ls   # the pods' sandboxes\n",
                holder = cri_nodes[0].holder(),
                name = cri_nodes[0].name,
                ipam = ipam.display(),
                sock = cri_nodes[0].dir.path().join("containerd.sock").display(),
            ),
        ),
    };
    println!(
        "\nKept running. Try by hand ({node} is namespace {n}, pod-00 {p}):\n\
         \x20 {h} ip route            # a route per other node\n\
         \x20 {h} bridge fdb show dev ferry.1   # their VTEPs\n\
         \x20 {h} iptables -t nat -S  # ferry's and kube-proxy's NAT\n\
         \x20 ip netns exec {p} bash -c 'cat </dev/tcp/{CLUSTER_IP}/{SERVICE_PORT}'\n\
         \x20 ip netns exec {o} bash -c 'cat </dev/tcp/{n0ip}/{NODE_PORT}'\n\
         \x20 {h} curl -s {HEALTH_ADDR}/metrics | grep ^ferry_\n\
         {operator}\
         \x20 ETCDCTL_API=3 ip netns exec {e} etcdctl \\\n\
         \x20     --endpoints {ep} get {prefix}/ --prefix --keys-only\n\
         (each `cat </dev/tcp/...` prints the address the server saw)\n\
         Remove it all: sh {cleanup}",
        node = n0.name,
        n = n0.host.name,
        p = p0.ns.name,
        o = c.outside.name,
        n0ip = n0.ip,
        e = c.etcd.host.name,
        cleanup = path.display(),
    );
}

/// Everything `--keep` leaves: the processes and namespaces of this demo only, its
/// directories, and the script itself. A CRI node's processes (containerd, its shims,
/// the pods) are killed by the PID list written now, each only if its start time is still
/// the one written (a PID reused since is left alone); then their cgroups go.
fn cleanup_script(c: &Cluster, nodes: &[NodeView], pods: &[PodView], kept: &[Leftovers]) -> String {
    let namespaces: Vec<&Netns> = [&c.switch.ns, &c.etcd.host, &c.outside]
        .into_iter()
        .chain(nodes.iter().map(|n| n.host))
        .chain(pods.iter().map(|p| p.ns))
        .collect();
    let mut s = String::from("#!/bin/sh\n# Removes what ferry-demo --keep left running.\n");
    for k in kept {
        let list: Vec<String> = k
            .processes
            .iter()
            .map(|(p, t)| format!("{p}:{t}"))
            .collect();
        let _ = writeln!(
            s,
            "for pt in {}; do p=${{pt%:*}}; t=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f20); [ \"$t\" = \"${{pt#*:}}\" ] && kill -9 $p; done",
            list.join(" ")
        );
    }
    for ns in &namespaces {
        let _ = writeln!(s, "for p in $(ip netns pids {}); do kill $p; done", ns.name);
    }
    // Init reaps the killed pods in a second or two; their cgroups are empty only then.
    s.push_str(if kept.is_empty() {
        "sleep 1\n"
    } else {
        "sleep 3\n"
    });
    for ns in &namespaces {
        let _ = writeln!(s, "ip netns del {}", ns.name);
    }
    for cg in kept.iter().flat_map(|k| &k.cgroups) {
        let _ = writeln!(
            s,
            "for h in /sys/fs/cgroup /sys/fs/cgroup/*; do rmdir \"$h{cg}\" 2>/dev/null; done"
        );
    }
    let dirs = c
        .all_dirs()
        .into_iter()
        .chain(kept.iter().map(|k| k.dir.clone()));
    for d in dirs {
        let _ = writeln!(s, "rm -rf {}", d.display());
    }
    s.push_str("rm -f \"$0\"\necho \"ferry demo removed\"\n");
    s
}
