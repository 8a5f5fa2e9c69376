//! What the sets hold: the nodes and their pod subnets, as the leases say.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{INNER4, INNER6, NODES};

/// A node's pod subnet as an element of `inner4` or `inner6`: the node's underlay
/// address, the subnet's first and last address as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    pub node: IpAddr,
    pub v6: bool,
    pub first: u128,
    pub last: u128,
}

impl Source {
    pub fn of(node: IpAddr, net: IpNetwork) -> Source {
        let (first, last) = ferry_family::bounds(net);
        Source {
            node,
            v6: net.is_ipv6(),
            first,
            last,
        }
    }

    pub(super) fn element(&self) -> String {
        if self.first == self.last {
            format!("{} . {:#x}", self.node, self.first)
        } else {
            format!("{} . {:#x}-{:#x}", self.node, self.first, self.last)
        }
    }
}

/// What the sets hold: they follow the leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Every other node's underlay address.
    pub nodes: BTreeSet<IpAddr>,
    pub sources: BTreeSet<Source>,
}

impl Members {
    /// From the nodes' addresses and each node's pod subnets.
    pub fn new(
        nodes: BTreeSet<IpAddr>,
        subnets: impl IntoIterator<Item = (IpAddr, IpNetwork)>,
    ) -> Members {
        Members {
            nodes,
            sources: subnets
                .into_iter()
                .map(|(node, net)| Source::of(node, net))
                .collect(),
        }
    }

    /// Each set's elements as `nft` takes them, every set named (an empty one too).
    pub(super) fn elements(&self) -> [(&'static str, Vec<String>); 3] {
        let of = |v6: bool| {
            self.sources
                .iter()
                .filter(|s| s.v6 == v6)
                .map(Source::element)
                .collect()
        };
        [
            (NODES, self.nodes.iter().map(IpAddr::to_string).collect()),
            (INNER4, of(false)),
            (INNER6, of(true)),
        ]
    }
}
