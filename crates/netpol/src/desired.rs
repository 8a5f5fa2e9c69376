//! The node's desired nftables state, as data: [`Ruleset::compute`].

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::Protocol;
use crate::model::{Cluster, Direction, Pod, PodKey, Policy, PolicyPeer, PolicyRule, PortSel};
use crate::ranges::{self, AddrRange, Family, PortBox};

/// The table every node's policy state lives in.
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
    /// Closes `ips` both ways: each jumps to the `closed` chains, which allow nothing.
    /// For pods the plugin has announced but whose labels (or namespace's policies) are
    /// not known yet, so that no connection reaches them before their policies do.
    pub fn close(&mut self, ips: &[IpAddr]) {
        for ip in ips {
            for dir in [Direction::Ingress, Direction::Egress] {
                if let Some(map) = self.sets.get_mut(&pods_map(dir, Family::of(*ip))) {
                    map.elements
                        .retain(|e| !matches!(e, Element::Jump { addr, .. } if addr == ip));
                    map.elements.insert(Element::Jump {
                        addr: *ip,
                        to: ChainRef::closed(dir),
                    });
                }
            }
        }
    }
}

/// The pods of this node with their addresses. The caller may know a local pod's addresses
/// before the API does; these win over the API's. Its labels still come from the cluster
/// snapshot, so a local pod the snapshot does not hold is left out (nothing can select it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPods {
    pub pods: BTreeMap<PodKey, Vec<IpAddr>>,
}

impl LocalPods {
    /// The pods of `cluster` whose `node` is `node`, with the API's addresses.
    pub fn on_node(cluster: &Cluster, node: &str) -> LocalPods {
        LocalPods {
            pods: cluster
                .pods
                .iter()
                .filter(|p| p.node.as_deref() == Some(node))
                .map(|p| (p.key(), p.ips.clone()))
                .collect(),
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

/// The whole `inet ferry_policy` table of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
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

/// FNV-1a: a stable name for a policy whose readable name does not fit.
fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
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
}

impl<'a> View<'a> {
    fn new(cluster: &'a Cluster, local: &LocalPods) -> View<'a> {
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
        }
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

impl Ruleset {
    /// The desired table of the node whose pods are `local`.
    ///
    /// Every policy rule gets its rule and sets whether or not it selects a local pod, so
    /// that pods coming, going or being relabelled change set elements only; a policy
    /// change touches its own sets, and the direction chain only when a rule's shape
    /// (which sets it matches) changes or rules come and go.
    pub fn compute(cluster: &Cluster, local: &LocalPods) -> Ruleset {
        let view = View::new(cluster, local);
        let mut rs = Ruleset::default();
        // Bridged between pods of the node (br_netfilter) and sent to the node's gateway
        // address, neighbour discovery passes both hooks; without it no IPv6 packet flows.
        let mut forward = vec![
            Rule::new(vec![Expr::CtEstablished], Verdict::Accept),
            Rule::new(vec![Expr::CtInvalid], Verdict::Drop),
            Rule::new(vec![Expr::NeighbourDiscovery], Verdict::Accept),
        ];
        for family in Family::ALL {
            rs.sets.insert(
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
        }
        // Traffic from a local pod to this node's own addresses (a host-network endpoint,
        // a Service DNATed to one) takes the input hook, not forward: same egress check.
        let mut input = vec![
            Rule::new(vec![Expr::CtEstablished], Verdict::Accept),
            Rule::new(vec![Expr::NeighbourDiscovery], Verdict::Accept),
        ];
        let ids: Vec<String> = cluster.policies.iter().map(Policy::id).collect();
        for dir in [Direction::Egress, Direction::Ingress] {
            // Each policy's rules for `dir` in both families, with their sets whether or
            // not the policy selects a local pod.
            let mut rules_of: Vec<Vec<Rule>> = Vec::with_capacity(cluster.policies.len());
            for policy in &cluster.policies {
                let mut rules = Vec::new();
                for rule in policy.rules(dir).unwrap_or_default() {
                    let matched = view.rule_matches(policy, rule);
                    for family in Family::ALL {
                        rules.push(rs.policy_rule(&view, policy, dir, rule, &matched, family));
                    }
                }
                rules_of.push(rules);
            }
            let mut tail = Vec::new();
            for family in Family::ALL {
                let field = match dir {
                    Direction::Ingress => Field::Daddr(family),
                    Direction::Egress => Field::Saddr(family),
                };
                rs.sets.insert(
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
            let mut chains: BTreeMap<ChainRef, Vec<usize>> = BTreeMap::new();
            chains.insert(ChainRef::closed(dir), Vec::new());
            let mut maps: BTreeMap<Family, BTreeSet<Element>> = BTreeMap::new();
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
                let to = ChainRef::of_policies(dir, &names);
                for ip in &pod.ips {
                    maps.entry(Family::of(*ip))
                        .or_default()
                        .insert(Element::Jump { addr: *ip, to });
                }
                chains.entry(to).or_insert(selecting);
            }
            for (to, policies) in chains {
                let mut rules: Vec<Rule> = policies
                    .iter()
                    .filter_map(|i| rules_of.get(*i))
                    .flatten()
                    .cloned()
                    .collect();
                rules.extend(tail.iter().cloned());
                rs.chains.insert(to.name(), Chain { hook: None, rules });
            }
            for family in Family::ALL {
                let field = match dir {
                    Direction::Ingress => Field::Daddr(family),
                    Direction::Egress => Field::Saddr(family),
                };
                rs.sets.insert(
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
        }
        rs.chains.insert(
            FORWARD_CHAIN.into(),
            Chain {
                hook: Some(Hook::Forward),
                rules: forward,
            },
        );
        rs.chains.insert(
            INPUT_CHAIN.into(),
            Chain {
                hook: Some(Hook::Input),
                rules: input,
            },
        );
        rs
    }

    /// The sets and the rule of one policy rule in one family. Ingress: the destination
    /// set holds the selected local pods (with their resolved ports when the rule has
    /// ports) and the source set the peers. Egress: the source set holds the selected
    /// local pods and the destination set the peers (with the ports, resolved against each
    /// destination pod).
    fn policy_rule(
        &mut self,
        view: &View<'_>,
        policy: &Policy,
        dir: Direction,
        rule: &PolicyRule,
        matched: &[&Pod],
        family: Family,
    ) -> Rule {
        let name = |end| rule_set_name(policy, dir, rule.index, end, family);
        let selected: Vec<&Pod> = view.local().filter(|p| policy.selects(p)).collect();
        let peers = view.peer_ranges(rule, matched, family);
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

    /// The rule in nft syntax (what follows `add rule inet ferry_policy <chain>`).
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
    pub fn family(self) -> Family {
        match self {
            Field::Saddr(f) | Field::Daddr(f) | Field::DaddrPort(f) | Field::SaddrDaddr(f) => f,
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

impl Element {
    /// Whether the element holds what `field` takes from a packet (`src`, `dst`, the
    /// protocol and destination port), as the kernel's lookup does.
    pub fn matches(
        &self,
        field: Field,
        src: IpAddr,
        dst: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        let within = |lo: IpAddr, hi: IpAddr, ip: IpAddr| {
            lo.is_ipv4() == ip.is_ipv4()
                && (ranges::to_int(lo)..=ranges::to_int(hi)).contains(&ranges::to_int(ip))
        };
        let addr = match field {
            Field::Saddr(_) | Field::SaddrDaddr(_) => src,
            Field::Daddr(_) | Field::DaddrPort(_) => dst,
        };
        match (*self, field) {
            (Element::Addr(ip), Field::Saddr(_) | Field::Daddr(_)) => ip == addr,
            (Element::Range { lo, hi }, Field::Saddr(_) | Field::Daddr(_)) => within(lo, hi, addr),
            (Element::Pair(a, b), Field::SaddrDaddr(_)) => a == src && b == dst,
            (
                Element::Ports {
                    lo,
                    hi,
                    protocol: p,
                    port_lo,
                    port_hi,
                },
                Field::DaddrPort(_),
            ) => within(lo, hi, dst) && p == protocol && (port_lo..=port_hi).contains(&port),
            _ => false,
        }
    }

    /// The element as `delete element` names it: a map's key without its value.
    pub fn render_key(&self) -> String {
        match *self {
            Element::Jump { addr, .. } => addr.to_string(),
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
            } => {
                let ports = if port_lo == port_hi {
                    port_lo.to_string()
                } else {
                    format!("{port_lo}-{port_hi}")
                };
                format!(
                    "{} . {} . {ports}",
                    render_addr_range(lo, hi),
                    protocol.nft()
                )
            }
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
    /// The whole table as one script that replaces whatever table is there, in one
    /// transaction: `add table` (so that the delete cannot fail), `delete table`, create.
    pub fn render_replace(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {TABLE}");
        let _ = writeln!(s, "delete table inet {TABLE}");
        let _ = writeln!(s, "add table inet {TABLE}");
        // Every chain exists before a rule or a verdict map's element jumps to it.
        for (name, chain) in &self.chains {
            s.push_str(&chain.render_add(name));
        }
        for (name, set) in &self.sets {
            s.push_str(&set.render_add(name));
        }
        for (name, chain) in &self.chains {
            s.push_str(&chain.render_rules(name));
        }
        s
    }
}

impl Set {
    /// `set` or `map`, as nft's commands name the object.
    pub(crate) fn noun(&self) -> &'static str {
        match self.kind {
            SetKind::Verdicts(_) => "map",
            _ => "set",
        }
    }

    pub(crate) fn render_add(&self, name: &str) -> String {
        let mut s = format!(
            "add {} inet {TABLE} {name} {{ {} }}\n",
            self.noun(),
            self.kind.render()
        );
        if !matches!(self.kind, SetKind::Counters(_)) {
            for list in element_lists(self.elements.iter()) {
                let _ = writeln!(s, "add element inet {TABLE} {name} {list}");
            }
        }
        s
    }
}

impl Chain {
    pub(crate) fn render_add(&self, name: &str) -> String {
        match self.hook {
            Some(h) => format!(
                "add chain inet {TABLE} {name} {{ type filter hook {} priority filter; policy accept; }}\n",
                h.name()
            ),
            None => format!("add chain inet {TABLE} {name}\n"),
        }
    }

    pub(crate) fn render_rules(&self, name: &str) -> String {
        self.rules
            .iter()
            .map(|r| format!("add rule inet {TABLE} {name} {}\n", r.render()))
            .collect()
    }
}
