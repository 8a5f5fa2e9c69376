//! `ferry-demo`: a 3-node cluster built out of namespaces on this machine, with a real
//! etcd, `ferry-overlayd` on every node and pods added through `ferry`. It shows the job an
//! operator cares about, one line per check: localhost inside a pod, pod to pod on one node
//! and across, a Service's ClusterIP (hairpin included), a NodePort from outside, a pod
//! reaching outside masqueraded; then `ferry-ipam` as an operator would run it. It removes
//! everything, or with `--keep` leaves it running and says what to try by hand.
//! Exit status: 0 when every check passed, 1 otherwise, 2 when it cannot run here, 130
//! when interrupted (after removing what it made).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ferry_tests::cluster::{Cluster, Node, Pod, Progress, ETCD_IP, HEALTH_ADDR, OUTSIDE_IP};
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

const USAGE: &str = "usage: ferry-demo [--keep]   (as root)
  --keep  leave the cluster running and print what to try by hand";

/// Set by SIGINT or SIGTERM; the demo then stops at its next step and removes what it made.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn main() {
    let mut keep = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--keep" => keep = true,
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
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(tool, _)| *tool)
        .collect();
    if !missing.is_empty() {
        let mut packages: Vec<&str> = TOOLS
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
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    // A harness step that cannot be done panics with what went wrong (and the log of the
    // part that failed): one message, no backtrace, then where to look.
    std::panic::set_hook(Box::new(|info| {
        if INTERRUPTED.load(Ordering::Relaxed) {
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
    let failed = match std::panic::catch_unwind(AssertUnwindSafe(|| run(keep, start))) {
        Ok(failed) => failed,
        Err(_) if INTERRUPTED.load(Ordering::Relaxed) => {
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

/// Stops the demo (by unwinding, so that everything made so far is removed) once
/// SIGINT or SIGTERM came.
fn stop_if_interrupted() {
    if INTERRUPTED.load(Ordering::Relaxed) {
        panic!("interrupted");
    }
}

fn on_path(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds the cluster, runs every check, prints them; the number of failed checks.
fn run(keep: bool, start: Instant) -> usize {
    println!("ferry demo: a {NODES}-node cluster of network namespaces on this machine");
    step_begin(&format!(
        "starting an underlay switch and etcd ({ETCD_IP}:2379)"
    ));
    let c = Cluster::build_reporting(NODES, CIDR, "", false, &mut |p| match p {
        Progress::Etcd(_, t) => {
            step_end(t.as_secs_f64());
            println!("  starting ferry-overlayd on {NODES} nodes (each leases a subnet)");
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
            step_begin("overlay converged: each node routes to the others");
            step_end(t.as_secs_f64());
        }
    });
    let pods: Vec<(usize, Pod)> = step(
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
    );
    let servers = step("starting a TCP server in each pod and outside", || {
        let mut at: Vec<(&Netns, &str, u16)> =
            pods.iter().map(|(_, p)| (&p.ns, "0.0.0.0", PORT)).collect();
        at.push((&c.outside, "0.0.0.0", PORT));
        at.push((&pods[0].1.ns, "127.0.0.1", LOCAL_PORT));
        // All at once: each one's start is mostly Python's.
        std::thread::scope(|s| {
            let started: Vec<_> = at
                .into_iter()
                .map(|(ns, addr, port)| s.spawn(move || echo_peer_server_on(ns, addr, port)))
                .collect();
            started
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect::<Vec<_>>()
        })
    });
    let (backend_node, backend) = pods.last().expect("pods");
    let svc = Service {
        cluster_ip: CLUSTER_IP.into(),
        port: SERVICE_PORT,
        node_port: NODE_PORT,
        endpoint_ip: backend.ip.clone(),
        endpoint_port: PORT,
    };
    step(
        &format!(
            "kube-proxy-style rules: {CLUSTER_IP}:{SERVICE_PORT} -> {}",
            backend.id
        ),
        || {
            for n in &c.nodes {
                svc.install(n);
            }
        },
    );

    let names = Names::new(&c, &pods);
    let mut r = Report::default();
    localhost(&mut r, &names, &pods[0].1);
    pod_to_pod(&mut r, &pods);
    services(&mut r, &c, &pods, &names, *backend_node);
    outside(&mut r, &c, &pods, &names);
    operator(&mut r, &c);

    stop_if_interrupted();
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
        print_keep_hints(&c, &pods);
        // Everything stays: the cleanup script the hints name removes it.
        std::mem::forget(servers);
        std::mem::forget(pods);
        std::mem::forget(c);
    } else {
        step(
            "removing the cluster (--keep leaves it running)",
            move || {
                drop((servers, pods, c));
            },
        );
    }
    r.failed
}

fn step_begin(label: &str) {
    stop_if_interrupted();
    print!("  {label:<LABEL$}");
    let _ = std::io::stdout().flush();
}

fn step_end(secs: f64) {
    println!("{secs:>5.1}s");
    stop_if_interrupted();
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
        stop_if_interrupted();
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
    fn new(c: &Cluster, pods: &[(usize, Pod)]) -> Names {
        let mut m: HashMap<String, String> = pods
            .iter()
            .map(|(_, p)| (p.ip.clone(), p.id.clone()))
            .collect();
        for n in &c.nodes {
            // Every node has 127.0.0.1: it names nobody.
            for (dev, ip) in addresses(n).into_iter().filter(|(dev, _)| dev != "lo") {
                let what = if dev == "eth0" {
                    n.name.clone()
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

/// A node's IPv4 addresses, with their devices.
fn addresses(n: &Node) -> Vec<(String, String)> {
    n.host
        .sh("ip -o -4 addr show")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev = f.get(1)?;
            let ip = f.get(3)?.split('/').next()?;
            Some((dev.to_string(), ip.to_string()))
        })
        .collect()
}

fn localhost(r: &mut Report, names: &Names, pod: &Pod) {
    r.section("1. Containers of one pod, over localhost");
    let seen = connect(&pod.ns, "127.0.0.1", LOCAL_PORT);
    r.probe(
        names,
        &format!("{}: client -> server on 127.0.0.1:{LOCAL_PORT}", pod.id),
        seen,
        Some("127.0.0.1"),
    );
    r.look_at(TROUBLESHOOTING, "1. Container to container (localhost)");
}

fn pod_to_pod(r: &mut Report, pods: &[(usize, Pod)]) {
    r.section("2. Pod to pod, on one node and across nodes");
    println!("   ok: the server saw the client's own pod IP; pod-NK is on nodeN");
    // Every pair at once: each probe waits on the network, not on the CPU.
    let seen: Vec<Vec<Option<String>>> = std::thread::scope(|s| {
        let rows: Vec<_> = pods
            .iter()
            .map(|(_, a)| {
                s.spawn(move || {
                    pods.iter()
                        .map(|(_, b)| (a.id != b.id).then(|| connect(&a.ns, &b.ip, PORT))?)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        rows.into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut table = format!("   {:<20}", "from \\ to");
    for (_, p) in pods {
        let _ = write!(table, "{:<8}", p.id);
    }
    let (mut near, mut far, mut bad) = (0, 0, 0);
    for ((i, a), row) in pods.iter().zip(&seen) {
        table = table.trim_end().to_string();
        let _ = write!(table, "\n   {:<20}", format!("{} {}", a.id, a.ip));
        for ((j, b), s) in pods.iter().zip(row) {
            let cell = if a.id == b.id {
                "-"
            } else {
                let ok = s.as_deref() == Some(a.ip.as_str());
                r.count(ok);
                match (ok, i == j) {
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
    stop_if_interrupted();
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

fn services(
    r: &mut Report,
    c: &Cluster,
    pods: &[(usize, Pod)],
    names: &Names,
    backend_node: usize,
) {
    let (_, backend) = pods.last().expect("pods");
    let svc = format!("{CLUSTER_IP}:{SERVICE_PORT}");
    r.section(&format!(
        "3. Pod to Service: ClusterIP {svc}, backend {} on {}",
        backend.id, c.nodes[backend_node].name
    ));
    // From another node, and from the backend's own node (the reply crosses the bridge).
    let other = pods.iter().find(|(i, _)| *i != backend_node);
    let same = pods
        .iter()
        .find(|(i, p)| *i == backend_node && p.id != backend.id);
    for (i, p) in other.into_iter().chain(same) {
        let seen = connect(&p.ns, CLUSTER_IP, SERVICE_PORT);
        let tried = format!("{} ({}) -> {svc}", p.id, c.nodes[*i].name);
        r.probe(names, &tried, seen, Some(&p.ip));
    }
    let seen = connect(&backend.ns, CLUSTER_IP, SERVICE_PORT);
    let tried = format!("{} -> itself (hairpin)", backend.id);
    r.probe(names, &tried, seen, None);
    r.look_at(TROUBLESHOOTING, "3. Pod to Service");
}

fn outside(r: &mut Report, c: &Cluster, pods: &[(usize, Pod)], names: &Names) {
    r.section(&format!(
        "4. Outside ({OUTSIDE_IP}) to NodePort {NODE_PORT}; pod to outside"
    ));
    // On a node without the backend (the reply must come back through it) and on its own.
    for n in [c.nodes.first(), c.nodes.last()].into_iter().flatten() {
        let seen = connect(&c.outside, &n.ip, NODE_PORT);
        let tried = format!("outside -> {}:{NODE_PORT}", n.name);
        r.probe(names, &tried, seen, None);
    }
    // One pod per node: masqueraded to its node's address.
    for (i, p) in pods.iter().step_by(PODS_PER_NODE) {
        let seen = connect(&p.ns, OUTSIDE_IP, PORT);
        let tried = format!("{} -> outside", p.id);
        r.probe(names, &tried, seen, Some(&c.nodes[*i].ip));
    }
    r.look_at(TROUBLESHOOTING, "4. Outside to Service, pod to outside");
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
        println!("$ ferry-ipam {shown}");
        let out = n0.host.try_sh(&format!(
            "{} {shown}",
            ferry_tests::bin("ferry-ipam").display()
        ));
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            print!("{}", String::from_utf8_lossy(&out.stderr));
        }
        r.count(out.status.success());
        if !out.status.success() {
            println!("FAIL ferry-ipam exited with {}", out.status);
        }
    }
    r.look_at("docs/ipam.md", "`ferry-ipam`: the operator CLI");
}

/// How to look around a kept cluster, and the script that removes it.
fn print_keep_hints(c: &Cluster, pods: &[(usize, Pod)]) {
    let path = std::env::temp_dir().join(format!("ferry-demo-cleanup-{}.sh", std::process::id()));
    let script = cleanup_script(c, pods);
    if let Err(e) = std::fs::write(&path, &script) {
        println!(
            "\nCould not write {}: {e}. It would run:\n{script}",
            path.display()
        );
    }
    let n0 = &c.nodes[0];
    let (_, p0) = &pods[0];
    let ipam = ferry_tests::bin("ferry-ipam");
    let h = format!("ip netns exec {}", n0.host.name);
    println!(
        "\nKept running. Try by hand (node0 is namespace {n}, pod-00 {p}):\n\
         \x20 {h} ip route            # a route per other node\n\
         \x20 {h} bridge fdb show dev ferry.1   # their VTEPs\n\
         \x20 {h} iptables -t nat -S  # ferry's and kube-proxy's NAT\n\
         \x20 ip netns exec {p} bash -c 'cat </dev/tcp/{CLUSTER_IP}/{SERVICE_PORT}'\n\
         \x20 ip netns exec {o} bash -c 'cat </dev/tcp/{n0ip}/{NODE_PORT}'\n\
         \x20 {h} curl -s {HEALTH_ADDR}/metrics | grep ^ferry_\n\
         \x20 {h} {ipam} leases \\\n\
         \x20     --etcd-endpoints {ep} --etcd-prefix {prefix}\n\
         \x20 {h} {ipam} show \\\n\
         \x20     --data-dir {data}\n\
         \x20 ETCDCTL_API=3 ip netns exec {e} etcdctl \\\n\
         \x20     --endpoints {ep} get {prefix}/ --prefix --keys-only\n\
         (each `cat </dev/tcp/...` prints the address the server saw)\n\
         Remove it all: sh {cleanup}",
        n = n0.host.name,
        p = p0.ns.name,
        o = c.outside.name,
        n0ip = n0.ip,
        ipam = ipam.display(),
        data = n0.dir.path().join("ipam").display(),
        e = c.etcd.host.name,
        ep = c.etcd.endpoint(),
        prefix = c.prefix,
        cleanup = path.display(),
    );
}

/// Everything `--keep` leaves: the processes and namespaces of this demo only, its
/// directories, and the script itself.
fn cleanup_script(c: &Cluster, pods: &[(usize, Pod)]) -> String {
    let namespaces: Vec<&Netns> = [&c.switch.ns, &c.etcd.host, &c.outside]
        .into_iter()
        .chain(c.nodes.iter().map(|n| &n.host))
        .chain(pods.iter().map(|(_, p)| &p.ns))
        .collect();
    let mut s = String::from("#!/bin/sh\n# Removes what ferry-demo --keep left running.\n");
    for ns in &namespaces {
        let _ = writeln!(s, "for p in $(ip netns pids {}); do kill $p; done", ns.name);
    }
    s.push_str("sleep 1\n");
    for ns in &namespaces {
        let _ = writeln!(s, "ip netns del {}", ns.name);
    }
    for d in c.all_dirs() {
        let _ = writeln!(s, "rm -rf {}", d.display());
    }
    s.push_str("rm -f \"$0\"\necho \"ferry demo removed\"\n");
    s
}
