//! Each [`Element`] as nft 1.0.6 puts it in a `NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM`
//! message, found with `nft --debug=netlink,mnl -f` on every set kind:
//!
//! - addresses in network byte order (4 or 16 bytes); a concatenation's every field padded
//!   to 4 bytes; `inet_proto` as 1 byte (padded to 4), `inet_service` as a big-endian u16
//!   (padded to 4); `ifname` as 16 bytes, zero padded (IFNAMSIZ);
//! - an interval set of one field (`flags interval`: the kernel's rbtree) holds two
//!   elements per range: the start `lo`, and the end `hi + 1` flagged
//!   `NFT_SET_ELEM_INTERVAL_END`. A range reaching the family's last address has no end
//!   element; its start carries nft's userdata `NFTNL_UDATA_SET_ELEM_FLAGS =
//!   NFTNL_SET_ELEM_F_INTERVAL_OPEN` instead. Adjacent ranges `[a, b]`, `[b + 1, c]` hold
//!   an end and a start of the same key, told apart by the flag. Deleting a range deletes
//!   both of its elements (the start alone, with the userdata, for an open one). When it
//!   adds to an empty set, nft first adds a zero key flagged as an end (unless a range
//!   starts at zero), which nothing ever deletes;
//! - a concatenated interval set (pipapo) holds one element per range, the first key in
//!   `NFTA_SET_ELEM_KEY` and the last (inclusive) in `NFTA_SET_ELEM_KEY_END`, for add and
//!   delete alike;
//! - a verdict map's value is `NFTA_SET_ELEM_DATA { NFTA_DATA_VERDICT { NFTA_VERDICT_CODE
//!   = NFT_JUMP, NFTA_VERDICT_CHAIN = "<chain>\0" } }`; deleting names the key alone.

use std::net::IpAddr;

use ferry_netpol::model::Protocol;
use ferry_netpol::nft::{Element, Ifname, SetKind};
use ferry_netpol::ranges::{to_int, Family};

/// `NFT_SET_ELEM_INTERVAL_END`: the element ends an interval.
pub const INTERVAL_END: u32 = 1;

/// nft's element userdata for a range open towards the family's last address:
/// `NFTNL_UDATA_SET_ELEM_FLAGS` (1), 4 bytes, `NFTNL_SET_ELEM_F_INTERVAL_OPEN` (1) in host
/// byte order, as libnftnl's udata writes it.
pub const OPEN_USERDATA: [u8; 6] = {
    let v = 1u32.to_ne_bytes();
    [1, 4, v[0], v[1], v[2], v[3]]
};

/// Whether the elements are added or deleted (deletion names keys only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Delete,
}

/// One element as the kernel gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireElement {
    pub key: Vec<u8>,
    /// The inclusive last key of a concatenated range (pipapo).
    pub key_end: Option<Vec<u8>>,
    /// `NFTA_SET_ELEM_FLAGS`, written only when not 0 (as nft does).
    pub flags: u32,
    /// `NFTA_SET_ELEM_USERDATA` ([`OPEN_USERDATA`]) when the range is open at the top.
    pub open: bool,
    /// A verdict map's `jump <chain>` (never on deletion).
    pub jump: Option<String>,
}

impl WireElement {
    fn key(key: Vec<u8>) -> WireElement {
        WireElement {
            key,
            key_end: None,
            flags: 0,
            open: false,
            jump: None,
        }
    }
}

fn addr(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn int_bytes(family: Family, v: u128) -> Vec<u8> {
    match family {
        // A V4 integer is below 2^32 (see `to_int`).
        Family::V4 => (v as u32).to_be_bytes().to_vec(),
        Family::V6 => v.to_be_bytes().to_vec(),
    }
}

fn last(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

/// `inet_proto`: one byte, padded to 4.
fn proto(p: Protocol) -> [u8; 4] {
    let n = match p {
        Protocol::Tcp => libc::IPPROTO_TCP,
        Protocol::Udp => libc::IPPROTO_UDP,
        Protocol::Sctp => libc::IPPROTO_SCTP,
    };
    [n as u8, 0, 0, 0]
}

/// `inet_service`: big-endian, padded to 4.
fn port(p: u16) -> [u8; 4] {
    let b = p.to_be_bytes();
    [b[0], b[1], 0, 0]
}

/// `ifname`: IFNAMSIZ bytes, zero padded.
fn ifname(d: Ifname) -> [u8; 16] {
    let mut b = [0u8; 16];
    let s = d.as_str().as_bytes();
    b[..s.len()].copy_from_slice(s);
    b
}

fn fam_ok(f: Family, ips: &[IpAddr]) -> bool {
    ips.iter().all(|ip| Family::of(*ip) == f)
}

/// The wire elements of `elements` of a set of `kind`, in the order nft sends them; an
/// element that does not belong in such a set is an error saying why.
pub fn encode(kind: SetKind, op: Op, elements: &[Element]) -> Result<Vec<WireElement>, String> {
    let misfit = |e: &Element| format!("element {} does not fit a {kind:?} set", e.render());
    match kind {
        SetKind::Ranges(f) => {
            let mut ranges = Vec::with_capacity(elements.len());
            for e in elements {
                match *e {
                    Element::Range { lo, hi } if fam_ok(f, &[lo, hi]) && lo <= hi => {
                        ranges.push((to_int(lo), to_int(hi)));
                    }
                    _ => return Err(misfit(e)),
                }
            }
            Ok(intervals(f, op, ranges))
        }
        SetKind::Counters(_) => Err(format!(
            "{kind:?}: the kernel fills a counters set, its elements are never planned"
        )),
        _ => elements
            .iter()
            .map(|e| one(kind, op, e).ok_or_else(|| misfit(e)))
            .collect(),
    }
}

/// A single-field interval set's elements: starts and ends, ascending by key, an end
/// before a start of the same key (as nft orders them).
fn intervals(f: Family, op: Op, mut ranges: Vec<(u128, u128)>) -> Vec<WireElement> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, bool, WireElement)> = Vec::with_capacity(ranges.len() * 2 + 1);
    if op == Op::Add && ranges.first().is_some_and(|(lo, _)| *lo != 0) {
        // nft's first segment: a zero key as an end, added (again, harmlessly: without
        // NLM_F_EXCL an identical element is no error) whenever it adds to a set. Never
        // deleted, as by nft.
        out.push((
            0,
            true,
            WireElement {
                flags: INTERVAL_END,
                ..WireElement::key(int_bytes(f, 0))
            },
        ));
    }
    for (lo, hi) in ranges {
        let open = hi == last(f);
        out.push((
            lo,
            false,
            WireElement {
                open,
                ..WireElement::key(int_bytes(f, lo))
            },
        ));
        if !open {
            out.push((
                hi + 1,
                true,
                WireElement {
                    flags: INTERVAL_END,
                    ..WireElement::key(int_bytes(f, hi + 1))
                },
            ));
        }
    }
    // Ends (true) first at a shared key: sort by (key, !end).
    out.sort_by_key(|(k, end, _)| (*k, !*end));
    out.into_iter().map(|(_, _, w)| w).collect()
}

fn one(kind: SetKind, op: Op, e: &Element) -> Option<WireElement> {
    let jump = |to: ferry_netpol::nft::ChainRef| match op {
        Op::Add => Some(to.name()),
        Op::Delete => None,
    };
    let w = match (kind, *e) {
        (SetKind::Addrs(f), Element::Addr(a)) if fam_ok(f, &[a]) => WireElement::key(addr(a)),
        (SetKind::Pairs(f), Element::Pair(a, b)) if fam_ok(f, &[a, b]) => {
            WireElement::key([addr(a), addr(b)].concat())
        }
        (SetKind::Verdicts(f), Element::Jump { addr: a, to }) if fam_ok(f, &[a]) => WireElement {
            jump: jump(to),
            ..WireElement::key(addr(a))
        },
        (
            SetKind::Ports(f),
            Element::Ports {
                lo,
                hi,
                protocol,
                port_lo,
                port_hi,
            },
        ) if fam_ok(f, &[lo, hi]) && lo <= hi && port_lo <= port_hi => WireElement {
            key_end: Some([addr(hi), proto(protocol).to_vec(), port(port_hi).to_vec()].concat()),
            ..WireElement::key(
                [addr(lo), proto(protocol).to_vec(), port(port_lo).to_vec()].concat(),
            )
        },
        (SetKind::Devs, Element::Dev(d)) => WireElement::key(ifname(d).to_vec()),
        (
            SetKind::DevServices,
            Element::DevService {
                dev,
                protocol,
                port_lo,
                port_hi,
            },
        ) if port_lo <= port_hi => {
            let with = |p| [&ifname(dev)[..], &proto(protocol), &port(p)].concat();
            WireElement {
                key_end: Some(with(port_hi)),
                ..WireElement::key(with(port_lo))
            }
        }
        (SetKind::DevAddrs(f), Element::DevAddr(d, a)) if fam_ok(f, &[a]) => {
            WireElement::key([ifname(d).to_vec(), addr(a)].concat())
        }
        (SetKind::DevVerdicts, Element::DevJump { dev, to }) => WireElement {
            jump: jump(to),
            ..WireElement::key(ifname(dev).to_vec())
        },
        _ => return None,
    };
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_netpol::model::Direction;
    use ferry_netpol::nft::ChainRef;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn range(lo: &str, hi: &str) -> Element {
        Element::Range {
            lo: ip(lo),
            hi: ip(hi),
        }
    }

    fn keys(w: &[WireElement]) -> Vec<(Vec<u8>, u32, bool)> {
        w.iter().map(|e| (e.key.clone(), e.flags, e.open)).collect()
    }

    /// `add element inet t r4 { 10.0.0.0/8, 192.168.1.5, 11.0.0.0-11.0.0.255 }` into an
    /// empty set, as `nft --debug=netlink` printed it.
    #[test]
    fn ranges_as_nft_adds_them() {
        let w = encode(
            SetKind::Ranges(Family::V4),
            Op::Add,
            &[
                range("192.168.1.5", "192.168.1.5"),
                range("10.0.0.0", "10.255.255.255"),
                range("11.0.0.0", "11.0.0.255"),
            ],
        )
        .expect("encodes");
        assert_eq!(
            keys(&w),
            vec![
                (vec![0, 0, 0, 0], 1, false),
                (vec![10, 0, 0, 0], 0, false),
                (vec![11, 0, 0, 0], 1, false),
                (vec![11, 0, 0, 0], 0, false),
                (vec![11, 0, 1, 0], 1, false),
                (vec![192, 168, 1, 5], 0, false),
                (vec![192, 168, 1, 6], 1, false),
            ]
        );
    }

    #[test]
    fn a_range_to_the_last_address_is_open() {
        for op in [Op::Add, Op::Delete] {
            let w = encode(
                SetKind::Ranges(Family::V4),
                op,
                &[range("255.255.255.0", "255.255.255.255")],
            )
            .expect("encodes");
            let start = (vec![255, 255, 255, 0], 0, true);
            match op {
                Op::Add => assert_eq!(keys(&w), vec![(vec![0; 4], 1, false), start]),
                Op::Delete => assert_eq!(keys(&w), vec![start]),
            }
        }
        let w = encode(
            SetKind::Ranges(Family::V6),
            Op::Add,
            &[range("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")],
        )
        .expect("encodes");
        assert_eq!(keys(&w), vec![(vec![0; 16], 0, true)]);
    }

    #[test]
    fn deleting_a_range_names_start_and_end() {
        let w = encode(
            SetKind::Ranges(Family::V4),
            Op::Delete,
            &[range("11.0.0.0", "11.0.0.255")],
        )
        .expect("encodes");
        assert_eq!(
            keys(&w),
            vec![(vec![11, 0, 0, 0], 0, false), (vec![11, 0, 1, 0], 1, false)]
        );
    }

    /// `10.0.0.0/8 . tcp . 80-90` and `"fyab" . tcp . 80`, as `--debug=mnl` showed.
    #[test]
    fn concatenated_ranges_have_a_key_and_a_key_end() {
        let w = encode(
            SetKind::Ports(Family::V4),
            Op::Delete,
            &[Element::Ports {
                lo: ip("10.0.0.0"),
                hi: ip("10.255.255.255"),
                protocol: Protocol::Tcp,
                port_lo: 80,
                port_hi: 90,
            }],
        )
        .expect("encodes");
        assert_eq!(w[0].key, [10, 0, 0, 0, 6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(
            w[0].key_end.as_deref(),
            Some(&[10, 255, 255, 255, 6, 0, 0, 0, 0, 90, 0, 0][..])
        );
        let dev = Ifname::new("fyab").expect("name");
        let w = encode(
            SetKind::DevServices,
            Op::Add,
            &[Element::DevService {
                dev,
                protocol: Protocol::Sctp,
                port_lo: 80,
                port_hi: 80,
            }],
        )
        .expect("encodes");
        let mut want = b"fyab".to_vec();
        want.resize(16, 0);
        want.extend([132, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(w[0].key, want);
        assert_eq!(w[0].key_end.as_deref(), Some(&want[..]));
    }

    #[test]
    fn verdicts_jump_on_add_and_name_the_key_on_delete() {
        let to = ChainRef {
            dir: Direction::Ingress,
            sig: 1,
        };
        let e = [Element::Jump {
            addr: ip("1.2.3.4"),
            to,
        }];
        let add = encode(SetKind::Verdicts(Family::V4), Op::Add, &e).expect("encodes");
        assert_eq!(add[0].key, [1, 2, 3, 4]);
        assert_eq!(add[0].jump.as_deref(), Some(to.name().as_str()));
        let del = encode(SetKind::Verdicts(Family::V4), Op::Delete, &e).expect("encodes");
        assert_eq!(del[0].jump, None);
    }

    #[test]
    fn misfits_are_errors() {
        let e = [Element::Addr(ip("::1"))];
        assert!(encode(SetKind::Addrs(Family::V4), Op::Add, &e).is_err());
        assert!(encode(SetKind::Ranges(Family::V6), Op::Add, &e).is_err());
        assert!(encode(SetKind::Counters(Family::V6), Op::Add, &e).is_err());
    }
}
