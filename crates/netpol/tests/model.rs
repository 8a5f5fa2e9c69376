//! Conversions from the Kubernetes objects: the API's defaulting, and validation that
//! names the policy and the field, keeps the other policies, and fails closed.

use ferry_netpol::model::{
    namespace_from_k8s, Operator, PolicyPeer, PortSel, Protocol, NAMESPACE_NAME_LABEL,
};
use ferry_netpol::{Cluster, Pod, Policy};
use k8s_openapi::api::core::v1::{Namespace, Pod as K8sPod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

fn np(name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"namespace": "x", "name": name}, "spec": spec}))
        .unwrap()
}

fn convert(spec: Value) -> (Option<Policy>, Vec<ferry_netpol::ModelError>) {
    Policy::from_k8s(&np("p", spec))
}

#[test]
fn policy_types_default_to_ingress_plus_egress_when_egress_rules_exist() {
    let (p, e) = convert(json!({"podSelector": {}}));
    let p = p.unwrap();
    assert!(e.is_empty());
    assert_eq!(p.ingress, Some(vec![]), "ingress isolated, nothing allowed");
    assert_eq!(p.egress, None);

    let (p, _) = convert(json!({"podSelector": {}, "egress": [{}]}));
    let p = p.unwrap();
    assert!(p.ingress.is_some() && p.egress.as_ref().unwrap().len() == 1);

    // An empty egress list is no egress rule: no egress isolation without policyTypes.
    let (p, _) = convert(json!({"podSelector": {}, "egress": []}));
    assert_eq!(p.unwrap().egress, None);

    let (p, _) = convert(json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}));
    let p = p.unwrap();
    assert_eq!(
        p.ingress, None,
        "explicit policyTypes win over the rules present"
    );
    assert_eq!(p.egress, Some(vec![]));
}

#[test]
fn protocol_defaults_to_tcp_and_ports_normalise() {
    let (p, e) = convert(json!({"podSelector": {}, "ingress": [{"ports": [
        {"port": 80}, {"port": "http"}, {"port": "8080"}, {"protocol": "UDP"},
        {"port": 1000, "endPort": 2000, "protocol": "SCTP"}]}]}));
    assert!(e.is_empty(), "{e:?}");
    let ports = &p.unwrap().ingress.unwrap()[0].ports;
    let got: Vec<(Protocol, PortSel)> =
        ports.iter().map(|p| (p.protocol, p.port.clone())).collect();
    assert_eq!(
        got,
        vec![
            (Protocol::Tcp, PortSel::Range(80, 80)),
            (Protocol::Tcp, PortSel::Named("http".into())),
            (Protocol::Tcp, PortSel::Range(8080, 8080)),
            (Protocol::Udp, PortSel::All),
            (Protocol::Sctp, PortSel::Range(1000, 2000)),
        ]
    );
}

/// A broken rule is reported with the policy and the field, and dropped from the policy,
/// which still isolates its pods (fail closed).
fn broken_rule(rule: Value, field: &str, reason_part: &str) {
    let (p, e) = convert(json!({"podSelector": {}, "ingress": [{}, rule]}));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].object, "x/p");
    assert_eq!(e[0].field, field, "{}", e[0]);
    assert!(e[0].reason.contains(reason_part), "{}", e[0]);
    assert!(
        e[0].to_string().starts_with("NetworkPolicy x/p: "),
        "{}",
        e[0]
    );
    let rules = p.unwrap().ingress.unwrap();
    assert_eq!(rules.len(), 1, "the broken rule is gone");
    assert_eq!(rules[0].index, 0);
}

#[test]
fn invalid_rules_are_named_and_dropped() {
    broken_rule(
        json!({"ports": [{"port": 80, "protocol": "ICMP"}]}),
        "spec.ingress[1].ports[0].protocol",
        "ICMP",
    );
    broken_rule(
        json!({"ports": [{"port": 80, "protocol": "tcp"}]}),
        "spec.ingress[1].ports[0].protocol",
        "tcp",
    );
    broken_rule(
        json!({"ports": [{"endPort": 90}]}),
        "spec.ingress[1].ports[0].endPort",
        "numeric port",
    );
    broken_rule(
        json!({"ports": [{"port": "http", "endPort": 90}]}),
        "spec.ingress[1].ports[0].endPort",
        "named",
    );
    broken_rule(
        json!({"ports": [{"port": 90, "endPort": 80}]}),
        "spec.ingress[1].ports[0].endPort",
        "below",
    );
    broken_rule(
        json!({"ports": [{"port": 0}]}),
        "spec.ingress[1].ports[0].port",
        "1..65535",
    );
    broken_rule(
        json!({"ports": [{"port": 70000}]}),
        "spec.ingress[1].ports[0].port",
        "1..65535",
    );
    broken_rule(
        json!({"ports": [{"port": 80, "endPort": 65536}]}),
        "spec.ingress[1].ports[0].endPort",
        "1..65535",
    );
    broken_rule(
        json!({"ports": [{"port": "a-name-longer-than-15"}]}),
        "spec.ingress[1].ports[0].port",
        "port name",
    );
    broken_rule(
        json!({"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}),
        "spec.ingress[1].from[0].ipBlock.cidr",
        "not a CIDR",
    );
    broken_rule(
        json!({"from": [{"ipBlock": {"cidr": "garbage"}}]}),
        "spec.ingress[1].from[0].ipBlock.cidr",
        "not a CIDR",
    );
    broken_rule(
        json!({"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}),
        "spec.ingress[1].from[0].ipBlock.except[0]",
        "strictly inside",
    );
    broken_rule(
        json!({"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}}]}),
        "spec.ingress[1].from[0].ipBlock.except[0]",
        "not strictly inside",
    );
    broken_rule(
        json!({"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/8"]}}]}),
        "spec.ingress[1].from[0].ipBlock.except[0]",
        "strictly inside",
    );
    broken_rule(
        json!({"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["fd00::/64"]}}]}),
        "spec.ingress[1].from[0].ipBlock.except[0]",
        "family",
    );
    broken_rule(
        json!({"from": [{}]}),
        "spec.ingress[1].from[0]",
        "must set one of",
    );
    broken_rule(
        json!({"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}),
        "spec.ingress[1].from[0]",
        "cannot be combined",
    );
    broken_rule(
        json!({"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]}),
        "spec.ingress[1].from[0].podSelector.matchExpressions[0].values",
        "non-empty",
    );
    broken_rule(
        json!({"from": [{"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}}]}),
        "spec.ingress[1].from[0].namespaceSelector.matchExpressions[0].values",
        "must be empty",
    );
    broken_rule(
        json!({"from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}}]}),
        "spec.ingress[1].from[0].podSelector.matchExpressions[0].operator",
        "Gt",
    );
}

#[test]
fn a_broken_pod_selector_or_policy_type_isolates_the_namespace_and_keeps_the_others() {
    let bad_selector = np(
        "bad-sel",
        json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]},
               "ingress": [{}]}),
    );
    let bad_type = np(
        "bad-type",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Sideways"],
               "ingress": [{}]}),
    );
    let good = np("good", json!({"podSelector": {}}));
    let (c, errors) = Cluster::from_k8s(&[], &[], &[bad_selector, good, bad_type]);
    let names: Vec<&str> = c.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["bad-sel", "good", "bad-type"]);
    // Every pod of the namespace, nothing allowed (the allow-all rules left out): for
    // ingress as written, for both directions when the types cannot be read.
    let everyone = ferry_netpol::model::Selector::default();
    assert_eq!(c.policies[0].pod_selector, everyone);
    assert_eq!(c.policies[0].ingress, Some(vec![]));
    assert_eq!(c.policies[0].egress, None);
    assert_eq!(c.policies[2].pod_selector, everyone);
    assert_eq!(c.policies[2].ingress, Some(vec![]));
    assert_eq!(c.policies[2].egress, Some(vec![]));
    let fields: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| (e.object.as_str(), e.field.as_str()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("x/bad-sel", "spec.podSelector.matchExpressions[0].values"),
            ("x/bad-type", "spec.policyTypes[0]"),
        ]
    );
}

#[test]
fn selectors_follow_the_api_operators() {
    let (p, _) = convert(json!({"podSelector": {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
            {"key": "team", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"}]}}));
    let sel = p.unwrap().pod_selector;
    assert_eq!(sel.requirements[1].operator, Operator::NotIn);
    let l = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(sel.matches(&l(&[("app", "web"), ("tier", "a"), ("team", "t")])));
    assert!(sel.matches(&l(&[
        ("app", "web"),
        ("tier", "b"),
        ("team", ""),
        ("env", "dev")
    ])));
    assert!(!sel.matches(&l(&[("app", "web"), ("tier", "c"), ("team", "t")])));
    assert!(!sel.matches(&l(&[
        ("app", "web"),
        ("tier", "a"),
        ("team", "t"),
        ("env", "prod")
    ])));
    assert!(!sel.matches(&l(&[("app", "web"), ("tier", "a")])));
    assert!(!sel.matches(&l(&[
        ("app", "web"),
        ("tier", "a"),
        ("team", "t"),
        ("legacy", "1")
    ])));
    assert!(!sel.matches(&l(&[("tier", "a"), ("team", "t")])));
}

#[test]
fn ip_block_peers_keep_cidr_and_except() {
    let (p, e) = convert(json!({"podSelector": {}, "egress": [{"to": [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
        {"ipBlock": {"cidr": "fd00::/16"}}]}]}));
    assert!(e.is_empty(), "{e:?}");
    let rule = &p.unwrap().egress.unwrap()[0];
    match &rule.peers[0] {
        PolicyPeer::IpBlock { cidr, except } => {
            assert_eq!(cidr.to_string(), "10.0.0.0/8");
            assert_eq!(except.len(), 1);
            assert!(rule.peers[0].ip_block_contains("10.2.3.4".parse().unwrap()));
            assert!(!rule.peers[0].ip_block_contains("10.1.3.4".parse().unwrap()));
            assert!(!rule.peers[0].ip_block_contains("fd00::1".parse().unwrap()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pods_take_addresses_from_status_and_ports_from_containers() {
    let pod: K8sPod = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "a", "labels": {"pod": "a"}},
        "spec": {"nodeName": "n1", "containers": [
            {"name": "c1", "ports": [{"containerPort": 80, "name": "http"}]},
            {"name": "c2", "ports": [{"containerPort": 53, "protocol": "UDP", "name": "dns"}]}]},
        "status": {"podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]},
    }))
    .unwrap();
    let (p, errors) = Pod::from_k8s(&pod);
    assert!(errors.is_empty(), "{errors:?}");
    let p = p.unwrap();
    assert_eq!(
        p.ips,
        vec![
            "10.0.0.5".parse::<std::net::IpAddr>().unwrap(),
            "fd00::5".parse().unwrap()
        ]
    );
    assert_eq!(p.node.as_deref(), Some("n1"));
    assert_eq!(p.ports.len(), 2);
    assert_eq!(p.ports[0].protocol, Protocol::Tcp);
    assert_eq!(
        (
            p.ports[1].name.as_deref(),
            p.ports[1].port,
            p.ports[1].protocol
        ),
        (Some("dns"), 53, Protocol::Udp)
    );

    // Only podIP (older API servers), a terminal pod, garbage.
    let only_ip: K8sPod = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "b"}, "status": {"podIP": "10.0.0.6"}}))
    .unwrap();
    assert_eq!(Pod::from_k8s(&only_ip).0.unwrap().ips.len(), 1);
    let done: K8sPod = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "c"},
        "status": {"phase": "Succeeded", "podIP": "10.0.0.7"}}))
    .unwrap();
    assert!(
        Pod::from_k8s(&done).0.unwrap().ips.is_empty(),
        "its address may be reused"
    );
    // Lies are reported and left out, the pod stays (dropping it would unisolate it).
    let lie: K8sPod = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "d", "labels": {"pod": "d"}},
        "spec": {"containers": [{"name": "c", "ports": [
            {"containerPort": 0}, {"containerPort": 80, "protocol": "ICMP"}, {"containerPort": 81, "name": "ok"}]}]},
        "status": {"podIPs": [{"ip": "10.0.0.300"}, {"ip": "10.0.0.8"}]}})).unwrap();
    let (p, e) = Pod::from_k8s(&lie);
    let p = p.unwrap();
    assert_eq!(p.ips, vec!["10.0.0.8".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(p.ports.len(), 1);
    let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "status.podIPs[0].ip",
            "spec.containers[0].ports[0].containerPort",
            "spec.containers[0].ports[1].protocol"
        ]
    );
    assert!(e.iter().all(|e| e.object == "x/d"));
    let nameless: K8sPod = serde_json::from_value(json!({"metadata": {}})).unwrap();
    assert!(Pod::from_k8s(&nameless).0.is_none());
}

#[test]
fn namespaces_always_carry_their_name_label() {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "x", "labels": {"team": "a"}}}))
            .unwrap();
    let (name, labels) = namespace_from_k8s(&ns).unwrap();
    assert_eq!(name, "x");
    assert_eq!(
        labels.get(NAMESPACE_NAME_LABEL).map(String::as_str),
        Some("x")
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    // A lie about the name label is corrected, as the API server does.
    let lie: Namespace = serde_json::from_value(
        json!({"metadata": {"name": "x", "labels": {NAMESPACE_NAME_LABEL: "kube-system"}}}),
    )
    .unwrap();
    assert_eq!(
        namespace_from_k8s(&lie).unwrap().1[NAMESPACE_NAME_LABEL],
        "x"
    );
    let nameless: Namespace = serde_json::from_value(json!({"metadata": {}})).unwrap();
    assert!(namespace_from_k8s(&nameless).is_err());
}

#[test]
fn policies_without_names_or_spec_are_reported() {
    let no_name: NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"namespace": "x"}, "spec": {}})).unwrap();
    let (p, e) = Policy::from_k8s(&no_name);
    assert!(p.is_none() && e[0].field == "metadata");
    let no_spec: NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"namespace": "x", "name": "n"}})).unwrap();
    let (p, e) = Policy::from_k8s(&no_spec);
    assert!(p.is_none() && e[0].field == "spec");
}

#[test]
fn a_second_object_of_one_key_is_reported_and_left_out() {
    let first = np("same", json!({"podSelector": {}}));
    let second = np(
        "same",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    let (c, errors) = Cluster::from_k8s(&[], &[], &[first, second]);
    assert_eq!(c.policies.len(), 1);
    assert!(c.policies[0].ingress.is_some(), "the first one is used");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].object, "x/same");
}
