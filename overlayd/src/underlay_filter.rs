//! VXLAN only from nodes: the VNI, the port and the VTEP MACs are no secret, so a host on
//! the underlay that is not a node could otherwise reach any pod with any inner source
//! address. ferry's own nftables table (`table ip ferry`, or `table ip6 ferry` over an
//! IPv6 underlay) drops VXLAN to this host from any address but the leases' public IPs,
//! before conntrack sees it, counting the drops.
//!
//! A table of our own works here (unlike for the forward rules, see `rules`): a drop in
//! any table is final. The set of nodes changes by adding and removing elements, one small
//! `nft -f -` transaction per change; the rule itself is only written when the table is
//! missing or differs.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context, Result};
use serde_json::{json, Value};

pub const TABLE: &str = "ferry";
pub const SET: &str = "nodes";
pub const CHAIN: &str = "vxlan-in";

/// The underlay's family: which table, set type and header field.
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

    /// The nftables family, also the header's protocol name in a rule.
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

/// The rule, as `nft` takes it.
fn rule(f: Family, port: u16) -> String {
    format!(
        "udp dport {port} fib daddr type local {} saddr != @{SET} counter drop comment \"VXLAN only from ferry nodes\"",
        f.nft()
    )
}

/// The rule's expressions as `nft -j` prints them, counters left out.
fn rule_json(f: Family, port: u16) -> Value {
    json!([
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": port}},
        {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
        {"match": {"op": "!=", "left": {"payload": {"protocol": f.nft(), "field": "saddr"}}, "right": format!("@{SET}")}},
        {"drop": null}
    ])
}

fn elements(ips: &BTreeSet<IpAddr>) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole table, replacing whatever is there, in one transaction.
pub fn create_script(f: Family, port: u16, nodes: &BTreeSet<IpAddr>) -> String {
    let elems = if nodes.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", elements(nodes))
    };
    let (fam, ty) = (f.nft(), f.set_type());
    format!(
        "table {fam} {TABLE} {{}}\ndelete table {fam} {TABLE}\ntable {fam} {TABLE} {{\n\
         \tset {SET} {{ type {ty};{elems} }}\n\
         \tchain {CHAIN} {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\t{}\n\t}}\n}}\n",
        rule(f, port)
    )
}

/// The set changes that make `have` into `want`, as one `nft` script; `None` when there
/// is nothing to do.
pub fn update_script(
    f: Family,
    want: &BTreeSet<IpAddr>,
    have: &BTreeSet<IpAddr>,
) -> Option<String> {
    let add: BTreeSet<IpAddr> = want.difference(have).copied().collect();
    let del: BTreeSet<IpAddr> = have.difference(want).copied().collect();
    let fam = f.nft();
    let mut s = String::new();
    if !add.is_empty() {
        s += &format!("add element {fam} {TABLE} {SET} {{ {} }}\n", elements(&add));
    }
    if !del.is_empty() {
        s += &format!(
            "delete element {fam} {TABLE} {SET} {{ {} }}\n",
            elements(&del)
        );
    }
    (!s.is_empty()).then_some(s)
}

/// What the table holds, from `nft -j list table`: `None` when it is missing or its chain
/// is not exactly ferry's rule, else the set's elements.
pub fn parse(listing: &Value, f: Family, port: u16) -> Option<BTreeSet<IpAddr>> {
    let items = listing.get("nftables")?.as_array()?;
    let mut nodes = None;
    let mut rules = Vec::new();
    let mut hooked = false;
    for item in items {
        if let Some(set) = item.get("set").filter(|s| s["name"] == SET) {
            let elems = set.get("elem").and_then(Value::as_array);
            nodes = Some(
                elems
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.as_str()?.parse().ok())
                    .filter(|ip: &IpAddr| Family::of(*ip) == f)
                    .collect::<BTreeSet<IpAddr>>(),
            );
        }
        if let Some(chain) = item.get("chain").filter(|c| c["name"] == CHAIN) {
            hooked = chain["hook"] == "prerouting" && chain["policy"] == "accept";
        }
        if let Some(rule) = item.get("rule").filter(|r| r["chain"] == CHAIN) {
            let expr: Vec<Value> = rule["expr"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e.get("counter").is_none())
                .cloned()
                .collect();
            rules.push(Value::Array(expr));
        }
    }
    (hooked && rules == [rule_json(f, port)]).then_some(nodes?)
}

/// The set as the kernel holds it; `None` when the table is missing or not ferry's rule.
pub fn read(f: Family, port: u16) -> Result<Option<BTreeSet<IpAddr>>> {
    match crate::nft::list_table(f.nft(), TABLE)? {
        Some(text) => {
            let v: Value = serde_json::from_str(&text).context("parse `nft -j` output")?;
            Ok(parse(&v, f, port))
        }
        None => Ok(None),
    }
}

pub fn run(script: &str) -> Result<()> {
    crate::nft::apply(script)
}

/// Makes the kernel's table hold `want`: the set changed as a diff when the table is
/// ferry's, the whole table written when not. Returns whether anything changed.
pub fn ensure(f: Family, port: u16, want: &BTreeSet<IpAddr>) -> Result<bool> {
    match read(f, port)? {
        Some(have) => match update_script(f, want, &have) {
            Some(s) => run(&s).map(|()| true),
            None => Ok(false),
        },
        None => run(&create_script(f, port, want)).map(|()| true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(last: &[u8]) -> BTreeSet<IpAddr> {
        last.iter().map(|l| IpAddr::from([192, 0, 2, *l])).collect()
    }

    fn ips6(last: &[u16]) -> BTreeSet<IpAddr> {
        last.iter()
            .map(|l| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, *l]))
            .collect()
    }

    #[test]
    fn an_ipv6_underlay_gets_its_own_table_of_ipv6_nodes() {
        let s = create_script(Family::V6, 4789, &ips6(&[0x11, 0x12]));
        assert!(
            s.starts_with("table ip6 ferry {}\ndelete table ip6 ferry\n"),
            "{s}"
        );
        assert!(s.contains("type ipv6_addr; elements = { 2001:db8::11, 2001:db8::12 }"));
        assert!(s.contains("udp dport 4789 fib daddr type local ip6 saddr != @nodes counter drop"));
        assert_eq!(
            update_script(Family::V6, &ips6(&[0x11, 0x13]), &ips6(&[0x11, 0x12])).unwrap(),
            "add element ip6 ferry nodes { 2001:db8::13 }\n\
             delete element ip6 ferry nodes { 2001:db8::12 }\n"
        );
        let mut expr = rule_json(Family::V6, 4789).as_array().unwrap().clone();
        expr.insert(3, json!({"counter": {"packets": 1, "bytes": 90}}));
        let v = json!({"nftables": [
            {"set": {"family": "ip6", "name": "nodes", "table": "ferry", "type": "ipv6_addr", "elem": ["2001:db8::11"]}},
            {"chain": {"family": "ip6", "table": "ferry", "name": "vxlan-in", "type": "filter",
                       "hook": "prerouting", "prio": -300, "policy": "accept"}},
            {"rule": {"family": "ip6", "table": "ferry", "chain": "vxlan-in", "expr": expr}}
        ]});
        assert_eq!(parse(&v, Family::V6, 4789), Some(ips6(&[0x11])));
        // The IPv4 rule is not the IPv6 one.
        assert_eq!(parse(&v, Family::V4, 4789), None);
    }

    #[test]
    fn set_changes_are_a_diff() {
        assert_eq!(
            update_script(Family::V4, &ips(&[1, 2]), &ips(&[1, 2])),
            None
        );
        assert_eq!(
            update_script(Family::V4, &ips(&[1, 3, 4]), &ips(&[1, 2])).unwrap(),
            "add element ip ferry nodes { 192.0.2.3, 192.0.2.4 }\n\
             delete element ip ferry nodes { 192.0.2.2 }\n"
        );
        assert_eq!(
            update_script(Family::V4, &ips(&[]), &ips(&[9])).unwrap(),
            "delete element ip ferry nodes { 192.0.2.9 }\n"
        );
    }

    #[test]
    fn the_table_is_made_whole_in_one_go() {
        let s = create_script(Family::V4, 4789, &ips(&[12, 13]));
        assert!(
            s.starts_with("table ip ferry {}\ndelete table ip ferry\n"),
            "{s}"
        );
        assert!(s.contains("elements = { 192.0.2.12, 192.0.2.13 }"), "{s}");
        assert!(s.contains("hook prerouting priority raw"), "{s}");
        assert!(
            s.contains("udp dport 4789 fib daddr type local ip saddr != @nodes counter drop"),
            "{s}"
        );
        // An empty set has no elements clause (nft refuses an empty one).
        assert!(!create_script(Family::V4, 4789, &ips(&[])).contains("elements"));
    }

    fn listing(port: u16, elems: &[&str]) -> Value {
        let mut expr = rule_json(Family::V4, port).as_array().unwrap().clone();
        expr.insert(3, json!({"counter": {"packets": 5, "bytes": 400}}));
        json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "ferry", "handle": 1}},
            {"set": {"family": "ip", "name": "nodes", "table": "ferry", "type": "ipv4_addr", "elem": elems}},
            {"chain": {"family": "ip", "table": "ferry", "name": "vxlan-in", "type": "filter",
                       "hook": "prerouting", "prio": -300, "policy": "accept"}},
            {"rule": {"family": "ip", "table": "ferry", "chain": "vxlan-in", "expr": expr}}
        ]})
    }

    #[test]
    fn a_listing_is_ours_only_with_exactly_our_rule() {
        assert_eq!(
            parse(
                &listing(4789, &["192.0.2.12", "192.0.2.13"]),
                Family::V4,
                4789
            ),
            Some(ips(&[12, 13]))
        );
        // Another port, or a rule taken out, means the table is written again.
        assert_eq!(parse(&listing(4789, &[]), Family::V4, 8472), None);
        let mut v = listing(4789, &[]);
        v["nftables"].as_array_mut().unwrap().pop();
        assert_eq!(parse(&v, Family::V4, 4789), None);
        let mut v = listing(4789, &[]);
        let extra = v["nftables"][4].clone();
        v["nftables"].as_array_mut().unwrap().push(extra);
        assert_eq!(parse(&v, Family::V4, 4789), None);
    }
}
