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
//!
//! Both families are one shape: entries keyed by `IpAddr` and `IpNetwork`, one route type
//! whose destination says its family, one operation per kind of change. So every rule
//! holds for both by construction: a route to a destination where the host has a route
//! ferry did not make is never made (`foreign_routes`, `spare_foreign`), never counted as
//! ferry's (`Entries::applied`), and a delete names the route it removes whole (its
//! next hop, device and protocol: `Route::kernel`), so that the kernel removes no other
//! route to that destination.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use netlink::{FdbEntry, IpFamily};

/// A remote node as the overlay needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Option<Ipv4Network>,
    pub public_ip: IpAddr,
    pub mac: [u8; 6],
    pub subnet_v6: Option<Ipv6Network>,
}

impl Peer {
    /// Its pod subnets, of both families.
    pub fn subnets(&self) -> impl Iterator<Item = IpNetwork> {
        let v4 = self.subnet.map(IpNetwork::V4);
        let v6 = self.subnet_v6.map(IpNetwork::V6);
        v4.into_iter().chain(v6)
    }
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

/// Where a pod subnet's route sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    /// Into the VXLAN device via this address (the subnet's network address, onlink),
    /// whose neighbour entry names the node's VTEP MAC.
    Vxlan(IpAddr),
    /// Straight to the node's underlay address (DirectRouting).
    Direct(Hop),
}

/// A remote pod subnet's route (of the subnet's family, which keys it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub path: Path,
    /// Who made it: `ROUTE_PROTO_FERRY` for every route ferry makes. One found on the
    /// VXLAN device may carry another (made by hand, or by a release that did not tag its
    /// routes): that device is ferry's, so the route counts as ferry's, and its delete
    /// names the protocol it carries.
    pub proto: u8,
}

impl Route {
    /// A route as ferry makes it.
    pub fn ferry(path: Path) -> Route {
        Route {
            path,
            proto: netlink::ROUTE_PROTO_FERRY,
        }
    }

    /// The kernel's route to `dst` this is, the VXLAN device being `vx`: what a delete
    /// names, so that it removes this route and no other to `dst`.
    pub fn kernel(&self, dst: IpNetwork, vx: u32) -> netlink::Route {
        let (via, dev) = match self.path {
            Path::Vxlan(gw) => (gw, vx),
            Path::Direct(h) => (h.via, h.dev),
        };
        netlink::Route {
            dst: dst.network(),
            prefix: dst.prefix(),
            gateway: Some(via),
            oif: Some(dev),
            protocol: self.proto,
        }
    }
}

/// The overlay's entries on the VXLAN device, and the routes, of both families alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    /// Permanent neighbours on the VXLAN device: a remote pod subnet's network address
    /// and its node's VTEP MAC.
    pub neighs: BTreeMap<IpAddr, [u8; 6]>,
    pub fdb: BTreeSet<FdbEntry>,
    /// Each remote pod subnet's route, on either path: one per destination (a replace
    /// keeps it so).
    pub routes: BTreeMap<IpNetwork, Route>,
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
            for net in p.subnets() {
                // Kept on a direct peer too: it works over VXLAN at once should it stop
                // being on-link.
                e.neighs.insert(net.network(), p.mac);
                // Only the underlay's family goes direct: an IPv4 underlay cannot carry
                // IPv6 packets as they are, nor the reverse.
                let path = match hop.filter(|h| h.via.is_ipv4() == net.is_ipv4()) {
                    Some(h) => Path::Direct(h),
                    None => Path::Vxlan(net.network()),
                };
                e.routes.insert(net, Route::ferry(path));
            }
        }
        e
    }

    /// Neighbour entries, FDB entries, routes (VXLAN and direct), of both families.
    pub fn len(&self) -> (usize, usize, usize) {
        (self.neighs.len(), self.fdb.len(), self.routes.len())
    }

    /// The path to each peer's subnet of the underlay's family: its direct hop, or
    /// `None` for VXLAN; keyed by the peer's underlay address.
    pub fn paths(&self, peers: &[Peer]) -> BTreeMap<IpAddr, Option<Hop>> {
        peers
            .iter()
            .map(|p| {
                let net = p.subnets().find(|n| n.is_ipv4() == p.public_ip.is_ipv4());
                let hop = match net.and_then(|n| self.routes.get(&n)) {
                    Some(Route {
                        path: Path::Direct(h),
                        ..
                    }) => Some(*h),
                    _ => None,
                };
                (p.public_ip, hop)
            })
            .collect()
    }

    /// Adds, for each of `held` (subnets whose lease cannot be read now), what `have`
    /// holds for it: its route, its VTEP's neighbour and the FDB entries of that MAC. An
    /// unreadable record is no reason to cut its node off, nor to point it elsewhere.
    pub fn keeping(mut self, held: &BTreeSet<IpNetwork>, have: &Entries) -> Entries {
        for net in held {
            if self.routes.contains_key(net) {
                continue;
            }
            let Some(route) = have.routes.get(net) else {
                continue;
            };
            self.routes.insert(*net, *route);
            // A direct route's node keeps its VXLAN neighbour at the subnet's network
            // address, as `desired` gives it.
            let gw = match route.path {
                Path::Vxlan(gw) => gw,
                Path::Direct(_) => net.network(),
            };
            if let Some(mac) = have.neighs.get(&gw) {
                self.neighs.insert(gw, *mac);
                self.fdb
                    .extend(have.fdb.iter().filter(|f| f.mac == *mac).copied());
            }
        }
        self
    }

    /// What the kernel holds once `diff(&self, have)` was applied without the routes to
    /// `unmade` (spared: the host has a route ferry did not make there; or postponed):
    /// there, what `have` has (ferry's route of before, or nothing), so that ferry never
    /// counts a route it did not make as its own, nor later deletes it. A route `diff`
    /// left as it was keeps the protocol `have` says it has, which a later delete names.
    pub fn applied(mut self, have: &Entries, unmade: &BTreeSet<IpNetwork>) -> Entries {
        for (net, route) in self.routes.iter_mut() {
            if let Some(h) = have.routes.get(net).filter(|h| h.path == route.path) {
                *route = *h;
            }
        }
        for net in unmade {
            match have.routes.get(net) {
                Some(r) => self.routes.insert(*net, *r),
                None => self.routes.remove(net),
            };
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
        let mut out = BTreeSet::new();
        for (net, route) in &self.routes {
            match route.path {
                Path::Vxlan(gw) => {
                    let Some(mac) = self.neighs.get(&gw) else {
                        continue;
                    };
                    let to = self.fdb.iter().filter(|f| f.mac == *mac);
                    out.extend(to.map(|f| (f.dst, *net)));
                }
                Path::Direct(h) => {
                    out.insert((h.via, *net));
                }
            }
        }
        out
    }
}

/// A route of the kernel's main table as one of ferry's entries, when it is one: on the
/// VXLAN device (ferry's device, whoever made the route), or of ferry's protocol on
/// another device (a direct route); with a gateway of its family either way.
pub fn own_route(r: &netlink::Route, vx_index: u32) -> Option<(IpNetwork, Route)> {
    let (Some(gw), Some(dev)) = (r.gateway, r.oif) else {
        return None;
    };
    let net = IpNetwork::new(r.dst, r.prefix).ok()?;
    if gw.is_ipv4() != net.is_ipv4() {
        return None;
    }
    let path = if dev == vx_index {
        Path::Vxlan(gw)
    } else if r.protocol == netlink::ROUTE_PROTO_FERRY {
        Path::Direct(Hop { via: gw, dev })
    } else {
        return None;
    };
    Some((
        net,
        Route {
            path,
            proto: r.protocol,
        },
    ))
}

/// Main-table destinations, of either family, whose route ferry did not make (not on the
/// VXLAN device, not tagged with ferry's protocol): ferry never replaces them, whatever a
/// lease says.
pub fn foreign_routes(routes: &[netlink::Route], vx_index: u32) -> BTreeSet<IpNetwork> {
    routes
        .iter()
        .filter(|r| r.oif != Some(vx_index) && r.protocol != netlink::ROUTE_PROTO_FERRY)
        .filter_map(|r| IpNetwork::new(r.dst, r.prefix).ok())
        .collect()
}

/// Operations checked against the host's routes before they are applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guarded {
    /// What may be applied.
    pub ops: Vec<Op>,
    /// Destinations where the host has a route ferry did not make: no route made there.
    pub spared: BTreeSet<IpNetwork>,
    /// Destinations whose route waits for the next round: the host's routes of their
    /// family could not be listed, so none of that family is made on unknown ground.
    pub postponed: BTreeSet<IpNetwork>,
}

impl Guarded {
    /// Where no route was made this round, spared or postponed.
    pub fn unmade(&self) -> BTreeSet<IpNetwork> {
        self.spared.union(&self.postponed).copied().collect()
    }
}

/// `ops` without the routes that would replace a foreign one (`foreign`, of the families
/// whose routes were listed), nor any route of a family whose routes could not be
/// listed (`unlisted`). Every other operation, deletes included, is kept: a delete names
/// the route it removes whole (`Route::kernel`), so it cannot remove a foreign one.
pub fn spare_foreign(
    ops: Vec<Op>,
    foreign: &BTreeSet<IpNetwork>,
    unlisted: &BTreeSet<IpFamily>,
) -> Guarded {
    let mut g = Guarded::default();
    for op in ops {
        match op {
            Op::SetRoute(net, _) if unlisted.contains(&family(net)) => {
                g.postponed.insert(net);
            }
            Op::SetRoute(net, _) if foreign.contains(&net) => {
                g.spared.insert(net);
            }
            op => g.ops.push(op),
        }
    }
    g
}

pub fn family(net: IpNetwork) -> IpFamily {
    IpFamily::of(net.network())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A route no lease wants, as the kernel holds it (`Route::kernel` names it whole).
    DelRoute(IpNetwork, Route),
    DelNeigh(IpAddr),
    DelFdb(FdbEntry),
    SetNeigh(IpAddr, [u8; 6]),
    SetFdb(FdbEntry),
    /// A route made, or replaced in one step, as ferry makes it (`Route::ferry`).
    SetRoute(IpNetwork, Path),
}

impl Op {
    /// Ops of one phase may run concurrently; phases run in order: routes go before the
    /// entries they use, and come after them (the kernel would otherwise ARP for the
    /// gateway, and traffic would go to a stale VTEP).
    pub fn phase(&self) -> u8 {
        match self {
            Op::DelRoute(..) => 0,
            Op::DelNeigh(_) | Op::DelFdb(_) => 1,
            Op::SetNeigh(..) | Op::SetFdb(_) => 2,
            Op::SetRoute(..) => 3,
        }
    }
}

/// The operations that make `have` into `want`, in phase order. A subnet that changes
/// path is not deleted first: the new route replaces the old one (same destination and
/// metric) in one step, so its flows never meet a missing route. A route on the path
/// wanted is left as it is, whoever tagged it.
pub fn diff(want: &Entries, have: &Entries) -> Vec<Op> {
    let mut ops = Vec::new();
    for (net, route) in &have.routes {
        if !want.routes.contains_key(net) {
            ops.push(Op::DelRoute(*net, *route));
        }
    }
    for (net, route) in &want.routes {
        if have.routes.get(net).map(|h| h.path) != Some(route.path) {
            ops.push(Op::SetRoute(*net, route.path));
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
            ops.push(Op::SetNeigh(*ip, *mac));
        }
    }
    for e in want.fdb.difference(&have.fdb) {
        ops.push(Op::SetFdb(*e));
    }
    ops.sort_by_key(Op::phase);
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// No peer on-link: every one over VXLAN.
    fn nowhere() -> Reach {
        Reach::new()
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
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

    /// A node of an IPv6-only cluster over an IPv6 underlay, at 2001:db8::`n`.
    fn peer6_only(n: u8, mac: u8) -> Peer {
        Peer {
            subnet: None,
            public_ip: format!("2001:db8::{n}").parse().unwrap(),
            ..peer6(n, 0, mac)
        }
    }

    /// The VXLAN route to `s`, as ferry makes it: via its network address.
    fn vxlan(s: &str) -> Path {
        Path::Vxlan(net(s).network())
    }

    /// A kernel route of the main table, as `Netlink::routes` reads it.
    fn kroute(dst: &str, gw: Option<&str>, oif: u32, protocol: u8) -> netlink::Route {
        let n = net(dst);
        netlink::Route {
            dst: n.network(),
            prefix: n.prefix(),
            gateway: gw.map(|g| g.parse().unwrap()),
            oif: Some(oif),
            protocol,
        }
    }

    /// The destinations of the route deletes in `ops`.
    fn deleted(ops: &[Op]) -> Vec<IpNetwork> {
        ops.iter()
            .filter_map(|o| match o {
                Op::DelRoute(n, _) => Some(*n),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_dual_stack_peer_adds_an_ipv6_neighbour_and_route_on_the_same_mac() {
        let want = Entries::desired(&[peer6(1, 11, 1), peer(2, 12, 2)], &nowhere());
        assert_eq!(want.len(), (3, 2, 3));
        let gw: IpAddr = "fd00:10:0:1::".parse().unwrap();
        assert_eq!(want.neighs.get(&gw), Some(&[0x0e, 0, 0, 0, 0, 1]));
        let ops = diff(&want, &Entries::default());
        assert_eq!(ops.len(), 8);
        // Routes of both families last, after the neighbours they use.
        assert!(ops[5..].iter().all(|o| matches!(o, Op::SetRoute(..))));
        // A hand-deleted IPv6 route and neighbour are all that is put back.
        let mut have = want.clone();
        have.routes.remove(&net("fd00:10:0:1::/64"));
        have.neighs.remove(&gw);
        assert_eq!(
            diff(&want, &have),
            vec![
                Op::SetNeigh(gw, [0x0e, 0, 0, 0, 0, 1]),
                Op::SetRoute(net("fd00:10:0:1::/64"), vxlan("fd00:10:0:1::/64")),
            ]
        );
        // The node gone: its routes of both families go first, then its neighbours.
        let ops = diff(&Entries::desired(&[peer(2, 12, 2)], &nowhere()), &want);
        assert_eq!(
            deleted(&ops[..2]),
            vec![net("10.244.1.0/24"), net("fd00:10:0:1::/64")]
        );
        assert!(ops.contains(&Op::DelNeigh(gw)));
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
    fn a_gone_peer_is_removed_routes_first_named_whole() {
        let have = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2)], &nowhere());
        let want = Entries::desired(&[peer(1, 11, 1)], &nowhere());
        let ops = diff(&want, &have);
        let s2 = net("10.244.2.0/24");
        assert_eq!(
            ops,
            vec![
                Op::DelRoute(s2, Route::ferry(vxlan("10.244.2.0/24"))),
                Op::DelNeigh(Ipv4Addr::new(10, 244, 2, 0).into()),
                Op::DelFdb(FdbEntry {
                    mac: [0x0e, 0, 0, 0, 0, 2],
                    dst: Ipv4Addr::new(192, 0, 2, 12).into()
                }),
            ]
        );
        // The delete names ferry's route whole: next hop, device, protocol.
        let Op::DelRoute(_, r) = ops[0] else {
            unreachable!()
        };
        assert_eq!(
            r.kernel(s2, 7),
            netlink::Route {
                dst: Ipv4Addr::new(10, 244, 2, 0).into(),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 244, 2, 0).into()),
                oif: Some(7),
                protocol: netlink::ROUTE_PROTO_FERRY,
            }
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
        assert!(ops.contains(&Op::SetNeigh(
            Ipv4Addr::new(10, 244, 1, 0).into(),
            [0x0e, 0, 0, 0, 0, 9]
        )));
        assert!(ops.contains(&Op::SetFdb(FdbEntry {
            mac: [0x0e, 0, 0, 0, 0, 9],
            dst: Ipv4Addr::new(192, 0, 2, 21).into()
        })));
        // The route did not change, so it is left alone (no blip for running flows).
        assert!(!ops
            .iter()
            .any(|o| matches!(o, Op::SetRoute(..) | Op::DelRoute(..))));
    }

    #[test]
    fn an_unreadable_peer_keeps_what_the_kernel_has() {
        let have = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2)], &nowhere());
        let held: BTreeSet<IpNetwork> = [net("10.244.2.0/24"), net("10.244.9.0/24")].into();
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
        let routes = [
            // The underlay's connected route, a static route, ferry's own, one on ferry.1.
            kroute("192.0.2.0/24", None, 2, 2),
            kroute("10.244.1.0/24", Some("192.0.2.254"), 2, 4),
            kroute(
                "10.244.2.0/24",
                Some("192.0.2.12"),
                2,
                netlink::ROUTE_PROTO_FERRY,
            ),
            kroute("10.244.3.0/24", Some("10.244.3.0"), 7, 3),
        ];
        let foreign = foreign_routes(&routes, 7);
        assert_eq!(foreign, [net("192.0.2.0/24"), net("10.244.1.0/24")].into());
        let want = Entries::desired(
            &[peer(1, 11, 1), peer(2, 12, 2), peer(3, 13, 3)],
            &nowhere(),
        );
        let g = spare_foreign(diff(&want, &Entries::default()), &foreign, &BTreeSet::new());
        assert_eq!(g.spared, [net("10.244.1.0/24")].into());
        let routes: Vec<_> = g
            .ops
            .iter()
            .filter(|o| matches!(o, Op::SetRoute(..)))
            .collect();
        assert_eq!(routes.len(), 2);
    }

    #[test]
    fn an_ipv6_route_ferry_did_not_make_is_never_replaced_on_either_path() {
        // IPv6-only over an IPv6 underlay: the host's own route to a free subnet, and
        // leases naming it, on-link (direct) and not (VXLAN).
        let (p1, p2) = (peer6_only(1, 1), peer6_only(2, 2));
        let routes = [
            kroute("fd00:10:0:1::/64", Some("2001:db8::99"), 2, 4),
            kroute("fd00:10:0:2::/64", Some("fe80::99"), 2, 3),
            kroute("2001:db8::/64", None, 2, 2),
        ];
        let foreign = foreign_routes(&routes, 7);
        assert_eq!(
            foreign,
            [
                net("fd00:10:0:1::/64"),
                net("fd00:10:0:2::/64"),
                net("2001:db8::/64")
            ]
            .into()
        );
        let reach: Reach = [(p1.public_ip, 2)].into();
        let want = Entries::desired(&[p1, p2], &reach);
        assert!(matches!(
            want.routes[&net("fd00:10:0:1::/64")].path,
            Path::Direct(_)
        ));
        let g = spare_foreign(diff(&want, &Entries::default()), &foreign, &BTreeSet::new());
        assert_eq!(
            g.spared,
            [net("fd00:10:0:1::/64"), net("fd00:10:0:2::/64")].into()
        );
        assert!(!g.ops.iter().any(|o| matches!(o, Op::SetRoute(..))));
        // What ferry then holds has no route there: the lease gone, nothing is deleted.
        let now = want.clone().applied(&Entries::default(), &g.unmade());
        assert!(now.routes.is_empty());
        assert_eq!(now.neighs, want.neighs);
        let gone = diff(&Entries::default(), &now);
        assert_eq!(deleted(&gone), vec![]);
        // A route ferry did not make is not read as one of its own either.
        assert_eq!(own_route(&routes[0], 7), None);
    }

    #[test]
    fn a_spared_route_is_never_deleted_when_its_lease_goes() {
        // IPv4 and IPv6, direct and VXLAN: a lease over a foreign route, then gone.
        let p = peer6(1, 11, 1);
        for reach in [nowhere(), on_link(&[11])] {
            let want = Entries::desired(&[p], &reach);
            let foreign: BTreeSet<IpNetwork> = want.routes.keys().copied().collect();
            let g = spare_foreign(diff(&want, &Entries::default()), &foreign, &BTreeSet::new());
            assert_eq!(g.spared, foreign);
            let now = want.applied(&Entries::default(), &g.unmade());
            assert_eq!(deleted(&diff(&Entries::default(), &now)), vec![]);
        }
        // Where ferry had its own route before, that is what it still holds and may
        // delete later: the route it made, named whole.
        let vx = Entries::desired(&[p], &nowhere());
        let direct = Entries::desired(&[p], &on_link(&[11]));
        let s1 = net("10.244.1.0/24");
        let g = spare_foreign(diff(&direct, &vx), &[s1].into(), &BTreeSet::new());
        assert_eq!(g.spared, [s1].into());
        let now = direct.applied(&vx, &g.unmade());
        assert_eq!(now.routes[&s1], vx.routes[&s1]);
    }

    #[test]
    fn a_family_whose_routes_cannot_be_listed_makes_no_route_this_round() {
        let want = Entries::desired(&[peer6(1, 11, 1)], &nowhere());
        let unlisted: BTreeSet<IpFamily> = [IpFamily::V6].into();
        let g = spare_foreign(
            diff(&want, &Entries::default()),
            &BTreeSet::new(),
            &unlisted,
        );
        assert_eq!(g.spared, BTreeSet::new());
        assert_eq!(g.postponed, [net("fd00:10:0:1::/64")].into());
        assert_eq!(
            g.ops
                .iter()
                .filter(|o| matches!(o, Op::SetRoute(..)))
                .count(),
            1
        );
        // Not counted as made: the next round makes it.
        let now = want.clone().applied(&Entries::default(), &g.unmade());
        assert_eq!(
            diff(&want, &now),
            vec![Op::SetRoute(
                net("fd00:10:0:1::/64"),
                vxlan("fd00:10:0:1::/64")
            )]
        );
    }

    #[test]
    fn the_kernel_routes_ferry_owns_are_read_with_their_protocol() {
        let ferry = netlink::ROUTE_PROTO_FERRY;
        // On ferry.1 (7), any protocol: ferry's device. Elsewhere only ferry's protocol.
        let on_vx = kroute("10.244.3.0/24", Some("10.244.3.0"), 7, 3);
        assert_eq!(
            own_route(&on_vx, 7),
            Some((
                net("10.244.3.0/24"),
                Route {
                    path: vxlan("10.244.3.0/24"),
                    proto: 3
                }
            ))
        );
        let direct6 = kroute("fd00:10:0:1::/64", Some("2001:db8::1"), 2, ferry);
        assert_eq!(
            own_route(&direct6, 7),
            Some((
                net("fd00:10:0:1::/64"),
                Route::ferry(Path::Direct(Hop {
                    via: "2001:db8::1".parse().unwrap(),
                    dev: 2
                }))
            ))
        );
        for other in [
            kroute("10.244.4.0/24", Some("192.0.2.254"), 2, 4),
            kroute("fd00:10:0:4::/64", Some("2001:db8::99"), 2, 3),
            kroute("10.244.5.0/24", None, 7, ferry),
        ] {
            assert_eq!(own_route(&other, 7), None, "{other}");
        }
        // A route on ferry.1 of another protocol is deleted as it is (the tag it has)...
        let (n, r) = own_route(&on_vx, 7).unwrap();
        let mut have = Entries::default();
        have.routes.insert(n, r);
        let ops = diff(&Entries::default(), &have);
        let Op::DelRoute(_, r) = ops[0] else {
            unreachable!()
        };
        assert_eq!(r.kernel(n, 7).protocol, 3);
        // ...and left as it is when wanted, keeping that tag for a later delete.
        let want = Entries::desired(&[peer(3, 13, 3)], &nowhere());
        let have = Entries {
            routes: have.routes.clone(),
            ..want.clone()
        };
        assert_eq!(diff(&want, &have), vec![]);
        assert_eq!(want.applied(&have, &BTreeSet::new()).routes[&n].proto, 3);
    }

    #[test]
    fn an_ipv6_only_peer_has_no_ipv4_entries_and_an_ipv6_vtep() {
        let want = Entries::desired(&[peer6_only(1, 1), peer6_only(2, 2)], &nowhere());
        assert_eq!(want.len(), (2, 2, 2));
        assert!(want.routes.keys().all(|n| n.is_ipv6()));
        assert!(want.neighs.keys().all(|n| n.is_ipv6()));
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
        let s1 = net("fd00:10:0:1::/64");
        have.routes.remove(&s1);
        have.neighs.remove(&s1.network());
        assert_eq!(
            diff(&want, &have),
            vec![
                Op::SetNeigh(s1.network(), [0x0e, 0, 0, 0, 0, 1]),
                Op::SetRoute(s1, Path::Vxlan(s1.network())),
            ]
        );
        // An unreadable record keeps its node's IPv6 entries, FDB entry included.
        let held: BTreeSet<IpNetwork> = [s1].into();
        let kept = Entries::desired(&[peer6_only(2, 2)], &nowhere()).keeping(&held, &want);
        assert_eq!(kept, want);
    }

    #[test]
    fn stale_entries_of_unknown_nodes_are_removed() {
        let mut have = Entries::desired(&[peer(1, 11, 1)], &nowhere());
        let stale = Route::ferry(vxlan("10.244.7.0/24"));
        have.routes.insert(net("10.244.7.0/24"), stale);
        let want = Entries::desired(&[peer(1, 11, 1)], &nowhere());
        assert_eq!(
            diff(&want, &have),
            vec![Op::DelRoute(net("10.244.7.0/24"), stale)]
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
        let (s1, s2) = (net("10.244.1.0/24"), net("10.244.2.0/24"));
        assert_eq!(want.routes[&s1], Route::ferry(Path::Direct(hop(11))));
        assert_eq!(want.routes[&s2], Route::ferry(vxlan("10.244.2.0/24")));
        // Both peers keep their neighbour and FDB entry: one that stops being on-link
        // works over VXLAN at once, and the VXLAN filter still knows both.
        assert_eq!(want.len(), (2, 2, 2));
        assert_eq!(want.nodes().len(), 2);
        let ops = diff(&want, &Entries::default());
        assert_eq!(
            &ops[ops.len() - 2..],
            &[
                Op::SetRoute(s1, Path::Direct(hop(11))),
                Op::SetRoute(s2, vxlan("10.244.2.0/24")),
            ]
        );
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
        let s1 = net("10.244.1.0/24");
        let vx = Entries::desired(&peers, &nowhere());
        let direct = Entries::desired(&peers, &on_link(&[11]));
        // VXLAN to direct: one replace, no delete of the old route (no gap).
        assert_eq!(
            diff(&direct, &vx),
            vec![Op::SetRoute(s1, Path::Direct(hop(11)))]
        );
        // And back.
        assert_eq!(
            diff(&vx, &direct),
            vec![Op::SetRoute(s1, vxlan("10.244.1.0/24"))]
        );
        // The peer on-link through another device now: replaced in place too.
        let other: Reach = [(IpAddr::from([192, 0, 2, 11]), 5)].into();
        let moved = Entries::desired(&peers, &other);
        assert_eq!(
            diff(&moved, &direct),
            vec![Op::SetRoute(s1, Path::Direct(Hop { dev: 5, ..hop(11) }))]
        );
    }

    #[test]
    fn a_hand_deleted_direct_route_comes_back_and_a_stale_one_goes() {
        let want = Entries::desired(&[peer(1, 11, 1)], &on_link(&[11]));
        let s1 = net("10.244.1.0/24");
        let mut have = want.clone();
        have.routes.clear();
        assert_eq!(
            diff(&want, &have),
            vec![Op::SetRoute(s1, Path::Direct(hop(11)))]
        );
        // A direct route of ferry's to a subnet no lease names: removed from its device.
        let mut have = want.clone();
        let stale = net("10.244.7.0/24");
        let route = Route::ferry(Path::Direct(hop(17)));
        have.routes.insert(stale, route);
        assert_eq!(diff(&want, &have), vec![Op::DelRoute(stale, route)]);
        assert_eq!(route.kernel(stale, 7).oif, Some(2));
        // The node gone: its direct route goes first, then its VXLAN entries.
        let ops = diff(&Entries::desired(&[], &on_link(&[11])), &want);
        assert_eq!(
            ops[0],
            Op::DelRoute(s1, Route::ferry(Path::Direct(hop(11))))
        );
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn only_the_underlay_family_is_routed_directly() {
        // A dual-stack peer on an IPv4 underlay: its IPv6 subnet stays on VXLAN.
        let want = Entries::desired(&[peer6(1, 11, 1)], &on_link(&[11]));
        let direct: Vec<&IpNetwork> = want
            .routes
            .iter()
            .filter(|(_, r)| matches!(r.path, Path::Direct(_)))
            .map(|(n, _)| n)
            .collect();
        assert_eq!(direct, vec![&net("10.244.1.0/24")]);
        assert_eq!(
            want.routes[&net("fd00:10:0:1::/64")].path,
            vxlan("fd00:10:0:1::/64")
        );
        // An IPv6-only peer on an IPv6 underlay: its IPv6 subnet is routed directly.
        let p = peer6_only(1, 1);
        let reach: Reach = [(p.public_ip, 3)].into();
        let want = Entries::desired(&[p], &reach);
        let h = Hop {
            via: p.public_ip,
            dev: 3,
        };
        assert_eq!(
            want.routes,
            [(net("fd00:10:0:1::/64"), Route::ferry(Path::Direct(h)))].into()
        );
        assert_eq!(want.paths(&[p]), [(p.public_ip, Some(h))].into());
    }

    #[test]
    fn an_unreadable_direct_peer_keeps_its_direct_route_and_vxlan_entries() {
        let have = Entries::desired(&[peer(1, 11, 1), peer(2, 12, 2)], &on_link(&[11, 12]));
        let held: BTreeSet<IpNetwork> = [net("10.244.2.0/24")].into();
        let want = Entries::desired(&[peer(1, 11, 1)], &on_link(&[11, 12])).keeping(&held, &have);
        assert_eq!(want, have);
    }

    #[test]
    fn a_direct_route_over_a_foreign_one_is_refused() {
        let foreign: BTreeSet<IpNetwork> = [net("10.244.1.0/24")].into();
        let want = Entries::desired(&[peer(1, 11, 1)], &on_link(&[11]));
        let g = spare_foreign(diff(&want, &Entries::default()), &foreign, &BTreeSet::new());
        assert_eq!(g.spared, foreign);
        assert!(!g.ops.iter().any(|o| matches!(o, Op::SetRoute(..))));
    }

    #[test]
    fn each_peer_may_send_the_subnets_routed_to_it_on_either_path() {
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
        // A spared subnet is not routed to its lease's node: not its source either.
        let g = spare_foreign(
            diff(&want, &Entries::default()),
            &[net("10.244.2.0/24")].into(),
            &BTreeSet::new(),
        );
        let now = want.applied(&Entries::default(), &g.unmade());
        assert!(!now.sources().contains(&(at(12), net("10.244.2.0/24"))));
    }
}
