//! A cluster's pod network of one address family, as one shape for both: every check
//! and every subnet computation is written once, over [`FamilyNet`], so that neither
//! family can miss one the other has.

use std::collections::HashSet;
use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

/// The shortest cluster CIDR accepted: anything shorter would swallow the underlay's
/// neighbours and the rest of the internet.
pub const MIN_CLUSTER_PREFIX: u8 = 8;
/// The longest IPv4 node subnet: a node needs room for its pods.
pub const MAX_SUBNET_LEN: u8 = 30;
/// The shortest IPv6 cluster CIDR accepted, for the same reason as `MIN_CLUSTER_PREFIX`.
pub const MIN_CLUSTER_PREFIX_V6: u8 = 16;
/// The longest IPv6 node subnet: a node needs room for its pods.
pub const MAX_SUBNET_LEN_V6: u8 = 120;
/// The most node subnets one cluster CIDR is split into.
const MAX_SPLIT_BITS: u8 = 24;

/// Address ranges a cluster CIDR may never touch, and why.
const FORBIDDEN: [(&str, &str); 6] = [
    ("0.0.0.0/8", "the unspecified range"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (and broadcast)"),
    ("255.255.255.255/32", "broadcast"),
];

/// IPv6 ranges a cluster CIDR may never touch, and why (the first match is named).
pub(super) const FORBIDDEN_V6: [(&str, &str); 5] = [
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::/8", "reserved (unspecified, loopback, IPv4-compatible)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// A network of one address family, with that family's limits.
pub trait FamilyNet: Copy + Eq + Hash + Display + Debug + Into<IpNetwork> {
    /// What messages call the family: nothing for IPv4 (its messages predate IPv6
    /// support and are matched on), `IPv6 ` for IPv6.
    const LABEL: &'static str;
    const BITS: u8;
    const MIN_CLUSTER_PREFIX: u8;
    const MAX_SUBNET_LEN: u8;
    const FORBIDDEN: &'static [(&'static str, &'static str)];

    fn prefix(self) -> u8;
    /// The network address as an integer.
    fn base(self) -> u128;
    /// Whether the address the network was written with is its network address.
    fn is_network(self) -> bool;
    fn contains_ip(self, ip: IpAddr) -> bool;
    /// The network of `len` bits at `base`, which the caller keeps within the family.
    fn at(base: u128, len: u8) -> Self;
    /// `n` when it is of this family.
    fn of(n: IpNetwork) -> Option<Self>;

    /// Whether `other`'s network address is inside this network.
    fn contains_net(self, other: Self) -> bool {
        self.contains_ip(other.into().network())
    }
}

impl FamilyNet for Ipv4Network {
    const LABEL: &'static str = "";
    const BITS: u8 = 32;
    const MIN_CLUSTER_PREFIX: u8 = MIN_CLUSTER_PREFIX;
    const MAX_SUBNET_LEN: u8 = MAX_SUBNET_LEN;
    const FORBIDDEN: &'static [(&'static str, &'static str)] = &FORBIDDEN;

    fn prefix(self) -> u8 {
        Ipv4Network::prefix(self)
    }
    fn base(self) -> u128 {
        u128::from(u32::from(self.network()))
    }
    fn is_network(self) -> bool {
        self.network() == self.ip()
    }
    fn contains_ip(self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(a) if self.contains(a))
    }
    fn at(base: u128, len: u8) -> Self {
        let addr = Ipv4Addr::from(u32::try_from(base).expect("an IPv4 address"));
        Ipv4Network::new(addr, len).expect("valid prefix")
    }
    fn of(n: IpNetwork) -> Option<Self> {
        match n {
            IpNetwork::V4(n) => Some(n),
            IpNetwork::V6(_) => None,
        }
    }
}

impl FamilyNet for Ipv6Network {
    const LABEL: &'static str = "IPv6 ";
    const BITS: u8 = 128;
    const MIN_CLUSTER_PREFIX: u8 = MIN_CLUSTER_PREFIX_V6;
    const MAX_SUBNET_LEN: u8 = MAX_SUBNET_LEN_V6;
    const FORBIDDEN: &'static [(&'static str, &'static str)] = &FORBIDDEN_V6;

    fn prefix(self) -> u8 {
        Ipv6Network::prefix(&self)
    }
    fn base(self) -> u128 {
        u128::from(self.network())
    }
    fn is_network(self) -> bool {
        self.network() == self.ip()
    }
    fn contains_ip(self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V6(a) if self.contains(a))
    }
    fn at(base: u128, len: u8) -> Self {
        Ipv6Network::new(Ipv6Addr::from(base), len).expect("valid prefix")
    }
    fn of(n: IpNetwork) -> Option<Self> {
        match n {
            IpNetwork::V6(n) => Some(n),
            IpNetwork::V4(_) => None,
        }
    }
}

/// One of the constant networks above.
pub(super) fn constant<N: FamilyNet>(s: &str) -> N {
    s.parse::<IpNetwork>()
        .ok()
        .and_then(N::of)
        .expect("constant network")
}

/// Whether two networks share an address.
pub fn overlap<N: FamilyNet>(a: N, b: N) -> bool {
    a.contains_net(b) || b.contains_net(a)
}

/// Whether two records' subnets of one family, when both have one, share an address.
pub(super) fn both_overlap<N: FamilyNet>(a: Option<N>, b: Option<N>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if overlap(a, b))
}

/// The networks of `N`'s family among a host's networks.
fn nets_of<N: FamilyNet>(nets: &[IpNetwork]) -> impl Iterator<Item = N> + '_ {
    nets.iter().filter_map(|n| N::of(*n))
}

/// A cluster's pod network of one family, split into one subnet per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster<N> {
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: N,
    pub subnet_len: u8,
}

/// A cluster's IPv4 pod network (stored at the top level of the config, not as this).
pub type ClusterV4 = Cluster<Ipv4Network>;
/// A cluster's IPv6 pod network (the config's `ipv6`).
pub type ClusterV6 = Cluster<Ipv6Network>;

impl<N: FamilyNet> Cluster<N> {
    pub fn validate(&self) -> Result<(), String> {
        let (c, l) = (self.cluster_cidr, N::LABEL);
        if c.prefix() < N::MIN_CLUSTER_PREFIX {
            return Err(format!(
                "{l}cluster CIDR {c} is too short: /{} (at least /{})",
                c.prefix(),
                N::MIN_CLUSTER_PREFIX
            ));
        }
        for (range, why) in N::FORBIDDEN {
            if overlap(c, constant(range)) {
                return Err(format!("{l}cluster CIDR {c} overlaps {range}: {why}"));
            }
        }
        if !c.is_network() {
            return Err(format!("{l}cluster CIDR {c} has host bits set"));
        }
        let len = self.subnet_len;
        if len <= c.prefix() || len > N::MAX_SUBNET_LEN {
            return Err(format!(
                "{l}node subnet length /{len} must be longer than the cluster CIDR's /{} and at most /{}",
                c.prefix(),
                N::MAX_SUBNET_LEN
            ));
        }
        if len - c.prefix() > MAX_SPLIT_BITS {
            return Err(format!(
                "{l}cluster CIDR {c} split into /{len} would make more than 2^24 node subnets"
            ));
        }
        Ok(())
    }

    /// How many node subnets the cluster CIDR holds.
    pub fn subnet_count(&self) -> u32 {
        1u32 << (self.subnet_len - self.cluster_cidr.prefix())
    }

    /// The `i`th node subnet.
    pub fn subnet(&self, i: u32) -> N {
        let size = 1u128 << (N::BITS - self.subnet_len);
        N::at(
            self.cluster_cidr.base() + u128::from(i) * size,
            self.subnet_len,
        )
    }

    /// Whether `s` is one of this config's node subnets.
    pub fn holds(&self, s: N) -> bool {
        s.prefix() == self.subnet_len && self.cluster_cidr.contains_net(s)
    }

    /// The cluster CIDR when `ip` is inside it.
    pub(super) fn cidr_holding(&self, ip: IpAddr) -> Option<IpNetwork> {
        self.cluster_cidr
            .contains_ip(ip)
            .then(|| self.cluster_cidr.into())
    }

    /// The cluster CIDR must not share an address with the node's own networks, or a
    /// node subnet could take the place of the underlay.
    pub(super) fn check_underlay(&self, underlay: &[IpNetwork]) -> Result<(), String> {
        let c = self.cluster_cidr;
        match nets_of(underlay).find(|u| overlap(c, *u)) {
            Some(u) => Err(format!(
                "{}cluster CIDR {c} overlaps this node's network {u}",
                N::LABEL
            )),
            None => Ok(()),
        }
    }

    /// A record's subnet of this family: one of the node subnets, clear of the node's
    /// own networks.
    pub(super) fn check_subnet(&self, s: N, underlay: &[IpNetwork]) -> Result<(), String> {
        let l = N::LABEL;
        if !s.is_network() || !self.holds(s) {
            return Err(format!(
                "{l}subnet {s} is not a /{} of the {l}cluster CIDR {}",
                self.subnet_len, self.cluster_cidr
            ));
        }
        if let Some(u) = nets_of(underlay).find(|u| overlap(s, *u)) {
            return Err(format!("{l}subnet {s} overlaps this node's network {u}"));
        }
        Ok(())
    }
}

/// A free node subnet, chosen among the first free ones by `seed` so that nodes starting
/// together mostly try different subnets; `None` when the cluster CIDR is full.
pub fn pick_free<N: FamilyNet>(c: &Cluster<N>, taken: &HashSet<N>, seed: u64) -> Option<N> {
    const SPREAD: usize = 64;
    let free: Vec<N> = (0..c.subnet_count())
        .map(|i| c.subnet(i))
        .filter(|s| !taken.contains(s))
        .take(SPREAD)
        .collect();
    free.get((seed % free.len().max(1) as u64) as usize)
        .copied()
}
