//! Node-wide settings, installed once per node (never per pod) and kept true on resync.
//!
//! iptables, not a table of our own in nftables: where another table's FORWARD policy is
//! DROP (Docker sets it), an accept in a separate nftables table cannot override it, and
//! kube-proxy's iptables mode lives in these same tables (in the backend it uses).
//! Chains are replaced atomically with `iptables-restore --noflush`. An IPv6 cluster CIDR
//! gets the same chains, by the same names, in ip6tables. Which backend (legacy or nft)
//! is the caller's choice (`iptables`). The sysctls the node needs are `node_check`'s.

use anyhow::{bail, Context, Result};
use ipnetwork::IpNetwork;

use crate::iptables::{self, Backend, Selection};
use crate::node_filter::Family;

pub const MASQ_CHAIN: &str = "FERRY-POSTRTG";
pub const FWD_CHAIN: &str = "FERRY-FWD";

/// ferry's chains, each with its table: nothing else of these names is ferry's.
pub const CHAINS: [(&str, &str); 2] = [("nat", MASQ_CHAIN), ("filter", FWD_CHAIN)];

/// kube-proxy marks packets it will masquerade itself with this bit.
const KUBE_MARK_MASQ: &str = "0x4000/0x4000";

/// The chains' rules, as `iptables -S` (or `ip6tables -S`) prints them.
pub fn chain_rules(cluster: IpNetwork) -> (Vec<String>, Vec<String>) {
    let multicast = match cluster {
        IpNetwork::V4(_) => "224.0.0.0/4",
        IpNetwork::V6(_) => "ff00::/8",
    };
    let masq = vec![
        format!("-A {MASQ_CHAIN} -m mark --mark {KUBE_MARK_MASQ} -m comment --comment \"kube-proxy masquerades these\" -j RETURN"),
        format!("-A {MASQ_CHAIN} -s {cluster} -d {cluster} -m comment --comment \"pod to pod keeps its source\" -j RETURN"),
        format!("-A {MASQ_CHAIN} -s {cluster} -d {multicast} -j RETURN"),
        format!("-A {MASQ_CHAIN} -s {cluster} -m comment --comment \"pod to outside\" -j MASQUERADE --random-fully"),
    ];
    let fwd = vec![
        format!("-A {FWD_CHAIN} -s {cluster} -j ACCEPT"),
        format!("-A {FWD_CHAIN} -d {cluster} -j ACCEPT"),
    ];
    (masq, fwd)
}

fn restore_input(cluster: IpNetwork) -> String {
    let (masq, fwd) = chain_rules(cluster);
    format!(
        "*nat\n:{MASQ_CHAIN} - [0:0]\n{}\nCOMMIT\n*filter\n:{FWD_CHAIN} - [0:0]\n{}\nCOMMIT\n",
        masq.join("\n"),
        fwd.join("\n")
    )
}

fn chain_is(b: Backend, f: Family, table: &str, chain: &str, want: &[String]) -> bool {
    let Ok(out) = iptables::run(b, f, &["-t", table, "-S", chain]) else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let have: Vec<&str> = text.lines().filter(|l| l.starts_with("-A ")).collect();
    out.status.success() && have == want.iter().map(String::as_str).collect::<Vec<_>>()
}

fn ensure_jump(
    b: Backend,
    f: Family,
    table: &str,
    from: &str,
    to: &str,
    comment: &str,
) -> Result<()> {
    let rule = ["-m", "comment", "--comment", comment, "-j", to];
    let mut check = vec!["-t", table, "-C", from];
    check.extend(rule);
    if iptables::run(b, f, &check)?.status.success() {
        return Ok(());
    }
    let mut insert = vec!["-t", table, "-I", from, "1"];
    insert.extend(rule);
    let out = iptables::run(b, f, &insert)?;
    if !out.status.success() {
        bail!(
            "{} -t {table} -I {from} ... -j {to}: {}",
            b.program(f, ""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Installs (or repairs) the masquerade and forward rules in `backend`; returns whether
/// it changed anything.
pub fn ensure_iptables(backend: Backend, cluster: IpNetwork) -> Result<bool> {
    let f = Family::of_net(cluster);
    let (masq, fwd) = chain_rules(cluster);
    let mut changed = false;
    if !chain_is(backend, f, "nat", MASQ_CHAIN, &masq)
        || !chain_is(backend, f, "filter", FWD_CHAIN, &fwd)
    {
        iptables::restore(backend, f, &restore_input(cluster))?;
        changed = true;
    }
    ensure_jump(
        backend,
        f,
        "nat",
        "POSTROUTING",
        MASQ_CHAIN,
        "ferry masquerade",
    )?;
    ensure_jump(backend, f, "filter", "FORWARD", FWD_CHAIN, "ferry forward")?;
    Ok(changed)
}

/// The words of a rule as `iptables-save` prints it: a word with spaces or quotes is in
/// double quotes, with `"` and `\` escaped by a backslash.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
            continue;
        }
        let mut w = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => w.extend(chars.next()),
                    '"' => break,
                    c => w.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                w.push(c);
                chars.next();
            }
        }
        out.push(w);
    }
    out
}

fn is_chain(table: &str, chain: &str) -> bool {
    CHAINS.contains(&(table, chain))
}

/// Whether a rule of `table` (a `-save` line) is ferry's: in one of its chains, or a jump
/// to one.
pub fn is_ferrys(table: &str, line: &str) -> bool {
    let w = words(line);
    let in_chain =
        w.first().is_some_and(|a| a == "-A") && w.get(1).is_some_and(|c| is_chain(table, c));
    in_chain || target(&w).is_some_and(|t| is_chain(table, t))
}

/// A rule's jump or goto target.
fn target(w: &[String]) -> Option<&str> {
    w.windows(2)
        .find(|p| p[0] == "-j" || p[0] == "-g")
        .map(|p| p[1].as_str())
}

/// One of ferry's objects in a backend's tables of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A rule of another chain that jumps to one of ferry's: `rule` as `-save` prints it,
    /// without the leading `-A`.
    Jump { table: String, rule: String },
    Chain {
        table: &'static str,
        chain: &'static str,
    },
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::Jump { table, rule } => write!(f, "{table} rule -A {rule}"),
            Found::Chain { table, chain } => write!(f, "{table} chain {chain}"),
        }
    }
}

/// ferry's objects in a `-save` output: the jumps first, as a chain goes only once
/// nothing jumps to it.
pub fn find_in_save(text: &str) -> Vec<Found> {
    let mut table = String::new();
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if let Some(&(t, c)) = CHAINS.iter().find(|(t, c)| *t == table && *c == name) {
                chains.push(Found::Chain { table: t, chain: c });
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let w = words(line);
            let from_ours = w.get(1).is_some_and(|c| is_chain(&table, c));
            if !from_ours && target(&w).is_some_and(|t| is_chain(&table, t)) {
                jumps.push(Found::Jump {
                    table: table.clone(),
                    rule: rule.to_string(),
                });
            }
        }
    }
    jumps.extend(chains);
    jumps
}

/// ferry's objects in `backend`'s tables of `family`; `None` when that backend's program
/// is not installed (it then holds nothing ferry could have made).
pub fn find(backend: Backend, family: Family) -> Result<Option<Vec<Found>>> {
    Ok(iptables::save(backend, family)?.map(|text| find_in_save(&text)))
}

/// The `-restore` input that removes `found`: the rule deleted by its own words, or the
/// chain flushed and deleted, each table in one transaction.
fn removal(found: &Found) -> String {
    match found {
        Found::Jump { table, rule } => format!("*{table}\n-D {rule}\nCOMMIT\n"),
        Found::Chain { table, chain } => format!("*{table}\n-F {chain}\n-X {chain}\nCOMMIT\n"),
    }
}

/// Removes one of ferry's objects found by `find`.
pub fn remove(backend: Backend, family: Family, found: &Found) -> Result<()> {
    iptables::restore(backend, family, &removal(found))
        .with_context(|| format!("remove {found} from {}", backend.program(family, "")))
}

/// Removes ferry's chains (and the jumps to them) from the backend the daemon no longer
/// uses, both families. A removal that fails is tried again on the next resync; a
/// backend that cannot even be read is left after one warning (nothing could be done
/// in it, and the resync would say so every few seconds).
pub fn leave_stale(sel: &mut Selection) {
    let Some(backend) = sel.stale() else {
        return;
    };
    let mut done = true;
    for f in [Family::V4, Family::V6] {
        let found = match find(backend, f) {
            Ok(found) => found.unwrap_or_default(),
            Err(e) => {
                tracing::warn!("ferry's chains left in the backend not in use stay: {e:#}");
                continue;
            }
        };
        for item in found {
            match remove(backend, f, &item) {
                Ok(()) => {
                    tracing::info!(program = %backend.program(f, ""), removed = %item, "removed from the iptables backend not in use")
                }
                Err(e) => {
                    tracing::warn!("{e:#}");
                    done = false;
                }
            }
        }
    }
    if done {
        sel.cleaned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "# Generated by iptables-save v1.8.9\n\
        *nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:FERRY-POSTRTG - [0:0]\n\
        :KUBE-POSTROUTING - [0:0]\n\
        -A POSTROUTING -m comment --comment \"ferry masquerade\" -j FERRY-POSTRTG\n\
        -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
        -A FERRY-POSTRTG -s 10.244.0.0/16 -m comment --comment \"pod to outside\" -j MASQUERADE --random-fully\n\
        COMMIT\n\
        *filter\n:FORWARD DROP [0:0]\n:FERRY-FWD - [0:0]\n:OTHER - [0:0]\n\
        -A FORWARD -m comment --comment \"ferry forward\" -j FERRY-FWD\n\
        -A FORWARD -m comment --comment \"says \\\"-j FERRY-FWD\\\"\" -j OTHER\n\
        -A FERRY-FWD -s 10.244.0.0/16 -j ACCEPT\n\
        COMMIT\n\
        *mangle\n:FERRY-FWD - [0:0]\n-A PREROUTING -j FERRY-FWD\nCOMMIT\n";

    #[test]
    fn ferrys_objects_are_found_jumps_first_and_nothing_else() {
        let found = find_in_save(SAVE);
        assert_eq!(
            found,
            vec![
                Found::Jump {
                    table: "nat".into(),
                    rule: "POSTROUTING -m comment --comment \"ferry masquerade\" -j FERRY-POSTRTG"
                        .into()
                },
                Found::Jump {
                    table: "filter".into(),
                    rule: "FORWARD -m comment --comment \"ferry forward\" -j FERRY-FWD".into()
                },
                Found::Chain {
                    table: "nat",
                    chain: MASQ_CHAIN
                },
                Found::Chain {
                    table: "filter",
                    chain: FWD_CHAIN
                },
            ]
        );
        // A quoted comment naming the chain is no jump; a chain of ferry's name in a table
        // ferry never uses is not ferry's.
        assert!(!is_ferrys(
            "filter",
            "-A FORWARD -m comment --comment \"says \\\"-j FERRY-FWD\\\"\" -j OTHER"
        ));
        assert!(!is_ferrys("mangle", "-A PREROUTING -j FERRY-FWD"));
        assert!(is_ferrys(
            "filter",
            "-A FERRY-FWD -s 10.244.0.0/16 -j ACCEPT"
        ));
        assert_eq!(
            removal(&found[0]),
            "*nat\n-D POSTROUTING -m comment --comment \"ferry masquerade\" -j FERRY-POSTRTG\nCOMMIT\n"
        );
        assert_eq!(
            removal(&found[3]),
            "*filter\n-F FERRY-FWD\n-X FERRY-FWD\nCOMMIT\n"
        );
    }

    #[test]
    fn save_words_keep_quoted_strings_whole() {
        assert_eq!(
            words(r#"-A X -m comment --comment "a \"b\" c\\" -j Y"#),
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                r#"a "b" c\"#,
                "-j",
                "Y"
            ]
        );
    }

    #[test]
    fn restore_input_replaces_both_chains() {
        let t = restore_input("10.244.0.0/16".parse().unwrap());
        assert!(t.starts_with("*nat\n:FERRY-POSTRTG - [0:0]\n"));
        assert!(t.contains("-A FERRY-POSTRTG -s 10.244.0.0/16 -m comment --comment \"pod to outside\" -j MASQUERADE --random-fully"));
        assert!(t.contains("*filter\n:FERRY-FWD - [0:0]\n-A FERRY-FWD -s 10.244.0.0/16 -j ACCEPT"));
        assert_eq!(t.matches("COMMIT").count(), 2);
        let t6 = restore_input("fd00:10::/56".parse().unwrap());
        assert!(t6.contains("-A FERRY-POSTRTG -s fd00:10::/56 -d fd00:10::/56 -m comment --comment \"pod to pod keeps its source\" -j RETURN"));
        assert!(t6.contains("-s fd00:10::/56 -d ff00::/8 -j RETURN"));
        assert!(t6.contains("-A FERRY-FWD -d fd00:10::/56 -j ACCEPT"));
    }
}
