use ferry_netpol::Ifname;

use super::denials::denied_counts;
use super::*;

fn pod(ns: &str, name: &str, ip: &str, deleting: bool) -> k8s_openapi::api::core::v1::Pod {
    let mut meta = serde_json::json!({"namespace": ns, "name": name});
    if deleting {
        meta["deletionTimestamp"] = serde_json::json!("2026-11-22T09:00:00Z");
    }
    serde_json::from_value(serde_json::json!({
        "metadata": meta,
        "spec": {"containers": [{"name": "c"}], "nodeName": "n1"},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}]},
    }))
    .unwrap()
}

fn engine() -> Engine {
    Engine {
        node: "n1".into(),
        metrics: Arc::default(),
        attached: BTreeMap::new(),
        applied: None,
        waiting: Vec::new(),
        logged: BTreeSet::new(),
        view: View::default(),
        resyncs: 0,
        ports: Ports::new(),
        tiers: Tiers::default(),
        incremental: Default::default(),
        reference: false,
        writes: 0,
        reader: None,
    }
}

fn ips_of(c: &Cluster, ns: &str, name: &str) -> Vec<IpAddr> {
    c.pod(ns, name).unwrap().ips.clone()
}

#[test]
fn a_reused_address_has_one_holder() {
    let pods = vec![
        pod("x", "old", "10.1.0.5", true),
        pod("y", "new", "10.1.0.5", false),
        pod("x", "stale", "10.1.0.6", false),
        pod("z", "alone", "10.1.0.7", true),
    ];
    let (mut cluster, errors) = Cluster::from_k8s(&[], &pods, &[]);
    assert!(errors.is_empty(), "{errors:?}");
    let mut e = engine();
    // The plugin gave 10.1.0.6 to z/fresh; the API still shows x/stale with it.
    e.attached.insert(
        ("c1".into(), "eth0".into()),
        Attached {
            key: Some(PodKey::new("z", "fresh")),
            ips: vec!["10.1.0.6".parse().unwrap()],
            seen: false,
        },
    );
    let terminating = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .filter_map(|p| {
            Some(PodKey::new(
                p.metadata.namespace.as_deref()?,
                p.metadata.name.as_deref()?,
            ))
        })
        .collect();
    e.settle_addresses(&mut cluster, &terminating);
    assert!(ips_of(&cluster, "x", "old").is_empty());
    assert_eq!(
        ips_of(&cluster, "y", "new"),
        ["10.1.0.5".parse::<IpAddr>().unwrap()]
    );
    assert!(ips_of(&cluster, "x", "stale").is_empty());
    // A terminating pod nobody contests keeps its address.
    assert_eq!(
        ips_of(&cluster, "z", "alone"),
        ["10.1.0.7".parse::<IpAddr>().unwrap()]
    );
    // z/fresh is not in the API yet and x has no policy: open; with a policy in z it
    // would start closed.
    let (local, closed) = e.local_pods(&cluster);
    assert!(closed.ips.is_empty() && closed.devs.is_empty());
    assert!(
        !local.pods.contains_key(&PodKey::new("x", "stale"))
            || local.pods[&PodKey::new("x", "stale")].is_empty()
    );
}

#[test]
fn local_pods_carry_their_link_local_address_and_their_port() {
    let dual = |ns: &str, name: &str, v4: &str, v6: &str, host: bool| {
        let v: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"containers": [{"name": "c"}], "nodeName": "n1", "hostNetwork": host},
            "status": {"podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}]},
        }))
        .unwrap();
        v
    };
    let pods = vec![
        dual("x", "a", "10.1.0.5", "fd00::5", false),
        dual("x", "node", "192.0.2.11", "2001:db8::11", true),
    ];
    let (cluster, errors) = Cluster::from_k8s(&[], &pods, &[]);
    assert!(errors.is_empty(), "{errors:?}");
    let mut e = engine();
    let a4: IpAddr = "10.1.0.5".parse().unwrap();
    let port = Ifname::new("fy0123456789abc").unwrap();
    e.ports.insert(
        ferry_netlink::addr_mac(ferry_netlink::HOST_MAC_TAG, a4),
        port,
    );
    // A pod the plugin announced without a name: closed, its link-local address and
    // its port too.
    let b4: IpAddr = "10.1.0.6".parse().unwrap();
    let b6: IpAddr = "fd00::6".parse().unwrap();
    let b_port = Ifname::new("fy0123456789abd").unwrap();
    e.ports.insert(
        ferry_netlink::addr_mac(ferry_netlink::HOST_MAC_TAG, b4),
        b_port,
    );
    e.attached.insert(
        ("c2".into(), "eth0".into()),
        Attached {
            key: None,
            ips: vec![b6, b4],
            seen: false,
        },
    );
    let (local, closed) = e.local_pods(&cluster);
    let a = &local.pods[&PodKey::new("x", "a")];
    assert_eq!(
        *a,
        vec![
            a4,
            "fd00::5".parse().unwrap(),
            "fe80::858:aff:fe01:5".parse().unwrap()
        ]
    );
    assert_eq!(local.ports.get(&PodKey::new("x", "a")), Some(&port));
    // The host-network pod: the node's addresses only, no port.
    assert_eq!(local.pods[&PodKey::new("x", "node")].len(), 2);
    assert!(!local.ports.contains_key(&PodKey::new("x", "node")));
    assert_eq!(closed.devs, vec![b_port]);
    assert!(closed
        .ips
        .contains(&"fe80::858:aff:fe01:6".parse().unwrap()));
    assert!(closed.ips.contains(&b4) && closed.ips.contains(&b6));
}

#[test]
fn denied_counts_from_a_listing() {
    let listing = r#"{"nftables":[{"metainfo":{}},{"set":{"family":"inet","name":"denied_ingress4","table":"ferry_policy","type":"ipv4_addr","handle":3,"flags":["dynamic","timeout"],"elem":[{"elem":{"val":"10.1.0.5","expires":3500,"counter":{"packets":7,"bytes":420}}}]}}]}"#;
    assert_eq!(
        denied_counts(listing, "denied_ingress4"),
        [("10.1.0.5".parse().unwrap(), 7)]
    );
    assert!(denied_counts(listing, "denied_egress4").is_empty());
    assert!(denied_counts("garbage", "denied_egress4").is_empty());
}
