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
//!
//! DirectRouting: a node whose underlay address the kernel reaches on-link (no gateway) on
//! the underlay device has its pod subnet of the underlay's family routed `via` that
//! address on that device instead, unencapsulated (the other family stays on VXLAN: an
//! IPv4 underlay cannot carry IPv6 packets as they are). Its neighbour and FDB entries
//! stay, so that it works over VXLAN at once should it stop being on-link, and so that
//! the VXLAN source filter keeps accepting it.

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

/// A pod subnet's direct route: via its node's underlay address, out of `dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hop {
    pub via: IpAddr,
    pub dev: u32,
}

/// Peers' underlay addresses the kernel reaches on-link, with the device: the peers that
/// get direct routes. An address not in it is reached over VXLAN.
pub type Reach = BTreeMap<IpAddr, u32>;

/// The overlay's entries on the VXLAN device, and the direct routes beside them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    pub neighs: BTreeMap<Ipv4Addr, [u8; 6]>,
    pub fdb: BTreeSet<FdbEntry>,
    pub routes: BTreeMap<Ipv4Network, Ipv4Addr>,
    pub neighs6: BTreeMap<Ipv6Addr, [u8; 6]>,
    pub routes6: BTreeMap<Ipv6Network, Ipv6Addr>,
    /// Pod subnets routed straight to their node (DirectRouting), of either family.
    pub direct: BTreeMap<IpNetwork, Hop>,
}

impl Entries {
    /// Every peer's entries; `reach` says which peers are on-link (see `Reach`).
    pub fn desired<'a>(peers: impl IntoIterator<Item = &'a Peer>, reach: &Reach) -> Entries {
        let mut e = Entries::default();
        for p in peers {
            e.fdb.insert(FdbEntry {
                mac: p.mac,
                dst: p.public_ip,
            });
            let hop = reach.get(&p.public_ip).map(|dev| Hop {
                via: p.public_ip,
                dev: *dev,
            });
            if let Some(s) = p.subnet {
                e.neighs.insert(s.network(), p.mac);
                match hop.filter(|h| h.via.is_ipv4()) {
                    Some(h) => {
                        e.direct.insert(IpNetwork::V4(s), h);
                    }
                    None => {
                        e.routes.insert(s, s.network());
                    }
                }
            }
            if let Some(s6) = p.subnet_v6 {
                e.neighs6.insert(s6.network(), p.mac);
                match hop.filter(|h| h.via.is_ipv6()) {
                    Some(h) => {
                        e.direct.insert(IpNetwork::V6(s6), h);
                    }
                    None => {
                        e.routes6.insert(s6, s6.network());
                    }
                }
            }
        }
        e
    }

    /// Neighbour entries, FDB entries, routes (VXLAN and direct), of both families.
    pub fn len(&self) -> (usize, usize, usize) {
        (
            self.neighs.len() + self.neighs6.len(),
            self.fdb.len(),
            self.routes.len() + self.routes6.len() + self.direct.len(),
        )
    }

    /// Whether a route to `net` is wanted, on either path.
    fn routes_to(&self, net: IpNetwork) -> bool {
        self.direct.contains_key(&net)
            || match net {
                IpNetwork::V4(n) => self.routes.contains_key(&n),
                IpNetwork::V6(n) => self.routes6.contains_key(&n),
            }
    }

    /// The path to each peer's subnet of the underlay's family (`v4`): its direct hop,
    /// or `None` for VXLAN; keyed by the peer's underlay address.
    pub fn paths(&self, peers: &[Peer]) -> BTreeMap<IpAddr, Option<Hop>> {
        peers
            .iter()
            .map(|p| {
                let net = match p.public_ip {
                    IpAddr::V4(_) => p.subnet.map(IpNetwork::V4),
                    IpAddr::V6(_) => p.subnet_v6.map(IpNetwork::V6),
                };
                let hop = net.and_then(|n| self.direct.get(&n)).copied();
                (p.public_ip, hop)
            })
            .collect()
    }

    /// Adds, for each of `held` (subnets whose lease cannot be read now), what `have`
    /// holds for it: its route, its VTEP's neighbour and the FDB entries of that MAC. An
    /// unreadable record is no reason to cut its node off, nor to point it elsewhere.
    pub fn keeping(mut self, held: &BTreeSet<IpNetwork>, have: &Entries) -> Entries {
        for net in held {
            if self.routes_to(*net) {
                continue;
            }
            if let Some(hop) = have.direct.get(net) {
                self.direct.insert(*net, *hop);
            }
            let mac = match *net {
                IpNetwork::V4(net) => {
                    let gw = match have.routes.get(&net) {
                        Some(gw) => {
                            self.routes.insert(net, *gw);
                            *gw
                        }
                        // A direct route's node keeps its VXLAN neighbour at the subnet's
                        // network address.
                        None if self.direct.contains_key(&IpNetwork::V4(net)) => net.network(),
                        None => continue,
                    };
                    have.neighs.get(&gw).inspect(|mac| {
                        self.neighs.insert(gw, **mac);
                    })
                }
                IpNetwork::V6(net) => {
                    let gw = match have.routes6.get(&net) {
                        Some(gw) => {
                            self.routes6.insert(net, *gw);
                            *gw
                        }
                        None if self.direct.contains_key(&IpNetwork::V6(net)) => net.network(),
                        None => continue,
                    };
                    have.neighs6.get(&gw).inspect(|mac| {
                        self.neighs6.insert(gw, **mac);
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

    /// The pod subnets each peer's VXLAN may carry as inner sources, with the peer's
    /// underlay address: every subnet routed to it, over VXLAN (the route's neighbour
    /// names its VTEP MAC, whose FDB entry names the address) or directly (via the
    /// address). A held subnet counts as the kernel routes it, as in `nodes`.
    pub fn sources(&self) -> BTreeSet<(IpAddr, IpNetwork)> {
        let to = |mac: Option<&[u8; 6]>| -> Vec<IpAddr> {
            let Some(mac) = mac else {
                return Vec::new();
            };
            self.fdb
                .iter()
                .filter(|f| f.mac == *mac)
                .map(|f| f.dst)
                .collect()
        };
        let vxlan4 = self.routes.iter().flat_map(|(net, gw)| {
            to(self.neighs.get(gw))
                .into_iter()
                .map(|d| (d, IpNetwork::V4(*net)))
        });
        let vxlan6 = self.routes6.iter().flat_map(|(net, gw)| {
            to(self.neighs6.get(gw))
                .into_iter()
                .map(|d| (d, IpNetwork::V6(*net)))
        });
        let direct = self.direct.iter().map(|(net, hop)| (hop.via, *net));
        vxlan4.chain(vxlan6).chain(direct).collect()
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
            Op::SetRoute(net, _) | Op::SetDirect(IpNetwork::V4(net), _)
                if foreign.contains(net) =>
            {
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
    /// A direct route gone: its subnet and the device it was on.
    DelDirect(IpNetwork, u32),
    SetDirect(IpNetwork, Hop),
}

impl Op {
    /// Ops of one phase may run concurrently; phases run in order: routes go before the
    /// entries they use, and come after them (the kernel would otherwise ARP for the
    /// gateway, and traffic would go to a stale VTEP).
    pub fn phase(&self) -> u8 {
        match self {
            Op::DelRoute(_) | Op::DelRoute6(_) | Op::DelDirect(..) => 0,
            Op::DelNeigh(_) | Op::DelNeigh6(_) | Op::DelFdb(_) => 1,
            Op::SetNeigh(_) | Op::SetNeigh6(..) | Op::SetFdb(_) => 2,
            Op::SetRoute(..) | Op::SetRoute6(..) | Op::SetDirect(..) => 3,
        }
    }
}

/// The operations that make `have` into `want`, in phase order. A subnet that changes
/// path is not deleted first: the new route replaces the old one (same destination and
/// metric) in one step, so its flows never meet a missing route.
pub fn diff(want: &Entries, have: &Entries) -> Vec<Op> {
    let mut ops = Vec::new();
    for net in have.routes.keys() {
        if !want.routes_to(IpNetwork::V4(*net)) {
            ops.push(Op::DelRoute(*net));
        }
    }
    for (net, hop) in &have.direct {
        if !want.routes_to(*net) {
            ops.push(Op::DelDirect(*net, hop.dev));
        }
    }
    for (net, hop) in &want.direct {
        if have.direct.get(net) != Some(hop) {
            ops.push(Op::SetDirect(*net, *hop));
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
        if !want.routes_to(IpNetwork::V6(*net)) {
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

    /// No peer on-link: every one over VXLAN.
    fn nowhere() -> Reach {
        Reach::new()
    }

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
        let want = Entries::desired(&[peer6(1, 11, 1), peer(2, 12, 2)], &nowhere());
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
        let ops = diff(&Entries::desired(&[peer(2, 12, 2)], &nowhere()), &want);
        assert_eq!(ops[0], Op::DelRoute("10.244.1.0/24".parse().unwrap()));
        assert_eq!(ops[1], Op::DelRoute6("fd00:10:0:1::/64".parse().unwrap()));
        assert!(ops.contains(&Op::DelNeigh6(gw)));
    }

    #[test]
    fn from_nothing_adds_three_entries_per_peer_routes_last() {
        let want = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2)], &nowhere());
        let ops = diff(&want, &Entries::default());
        assert_eq!(ops.len(), 6);
        assert!(matches!(ops[4], Op::SetRoute(..)) && matches!(ops[5], Op::SetRoute(..)));
        assert_eq!(diff(&want, &want), vec![]);
    }

    #[test]
    fn a_gone_peer_is_removed_routes_first() {
        let have = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2)], &nowhere());
        let want = Entries::desired(&[peer(1, 11, 1)], &nowhere());
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
        let have = Entries::desired(&[peer(1, 11, 1)], &nowhere());
        let want = Entries::desired(&[peer(1, 21, 9)], &nowhere());
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
        let have = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2)], &nowhere());
        let held: BTreeSet<IpNetwork> = [
            "10.244.2.0/24".parse().unwrap(),
            "10.244.9.0/24".parse().unwrap(),
        ]
        .into();
        let want = Entries::desired(&[peer(1, 11, 1)], &nowhere()).keeping(&held, &have);
        assert_eq!(want, have);
        assert_eq!(diff(&want, &have), vec![]);
        assert_eq!(
            want.nodes(),
            [IpAddr::from([192, 0, 2, 11]), IpAddr::from([192, 0, 2, 12])].into()
        );
        // Nothing there to keep: nothing is made up.
        let none =
            Entries::desired(&[peer(1, 11, 1)], &nowhere()).keeping(&held, &Entries::default());
        assert_eq!(none, Entries::desired(&[peer(1, 11, 1)], &nowhere()));
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
        let want = Entries::desired(
            &[peer(1, 11, 1), peer(2, 12, 2), peer(3, 13, 3)],
            &nowhere(),
        );
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
        let want = Entries::desired(&[peer6_only(1, 1), peer6_only(2, 2)], &nowhere());
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
        let kept = Entries::desired(&[peer6_only(2, 2)], &nowhere()).keeping(&held, &want);
        assert_eq!(kept, want);
    }

    #[test]
    fn stale_entries_of_unknown_nodes_are_removed() {
        let mut have = Entries::desired(&[peer(1, 11, 1)], &nowhere());
        have.routes.insert(
            "10.244.7.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 244, 7, 0),
        );
        let want = Entries::desired(&[peer(1, 11, 1)], &nowhere());
        assert_eq!(
            diff(&want, &have),
            vec![Op::DelRoute("10.244.7.0/24".parse().unwrap())]
        );
    }

    /// Peers at 192.0.2.`ips` on-link on device 2.
    fn on_link(ips: &[u8]) -> Reach {
        ips.iter()
            .map(|i| (IpAddr::from([192, 0, 2, *i]), 2))
            .collect()
    }

    fn hop(ip: u8) -> Hop {
        Hop {
            via: IpAddr::from([192, 0, 2, ip]),
            dev: 2,
        }
    }

    #[test]
    fn an_on_link_peer_is_routed_directly_and_keeps_its_vxlan_entries() {
        let want = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2)], &on_link(&[11]));
        let s1: Ipv4Network = "10.244.1.0/24".parse().unwrap();
        assert_eq!(want.direct, [(IpNetwork::V4(s1), hop(11))].into());
        assert!(!want.routes.contains_key(&s1));
        assert!(want.routes.contains_key(&"10.244.2.0/24".parse().unwrap()));
        // Both peers keep their neighbour and FDB entry: one that stops being on-link
        // works over VXLAN at once, and the VXLAN filter still knows both.
        assert_eq!(want.len(), (2, 2, 2));
        assert_eq!(want.nodes().len(), 2);
        let ops = diff(&want, &Entries::default());
        assert_eq!(
            ops.last(),
            Some(&Op::SetRoute(
                "10.244.2.0/24".parse().unwrap(),
                Ipv4Addr::new(10, 244, 2, 0)
            ))
        );
        assert!(ops.contains(&Op::SetDirect(IpNetwork::V4(s1), hop(11))));
        assert_eq!(
            want.paths(&[peer(1, 11, 1), peer(2, 12, 2)]),
            [
                (IpAddr::from([192, 0, 2, 11]), Some(hop(11))),
                (IpAddr::from([192, 0, 2, 12]), None)
            ]
            .into()
        );
    }

    #[test]
    fn switching_path_replaces_the_route_without_deleting_it_first() {
        let peers = [peer(1, 11, 1)];
        let s1: Ipv4Network = "10.244.1.0/24".parse().unwrap();
        let vxlan = Entries::desired(&peers, &nowhere());
        let direct = Entries::desired(&peers, &on_link(&[11]));
        // VXLAN to direct: one replace, no delete of the old route (no gap).
        assert_eq!(
            diff(&direct, &vxlan),
            vec![Op::SetDirect(IpNetwork::V4(s1), hop(11))]
        );
        // And back.
        assert_eq!(diff(&vxlan, &direct), vec![Op::SetRoute(s1, s1.network())]);
        // The peer on-link through another device now: replaced in place too.
        let other: Reach = [(IpAddr::from([192, 0, 2, 11]), 5)].into();
        let moved = Entries::desired(&peers, &other);
        assert_eq!(
            diff(&moved, &direct),
            vec![Op::SetDirect(IpNetwork::V4(s1), Hop { dev: 5, ..hop(11) })]
        );
    }

    #[test]
    fn a_hand_deleted_direct_route_comes_back_and_a_stale_one_goes() {
        let want = Entries::desired(&[peer(1, 11, 1)], &on_link(&[11]));
        let s1 = IpNetwork::V4("10.244.1.0/24".parse().unwrap());
        let mut have = want.clone();
        have.direct.clear();
        assert_eq!(diff(&want, &have), vec![Op::SetDirect(s1, hop(11))]);
        // A direct route of ferry's to a subnet no lease names: removed from its device.
        let mut have = want.clone();
        let stale = IpNetwork::V4("10.244.7.0/24".parse().unwrap());
        have.direct.insert(stale, hop(17));
        assert_eq!(diff(&want, &have), vec![Op::DelDirect(stale, 2)]);
        // The node gone: its direct route goes first, then its VXLAN entries.
        let ops = diff(&Entries::desired(&[], &on_link(&[11])), &want);
        assert_eq!(ops[0], Op::DelDirect(s1, 2));
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn only_the_underlay_family_is_routed_directly() {
        // A dual-stack peer on an IPv4 underlay: its IPv6 subnet stays on VXLAN.
        let want = Entries::desired(&[peer6(1, 11, 1)], &on_link(&[11]));
        assert_eq!(want.direct.len(), 1);
        assert!(want.direct.keys().all(|n| n.is_ipv4()));
        assert_eq!(want.routes6.len(), 1);
        // An IPv6-only peer on an IPv6 underlay: its IPv6 subnet is routed directly.
        let p = peer6_only(1, 1);
        let reach: Reach = [(p.public_ip, 3)].into();
        let want = Entries::desired(&[p], &reach);
        let s1 = IpNetwork::V6("fd00:10:0:1::/64".parse().unwrap());
        assert_eq!(
            want.direct,
            [(
                s1,
                Hop {
                    via: p.public_ip,
                    dev: 3
                }
            )]
            .into()
        );
        assert!(want.routes6.is_empty());
        assert_eq!(
            want.paths(&[p]),
            [(
                p.public_ip,
                Some(Hop {
                    via: p.public_ip,
                    dev: 3
                })
            )]
            .into()
        );
    }

    #[test]
    fn an_unreadable_direct_peer_keeps_its_direct_route_and_vxlan_entries() {
        let have = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2)], &on_link(&[11, 12]));
        let held: BTreeSet<IpNetwork> = ["10.244.2.0/24".parse().unwrap()].into();
        let want = Entries::desired(&[peer(1, 11, 1)], &on_link(&[11, 12])).keeping(&held, &have);
        assert_eq!(want, have);
    }

    #[test]
    fn a_direct_route_over_a_foreign_one_is_refused() {
        let foreign: BTreeSet<Ipv4Network> = ["10.244.1.0/24".parse().unwrap()].into();
        let want = Entries::desired(&[peer(1, 11, 1)], &on_link(&[11]));
        let (ops, refused) = spare_foreign(diff(&want, &Entries::default()), &foreign);
        assert_eq!(
            refused,
            vec!["10.244.1.0/24".parse::<Ipv4Network>().unwrap()]
        );
        assert!(!ops.iter().any(|o| matches!(o, Op::SetDirect(..))));
    }

    #[test]
    fn each_peer_may_send_the_subnets_routed_to_it_on_either_path() {
        let net = |s: &str| s.parse::<IpNetwork>().unwrap();
        let at = |i: u8| IpAddr::from([192, 0, 2, i]);
        // 11 on-link (its IPv4 subnet direct, its IPv6 one over VXLAN), 12 over VXLAN.
        let want = Entries::desired(&[peer6(1, 11, 1), peer(2, 12, 2)], &on_link(&[11]));
        assert_eq!(
            want.sources(),
            [
                (at(11), net("10.244.1.0/24")),
                (at(11), net("fd00:10:0:1::/64")),
                (at(12), net("10.244.2.0/24")),
            ]
            .into()
        );
        // A held subnet counts as the kernel has it.
        let have = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2)], &nowhere());
        let held: BTreeSet<IpNetwork> = [net("10.244.2.0/24")].into();
        let kept = Entries::desired(&[peer(1, 11, 1)], &nowhere()).keeping(&held, &have);
        assert_eq!(kept.sources(), have.sources());
        assert!(kept.sources().contains(&(at(12), net("10.244.2.0/24"))));
    }
}
