//! The upstream e2e model (namespaces x, y, z; pods a, b, c; container ports named
//! `serve-<port>-<proto>`), policies written as the API's JSON, and a packet walk over a
//! computed [`Ruleset`] that checks the nft rules against the evaluator.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv6Addr};

use ferry_netpol::desired::{Element, Expr, Field, Lookup, Ruleset, Table, Verdict as NftVerdict};
use ferry_netpol::model::{ContainerPort, Labels, Pod, Policy, Protocol};
use ferry_netpol::ranges::Family;
use ferry_netpol::{verdict, Cluster, Ifname, LocalPods, Peer};
use k8s_openapi::api::networking::v1::NetworkPolicy;

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

/// A pod's port on its node's bridge, as the tests name it (ferry's are `fy<hash>`).
pub fn port_of(p: &Pod) -> Ifname {
    Ifname::new(&format!("fy{}{}", p.namespace, p.name)).unwrap()
}

/// A pod's link-local address, as the tests make it: `fe80::` and the last 32 bits of its
/// IPv6 address (ferry's come from its MAC; only being its own and unique on the node
/// counts here). None for a pod without IPv6.
pub fn link_local_of(p: &Pod) -> Option<IpAddr> {
    p.ips.iter().find_map(|ip| match ip {
        IpAddr::V6(a) => {
            let s = a.segments();
            Some(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, s[6], s[7])))
        }
        IpAddr::V4(_) => None,
    })
}

/// The local pods of `node` as the daemon gives them: with their link-local addresses
/// and their bridge ports.
pub fn local_on(c: &Cluster, node: &str) -> LocalPods {
    let mut local = LocalPods::on_node(c, node);
    for (k, ips) in local.pods.iter_mut() {
        let p = c.pod(&k.namespace, &k.name).unwrap();
        ips.extend(link_local_of(p));
        local.ports.insert(k.clone(), port_of(p));
    }
    local
}

/// The cluster as a node sees it: its local pods with their link-local addresses.
pub fn seen_from(c: &Cluster, node: &str) -> Cluster {
    let mut c = c.clone();
    for p in &mut c.pods {
        if p.node.as_deref() == Some(node) {
            let ll = link_local_of(p);
            p.ips.extend(ll);
        }
    }
    c
}

/// Checks the expected matrix of a probe (the README's rules: all allowed, then each entry
/// in order overwrites) against `verdict`, and the nft rules of every node against it.
pub fn check_probe(c: &Cluster, port: u16, protocol: Protocol, expect: &[(&str, &str, bool)]) {
    let rulesets: Vec<Ruleset> = NODES
        .iter()
        .map(|n| Ruleset::compute(c, &local_on(c, n)))
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
            // The nft walk from `si` to `di` gives the evaluator's verdict.
            let nft_agrees = |si: IpAddr, di: IpAddr| {
                let nft = walk_nodes(c, &rulesets, from, to, si, di, protocol, port);
                assert_eq!(
                    nft,
                    want,
                    "nft {} ({si}) -> {} ({di}) {protocol}/{port}",
                    from.key(),
                    to.key()
                );
            };
            for (si, di) in from.ips.iter().zip(&to.ips) {
                nft_agrees(*si, *di);
            }
            // Over the link-local addresses, where both pods share a bridge: the same.
            if let (Some(si), Some(di), true) =
                (link_local_of(from), link_local_of(to), from.node == to.node)
            {
                nft_agrees(si, di);
            }
        }
    }
}

pub fn node_index(p: &Pod) -> usize {
    NODES
        .iter()
        .position(|n| Some(*n) == p.node.as_deref())
        .unwrap()
}

/// A new connection's first packet through the source's node, then (when it is another
/// node) the destination's node. Between two pods of one node it crosses the bridge, to
/// the destination's port.
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
        oif: (a == b).then(|| port_of(to)),
    };
    walk(&rulesets[a], &pkt) && (a == b || walk(&rulesets[b], &pkt))
}

pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    /// The bridge port it leaves on, when it is bridged between two pods of the node.
    pub oif: Option<Ifname>,
}

/// Whether a new connection's first packet gets through the node: bridged, the bridge
/// table's `forward` first, then (br_netfilter) the inet table's `forward`.
pub fn walk(rs: &Ruleset, pkt: &Packet) -> bool {
    if pkt.oif.is_some() && walk_chain(&rs.bridge, "forward", pkt) == Some(NftVerdict::Drop) {
        return false;
    }
    match walk_chain(&rs.inet, "forward", pkt) {
        Some(NftVerdict::Drop) => false,
        Some(NftVerdict::Accept) | None | Some(NftVerdict::Return) => true,
        Some(NftVerdict::Jump(_) | NftVerdict::Goto(_)) => unreachable!(),
    }
}

fn lookup(pkt: &Packet) -> Lookup {
    Lookup {
        src: pkt.src,
        dst: pkt.dst,
        protocol: pkt.protocol,
        port: pkt.port,
        oif: pkt.oif,
    }
}

fn walk_chain(t: &Table, chain: &str, pkt: &Packet) -> Option<NftVerdict> {
    for rule in &t.chains[chain].rules {
        // A verdict map's hit is the rule's verdict: a jump to the chain it names.
        let mut verdict = rule.verdict.clone();
        let all = rule.exprs.iter().all(|e| match e {
            // A connection's first TCP/UDP/SCTP packet: new, not ICMPv6.
            Expr::CtEstablished | Expr::CtInvalid | Expr::NeighbourDiscovery => false,
            Expr::L3(f) => f.is_none_or(|f| Family::of(pkt.src) == f),
            Expr::InSet { field, set } => in_set(t, *field, set, pkt),
            // Of the field's family, and not in the set.
            Expr::NotInSet { field, set } => family_ok(*field, pkt) && !in_set(t, *field, set, pkt),
            Expr::VerdictMap { field, map } => {
                let hit = family_ok(*field, pkt)
                    .then(|| {
                        t.sets[map].elements.iter().find_map(|e| match (e, field) {
                            (Element::Jump { addr, to }, Field::Saddr(_)) if *addr == pkt.src => {
                                Some(to.name())
                            }
                            (Element::Jump { addr, to }, Field::Daddr(_)) if *addr == pkt.dst => {
                                Some(to.name())
                            }
                            (Element::DevJump { dev, to }, Field::Oif) if Some(*dev) == pkt.oif => {
                                Some(to.name())
                            }
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
            Some(NftVerdict::Jump(c)) => match walk_chain(t, &c, pkt) {
                Some(NftVerdict::Return) | None => {}
                v => return v,
            },
            // In place of this chain: what it ends with is this chain's end.
            Some(NftVerdict::Goto(c)) => return walk_chain(t, &c, pkt),
            Some(v) => return Some(v),
        }
    }
    None
}

fn family_ok(field: Field, pkt: &Packet) -> bool {
    field.family().is_none_or(|f| Family::of(pkt.src) == f)
}

fn in_set(t: &Table, field: Field, set: &str, pkt: &Packet) -> bool {
    family_ok(field, pkt)
        && t.sets[set]
            .elements
            .iter()
            .any(|e| e.matches(field, &lookup(pkt)))
}
