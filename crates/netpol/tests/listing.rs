//! Reading `nft -j` listings: only what this crate makes is understood, anything else is
//! an error (the caller then replaces the table), never a guess.

use ferry_netpol::{Ruleset, Table, TableFamily};
use serde_json::json;

const META: &str = r#"{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}"#;

fn parse_in(
    family: TableFamily,
    items: serde_json::Value,
) -> Result<Table, ferry_netpol::listing::ListingError> {
    let mut all = vec![serde_json::from_str::<serde_json::Value>(META).unwrap()];
    all.push(json!({"table": {"family": family.name(), "name": "ferry_policy", "handle": 1}}));
    all.extend(items.as_array().unwrap().iter().cloned());
    Table::parse_json(&json!({ "nftables": all }).to_string(), family)
}

fn parse(items: serde_json::Value) -> Result<Table, ferry_netpol::listing::ListingError> {
    parse_in(TableFamily::Inet, items)
}

#[test]
fn an_empty_table_is_the_empty_ruleset() {
    assert_eq!(parse(json!([])).unwrap(), Table::default());
    assert_eq!(
        parse_in(TableFamily::Bridge, json!([])).unwrap(),
        Table::default()
    );
    // No table at all: nothing of either.
    assert_eq!(Ruleset::parse_json(None, None).unwrap(), Ruleset::default());
}

#[test]
fn foreign_or_garbled_content_is_refused() {
    let chain = json!({"chain": {"family": "inet", "table": "ferry_policy", "name": "ingress", "handle": 2}});
    let rule = |expr: serde_json::Value| json!({"rule": {"family": "inet", "table": "ferry_policy", "chain": "ingress", "handle": 3, "expr": expr}});
    let cases = [
        json!([
            chain,
            rule(
                json!([{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}])
            )
        ]),
        json!([chain, rule(json!([{"masquerade": null}]))]),
        json!([chain, rule(json!([{"accept": null}, {"counter": null}]))]),
        json!([rule(json!([{"accept": null}]))]),
        json!([{"chain": {"family": "inet", "table": "ferry_policy", "name": "in", "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}]),
        json!([{"set": {"family": "inet", "table": "ferry_policy", "name": "s", "type": "ether_addr"}}]),
        json!([{"set": {"family": "inet", "table": "ferry_policy", "name": "s", "type": "ipv4_addr", "elem": ["not-an-ip"]}}]),
        json!([{"set": {"family": "inet", "table": "ferry_policy", "name": "s", "type": ["ipv4_addr", "inet_proto", "inet_service"], "flags": ["interval"], "elem": [{"concat": ["10.0.0.1", "icmp", 0]}]}}]),
        json!([{"set": {"family": "ip", "table": "filter", "name": "s", "type": "ipv4_addr"}}]),
        // Verdict maps: only `address : jump <ferry's chain>` of the map's family.
        json!([{"map": {"family": "inet", "table": "ferry_policy", "name": "m", "type": "ipv4_addr", "map": "verdict", "elem": [["10.0.0.1", {"accept": null}]]}}]),
        json!([{"map": {"family": "inet", "table": "ferry_policy", "name": "m", "type": "ipv4_addr", "map": "verdict", "elem": [["10.0.0.1", {"jump": {"target": "KUBE-SERVICES"}}]]}}]),
        json!([{"map": {"family": "inet", "table": "ferry_policy", "name": "m", "type": "ipv4_addr", "map": "verdict", "elem": [["10.0.0.1", {"jump": {"target": "ingress_00000000000000zz"}}]]}}]),
        json!([{"map": {"family": "inet", "table": "ferry_policy", "name": "m", "type": "ipv4_addr", "map": "verdict", "elem": [["fd00::1", {"jump": {"target": "ingress_closed"}}]]}}]),
        json!([{"map": {"family": "inet", "table": "ferry_policy", "name": "m", "type": "ipv4_addr", "map": "ipv4_addr", "elem": [["10.0.0.1", "10.0.0.2"]]}}]),
        json!([
            chain,
            rule(json!([{"vmap": {"key": {"meta": {"key": "mark"}}, "data": "@m"}}]))
        ]),
    ];
    for c in cases {
        assert!(parse(c.clone()).is_err(), "accepted {c}");
    }
    assert!(Ruleset::parse_json(Some("not json"), None).is_err());
    assert!(Ruleset::parse_json(None, Some("{}")).is_err());
}

#[test]
fn foreign_bridge_content_is_refused() {
    let chain = json!({"chain": {"family": "bridge", "table": "ferry_policy", "name": "ingress_closed", "handle": 2}});
    let rule = |expr: serde_json::Value| json!({"rule": {"family": "bridge", "table": "ferry_policy", "chain": "ingress_closed", "handle": 3, "expr": expr}});
    let cases = [
        // The inet table's priority on a bridge chain, an input hook, another policy.
        json!([{"chain": {"family": "bridge", "table": "ferry_policy", "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}]),
        json!([{"chain": {"family": "bridge", "table": "ferry_policy", "name": "forward", "type": "filter", "hook": "input", "prio": -200, "policy": "accept"}}]),
        json!([{"chain": {"family": "bridge", "table": "ferry_policy", "name": "forward", "type": "filter", "hook": "forward", "prio": -200, "policy": "drop"}}]),
        // An object of the inet table in the bridge table's listing.
        json!([{"set": {"family": "inet", "table": "ferry_policy", "name": "s", "type": "ifname"}}]),
        json!([{"set": {"family": "bridge", "table": "ferry_policy", "name": "s", "type": "ifname", "elem": ["a name far longer than fifteen bytes"]}}]),
        json!([{"set": {"family": "bridge", "table": "ferry_policy", "name": "s", "type": ["ifname", "ipv4_addr"], "elem": [{"concat": ["fy1", "fd00::1"]}]}}]),
        json!([{"set": {"family": "bridge", "table": "ferry_policy", "name": "s", "type": ["ifname", "inet_proto", "inet_service"], "flags": ["interval"], "elem": [{"concat": ["fy1", "icmp", 0]}]}}]),
        json!([{"map": {"family": "bridge", "table": "ferry_policy", "name": "m", "type": "ifname", "map": "verdict", "elem": [["fy1", {"accept": null}]]}}]),
        json!([{"map": {"family": "bridge", "table": "ferry_policy", "name": "m", "type": "ifname", "map": "verdict", "elem": [["fy\"1", {"jump": {"target": "ingress_closed"}}]]}}]),
        json!([
            chain,
            rule(
                json!([{"match": {"op": "==", "left": {"meta": {"key": "protocol"}}, "right": "arp"}}, {"accept": null}])
            )
        ]),
        json!([
            chain,
            rule(
                json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@s"}}, {"drop": null}])
            )
        ]),
        json!([
            chain,
            rule(
                json!([{"match": {"op": "==", "left": {"concat": [{"meta": {"key": "oifname"}}, {"payload": {"protocol": "ip", "field": "saddr"}}]}, "right": "@s"}}, {"accept": null}])
            )
        ]),
    ];
    for c in cases {
        assert!(
            parse_in(TableFamily::Bridge, c.clone()).is_err(),
            "accepted {c}"
        );
    }
}
