//! Which iptables backend ferry's chains go to (`--iptables-backend auto`): the one whose
//! mangle table holds kubelet's hint chain, whatever the rule counts say; nft for now when
//! nothing tells, moving when kubelet's chain shows up in legacy. A one-node dual-stack
//! cluster of namespaces, the real daemon, both backends' own `-save`.

use std::time::Duration;

use ferry_tests::cluster::{Cluster, Node};
use ferry_tests::needs_root;
use ferry_tests::netns::Netns;
use ferry_tests::proc::wait_until;

/// One node, IPv4 and IPv6 pods: chains in iptables and ip6tables.
fn cluster_with(prepare: impl FnOnce(&Netns)) -> Cluster {
    let mut c = Cluster::builder().nodes(0).dual_stack().build();
    c.add_node_prepared(prepare).wait_ready();
    c
}

/// What `<program>-save` shows of ferry in the node (its chains and the jumps to them).
fn ferry_lines(n: &Node, program: &str) -> String {
    n.host
        .sh(&format!("{program}-save 2>/dev/null | grep FERRY- || true"))
}

/// Whether ferry's chains and jumps are all in `backend`, of both families, and nothing
/// of them in the other backend.
fn only_in(n: &Node, backend: &str) -> Result<(), String> {
    let other = if backend == "legacy" { "nft" } else { "legacy" };
    for family in ["iptables", "ip6tables"] {
        let here = ferry_lines(n, &format!("{family}-{backend}"));
        for want in [
            ":FERRY-POSTRTG",
            ":FERRY-FWD",
            "-A POSTROUTING -m comment --comment \"ferry masquerade\" -j FERRY-POSTRTG",
            "-A FORWARD -m comment --comment \"ferry forward\" -j FERRY-FWD",
        ] {
            if !here.contains(want) {
                return Err(format!("{family}-{backend} lacks {want}:\n{here}"));
            }
        }
        let there = ferry_lines(n, &format!("{family}-{other}"));
        if !there.is_empty() {
            return Err(format!("{family}-{other} holds ferry's:\n{there}"));
        }
    }
    Ok(())
}

fn assert_only_in(n: &Node, backend: &str) {
    if let Err(e) = only_in(n, backend) {
        panic!("{e}\n{}", n.log());
    }
}

/// Twelve rules of someone else's in `program`'s filter table: by the count alone, that
/// backend would be chosen.
fn twelve_rules(program: &str) -> String {
    (1..=12)
        .map(|i| format!("{program} -w -A INPUT -s 198.51.100.{i} -j ACCEPT"))
        .collect::<Vec<_>>()
        .join(" && ")
}

#[test]
fn kubelets_hint_in_legacy_puts_ferrys_chains_in_legacy_only() {
    needs_root!();
    let c = cluster_with(|host| {
        host.sh("iptables-legacy -w -t mangle -N KUBE-IPTABLES-HINT");
        host.sh("ip6tables-legacy -w -t mangle -N KUBE-IPTABLES-HINT");
        // More rules in nft: the hint decides, not the count.
        host.sh(&twelve_rules("iptables-nft"));
    });
    let n = &c.nodes[0];
    assert_only_in(n, "legacy");
    let log = n.log();
    assert!(
        log.contains("iptables backend chosen")
            && log.contains("kubelet's hint chain is in iptables-legacy's mangle table"),
        "{log}"
    );
}

#[test]
fn kubelets_hint_in_nft_wins_over_legacy_rules_and_legacy_leftovers_go() {
    needs_root!();
    let c = cluster_with(|host| {
        host.sh("iptables-nft -w -t mangle -N KUBE-IPTABLES-HINT");
        host.sh(&twelve_rules("iptables-legacy"));
        // An earlier install's chains in legacy: the daemon takes them out.
        host.sh(
            "iptables-legacy -w -t nat -N FERRY-POSTRTG && \
             iptables-legacy -w -t nat -I POSTROUTING -m comment --comment 'ferry masquerade' -j FERRY-POSTRTG && \
             ip6tables-legacy -w -N FERRY-FWD && \
             ip6tables-legacy -w -I FORWARD -m comment --comment 'ferry forward' -j FERRY-FWD",
        );
    });
    let n = &c.nodes[0];
    assert_only_in(n, "nft");
    // Someone else's legacy rules stay.
    let legacy = n.host.sh("iptables-legacy-save -t filter");
    assert_eq!(legacy.matches("-j ACCEPT").count(), 12, "{legacy}");
    assert!(
        n.log()
            .contains("kubelet's hint chain is in iptables-nft's mangle table"),
        "{}",
        n.log()
    );
}

#[test]
fn with_no_evidence_nft_until_kubelets_hint_shows_up_in_legacy() {
    needs_root!();
    let c = cluster_with(|_| {});
    let n = &c.nodes[0];
    assert_only_in(n, "nft");
    assert!(
        n.log().contains("looked at again on every resync"),
        "{}",
        n.log()
    );
    // kubelet starts after ferry, on a legacy node.
    n.host
        .sh("iptables-legacy -w -t mangle -N KUBE-KUBELET-CANARY");
    let moved = wait_until(Duration::from_secs(15), || only_in(n, "legacy").is_ok());
    assert!(moved, "{:?}\n{}", only_in(n, "legacy"), n.log());
    // Logged once, and it stays there over more resyncs (every 2 s).
    std::thread::sleep(Duration::from_secs(5));
    assert_only_in(n, "legacy");
    let log = n.log();
    assert_eq!(log.matches("iptables backend changed").count(), 1, "{log}");
}
