//! Reading the table back from `nft -j`: ferry's own, or to be written whole.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{json, Value};

use super::{Check, Family, Members, Shape, Source, CHAINS, INNER4, INNER6, NODES};

/// The table as read: what its sets hold and what each check dropped so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub members: Members,
    pub dropped: BTreeMap<Check, u64>,
}

/// An integer of a set element as `nft -j` lists it: a number, or a hex string when it is
/// wider than 64 bits.
pub(super) fn integer(v: &Value) -> Option<u128> {
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
pub(super) fn source(elem: &Value, v6: bool) -> Option<Source> {
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
pub(super) fn set_elements(set: &Value, f: Family) -> Option<Vec<Value>> {
    let name = set["name"].as_str()?;
    let ty = set.get("type")?;
    let ok = match name {
        NODES => ty == f.nft_addr_type(),
        INNER4 | INNER6 => {
            *ty == json!([f.nft_addr_type(), "integer"])
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
