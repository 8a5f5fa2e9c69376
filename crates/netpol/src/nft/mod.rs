//! The nftables objects of the two tables as data, as [`Ruleset::compute`] makes them,
//! [`render`] writes them for `nft -f` and [`parse`] reads them back from `nft -j`.

pub mod lookup;
pub mod parse;
pub mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{Direction, Protocol};
use crate::ranges::Family;

/// An interface name as nft's `ifname` type holds it: 1 to 15 bytes, none of them a
/// character that would need quoting inside nft's double quotes or that Linux refuses in
/// a name. Fixed-size, so that elements holding one stay `Copy` and ordered.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ifname {
    len: u8,
    bytes: [u8; 15],
}

impl Ifname {
    pub fn new(name: &str) -> Option<Ifname> {
        let b = name.as_bytes();
        let ok = |c: u8| c.is_ascii_graphic() && !matches!(c, b'"' | b'\\' | b'/' | b':' | b'*');
        if b.is_empty() || b.len() > 15 || !b.iter().all(|c| ok(*c)) {
            return None;
        }
        let mut bytes = [0u8; 15];
        bytes[..b.len()].copy_from_slice(b);
        Some(Ifname {
            len: b.len() as u8,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (see `new`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Display for Ifname {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Ifname {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Serialize for Ifname {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Ifname {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ifname, D::Error> {
        let s = String::deserialize(d)?;
        Ifname::new(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is no interface name")))
    }
}

/// The two tables of a node, each of them named [`crate::naming::TABLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TableFamily {
    /// `table inet ferry_policy`: connections, by address, after routing and DNAT.
    Inet,
    /// `table bridge ferry_policy`: frames between two pods of the node's bridge whose IP
    /// destination is not the receiving pod's own, by the port they leave on.
    Bridge,
}

impl TableFamily {
    pub const ALL: [TableFamily; 2] = [TableFamily::Inet, TableFamily::Bridge];

    pub fn name(self) -> &'static str {
        match self {
            TableFamily::Inet => "inet",
            TableFamily::Bridge => "bridge",
        }
    }

    /// The number `priority filter` stands for in this family, as `nft -j` lists it.
    pub fn filter_priority(self) -> i64 {
        match self {
            TableFamily::Inet => 0,
            TableFamily::Bridge => -200,
        }
    }
}

/// How a set is declared; its elements follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SetKind {
    /// Single addresses: `type ipv4_addr`.
    Addrs(Family),
    /// Address intervals: `type ipv4_addr; flags interval`.
    Ranges(Family),
    /// `type ipv4_addr . inet_proto . inet_service; flags interval`.
    Ports(Family),
    /// `type ipv4_addr . ipv4_addr`.
    Pairs(Family),
    /// Filled by the kernel (`update @set`), with a counter per element; its elements are
    /// runtime state, never part of a plan.
    Counters(Family),
    /// A verdict map, `type ipv4_addr : verdict`: a local pod's address to the chain of
    /// the policies that select it ([`Element::Jump`]).
    Verdicts(Family),
    /// Bridge ports: `type ifname` ([`Element::Dev`]).
    Devs,
    /// `type ifname . inet_proto . inet_service; flags interval` ([`Element::DevService`]).
    DevServices,
    /// `type ifname . ipv4_addr`: a local pod's port and one of its own addresses.
    DevAddrs(Family),
    /// `type ifname : verdict`: a local pod's port to the chain of the policies that
    /// select it ([`Element::DevJump`]).
    DevVerdicts,
}

/// A chain holding the rules of one combination of policies, for one direction: the
/// pods selected by exactly those policies jump to it from the `<dir>_pods` maps. Named
/// `<dir>_<64-bit FNV-1a of the policies' ids>`, or `<dir>_closed` for none (a pod the
/// API has not shown yet: nothing allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChainRef {
    pub dir: Direction,
    pub sig: u64,
}

/// One set element; addresses are kept as integers so that ranges compare and sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Element {
    Addr(IpAddr),
    Range {
        lo: IpAddr,
        hi: IpAddr,
    },
    Ports {
        lo: IpAddr,
        hi: IpAddr,
        protocol: Protocol,
        port_lo: u16,
        port_hi: u16,
    },
    Pair(IpAddr, IpAddr),
    /// `<address> : jump <chain>` of a [`SetKind::Verdicts`] map.
    Jump {
        addr: IpAddr,
        to: ChainRef,
    },
    /// A pod's port on the bridge.
    Dev(Ifname),
    /// `"<port>" . <protocol> . <port range>`: a pod's bridge port and the ports of a
    /// protocol it is reached on.
    DevService {
        dev: Ifname,
        protocol: Protocol,
        port_lo: u16,
        port_hi: u16,
    },
    /// `"<port>" . <address>`: a pod's bridge port and one of its own addresses.
    DevAddr(Ifname, IpAddr),
    /// `"<port>" : jump <chain>` of a [`SetKind::DevVerdicts`] map.
    DevJump {
        dev: Ifname,
        to: ChainRef,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    pub kind: SetKind,
    pub elements: BTreeSet<Element>,
}

/// A packet field a rule matches against a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Field {
    Saddr(Family),
    Daddr(Family),
    /// `ip daddr . meta l4proto . th dport`
    DaddrPort(Family),
    /// `ip saddr . ip daddr`
    SaddrDaddr(Family),
    /// `oifname`: the bridge port a frame leaves on (bridge family).
    Oif,
    /// `oifname . meta l4proto . th dport`
    OifService,
    /// `oifname . ip daddr`
    OifDaddr(Family),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expr {
    /// `ct state established,related`
    CtEstablished,
    /// `ct state invalid`
    CtInvalid,
    /// `icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }`: IPv6 neighbour
    /// discovery, which conntrack does not track and pods need whatever their policies.
    NeighbourDiscovery,
    /// `meta protocol ip` (`ip6`): the frame carries IPv4 (IPv6); `None`: either.
    /// Written only where nothing else in the rule implies the family.
    L3(Option<Family>),
    /// `<field> @set`
    InSet {
        field: Field,
        set: String,
    },
    /// `<field> != @set`
    NotInSet {
        field: Field,
        set: String,
    },
    /// `<field> vmap @map`: the packet jumps to the chain the map gives its address, if
    /// any (the rule's verdict, so such a rule has none of its own).
    VerdictMap {
        field: Field,
        map: String,
    },
    /// `update @set { <field> }`: count per element of a [`SetKind::Counters`] set.
    Count {
        field: Field,
        set: String,
    },
    /// `limit rate N/second`: the rest of the rule runs at most N times a second.
    Limit(u32),
    /// `log prefix "..." group N`
    Log {
        prefix: String,
        group: u16,
    },
    Counter,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    /// To a chain in place of this one: its `return` goes back to where this one was
    /// jumped to from (a tier handing the decision to the next one).
    Goto(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub exprs: Vec<Expr>,
    pub verdict: Option<Verdict>,
    pub comment: Option<String>,
}

/// The hook of a base chain: always `type filter ... priority filter; policy accept;`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hook {
    Forward,
    Input,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Forward => "forward",
            Hook::Input => "input",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// `None` for a regular chain (reached by `jump`).
    pub hook: Option<Hook>,
    pub rules: Vec<Rule>,
}

/// One table's sets (verdict maps included) and chains.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
}

impl Table {
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.chains.is_empty()
    }
}

/// A node's whole policy state: both of its tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    /// `table inet ferry_policy`: every connection of a local pod, by its addresses.
    pub inet: Table,
    /// `table bridge ferry_policy`: what reaches a local pod over the bridge at an address
    /// that is not its own (multicast, broadcast), by the pod's port.
    pub bridge: Table,
}

impl Ruleset {
    pub fn table(&self, family: TableFamily) -> &Table {
        match family {
            TableFamily::Inet => &self.inet,
            TableFamily::Bridge => &self.bridge,
        }
    }
}

impl Rule {
    pub(crate) fn new(exprs: Vec<Expr>, verdict: Verdict) -> Rule {
        Rule {
            exprs,
            verdict: Some(verdict),
            comment: None,
        }
    }

    /// The sets the rule refers to.
    pub fn sets(&self) -> impl Iterator<Item = &str> {
        self.exprs.iter().filter_map(|e| match e {
            Expr::InSet { set, .. } | Expr::NotInSet { set, .. } | Expr::Count { set, .. } => {
                Some(set.as_str())
            }
            Expr::VerdictMap { map, .. } => Some(map.as_str()),
            _ => None,
        })
    }
}

impl Field {
    /// The address family the field reads; `None` for the bridge port alone or with the
    /// transport port, which both families have.
    pub fn family(self) -> Option<Family> {
        match self {
            Field::Saddr(f)
            | Field::Daddr(f)
            | Field::DaddrPort(f)
            | Field::SaddrDaddr(f)
            | Field::OifDaddr(f) => Some(f),
            Field::Oif | Field::OifService => None,
        }
    }
}
