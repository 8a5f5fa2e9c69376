//! The evaluator on each part of the semantics, each also checked against the computed
//! nft rules of every node by `check_probe` where pods are the endpoints.

mod support;

use ferry_netpol::eval::Endpoint;
use ferry_netpol::model::Protocol::{Sctp, Tcp, Udp};
use ferry_netpol::model::{Direction, Pod};
use ferry_netpol::{verdict, verdict_at, Peer};
use serde_json::json;
use support::{check_probe, labels, pod, policy, world};

#[test]
fn end_port_ranges_are_inclusive() {
    let mut c = world(&["x/a", "y/a"], &[80], &[Tcp]);
    c.policies.push(policy(
        "x",
        "range",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 8000, "endPort": 8010}]}]}),
    ));
    for (port, ok) in [
        (7999, false),
        (8000, true),
        (8005, true),
        (8010, true),
        (8011, false),
    ] {
        let want = if ok {
            vec![]
        } else {
            vec![("*", "x/*", false)]
        };
        check_probe(&c, port, Tcp, &want);
    }
    check_probe(&c, 8005, Udp, &[("*", "x/*", false)]);
}

#[test]
fn ip_block_except_and_pod_addresses() {
    // ipBlock applies to pod addresses too: y/a (10.2.0.1) is in 10.2.0.0/24, y/b is
    // cut out by the except; z/a is outside.
    let mut c = world(&["x/a", "y/a", "y/b", "z/a"], &[80], &[Tcp]);
    c.policies.push(policy(
        "x",
        "cidr",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {
            "cidr": "10.2.0.0/24", "except": ["10.2.0.2/31"]}}, {"ipBlock": {"cidr": "fd00::2:1/128"}}]}]}),
    ));
    let x_a = pod(&c, "x/a");
    let allowed = |ip: &str| verdict(&c, Peer::Ip(ip.parse().unwrap()), x_a, Tcp, 80).allowed;
    assert!(allowed("10.2.0.1"));
    assert!(!allowed("10.2.0.2"), "except");
    assert!(!allowed("10.2.0.3"), "except");
    assert!(allowed("10.2.0.4"));
    assert!(!allowed("10.3.0.1"));
    assert!(allowed("fd00::2:1"));
    assert!(!allowed("fd00::2:2"));
    let v4 = support::only_family(&c, true);
    check_probe(&v4, 80, Tcp, &[("*", "x/a", false), ("y/a", "x/a", true)]);
    let v6 = support::only_family(&c, false);
    check_probe(&v6, 80, Tcp, &[("*", "x/a", false), ("y/a", "x/a", true)]);
}

#[test]
fn named_ports_resolve_against_the_destination_with_their_protocol() {
    let mut c = world(&["x/a", "x/b", "y/a"], &[80], &[Tcp, Udp]);
    // x/b serves "web" on 8080, x/a on 9090: one named port, two numbers.
    for (name, port) in [("a", 9090), ("b", 8080)] {
        let p = c
            .pods
            .iter_mut()
            .find(|p| p.namespace == "x" && p.name == name)
            .unwrap();
        p.ports.push(ferry_netpol::ContainerPort {
            name: Some("web".into()),
            port,
            protocol: Tcp,
        });
    }
    c.policies.push(policy(
        "x",
        "web-in",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "web"}, {"port": "serve-80-udp", "protocol": "UDP"}]}]}),
    ));
    check_probe(&c, 9090, Tcp, &[("*", "x/b", false)]);
    check_probe(&c, 8080, Tcp, &[("*", "x/a", false)]);
    check_probe(&c, 80, Udp, &[]);
    // The name exists for TCP only: UDP 80 is named serve-80-udp, TCP 80 is not allowed.
    check_probe(&c, 80, Tcp, &[("*", "x/*", false)]);

    // Egress: the name resolves against each destination pod.
    c.policies.clear();
    c.policies.push(policy(
        "y",
        "web-out",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "web"}]}]}),
    ));
    check_probe(&c, 9090, Tcp, &[("y/a", "*", false), ("y/a", "x/a", true)]);
    check_probe(&c, 8080, Tcp, &[("y/a", "*", false), ("y/a", "x/b", true)]);
}

#[test]
fn udp_and_sctp_rules_match_their_protocol_only() {
    let mut c = world(&["x/a", "y/a"], &[53], &[Tcp, Udp, Sctp]);
    c.policies.push(policy(
        "x",
        "udp-sctp",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"protocol": "SCTP"}]}]}),
    ));
    check_probe(&c, 53, Udp, &[]);
    check_probe(&c, 53, Tcp, &[("*", "x/*", false)]);
    check_probe(&c, 53, Sctp, &[]);
    check_probe(&c, 9999, Sctp, &[]);
    check_probe(&c, 54, Udp, &[("*", "x/*", false)]);
}

#[test]
fn namespace_selector_alone_takes_every_pod_of_matching_namespaces() {
    let mut c = world(&["x/a", "y/a", "y/b", "z/a"], &[80], &[Tcp]);
    c.policies.push(policy(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    ));
    check_probe(&c, 80, Tcp, &[("*", "x/*", false), ("y/*", "x/*", true)]);
    // A pod selector alone means the policy's own namespace only.
    c.policies[0] = policy(
        "x",
        "from-a",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    );
    check_probe(&c, 80, Tcp, &[("*", "x/*", false)]);
}

#[test]
fn policies_add_up_and_egress_and_ingress_both_decide() {
    let mut c = world(&["x/a", "x/b", "y/a"], &[80, 81], &[Tcp]);
    c.policies.push(policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    ));
    c.policies.push(policy(
        "x",
        "a-in-80",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": 80}]}]}),
    ));
    c.policies.push(policy(
        "x",
        "b-out",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"], "egress": [{}]}),
    ));
    // x/b may send anywhere; x/a accepts 80 from anyone whose egress allows it.
    check_probe(
        &c,
        80,
        Tcp,
        &[
            ("*", "x/*", false),
            ("x/a", "*", false),
            ("x/b", "*", true),
            ("x/b", "x/a", true),
            ("y/a", "x/a", true),
        ],
    );
    check_probe(
        &c,
        81,
        Tcp,
        &[
            ("*", "x/*", false),
            ("x/a", "*", false),
            ("x/b", "y/a", true),
        ],
    );

    let v = verdict(&c, Peer::Pod(pod(&c, "y/a")), pod(&c, "x/a"), Tcp, 80);
    assert!(v.allowed);
    assert!(!v.egress.isolated);
    assert_eq!(v.ingress.selected_by, ["x/deny", "x/a-in-80"]);
    assert_eq!(v.ingress.allowed_by.len(), 1);
    assert_eq!(v.ingress.allowed_by[0].to_string(), "x/a-in-80 ingress[0]");
    let v = verdict(&c, Peer::Pod(pod(&c, "x/a")), pod(&c, "y/a"), Tcp, 80);
    assert!(!v.allowed);
    assert_eq!(v.egress.direction, Direction::Egress);
    let text = v.to_string();
    assert!(
        text.contains("egress of x/a: DENIED: isolated by x/deny; no rule matches"),
        "{text}"
    );
    assert!(
        text.contains("ingress of y/a: allowed: no policy isolates it"),
        "{text}"
    );
}

#[test]
fn a_pod_reaches_itself_and_outside_sources_have_no_egress_side() {
    let mut c = world(&["x/a"], &[80], &[Tcp]);
    c.policies.push(policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    ));
    let a = pod(&c, "x/a");
    let v = verdict(&c, Peer::Pod(a), a, Tcp, 80);
    assert!(v.allowed && v.to_self, "{v}");
    let v = verdict(&c, Peer::Ip("192.0.2.1".parse().unwrap()), a, Tcp, 80);
    assert!(!v.allowed);
    assert!(v.egress.allowed && v.egress.pod.is_none());
    assert!(
        v.to_string()
            .contains("egress: allowed: the endpoint is not a pod"),
        "{v}"
    );
    // A pod to an outside address: only its egress decides.
    let v = verdict_at(
        &c,
        Endpoint {
            pod: Some(a),
            ip: a.ips.first().copied(),
        },
        Endpoint {
            pod: None,
            ip: Some("192.0.2.1".parse().unwrap()),
        },
        Tcp,
        443,
    );
    assert!(!v.allowed && v.ingress.allowed && !v.egress.allowed);
}

#[test]
fn host_network_pods_are_neither_selected_nor_matched_by_selectors() {
    let mut c = world(&["x/a", "x/b"], &[80], &[Tcp]);
    let host = Pod {
        name: "h".into(),
        labels: labels(&[("pod", "b")]),
        ips: vec!["192.0.2.10".parse().unwrap()],
        host_network: true,
        ..c.pods[0].clone()
    };
    c.pods.push(host.clone());
    c.policies.push(policy(
        "x",
        "from-b",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    let v = verdict(&c, Peer::Pod(&host), pod(&c, "x/a"), Tcp, 80);
    assert!(!v.allowed, "{v}");
    let v = verdict(&c, Peer::Pod(pod(&c, "x/a")), &host, Tcp, 80);
    assert!(v.allowed && !v.ingress.isolated, "{v}");
}

#[test]
fn ipv6_only_pods_are_handled_like_ipv4_ones() {
    let c = world(&["x/a", "x/b", "y/a"], &[80], &[Tcp]);
    let mut c = support::only_family(&c, false);
    c.policies.push(policy(
        "x",
        "b-only",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ));
    check_probe(&c, 80, Tcp, &[("*", "x/a", false), ("x/b", "x/a", true)]);
}

#[test]
fn endpoints_found_by_address_give_the_pod_verdict() {
    let mut c = world(&["x/a", "y/a"], &[80], &[Tcp]);
    c.policies.push(policy(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    ));
    let by_ip = |ip: &str| Endpoint::of_ip(&c, ip.parse().unwrap());
    // y/a (10.2.0.1) -> x/a (10.1.0.1): as pods, allowed; an unknown source is not.
    assert!(by_ip("10.2.0.1").pod.is_some());
    assert!(verdict_at(&c, by_ip("10.2.0.1"), by_ip("10.1.0.1"), Tcp, 80).allowed);
    assert!(verdict_at(&c, by_ip("fd00::2:1"), by_ip("fd00::1:1"), Tcp, 80).allowed);
    assert!(by_ip("10.9.9.9").pod.is_none());
    assert!(!verdict_at(&c, by_ip("10.9.9.9"), by_ip("10.1.0.1"), Tcp, 80).allowed);
}
