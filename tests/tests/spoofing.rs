//! A pod may send only from its own IP and MAC: black-box tests of the source guard that
//! ADD puts on each host veth. Each attack is first shown to work from the pod's own
//! identity (so a silent receiver means the guard dropped it, not a broken path).

use std::time::Duration;

use ferry_tests::cni::{pod_ip, Node};
use ferry_tests::needs_root;
use ferry_tests::netns::Netns;
use ferry_tests::proc::{python_listener, socket_family, wait_until, Bg};

const PORT: u16 = 7100;

/// A UDP listener in `ns` that appends every datagram's source address to `log`.
fn udp_sources(ns: &Netns, log: &std::path::Path) -> Bg {
    udp_sources_on(ns, log, "0.0.0.0")
}

/// `udp_sources` bound to `any` (`::` for IPv6).
fn udp_sources_on(ns: &Netns, log: &std::path::Path, any: &str) -> Bg {
    let family = socket_family(any);
    let script = format!(
        "import socket\n\
         s=socket.socket(socket.{family}, socket.SOCK_DGRAM)\n\
         s.bind(('{any}',{PORT}))\n\
         while True:\n    d,a=s.recvfrom(100)\n    f=open('{}','a'); f.write(a[0]+'\\n'); f.close()\n",
        log.display()
    );
    python_listener(
        ns,
        &script,
        &format!("ss -lun 'sport = :{PORT}' | grep -q UNCONN"),
        "UDP listener",
    )
}

/// Sends three datagrams from `ns` to `dst`, from the source address `src` (IP_TRANSPARENT
/// lets a root process in the pod send from an address it does not hold; IPV6_TRANSPARENT
/// for IPv6).
fn send_from(ns: &Netns, src: &str, dst: &str) {
    let (family, level, opt) = if src.contains(':') {
        ("AF_INET6", 41, 75)
    } else {
        ("AF_INET", 0, 19)
    };
    let script = format!(
        "import socket\n\
         s=socket.socket(socket.{family}, socket.SOCK_DGRAM)\n\
         s.setsockopt({level}, {opt}, 1)\n\
         s.bind(('{src}',0))\n\
         [s.sendto(b'x', ('{dst}',{PORT})) for _ in range(3)]\n"
    );
    ns.sh(&format!("python3 -c \"{script}\""));
}

fn seen(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

struct Three {
    node: Node,
    pods: Vec<(Netns, String)>,
    dir: tempfile::TempDir,
}

fn three_pods(subnet: &str) -> Three {
    let node = Node::new(subnet);
    let pods = ["sa", "sb", "sc"]
        .iter()
        .map(|id| {
            let ns = Netns::new("fys");
            let ip = pod_ip(&node.add(id, &ns).ok());
            (ns, ip)
        })
        .collect();
    Three {
        node,
        pods,
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

#[test]
fn a_pod_cannot_send_from_another_pods_address() {
    needs_root!();
    let t = three_pods("10.35.0.0/24");
    let [(a, a_ip), (_b, b_ip), (c, c_ip)] = &t.pods[..] else {
        panic!("three pods")
    };
    let log = t.dir.path().join("seen");
    let _l = udp_sources(c, &log);
    send_from(a, a_ip, c_ip);
    assert!(
        wait_until(Duration::from_secs(3), || seen(&log).contains(a_ip)),
        "C never heard A from A's own address: the path is broken, not guarded"
    );
    send_from(a, b_ip, c_ip);
    send_from(a, "10.35.0.200", c_ip);
    std::thread::sleep(Duration::from_millis(500));
    let got = seen(&log);
    assert!(
        got.iter().all(|s| s == a_ip),
        "C received datagrams A sent from other addresses: {got:?}"
    );
    // The guard is on the host end, where the pod cannot remove it.
    let veths = t.node.host_veths();
    for v in &veths {
        let f = t.node.host.sh(&format!("tc filter show dev {v} ingress"));
        assert!(f.contains("ferry_guard"), "{v} has no guard: {f}");
    }
}

#[test]
fn a_pod_cannot_send_with_another_mac() {
    needs_root!();
    let t = three_pods("10.36.0.0/24");
    let [(a, a_ip), (_b, b_ip), (c, c_ip)] = &t.pods[..] else {
        panic!("three pods")
    };
    let log = t.dir.path().join("seen");
    let _l = udp_sources(c, &log);
    // B's MAC (ferry derives it from B's address) on A's interface.
    let b_mac = {
        let o: Vec<u8> = b_ip.split('.').filter_map(|x| x.parse().ok()).collect();
        format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    };
    let a_mac = a.sh("cat /sys/class/net/eth0/address").trim().to_string();
    a.sh(&format!("ip link set eth0 address {b_mac}"));
    a.sh("ip neigh flush dev eth0");
    send_from(a, a_ip, c_ip);
    std::thread::sleep(Duration::from_millis(800));
    assert!(seen(&log).is_empty(), "C heard A under B's MAC");
    // Back to its own MAC, A is heard: the MAC was what the guard refused.
    a.sh(&format!("ip link set eth0 address {a_mac}"));
    a.sh("ip neigh flush dev eth0");
    send_from(a, a_ip, c_ip);
    assert!(
        wait_until(Duration::from_secs(3), || seen(&log).contains(a_ip)),
        "C never heard A from its own MAC"
    );
}

/// A raw ARP frame from `ns`'s eth0: Ethernet source and ARP sender hardware address are
/// the pod's own, the sender protocol address is `claim`.
fn gratuitous_arp(ns: &Netns, claim: &str) {
    let script = format!(
        "import socket\n\
         mac=bytes.fromhex(open('/sys/class/net/eth0/address').read().strip().replace(':',''))\n\
         ip=socket.inet_aton('{claim}')\n\
         arp=bytes.fromhex('0001080006040001')+mac+ip+bytes(6)+ip\n\
         f=b'\\xff'*6+mac+b'\\x08\\x06'+arp\n\
         s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('eth0',0))\n\
         [s.send(f) for _ in range(3)]\n"
    );
    ns.sh(&format!("python3 -c \"{script}\""));
}

#[test]
fn gratuitous_arp_cannot_take_over_the_gateway() {
    needs_root!();
    let t = three_pods("10.37.0.0/24");
    let [(a, a_ip), (_b, _), (c, _)] = &t.pods[..] else {
        panic!("three pods")
    };
    let gw = "10.37.0.1";
    c.sh(&format!("ping -c1 -W2 {gw}"));
    let before = c.sh(&format!("ip neigh show {gw}"));
    let a_mac = a.sh("cat /sys/class/net/eth0/address").trim().to_string();
    // The kernel ignores updates within locktime (1 s) of the entry's last change.
    std::thread::sleep(Duration::from_millis(1200));
    gratuitous_arp(a, gw);
    std::thread::sleep(Duration::from_millis(300));
    let after = c.sh(&format!("ip neigh show {gw}"));
    assert!(
        !after.contains(&a_mac),
        "C's gateway entry now points at A: {before} -> {after}"
    );
    // A's gratuitous ARP for its own address still goes out (the path is not closed).
    c.sh(&format!("ping -c1 -W2 {a_ip}"));
    gratuitous_arp(a, a_ip);
}

#[test]
fn check_detects_a_removed_guard() {
    needs_root!();
    let node = Node::new("10.38.0.0/24");
    let p = Netns::new("fys");
    let prev = node.add("sg", &p).ok();
    let check = || node.check("sg", &p, &prev);
    check().ok();
    let veth = prev["interfaces"][1]["name"].as_str().unwrap();
    node.host.sh(&format!("tc qdisc del dev {veth} ingress"));
    let r = check();
    assert_eq!(r.err_code(), 104, "{r:?}");
    assert!(r.msg().contains("source guard"), "{r:?}");
    node.del("sg", Some(&p)).ok();
}

#[test]
fn ipv6_only_from_the_pods_own_addresses() {
    needs_root!();
    let node = Node::ferry(
        "1.1.0",
        serde_json::json!({"ranges": [[{"subnet": "10.39.0.0/24"}], [{"subnet": "fd00:39::/64"}]]}),
        serde_json::json!({}),
    );
    let pods: Vec<(Netns, String)> = ["s6a", "s6b", "s6c"]
        .iter()
        .map(|id| {
            let ns = Netns::new("fys");
            let r = node.add(id, &ns).ok();
            let v6 = r["ips"][1]["address"].as_str().unwrap();
            (ns, v6.split('/').next().unwrap().to_string())
        })
        .collect();
    let [(a, a_ip), (_b, b_ip), (c, c_ip)] = &pods[..] else {
        panic!("three pods")
    };
    // Neighbour discovery through the guard: pod to pod ping6 on the node.
    a.sh(&format!("ping -6 -c1 -W2 {c_ip}"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("seen6");
    let _l = udp_sources_on(c, &log, "::");
    send_from(a, a_ip, c_ip);
    assert!(
        wait_until(Duration::from_secs(3), || seen(&log).contains(a_ip)),
        "C never heard A from A's own IPv6 address: the path is broken, not guarded"
    );
    send_from(a, b_ip, c_ip);
    send_from(a, "fd00:39::abcd", c_ip);
    std::thread::sleep(Duration::from_millis(500));
    let got = seen(&log);
    assert!(
        got.iter().all(|s| s == a_ip),
        "C received IPv6 datagrams A sent from other addresses: {got:?}"
    );
    for (i, (p, _)) in pods.iter().enumerate() {
        node.del(["s6a", "s6b", "s6c"][i], Some(p)).ok();
    }
}

#[test]
fn ipv6_is_dropped_from_an_ipv4_only_pod() {
    needs_root!();
    let t = three_pods("10.40.0.0/24");
    let [(a, _), (_b, _), (c, _)] = &t.pods[..] else {
        panic!("three pods")
    };
    // IPv6 addresses the pods hold outside ferry: the guard knows none of them.
    a.sh("ip -6 addr add fd00:40::a/64 dev eth0 nodad");
    c.sh("ip -6 addr add fd00:40::c/64 dev eth0 nodad");
    let r = a.try_sh("ping -6 -c1 -W1 fd00:40::c");
    assert!(
        !r.status.success(),
        "IPv6 passed the guard of an IPv4-only pod"
    );
}

/// An unsolicited neighbour advertisement from `ns`'s own IPv6 address `src` claiming
/// `target` for `ns`'s MAC (override flag set), to all nodes.
fn unsolicited_na(ns: &Netns, src: &str, target: &str) {
    let script = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)\n\
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)\n\
         s.bind(('{src}',0))\n\
         mac=bytes.fromhex(open('/sys/class/net/eth0/address').read().strip().replace(':',''))\n\
         na=bytes([136,0,0,0,0x20,0,0,0])+socket.inet_pton(socket.AF_INET6,'{target}')+bytes([2,1])+mac\n\
         [s.sendto(na, ('ff02::1',0,0,socket.if_nametoindex('eth0'))) for _ in range(3)]\n"
    );
    ns.sh(&format!("python3 -c \"{script}\""));
}

#[test]
fn a_neighbour_advertisement_cannot_take_over_the_ipv6_gateway() {
    needs_root!();
    let node = Node::ferry(
        "1.1.0",
        serde_json::json!({"subnet": "fd00:41::/64"}),
        serde_json::json!({}),
    );
    let (a, c) = (Netns::new("fys"), Netns::new("fys"));
    let ra = node.add("na", &a).ok();
    node.add("nc", &c).ok();
    let a_ip = pod_ip(&ra);
    let gw = "fd00:41::1";
    c.sh(&format!("ping -6 -c1 -W2 {gw}"));
    let a_mac = a.sh("cat /sys/class/net/eth0/address").trim().to_string();
    std::thread::sleep(Duration::from_millis(1200));
    unsolicited_na(&a, &a_ip, gw);
    std::thread::sleep(Duration::from_millis(300));
    let after = c.sh(&format!("ip -6 neigh show {gw}"));
    assert!(
        !after.contains(&a_mac),
        "C's gateway entry now points at A: {after}"
    );
    // The same advertisement without the guard does take the gateway over: what the
    // guard dropped was a working attack.
    let veth = ra["interfaces"][1]["name"].as_str().unwrap();
    node.host.sh(&format!("tc qdisc del dev {veth} ingress"));
    unsolicited_na(&a, &a_ip, gw);
    let taken = wait_until(Duration::from_secs(3), || {
        c.sh(&format!("ip -6 neigh show {gw}")).contains(&a_mac)
    });
    assert!(
        taken,
        "the advertisement is not a working attack: the test proves nothing"
    );
    node.del("na", Some(&a)).ok();
    node.del("nc", Some(&c)).ok();
}
