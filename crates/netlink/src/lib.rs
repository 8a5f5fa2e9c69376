//! The kernel operations ferry needs, each named for what it does and each error naming
//! the link and network namespace it concerns.

pub mod big_tcp;
pub mod bpf;
mod direct;
mod error;
pub mod ethtool;
pub mod flow_hash;
mod guard;
mod handle;
mod link;
pub mod netns;
pub mod overlay;
pub mod routes;
pub mod rps;
pub mod sysctl;

pub use big_tcp::BigTcp;
pub use direct::RouteLookup;
pub use error::{Error, Result};
pub use guard::SourceGuard;
pub use handle::{Netlink, VethSpec};
pub use link::{Link, VxlanInfo};
pub use overlay::{FdbEntry, VxlanSpec};
pub use routes::{Family, Route, TaggedRoute};

/// A locally administered MAC that carries an IPv4 address: `0a:<tag>:<ip>`. ferry gives
/// pods `0a:58:<ip>`, their host ends `0a:59:<ip>` and the bridge `0a:58:<gateway>`, so an
/// address handed to a new pod keeps its MAC (neighbours' ARP entries stay right) and a
/// MAC in a capture names its pod.
pub fn ip_mac(tag: u8, ip: std::net::Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, tag, o[0], o[1], o[2], o[3]]
}

/// `ip_mac` for a pod of either family: its IPv4 address when it has one, else the last
/// 4 bytes of its IPv6 address (a pod's MAC must not change with the family its address
/// was taken from, so the IPv4 one wins whenever there is one).
pub fn addr_mac(tag: u8, ip: std::net::IpAddr) -> [u8; 6] {
    match ip {
        std::net::IpAddr::V4(a) => ip_mac(tag, a),
        std::net::IpAddr::V6(a) => {
            let o = a.octets();
            ip_mac(tag, std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
        }
    }
}

/// The address of a pod's that its MACs follow (`addr_mac`): its first IPv4 address, else
/// its first IPv6 one. The plugin makes the MACs from it and the daemon finds a pod's
/// port on the bridge and its link-local address by it: one rule for both.
pub fn mac_source(ips: &[std::net::IpAddr]) -> Option<std::net::IpAddr> {
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.iter().find(|ip| ip.is_ipv6()))
        .copied()
}

/// The link-local address of a pod holding `ips`, as ferry gives it: derived from the
/// pod's MAC; `None` for a pod without IPv6 (which has no IPv6 address at all, and may
/// send no IPv6).
pub fn pod_link_local(ips: &[std::net::IpAddr]) -> Option<std::net::Ipv6Addr> {
    if !ips.iter().any(|ip| ip.is_ipv6()) {
        return None;
    }
    mac_source(ips).map(|ip| link_local(addr_mac(POD_MAC_TAG, ip)))
}

/// The link-local address derived from `mac` by modified EUI-64: `fe80::` + the MAC with
/// `ff:fe` in the middle and the universal/local bit flipped. It is a pod's only
/// link-local address: the plugin turns the kernel's own (`addr_gen_mode none`) off and
/// adds this one itself, without DAD.
pub fn link_local(mac: [u8; 6]) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([mac[0] ^ 0x02, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    )
}

/// The protocol number of the routes ferry makes (`ip route` shows `proto 102`).
pub const ROUTE_PROTO_FERRY: u8 = 102;

pub const POD_MAC_TAG: u8 = 0x58;
pub const HOST_MAC_TAG: u8 = 0x59;

/// The node bridge's MAC: fixed at creation so it never follows its ports' addresses, and
/// the same whether the plugin or the daemon creates the bridge.
pub fn bridge_mac(gateway: std::net::Ipv4Addr) -> [u8; 6] {
    bridge_mac_of(std::net::IpAddr::V4(gateway))
}

/// `bridge_mac` of a node with either family's gateway (an IPv6-only node's from its IPv6
/// gateway, as `addr_mac`).
pub fn bridge_mac_of(gateway: std::net::IpAddr) -> [u8; 6] {
    addr_mac(POD_MAC_TAG, gateway)
}

/// Formats a MAC address the way CNI results and `ip link` show it.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    #[test]
    fn mac_format() {
        assert_eq!(
            super::format_mac(&[0x0a, 0x58, 10, 1, 2, 255]),
            "0a:58:0a:01:02:ff"
        );
    }

    #[test]
    fn ipv6_mac_and_link_local() {
        let ip: std::net::IpAddr = "fd00:1::a:b0c:d0e".parse().unwrap();
        let mac = super::addr_mac(super::POD_MAC_TAG, ip);
        assert_eq!(mac, [0x0a, 0x58, 0x0b, 0x0c, 0x0d, 0x0e]);
        // What `ip -6 addr` shows for that MAC under addr_gen_mode eui64.
        assert_eq!(super::link_local(mac).to_string(), "fe80::858:bff:fe0c:d0e");
    }

    #[test]
    fn the_mac_follows_ipv4_first_and_only_ipv6_pods_have_a_link_local() {
        let v4: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let v6: std::net::IpAddr = "fd00::a:b0c:d0e".parse().unwrap();
        assert_eq!(super::mac_source(&[v6, v4]), Some(v4));
        assert_eq!(super::mac_source(&[v6]), Some(v6));
        assert_eq!(super::mac_source(&[]), None);
        assert_eq!(super::pod_link_local(&[v4]), None);
        assert_eq!(
            super::pod_link_local(&[v6, v4])
                .map(|a| a.to_string())
                .as_deref(),
            Some("fe80::858:aff:fe01:203")
        );
        assert_eq!(
            super::pod_link_local(&[v6])
                .map(|a| a.to_string())
                .as_deref(),
            Some("fe80::858:bff:fe0c:d0e")
        );
    }
}
