use super::*;
use ferry_registry::model::ConfigFlags;

fn cfg(dual: bool) -> ClusterConfig {
    let flags = ConfigFlags {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        cluster_cidr_v6: dual.then(|| "fd00:10:244::/56".parse().unwrap()),
        ..Default::default()
    };
    cluster_config(&flags, &entry("a", 1, "10.244.0.0/24", "192.0.2.1")).unwrap()
}

fn entry(name: &str, created: i64, cidrs: &str, ip: &str) -> NodeEntry {
    NodeEntry {
        name: name.into(),
        created,
        pod_cidrs: cidrs
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        addresses: vec![ip.into(), name.into()],
        public_ip: Some(ip.into()),
        vtep_mac: Some(format!("02:00:00:00:00:{created:02x}")),
        usage: None,
        ready: Some(true),
    }
}

fn names(v: &NodesView) -> Vec<&str> {
    v.view.accepted.iter().map(|r| r.node.as_str()).collect()
}

fn refused_for<'a>(v: &'a NodesView, name: &str) -> &'a str {
    let key = format!("Node {name}");
    v.view
        .refused
        .iter()
        .find(|r| r.key == key)
        .map(|r| r.reason.as_str())
        .unwrap_or_else(|| panic!("{name} not refused: {v:?}"))
}

#[test]
fn a_published_node_is_a_peer_with_its_pod_cidrs() {
    let v = judge_all(
        &cfg(true),
        &[],
        &[entry(
            "a",
            1,
            "10.244.1.0/24,fd00:10:244:1::/64",
            "192.0.2.1",
        )],
    );
    let r = &v.view.accepted[0];
    assert_eq!(r.subnet, Some("10.244.1.0/24".parse().unwrap()));
    assert_eq!(r.subnet_v6, Some("fd00:10:244:1::/64".parse().unwrap()));
    assert_eq!(r.public_ip.to_string(), "192.0.2.1");
}

#[test]
fn a_node_without_cidrs_or_annotations_is_pending_not_refused() {
    let mut unpublished = entry("b", 2, "10.244.2.0/24", "192.0.2.2");
    unpublished.public_ip = None;
    unpublished.vtep_mac = None;
    let v = judge_all(
        &cfg(false),
        &[],
        &[entry("a", 1, "", "192.0.2.1"), unpublished],
    );
    assert!(
        v.view.accepted.is_empty() && v.view.refused.is_empty(),
        "{v:?}"
    );
    assert_eq!(
        v.pending,
        vec![
            ("a".to_string(), Pending::NoPodCidr),
            ("b".to_string(), Pending::NotPublished)
        ]
    );
    assert!(Pending::NoPodCidr
        .to_string()
        .contains("--allocate-node-cidrs"));
}

#[test]
fn a_public_ip_that_is_not_the_nodes_own_is_refused() {
    let mut liar = entry("b", 2, "10.244.2.0/24", "192.0.2.2");
    liar.public_ip = Some("192.0.2.1".into());
    let v = judge_all(
        &cfg(false),
        &[],
        &[entry("a", 1, "10.244.1.0/24", "192.0.2.1"), liar],
    );
    assert_eq!(names(&v), ["a"]);
    assert!(refused_for(&v, "b").contains("status.addresses"));
}

#[test]
fn garbage_annotations_and_cidrs_are_refused_by_name() {
    let cases: Vec<(NodeEntry, &str)> = vec![
        (
            NodeEntry {
                public_ip: Some("not-an-ip".into()),
                ..entry("b", 2, "10.244.2.0/24", "192.0.2.2")
            },
            "not an IP address",
        ),
        (
            NodeEntry {
                vtep_mac: Some("zz:zz".into()),
                ..entry("b", 2, "10.244.2.0/24", "192.0.2.2")
            },
            "not a MAC",
        ),
        (
            NodeEntry {
                vtep_mac: None,
                ..entry("b", 2, "10.244.2.0/24", "192.0.2.2")
            },
            "without",
        ),
        (entry("b", 2, "10.244.2.0/33", "192.0.2.2"), "not a CIDR"),
        (
            entry("b", 2, "10.244.2.0/24,10.244.3.0/24", "192.0.2.2"),
            "two of one family",
        ),
        (entry("b", 2, "10.9.0.0/24", "192.0.2.2"), "not a /24"),
        (entry("b", 2, "10.244.2.0/23", "192.0.2.2"), "not a /24"),
        (entry("b", 2, "10.244.2.0/24", "10.244.7.7"), "not one of"),
    ];
    for (mut e, why) in cases {
        if why == "not one of" {
            e.addresses = vec!["10.244.7.8".into()];
        }
        let v = judge_all(&cfg(false), &[], &[e.clone()]);
        assert!(v.view.accepted.is_empty(), "{e:?} accepted");
        let reason = refused_for(&v, "b");
        assert!(reason.contains(why), "{e:?}: {reason}");
    }
}

#[test]
fn a_public_ip_inside_the_cluster_cidr_is_refused_even_when_the_node_has_it() {
    let v = judge_all(
        &cfg(false),
        &[],
        &[entry("b", 2, "10.244.2.0/24", "10.244.9.9")],
    );
    assert!(refused_for(&v, "b").contains("inside the cluster CIDR"));
}

#[test]
fn overlapping_nodes_are_settled_alike_whatever_the_order_older_wins() {
    let old = entry("zeta", 1, "10.244.1.0/24", "192.0.2.1");
    let young = entry("alpha", 5, "10.244.1.0/24", "192.0.2.2");
    for order in [[&old, &young], [&young, &old]] {
        let v = judge_all(&cfg(false), &[], order);
        assert_eq!(names(&v), ["zeta"]);
        assert!(refused_for(&v, "alpha").contains("older and wins"));
    }
    // Created in the same second: the smaller name wins, on every node.
    let twin = entry("beta", 1, "10.244.1.0/24", "192.0.2.3");
    let v = judge_all(&cfg(false), &[], [&old, &twin]);
    assert_eq!(names(&v), ["beta"]);
}

#[test]
fn a_pod_cidr_of_a_family_ferry_does_not_route_is_left_out() {
    let v = judge_all(
        &cfg(false),
        &[],
        &[entry(
            "a",
            1,
            "10.244.1.0/24,fd00:10:244:1::/64",
            "192.0.2.1",
        )],
    );
    assert_eq!(v.view.accepted[0].subnet_v6, None);
}

#[test]
fn a_usage_change_routes_alike() {
    let a = entry("a", 1, "10.244.1.0/24", "192.0.2.1");
    let b = NodeEntry {
        usage: Some(r#"{"used":3,"capacity":253}"#.into()),
        ..a.clone()
    };
    assert!(a.routes_like(&b));
    assert!(a.routes_like(&NodeEntry {
        ready: Some(false),
        ..a.clone()
    }));
    assert_eq!(b.usage().map(|u| u.used), Some(3));
    let c = NodeEntry {
        public_ip: Some("192.0.2.9".into()),
        ..a.clone()
    };
    assert!(!a.routes_like(&c));
}

#[test]
fn the_own_record_names_what_is_missing() {
    let e = entry("a", 1, "", "192.0.2.1");
    let err = own_record(
        &cfg(false),
        &e,
        "192.0.2.1".parse().unwrap(),
        "02:00:00:00:00:01",
    )
    .unwrap_err();
    assert!(err.contains("--allocate-node-cidrs"), "{err}");
    let e = entry("a", 1, "10.244.1.0/24", "192.0.2.1");
    let err = own_record(
        &cfg(true),
        &e,
        "192.0.2.1".parse().unwrap(),
        "02:00:00:00:00:01",
    )
    .unwrap_err();
    assert!(err.contains("IPv6"), "{err}");
    let r = own_record(
        &cfg(false),
        &e,
        "192.0.2.1".parse().unwrap(),
        "02:00:00:00:00:01",
    )
    .unwrap();
    assert_eq!(r.subnet, Some("10.244.1.0/24".parse().unwrap()));
}

#[test]
fn the_subnet_length_is_the_nodes() {
    let flags = ConfigFlags {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        subnet_len: Some(24),
        ..Default::default()
    };
    let c = cluster_config(&flags, &entry("a", 1, "10.244.4.0/26", "192.0.2.1")).unwrap();
    assert_eq!(c.ipv4.unwrap().subnet_len, 26);
    let none = ConfigFlags::default();
    assert!(
        cluster_config(&none, &entry("a", 1, "10.244.4.0/26", "192.0.2.1"))
            .unwrap_err()
            .contains("--cluster-cidr")
    );
}
