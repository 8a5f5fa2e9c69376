//! IPv6 pods across nodes: a dual-stack cluster over an IPv4 underlay, the IPv6 traffic
//! on the same VXLAN device as the IPv4 one.

use std::time::Duration;

use ferry_tests::cluster::{Cluster, Datastore, OUTSIDE_IP_V6};
use ferry_tests::needs_root;
use ferry_tests::proc::{connect, echo_peer_server_on, wait_until};
use ferry_tests::services::Service;

#[test]
fn dual_stack_pods_reach_each_other_over_an_ipv4_underlay() {
    needs_root!();
    let c = Cluster::builder()
        .nodes(2)
        .cluster_cidr_v6("fd00:62::/56")
        .build();
    c.add_underlay_v6();
    for n in &c.nodes {
        let st = n.node_state();
        assert_eq!(st["clusterCIDRv6"], "fd00:62::/56");
        let s6 = st["podCIDRv6"].as_str().unwrap();
        assert!(s6.starts_with("fd00:62:") && s6.ends_with("::/64"), "{st}");
        let gw = st["gatewayV6"].as_str().unwrap();
        assert_eq!(gw, s6.replace("::/64", "::1"));
        assert_eq!(st["mtu"], 1450);
    }
    c.wait_converged_v6();
    // The operator's view shows both families.
    let out = c.ipam_leases("-o json");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["clusterCIDRv6"], "fd00:62::/56", "{v}");
    assert_eq!(v["subnetsV6"], 256, "{v}");
    for l in v["leases"].as_array().unwrap() {
        assert!(
            l["subnetV6"].as_str().unwrap().starts_with("fd00:62:"),
            "{l}"
        );
    }
    let (a, a_ip) = c.nodes[0].add_pod_ipv6();
    let (b, b_ip) = c.nodes[1].add_pod_ipv6();
    c.wait_reachable(&a, &b_ip);
    let _srv = echo_peer_server_on(&b, "::", 7000);
    // Pod to pod across nodes, the client's address preserved.
    assert_eq!(connect(&a, &b_ip, 7000).as_deref(), Some(a_ip.as_str()));
    // Node to pod, on its own node and across.
    for n in &c.nodes {
        n.host
            .sh(&format!("ping -6 -c1 -W2 {a_ip} && ping -6 -c1 -W2 {b_ip}"));
    }
    // A full-size packet, DF (IPv6 never fragments on the way), at the pod MTU: 1450 - 40
    // (IPv6) - 8 (ICMPv6).
    a.sh(&format!("ping -6 -c2 -W2 -M do -s 1402 {b_ip}"));
    let too_big = a.try_sh(&format!("ping -6 -c1 -W2 -M do -s 1403 {b_ip}"));
    assert!(!too_big.status.success(), "1403 bytes passed a 1450 MTU");
    // Pod to outside: masqueraded to its node's IPv6 underlay address.
    let _out = echo_peer_server_on(&c.outside, "::", 7100);
    assert_eq!(
        connect(&a, OUTSIDE_IP_V6, 7100).as_deref(),
        Some("2001:db8::11")
    );
    let rules = c.nodes[0].host.sh("ip6tables -t nat -S FERRY-POSTRTG");
    assert!(rules.contains("-s fd00:62::/56 -d fd00:62::/56"), "{rules}");
    // A hand-deleted IPv6 route and neighbour are put back by the next resync.
    c.nodes[0].assert_mends_v6(c.nodes[1].node_state()["podCIDRv6"].as_str().unwrap());
    assert_eq!(connect(&a, &b_ip, 7000).as_deref(), Some(a_ip.as_str()));
}

#[test]
fn a_daemon_restart_loses_no_ipv6_packet() {
    needs_root!();
    let mut c = Cluster::builder().nodes(2).dual_stack().build();
    c.wait_converged_v6();
    let (a, _) = c.nodes[0].add_pod_ipv6();
    let (_b, b_ip) = c.nodes[1].add_pod_ipv6();
    c.wait_reachable(&a, &b_ip);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ping.txt");
    let pinger = ferry_tests::proc::Bg::spawn_logged(
        &a,
        &format!("ping -6 -i 0.02 -c 250 -W1 {b_ip}"),
        &log,
    );
    c.nodes[0].restart_daemon();
    c.nodes[1].restart_daemon();
    let done = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("packets transmitted")
    };
    let ok = wait_until(Duration::from_secs(20), done);
    drop(pinger);
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ok, "{out}");
    assert!(
        out.contains("250 packets transmitted, 250 received"),
        "{out}"
    );
}

#[test]
fn ipv6_leases_for_the_underlay_or_a_live_nodes_subnet_are_refused() {
    needs_root!();
    // The refused leases are etcd records, written past the daemons.
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(2)
        .cluster_cidr("10.64.0.0/16")
        .dual_stack()
        .build();
    c.add_underlay_v6();
    c.wait_converged_v6();
    let (a, _) = c.nodes[0].add_pod_ipv6();
    let (_b, b_ip) = c.nodes[1].add_pod_ipv6();
    c.wait_reachable(&a, &b_ip);
    let s1 = c.nodes[1].node_state()["podCIDRv6"]
        .as_str()
        .unwrap()
        .to_string();
    let mac1 = c.nodes[1].vtep_mac();
    let lie = |node: &str, subnet: &str, s6: &str, ip: &str, mac: &str| {
        let key = c.lease_key(subnet);
        c.etcd_put(
            &key,
            &format!(
                r#"{{"node":"{node}","subnet":"{subnet}","subnetV6":"{s6}","publicIp":"{ip}","vtepMac":"{mac}"}}"#
            ),
        );
        key
    };
    let underlay = lie(
        "x",
        "10.64.200.0/24",
        "2001:db8::/64",
        "192.0.2.99",
        "0e:00:00:00:00:99",
    );
    let steal = lie(
        "y",
        "10.64.201.0/24",
        &s1,
        "192.0.2.98",
        "0e:00:00:00:00:98",
    );
    std::thread::sleep(Duration::from_secs(5));
    let n0 = &c.nodes[0];
    let r = n0.host.sh("ip -6 route get 2001:db8::100");
    assert!(r.contains("dev eth0"), "{r}");
    n0.host.sh(&format!("ping -6 -c1 -W2 {OUTSIDE_IP_V6}"));
    let neigh = n0.host.sh("ip -6 neigh show dev ferry.1");
    let vtep1 = s1.trim_end_matches("/64");
    assert!(neigh.contains(&format!("{vtep1} lladdr {mac1}")), "{neigh}");
    let fdb = n0.overlay_fdb();
    assert!(
        !fdb.contains("192.0.2.99") && !fdb.contains("192.0.2.98"),
        "{fdb}"
    );
    a.sh(&format!("ping -6 -c1 -W2 {b_ip}"));
    let log = n0.log();
    assert!(log.contains(&underlay) && log.contains(&steal), "{log}");
    assert!(log.contains("the leases-v6 index says so"), "{log}");
    assert!(c.metrics(0).contains("ferry_leases_refused 2"));
}

/// The IPv6 address a dual-stack pod's ADD result gives it.
fn ipv6_of(result: &serde_json::Value) -> String {
    let a = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["address"].as_str())
        .find(|a| a.contains(':'))
        .unwrap_or_else(|| panic!("no IPv6 address in {result}"));
    a.split('/').next().unwrap().to_string()
}

#[test]
fn dual_stack_services_through_ip6tables_rules() {
    needs_root!();
    let c = Cluster::builder().nodes(2).dual_stack().build();
    c.add_underlay_v6();
    c.wait_converged_v6();
    // Pods through the real plugin: an IPv4 and an IPv6 address each.
    let ep = c.nodes[0].add_pod("d6e");
    let (near, far) = c.pods_across("d6n", "d6f");
    let (ep6, near6, far6) = (
        ipv6_of(&ep.result),
        ipv6_of(&near.result),
        ipv6_of(&far.result),
    );
    c.wait_reachable(&far.ns, &ep6);
    let _srv = echo_peer_server_on(&ep.ns, "::", 7000);
    let svc = Service::new("fd00:97::10", &ep6);
    svc.install_on(&c.nodes);
    // NodePort over the IPv6 underlay addresses.
    svc.check(
        (&far.ns, &far6),
        (&near.ns, &near6),
        &ep.ns,
        &c.outside,
        &["2001:db8::11", "2001:db8::12"],
    );
    for (i, p) in [(0, &ep), (0, &near), (1, &far)] {
        c.nodes[i].del_pod(p);
    }
}
