//! `ferry-overlayd uninstall` on a node of a real cluster (dual-stack, DirectRouting,
//! NetworkPolicy, pods): everything of ferry goes, in both iptables backends, and nothing
//! that only looks like it; a second run finds nothing; what cannot be removed is named
//! and fails the run. The node's files are a temporary host root, as the cleanup
//! DaemonSet sees the node's under /host.

use std::path::Path;

use ferry_tests::cluster::Node;
use ferry_tests::needs_root;
use ferry_tests::netns::Netns;
use ferry_tests::netpol::world::World;

/// ferry's files as an install leaves them, and others' beside them.
const FERRYS_FILES: [&str; 9] = [
    "run/ferry/node.json",
    "run/ferry/peers.json",
    "var/lib/ferry/ipam/allocations.json",
    "var/lib/ferry-etcd/member/snap/db",
    "etc/cni/net.d/00-ferry.conflist",
    "etc/cni/net.d/10-ferry.conflist",
    "opt/cni/bin/ferry",
    "opt/cni/bin/ferry-ipam",
    "run/ferry/policy.sock",
];
const OTHERS_FILES: [&str; 5] = [
    "etc/cni/net.d/20-other.conflist",
    "opt/cni/bin/bridge",
    "opt/cni/bin/ferry-helper",
    "var/lib/other/keep",
    "run/other/keep",
];

fn host_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    for f in FERRYS_FILES.iter().chain(&OTHERS_FILES) {
        let p = root.path().join(f);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&p, b"x").expect("write");
    }
    root
}

/// `ferry-overlayd uninstall` in `ns` (through `wrap`, a shell prefix): exit code, output.
fn uninstall(ns: &Netns, root: &Path, wrap: &str) -> (Option<i32>, String) {
    let cmd = format!(
        "{} uninstall --host-root {}",
        ferry_tests::bin("ferry-overlayd").display(),
        root.display()
    );
    let out = ns.try_sh(&format!("{wrap}{cmd}"));
    ferry_tests::netns::code_and_text(&out)
}

/// Everything of ferry's a node shows: links, routes, nftables tables, iptables lines.
fn ferrys(n: &Netns) -> String {
    n.sh(
        "ip -d -o link show | grep -E ': (ferry\\.[0-9]+@?[^:]*: .* vxlan |ferry0: |f[yz][0-9a-f]{13}[@:])' || true; \
         ip -o link show group 65143 || true; \
         ip route show table all proto 102; ip -6 route show table all proto 102; \
         nft list tables | grep -E '^table (inet ferry|ip ferry|ip6 ferry|inet ferry_policy|bridge ferry_policy)$' || true; \
         for p in iptables-legacy iptables-nft ip6tables-legacy ip6tables-nft; do \
           $p-save 2>/dev/null | grep FERRY- | sed \"s/^/$p: /\" || true; done",
    )
}

#[test]
fn uninstall_removes_all_of_ferry_and_only_ferrys() {
    needs_root!();
    let mut w = World::dual_stack();
    let subnet = w.cluster.nodes[1].subnet();
    let subnet6 = w.cluster.nodes[1].node_state()["podCIDRv6"]
        .as_str()
        .expect("a dual-stack node")
        .to_string();
    let n: &mut Node = &mut w.cluster.nodes[0];
    assert_eq!(n.stop_daemon(), Some(0), "{}", n.log());
    let host = &n.host;
    // What the daemon and the plugin made: all of it there before.
    let before = ferrys(host);
    for made in [
        "ferry.1",
        "ferry0",
        // ferry's routes to node 1: direct (IPv4), over VXLAN (IPv6).
        &subnet,
        &subnet6,
        "table inet ferry\n",
        "table inet ferry_policy",
        "table bridge ferry_policy",
        "iptables-nft: :FERRY-POSTRTG",
        "ip6tables-nft: :FERRY-FWD",
    ] {
        assert!(before.contains(made), "{made} missing before:\n{before}");
    }
    assert!(host.links().iter().any(|l| l.starts_with("fy")), "{before}");
    // An earlier install's chains in the other backend and its VXLAN tables (`ip ferry`,
    // `ip6 ferry`), retired links, and what only looks like ferry's: another protocol's
    // routes to ferry's prefixes, links, tables (`bridge ferry`), chains of others.
    host.sh(&format!(
        "set -e
         iptables-legacy -w -t nat -N FERRY-POSTRTG
         iptables-legacy -w -t nat -I POSTROUTING -m comment --comment 'ferry masquerade' -j FERRY-POSTRTG
         ip6tables-legacy -w -N FERRY-FWD
         ip6tables-legacy -w -I FORWARD -m comment --comment 'ferry forward' -j FERRY-FWD
         iptables-legacy -w -N OTHER-FWD
         iptables-legacy -w -A FORWARD -j OTHER-FWD
         ip link add fz0123456789abc type bridge
         ip link add retired1 type bridge && ip link set retired1 group 65143
         ip link add cni0 type bridge
         ip link add fy12 type bridge
         ip link add ferry.9 type bridge
         ip route add {subnet} dev eth0 proto static metric 500
         ip route add {subnet} dev eth0 proto 102 table 100
         ip -6 route add fd00:99::/64 dev eth0 proto 102 table 100
         nft add table ip ferry
         nft add table ip6 ferry
         ip route add 198.51.100.0/24 dev eth0 proto static table 100
         ip -6 route add {subnet6} dev eth0 proto static metric 500
         nft add table bridge ferry
         nft add table ip other"
    ));
    let root = host_root();

    let (code, out) = uninstall(host, root.path(), "");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.ends_with("ferry removed from this node\n"), "{out}");
    for said in [
        "removed VXLAN device ferry.1",
        "removed bridge ferry0",
        "removed pod link fy",
        "removed pod link fz0123456789abc",
        "removed retired link retired1",
        "proto 102 table 100",
        "removed route fd00:99::/64 dev eth0 proto 102 metric 1024 table 100",
        "removed nftables table inet ferry\n",
        "removed nftables table ip ferry",
        "removed nftables table ip6 ferry",
        "removed nftables table inet ferry_policy",
        "removed nftables table bridge ferry_policy",
        "removed iptables-legacy nat chain FERRY-POSTRTG",
        "removed ip6tables-legacy filter chain FERRY-FWD",
        "removed iptables-nft nat chain FERRY-POSTRTG",
        "removed ip6tables-nft filter chain FERRY-FWD",
        "removed iptables-nft filter rule -A FORWARD -m comment --comment \"ferry forward\" -j FERRY-FWD",
    ] {
        assert!(out.contains(said), "{said} not said:\n{out}");
    }
    let after = ferrys(host);
    assert!(after.trim().is_empty(), "left:\n{after}\n{out}");
    // Others' things stay.
    let links = host.links();
    for other in ["cni0", "fy12", "ferry.9", "eth0"] {
        assert!(links.iter().any(|l| l == other), "{other} gone: {links:?}");
    }
    let routes = host
        .sh("ip route show proto static; ip -6 route show proto static; ip route show table 100");
    for kept in [
        format!("{subnet} dev eth0 scope link metric 500"),
        format!("{subnet6} dev eth0 metric 500"),
        "198.51.100.0/24 dev eth0 proto static scope link".to_string(),
    ] {
        assert!(routes.contains(&kept), "{kept} gone:\n{routes}");
    }
    let tables = host.sh("nft list tables");
    assert!(
        tables.contains("table bridge ferry\n") && tables.contains("table ip other\n"),
        "{tables}"
    );
    let legacy = host.sh("iptables-legacy-save");
    assert!(legacy.contains("-A FORWARD -j OTHER-FWD"), "{legacy}");
    // kube-proxy's rules, as the world's Services made them.
    let nft = host.sh("iptables-nft-save -t nat");
    assert!(nft.contains(":KUBE-SERVICES"), "{nft}");
    for f in FERRYS_FILES {
        assert!(!root.path().join(f).exists(), "{f} left");
    }
    for d in ["run/ferry", "var/lib/ferry", "var/lib/ferry-etcd"] {
        assert!(!root.path().join(d).exists(), "{d} left");
    }
    for f in OTHERS_FILES {
        assert!(root.path().join(f).exists(), "{f} removed");
    }

    let (code, again) = uninstall(host, root.path(), "");
    assert_eq!(code, Some(0), "{again}");
    assert_eq!(
        again,
        "nothing of ferry was found on this node\nferry removed from this node\n"
    );
}

#[test]
fn what_cannot_be_removed_is_named_and_fails_the_run() {
    needs_root!();
    let host = Netns::new("fyu");
    host.sh("ip link add fy0123456789abc type bridge && nft add table ip ferry");
    let root = host_root();
    let conf = root.path().join("etc/cni/net.d");
    // The CNI config directory read-only, in a mount namespace of the run's own (gone
    // with it).
    let wrap = format!(
        "unshare --mount --propagation private sh -c 'mount --bind -o ro {d} {d} && exec \"$0\" \"$@\"' ",
        d = conf.display()
    );
    let (code, out) = uninstall(&host, root.path(), &wrap);
    assert_eq!(code, Some(1), "{out}");
    for name in ["00-ferry.conflist", "10-ferry.conflist"] {
        let p = conf.join(name);
        assert!(
            out.contains(&format!(
                "cannot remove {}: Read-only file system",
                p.display()
            )) && out.contains(&format!("still there: {}", p.display())),
            "{name} not named:\n{out}"
        );
    }
    assert!(!out.contains("ferry removed from this node"), "{out}");
    // The rest went all the same.
    assert!(out.contains("removed pod link fy0123456789abc"), "{out}");
    assert!(out.contains("removed nftables table ip ferry"), "{out}");
    assert!(!root.path().join("run/ferry").exists(), "{out}");
    assert!(root.path().join("etc/cni/net.d/20-other.conflist").exists());
}
