//! How long computing and planning take for a large cluster. Ignored by default (it only
//! measures); run with
//! `cargo test -p ferry-netpol --release --test scale -- --ignored --nocapture`.

use std::net::IpAddr;
use std::time::Instant;

use ferry_netpol::model::{
    Labels, Pod, Policy, PolicyPeer, PolicyPort, PolicyRule, PortSel, Protocol, Selector,
};
use ferry_netpol::{plan, Cluster, LocalPods, Ruleset};

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// `pods` pods in 50 namespaces over 100 nodes, `policies` policies each selecting one
/// app and allowing it from another app on two ports.
fn cluster(pods: usize, policies: usize) -> Cluster {
    let mut c = Cluster::default();
    for i in 0..pods {
        let ns = format!("ns{}", i % 50);
        let ip: IpAddr = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)
            .parse()
            .unwrap();
        c.pods.push(Pod {
            namespace: ns,
            name: format!("p{i}"),
            labels: labels(&[("app", format!("app{}", i % 200))]),
            ips: vec![ip],
            node: Some(format!("n{}", i % 100)),
            ports: vec![],
            host_network: false,
        });
    }
    for i in 0..policies {
        let sel = |app: usize| Selector {
            match_labels: labels(&[("app", format!("app{}", app % 200))]),
            requirements: vec![],
        };
        c.policies.push(Policy {
            namespace: format!("ns{}", i % 50),
            name: format!("pol{i}"),
            pod_selector: sel(i),
            ingress: Some(vec![PolicyRule {
                index: 0,
                peers: vec![PolicyPeer::Pods {
                    pods: Some(sel(i + 1)),
                    namespaces: Some(Selector::default()),
                }],
                ports: vec![
                    PolicyPort {
                        protocol: Protocol::Tcp,
                        port: PortSel::Range(80, 80),
                    },
                    PolicyPort {
                        protocol: Protocol::Tcp,
                        port: PortSel::Range(8000, 8100),
                    },
                ],
            }]),
            egress: None,
        });
    }
    c
}

/// Measures, for 1 000 to 10 000 pods and 100 to 1 000 policies, how long computing one
/// node's ruleset and planning the change of one relabelled pod take, and how large the
/// full script is; asserts nothing (a benchmark). Run with
/// `cargo test -p ferry-netpol --release --test scale -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn compute_and_plan_at_scale() {
    for (pods, policies) in [(1000, 100), (5000, 500), (10000, 1000)] {
        let c = cluster(pods, policies);
        let local = LocalPods::on_node(&c, "n0");
        let t = Instant::now();
        let d1 = Ruleset::compute(&c, &local);
        let compute = t.elapsed();
        let mut c2 = c.clone();
        c2.pods[0].labels = labels(&[("app", "app7".into())]);
        let d2 = Ruleset::compute(&c2, &local);
        let t = Instant::now();
        let p = plan(&d1, &d2);
        let planned = t.elapsed();
        let full = plan(&Ruleset::default(), &d1).render();
        let sets = || d1.inet.sets.values().chain(d1.bridge.sets.values());
        let elements: usize = sets().map(|s| s.elements.len()).sum();
        println!(
            "{pods} pods, {policies} policies: compute {compute:?}, plan of one relabel {planned:?} \
             ({} commands), full script {} KiB, {} sets, {elements} elements",
            p.commands.len(),
            full.len() / 1024,
            sets().count()
        );
    }
}
