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

use ferry_netlink::{Family, FdbEntry};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

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
            proto: ferry_netlink::ROUTE_PROTO_FERRY,
        }
    }

    /// The kernel's route to `dst` this is, the VXLAN device being `vx`: what a delete
    /// names, so that it removes this route and no other to `dst`.
    pub fn kernel(&self, dst: IpNetwork, vx: u32) -> ferry_netlink::Route {
        let (via, dev) = match self.path {
            Path::Vxlan(gw) => (gw, vx),
            Path::Direct(h) => (h.via, h.dev),
        };
        ferry_netlink::Route {
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
pub fn own_route(r: &ferry_netlink::Route, vx_index: u32) -> Option<(IpNetwork, Route)> {
    let (Some(gw), Some(dev)) = (r.gateway, r.oif) else {
        return None;
    };
    let net = IpNetwork::new(r.dst, r.prefix).ok()?;
    if gw.is_ipv4() != net.is_ipv4() {
        return None;
    }
    let path = if dev == vx_index {
        Path::Vxlan(gw)
    } else if r.protocol == ferry_netlink::ROUTE_PROTO_FERRY {
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
pub fn foreign_routes(routes: &[ferry_netlink::Route], vx_index: u32) -> BTreeSet<IpNetwork> {
    routes
        .iter()
        .filter(|r| r.oif != Some(vx_index) && r.protocol != ferry_netlink::ROUTE_PROTO_FERRY)
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
    unlisted: &BTreeSet<Family>,
) -> Guarded {
    let mut g = Guarded::default();
    for op in ops {
        match op {
            Op::SetRoute(net, _) if unlisted.contains(&Family::of_net(net)) => {
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
mod tests;
