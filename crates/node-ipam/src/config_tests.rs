use super::*;

fn conf(subnet: &str) -> IpamConf {
    IpamConf {
        subnet: Some(subnet.into()),
        ..Default::default()
    }
}

fn resolve(c: &IpamConf) -> Result<Pools, IpamError> {
    Pools::resolve(c, Path::new("/nonexistent"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn defaults_of_a_slash_24() {
    let ps = resolve(&conf("10.1.2.0/24")).unwrap();
    let p = ps.v4.unwrap();
    assert!(ps.v6.is_none());
    assert_eq!(p.gateway, ip("10.1.2.1"));
    assert_eq!(p.start, ip("10.1.2.1"));
    assert_eq!(p.end, ip("10.1.2.254"));
    assert_eq!(p.capacity(), 253);
    assert_eq!(ps.routes[0].dst, "0.0.0.0/0");
}

#[test]
fn rejects_bad_subnets_and_ranges() {
    for bad in [
        "10.1.2.0/31",
        "10.1.2.5/24",
        "nope",
        "10.1.2.0/33",
        "fd00::/127",
        "fd00::1/64",
    ] {
        let e = resolve(&conf(bad)).unwrap_err();
        assert_eq!(e.code(), ferry_cni::Code::InvalidConfig, "{bad}");
    }
    let mut c = conf("10.1.2.0/24");
    c.range_start = Some("10.1.3.1".into());
    assert!(resolve(&c).unwrap_err().to_string().contains("rangeStart"));
    c.range_start = Some("10.1.2.50".into());
    c.range_end = Some("10.1.2.40".into());
    assert!(resolve(&c).unwrap_err().to_string().contains("after"));
    let mut c = conf("10.1.2.0/24");
    c.gateway = Some("10.1.2.255".into());
    assert!(resolve(&c).is_err());
}

#[test]
fn missing_node_state_is_try_again() {
    let e = resolve(&IpamConf::default()).unwrap_err();
    assert_eq!(e.code(), ferry_cni::Code::TryAgainLater);
    assert!(e.to_string().contains("ferry-overlayd"));
}

#[test]
fn a_slash_30_holds_one_pod() {
    let p = resolve(&conf("10.9.0.0/30")).unwrap().v4.unwrap();
    assert_eq!(p.capacity(), 1);
}

fn ranges(json: &str) -> Result<Pools, IpamError> {
    let c: IpamConf = serde_json::from_str(json).unwrap();
    resolve(&c)
}

#[test]
fn ranges_give_one_pool_per_family() {
    let ps = ranges(
        r#"{"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20", "gateway": "10.1.0.1"}], [{"subnet": "fd00:1::/64"}]]}"#,
    )
    .unwrap();
    let v4 = ps.v4.unwrap();
    assert_eq!((v4.start, v4.end), (ip("10.1.0.10"), ip("10.1.0.20")));
    let v6 = ps.v6.unwrap();
    assert_eq!(v6.gateway, ip("fd00:1::1"));
    assert_eq!(v6.end, ip("fd00:1::ffff:ffff:ffff:ffff"));
    assert_eq!(v6.capacity(), u128::from(u64::MAX) - 1);
    assert_eq!(show_capacity(v6.capacity()), "~2^64");
    let dsts: Vec<_> = ps.routes.iter().map(|r| r.dst.as_str()).collect();
    assert_eq!(dsts, ["0.0.0.0/0", "::/0"]);
}

#[test]
fn an_ipv6_subnet_alone() {
    let ps = resolve(&conf("fd00:9::/124")).unwrap();
    assert!(ps.v4.is_none());
    assert_eq!(ps.v6.unwrap().capacity(), 14);
    assert_eq!(ps.routes.len(), 1);
}

#[test]
fn hostile_ranges_are_invalid_config() {
    for bad in [
        r#"{"ranges": [[{"subnet": "fd00:1::/64", "rangeStart": "fd00:2::5"}]]}"#,
        r#"{"ranges": [[{"subnet": "fd00:1::/64", "gateway": "fd00:2::1"}]]}"#,
        r#"{"ranges": [[{"subnet": "fd00:1::/64"}], [{"subnet": "fd00:2::/64"}]]}"#,
        r#"{"ranges": [[{"subnet": "fd00:1::/64"}, {"subnet": "fd00:2::/64"}]]}"#,
        r#"{"ranges": []}"#,
        r#"{"ranges": [[]]}"#,
        r#"{"subnet": "10.0.0.0/24", "ranges": [[{"subnet": "fd00:1::/64"}]]}"#,
        r#"{"ranges": [[{"subnet": "fd00:1::/64", "rangeStart": "10.0.0.1"}]]}"#,
        r#"{"subnet": "10.0.0.0/24", "routes": [{"dst": "::/0"}]}"#,
    ] {
        let e = ranges(bad).unwrap_err();
        assert_eq!(e.code(), ferry_cni::Code::InvalidConfig, "{bad}: {e}");
    }
}

#[test]
fn node_state_gives_either_family() {
    let d = tempfile::tempdir().unwrap();
    let mut st = NodeState {
        node_name: "n".into(),
        pod_cidr: None,
        cluster_cidr: None,
        gateway: None,
        pod_cidr_v6: Some("fd00:5::/64".into()),
        cluster_cidr_v6: None,
        gateway_v6: Some("fd00:5::1".parse().unwrap()),
        mtu: 1450,
        network_policy: false,
        big_tcp: None,
    };
    node_state::write(d.path(), &st).unwrap();
    let ps = Pools::resolve(&IpamConf::default(), d.path()).unwrap();
    assert!(ps.v4.is_none());
    assert_eq!(ps.v6.unwrap().gateway, ip("fd00:5::1"));
    st.pod_cidr = Some("10.5.0.0/24".into());
    node_state::write(d.path(), &st).unwrap();
    let ps = Pools::resolve(&IpamConf::default(), d.path()).unwrap();
    assert!(ps.v4.is_some() && ps.v6.is_some());
    st.pod_cidr = None;
    st.pod_cidr_v6 = None;
    node_state::write(d.path(), &st).unwrap();
    let e = Pools::resolve(&IpamConf::default(), d.path()).unwrap_err();
    assert!(
        e.to_string().contains("neither podCIDR nor podCIDRv6"),
        "{e}"
    );
}
