//! Every remote node's route, neighbour and FDB entry as data: what the leases want, what
//! the kernel has, and the operations that turn one into the other. No kernel needed to
//! test any of it.
//!
//! Per remote node (flannel's layout): a permanent neighbour entry for the node subnet's
//! network address with the node's VTEP MAC, an FDB entry sending that MAC to the node's
//! public IP, and a route to the subnet via that address, onlink.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use netlink::{FdbEntry, NeighV4};

/// A remote node as the overlay needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// The overlay's entries on the VXLAN device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    pub neighs: BTreeMap<Ipv4Addr, [u8; 6]>,
    pub fdb: BTreeSet<FdbEntry>,
    pub routes: BTreeMap<Ipv4Network, Ipv4Addr>,
}

impl Entries {
    pub fn desired<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Entries {
        let mut e = Entries::default();
        for p in peers {
            let vtep = p.subnet.network();
            e.neighs.insert(vtep, p.mac);
            e.fdb.insert(FdbEntry {
                mac: p.mac,
                dst: p.public_ip,
            });
            e.routes.insert(p.subnet, vtep);
        }
        e
    }

    pub fn len(&self) -> (usize, usize, usize) {
        (self.neighs.len(), self.fdb.len(), self.routes.len())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    DelRoute(Ipv4Network),
    DelNeigh(Ipv4Addr),
    DelFdb(FdbEntry),
    SetNeigh(NeighV4),
    SetFdb(FdbEntry),
    SetRoute(Ipv4Network, Ipv4Addr),
}

impl Op {
    /// Ops of one phase may run concurrently; phases run in order: routes go before the
    /// entries they use, and come after them (the kernel would otherwise ARP for the
    /// gateway, and traffic would go to a stale VTEP).
    pub fn phase(&self) -> u8 {
        match self {
            Op::DelRoute(_) => 0,
            Op::DelNeigh(_) | Op::DelFdb(_) => 1,
            Op::SetNeigh(_) | Op::SetFdb(_) => 2,
            Op::SetRoute(..) => 3,
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
    ops.sort_by_key(Op::phase);
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8, ip: u8, mac: u8) -> Peer {
        Peer {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, ip),
            mac: [0x0e, 0, 0, 0, 0, mac],
        }
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
                    dst: Ipv4Addr::new(192, 0, 2, 12)
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
            dst: Ipv4Addr::new(192, 0, 2, 11)
        })));
        assert!(ops.contains(&Op::SetNeigh(NeighV4 {
            ip: Ipv4Addr::new(10, 244, 1, 0),
            mac: [0x0e, 0, 0, 0, 0, 9]
        })));
        assert!(ops.contains(&Op::SetFdb(FdbEntry {
            mac: [0x0e, 0, 0, 0, 0, 9],
            dst: Ipv4Addr::new(192, 0, 2, 21)
        })));
        // The route did not change, so it is left alone (no blip for running flows).
        assert!(!ops
            .iter()
            .any(|o| matches!(o, Op::SetRoute(..) | Op::DelRoute(_))));
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
