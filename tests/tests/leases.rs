//! Subnet leases against a real etcd, through the library `ferry-overlayd` uses.

use std::collections::HashSet;
use std::time::Duration;

use ferry_registry::{Acquired, ClusterConfig, ConfigFlags, EtcdOptions, LeaseError, Registry};
use ferry_tests::cluster::{Etcd, Switch};
use ferry_tests::needs_root;
use ferry_tests::netns::Netns;

fn opts(endpoint: &str) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![endpoint.to_string()],
        cacert: None,
        cert: None,
        key: None,
        timeout: Duration::from_secs(5),
    }
}

fn flags(cidr: &str, len: u8) -> ConfigFlags {
    ConfigFlags {
        cluster_cidr: Some(cidr.parse().unwrap()),
        subnet_len: Some(len),
        ..Default::default()
    }
}

/// An etcd on a switch, and a client host to reach it from.
/// `node` takes a lease of `cfg` from `public_ip` with `mac`, held `grace` when it stops
/// renewing, preferring `prefer` (what its node.json says), as a starting daemon does.
async fn take(
    reg: &mut Registry,
    cfg: &ClusterConfig,
    node: &str,
    public_ip: &str,
    mac: &str,
    grace: Duration,
    prefer: (
        Option<ipnetwork::Ipv4Network>,
        Option<ipnetwork::Ipv6Network>,
    ),
) -> Result<Acquired, LeaseError> {
    let ip = public_ip.parse().unwrap();
    reg.acquire(cfg, node, ip, mac, grace, prefer.0, prefer.1)
        .await
}

fn etcd_and_client() -> (Switch, Etcd, Netns) {
    let switch = Switch::new();
    let etcd = Etcd::start(&switch);
    let client = Netns::new("fyc");
    switch.plug(&client, "192.0.2.3");
    (switch, etcd, client)
}

/// Fifty nodes leasing at once from `client`, each its own daemon's registry.
fn race(
    client: &Netns,
    ep: String,
    flags: ConfigFlags,
) -> Vec<Result<ferry_registry::Acquired, LeaseError>> {
    ferry_tests::inside::block_on(client, move || async move {
        let tasks = (0..50).map(|i| {
            let ep = ep.clone();
            let flags = flags.clone();
            async move {
                let mut reg = Registry::connect(&opts(&ep), "/ferry").await?;
                let cfg = reg.cluster_config(&flags, &[]).await?;
                let mac = format!("0e:00:00:00:00:{i:02x}");
                let ip = format!("192.0.2.{}", 20 + i);
                let hour = Duration::from_secs(3600);
                take(
                    &mut reg,
                    &cfg,
                    &format!("n{i}"),
                    &ip,
                    &mac,
                    hour,
                    (None, None),
                )
                .await
            }
        });
        futures_util::future::join_all(tasks).await
    })
}

/// Fifty nodes leasing at once, then all started again: each gets its own record back (on
/// the lease it has). The first leases.
fn race_twice(client: &Netns, ep: String, flags: ConfigFlags) -> Vec<ferry_registry::Acquired> {
    let first: Vec<_> = race(client, ep.clone(), flags.clone())
        .into_iter()
        .map(|r| r.expect("acquire"))
        .collect();
    let second: Vec<_> = race(client, ep, flags)
        .into_iter()
        .map(|r| r.expect("acquire"))
        .collect();
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.record, b.record);
        assert!(b.reused);
    }
    first
}

#[test]
fn fifty_dual_stack_nodes_never_share_either_subnet() {
    needs_root!();
    let (_switch, etcd, client) = etcd_and_client();
    // The cluster starts IPv4-only: a node leased then gets its IPv6 subnet later, on
    // the lease it has, once the config has IPv6.
    let early = race(&client, etcd.endpoint(), flags("10.72.0.0/16", 24));
    let early = early.into_iter().next().unwrap().expect("acquire");
    assert_eq!(early.record.subnet_v6, None);
    etcd.ctl(
        r#"put /ferry/v1/config '{"clusterCIDR":"10.72.0.0/16","subnetLen":24,"vni":1,"port":4789,"ipv6":{"clusterCIDR":"fd00:72::/56","subnetLen":64}}'"#,
    );
    let dual = ConfigFlags {
        cluster_cidr_v6: Some("fd00:72::/56".parse().unwrap()),
        ..flags("10.72.0.0/16", 24)
    };
    // Started again, every node gets both subnets back.
    let first = race_twice(&client, etcd.endpoint(), dual);
    let v6: HashSet<_> = first.iter().filter_map(|a| a.record.subnet_v6).collect();
    assert_eq!(v6.len(), 50, "two nodes got one IPv6 subnet");
    assert_eq!(first[0].record.subnet, early.record.subnet);
    assert_eq!(first[0].grace_lease, early.grace_lease);
    // One index key per IPv6 subnet, naming its node's lease key.
    let keys = etcd.ctl("get /ferry/v1/leases-v6/ --prefix");
    let lines: Vec<&str> = keys.lines().collect();
    assert_eq!(lines.len(), 100, "{keys}");
    let s6 = first[7].record.subnet_v6.unwrap();
    let at = lines
        .iter()
        .position(|l| *l == format!("/ferry/v1/leases-v6/{}-64", s6.network()))
        .expect("index key");
    let s4 = first[7].record.subnet;
    assert_eq!(
        lines[at + 1],
        format!("/ferry/v1/leases/{}-24", s4.unwrap().network())
    );
    // The IPv6 index goes with the lease: revoking it ends both.
    etcd.ctl(&format!("lease revoke {:x}", first[7].grace_lease));
    let left = etcd.ctl("get /ferry/v1/leases-v6/ --prefix --keys-only");
    assert!(!left.contains(&s6.network().to_string()), "{left}");
}

#[test]
fn fifty_nodes_starting_at_once_never_share_a_subnet() {
    needs_root!();
    let (_switch, etcd, client) = etcd_and_client();
    let ep = etcd.endpoint();
    // Started again, every node gets its own subnet back.
    let first = race_twice(&client, ep, flags("10.70.0.0/16", 24));
    let subnets: HashSet<_> = first.iter().map(|a| a.record.subnet).collect();
    assert_eq!(subnets.len(), 50, "two nodes got one subnet");
    assert!(first.iter().all(|a| !a.reused));
    // Readable with etcdctl, in the documented layout.
    let keys = etcd.ctl("get /ferry/v1/ --prefix --keys-only");
    assert_eq!(
        keys.lines()
            .filter(|l| l.starts_with("/ferry/v1/leases/"))
            .count(),
        50
    );
    assert_eq!(
        keys.lines()
            .filter(|l| l.starts_with("/ferry/v1/nodes/"))
            .count(),
        50
    );
    let cfg = etcd.ctl("get /ferry/v1/config --print-value-only");
    assert_eq!(
        cfg.trim(),
        r#"{"clusterCIDR":"10.70.0.0/16","subnetLen":24,"vni":1,"port":4789}"#
    );
}

#[test]
fn a_full_cluster_cidr_is_a_clear_error() {
    needs_root!();
    let (_switch, etcd, client) = etcd_and_client();
    let ep = etcd.endpoint();
    let err = ferry_tests::inside::block_on(&client, move || async move {
        let mut reg = Registry::connect(&opts(&ep), "/ferry").await.unwrap();
        let cfg = reg
            .cluster_config(&flags("10.71.0.0/28", 30), &[])
            .await
            .unwrap();
        let (mac, minute) = ("0e:00:00:00:00:01", Duration::from_secs(60));
        for i in 0..4 {
            let node = format!("n{i}");
            take(
                &mut reg,
                &cfg,
                &node,
                "192.0.2.20",
                mac,
                minute,
                (None, None),
            )
            .await
            .unwrap();
        }
        take(
            &mut reg,
            &cfg,
            "n4",
            "192.0.2.20",
            mac,
            minute,
            (None, None),
        )
        .await
        .unwrap_err()
    });
    assert!(matches!(err, LeaseError::Exhausted { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "cluster CIDR 10.71.0.0/28 has no free /30 node subnet left (4 subnets, all leased)"
    );
}

/// One node's `acquire` through a fresh registry, as a starting daemon makes it:
/// `prefer`/`prefer_v6` are what its node.json says (None: no node.json).
fn acquire_one(
    client: &Netns,
    ep: &str,
    prefix: &str,
    flags: &ConfigFlags,
    public_ip: &str,
    prefer: (Option<&str>, Option<&str>),
) -> Acquired {
    let (ep, prefix, flags) = (ep.to_string(), prefix.to_string(), flags.clone());
    let public_ip = public_ip.to_string();
    let prefer = (
        prefer.0.map(|p| p.parse().unwrap()),
        prefer.1.map(|p| p.parse().unwrap()),
    );
    ferry_tests::inside::block_on(client, move || async move {
        let mut reg = Registry::connect(&opts(&ep), &prefix).await.unwrap();
        let cfg = reg.cluster_config(&flags, &[]).await.unwrap();
        let hour = Duration::from_secs(3600);
        take(
            &mut reg,
            &cfg,
            "n1",
            &public_ip,
            "0e:00:00:00:00:01",
            hour,
            prefer,
        )
        .await
        .unwrap()
    })
}

#[test]
fn a_node_keeps_its_ipv6_subnet_after_expiry_and_with_a_damaged_record() {
    needs_root!();
    let (_switch, etcd, client) = etcd_and_client();
    let ep = etcd.endpoint();
    let dual = ConfigFlags {
        cluster_cidr_v6: Some("fd00:73::/56".parse().unwrap()),
        ..flags("10.73.0.0/16", 24)
    };
    let v6_only = ConfigFlags {
        cluster_cidr_v6: Some("fd00:74::/56".parse().unwrap()),
        ..Default::default()
    };
    for (prefix, flags, ip) in [
        ("/dual", &dual, "192.0.2.21"),
        ("/v6only", &v6_only, "2001:db8::21"),
    ] {
        let first = acquire_one(&client, &ep, prefix, flags, ip, (None, None)).record;
        let s4 = first.subnet.map(|s| s.to_string());
        let s6 = first.subnet_v6.map(|s| s.to_string());
        assert!(
            s6.is_some() && (s4.is_some() == (prefix == "/dual")),
            "{first:?}"
        );
        // Its lease expired (revoked: what etcd does at the end of the grace period):
        // nothing of it is left in etcd, and the node re-takes both subnets from what its
        // node.json says.
        let held = acquire_one(&client, &ep, prefix, flags, ip, (None, None));
        etcd.ctl(&format!("lease revoke {:x}", held.grace_lease));
        let left = etcd.ctl(&format!("get {prefix}/v1/ --prefix --keys-only"));
        assert!(!left.contains("/leases"), "{left}");
        let again = acquire_one(
            &client,
            &ep,
            prefix,
            flags,
            ip,
            (s4.as_deref(), s6.as_deref()),
        );
        assert!(!again.reused);
        assert_eq!(again.record, first, "{prefix}: subnets moved after expiry");
        // Its record damaged by hand (its index keys still on its lease), and no node.json:
        // the node takes both subnets back, from the node index and the IPv6 one.
        let key = etcd.ctl(&format!("get {prefix}/v1/nodes/n1 --print-value-only"));
        etcd.ctl(&format!("put {} 'garbage'", key.trim()));
        let back = acquire_one(&client, &ep, prefix, flags, ip, (None, None)).record;
        assert_eq!(back, first, "{prefix}: subnets moved with a damaged record");
        let stored = etcd.ctl(&format!("get {} --print-value-only", key.trim()));
        assert!(stored.contains(s6.as_deref().unwrap()), "{stored}");
    }
}

#[test]
fn fifty_ipv6_only_nodes_never_share_a_subnet() {
    needs_root!();
    let (_switch, etcd, client) = etcd_and_client();
    let flags = ConfigFlags {
        cluster_cidr_v6: Some("fd00:75::/56".parse().unwrap()),
        ..Default::default()
    };
    let first = race_twice(&client, etcd.endpoint(), flags);
    let v6: HashSet<_> = first.iter().filter_map(|a| a.record.subnet_v6).collect();
    assert_eq!(v6.len(), 50, "two nodes got one IPv6 subnet");
    assert!(first.iter().all(|a| a.record.subnet.is_none()));
    // The records under leases-v6/, none under leases/; the nodes' index names them.
    let keys = etcd.ctl("get /ferry/v1/ --prefix --keys-only");
    let count = |p: &str| keys.lines().filter(|l| l.starts_with(p)).count();
    assert_eq!(count("/ferry/v1/leases/"), 0, "{keys}");
    assert_eq!(count("/ferry/v1/leases-v6/"), 50, "{keys}");
    let s6 = first[3].record.subnet_v6.unwrap();
    let key = format!("/ferry/v1/leases-v6/{}-64", s6.network());
    assert_eq!(
        etcd.ctl("get /ferry/v1/nodes/n3 --print-value-only").trim(),
        key
    );
    let rec: serde_json::Value =
        serde_json::from_str(&etcd.ctl(&format!("get {key} --print-value-only"))).unwrap();
    assert_eq!(rec["node"], "n3");
    assert_eq!(
        etcd.ctl("get /ferry/v1/config --print-value-only").trim(),
        r#"{"vni":1,"port":4789,"ipv6":{"clusterCIDR":"fd00:75::/56","subnetLen":64}}"#
    );
}
