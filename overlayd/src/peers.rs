//! Every remote node's route, neighbour and FDB entry as data: what the leases want, what
//! the kernel has, and the operations that turn one into the other. No kernel needed to
//! test any of it.
//!
//! Per remote node (flannel's layout): a permanent neighbour entry for the node subnet's
//! network address with the node's VTEP MAC, an FDB entry sending that MAC to the node's
//! public IP, and a route to the subnet via that address, onlink. A dual-stack node also
//! gets an IPv6 neighbour entry for its IPv6 subnet's network address with the same MAC
//! and an IPv6 route via it: the device is L2, so the FDB entry serves both families. A
//! node of an IPv6-only cluster has only the IPv6 neighbour and route; its FDB entry's
//! destination is of the underlay's family, whatever the pods' families are.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use netlink::{FdbEntry, NeighV4, RouteV4};

/// A remote node as the overlay needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Option<Ipv4Network>,
    pub public_ip: IpAddr,
    pub mac: [u8; 6],
    pub subnet_v6: Option<Ipv6Network>,
}

/// The overlay's entries on the VXLAN device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    pub neighs: BTreeMap<Ipv4Addr, [u8; 6]>,
    pub fdb: BTreeSet<FdbEntry>,
    pub routes: BTreeMap<Ipv4Network, Ipv4Addr>,
    pub neighs6: BTreeMap<Ipv6Addr, [u8; 6]>,
    pub routes6: BTreeMap<Ipv6Network, Ipv6Addr>,
}

impl Entries {
    pub fn desired<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Entries {
        let mut e = Entries::default();
        for p in peers {
            e.fdb.insert(FdbEntry {
                mac: p.mac,
                dst: p.public_ip,
            });
            if let Some(s) = p.subnet {
                e.neighs.insert(s.network(), p.mac);
                e.routes.insert(s, s.network());
            }
            if let Some(s6) = p.subnet_v6 {
                e.neighs6.insert(s6.network(), p.mac);
                e.routes6.insert(s6, s6.network());
            }
        }
        e
    }

    /// Neighbour entries, FDB entries, routes, of both families.
    pub fn len(&self) -> (usize, usize, usize) {
        (
            self.neighs.len() + self.neighs6.len(),
            self.fdb.len(),
            self.routes.len() + self.routes6.len(),
        )
    }

    /// Adds, for each of `held` (subnets whose lease cannot be read now), what `have`
    /// holds for it: its route, its VTEP's neighbour and the FDB entries of that MAC. An
    /// unreadable record is no reason to cut its node off, nor to point it elsewhere.
    pub fn keeping(mut self, held: &BTreeSet<IpNetwork>, have: &Entries) -> Entries {
        for net in held {
            let mac = match *net {
                IpNetwork::V4(net) => {
                    if self.routes.contains_key(&net) {
                        continue;
                    }
                    let Some(gw) = have.routes.get(&net) else {
                        continue;
                    };
                    self.routes.insert(net, *gw);
                    have.neighs.get(gw).inspect(|mac| {
                        self.neighs.insert(*gw, **mac);
                    })
                }
                IpNetwork::V6(net) => {
                    if self.routes6.contains_key(&net) {
                        continue;
                    }
                    let Some(gw) = have.routes6.get(&net) else {
                        continue;
                    };
                    self.routes6.insert(net, *gw);
                    have.neighs6.get(gw).inspect(|mac| {
                        self.neighs6.insert(*gw, **mac);
                    })
                }
            };
            if let Some(mac) = mac {
                self.fdb
                    .extend(have.fdb.iter().filter(|f| f.mac == *mac).copied());
            }
        }
        self
    }

    /// The underlay addresses VXLAN may come from: every peer's.
    pub fn nodes(&self) -> BTreeSet<IpAddr> {
        self.fdb.iter().map(|f| f.dst).collect()
    }
}

/// Main-table destinations whose route ferry did not make (not on the VXLAN device, not
/// tagged with ferry's protocol): ferry never replaces them, whatever a lease says.
pub fn foreign_routes(routes: &[RouteV4], vx_index: u32) -> BTreeSet<Ipv4Network> {
    routes
        .iter()
        .filter(|r| r.oif != Some(vx_index) && r.protocol != netlink::ROUTE_PROTO_FERRY)
        .filter_map(|r| Ipv4Network::new(r.dst, r.prefix).ok())
        .collect()
}

/// `ops` without the routes that would replace a foreign one; the refused destinations.
pub fn spare_foreign(ops: Vec<Op>, foreign: &BTreeSet<Ipv4Network>) -> (Vec<Op>, Vec<Ipv4Network>) {
    let mut refused = Vec::new();
    let kept = ops
        .into_iter()
        .filter(|op| match op {
            Op::SetRoute(net, _) if foreign.contains(net) => {
                refused.push(*net);
                false
            }
            _ => true,
        })
        .collect();
    (kept, refused)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    DelRoute(Ipv4Network),
    DelNeigh(Ipv4Addr),
    DelFdb(FdbEntry),
    SetNeigh(NeighV4),
    SetFdb(FdbEntry),
    SetRoute(Ipv4Network, Ipv4Addr),
    DelRoute6(Ipv6Network),
    DelNeigh6(Ipv6Addr),
    SetNeigh6(Ipv6Addr, [u8; 6]),
    SetRoute6(Ipv6Network, Ipv6Addr),
}

impl Op {
    /// Ops of one phase may run concurrently; phases run in order: routes go before the
    /// entries they use, and come after them (the kernel would otherwise ARP for the
    /// gateway, and traffic would go to a stale VTEP).
    pub fn phase(&self) -> u8 {
        match self {
            Op::DelRoute(_) | Op::DelRoute6(_) => 0,
            Op::DelNeigh(_) | Op::DelNeigh6(_) | Op::DelFdb(_) => 1,
            Op::SetNeigh(_) | Op::SetNeigh6(..) | Op::SetFdb(_) => 2,
            Op::SetRoute(..) | Op::SetRoute6(..) => 3,
        }
    }
}

/// The operations that make `have` into `want`, in phase order.
pub fn diff(want: &Entries, have: &Entries) -> Vec<Op> {
    let mut ops = Vec::new();
    for net in have.routes.keys() {
        if !want.routes.contains_key(net) {
            ops.push(Op::DelRoute(*net));
        }
    }
    for ip in have.neighs.keys() {
        if !want.neighs.contains_key(ip) {
            ops.push(Op::DelNeigh(*ip));
        }
    }
    for e in have.fdb.difference(&want.fdb) {
        ops.push(Op::DelFdb(*e));
    }
    for (ip, mac) in &want.neighs {
        if have.neighs.get(ip) != Some(mac) {
            ops.push(Op::SetNeigh(NeighV4 { ip: *ip, mac: *mac }));
        }
    }
    for e in want.fdb.difference(&have.fdb) {
        ops.push(Op::SetFdb(*e));
    }
    for (net, gw) in &want.routes {
        if have.routes.get(net) != Some(gw) {
            ops.push(Op::SetRoute(*net, *gw));
        }
    }
    for net in have.routes6.keys() {
        if !want.routes6.contains_key(net) {
            ops.push(Op::DelRoute6(*net));
        }
    }
    for ip in have.neighs6.keys() {
        if !want.neighs6.contains_key(ip) {
            ops.push(Op::DelNeigh6(*ip));
        }
    }
    for (ip, mac) in &want.neighs6 {
        if have.neighs6.get(ip) != Some(mac) {
            ops.push(Op::SetNeigh6(*ip, *mac));
        }
    }
    for (net, gw) in &want.routes6 {
        if have.routes6.get(net) != Some(gw) {
            ops.push(Op::SetRoute6(*net, *gw));
        }
    }
    ops.sort_by_key(Op::phase);
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8, ip: u8, mac: u8) -> Peer {
        Peer {
            subnet: Some(format!("10.244.{n}.0/24").parse().unwrap()),
            public_ip: Ipv4Addr::new(192, 0, 2, ip).into(),
            mac: [0x0e, 0, 0, 0, 0, mac],
            subnet_v6: None,
        }
    }

    fn peer6(n: u8, ip: u8, mac: u8) -> Peer {
        Peer {
            subnet_v6: Some(format!("fd00:10:0:{n}::/64").parse().unwrap()),
            ..peer(n, ip, mac)
        }
    }

    #[test]
    fn a_dual_stack_peer_adds_an_ipv6_neighbour_and_route_on_the_same_mac() {
        let want = Entries::desired(&[peer6(1, 11, 1), peer(2, 12, 2)]);
        assert_eq!(want.len(), (3, 2, 3));
        let gw: Ipv6Addr = "fd00:10:0:1::".parse().unwrap();
        assert_eq!(want.neighs6.get(&gw), Some(&[0x0e, 0, 0, 0, 0, 1]));
        let ops = diff(&want, &Entries::default());
        assert_eq!(ops.len(), 8);
        // Routes of both families last, after the neighbours they use.
        assert!(ops[6..]
            .iter()
            .all(|o| matches!(o, Op::SetRoute(..) | Op::SetRoute6(..))));
        // A hand-deleted IPv6 route and neighbour are all that is put back.
        let mut have = want.clone();
        have.routes6.clear();
        have.neighs6.clear();
        assert_eq!(
            diff(&want, &have),
            vec![
                Op::SetNeigh6(gw, [0x0e, 0, 0, 0, 0, 1]),
                Op::SetRoute6("fd00:10:0:1::/64".parse().unwrap(), gw),
            ]
        );
        // The node gone: its IPv6 route goes first, then its neighbour.
        let ops = diff(&Entries::desired(&[peer(2, 12, 2)]), &want);
        assert_eq!(ops[0], Op::DelRoute("10.244.1.0/24".parse().unwrap()));
        assert_eq!(ops[1], Op::DelRoute6("fd00:10:0:1::/64".parse().unwrap()));
        assert!(ops.contains(&Op::DelNeigh6(gw)));
    }

    #[test]
    fn from_nothing_adds_three_entries_per_peer_routes_last() {
        let want = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2)]);
        let ops = diff(&want, &Entries::default());
        assert_eq!(ops.len(), 6);
        assert!(matches!(ops[4], Op::SetRoute(..)) && matches!(ops[5], Op::SetRoute(..)));
        assert_eq!(diff(&want, &want), vec![]);
    }

    #[test]
    fn a_gone_peer_is_removed_routes_first() {
        let have = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2)]);
        let want = Entries::desired(&[peer(1, 11, 1)]);
        let ops = diff(&want, &have);
        assert_eq!(
            ops,
            vec![
                Op::DelRoute("10.244.2.0/24".parse().unwrap()),
                Op::DelNeigh(Ipv4Addr::new(10, 244, 2, 0)),
                Op::DelFdb(FdbEntry {
                    mac: [0x0e, 0, 0, 0, 0, 2],
                    dst: Ipv4Addr::new(192, 0, 2, 12).into()
                }),
            ]
        );
    }

    #[test]
    fn a_moved_peer_replaces_neigh_and_fdb_and_drops_the_old_fdb() {
        let have = Entries::desired(&[peer(1, 11, 1)]);
        let want = Entries::desired(&[peer(1, 21, 9)]);
        let ops = diff(&want, &have);
        assert!(ops.contains(&Op::DelFdb(FdbEntry {
            mac: [0x0e, 0, 0, 0, 0, 1],
            dst: Ipv4Addr::new(192, 0, 2, 11).into()
        })));
        assert!(ops.contains(&Op::SetNeigh(NeighV4 {
            ip: Ipv4Addr::new(10, 244, 1, 0),
            mac: [0x0e, 0, 0, 0, 0, 9]
        })));
        assert!(ops.contains(&Op::SetFdb(FdbEntry {
            mac: [0x0e, 0, 0, 0, 0, 9],
            dst: Ipv4Addr::new(192, 0, 2, 21).into()
        })));
        // The route did not change, so it is left alone (no blip for running flows).
        assert!(!ops
            .iter()
            .any(|o| matches!(o, Op::SetRoute(..) | Op::DelRoute(_))));
    }

    #[test]
    fn an_unreadable_peer_keeps_what_the_kernel_has() {
        let have = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2)]);
        let held: BTreeSet<IpNetwork> = [
            "10.244.2.0/24".parse().unwrap(),
            "10.244.9.0/24".parse().unwrap(),
        ]
        .into();
        let want = Entries::desired(&[peer(1, 11, 1)]).keeping(&held, &have);
        assert_eq!(want, have);
        assert_eq!(diff(&want, &have), vec![]);
        assert_eq!(
            want.nodes(),
            [IpAddr::from([192, 0, 2, 11]), IpAddr::from([192, 0, 2, 12])].into()
        );
        // Nothing there to keep: nothing is made up.
        let none = Entries::desired(&[peer(1, 11, 1)]).keeping(&held, &Entries::default());
        assert_eq!(none, Entries::desired(&[peer(1, 11, 1)]));
    }

    #[test]
    fn a_route_ferry_did_not_make_is_never_replaced() {
        let route = |dst: [u8; 4], prefix, oif, protocol| RouteV4 {
            dst: dst.into(),
            prefix,
            gateway: None,
            oif: Some(oif),
            protocol,
        };
        let routes = [
            // The underlay's connected route, a static route, ferry's own, one on ferry.1.
            route([192, 0, 2, 0], 24, 2, 2),
            route([10, 244, 1, 0], 24, 2, 4),
            route([10, 244, 2, 0], 24, 2, netlink::ROUTE_PROTO_FERRY),
            route([10, 244, 3, 0], 24, 7, 3),
        ];
        let foreign = foreign_routes(&routes, 7);
        assert_eq!(
            foreign,
            [
                "192.0.2.0/24".parse().unwrap(),
                "10.244.1.0/24".parse().unwrap()
            ]
            .into()
        );
        let want = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2), peer(3, 13, 3)]);
        let (ops, refused) = spare_foreign(diff(&want, &Entries::default()), &foreign);
        assert_eq!(
            refused,
            vec!["10.244.1.0/24".parse::<Ipv4Network>().unwrap()]
        );
        let routes: Vec<_> = ops
            .iter()
            .filter(|o| matches!(o, Op::SetRoute(..)))
            .collect();
        assert_eq!(routes.len(), 2);
    }

    /// A node of an IPv6-only cluster over an IPv6 underlay.
    fn peer6_only(n: u8, mac: u8) -> Peer {
        Peer {
            subnet: None,
            public_ip: format!("2001:db8::{n}").parse().unwrap(),
            ..peer6(n, 0, mac)
        }
    }

    #[test]
    fn an_ipv6_only_peer_has_no_ipv4_entries_and_an_ipv6_vtep() {
        let want = Entries::desired(&[peer6_only(1, 1), peer6_only(2, 2)]);
        assert_eq!(want.len(), (2, 2, 2));
        assert!(want.routes.is_empty() && want.neighs.is_empty());
        assert_eq!(
            want.nodes(),
            [
                "2001:db8::1".parse::<IpAddr>().unwrap(),
                "2001:db8::2".parse().unwrap()
            ]
            .into()
        );
        // A hand-deleted route and neighbour come back, and nothing else is touched.
        let mut have = want.clone();
        let s1: Ipv6Network = "fd00:10:0:1::/64".parse().unwrap();
        have.routes6.remove(&s1);
        have.neighs6.remove(&s1.network());
        assert_eq!(
            diff(&want, &have),
            vec![
                Op::SetNeigh6(s1.network(), [0x0e, 0, 0, 0, 0, 1]),
                Op::SetRoute6(s1, s1.network()),
            ]
        );
        // An unreadable record keeps its node's IPv6 entries, FDB entry included.
        let held: BTreeSet<IpNetwork> = [IpNetwork::V6(s1)].into();
        let kept = Entries::desired(&[peer6_only(2, 2)]).keeping(&held, &want);
        assert_eq!(kept, want);
    }

    #[test]
    fn stale_entries_of_unknown_nodes_are_removed() {
        let mut have = Entries::desired(&[peer(1, 11, 1)]);
        have.routes.insert(
            "10.244.7.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 244, 7, 0),
        );
        let want = Entries::desired(&[peer(1, 11, 1)]);
        assert_eq!(
            diff(&want, &have),
            vec![Op::DelRoute("10.244.7.0/24".parse().unwrap())]
        );
    }
}
