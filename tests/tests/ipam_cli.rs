//! `ferry-ipam show` and `release` over a store that real ADDs filled.

use std::process::Command;

use ferry_tests::cni::{pod_ip, Node};
use ferry_tests::netns::Netns;
use ferry_tests::{bin, root_or_skip};
use serde_json::Value;

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("ferry-ipam"))
        .args(args)
        .env_remove("CNI_COMMAND")
        .output()
        .expect("run ferry-ipam");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn show_and_release_over_a_real_store() {
    if !root_or_skip("show_and_release_over_a_real_store") {
        return;
    }
    let node = Node::new("10.48.0.0/24");
    let (a, b, c) = (Netns::new("fyp"), Netns::new("fyp"), Netns::new("fyp"));
    let ra = node.add("cli-a", &a).ok();
    let rb = node.add("cli-b", &b).ok();
    node.add("cli-c", &c).ok();
    let dir = node.data.path().to_str().unwrap().to_string();

    let (rc, table, _) = cli(&["show", "--data-dir", &dir]);
    assert_eq!(rc, 0);
    assert!(
        table.starts_with("subnet 10.48.0.0/24  gateway 10.48.0.1\n"),
        "{table}"
    );
    assert!(
        table.contains("capacity 253  used 3 (1.2%)  free 250 (98.8%)"),
        "{table}"
    );
    let header = table
        .lines()
        .find(|l| l.starts_with("IP "))
        .expect("header");
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["IP", "CONTAINER", "IFNAME", "NETWORK", "NETNS", "SINCE"]
    );
    assert!(
        table.contains(&pod_ip(&ra)) && table.contains("cli-b"),
        "{table}"
    );

    let (rc, json, _) = cli(&["show", "--data-dir", &dir, "-o", "json"]);
    assert_eq!(rc, 0);
    let v: Value = serde_json::from_str(&json).unwrap();
    for k in [
        "subnet",
        "gateway",
        "capacity",
        "used",
        "free",
        "allocations",
    ] {
        assert!(v.get(k).is_some(), "{k} missing: {v}");
    }
    assert_eq!(v["used"], 3);
    let first = &v["allocations"][0];
    for k in ["ip", "containerId", "ifname", "network", "netns", "since"] {
        assert!(first.get(k).is_some(), "{k} missing: {first}");
    }

    // By IP, JSON out.
    let (rc, out, _) = cli(&["release", &pod_ip(&rb), "--data-dir", &dir, "-o", "json"]);
    assert_eq!(rc, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["released"][0]["containerId"], "cli-b");
    // By container and ifname, table out.
    let (rc, out, _) = cli(&[
        "release",
        "--container",
        "cli-c",
        "--ifname",
        "eth0",
        "--data-dir",
        &dir,
    ]);
    assert_eq!(rc, 0);
    assert!(out.starts_with("released 10.48.0."), "{out}");
    assert_eq!(node.allocations().len(), 1);

    // Errors an operator can act on, each exit 2 with the problem named.
    let (rc, _, err) = cli(&["release", &pod_ip(&rb), "--data-dir", &dir]);
    assert_eq!(rc, 2);
    assert!(err.contains("no allocation for address"), "{err}");
    let (rc, _, err) = cli(&["show", "--data-dir", "/nonexistent/ferry"]);
    assert_eq!(rc, 2);
    assert!(err.contains("/nonexistent/ferry does not exist"), "{err}");
    let (rc, _, err) = cli(&["release", "10.48.0.999", "--data-dir", &dir]);
    assert_eq!(rc, 2);
    assert!(err.contains("invalid value '10.48.0.999'"), "{err}");
    let (rc, _, err) = cli(&["show", "--data-dir", &dir, "--subnet", "10.48.0.0/40"]);
    assert_eq!(rc, 2);
    assert!(err.contains("10.48.0.0/40"), "{err}");
    assert!(!err.contains("panicked"));

    node.del("cli-a", Some(&a)).ok();
    node.del("cli-b", Some(&b)).ok();
    node.del("cli-c", Some(&c)).ok();
}
