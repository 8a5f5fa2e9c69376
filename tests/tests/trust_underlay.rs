//! VXLAN from strangers (issue 10): a node accepts VXLAN only from the underlay addresses
//! of current leases, kept in step with them.

use std::time::Duration;

use ferry_tests::cluster::Cluster;
use ferry_tests::proc::wait_until;
use ferry_tests::root_or_skip;
use ferry_tests::vxlan_probe::{Frame, Probe};

macro_rules! needs_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

#[test]
fn vxlan_from_a_host_that_is_no_node_is_dropped() {
    needs_root!();
    let mut c = Cluster::new(3, "10.84.0.0/16");
    let pod = c.nodes[0].add_pod("vp");
    let other = c.nodes[1].add_pod("vo");
    let probe = Probe::listen(&pod.ns);
    // An inner source inside node1's subnet: what a stranger would forge.
    let frame = Frame {
        mac: c.nodes[0].vtep_mac(),
        src: c.nodes[1].subnet().replace(".0/24", ".77"),
        dst: pod.ip.clone(),
        node: c.nodes[0].ip.clone(),
    };
    probe.only_nodes_reach(&c.stranger("192.0.2.66"), &c.nodes[1].host, &frame);
    let table = c.nodes[0].host.sh("nft list table ip ferry");
    assert!(
        table.contains("192.0.2.12") && table.contains("192.0.2.13"),
        "{table}"
    );
    assert!(
        !table.contains("counter packets 0 "),
        "drops are counted: {table}"
    );
    pod.ns.sh(&format!("ping -c1 -W2 {}", other.ip));
    // A node that leaves is taken out of the set.
    let s2 = c.nodes[2].subnet();
    c.nodes[2].stop_daemon();
    c.etcd.ctl(&format!("del {}", c.lease_key(&s2)));
    let gone = wait_until(Duration::from_secs(10), || {
        !c.nodes[0]
            .host
            .sh("nft list set ip ferry nodes")
            .contains("192.0.2.13")
    });
    assert!(gone, "{}", c.nodes[0].host.sh("nft list table ip ferry"));
    pod.ns.sh(&format!("ping -c1 -W2 {}", other.ip));
}
