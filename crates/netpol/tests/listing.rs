//! Reading `nft -j` listings: only what this crate makes is understood, anything else is
//! an error (the caller then replaces the table), never a guess.

use netpol::Ruleset;
use serde_json::json;

const META: &str = r#"{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}"#;

fn parse(items: serde_json::Value) -> Result<Ruleset, netpol::listing::ListingError> {
    let mut all = vec![serde_json::from_str::<serde_json::Value>(META).unwrap()];
    all.push(json!({"table": {"family": "inet", "name": "ferry_policy", "handle": 1}}));
    all.extend(items.as_array().unwrap().iter().cloned());
    Ruleset::parse_json(&json!({ "nftables": all }).to_string())
}

#[test]
fn an_empty_table_is_the_empty_ruleset() {
    assert_eq!(parse(json!([])).unwrap(), Ruleset::default());
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
    assert!(Ruleset::parse_json("not json").is_err());
    assert!(Ruleset::parse_json("{}").is_err());
}
