//! The overlay across nodes: a cluster of namespaces with a real etcd, `ferry-overlayd`
//! on every node, pods added through `ferry`.

use std::time::Duration;

use ferry_tests::cluster::{Cluster, OUTSIDE_IP};
use ferry_tests::proc::{connect, echo_peer_server, wait_until};
use ferry_tests::root_or_skip;

macro_rules! needs_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

#[test]
fn pods_reach_each_other_across_nodes_keeping_their_addresses() {
    needs_root!();
    let c = Cluster::new(3, "10.60.0.0/16");
    // Distinct subnets, each node's gateway and MTU in its state.
    let subnets: Vec<String> = c.nodes.iter().map(|n| n.subnet()).collect();
    assert_eq!(
        subnets
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "{subnets:?}"
    );
    for n in &c.nodes {
        let st = n.node_state();
        assert_eq!(st["clusterCIDR"], "10.60.0.0/16");
        assert_eq!(st["mtu"], 1450);
        assert_eq!(st["nodeName"], n.name.as_str());
    }
    // Two pods per node: one on each node pair, and two on one node.
    let pods: Vec<_> = c
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| (0..2).map(move |k| (i, n.add_pod(&format!("p{i}{k}")))))
        .collect();
    let servers: Vec<_> = pods
        .iter()
        .map(|(_, p)| echo_peer_server(&p.ns, 7000))
        .collect();
    for (i, a) in &pods {
        for (j, b) in &pods {
            if a.id == b.id {
                continue;
            }
            let seen = connect(&a.ns, &b.ip, 7000);
            assert_eq!(
                seen.as_deref(),
                Some(a.ip.as_str()),
                "{} (node{i}) -> {} (node{j}): the server must see the client's pod IP",
                a.id,
                b.id
            );
        }
    }
    // localhost inside a pod.
    let (_, p) = &pods[0];
    assert_eq!(
        connect(&p.ns, "127.0.0.1", 7000).as_deref(),
        Some("127.0.0.1")
    );
    // Node to pod, on its own node and across.
    for n in &c.nodes {
        for (_, p) in &pods {
            n.host.sh(&format!("ping -c1 -W2 {}", p.ip));
        }
    }
    // Pod to a host outside the cluster: masqueraded to its node's address.
    let _out = echo_peer_server(&c.outside, 7100);
    for (i, p) in &pods {
        assert_eq!(
            connect(&p.ns, OUTSIDE_IP, 7100).as_deref(),
            Some(c.nodes[*i].ip.as_str())
        );
    }
    // A full-size packet with DF set crosses nodes at the pod MTU.
    let (_, a) = &pods[0];
    let (_, b) = &pods[2];
    a.ns.sh(&format!("ping -c1 -W2 -M do -s {} {}", 1450 - 28, b.ip));
    drop(servers);
    // Metrics speak of what is there.
    let m = c.metrics(0);
    assert!(m.contains("ferry_leases_known 3"), "{m}");
    assert!(
        m.contains("ferry_entries_programmed{kind=\"route\"} 2"),
        "{m}"
    );
    assert!(m.contains("ferry_ready 1"), "{m}");
    for (i, p) in &pods {
        c.nodes[*i].cni("DEL", &p.id, Some(&p.ns)).ok();
    }
    assert!(wait_until(Duration::from_secs(1), || true));
}
