//! The Kubernetes API as ferry's datastore (`--datastore kubernetes`, issue 25): what only
//! that datastore has. Subnets are the Nodes' `spec.podCIDRs`, each daemon publishes its
//! address and VTEP MAC as `ferry.dev/` annotations, a deleted Node is unrouted and a
//! NotReady one kept, a Node without pod CIDRs is told why, and every lie a Node can tell
//! (hostile annotations, pod CIDRs outside the cluster or over another Node's) is refused
//! by name. The behaviours both datastores share run in both (tests/run's second pass).
//! The API is the harness's stand-in (tests/src/kapi.rs) with the manifest's RBAC.

use std::time::Duration;

use ferry_tests::cluster::{http_get, Cluster, Datastore, HEALTH_ADDR};
use ferry_tests::needs_root;
use ferry_tests::proc::wait_until;
use k8s_openapi::api::core::v1::Node as NodeObject;
use serde_json::{json, Value};

/// The harness resyncs every 2 s: one resync and the watch, with room.
const RESYNC: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(5);

fn kube(nodes: usize) -> Cluster {
    Cluster::builder()
        .datastore(Datastore::Kubernetes)
        .nodes(nodes)
        .build()
}

fn annotation(n: &NodeObject, key: &str) -> Option<String> {
    n.metadata.annotations.as_ref()?.get(key).cloned()
}

/// A Node that no daemon runs on, made as an intruder (or a stale registration) would.
fn fake_node(name: &str, pod_cidr: &str, addresses: &[&str], ip: &str, mac: &str) -> NodeObject {
    let addrs: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"type": "InternalIP", "address": a}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {
            "ferry.dev/public-ip": ip, "ferry.dev/vtep-mac": mac}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": addrs},
    }))
    .unwrap()
}

#[test]
fn subnets_are_the_nodes_pod_cidrs_and_each_node_publishes_its_address() {
    needs_root!();
    let c = kube(2);
    for (i, n) in c.nodes.iter().enumerate() {
        let obj = c.node_object(i);
        let spec = obj.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.pod_cidrs.unwrap_or_default(),
            vec![n.subnet()],
            "{}: node.json's subnet is the Node's",
            n.name
        );
        assert_eq!(annotation(&obj, "ferry.dev/public-ip"), Some(n.ip.clone()));
        assert_eq!(annotation(&obj, "ferry.dev/vtep-mac"), Some(n.vtep_mac()));
    }
    let a = c.nodes[0].add_pod("a");
    let b = c.nodes[1].add_pod("b");
    a.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
    assert_eq!(c.metric(0, "ferry_api_connected"), 1, "{}", c.metrics(0));
    // ferry-ipam leases reads the Nodes: the same JSON as from etcd.
    let j: Value = serde_json::from_str(&c.ipam_leases("-o json")).unwrap();
    let leases = j["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 2, "{j}");
    for (l, n) in leases.iter().zip(&c.nodes) {
        assert_eq!(l["node"], n.name.as_str());
        assert_eq!(l["subnet"], n.subnet().as_str());
        assert_eq!(l["publicIp"], n.ip.as_str());
        assert_eq!(l["vtepMac"], n.vtep_mac().as_str());
        assert_eq!(l["alive"], true);
    }
}

#[test]
fn a_deleted_node_is_unrouted_within_a_resync_and_a_not_ready_one_is_kept() {
    needs_root!();
    // VXLAN to every node: the FDB and neighbour entries are there to go too.
    let c = Cluster::builder()
        .datastore(Datastore::Kubernetes)
        .direct_routing(false)
        .nodes(3)
        .build();
    let (gone, kept) = (c.nodes[1].subnet(), c.nodes[2].subnet());
    c.set_node_ready(2, false);
    std::thread::sleep(SETTLE);
    let routes = c.nodes[0].overlay_routes();
    assert!(
        routes.contains(&kept),
        "a NotReady Node keeps its routes: {routes}"
    );
    let table = c.ipam_leases("");
    assert!(table.contains("NotReady"), "{table}");

    let mac = c.nodes[1].vtep_mac();
    c.delete_node_object(1);
    let t = std::time::Instant::now();
    let unrouted = wait_until(SETTLE, || {
        let n = &c.nodes[0];
        !n.overlay_routes().contains(&gone)
            && !n.overlay_fdb().contains(&mac)
            && !n.overlay_neighs().contains(&mac)
    });
    assert!(
        unrouted,
        "node1's routes, FDB and neighbour entries stay after its Node is deleted:\n{}\n{}\n{}",
        c.nodes[0].overlay_routes(),
        c.nodes[0].overlay_fdb(),
        c.nodes[0].overlay_neighs()
    );
    assert!(
        t.elapsed() <= RESYNC + Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    assert!(c.nodes[0].overlay_routes().contains(&kept));
}

#[test]
fn a_node_without_pod_cidrs_waits_saying_which_flag_gives_them_then_starts() {
    needs_root!();
    let mut c = kube(1);
    c.add_node_without_pod_cidr();
    let flag = "--allocate-node-cidrs";
    let n = c.nodes.last().unwrap();
    let said = wait_until(Duration::from_secs(10), || {
        let (code, body) = http_get(&n.host, HEALTH_ADDR, "/readyz");
        code != 200 && body.contains(flag) && n.log().contains(flag)
    });
    assert!(
        said,
        "readyz: {:?}\n{}",
        http_get(&n.host, HEALTH_ADDR, "/readyz"),
        n.log()
    );
    assert!(!n.state_dir().join("node.json").exists());
    let table = c.ipam_leases("");
    assert!(table.contains(flag) && table.contains(&n.name), "{table}");
    // The controller-manager allocates one: the daemon starts with it.
    let cidr = c.nodes[0]
        .subnet()
        .replace(".0.0/24", ".77.0/24")
        .replace(".1.0/24", ".77.0/24");
    c.patch_node(1, &json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}));
    c.nodes[1].wait_ready();
    assert_eq!(c.nodes[1].subnet(), cidr);
    c.wait_converged();
}

#[test]
fn lying_nodes_are_refused_by_name_and_routes_stay_true() {
    needs_root!();
    let c = kube(2);
    let (s0, s1) = (c.nodes[0].subnet(), c.nodes[1].subnet());
    let free = s1
        .replace(".1.0/24", ".200.0/24")
        .replace(".0.0/24", ".200.0/24");
    let outside = "10.99.0.0/24";
    // Each lie on a Node of its own, all younger than the real ones (creationTimestamp
    // counts seconds: a Node of the same second would be settled by name).
    std::thread::sleep(Duration::from_millis(1100));
    let lies = [
        // Takes node0's subnet: overlaps an older Node.
        fake_node(
            "evil-overlap",
            &s0,
            &["192.0.2.99"],
            "192.0.2.99",
            "0e:00:00:00:00:99",
        ),
        // Claims node1's address, which is not its own.
        fake_node(
            "evil-addr",
            &free,
            &["192.0.2.98"],
            &c.nodes[1].ip,
            "0e:00:00:00:00:98",
        ),
        // A pod CIDR outside the cluster CIDR.
        fake_node(
            "evil-outside",
            outside,
            &["192.0.2.97"],
            "192.0.2.97",
            "0e:00:00:00:00:97",
        ),
        // Garbage.
        fake_node(
            "evil-mac",
            &free,
            &["192.0.2.96"],
            "192.0.2.96",
            "not-a-mac",
        ),
    ];
    for n in lies {
        c.api().create(n).unwrap();
    }
    std::thread::sleep(SETTLE);
    for i in 0..2 {
        let n = &c.nodes[i];
        let routes = n.ferry_routes();
        assert!(
            !routes.contains(&free) && !routes.contains(outside),
            "{}: {routes}",
            n.name
        );
        let fdb = n.overlay_fdb();
        for ip in ["192.0.2.99", "192.0.2.98", "192.0.2.97", "192.0.2.96"] {
            assert!(!fdb.contains(ip), "{}: {fdb}", n.name);
        }
        for name in ["evil-overlap", "evil-addr", "evil-outside", "evil-mac"] {
            assert!(
                n.log().contains(&format!("Node {name}")),
                "{} does not name {name}:\n{}",
                n.name,
                n.log()
            );
        }
        assert_eq!(c.metric(i, "ferry_leases_refused"), 4, "{}", c.metrics(i));
    }
    let a = c.nodes[0].add_pod("a");
    let b = c.nodes[1].add_pod("b");
    a.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
    b.ns.sh(&format!("ping -c1 -W2 {}", a.ip));
    // The CLI names the refused ones too.
    let j: Value =
        serde_json::from_str(&c.ipam_leases("-o json")).unwrap_or_else(|e| panic!("{e}"));
    let problems = j["problems"].to_string();
    assert!(
        problems.contains("evil-overlap") && problems.contains("status.addresses"),
        "{j}"
    );
}

#[test]
fn a_nodes_own_annotations_are_written_back_when_edited() {
    needs_root!();
    let c = kube(2);
    c.patch_node_annotations(
        1,
        &[
            ("ferry.dev/public-ip", Some("192.0.2.99")),
            ("ferry.dev/vtep-mac", None),
        ],
    );
    let back = wait_until(SETTLE, || {
        let o = c.node_object(1);
        annotation(&o, "ferry.dev/public-ip") == Some(c.nodes[1].ip.clone())
            && annotation(&o, "ferry.dev/vtep-mac") == Some(c.nodes[1].vtep_mac())
    });
    assert!(
        back,
        "{:?}\n{}",
        c.node_object(1).metadata.annotations,
        c.nodes[1].log()
    );
    std::thread::sleep(RESYNC);
    let a = c.nodes[0].add_pod("a");
    let b = c.nodes[1].add_pod("b");
    a.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
}

#[test]
fn a_nodes_pod_cidr_over_a_route_ferry_did_not_make_leaves_that_route_alone() {
    needs_root!();
    let c = Cluster::builder()
        .datastore(Datastore::Kubernetes)
        .nodes(2)
        .build();
    let free = c.nodes[1]
        .subnet()
        .replace(".1.0/24", ".201.0/24")
        .replace(".0.0/24", ".201.0/24");
    let n0 = &c.nodes[0];
    n0.host.sh(&format!(
        "ip route add {free} via 192.0.2.254 dev eth0 proto static"
    ));
    let before = n0.host.sh(&format!("ip -4 route show exact {free}"));
    // A Node that passes every check, whose pod CIDR is where node0 has a route of its own.
    std::thread::sleep(Duration::from_millis(1100));
    c.api()
        .create(fake_node(
            "other",
            &free,
            &["192.0.2.95"],
            "192.0.2.95",
            "0e:00:00:00:00:95",
        ))
        .unwrap();
    let used = wait_until(SETTLE, || c.nodes[1].ferry_routes().contains(&free));
    assert!(used, "node1 never routed Node other:\n{}", c.nodes[1].log());
    std::thread::sleep(SETTLE);
    assert_eq!(
        n0.host.sh(&format!("ip -4 route show exact {free}")),
        before
    );
    let log = n0.log();
    let said = log
        .lines()
        .filter(|l| l.contains("left alone") && l.contains(&format!("subnet={free}")))
        .count();
    assert_eq!(said, 1, "spared, said once:\n{log}");
    assert_eq!(c.metric(0, "ferry_routes_spared"), 1, "{}", c.metrics(0));
}
