use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnetwork::{IpNetwork, Ipv6Network};

use super::*;
use crate::Layout;

fn cfg(cidr: &str, len: u8) -> ClusterConfig {
    ClusterConfig {
        ipv4: Some(ClusterV4 {
            cluster_cidr: cidr.parse().unwrap(),
            subnet_len: len,
        }),
        vni: 1,
        port: 4789,
        ipv6: None,
    }
}

fn dual(cidr6: &str, len6: u8) -> ClusterConfig {
    ClusterConfig {
        ipv6: Some(ClusterV6 {
            cluster_cidr: cidr6.parse().unwrap(),
            subnet_len: len6,
        }),
        ..cfg("10.244.0.0/16", 24)
    }
}

#[test]
fn validation() {
    assert!(cfg("10.244.0.0/16", 24).validate().is_ok());
    assert!(cfg("10.244.0.0/16", 16).validate().is_err());
    assert!(cfg("10.244.0.0/16", 31).validate().is_err());
    assert!(cfg("10.244.1.0/16", 24).validate().is_err());
    let mut c = cfg("10.244.0.0/16", 24);
    c.vni = 0;
    assert!(c.validate().is_err());
}

#[test]
fn subnets() {
    let c = cfg("10.244.0.0/16", 24).ipv4.unwrap();
    assert_eq!(c.subnet_count(), 256);
    assert_eq!(c.subnet(3).to_string(), "10.244.3.0/24");
    assert!(c.holds("10.244.9.0/24".parse().unwrap()));
    assert!(!c.holds("10.245.9.0/24".parse().unwrap()));
}

#[test]
fn picks_only_free_and_reports_full() {
    let c = cfg("10.9.0.0/28", 30).ipv4.unwrap();
    let mut taken = HashSet::new();
    for seed in 0..4 {
        let s = pick_free(&c, &taken, seed * 7).unwrap();
        assert!(taken.insert(s));
    }
    assert_eq!(pick_free(&c, &taken, 1), None);
}

#[test]
fn flags_never_overwrite() {
    let c = cfg("10.244.0.0/16", 24);
    let same = ConfigFlags {
        cluster_cidr: c.ipv4.map(|v| v.cluster_cidr),
        ..Default::default()
    };
    assert!(c.check_flags(&same).is_ok());
    let other = ConfigFlags {
        cluster_cidr: Some("10.99.0.0/16".parse().unwrap()),
        vni: Some(7),
        ..Default::default()
    };
    let e = c.check_flags(&other).unwrap_err();
    assert!(
        e.contains("--cluster-cidr 10.99.0.0/16 (stored 10.244.0.0/16)"),
        "{e}"
    );
    assert!(e.contains("--vni 7"), "{e}");
    assert_eq!(ClusterConfig::from_flags(&ConfigFlags::default()), None);
}

#[test]
fn cluster_cidrs_that_would_swallow_the_host_are_refused() {
    for (cidr, why) in [
        ("0.0.0.0/0", "too short"),
        ("10.0.0.0/4", "too short"),
        ("127.0.0.0/16", "loopback"),
        ("224.1.0.0/16", "multicast"),
        ("169.254.0.0/16", "link-local"),
        ("240.0.0.0/8", "reserved"),
    ] {
        let e = cfg(cidr, 24).validate().unwrap_err();
        assert!(e.contains(cidr) && e.contains(why), "{cidr}: {e}");
    }
    let c = cfg("192.0.0.0/16", 24);
    let e = c.check_underlay(&underlay()).unwrap_err();
    assert!(e.contains("192.0.2.0/24"), "{e}");
    assert!(c
        .check_underlay(&["198.51.100.0/24".parse().unwrap()])
        .is_ok());
}

fn rec(node: &str, subnet: &str, ip: u8, mac: u8) -> LeaseRecord {
    LeaseRecord {
        node: node.into(),
        subnet: Some(subnet.parse().unwrap()),
        public_ip: Ipv4Addr::new(192, 0, 2, ip).into(),
        vtep_mac: format!("0e:00:00:00:00:{mac:02x}"),
        subnet_v6: None,
    }
}

fn rec6(node: &str, subnet: &str, subnet_v6: &str, ip: u8, mac: u8) -> LeaseRecord {
    LeaseRecord {
        subnet_v6: Some(subnet_v6.parse().unwrap()),
        ..rec(node, subnet, ip, mac)
    }
}

fn stored(key: &str, r: Result<LeaseRecord, String>, rev: i64) -> StoredLease {
    StoredLease {
        key: Layout::new("/f").lease(key.parse().unwrap()),
        key_subnet: Some(IpNetwork::V4(key.parse().unwrap())),
        record: r,
        create_revision: rev,
        v6_owner: None,
    }
}

fn underlay() -> Vec<IpNetwork> {
    vec![
        "192.0.2.0/24".parse().unwrap(),
        "2001:db8::/64".parse().unwrap(),
    ]
}

#[test]
fn each_record_is_checked_on_its_own() {
    let c = cfg("10.244.0.0/16", 24);
    let ok = rec("a", "10.244.1.0/24", 11, 1);
    assert!(check_lease(&c, &underlay(), ok.primary(), &ok).is_ok());
    let bad = [
        (
            Some("10.244.2.0/24"),
            rec("a", "10.244.1.0/24", 11, 1),
            "not the one the key names",
        ),
        (
            Some("192.0.2.0/24"),
            rec("x", "192.0.2.0/24", 11, 1),
            "not a /24 of the cluster",
        ),
        (
            Some("10.244.1.0/25"),
            rec("x", "10.244.1.0/25", 11, 1),
            "not a /24",
        ),
        (
            Some("10.244.1.0/24"),
            rec("", "10.244.1.0/24", 11, 1),
            "not a node name",
        ),
    ];
    for (key, r, why) in bad {
        let e = check_lease(
            &c,
            &underlay(),
            key.map(|k| IpNetwork::V4(k.parse().unwrap())),
            &r,
        )
        .unwrap_err();
        assert!(e.contains(why), "{r:?}: {e}");
    }
    let mut r = ok.clone();
    for (ip, why) in [
        (Ipv4Addr::UNSPECIFIED, "unspecified"),
        (Ipv4Addr::LOCALHOST, "loopback"),
        (Ipv4Addr::new(239, 1, 1, 1), "multicast"),
        (Ipv4Addr::BROADCAST, "broadcast"),
        (Ipv4Addr::new(10, 244, 9, 1), "inside the cluster CIDR"),
    ] {
        r.public_ip = ip.into();
        let e = check_lease(&c, &underlay(), r.primary(), &r).unwrap_err();
        assert!(e.contains(why), "{ip}: {e}");
    }
    let mut r = ok.clone();
    for (mac, why) in [
        ("00:00:00:00:00:00", "all zero"),
        ("01:00:5e:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "multicast"),
        ("zz", "not a MAC"),
    ] {
        r.vtep_mac = mac.into();
        let e = check_lease(&c, &underlay(), r.primary(), &r).unwrap_err();
        assert!(e.contains(why), "{mac}: {e}");
    }
    // A cluster CIDR over the underlay (refused elsewhere) still never yields a lease
    // over it.
    let wide = cfg("192.0.0.0/16", 24);
    let r = rec("x", "192.0.2.0/24", 11, 1);
    let e = check_lease(&wide, &underlay(), r.primary(), &r).unwrap_err();
    assert!(e.contains("overlaps this node's network"), "{e}");
}

#[test]
fn the_older_record_wins_a_conflict_on_every_node() {
    let c = cfg("10.244.0.0/16", 24);
    let real = stored("10.244.1.0/24", Ok(rec("a", "10.244.1.0/24", 11, 1)), 5);
    let others = [
        stored("10.244.2.0/24", Ok(rec("a", "10.244.2.0/24", 12, 2)), 9),
        stored("10.244.3.0/24", Ok(rec("c", "10.244.1.0/24", 13, 3)), 9),
        stored("10.244.4.0/24", Ok(rec("d", "10.244.4.0/24", 14, 1)), 9),
        stored("10.244.5.0/24", Ok(rec("e", "10.244.5.0/24", 15, 5)), 9),
    ];
    let mut all = vec![real.clone()];
    all.extend(others.iter().cloned());
    // Whatever order etcd lists them in, the outcome is the same.
    let a = resolve(&c, &underlay(), &all);
    all.reverse();
    let b = resolve(&c, &underlay(), &all);
    assert_eq!(a.accepted, b.accepted);
    let nodes: Vec<&str> = a.accepted.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes, ["a", "e"]);
    // The loser's key is named, and the winner's.
    assert!(a.refused.iter().all(|r| r.key != real.key));
    let mut refused: Vec<String> = a.refused.iter().map(|r| r.reason.clone()).collect();
    refused.sort();
    assert!(refused[0].contains("its VTEP MAC is that of /f/v1/leases/10.244.1.0-24"));
    assert!(refused[1].contains("its node name is"));
    assert!(refused[2].contains("not the one the key names"));
}

#[test]
fn a_claim_on_a_live_subnet_loses_and_an_unreadable_record_is_held() {
    let c = cfg("10.244.0.0/16", 24);
    let view = resolve(
        &c,
        &underlay(),
        &[
            stored("10.244.1.0/24", Ok(rec("a", "10.244.1.0/24", 11, 1)), 5),
            // The same subnet under another key, and half of it under its own.
            stored("10.244.250.0/24", Ok(rec("x", "10.244.1.0/24", 99, 9)), 3),
            stored("10.244.1.0/25", Ok(rec("y", "10.244.1.0/25", 98, 8)), 2),
            stored("10.244.7.0/24", Err("expected value".into()), 4),
        ],
    );
    assert_eq!(view.accepted, vec![rec("a", "10.244.1.0/24", 11, 1)]);
    assert_eq!(
        view.unreadable,
        vec!["10.244.7.0/24".parse::<IpNetwork>().unwrap()]
    );
    assert_eq!(view.refused.len(), 3);
    assert!(view
        .refused
        .iter()
        .all(|r| r.key.starts_with("/f/v1/leases/")));
}

#[test]
fn ipv6_cluster_cidrs_are_checked_like_ipv4_ones() {
    assert!(dual("fd00:10::/56", 64).validate().is_ok());
    for (cidr, len, why) in [
        ("::/0", 64, "too short"),
        ("fd00::/12", 64, "too short"),
        ("::1/128", 128, "loopback"),
        ("::ffff:0:0/96", 112, "IPv4-mapped"),
        ("::/16", 64, "loopback"),
        ("0:1::/32", 64, "reserved"),
        ("fe80::/16", 64, "link-local"),
        ("ff02::/16", 64, "multicast"),
        ("fd00:10::1/56", 64, "host bits"),
        ("fd00:10::/56", 56, "longer than"),
        ("fd00:10::/56", 124, "at most /120"),
        ("fd00::/16", 64, "2^24"),
    ] {
        let e = dual(cidr, len).validate().unwrap_err();
        assert!(e.contains(why), "{cidr}/{len}: {e}");
    }
    let over = dual("2001:db8::/48", 64);
    let e = over.check_underlay(&underlay()).unwrap_err();
    assert!(e.contains("2001:db8::/64"), "{e}");
    assert!(dual("fd00:10::/56", 64).check_underlay(&underlay()).is_ok());
    let v6 = dual("fd00:10::/56", 64).ipv6.unwrap();
    assert_eq!(v6.subnet_count(), 256);
    assert_eq!(v6.subnet(3).to_string(), "fd00:10:0:3::/64");
    assert!(v6.holds("fd00:10:0:ff::/64".parse().unwrap()));
    assert!(!v6.holds("fd00:11::/64".parse().unwrap()));
}

#[test]
fn ipv6_flags_never_overwrite() {
    let c = dual("fd00:10::/56", 64);
    let f = ConfigFlags {
        cluster_cidr: c.ipv4.map(|v| v.cluster_cidr),
        cluster_cidr_v6: Some("fd00:10::/56".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(
        ClusterConfig::from_flags(&ConfigFlags {
            cluster_cidr: c.ipv4.map(|v| v.cluster_cidr),
            ..f.clone()
        }),
        Some(c.clone())
    );
    assert!(c.check_flags(&f).is_ok());
    let v4_only = cfg("10.244.0.0/16", 24);
    let e = v4_only.check_flags(&f).unwrap_err();
    assert!(
        e.contains("--cluster-cidr-v6 fd00:10::/56 (stored none)"),
        "{e}"
    );
    let f = ConfigFlags {
        subnet_len_v6: Some(80),
        ..Default::default()
    };
    let e = c.check_flags(&f).unwrap_err();
    assert!(e.contains("--subnet-len-v6 80 (stored 64)"), "{e}");
}

#[test]
fn an_ipv4_only_record_and_config_read_as_before() {
    // What the previous release stored, and what it reads of ours: the IPv6 keys are
    // additive and optional.
    let old = r#"{"clusterCIDR":"10.244.0.0/16","subnetLen":24,"vni":1,"port":4789}"#;
    let c: ClusterConfig = serde_json::from_str(old).unwrap();
    assert_eq!(c, cfg("10.244.0.0/16", 24));
    assert_eq!(serde_json::to_string(&c).unwrap(), old);
    let r = rec("a", "10.244.1.0/24", 11, 1);
    assert!(!serde_json::to_string(&r).unwrap().contains("V6"));
    let d = serde_json::to_value(dual("fd00:10::/56", 64)).unwrap();
    assert_eq!(d["ipv6"]["clusterCIDR"], "fd00:10::/56");
    assert_eq!(d["ipv6"]["subnetLen"], 64);
    let r6 = serde_json::to_value(rec6("a", "10.244.1.0/24", "fd00:10:0:1::/64", 11, 1));
    assert_eq!(r6.unwrap()["subnetV6"], "fd00:10:0:1::/64");
}

#[test]
fn ipv6_subnets_are_checked_and_conflicts_settled() {
    let c = dual("fd00:10::/56", 64);
    let ok = rec6("a", "10.244.1.0/24", "fd00:10:0:1::/64", 11, 1);
    assert!(check_lease(&c, &underlay(), ok.primary(), &ok).is_ok());
    // A node of the previous release, IPv4 only, in a dual-stack cluster.
    let old = rec("o", "10.244.9.0/24", 19, 9);
    assert!(check_lease(&c, &underlay(), old.primary(), &old).is_ok());
    for (s6, why) in [
        ("fd00:10:0:1::/80", "not a /64"),
        ("fd00:11::/64", "not a /64 of the IPv6 cluster CIDR"),
        ("2001:db8::/64", "not a /64"),
    ] {
        let r = rec6("a", "10.244.1.0/24", s6, 11, 1);
        let e = check_lease(&c, &underlay(), r.primary(), &r).unwrap_err();
        assert!(e.contains(why), "{s6}: {e}");
    }
    // The underlay itself, under a cluster CIDR that (wrongly) covers it.
    let wide = dual("2001:db8::/56", 64);
    let r = rec6("x", "10.244.1.0/24", "2001:db8::/64", 11, 1);
    let e = check_lease(&wide, &underlay(), r.primary(), &r).unwrap_err();
    assert!(
        e.contains("overlaps this node's network 2001:db8::/64"),
        "{e}"
    );
    // An IPv6 subnet where the cluster has no IPv6.
    let e = check_lease(&cfg("10.244.0.0/16", 24), &underlay(), ok.primary(), &ok).unwrap_err();
    assert!(e.contains("without an IPv6 cluster CIDR"), "{e}");
    // A younger record claiming a live node's IPv6 subnet loses, everywhere.
    let view = resolve(
        &c,
        &underlay(),
        &[
            stored("10.244.1.0/24", Ok(ok.clone()), 5),
            stored(
                "10.244.2.0/24",
                Ok(rec6("b", "10.244.2.0/24", "fd00:10:0:1::/64", 12, 2)),
                7,
            ),
            stored(
                "10.244.3.0/24",
                Ok(rec6("c", "10.244.3.0/24", "fd00:10:0:3::/64", 13, 3)),
                8,
            ),
        ],
    );
    let nodes: Vec<&str> = view.accepted.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes, ["a", "c"]);
    assert!(view.refused[0].reason.contains("its IPv6 subnet overlaps"));
}

#[test]
fn the_ipv6_index_names_the_owner_of_an_ipv6_subnet() {
    let c = dual("fd00:10::/56", 64);
    let l = Layout::new("/f");
    let owner = l.lease("10.244.2.0/24".parse().unwrap());
    // An older record claims the IPv6 subnet the index gave to a younger one (the
    // allocator reads only the index): the index wins.
    let mut squatter = stored(
        "10.244.1.0/24",
        Ok(rec6("a", "10.244.1.0/24", "fd00:10:0:2::/64", 11, 1)),
        3,
    );
    squatter.v6_owner = Some(owner.clone());
    let mut real = stored(
        "10.244.2.0/24",
        Ok(rec6("b", "10.244.2.0/24", "fd00:10:0:2::/64", 12, 2)),
        9,
    );
    real.v6_owner = Some(owner.clone());
    let view = resolve(&c, &underlay(), &[squatter.clone(), real]);
    let nodes: Vec<&str> = view.accepted.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes, ["b"]);
    assert_eq!(view.refused[0].key, squatter.key);
    assert!(
        view.refused[0]
            .reason
            .contains(&format!("leased to {owner} (the leases-v6 index")),
        "{:?}",
        view.refused
    );
    // No index key (written by hand): judged among the records as before.
    squatter.v6_owner = None;
    assert_eq!(resolve(&c, &underlay(), &[squatter]).accepted.len(), 1);
}

#[test]
fn picks_free_ipv6_subnets() {
    let v6 = dual("fd00:10::/56", 57).ipv6.unwrap();
    let mut taken = HashSet::new();
    for seed in 0..2 {
        assert!(taken.insert(pick_free(&v6, &taken, seed).unwrap()));
    }
    assert_eq!(pick_free(&v6, &taken, 1), None);
}

fn v6_only(cidr6: &str, len6: u8) -> ClusterConfig {
    ClusterConfig {
        ipv4: None,
        ..dual(cidr6, len6)
    }
}

fn rec_v6(node: &str, s6: &str, ip: &str, mac: u8) -> LeaseRecord {
    LeaseRecord {
        node: node.into(),
        subnet: None,
        public_ip: ip.parse().unwrap(),
        vtep_mac: format!("0e:00:00:00:00:{mac:02x}"),
        subnet_v6: Some(s6.parse().unwrap()),
    }
}

fn stored_v6(key: &str, r: Result<LeaseRecord, String>, rev: i64) -> StoredLease {
    let net: Ipv6Network = key.parse().unwrap();
    StoredLease {
        key: Layout::new("/f").lease_v6(net),
        key_subnet: Some(IpNetwork::V6(net)),
        record: r,
        create_revision: rev,
        v6_owner: None,
    }
}

#[test]
fn an_ipv6_only_config_has_no_ipv4_keys_and_needs_a_family() {
    let c = v6_only("fd00:10::/56", 64);
    assert!(c.validate().is_ok() && c.v6_only());
    let text = serde_json::to_string(&c).unwrap();
    assert_eq!(
        text,
        r#"{"vni":1,"port":4789,"ipv6":{"clusterCIDR":"fd00:10::/56","subnetLen":64}}"#
    );
    assert_eq!(serde_json::from_str::<ClusterConfig>(&text).unwrap(), c);
    // Neither family, or half of the IPv4 one, is no config.
    let none = ClusterConfig {
        ipv6: None,
        ..c.clone()
    };
    assert!(none.validate().unwrap_err().contains("no pod network"));
    for half in [
        r#"{"clusterCIDR":"10.1.0.0/16","vni":1,"port":4789}"#,
        r#"{"subnetLen":24,"vni":1,"port":4789}"#,
    ] {
        assert!(
            serde_json::from_str::<ClusterConfig>(half).is_err(),
            "{half}"
        );
    }
    // From the flags: --cluster-cidr-v6 alone.
    let f = ConfigFlags {
        cluster_cidr_v6: Some("fd00:10::/56".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(ClusterConfig::from_flags(&f), Some(c.clone()));
    let e = c
        .check_flags(&ConfigFlags {
            cluster_cidr: Some("10.1.0.0/16".parse().unwrap()),
            ..f
        })
        .unwrap_err();
    assert!(
        e.contains("--cluster-cidr 10.1.0.0/16 (stored none)"),
        "{e}"
    );
    // The underlay's IPv6 network is as forbidden as in a dual-stack cluster.
    let e = v6_only("2001:db8::/56", 64)
        .check_underlay(&underlay())
        .unwrap_err();
    assert!(
        e.contains("overlaps this node's network 2001:db8::/64"),
        "{e}"
    );
}

#[test]
fn ipv6_only_records_are_keyed_by_their_ipv6_subnet_and_checked() {
    let c = v6_only("fd00:10::/56", 64);
    let ok = rec_v6("a", "fd00:10:0:1::/64", "2001:db8::11", 1);
    assert_eq!(ok.primary(), Some("fd00:10:0:1::/64".parse().unwrap()));
    assert!(check_lease(&c, &underlay(), ok.primary(), &ok).is_ok());
    let text = serde_json::to_string(&ok).unwrap();
    assert_eq!(
        text,
        r#"{"node":"a","publicIp":"2001:db8::11","vtepMac":"0e:00:00:00:00:01","subnetV6":"fd00:10:0:1::/64"}"#
    );
    let mut r = ok.clone();
    for (ip, why) in [
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("::ffff:192.0.2.1", "IPv4-mapped"),
        ("fd00:10:0:9::1", "inside the cluster CIDR fd00:10::/56"),
    ] {
        r.public_ip = ip.parse().unwrap();
        let e = check_lease(&c, &underlay(), r.primary(), &r).unwrap_err();
        assert!(e.contains(why), "{ip}: {e}");
    }
    // An IPv4 subnet in an IPv6-only cluster, a record without a subnet, another key.
    let with_v4 = LeaseRecord {
        subnet: Some("10.244.1.0/24".parse().unwrap()),
        ..ok.clone()
    };
    let e = check_lease(&c, &underlay(), with_v4.primary(), &with_v4).unwrap_err();
    assert!(e.contains("without an IPv4 cluster CIDR"), "{e}");
    let bare = LeaseRecord {
        subnet_v6: None,
        ..ok.clone()
    };
    assert!(check_lease(&c, &underlay(), None, &bare).is_err());
    let e = check_lease(
        &c,
        &underlay(),
        Some("fd00:10:0:2::/64".parse().unwrap()),
        &ok,
    )
    .unwrap_err();
    assert!(e.contains("not the one the key names"), "{e}");
    // A dual-stack cluster wants an IPv4 subnet in every record.
    let e = check_lease(&dual("fd00:10::/56", 64), &underlay(), ok.primary(), &ok).unwrap_err();
    assert!(e.contains("no IPv4 subnet"), "{e}");
    // Conflicts are settled as for IPv4; an unreadable record holds its IPv6 subnet.
    let view = resolve(
        &c,
        &underlay(),
        &[
            stored_v6("fd00:10:0:1::/64", Ok(ok.clone()), 5),
            stored_v6(
                "fd00:10:0:2::/64",
                Ok(rec_v6("a", "fd00:10:0:2::/64", "2001:db8::12", 2)),
                6,
            ),
            stored_v6("fd00:10:0:3::/64", Err("expected value".into()), 7),
        ],
    );
    assert_eq!(view.accepted, vec![ok]);
    assert!(view.refused[0].reason.contains("its node name is"));
    assert_eq!(
        view.unreadable,
        vec!["fd00:10:0:3::/64".parse::<IpNetwork>().unwrap()]
    );
}

#[test]
fn mac_parsing() {
    assert_eq!(
        parse_mac("0a:58:0a:01:02:ff"),
        Some([0x0a, 0x58, 10, 1, 2, 255])
    );
    assert_eq!(parse_mac("0a:58"), None);
    assert_eq!(parse_mac("0a:58:0a:01:02:ff:00"), None);
}

/// One generic check serves both families; the messages must stay those each family had.
#[test]
fn each_family_keeps_its_messages() {
    let v4 = ClusterV4 {
        cluster_cidr: "10.0.0.0/16".parse().unwrap(),
        subnet_len: 31,
    };
    assert_eq!(
        v4.validate().unwrap_err(),
        "node subnet length /31 must be longer than the cluster CIDR's /16 and at most /30"
    );
    let v4 = ClusterV4 {
        cluster_cidr: "127.0.0.0/16".parse().unwrap(),
        subnet_len: 24,
    };
    assert_eq!(
        v4.validate().unwrap_err(),
        "cluster CIDR 127.0.0.0/16 overlaps 127.0.0.0/8: loopback"
    );
    let v6 = ClusterV6 {
        cluster_cidr: "fd00::/48".parse().unwrap(),
        subnet_len: 121,
    };
    assert_eq!(
        v6.validate().unwrap_err(),
        "IPv6 node subnet length /121 must be longer than the cluster CIDR's /48 and at most /120"
    );
    let v6 = ClusterV6 {
        cluster_cidr: "fd00::1/48".parse().unwrap(),
        subnet_len: 64,
    };
    assert_eq!(
        v6.validate().unwrap_err(),
        "IPv6 cluster CIDR fd00::1/48 has host bits set"
    );
}
