//! Lies in etcd (issue 10, "Trust nothing"): every record a daemon reads is checked, two
//! records that conflict are settled by one rule on every node, a node defends its own
//! lease and name, and nothing read from etcd replaces a route ferry did not make.

use std::time::Duration;

use ferry_tests::cluster::{run_overlayd, Cluster, Node, ETCD_IP};
use ferry_tests::proc::wait_until;
use ferry_tests::root_or_skip;

macro_rules! needs_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

/// Long enough for two resyncs (every 2 s in the harness) and the watch to act.
const SETTLE: Duration = Duration::from_secs(5);

fn lease_json(node: &str, subnet: &str, ip: &str, mac: &str) -> String {
    format!(r#"{{"node":"{node}","subnet":"{subnet}","publicIp":"{ip}","vtepMac":"{mac}"}}"#)
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
    let mut c = Cluster::new(3, "10.80.0.0/16");
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
    let mut c = Cluster::new(3, "10.81.0.0/16");
    let a = c.nodes[0].add_pod("ca");
    let b = c.nodes[1].add_pod("cb");
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
    let c = Cluster::new(3, "10.82.0.0/16");
    let a = c.nodes[0].add_pod("ia");
    let b = c.nodes[1].add_pod("ib");
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
    let mut c = Cluster::new(3, "10.83.0.0/16");
    let a = c.nodes[0].add_pod("da");
    let b = c.nodes[1].add_pod("db");
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
    let c = Cluster::new(0, "10.85.0.0/16");
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
