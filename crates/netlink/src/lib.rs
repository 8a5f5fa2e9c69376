//! The kernel operations ferry needs, each named for what it does and each error naming
//! the link and network namespace it concerns.

mod error;
mod handle;
pub mod netns;
pub mod sysctl;

pub use error::{Error, Result};
pub use handle::{Link, Netlink, RouteV4, VethSpec};

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
