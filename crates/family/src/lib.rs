//! The IP family as a value, and an address as an integer.
//!
//! Every crate of ferry computes per family: nftables sets and rules, kernel requests,
//! subnet arithmetic, names. They share this one definition so that a family is a
//! parameter of one code path, never a reason to copy a function, and a rule written for
//! one family holds for the other by construction.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// An IP family.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn of_net(net: IpNetwork) -> Family {
        Family::of(net.ip())
    }

    /// `4` or `6`, the suffix of per-family names.
    pub fn digit(self) -> char {
        match self {
            Family::V4 => '4',
            Family::V6 => '6',
        }
    }

    /// An address's width in bits.
    pub fn bits(self) -> u32 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The largest address, as an integer.
    pub fn max(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }

    /// The unspecified address (`0.0.0.0`, `::`): a default route's destination.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
            Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
        }
    }

    /// The nftables family of a table, and the header's protocol name in a rule.
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The nftables type of a set of this family's addresses.
    pub fn nft_addr_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An address as an integer, for interval and subnet arithmetic in one width for both
/// families.
pub fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of `family` whose integer is `v`. A value past the family's
/// [`Family::max`] is cut to its low bits, as the callers' arithmetic never makes one.
pub fn from_int(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// A network's first and last address as integers (the host bits of its address cleared
/// and set).
pub fn bounds(net: IpNetwork) -> (u128, u128) {
    let family = Family::of_net(net);
    let host_bits = family.bits().saturating_sub(u32::from(net.prefix()));
    let hosts = if host_bits == 0 {
        0
    } else {
        u128::MAX >> (128 - host_bits)
    };
    let first = to_int(net.ip()) & !hosts;
    (first, first | hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_in_both_families() {
        for ip in ["10.1.2.3", "255.255.255.255", "fd00::1", "::"] {
            let ip: IpAddr = ip.parse().expect("literal");
            assert_eq!(from_int(Family::of(ip), to_int(ip)), ip);
        }
        assert_eq!(to_int("0.0.1.0".parse().expect("literal")), 256);
        assert_eq!(Family::V4.max(), 0xffff_ffff);
    }

    #[test]
    fn a_network_spans_its_host_bits() {
        let net = |s: &str| s.parse::<IpNetwork>().expect("literal");
        assert_eq!(bounds(net("10.1.2.3/24")), (0x0a01_0200, 0x0a01_02ff));
        assert_eq!(bounds(net("10.1.2.3/32")), (0x0a01_0203, 0x0a01_0203));
        assert_eq!(bounds(net("0.0.0.0/0")), (0, 0xffff_ffff));
        assert_eq!(bounds(net("::/0")), (0, u128::MAX));
        assert_eq!(
            bounds(net("fd00::5/127")),
            (0xfd00 << 112 | 4, 0xfd00 << 112 | 5)
        );
    }
}
