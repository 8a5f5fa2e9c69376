//! The kernel operations ferry needs, each named for what it does and each error naming
//! the link and network namespace it concerns.

mod error;
mod guard;
mod handle;
mod link;
pub mod netns;
pub mod overlay;
pub mod sysctl;

pub use error::{Error, Result};
pub use guard::SourceGuard;
pub use handle::{Netlink, RouteV4, VethSpec};
pub use link::{Link, VxlanInfo};
pub use overlay::{FdbEntry, NeighV4, RouteV6, VxlanSpec};

/// A locally administered MAC that carries an IPv4 address: `0a:<tag>:<ip>`. ferry gives
/// pods `0a:58:<ip>`, their host ends `0a:59:<ip>` and the bridge `0a:58:<gateway>`, so an
/// address handed to a new pod keeps its MAC (neighbours' ARP entries stay right) and a
/// MAC in a capture names its pod.
pub fn ip_mac(tag: u8, ip: std::net::Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, tag, o[0], o[1], o[2], o[3]]
}

/// The protocol number of the routes ferry makes (`ip route` shows `proto 102`).
pub const ROUTE_PROTO_FERRY: u8 = 102;

pub const POD_MAC_TAG: u8 = 0x58;
pub const HOST_MAC_TAG: u8 = 0x59;

/// The node bridge's MAC: fixed at creation so it never follows its ports' addresses, and
/// the same whether the plugin or the daemon creates the bridge.
pub fn bridge_mac(gateway: std::net::Ipv4Addr) -> [u8; 6] {
    ip_mac(POD_MAC_TAG, gateway)
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
}
