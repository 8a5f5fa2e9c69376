//! VXLAN from strangers (issue 10): a node accepts VXLAN only from the underlay addresses
//! of current leases, kept in step with them, only to its own underlay address, and only
//! carrying IPv4 or IPv6 from a pod subnet of the node that sent it.

use std::time::Duration;

use ferry_tests::cluster::{Cluster, Datastore, Node};
use ferry_tests::needs_root;
use ferry_tests::proc::wait_until;
use ferry_tests::vxlan_probe::{assert_only_nodes_listed, Frame, Probe};

/// Address `host` (".77") of `node`'s IPv4 subnet.
fn in_subnet(node: &Node, host: u8) -> String {
    node.subnet().replace(".0/24", &format!(".{host}"))
}

#[test]
fn vxlan_from_a_host_that_is_no_node_is_dropped() {
    needs_root!();
    // A lease is deleted from etcd by hand.
    let mut c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .build();
    let (pod, other) = c.pods_across("vp", "vo");
    let probe = Probe::listen(&pod.ns);
    // An inner source inside the sending node's subnet: what a stranger would forge.
    let frame = Frame::to(&c.nodes[0], in_subnet(&c.nodes[1], 77), &pod.ip);
    probe.only_nodes_reach(&c.stranger("192.0.2.66"), &c.nodes[1].host, &frame);
    assert_only_nodes_listed(&c.nodes[0].host, &["192.0.2.12", "192.0.2.13"]);
    pod.ns.sh(&format!("ping -c1 -W2 {}", other.ip));
    // A node that leaves is taken out of the set, and its subnet out of the sources.
    let s2 = c.nodes[2].subnet();
    c.nodes[2].stop_daemon();
    c.etcd.ctl(&format!("del {}", c.lease_key(&s2)));
    let gone = wait_until(Duration::from_secs(10), || {
        let sets = c.nodes[0]
            .host
            .sh("nft list set inet ferry nodes; nft list set inet ferry inner4");
        !sets.contains("192.0.2.13")
    });
    assert!(gone, "{}", c.nodes[0].host.sh("nft list table inet ferry"));
    pod.ns.sh(&format!("ping -c1 -W2 {}", other.ip));
}

/// The receiving node's checks alone, the sending node's cut bypassed: frames crafted in
/// node 1's own host namespace (which node 2 trusts as node 1) to a pod on node 2.
#[test]
fn a_node_s_vxlan_carries_only_ip_from_its_own_pod_subnets() {
    needs_root!();
    let c = Cluster::builder().nodes(2).build();
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let pod = n2.add_pod("rp");
    let probe = Probe::listen(&pod.ns);
    let legit = Frame::to(n2, in_subnet(n1, 77), &pod.ip);
    // A source inside node 1's subnet is what node 1 may send: it arrives.
    probe.assert_arrives(&n1.host, &legit, "legit");
    let sources = "VXLAN carries only its node's pod sources";
    // A source that exists nowhere, and one of node 2's own pods: dropped, counted.
    for (src, payload) in [
        ("198.51.100.7".to_string(), "from-nowhere"),
        (in_subnet(n2, 88), "as-node2s-pod"),
    ] {
        let frame = Frame {
            src,
            ..legit.clone()
        };
        assert!(
            probe.dropped_by(&n1.host, &frame, payload, 10, &n2.host, sources),
            "{payload} reached the pod: {:?}",
            probe.received()
        );
    }
    // A VLAN tag would move the inner header: only untagged IPv4 and IPv6 pass.
    let tagged = Frame {
        vlan: Some(7),
        ..legit.clone()
    };
    assert!(
        probe.dropped_by(
            &n1.host,
            &tagged,
            "tagged",
            10,
            &n2.host,
            "VXLAN carries only IPv4 and IPv6"
        ),
        "a VLAN-tagged frame reached the pod: {:?}",
        probe.received()
    );
    // To another address of node 2 (its bridge's), which node 1 routes straight to it:
    // VXLAN is taken only at the underlay address.
    let gateway = Frame {
        node: in_subnet(n2, 1),
        ..legit.clone()
    };
    assert!(
        probe.dropped_by(
            &n1.host,
            &gateway,
            "to-the-gateway",
            10,
            &n2.host,
            "VXLAN only to this node's underlay address"
        ),
        "VXLAN to another address reached the pod: {:?}",
        probe.received()
    );
    // What was dropped is in the metrics, per check, at the next resync.
    let counted = wait_until(Duration::from_secs(10), || {
        [
            ("inner-source", 20),
            ("inner-type", 10),
            ("not-to-underlay-address", 10),
        ]
        .iter()
        .all(|(check, n)| {
            let series = format!("ferry_vxlan_dropped_packets_total{{check=\"{check}\"}}");
            c.metric(1, &series) >= *n
        })
    });
    assert!(counted, "{}", c.metrics(1));
    // Legitimate traffic goes on, and the table was never written again.
    probe.assert_arrives(&n1.host, &legit, "legit-again");
    let other = n1.add_pod("ro");
    other.ns.sh(&format!("ping -c1 -W2 {}", pod.ip));
    for n in &c.nodes {
        assert!(!n.log().contains("written again"), "{}", n.log());
    }
}
