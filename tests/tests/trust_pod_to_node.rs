//! A pod never reaches a node-only service (a node's VXLAN port, etcd). A pod's packets to
//! anything outside the cluster CIDRs are masqueraded to its node's address, which every
//! other node trusts: a pod that crafted VXLAN to another node once had it taken as its
//! node's, with any inner source, to any pod. The sending node drops such packets before
//! the masquerade and counts them.

use std::time::Duration;

use ferry_tests::cluster::{url_host, Cluster, Datastore, Node};
use ferry_tests::needs_root;
use ferry_tests::netns::Netns;
use ferry_tests::proc::wait_until;
use ferry_tests::vxlan_probe::{Frame, Probe};

const VXLAN_CUT: &str = "a pod never reaches a node's VXLAN port";
const VXLAN_CUT_HERE: &str = "a pod never reaches this node's VXLAN port";

/// Address `host` of `node`'s subnet (its IPv4 one; an IPv6-only node's IPv6 one).
fn in_subnet(node: &Node, host: u8) -> String {
    let s = node.subnet();
    match s.strip_suffix("::/64") {
        Some(net) => format!("{net}::{host:x}"),
        None => s.replace(".0/24", &format!(".{host}")),
    }
}

/// Whether a TCP connection from `ns` to `addr`:`port` opens.
fn tcp_opens(ns: &Netns, addr: &str, port: u16) -> bool {
    ns.try_sh(&format!(
        "python3 -c \"import socket; socket.create_connection(('{addr}', {port}), timeout=2)\""
    ))
    .status
    .success()
}

/// kube-proxy's DNAT of a Service of `proto` at `from` (ClusterIP, port) to `to` (address,
/// port), on `node`: how a user who may make Services points one at a node.
fn dnat(node: &Node, proto: &str, from: (&str, u16), to: (&str, u16)) {
    let ipt = if from.0.contains(':') {
        "ip6tables"
    } else {
        "iptables"
    };
    let dest = format!("{}:{}", url_host(to.0), to.1);
    for chain in ["PREROUTING", "OUTPUT"] {
        node.host.sh(&format!(
            "{ipt} -w -t nat -A {chain} -d {} -p {proto} --dport {} -j DNAT --to-destination {dest}",
            from.0, from.1
        ));
    }
}

/// A series of `ferry_pod_to_node_dropped_packets_total`.
fn pod_drops(service: &str, path: &str) -> String {
    format!("ferry_pod_to_node_dropped_packets_total{{service=\"{service}\",path=\"{path}\"}}")
}

/// Every way a pod of node 0 could send VXLAN to a node: to node 1's underlay address
/// (inner source nowhere, or inside node 0's own subnet), to node 1 through a Service
/// whose endpoint is it, to node 0 itself through one. Each is dropped on node 0 and
/// counted; the same frame from node 0's host arrives (the frame is right, and node 1
/// would take it: only the sending node's cut stops the pod). Then etcd, by its address.
fn a_pod_never_sends_vxlan(c: &Cluster, cluster_ips: [&str; 2], nowhere: &str) {
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let pod = n1.add_pod("pa");
    let target = n2.add_pod("pb");
    let local = n1.add_pod("pc");
    let probe = Probe::listen(&target.ns);
    let legit = Frame::to(n2, in_subnet(n1, 0x77), &target.ip);
    probe.assert_arrives(&n1.host, &legit, "from-node");
    for (frame, payload) in [
        (legit.clone(), "pod-as-its-node"),
        (
            Frame {
                src: nowhere.to_string(),
                ..legit.clone()
            },
            "pod-from-nowhere",
        ),
    ] {
        assert!(
            probe.dropped_by(&pod.ns, &frame, payload, 10, &n1.host, VXLAN_CUT),
            "a pod's VXLAN reached a pod on another node: {:?}",
            probe.received()
        );
    }
    // A Service whose endpoint is node 1's VXLAN port: the destination after the DNAT
    // is a node's.
    dnat(n1, "udp", (cluster_ips[0], 4789), (&n2.ip, 4789));
    let via_service = Frame {
        node: cluster_ips[0].to_string(),
        ..legit.clone()
    };
    assert!(
        probe.dropped_by(
            &pod.ns,
            &via_service,
            "via-service",
            10,
            &n1.host,
            VXLAN_CUT
        ),
        "{:?}",
        probe.received()
    );
    // One whose endpoint is node 0's own: the input path.
    dnat(n1, "udp", (cluster_ips[1], 4789), (&n1.ip, 4789));
    let here = Probe::listen(&local.ns);
    let to_self = Frame {
        mac: n1.vtep_mac(),
        dst: local.ip.clone(),
        node: cluster_ips[1].to_string(),
        ..legit.clone()
    };
    assert!(
        here.dropped_by(&pod.ns, &to_self, "to-self", 10, &n1.host, VXLAN_CUT_HERE),
        "{:?}",
        here.received()
    );
    // etcd, by the address the daemons were given: the node reaches it, its pods do not.
    // The Kubernetes datastore's API is no node-only service: pods reach the API server as
    // they must (its own authentication guards it), and ferry does not stand in the way.
    let counted_etcd = match (c.datastore, &c.api) {
        (Datastore::Kubernetes, Some(api)) => {
            let (ip, port) = (api.addr().ip().to_string(), api.addr().port());
            assert!(
                tcp_opens(&pod.ns, &ip, port),
                "a pod cannot reach the API at {ip} port {port}"
            );
            0
        }
        _ => {
            let etcd = c.etcd.ip.clone();
            assert!(tcp_opens(&n1.host, &etcd, 2379));
            assert!(
                !tcp_opens(&pod.ns, &etcd, 2379),
                "a pod reached etcd at {etcd}"
            );
            1
        }
    };
    // Seen by the operator at the next resync.
    let counted = wait_until(Duration::from_secs(10), || {
        c.metric(0, &pod_drops("vxlan", "forward")) >= 30
            && c.metric(0, &pod_drops("vxlan", "input")) >= 10
            && c.metric(0, &pod_drops("etcd", "forward")) >= counted_etcd
    });
    assert!(counted, "{}", c.metrics(0));
    // Pods still reach each other, and the table was never written again.
    pod.ns.sh(&format!("ping -c1 -W2 {}", target.ip));
    for n in &c.nodes {
        assert!(!n.log().contains("written again"), "{}", n.log());
    }
    for (n, p) in [(0, &pod), (1, &target), (0, &local)] {
        c.nodes[n].del_pod(p);
    }
}

#[test]
fn a_pod_never_sends_vxlan_with_direct_routing() {
    needs_root!();
    let c = Cluster::builder().nodes(2).build();
    assert!(c.nodes[0].direct_routes().contains(&c.nodes[1].subnet()));
    a_pod_never_sends_vxlan(&c, ["10.96.0.47", "10.96.0.48"], "198.51.100.7");
}

#[test]
fn a_pod_never_sends_vxlan_without_direct_routing() {
    needs_root!();
    let c = Cluster::builder().nodes(2).direct_routing(false).build();
    assert!(c.nodes[0].direct_routes().trim().is_empty());
    a_pod_never_sends_vxlan(&c, ["10.96.0.47", "10.96.0.48"], "198.51.100.7");
}

#[test]
fn an_ipv6_pod_never_sends_vxlan() {
    needs_root!();
    let c = Cluster::builder().nodes(2).v6_only().build();
    a_pod_never_sends_vxlan(&c, ["fd00:96::47", "fd00:96::48"], "2001:db8:ffff::7");
    // The receiving node's IPv6 checks alone: from node 0's host (trusted as node 0), an
    // inner source of node 0's subnet arrives, one from nowhere does not.
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let target = n2.add_pod("pd");
    let probe = Probe::listen(&target.ns);
    let legit = Frame::to(n2, in_subnet(n1, 0x78), &target.ip);
    probe.assert_arrives(&n1.host, &legit, "legit6");
    let nowhere = Frame {
        src: "2001:db8:ffff::8".into(),
        ..legit
    };
    assert!(
        probe.dropped_by(
            &n1.host,
            &nowhere,
            "nowhere6",
            10,
            &n2.host,
            "VXLAN carries only its node's pod sources"
        ),
        "{:?}",
        probe.received()
    );
    c.nodes[1].del_pod(&target);
}

/// etcd given to the daemons as a ClusterIP (as the shipped ConfigMap does), which
/// kube-proxy translates to etcd's address on every node: the daemons reach it, a pod
/// does not, though the address it would reach after the translation is not one the
/// daemons know.
#[test]
fn a_pod_never_reaches_etcd_through_its_cluster_ip() {
    needs_root!();
    // A node's etcd endpoint is rewritten to a ClusterIP.
    let mut c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(0)
        .build();
    let etcd = c.etcd.ip.clone();
    let given = c.etcd.endpoint();
    for _ in 0..2 {
        let n = c.add_node_stopped();
        dnat(n, "tcp", ("10.96.0.66", 2379), (&etcd, 2379));
        n.daemon_args = n.daemon_args.replace(&given, "http://10.96.0.66:2379");
        assert!(n.daemon_args.contains("10.96.0.66"), "{}", n.daemon_args);
        n.start_daemon();
    }
    for n in &mut c.nodes {
        n.wait_ready();
    }
    c.wait_converged();
    let pod = c.nodes[0].add_pod("pe");
    assert!(tcp_opens(&c.nodes[0].host, "10.96.0.66", 2379));
    assert!(
        !tcp_opens(&pod.ns, "10.96.0.66", 2379),
        "a pod reached etcd through its ClusterIP"
    );
    let counted = wait_until(Duration::from_secs(10), || {
        c.metric(0, &pod_drops("etcd", "forward")) >= 1
    });
    assert!(counted, "{}", c.metrics(0));
    assert!(
        ferry_tests::vxlan_probe::dropped(
            &c.nodes[0].host,
            "a pod never reaches etcd 10.96.0.66:2379, translated or not"
        ) >= 1,
        "{}",
        c.nodes[0].host.sh("nft list table inet ferry")
    );
    c.nodes[0].del_pod(&pod);
}
