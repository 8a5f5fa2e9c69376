//! From the applied table to the desired one in one `nft -f -` transaction.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::naming::TABLE;
use crate::nft::render::{element_lists, key_lists};
use crate::nft::{Element, Ruleset, SetKind, Table, TableFamily};

/// nft commands applied as one transaction by `nft -f -`: all or nothing, and no packet
/// sees a state in between (a chain flushed and refilled here has no empty window).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    pub commands: Vec<String>,
}

impl Script {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The script to feed to `nft -f -`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for c in &self.commands {
            let _ = writeln!(s, "{c}");
        }
        s
    }

    /// A script replacing whatever tables are there by `desired` (after a restart, when
    /// the applied state is not known): each is deleted and made anew, in one transaction.
    pub fn replace(desired: &Ruleset) -> Script {
        Script {
            commands: desired.render_replace().lines().map(String::from).collect(),
        }
    }
}

/// The changes from `current` (what was applied) to `desired`, in both tables: set
/// elements added and removed one by one, sets and chains created and deleted, a changed
/// chain flushed and refilled. A table itself is never flushed. An empty table in
/// `current` means no such table yet.
pub fn plan(current: &Ruleset, desired: &Ruleset) -> Script {
    let mut commands = Vec::new();
    for family in TableFamily::ALL {
        plan_table(
            current.table(family),
            desired.table(family),
            family,
            &mut commands,
        );
    }
    Script { commands }
}

fn plan_table(current: &Table, desired: &Table, family: TableFamily, cmds: &mut Vec<String>) {
    let table = format!("{} {TABLE}", family.name());
    if current.is_empty() {
        cmds.push(format!("add table {table}"));
    }
    // Sets whose declaration changes are deleted and made anew.
    let remade: BTreeSet<&str> = current
        .sets
        .iter()
        .filter(|(n, s)| desired.sets.get(*n).is_some_and(|d| d.kind != s.kind))
        .map(|(n, _)| n.as_str())
        .collect();
    let removed_sets: Vec<&str> = current
        .sets
        .keys()
        .filter(|n| !desired.sets.contains_key(*n))
        .map(String::as_str)
        .collect();
    // Chains whose hook changes, or that are gone, are deleted; chains whose rules change
    // or that refer to a remade set are flushed and refilled.
    let mut flushed = Vec::new();
    let mut deleted_chains = Vec::new();
    let mut filled = Vec::new();
    for (name, cur) in &current.chains {
        match desired.chains.get(name) {
            None => {
                flushed.push(name.as_str());
                deleted_chains.push(name.as_str());
            }
            Some(want) if want.hook != cur.hook => {
                // Made anew below, and filled then.
                flushed.push(name.as_str());
                deleted_chains.push(name.as_str());
            }
            Some(want) => {
                let touches_remade = want
                    .rules
                    .iter()
                    .flat_map(|r| r.sets())
                    .any(|s| remade.contains(s));
                if want.rules != cur.rules || touches_remade {
                    flushed.push(name.as_str());
                    filled.push(name.as_str());
                }
            }
        }
    }
    // Chains first made here exist, empty, before a map's element or a rule jumps to them.
    for (name, want) in &desired.chains {
        if !current.chains.contains_key(name) {
            cmds.push(want.render_add(family, name).trim_end().to_string());
            filled.push(name.as_str());
        }
    }
    for c in &flushed {
        cmds.push(format!("flush chain {table} {c}"));
    }
    for s in removed_sets.iter().chain(remade.iter()) {
        let noun = current.sets.get(*s).map_or("set", |x| x.noun());
        cmds.push(format!("delete {noun} {table} {s}"));
    }
    for (name, want) in &desired.sets {
        match current.sets.get(name) {
            Some(cur) if cur.kind == want.kind => {
                if matches!(want.kind, SetKind::Counters(_)) {
                    continue;
                }
                let gone = cur.elements.difference(&want.elements);
                for list in key_lists(gone) {
                    cmds.push(format!("delete element {table} {name} {list}"));
                }
                let new = want.elements.difference(&cur.elements);
                for list in element_lists(new) {
                    cmds.push(format!("add element {table} {name} {list}"));
                }
            }
            _ => cmds.extend(want.render_add(family, name).lines().map(String::from)),
        }
    }
    // A chain goes once nothing refers to it: its jumps were flushed above and the map
    // elements leading to it deleted.
    for c in &deleted_chains {
        cmds.push(format!("delete chain {table} {c}"));
    }
    for (name, want) in &desired.chains {
        if current.chains.contains_key(name) && deleted_chains.contains(&name.as_str()) {
            cmds.push(want.render_add(family, name).trim_end().to_string());
            filled.push(name.as_str());
        }
    }
    // Rules last: every set and chain they refer to exists by now.
    for (name, want) in &desired.chains {
        if filled.contains(&name.as_str()) {
            cmds.extend(want.render_rules(family, name).lines().map(String::from));
        }
    }
}

/// The element changes of one set, as [`plan_elements`] finds them: what to delete and
/// what to add (a map's element with its value), each in the set's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetChange {
    pub family: TableFamily,
    pub set: String,
    pub kind: SetKind,
    pub removed: Vec<Element>,
    pub added: Vec<Element>,
}

/// The changes from `current` to `desired` when they are set elements only: both tables
/// have the same chains (same hooks, same rules) and the same sets of the same kinds on
/// both sides. Then the change can bypass `nft -f` (whose 1.0.6 fetches every set's
/// elements before any element command) and go to the kernel as one batch of element
/// messages. `None` when anything else differs, or when a table of `current` is empty (not
/// applied yet): the caller then applies [`plan`]. Counters sets' elements are the kernel's
/// runtime state and never compared. An empty Vec: nothing to change.
pub fn plan_elements(current: &Ruleset, desired: &Ruleset) -> Option<Vec<SetChange>> {
    let mut changes = Vec::new();
    for family in TableFamily::ALL {
        let (cur, want) = (current.table(family), desired.table(family));
        if cur.is_empty() || cur.chains != want.chains {
            return None;
        }
        // Same names, same kinds: walk both maps in step (both are sorted by name).
        if cur.sets.len() != want.sets.len() {
            return None;
        }
        for ((name, c), (wname, w)) in cur.sets.iter().zip(&want.sets) {
            if name != wname || c.kind != w.kind {
                return None;
            }
            if matches!(c.kind, SetKind::Counters(_)) || c.elements == w.elements {
                continue;
            }
            changes.push(SetChange {
                family,
                set: name.clone(),
                kind: c.kind,
                removed: c.elements.difference(&w.elements).copied().collect(),
                added: w.elements.difference(&c.elements).copied().collect(),
            });
        }
    }
    Some(changes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    use super::*;
    use crate::model::Direction;
    use crate::nft::{Chain, ChainRef, Hook, Rule, Set, Verdict};
    use crate::ranges::Family;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn set(kind: SetKind, elements: &[Element]) -> Set {
        Set {
            kind,
            elements: elements.iter().copied().collect::<BTreeSet<_>>(),
        }
    }

    /// A small applied state: a base chain, a regular chain, a range set, a verdict map and
    /// a counters set in the inet table; a bridge table with one chain.
    fn base() -> Ruleset {
        let chain = ChainRef {
            dir: Direction::Ingress,
            sig: 7,
        };
        let mut inet = Table::default();
        inet.chains.insert(
            "forward".into(),
            Chain {
                hook: Some(Hook::Forward),
                rules: vec![Rule::new(vec![], Verdict::Accept)],
            },
        );
        inet.chains.insert(
            chain.name(),
            Chain {
                hook: None,
                rules: vec![],
            },
        );
        inet.sets.insert(
            "r4".into(),
            set(
                SetKind::Ranges(Family::V4),
                &[Element::Range {
                    lo: ip("10.0.0.0"),
                    hi: ip("10.0.0.255"),
                }],
            ),
        );
        inet.sets.insert(
            "v4".into(),
            set(
                SetKind::Verdicts(Family::V4),
                &[Element::Jump {
                    addr: ip("10.1.0.1"),
                    to: chain,
                }],
            ),
        );
        inet.sets.insert(
            "c4".into(),
            set(
                SetKind::Counters(Family::V4),
                &[Element::Addr(ip("10.1.0.1"))],
            ),
        );
        let mut bridge = Table::default();
        bridge.chains.insert(
            "forward".into(),
            Chain {
                hook: Some(Hook::Forward),
                rules: vec![],
            },
        );
        Ruleset { inet, bridge }
    }

    fn elements_mut<'a>(r: &'a mut Ruleset, name: &str) -> &'a mut BTreeSet<Element> {
        &mut r.inet.sets.get_mut(name).expect("set").elements
    }

    #[test]
    fn nothing_differs_is_an_empty_change() {
        assert_eq!(plan_elements(&base(), &base()), Some(vec![]));
    }

    #[test]
    fn element_changes_are_listed_per_set() {
        let cur = base();
        let mut want = base();
        let old = Element::Range {
            lo: ip("10.0.0.0"),
            hi: ip("10.0.0.255"),
        };
        let new = Element::Range {
            lo: ip("10.0.1.0"),
            hi: ip("10.0.1.0"),
        };
        elements_mut(&mut want, "r4").remove(&old);
        elements_mut(&mut want, "r4").insert(new);
        // A map's value changing is a removal and an addition of the same key.
        let v = elements_mut(&mut want, "v4");
        let to = ChainRef {
            dir: Direction::Ingress,
            sig: 0,
        };
        v.clear();
        v.insert(Element::Jump {
            addr: ip("10.1.0.1"),
            to,
        });
        let got = plan_elements(&cur, &want).expect("elements only");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].set, "r4");
        assert_eq!(got[0].family, TableFamily::Inet);
        assert_eq!(got[0].kind, SetKind::Ranges(Family::V4));
        assert_eq!(got[0].removed, vec![old]);
        assert_eq!(got[0].added, vec![new]);
        assert_eq!(got[1].set, "v4");
        assert_eq!(got[1].removed.len(), 1);
        assert_eq!(
            got[1].added,
            vec![Element::Jump {
                addr: ip("10.1.0.1"),
                to
            }]
        );
    }

    #[test]
    fn counters_elements_are_ignored() {
        let cur = base();
        let mut want = base();
        elements_mut(&mut want, "c4").clear();
        assert_eq!(plan_elements(&cur, &want), Some(vec![]));
    }

    #[test]
    fn anything_but_elements_is_none() {
        let cur = base();
        // A rule changes.
        let mut want = base();
        want.inet
            .chains
            .get_mut("forward")
            .expect("chain")
            .rules
            .clear();
        assert_eq!(plan_elements(&cur, &want), None);
        // A hook changes.
        let mut want = base();
        want.inet.chains.get_mut("forward").expect("chain").hook = Some(Hook::Input);
        assert_eq!(plan_elements(&cur, &want), None);
        // A chain comes.
        let mut want = base();
        want.bridge.chains.insert(
            "ingress_closed".into(),
            Chain {
                hook: None,
                rules: vec![],
            },
        );
        assert_eq!(plan_elements(&cur, &want), None);
        // A set goes, or comes, or changes its kind.
        let mut want = base();
        want.inet.sets.remove("r4");
        assert_eq!(plan_elements(&cur, &want), None);
        let mut want = base();
        want.inet
            .sets
            .insert("a4".into(), set(SetKind::Addrs(Family::V4), &[]));
        assert_eq!(plan_elements(&cur, &want), None);
        let mut want = base();
        want.inet.sets.get_mut("r4").expect("set").kind = SetKind::Ranges(Family::V6);
        assert_eq!(plan_elements(&cur, &want), None);
        // A set renamed, the count unchanged.
        let mut want = base();
        let r = want.inet.sets.remove("r4").expect("set");
        want.inet.sets.insert("r5".into(), r);
        assert_eq!(plan_elements(&cur, &want), None);
    }

    #[test]
    fn a_table_never_applied_is_none() {
        let mut cur = base();
        cur.bridge = Table::default();
        assert_eq!(plan_elements(&cur, &base()), None);
        assert_eq!(plan_elements(&Ruleset::default(), &base()), None);
    }
}
