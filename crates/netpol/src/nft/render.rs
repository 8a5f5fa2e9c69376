//! The objects in nft's syntax, as `nft -f` takes them; [`super::parse`] reads back what
//! `nft -j` lists of them.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::naming::TABLE;
use crate::nft::{
    Chain, Element, Expr, Field, Rule, Ruleset, Set, SetKind, Table, TableFamily, Verdict,
};
use crate::ranges::{self, AddrRange, Family};

impl Rule {
    /// The rule in nft syntax (what follows `add rule <family> ferry_policy <chain>`).
    pub fn render(&self) -> String {
        let mut parts: Vec<String> = self.exprs.iter().map(Expr::render).collect();
        if let Some(v) = &self.verdict {
            parts.push(match v {
                Verdict::Accept => "accept".into(),
                Verdict::Drop => "drop".into(),
                Verdict::Return => "return".into(),
                Verdict::Jump(c) => format!("jump {c}"),
                Verdict::Goto(c) => format!("goto {c}"),
            });
        }
        if let Some(c) = &self.comment {
            parts.push(format!("comment \"{c}\""));
        }
        parts.join(" ")
    }
}

impl Field {
    pub fn render(self) -> &'static str {
        match self {
            Field::Saddr(Family::V4) => "ip saddr",
            Field::Saddr(Family::V6) => "ip6 saddr",
            Field::Daddr(Family::V4) => "ip daddr",
            Field::Daddr(Family::V6) => "ip6 daddr",
            Field::DaddrPort(Family::V4) => "ip daddr . meta l4proto . th dport",
            Field::DaddrPort(Family::V6) => "ip6 daddr . meta l4proto . th dport",
            Field::SaddrDaddr(Family::V4) => "ip saddr . ip daddr",
            Field::SaddrDaddr(Family::V6) => "ip6 saddr . ip6 daddr",
            Field::Oif => "oifname",
            Field::OifService => "oifname . meta l4proto . th dport",
            Field::OifDaddr(Family::V4) => "oifname . ip daddr",
            Field::OifDaddr(Family::V6) => "oifname . ip6 daddr",
        }
    }
}

impl Expr {
    pub fn render(&self) -> String {
        match self {
            Expr::CtEstablished => "ct state established,related".into(),
            Expr::CtInvalid => "ct state invalid".into(),
            Expr::NeighbourDiscovery => {
                "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }".into()
            }
            Expr::L3(Some(Family::V4)) => "meta protocol ip".into(),
            Expr::L3(Some(Family::V6)) => "meta protocol ip6".into(),
            Expr::L3(None) => "meta protocol { ip, ip6 }".into(),
            Expr::InSet { field, set } => format!("{} @{set}", field.render()),
            Expr::NotInSet { field, set } => format!("{} != @{set}", field.render()),
            Expr::VerdictMap { field, map } => format!("{} vmap @{map}", field.render()),
            Expr::Count { field, set } => format!("update @{set} {{ {} }}", field.render()),
            Expr::Limit(n) => format!("limit rate {n}/second"),
            Expr::Log { prefix, group } => format!("log prefix \"{prefix}\" group {group}"),
            Expr::Counter => "counter".into(),
        }
    }
}

fn render_addr_range(lo: IpAddr, hi: IpAddr) -> String {
    if lo == hi {
        return lo.to_string();
    }
    let r = AddrRange {
        family: Family::of(lo),
        lo: ranges::to_int(lo),
        hi: ranges::to_int(hi),
    };
    match r.prefix_len() {
        Some(len) => format!("{lo}/{len}"),
        None => format!("{lo}-{hi}"),
    }
}

fn render_ports(lo: u16, hi: u16) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

impl Element {
    /// The element as `delete element` names it: a map's key without its value.
    pub fn render_key(&self) -> String {
        match *self {
            Element::Jump { addr, .. } => addr.to_string(),
            Element::DevJump { dev, .. } => format!("\"{dev}\""),
            _ => self.render(),
        }
    }

    pub fn render(&self) -> String {
        match *self {
            Element::Addr(ip) => ip.to_string(),
            Element::Pair(a, b) => format!("{a} . {b}"),
            Element::Jump { addr, to } => format!("{addr} : jump {}", to.name()),
            Element::Range { lo, hi } => render_addr_range(lo, hi),
            Element::Ports {
                lo,
                hi,
                protocol,
                port_lo,
                port_hi,
            } => format!(
                "{} . {} . {}",
                render_addr_range(lo, hi),
                protocol.nft(),
                render_ports(port_lo, port_hi)
            ),
            Element::Dev(d) => format!("\"{d}\""),
            Element::DevService {
                dev,
                protocol,
                port_lo,
                port_hi,
            } => format!(
                "\"{dev}\" . {} . {}",
                protocol.nft(),
                render_ports(port_lo, port_hi)
            ),
            Element::DevAddr(d, ip) => format!("\"{d}\" . {ip}"),
            Element::DevJump { dev, to } => format!("\"{dev}\" : jump {}", to.name()),
        }
    }
}

impl SetKind {
    /// The body of the set's declaration, between its braces.
    pub fn render(self) -> String {
        let addr = Family::nft_addr_type;
        match self {
            SetKind::Addrs(f) => format!("type {};", addr(f)),
            SetKind::Verdicts(f) => format!("type {} : verdict;", addr(f)),
            SetKind::Pairs(f) => format!("type {} . {};", addr(f), addr(f)),
            SetKind::Ranges(f) => format!("type {}; flags interval;", addr(f)),
            SetKind::Ports(f) => format!(
                "type {} . inet_proto . inet_service; flags interval;",
                addr(f)
            ),
            // A timeout lets the elements of pods that are gone expire; a denied pod's
            // element is refreshed by every denial.
            SetKind::Counters(f) => format!(
                "type {}; size 65535; flags dynamic,timeout; timeout 1h; counter;",
                addr(f)
            ),
            SetKind::Devs => "type ifname;".into(),
            SetKind::DevServices => {
                "type ifname . inet_proto . inet_service; flags interval;".into()
            }
            SetKind::DevAddrs(f) => format!("type ifname . {};", addr(f)),
            SetKind::DevVerdicts => "type ifname : verdict;".into(),
        }
    }
}

/// Joins rendered elements into nft's `{ a, b }` lists, a bounded number per line so that
/// one command never grows past what nft's parser handles well.
pub(crate) fn element_lists<'a>(elements: impl Iterator<Item = &'a Element>) -> Vec<String> {
    lists(elements.map(Element::render).collect())
}

/// The same, as `delete element` takes them: keys only.
pub(crate) fn key_lists<'a>(elements: impl Iterator<Item = &'a Element>) -> Vec<String> {
    lists(elements.map(Element::render_key).collect())
}

fn lists(all: Vec<String>) -> Vec<String> {
    all.chunks(512)
        .map(|c| format!("{{ {} }}", c.join(", ")))
        .collect()
}

impl Ruleset {
    /// Both tables as one script that replaces whatever tables are there, in one
    /// transaction: for each, `add table` (so that the delete cannot fail), `delete
    /// table`, create.
    pub fn render_replace(&self) -> String {
        TableFamily::ALL
            .iter()
            .map(|f| self.table(*f).render_replace(*f))
            .collect()
    }
}

impl Table {
    /// The table as a script that replaces whatever table of `family` is there.
    pub fn render_replace(&self, family: TableFamily) -> String {
        let t = format!("{} {TABLE}", family.name());
        let mut s = String::new();
        let _ = writeln!(s, "add table {t}");
        let _ = writeln!(s, "delete table {t}");
        let _ = writeln!(s, "add table {t}");
        // Every chain exists before a rule or a verdict map's element jumps to it.
        for (name, chain) in &self.chains {
            s.push_str(&chain.render_add(family, name));
        }
        for (name, set) in &self.sets {
            s.push_str(&set.render_add(family, name));
        }
        for (name, chain) in &self.chains {
            s.push_str(&chain.render_rules(family, name));
        }
        s
    }
}

impl Set {
    /// `set` or `map`, as nft's commands name the object.
    pub(crate) fn noun(&self) -> &'static str {
        match self.kind {
            SetKind::Verdicts(_) | SetKind::DevVerdicts => "map",
            _ => "set",
        }
    }

    pub(crate) fn render_add(&self, family: TableFamily, name: &str) -> String {
        let t = format!("{} {TABLE}", family.name());
        let mut s = format!(
            "add {} {t} {name} {{ {} }}\n",
            self.noun(),
            self.kind.render()
        );
        if !matches!(self.kind, SetKind::Counters(_)) {
            for list in element_lists(self.elements.iter()) {
                let _ = writeln!(s, "add element {t} {name} {list}");
            }
        }
        s
    }
}

impl Chain {
    pub(crate) fn render_add(&self, family: TableFamily, name: &str) -> String {
        let t = format!("{} {TABLE}", family.name());
        match self.hook {
            Some(h) => format!(
                "add chain {t} {name} {{ type filter hook {} priority filter; policy accept; }}\n",
                h.name()
            ),
            None => format!("add chain {t} {name}\n"),
        }
    }

    pub(crate) fn render_rules(&self, family: TableFamily, name: &str) -> String {
        let t = format!("{} {TABLE}", family.name());
        self.rules
            .iter()
            .map(|r| format!("add rule {t} {name} {}\n", r.render()))
            .collect()
    }
}
