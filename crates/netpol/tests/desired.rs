//! The desired table as data and the plans between two of them: pod churn touches set and
//! map elements (and adds or removes the chain of a combination of policies that appears or
//! goes), a policy change touches that policy's sets (and the chains holding its rules only
//! when a rule's shape changes), names are stable and safe.

mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferry_netpol::desired::{Chain, ChainRef, Element, SetKind, MAX_NAME_LEN};
use ferry_netpol::model::Protocol::{Tcp, Udp};
use ferry_netpol::model::{Direction, PodKey};
use ferry_netpol::{plan, Cluster, LocalPods, Ruleset, Script};
use serde_json::json;
use support::{labels, policy, world};

fn base() -> Cluster {
    let mut c = world(
        &["x/a", "x/b", "x/c", "y/a", "y/b", "y/c"],
        &[80],
        &[Tcp, Udp],
    );
    c.policies.push(policy(
        "x",
        "web",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": "serve-80-tcp"}]}]}),
    ));
    c.policies.push(policy(
        "y",
        "out",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [
            {"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    c
}

/// The tables of `node`, whose pods have their link-local addresses and bridge ports.
fn on(c: &Cluster, node: &str) -> Ruleset {
    Ruleset::compute(c, &support::local_on(c, node))
}

/// Both tables' chains, the bridge table's named `bridge <name>`.
fn chains(rs: &Ruleset) -> BTreeMap<String, &Chain> {
    rs.inet
        .chains
        .iter()
        .map(|(n, c)| (n.clone(), c))
        .chain(
            rs.bridge
                .chains
                .iter()
                .map(|(n, c)| (format!("bridge {n}"), c)),
        )
        .collect()
}

/// The chain of the policies `ids` for `dir`.
fn chain(dir: Direction, ids: &[&str]) -> String {
    ChainRef::of_policies(dir, ids).name()
}

/// Every command of a plan that is not a set element change.
fn structural(s: &Script) -> Vec<&String> {
    s.commands
        .iter()
        .filter(|c| !c.starts_with("add element") && !c.starts_with("delete element"))
        .collect()
}

#[test]
fn pod_churn_changes_set_elements_only() {
    let c1 = base();
    let mut c2 = c1.clone();
    // y/c leaves, x/b is relabelled into x/web's selection, y/b moves to another address,
    // a new pod y/d arrives on node n0.
    c2.pods.retain(|p| !(p.namespace == "y" && p.name == "c"));
    for p in &mut c2.pods {
        if p.namespace == "x" && p.name == "b" {
            p.labels = labels(&[("pod", "a")]);
        }
        if p.namespace == "y" && p.name == "b" {
            p.ips = vec!["10.2.0.99".parse().unwrap(), "fd00::2:99".parse().unwrap()];
        }
    }
    let mut yd = c1.pods[0].clone();
    (yd.namespace, yd.name, yd.node) = ("y".into(), "d".into(), Some("n0".into()));
    yd.labels = labels(&[("pod", "d")]);
    yd.ips = vec!["10.2.0.4".parse().unwrap()];
    c2.pods.push(yd);
    for node in support::NODES {
        let (d1, d2) = (on(&c1, node), on(&c2, node));
        let (k1, k2) = (chains(&d1), chains(&d2));
        for (name, c) in &k1 {
            if let Some(c2) = k2.get(name) {
                assert_eq!(c, c2, "{node}: a chain's rules never change with pods");
            }
        }
        // Only a combination of policies that appears or goes adds or removes a chain.
        let changed: Vec<String> = k1
            .keys()
            .filter(|n| !k2.contains_key(*n))
            .chain(k2.keys().filter(|n| !k1.contains_key(*n)))
            .map(|n| n.trim_start_matches("bridge ").to_string())
            .collect();
        let p = plan(&d1, &d2);
        for c in structural(&p) {
            assert!(
                changed.iter().any(|n| c.contains(&format!(" {n}"))),
                "{node}: {c} in {}",
                p.render()
            );
        }
    }
    // On n0: y/d joins the peers of x/web and is isolated for egress by y/out.
    let (d1, d2) = (on(&c1, "n0"), on(&c2, "n0"));
    let text = plan(&d1, &d2).render();
    let eg = chain(Direction::Egress, &["y/out"]);
    assert!(
        text.contains(&format!(
            "add element inet ferry_policy egress_pods4 {{ 10.2.0.4 : jump {eg} }}"
        )),
        "{text}"
    );
    assert!(
        text.contains("add element inet ferry_policy in_x_web_0_src4 { 10.2.0.4, 10.2.0.99 }"),
        "{text}"
    );
    assert!(
        text.contains("delete element inet ferry_policy in_x_web_0_src4 { 10.2.0.2, 10.2.0.3 }"),
        "{text}"
    );
}

#[test]
fn a_policy_change_touches_only_that_policy() {
    let c1 = base();
    let d1 = on(&c1, "n0");

    // Peers change: elements of x/web's sets only.
    let mut c2 = c1.clone();
    c2.policies[0] = policy(
        "x",
        "web",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}], "ports": [{"port": "serve-80-tcp"}]}]}),
    );
    let p = plan(&d1, &on(&c2, "n0"));
    assert!(structural(&p).is_empty(), "{}", p.render());
    assert!(!p.is_empty());
    assert!(
        p.commands.iter().all(|c| c.contains(" in_x_web_0_")),
        "{}",
        p.render()
    );

    // The rule's shape changes (ports go): its destination set is remade with another
    // type and the chain holding its rules rewritten; y/out's sets are not mentioned.
    let mut c3 = c1.clone();
    c3.policies[0] = policy(
        "x",
        "web",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    let d3 = on(&c3, "n0");
    let p = plan(&d1, &d3);
    let text = p.render();
    assert!(!text.contains("eg_y_out"), "{text}");
    assert!(!text.contains("chain inet ferry_policy egress"), "{text}");
    let web = chain(Direction::Ingress, &["x/web"]);
    let flush = text
        .find(&format!("flush chain inet ferry_policy {web}"))
        .unwrap();
    let delete = text
        .find("delete set inet ferry_policy in_x_web_0_dst4")
        .unwrap();
    let add = text
        .find("add set inet ferry_policy in_x_web_0_dst4 { type ipv4_addr; }")
        .unwrap();
    let rule = text
        .find(&format!(
            "add rule inet ferry_policy {web} ip saddr @in_x_web_0_src4 ip daddr @in_x_web_0_dst4"
        ))
        .unwrap();
    assert!(flush < delete && delete < add && add < rule, "{text}");
    assert!(
        !text.contains("table inet ferry_policy\n") && !text.contains("flush table"),
        "{text}"
    );

    // A new policy: its sets, the chains of the new combinations, the map's elements.
    let mut c4 = c1.clone();
    c4.policies.push(policy(
        "x",
        "extra",
        json!({"podSelector": {}, "ingress": [{}]}),
    ));
    let text = plan(&d1, &on(&c4, "n0")).render();
    for line in text.lines() {
        // The same in the bridge table: x/extra's rules by port, its ports map.
        let ok = line.contains("in_x_extra_")
            || ["inet", "bridge"].iter().any(|t| {
                line.contains(&format!("chain {t} ferry_policy ingress_"))
                    || line.starts_with(&format!("add rule {t} ferry_policy ingress_"))
            })
            || line.contains("ingress_pods")
            || line.contains("ingress_ports");
        assert!(ok, "unexpected {line:?} in\n{text}");
    }
    // And gone again: its sets deleted after the chain no longer refers to them.
    let text = plan(&on(&c4, "n0"), &d1).render();
    let flush = text.find("flush chain inet ferry_policy ingress_").unwrap();
    let delete = text
        .find("delete set inet ferry_policy in_x_extra_0_dst4")
        .unwrap();
    assert!(flush < delete, "{text}");
}

#[test]
fn local_pod_addresses_from_the_caller_win() {
    let c = base();
    let mut local = LocalPods::on_node(&c, "n0");
    let fresh: IpAddr = "10.9.9.9".parse().unwrap();
    local.pods.insert(PodKey::new("x", "a"), vec![fresh]);
    // Not in the snapshot: unknown labels, nothing selects it.
    local.pods.insert(
        PodKey::new("x", "ghost"),
        vec!["10.9.9.10".parse().unwrap()],
    );
    let d = Ruleset::compute(&c, &local);
    let iso = &d.inet.sets["ingress_pods4"].elements;
    assert!(
        iso.contains(&Element::Jump {
            addr: fresh,
            to: ChainRef::of_policies(Direction::Ingress, &["x/web"])
        }),
        "{iso:?}"
    );
    assert_eq!(iso.len(), 1);
    let dst = &d.inet.sets["in_x_web_0_dst4"].elements;
    assert!(
        dst.iter()
            .all(|e| matches!(e, Element::Ports { lo, .. } if *lo == fresh)),
        "{dst:?}"
    );
}

#[test]
fn isolated_and_selected_sets_hold_only_local_pods_and_peers_are_cluster_wide() {
    let c = base();
    for node in support::NODES {
        let d = on(&c, node);
        let local: Vec<IpAddr> = c
            .pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(node))
            .flat_map(|p| p.ips.iter().copied().chain(support::link_local_of(p)))
            .collect();
        for name in [
            "egress_pods4",
            "egress_pods6",
            "ingress_pods4",
            "eg_y_out_0_src4",
            "in_x_web_0_dst4",
        ] {
            for e in &d.inet.sets[name].elements {
                let ip = match e {
                    Element::Addr(ip) | Element::Pair(ip, _) => *ip,
                    Element::Jump { addr, .. } => *addr,
                    Element::Ports { lo, .. } => *lo,
                    Element::Range { lo, .. } => *lo,
                    other => panic!("{node}: {name} holds {other:?}"),
                };
                assert!(local.contains(&ip), "{node}: {name} holds {ip}");
            }
        }
        // y/b's addresses are peers of y/out on every node.
        assert!(d.inet.sets["eg_y_out_0_dst4"]
            .elements
            .contains(&Element::Range {
                lo: "10.2.0.2".parse().unwrap(),
                hi: "10.2.0.2".parse().unwrap()
            }));
    }
}

#[test]
fn names_are_stable_bounded_and_safe() {
    let mut c = base();
    let long = "a".repeat(253);
    c.policies.push(policy(
        "x",
        &long,
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    ));
    c.policies.push(policy(
        "x",
        "evil\" ; flush ruleset",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    ));
    let d = on(&c, "n0");
    assert_eq!(d, on(&c, "n0"), "deterministic");
    for name in d.inet.sets.keys().chain(d.bridge.sets.keys()) {
        assert!(name.len() <= MAX_NAME_LEN, "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)),
            "{name}"
        );
    }
    let hashed: Vec<&String> = d
        .inet
        .sets
        .keys()
        .filter(|n| n.starts_with("in_h"))
        .collect();
    assert_eq!(
        hashed.len(),
        8,
        "two policies x src/dst x two families: {hashed:?}"
    );
    let text = Script::replace(&d).render();
    assert!(
        !text.contains("evil"),
        "a name that is not a DNS name never reaches nft"
    );
}

#[test]
fn elements_render_as_nft_writes_them() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let cases = [
        (Element::Addr(ip("10.0.0.1")), "10.0.0.1"),
        (
            Element::Range {
                lo: ip("10.0.0.0"),
                hi: ip("10.0.0.255"),
            },
            "10.0.0.0/24",
        ),
        (
            Element::Range {
                lo: ip("10.0.0.1"),
                hi: ip("10.0.0.1"),
            },
            "10.0.0.1",
        ),
        (
            Element::Range {
                lo: ip("10.0.0.1"),
                hi: ip("10.0.0.6"),
            },
            "10.0.0.1-10.0.0.6",
        ),
        (
            Element::Range {
                lo: ip("::"),
                hi: ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            },
            "::/0",
        ),
        (
            Element::Ports {
                lo: ip("fd00::1"),
                hi: ip("fd00::1"),
                protocol: Udp,
                port_lo: 53,
                port_hi: 53,
            },
            "fd00::1 . udp . 53",
        ),
        (
            Element::Ports {
                lo: ip("0.0.0.0"),
                hi: ip("255.255.255.255"),
                protocol: Tcp,
                port_lo: 0,
                port_hi: 65535,
            },
            "0.0.0.0/0 . tcp . 0-65535",
        ),
    ];
    let dev = ferry_netpol::Ifname::new("fy0123456789abc").unwrap();
    let bridge = [
        (Element::Dev(dev), "\"fy0123456789abc\""),
        (
            Element::DevService {
                dev,
                protocol: Udp,
                port_lo: 5353,
                port_hi: 5354,
            },
            "\"fy0123456789abc\" . udp . 5353-5354",
        ),
        (
            Element::DevAddr(dev, ip("fe80::858:aff:fe01:203")),
            "\"fy0123456789abc\" . fe80::858:aff:fe01:203",
        ),
        (
            Element::DevJump {
                dev,
                to: ChainRef::closed(Direction::Ingress),
            },
            "\"fy0123456789abc\" : jump ingress_closed",
        ),
    ];
    for (e, want) in cases.into_iter().chain(bridge) {
        assert_eq!(e.render(), want);
    }
    assert_eq!(
        Element::DevJump {
            dev,
            to: ChainRef::closed(Direction::Ingress)
        }
        .render_key(),
        "\"fy0123456789abc\""
    );
    // What no interface name can be, and nft's quotes could not hold.
    for bad in ["", "fy0123456789abcd", "a\"b", "a b", "a/b", "a\\b", "é"] {
        assert!(ferry_netpol::Ifname::new(bad).is_none(), "{bad:?}");
    }
    assert_eq!(
        SetKind::Ports(ferry_netpol::ranges::Family::V6).render(),
        "type ipv6_addr . inet_proto . inet_service; flags interval;"
    );
}

#[test]
fn scripts_create_before_use_and_never_flush_the_table() {
    let d = on(&base(), "n0");
    let first = plan(&Ruleset::default(), &d);
    assert_eq!(first.commands[0], "add table inet ferry_policy");
    let pos = |s: &str| {
        first
            .commands
            .iter()
            .position(|c| c.starts_with(s))
            .unwrap()
    };
    // Chains before the maps whose elements jump to them, sets before the rules.
    assert!(pos("add chain") < pos("add map"));
    assert!(pos("add set") < pos("add rule"));
    assert!(pos("add chain inet ferry_policy ingress_") < pos("add rule"));
    assert!(first
        .commands
        .iter()
        .all(|c| !c.contains("flush table") && !c.contains("delete")));
    // The forward chain's rules come in the documented order.
    let fwd: Vec<&String> = first
        .commands
        .iter()
        .filter(|c| c.starts_with("add rule inet ferry_policy forward"))
        .collect();
    assert_eq!(fwd.len(), 9);
    assert!(fwd[0].ends_with("ct state established,related accept"));
    assert!(fwd[1].ends_with("ct state invalid drop"));
    assert!(fwd[2].ends_with("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept"));
    assert!(fwd[3].ends_with("ip saddr . ip daddr @self4 accept"));
    assert!(fwd[5].ends_with("ip saddr vmap @egress_pods4"));
    assert!(fwd[8].ends_with("ip6 daddr vmap @ingress_pods6"));
    let input: Vec<&String> = first
        .commands
        .iter()
        .filter(|c| c.starts_with("add rule inet ferry_policy input"))
        .collect();
    assert_eq!(input.len(), 4, "{input:?}");
    assert!(input[2].ends_with("ip saddr vmap @egress_pods4"));
    assert!(first.commands.contains(&"add chain inet ferry_policy input { type filter hook input priority filter; policy accept; }".to_string()));
    let replace = Script::replace(&d);
    assert_eq!(
        &replace.commands[..3],
        [
            "add table inet ferry_policy",
            "delete table inet ferry_policy",
            "add table inet ferry_policy"
        ]
    );
    // The bridge table: its own table, made in the same transaction; neighbour
    // discovery, then unicast to a pod's own address, then the ports of isolated pods.
    let br: Vec<&String> = first
        .commands
        .iter()
        .filter(|c| c.starts_with("add rule bridge ferry_policy forward"))
        .collect();
    assert!(first
        .commands
        .contains(&"add table bridge ferry_policy".to_string()));
    assert!(first.commands.contains(&"add chain bridge ferry_policy forward { type filter hook forward priority filter; policy accept; }".to_string()));
    assert_eq!(br.len(), 4, "{br:?}");
    assert!(br[0].ends_with("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept"));
    assert!(br[1].ends_with("oifname . ip daddr @own4 accept"));
    assert!(br[2].ends_with("oifname . ip6 daddr @own6 accept"));
    assert!(br[3].ends_with("meta protocol { ip, ip6 } oifname vmap @ingress_ports"));
    assert!(replace
        .commands
        .contains(&"delete table bridge ferry_policy".to_string()));
    // The kernel fills the denial counters: a plan never lists their elements.
    assert!(first
        .commands
        .iter()
        .all(|c| !(c.contains("element") && c.contains("denied_"))));
    assert!(plan(&d, &d).is_empty());
}
