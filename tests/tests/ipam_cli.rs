//! `ferry-ipam show` and `release` over a store that real ADDs filled.

use std::process::Command;

use ferry_tests::cni::{pod_ip, Node};
use ferry_tests::netns::Netns;
use ferry_tests::{bin, needs_root};
use serde_json::Value;

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("ferry-ipam"))
        .args(args)
        .env_remove("CNI_COMMAND")
        .output()
        .expect("run ferry-ipam");
    ferry_tests::netns::code_out_err(&out)
}

#[test]
fn show_and_release_over_a_real_store() {
    needs_root!();
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
        [
            "IP",
            "POD",
            "CONTAINER",
            "IFNAME",
            "NETWORK",
            "NETNS",
            "SINCE"
        ]
    );
    assert!(
        table.contains(&pod_ip(&ra)) && table.contains("cli-b"),
        "{table}"
    );

    let (rc, json, _) = cli(&["show", "--data-dir", &dir, "-o", "json"]);
    assert_eq!(rc, 0);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_keys(
        &v,
        &[
            "subnet",
            "gateway",
            "capacity",
            "used",
            "free",
            "allocations",
        ],
    );
    assert_eq!(v["used"], 3);
    let first = &v["allocations"][0];
    assert_keys(
        first,
        &["ip", "containerId", "ifname", "network", "netns", "since"],
    );

    // By IP, JSON out (the pods are alive: --force).
    let (rc, out, _) = cli(&[
        "release",
        &pod_ip(&rb),
        "--data-dir",
        &dir,
        "-o",
        "json",
        "--force",
    ]);
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
        "--force",
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

/// `ferry-ipam` run inside `ns` (where the host veths are), with its exit code and output.
/// Each of `wants` in the table the CLI printed.
fn assert_shows(table: &str, wants: &[&str]) {
    for want in wants {
        assert!(table.contains(want), "{want} missing in\n{table}");
    }
}

/// Each of `keys` in the JSON object `v`.
fn assert_keys(v: &Value, keys: &[&str]) {
    for k in keys {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
}

fn cli_in(ns: &Netns, args: &str) -> (i32, String, String) {
    let out = ns.try_sh(&format!("{} {args}", bin("ferry-ipam").display()));
    ferry_tests::netns::code_out_err(&out)
}

#[test]
fn a_lost_del_is_found_by_check_and_fixed_by_release() {
    needs_root!();
    let node = Node::new("10.49.0.0/24");
    let (a, b) = (Netns::new("fyp"), Netns::new("fyp"));
    let ra = node.add("live", &a).ok();
    let lost_pod = Netns::new("fyp");
    let rl = node.add("lost", &lost_pod).ok();
    node.add("b", &b).ok();
    let dir = node.data.path().display().to_string();
    let common = format!("--data-dir {dir} --subnet 10.49.0.0/24");
    let (rc, out, _) = cli_in(&node.host, &format!("check {common}"));
    assert_eq!(rc, 0, "{out}");
    assert_eq!(out.trim(), "no problems found");

    // The runtime removes the pod's namespace and never calls DEL. The kernel destroys a
    // namespace's veths in the background: check looks once they are gone.
    drop(lost_pod);
    assert!(
        ferry_tests::proc::wait_until(std::time::Duration::from_secs(10), || node
            .host_veths()
            .len()
            == 2),
        "the lost pod's host veth outlived its namespace: {:?}",
        node.host_veths()
    );
    let (rc, table, _) = cli_in(&node.host, &format!("check {common}"));
    assert_eq!(rc, 1, "{table}");
    assert!(
        table.starts_with("KIND               DETAIL\nleaked-allocation  "),
        "{table}"
    );
    assert!(table.trim_end().ends_with("1 problem"), "{table}");
    let (rc, json, _) = cli_in(&node.host, &format!("check {common} -o json"));
    assert_eq!(rc, 1);
    let report: Value = serde_json::from_str(&json).unwrap();
    let p = &report["problems"][0];
    assert_eq!(p["kind"], "leaked-allocation");
    assert_eq!(p["ip"], pod_ip(&rl).as_str());
    assert_eq!(p["containerId"], "lost");
    assert_eq!(report["problems"].as_array().unwrap().len(), 1);
    let report_file = node.data.path().join("report.json");
    std::fs::write(&report_file, &json).unwrap();

    // A live pod's address is refused without --force, and then nothing is freed at all.
    let (rc, _, err) = cli_in(
        &node.host,
        &format!("release --data-dir {dir} --container live"),
    );
    assert_eq!(rc, 2);
    assert!(
        err.contains("refusing to free") && err.contains("network namespace"),
        "{err}"
    );
    assert_eq!(node.allocations().len(), 3);

    let (rc, out, err) = cli_in(
        &node.host,
        &format!(
            "release --data-dir {dir} --from-report {}",
            report_file.display()
        ),
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        out.trim(),
        format!("released {} (container lost interface eth0)", pod_ip(&rl))
    );
    let (rc, out, _) = cli_in(&node.host, &format!("check {common}"));
    assert_eq!((rc, out.trim()), (0, "no problems found"));
    // Acting on the same report again frees nothing and says so.
    let (rc, out, _) = cli_in(
        &node.host,
        &format!(
            "release --data-dir {dir} --from-report {}",
            report_file.display()
        ),
    );
    assert_eq!(rc, 0);
    assert!(out.contains("nothing to free"), "{out}");

    // --force frees a live one.
    let (rc, _, err) = cli_in(
        &node.host,
        &format!("release --data-dir {dir} {} --force -o json", pod_ip(&ra)),
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(node.allocations().len(), 1);
    node.del("live", Some(&a)).ok();
    node.del("b", Some(&b)).ok();
}

#[test]
fn leases_and_check_against_a_cluster() {
    needs_root!();
    // The CLI is given etcd's flags and its records are written past it.
    let mut c = ferry_tests::cluster::Cluster::builder()
        .datastore(ferry_tests::cluster::Datastore::Etcd)
        .nodes(2)
        .cluster_cidr("10.73.0.0/16")
        .build();
    let pods: Vec<_> = (0..3)
        .map(|i| c.nodes[0].add_pod(&format!("u{i}")))
        .collect();
    let flags = format!("{} --etcd-prefix {}", c.etcd.client_flags(), c.prefix);
    let host = Netns::new("fyx");
    c.switch.plug(&host, "192.0.2.9");
    // Usage is published on change, within a keepalive period.
    let leases = || {
        let (rc, out, err) = cli_in(&host, &format!("leases {flags} -o json"));
        assert_eq!(rc, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let ok = ferry_tests::proc::wait_until(std::time::Duration::from_secs(15), || {
        leases()["leases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["node"] == "node0" && l["used"] == 3)
    });
    assert!(ok, "{}", leases());
    let n0 = &c.nodes[0];
    let v = leases();
    assert_eq!(v["clusterCIDR"], "10.73.0.0/16");
    assert_eq!(v["leased"], 2);
    assert_eq!(v["subnets"], 256);
    for l in v["leases"].as_array().unwrap() {
        assert_keys(l, &["node", "subnet", "publicIp", "vtepMac", "alive"]);
        assert_eq!(l["alive"], true);
        assert_eq!(l["capacity"], 253);
        // RFC 3339, in UTC.
        let at = l["usedAt"].as_str().unwrap_or_default();
        assert!(at.len() == 20 && at.ends_with('Z'), "{l}");
    }
    let (rc, table, _) = cli_in(&n0.host, &format!("leases {flags}"));
    assert_eq!(rc, 0);
    assert!(
        table.starts_with(
            "cluster 10.73.0.0/16: 2 of 256 /24 node subnets leased (0.8%)\n\nNODE   SUBNET"
        ),
        "{table}"
    );
    println!("{table}");
    // The figure with its age: published when it changed, seconds ago.
    let used = table
        .lines()
        .find(|l| l.starts_with("node0"))
        .and_then(|l| l.split("3/253 (1%, ").nth(1))
        .unwrap_or_default();
    assert!(
        used.ends_with("s ago)") && used.trim_end_matches("s ago)").parse::<u64>().is_ok(),
        "{table}"
    );

    // A node stopped on purpose is not alive, its subnet kept; check says so.
    assert_eq!(c.nodes[1].stop_daemon(), Some(0));
    let n0 = &c.nodes[0];
    let v = leases();
    let node1 = v["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["node"] == "node1")
        .unwrap()
        .clone();
    assert_eq!(node1["alive"], false);
    assert!(node1["expiresIn"].as_i64().unwrap() > 3600, "{node1}");
    let dir = n0.dir.path().join("ipam");
    let local = format!(
        "--data-dir {} --state-dir {}",
        dir.display(),
        n0.state_dir().display()
    );
    let (rc, json, err) = cli_in(&n0.host, &format!("check {local} {flags} -o json"));
    assert_eq!(rc, 1, "{err}");
    let kinds: Vec<String> = serde_json::from_str::<Value>(&json).unwrap()["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["node-not-alive"], "{json}");

    // Leases written by hand: overlapping, outside the cluster, never expiring.
    c.etcd.ctl(&format!(
        "put {}/v1/leases/10.73.0.0-20 '{{\"node\":\"rogue\",\"subnet\":\"10.73.0.0/20\",\"publicIp\":\"192.0.2.99\",\"vtepMac\":\"0e:00:00:00:00:99\"}}'",
        c.prefix
    ));
    c.etcd
        .ctl(&format!("put {}/v1/leases/garbage not-json", c.prefix));
    let n0 = &c.nodes[0];
    let (rc, table, _) = cli_in(&n0.host, &format!("check {local} {flags}"));
    assert_eq!(rc, 1);
    assert_shows(
        &table,
        &[
            "lease-unreadable",
            "lease-outside-cluster",
            "node-not-alive",
        ],
    );
    assert!(table.contains("never expires"), "{table}");
    // node.json disagreeing with the node's lease.
    let fake = tempfile::tempdir().unwrap();
    let mut st: Value =
        serde_json::from_slice(&std::fs::read(n0.state_dir().join("node.json")).unwrap()).unwrap();
    st["podCIDR"] = "10.73.250.0/24".into();
    std::fs::write(fake.path().join("node.json"), st.to_string()).unwrap();
    let (_, table, _) = cli_in(
        &n0.host,
        &format!(
            "check --data-dir {} --state-dir {} {flags}",
            dir.display(),
            fake.path().display()
        ),
    );
    assert!(table.contains("node-state-mismatch"), "{table}");

    // A cluster config made invalid by hand: an error naming the key, never a panic.
    c.etcd.ctl(&format!(
        "put {}/v1/config '{{\"clusterCIDR\":\"10.73.0.0/16\",\"subnetLen\":8,\"vni\":1,\"port\":4789}}'",
        c.prefix
    ));
    let n0 = &c.nodes[0];
    let (rc, _, err) = cli_in(&n0.host, &format!("leases {flags}"));
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("/v1/config is invalid") && !err.contains("panicked"),
        "{err}"
    );

    // etcd unreachable: named, within 10 s, exit 2.
    let t = std::time::Instant::now();
    let (rc, _, err) = cli_in(&n0.host, "leases --etcd-endpoints http://192.0.2.99:2379");
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("http://192.0.2.99:2379") && err.contains("unreachable"),
        "{err}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(12),
        "{:?}",
        t.elapsed()
    );
    for (i, p) in pods.iter().enumerate() {
        n0.cni("DEL", &format!("u{i}"), Some(&p.ns)).ok();
    }
}

#[test]
fn completions_are_printed() {
    let (rc, out, _) = {
        let o = Command::new(bin("ferry-ipam"))
            .args(["completions", "bash"])
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            (),
        )
    };
    assert_eq!(rc, 0);
    assert!(out.contains("ferry-ipam") && out.contains("leases") && out.contains("--from-report"));
}

#[test]
fn show_check_and_release_handle_both_families() {
    needs_root!();
    let node = Node::with(|d| {
        ferry_tests::cni::ferry_conf(
            "1.1.0",
            d,
            serde_json::json!({"ranges": [[{"subnet": "10.47.0.0/24"}], [{"subnet": "fd00:47::/64"}]]}),
            serde_json::json!({}),
        )
    });
    let live = Netns::new("fyp");
    let lost = Netns::new("fyp");
    node.add("live", &live).ok();
    node.add("lost", &lost).ok();
    let dir = node.data.path().display().to_string();

    let (rc, table, _) = cli_in(&node.host, &format!("show --data-dir {dir}"));
    assert_eq!(rc, 0);
    assert_shows(
        &table,
        &[
            "subnet 10.47.0.0/24  gateway 10.47.0.1",
            "capacity 253  used 2",
            "subnet fd00:47::/64  gateway fd00:47::1",
            "capacity ~2^64  used 2",
            "fd00:47::2",
            "fd00:47::3",
            "10.47.0.3",
        ],
    );
    let (_, json, _) = cli_in(&node.host, &format!("show --data-dir {dir} -o json"));
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["pools"].as_array().unwrap().len(), 2);
    assert_eq!(v["pools"][1]["capacity"], u64::MAX - 1); // 2^64 - 1 but the gateway

    // A lost DEL leaks one address per family; check finds both.
    drop(lost);
    // The kernel removes the namespace's veth (and so its host end) in the background.
    let mut json = String::new();
    let found = ferry_tests::proc::wait_until(std::time::Duration::from_secs(5), || {
        let (rc, out, _) = cli_in(&node.host, &format!("check --data-dir {dir} -o json"));
        json = out;
        rc == 1
    });
    assert!(found, "{json}");
    let report: Value = serde_json::from_str(&json).unwrap();
    let mut leaked: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "leaked-allocation")
        .map(|p| p["ip"].as_str().unwrap())
        .collect();
    leaked.sort();
    assert_eq!(leaked, ["10.47.0.3", "fd00:47::3"]);

    // Release by IPv6 address frees that one only.
    let (rc, out, err) = cli_in(&node.host, &format!("release --data-dir {dir} fd00:47::3"));
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        out.trim(),
        "released fd00:47::3 (container lost interface eth0)"
    );
    let left: Vec<Value> = node.allocations();
    assert_eq!(left.len(), 3);
    assert!(left.iter().any(|a| a["ip"] == "10.47.0.3"));
    let (rc, _, err) = cli_in(&node.host, &format!("release --data-dir {dir} fd00:47::2"));
    assert_eq!(rc, 2, "a live pod's IPv6 address was freed");
    assert!(err.contains("refusing to free"), "{err}");
    node.del("live", Some(&live)).ok();
}

#[test]
fn explain_without_a_daemon_names_the_socket_and_the_flag_that_moves_it() {
    // No root: a daemon's policy socket is a unix socket in its state directory, and a
    // stand-in answering on one is all `explain` can tell from a daemon.
    let daemons = tempfile::tempdir().expect("tempdir");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let (dir, wrong) = (
        daemons.path().to_str().unwrap(),
        elsewhere.path().to_str().unwrap(),
    );
    let ask = |state_dir: &str| {
        cli(&[
            "explain",
            "x/a",
            "y/b",
            "--port",
            "80",
            "--state-dir",
            state_dir,
        ])
    };
    let (rc, out, err) = ask(wrong);
    assert_eq!(rc, 2, "{out}{err}");
    let tried = format!("{wrong}/policy.sock");
    for needed in [
        tried.as_str(),
        "--state-dir",
        "/run/ferry",
        "--network-policy",
    ] {
        assert!(err.contains(needed), "{needed:?} not in: {err}");
    }

    // Pointed at the daemon's own state directory, as the message says, it is answered.
    let listener = std::os::unix::net::UnixListener::bind(daemons.path().join("policy.sock"))
        .expect("bind the stand-in's policy socket");
    let daemon = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let (mut conn, _) = listener.accept().expect("accept");
        let mut line = String::new();
        std::io::BufReader::new(&conn)
            .read_line(&mut line)
            .expect("read the request");
        let reply = serde_json::json!({"ok": true, "text": "allowed (stand-in)",
                                       "detail": {"allowed": true}});
        writeln!(conn, "{reply}").expect("answer");
        line
    });
    let (rc, out, err) = ask(dir);
    assert_eq!(rc, 0, "{out}{err}");
    assert!(out.contains("allowed (stand-in)"), "{out}");
    let asked: Value = serde_json::from_str(&daemon.join().unwrap()).expect("a JSON request");
    assert_eq!(
        (
            asked["op"].as_str(),
            asked["from"].as_str(),
            asked["port"].as_u64()
        ),
        (Some("explain"), Some("x/a"), Some(80))
    );
}
