//! Address and port interval arithmetic for nftables interval sets, which reject
//! overlapping elements: ipBlock `except`s are subtracted in userspace and overlaps merged,
//! and the (address × port) boxes of a concatenated set are cut into disjoint ones.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::model::Protocol;

/// An address family: every set and rule of the table exists once per family.
pub use ferry_family::Family;
pub use ferry_family::{from_int, to_int};

/// An inclusive address interval of one family, as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AddrRange {
    pub family: Family,
    pub lo: u128,
    pub hi: u128,
}

impl AddrRange {
    pub fn single(ip: IpAddr) -> AddrRange {
        let v = to_int(ip);
        AddrRange {
            family: Family::of(ip),
            lo: v,
            hi: v,
        }
    }

    pub fn all(family: Family) -> AddrRange {
        AddrRange {
            family,
            lo: 0,
            hi: family.max(),
        }
    }

    pub fn of_net(net: IpNetwork) -> AddrRange {
        let (lo, hi) = ferry_family::bounds(net);
        AddrRange {
            family: Family::of_net(net),
            lo,
            hi,
        }
    }

    pub fn lo_ip(&self) -> IpAddr {
        from_int(self.family, self.lo)
    }

    pub fn hi_ip(&self) -> IpAddr {
        from_int(self.family, self.hi)
    }

    /// The prefix length when the range is exactly one CIDR block.
    pub fn prefix_len(&self) -> Option<u32> {
        let size = self.hi.wrapping_sub(self.lo).wrapping_add(1);
        let bits = self.family.bits();
        if size == 0 {
            // The whole IPv6 space: 2^128 wraps to 0.
            return (self.lo == 0 && self.hi == u128::MAX).then_some(0);
        }
        if !size.is_power_of_two() || !self.lo.is_multiple_of(size) {
            return None;
        }
        Some(bits - size.trailing_zeros())
    }
}

/// `cidr` minus every `except`, as disjoint ranges.
pub fn subtract(base: AddrRange, except: &[AddrRange]) -> Vec<AddrRange> {
    let mut out = vec![base];
    for e in except.iter().filter(|e| e.family == base.family) {
        out = out
            .into_iter()
            .flat_map(|r| {
                let mut parts = Vec::new();
                if e.hi < r.lo || e.lo > r.hi {
                    parts.push(r);
                    return parts;
                }
                if e.lo > r.lo {
                    parts.push(AddrRange { hi: e.lo - 1, ..r });
                }
                if e.hi < r.hi {
                    parts.push(AddrRange { lo: e.hi + 1, ..r });
                }
                parts
            })
            .collect();
    }
    out
}

/// Sorted ranges with overlapping ones merged; adjacent ones stay apart, so that one pod's
/// address stays one element and pod churn touches only its own elements.
pub fn merge_overlapping(mut ranges: Vec<AddrRange>) -> Vec<AddrRange> {
    ranges.sort();
    let mut out: Vec<AddrRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.family == r.family && r.lo <= last.hi => {
                last.hi = last.hi.max(r.hi);
            }
            _ => out.push(r),
        }
    }
    out
}

/// An (address range × protocol × port range) element of a concatenated interval set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortBox {
    pub addr: AddrRange,
    pub protocol: Protocol,
    pub lo: u16,
    pub hi: u16,
}

type PortRanges = Vec<(u16, u16)>;

/// Cuts boxes into disjoint ones covering the same points: the address axis is split at
/// every box edge, each piece gets the union of the port ranges over it, and neighbouring
/// pieces with the same ports are joined again.
pub fn disjoint_boxes(boxes: Vec<PortBox>) -> Vec<PortBox> {
    let mut keys: Vec<(Family, Protocol)> =
        boxes.iter().map(|b| (b.addr.family, b.protocol)).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for (family, protocol) in keys {
        let group: Vec<&PortBox> = boxes
            .iter()
            .filter(|b| b.addr.family == family && b.protocol == protocol)
            .collect();
        // Piece starts: every lo, and every hi + 1 inside the space.
        let mut cuts: Vec<u128> = group
            .iter()
            .flat_map(|b| [Some(b.addr.lo), b.addr.hi.checked_add(1)])
            .flatten()
            .filter(|c| *c <= family.max())
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut ports: Vec<Vec<(u16, u16)>> = vec![Vec::new(); cuts.len()];
        for b in &group {
            let first = cuts.partition_point(|c| *c < b.addr.lo);
            let end = cuts.partition_point(|c| *c <= b.addr.hi);
            for p in ports.iter_mut().take(end).skip(first) {
                p.push((b.lo, b.hi));
            }
        }
        // (first address, last address, disjoint port ranges) of each joined piece.
        let mut pieces: Vec<(u128, u128, PortRanges)> = Vec::new();
        for (i, mut p) in ports.into_iter().enumerate() {
            if p.is_empty() {
                continue;
            }
            let lo = cuts[i];
            let hi = cuts.get(i + 1).map_or(family.max(), |n| n - 1);
            p.sort_unstable();
            let mut merged: Vec<(u16, u16)> = Vec::new();
            for (a, b) in p {
                match merged.last_mut() {
                    Some(last) if a <= last.1 => last.1 = last.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            match pieces.last_mut() {
                Some(last) if last.1.checked_add(1) == Some(lo) && last.2 == merged => last.1 = hi,
                _ => pieces.push((lo, hi, merged)),
            }
        }
        for (lo, hi, ps) in pieces {
            for (plo, phi) in ps {
                out.push(PortBox {
                    addr: AddrRange { family, lo, hi },
                    protocol,
                    lo: plo,
                    hi: phi,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> AddrRange {
        AddrRange::of_net(s.parse().unwrap())
    }

    #[test]
    fn except_is_cut_out_of_the_block() {
        let got = subtract(r("10.0.0.0/24"), &[r("10.0.0.16/28"), r("10.0.0.255/32")]);
        assert_eq!(
            got.iter()
                .map(|x| format!("{}-{}", x.lo_ip(), x.hi_ip()))
                .collect::<Vec<_>>(),
            ["10.0.0.0-10.0.0.15", "10.0.0.32-10.0.0.254"]
        );
        assert!(subtract(r("10.0.0.0/24"), &[r("10.0.0.0/24")]).is_empty());
        assert_eq!(subtract(r("::/0"), &[r("::/1")]), vec![r("8000::/1")]);
    }

    #[test]
    fn prefixes_are_recognised() {
        assert_eq!(r("10.0.0.0/8").prefix_len(), Some(8));
        assert_eq!(r("0.0.0.0/0").prefix_len(), Some(0));
        assert_eq!(r("::/0").prefix_len(), Some(0));
        assert_eq!(r("fd00::1/128").prefix_len(), Some(128));
        let odd = AddrRange {
            hi: r("10.0.0.0/24").hi - 1,
            ..r("10.0.0.0/24")
        };
        assert_eq!(odd.prefix_len(), None);
    }

    #[test]
    fn overlaps_merge_and_neighbours_stay_apart() {
        let got = merge_overlapping(vec![
            r("10.0.0.0/24"),
            r("10.0.0.7/32"),
            r("10.0.1.0/32"),
            r("fd00::/64"),
        ]);
        assert_eq!(
            got,
            vec![r("10.0.0.0/24"), r("10.0.1.0/32"), r("fd00::/64")]
        );
    }

    #[test]
    fn boxes_become_disjoint_and_cover_the_same_points() {
        let b = |a: &str, lo, hi| PortBox {
            addr: r(a),
            protocol: Protocol::Tcp,
            lo,
            hi,
        };
        let input = vec![
            b("10.0.0.0/24", 80, 80),
            b("10.0.0.5/32", 80, 90),
            b("10.0.0.5/32", 443, 443),
            b("10.0.0.9/32", 80, 80),
        ];
        let got = disjoint_boxes(input.clone());
        for (i, x) in got.iter().enumerate() {
            for y in &got[i + 1..] {
                let addr = x.addr.lo <= y.addr.hi && y.addr.lo <= x.addr.hi;
                let port = x.lo <= y.hi && y.lo <= x.hi;
                assert!(!(addr && port), "{x:?} overlaps {y:?}");
            }
        }
        for a in 0..=300u128 {
            for p in [79u16, 80, 85, 90, 91, 443] {
                let ip = r("10.0.0.0/24").lo + a;
                let inside = |bs: &[PortBox]| {
                    bs.iter()
                        .any(|x| x.addr.lo <= ip && ip <= x.addr.hi && x.lo <= p && p <= x.hi)
                };
                assert_eq!(inside(&input), inside(&got), "ip +{a} port {p}");
            }
        }
        // .0-.4 and .6-.255 on 80 (.9 adds nothing), .5 on 80-90 and 443.
        assert_eq!(got.len(), 4, "{got:?}");
    }
}
