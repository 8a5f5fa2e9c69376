//! The node's desired nftables state, as data: [`Ruleset::compute`].

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::Hasher as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::Protocol;
use crate::model::{Cluster, Direction, Pod, PodKey, Policy, PolicyPeer, PolicyRule, PortSel};
use crate::ranges::{self, AddrRange, Family, PortBox};

/// The name of the two tables every node's policy state lives in (`inet` and `bridge`).
pub const TABLE: &str = "ferry_policy";
/// The NFLOG group denied connections are logged to (prefix `ferry-deny-ingress ` or
/// `ferry-deny-egress `); the daemon reads it to log one line per denial.
pub const DENY_LOG_GROUP: u16 = 1720;
/// The most denials logged per second and direction on a node; counting is not limited.
pub const DENY_LOG_RATE: u32 = 20;
/// Longest nft object name (NFT_NAME_MAXLEN 256 with its NUL, checked on nft 1.0.6).
pub const MAX_NAME_LEN: usize = 255;
/// Longest rule comment nft accepts.
const MAX_COMMENT_LEN: usize = 128;

impl Ruleset {
    /// Closes `ips` both ways, and `devs` (their bridge ports) to group traffic: each
    /// jumps to the `closed` chains, which allow nothing. For pods the plugin has
    /// announced but whose labels (or namespace's policies) are not known yet, so that no
    /// connection reaches them before their policies do.
    pub fn close(&mut self, ips: &[IpAddr], devs: &[Ifname]) {
        for ip in ips {
            for dir in [Direction::Ingress, Direction::Egress] {
                if let Some(map) = self.inet.sets.get_mut(&pods_map(dir, Family::of(*ip))) {
                    map.elements
                        .retain(|e| !matches!(e, Element::Jump { addr, .. } if addr == ip));
                    map.elements.insert(Element::Jump {
                        addr: *ip,
                        to: ChainRef::closed(dir),
                    });
                }
            }
        }
        if let Some(map) = self.bridge.sets.get_mut(PORTS_MAP) {
            for dev in devs {
                map.elements
                    .retain(|e| !matches!(e, Element::DevJump { dev: d, .. } if d == dev));
                map.elements.insert(Element::DevJump {
                    dev: *dev,
                    to: ChainRef::closed(Direction::Ingress),
                });
            }
        }
    }

    pub fn table(&self, family: TableFamily) -> &Table {
        match family {
            TableFamily::Inet => &self.inet,
            TableFamily::Bridge => &self.bridge,
        }
    }
}

/// The pods of this node with their addresses. The caller may know a local pod's addresses
/// before the API does; these win over the API's, and they hold its link-local address
/// beside the API's (the API never shows one). Its labels still come from the cluster
/// snapshot, so a local pod the snapshot does not hold is left out (nothing can select it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPods {
    pub pods: BTreeMap<PodKey, Vec<IpAddr>>,
    /// A local pod's port on the node's bridge (its host-side veth), when known: what
    /// reaches the pod at an address that is not its own (multicast, broadcast) is judged
    /// by the port it leaves the bridge on. A pod without one gets no bridge rules.
    pub ports: BTreeMap<PodKey, Ifname>,
}

impl LocalPods {
    /// The pods of `cluster` whose `node` is `node`, with the API's addresses (so without
    /// link-local ones) and no ports.
    pub fn on_node(cluster: &Cluster, node: &str) -> LocalPods {
        LocalPods {
            pods: cluster
                .pods
                .iter()
                .filter(|p| p.node.as_deref() == Some(node))
                .map(|p| (p.key(), p.ips.clone()))
                .collect(),
            ports: BTreeMap::new(),
        }
    }
}

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

/// The two tables of a node, each of them named [`TABLE`].
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

impl ChainRef {
    /// The chain of a pod no policy is known for yet: everything denied.
    pub fn closed(dir: Direction) -> ChainRef {
        ChainRef { dir, sig: 0 }
    }

    /// The chain of the policies whose ids are `ids` (in any order).
    pub fn of_policies(dir: Direction, ids: &[&str]) -> ChainRef {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        // 0 names the closed chain; a hash that lands there moves aside.
        let sig = fnv64(&ids.join("\n")).max(1);
        ChainRef { dir, sig }
    }

    pub fn name(self) -> String {
        if self.sig == 0 {
            format!("{}_closed", self.dir)
        } else {
            format!("{}_{:016x}", self.dir, self.sig)
        }
    }

    /// The reference a chain's name stands for, if it is one.
    pub fn parse(name: &str) -> Option<ChainRef> {
        let (d, tail) = name.split_once('_')?;
        let dir = match d {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => return None,
        };
        if tail == "closed" {
            return Some(ChainRef::closed(dir));
        }
        if tail.len() != 16
            || !tail
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return None;
        }
        let sig = u64::from_str_radix(tail, 16).ok().filter(|s| *s != 0)?;
        Some(ChainRef { dir, sig })
    }
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

/// The verdict map from a local pod's address to its chain for `dir`: a pod isolated for
/// `dir` has an element, any other pod none.
pub fn pods_map(dir: Direction, family: Family) -> String {
    format!("{dir}_pods{}", family.digit())
}

pub fn denied_set(dir: Direction, family: Family) -> String {
    format!("denied_{dir}{}", family.digit())
}

pub const FORWARD_CHAIN: &str = "forward";
pub const INPUT_CHAIN: &str = "input";

/// The bridge table's verdict map from a local pod's port to the chain of the policies
/// that isolate it for ingress.
pub const PORTS_MAP: &str = "ingress_ports";

/// The bridge table's set of `<port> . <address>` of every local pod: a frame leaving on
/// a pod's port for one of the pod's own addresses is unicast to it, which the inet
/// table judges.
pub fn own_set(family: Family) -> String {
    format!("own{}", family.digit())
}

/// `<pod address> . <same address>` of every local pod: a pod reaching itself through a
/// Service (bridge hairpin) passes the forward hook and is allowed like any self traffic.
pub fn self_set(family: Family) -> String {
    format!("self{}", family.digit())
}

/// Which end of the packet a rule set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Src,
    Dst,
}

/// Whether every character keeps the name an nft identifier and unambiguous: Kubernetes
/// names are DNS labels/subdomains, so `_` never occurs in them and can separate parts.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// FNV-1a: a stable name for a policy whose readable name does not fit. The bytes go in
/// with `Hasher::write` alone: `Hash::hash` on a `str` appends a terminator byte, which
/// would change every name already applied.
fn fnv64(s: &str) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(s.as_bytes());
    h.finish()
}

/// `in_<ns>_<policy>_<rule>_<src|dst><4|6>` (`eg_` for egress), or with `h<hash>` in place
/// of `<ns>_<policy>` when that would be too long or hold unexpected characters.
fn rule_set_name(
    policy: &Policy,
    dir: Direction,
    index: usize,
    end: End,
    family: Family,
) -> String {
    let d = match dir {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    };
    let e = match end {
        End::Src => "src",
        End::Dst => "dst",
    };
    let tail = format!("{index}_{e}{}", family.digit());
    let readable = format!("{d}_{}_{}_{tail}", policy.namespace, policy.name);
    if plain_name(&policy.namespace) && plain_name(&policy.name) && readable.len() <= MAX_NAME_LEN {
        readable
    } else {
        format!("{d}_h{:016x}_{tail}", fnv64(&policy.id()))
    }
}

fn rule_comment(policy: &Policy, dir: Direction, index: usize) -> Option<String> {
    let c = format!("{} {dir}[{index}]", policy.id());
    (plain_name(&policy.namespace) && plain_name(&policy.name) && c.len() < MAX_COMMENT_LEN)
        .then_some(c)
}

/// The cluster's pods with this node's view of local addresses, indexed by label so that
/// a selector with `matchLabels` looks at the pods carrying one of them only.
struct View<'a> {
    cluster: &'a Cluster,
    /// Each pod, and whether it is local; only a local pod whose addresses the caller
    /// knows better is copied, every other one borrowed from the cluster.
    pods: Vec<(Cow<'a, Pod>, bool)>,
    by_label: HashMap<(&'a str, &'a str), Vec<usize>>,
    ports: &'a BTreeMap<PodKey, Ifname>,
}

impl<'a> View<'a> {
    fn new(cluster: &'a Cluster, local: &'a LocalPods) -> View<'a> {
        let pods = cluster
            .pods
            .iter()
            .map(|p| match local.pods.get(&p.key()) {
                Some(ips) if !ips.is_empty() && *ips != p.ips => {
                    let mut p = p.clone();
                    p.ips = ips.clone();
                    (Cow::Owned(p), true)
                }
                Some(_) => (Cow::Borrowed(p), true),
                None => (Cow::Borrowed(p), false),
            })
            .collect();
        let mut by_label: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, p) in cluster.pods.iter().enumerate() {
            for (k, v) in &p.labels {
                by_label.entry((k, v)).or_default().push(i);
            }
        }
        View {
            cluster,
            pods,
            by_label,
            ports: &local.ports,
        }
    }

    /// The local pods whose port on the bridge is known, with it.
    fn local_ports(&self) -> impl Iterator<Item = (&Pod, Ifname)> {
        self.local()
            .filter_map(|p| self.ports.get(&p.key()).map(|d| (p, *d)))
    }

    /// The pods a selector peer of `policy` matches.
    fn selector_matches(&self, policy: &Policy, peer: &PolicyPeer) -> Vec<&Pod> {
        let PolicyPeer::Pods { pods, .. } = peer else {
            return Vec::new();
        };
        let candidates: Box<dyn Iterator<Item = &Pod>> =
            match pods.as_ref().and_then(|s| s.match_labels.iter().next()) {
                Some((k, v)) => Box::new(
                    self.by_label
                        .get(&(k.as_str(), v.as_str()))
                        .into_iter()
                        .flatten()
                        .filter_map(|i| self.pods.get(*i).map(|(p, _)| &**p)),
                ),
                None => Box::new(self.all()),
            };
        candidates
            .filter(|p| self.cluster.peer_matches_pod(policy, peer, p))
            .collect()
    }

    /// The pods every selector peer of a rule matches, once for both families.
    fn rule_matches(&self, policy: &Policy, rule: &PolicyRule) -> Vec<&Pod> {
        let mut out: Vec<&Pod> = rule
            .peers
            .iter()
            .flat_map(|peer| self.selector_matches(policy, peer))
            .collect();
        // Two peers may match one pod; its addresses count once.
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        out
    }

    fn local(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(|(_, l)| *l).map(|(p, _)| &**p)
    }

    fn all(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().map(|(p, _)| &**p)
    }

    /// The address ranges of `family` a rule's peers cover (`None`: every address).
    fn peer_ranges(
        &self,
        rule: &PolicyRule,
        matched: &[&Pod],
        family: Family,
    ) -> Option<Vec<AddrRange>> {
        if rule.peers.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for peer in &rule.peers {
            match peer {
                PolicyPeer::IpBlock { cidr, except } => {
                    let base = AddrRange::of_net(*cidr);
                    if base.family == family {
                        let ex: Vec<AddrRange> =
                            except.iter().map(|e| AddrRange::of_net(*e)).collect();
                        out.extend(ranges::subtract(base, &ex));
                    }
                }
                PolicyPeer::Pods { .. } => {}
            }
        }
        out.extend(matched.iter().flat_map(|p| addrs(p, family)));
        Some(ranges::merge_overlapping(out))
    }

    /// The pods a rule's peers hold, by selector or by an ipBlock holding their address:
    /// the destinations a named port of an egress rule resolves against.
    fn peer_pods<'v>(
        &'v self,
        rule: &PolicyRule,
        matched: &[&'v Pod],
        family: Family,
    ) -> Vec<&'v Pod> {
        if rule.peers.is_empty() {
            return self.all().collect();
        }
        let mut out = matched.to_vec();
        out.extend(self.all().filter(|p| {
            rule.peers.iter().any(|peer| {
                p.ips
                    .iter()
                    .any(|ip| Family::of(*ip) == family && peer.ip_block_contains(*ip))
            })
        }));
        out
    }
}

/// A set of single addresses: the `family` addresses of `pods`.
fn addr_set<'p>(pods: impl IntoIterator<Item = &'p Pod>, family: Family) -> Set {
    Set {
        kind: SetKind::Addrs(family),
        elements: pods
            .into_iter()
            .flat_map(|p| addrs(p, family))
            .map(|a| Element::Addr(a.lo_ip()))
            .collect(),
    }
}

fn addrs(pod: &Pod, family: Family) -> impl Iterator<Item = AddrRange> + '_ {
    pod.ips
        .iter()
        .filter(move |ip| Family::of(**ip) == family)
        .map(|ip| AddrRange::single(*ip))
}

/// The boxes of a rule's port entries over `addrs`, towards the destination pod `dst`.
/// With `dst` absent only numeric entries count (they hold for any destination); with
/// `named_only` only named entries, which resolve against `dst`.
fn port_boxes(
    rule: &PolicyRule,
    addrs: &[AddrRange],
    dst: Option<&Pod>,
    named_only: bool,
) -> Vec<PortBox> {
    let mut out = Vec::new();
    for pp in &rule.ports {
        let named = matches!(pp.port, PortSel::Named(_));
        if (named && dst.is_none()) || (named_only && !named) {
            continue;
        }
        for (lo, hi) in pp.port.resolve(pp.protocol, dst) {
            out.extend(addrs.iter().map(|a| PortBox {
                addr: *a,
                protocol: pp.protocol,
                lo,
                hi,
            }));
        }
    }
    out
}

fn range_set(rs: Vec<AddrRange>, family: Family) -> Set {
    Set {
        kind: SetKind::Ranges(family),
        elements: rs
            .into_iter()
            .map(|r| Element::Range {
                lo: r.lo_ip(),
                hi: r.hi_ip(),
            })
            .collect(),
    }
}

/// A concatenated interval set of the boxes, made disjoint first.
fn ports_set(bs: Vec<PortBox>, family: Family) -> Set {
    Set {
        kind: SetKind::Ports(family),
        elements: ranges::disjoint_boxes(bs)
            .into_iter()
            .map(|b| Element::Ports {
                lo: b.addr.lo_ip(),
                hi: b.addr.hi_ip(),
                protocol: b.protocol,
                port_lo: b.lo,
                port_hi: b.hi,
            })
            .collect(),
    }
}

/// The `<port> . <protocol> . <ports>` elements of `entries`, overlapping or adjacent
/// port ranges of one port and protocol merged (an interval set refuses overlaps).
fn dev_service_set(mut entries: Vec<(Ifname, Protocol, u16, u16)>) -> Set {
    entries.sort_unstable();
    let mut merged: Vec<(Ifname, Protocol, u16, u16)> = Vec::new();
    for e in entries {
        match merged.last_mut() {
            Some(m) if m.0 == e.0 && m.1 == e.1 && u32::from(e.2) <= u32::from(m.3) + 1 => {
                m.3 = m.3.max(e.3);
            }
            _ => merged.push(e),
        }
    }
    Set {
        kind: SetKind::DevServices,
        elements: merged
            .into_iter()
            .map(|(dev, protocol, port_lo, port_hi)| Element::DevService {
                dev,
                protocol,
                port_lo,
                port_hi,
            })
            .collect(),
    }
}

/// The local pods some policy isolates for `dir`, each with the chain of exactly the
/// policies (by index) that select it.
fn isolated<'v>(
    view: &'v View<'_>,
    cluster: &Cluster,
    ids: &[String],
    dir: Direction,
) -> Vec<(&'v Pod, ChainRef, Vec<usize>)> {
    let mut out = Vec::new();
    for pod in view.local() {
        let mut selecting: Vec<usize> = cluster
            .policies
            .iter()
            .enumerate()
            .filter(|(_, pol)| pol.rules(dir).is_some() && pol.selects(pod))
            .map(|(i, _)| i)
            .collect();
        if selecting.is_empty() {
            continue;
        }
        selecting.sort_by_key(|i| ids.get(*i));
        let names: Vec<&str> = selecting
            .iter()
            .filter_map(|i| ids.get(*i).map(String::as_str))
            .collect();
        out.push((pod, ChainRef::of_policies(dir, &names), selecting));
    }
    out
}

/// The chains of `combos` (a chain and the policies whose rules it holds): each gets the
/// rules of its policies (`rules_of`, by policy index), then `tail`. The closed chain of
/// `dir` is always there, with the tail only.
fn combination_chains(
    table: &mut Table,
    dir: Direction,
    combos: BTreeMap<ChainRef, &[usize]>,
    rules_of: &[Vec<Rule>],
    tail: &[Rule],
) {
    table.chains.insert(
        ChainRef::closed(dir).name(),
        Chain {
            hook: None,
            rules: tail.to_vec(),
        },
    );
    for (to, policies) in combos {
        let mut rules: Vec<Rule> = policies
            .iter()
            .filter_map(|i| rules_of.get(*i))
            .flatten()
            .cloned()
            .collect();
        rules.extend(tail.iter().cloned());
        table.chains.insert(to.name(), Chain { hook: None, rules });
    }
}

impl Ruleset {
    /// The desired tables of the node whose pods are `local`.
    ///
    /// Every policy rule gets its rule and sets whether or not it selects a local pod, so
    /// that pods coming, going or being relabelled change set elements only; a policy
    /// change touches its own sets, and the direction chain only when a rule's shape
    /// (which sets it matches) changes or rules come and go.
    pub fn compute(cluster: &Cluster, local: &LocalPods) -> Ruleset {
        let view = View::new(cluster, local);
        let mut inet = Table::default();
        let mut bridge = Table::default();
        // Bridged between pods of the node (br_netfilter) and sent to the node's gateway
        // address, neighbour discovery passes both hooks; without it no IPv6 packet flows.
        let mut forward = vec![
            Rule::new(vec![Expr::CtEstablished], Verdict::Accept),
            Rule::new(vec![Expr::CtInvalid], Verdict::Drop),
            Rule::new(vec![Expr::NeighbourDiscovery], Verdict::Accept),
        ];
        // The bridge's own frames: neighbour discovery (a solicitation is multicast),
        // then unicast to the receiving pod's own address, which the inet table judges
        // (br_netfilter hands it the same frame); what is left towards an isolated pod
        // (multicast, broadcast, an address that is not the pod's) meets the pod's
        // ingress rules here, by the port it leaves on. ARP is not IP: it passes.
        let mut bridged = vec![Rule::new(vec![Expr::NeighbourDiscovery], Verdict::Accept)];
        for family in Family::ALL {
            inet.sets.insert(
                self_set(family),
                Set {
                    kind: SetKind::Pairs(family),
                    elements: view
                        .local()
                        .flat_map(|p| addrs(p, family))
                        .map(|a| Element::Pair(a.lo_ip(), a.lo_ip()))
                        .collect(),
                },
            );
            forward.push(Rule::new(
                vec![Expr::InSet {
                    field: Field::SaddrDaddr(family),
                    set: self_set(family),
                }],
                Verdict::Accept,
            ));
            bridge.sets.insert(
                own_set(family),
                Set {
                    kind: SetKind::DevAddrs(family),
                    elements: view
                        .local_ports()
                        .flat_map(|(p, dev)| {
                            addrs(p, family).map(move |a| Element::DevAddr(dev, a.lo_ip()))
                        })
                        .collect(),
                },
            );
            bridged.push(Rule::new(
                vec![Expr::InSet {
                    field: Field::OifDaddr(family),
                    set: own_set(family),
                }],
                Verdict::Accept,
            ));
        }
        bridged.push(Rule {
            exprs: vec![
                Expr::L3(None),
                Expr::VerdictMap {
                    field: Field::Oif,
                    map: PORTS_MAP.into(),
                },
            ],
            verdict: None,
            comment: None,
        });
        // Traffic from a local pod to this node's own addresses (a host-network endpoint,
        // a Service DNATed to one) takes the input hook, not forward: same egress check.
        let mut input = vec![
            Rule::new(vec![Expr::CtEstablished], Verdict::Accept),
            Rule::new(vec![Expr::NeighbourDiscovery], Verdict::Accept),
        ];
        let ids: Vec<String> = cluster.policies.iter().map(Policy::id).collect();
        for dir in [Direction::Egress, Direction::Ingress] {
            // Each policy's rules for `dir` in both families, with their sets whether or
            // not the policy selects a local pod; for ingress the same rules for the
            // bridge, by port.
            let mut rules_of: Vec<Vec<Rule>> = Vec::with_capacity(cluster.policies.len());
            let mut group_rules_of: Vec<Vec<Rule>> = Vec::new();
            for policy in &cluster.policies {
                let mut rules = Vec::new();
                let mut group_rules = Vec::new();
                for rule in policy.rules(dir).unwrap_or_default() {
                    let matched = view.rule_matches(policy, rule);
                    for family in Family::ALL {
                        let peers = view.peer_ranges(rule, &matched, family);
                        if dir == Direction::Ingress {
                            group_rules.push(bridge.group_rule(
                                &view,
                                policy,
                                rule,
                                peers.clone(),
                                family,
                            ));
                        }
                        rules.push(
                            inet.policy_rule(&view, policy, dir, rule, &matched, peers, family),
                        );
                    }
                }
                rules_of.push(rules);
                group_rules_of.push(group_rules);
            }
            let mut tail = Vec::new();
            for family in Family::ALL {
                let field = match dir {
                    Direction::Ingress => Field::Daddr(family),
                    Direction::Egress => Field::Saddr(family),
                };
                inet.sets.insert(
                    denied_set(dir, family),
                    Set {
                        kind: SetKind::Counters(family),
                        elements: BTreeSet::new(),
                    },
                );
                tail.push(Rule {
                    exprs: vec![
                        Expr::Count {
                            field,
                            set: denied_set(dir, family),
                        },
                        Expr::Limit(DENY_LOG_RATE),
                        Expr::Log {
                            prefix: format!("ferry-deny-{dir} "),
                            group: DENY_LOG_GROUP,
                        },
                    ],
                    verdict: None,
                    comment: None,
                });
            }
            // Its own rule: a limit that is over its rate ends the rule above, and the
            // packet must be dropped all the same.
            tail.push(Rule::new(vec![Expr::Counter], Verdict::Drop));
            // One chain per combination of policies that selects a local pod, so that a
            // new connection meets the rules of its own pod's policies only, whatever the
            // number of policies in the cluster.
            let isolated = isolated(&view, cluster, &ids, dir);
            let mut maps: BTreeMap<Family, BTreeSet<Element>> = BTreeMap::new();
            let mut combos: BTreeMap<ChainRef, &[usize]> = BTreeMap::new();
            for (pod, to, selecting) in &isolated {
                for ip in &pod.ips {
                    maps.entry(Family::of(*ip))
                        .or_default()
                        .insert(Element::Jump { addr: *ip, to: *to });
                }
                combos.entry(*to).or_insert(selecting);
            }
            combination_chains(&mut inet, dir, combos, &rules_of, &tail);
            for family in Family::ALL {
                let field = match dir {
                    Direction::Ingress => Field::Daddr(family),
                    Direction::Egress => Field::Saddr(family),
                };
                inet.sets.insert(
                    pods_map(dir, family),
                    Set {
                        kind: SetKind::Verdicts(family),
                        elements: maps.remove(&family).unwrap_or_default(),
                    },
                );
                let dispatch = Rule {
                    exprs: vec![Expr::VerdictMap {
                        field,
                        map: pods_map(dir, family),
                    }],
                    verdict: None,
                    comment: None,
                };
                if dir == Direction::Egress {
                    input.push(dispatch.clone());
                }
                forward.push(dispatch);
            }
            if dir == Direction::Ingress {
                // The same combinations for the bridge, for the pods whose port is known.
                // Group traffic is not tracked as a connection: every frame is judged,
                // and counted where it is dropped (not logged: its destination names no
                // pod).
                let mut jumps = BTreeSet::new();
                let mut combos: BTreeMap<ChainRef, &[usize]> = BTreeMap::new();
                for (pod, to, selecting) in &isolated {
                    if let Some(dev) = view.ports.get(&pod.key()) {
                        jumps.insert(Element::DevJump { dev: *dev, to: *to });
                        combos.entry(*to).or_insert(selecting);
                    }
                }
                let tail = [Rule::new(vec![Expr::Counter], Verdict::Drop)];
                combination_chains(&mut bridge, dir, combos, &group_rules_of, &tail);
                bridge.sets.insert(
                    PORTS_MAP.into(),
                    Set {
                        kind: SetKind::DevVerdicts,
                        elements: jumps,
                    },
                );
            }
        }
        inet.chains.insert(
            FORWARD_CHAIN.into(),
            Chain {
                hook: Some(Hook::Forward),
                rules: forward,
            },
        );
        inet.chains.insert(
            INPUT_CHAIN.into(),
            Chain {
                hook: Some(Hook::Input),
                rules: input,
            },
        );
        bridge.chains.insert(
            FORWARD_CHAIN.into(),
            Chain {
                hook: Some(Hook::Forward),
                rules: bridged,
            },
        );
        Ruleset { inet, bridge }
    }
}

impl Table {
    /// The sets and the rule of one policy rule in one family. Ingress: the destination
    /// set holds the selected local pods (with their resolved ports when the rule has
    /// ports) and the source set the peers. Egress: the source set holds the selected
    /// local pods and the destination set the peers (with the ports, resolved against each
    /// destination pod). `peers` are the rule's peers of `family` (`None`: every address).
    #[allow(clippy::too_many_arguments)]
    fn policy_rule(
        &mut self,
        view: &View<'_>,
        policy: &Policy,
        dir: Direction,
        rule: &PolicyRule,
        matched: &[&Pod],
        peers: Option<Vec<AddrRange>>,
        family: Family,
    ) -> Rule {
        let name = |end| rule_set_name(policy, dir, rule.index, end, family);
        let selected: Vec<&Pod> = view.local().filter(|p| policy.selects(p)).collect();
        let mut exprs = Vec::new();
        let (src, dst) = match dir {
            Direction::Ingress => {
                let src = peers.map(|ps| range_set(ps, family));
                let dst = if rule.ports.is_empty() {
                    addr_set(selected.iter().copied(), family)
                } else {
                    let boxes = selected
                        .iter()
                        .flat_map(|p| {
                            port_boxes(rule, &addrs(p, family).collect::<Vec<_>>(), Some(p), false)
                        })
                        .collect();
                    ports_set(boxes, family)
                };
                (src, Some(dst))
            }
            Direction::Egress => {
                let src = addr_set(selected.iter().copied(), family);
                let dst = if rule.ports.is_empty() {
                    peers.map(|ps| range_set(ps, family))
                } else {
                    let everywhere = peers.unwrap_or_else(|| vec![AddrRange::all(family)]);
                    // Numeric entries hold for every peer address; named ones for the peer
                    // pods that have the name.
                    let mut boxes = port_boxes(rule, &everywhere, None, false);
                    if rule
                        .ports
                        .iter()
                        .any(|pp| matches!(pp.port, PortSel::Named(_)))
                    {
                        for p in view.peer_pods(rule, matched, family) {
                            let own: Vec<AddrRange> = addrs(p, family).collect();
                            boxes.extend(port_boxes(rule, &own, Some(p), true));
                        }
                    }
                    Some(ports_set(boxes, family))
                };
                (Some(src), dst)
            }
        };
        for (end, set) in [(End::Src, src), (End::Dst, dst)] {
            let Some(set) = set else { continue };
            let field = match (end, set.kind) {
                (End::Src, _) => Field::Saddr(family),
                (End::Dst, SetKind::Ports(_)) => Field::DaddrPort(family),
                (End::Dst, _) => Field::Daddr(family),
            };
            exprs.push(Expr::InSet {
                field,
                set: name(end),
            });
            self.sets.insert(name(end), set);
        }
        exprs.push(Expr::Counter);
        Rule {
            exprs,
            verdict: Some(match dir {
                // Back to `forward`, which goes on to the ingress check.
                Direction::Egress => Verdict::Return,
                Direction::Ingress => Verdict::Accept,
            }),
            comment: rule_comment(policy, dir, rule.index),
        }
    }

    /// An ingress rule of a policy for the bridge table, in one family: the source set
    /// holds the rule's peers (as the inet table's does), the destination set the ports of
    /// the selected local pods on the bridge (with their resolved ports when the rule has
    /// ports). The destination address is not looked at: it is a group's, or not the
    /// pod's, which is why the frame is here.
    fn group_rule(
        &mut self,
        view: &View<'_>,
        policy: &Policy,
        rule: &PolicyRule,
        peers: Option<Vec<AddrRange>>,
        family: Family,
    ) -> Rule {
        let name = |end| rule_set_name(policy, Direction::Ingress, rule.index, end, family);
        let selected: Vec<(&Pod, Ifname)> = view
            .local_ports()
            .filter(|(p, _)| policy.selects(p))
            .collect();
        let (dst, field) = if rule.ports.is_empty() {
            let devs = selected.iter().map(|(_, d)| Element::Dev(*d)).collect();
            (
                Set {
                    kind: SetKind::Devs,
                    elements: devs,
                },
                Field::Oif,
            )
        } else {
            let mut entries = Vec::new();
            for (p, dev) in &selected {
                for pp in &rule.ports {
                    for (lo, hi) in pp.port.resolve(pp.protocol, Some(p)) {
                        entries.push((*dev, pp.protocol, lo, hi));
                    }
                }
            }
            (dev_service_set(entries), Field::OifService)
        };
        let mut exprs = Vec::new();
        match peers {
            Some(ps) => {
                exprs.push(Expr::InSet {
                    field: Field::Saddr(family),
                    set: name(End::Src),
                });
                self.sets.insert(name(End::Src), range_set(ps, family));
            }
            // Nothing else in the rule says which family it is for.
            None => exprs.push(Expr::L3(Some(family))),
        }
        exprs.push(Expr::InSet {
            field,
            set: name(End::Dst),
        });
        self.sets.insert(name(End::Dst), dst);
        exprs.push(Expr::Counter);
        Rule {
            exprs,
            verdict: Some(Verdict::Accept),
            comment: rule_comment(policy, Direction::Ingress, rule.index),
        }
    }
}

impl Rule {
    fn new(exprs: Vec<Expr>, verdict: Verdict) -> Rule {
        Rule {
            exprs,
            verdict: Some(verdict),
            comment: None,
        }
    }

    /// The sets the rule refers to.
    pub fn sets(&self) -> impl Iterator<Item = &str> {
        self.exprs.iter().filter_map(|e| match e {
            Expr::InSet { set, .. } | Expr::Count { set, .. } => Some(set.as_str()),
            Expr::VerdictMap { map, .. } => Some(map.as_str()),
            _ => None,
        })
    }

    /// The rule in nft syntax (what follows `add rule <family> ferry_policy <chain>`).
    pub fn render(&self) -> String {
        let mut parts: Vec<String> = self.exprs.iter().map(Expr::render).collect();
        if let Some(v) = &self.verdict {
            parts.push(match v {
                Verdict::Accept => "accept".into(),
                Verdict::Drop => "drop".into(),
                Verdict::Return => "return".into(),
                Verdict::Jump(c) => format!("jump {c}"),
            });
        }
        if let Some(c) = &self.comment {
            parts.push(format!("comment \"{c}\""));
        }
        parts.join(" ")
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

    pub fn render(self) -> &'static str {
        match self {
            Field::Saddr(Family::V4) => "ip saddr",
            Field::Saddr(Family::V6) => "ip6 saddr",
            Field::Daddr(Family::V4) => "ip daddr",
            Field::Daddr(Family::V6) => "ip6 daddr",
            Field::DaddrPort(Family::V4) => "ip daddr . meta l4proto . th dport",
            Field::DaddrPort(Family::V6) => "ip6 daddr . meta l4proto . th dport",
            Field::SaddrDaddr(Family::V4) => "ip saddr . ip daddr",
            Field::SaddrDaddr(Family::V6) => "ip6 saddr . ip6 daddr",
            Field::Oif => "oifname",
            Field::OifService => "oifname . meta l4proto . th dport",
            Field::OifDaddr(Family::V4) => "oifname . ip daddr",
            Field::OifDaddr(Family::V6) => "oifname . ip6 daddr",
        }
    }
}

impl Expr {
    pub fn render(&self) -> String {
        match self {
            Expr::CtEstablished => "ct state established,related".into(),
            Expr::CtInvalid => "ct state invalid".into(),
            Expr::NeighbourDiscovery => {
                "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }".into()
            }
            Expr::L3(Some(Family::V4)) => "meta protocol ip".into(),
            Expr::L3(Some(Family::V6)) => "meta protocol ip6".into(),
            Expr::L3(None) => "meta protocol { ip, ip6 }".into(),
            Expr::InSet { field, set } => format!("{} @{set}", field.render()),
            Expr::VerdictMap { field, map } => format!("{} vmap @{map}", field.render()),
            Expr::Count { field, set } => format!("update @{set} {{ {} }}", field.render()),
            Expr::Limit(n) => format!("limit rate {n}/second"),
            Expr::Log { prefix, group } => format!("log prefix \"{prefix}\" group {group}"),
            Expr::Counter => "counter".into(),
        }
    }
}

fn render_addr_range(lo: IpAddr, hi: IpAddr) -> String {
    if lo == hi {
        return lo.to_string();
    }
    let r = AddrRange {
        family: Family::of(lo),
        lo: ranges::to_int(lo),
        hi: ranges::to_int(hi),
    };
    match r.prefix_len() {
        Some(len) => format!("{lo}/{len}"),
        None => format!("{lo}-{hi}"),
    }
}

fn render_ports(lo: u16, hi: u16) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// What a set lookup takes from a packet: its addresses, its protocol and destination
/// port, and (bridged between two pods) the port it leaves the bridge on.
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub oif: Option<Ifname>,
}

impl Element {
    /// Whether the element holds what `field` takes from the packet `p`, as the kernel's
    /// lookup does.
    pub fn matches(&self, field: Field, p: &Lookup) -> bool {
        let within = |lo: IpAddr, hi: IpAddr, ip: IpAddr| {
            lo.is_ipv4() == ip.is_ipv4()
                && (ranges::to_int(lo)..=ranges::to_int(hi)).contains(&ranges::to_int(ip))
        };
        let addr = match field {
            Field::Saddr(_) | Field::SaddrDaddr(_) => p.src,
            _ => p.dst,
        };
        let service = |protocol: Protocol, lo: u16, hi: u16| {
            protocol == p.protocol && (lo..=hi).contains(&p.port)
        };
        match (*self, field) {
            (Element::Addr(ip), Field::Saddr(_) | Field::Daddr(_)) => ip == addr,
            (Element::Range { lo, hi }, Field::Saddr(_) | Field::Daddr(_)) => within(lo, hi, addr),
            (Element::Pair(a, b), Field::SaddrDaddr(_)) => a == p.src && b == p.dst,
            (
                Element::Ports {
                    lo,
                    hi,
                    protocol,
                    port_lo,
                    port_hi,
                },
                Field::DaddrPort(_),
            ) => within(lo, hi, p.dst) && service(protocol, port_lo, port_hi),
            (Element::Dev(d), Field::Oif) => p.oif == Some(d),
            (
                Element::DevService {
                    dev,
                    protocol,
                    port_lo,
                    port_hi,
                },
                Field::OifService,
            ) => p.oif == Some(dev) && service(protocol, port_lo, port_hi),
            (Element::DevAddr(d, ip), Field::OifDaddr(_)) => p.oif == Some(d) && ip == p.dst,
            _ => false,
        }
    }

    /// The element as `delete element` names it: a map's key without its value.
    pub fn render_key(&self) -> String {
        match *self {
            Element::Jump { addr, .. } => addr.to_string(),
            Element::DevJump { dev, .. } => format!("\"{dev}\""),
            _ => self.render(),
        }
    }

    pub fn render(&self) -> String {
        match *self {
            Element::Addr(ip) => ip.to_string(),
            Element::Pair(a, b) => format!("{a} . {b}"),
            Element::Jump { addr, to } => format!("{addr} : jump {}", to.name()),
            Element::Range { lo, hi } => render_addr_range(lo, hi),
            Element::Ports {
                lo,
                hi,
                protocol,
                port_lo,
                port_hi,
            } => format!(
                "{} . {} . {}",
                render_addr_range(lo, hi),
                protocol.nft(),
                render_ports(port_lo, port_hi)
            ),
            Element::Dev(d) => format!("\"{d}\""),
            Element::DevService {
                dev,
                protocol,
                port_lo,
                port_hi,
            } => format!(
                "\"{dev}\" . {} . {}",
                protocol.nft(),
                render_ports(port_lo, port_hi)
            ),
            Element::DevAddr(d, ip) => format!("\"{d}\" . {ip}"),
            Element::DevJump { dev, to } => format!("\"{dev}\" : jump {}", to.name()),
        }
    }
}

impl SetKind {
    /// The body of the set's declaration, between its braces.
    pub fn render(self) -> String {
        let addr = |f: Family| match f {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        };
        match self {
            SetKind::Addrs(f) => format!("type {};", addr(f)),
            SetKind::Verdicts(f) => format!("type {} : verdict;", addr(f)),
            SetKind::Pairs(f) => format!("type {} . {};", addr(f), addr(f)),
            SetKind::Ranges(f) => format!("type {}; flags interval;", addr(f)),
            SetKind::Ports(f) => format!(
                "type {} . inet_proto . inet_service; flags interval;",
                addr(f)
            ),
            // A timeout lets the elements of pods that are gone expire; a denied pod's
            // element is refreshed by every denial.
            SetKind::Counters(f) => format!(
                "type {}; size 65535; flags dynamic,timeout; timeout 1h; counter;",
                addr(f)
            ),
            SetKind::Devs => "type ifname;".into(),
            SetKind::DevServices => {
                "type ifname . inet_proto . inet_service; flags interval;".into()
            }
            SetKind::DevAddrs(f) => format!("type ifname . {};", addr(f)),
            SetKind::DevVerdicts => "type ifname : verdict;".into(),
        }
    }
}

/// Joins rendered elements into nft's `{ a, b }` lists, a bounded number per line so that
/// one command never grows past what nft's parser handles well.
pub(crate) fn element_lists<'a>(elements: impl Iterator<Item = &'a Element>) -> Vec<String> {
    lists(elements.map(Element::render).collect())
}

/// The same, as `delete element` takes them: keys only.
pub(crate) fn key_lists<'a>(elements: impl Iterator<Item = &'a Element>) -> Vec<String> {
    lists(elements.map(Element::render_key).collect())
}

fn lists(all: Vec<String>) -> Vec<String> {
    all.chunks(512)
        .map(|c| format!("{{ {} }}", c.join(", ")))
        .collect()
}

impl Ruleset {
    /// Both tables as one script that replaces whatever tables are there, in one
    /// transaction: for each, `add table` (so that the delete cannot fail), `delete
    /// table`, create.
    pub fn render_replace(&self) -> String {
        TableFamily::ALL
            .iter()
            .map(|f| self.table(*f).render_replace(*f))
            .collect()
    }
}

impl Table {
    /// The table as a script that replaces whatever table of `family` is there.
    pub fn render_replace(&self, family: TableFamily) -> String {
        let t = format!("{} {TABLE}", family.name());
        let mut s = String::new();
        let _ = writeln!(s, "add table {t}");
        let _ = writeln!(s, "delete table {t}");
        let _ = writeln!(s, "add table {t}");
        // Every chain exists before a rule or a verdict map's element jumps to it.
        for (name, chain) in &self.chains {
            s.push_str(&chain.render_add(family, name));
        }
        for (name, set) in &self.sets {
            s.push_str(&set.render_add(family, name));
        }
        for (name, chain) in &self.chains {
            s.push_str(&chain.render_rules(family, name));
        }
        s
    }
}

impl Set {
    /// `set` or `map`, as nft's commands name the object.
    pub(crate) fn noun(&self) -> &'static str {
        match self.kind {
            SetKind::Verdicts(_) | SetKind::DevVerdicts => "map",
            _ => "set",
        }
    }

    pub(crate) fn render_add(&self, family: TableFamily, name: &str) -> String {
        let t = format!("{} {TABLE}", family.name());
        let mut s = format!(
            "add {} {t} {name} {{ {} }}\n",
            self.noun(),
            self.kind.render()
        );
        if !matches!(self.kind, SetKind::Counters(_)) {
            for list in element_lists(self.elements.iter()) {
                let _ = writeln!(s, "add element {t} {name} {list}");
            }
        }
        s
    }
}

impl Chain {
    pub(crate) fn render_add(&self, family: TableFamily, name: &str) -> String {
        let t = format!("{} {TABLE}", family.name());
        match self.hook {
            Some(h) => format!(
                "add chain {t} {name} {{ type filter hook {} priority filter; policy accept; }}\n",
                h.name()
            ),
            None => format!("add chain {t} {name}\n"),
        }
    }

    pub(crate) fn render_rules(&self, family: TableFamily, name: &str) -> String {
        let t = format!("{} {TABLE}", family.name());
        self.rules
            .iter()
            .map(|r| format!("add rule {t} {name} {}\n", r.render()))
            .collect()
    }
}

#[cfg(test)]
mod fnv_pin {
    use super::*;

    /// Chain and set names are derived from this hash and are read back from the kernel
    /// after a restart: a different hash would make every applied name unknown.
    #[test]
    fn names_hash_as_before() {
        for (s, h) in [
            ("", 0xcbf2_9ce4_8422_2325),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("default/deny-all", 0xe40e_e887_8137_04f7),
            ("ns-1/p\nns-2/q", 0x284e_645d_8e42_613b),
        ] {
            assert_eq!(fnv64(s), h, "{s:?}");
        }
        let chain = ChainRef::of_policies(Direction::Ingress, &["ns-2/q", "ns-1/p"]);
        assert_eq!(chain.name(), "ingress_284e645d8e42613b");
    }
}
