//! An IPv6-only cluster over an IPv6 underlay (issue 11): every host on 2001:db8::/64 with
//! no IPv4 address, the VXLAN device's VTEP on IPv6 (MTU = underlay - 70), leases keyed by
//! their IPv6 subnet, and every traffic kind of the IPv4 overlay tests over IPv6.

use std::time::Duration;

use ferry_tests::cluster::{Cluster, Datastore, Node, OUTSIDE_IP_V6};
use ferry_tests::needs_root;
use ferry_tests::proc::{connect, echo_peer_server_on, wait_until, Bg};
use ferry_tests::services::Service;
use ferry_tests::vxlan_probe::{assert_only_nodes_listed, Frame, Probe};

/// 1500 (the veths of the switch) - 40 (outer IPv6) - 8 (UDP) - 8 (VXLAN) - 14 (Ethernet).
const POD_MTU: u64 = 1430;

fn subnet6(n: &Node) -> String {
    n.node_state()["podCIDRv6"].as_str().unwrap().to_string()
}

#[test]
fn an_ipv6_only_cluster_carries_every_traffic_kind_over_an_ipv6_underlay() {
    needs_root!();
    // About IPv6 VXLAN (its device, FDB, routes): the nodes share a segment, so
    // DirectRouting is off; direct_routing.rs covers the other path.
    // The records are read from etcd itself.
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .v6_only()
        .cluster_cidr_v6("fd00:66::/56")
        .direct_routing(false)
        .build();
    // The node state: IPv6 only, the pod MTU of an IPv6 underlay.
    for n in &c.nodes {
        let st = n.node_state();
        assert!(st.get("podCIDR").is_none(), "{st}");
        assert_eq!(st["clusterCIDRv6"], "fd00:66::/56");
        assert!(subnet6(n).starts_with("fd00:66:0:"), "{st}");
        assert_eq!(st["mtu"], POD_MTU, "{st}");
    }
    // The VTEP on the node's IPv6 underlay address; FDB entries to the others' IPv6.
    let dev = c.nodes[0].host.sh("ip -d link show ferry.1");
    assert!(
        dev.contains("local 2001:db8::11") && dev.contains(&format!("mtu {POD_MTU}")),
        "{dev}"
    );
    let fdb = c.nodes[0].overlay_fdb();
    assert!(
        fdb.contains("dst 2001:db8::12") && fdb.contains("dst 2001:db8::13"),
        "{fdb}"
    );
    // etcd: records under leases-v6/, none under leases/, a config without IPv4 keys.
    let keys = c
        .etcd
        .ctl(&format!("get {}/v1/ --prefix --keys-only", c.prefix));
    let under = |dir: &str| {
        keys.lines()
            .filter(|k| k.starts_with(&format!("{}/v1/{dir}/", c.prefix)))
            .count()
    };
    assert_eq!((under("leases"), under("leases-v6")), (0, 3), "{keys}");
    assert_eq!(
        c.etcd_get(&format!("{}/v1/config", c.prefix)).trim(),
        r#"{"vni":1,"port":4789,"ipv6":{"clusterCIDR":"fd00:66::/56","subnetLen":64}}"#
    );
    let rec: serde_json::Value =
        serde_json::from_str(&c.etcd_get(&c.lease_key(&subnet6(&c.nodes[1])))).unwrap();
    assert_eq!(rec["publicIp"], "2001:db8::12", "{rec}");
    assert!(rec.get("subnet").is_none(), "{rec}");
    // The operator's view.
    let out = c.ipam_leases("-o json");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["clusterCIDRv6"], "fd00:66::/56", "{v}");
    assert!(v.get("clusterCIDR").is_none(), "{v}");
    assert_eq!(v["leased"], 3, "{v}");
    for l in v["leases"].as_array().unwrap() {
        assert!(
            l["subnetV6"].as_str().unwrap().starts_with("fd00:66:"),
            "{l}"
        );
        assert!(
            l["publicIp"].as_str().unwrap().starts_with("2001:db8::"),
            "{l}"
        );
    }
    let table = c.ipam_leases("");
    assert!(
        table.contains("cluster fd00:66::/56: 3 of 256 /64 IPv6 node subnets leased"),
        "{table}"
    );

    // Pods through the real plugin: IPv6 addresses only.
    let a = c.nodes[0].add_pod("6a");
    let (near, b) = c.pods_across("6n", "6b");
    assert!(
        a.ip.starts_with("fd00:66:") && b.ip.contains(':'),
        "{}",
        a.result
    );
    c.wait_reachable(&a.ns, &b.ip);
    let _srv = echo_peer_server_on(&a.ns, "::", 7000);
    // Pod to pod on one node and across nodes: the server sees the client's address.
    assert_eq!(
        connect(&near.ns, &a.ip, 7000).as_deref(),
        Some(near.ip.as_str())
    );
    assert_eq!(connect(&b.ns, &a.ip, 7000).as_deref(), Some(b.ip.as_str()));
    // A Service through ip6tables DNAT rules as kube-proxy makes them.
    let svc = Service::new("fd00:96::10", &a.ip);
    svc.install_and_check(&c, (&b.ns, &b.ip), (&near.ns, &near.ip), &a.ns);
    // Pod to outside: masqueraded to its node's IPv6 underlay address.
    let _out = echo_peer_server_on(&c.outside, "::", 7100);
    assert_eq!(
        connect(&b.ns, OUTSIDE_IP_V6, 7100).as_deref(),
        Some("2001:db8::12")
    );
    // A full-size DF packet at the pod MTU crosses nodes; one byte more does not fit.
    let payload = POD_MTU - 40 - 8;
    b.ns.sh(&format!("ping -6 -c2 -W2 -M do -s {payload} {}", a.ip));
    let too_big = b.ns.try_sh(&format!(
        "ping -6 -c1 -W2 -M do -s {} {}",
        payload + 1,
        a.ip
    ));
    assert!(
        !too_big.status.success(),
        "{} bytes passed a {POD_MTU} MTU",
        payload + 1
    );
    // A hand-deleted IPv6 route and neighbour are put back by the next resync.
    let n0 = &c.nodes[0];
    n0.assert_mends_v6(&subnet6(&c.nodes[1]));
    assert!(n0
        .log()
        .contains("kernel differed from the leases; mending"));
    let m = c.metrics(0);
    assert!(m.contains("ferry_leases_known 3"), "{m}");
    // The node rules of an IPv6-only node are ip6tables'; no IPv4 masquerade rule.
    let rules = n0.host.sh("ip6tables -t nat -S FERRY-POSTRTG");
    assert!(rules.contains("-s fd00:66::/56 -d fd00:66::/56"), "{rules}");
    let v4 = n0.host.try_sh("iptables -t nat -S FERRY-POSTRTG");
    assert!(!v4.status.success(), "an IPv4 chain on an IPv6-only node");
    for (i, p) in [(0, &a), (0, &near), (1, &b)] {
        c.nodes[i].del_pod(p);
    }
}

#[test]
fn an_ipv6_only_daemon_restart_loses_no_packet_and_keeps_subnet_and_mac() {
    needs_root!();
    let mut c = Cluster::builder().nodes(3).v6_only().build();
    let (a, b) = c.pods_across("7a", "7b");
    c.wait_reachable(&a.ns, &b.ip);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ping.txt");
    let pinger = Bg::spawn_logged(
        &a.ns,
        &format!("ping -6 -q -i 0.02 -c 250 -W1 {}", b.ip),
        &log,
    );
    c.restart_daemons_keeping_leases();
    let done = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("packets transmitted")
    });
    drop(pinger);
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(done && out.contains(" 0% packet loss"), "{out}");
    c.nodes[0].del_pod(&a);
    c.nodes[1].del_pod(&b);
}

#[test]
fn ipv6_vxlan_from_an_underlay_host_that_is_no_node_is_dropped() {
    needs_root!();
    // A lease is deleted from etcd by hand.
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .v6_only()
        .direct_routing(false)
        .build();
    let pod = c.nodes[0].add_pod("8p");
    let probe = Probe::listen(&pod.ns);
    // An inner source inside node1's subnet: what a stranger would forge.
    let frame = Frame::to(
        &c.nodes[0],
        subnet6(&c.nodes[1]).replace("::/64", "::77"),
        &pod.ip,
    );
    probe.only_nodes_reach(&c.stranger("2001:db8::66"), &c.nodes[1].host, &frame);
    // Dropped by ferry's table, counted; its set is the other nodes' IPv6 addresses.
    assert_only_nodes_listed(&c.nodes[0].host, &["2001:db8::12", "2001:db8::13"]);
    // A node that leaves is taken out of the set.
    let s2 = subnet6(&c.nodes[2]);
    let mut c = c;
    c.nodes[2].stop_daemon();
    c.etcd.ctl(&format!("del {}", c.lease_key(&s2)));
    let gone = wait_until(Duration::from_secs(10), || {
        !c.nodes[0]
            .host
            .sh("nft list set inet ferry nodes")
            .contains("2001:db8::13")
    });
    assert!(gone, "{}", c.nodes[0].host.sh("nft list table inet ferry"));
    c.nodes[0].del_pod(&pod);
}
