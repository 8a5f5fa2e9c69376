//! The upstream e2e model (namespaces x, y, z; pods a, b, c; container ports named
//! `serve-<port>-<proto>`), policies written as the API's JSON, and a packet walk over a
//! computed [`Ruleset`] that checks the nft rules against the evaluator.
#![allow(dead_code)]

use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use netpol::desired::{Element, Expr, Field, Ruleset, Verdict as NftVerdict};
use netpol::model::{ContainerPort, Labels, Pod, Policy, Protocol};
use netpol::ranges::Family;
use netpol::{verdict, Cluster, LocalPods, Peer};

pub const NODES: [&str; 3] = ["n0", "n1", "n2"];

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The cluster of a case: `pods` like `x/a`, each serving `ports` × `protocols`, with an
/// IPv4 and an IPv6 address, spread over three nodes.
pub fn world(pods: &[&str], ports: &[u16], protocols: &[Protocol]) -> Cluster {
    let mut c = Cluster::default();
    for ns in ["x", "y", "z"] {
        c.namespaces.insert(
            ns.into(),
            labels(&[("kubernetes.io/metadata.name", ns), ("ns", ns)]),
        );
    }
    for (i, key) in pods.iter().enumerate() {
        let (ns, name) = key.split_once('/').unwrap();
        let nsi = ["x", "y", "z"].iter().position(|n| *n == ns).unwrap() + 1;
        let podi = name.as_bytes()[0] - b'a' + 1;
        let mut container_ports = Vec::new();
        for p in ports {
            for proto in protocols {
                container_ports.push(ContainerPort {
                    name: Some(format!("serve-{p}-{}", proto.nft())),
                    port: *p,
                    protocol: *proto,
                });
            }
        }
        c.pods.push(Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels(&[("pod", name)]),
            ips: vec![
                format!("10.{nsi}.0.{podi}").parse().unwrap(),
                format!("fd00::{nsi}:{podi}").parse().unwrap(),
            ],
            node: Some(NODES[i % NODES.len()].into()),
            ports: container_ports,
            host_network: false,
        });
    }
    c
}

/// A policy from its spec written as the API's JSON, through `Policy::from_k8s`.
pub fn policy(ns: &str, name: &str, spec: serde_json::Value) -> Policy {
    let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": spec,
    }))
    .unwrap();
    let (p, errors) = Policy::from_k8s(&np);
    assert!(errors.is_empty(), "{errors:?}");
    p.unwrap()
}

/// The cluster with each pod's addresses of one family only.
pub fn only_family(c: &Cluster, v4: bool) -> Cluster {
    let mut c = c.clone();
    for p in &mut c.pods {
        p.ips.retain(|ip| ip.is_ipv4() == v4);
    }
    c
}

pub fn pod<'a>(c: &'a Cluster, key: &str) -> &'a Pod {
    let (ns, name) = key.split_once('/').unwrap();
    c.pod(ns, name).unwrap()
}

fn matches(pattern: &str, p: &Pod) -> bool {
    if pattern == "*" {
        return true;
    }
    let (ns, name) = pattern.split_once('/').unwrap();
    p.namespace == ns && (name == "*" || p.name == name)
}

/// Checks the expected matrix of a probe (the README's rules: all allowed, then each entry
/// in order overwrites) against `verdict`, and the nft rules of every node against it.
pub fn check_probe(c: &Cluster, port: u16, protocol: Protocol, expect: &[(&str, &str, bool)]) {
    let rulesets: Vec<Ruleset> = NODES
        .iter()
        .map(|n| Ruleset::compute(c, &LocalPods::on_node(c, n)))
        .collect();
    for from in &c.pods {
        for to in &c.pods {
            if from.key() == to.key() {
                continue;
            }
            let mut want = true;
            for (f, t, allow) in expect {
                if matches(f, from) && matches(t, to) {
                    want = *allow;
                }
            }
            let v = verdict(c, Peer::Pod(from), to, protocol, port);
            assert_eq!(
                v.allowed,
                want,
                "{} -> {} {protocol}/{port}: {v}",
                from.key(),
                to.key()
            );
            for (si, di) in from.ips.iter().zip(&to.ips) {
                let nft = walk_nodes(c, &rulesets, from, to, *si, *di, protocol, port);
                assert_eq!(
                    nft,
                    want,
                    "nft {} ({si}) -> {} ({di}) {protocol}/{port}",
                    from.key(),
                    to.key()
                );
            }
        }
    }
}

fn node_index(p: &Pod) -> usize {
    NODES
        .iter()
        .position(|n| Some(*n) == p.node.as_deref())
        .unwrap()
}

/// A new connection's first packet through the source's node, then (when it is another
/// node) the destination's node.
#[allow(clippy::too_many_arguments)]
pub fn walk_nodes(
    _c: &Cluster,
    rulesets: &[Ruleset],
    from: &Pod,
    to: &Pod,
    src: IpAddr,
    dst: IpAddr,
    protocol: Protocol,
    port: u16,
) -> bool {
    let (a, b) = (node_index(from), node_index(to));
    let pkt = Packet {
        src,
        dst,
        protocol,
        port,
    };
    walk(&rulesets[a], &pkt) && (a == b || walk(&rulesets[b], &pkt))
}

pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// Whether `forward` lets a new connection's first packet through.
pub fn walk(rs: &Ruleset, pkt: &Packet) -> bool {
    match walk_chain(rs, "forward", pkt) {
        Some(NftVerdict::Drop) => false,
        Some(NftVerdict::Accept) | None | Some(NftVerdict::Return) => true,
        Some(NftVerdict::Jump(_)) => unreachable!(),
    }
}

fn walk_chain(rs: &Ruleset, chain: &str, pkt: &Packet) -> Option<NftVerdict> {
    for rule in &rs.chains[chain].rules {
        // A verdict map's hit is the rule's verdict: a jump to the chain it names.
        let mut verdict = rule.verdict.clone();
        let all = rule.exprs.iter().all(|e| match e {
            // A connection's first TCP/UDP/SCTP packet: new, not ICMPv6.
            Expr::CtEstablished | Expr::CtInvalid | Expr::NeighbourDiscovery => false,
            Expr::InSet { field, set } => in_set(rs, *field, set, pkt),
            Expr::VerdictMap { field, map } => {
                let key = match field {
                    Field::Saddr(_) => pkt.src,
                    Field::Daddr(_) => pkt.dst,
                    _ => unreachable!("maps are keyed by one address"),
                };
                let hit = family_ok(*field, pkt)
                    .then(|| {
                        rs.sets[map].elements.iter().find_map(|e| match e {
                            Element::Jump { addr, to } if *addr == key => Some(to.name()),
                            _ => None,
                        })
                    })
                    .flatten();
                verdict = hit.map(NftVerdict::Jump);
                verdict.is_some()
            }
            Expr::Count { field, .. } => family_ok(*field, pkt),
            Expr::Limit(_) | Expr::Log { .. } | Expr::Counter => true,
        });
        if !all {
            continue;
        }
        match verdict {
            None => {}
            Some(NftVerdict::Jump(c)) => match walk_chain(rs, &c, pkt) {
                Some(NftVerdict::Return) | None => {}
                v => return v,
            },
            Some(v) => return Some(v),
        }
    }
    None
}

fn family_ok(field: Field, pkt: &Packet) -> bool {
    Family::of(pkt.src) == field.family()
}

fn in_set(rs: &Ruleset, field: Field, set: &str, pkt: &Packet) -> bool {
    family_ok(field, pkt)
        && rs.sets[set]
            .elements
            .iter()
            .any(|e| e.matches(field, pkt.src, pkt.dst, pkt.protocol, pkt.port))
}
