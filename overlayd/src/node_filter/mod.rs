//! ferry's own nftables table, `table inet ferry`: what may reach this node's VXLAN port,
//! and what a pod may never reach (the node-only services of `node_only`).
//!
//! Receiving, chain `vxlan-in` (hook prerouting, priority raw: before conntrack, so a
//! stranger's packets cost no conntrack entry, and before any translation). VXLAN to this
//! node is dropped when
//! - it is to another address of this node than its underlay address: the kernel's VXLAN
//!   socket listens on every address, the other nodes send only to that one, and the
//!   sending nodes' cut (below) knows the nodes by that one address;
//! - it comes from an address that is no node's (set `nodes`, the leases' public IPs): the
//!   VNI, the port and the VTEP MACs are no secret;
//! - its inner frame is neither IPv4 nor IPv6: the overlay carries nothing else (its
//!   neighbour entries are static), and a VLAN tag would move the inner header away from
//!   the offsets the next check reads;
//! - its inner source is not in a pod subnet of the node it comes from (sets `inner4`,
//!   `inner6`: node address . first-last address of a subnet). A node's own traffic into
//!   the overlay leaves from its VXLAN device, whose address is in its subnet, so only a
//!   forger sends anything else. nftables 1.0.6 names no header inside VXLAN, but raw
//!   payload from the UDP header works: 8 bytes of UDP, 8 of VXLAN, then the inner
//!   Ethernet header (its type at byte 28), the inner IPv4 source at byte 42 (bit 336),
//!   the inner IPv6 source at byte 38 (bit 304). The subnets are therefore integers. A
//!   frame too short for a load matches no rule (nft reads nothing past the packet's
//!   end), and is too short for the kernel to take as IPv4 or IPv6 after decapsulation.
//!
//! Sending, chains `pods-forward` and `pods-input` (hooks forward and input, after the
//! translations of prerouting and before the masquerade of postrouting): a packet from a
//! pod (a cluster CIDR source: the source guard makes a pod's packets carry its own
//! address) to a node-only service is dropped. Why the masquerade makes this necessary:
//! `node_only`.
//!
//! One table of family `inet`: pods and etcd endpoints may be of either family, whatever
//! the underlay's is, and one table keeps every rule of the node's own ports in one
//! transaction. A drop in any table is final, so a table of our own works (unlike for the
//! accepts of `rules`). The sets follow the leases by `add element`/`delete element`, one
//! small `nft -f -` transaction per change; the rules are fixed for the daemon's life and
//! written only when the table is missing or differs. Every rule counts what it drops; the
//! counters are read on every resync and become metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use crate::node_only::{NodeOnly, Service};

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "ferry";
pub const NODES: &str = "nodes";
pub const INNER4: &str = "inner4";
pub const INNER6: &str = "inner6";

/// ferry's tables before `inet ferry`, one per underlay family: an upgraded node's must
/// go, or its `nodes` set, no longer followed, would drop VXLAN from every new node.
pub const LEGACY: [(&str, &str); 2] = [("ip", TABLE), ("ip6", TABLE)];

/// A packet family (the underlay's, a cluster CIDR's): its protocol name in a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The nftables family of a table, and the header's protocol name in a rule.
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn set_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
}

/// The inner frame's type, and where its source address is, counted in bits from the
/// start of the UDP header.
const INNER_TYPE: (u32, u32) = (224, 16);
const ETH_IPV4: u64 = 0x0800;
const ETH_IPV6: u64 = 0x86dd;
const INNER4_SRC: (u32, u32) = (336, 32);
const INNER6_SRC: (u32, u32) = (304, 128);

/// One base chain of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chain {
    name: &'static str,
    hook: &'static str,
    priority: &'static str,
    /// The priority's number, as `nft -j` lists it.
    prio: i64,
}

const VXLAN_IN: Chain = Chain {
    name: "vxlan-in",
    hook: "prerouting",
    priority: "raw",
    prio: -300,
};
const PODS_FORWARD: Chain = Chain {
    name: "pods-forward",
    hook: "forward",
    priority: "filter",
    prio: 0,
};
const PODS_INPUT: Chain = Chain {
    name: "pods-input",
    hook: "input",
    priority: "filter",
    prio: 0,
};
const CHAINS: [Chain; 3] = [VXLAN_IN, PODS_FORWARD, PODS_INPUT];

/// What a rule drops, as metrics and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// VXLAN to an address of this node but its underlay address.
    NotToUnderlay,
    /// VXLAN from a host that is no node.
    NotFromNode,
    /// VXLAN whose inner frame is not IPv4 or IPv6.
    InnerType,
    /// VXLAN whose inner source is not in its node's pod subnets.
    InnerSource,
    /// A pod's packet to a node-only service, on the forward or the input path.
    Pod {
        service: &'static str,
        path: &'static str,
    },
}

impl Check {
    pub const VXLAN_METRIC: &'static str = "ferry_vxlan_dropped_packets_total";
    pub const POD_METRIC: &'static str = "ferry_pod_to_node_dropped_packets_total";

    pub fn metric(self) -> &'static str {
        match self {
            Check::Pod { .. } => Self::POD_METRIC,
            _ => Self::VXLAN_METRIC,
        }
    }

    /// The metric's labels, as the text format writes them.
    pub fn labels(self) -> String {
        let check = match self {
            Check::NotToUnderlay => "not-to-underlay-address",
            Check::NotFromNode => "not-from-a-node",
            Check::InnerType => "inner-type",
            Check::InnerSource => "inner-source",
            Check::Pod { service, path } => {
                return format!("service=\"{service}\",path=\"{path}\"");
            }
        };
        format!("check=\"{check}\"")
    }

    /// What was dropped, in a log line.
    pub fn what(self) -> &'static str {
        match self {
            Check::NotToUnderlay => {
                "VXLAN to another address of this node than its underlay address dropped"
            }
            Check::NotFromNode => "VXLAN from a host that is no node dropped",
            Check::InnerType => "VXLAN carrying neither IPv4 nor IPv6 dropped",
            Check::InnerSource => {
                "VXLAN whose inner source is not in its node's pod subnets dropped"
            }
            Check::Pod { .. } => "a pod's packets to a node-only service dropped",
        }
    }
}

/// The left side of a match.
#[derive(Debug, Clone, PartialEq)]
enum Left {
    /// A header field: protocol and field (`udp dport`, `ip saddr`).
    Field(&'static str, &'static str),
    /// Raw bits from the transport header: offset and length (`@th,224,16`).
    Raw((u32, u32)),
    Concat(Vec<Left>),
    FibDaddrType,
    L4proto,
    /// A field of the connection's original direction (`ct original ip daddr`): the
    /// destination before any translation.
    CtOriginal(&'static str),
}

/// The right side of a match.
#[derive(Debug, Clone, PartialEq)]
enum Right {
    Num(u64),
    /// A number written in hex (an Ethernet type), listed as a number.
    Hex(u64),
    Word(String),
    Prefix(IpNetwork),
    Set(&'static str),
    Anon(Vec<Right>),
}

#[derive(Debug, Clone, PartialEq)]
struct Match {
    left: Left,
    negated: bool,
    right: Right,
}

fn is(left: Left, right: Right) -> Match {
    Match {
        left,
        negated: false,
        right,
    }
}

fn is_not(left: Left, right: Right) -> Match {
    Match {
        left,
        negated: true,
        right,
    }
}

/// One rule: its matches, then `counter drop` with its comment.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    matches: Vec<Match>,
    pub check: Check,
    comment: String,
}

impl Left {
    fn text(&self) -> String {
        match self {
            Left::Field(p, f) => format!("{p} {f}"),
            Left::Raw((o, l)) => format!("@th,{o},{l}"),
            Left::Concat(parts) => parts.iter().map(Left::text).collect::<Vec<_>>().join(" . "),
            Left::FibDaddrType => "fib daddr type".into(),
            Left::L4proto => "meta l4proto".into(),
            Left::CtOriginal(k) => format!("ct original {k}"),
        }
    }

    fn json(&self) -> Value {
        match self {
            Left::Field(p, f) => json!({"payload": {"protocol": p, "field": f}}),
            Left::Raw((o, l)) => json!({"payload": {"base": "th", "offset": o, "len": l}}),
            Left::Concat(parts) => {
                json!({"concat": parts.iter().map(Left::json).collect::<Vec<_>>()})
            }
            Left::FibDaddrType => json!({"fib": {"result": "type", "flags": ["daddr"]}}),
            Left::L4proto => json!({"meta": {"key": "l4proto"}}),
            Left::CtOriginal(k) => json!({"ct": {"key": k, "dir": "original"}}),
        }
    }
}

impl Right {
    fn text(&self) -> String {
        match self {
            Right::Num(n) => n.to_string(),
            Right::Hex(n) => format!("{n:#06x}"),
            Right::Word(w) => w.clone(),
            Right::Prefix(net) => format!("{}/{}", net.network(), net.prefix()),
            Right::Set(name) => format!("@{name}"),
            Right::Anon(items) => format!(
                "{{ {} }}",
                items.iter().map(Right::text).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn json(&self) -> Value {
        match self {
            Right::Num(n) | Right::Hex(n) => json!(n),
            Right::Word(w) => json!(w),
            Right::Prefix(net) => {
                json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix()}})
            }
            Right::Set(name) => json!(format!("@{name}")),
            Right::Anon(items) => json!({"set": items.iter().map(Right::json).collect::<Vec<_>>()}),
        }
    }
}

impl Rule {
    /// The rule as `nft -f` takes it.
    pub fn text(&self) -> String {
        let m: Vec<String> = self
            .matches
            .iter()
            .map(|m| {
                let op = if m.negated { "!= " } else { "" };
                format!("{} {op}{}", m.left.text(), m.right.text())
            })
            .collect();
        format!("{} counter drop comment \"{}\"", m.join(" "), self.comment)
    }

    /// The rule's expressions as `nft -j` lists them, its counter left out.
    fn json(&self) -> Value {
        let mut v: Vec<Value> = self
            .matches
            .iter()
            .map(|m| {
                let op = if m.negated { "!=" } else { "==" };
                json!({"match": {"op": op, "left": m.left.json(), "right": m.right.json()}})
            })
            .collect();
        v.push(json!({"drop": null}));
        Value::Array(v)
    }
}

/// What the table's rules are made of: fixed for the daemon's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// This node's underlay address: where the other nodes send VXLAN.
    pub underlay: IpAddr,
    /// The cluster CIDRs: every pod's packets come from one of them.
    pub pods: Vec<IpNetwork>,
    pub node_only: NodeOnly,
}

fn addr(ip: IpAddr) -> Right {
    Right::Word(ip.to_string())
}

fn field(f: Family, name: &'static str) -> Left {
    Left::Field(f.nft(), name)
}

impl Shape {
    fn family(&self) -> Family {
        Family::of(self.underlay)
    }

    /// The chain `vxlan-in`: which VXLAN to this node is dropped, in order.
    fn vxlan_in(&self) -> Vec<Rule> {
        let f = self.family();
        let port = || {
            is(
                Left::Field("udp", "dport"),
                Right::Num(self.node_only.vxlan_port.into()),
            )
        };
        let to_me = || is(field(f, "daddr"), addr(self.underlay));
        let inner_type = |t| is(Left::Raw(INNER_TYPE), Right::Hex(t));
        let inner_source = |t, src, set| Rule {
            matches: vec![
                port(),
                to_me(),
                inner_type(t),
                is_not(
                    Left::Concat(vec![field(f, "saddr"), Left::Raw(src)]),
                    Right::Set(set),
                ),
            ],
            check: Check::InnerSource,
            comment: format!(
                "VXLAN carries only its node's pod sources ({})",
                if set == INNER4 { "IPv4" } else { "IPv6" }
            ),
        };
        vec![
            Rule {
                // The address first: the route lookup is only for what is not to it.
                matches: vec![
                    port(),
                    is_not(field(f, "daddr"), addr(self.underlay)),
                    is(
                        Left::FibDaddrType,
                        Right::Anon(
                            ["local", "broadcast", "multicast"]
                                .map(|w| Right::Word(w.into()))
                                .to_vec(),
                        ),
                    ),
                ],
                check: Check::NotToUnderlay,
                comment: "VXLAN only to this node's underlay address".into(),
            },
            Rule {
                matches: vec![
                    port(),
                    to_me(),
                    is_not(field(f, "saddr"), Right::Set(NODES)),
                ],
                check: Check::NotFromNode,
                comment: "VXLAN only from ferry nodes".into(),
            },
            Rule {
                matches: vec![
                    port(),
                    to_me(),
                    is_not(
                        Left::Raw(INNER_TYPE),
                        Right::Anon(vec![Right::Hex(ETH_IPV4), Right::Hex(ETH_IPV6)]),
                    ),
                ],
                check: Check::InnerType,
                comment: "VXLAN carries only IPv4 and IPv6".into(),
            },
            inner_source(ETH_IPV4, INNER4_SRC, INNER4),
            inner_source(ETH_IPV6, INNER6_SRC, INNER6),
        ]
    }

    /// A pods' chain: every node-only service cut for every cluster CIDR of its family.
    /// `path`: "forward" (to another host: the VXLAN port on the `nodes` set) or "input"
    /// (to this node: the VXLAN port on any of its addresses).
    fn pods(&self, path: &'static str) -> Vec<Rule> {
        let mut rules = Vec::new();
        for net in &self.pods {
            let pf = Family::of(net.ip());
            let from_pods = || is(field(pf, "saddr"), Right::Prefix(*net));
            for service in self.node_only.services() {
                let check = Check::Pod {
                    service: service.name(),
                    path,
                };
                match service {
                    // VXLAN speaks the underlay's family only.
                    Service::Vxlan { port } if pf == self.family() => {
                        let mut matches = vec![
                            from_pods(),
                            is(Left::Field("udp", "dport"), Right::Num(port.into())),
                        ];
                        let comment = if path == "forward" {
                            matches.push(is(field(pf, "daddr"), Right::Set(NODES)));
                            "a pod never reaches a node's VXLAN port"
                        } else {
                            "a pod never reaches this node's VXLAN port"
                        };
                        rules.push(Rule {
                            matches,
                            check,
                            comment: comment.into(),
                        });
                    }
                    Service::Vxlan { .. } => {}
                    Service::Etcd(a) if Family::of(a.ip()) == pf => {
                        rules.extend(etcd_rules(pf, from_pods, a, check));
                    }
                    Service::Etcd(_) => {}
                }
            }
        }
        rules
    }

    /// Each chain with its rules, in order.
    fn chains(&self) -> Vec<(Chain, Vec<Rule>)> {
        vec![
            (VXLAN_IN, self.vxlan_in()),
            (PODS_FORWARD, self.pods("forward")),
            (PODS_INPUT, self.pods("input")),
        ]
    }

    /// Every check the rules count, each once.
    pub fn checks(&self) -> BTreeSet<Check> {
        self.chains()
            .into_iter()
            .flat_map(|(_, rules)| rules.into_iter().map(|r| r.check))
            .collect()
    }
}

/// An etcd endpoint cut twice: by the destination a packet has after any translation,
/// and by its connection's original one (a ClusterIP before kube-proxy's DNAT).
fn etcd_rules(f: Family, from_pods: impl Fn() -> Match, a: SocketAddr, check: Check) -> [Rule; 2] {
    let port = Right::Num(a.port().into());
    let ct_daddr = match f {
        Family::V4 => "ip daddr",
        Family::V6 => "ip6 daddr",
    };
    [
        Rule {
            matches: vec![
                from_pods(),
                is(field(f, "daddr"), addr(a.ip())),
                is(Left::Field("tcp", "dport"), port.clone()),
            ],
            check,
            comment: format!("a pod never reaches etcd {a}"),
        },
        Rule {
            matches: vec![
                from_pods(),
                is(Left::L4proto, Right::Word("tcp".into())),
                is(Left::CtOriginal(ct_daddr), addr(a.ip())),
                is(Left::CtOriginal("proto-dst"), port),
            ],
            check,
            comment: format!("a pod never reaches etcd {a}, translated or not"),
        },
    ]
}

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
        let (v6, first, bits) = match net {
            IpNetwork::V4(n) => (false, u128::from(u32::from(n.network())), 32),
            IpNetwork::V6(n) => (true, u128::from(n.network()), 128),
        };
        let host_bits = bits - u32::from(net.prefix());
        let hosts = if host_bits == 0 {
            0
        } else {
            u128::MAX >> (128 - host_bits)
        };
        Source {
            node,
            v6,
            first,
            last: first | hosts,
        }
    }

    fn element(&self) -> String {
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
    fn elements(&self) -> [(&'static str, Vec<String>); 3] {
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

/// The script that removes ferry's tables of before `inet ferry`, if any is there.
pub fn legacy_script() -> String {
    LEGACY
        .iter()
        .map(|(fam, name)| format!("table {fam} {name} {{}}\ndelete table {fam} {name}\n"))
        .collect()
}

/// The whole table, replacing whatever is there (and the tables of before), in one
/// transaction.
pub fn create_script(shape: &Shape, m: &Members) -> String {
    let f = shape.family();
    let elems = |items: &[String]| {
        if items.is_empty() {
            // nft refuses an empty elements clause.
            String::new()
        } else {
            format!(" elements = {{ {} }};", items.join(", "))
        }
    };
    let [(_, nodes), (_, inner4), (_, inner6)] = m.elements();
    let src = |(o, l)| format!("{} saddr . @th,{o},{l}", f.nft());
    let mut s = legacy_script();
    s += &format!(
        "table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\ntable {FAMILY} {TABLE} {{\n"
    );
    s += &format!(
        "\tset {NODES} {{ type {};{} }}\n",
        f.set_type(),
        elems(&nodes)
    );
    s += &format!(
        "\tset {INNER4} {{ typeof {}; flags interval;{} }}\n",
        src(INNER4_SRC),
        elems(&inner4)
    );
    s += &format!(
        "\tset {INNER6} {{ typeof {}; flags interval;{} }}\n",
        src(INNER6_SRC),
        elems(&inner6)
    );
    for (chain, rules) in shape.chains() {
        s += &format!(
            "\tchain {} {{\n\t\ttype filter hook {} priority {}; policy accept;\n",
            chain.name, chain.hook, chain.priority
        );
        for r in rules {
            s += &format!("\t\t{}\n", r.text());
        }
        s += "\t}\n";
    }
    s + "}\n"
}

/// The set changes that make `have` into `want`, as one `nft` script (removals first: an
/// interval that changed must leave before its successor can overlap it); `None` when
/// there is nothing to do.
pub fn update_script(want: &Members, have: &Members) -> Option<String> {
    let mut s = String::new();
    for (verb, from, to) in [("delete", have, want), ("add", want, have)] {
        for ((set, from), (_, to)) in from.elements().into_iter().zip(to.elements()) {
            let to: BTreeSet<&String> = to.iter().collect();
            let only: Vec<&str> = from
                .iter()
                .filter(|e| !to.contains(e))
                .map(String::as_str)
                .collect();
            if !only.is_empty() {
                s += &format!(
                    "{verb} element {FAMILY} {TABLE} {set} {{ {} }}\n",
                    only.join(", ")
                );
            }
        }
    }
    (!s.is_empty()).then_some(s)
}

/// The table as read: what its sets hold and what each check dropped so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub members: Members,
    pub dropped: BTreeMap<Check, u64>,
}

/// An integer of a set element as `nft -j` lists it: a number, or a hex string when it is
/// wider than 64 bits.
fn integer(v: &Value) -> Option<u128> {
    match v {
        Value::Number(n) => n.as_u64().map(u128::from),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(hex) => u128::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

/// A `node . first-last` element (or `node . value`) of `inner4` or `inner6`.
fn source(elem: &Value, v6: bool) -> Option<Source> {
    let parts = elem.get("concat")?.as_array()?;
    let [node, inner] = parts.as_slice() else {
        return None;
    };
    let node: IpAddr = node.as_str()?.parse().ok()?;
    let (first, last) = match inner.get("range").and_then(Value::as_array) {
        Some(r) if r.len() == 2 => (integer(&r[0])?, integer(&r[1])?),
        Some(_) => return None,
        None => {
            let n = integer(inner)?;
            (n, n)
        }
    };
    Some(Source {
        node,
        v6,
        first,
        last,
    })
}

/// One set of the listing, if it is declared as ferry declares it: its elements.
fn set_elements(set: &Value, f: Family) -> Option<Vec<Value>> {
    let name = set["name"].as_str()?;
    let ty = set.get("type")?;
    let ok = match name {
        NODES => ty == f.set_type(),
        INNER4 | INNER6 => {
            *ty == json!([f.set_type(), "integer"])
                && set["flags"]
                    .as_array()
                    .is_some_and(|fl| fl.iter().any(|x| x == "interval"))
        }
        _ => false,
    };
    ok.then(|| {
        set.get("elem")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    })
}

/// What the table holds, from `nft -j list table inet ferry`: `None` when it is missing
/// anything of ferry's, a chain or a rule differs, or an element is not one ferry writes;
/// the table is then written whole.
pub fn parse(listing: &Value, shape: &Shape) -> Option<Read> {
    let items = listing.get("nftables")?.as_array()?;
    let f = shape.family();
    let mut nodes = None;
    let mut inner = [None, None];
    let mut hooked = BTreeSet::new();
    let mut rules: BTreeMap<&str, Vec<(Value, &str, u64)>> = BTreeMap::new();
    for item in items {
        if let Some(set) = item.get("set") {
            let Some(elems) = set_elements(set, f) else {
                // Another set of ferry's name but not of ferry's type is not ferry's.
                if [NODES, INNER4, INNER6].contains(&set["name"].as_str().unwrap_or("")) {
                    return None;
                }
                continue;
            };
            match set["name"].as_str()? {
                NODES => {
                    nodes = Some(
                        elems
                            .iter()
                            .map(|e| e.as_str()?.parse().ok())
                            .collect::<Option<BTreeSet<IpAddr>>>()?
                            .into_iter()
                            .filter(|ip| Family::of(*ip) == f)
                            .collect::<BTreeSet<IpAddr>>(),
                    );
                }
                name => {
                    let v6 = name == INNER6;
                    let s = elems
                        .iter()
                        .map(|e| source(e, v6))
                        .collect::<Option<Vec<Source>>>()?;
                    inner[usize::from(v6)] = Some(s);
                }
            }
        }
        if let Some(chain) = item.get("chain") {
            if let Some(c) = CHAINS.iter().find(|c| chain["name"] == c.name) {
                let ours = chain["type"] == "filter"
                    && chain["hook"] == c.hook
                    && chain["prio"] == c.prio
                    && chain["policy"] == "accept";
                if !ours {
                    return None;
                }
                hooked.insert(c.name);
            }
        }
        if let Some(rule) = item.get("rule") {
            let Some(c) = CHAINS.iter().find(|c| rule["chain"] == c.name) else {
                continue;
            };
            let mut packets = 0;
            let expr: Vec<Value> = rule["expr"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| match e.get("counter") {
                    Some(cnt) => {
                        packets += cnt["packets"].as_u64().unwrap_or(0);
                        false
                    }
                    None => true,
                })
                .cloned()
                .collect();
            let comment = rule["comment"].as_str().unwrap_or("");
            rules
                .entry(c.name)
                .or_default()
                .push((Value::Array(expr), comment, packets));
        }
    }
    if hooked.len() != CHAINS.len() {
        return None;
    }
    let mut dropped: BTreeMap<Check, u64> = shape.checks().into_iter().map(|c| (c, 0)).collect();
    for (chain, want) in shape.chains() {
        let have = rules.remove(chain.name).unwrap_or_default();
        if have.len() != want.len() {
            return None;
        }
        for ((expr, comment, packets), w) in have.iter().zip(&want) {
            if *expr != w.json() || *comment != w.comment {
                return None;
            }
            *dropped.entry(w.check).or_default() += packets;
        }
    }
    let [Some(inner4), Some(inner6)] = inner else {
        return None;
    };
    Some(Read {
        members: Members {
            nodes: nodes?,
            sources: inner4.into_iter().chain(inner6).collect(),
        },
        dropped,
    })
}

/// The table as the kernel holds it; `None` when it is missing or not ferry's.
pub fn read(shape: &Shape) -> Result<Option<Read>> {
    match crate::nft::list_table(FAMILY, TABLE)? {
        Some(text) => {
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("parse `nft -j list table {FAMILY} {TABLE}`"))?;
            Ok(parse(&v, shape))
        }
        None => Ok(None),
    }
}

pub fn run(script: &str) -> Result<()> {
    crate::nft::apply(script).with_context(|| format!("nftables table {FAMILY} {TABLE}"))
}

/// What `ensure` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    Nothing,
    Elements,
    /// The table was missing or differed, and was written whole (its counters start again).
    Whole,
}

/// Makes the kernel's table hold `want`: the sets changed as a diff when the table is
/// ferry's, the whole table written when not. Returns what it did and the drops counted
/// so far (all 0 for a table just written).
pub fn ensure(shape: &Shape, want: &Members) -> Result<(Wrote, BTreeMap<Check, u64>)> {
    match read(shape)? {
        Some(have) => match update_script(want, &have.members) {
            Some(s) => run(&s).map(|()| (Wrote::Elements, have.dropped)),
            None => Ok((Wrote::Nothing, have.dropped)),
        },
        None => {
            run(&create_script(shape, want))?;
            let zero = shape.checks().into_iter().map(|c| (c, 0)).collect();
            Ok((Wrote::Whole, zero))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn shape_v4() -> Shape {
        Shape {
            underlay: ip("192.0.2.11"),
            pods: vec![net("10.84.0.0/16"), net("fd00:84::/56")],
            node_only: NodeOnly::new(
                4789,
                &[
                    "http://10.96.0.66:2379".into(),
                    "https://[fd00:96::66]:2379".into(),
                ],
                false,
            ),
        }
    }

    fn shape_v6() -> Shape {
        Shape {
            underlay: ip("2001:db8::11"),
            pods: vec![net("fd00:10::/56")],
            node_only: NodeOnly::new(4789, &["http://[2001:db8::2]:2379".into()], false),
        }
    }

    fn members(nodes: &[&str], subnets: &[(&str, &str)]) -> Members {
        Members::new(
            nodes.iter().map(|n| ip(n)).collect(),
            subnets.iter().map(|(n, s)| (ip(n), net(s))),
        )
    }

    #[test]
    fn a_subnet_is_its_first_and_last_address() {
        let s = Source::of(ip("192.0.2.12"), net("10.84.1.0/24"));
        assert_eq!((s.first, s.last), (0x0a54_0100, 0x0a54_01ff));
        assert_eq!(s.element(), "192.0.2.12 . 0xa540100-0xa5401ff");
        let s = Source::of(ip("2001:db8::12"), net("fd00:10:0:1::/64"));
        assert!(s.v6);
        assert_eq!(
            s.element(),
            "2001:db8::12 . 0xfd000010000000010000000000000000-0xfd00001000000001ffffffffffffffff"
        );
        let s = Source::of(ip("192.0.2.12"), net("10.84.1.7/32"));
        assert_eq!(s.element(), "192.0.2.12 . 0xa540107");
        // A /0 does not overflow.
        assert_eq!(
            Source::of(ip("192.0.2.12"), net("0.0.0.0/0")).last,
            0xffff_ffff
        );
        assert_eq!(Source::of(ip("2001:db8::12"), net("::/0")).last, u128::MAX);
    }

    #[test]
    fn the_receiving_rules_check_address_sender_type_and_inner_source() {
        let s = create_script(
            &shape_v4(),
            &members(&["192.0.2.12"], &[("192.0.2.12", "10.84.1.0/24")]),
        );
        for line in [
            "udp dport 4789 ip daddr != 192.0.2.11 fib daddr type { local, broadcast, multicast } counter drop comment \"VXLAN only to this node's underlay address\"",
            "udp dport 4789 ip daddr 192.0.2.11 ip saddr != @nodes counter drop comment \"VXLAN only from ferry nodes\"",
            "udp dport 4789 ip daddr 192.0.2.11 @th,224,16 != { 0x0800, 0x86dd } counter drop",
            "udp dport 4789 ip daddr 192.0.2.11 @th,224,16 0x0800 ip saddr . @th,336,32 != @inner4 counter drop",
            "udp dport 4789 ip daddr 192.0.2.11 @th,224,16 0x86dd ip saddr . @th,304,128 != @inner6 counter drop",
            "set nodes { type ipv4_addr; elements = { 192.0.2.12 }; }",
            "set inner4 { typeof ip saddr . @th,336,32; flags interval; elements = { 192.0.2.12 . 0xa540100-0xa5401ff }; }",
            // An empty set has no elements clause (nft refuses an empty one).
            "set inner6 { typeof ip saddr . @th,304,128; flags interval; }",
            "chain vxlan-in {\n\t\ttype filter hook prerouting priority raw; policy accept;",
        ] {
            assert!(s.contains(line), "{line}\n{s}");
        }
        // The tables of before go in the same transaction, then the table is replaced.
        assert!(
            s.starts_with(
                "table ip ferry {}\ndelete table ip ferry\ntable ip6 ferry {}\ndelete table ip6 ferry\n\
                 table inet ferry {}\ndelete table inet ferry\ntable inet ferry {\n"
            ),
            "{s}"
        );
    }

    #[test]
    fn pods_are_cut_from_every_node_only_service_of_their_family() {
        let s = create_script(&shape_v4(), &Members::default());
        let forward = s.split("chain pods-forward").nth(1).unwrap();
        let (forward, input) = forward.split_once("chain pods-input").unwrap();
        for line in [
            "ip saddr 10.84.0.0/16 udp dport 4789 ip daddr @nodes counter drop comment \"a pod never reaches a node's VXLAN port\"",
            "ip saddr 10.84.0.0/16 ip daddr 10.96.0.66 tcp dport 2379 counter drop",
            "ip saddr 10.84.0.0/16 meta l4proto tcp ct original ip daddr 10.96.0.66 ct original proto-dst 2379 counter drop comment \"a pod never reaches etcd 10.96.0.66:2379, translated or not\"",
            "ip6 saddr fd00:84::/56 ip6 daddr fd00:96::66 tcp dport 2379 counter drop",
            "ip6 saddr fd00:84::/56 meta l4proto tcp ct original ip6 daddr fd00:96::66 ct original proto-dst 2379 counter drop",
        ] {
            assert!(forward.contains(line), "{line}\n{forward}");
        }
        assert!(
            forward.contains("hook forward priority filter"),
            "{forward}"
        );
        assert!(input.contains("hook input priority filter"), "{input}");
        assert!(
            input.contains("ip saddr 10.84.0.0/16 udp dport 4789 counter drop comment \"a pod never reaches this node's VXLAN port\""),
            "{input}"
        );
        assert!(
            input.contains("ct original ip6 daddr fd00:96::66"),
            "{input}"
        );
        // An endpoint of one family is no rule for the other's pods; VXLAN is the
        // underlay's family only.
        assert!(!s.contains("ip saddr 10.84.0.0/16 ip6"), "{s}");
        assert!(!s.contains("ip6 saddr fd00:84::/56 udp dport 4789"), "{s}");
        assert_eq!(
            shape_v4().checks(),
            BTreeSet::from([
                Check::NotToUnderlay,
                Check::NotFromNode,
                Check::InnerType,
                Check::InnerSource,
                Check::Pod {
                    service: "vxlan",
                    path: "forward"
                },
                Check::Pod {
                    service: "vxlan",
                    path: "input"
                },
                Check::Pod {
                    service: "etcd",
                    path: "forward"
                },
                Check::Pod {
                    service: "etcd",
                    path: "input"
                },
            ])
        );
    }

    #[test]
    fn an_ipv6_underlay_is_the_same_table_in_ip6_terms() {
        let m = members(&["2001:db8::12"], &[("2001:db8::12", "fd00:10:0:1::/64")]);
        let s = create_script(&shape_v6(), &m);
        for line in [
            "set nodes { type ipv6_addr; elements = { 2001:db8::12 }; }",
            "set inner4 { typeof ip6 saddr . @th,336,32; flags interval; }",
            "set inner6 { typeof ip6 saddr . @th,304,128; flags interval; elements = { 2001:db8::12 . 0xfd000010000000010000000000000000-0xfd00001000000001ffffffffffffffff }; }",
            "udp dport 4789 ip6 daddr != 2001:db8::11 fib daddr type",
            "udp dport 4789 ip6 daddr 2001:db8::11 ip6 saddr != @nodes counter drop",
            "udp dport 4789 ip6 daddr 2001:db8::11 @th,224,16 0x86dd ip6 saddr . @th,304,128 != @inner6 counter drop",
            "ip6 saddr fd00:10::/56 udp dport 4789 ip6 daddr @nodes counter drop",
            "ip6 saddr fd00:10::/56 ip6 daddr 2001:db8::2 tcp dport 2379 counter drop",
        ] {
            assert!(s.contains(line), "{line}\n{s}");
        }
    }

    #[test]
    fn set_changes_are_a_diff_removals_first() {
        let have = members(
            &["192.0.2.12", "192.0.2.13"],
            &[
                ("192.0.2.12", "10.84.1.0/24"),
                ("192.0.2.13", "10.84.2.0/24"),
            ],
        );
        assert_eq!(update_script(&have, &have), None);
        let want = members(
            &["192.0.2.12", "192.0.2.14"],
            &[
                ("192.0.2.12", "10.84.1.0/24"),
                ("192.0.2.14", "10.84.2.0/24"),
                ("192.0.2.14", "fd00:84:0:2::/64"),
            ],
        );
        assert_eq!(
            update_script(&want, &have).unwrap(),
            "delete element inet ferry nodes { 192.0.2.13 }\n\
             delete element inet ferry inner4 { 192.0.2.13 . 0xa540200-0xa5402ff }\n\
             add element inet ferry nodes { 192.0.2.14 }\n\
             add element inet ferry inner4 { 192.0.2.14 . 0xa540200-0xa5402ff }\n\
             add element inet ferry inner6 { 192.0.2.14 . 0xfd000084000000020000000000000000-0xfd00008400000002ffffffffffffffff }\n"
        );
        assert_eq!(
            update_script(&Members::default(), &members(&["192.0.2.9"], &[])).unwrap(),
            "delete element inet ferry nodes { 192.0.2.9 }\n"
        );
    }

    /// The table as `nft -j list table inet ferry` printed it (nftables 1.0.6) for
    /// `shape` and `m`, with `packets` counted by every rule.
    fn listing(shape: &Shape, m: &Members, packets: u64) -> Value {
        let f = shape.family();
        let elem = |v6: bool| -> Vec<Value> {
            m.sources
                .iter()
                .filter(|s| s.v6 == v6)
                .map(|s| {
                    let int = |n: u128| {
                        if v6 {
                            json!(format!("{n:#x}"))
                        } else {
                            json!(n as u64)
                        }
                    };
                    json!({"concat": [s.node.to_string(), {"range": [int(s.first), int(s.last)]}]})
                })
                .collect()
        };
        let mut items = vec![
            json!({"metainfo": {"version": "1.0.6"}}),
            json!({"table": {"family": "inet", "name": "ferry", "handle": 1}}),
            json!({"set": {"family": "inet", "name": "nodes", "table": "ferry", "type": f.set_type(),
                   "elem": m.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>()}}),
            json!({"set": {"family": "inet", "name": "inner4", "table": "ferry", "type": [f.set_type(), "integer"],
                   "flags": ["interval"], "elem": elem(false)}}),
            json!({"set": {"family": "inet", "name": "inner6", "table": "ferry", "type": [f.set_type(), "integer"],
                   "flags": ["interval"], "elem": elem(true)}}),
        ];
        for (c, rules) in shape.chains() {
            items.push(json!({"chain": {"family": "inet", "table": "ferry", "name": c.name, "type": "filter",
                              "hook": c.hook, "prio": c.prio, "policy": "accept"}}));
            for r in rules {
                let mut expr = r.json().as_array().unwrap().clone();
                let at = expr.len() - 1;
                expr.insert(
                    at,
                    json!({"counter": {"packets": packets, "bytes": packets * 90}}),
                );
                items.push(
                    json!({"rule": {"family": "inet", "table": "ferry", "chain": c.name,
                                  "comment": r.comment, "expr": expr}}),
                );
            }
        }
        json!({ "nftables": items })
    }

    #[test]
    fn a_listing_is_read_back_with_its_counters() {
        let shape = shape_v4();
        let m = members(
            &["192.0.2.12"],
            &[
                ("192.0.2.12", "10.84.1.0/24"),
                ("192.0.2.12", "fd00:84:0:1::/64"),
            ],
        );
        let read = parse(&listing(&shape, &m, 2), &shape).unwrap();
        assert_eq!(read.members, m);
        // Two rules per etcd endpoint and path; one per VXLAN check but the inner source's two.
        assert_eq!(read.dropped[&Check::NotFromNode], 2);
        assert_eq!(read.dropped[&Check::InnerSource], 4);
        assert_eq!(
            read.dropped[&Check::Pod {
                service: "etcd",
                path: "forward"
            }],
            8
        );
        let shape6 = shape_v6();
        let m6 = members(&["2001:db8::12"], &[("2001:db8::12", "fd00:10:0:1::/64")]);
        assert_eq!(
            parse(&listing(&shape6, &m6, 0), &shape6).unwrap().members,
            m6
        );
        // The IPv4 underlay's table is not the IPv6 one's.
        assert_eq!(parse(&listing(&shape6, &m6, 0), &shape), None);
    }

    #[test]
    fn a_listing_is_ours_only_with_exactly_our_rules() {
        let shape = shape_v4();
        let m = Members::default();
        let good = listing(&shape, &m, 0);
        assert!(parse(&good, &shape).is_some());
        // Another port, another underlay address, another etcd endpoint: written again.
        let mut other = shape_v4();
        other.node_only.vxlan_port = 8472;
        assert_eq!(parse(&good, &other), None);
        let mut other = shape_v4();
        other.underlay = ip("192.0.2.99");
        assert_eq!(parse(&good, &other), None);
        let mut other = shape_v4();
        other.node_only.etcd.pop();
        assert_eq!(parse(&good, &other), None);
        // A rule taken out, one added, a chain missing, a set of another type.
        let items = |v: &Value| v["nftables"].as_array().unwrap().clone();
        let without = |pred: &dyn Fn(&Value) -> bool| json!({"nftables": items(&good).into_iter().filter(|i| !pred(i)).collect::<Vec<_>>()});
        assert_eq!(
            parse(
                &without(&|i| i["rule"]["comment"] == "VXLAN only from ferry nodes"),
                &shape
            ),
            None
        );
        assert_eq!(
            parse(&without(&|i| i["chain"]["name"] == "pods-input"), &shape),
            None
        );
        let mut v = good.clone();
        let last = items(&good).last().unwrap().clone();
        v["nftables"].as_array_mut().unwrap().push(last);
        assert_eq!(parse(&v, &shape), None);
        let mut v = good.clone();
        v["nftables"][3]["set"]["flags"] = json!([]);
        assert_eq!(parse(&v, &shape), None);
        // An element ferry never writes.
        let mut v = good;
        v["nftables"][3]["set"]["elem"] = json!([{"concat": ["192.0.2.12", {"range": [1]}]}]);
        assert_eq!(parse(&v, &shape), None);
    }

    #[test]
    fn set_elements_are_read_as_nft_lists_them() {
        // A single value, a decimal range, a hex range.
        assert_eq!(
            source(&json!({"concat": ["192.0.2.13", 167772165]}), false),
            Some(Source {
                node: ip("192.0.2.13"),
                v6: false,
                first: 167772165,
                last: 167772165
            })
        );
        assert_eq!(
            source(
                &json!({"concat": ["192.0.2.12", {"range": [173277440, 173277695]}]}),
                false
            ),
            Some(Source::of(ip("192.0.2.12"), net("10.84.1.0/24")))
        );
        assert_eq!(
            source(
                &json!({"concat": ["2001:db8::12", {"range": ["0xfd000010000000010000000000000000", "0xfd00001000000001ffffffffffffffff"]}]}),
                true
            ),
            Some(Source::of(ip("2001:db8::12"), net("fd00:10:0:1::/64")))
        );
        assert_eq!(source(&json!({"concat": ["nonsense", 1]}), false), None);
    }

    #[test]
    fn rule_text_and_listing_agree() {
        // A rule's JSON is what nft 1.0.6 listed for the same text on this project's
        // machine.
        let r = &shape_v4().vxlan_in()[3];
        assert_eq!(
            r.json(),
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 4789}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.0.2.11"}},
                {"match": {"op": "==", "left": {"payload": {"base": "th", "offset": 224, "len": 16}}, "right": 2048}},
                {"match": {"op": "!=", "left": {"concat": [{"payload": {"protocol": "ip", "field": "saddr"}},
                    {"payload": {"base": "th", "offset": 336, "len": 32}}]}, "right": "@inner4"}},
                {"drop": null}
            ])
        );
        let etcd = &shape_v4().pods("forward")[2];
        assert_eq!(
            etcd.json(),
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.84.0.0", "len": 16}}}},
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                {"match": {"op": "==", "left": {"ct": {"key": "ip daddr", "dir": "original"}}, "right": "10.96.0.66"}},
                {"match": {"op": "==", "left": {"ct": {"key": "proto-dst", "dir": "original"}}, "right": 2379}},
                {"drop": null}
            ])
        );
    }
}
