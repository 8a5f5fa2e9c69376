//! Lies in etcd (issue 10, "Trust nothing"): every record a daemon reads is checked, two
//! records that conflict are settled by one rule on every node, a node defends its own
//! lease and name, and nothing read from etcd replaces or removes a route ferry did not
//! make, of either family, on either path.

use std::time::Duration;

use ferry_tests::cluster::{run_overlayd, Cluster, Datastore, Node, ETCD_IP};
use ferry_tests::needs_root;
use ferry_tests::proc::wait_until;

/// Long enough for two resyncs (every 2 s in the harness) and the watch to act.
const SETTLE: Duration = Duration::from_secs(5);

fn lease_json(node: &str, subnet: &str, ip: &str, mac: &str) -> String {
    format!(r#"{{"node":"{node}","subnet":"{subnet}","publicIp":"{ip}","vtepMac":"{mac}"}}"#)
}

/// The record of an IPv6-only cluster's node (`leases-v6/`): an IPv6 subnet only.
fn lease_json_v6(node: &str, subnet_v6: &str, ip: &str, mac: &str) -> String {
    format!(r#"{{"node":"{node}","subnetV6":"{subnet_v6}","publicIp":"{ip}","vtepMac":"{mac}"}}"#)
}

/// Every route of `n`'s main table to exactly `prefix` (either family), whoever made it,
/// as `ip route` prints them.
fn routes_to(n: &Node, prefix: &str) -> String {
    let family = if prefix.contains(':') { "-6" } else { "-4" };
    n.host
        .sh(&format!("ip {family} route show exact {prefix}"))
        .trim()
        .to_string()
}

/// Whether `n`'s daemon routes `prefix` (a route of its protocol, on either path).
fn ferry_routes_prefix(n: &Node, prefix: &str) -> bool {
    n.ferry_routes()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(prefix))
}

/// `foreign_routes_outlive_a_lease_over_them` for one route, to `free` via `via`, and a
/// lease of node `node` (MAC `mac`) naming node 0's address over it.
fn one_foreign_route_outlives_a_lease(c: &Cluster, node: &str, free: &str, via: &str, mac: &str) {
    let key = c.lease_key(free);
    let lie = if free.contains(':') {
        lease_json_v6(node, free, &c.nodes[0].ip, mac)
    } else {
        lease_json(node, free, &c.nodes[0].ip, mac)
    };
    foreign_routes_outlive_a_lease_over_them(c, &[(free, via)], &key, &lie);
}

/// node2 has a route of its own (`proto static`) to each of `free` (subnets of the
/// cluster CIDR no node holds: (prefix, gateway)); then a lease at `key` (`record`) names
/// them and node0's public IP. The lease is live (node1 routes them to node0), yet node2's
/// routes stay exactly as they were, protocol and next hop, while the lease exists and
/// after it is deleted; node2 logs each spared route once and counts them.
fn foreign_routes_outlive_a_lease_over_them(
    c: &Cluster,
    free: &[(&str, &str)],
    key: &str,
    record: &str,
) {
    let (n1, n2) = (&c.nodes[1], &c.nodes[2]);
    let mut before = Vec::new();
    for (prefix, gw) in free {
        let family = if prefix.contains(':') { "-6" } else { "-4" };
        n2.host.sh(&format!(
            "ip {family} route add {prefix} via {gw} dev eth0 proto static"
        ));
        let r = routes_to(n2, prefix);
        assert!(
            r.contains(&format!("via {gw} dev eth0 proto static")),
            "{r}"
        );
        before.push(r);
    }
    let untouched = |when: &str| {
        for ((prefix, _), was) in free.iter().zip(&before) {
            assert_eq!(
                &routes_to(n2, prefix),
                was,
                "{when}: node2's own route to {prefix} changed:\n{}",
                n2.log()
            );
        }
    };
    let errors = c.metric(2, "ferry_reconcile_errors_total");
    let repairs = c.metric(2, "ferry_repairs_total");
    c.etcd_put(key, record);
    for (prefix, _) in free {
        let live = wait_until(SETTLE, || ferry_routes_prefix(n1, prefix));
        assert!(live, "node1 never used the lease:\n{}", n1.log());
    }
    // Two resyncs and the watch event have had their chance to replace it.
    std::thread::sleep(SETTLE);
    untouched("while the lease exists");
    let log = n2.log();
    for (prefix, _) in free {
        let said = log
            .lines()
            .filter(|l| l.contains("left alone") && l.contains(&format!("subnet={prefix}")))
            .count();
        assert_eq!(said, 1, "{prefix} spared, said once:\n{log}");
    }
    let spared = c.metric(2, "ferry_routes_spared");
    assert_eq!(spared, free.len() as u64, "{}", c.metrics(2));
    // A spared route is neither a failed operation nor a repair, resync after resync.
    assert_eq!(
        (
            c.metric(2, "ferry_reconcile_errors_total"),
            c.metric(2, "ferry_repairs_total")
        ),
        (errors, repairs),
        "{}",
        n2.log()
    );

    c.etcd.ctl(&format!("del {key}"));
    for (prefix, _) in free {
        let gone = wait_until(SETTLE, || !ferry_routes_prefix(n1, prefix));
        assert!(gone, "node1 kept the deleted lease's route:\n{}", n1.log());
    }
    std::thread::sleep(SETTLE);
    untouched("after the lease was deleted");
    assert_eq!(c.metric(2, "ferry_routes_spared"), 0, "{}", c.metrics(2));
}

/// The node's underlay still goes out of eth0, and etcd answers it.
fn assert_underlay_intact(n: &Node) {
    let r = n.host.sh(&format!("ip route get {ETCD_IP}"));
    assert!(r.contains("dev eth0"), "{}: {r}", n.name);
    let routes = n.ferry_routes();
    assert!(
        !routes.lines().any(|l| l.starts_with("192.0.2.")),
        "{}: {routes}",
        n.name
    );
    n.host.sh(&format!("ping -c1 -W2 {ETCD_IP}"));
}

#[test]
fn a_lease_for_the_underlay_or_over_a_foreign_route_is_refused() {
    needs_root!();
    let mut c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .cluster_cidr("10.80.0.0/16")
        .build();
    let a = c.nodes[0].add_pod("ua");
    let b = c.nodes[2].add_pod("ub");
    // An operator's route on node0, inside the cluster CIDR, that ferry did not make.
    c.nodes[0]
        .host
        .sh("ip route add 10.80.200.0/24 via 192.0.2.254 dev eth0");
    let underlay = c.lease_key("192.0.2.0/24");
    c.etcd_put(
        &underlay,
        &lease_json("x", "192.0.2.0/24", "192.0.2.99", "0e:00:00:00:00:99"),
    );
    let foreign = c.lease_key("10.80.200.0/24");
    c.etcd_put(
        &foreign,
        &lease_json("y", "10.80.200.0/24", "192.0.2.98", "0e:00:00:00:00:98"),
    );
    std::thread::sleep(SETTLE);
    for n in &c.nodes {
        assert_underlay_intact(n);
    }
    a.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
    let r = c.nodes[0].host.sh("ip route show 10.80.200.0/24");
    assert!(r.contains("via 192.0.2.254 dev eth0"), "{r}");
    assert!(
        c.nodes[0].log().contains(&underlay),
        "the refused key is named:\n{}",
        c.nodes[0].log()
    );
    // A node starting with the lie in etcd refuses it too.
    c.nodes[1].restart_daemon();
    std::thread::sleep(SETTLE);
    assert_underlay_intact(&c.nodes[1]);
    c.etcd.ctl(&format!("del {underlay}"));
    std::thread::sleep(SETTLE);
    for n in &c.nodes {
        assert_underlay_intact(n);
    }
    a.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
}

#[test]
fn a_lease_claiming_a_live_nodes_subnet_is_refused() {
    needs_root!();
    let mut c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .cluster_cidr("10.81.0.0/16")
        .build();
    let (a, b) = c.pods_across("ca", "cb");
    let s1 = c.nodes[1].subnet();
    let mac1 = c.nodes[1].vtep_mac();
    let net1 = s1.split('/').next().unwrap().to_string();
    let other_key = c.lease_key("10.81.250.0/24");
    c.etcd_put(
        &other_key,
        &lease_json("evil", &s1, "192.0.2.99", "0e:00:00:00:00:99"),
    );
    let half = format!("{net1}/25");
    let half_key = c.lease_key(&half);
    c.etcd_put(
        &half_key,
        &lease_json("evil2", &half, "192.0.2.98", "0e:00:00:00:00:98"),
    );
    let check = |c: &Cluster| {
        for i in [0, 2] {
            let n = &c.nodes[i];
            let fdb = n.overlay_fdb();
            assert!(
                !fdb.contains("192.0.2.99") && !fdb.contains("192.0.2.98"),
                "{}: {fdb}",
                n.name
            );
            assert!(!n.ferry_routes().contains("/25"), "{}", n.ferry_routes());
            let neigh = n.overlay_neighs();
            assert!(
                neigh.contains(&format!("{net1} lladdr {mac1}")),
                "{}: {neigh}",
                n.name
            );
        }
        a.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
    };
    std::thread::sleep(SETTLE);
    check(&c);
    assert!(
        c.nodes[0].log().contains(&other_key) && c.nodes[0].log().contains(&half_key),
        "the losing keys are named:\n{}",
        c.nodes[0].log()
    );
    let m = c.metrics(2);
    assert!(m.contains("ferry_leases_refused 2"), "{m}");
    assert!(m.contains("ferry_leases_known 3"), "{m}");
    // A restarting node applies the same rule.
    c.nodes[0].restart_daemon();
    std::thread::sleep(SETTLE);
    check(&c);
    c.etcd.ctl(&format!("del {other_key}"));
    c.etcd.ctl(&format!("del {half_key}"));
    std::thread::sleep(SETTLE);
    check(&c);
}

#[test]
fn an_impostor_with_a_live_nodes_name_is_refused() {
    needs_root!();
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .build();
    let (a, b) = c.pods_across("ia", "ib");
    let key1 = c.lease_key(&c.nodes[1].subnet());
    let before = c.etcd_get(&key1);
    let stranger = c.stranger("192.0.2.50");
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_overlayd(
        &stranger,
        &format!(
            "{} --etcd-prefix {} --node-name node1 --state-dir {} --ipam-data-dir {} \
             --node-secret {} --resync-interval 2s",
            c.etcd.client_flags(),
            c.prefix,
            dir.path().join("run").display(),
            dir.path().join("ipam").display(),
            // Another machine's secret: node1's key is not its predecessor's.
            dir.path().join("node-secret").display(),
        ),
        60,
    );
    assert_eq!(code, Some(1), "the impostor must be refused:\n{err}");
    let alive = format!("{}/v1/alive/node1", c.prefix);
    assert!(err.contains(&alive), "the key is named: {err}");
    assert_eq!(c.etcd_get(&key1), before, "node1's lease is untouched");
    assert!(c.etcd_get(&key1).contains("192.0.2.12"));
    a.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
}

#[test]
fn damaged_or_deleted_leases_cut_no_node_off() {
    needs_root!();
    let mut c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .build();
    let (a, b) = c.pods_across("da", "db");
    let d = c.nodes[2].add_pod("dd");
    let s1 = c.nodes[1].subnet();
    let key1 = c.lease_key(&s1);
    // node1 stops (its data path stays), and its record is damaged meanwhile.
    c.nodes[1].stop_daemon();
    c.etcd_put(&key1, "not json");
    // A restarting node keeps its route to node1.
    c.nodes[0].restart_daemon();
    std::thread::sleep(SETTLE);
    assert!(
        c.nodes[0].ferry_routes().contains(&s1),
        "{}\n{}",
        c.nodes[0].ferry_routes(),
        c.nodes[0].log()
    );
    a.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
    // The owner, restarting, keeps its subnet and writes its record back.
    c.nodes[1].start_daemon();
    c.nodes[1].wait_answering();
    assert_eq!(c.nodes[1].subnet(), s1);
    let mended = wait_until(Duration::from_secs(10), || {
        c.etcd_get(&key1).contains("\"node\":\"node1\"")
    });
    assert!(mended, "{:?}\n{}", c.etcd_get(&key1), c.nodes[1].log());
    a.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
    // A live node's lease deleted by hand is written back, and the others follow.
    let s2 = c.nodes[2].subnet();
    let key2 = c.lease_key(&s2);
    c.etcd.ctl(&format!("del {key2}"));
    let back = wait_until(Duration::from_secs(15), || {
        c.etcd_get(&key2).contains("\"node\":\"node2\"") && c.nodes[0].ferry_routes().contains(&s2)
    });
    assert!(back, "{:?}\n{}", c.etcd_get(&key2), c.nodes[2].log());
    a.ns.sh(&format!("ping -c1 -W2 {}", d.ip));
    // A live node's record damaged by hand is written back too.
    c.etcd_put(&key2, "{\"node\":");
    let back = wait_until(Duration::from_secs(15), || {
        c.etcd_get(&key2).contains("\"node\":\"node2\"")
    });
    assert!(back, "{:?}\n{}", c.etcd_get(&key2), c.nodes[2].log());
    a.ns.sh(&format!("ping -c1 -W2 {}", d.ip));
}

#[test]
fn a_bad_cluster_cidr_is_refused_from_flags_and_from_etcd() {
    needs_root!();
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(0)
        .build();
    let host = c.stranger("192.0.2.11");
    let dir = tempfile::tempdir().unwrap();
    let base = |prefix: &str| {
        format!(
            "{} --etcd-prefix {prefix} --node-name n0 --state-dir {} --ipam-data-dir {}",
            c.etcd.client_flags(),
            dir.path().join("run").display(),
            dir.path().join("ipam").display(),
        )
    };
    for (i, (cidr, why)) in [
        ("127.0.0.0/16", "loopback"),
        ("0.0.0.0/0", "too short"),
        ("10.0.0.0/4", "too short"),
        ("224.1.0.0/16", "multicast"),
        ("192.0.0.0/16", "192.0.2.0/24"),
    ]
    .into_iter()
    .enumerate()
    {
        let prefix = format!("{}-f{i}", c.prefix);
        let (code, err) = run_overlayd(
            &host,
            &format!("{} --cluster-cidr {cidr}", base(&prefix)),
            20,
        );
        assert_eq!(
            code,
            Some(1),
            "--cluster-cidr {cidr} must be refused:\n{err}"
        );
        assert!(err.contains(cidr) && err.contains(why), "{cidr}: {err}");
        let keys = c.etcd.ctl(&format!("get --prefix --keys-only {prefix}"));
        assert!(keys.trim().is_empty(), "{cidr}: nothing is written: {keys}");
    }
    // The same configs stored in etcd (by hand, or by an older version) are refused too.
    for (i, (cidr, why)) in [
        ("127.0.0.0/16", "loopback"),
        ("192.0.0.0/16", "192.0.2.0/24"),
    ]
    .into_iter()
    .enumerate()
    {
        let prefix = format!("{}-e{i}", c.prefix);
        let key = format!("{prefix}/v1/config");
        c.etcd.ctl(&format!(
            "put {key} '{{\"clusterCIDR\":\"{cidr}\",\"subnetLen\":24,\"vni\":1,\"port\":4789}}'"
        ));
        let (code, err) = run_overlayd(&host, &base(&prefix), 20);
        assert_eq!(code, Some(1), "stored {cidr} must be refused:\n{err}");
        assert!(err.contains(&key) && err.contains(why), "{cidr}: {err}");
        let keys = c
            .etcd
            .ctl(&format!("get --prefix --keys-only {prefix}/v1/leases"));
        assert!(keys.trim().is_empty(), "{cidr}: no lease is taken: {keys}");
    }
    assert!(host.sh("ip route").contains("192.0.2.0/24 dev eth0"));
}

#[test]
fn an_ipv6_lease_over_a_foreign_direct_route_neither_replaces_nor_removes_it() {
    needs_root!();
    // IPv6-only over an IPv6 underlay, DirectRouting on: the lease's route would be direct.
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .v6_only()
        .cluster_cidr_v6("fd00:95::/56")
        .build();
    one_foreign_route_outlives_a_lease(
        &c,
        "y6",
        "fd00:95:0:c8::/64",
        "2001:db8::99",
        "0e:00:00:00:00:96",
    );
}

#[test]
fn an_ipv4_lease_over_a_foreign_direct_route_leaves_it_after_it_is_deleted() {
    needs_root!();
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .cluster_cidr("10.86.0.0/16")
        .build();
    one_foreign_route_outlives_a_lease(
        &c,
        "y4",
        "10.86.200.0/24",
        "192.0.2.254",
        "0e:00:00:00:00:97",
    );
}

#[test]
fn an_ipv6_lease_over_a_foreign_route_on_the_vxlan_path_leaves_it() {
    needs_root!();
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .v6_only()
        .cluster_cidr_v6("fd00:97::/56")
        .direct_routing(false)
        .build();
    one_foreign_route_outlives_a_lease(
        &c,
        "v6",
        "fd00:97:0:c8::/64",
        "2001:db8::99",
        "0e:00:00:00:00:98",
    );
}

#[test]
fn a_dual_stack_lease_over_foreign_routes_on_the_vxlan_path_leaves_both() {
    needs_root!();
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .cluster_cidr("10.87.0.0/16")
        .cluster_cidr_v6("fd00:87::/56")
        .direct_routing(false)
        .build();
    // The IPv6 route's gateway on-link on eth0 (the underlay is IPv4).
    c.add_underlay_v6();
    let (free, free6) = ("10.87.200.0/24", "fd00:87:0:c8::/64");
    let key = c.lease_key(free);
    let lie = format!(
        r#"{{"node":"d","subnet":"{free}","subnetV6":"{free6}","publicIp":"{}","vtepMac":"0e:00:00:00:00:99"}}"#,
        c.nodes[0].ip
    );
    foreign_routes_outlive_a_lease_over_them(
        &c,
        &[(free, "192.0.2.254"), (free6, "2001:db8::99")],
        &key,
        &lie,
    );
}
