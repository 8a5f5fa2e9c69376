//! Root test: a computed ruleset (the daemon's tables) loaded by nft, then cluster
//! changes that move only set elements (a remote peer pod gone, an ipBlock changed, a
//! pod's address changed), each applied by `apply` from `plan_elements` and read back as
//! the next computed ruleset.

#[path = "../../netpol/tests/support/mod.rs"]
mod support;

use ferry_netpol::model::Protocol::{Tcp, Udp};
use ferry_netpol::{plan_elements, Cluster, Ruleset, TableFamily};
use ferry_testns::needs_root;
use ferry_testns::netns::Netns;
use serde_json::json;
use support::{local_on, policy, world};

fn read_back(ns: &Netns) -> Ruleset {
    let l = |f: TableFamily| ns.sh(&format!("nft -j list table {} ferry_policy", f.name()));
    let (inet, bridge) = (l(TableFamily::Inet), l(TableFamily::Bridge));
    Ruleset::parse_json(Some(&inet), Some(&bridge)).expect("listing parses")
}

fn cluster(block: &str, except: &str) -> Cluster {
    let mut c = world(&["x/a", "x/b", "y/a", "y/b", "z/a"], &[80, 81], &[Tcp, Udp]);
    c.policies.push(policy(
        "x",
        "web",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"pod": "b"}}},
                          {"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                          {"ipBlock": {"cidr": block, "except": [except]}}],
                 "ports": [{"port": "serve-80-tcp"}, {"port": 8000, "endPort": 8100, "protocol": "UDP"}]},
            ],
            "egress": [
                {"to": [{"namespaceSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}]},
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]},
            ],
        }),
    ));
    c.policies.push(policy(
        "y",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    ));
    c
}

/// What differs besides elements, for the failure message.
fn beyond_elements(a: &Ruleset, b: &Ruleset) -> String {
    let mut out = String::new();
    for f in TableFamily::ALL {
        let (a, b) = (a.table(f), b.table(f));
        for (n, ch) in &a.chains {
            if b.chains.get(n) != Some(ch) {
                out += &format!("\n{f:?} chain {n}: {ch:?} -> {:?}", b.chains.get(n));
            }
        }
        for n in b.chains.keys().filter(|n| !a.chains.contains_key(*n)) {
            out += &format!("\n{f:?} chain {n} new");
        }
        let kinds = |t: &ferry_netpol::Table| -> Vec<_> {
            t.sets.iter().map(|(n, s)| (n.clone(), s.kind)).collect()
        };
        if kinds(a) != kinds(b) {
            out += &format!("\n{f:?} sets {:?} -> {:?}", kinds(a), kinds(b));
        }
    }
    out
}

fn compute(c: &Cluster) -> Ruleset {
    // Every pod of the world, on every node: n0 holds some of them locally.
    Ruleset::compute(c, &local_on(c, "n0"))
}

#[test]
fn computed_element_changes_apply() {
    needs_root!();
    let ns = Netns::new("fynl");
    let c1 = cluster("10.0.0.0/8", "10.2.0.0/16");
    let mut rs = compute(&c1);
    ns.nft_apply(&rs.render_replace());
    assert_eq!(read_back(&ns), rs);

    let mut c2 = c1.clone();
    // y/a lives on another node: only the peer sets that held it change.
    c2.pods.retain(|p| !(p.namespace == "y" && p.name == "a"));
    let c3 = {
        let mut c = cluster("192.0.2.0/24", "192.0.2.128/25");
        c.pods = c2.pods.clone();
        c
    };
    let mut c4 = c3.clone();
    for p in &mut c4.pods {
        if p.namespace == "z" {
            for ip in &mut p.ips {
                *ip = match ip {
                    std::net::IpAddr::V4(_) => "10.99.0.7".parse().expect("address"),
                    std::net::IpAddr::V6(_) => "fd00:99::7".parse().expect("address"),
                };
            }
        }
    }
    let mut applied = 0;
    for (i, c) in [c2, c3, c4, c1].iter().enumerate() {
        let next = compute(c);
        let Some(changes) = plan_elements(&rs, &next) else {
            panic!(
                "step {i}: more than elements change: {}",
                beyond_elements(&rs, &next)
            );
        };
        applied += usize::from(!changes.is_empty());
        let ch = changes.clone();
        if let Err(e) = ferry_testns::inside::run(&ns, move || ferry_nft_elements::apply(&ch)) {
            panic!("step {i}: {e}\n{changes:#?}");
        }
        assert!(read_back(&ns) == next, "step {i}: {changes:#?}");
        rs = next;
    }
    assert_eq!(applied, 4, "every step changes elements");
}
