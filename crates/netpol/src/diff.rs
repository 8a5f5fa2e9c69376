//! From the applied table to the desired one in one `nft -f -` transaction.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::naming::TABLE;
use crate::nft::render::{element_lists, key_lists};
use crate::nft::{Ruleset, SetKind, Table, TableFamily};

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
