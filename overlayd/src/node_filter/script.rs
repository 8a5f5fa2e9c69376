//! The `nft -f` scripts that write the table whole or change its sets.

use std::collections::BTreeSet;

use super::{Members, Shape, FAMILY, INNER4, INNER4_SRC, INNER6, INNER6_SRC, LEGACY, NODES, TABLE};

/// The script that removes ferry's tables of before `inet ferry`, if any is there.
pub fn legacy_script() -> String {
    LEGACY
        .iter()
        .map(|(fam, name)| format!("table {fam} {name} {{}}\ndelete table {fam} {name}\n"))
        .collect()
}

/// The whole table, replacing whatever is there (and the tables of before), in one
/// transaction.
pub fn create_script(shape: &Shape, m: &Members) -> String {
    let f = shape.family();
    let elems = |items: &[String]| {
        if items.is_empty() {
            // nft refuses an empty elements clause.
            String::new()
        } else {
            format!(" elements = {{ {} }};", items.join(", "))
        }
    };
    let [(_, nodes), (_, inner4), (_, inner6)] = m.elements();
    let src = |(o, l)| format!("{} saddr . @th,{o},{l}", f.nft());
    let mut s = legacy_script();
    s += &format!(
        "table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\ntable {FAMILY} {TABLE} {{\n"
    );
    s += &format!(
        "\tset {NODES} {{ type {};{} }}\n",
        f.nft_addr_type(),
        elems(&nodes)
    );
    s += &format!(
        "\tset {INNER4} {{ typeof {}; flags interval;{} }}\n",
        src(INNER4_SRC),
        elems(&inner4)
    );
    s += &format!(
        "\tset {INNER6} {{ typeof {}; flags interval;{} }}\n",
        src(INNER6_SRC),
        elems(&inner6)
    );
    for (chain, rules) in shape.chains() {
        s += &format!(
            "\tchain {} {{\n\t\ttype filter hook {} priority {}; policy accept;\n",
            chain.name, chain.hook, chain.priority
        );
        for r in rules {
            s += &format!("\t\t{}\n", r.text());
        }
        s += "\t}\n";
    }
    s + "}\n"
}

/// The set changes that make `have` into `want`, as one `nft` script (removals first: an
/// interval that changed must leave before its successor can overlap it); `None` when
/// there is nothing to do.
pub fn update_script(want: &Members, have: &Members) -> Option<String> {
    let mut s = String::new();
    for (verb, from, to) in [("delete", have, want), ("add", want, have)] {
        for ((set, from), (_, to)) in from.elements().into_iter().zip(to.elements()) {
            let to: BTreeSet<&String> = to.iter().collect();
            let only: Vec<&str> = from
                .iter()
                .filter(|e| !to.contains(e))
                .map(String::as_str)
                .collect();
            if !only.is_empty() {
                s += &format!(
                    "{verb} element {FAMILY} {TABLE} {set} {{ {} }}\n",
                    only.join(", ")
                );
            }
        }
    }
    (!s.is_empty()).then_some(s)
}
