//! What a pod sends besides unicast to another pod's API address: to a neighbour's
//! link-local address, and to multicast and broadcast addresses, which the node's bridge
//! hands every pod on it. For every pair of pods of one node and policies of every kind,
//! a packet walked through the node's two tables (the bridge table at the receiver's port,
//! then the inet table, as br_netfilter hands it on) gets the evaluator's verdict.

mod support;

use std::net::IpAddr;

use ferry_netpol::eval::{is_group, verdict_at, Endpoint};
use ferry_netpol::model::Protocol::{self, Tcp, Udp};
use ferry_netpol::{Cluster, Ruleset};
use serde_json::json;
use support::{link_local_of, local_on, policy, port_of, seen_from, walk, world, Packet, NODES};

fn cluster(policies: &[(&str, &str, serde_json::Value)]) -> Cluster {
    let mut c = world(
        &[
            "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
        ],
        &[80, 5353],
        &[Tcp, Udp],
    );
    for (ns, name, spec) in policies {
        c.policies.push(policy(ns, name, spec.clone()));
    }
    c
}

const GROUPS: [&str; 4] = ["ff02::1", "ff02::fb", "224.0.0.1", "255.255.255.255"];
const SERVICES: [(Protocol, u16); 3] = [(Tcp, 80), (Udp, 80), (Udp, 5353)];

/// Every pair of pods of each node, over link-local unicast and to every group: the
/// tables' verdict is the evaluator's (over the node's view of the cluster, which holds
/// its pods' link-local addresses). Returns how many of the checks were denials, so a
/// case can say it denied something.
fn check(c: &Cluster) -> (usize, usize) {
    let (mut checked, mut denied) = (0, 0);
    for node in NODES {
        let rs = Ruleset::compute(c, &local_on(c, node));
        let seen = seen_from(c, node);
        let here: Vec<_> = seen
            .pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(node))
            .collect();
        for from in &here {
            for to in &here {
                if from.key() == to.key() {
                    continue;
                }
                let (Some(ll_from), Some(ll_to)) = (link_local_of(from), link_local_of(to)) else {
                    continue;
                };
                let v4_from = from.ips.iter().copied().find(IpAddr::is_ipv4);
                let mut cases: Vec<(IpAddr, IpAddr)> = vec![(ll_from, ll_to)];
                for g in GROUPS {
                    let g: IpAddr = g.parse().unwrap();
                    // The source a pod's kernel picks: link-local for IPv6's link-scope
                    // groups, its address for IPv4.
                    let src = if g.is_ipv4() { v4_from } else { Some(ll_from) };
                    cases.extend(src.map(|s| (s, g)));
                }
                for (src, dst) in cases {
                    for (protocol, port) in SERVICES {
                        let v = verdict_at(
                            &seen,
                            Endpoint {
                                pod: Some(from),
                                ip: Some(src),
                            },
                            Endpoint {
                                pod: Some(to),
                                ip: Some(dst),
                            },
                            protocol,
                            port,
                        );
                        assert_eq!(v.not_own.is_some(), is_group(dst), "{v}");
                        let pkt = Packet {
                            src,
                            dst,
                            protocol,
                            port,
                            oif: Some(port_of(to)),
                        };
                        let nft = walk(&rs, &pkt);
                        assert_eq!(
                            nft,
                            v.allowed,
                            "{node}: {} ({src}) -> {} at {dst} {protocol}/{port}: the evaluator says\n{v}",
                            from.key(),
                            to.key()
                        );
                        checked += 1;
                        denied += usize::from(!nft);
                    }
                }
            }
        }
    }
    (checked, denied)
}

#[test]
fn without_policies_everything_passes() {
    let (checked, denied) = check(&cluster(&[]));
    assert!(checked > 100);
    assert_eq!(denied, 0);
}

#[test]
fn deny_all_denies_link_local_and_group_traffic_both_ways() {
    let (_, denied) = check(&cluster(&[
        (
            "x",
            "deny-in",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"]}),
        ),
        (
            "y",
            "deny-out",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
        ),
        (
            "z",
            "deny-both",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        ),
    ]));
    assert!(denied > 100, "{denied}");
}

#[test]
fn allowances_hold_over_link_local_and_for_groups_rule_by_rule() {
    let (_, denied) = check(&cluster(&[
        // By selector and port: the peers' link-local addresses are theirs.
        (
            "x",
            "from-y-on-5353",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                "ports": [{"protocol": "UDP", "port": 5353}]}]}),
        ),
        // By named port, from anywhere.
        (
            "x",
            "b-web",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{
                "ports": [{"port": "serve-80-tcp"}, {"port": "serve-5353-udp", "protocol": "UDP"}]}]}),
        ),
        // By ipBlock: IPv4 everywhere but no IPv6 (so link-local sources are refused).
        (
            "y",
            "v4-only",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{
                "from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}),
        ),
        // Link-local sources by ipBlock, on one port.
        (
            "y",
            "link-local",
            json!({"podSelector": {"matchLabels": {"pod": "c"}}, "ingress": [{
                "from": [{"ipBlock": {"cidr": "fe80::/10"}}], "ports": [{"port": 80}]}]}),
        ),
        // Egress: to a selector (groups are no pod's: refused) and to groups by ipBlock.
        (
            "z",
            "to-x",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
        ),
        (
            "z",
            "to-groups",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": {"cidr": "224.0.0.0/4"}},
                                      {"ipBlock": {"cidr": "ff02::1/128"}}],
                               "ports": [{"protocol": "UDP", "port": 5353}]}]}),
        ),
    ]));
    assert!(denied > 50, "{denied}");
}
