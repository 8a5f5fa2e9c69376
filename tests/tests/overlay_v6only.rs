//! An IPv6-only cluster over an IPv6 underlay (issue 11): every host on 2001:db8::/64 with
//! no IPv4 address, the VXLAN device's VTEP on IPv6 (MTU = underlay - 70), leases keyed by
//! their IPv6 subnet, and every traffic kind of the IPv4 overlay tests over IPv6.

use std::time::Duration;

use ferry_tests::cluster::{Cluster, Node, OUTSIDE_IP_V6};
use ferry_tests::netns::Netns;
use ferry_tests::proc::{connect, echo_peer_server_on, wait_until, Bg};
use ferry_tests::root_or_skip;
use ferry_tests::services::Service;

macro_rules! needs_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

/// 1500 (the veths of the switch) - 40 (outer IPv6) - 8 (UDP) - 8 (VXLAN) - 14 (Ethernet).
const POD_MTU: u64 = 1430;

/// Waits until `from` gets an answer from `ip`: the first packets wait for neighbour
/// discovery in the pods.
fn wait_reachable(c: &Cluster, from: &Netns, ip: &str) {
    let up = wait_until(Duration::from_secs(10), || {
        from.try_sh(&format!("ping -6 -c1 -W1 {ip}"))
            .status
            .success()
    });
    assert!(
        up,
        "{ip} unreachable from {}:\n{}",
        from.name,
        c.nodes[0].log()
    );
}

fn subnet6(n: &Node) -> String {
    n.node_state()["podCIDRv6"].as_str().unwrap().to_string()
}

#[test]
fn an_ipv6_only_cluster_carries_every_traffic_kind_over_an_ipv6_underlay() {
    needs_root!();
    let c = Cluster::v6_only(3, "fd00:66::/56", "");
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
    let out = c.nodes[0].host.sh(&format!(
        "{} leases {} --etcd-prefix {} -o json",
        ferry_tests::bin("ferry-ipam").display(),
        c.etcd.client_flags(),
        c.prefix
    ));
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
    let table = c.nodes[0].host.sh(&format!(
        "{} leases {} --etcd-prefix {}",
        ferry_tests::bin("ferry-ipam").display(),
        c.etcd.client_flags(),
        c.prefix
    ));
    assert!(
        table.contains("cluster fd00:66::/56: 3 of 256 /64 IPv6 node subnets leased"),
        "{table}"
    );

    // Pods through the real plugin: IPv6 addresses only.
    let a = c.nodes[0].add_pod("6a");
    let near = c.nodes[0].add_pod("6n");
    let b = c.nodes[1].add_pod("6b");
    assert!(
        a.ip.starts_with("fd00:66:") && b.ip.contains(':'),
        "{}",
        a.result
    );
    wait_reachable(&c, &a.ns, &b.ip);
    let _srv = echo_peer_server_on(&a.ns, "::", 7000);
    // Pod to pod on one node and across nodes: the server sees the client's address.
    assert_eq!(
        connect(&near.ns, &a.ip, 7000).as_deref(),
        Some(near.ip.as_str())
    );
    assert_eq!(connect(&b.ns, &a.ip, 7000).as_deref(), Some(b.ip.as_str()));
    // A Service through ip6tables DNAT rules as kube-proxy makes them.
    let svc = Service {
        cluster_ip: "fd00:96::10".into(),
        port: 80,
        node_port: 30080,
        endpoint_ip: a.ip.clone(),
        endpoint_port: 7000,
    };
    for n in &c.nodes {
        svc.install(n);
    }
    // ClusterIP from another node's pod and from the endpoint's node: no source NAT.
    assert_eq!(
        connect(&b.ns, "fd00:96::10", 80).as_deref(),
        Some(b.ip.as_str())
    );
    assert_eq!(
        connect(&near.ns, "fd00:96::10", 80).as_deref(),
        Some(near.ip.as_str())
    );
    // Hairpin: the endpoint reaches itself through its Service (kube-proxy masquerades).
    assert!(
        connect(&a.ns, "fd00:96::10", 80).is_some(),
        "hairpin through the Service failed"
    );
    // NodePort from a host outside the cluster, on every node (the endpoint on node0).
    for n in &c.nodes {
        assert!(
            connect(&c.outside, &n.ip, 30080).is_some(),
            "NodePort on {} ({}) failed",
            n.name,
            n.ip
        );
    }
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
    let s1 = subnet6(&c.nodes[1]);
    let vtep1 = s1.trim_end_matches("/64").to_string();
    let n0 = &c.nodes[0];
    n0.host.sh(&format!(
        "ip -6 route del {s1} dev ferry.1 && ip -6 neigh del {vtep1} dev ferry.1"
    ));
    assert!(
        wait_until(Duration::from_secs(10), || {
            n0.overlay_routes_v6().contains(&s1)
                && n0
                    .host
                    .sh("ip -6 neigh show dev ferry.1")
                    .contains(&format!("{vtep1} lladdr"))
        }),
        "not mended: {}\n{}",
        n0.overlay_routes_v6(),
        n0.log()
    );
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
        c.nodes[i].cni("DEL", &p.id, Some(&p.ns)).ok();
    }
}

#[test]
fn an_ipv6_only_daemon_restart_loses_no_packet_and_keeps_subnet_and_mac() {
    needs_root!();
    let mut c = Cluster::v6_only(3, "fd00:67::/56", "");
    let a = c.nodes[0].add_pod("7a");
    let b = c.nodes[1].add_pod("7b");
    wait_reachable(&c, &a.ns, &b.ip);
    let before: Vec<_> = c.nodes.iter().map(|n| (n.subnet(), n.vtep_mac())).collect();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ping.txt");
    let pinger = Bg::spawn_logged(
        &a.ns,
        &format!("ping -6 -q -i 0.02 -c 250 -W1 {}", b.ip),
        &log,
    );
    for n in &mut c.nodes {
        assert_eq!(
            n.stop_daemon(),
            Some(0),
            "SIGTERM must exit 0:\n{}",
            n.log()
        );
        n.start_daemon();
        n.wait_answering();
    }
    let done = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("packets transmitted")
    });
    drop(pinger);
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(done && out.contains(" 0% packet loss"), "{out}");
    let after: Vec<_> = c.nodes.iter().map(|n| (n.subnet(), n.vtep_mac())).collect();
    assert_eq!(before, after, "subnet or VTEP MAC moved across a restart");
    for n in &c.nodes {
        assert!(n.log().contains("reused=true"), "{}", n.log());
    }
    c.nodes[0].cni("DEL", &a.id, Some(&a.ns)).ok();
    c.nodes[1].cni("DEL", &b.id, Some(&b.ns)).ok();
}

/// Sends COUNT VXLAN packets (VNI 1) over IPv6 to NODE:4789, each holding an Ethernet
/// frame to DST_MAC with an IPv6/UDP packet from SRC_IP to DST_IP:9999 carrying PAYLOAD.
const CRAFT6: &str = r#"
import socket, struct, sys
dst_mac, src_ip, dst_ip, node, payload, count = sys.argv[1:7]
def csum(b):
    if len(b) % 2:
        b += b'\0'
    s = sum((b[i] << 8) + b[i + 1] for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
data = payload.encode()
src = socket.inet_pton(socket.AF_INET6, src_ip)
dst = socket.inet_pton(socket.AF_INET6, dst_ip)
ulen = 8 + len(data)
udp = struct.pack('!HHHH', 40000, 9999, ulen, 0) + data
c = csum(src + dst + struct.pack('!I3xB', ulen, 17) + udp) or 0xffff
udp = udp[:6] + struct.pack('!H', c) + udp[8:]
ip6 = struct.pack('!IHBB', 6 << 28, ulen, 17, 64) + src + dst
eth = bytes.fromhex(dst_mac.replace(':', '')) + bytes.fromhex('0e0000000042') + b'\x86\xdd'
vxlan = struct.pack('!II', 0x08000000, 1 << 8)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for _ in range(int(count)):
    s.sendto(vxlan + eth + ip6 + udp, (node, 4789))
"#;

/// Prints every datagram received on UDP 9999.
const LISTEN6: &str = r#"
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(('::', 9999))
while True:
    print(s.recv(2000).decode(), flush=True)
"#;

#[test]
fn ipv6_vxlan_from_an_underlay_host_that_is_no_node_is_dropped() {
    needs_root!();
    let c = Cluster::v6_only(3, "fd00:68::/56", "");
    let pod = c.nodes[0].add_pod("8p");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("craft.py");
    std::fs::write(&script, CRAFT6).unwrap();
    std::fs::write(dir.path().join("listen.py"), LISTEN6).unwrap();
    let got = dir.path().join("got.log");
    let _listener = Bg::spawn_logged(
        &pod.ns,
        &format!("python3 -u {}", dir.path().join("listen.py").display()),
        &got,
    );
    let ok = wait_until(Duration::from_secs(5), || {
        pod.ns
            .try_sh("ss -lun 'sport = :9999' | grep -q 9999")
            .status
            .success()
    });
    assert!(ok, "listener did not start");
    let mac0 = c.nodes[0].vtep_mac();
    // An inner source inside node1's subnet: what a stranger would forge.
    let forged = subnet6(&c.nodes[1]).replace("::/64", "::77");
    let node0 = c.nodes[0].ip.clone();
    let craft = |from: &Netns, what: &str, n: u32| {
        from.sh(&format!(
            "python3 {} {mac0} {forged} {} {node0} {what} {n}",
            script.display(),
            pod.ip
        ));
    };
    let stranger = c.stranger("2001:db8::66");
    craft(&stranger, "from-stranger", 20);
    // The same frame from a real node arrives: the craft is right, and nodes still work.
    craft(&c.nodes[1].host, "from-node", 5);
    let arrived = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&got)
            .unwrap_or_default()
            .contains("from-node")
    });
    let log = std::fs::read_to_string(&got).unwrap_or_default();
    assert!(arrived, "the real node's frame must arrive: {log:?}");
    assert!(
        !log.contains("from-stranger"),
        "a stranger reached the pod: {log}"
    );
    // Dropped by ferry's ip6 table, counted; its set is the other nodes' IPv6 addresses.
    let table = c.nodes[0].host.sh("nft list table ip6 ferry");
    assert!(
        table.contains("2001:db8::12") && table.contains("2001:db8::13"),
        "{table}"
    );
    assert!(
        table.contains("counter packets 20 "),
        "drops are counted: {table}"
    );
    // A node that leaves is taken out of the set.
    let s2 = subnet6(&c.nodes[2]);
    let mut c = c;
    c.nodes[2].stop_daemon();
    c.etcd.ctl(&format!("del {}", c.lease_key(&s2)));
    let gone = wait_until(Duration::from_secs(10), || {
        !c.nodes[0]
            .host
            .sh("nft list set ip6 ferry nodes")
            .contains("2001:db8::13")
    });
    assert!(gone, "{}", c.nodes[0].host.sh("nft list table ip6 ferry"));
    c.nodes[0].cni("DEL", &pod.id, Some(&pod.ns)).ok();
}
