//! VXLAN as anyone on the underlay can build it from what etcd and the wire tell (the VNI,
//! the port, a node's VTEP MAC): sent from any host (or pod) to a node, with a listener in a
//! pod that says what arrived. Proves a node takes VXLAN only from nodes, carrying only
//! their own pods' sources, and that a pod cannot send it at all.

use std::path::PathBuf;
use std::time::Duration;

use crate::netns::Netns;
use crate::proc::{wait_until, Bg};

/// `craft.py DST_MAC SRC_IP DST_IP NODE PAYLOAD COUNT VLAN`: COUNT VXLAN packets (VNI 1) to
/// NODE:4789, each holding an Ethernet frame to DST_MAC with a UDP packet from SRC_IP to
/// DST_IP:9999 carrying PAYLOAD; IPv4 or IPv6 inside and outside, each by its addresses;
/// VLAN a VLAN ID to tag the inner frame with, `-` for none.
const CRAFT: &str = r#"
import socket, struct, sys
dst_mac, src_ip, dst_ip, node, payload, count, vlan = sys.argv[1:8]
def csum(b):
    if len(b) % 2:
        b += b'\0'
    s = sum((b[i] << 8) + b[i + 1] for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
data = payload.encode()
ulen = 8 + len(data)
udp = struct.pack('!HHHH', 40000, 9999, ulen, 0) + data
if ':' in src_ip:
    src = socket.inet_pton(socket.AF_INET6, src_ip)
    dst = socket.inet_pton(socket.AF_INET6, dst_ip)
    # UDP over IPv6 must carry a checksum.
    c = csum(src + dst + struct.pack('!I3xB', ulen, 17) + udp) or 0xffff
    udp = udp[:6] + struct.pack('!H', c) + udp[8:]
    ip = struct.pack('!IHBB', 6 << 28, ulen, 17, 64) + src + dst
    ethertype = b'\x86\xdd'
else:
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + ulen, 1, 0, 64, 17, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    ethertype = b'\x08\x00'
tag = b'' if vlan == '-' else b'\x81\x00' + struct.pack('!H', int(vlan))
eth = bytes.fromhex(dst_mac.replace(':', '')) + bytes.fromhex('0e0000000042') + tag + ethertype
vxlan = struct.pack('!II', 0x08000000, 1 << 8)
s = socket.socket(socket.AF_INET6 if ':' in node else socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(count)):
    s.sendto(vxlan + eth + ip + udp, (node, 4789))
"#;

/// Prints every datagram received on UDP 9999, of either family.
const LISTEN: &str = r#"
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(('::', 9999))
while True:
    print(s.recv(2000).decode(), flush=True)
"#;

/// A VXLAN frame to send: to the VTEP MAC `mac` of the node whose underlay address is
/// `node`, a UDP packet from `src` to `dst` (the listening pod's address), in a frame
/// tagged with VLAN `vlan` when there is one.
#[derive(Clone)]
pub struct Frame {
    pub mac: String,
    pub src: String,
    pub dst: String,
    pub node: String,
    pub vlan: Option<u16>,
}

impl Frame {
    /// A frame to `node`'s VTEP (its MAC, at its underlay address) carrying a packet
    /// from `src` to `dst`, untagged.
    pub fn to(node: &crate::cluster::Node, src: impl Into<String>, dst: &str) -> Frame {
        Frame {
            mac: node.vtep_mac(),
            src: src.into(),
            dst: dst.to_string(),
            node: node.ip.clone(),
            vlan: None,
        }
    }
}

/// A listener on UDP 9999 in a pod, and the script that sends to it through VXLAN.
pub struct Probe {
    dir: tempfile::TempDir,
    got: PathBuf,
    _listener: Bg,
}

impl Probe {
    /// Starts the listener in `pod` and waits until it listens.
    pub fn listen(pod: &Netns) -> Probe {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("craft.py"), CRAFT).expect("write craft.py");
        std::fs::write(dir.path().join("listen.py"), LISTEN).expect("write listen.py");
        let got = dir.path().join("got.log");
        let listener = Bg::spawn_logged(
            pod,
            &format!("python3 -u {}", dir.path().join("listen.py").display()),
            &got,
        );
        let ok = wait_until(Duration::from_secs(5), || {
            pod.try_sh("ss -lun 'sport = :9999' | grep -q 9999")
                .status
                .success()
        });
        assert!(ok, "listener in {} did not start", pod.name);
        Probe {
            dir,
            got,
            _listener: listener,
        }
    }

    /// Sends `count` copies of `frame` from `from`, carrying `payload`.
    pub fn send(&self, from: &Netns, frame: &Frame, payload: &str, count: u32) {
        let Frame {
            mac,
            src,
            dst,
            node,
            vlan,
        } = frame;
        let vlan = vlan.map_or("-".to_string(), |v| v.to_string());
        from.sh(&format!(
            "python3 {} {mac} {src} {dst} {node} {payload} {count} {vlan}",
            self.dir.path().join("craft.py").display()
        ));
    }

    /// What arrived so far.
    pub fn received(&self) -> String {
        std::fs::read_to_string(&self.got).unwrap_or_default()
    }

    /// `frame` sent 20 times from `stranger` and 5 times from `node` (a node's host): the
    /// node's arrive (the craft is right, and nodes still work), the stranger's never.
    pub fn only_nodes_reach(&self, stranger: &Netns, node: &Netns, frame: &Frame) {
        self.send(stranger, frame, "from-stranger", 20);
        self.send(node, frame, "from-node", 5);
        let arrived = self.arrives("from-node");
        let log = self.received();
        assert!(arrived, "the real node's frame must arrive: {log:?}");
        assert!(
            !log.contains("from-stranger"),
            "a stranger reached the pod: {log}"
        );
    }

    /// `frame` sent 3 times from `from` carrying `payload`: it must arrive.
    pub fn assert_arrives(&self, from: &Netns, frame: &Frame, payload: &str) {
        self.send(from, frame, payload, 3);
        assert!(self.arrives(payload), "{payload}: {:?}", self.received());
    }

    /// Waits until `payload` arrived.
    pub fn arrives(&self, payload: &str) -> bool {
        wait_until(Duration::from_secs(5), || self.received().contains(payload))
    }

    /// Sends `frame` `count` times from `from` carrying `payload`, and waits until `host`
    /// has dropped at least that many more packets by the rules `comment` starts (the
    /// packets were sent before nothing arrived is judged): true when none arrived.
    pub fn dropped_by(
        &self,
        from: &Netns,
        frame: &Frame,
        payload: &str,
        count: u32,
        host: &Netns,
        comment: &str,
    ) -> bool {
        let before = dropped(host, comment);
        self.send(from, frame, payload, count);
        let counted = wait_until(Duration::from_secs(5), || {
            dropped(host, comment) >= before + u64::from(count)
        });
        if !counted {
            let table = host.try_sh("nft list table inet ferry");
            panic!(
                "{count} drops by \"{comment}\" in {}, {before} before; arrived: {}\n{}{}",
                host.name,
                self.arrives(payload),
                String::from_utf8_lossy(&table.stdout),
                String::from_utf8_lossy(&table.stderr)
            );
        }
        // Anything that got through would be here by now (it went out before the count).
        std::thread::sleep(Duration::from_millis(300));
        !self.received().contains(payload)
    }
}

/// After [`Probe::only_nodes_reach`]: `host`'s table lists each of `nodes` (the other
/// nodes' underlay addresses) as a VXLAN sender, and counted the stranger's 20 frames among
/// its drops.
pub fn assert_only_nodes_listed(host: &Netns, nodes: &[&str]) {
    let table = host.sh("nft list table inet ferry");
    assert!(nodes.iter().all(|n| table.contains(n)), "{table}");
    assert!(
        dropped(host, "VXLAN only from ferry nodes") >= 20,
        "drops are counted: {table}"
    );
}

/// The packets `host`'s table inet ferry dropped by its rules whose comment starts with
/// `comment` (0 when there is no such table).
pub fn dropped(host: &Netns, comment: &str) -> u64 {
    let out = host.try_sh("nft -j list table inet ferry");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("rule"))
        .filter(|r| {
            r["comment"]
                .as_str()
                .is_some_and(|c| c.starts_with(comment))
        })
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}
