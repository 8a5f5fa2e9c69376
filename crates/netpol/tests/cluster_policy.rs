//! ClusterNetworkPolicy: the tiers' semantics in the evaluator, each checked against the
//! computed nft rules of every node (`check_probe`), a randomised comparison of the two
//! over many clusters, and objects that lie or cannot be read failing closed.

mod support;

// The workspace's reproducible generator: a failure names its seed.
#[path = "../../../fuzz/rng.rs"]
mod rng;

use ferry_netpol::model::Protocol::{Sctp, Tcp, Udp};
use ferry_netpol::model::{Action, ClusterPolicy, NodeInfo, Protocol, Tier};
use ferry_netpol::{verdict, verdict_at, Cluster, ClusterNetworkPolicy, Peer};
use rng::Rng;
use serde_json::{json, Value};
use support::{check_probe, labels, pod, policy, world};

/// A ClusterNetworkPolicy from its spec as the API's JSON, which must convert cleanly.
fn cnp(name: &str, spec: Value) -> ClusterPolicy {
    let (p, errors) = ClusterPolicy::from_api(&ClusterNetworkPolicy::new(name, spec));
    assert!(errors.is_empty(), "{errors:?}");
    p.unwrap()
}

fn ns_sel(ns: &str) -> Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": ns}})
}

/// Admin `action` on ingress of namespace `to` from namespace `from`.
fn admin_ingress(name: &str, priority: u32, to: &str, from: &str, action: &str) -> ClusterPolicy {
    cnp(
        name,
        json!({"tier": "Admin", "priority": priority, "subject": {"namespaces": ns_sel(to)},
               "ingress": [{"name": format!("{action}-from-{from}"), "action": action,
                            "from": [{"namespaces": ns_sel(from)}]}]}),
    )
}

fn allow_all_np(ns: &str) -> ferry_netpol::Policy {
    policy(
        ns,
        "allow-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
               "ingress": [{}], "egress": [{}]}),
    )
}

#[test]
fn an_admin_deny_is_not_reopened_by_a_namespace_allowing_everything() {
    let mut c = world(&["x/a", "x/b", "y/a", "y/b"], &[80], &[Tcp]);
    // Tenant x takes nothing from other namespaces, whatever x's own policies say.
    c.cluster_policies.push(cnp(
        "tenants",
        json!({"tier": "Admin", "priority": 10, "subject": {"namespaces": ns_sel("x")},
               "ingress": [{"name": "no-other-tenant", "action": "Deny",
                            "from": [{"namespaces": {"matchExpressions": [
                                {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                 "values": ["x"]}]}}]}]}),
    ));
    let want = [("y/*", "x/*", false)];
    check_probe(&c, 80, Tcp, &want);
    // The namespace's owner allows everything: nothing changes.
    c.policies.push(allow_all_np("x"));
    check_probe(&c, 80, Tcp, &want);
    let v = verdict(&c, Peer::Pod(pod(&c, "y/a")), pod(&c, "x/a"), Tcp, 80);
    let shown = v.to_string();
    assert!(
        shown.contains("DENIED by the Admin tier: ClusterNetworkPolicy tenants (Admin tier, priority 10) ingress[0] \"no-other-tenant\": Deny"),
        "{shown}"
    );
}

#[test]
fn a_baseline_deny_isolates_by_default_and_a_namespace_opens_it() {
    let mut c = world(&["x/a", "y/a", "z/a"], &[80], &[Tcp]);
    c.cluster_policies.push(cnp(
        "default-isolation",
        json!({"tier": "Baseline", "priority": 0, "subject": {"namespaces": {}},
               "ingress": [{"name": "other-namespaces", "action": "Deny",
                            "from": [{"namespaces": {}}]}]}),
    ));
    check_probe(&c, 80, Tcp, &[("*", "*", false)]);
    // x opens itself to y.
    c.policies.push(policy(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    ));
    check_probe(&c, 80, Tcp, &[("*", "*", false), ("y/a", "x/a", true)]);
}

#[test]
fn pass_hands_over_to_network_policy_then_to_the_baseline() {
    let mut c = world(&["x/a", "y/a", "z/a"], &[80, 81], &[Tcp]);
    // Admin: y to x passes; everything else to x is accepted (over any deny below).
    c.cluster_policies.push(cnp(
        "admin",
        json!({"tier": "Admin", "priority": 5, "subject": {"namespaces": ns_sel("x")},
               "ingress": [
                 {"name": "pass-y", "action": "Pass", "from": [{"namespaces": ns_sel("y")}]},
                 {"name": "accept-rest", "action": "Accept", "from": [{"namespaces": {}}]}]}),
    ));
    c.cluster_policies.push(cnp(
        "baseline",
        json!({"tier": "Baseline", "priority": 5, "subject": {"namespaces": {}},
               "ingress": [{"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}]}]}),
    ));
    // No NetworkPolicy: y -> x reaches the baseline (denied); z -> x accepted by admin.
    check_probe(&c, 80, Tcp, &[("*", "*", false), ("z/a", "x/a", true)]);
    // A NetworkPolicy on x allowing port 80 from y: it decides the passed traffic.
    c.policies.push(policy(
        "x",
        "web",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
    ));
    check_probe(
        &c,
        80,
        Tcp,
        &[
            ("*", "*", false),
            ("z/a", "x/a", true),
            ("y/a", "x/a", true),
        ],
    );
    check_probe(&c, 81, Tcp, &[("*", "*", false), ("z/a", "x/a", true)]);
}

#[test]
fn priority_orders_the_admin_tier_and_rules_keep_their_order() {
    let mut c = world(&["x/a", "y/a"], &[80], &[Tcp]);
    c.cluster_policies
        .push(admin_ingress("deny-50", 50, "x", "y", "Deny"));
    c.cluster_policies
        .push(admin_ingress("accept-60", 60, "x", "y", "Accept"));
    check_probe(&c, 80, Tcp, &[("y/a", "x/a", false)]);
    c.cluster_policies[1] = admin_ingress("accept-60", 40, "x", "y", "Accept");
    check_probe(&c, 80, Tcp, &[]);
    // Within one policy the first matching rule decides.
    c.cluster_policies = vec![cnp(
        "ordered",
        json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": ns_sel("y")},
               "egress": [
                 {"name": "deny-80", "action": "Deny", "to": [{"namespaces": ns_sel("x")}],
                  "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]},
                 {"name": "accept-x", "action": "Accept", "to": [{"namespaces": ns_sel("x")}]}]}),
    )];
    check_probe(&c, 80, Tcp, &[("y/a", "x/a", false)]);
}

#[test]
fn egress_accept_still_meets_the_destinations_ingress() {
    let mut c = world(&["x/a", "y/a"], &[80], &[Tcp]);
    c.cluster_policies.push(cnp(
        "egress-accept",
        json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": ns_sel("y")},
               "egress": [{"action": "Accept", "to": [{"namespaces": {}}]}]}),
    ));
    c.policies
        .push(policy("x", "deny-in", json!({"podSelector": {}})));
    check_probe(&c, 80, Tcp, &[("y/a", "x/a", false)]);
}

#[test]
fn protocols_ranges_and_named_ports() {
    let mut c = world(&["x/a", "y/a"], &[80, 81, 8080], &[Tcp, Udp, Sctp]);
    c.cluster_policies.push(cnp(
        "ports",
        json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": ns_sel("x")},
               "ingress": [
                 {"action": "Deny", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}],
                  "protocols": [{"tcp": {"destinationPort": {"range": {"start": 80, "end": 81}}}},
                                {"udp": {}},
                                {"destinationNamedPort": "serve-8080-sctp"}]}]}),
    ));
    for (port, proto, denied) in [
        (80, Tcp, true),
        (81, Tcp, true),
        (8080, Tcp, false),
        (80, Udp, true),
        (8080, Udp, true),
        (8080, Sctp, true),
        (80, Sctp, false),
    ] {
        let want: Vec<(&str, &str, bool)> = if denied {
            vec![("y/a", "x/a", false)]
        } else {
            vec![]
        };
        check_probe(&c, port, proto, &want);
    }
}

#[test]
fn networks_match_pod_addresses_and_nodes_peers_their_addresses() {
    let mut c = world(&["x/a", "y/a", "z/a"], &[80], &[Tcp]);
    c.cluster_policies.push(cnp(
        "nets",
        json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": ns_sel("x")},
               "egress": [
                 {"name": "to-y", "action": "Accept", "to": [{"networks": ["10.2.0.0/16", "fd00::2:0/112"]}]},
                 {"name": "to-nodes", "action": "Accept", "to": [{"nodes": {"matchLabels": {"role": "worker"}}}]},
                 {"name": "rest", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}]}),
    ));
    check_probe(&c, 80, Tcp, &[("x/a", "z/a", false)]);
    c.nodes = vec![
        NodeInfo {
            name: "n0".into(),
            labels: labels(&[("role", "worker")]),
            ips: vec!["192.0.2.10".parse().unwrap()],
        },
        NodeInfo {
            name: "n1".into(),
            labels: labels(&[("role", "control-plane")]),
            ips: vec!["192.0.2.11".parse().unwrap()],
        },
    ];
    let x_a = pod(&c, "x/a");
    let to_ip = |ip: &str| {
        let ip = ip.parse().unwrap();
        let src = ferry_netpol::eval::Endpoint {
            pod: Some(x_a),
            ip: x_a.ip_like(ip),
        };
        let dst = ferry_netpol::eval::Endpoint {
            pod: None,
            ip: Some(ip),
        };
        verdict_at(&c, src, dst, Tcp, 80).allowed
    };
    assert!(to_ip("192.0.2.10"), "a worker node");
    assert!(!to_ip("192.0.2.11"), "not a worker");
    assert!(!to_ip("198.51.100.1"), "the internet");
    let rs = ferry_netpol::Ruleset::compute(&c, &support::local_on(&c, "n0"));
    for (ip, want) in [("192.0.2.10", true), ("192.0.2.11", false)] {
        let pkt = support::Packet {
            src: "10.1.0.1".parse().unwrap(),
            dst: ip.parse().unwrap(),
            protocol: Tcp,
            port: 80,
            oif: None,
        };
        assert_eq!(support::walk(&rs, &pkt), want, "nft x/a -> {ip}");
    }
}

#[test]
fn a_baseline_pass_decides_nothing() {
    let mut c = world(&["x/a", "y/a"], &[80], &[Tcp]);
    c.cluster_policies.push(cnp(
        "b1",
        json!({"tier": "Baseline", "priority": 1, "subject": {"namespaces": {}},
               "ingress": [{"action": "Pass", "from": [{"namespaces": ns_sel("y")}]}]}),
    ));
    c.cluster_policies.push(cnp(
        "b2",
        json!({"tier": "Baseline", "priority": 2, "subject": {"namespaces": {}},
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    ));
    check_probe(&c, 80, Tcp, &[("*", "*", false), ("y/a", "x/a", true)]);
}

/// The objects of a hostile or newer source: each fails closed as the API asks.
#[test]
fn what_cannot_be_read_fails_closed() {
    let convert = |spec: Value| ClusterPolicy::from_api(&ClusterNetworkPolicy::new("p", spec));
    let base = |rules: Value| json!({"tier": "Admin", "priority": 3, "subject": {"namespaces": {}}, "egress": rules});
    // domainNames in an Accept rule: the rule matches nothing (left out), said by field.
    let (p, errs) = convert(base(json!([
        {"name": "dns", "action": "Accept", "to": [{"domainNames": ["example.com"]}]}])));
    assert!(p.unwrap().egress.is_empty());
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].field, "spec.egress[0].to[0].domainNames",
        "{errs:?}"
    );
    assert!(errs[0].reason.contains("not supported"), "{errs:?}");
    // An unknown peer type in a Deny or Pass rule: the rule denies everything.
    for action in ["Deny", "Pass"] {
        let (p, errs) = convert(base(json!([
            {"name": "x", "action": action, "to": [{"serviceAccounts": {}}]}])));
        let p = p.unwrap();
        assert_eq!(p.egress.len(), 1);
        assert_eq!(p.egress[0].action, Action::Deny);
        assert!(p.egress[0].rule.peers.is_empty() && p.egress[0].rule.ports.is_empty());
        assert_eq!(
            errs[0].field, "spec.egress[0].to[0].serviceAccounts",
            "{errs:?}"
        );
    }
    // Garbage everywhere: no panic; an unreadable subject selects everything and keeps only
    // its denying rules, each made a deny-all.
    for spec in [
        json!(null),
        json!("garbage"),
        json!({"tier": 7, "priority": "high", "subject": [], "ingress": {}, "egress": [1, null, "x"]}),
        json!({"tier": "Admin", "priority": 1001, "subject": {"namespaces": {}, "pods": {}}}),
        json!({"tier": "Admin", "priority": -1, "subject": {"namespaces": {"matchExpressions": [{"key": "", "operator": "In"}]}},
               "ingress": [{"action": "Accept", "from": [{"namespaces": {}}]},
                           {"action": "Deny", "from": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 0}}}]}]}),
    ] {
        let (p, errs) = convert(spec.clone());
        let p = p.unwrap();
        assert!(!errs.is_empty(), "{spec}");
        for r in p.ingress.iter().chain(&p.egress) {
            assert_eq!(r.action, Action::Deny, "{spec}: {r:?}");
        }
    }
    // Out of the API's limits: ports, ranges, CIDRs, named ports with networks.
    for rules in [
        json!([{"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 70000}}}]}]),
        json!([{"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"udp": {"destinationPort": {"range": {"start": 90, "end": 80}}}}]}]),
        json!([{"action": "Deny", "to": [{"networks": ["10.0.0.0/33"]}]}]),
        json!([{"action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}], "protocols": [{"destinationNamedPort": "web"}]}]),
        json!([{"action": "Deny", "to": []}]),
        json!([{"action": "Deny", "to": [{}]}]),
        json!([{"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {}, "udp": {}}]}]),
        json!([{"action": "Drop", "to": [{"namespaces": {}}]}]),
    ] {
        let (p, errs) = convert(base(rules.clone()));
        let p = p.unwrap();
        assert_eq!(errs.len(), 1, "{rules}: {errs:?}");
        assert_eq!(p.egress.len(), 1, "{rules}");
        assert!(p.egress[0].rule.peers.is_empty(), "{rules}: deny-all");
    }
    // A second object of one name is reported, the first kept.
    let mut c = Cluster::default();
    let ok = json!({"tier": "Baseline", "priority": 1, "subject": {"namespaces": {}}});
    let errs = c.add_cluster_policies(&[
        ClusterNetworkPolicy::new("same", ok.clone()),
        ClusterNetworkPolicy::new("same", base(json!([]))),
        ClusterNetworkPolicy::new("", ok),
    ]);
    assert_eq!(c.cluster_policies.len(), 1);
    assert_eq!(c.cluster_policies[0].tier, Tier::Baseline);
    assert_eq!(errs.len(), 2, "{errs:?}");
}

/// A rule failed closed (every peer) in a tier: no pre-filter can skip it, and it denies
/// everyone, before and after the rules that can be skipped.
#[test]
fn a_deny_all_rule_is_never_skipped() {
    let mut c = world(&["x/a", "y/a", "z/a"], &[80], &[Tcp]);
    c.cluster_policies.push(cnp(
        "first",
        json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": ns_sel("x")},
               "ingress": [{"action": "Accept", "from": [{"namespaces": ns_sel("y")}]}]}),
    ));
    let (broken, errs) = ClusterPolicy::from_api(&ClusterNetworkPolicy::new(
        "broken",
        json!({"tier": "Admin", "priority": 2, "subject": {"namespaces": ns_sel("x")},
               "ingress": [{"action": "Deny", "from": [{"serviceAccounts": {}}]}]}),
    ));
    assert_eq!(errs.len(), 1);
    c.cluster_policies.push(broken.unwrap());
    check_probe(&c, 80, Tcp, &[("z/a", "x/a", false)]);
}

fn random_peer(r: &mut Rng, egress: bool) -> Value {
    let n = if egress { 4 } else { 2 };
    match r.below(n) {
        0 => {
            json!({"namespaces": *r.pick(&[json!({}), ns_sel("x"), ns_sel("y"), json!({"matchLabels": {"ns": "z"}})])})
        }
        1 => json!({"pods": {"namespaceSelector": *r.pick(&[json!({}), ns_sel("y")]),
                             "podSelector": *r.pick(&[json!({}), json!({"matchLabels": {"pod": "a"}}), json!({"matchLabels": {"pod": "b"}})])}}),
        // IPv6 networks only as `::/0`: a narrower one would hold a pod's global address and
        // not its link-local one, which the walk checks against the same verdict.
        2 => json!({"networks": [*r.pick(&["10.1.0.0/16", "10.2.0.1/32", "0.0.0.0/0", "::/0"])]}),
        _ => json!({"nodes": {}}),
    }
}

fn random_rule(r: &mut Rng, egress: bool) -> Value {
    let action = *r.pick(&["Accept", "Deny", "Pass"]);
    let peers: Vec<Value> = (0..1 + r.below(2))
        .map(|_| random_peer(r, egress))
        .collect();
    let has_ip_peer = peers
        .iter()
        .any(|p| p.get("networks").is_some() || p.get("nodes").is_some());
    let mut rule = json!({"name": format!("r{}", r.below(100)), "action": action});
    rule[if egress { "to" } else { "from" }] = Value::Array(peers);
    match r.below(4) {
        0 => rule["protocols"] = json!([{"tcp": {"destinationPort": {"number": 80}}}]),
        1 => {
            rule["protocols"] = json!([{"tcp": {"destinationPort": {"range": {"start": 80, "end": 81}}}}, {"udp": {}}])
        }
        2 if !has_ip_peer => rule["protocols"] = json!([{"destinationNamedPort": "serve-81-tcp"}]),
        _ => {}
    }
    rule
}

fn random_cluster(r: &mut Rng) -> Cluster {
    let mut c = world(&["x/a", "x/b", "y/a", "y/b", "z/a"], &[80, 81], &[Tcp, Udp]);
    for i in 0..1 + r.below(4) {
        let tier = *r.pick(&["Admin", "Baseline"]);
        let subject = if r.below(2) == 0 {
            json!({"namespaces": *r.pick(&[json!({}), ns_sel("x"), ns_sel("y")])})
        } else {
            json!({"pods": {"namespaceSelector": {}, "podSelector": *r.pick(&[json!({"matchLabels": {"pod": "a"}}), json!({})])}})
        };
        let mut spec = json!({"tier": tier, "priority": r.below(3), "subject": subject});
        for (dir, egress) in [("ingress", false), ("egress", true)] {
            if r.below(3) > 0 {
                let rules: Vec<Value> = (0..1 + r.below(3))
                    .map(|_| random_rule(r, egress))
                    .collect();
                spec[dir] = Value::Array(rules);
            }
        }
        c.cluster_policies.push(cnp(&format!("c{i}"), spec));
    }
    for i in 0..r.below(3) {
        let ns = *r.pick(&["x", "y", "z"]);
        let spec = match r.below(3) {
            0 => json!({"podSelector": {}}),
            1 => {
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress", "Egress"],
                        "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 80}]}]})
            }
            _ => {
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {}}]}]})
            }
        };
        c.policies.push(policy(ns, &format!("np{i}"), spec));
    }
    c
}

/// Random clusters of both tiers and NetworkPolicies: the nft rules of every node give
/// the evaluator's verdict for every pair of pods, both families, on each port probed.
#[test]
fn the_rules_agree_with_the_evaluator_on_random_clusters() {
    let seeds: u64 = std::env::var("FERRY_CNP_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    for seed in 1..=seeds {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        // `networks` peers hold one family: the verdict of a pair depends on the family
        // it talks over, so each family is its own cluster here.
        let mut c = support::only_family(&random_cluster(&mut r), seed % 2 == 0);
        c.nodes = vec![NodeInfo {
            name: "n0".into(),
            labels: Default::default(),
            ips: vec!["10.2.0.1".parse().unwrap()],
        }];
        for (port, proto) in [(80, Tcp), (81, Tcp), (81, Udp)] {
            let expect: Vec<(String, String, bool)> = c
                .pods
                .iter()
                .flat_map(|from| c.pods.iter().map(move |to| (from, to)))
                .filter(|(f, t)| f.key() != t.key())
                .map(|(f, t)| {
                    let v = verdict(&c, Peer::Pod(f), t, proto, port);
                    (f.key().to_string(), t.key().to_string(), v.allowed)
                })
                .collect();
            let expect: Vec<(&str, &str, bool)> = expect
                .iter()
                .map(|(f, t, a)| (f.as_str(), t.as_str(), *a))
                .collect();
            let run = std::panic::catch_unwind(|| check_probe(&c, port, proto, &expect));
            if run.is_err() {
                panic!("seed {seed}, {proto}/{port}, cluster: {c:#?}");
            }
        }
    }
}

/// How the last match of an Admin tier meets a protocol the evaluator was not asked about.
#[test]
fn a_protocol_not_named_is_not_matched() {
    let mut c = world(&["x/a", "y/a"], &[80], &[Tcp, Sctp]);
    c.cluster_policies.push(cnp(
        "tcp-only",
        json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": ns_sel("x")},
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                            "protocols": [{"tcp": {}}]}]}),
    ));
    check_probe(&c, 80, Tcp, &[("y/a", "x/a", false)]);
    check_probe(&c, 80, Sctp, &[]);
    let _: Protocol = Tcp;
}
