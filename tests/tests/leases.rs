//! Subnet leases against a real etcd, through the library `ferry-overlayd` uses.

use std::collections::HashSet;
use std::time::Duration;

use ferry_tests::cluster::{Etcd, Switch};
use ferry_tests::netns::Netns;
use ferry_tests::root_or_skip;
use registry::{ConfigFlags, EtcdOptions, LeaseError, Registry};

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
fn etcd_and_client() -> (Switch, Etcd, Netns) {
    let switch = Switch::new();
    let etcd = Etcd::start(&switch);
    let client = Netns::new("fyc");
    switch.plug(&client, "192.0.2.3");
    (switch, etcd, client)
}

#[test]
fn fifty_nodes_starting_at_once_never_share_a_subnet() {
    if !root_or_skip("fifty_nodes_starting_at_once_never_share_a_subnet") {
        return;
    }
    let (_switch, etcd, client) = etcd_and_client();
    let ep = etcd.endpoint();
    let run = |ep: String| {
        ferry_tests::inside::block_on(&client, move || async move {
            let tasks = (0..50).map(|i| {
                let ep = ep.clone();
                async move {
                    let mut reg = Registry::connect(&opts(&ep), "/ferry").await?;
                    let cfg = reg.cluster_config(&flags("10.70.0.0/16", 24), &[]).await?;
                    let mac = format!("0e:00:00:00:00:{i:02x}");
                    reg.acquire(
                        &cfg,
                        &format!("n{i}"),
                        format!("192.0.2.{}", 20 + i).parse().unwrap(),
                        &mac,
                        Duration::from_secs(3600),
                        None,
                    )
                    .await
                }
            });
            futures_util::future::join_all(tasks).await
        })
    };
    let first: Vec<_> = run(ep.clone())
        .into_iter()
        .map(|r| r.expect("acquire"))
        .collect();
    let subnets: HashSet<_> = first.iter().map(|a| a.record.subnet).collect();
    assert_eq!(subnets.len(), 50, "two nodes got one subnet");
    assert!(first.iter().all(|a| !a.reused));
    // Started again, every node gets its own subnet back.
    let second: Vec<_> = run(ep).into_iter().map(|r| r.expect("acquire")).collect();
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.record.subnet, b.record.subnet);
        assert!(b.reused);
    }
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
    if !root_or_skip("a_full_cluster_cidr_is_a_clear_error") {
        return;
    }
    let (_switch, etcd, client) = etcd_and_client();
    let ep = etcd.endpoint();
    let err = ferry_tests::inside::block_on(&client, move || async move {
        let mut reg = Registry::connect(&opts(&ep), "/ferry").await.unwrap();
        let cfg = reg
            .cluster_config(&flags("10.71.0.0/28", 30), &[])
            .await
            .unwrap();
        for i in 0..4 {
            reg.acquire(
                &cfg,
                &format!("n{i}"),
                "192.0.2.20".parse().unwrap(),
                "0e:00:00:00:00:01",
                Duration::from_secs(60),
                None,
            )
            .await
            .unwrap();
        }
        reg.acquire(
            &cfg,
            "n4",
            "192.0.2.20".parse().unwrap(),
            "0e:00:00:00:00:01",
            Duration::from_secs(60),
            None,
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
