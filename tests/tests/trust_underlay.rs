//! VXLAN from strangers (issue 10): a node accepts VXLAN only from the underlay addresses
//! of current leases, kept in step with them.

use std::time::Duration;

use ferry_tests::cluster::Cluster;
use ferry_tests::netns::Netns;
use ferry_tests::proc::{wait_until, Bg};
use ferry_tests::root_or_skip;

macro_rules! needs_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

/// Sends COUNT VXLAN packets (VNI 1) to NODE:4789, each holding an Ethernet frame to
/// DST_MAC with an IPv4/UDP packet from SRC_IP to DST_IP:9999 carrying PAYLOAD: what
/// anyone on the underlay can build from what etcd and the wire tell.
const CRAFT: &str = r#"
import socket, struct, sys
dst_mac, src_ip, dst_ip, node, payload, count = sys.argv[1:7]
def csum(b):
    s = sum((b[i] << 8) + b[i + 1] for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
data = payload.encode()
udp = struct.pack('!HHHH', 40000, 9999, 8 + len(data), 0) + data
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
eth = bytes.fromhex(dst_mac.replace(':', '')) + bytes.fromhex('0e0000000042') + b'\x08\x00'
vxlan = struct.pack('!II', 0x08000000, 1 << 8)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(count)):
    s.sendto(vxlan + eth + ip + udp, (node, 4789))
"#;

/// Prints every datagram received on UDP 9999.
const LISTEN: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 9999))
while True:
    print(s.recv(2000).decode(), flush=True)
"#;

fn craft(from: &Netns, script: &std::path::Path, args: &str) {
    from.sh(&format!("python3 {} {args}", script.display()));
}

#[test]
fn vxlan_from_a_host_that_is_no_node_is_dropped() {
    needs_root!();
    let mut c = Cluster::new(3, "10.84.0.0/16");
    let pod = c.nodes[0].add_pod("vp");
    let other = c.nodes[1].add_pod("vo");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("craft.py");
    std::fs::write(&script, CRAFT).unwrap();
    std::fs::write(dir.path().join("listen.py"), LISTEN).unwrap();
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
    let s1 = c.nodes[1].subnet();
    let forged_src = s1.replace(".0/24", ".77");
    let node0 = c.nodes[0].ip.clone();
    let stranger = c.stranger("192.0.2.66");
    craft(
        &stranger,
        &script,
        &format!("{mac0} {forged_src} {} {node0} from-stranger 20", pod.ip),
    );
    // The same frame from a real node arrives: the craft is right, and nodes still work.
    craft(
        &c.nodes[1].host,
        &script,
        &format!("{mac0} {forged_src} {} {node0} from-node 5", pod.ip),
    );
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
