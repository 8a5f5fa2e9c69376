//! Root tests: element changes written by `apply` reach exactly the state nft itself
//! makes, for every set kind of both tables and both address families, in network
//! namespaces the tests make and remove (the root namespace's firewall is never touched).
//! Without root they fail, unless FERRY_SKIP_ROOT_TESTS=1 says to skip them.

#[path = "../../../fuzz/rng.rs"]
mod rng;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferry_netpol::model::{Direction, Protocol};
use ferry_netpol::nft::{Chain, ChainRef, Element, Ifname, Set, SetKind};
use ferry_netpol::ranges::{from_int, Family};
use ferry_netpol::{plan_elements, Ruleset, SetChange, Table, TableFamily};
use ferry_nft_elements::{apply, Error, Op};
use ferry_testns::needs_root;
use ferry_testns::netns::Netns;
use rng::Rng;

fn listing(ns: &Netns, family: TableFamily) -> String {
    ns.sh(&format!("nft -j list table {} ferry_policy", family.name()))
}

fn read_back(ns: &Netns) -> Ruleset {
    let (inet, bridge) = (
        listing(ns, TableFamily::Inet),
        listing(ns, TableFamily::Bridge),
    );
    Ruleset::parse_json(Some(&inet), Some(&bridge)).expect("listing parses")
}

/// Both listings without handles, elements sorted: what nft shows of the tables.
fn shown(ns: &Netns) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for f in TableFamily::ALL {
        let v: serde_json::Value = serde_json::from_str(&listing(ns, f)).expect("JSON");
        for item in v["nftables"].as_array().expect("items") {
            let mut item = item.clone();
            if let Some(body) = item.as_object_mut().and_then(|o| o.values_mut().next()) {
                if let Some(o) = body.as_object_mut() {
                    o.remove("handle");
                    if let Some(e) = o.get_mut("elem").and_then(|e| e.as_array_mut()) {
                        e.sort_by_key(|x| x.to_string());
                    }
                }
            }
            if item.get("metainfo").is_none() {
                all.push(item);
            }
        }
    }
    all
}

fn in_ns(ns: &Netns, changes: Vec<SetChange>) -> Result<(), Error> {
    ferry_testns::inside::run(ns, move || apply(&changes))
}

const CHAINS: [u64; 3] = [0, 1, 0xdead_beef];

fn chain(rng: &mut Rng) -> ChainRef {
    ChainRef {
        dir: Direction::Ingress,
        sig: *rng.pick(&CHAINS),
    }
}

fn dev(rng: &mut Rng) -> Ifname {
    let names = ["fy0", "fyabcdefabcdefa", "eth0", "x"];
    let name = *rng.pick(&names);
    Ifname::new(name).expect("name")
}

fn last(f: Family) -> u128 {
    match f {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

fn int_ip(f: Family, v: u128) -> IpAddr {
    from_int(f, v)
}

/// An address from a small pool, so that sets share, gain and lose the same ones, and
/// the edges of the family are in it.
fn addr(rng: &mut Rng, f: Family) -> IpAddr {
    let base: u128 = match f {
        Family::V4 => 0x0a00_0000,
        Family::V6 => 0xfd00 << 112,
    };
    let v = match rng.below(10) {
        0 => 0,
        1 => last(f),
        _ => base + rng.below(16) as u128,
    };
    int_ip(f, v)
}

/// Disjoint inclusive intervals over the points `points` (sorted): some span several
/// points, some end just before the next one starts (adjacent), some are single values.
fn disjoint(rng: &mut Rng, points: &[u128], max: u128) -> Vec<(u128, u128)> {
    if rng.chance(4) {
        return vec![(0, max)];
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < points.len() {
        if !rng.chance(45) {
            i += 1;
            continue;
        }
        let j = (i + rng.below(3)).min(points.len() - 1);
        let lo = points[i];
        let mut hi = points[j];
        if j + 1 < points.len() && rng.chance(40) {
            // Up to the next point: the next range, if any, is adjacent.
            hi = points[j + 1] - 1;
        }
        out.push((lo, hi));
        i = j + 1;
    }
    out
}

fn addr_points(rng: &mut Rng, f: Family) -> Vec<u128> {
    let max = last(f);
    let base: u128 = match f {
        Family::V4 => 0x0a00_0000,
        Family::V6 => 0xfd00 << 112,
    };
    let mut p: BTreeSet<u128> = [0, 1, max - 1, max, max / 2, base, base + 1].into();
    for _ in 0..8 {
        p.insert(base + rng.below(64) as u128);
    }
    p.into_iter().collect()
}

fn port_ranges(rng: &mut Rng) -> Vec<(u16, u16)> {
    let mut p: BTreeSet<u128> = [0, 1, 79, 80, 81, 443, 8000, 65534, 65535].into();
    p.insert(rng.below(65536) as u128);
    let p: Vec<u128> = p.into_iter().collect();
    disjoint(rng, &p, 65535)
        .into_iter()
        .map(|(a, b)| (a as u16, b as u16))
        .collect()
}

const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// A random, valid content for a set of `kind`.
fn elements(rng: &mut Rng, kind: SetKind) -> BTreeSet<Element> {
    let mut out = BTreeSet::new();
    let n = rng.below(8);
    match kind {
        SetKind::Addrs(f) => (0..n).for_each(|_| {
            out.insert(Element::Addr(addr(rng, f)));
        }),
        SetKind::Pairs(f) => (0..n).for_each(|_| {
            out.insert(Element::Pair(addr(rng, f), addr(rng, f)));
        }),
        SetKind::Ranges(f) => {
            let pts = addr_points(rng, f);
            for (lo, hi) in disjoint(rng, &pts, last(f)) {
                out.insert(Element::Range {
                    lo: int_ip(f, lo),
                    hi: int_ip(f, hi),
                });
            }
        }
        SetKind::Ports(f) => {
            let pts = addr_points(rng, f);
            for (lo, hi) in disjoint(rng, &pts, last(f)) {
                for protocol in PROTOCOLS {
                    if !rng.chance(50) {
                        continue;
                    }
                    for (port_lo, port_hi) in port_ranges(rng) {
                        out.insert(Element::Ports {
                            lo: int_ip(f, lo),
                            hi: int_ip(f, hi),
                            protocol,
                            port_lo,
                            port_hi,
                        });
                    }
                }
            }
        }
        SetKind::Verdicts(f) => {
            // One value per key.
            let mut m = BTreeMap::new();
            for _ in 0..n {
                m.insert(addr(rng, f), chain(rng));
            }
            out.extend(m.into_iter().map(|(addr, to)| Element::Jump { addr, to }));
        }
        SetKind::Devs => (0..n).for_each(|_| {
            out.insert(Element::Dev(dev(rng)));
        }),
        SetKind::DevAddrs(f) => (0..n).for_each(|_| {
            out.insert(Element::DevAddr(dev(rng), addr(rng, f)));
        }),
        SetKind::DevServices => {
            for d in ["fy0", "fyabcdefabcdefa", "eth0"] {
                let dev = Ifname::new(d).expect("name");
                for protocol in PROTOCOLS {
                    if !rng.chance(40) {
                        continue;
                    }
                    for (port_lo, port_hi) in port_ranges(rng) {
                        out.insert(Element::DevService {
                            dev,
                            protocol,
                            port_lo,
                            port_hi,
                        });
                    }
                }
            }
        }
        SetKind::DevVerdicts => {
            let mut m = BTreeMap::new();
            for _ in 0..n {
                m.insert(dev(rng), chain(rng));
            }
            out.extend(m.into_iter().map(|(dev, to)| Element::DevJump { dev, to }));
        }
        SetKind::Counters(_) => {}
    }
    out
}

fn kinds(family: TableFamily) -> Vec<(String, SetKind)> {
    let mut out = Vec::new();
    for f in Family::ALL {
        let d = f.digit();
        match family {
            TableFamily::Inet => {
                out.push((format!("a{d}"), SetKind::Addrs(f)));
                out.push((format!("r{d}"), SetKind::Ranges(f)));
                out.push((format!("p{d}"), SetKind::Ports(f)));
                out.push((format!("pr{d}"), SetKind::Pairs(f)));
                out.push((format!("v{d}"), SetKind::Verdicts(f)));
                out.push((format!("c{d}"), SetKind::Counters(f)));
            }
            TableFamily::Bridge => {
                out.push((format!("da{d}"), SetKind::DevAddrs(f)));
            }
        }
    }
    if family == TableFamily::Bridge {
        out.push(("d".into(), SetKind::Devs));
        out.push(("ds".into(), SetKind::DevServices));
        out.push(("dv".into(), SetKind::DevVerdicts));
    }
    out
}

/// Both tables with a set of every kind, random elements (none when `empty`), and the
/// chains the maps jump to.
fn random_ruleset(rng: &mut Rng, empty: bool) -> Ruleset {
    let mut rs = Ruleset::default();
    for family in TableFamily::ALL {
        let mut t = Table::default();
        for sig in CHAINS {
            let to = ChainRef {
                dir: Direction::Ingress,
                sig,
            };
            t.chains.insert(
                to.name(),
                Chain {
                    hook: None,
                    rules: vec![],
                },
            );
        }
        for (name, kind) in kinds(family) {
            let elements = if empty {
                BTreeSet::new()
            } else {
                elements(rng, kind)
            };
            t.sets.insert(name, Set { kind, elements });
        }
        match family {
            TableFamily::Inet => rs.inet = t,
            TableFamily::Bridge => rs.bridge = t,
        }
    }
    rs
}

/// The cases the random walks must have met, so that a generator change cannot quietly
/// stop testing them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// A range to the family's last address added, and one removed.
    open_added: bool,
    open_removed: bool,
    /// The whole family as one range.
    everything: bool,
    /// A range starting at the zero address kept while others are added beside it (nft's
    /// zero end element added again next to that start).
    zero_start_kept: bool,
    /// Two ranges of one set where one ends right before the other starts.
    adjacent: bool,
    /// A range removed and another of the same start added in one batch.
    same_start_replaced: bool,
    /// A map's key getting another chain in one batch.
    value_changed: bool,
    /// Ports 0-65535 added.
    all_ports: bool,
}

impl Seen {
    fn merge(&mut self, o: Seen) {
        self.open_added |= o.open_added;
        self.open_removed |= o.open_removed;
        self.everything |= o.everything;
        self.zero_start_kept |= o.zero_start_kept;
        self.adjacent |= o.adjacent;
        self.same_start_replaced |= o.same_start_replaced;
        self.value_changed |= o.value_changed;
        self.all_ports |= o.all_ports;
    }

    fn all() -> Seen {
        Seen {
            open_added: true,
            open_removed: true,
            everything: true,
            zero_start_kept: true,
            adjacent: true,
            same_start_replaced: true,
            value_changed: true,
            all_ports: true,
        }
    }

    fn note(&mut self, c: &SetChange, desired: &Set) {
        let is_last = |ip: IpAddr| ip == int_ip(Family::of(ip), last(Family::of(ip)));
        let is_zero = |ip: IpAddr| ip.is_unspecified();
        for e in &c.added {
            match *e {
                Element::Range { lo, hi } => {
                    self.open_added |= is_last(hi);
                    self.everything |= is_zero(lo) && is_last(hi);
                }
                Element::Ports {
                    port_lo: 0,
                    port_hi: 65535,
                    ..
                }
                | Element::DevService {
                    port_lo: 0,
                    port_hi: 65535,
                    ..
                } => self.all_ports = true,
                _ => {}
            }
        }
        let starts = |v: &[Element]| -> BTreeSet<IpAddr> {
            v.iter()
                .filter_map(|e| match e {
                    Element::Range { lo, .. } => Some(*lo),
                    _ => None,
                })
                .collect()
        };
        self.open_removed |= c
            .removed
            .iter()
            .any(|e| matches!(e, Element::Range { hi, .. } if is_last(*hi)));
        self.same_start_replaced |= !starts(&c.removed).is_disjoint(&starts(&c.added));
        if matches!(c.kind, SetKind::Ranges(_)) {
            let ranges: Vec<(IpAddr, IpAddr)> = desired
                .elements
                .iter()
                .filter_map(|e| match e {
                    Element::Range { lo, hi } => Some((*lo, *hi)),
                    _ => None,
                })
                .collect();
            let kept_zero = ranges
                .iter()
                .any(|(lo, _)| is_zero(*lo) && !starts(&c.added).contains(lo));
            self.zero_start_kept |= kept_zero
                && c.added
                    .iter()
                    .any(|e| matches!(e, Element::Range { lo, .. } if !is_zero(*lo)));
            self.adjacent |= ranges.windows(2).any(|w| {
                let f = Family::of(w[0].1);
                ferry_netpol::ranges::to_int(w[0].1) + 1 == ferry_netpol::ranges::to_int(w[1].0)
                    && !is_last(int_ip(f, ferry_netpol::ranges::to_int(w[0].1)))
            });
        }
        let key = |e: &Element| match e {
            Element::Jump { addr, .. } => Some(addr.to_string()),
            Element::DevJump { dev, .. } => Some(dev.to_string()),
            _ => None,
        };
        let removed: BTreeSet<String> = c.removed.iter().filter_map(key).collect();
        self.value_changed |= c.added.iter().filter_map(key).any(|k| removed.contains(&k));
    }
}

/// Random states one after another, each reached by `apply` from the one before, and
/// checked against the kernel's listing, read back and as nft shows it beside a full
/// load by nft of the same state.
fn walk(seed: u64, start_empty: bool, rounds: usize) -> Seen {
    let mut seen = Seen::default();
    let ns = Netns::new("fynl");
    let reference = Netns::new("fynl");
    let mut rng = Rng(seed);
    let mut current = random_ruleset(&mut rng, start_empty);
    ns.nft_apply(&current.render_replace());
    for round in 0..rounds {
        let desired = random_ruleset(&mut rng, false);
        let changes = plan_elements(&current, &desired).expect("elements only");
        for c in &changes {
            if let Some(set) = desired.table(c.family).sets.get(&c.set) {
                seen.note(c, set);
            }
        }
        let what = format!("seed {seed} round {round}: {changes:#?}");
        if let Err(e) = in_ns(&ns, changes) {
            panic!("apply failed: {e}\n{what}");
        }
        let read = read_back(&ns);
        // Counters sets hold nothing here.
        assert!(read == desired, "{what}\nread back: {read:#?}");
        reference.nft_apply(&desired.render_replace());
        assert_eq!(
            shown(&ns),
            shown(&reference),
            "nft shows a difference; {what}"
        );
        current = desired;
    }
    seen
}

#[test]
fn random_changes_of_every_set_kind_reach_the_desired_tables() {
    needs_root!();
    let mut seen = Seen::default();
    for seed in [1, 2, 3, 0x5eed] {
        seen.merge(walk(seed, false, 30));
    }
    assert_eq!(seen, Seen::all(), "cases the walks did not meet");
}

#[test]
fn random_changes_from_empty_sets() {
    needs_root!();
    for seed in [7, 8] {
        walk(seed, true, 15);
    }
}

fn range(lo: &str, hi: &str) -> Element {
    Element::Range {
        lo: lo.parse().expect("address"),
        hi: hi.parse().expect("address"),
    }
}

fn change(set: &str, kind: SetKind, removed: Vec<Element>, added: Vec<Element>) -> SetChange {
    SetChange {
        family: TableFamily::Inet,
        set: set.into(),
        kind,
        removed,
        added,
    }
}

fn one_set(kind: SetKind, elements: &[Element]) -> Ruleset {
    let mut rs = Ruleset::default();
    rs.inet.sets.insert(
        "r4".into(),
        Set {
            kind,
            elements: elements.iter().copied().collect(),
        },
    );
    rs.bridge.sets.insert(
        "d".into(),
        Set {
            kind: SetKind::Devs,
            elements: BTreeSet::new(),
        },
    );
    rs
}

/// Adjacent ranges share a key (one's end, the next one's start): removing one of two
/// keeps the other whole, and a range added next to one stays apart from it.
#[test]
fn adjacent_ranges() {
    needs_root!();
    let ns = Netns::new("fynl");
    let k = SetKind::Ranges(Family::V4);
    let (a, b, c) = (
        range("10.0.0.0", "10.0.0.9"),
        range("10.0.0.10", "10.0.0.19"),
        range("10.0.0.20", "10.0.0.20"),
    );
    let mut want = one_set(k, &[a, b]);
    ns.nft_apply(&want.render_replace());
    let steps = [
        (vec![a], vec![]),
        (vec![], vec![a]),
        (vec![], vec![c]),
        (vec![b], vec![]),
        (vec![], vec![b]),
        (vec![a, b, c], vec![range("10.0.0.0", "10.0.0.20")]),
        (vec![range("10.0.0.0", "10.0.0.20")], vec![a, b, c]),
    ];
    for (removed, added) in steps {
        let set = &mut want.inet.sets.get_mut("r4").expect("set").elements;
        removed.iter().for_each(|e| {
            set.remove(e);
        });
        set.extend(added.iter().copied());
        let ch = change("r4", k, removed.clone(), added.clone());
        in_ns(&ns, vec![ch]).expect("apply");
        assert_eq!(read_back(&ns), want, "after -{removed:?} +{added:?}");
    }
}

/// A failing message fails the whole batch: the table stays as it was, the valid
/// changes of the same batch included, and the error names the set and the operation.
#[test]
fn a_failing_batch_changes_nothing() {
    needs_root!();
    let ns = Netns::new("fynl");
    let k = SetKind::Ranges(Family::V4);
    let have = range("10.0.0.0", "10.0.0.9");
    let rs = one_set(k, &[have]);
    ns.nft_apply(&rs.render_replace());
    let before = shown(&ns);
    let valid = change(
        "r4",
        k,
        vec![have],
        vec![range("10.1.0.0", "10.1.0.255"), range("0.0.0.0", "0.0.0.0")],
    );
    let absent = change("r4", k, vec![range("192.0.2.0", "192.0.2.255")], vec![]);
    let err = in_ns(&ns, vec![valid.clone(), absent]).expect_err("deleting an absent element");
    let text = err.to_string();
    assert!(
        text.starts_with("delete element from inet ferry_policy r4: No such file or directory"),
        "{text}"
    );
    assert!(
        matches!(err, Error::Kernel { op: Op::Delete, errno: libc_enoent, .. } if libc_enoent == 2)
    );
    assert_eq!(shown(&ns), before);

    let missing = change("nosuchset", k, vec![], vec![range("10.2.0.0", "10.2.0.0")]);
    let err = in_ns(&ns, vec![valid.clone(), missing]).expect_err("a set that is not there");
    let text = err.to_string();
    assert!(
        text.starts_with("add element to inet ferry_policy nosuchset: No such file or directory"),
        "{text}"
    );
    assert_eq!(shown(&ns), before);

    // An overlapping range: the kernel refuses it.
    let overlap = change("r4", k, vec![], vec![range("10.0.0.5", "10.0.0.20")]);
    let err = in_ns(&ns, vec![overlap]).expect_err("an overlap");
    assert!(
        err.to_string()
            .starts_with("add element to inet ferry_policy r4: "),
        "{err}"
    );
    assert_eq!(shown(&ns), before);

    // The valid change alone applies.
    in_ns(&ns, vec![valid]).expect("valid change");
    assert_ne!(shown(&ns), before);
}

/// Changes larger than one message: several messages of one batch.
#[test]
fn large_changes_split_into_messages() {
    needs_root!();
    let ns = Netns::new("fynl");
    let k = SetKind::Ranges(Family::V6);
    let mut want = one_set(k, &[]);
    ns.nft_apply(&want.render_replace());
    let base: u128 = 0xfd00 << 112;
    let many: Vec<Element> = (0..12_000u128)
        .map(|i| Element::Range {
            lo: from_int(Family::V6, base + i * 4),
            hi: from_int(Family::V6, base + i * 4 + 1 + (i % 2)),
        })
        .collect();
    want.inet
        .sets
        .get_mut("r4")
        .expect("set")
        .elements
        .extend(many.iter().copied());
    in_ns(&ns, vec![change("r4", k, vec![], many.clone())]).expect("apply");
    assert_eq!(read_back(&ns), want);
    // Half of them away, in one change.
    let gone: Vec<Element> = many.iter().step_by(2).copied().collect();
    let set = &mut want.inet.sets.get_mut("r4").expect("set").elements;
    gone.iter().for_each(|e| {
        set.remove(e);
    });
    in_ns(&ns, vec![change("r4", k, gone, vec![])]).expect("apply");
    assert_eq!(read_back(&ns), want);
}

/// An attribute, its padding left out (nft's padding bytes are whatever its buffer held).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attr {
    Leaf(u16, Vec<u8>),
    Nest(u16, Vec<Attr>),
}

fn parse_attrs(mut b: &[u8]) -> Vec<Attr> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]);
        assert!(
            len >= 4 && len <= b.len(),
            "attribute of {len} bytes in {}",
            b.len()
        );
        let data = &b[4..len];
        out.push(if ty & 0x8000 != 0 {
            Attr::Nest(ty, parse_attrs(data))
        } else {
            Attr::Leaf(ty, data.to_vec())
        });
        b = b.get(((len + 3) & !3)..).unwrap_or(&[]);
    }
    out
}

/// A message as compared: its type, its nfgenmsg and its attributes.
type Msg = (u16, [u8; 4], Vec<Attr>);

/// The messages of our batch bytes.
fn parse_batch(mut b: &[u8]) -> Vec<Msg> {
    let mut out = Vec::new();
    while b.len() >= 20 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        let gen = [b[16], b[17], b[18], b[19]];
        out.push((ty, gen, parse_attrs(&b[20..len])));
        b = &b[len..];
    }
    out
}

/// The messages nft printed with `--debug=mnl`: rebuilt from its dump of each message's
/// type, extra header, attribute headers (length, `N` for nested, type) and data words.
fn parse_mnl_dump(text: &str) -> Vec<Msg> {
    let mut msgs: Vec<(u16, [u8; 4], Vec<u8>)> = Vec::new();
    let mut lines = text.lines().map(|l| {
        // Colours off.
        let mut s = String::new();
        let mut esc = false;
        for c in l.chars() {
            match (esc, c) {
                (false, '\u{1b}') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => s.push(c),
            }
        }
        s
    });
    let hex4 = |l: &str| -> Option<[u8; 4]> {
        let w: Vec<u8> = l
            .get(2..13)?
            .split(' ')
            .map(|h| u8::from_str_radix(h, 16).ok())
            .collect::<Option<_>>()?;
        w.try_into().ok()
    };
    while let Some(l) = lines.next() {
        if l.contains("| message length |") {
            let t = lines.next().expect("type line");
            let ty: u16 = t[1..8].trim().parse().expect("type");
            msgs.push((ty, [0; 4], Vec::new()));
        } else if l.contains("|  extra header  |") {
            msgs.last_mut().expect("message").1 = hex4(&l).expect("extra header");
        } else if l.contains("|len |flags| type|") {
            let f: Vec<&str> = l.split('|').collect();
            let len: u16 = f[1].parse().expect("attribute length");
            let mut ty: u16 = f[3].parse().expect("attribute type");
            if f[2].starts_with('N') {
                ty |= 0x8000;
            }
            if f[2].ends_with('B') {
                ty |= 0x4000;
            }
            let body = &mut msgs.last_mut().expect("message").2;
            body.extend(len.to_ne_bytes());
            body.extend(ty.to_ne_bytes());
        } else if l.contains("|      data      |") {
            let body = &mut msgs.last_mut().expect("message").2;
            body.extend(hex4(&l).expect("data word"));
        }
    }
    msgs.into_iter()
        .map(|(ty, gen, body)| (ty, gen, parse_attrs(&body)))
        .collect()
}

const NEWSETELEM: u16 = 0x0a0c;
const DELSETELEM: u16 = 0x0a0e;
const SET_ID: u16 = 4;

/// The element messages, by set: nft's `NFTA_SET_ELEM_LIST_SET_ID` (which lets a batch
/// refer to a set it creates; never needed here) left out.
fn element_msgs(msgs: Vec<Msg>) -> BTreeMap<String, Vec<Msg>> {
    let mut out: BTreeMap<String, Vec<Msg>> = BTreeMap::new();
    for (ty, gen, attrs) in msgs {
        if ty != NEWSETELEM && ty != DELSETELEM {
            continue;
        }
        let attrs: Vec<Attr> = attrs
            .into_iter()
            .filter(|a| !matches!(a, Attr::Leaf(SET_ID, _)))
            .collect();
        let set = attrs
            .iter()
            .find_map(|a| match a {
                Attr::Leaf(2, name) => Some(
                    String::from_utf8_lossy(name)
                        .trim_end_matches('\0')
                        .to_string(),
                ),
                _ => None,
            })
            .expect("set name");
        out.entry(set).or_default().push((ty, gen, attrs));
    }
    out
}

/// Every kind's elements, added to empty sets and then deleted, as nft 1.0.6 sends them
/// (`nft --debug=mnl`) and as `batch` makes them: the same messages, attribute for
/// attribute.
#[test]
fn the_messages_are_nfts() {
    needs_root!();
    let ns = Netns::new("fynl");
    let mut rng = Rng(42);
    for round in 0..6 {
        let empty = random_ruleset(&mut rng, true);
        let full = random_ruleset(&mut rng, false);
        ns.nft_apply(&empty.render_replace());
        let mut adds = String::new();
        let mut dels = String::new();
        let mut changes = Vec::new();
        for family in TableFamily::ALL {
            for (name, set) in &full.table(family).sets {
                if set.elements.is_empty() || matches!(set.kind, SetKind::Counters(_)) {
                    continue;
                }
                let t = format!("{} ferry_policy {name}", family.name());
                let all = |f: fn(&Element) -> String| {
                    set.elements.iter().map(f).collect::<Vec<_>>().join(", ")
                };
                adds += &format!("add element {t} {{ {} }}\n", all(Element::render));
                dels += &format!("delete element {t} {{ {} }}\n", all(Element::render_key));
                changes.push(SetChange {
                    family,
                    set: name.clone(),
                    kind: set.kind,
                    removed: vec![],
                    added: set.elements.iter().copied().collect(),
                });
            }
        }
        let ours_add = element_msgs(parse_batch(
            &ferry_nft_elements::batch(&changes).expect("batch"),
        ));
        for c in &mut changes {
            std::mem::swap(&mut c.added, &mut c.removed);
        }
        let ours_del = element_msgs(parse_batch(
            &ferry_nft_elements::batch(&changes).expect("batch"),
        ));
        for (script, ours) in [(adds, ours_add), (dels, ours_del)] {
            let path = std::env::temp_dir().join(format!("{}.nft", ns.name));
            std::fs::write(&path, &script).expect("write script");
            let out = ns.try_sh(&format!("nft --debug=mnl -f {}", path.display()));
            let _ = std::fs::remove_file(&path);
            assert!(
                out.status.success(),
                "nft: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // nft prints its debug output on stderr.
            let dump = String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout);
            let theirs = element_msgs(parse_mnl_dump(&dump));
            assert_eq!(
                theirs.keys().collect::<Vec<_>>(),
                ours.keys().collect::<Vec<_>>(),
                "round {round}: sets"
            );
            for (set, msgs) in &theirs {
                assert_eq!(
                    Some(msgs),
                    ours.get(set),
                    "round {round}, set {set}, script:\n{script}"
                );
            }
        }
    }
}
