//! Reading the applied tables back: `nft -j list table inet ferry_policy` and `nft -j
//! list table bridge ferry_policy` into a [`Ruleset`], so that a restarted daemon plans
//! from what the kernel holds (and keeps the denial counters) instead of replacing them.
//!
//! Only what [`Ruleset::compute`] makes is understood; anything else in a table (a rule
//! someone added by hand, an object of a later version) is an error, and the caller then
//! replaces the tables ([`crate::Script::replace`]).

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::Value;

use crate::model::Protocol;
use crate::naming::TABLE;
use crate::nft::{
    Chain, ChainRef, Element, Expr, Field, Hook, Ifname, Rule, Ruleset, Set, SetKind, Table,
    TableFamily, Verdict,
};
use crate::ranges::{AddrRange, Family};

#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error("nft JSON listing is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("nft JSON listing: {what} not understood: {value}")]
    Unknown { what: String, value: String },
}

fn unknown(what: impl Into<String>, value: &Value) -> ListingError {
    let mut value = value.to_string();
    value.truncate(300);
    ListingError::Unknown {
        what: what.into(),
        value,
    }
}

impl Ruleset {
    /// Parses the listings of the two tables (`nft -j list table inet ferry_policy`, and
    /// of `bridge`); `None` for a table that is not there, which is the empty table.
    pub fn parse_json(inet: Option<&str>, bridge: Option<&str>) -> Result<Ruleset, ListingError> {
        let table = |listing: Option<&str>, family| match listing {
            Some(l) => Table::parse_json(l, family),
            None => Ok(Table::default()),
        };
        Ok(Ruleset {
            inet: table(inet, TableFamily::Inet)?,
            bridge: table(bridge, TableFamily::Bridge)?,
        })
    }
}

impl Table {
    /// Parses the output of `nft -j list table <family> ferry_policy`.
    pub fn parse_json(listing: &str, family: TableFamily) -> Result<Table, ListingError> {
        let v: Value = serde_json::from_str(listing)?;
        let items = v["nftables"]
            .as_array()
            .ok_or_else(|| unknown("top level", &v))?;
        let mut rs = Table::default();
        let mut rules: Vec<(String, Rule)> = Vec::new();
        for item in items {
            let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
                return Err(unknown("item", item));
            };
            if kind == "metainfo" {
                continue;
            }
            let ours = body["family"] == family.name()
                && (body["table"] == TABLE || (kind == "table" && body["name"] == TABLE));
            if !ours {
                return Err(unknown("object of another table", item));
            }
            let name = || {
                body["name"]
                    .as_str()
                    .map(String::from)
                    .ok_or_else(|| unknown("name", body))
            };
            match kind.as_str() {
                "table" => {}
                "set" => {
                    let set = parse_set(body)?;
                    rs.sets.insert(name()?, set);
                }
                "map" => {
                    let map = parse_map(body)?;
                    rs.sets.insert(name()?, map);
                }
                "chain" => {
                    let hook = match (body.get("hook"), body.get("type")) {
                        (None, None) => None,
                        _ if body["type"] == "filter"
                            && body["prio"] == family.filter_priority()
                            && body["policy"] == "accept" =>
                        {
                            match (family, body["hook"].as_str()) {
                                (_, Some("forward")) => Some(Hook::Forward),
                                (TableFamily::Inet, Some("input")) => Some(Hook::Input),
                                _ => return Err(unknown("base chain", body)),
                            }
                        }
                        _ => return Err(unknown("base chain", body)),
                    };
                    rs.chains.insert(
                        name()?,
                        Chain {
                            hook,
                            rules: Vec::new(),
                        },
                    );
                }
                "rule" => {
                    let chain = body["chain"]
                        .as_str()
                        .ok_or_else(|| unknown("rule chain", body))?;
                    rules.push((chain.to_string(), parse_rule(body)?));
                }
                _ => return Err(unknown("object", item)),
            }
        }
        // Rules are listed after their chains, in chain order.
        for (chain, rule) in rules {
            rs.chains
                .get_mut(&chain)
                .ok_or_else(|| unknown("rule of an unlisted chain", &Value::String(chain.clone())))?
                .rules
                .push(rule);
        }
        Ok(rs)
    }
}

fn family_of_type(t: &Value) -> Option<Family> {
    match t.as_str()? {
        "ipv4_addr" => Some(Family::V4),
        "ipv6_addr" => Some(Family::V6),
        _ => None,
    }
}

fn parse_set(body: &Value) -> Result<Set, ListingError> {
    let flags: BTreeSet<&str> = body["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let counted = body["stmt"]
        .as_array()
        .is_some_and(|s| s.iter().any(|x| x.get("counter").is_some()));
    let ty = &body["type"];
    let kind = if ty == "ifname" && flags.is_empty() && !counted {
        SetKind::Devs
    } else if let Some(family) = family_of_type(ty) {
        if counted {
            SetKind::Counters(family)
        } else if flags.contains("interval") {
            SetKind::Ranges(family)
        } else if flags.is_empty() {
            SetKind::Addrs(family)
        } else {
            return Err(unknown("set flags", body));
        }
    } else {
        let parts = ty.as_array().ok_or_else(|| unknown("set type", body))?;
        match parts.as_slice() {
            [d, p, s]
                if d == "ifname"
                    && p == "inet_proto"
                    && s == "inet_service"
                    && flags.contains("interval") =>
            {
                SetKind::DevServices
            }
            [a, p, s] if p == "inet_proto" && s == "inet_service" && flags.contains("interval") => {
                SetKind::Ports(family_of_type(a).ok_or_else(|| unknown("set type", body))?)
            }
            [d, a] if d == "ifname" && flags.is_empty() => {
                SetKind::DevAddrs(family_of_type(a).ok_or_else(|| unknown("set type", body))?)
            }
            [a, b] if a == b && flags.is_empty() => {
                SetKind::Pairs(family_of_type(a).ok_or_else(|| unknown("set type", body))?)
            }
            _ => return Err(unknown("set type", body)),
        }
    };
    let mut elements = BTreeSet::new();
    if !matches!(kind, SetKind::Counters(_)) {
        for e in body["elem"].as_array().into_iter().flatten() {
            elements.insert(parse_element(kind, e).ok_or_else(|| unknown("set element", e))?);
        }
    }
    Ok(Set { kind, elements })
}

/// A verdict map from addresses (or bridge ports) to `jump <chain>`, the only maps ferry
/// makes.
fn parse_map(body: &Value) -> Result<Set, ListingError> {
    let kind = if body["type"] == "ifname" {
        SetKind::DevVerdicts
    } else {
        SetKind::Verdicts(family_of_type(&body["type"]).ok_or_else(|| unknown("map type", body))?)
    };
    if body["map"] != "verdict" || body.get("flags").is_some() {
        return Err(unknown("map", body));
    }
    let mut elements = BTreeSet::new();
    for e in body["elem"].as_array().into_iter().flatten() {
        let jump = || -> Option<Element> {
            let [k, v] = e.as_array()?.as_slice() else {
                return None;
            };
            let to = ChainRef::parse(v["jump"]["target"].as_str()?)?;
            match kind {
                SetKind::Verdicts(family) => {
                    let addr: IpAddr = k.as_str()?.parse().ok()?;
                    (Family::of(addr) == family).then_some(Element::Jump { addr, to })
                }
                _ => Some(Element::DevJump {
                    dev: Ifname::new(k.as_str()?)?,
                    to,
                }),
            }
        };
        elements.insert(jump().ok_or_else(|| unknown("map element", e))?);
    }
    Ok(Set { kind, elements })
}

fn addr_range(v: &Value) -> Option<AddrRange> {
    if let Some(s) = v.as_str() {
        return s.parse::<IpAddr>().ok().map(AddrRange::single);
    }
    if let Some(p) = v.get("prefix") {
        let net = format!("{}/{}", p["addr"].as_str()?, p["len"].as_u64()?);
        return net.parse().ok().map(AddrRange::of_net);
    }
    let r = v.get("range")?.as_array()?;
    let (lo, hi) = match r.as_slice() {
        [lo, hi] => (
            lo.as_str()?.parse::<IpAddr>().ok()?,
            hi.as_str()?.parse::<IpAddr>().ok()?,
        ),
        _ => return None,
    };
    (lo.is_ipv4() == hi.is_ipv4()).then(|| AddrRange {
        family: Family::of(lo),
        lo: crate::ranges::to_int(lo),
        hi: crate::ranges::to_int(hi),
    })
}

fn port_range(v: &Value) -> Option<(u16, u16)> {
    if let Some(n) = v.as_u64() {
        let n = u16::try_from(n).ok()?;
        return Some((n, n));
    }
    match v.get("range")?.as_array()?.as_slice() {
        [lo, hi] => Some((
            u16::try_from(lo.as_u64()?).ok()?,
            u16::try_from(hi.as_u64()?).ok()?,
        )),
        _ => None,
    }
}

fn parse_element(kind: SetKind, e: &Value) -> Option<Element> {
    let concat = || e.get("concat")?.as_array().map(Vec::as_slice);
    let protocol = |p: &Value| match p.as_str()? {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    };
    match kind {
        SetKind::Devs => Ifname::new(e.as_str()?).map(Element::Dev),
        SetKind::DevServices => {
            let [d, p, s] = concat()? else {
                return None;
            };
            let (port_lo, port_hi) = port_range(s)?;
            Some(Element::DevService {
                dev: Ifname::new(d.as_str()?)?,
                protocol: protocol(p)?,
                port_lo,
                port_hi,
            })
        }
        SetKind::DevAddrs(family) => {
            let [d, a] = concat()? else {
                return None;
            };
            let ip: IpAddr = a.as_str()?.parse().ok()?;
            (Family::of(ip) == family).then_some(Element::DevAddr(Ifname::new(d.as_str()?)?, ip))
        }
        SetKind::Addrs(_) => e.as_str()?.parse().ok().map(Element::Addr),
        SetKind::Ranges(_) => addr_range(e).map(|r| Element::Range {
            lo: r.lo_ip(),
            hi: r.hi_ip(),
        }),
        SetKind::Ports(_) => {
            let parts = e.get("concat")?.as_array()?;
            let [a, p, s] = parts.as_slice() else {
                return None;
            };
            let r = addr_range(a)?;
            let (port_lo, port_hi) = port_range(s)?;
            Some(Element::Ports {
                lo: r.lo_ip(),
                hi: r.hi_ip(),
                protocol: protocol(p)?,
                port_lo,
                port_hi,
            })
        }
        SetKind::Pairs(_) => match e.get("concat")?.as_array()?.as_slice() {
            [a, b] => Some(Element::Pair(
                a.as_str()?.parse().ok()?,
                b.as_str()?.parse().ok()?,
            )),
            _ => None,
        },
        SetKind::Counters(_) | SetKind::Verdicts(_) | SetKind::DevVerdicts => None,
    }
}

fn payload_addr(v: &Value) -> Option<(Family, &str)> {
    let p = v.get("payload")?;
    let family = match p["protocol"].as_str()? {
        "ip" => Family::V4,
        "ip6" => Family::V6,
        _ => return None,
    };
    let field = p["field"].as_str()?;
    (field == "saddr" || field == "daddr").then_some((family, field))
}

fn is_oifname(v: &Value) -> bool {
    v["meta"]["key"] == "oifname"
}

fn field_of(left: &Value) -> Option<Field> {
    if let Some((family, f)) = payload_addr(left) {
        return Some(if f == "saddr" {
            Field::Saddr(family)
        } else {
            Field::Daddr(family)
        });
    }
    if is_oifname(left) {
        return Some(Field::Oif);
    }
    let parts = left.get("concat")?.as_array()?;
    if let [a, b] = parts.as_slice() {
        let (fb, sb) = payload_addr(b)?;
        if is_oifname(a) {
            return (sb == "daddr").then_some(Field::OifDaddr(fb));
        }
        let (fa, sa) = payload_addr(a)?;
        return (fa == fb && sa == "saddr" && sb == "daddr").then_some(Field::SaddrDaddr(fa));
    }
    let [a, m, t] = parts.as_slice() else {
        return None;
    };
    let service = m["meta"]["key"] == "l4proto"
        && t["payload"]["protocol"] == "th"
        && t["payload"]["field"] == "dport";
    if !service {
        return None;
    }
    if is_oifname(a) {
        return Some(Field::OifService);
    }
    let (family, f) = payload_addr(a)?;
    (f == "daddr").then_some(Field::DaddrPort(family))
}

/// `meta protocol ip` (`ip6`, `{ ip, ip6 }`).
fn l3_of(right: &Value) -> Option<Expr> {
    let one = |v: &Value| match v.as_str()? {
        "ip" => Some(Family::V4),
        "ip6" => Some(Family::V6),
        _ => None,
    };
    if let Some(f) = one(right) {
        return Some(Expr::L3(Some(f)));
    }
    let mut both: Vec<Family> = right["set"]
        .as_array()?
        .iter()
        .map(one)
        .collect::<Option<_>>()?;
    both.sort_unstable();
    (both == Family::ALL).then_some(Expr::L3(None))
}

fn set_ref(v: &Value) -> Option<String> {
    v.as_str()?.strip_prefix('@').map(String::from)
}

fn parse_rule(body: &Value) -> Result<Rule, ListingError> {
    let mut rule = Rule {
        exprs: Vec::new(),
        verdict: None,
        comment: body["comment"].as_str().map(String::from),
    };
    for x in body["expr"].as_array().into_iter().flatten() {
        let bad = || unknown("rule expression", x);
        let Some((k, v)) = x.as_object().and_then(|o| o.iter().next()) else {
            return Err(bad());
        };
        if rule.verdict.is_some() {
            return Err(unknown("expression after the verdict", x));
        }
        match k.as_str() {
            "match" => {
                let left = &v["left"];
                let right = &v["right"];
                if left["ct"]["key"] == "state" {
                    let states: BTreeSet<&str> = match right {
                        Value::String(s) => [s.as_str()].into(),
                        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                        _ => return Err(bad()),
                    };
                    rule.exprs
                        .push(if states == BTreeSet::from(["established", "related"]) {
                            Expr::CtEstablished
                        } else if states == BTreeSet::from(["invalid"]) {
                            Expr::CtInvalid
                        } else {
                            return Err(bad());
                        });
                } else if left["payload"]["protocol"] == "icmpv6"
                    && left["payload"]["field"] == "type"
                {
                    let types: BTreeSet<&str> = right["set"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    if types != BTreeSet::from(["nd-neighbor-solicit", "nd-neighbor-advert"]) {
                        return Err(bad());
                    }
                    rule.exprs.push(Expr::NeighbourDiscovery);
                } else if left["meta"]["key"] == "protocol" && v["op"] == "==" {
                    rule.exprs.push(l3_of(right).ok_or_else(bad)?);
                } else if v["op"] == "==" {
                    let field = field_of(left).ok_or_else(bad)?;
                    let set = set_ref(right).ok_or_else(bad)?;
                    rule.exprs.push(Expr::InSet { field, set });
                } else if v["op"] == "!=" {
                    let field = field_of(left).ok_or_else(bad)?;
                    let set = set_ref(right).ok_or_else(bad)?;
                    rule.exprs.push(Expr::NotInSet { field, set });
                } else {
                    return Err(bad());
                }
            }
            "vmap" => {
                let field = field_of(&v["key"]).ok_or_else(bad)?;
                let map = set_ref(&v["data"]).ok_or_else(bad)?;
                rule.exprs.push(Expr::VerdictMap { field, map });
            }
            "set" if v["op"] == "update" => {
                let field = field_of(&v["elem"]).ok_or_else(bad)?;
                let set = set_ref(&v["set"]).ok_or_else(bad)?;
                rule.exprs.push(Expr::Count { field, set });
            }
            "limit" if v["per"] == "second" => {
                let n = v["rate"].as_u64().and_then(|n| u32::try_from(n).ok());
                rule.exprs.push(Expr::Limit(n.ok_or_else(bad)?));
            }
            "log" => {
                let prefix = v["prefix"].as_str().ok_or_else(bad)?.to_string();
                let group = v["group"].as_u64().and_then(|g| u16::try_from(g).ok());
                rule.exprs.push(Expr::Log {
                    prefix,
                    group: group.ok_or_else(bad)?,
                });
            }
            "counter" => rule.exprs.push(Expr::Counter),
            "accept" => rule.verdict = Some(Verdict::Accept),
            "drop" => rule.verdict = Some(Verdict::Drop),
            "return" => rule.verdict = Some(Verdict::Return),
            "jump" => {
                let target = v["target"].as_str().ok_or_else(bad)?;
                rule.verdict = Some(Verdict::Jump(target.into()));
            }
            "goto" => {
                let target = v["target"].as_str().ok_or_else(bad)?;
                rule.verdict = Some(Verdict::Goto(target.into()));
            }
            _ => return Err(bad()),
        }
    }
    Ok(rule)
}
