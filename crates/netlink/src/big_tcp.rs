//! BIG TCP: GSO and GRO packets larger than 64 KiB on the links of a pod's path.
//!
//! A forwarded GSO packet longer than its egress link's `gso_max_size` (IPv4:
//! `gso_ipv4_max_size`) is cut into wire-sized segments in software, on the CPU that
//! forwards it. So the pod's links must never make packets larger than the underlay takes,
//! and should take the packets the underlay's GRO builds: ferry gives them the underlay's
//! own sizes (`BigTcp::of`), or leaves the kernel's 64 KiB.

use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

use crate::error::Result;
use crate::handle::Netlink;
use crate::link::Link;

/// The kernel's size before BIG TCP, and its default (`GSO_LEGACY_MAX_SIZE`).
pub const LEGACY: u32 = 65_536;
/// The largest size the kernel takes on a veth or bridge (`tso_max_size`).
pub const MAX: u32 = 524_280;

/// What a link reports of its packet sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub gso_v4: u32,
    pub gso_v6: u32,
    pub gro_v4: u32,
    pub gro_v6: u32,
    /// The most the link can take (`tso_max_size`): a bridge with no port takes 64 KiB,
    /// one whose ports are veths 512 KiB.
    pub tso_max: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            gso_v4: LEGACY,
            gso_v6: LEGACY,
            gro_v4: LEGACY,
            gro_v6: LEGACY,
            tso_max: MAX,
        }
    }
}

impl Sizes {
    /// Reads the sizes of a link message. A kernel before 6.3 has no IPv4 attributes: its
    /// IPv4 packets follow the legacy attribute.
    pub(crate) fn from_attributes(attrs: &[LinkAttribute]) -> Sizes {
        let (mut gso, mut gro, mut gso4, mut gro4, mut tso) = (None, None, None, None, None);
        for a in attrs {
            match a {
                LinkAttribute::GsoMaxSize(v) => gso = Some(*v),
                LinkAttribute::GroMaxSize(v) => gro = Some(*v),
                LinkAttribute::GsoIpv4MaxSize(v) => gso4 = Some(*v),
                LinkAttribute::GroIpv4MaxSize(v) => gro4 = Some(*v),
                LinkAttribute::TsoMaxSize(v) => tso = Some(*v),
                _ => {}
            }
        }
        let gso = gso.unwrap_or(LEGACY);
        let gro = gro.unwrap_or(LEGACY);
        Sizes {
            gso_v4: gso4.unwrap_or(gso.min(LEGACY)),
            gso_v6: gso,
            gro_v4: gro4.unwrap_or(gro.min(LEGACY)),
            gro_v6: gro,
            tso_max: tso.unwrap_or(MAX),
        }
    }

    /// Whether the link already has `want`'s sizes, GSO and GRO.
    pub fn has(&self, want: BigTcp) -> bool {
        (self.gso_v4, self.gro_v4, self.gso_v6, self.gro_v6)
            == (want.ipv4, want.ipv4, want.ipv6, want.ipv6)
    }
}

/// The GSO and GRO size, per family, that ferry gives the links of a pod's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BigTcp {
    pub ipv4: u32,
    pub ipv6: u32,
}

impl BigTcp {
    /// What pods may use on an underlay with `sizes`: per family, the smaller of its GSO
    /// (what it sends whole) and GRO (what it builds on receipt) size, so that pods neither
    /// send what the underlay would cut nor refuse what it hands them whole. `None` when
    /// neither family goes past the legacy 64 KiB: the kernel's defaults are right.
    pub fn of(underlay: &Sizes) -> Option<BigTcp> {
        let v4 = underlay.gso_v4.min(underlay.gro_v4);
        let v6 = underlay.gso_v6.min(underlay.gro_v6);
        (v4 > LEGACY || v6 > LEGACY).then(|| BigTcp {
            ipv4: v4.clamp(LEGACY, MAX),
            ipv6: v6.clamp(LEGACY, MAX),
        })
    }

    /// The sizes a link that takes at most `tso_max` can have.
    pub fn within(&self, tso_max: u32) -> BigTcp {
        BigTcp {
            ipv4: self.ipv4.min(tso_max),
            ipv6: self.ipv6.min(tso_max),
        }
    }

    /// Both sizes within what the kernel takes on a pod's links.
    pub fn valid(&self) -> bool {
        (LEGACY..=MAX).contains(&self.ipv4) && (LEGACY..=MAX).contains(&self.ipv6)
    }

    pub(crate) fn attributes(&self) -> [LinkAttribute; 4] {
        [
            LinkAttribute::GsoMaxSize(self.ipv6),
            LinkAttribute::GroMaxSize(self.ipv6),
            LinkAttribute::GsoIpv4MaxSize(self.ipv4),
            LinkAttribute::GroIpv4MaxSize(self.ipv4),
        ]
    }
}

impl std::fmt::Display for BigTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IPv4 {} bytes, IPv6 {} bytes", self.ipv4, self.ipv6)
    }
}

/// Adds `big`'s sizes to a link message being built (creation or change).
pub(crate) fn with<T>(mut b: LinkMessageBuilder<T>, big: Option<BigTcp>) -> LinkMessageBuilder<T> {
    if let Some(big) = big {
        for a in big.attributes() {
            b = b.append_extra_attribute(a);
        }
    }
    b
}

impl Netlink {
    /// Gives `link` `big`'s GSO and GRO sizes, as far as it takes them, unless it has them.
    /// Whether it changed anything.
    pub async fn ensure_big_tcp(&self, link: &Link, big: BigTcp) -> Result<bool> {
        let want = big.within(link.sizes.tso_max);
        if link.sizes.has(want) {
            return Ok(false);
        }
        self.set_big_tcp(link.index, &link.name, want).await?;
        Ok(true)
    }

    /// Gives link `index` (`name`, for errors) `big`'s GSO and GRO sizes.
    pub async fn set_big_tcp(&self, index: u32, name: &str, big: BigTcp) -> Result<()> {
        let msg = with(LinkUnspec::new_with_index(index), Some(big)).build();
        self.set_link(msg, || format!("set GSO/GRO sizes ({big}) of {name}"))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_underlay_changes_nothing() {
        assert_eq!(BigTcp::of(&Sizes::default()), None);
        // A NIC that takes less than 64 KiB: pods keep the kernel's default, as before.
        let small = Sizes {
            gso_v4: 16_384,
            gso_v6: 16_384,
            ..Sizes::default()
        };
        assert_eq!(BigTcp::of(&small), None);
    }

    #[test]
    fn pods_take_the_smaller_of_gso_and_gro_per_family() {
        let nic = Sizes {
            gso_v4: 185_000,
            gso_v6: 150_000,
            gro_v4: 120_000,
            gro_v6: 190_000,
            tso_max: MAX,
        };
        assert_eq!(
            BigTcp::of(&nic),
            Some(BigTcp {
                ipv4: 120_000,
                ipv6: 150_000
            })
        );
        // One family big, the other at the default.
        let v6_only = Sizes {
            gso_v6: 185_000,
            gro_v6: 185_000,
            ..Sizes::default()
        };
        assert_eq!(
            BigTcp::of(&v6_only),
            Some(BigTcp {
                ipv4: LEGACY,
                ipv6: 185_000
            })
        );
        // Beyond what a veth takes: clamped.
        let huge = Sizes {
            gso_v4: u32::MAX,
            gso_v6: u32::MAX,
            gro_v4: u32::MAX,
            gro_v6: u32::MAX,
            tso_max: u32::MAX,
        };
        assert_eq!(
            BigTcp::of(&huge),
            Some(BigTcp {
                ipv4: MAX,
                ipv6: MAX
            })
        );
    }

    #[test]
    fn an_old_kernel_without_ipv4_sizes_reads_as_legacy() {
        let s = Sizes::from_attributes(&[
            LinkAttribute::GsoMaxSize(185_000),
            LinkAttribute::GroMaxSize(185_000),
        ]);
        assert_eq!((s.gso_v4, s.gro_v4, s.gso_v6), (LEGACY, LEGACY, 185_000));
        let s = Sizes::from_attributes(&[
            LinkAttribute::GsoMaxSize(185_000),
            LinkAttribute::GroMaxSize(185_000),
            LinkAttribute::GsoIpv4MaxSize(100_000),
            LinkAttribute::GroIpv4MaxSize(100_000),
        ]);
        assert!(s.has(BigTcp {
            ipv4: 100_000,
            ipv6: 185_000
        }));
    }

    #[test]
    fn a_link_gets_what_it_takes() {
        let bridge_without_ports = Sizes {
            tso_max: LEGACY,
            ..Sizes::default()
        };
        let want = BigTcp {
            ipv4: 185_000,
            ipv6: 185_000,
        };
        assert!(bridge_without_ports.has(want.within(bridge_without_ports.tso_max)));
        assert!(!Sizes::default().has(want.within(MAX)));
        let s = Sizes::from_attributes(&[LinkAttribute::TsoMaxSize(LEGACY)]);
        assert_eq!(s.tso_max, LEGACY);
        assert_eq!(Sizes::from_attributes(&[]).tso_max, MAX);
    }

    #[test]
    fn validity() {
        assert!(BigTcp {
            ipv4: LEGACY,
            ipv6: MAX
        }
        .valid());
        assert!(!BigTcp {
            ipv4: 0,
            ipv6: LEGACY
        }
        .valid());
        assert!(!BigTcp {
            ipv4: LEGACY,
            ipv6: MAX + 1
        }
        .valid());
    }
}
