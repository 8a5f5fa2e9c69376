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
fn kroute(dst: &str, gw: Option<&str>, oif: u32, protocol: u8) -> ferry_netlink::Route {
    let n = net(dst);
    ferry_netlink::Route {
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
        ferry_netlink::Route {
            dst: Ipv4Addr::new(10, 244, 2, 0).into(),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(10, 244, 2, 0).into()),
            oif: Some(7),
            protocol: ferry_netlink::ROUTE_PROTO_FERRY,
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
    let none = Entries::desired(&[peer(1, 11, 1)], &nowhere()).keeping(&held, &Entries::default());
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
            ferry_netlink::ROUTE_PROTO_FERRY,
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
    let unlisted: BTreeSet<Family> = [Family::V6].into();
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
    let ferry = ferry_netlink::ROUTE_PROTO_FERRY;
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
