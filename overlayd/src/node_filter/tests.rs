use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::json;

use super::*;
use crate::node_only::NodeOnly;

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
        json!({"set": {"family": "inet", "name": "nodes", "table": "ferry", "type": f.nft_addr_type(),
                   "elem": m.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>()}}),
        json!({"set": {"family": "inet", "name": "inner4", "table": "ferry", "type": [f.nft_addr_type(), "integer"],
                   "flags": ["interval"], "elem": elem(false)}}),
        json!({"set": {"family": "inet", "name": "inner6", "table": "ferry", "type": [f.nft_addr_type(), "integer"],
                   "flags": ["interval"], "elem": elem(true)}}),
    ];
    for (c, rules) in shape.chains() {
        items.push(
            json!({"chain": {"family": "inet", "table": "ferry", "name": c.name, "type": "filter",
                              "hook": c.hook, "prio": c.prio, "policy": "accept"}}),
        );
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
