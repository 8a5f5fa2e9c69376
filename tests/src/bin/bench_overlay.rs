//! `ferry-bench-overlay [throughput|join|scale]...` (all three without arguments), as root.
//!
//! - throughput: single-stream TCP (iperf3) across two nodes, side by side in one run
//!   with the same nodes' underlay and with flannel's VXLAN data path built by hand on two
//!   more nodes of the same switch (same MTU, same kind of iptables rules, br_netfilter
//!   on, as a flannel node has).
//! - paths: the two data paths of DirectRouting side by side in one run: the underlay,
//!   ferry direct (DirectRouting, the default on a shared L2), ferry VXLAN
//!   (`--direct-routing=false`) and the hand-built flannel VXLAN path, single stream and 8
//!   streams, 5 alternating rounds, medians, with the machine's CPU time per Gbit moved;
//!   and ferry's two paths again with receive steering (`rpsCpus`) undone, and with
//!   steering by each socket's own hash (the pod's flow-hash program removed), to show
//!   the part of each.
//! - paths-big: the same on an underlay whose NICs have BIG TCP (GSO/GRO 185,000 bytes),
//!   ferry direct with `--big-tcp`.
//! - vxlan-ab: VXLAN device and underlay settings A/B on the hand-built path, 5 alternating
//!   rounds in one run: outer UDP checksums off (flannel's default) against on (ferry's),
//!   and GRO on the underlay veth off against on (needs ethtool).
//! - throughput6: the same over a dual-stack cluster (IPv4 underlay): the IPv6 pod path
//!   against the IPv4 pod path and the IPv6 underlay, side by side in one run.
//! - throughput6u: an IPv6-only cluster over an IPv6 underlay (VTEPs on IPv6, pod MTU =
//!   underlay - 70): its pod path against an IPv4 cluster's pod path and the IPv6
//!   underlay, 5 alternating rounds in one run.
//! - join: from a new node's lease written to etcd until every node of a 3-node cluster
//!   routes to its subnet, p50 and p99 over repeated joins; and side by side, alternating,
//!   the same in a 3-node cluster of the Kubernetes datastore: from a new node's Node object
//!   (pod CIDR, ferry's annotations) created in the API stand-in.
//! - scale: 1,000 and 5,000 simulated nodes' leases in etcd, then one daemon from a cold
//!   start: time until it is ready with every entry programmed, and its peak RSS; and the
//!   same with as many Node objects in the API stand-in (`--datastore kubernetes`), with
//!   the stand-in's own list time.
//! - rollout (not in the default set): 5,000 Nodes in the API stand-in and one daemon;
//!   every Node's `ferry.dev/usage`, then every Node's `ferry.dev/vtep-mac`, rewritten at
//!   once as a DaemonSet's rolling restart would: the daemon's CPU seconds, the time until
//!   it settled, and the API requests it made.

#[path = "bench_overlay/kube.rs"]
mod kube;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ferry_tests::cluster::{http_get, Cluster, Datastore, Etcd, Node, Switch, HEALTH_ADDR};
use ferry_tests::cni::{host_veth, rps_cpus};
use ferry_tests::netns::Netns;
use ferry_tests::proc::wait_until;
use ferry_tests::stats::median;

/// The median of some runs, and the runs in the order they were made.
fn summed(v: &[f64]) -> (f64, String) {
    let runs = v
        .iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    (median(v), runs)
}
use ferry_netlink::BigTcp;
use ferry_tests::traffic::{iperf, iperf_streams};
use ipnetwork::Ipv4Network;

fn main() {
    if !ferry_tests::is_root() {
        eprintln!("ferry-bench-overlay needs root (it makes network namespaces)");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let all = args.is_empty();
    let want = |s: &str| all || args.iter().any(|a| a == s);
    if want("throughput") {
        throughput();
    }
    if args.iter().any(|a| a == "vxlan-ab") {
        vxlan_ab();
    }
    if args.iter().any(|a| a == "paths") {
        paths(None);
    }
    if args.iter().any(|a| a == "paths-big") {
        paths(Some(BigTcp {
            ipv4: 185_000,
            ipv6: 185_000,
        }));
    }
    if args.iter().any(|a| a == "throughput6") {
        throughput6();
    }
    if args.iter().any(|a| a == "throughput6u") {
        throughput6u();
    }
    if want("join") {
        join();
    }
    if want("scale") {
        let mut rows = Vec::new();
        for n in [1000, 5000] {
            let etcd = scale(n);
            let (k, list) = kube::scale(n);
            rows.push((n, etcd, k, list));
        }
        println!("== scale, side by side (ready after, peak RSS, routes / FDB / neighbours)");
        for (n, e, k, list) in rows {
            println!(
                "{n} nodes: etcd {:.2} s, {:.1} MiB, {} / {} / {}; kubernetes {:.2} s, {:.1} MiB, {} / {} / {} (goal under 1 s and 30 MB)\n  {list}",
                e.ready_s, e.hwm_mib, e.routes, e.fdb, e.neigh, k.ready_s, k.hwm_mib, k.routes, k.fdb, k.neigh
            );
        }
        println!();
    }
    if args.iter().any(|a| a == "rollout") {
        kube::rollout(5000);
        etcd_rollout(5000);
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// flannel's VXLAN backend and bridge CNI by hand, on a node of the switch: flannel.1
/// (VNI 1, port 8472, learning off, MTU - 50), the subnet's .0/32 on it, cni0 with the
/// gateway, one pod on a veth, iptables rules of flannel's shape, br_netfilter on.
struct HandNode {
    host: Netns,
    pod: Netns,
    ip: String,
    subnet: u8,
}

fn hand_node(switch: &Switch, ip: &str, subnet: u8) -> HandNode {
    hand_node_with(switch, ip, subnet, "")
}

/// [`hand_node`] with more `ip link add ... type vxlan` options (`udpcsum`, ...).
fn hand_node_with(switch: &Switch, ip: &str, subnet: u8, vxlan_opts: &str) -> HandNode {
    let host = Netns::new("fyf");
    switch.plug(&host, ip);
    let pod = Netns::new("fyq");
    host.sh(&format!(
        "set -e
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
ip link add flannel.1 type vxlan id 1 dstport 8472 local {ip} dev eth0 nolearning {vxlan_opts}
ip link set flannel.1 mtu 1450 up
ip addr add 10.81.{subnet}.0/32 dev flannel.1
ip link add cni0 type bridge && ip addr add 10.81.{subnet}.1/24 dev cni0 && ip link set cni0 up
ip link add vethh mtu 1450 type veth peer name eth0 mtu 1450 netns {pod}
ip link set vethh master cni0 up
iptables -N FLANNEL-FWD && iptables -A FORWARD -j FLANNEL-FWD
iptables -A FLANNEL-FWD -s 10.81.0.0/16 -j ACCEPT && iptables -A FLANNEL-FWD -d 10.81.0.0/16 -j ACCEPT
iptables -t nat -N FLANNEL-POSTRTG && iptables -t nat -A POSTROUTING -j FLANNEL-POSTRTG
iptables -t nat -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -j RETURN
iptables -t nat -A FLANNEL-POSTRTG -s 10.81.0.0/16 -d 10.81.0.0/16 -j RETURN
iptables -t nat -A FLANNEL-POSTRTG -s 10.81.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully",
        pod = pod.name
    ));
    pod.sh(&format!(
        "ip addr add 10.81.{subnet}.2/24 dev eth0 && ip link set eth0 up && ip route add default via 10.81.{subnet}.1"
    ));
    HandNode {
        host,
        pod,
        ip: ip.to_string(),
        subnet,
    }
}

/// flannel's per-peer entries: neighbour, FDB, route (in that order).
fn hand_peer(a: &HandNode, b: &HandNode) {
    let mac = b.host.sh("cat /sys/class/net/flannel.1/address");
    let mac = mac.trim();
    let s = b.subnet;
    a.host.sh(&format!(
        "ip neigh replace 10.81.{s}.0 lladdr {mac} dev flannel.1 nud permanent
bridge fdb replace {mac} dev flannel.1 dst {} self permanent
ip route replace 10.81.{s}.0/24 via 10.81.{s}.0 dev flannel.1 onlink",
        b.ip
    ));
}

/// flannel's path by hand on two more nodes of `switch` (192.0.2.31 and .32, pods
/// 10.81.1.2 and 10.81.2.2), each the other's peer; the first ping has crossed.
fn hand_pair(switch: &Switch) -> (HandNode, HandNode) {
    let f0 = hand_node(switch, "192.0.2.31", 1);
    let f1 = hand_node(switch, "192.0.2.32", 2);
    hand_peer(&f0, &f1);
    hand_peer(&f1, &f0);
    f0.pod.sh("ping -c1 -W2 10.81.2.2");
    (f0, f1)
}

/// IPv6 pods across two nodes of a dual-stack cluster, against IPv4 pods of the same nodes
/// and their IPv6 underlay, interleaved per round.
fn throughput6() {
    const ROUNDS: usize = 3;
    const SECS: u32 = 5;
    let c = Cluster::builder()
        .nodes(2)
        .cluster_cidr("10.82.0.0/16")
        .dual_stack()
        .build();
    c.add_underlay_v6();
    let (a4, b4) = (c.nodes[0].add_pod("t4a"), c.nodes[1].add_pod("t4b"));
    let (a6, _) = c.nodes[0].add_pod_ipv6();
    let (b6, b6_ip) = c.nodes[1].add_pod_ipv6();
    let up = wait_until(Duration::from_secs(10), || {
        a6.try_sh(&format!("ping -6 -c1 -W1 {b6_ip}"))
            .status
            .success()
    });
    assert!(up, "IPv6 pods unreachable");
    let (mut v4, mut v6, mut under6) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        v4.push(iperf(&a4.ns, &b4.ns, &b4.ip, SECS));
        v6.push(iperf(&a6, &b6, &b6_ip, SECS));
        under6.push(iperf(
            &c.nodes[0].host,
            &c.nodes[1].host,
            "2001:db8::12",
            SECS,
        ));
    }
    let ((p4, r4), (p6, r6), (u6, ru)) = (summed(&v4), summed(&v6), summed(&under6));
    println!(
        "throughput6 (single-stream TCP, iperf3 -t {SECS}, median of {ROUNDS}):\n  \
         IPv4 pod to pod {p4:.2} Gbit/s ({r4})\n  \
         IPv6 pod to pod {p6:.2} Gbit/s ({r6}): {:.2}x the IPv4 pod path (target 0.9x)\n  \
         IPv6 underlay   {u6:.2} Gbit/s ({ru})\n",
        p6 / p4
    );
}

/// IPv6 pods of an IPv6-only cluster over an IPv6 underlay, against IPv4 pods of an IPv4
/// cluster on their own switch and the IPv6 underlay itself, interleaved per round.
fn throughput6u() {
    const ROUNDS: usize = 5;
    const SECS: u32 = 3;
    let v4 = Cluster::builder().nodes(2).build();
    let v6 = Cluster::builder().nodes(2).v6_only().build();
    let (a4, b4) = (v4.nodes[0].add_pod("u4a"), v4.nodes[1].add_pod("u4b"));
    let (a6, b6) = (v6.nodes[0].add_pod("u6a"), v6.nodes[1].add_pod("u6b"));
    let up = wait_until(Duration::from_secs(10), || {
        a6.ns
            .try_sh(&format!("ping -6 -c1 -W1 {}", b6.ip))
            .status
            .success()
    });
    assert!(up, "IPv6 pods unreachable");
    a4.ns.sh(&format!("ping -c1 -W2 {}", b4.ip));
    let (mut p4, mut p6, mut under6) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        p4.push(iperf(&a4.ns, &b4.ns, &b4.ip, SECS));
        p6.push(iperf(&a6.ns, &b6.ns, &b6.ip, SECS));
        under6.push(iperf(
            &v6.nodes[0].host,
            &v6.nodes[1].host,
            &v6.nodes[1].ip,
            SECS,
        ));
    }
    let ((m4, r4), (m6, r6), (mu, ru)) = (summed(&p4), summed(&p6), summed(&under6));
    println!(
        "throughput6u (single-stream TCP, iperf3 -t {SECS}, median of {ROUNDS} alternating rounds):\n  \
         IPv4 pod to pod (IPv4 underlay, MTU 1450)        {m4:.2} Gbit/s ({r4})\n  \
         IPv6-only pod to pod (IPv6 underlay, MTU 1430)   {m6:.2} Gbit/s ({r6}): {:.2}x the IPv4 pod path (target 0.9x)\n  \
         IPv6 underlay, node to node                      {mu:.2} Gbit/s ({ru})\n",
        m6 / m4
    );
}

fn throughput() {
    const ROUNDS: usize = 3;
    const SECS: u32 = 5;
    println!(
        "== throughput: single-stream TCP (iperf3, {SECS} s per run, {ROUNDS} rounds, median)"
    );
    let c = Cluster::builder()
        .nodes(2)
        .cluster_cidr("10.80.0.0/16")
        .build();
    let a = c.nodes[0].add_pod("tpa");
    let b = c.nodes[1].add_pod("tpb");
    let (f0, f1) = hand_pair(&c.switch);
    a.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
    let (mut under, mut ferry, mut flannel) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        under.push(iperf(
            &c.nodes[0].host,
            &c.nodes[1].host,
            &c.nodes[1].ip,
            SECS,
        ));
        ferry.push(iperf(&a.ns, &b.ns, &b.ip, SECS));
        flannel.push(iperf(&f0.pod, &f1.pod, "10.81.2.2", SECS));
    }
    let (u, fe, fl) = (median(&under), median(&ferry), median(&flannel));
    println!("{:<40} {:>10}", "path", "Gbit/s");
    println!("{:<40} {:>10.2}", "underlay (node to node)", u);
    println!(
        "{:<40} {:>10.2}",
        "flannel-style VXLAN, by hand (pod to pod)", fl
    );
    println!("{:<40} {:>10.2}", "ferry (pod to pod, DirectRouting)", fe);
    println!(
        "ferry / underlay = {:.2}, ferry / hand-built flannel path = {:.2}",
        fe / u,
        fe / fl
    );
    println!("runs: underlay {under:.2?}, flannel {flannel:.2?}, ferry {ferry:.2?}\n");
}

/// Busy jiffies of the whole machine (`/proc/stat`'s `cpu` line): every namespace's
/// traffic, both ends and the forwarding between them, runs on this one kernel.
fn cpu_jiffies() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    f.iter().take(8).sum::<u64>() - idle
}

/// Settings of the VXLAN path, each against its alternative on pairs of hand-built nodes
/// of one switch, alternating per round: what ferry keeps must measurably not cost.
fn vxlan_ab() {
    const ROUNDS: usize = 5;
    const SECS: u32 = 3;
    println!("== vxlan-ab: single-stream TCP over VXLAN, iperf3 {SECS} s, {ROUNDS} alternating rounds, medians");
    let switch = Switch::new();
    let pair = |a: &str, b: &str, sa: u8, sb: u8, opts: &str| {
        let x = hand_node_with(&switch, a, sa, opts);
        let y = hand_node_with(&switch, b, sb, opts);
        hand_peer(&x, &y);
        hand_peer(&y, &x);
        x.pod.sh(&format!("ping -c1 -W2 10.81.{sb}.2"));
        (x, y)
    };
    // Two pairs on distinct subnets, one per setting; the same two nodes for GRO.
    let off = pair("192.0.2.41", "192.0.2.42", 1, 2, "noudpcsum");
    let on = pair("192.0.2.43", "192.0.2.44", 3, 4, "udpcsum");
    let gro = |p: &(HandNode, HandNode), state: &str| {
        for n in [&p.0, &p.1] {
            n.host
                .sh(&format!("ethtool -K eth0 gro {state} >/dev/null"));
        }
    };
    let run = |p: &(HandNode, HandNode)| {
        iperf(&p.0.pod, &p.1.pod, &format!("10.81.{}.2", p.1.subnet), SECS)
    };
    let (mut csum_off, mut csum_on, mut gro_off, mut gro_on) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        csum_off.push(run(&off));
        csum_on.push(run(&on));
        gro(&on, "on");
        gro_on.push(run(&on));
        gro(&on, "off");
        gro_off.push(run(&on));
    }
    for (name, a, b) in [
        ("outer UDP checksum: off / on", &csum_off, &csum_on),
        (
            "underlay veth GRO (checksum on): off / on",
            &gro_off,
            &gro_on,
        ),
    ] {
        println!(
            "{name:<44} {:.2} / {:.2} Gbit/s = on is {:.2}x (runs off {a:.2?}, on {b:.2?})",
            median(a),
            median(b),
            median(b) / median(a)
        );
    }
    println!();
}

/// DirectRouting against VXLAN against flannel's VXLAN against the underlay (issue 14).
/// `big`: the underlay has BIG TCP on (`paths-big`), and the direct cluster runs with
/// `--big-tcp`; the VXLAN cluster without it, which is right for VXLAN.
fn paths(big: Option<BigTcp>) {
    const ROUNDS: usize = 5;
    const SECS: u32 = 4;
    let hz = 100.0; // USER_HZ, the unit of /proc/stat
    let under = match big {
        Some(b) => format!("an underlay with BIG TCP ({b}), ferry direct with --big-tcp"),
        None => "an underlay at the kernel's 64 KiB GSO/GRO".into(),
    };
    println!(
        "== paths: TCP across two nodes, iperf3 {SECS} s per run, 1 and 8 streams, {ROUNDS} alternating rounds, medians; {under}"
    );
    let mut direct = Cluster::builder()
        .nodes(2)
        .cluster_cidr("10.80.0.0/16")
        .flags(big.map(|_| "--big-tcp"))
        .build();
    let mut vxlan = Cluster::builder().nodes(2).direct_routing(false).build();
    if let Some(b) = big {
        direct.turn_big_tcp_on(b);
        vxlan.turn_big_tcp_on(b);
    }
    // A pod on each of a cluster's two nodes, `<prefix>a` and `<prefix>b`.
    let pair = |c: &Cluster, prefix: &str| {
        (
            c.nodes[0].add_pod(&format!("{prefix}a")),
            c.nodes[1].add_pod(&format!("{prefix}b")),
        )
    };
    let (da, db) = pair(&direct, "pd");
    let (va, vb) = pair(&vxlan, "pv");
    // The same paths with ferry's receive steering (`rpsCpus`) undone on both host veths,
    // to show what it gives.
    let (dna, dnb) = pair(&direct, "pdn");
    let (vna, vnb) = pair(&vxlan, "pvn");
    // And with steering by each socket's own hash: the pod's flow-hash program removed.
    let (dha, dhb) = pair(&direct, "pdh");
    let (vha, vhb) = pair(&vxlan, "pvh");
    for pod in [&da, &db, &va, &vb, &dha, &dhb, &vha, &vhb] {
        assert!(
            ferry_tests::cni::hashes_by_flow(&pod.ns),
            "{}: ferry's default gives no flow hash",
            pod.ip
        );
    }
    for pod in [&dha, &dhb, &vha, &vhb] {
        pod.ns.sh("tc qdisc del dev eth0 clsact");
    }
    for (node, pod) in [
        (&direct.nodes[0], &dna),
        (&direct.nodes[1], &dnb),
        (&vxlan.nodes[0], &vna),
        (&vxlan.nodes[1], &vnb),
    ] {
        let veth = host_veth(&pod.result);
        node.host.sh(&format!(
            "echo 0 > /sys/class/net/{veth}/queues/rx-0/rps_cpus"
        ));
    }
    let steered = |node: &Node, pod: &ferry_tests::cluster::Pod| {
        rps_cpus(&node.host, &host_veth(&pod.result))
    };
    println!(
        "rps_cpus of the host veths: direct {} and {}, VXLAN {} and {}, their rpsCpus-off twins {} {} {} {}",
        steered(&direct.nodes[0], &da),
        steered(&direct.nodes[1], &db),
        steered(&vxlan.nodes[0], &va),
        steered(&vxlan.nodes[1], &vb),
        steered(&direct.nodes[0], &dna),
        steered(&direct.nodes[1], &dnb),
        steered(&vxlan.nodes[0], &vna),
        steered(&vxlan.nodes[1], &vnb),
    );
    let (f0, f1) = hand_pair(&direct.switch);
    if let Some(b) = big {
        // flannel's pods keep 64 KiB (it has no BIG TCP); its nodes' NICs have it.
        direct.switch.set_big_tcp(b);
        f0.host.set_big_tcp("eth0", b);
        f1.host.set_big_tcp("eth0", b);
    }
    da.ns.sh(&format!("ping -c1 -W2 {}", db.ip));
    va.ns.sh(&format!("ping -c1 -W2 {}", vb.ip));
    let direct_routes = direct.nodes[0].direct_routes();
    assert!(
        direct_routes.contains(&direct.nodes[1].subnet()),
        "the direct cluster routes directly: {direct_routes}"
    );
    assert!(vxlan.nodes[0].direct_routes().trim().is_empty());
    let vx_counter = |c: &Cluster| {
        c.nodes[0]
            .host
            .sh("cat /sys/class/net/ferry.1/statistics/tx_packets")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let names = [
        "underlay (node to node)",
        "ferry direct (pod to pod)",
        "ferry VXLAN (pod to pod)",
        "flannel VXLAN by hand (pod to pod)",
        "ferry direct, rpsCpus off",
        "ferry VXLAN, rpsCpus off",
        "ferry direct, socket hash",
        "ferry VXLAN, socket hash",
    ];
    // [path][streams 1|8] -> (Gbit/s runs, CPU s per Gbit runs)
    let mut gbps = vec![[Vec::new(), Vec::new()]; names.len()];
    let mut cost = vec![[Vec::new(), Vec::new()]; names.len()];
    // Client, server, server address of each path, in the order of `names`.
    let paths = [
        (
            &direct.nodes[0].host,
            &direct.nodes[1].host,
            direct.nodes[1].ip.as_str(),
        ),
        (&da.ns, &db.ns, db.ip.as_str()),
        (&va.ns, &vb.ns, vb.ip.as_str()),
        (&f0.pod, &f1.pod, "10.81.2.2"),
        (&dna.ns, &dnb.ns, dnb.ip.as_str()),
        (&vna.ns, &vnb.ns, vnb.ip.as_str()),
        (&dha.ns, &dhb.ns, dhb.ip.as_str()),
        (&vha.ns, &vhb.ns, vhb.ip.as_str()),
    ];
    let direct_vx_before = vx_counter(&direct);
    for _ in 0..ROUNDS {
        for (si, streams) in [1u32, 8].into_iter().enumerate() {
            for (pi, (cli, srv, ip)) in paths.into_iter().enumerate() {
                let b0 = cpu_jiffies();
                let g = iperf_streams(cli, srv, ip, SECS, streams);
                // The 0.3 s before the run and its start-up count too, alike for every path.
                let busy_s = (cpu_jiffies() - b0) as f64 / hz;
                gbps[pi][si].push(g);
                cost[pi][si].push(busy_s / (g * f64::from(SECS)));
            }
        }
    }
    let direct_vx = vx_counter(&direct) - direct_vx_before;
    let m = |v: &Vec<f64>| median(v);
    println!(
        "{:<36} {:>10} {:>8} {:>12} {:>10} {:>8} {:>12}",
        "path", "1 stream", "x under", "CPU s/Gbit", "8 streams", "x under", "CPU s/Gbit"
    );
    for (pi, name) in names.iter().enumerate() {
        println!(
            "{:<36} {:>10.2} {:>8.2} {:>12.3} {:>10.2} {:>8.2} {:>12.3}",
            name,
            m(&gbps[pi][0]),
            m(&gbps[pi][0]) / m(&gbps[0][0]),
            m(&cost[pi][0]),
            m(&gbps[pi][1]),
            m(&gbps[pi][1]) / m(&gbps[0][1]),
            m(&cost[pi][1]),
        );
    }
    // Path a's median over path b's, with 1 and with 8 streams.
    let ratio = |a: usize, b: usize| {
        (
            m(&gbps[a][0]) / m(&gbps[b][0]),
            m(&gbps[a][1]) / m(&gbps[b][1]),
        )
    };
    let (vf1, vf8) = ratio(2, 3);
    let (du1, du8) = ratio(1, 0);
    let (vu1, vu8) = ratio(2, 0);
    println!(
        "ferry VXLAN / flannel: 1 stream {vf1:.2}, 8 streams {vf8:.2} (target 1.0); ferry direct / underlay: {du1:.2}, {du8:.2} (target 0.95); ferry VXLAN / underlay: {vu1:.2}, {vu8:.2} (target 0.85)"
    );
    for (pi, name) in names.iter().enumerate() {
        println!(
            "runs, {name}: 1 stream {:.2?}, 8 streams {:.2?} Gbit/s",
            gbps[pi][0], gbps[pi][1]
        );
    }
    let (ds1, ds8) = ratio(1, 4);
    let (vs1, vs8) = ratio(2, 5);
    println!(
        "receive steering: direct {ds1:.2}x and {ds8:.2}x, VXLAN {vs1:.2}x and {vs8:.2}x its rpsCpus-off run (1 and 8 streams)"
    );
    let (dh1, dh8) = ratio(1, 6);
    let (vh1, vh8) = ratio(2, 7);
    println!(
        "flow hash: direct {dh1:.2}x and {dh8:.2}x, VXLAN {vh1:.2}x and {vh8:.2}x its socket-hash run (1 and 8 streams)"
    );
    println!(
        "VXLAN packets sent by the direct cluster's node0 during all its runs: {direct_vx} (0: no encapsulation)\n"
    );
    // Where the cycles go: one more single-stream run per path under `perf record` of the
    // whole machine (cpu-clock, so it works where hardware counters do not), and the
    // kernel functions with the most samples. Only with FERRY_BENCH_PROFILE=1 (needs perf).
    if std::env::var("FERRY_BENCH_PROFILE").is_ok_and(|v| v == "1") {
        for ((cli, srv, ip), name) in paths.into_iter().zip(names) {
            let data =
                std::env::temp_dir().join(format!("ferry-bench-perf-{}.data", std::process::id()));
            let rec = std::process::Command::new("perf")
                .args(["record", "-q", "-e", "cpu-clock", "-a", "-o"])
                .arg(&data)
                .args(["--", "sleep", &SECS.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            let Ok(mut rec) = rec else {
                println!("profile: perf cannot run; install linux-perf");
                return;
            };
            let g = iperf(cli, srv, ip, SECS);
            let _ = rec.wait();
            let report = std::process::Command::new("perf")
                .args(["report", "--stdio", "--sort", "sym", "-i"])
                .arg(&data)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let _ = std::fs::remove_file(&data);
            println!("profile, {name} ({g:.2} Gbit/s): top kernel functions, % of all samples");
            for l in report
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains("[k]"))
                .take(12)
            {
                println!("  {}", l.trim());
            }
        }
    }
}

/// Waits, inside `ns`, until a route to `subnet` exists; the time it took from `start`.
fn route_appears(
    ns: &Netns,
    subnet: Ipv4Network,
    start: Instant,
) -> std::thread::JoinHandle<Duration> {
    let name = ns.name.clone();
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/run/netns/{name}")).expect("netns");
        // SAFETY: this thread only.
        unsafe {
            libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let nl = ferry_netlink::Netlink::open().expect("netlink");
            loop {
                let routes = nl.routes(ferry_netlink::Family::V4).await.expect("routes");
                if routes.iter().any(|r| {
                    r.dst == std::net::IpAddr::V4(subnet.network()) && r.prefix == subnet.prefix()
                }) {
                    return start.elapsed();
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        })
    })
}

/// etcd's joins and the Kubernetes datastore's, alternating, each in a 3-node cluster of
/// its own (both up for the whole run, so that the machine's load falls on both alike).
fn join() {
    const JOINS: usize = 40;
    println!(
        "== join propagation, 3 nodes, {JOINS} joins each, alternating: etcd (lease committed) and Kubernetes (Node created) -> route on every node"
    );
    // Joins are timed from etcd's records.
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .cluster_cidr("10.82.0.0/16")
        .build();
    let kc = Cluster::builder()
        .datastore(Datastore::Kubernetes)
        .nodes(3)
        .cluster_cidr("10.83.0.0/16")
        .build();
    let client = Netns::new("fyc");
    c.switch.plug(&client, "192.0.2.3");
    let ep = c.etcd.endpoint();
    let prefix = c.prefix.clone();
    let (mut times, mut ktimes) = (Vec::new(), Vec::new());
    for k in 0..JOINS {
        let subnet: Ipv4Network = format!("10.82.{}.0/24", 200 + k).parse().unwrap();
        let start = Instant::now();
        let watchers: Vec<_> = c
            .nodes
            .iter()
            .map(|n| route_appears(&n.host, subnet, start))
            .collect();
        let (ep, prefix) = (ep.clone(), prefix.clone());
        let written = ferry_tests::inside::block_on(&client, move || async move {
            let mut reg = ferry_registry::Registry::connect(&etcd_opts(&ep), &prefix)
                .await
                .expect("etcd");
            let cfg = reg
                .cluster_config(&Default::default(), &[])
                .await
                .expect("config");
            let t = Instant::now();
            reg.acquire(
                &cfg,
                &format!("sim{k}"),
                Ipv4Addr::new(192, 0, 2, 240).into(),
                // Each its own: ferry refuses a second lease with a MAC already leased.
                &format!("0e:00:00:00:01:{k:02x}"),
                Duration::from_secs(3600),
                Some(subnet),
                None,
            )
            .await
            .expect("lease");
            t
        });
        let done = watchers
            .into_iter()
            .map(|w| w.join().expect("watcher"))
            .max()
            .unwrap_or_default();
        // From the commit of the lease (the end of `acquire`) to the last node's route.
        let written_at = written.duration_since(start);
        times.push((done.saturating_sub(written_at)).as_secs_f64() * 1000.0);
        ktimes.push(kube::join_one(&kc, k));
    }
    let stats = |v: &mut Vec<f64>| (percentile(v, 0.5), percentile(v, 0.99), percentile(v, 1.0));
    let (p50, p99, max) = stats(&mut times);
    let (k50, k99, kmax) = stats(&mut ktimes);
    println!(
        "etcd:       p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (target: under 100 ms)"
    );
    println!("kubernetes: p50 {k50:.1} ms, p99 {k99:.1} ms, max {kmax:.1} ms");
    println!(
        "kubernetes p99 / etcd p99 = {:.2} (goal: at most 2)\n",
        k99 / p99
    );
}

fn etcd_opts(ep: &str) -> ferry_registry::EtcdOptions {
    ferry_registry::EtcdOptions {
        endpoints: vec![ep.to_string()],
        cacert: None,
        cert: None,
        key: None,
        timeout: Duration::from_secs(10),
    }
}

/// Writes `n` simulated nodes' leases (no etcd lease: they never expire) in batches.
/// The leases' VTEP MACs are of generation `gen` ([`kube::sim_mac`]): a rollout writes
/// them again with the next one.
fn write_leases(client: &Netns, ep: &str, prefix: &str, cidr: &str, n: usize, gen: u8) {
    let (ep, prefix, cidr) = (ep.to_string(), prefix.to_string(), cidr.to_string());
    ferry_tests::inside::block_on(client, move || async move {
        use etcd_client::{Client, Txn, TxnOp};
        let mut cl = Client::connect([ep.as_str()], None).await.expect("etcd");
        let layout = ferry_registry::Layout::new(&prefix);
        let cfg = serde_json::json!({"clusterCIDR": cidr, "subnetLen": 24, "vni": 1, "port": 4789});
        cl.put(layout.config(), cfg.to_string(), None)
            .await
            .expect("config");
        let base = u32::from(cidr.parse::<Ipv4Network>().expect("cidr").network());
        let ops: Vec<TxnOp> = (0..n)
            .flat_map(|i| {
                let subnet = Ipv4Network::new(Ipv4Addr::from(base + ((i as u32 + 1) << 8)), 24)
                    .expect("subnet");
                let rec = ferry_registry::LeaseRecord {
                    node: format!("sim{i}"),
                    subnet: Some(subnet),
                    public_ip: Ipv4Addr::new(192, 0, 2, 100 + (i % 100) as u8).into(),
                    vtep_mac: kube::sim_mac(gen, i),
                    subnet_v6: None,
                };
                let key = layout.lease(subnet);
                [
                    TxnOp::put(key.clone(), serde_json::to_vec(&rec).expect("json"), None),
                    TxnOp::put(layout.node(&rec.node), key, None),
                ]
            })
            .collect();
        for chunk in ops.chunks(100) {
            cl.txn(Txn::new().and_then(chunk.to_vec()))
                .await
                .expect("txn");
        }
    });
}

/// What a cold daemon came up to.
pub struct Cold {
    pub ready_s: f64,
    pub routes: usize,
    pub fdb: usize,
    pub neigh: usize,
    /// VmHWM and VmRSS after 12 s of resyncs.
    pub hwm_mib: f64,
    pub rss_mib: f64,
}

fn scale(n: usize) -> Cold {
    println!("== scale: {n} simulated nodes' leases in etcd, one daemon from a cold start");
    let mut w = EtcdWorld::new(n);
    let cold = cold_start(&mut w.node);
    drop(w);
    cold
}

/// etcd holding `n` simulated nodes' leases, and the node `cold` whose daemon is not
/// started.
struct EtcdWorld {
    node: Node,
    client: Netns,
    etcd: Etcd,
    prefix: String,
    _switch: Switch,
}

impl EtcdWorld {
    fn new(n: usize) -> EtcdWorld {
        let switch = Switch::new();
        let etcd = Etcd::start(&switch);
        let client = Netns::new("fyc");
        switch.plug(&client, "192.0.2.3");
        let prefix = format!("/ferry-scale-{n}");
        write_leases(&client, &etcd.endpoint(), &prefix, "10.0.0.0/8", n, 0);
        let host = Netns::new("fyn");
        switch.plug(&host, "192.0.2.11");
        let dir = tempfile::tempdir().expect("tempdir");
        let node = Node {
            name: "cold".into(),
            host,
            ip: "192.0.2.11".into(),
            daemon: None,
            daemon_args: format!(
                "--etcd-endpoints {} --etcd-prefix {prefix} --node-name cold --state-dir {} --node-secret {} --health-addr {HEALTH_ADDR}",
                etcd.endpoint(),
                dir.path().join("run").display(),
                dir.path().join("node-secret").display()
            ),
            dir,
            conf_extra: serde_json::json!({}),
        };
        EtcdWorld {
            node,
            client,
            etcd,
            prefix,
            _switch: switch,
        }
    }
}

/// `rollout`'s etcd side: `n` leases and one daemon; every lease written again with a new
/// VTEP MAC (100 leases a transaction, as fast as etcd takes them), until the daemon's FDB
/// and neighbours carry every new MAC.
fn etcd_rollout(n: usize) {
    println!("== rollout, etcd: {n} leases, one daemon; every lease's VTEP MAC rewritten at once");
    let mut w = EtcdWorld::new(n);
    let cold = cold_start(&mut w.node);
    let pid = w.node.daemon_pid().expect("the daemon's pid");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        kube::macs_of(&w.node, 0),
        (n, n),
        "every peer programmed first"
    );
    let cpu0 = kube::cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(3));
    let idle = kube::cpu_secs(pid) - cpu0;
    let cpu0 = kube::cpu_secs(pid);
    let t = Instant::now();
    write_leases(&w.client, &w.etcd.endpoint(), &w.prefix, "10.0.0.0/8", n, 1);
    let patching = t.elapsed();
    while kube::macs_of(&w.node, 1) != (n, n) && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (wall, cpu) = (t.elapsed(), kube::cpu_secs(pid) - cpu0);
    println!(
        "cold start before it: ready after {:.2} s, peak RSS {:.1} MiB",
        cold.ready_s, cold.hwm_mib
    );
    println!("idle, 3 s: CPU {idle:.2} s");
    println!(
        "vtep-mac rewritten in {n} leases (written in {:.2} s): settled (every new MAC in FDB and neighbours: {:?}) {:.2} s after the first write; CPU {cpu:.2} s (etcd requests not recorded)\n",
        patching.as_secs_f64(),
        kube::macs_of(&w.node, 1),
        wall.as_secs_f64()
    );
}

/// Starts `node`'s daemon and times it until ready; its entries, then (12 s of resyncs
/// later) its peak and current RSS and its last full resync, printed and returned.
fn cold_start(node: &mut Node) -> Cold {
    let start = Instant::now();
    node.start_daemon();
    let pid = node.daemon.as_ref().expect("daemon").pid();
    let ready = wait_until(Duration::from_secs(120), || {
        http_get(&node.host, HEALTH_ADDR, "/readyz").0 == 200
    });
    let elapsed = start.elapsed();
    assert!(ready, "daemon not ready:\n{}", node.log());
    // ferry's routes on either path (DirectRouting: on eth0 for peers on the same L2).
    let routes = node
        .host
        .sh("ip route show proto 102 | wc -l")
        .trim()
        .parse::<usize>()
        .unwrap_or(0);
    let fdb = node
        .host
        .sh("bridge fdb show dev ferry.1 | wc -l")
        .trim()
        .parse::<usize>()
        .unwrap_or(0);
    let neigh = node
        .host
        .sh("ip neigh show dev ferry.1 nud permanent | wc -l")
        .trim()
        .parse::<usize>()
        .unwrap_or(0);
    // Steady state after a few resyncs, too.
    std::thread::sleep(Duration::from_secs(12));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    let m = http_get(&node.host, HEALTH_ADDR, "/metrics").1;
    let last = m
        .lines()
        .find(|l| l.starts_with("ferry_reconcile_last_duration_seconds "))
        .unwrap_or("")
        .to_string();
    println!(
        "ready (all entries programmed) after {:.2} s; entries: {routes} routes, {fdb} FDB, {neigh} neighbours",
        elapsed.as_secs_f64()
    );
    println!(
        "peak RSS {:.1} MiB (VmHWM), RSS now {:.1} MiB; steady-state full resync: {}\n",
        field("VmHWM:") as f64 / 1024.0,
        field("VmRSS:") as f64 / 1024.0,
        last.trim_start_matches("ferry_reconcile_last_duration_seconds ")
            .to_string()
            + " s"
    );
    Cold {
        ready_s: elapsed.as_secs_f64(),
        routes,
        fdb,
        neigh,
        hwm_mib: field("VmHWM:") as f64 / 1024.0,
        rss_mib: field("VmRSS:") as f64 / 1024.0,
    }
}
