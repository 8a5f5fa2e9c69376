//! The table's rules as data: each match written both as `nft -f` takes it and as
//! `nft -j` lists it, so that a table read back is compared rule by rule.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use super::{
    Chain, Check, Family, ETH_IPV4, ETH_IPV6, INNER4, INNER4_SRC, INNER6, INNER6_SRC, INNER_TYPE,
    NODES, PODS_FORWARD, PODS_INPUT, VXLAN_IN,
};
use crate::node_only::{NodeOnly, Service};

/// The left side of a match.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Left {
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
pub(super) enum Right {
    Num(u64),
    /// A number written in hex (an Ethernet type), listed as a number.
    Hex(u64),
    Word(String),
    Prefix(IpNetwork),
    Set(&'static str),
    Anon(Vec<Right>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Match {
    left: Left,
    negated: bool,
    right: Right,
}

pub(super) fn is(left: Left, right: Right) -> Match {
    Match {
        left,
        negated: false,
        right,
    }
}

pub(super) fn is_not(left: Left, right: Right) -> Match {
    Match {
        left,
        negated: true,
        right,
    }
}

/// One rule: its matches, then `counter drop` with its comment.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub(super) matches: Vec<Match>,
    pub check: Check,
    pub(super) comment: String,
}

impl Left {
    pub(super) fn text(&self) -> String {
        match self {
            Left::Field(p, f) => format!("{p} {f}"),
            Left::Raw((o, l)) => format!("@th,{o},{l}"),
            Left::Concat(parts) => parts.iter().map(Left::text).collect::<Vec<_>>().join(" . "),
            Left::FibDaddrType => "fib daddr type".into(),
            Left::L4proto => "meta l4proto".into(),
            Left::CtOriginal(k) => format!("ct original {k}"),
        }
    }

    pub(super) fn json(&self) -> Value {
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
    pub(super) fn text(&self) -> String {
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

    pub(super) fn json(&self) -> Value {
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
    pub(super) fn json(&self) -> Value {
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

pub(super) fn addr(ip: IpAddr) -> Right {
    Right::Word(ip.to_string())
}

pub(super) fn field(f: Family, name: &'static str) -> Left {
    Left::Field(f.nft(), name)
}

impl Shape {
    pub(super) fn family(&self) -> Family {
        Family::of(self.underlay)
    }

    /// The chain `vxlan-in`: which VXLAN to this node is dropped, in order.
    pub(super) fn vxlan_in(&self) -> Vec<Rule> {
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
    pub(super) fn pods(&self, path: &'static str) -> Vec<Rule> {
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
    pub(super) fn chains(&self) -> Vec<(Chain, Vec<Rule>)> {
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
pub(super) fn etcd_rules(
    f: Family,
    from_pods: impl Fn() -> Match,
    a: SocketAddr,
    check: Check,
) -> [Rule; 2] {
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
