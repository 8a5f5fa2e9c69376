//! DirectRouting (issue 14): nodes on one L2 segment route each other's pod subnets via
//! their underlay addresses, unencapsulated; VXLAN only across the router. Black-box: a
//! cluster of namespaces on two segments, the real daemon, the kernel's counters.

use std::time::Duration;

use ferry_tests::cluster::{Cluster, ClusterBuilder, Datastore, Node};
use ferry_tests::needs_root;
use ferry_tests::netpol::cases::{PodRef, Protocol};
use ferry_tests::netpol::world::World;
use ferry_tests::proc::{connect, echo_peer_server, echo_peer_server_on, wait_until};
use serde_json::{json, Value};

/// These tests count the packets of the VXLAN devices: no peer health probes there.
const QUIET: [&str; 1] = ["--peer-health=false"];

/// Waits until `n` routes `subnet` directly (on eth0, ferry's protocol) via `via`.
fn wait_direct(n: &Node, subnet: &str, via: &str) {
    let want = format!("{subnet} via {via} dev eth0");
    let ok = wait_until(Duration::from_secs(15), || {
        n.direct_routes().lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.starts_with(&[subnet, "via", via])
        })
    });
    assert!(
        ok,
        "{}: no {want}:\n{}\n{}",
        n.name,
        n.ferry_routes(),
        n.log()
    );
}

/// Waits until `n` routes `subnet` over VXLAN (and not directly).
fn wait_vxlan(n: &Node, subnet: &str) {
    let ok = wait_until(Duration::from_secs(15), || {
        n.overlay_routes().contains(subnet) && !n.direct_routes().contains(subnet)
    });
    assert!(
        ok,
        "{}: {subnet} not on VXLAN:\n{}\n{}",
        n.name,
        n.ferry_routes(),
        n.log()
    );
}

/// Runs `f` and says whether the VXLAN device of any of `nodes` counted a packet meanwhile.
fn vxlan_moved(nodes: &[&Node], f: impl FnOnce()) -> bool {
    let before: Vec<u64> = nodes.iter().map(|n| n.vxlan_packets()).collect();
    f();
    let after: Vec<u64> = nodes.iter().map(|n| n.vxlan_packets()).collect();
    before != after
}

/// Pings and a TCP exchange from `from` to `to`: the server must see `from`'s pod IP.
fn exchange(from: &ferry_tests::cluster::Pod, to: &ferry_tests::cluster::Pod) {
    from.ns.sh(&format!("ping -c3 -i0.2 -W2 {}", to.ip));
    for _ in 0..3 {
        assert_eq!(
            connect(&from.ns, &to.ip, 7000).as_deref(),
            Some(from.ip.as_str()),
            "{} -> {}: the server must see the client's pod IP",
            from.id,
            to.id
        );
    }
}

/// `ferry-ipam leases --state-dir` of node `i`, as JSON: (node, path, device), by node.
fn paths_seen_by(c: &Cluster, i: usize) -> Vec<(String, String, String)> {
    let out = c.nodes[i].host.sh(&format!(
        "{} leases {} --state-dir {} -o json",
        ferry_tests::bin("ferry-ipam").display(),
        c.datastore_flags(),
        c.nodes[i].state_dir().display()
    ));
    let v: Value = serde_json::from_str(&out).expect("leases JSON");
    v["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or("-").to_string();
            (s("node"), s("path"), s("device"))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn path(node: &str, path: &str, dev: &str) -> (String, String, String) {
    (node.into(), path.into(), dev.into())
}

/// Waits until node `i`'s path display says `want`.
fn wait_paths(c: &Cluster, i: usize, want: &[(String, String, String)]) {
    let ok = wait_until(Duration::from_secs(15), || paths_seen_by(c, i) == want);
    assert!(ok, "node{i} shows {:?}, not {want:?}", paths_seen_by(c, i));
}

#[test]
fn same_segment_is_direct_across_is_vxlan_and_a_moved_node_switches() {
    needs_root!();
    // node0, node1 on segment A; node2 on segment B, behind the router.
    let mut c = Cluster::builder().flags(QUIET).two_segments(2, 1).build();
    // Strict reverse-path filtering on every node: a directly routed packet arrives on
    // the underlay with a pod source, which the receiver routes back the same way.
    for n in &c.nodes {
        n.host.sh(
            "sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.eth0.rp_filter=1 \
             net.ipv4.conf.default.rp_filter=1",
        );
    }
    let s: Vec<String> = c.nodes.iter().map(Node::subnet).collect();
    wait_direct(&c.nodes[0], &s[1], &c.nodes[1].ip);
    wait_direct(&c.nodes[1], &s[0], &c.nodes[0].ip);
    wait_vxlan(&c.nodes[0], &s[2]);
    wait_vxlan(&c.nodes[2], &s[0]);
    // The other family's entries stay: the peer keeps its FDB entry and neighbour.
    assert!(c.nodes[0].overlay_fdb().contains(&c.nodes[1].ip));

    let pods: Vec<_> = (0..3)
        .map(|i| c.nodes[i].add_pod(&format!("d{i}")))
        .collect();
    let _servers: Vec<_> = pods.iter().map(|p| echo_peer_server(&p.ns, 7000)).collect();
    for p in &pods {
        c.wait_reachable(&pods[0].ns, &p.ip);
    }
    // 1. Same segment: no packet through either VXLAN device, both ways.
    let (n0, n1, n2) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    assert!(
        !vxlan_moved(&[n0, n1], || {
            exchange(&pods[0], &pods[1]);
            exchange(&pods[1], &pods[0]);
        }),
        "same-segment traffic went through VXLAN"
    );
    // A full-size packet with DF set passes at the pods' (VXLAN-safe) MTU.
    pods[0].ns.sh(&format!(
        "ping -c1 -W2 -M do -s {} {}",
        1450 - 28,
        pods[1].ip
    ));
    // 2. Across segments: through VXLAN on both ends, the client's address kept.
    assert!(
        vxlan_moved(&[n0], || exchange(&pods[0], &pods[2])),
        "cross-segment traffic did not go through VXLAN"
    );
    assert!(vxlan_moved(&[n2], || exchange(&pods[2], &pods[1])));
    // 7. The path display, per remote node, from node0's point of view.
    wait_paths(
        &c,
        0,
        &[
            path("node0", "local", "-"),
            path("node1", "direct", "eth0"),
            path("node2", "vxlan", "-"),
        ],
    );
    let table = c.nodes[0].host.sh(&format!(
        "{} leases {} --state-dir {}",
        ferry_tests::bin("ferry-ipam").display(),
        c.datastore_flags(),
        c.nodes[0].state_dir().display()
    ));
    assert!(
        table.contains("PATH") && table.contains("direct via eth0"),
        "{table}"
    );
    assert!(c.metrics(0).contains("ferry_direct_peers 1"));

    // 3. node2 moves to segment A under a new address. Its daemon reads its underlay
    // address at start, so it is restarted (its lease then names the new address); the
    // other nodes are not touched.
    c.move_node(2, "192.0.2.13");
    c.nodes[2].restart_daemon();
    let ip2 = c.nodes[2].ip.clone();
    wait_direct(&c.nodes[0], &s[2], &ip2);
    wait_direct(&c.nodes[1], &s[2], &ip2);
    wait_direct(&c.nodes[2], &s[0], &c.nodes[0].ip);
    c.wait_reachable(&pods[0].ns, &pods[2].ip);
    let (n0, n2) = (&c.nodes[0], &c.nodes[2]);
    assert!(
        !vxlan_moved(&[n0, n2], || exchange(&pods[0], &pods[2])),
        "traffic to the moved node still went through VXLAN"
    );
    wait_paths(
        &c,
        0,
        &[
            path("node0", "local", "-"),
            path("node1", "direct", "eth0"),
            path("node2", "direct", "eth0"),
        ],
    );
    for (i, p) in pods.iter().enumerate() {
        c.nodes[i].del_pod(p);
    }
}

/// Two nodes of cluster CIDR `cidr` on one segment (`builder`'s cluster otherwise), node 0
/// routing to node 1's subnet (returned with the cluster) directly.
fn two_nodes_routing_directly(builder: ClusterBuilder, cidr: &str) -> (Cluster, String) {
    let c = builder.nodes(2).cluster_cidr(cidr).build();
    let s1 = c.nodes[1].subnet();
    wait_direct(&c.nodes[0], &s1, &c.nodes[1].ip);
    (c, s1)
}

#[test]
fn reconcile_mends_a_hand_deleted_direct_route_and_removes_a_stale_one() {
    needs_root!();
    let (c, s1) = two_nodes_routing_directly(Cluster::builder().flags(QUIET), "10.91.0.0/16");
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    // Nothing of the peer on the VXLAN device's routes; its FDB entry is kept.
    assert!(
        !n0.overlay_routes().contains(&s1),
        "{}",
        n0.overlay_routes()
    );
    assert!(n0.overlay_fdb().contains(&n1.ip), "{}", n0.overlay_fdb());
    n0.host.sh(&format!("ip route del {s1} dev eth0"));
    wait_direct(n0, &s1, &n1.ip);
    // A direct route of ferry's to a subnet no lease names: removed.
    n0.host.sh(&format!(
        "ip route add 10.91.250.0/24 via {} dev eth0 proto 102",
        n1.ip
    ));
    let gone = wait_until(Duration::from_secs(10), || {
        !n0.ferry_routes().contains("10.91.250.0/24")
    });
    assert!(gone, "stale direct route kept:\n{}", n0.ferry_routes());
    // A direct route that points at the wrong node is pointed back.
    n0.host.sh(&format!(
        "ip route replace {s1} via 192.0.2.200 dev eth0 proto 102"
    ));
    wait_direct(n0, &s1, &n1.ip);
    // Hand-put on VXLAN: moved back to the direct path.
    n0.host.sh(&format!(
        "ip route replace {s1} via {} dev ferry.1 onlink proto 102",
        s1.split('/').next().unwrap_or_default()
    ));
    wait_direct(n0, &s1, &n1.ip);
    c.assert_metric_served(0, "ferry_repairs_total");
}

#[test]
fn direct_routing_off_gives_vxlan_for_all() {
    needs_root!();
    let c = Cluster::builder()
        .flags(QUIET)
        .nodes(2)
        .direct_routing(false)
        .build();
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    wait_vxlan(n0, &n1.subnet());
    wait_vxlan(n1, &n0.subnet());
    assert_eq!(n0.direct_routes().trim(), "");
    let a = n0.add_pod("oa");
    let b = n1.add_pod("ob");
    let _srv = echo_peer_server(&b.ns, 7000);
    c.wait_reachable(&a.ns, &b.ip);
    assert!(vxlan_moved(&[n0, n1], || exchange(&a, &b)));
    wait_paths(
        &c,
        0,
        &[path("node0", "local", "-"), path("node1", "vxlan", "-")],
    );
    assert!(c.metrics(0).contains("ferry_direct_peers 0"));
    n0.del_pod(&a);
    n1.del_pod(&b);
}

#[test]
fn network_policy_holds_on_the_direct_path() {
    needs_root!();
    let mut w = World::new(&[80], &[Protocol::Tcp], &mut |_| {});
    let refs: Vec<PodRef> = w.pod_ips().into_keys().collect();
    let target = refs
        .iter()
        .find(|r| w.pod(r).node == 0)
        .expect("a pod on node0")
        .clone();
    let from = refs
        .iter()
        .find(|r| w.pod(r).node == 1)
        .expect("a pod on node1")
        .clone();
    let (n0, n1) = (&w.cluster.nodes[0], &w.cluster.nodes[1]);
    // The world's nodes share one segment: node1's pods reach node0's directly.
    wait_direct(n0, &n1.subnet(), &n1.ip);
    wait_direct(n1, &n0.subnet(), &n0.ip);
    let ip = w.pod(&target).ip;
    let allowed = wait_until(Duration::from_secs(10), || {
        w.probe(&from, ip, 80, Protocol::Tcp)
    });
    assert!(allowed, "{}", w.logs());
    assert!(!vxlan_moved(&[n0, n1], || assert!(w.probe(
        &from,
        ip,
        80,
        Protocol::Tcp
    ))));
    // An ingress deny on the target: enforced although the packet never was in VXLAN.
    w.put_policy(
        &target.ns,
        "deny-in",
        &json!({"podSelector": {"matchLabels": {"pod": target.name}},
                "policyTypes": ["Ingress"]}),
        false,
    )
    .unwrap();
    let denied = wait_until(Duration::from_secs(10), || {
        !w.probe(&from, ip, 80, Protocol::Tcp)
    });
    assert!(denied, "{}", w.logs());
    for _ in 0..5 {
        assert!(!w.probe(&from, ip, 80, Protocol::Tcp));
    }
}

/// NetworkPolicy on the direct path over IPv6: an IPv6-only cluster whose nodes share
/// one segment (so pod packets between them are never in VXLAN), the cluster's API
/// stand-in on the etcd host's IPv6 address. The target admits pods labelled `ok` only.
#[test]
fn network_policy_holds_on_the_direct_path_over_ipv6() {
    use ferry_tests::netpol::l2::{self, TcpServer};
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    needs_root!();
    let c = Cluster::builder()
        .flags(QUIET)
        .nodes(2)
        .v6_only()
        .kube_api()
        .flags(["--network-policy"])
        .build();
    let api = c.api();
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let s6 = |n: &Node| n.node_state()["podCIDRv6"].as_str().unwrap().to_string();
    wait_direct(n0, &s6(n1), &n1.ip);
    wait_direct(n1, &s6(n0), &n0.ip);
    for ns in ["x", "y"] {
        let obj: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"ns": ns}}}))
                .unwrap();
        api.create(obj).unwrap();
    }
    // Pods as a kubelet makes them: the object, the ADD naming it, the status.
    let pod = |n: &Node, ns: &str, name: &str| {
        let obj: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
            "spec": {"nodeName": n.name, "containers": [{"name": "c"}]}}))
        .unwrap();
        api.create(obj).unwrap();
        let made = n.add_pod_as(
            &ferry_tests::unique("d6"),
            Some(&format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}")),
        );
        let mut obj: Pod = api.get(Some(ns), name).unwrap();
        obj.status = serde_json::from_value(json!({"phase": "Running", "podIP": made.ip,
            "podIPs": [{"ip": made.ip}]}))
        .unwrap();
        api.update(obj).unwrap();
        made
    };
    let target = pod(n0, "x", "t");
    let ok = pod(n1, "y", "ok");
    let other = pod(n1, "y", "other");
    let _server = TcpServer::start(&target.ns, 80).expect("a server");
    let to: std::net::IpAddr = target.ip.parse().unwrap();
    let reaches =
        |from: &ferry_tests::cluster::Pod| l2::tcp(&from.ns, to, 80, Duration::from_millis(500));
    assert!(
        wait_until(Duration::from_secs(10), || reaches(&ok) && reaches(&other)),
        "no policy, yet refused\n{}",
        n0.log()
    );
    assert!(
        !vxlan_moved(&[n0, n1], || assert!(reaches(&ok))),
        "IPv6 pod traffic on one segment went through VXLAN"
    );
    let policy: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "t-from-ok", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "t"}}, "ingress": [{"from": [
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "ok"}}}]}]}}))
    .unwrap();
    api.create(policy).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !reaches(&other)),
        "y/other still reaches x/t over IPv6 on the direct path\n{}",
        n0.host.sh("nft list table inet ferry_policy")
    );
    assert!(
        !vxlan_moved(&[n0, n1], || {
            for _ in 0..3 {
                assert!(reaches(&ok), "y/ok lost x/t");
                assert!(!reaches(&other), "y/other reached x/t");
            }
        }),
        "the verdicts were not given on the direct path"
    );
    for (p, n) in [(&target, n0), (&ok, n1), (&other, n1)] {
        n.del_pod(p);
    }
}

#[test]
fn a_lease_naming_an_on_link_stranger_gets_no_more_than_its_own_subnet() {
    needs_root!();
    // The lies are etcd records, written past the daemons.
    let builder = Cluster::builder().flags(QUIET).datastore(Datastore::Etcd);
    let (c, s1) = two_nodes_routing_directly(builder, "10.93.0.0/16");
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let _stranger = c.stranger("192.0.2.50");
    // A lie: a "node" at the stranger's on-link address, with a subnet of its own, and a
    // second record naming node1's subnet at the stranger's address.
    let lie = |node: &str, subnet: &str| {
        format!(
            r#"{{"node":"{node}","subnet":"{subnet}","publicIp":"192.0.2.50","vtepMac":"0e:00:00:00:00:50"}}"#
        )
    };
    c.etcd_put(&c.lease_key("10.93.77.0/24"), &lie("liar", "10.93.77.0/24"));
    c.etcd_put(&c.lease_key(&s1), &lie("liar2", &s1));
    let a = n0.add_pod("la");
    let b = n1.add_pod("lb");
    let _srv = echo_peer_server(&b.ns, 7000);
    std::thread::sleep(Duration::from_secs(5));
    for n in [n0, n1] {
        let r = n.ferry_routes();
        // Only the lie's own subnet goes to the stranger, as VXLAN would send it there.
        let to_stranger: Vec<&str> = r.lines().filter(|l| l.contains("192.0.2.50")).collect();
        assert!(
            to_stranger.iter().all(|l| l.starts_with("10.93.77.0/24")),
            "{}: {r}",
            n.name
        );
    }
    // node1 defends its lease; node0 still routes node1's subnet to node1.
    wait_direct(n0, &s1, &n1.ip);
    c.wait_reachable(&a.ns, &b.ip);
    assert_eq!(connect(&a.ns, &b.ip, 7000).as_deref(), Some(a.ip.as_str()));
    n0.del_pod(&a);
    n1.del_pod(&b);
}

#[test]
fn an_ipv6_underlay_routes_ipv6_pods_directly() {
    needs_root!();
    let c = Cluster::builder().flags(QUIET).nodes(2).v6_only().build();
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let s6 = |n: &Node| n.node_state()["podCIDRv6"].as_str().unwrap().to_string();
    wait_direct(n0, &s6(n1), &n1.ip);
    wait_direct(n1, &s6(n0), &n0.ip);
    let a = n0.add_pod("6a");
    let b = n1.add_pod("6b");
    let _srv = echo_peer_server_on(&b.ns, "::", 7000);
    c.wait_reachable(&a.ns, &b.ip);
    assert!(
        !vxlan_moved(&[n0, n1], || {
            a.ns.sh(&format!("ping -6 -c3 -i0.2 -W2 {}", b.ip));
            assert_eq!(connect(&a.ns, &b.ip, 7000).as_deref(), Some(a.ip.as_str()));
        }),
        "IPv6 pod traffic on one segment went through VXLAN"
    );
    n0.del_pod(&a);
    n1.del_pod(&b);
}
