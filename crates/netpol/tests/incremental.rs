//! The incremental computation against the reference: after every change of a random
//! sequence (pods come, go, move, are relabelled and readdressed; namespaces relabelled;
//! policies and ClusterNetworkPolicies made, changed, deleted; Nodes changed; the node's
//! own pods and bridge ports changing), [`Incremental::compute`] equals
//! [`Ruleset::compute`] of the same inputs from nothing. `FERRY_INCREMENTAL_SEQUENCES`
//! sets how many sequences (CI runs the default; a long run sets thousands).

mod support;

#[path = "../../../fuzz/rng.rs"]
mod rng;

use std::net::IpAddr;

use ferry_netpol::model::{ClusterPolicy, ContainerPort, NodeInfo, Protocol};
use ferry_netpol::nft::Ifname;
use ferry_netpol::{Cluster, ClusterNetworkPolicy, Incremental, LocalPods, Pod, Ruleset};
use rng::Rng;
use serde_json::{json, Value};
use support::{labels, policy};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const NODE: &str = "n0";

fn ns_labels(r: &mut Rng, ns: &str) -> ferry_netpol::model::Labels {
    let tenant = *r.pick(&["blue", "green"]);
    labels(&[("kubernetes.io/metadata.name", ns), ("tenant", tenant)])
}

fn random_pod(r: &mut Rng, i: usize) -> Pod {
    let ns = *r.pick(&NAMESPACES);
    let mut ips: Vec<IpAddr> = Vec::new();
    let host = r.below(40) + 2;
    if r.chance(85) {
        ips.push(format!("10.1.{}.{host}", r.below(3)).parse().unwrap());
    }
    if r.chance(60) {
        ips.push(format!("fd00::{}:{host}", r.below(3)).parse().unwrap());
    }
    let mut ports = Vec::new();
    if r.chance(70) {
        ports.push(ContainerPort {
            name: Some((*r.pick(&["http", "dns", "metrics"])).into()),
            port: *r.pick(&[80, 53, 9090, 8080]),
            protocol: *r.pick(&[Protocol::Tcp, Protocol::Udp]),
        });
    }
    Pod {
        namespace: ns.into(),
        name: format!("p{i}"),
        labels: labels(&[
            ("app", *r.pick(&["web", "db", "cache"])),
            ("tier", *r.pick(&["front", "back"])),
        ]),
        ips,
        node: Some((*r.pick(&[NODE, "n1", "n2"])).into()),
        ports,
        host_network: r.chance(5),
    }
}

fn selector(r: &mut Rng) -> Value {
    match r.below(4) {
        0 => json!({}),
        1 => json!({"matchLabels": {"app": *r.pick(&["web", "db", "cache"])}}),
        2 => json!({"matchLabels": {"tier": *r.pick(&["front", "back"])}}),
        _ => {
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": [*r.pick(&["web", "db"])]}]})
        }
    }
}

fn ns_selector(r: &mut Rng) -> Value {
    match r.below(3) {
        0 => json!({}),
        1 => json!({"matchLabels": {"tenant": *r.pick(&["blue", "green"])}}),
        _ => json!({"matchLabels": {"kubernetes.io/metadata.name": *r.pick(&NAMESPACES)}}),
    }
}

fn np_peer(r: &mut Rng) -> Value {
    match r.below(4) {
        0 => json!({"podSelector": selector(r)}),
        1 => json!({"namespaceSelector": ns_selector(r), "podSelector": selector(r)}),
        2 => json!({"namespaceSelector": ns_selector(r)}),
        _ => {
            json!({"ipBlock": {"cidr": *r.pick(&["10.1.0.0/16", "10.1.1.0/24", "fd00::/64", "0.0.0.0/0"])}})
        }
    }
}

fn np_ports(r: &mut Rng) -> Value {
    match r.below(4) {
        0 => json!([]),
        1 => json!([{"port": 80}]),
        2 => json!([{"port": "http"}, {"protocol": "UDP", "port": "dns"}]),
        _ => json!([{"port": 8000, "endPort": 8100}, {"protocol": "UDP", "port": 53}]),
    }
}

fn random_np(r: &mut Rng, name: &str) -> ferry_netpol::Policy {
    let ns = *r.pick(&NAMESPACES);
    let mut spec = json!({"podSelector": selector(r), "policyTypes": []});
    for (dir, key, ty) in [("ingress", "from", "Ingress"), ("egress", "to", "Egress")] {
        if r.chance(60) {
            let rules: Vec<Value> = (0..r.below(3))
                .map(|_| {
                    let peers: Vec<Value> = (0..r.below(3)).map(|_| np_peer(r)).collect();
                    json!({key: peers, "ports": np_ports(r)})
                })
                .collect();
            spec[dir] = Value::Array(rules);
            spec["policyTypes"].as_array_mut().unwrap().push(json!(ty));
        }
    }
    policy(ns, name, spec)
}

fn random_cnp(r: &mut Rng, name: &str) -> ClusterPolicy {
    let subject = if r.chance(50) {
        json!({"namespaces": ns_selector(r)})
    } else {
        json!({"pods": {"namespaceSelector": ns_selector(r), "podSelector": selector(r)}})
    };
    let mut spec = json!({"tier": *r.pick(&["Admin", "Baseline"]), "priority": r.below(5), "subject": subject});
    for (dir, key, egress) in [("ingress", "from", false), ("egress", "to", true)] {
        if r.chance(70) {
            let rules: Vec<Value> = (0..1 + r.below(3))
                .map(|i| {
                    let peer = match r.below(if egress { 4 } else { 2 }) {
                        0 => json!({"namespaces": ns_selector(r)}),
                        1 => json!({"pods": {"namespaceSelector": ns_selector(r), "podSelector": selector(r)}}),
                        2 => json!({"networks": [*r.pick(&["10.1.0.0/16", "fd00::/64"])]}),
                        _ => json!({"nodes": {"matchLabels": {"zone": *r.pick(&["a", "b"])}}}),
                    };
                    let mut rule = json!({"name": format!("r{i}"), "action": *r.pick(&["Accept", "Deny", "Pass"]), key: [peer]});
                    match r.below(3) {
                        0 => rule["protocols"] = json!([{"tcp": {"destinationPort": {"number": 80}}}]),
                        1 if !egress || peer.get("pods").is_some() => {
                            rule["protocols"] = json!([{"destinationNamedPort": "http"}])
                        }
                        _ => {}
                    }
                    rule
                })
                .collect();
            spec[dir] = Value::Array(rules);
        }
    }
    let (p, errors) = ClusterPolicy::from_api(&ClusterNetworkPolicy::new(name, spec));
    assert!(errors.is_empty(), "{errors:?}");
    p.unwrap()
}

fn random_node(r: &mut Rng, i: usize) -> NodeInfo {
    NodeInfo {
        name: format!("n{i}"),
        labels: labels(&[("zone", *r.pick(&["a", "b"]))]),
        ips: vec![format!("192.0.2.{}", 1 + r.below(5)).parse().unwrap()],
    }
}

/// The node's own pods as the daemon gives them: the API's, some readdressed by the
/// plugin (it knows first) and with a link-local address, most with a bridge port.
fn local_of(r: &mut Rng, c: &Cluster) -> LocalPods {
    let mut local = LocalPods::on_node(c, NODE);
    for (k, ips) in local.pods.iter_mut() {
        if r.chance(20) {
            *ips = vec![format!("10.1.9.{}", 1 + r.below(9)).parse().unwrap()];
        }
        if r.chance(50) {
            ips.push(format!("fe80::{}", 1 + r.below(9)).parse().unwrap());
        }
        if r.chance(80) {
            let name = format!("fy{}{}", k.namespace, k.name);
            local.ports.insert(k.clone(), Ifname::new(&name).unwrap());
        }
    }
    local
}

fn random_cluster(r: &mut Rng) -> Cluster {
    let mut c = Cluster::default();
    for ns in NAMESPACES {
        c.namespaces.insert(ns.into(), ns_labels(r, ns));
    }
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..4 + r.below(10) {
        let p = random_pod(r, i);
        if seen.insert(p.key()) {
            c.pods.push(p);
        }
    }
    for i in 0..r.below(5) {
        let p = random_np(r, &format!("np{i}"));
        if !c.policies.iter().any(|q| q.id() == p.id()) {
            c.policies.push(p);
        }
    }
    for i in 0..r.below(4) {
        c.cluster_policies.push(random_cnp(r, &format!("c{i}")));
    }
    c.nodes = (0..3).map(|i| random_node(r, i)).collect();
    c
}

/// One change of the kind a watch delivers.
fn change(r: &mut Rng, c: &mut Cluster, serial: &mut usize) {
    *serial += 1;
    let n = *serial;
    match r.below(12) {
        0 | 1 => {
            let p = random_pod(r, 100 + n);
            if c.pod(&p.namespace, &p.name).is_none() {
                c.pods.push(p);
            }
        }
        2 if !c.pods.is_empty() => {
            let i = r.below(c.pods.len());
            c.pods.remove(i);
        }
        3 if !c.pods.is_empty() => {
            let i = r.below(c.pods.len());
            let (k, v) = *r.pick(&[
                ("app", "web"),
                ("app", "db"),
                ("tier", "back"),
                ("tier", "front"),
            ]);
            c.pods[i].labels.insert(k.into(), v.into());
        }
        4 if !c.pods.is_empty() => {
            // Readdressed (a pod restarted, or its address not known yet).
            let i = r.below(c.pods.len());
            let fresh = random_pod(r, 0);
            c.pods[i].ips = fresh.ips;
            c.pods[i].ports = fresh.ports;
        }
        5 if !c.pods.is_empty() => {
            let i = r.below(c.pods.len());
            c.pods[i].node = Some((*r.pick(&[NODE, "n1"])).into());
        }
        6 => {
            let ns = *r.pick(&NAMESPACES);
            let l = ns_labels(r, ns);
            if r.chance(10) {
                c.namespaces.remove(ns);
            } else {
                c.namespaces.insert(ns.into(), l);
            }
        }
        7 => {
            let name = format!("np{}", r.below(6));
            let p = random_np(r, &name);
            c.policies.retain(|q| q.id() != p.id());
            c.policies.push(p);
        }
        8 if !c.policies.is_empty() => {
            let i = r.below(c.policies.len());
            c.policies.remove(i);
        }
        9 => {
            let name = format!("c{}", r.below(5));
            c.cluster_policies.retain(|q| q.name != name);
            if r.chance(80) {
                c.cluster_policies.push(random_cnp(r, &name));
            }
        }
        10 => {
            let i = r.below(3);
            c.nodes[i] = random_node(r, i);
        }
        _ => {}
    }
}

#[test]
fn incremental_equals_the_full_computation_after_every_change() {
    let sequences: u64 = std::env::var("FERRY_INCREMENTAL_SEQUENCES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut made = 0;
    let mut rounds = 0;
    for seq in 1..=sequences {
        let mut r = Rng(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut c = random_cluster(&mut r);
        let mut inc = Incremental::default();
        let mut serial = 0;
        for step in 0..25 {
            // Sometimes several changes land in one round, as a relist or a burst does.
            for _ in 0..1 + r.below(3) {
                change(&mut r, &mut c, &mut serial);
            }
            let local = local_of(&mut Rng(seq ^ (step as u64) << 8 | 1), &c);
            let got = inc.compute(&c, &local);
            let want = Ruleset::compute(&c, &local);
            made += inc.made();
            rounds += 1;
            if got != want {
                panic!(
                    "sequence {seq}, step {step}: the incremental tables differ from the full computation\ncluster: {c:#?}\nlocal: {local:#?}\nincremental: {}\nfull: {}",
                    got.render_replace(),
                    want.render_replace()
                );
            }
        }
    }
    eprintln!("{sequences} sequences, {rounds} rounds, {made} pieces made anew");
}

/// A change that touches no policy's selectors makes nothing anew.
#[test]
fn a_pod_no_policy_reads_makes_nothing_anew() {
    let mut r = Rng(7);
    let mut c = random_cluster(&mut r);
    c.policies = vec![policy(
        "x",
        "web",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}),
    )];
    c.cluster_policies.clear();
    let local = LocalPods::on_node(&c, NODE);
    let mut inc = Incremental::default();
    inc.compute(&c, &local);
    assert_eq!(inc.made(), 1);
    c.pods.push(Pod {
        namespace: "y".into(),
        name: "elsewhere".into(),
        labels: labels(&[("app", "db")]),
        ips: vec!["10.1.2.200".parse().unwrap()],
        node: Some("n1".into()),
        ports: Vec::new(),
        host_network: false,
    });
    let got = inc.compute(&c, &local);
    assert_eq!(
        inc.made(),
        0,
        "a pod of another namespace matches no peer of x/web"
    );
    assert_eq!(got, Ruleset::compute(&c, &local));
    c.pods.push(Pod {
        namespace: "x".into(),
        name: "peer".into(),
        labels: labels(&[("app", "db")]),
        ips: vec!["10.1.2.201".parse().unwrap()],
        node: Some("n1".into()),
        ports: Vec::new(),
        host_network: false,
    });
    let got = inc.compute(&c, &local);
    assert_eq!(inc.made(), 1, "a new peer of x/web");
    assert_eq!(got, Ruleset::compute(&c, &local));
}
