//! Black-box tests of the `ferry` plugin on one node: each test makes its own host and pod
//! namespaces and runs the built binary exactly as a runtime does.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ferry_tests::cni::{cni_path, ferry_conf, host_veth, pod_ip, Call, Node};
use ferry_tests::netns::Netns;
use ferry_tests::{bin, needs_root};
use serde_json::{json, Value};

fn pod() -> Netns {
    Netns::new("fyp")
}

#[test]
fn version_lists_every_supported_version() {
    needs_root!();
    let host = Netns::new("fyh");
    for stdin in ["", r#"{"cniVersion":"0.4.0"}"#] {
        let r = Call {
            host: &host,
            plugin: bin("ferry"),
            command: "VERSION",
            container_id: "",
            netns: None,
            ifname: "",
            cni_path: cni_path(),
        }
        .run(stdin)
        .ok();
        let v: Vec<&str> = r["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(v, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    }
}

#[test]
fn result_shape_in_every_version() {
    needs_root!();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let node = Node::ferry(version, json!({"subnet": "10.31.0.0/24"}), json!({}));
        let p = pod();
        let r = node.add("shape", &p).ok();
        assert_eq!(r["cniVersion"], version);
        let ifs = r["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 3, "{r}");
        assert_eq!(ifs[0]["name"], "ferry0");
        assert_eq!(ifs[2]["name"], "eth0");
        assert_eq!(ifs[2]["sandbox"], p.path().display().to_string());
        for i in ifs {
            let mac = i["mac"].as_str().unwrap();
            assert_eq!(mac.len(), 17, "{mac}");
            assert_eq!(mac, mac.to_lowercase());
        }
        let ip = &r["ips"][0];
        assert_eq!(ip["address"], "10.31.0.2/24");
        assert_eq!(ip["gateway"], "10.31.0.1");
        assert_eq!(ip["interface"], 2);
        assert_eq!(
            ip.get("version").is_some(),
            version < "1.0.0",
            "{version}: {ip}"
        );
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        // The pod's real MAC is the one reported.
        let live = p.sh("cat /sys/class/net/eth0/address");
        assert_eq!(live.trim(), ifs[2]["mac"].as_str().unwrap());
        node.del("shape", Some(&p)).ok();
    }
}

#[test]
fn kernel_state_after_add() {
    needs_root!();
    let node = Node::ferry(
        "1.0.0",
        json!({"subnet": "10.32.0.0/24"}),
        json!({"mtu": 1400}),
    );
    let p = pod();
    let r = node.add("k1", &p).ok();
    let veth = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    // Host: bridge up with gateway/prefix, veth on it, up, hairpin on, forwarding on.
    let br = node.host.sh("ip -o -4 addr show dev ferry0");
    assert!(br.contains("10.32.0.1/24"), "{br}");
    assert!(node.host.sh("ip -o link show dev ferry0").contains(",UP"));
    let v = node.host.sh(&format!("ip -d link show dev {veth}"));
    assert!(
        v.contains("master ferry0") && v.contains("hairpin on"),
        "{v}"
    );
    assert!(v.contains("mtu 1400"), "{v}");
    assert!(v.contains("alias ferry/ferrytest/k1/eth0"), "{v}");
    assert_eq!(
        node.host.sh("cat /proc/sys/net/ipv4/ip_forward").trim(),
        "1"
    );
    // Pod: address, MTU, default route via the gateway, lo up.
    let a = p.sh("ip -o -4 addr show dev eth0");
    assert!(a.contains("10.32.0.2/24"), "{a}");
    assert!(p.sh("ip -o link show dev eth0").contains("mtu 1400"));
    let routes = p.sh("ip route");
    assert!(
        routes.contains("default via 10.32.0.1 dev eth0"),
        "{routes}"
    );
    assert!(p.sh("ip -o link show dev lo").contains("UP"));
    // Exactly: lo, the bridge and the one veth on the host.
    let mut links = node.host.links();
    links.sort();
    let mut want = vec!["ferry0".to_string(), "lo".to_string(), veth.clone()];
    want.sort();
    assert_eq!(links, want);
    node.del("k1", Some(&p)).ok();
    // The pod is off the network at once (its host end retired into the reaper's group,
    // or already deleted); the kernel's unregistration follows. The reaper may delete it
    // between two reads, so the group is read first: a veth not in it then was already
    // gone, and stays gone.
    assert!(
        ferry_tests::cni::tombstones(&node.host).contains(&veth) || !node.host.has_link(&veth),
        "{:?}",
        node.host.links()
    );
    assert!(
        node.reaped(Some(&p)),
        "veth not removed: {:?}",
        node.host.links()
    );
}

#[test]
fn pods_reach_the_gateway_and_each_other() {
    needs_root!();
    let node = Node::new("10.33.0.0/24");
    let (a, b) = (pod(), pod());
    let ra = node.add("pa", &a).ok();
    let rb = node.add("pb", &b).ok();
    a.sh("ping -c1 -W2 10.33.0.1");
    a.sh(&format!("ping -c1 -W2 {}", pod_ip(&rb)));
    b.sh(&format!("ping -c1 -W2 {}", pod_ip(&ra)));
    // The receiver sees the sender's own address.
    let _srv = ferry_tests::proc::echo_peer_server(&b, 7001);
    let seen = ferry_tests::proc::connect(&a, &pod_ip(&rb), 7001);
    assert_eq!(seen.as_deref(), Some(pod_ip(&ra).as_str()));
    // localhost inside a pod.
    let _lo = ferry_tests::proc::echo_peer_server(&a, 7002);
    assert_eq!(
        ferry_tests::proc::connect(&a, "127.0.0.1", 7002).as_deref(),
        Some("127.0.0.1")
    );
    node.del("pa", Some(&a)).ok();
    node.del("pb", Some(&b)).ok();
}

#[test]
fn del_is_idempotent_and_needs_no_netns() {
    needs_root!();
    let node = Node::new("10.34.0.0/24");
    // Never added.
    node.del("never", None).ok();
    node.del("never", Some(&pod())).ok();
    // Twice.
    let p = pod();
    node.add("twice", &p).ok();
    node.del("twice", Some(&p)).ok();
    node.del("twice", Some(&p)).ok();
    // With CNI_NETNS empty: the address and the host veth still go.
    let p2 = pod();
    node.add("nonetns", &p2).ok();
    node.del("nonetns", None).ok();
    assert!(node.reaped(Some(&p2)));
    // After the netns is gone.
    let p3 = pod();
    let path = p3.path();
    node.add("gone", &p3).ok();
    drop(p3);
    node.call("DEL", "gone", None).run(&node.conf).ok();
    let mut c = node.call("DEL", "gone", None);
    c.netns = Some(path);
    c.run(&node.conf).ok();
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(
        node.reaped(None),
        "tombstones left: {:?}",
        node.host.links()
    );
}

#[test]
fn an_add_takes_its_name_back_from_an_unreaped_veth() {
    needs_root!();
    let node = Node::new("10.48.0.0/24");
    // A reaper that hangs: root's, it listens on the reaper's name (an abstract socket of
    // the host's namespace), so DEL trusts and wakes it, and it never deletes anything.
    let stuck =
        ferry_tests::cni::hold_reaper_name(&node.host, ferry_tests::cni::NameHold::Listening, 0, 0);
    let a = pod();
    let r = node.add("again", &a).ok();
    let live = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    node.del("again", Some(&a)).ok();
    let group = ferry_tests::cni::TOMBSTONE_GROUP;
    assert_eq!(node.host.links_in_group(group), std::slice::from_ref(&live));
    // The same container and interface again, at once: the name is taken back from
    // the retired veth, which stays in the reaper's group under a tombstone name.
    let a2 = pod();
    let r2 = node.add("again", &a2).ok();
    assert_eq!(r2["interfaces"][1]["name"].as_str(), Some(live.as_str()));
    let waiting = node.host.links_in_group(group);
    assert!(
        waiting.len() == 1 && waiting[0].starts_with("fz"),
        "{waiting:?}"
    );
    // With the hung reaper gone, the next DEL starts one that deletes both.
    drop(stuck);
    node.del("again", Some(&a2)).ok();
    assert!(
        node.reaped(Some(&a2)),
        "left: {:?}",
        ferry_tests::cni::tombstones(&node.host)
    );
}

#[test]
fn del_detaches_at_once_and_gc_sweeps_tombstones() {
    needs_root!();
    let node = Node::new("10.47.0.0/24");
    let (a, b) = (pod(), pod());
    let ra = node.add("da", &a).ok();
    node.add("db", &b).ok();
    b.sh(&format!("ping -c1 -W2 {}", pod_ip(&ra)));
    node.del("da", Some(&a)).ok();
    // Right after DEL the pod is unreachable, even if its veth still exists.
    assert!(!b
        .try_sh(&format!("ping -c1 -W1 {}", pod_ip(&ra)))
        .status
        .success());
    assert!(node.reaped(Some(&a)));
    // The same attachment can be added again at once.
    let a2 = pod();
    node.add("da", &a2).ok();
    node.del("da", Some(&a2)).ok();
    // A tombstone left by a reaper that died is swept by GC.
    let rb = node.add("dc", &a).ok();
    let live = rb["interfaces"][1]["name"].as_str().unwrap().to_string();
    node.host.sh(&format!(
        "ip link set {live} down nomaster name fz0000000000001"
    ));
    let mut c: Value = serde_json::from_str(&node.conf).unwrap();
    c["cni.dev/valid-attachments"] =
        json!([{"containerID": "db", "ifname": "eth0"}, {"containerID": "dc", "ifname": "eth0"}]);
    node.call("GC", "", None).run(&c.to_string()).ok();
    assert!(!node.host.has_link("fz0000000000001"));
    assert!(b.has_link("eth0"));
    node.del("db", Some(&b)).ok();
    node.del("dc", Some(&a)).ok();
}

#[test]
fn failed_add_leaves_nothing() {
    needs_root!();
    // The pod already has an eth0: refused before any change to the host.
    let node = Node::new("10.35.0.0/24");
    let p = pod();
    p.sh("ip link add eth0 type bridge");
    let r = node.add("dup-if", &p);
    r.err_code();
    assert!(r.msg().contains("eth0 already exists"), "{r:?}");
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
    assert!(p.has_link("eth0"), "the pod's own eth0 must be left alone");

    // A route that cannot be installed fails after the veth exists: both are undone.
    let node = Node::ferry(
        "1.0.0",
        json!({"subnet": "10.35.1.0/24", "routes": [{"dst": "10.200.0.0/16", "gw": "192.0.2.77"}]}),
        json!({}),
    );
    let p = pod();
    let r = node.add("bad-route", &p);
    assert_eq!(r.err_code(), 103, "{r:?}");
    assert!(r.msg().contains("10.200.0.0/16"), "{r:?}");
    node.assert_nothing_made(&p, "bad route");
}

#[test]
fn every_error_code_of_the_contract() {
    needs_root!();
    let node = Node::new("10.36.0.0/24");
    let p = pod();
    let run_env = |cmd: &str, cid: &str, netns: Option<&Netns>, ifname: &str, conf: &str| {
        Call {
            host: &node.host,
            plugin: bin("ferry"),
            command: cmd,
            container_id: cid,
            netns: netns.map(Netns::path),
            ifname,
            cni_path: cni_path(),
        }
        .run(conf)
    };
    let conf = node.conf.clone();
    let with = |v: Value| {
        let mut c: Value = serde_json::from_str(&conf).unwrap();
        ferry_tests::cni::merge(&mut c, v);
        c.to_string()
    };
    // 4: missing or invalid CNI_* variables.
    let r = run_env("ADD", "", Some(&p), "eth0", &conf);
    assert_eq!(r.err_code(), 4);
    assert!(r.msg().contains("CNI_CONTAINERID"));
    assert_eq!(run_env("ADD", "c", None, "eth0", &conf).err_code(), 4);
    assert_eq!(run_env("ADD", "c", Some(&p), "", &conf).err_code(), 4);
    assert_eq!(
        run_env("ADD", "bad/id", Some(&p), "eth0", &conf).err_code(),
        4
    );
    assert_eq!(
        run_env("ADD", "c", Some(&p), "a-too-long-ifname", &conf).err_code(),
        4
    );
    assert_eq!(run_env("FROB", "c", Some(&p), "eth0", &conf).err_code(), 4);
    let mut missing = node.call("ADD", "c", None);
    missing.netns = Some("/run/netns/does-not-exist".into());
    assert_eq!(missing.run(&conf).err_code(), 4);
    // 6: not JSON, or a field of the wrong type.
    assert_eq!(run_env("ADD", "c", Some(&p), "eth0", "{nope").err_code(), 6);
    assert_eq!(
        run_env("ADD", "c", Some(&p), "eth0", &with(json!({"mtu": "big"}))).err_code(),
        6
    );
    let r = run_env(
        "ADD",
        "c",
        Some(&p),
        "eth0",
        &with(json!({"hairpinMode": 1})),
    );
    assert_eq!(r.err_code(), 6);
    assert!(r.msg().contains("hairpinMode"), "{r:?}");
    // 7: invalid configuration.
    let bad_cidr = with(json!({"ipam": {"type": "ferry-ipam", "subnet": "10.36.0.0/40"}}));
    assert_eq!(
        run_env("ADD", "c", Some(&p), "eth0", &bad_cidr).err_code(),
        7
    );
    let host_bits = with(json!({"ipam": {"type": "ferry-ipam", "subnet": "10.36.0.9/24"}}));
    assert_eq!(
        run_env("ADD", "c", Some(&p), "eth0", &host_bits).err_code(),
        7
    );
    assert_eq!(
        run_env("ADD", "c", Some(&p), "eth0", &with(json!({"name": null}))).err_code(),
        7
    );
    assert_eq!(
        run_env(
            "ADD",
            "c",
            Some(&p),
            "eth0",
            &with(json!({"bridge": "way-too-long-name"}))
        )
        .err_code(),
        7
    );
    // 1: unsupported version.
    let r = run_env(
        "ADD",
        "c",
        Some(&p),
        "eth0",
        &with(json!({"cniVersion": "0.2.0"})),
    );
    assert_eq!(r.err_code(), 1);
    // 11: no static subnet and no node state yet.
    let state = tempfile::tempdir().unwrap();
    let no_state = with(json!({
        "stateDir": state.path(),
        "ipam": {"type": "ferry-ipam", "dataDir": node.data.path()}
    }));
    let r = run_env("ADD", "c", Some(&p), "eth0", &no_state);
    assert_eq!(r.err_code(), 11);
    assert!(r.msg().contains("ferry-overlayd"), "{r:?}");
    // 101: the attachment already holds an address.
    node.add("dup", &p).ok();
    let r = node.add("dup", &p);
    assert_eq!(r.err_code(), 101);
    // None of the failures changed anything.
    assert_eq!(node.allocations().len(), 1);
    assert_eq!(node.host_veths().len(), 1);
    node.del("dup", Some(&p)).ok();
}

#[test]
fn pool_exhaustion_is_code_100_and_round_robin() {
    needs_root!();
    let node = Node::new("10.37.0.0/29");
    let pods: Vec<Netns> = (0..6).map(|_| pod()).collect();
    let mut ips = Vec::new();
    for (i, p) in pods.iter().take(5).enumerate() {
        ips.push(pod_ip(&node.add(&format!("x{i}"), p).ok()));
    }
    assert_eq!(
        ips,
        [
            "10.37.0.2",
            "10.37.0.3",
            "10.37.0.4",
            "10.37.0.5",
            "10.37.0.6"
        ]
    );
    let r = node.add("x5", &pods[5]);
    assert_eq!(r.err_code(), 100);
    assert!(!pods[5].has_link("eth0"));
    // STATUS says the node cannot take a pod now.
    assert_eq!(node.call("STATUS", "", None).run(&node.conf).err_code(), 50);
    // A freed address is handed out again only when the pool has come round.
    node.del("x1", Some(&pods[1])).ok();
    assert_eq!(pod_ip(&node.add("x5", &pods[5]).ok()), "10.37.0.3");
    for i in [0, 2, 3, 4, 5] {
        node.del(&format!("x{i}"), Some(&pods[i])).ok();
    }
}

#[test]
fn status_reports_readiness() {
    needs_root!();
    let node = Node::new("10.38.0.0/24");
    node.call("STATUS", "", None).run(&node.conf).ok();
    let state = tempfile::tempdir().unwrap();
    let conf = ferry_conf(
        "1.1.0",
        node.data.path(),
        json!({"subnet": null}),
        json!({"stateDir": state.path()}),
    );
    let r = node.call("STATUS", "", None).run(&conf);
    assert_eq!(r.err_code(), 50);
    assert!(r.msg().contains("node.json"), "{r:?}");
    // Once ferry-overlayd has written the node state, the node is ready and ADD uses it.
    std::fs::write(
        state.path().join("node.json"),
        r#"{"nodeName":"n1","podCIDR":"10.38.5.0/24","clusterCIDR":"10.38.0.0/16","gateway":"10.38.5.1","mtu":1450}"#,
    )
    .unwrap();
    node.call("STATUS", "", None).run(&conf).ok();
    let p = pod();
    let r = node.call("ADD", "ns1", Some(&p)).run(&conf).ok();
    assert_eq!(r["ips"][0]["address"], "10.38.5.2/24");
    assert_eq!(r["interfaces"][2]["mtu"], 1450);
    assert!(p.sh("ip -o link show dev eth0").contains("mtu 1450"));
    node.call("DEL", "ns1", Some(&p)).run(&conf).ok();
}

#[test]
fn gc_frees_what_is_not_valid() {
    needs_root!();
    let node = Node::new("10.39.0.0/24");
    let pods = node.add_pods("fyp", "g", 3);
    let mut c: Value = serde_json::from_str(&node.conf).unwrap();
    c["cni.dev/valid-attachments"] = json!([{"containerID": "g1", "ifname": "eth0"}]);
    node.call("GC", "", None).run(&c.to_string()).ok();
    let left: Vec<_> = node
        .allocations()
        .iter()
        .map(|a| a["containerId"].clone())
        .collect();
    assert_eq!(left, [json!("g1")]);
    assert_eq!(node.host_veths().len(), 1);
    assert!(pods[1].has_link("eth0"));
    assert!(!pods[0].has_link("eth0") && !pods[2].has_link("eth0"));
    node.del("g1", Some(&pods[1])).ok();
}

#[test]
fn check_detects_tampering() {
    needs_root!();
    let node = Node::new("10.40.0.0/24");
    let check = |prev: &Value, p: &Netns| node.check("chk", p, prev);
    // Address removed.
    let p = pod();
    let prev = node.add("chk", &p).ok();
    check(&prev, &p).ok();
    p.sh("ip addr flush dev eth0");
    assert_eq!(check(&prev, &p).err_code(), 104);
    node.del("chk", Some(&p)).ok();
    // Default route removed.
    let p = pod();
    let prev = node.add("chk", &p).ok();
    p.sh("ip route del default");
    let r = check(&prev, &p);
    assert_eq!(r.err_code(), 104);
    assert!(r.msg().contains("route"), "{r:?}");
    node.del("chk", Some(&p)).ok();
    // Host veth removed.
    let p = pod();
    let prev = node.add("chk", &p).ok();
    node.host.sh(&format!(
        "ip link del {}",
        prev["interfaces"][1]["name"].as_str().unwrap()
    ));
    assert!(check(&prev, &p).err_code() >= 100);
    node.del("chk", Some(&p)).ok();
    // No prevResult; an old version.
    let p = pod();
    node.add("chk", &p).ok();
    assert_eq!(
        node.call("CHECK", "chk", Some(&p))
            .run(&node.conf)
            .err_code(),
        7
    );
    let old = node.conf.replace("\"1.1.0\"", "\"0.3.1\"");
    assert_eq!(node.call("CHECK", "chk", Some(&p)).run(&old).err_code(), 1);
    node.del("chk", Some(&p)).ok();
}

#[test]
fn concurrent_adds_never_share_an_address() {
    needs_root!();
    const PODS: usize = 120;
    const AT_ONCE: usize = 16;
    let node = Arc::new(Node::new("10.41.0.0/24"));
    let pods: Arc<Vec<Netns>> = Arc::new((0..PODS).map(|_| pod()).collect());
    let ips = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(Mutex::new(0usize));
    let workers: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            let (node, pods, ips, next) = (node.clone(), pods.clone(), ips.clone(), next.clone());
            std::thread::spawn(move || loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    let i = *n;
                    *n += 1;
                    i
                };
                if i >= PODS {
                    break;
                }
                let r = node.add(&format!("cc{i}"), &pods[i]).ok();
                ips.lock().unwrap().push(pod_ip(&r));
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let ips = ips.lock().unwrap();
    let unique: HashSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), PODS, "duplicate addresses handed out");
    assert_eq!(node.allocations().len(), PODS);
    assert_eq!(node.host_veths().len(), PODS);
    // Every pod really holds its address.
    for p in pods.iter() {
        assert!(p.sh("ip -o -4 addr show dev eth0").contains("10.41.0."));
    }
    let workers: Vec<_> = (0..AT_ONCE)
        .map(|w| {
            let (node, pods) = (node.clone(), pods.clone());
            std::thread::spawn(move || {
                for i in (w..PODS).step_by(AT_ONCE) {
                    node.del(&format!("cc{i}"), Some(&pods[i])).ok();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());
}

#[test]
fn other_ipam_plugins_by_exec() {
    needs_root!();
    // ferry with the reference host-local.
    let data = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "hl", "type": "ferry",
        "ipam": {"type": "host-local", "dataDir": data.path(), "ranges": [[{"subnet": "10.42.0.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]}
    })
    .to_string();
    let node = Node::with(|_| conf.clone());
    let p = pod();
    let r = node.add("hl1", &p).ok();
    assert_eq!(r["ips"][0]["address"], "10.42.0.2/24");
    p.sh("ping -c1 -W2 10.42.0.1");
    assert!(data.path().join("hl/10.42.0.2").exists());
    node.del("hl1", Some(&p)).ok();
    assert!(!data.path().join("hl/10.42.0.2").exists());
    // An IPAM plugin that is not there: a clear error and nothing changed.
    let missing = conf.replace("host-local", "no-such-ipam");
    let r = node.call("ADD", "hl2", Some(&p)).run(&missing);
    assert_eq!(r.err_code(), 7);
    assert!(r.msg().contains("no-such-ipam"), "{r:?}");

    // ferry-ipam as the IPAM plugin of the reference bridge.
    let node = Node::with(|d| {
        json!({
            "cniVersion": "1.0.0", "name": "br", "type": "bridge", "bridge": "cnib0",
            "isGateway": true,
            "ipam": {"type": "ferry-ipam", "dataDir": d, "subnet": "10.43.0.0/24"}
        })
        .to_string()
    });
    let p = pod();
    let mut add = node.call("ADD", "br1", Some(&p));
    add.plugin = Path::new(ferry_tests::REFERENCE_PLUGINS).join("bridge");
    let r = add.run(&node.conf).ok();
    assert_eq!(r["ips"][0]["address"], "10.43.0.2/24");
    p.sh("ping -c1 -W2 10.43.0.1");
    assert_eq!(node.allocations().len(), 1);
    let mut del = node.call("DEL", "br1", Some(&p));
    del.plugin = Path::new(ferry_tests::REFERENCE_PLUGINS).join("bridge");
    del.run(&node.conf).ok();
    assert!(node.allocations().is_empty());
}

#[test]
fn portmap_chained_after_ferry_serves_a_host_port() {
    needs_root!();
    let node = Node::ferry(
        "1.0.0",
        json!({"subnet": "10.46.0.0/24"}),
        json!({"name": "pm"}),
    );
    // A client outside the node, on an underlay of documentation addresses.
    let outside = Netns::new("fyo");
    ferry_tests::netns::link(
        &node.host,
        "up0",
        "192.0.2.1/24",
        &outside,
        "up0",
        "192.0.2.2/24",
    );
    let p = pod();
    let prev = node.add("pm1", &p).ok();
    let portmap = |cmd: &str, prev: &Value| {
        let conf = json!({
            "cniVersion": "1.0.0", "name": "pm", "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 7000, "protocol": "tcp"}]},
            "prevResult": prev,
        });
        let mut c = node.call(cmd, "pm1", Some(&p));
        c.plugin = Path::new(ferry_tests::REFERENCE_PLUGINS).join("portmap");
        c.run(&conf.to_string())
    };
    let out = portmap("ADD", &prev).ok();
    // portmap passes ferry's result through.
    assert_eq!(out["ips"], prev["ips"]);
    let _srv = ferry_tests::proc::echo_peer_server(&p, 7000);
    let seen = ferry_tests::proc::connect(&outside, "192.0.2.1", 8080);
    assert_eq!(
        seen.as_deref(),
        Some("192.0.2.2"),
        "hostPort did not reach the pod"
    );
    portmap("DEL", &prev).ok();
    node.del("pm1", Some(&p)).ok();
    assert!(ferry_tests::proc::connect(&outside, "192.0.2.1", 8080).is_none());
}

/// What the host veth's receive queue is steered to (`rps_cpus`, as the kernel prints it).
fn rps_mask(node: &Node, veth: &str) -> String {
    ferry_tests::cni::rps_cpus(&node.host, veth)
        .trim_start_matches(['0', ','])
        .to_string()
}

/// A node whose config sets `rpsCpus` to `setting`.
fn node_with_rps(subnet: &str, setting: Value) -> Node {
    Node::ferry(
        "1.1.0",
        json!({ "subnet": subnet }),
        json!({ "rpsCpus": setting }),
    )
}

#[test]
fn receive_steering_on_the_host_veth() {
    needs_root!();
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("online CPUs");
    let online = ferry_netlink::rps::parse_cpu_list(&online).expect("parse online CPUs");
    assert!(
        online.len() >= 2,
        "this test needs two CPUs (online: {online:?}): with one, ferry steers nothing"
    );
    let all = ferry_netlink::rps::cpu_mask(&online);
    let veth_of = ferry_tests::cni::host_veth;

    // The default, from `ip netns exec` (whose /sys is the host's): every online CPU.
    let node = Node::new("10.38.0.0/24");
    let p = pod();
    let veth = veth_of(&node.add("rps1", &p).ok());
    assert_eq!(rps_mask(&node, &veth), all);
    // Over several CPUs, a flow's data and its ACKs must hash alike to meet on one.
    assert!(ferry_tests::cni::hashes_by_flow(&p), "rps1: no flow hash");

    // A runtime that enters the host's namespace by setns alone leaves the plugin a /sys
    // of another namespace (here the test's own): ferry steers its own link all the same,
    // and no mount of its private sysfs is left behind.
    // Only sysfs mounts: the tests running beside this one add namespace mounts.
    let mounts = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter(|l| l.contains(" - sysfs "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = mounts();
    let host = std::fs::File::open(node.host.path()).expect("open host netns");
    let p2 = pod();
    let mut cmd = ferry_tests::cni::in_host(&host, &bin("ferry"));
    cmd.env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "rps2")
        .env("CNI_NETNS", p2.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path());
    let r = ferry_tests::cni::exec(cmd, &node.conf).ok();
    let veth2 = veth_of(&r);
    assert_eq!(rps_mask(&node, &veth2), all);
    assert!(ferry_tests::cni::hashes_by_flow(&p2), "rps2: no flow hash");
    assert_eq!(mounts(), before, "the plugin's sysfs mount leaked");
    assert_eq!(
        node.host.sh("grep -c ' /sys ' /proc/self/mountinfo").trim(),
        "1"
    );

    // "off" leaves the kernel's default; a list steers to exactly those CPUs.
    for (setting, cid, want) in [("off", "rps3", String::new()), ("1", "rps4", "2".into())] {
        let node = node_with_rps("10.38.1.0/24", json!(setting));
        let p = pod();
        let veth = veth_of(&node.add(cid, &p).ok());
        assert_eq!(rps_mask(&node, &veth), want, "rpsCpus {setting:?}");
        // Unsteered, or steered to one CPU: the hash chooses nothing, so it is left alone.
        assert!(!ferry_tests::cni::hashes_by_flow(&p), "rpsCpus {setting:?}");
        node.del(cid, Some(&p)).ok();
    }

    // Lies and garbage: refused with the key named, before anything changes.
    for (setting, code) in [
        (json!("4000-4001"), 7),
        (json!("0-"), 7),
        (json!("none"), 7),
        (json!(""), 7),
        (json!(1), 6),
        (json!({"cpus": "0"}), 6),
    ] {
        let node = node_with_rps("10.38.2.0/24", setting.clone());
        let p = pod();
        let r = node.add("rps-bad", &p);
        assert_eq!(r.err_code(), code, "rpsCpus {setting}: {r:?}");
        assert!(r.msg().contains("rpsCpus") || code == 6, "{r:?}");
        node.assert_nothing_made(&p, &format!("rpsCpus {setting}"));
    }
    node.del("rps1", Some(&p)).ok();
    node.del("rps2", Some(&p2)).ok();
}

#[test]
fn a_node_that_refuses_steering() {
    needs_root!();
    // A read-only /sys, as some rootless and locked-down nodes have: the kernel refuses
    // the write, as it does for a rootless node's lack of the host's CAP_NET_ADMIN.
    let add = |node: &Node, cid: &str, pod: &Netns| {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &node.host.name])
            .args(["unshare", "-m", "sh", "-c"])
            .arg(r#"mount -o remount,ro /sys && exec "$0""#)
            .arg(bin("ferry"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", cni_path());
        ferry_tests::cni::exec(cmd, &node.conf)
    };
    // The default is best effort: the pod starts, unsteered, and stderr says why.
    let node = Node::new("10.38.3.0/24");
    let p = pod();
    let r = add(&node, "ro1", &p);
    let veth = ferry_tests::cni::host_veth(&r.ok());
    assert!(
        r.stderr.contains("rps_cpus") && r.stderr.contains("without receive packet steering"),
        "{r:?}"
    );
    assert_eq!(rps_mask(&node, &veth), "");
    assert!(
        !ferry_tests::cni::hashes_by_flow(&p),
        "unsteered, yet hashed by flow"
    );
    node.del("ro1", Some(&p)).ok();

    // A setting the operator wrote is kept or the ADD fails, leaving nothing behind.
    let node = node_with_rps("10.38.4.0/24", json!("all"));
    let p = pod();
    let r = add(&node, "ro2", &p);
    assert_eq!(r.err_code(), 103, "{r:?}");
    assert!(r.msg().contains("rps_cpus"), "{r:?}");
    node.assert_nothing_made(&p, "read-only /sys");
}

/// node.json's `bigTcp` (which `ferry-overlayd --big-tcp` copies from the underlay) sizes
/// the pod's veth pair and raises the bridge once its first port has joined; a size the
/// kernel would refuse is a lie that costs the pod nothing but its speed.
#[test]
fn node_states_big_tcp_sizes_the_pods_links() {
    needs_root!();
    let node = Node::new("10.41.0.0/24");
    let state = tempfile::tempdir().unwrap();
    let conf = ferry_conf(
        "1.1.0",
        node.data.path(),
        json!({"subnet": null}),
        json!({"stateDir": state.path(), "bridge": "bigbr0"}),
    );
    let write = |big: &str| {
        std::fs::write(
            state.path().join("node.json"),
            format!(
                r#"{{"nodeName":"n1","podCIDR":"10.41.5.0/24","clusterCIDR":"10.41.0.0/16","gateway":"10.41.5.1","mtu":1450{big}}}"#
            ),
        )
        .unwrap()
    };
    let big = ferry_netlink::BigTcp {
        ipv4: 185_000,
        ipv6: 150_000,
    };
    write(r#","bigTcp":{"ipv4":185000,"ipv6":150000}"#);
    let p = pod();
    let r = node.call("ADD", "bt1", Some(&p)).run(&conf).ok();
    for (place, dev) in [
        (&node.host, host_veth(&r)),
        (&node.host, "bigbr0".to_string()),
        (&p, "eth0".to_string()),
    ] {
        let have = place.link_sizes(&dev);
        assert!(have.has(big), "{dev}: {have:?}");
    }
    node.call("DEL", "bt1", Some(&p)).run(&conf).ok();

    // Out of the kernel's range: the pod starts with the kernel's sizes, and says why.
    for lie in [
        r#","bigTcp":{"ipv4":0,"ipv6":65536}"#,
        r#","bigTcp":{"ipv4":185000,"ipv6":4294967295}"#,
    ] {
        write(lie);
        let p = pod();
        let r = node.call("ADD", "bt2", Some(&p)).run(&conf);
        let result = r.ok();
        assert!(r.stderr.contains("bigTcp"), "{lie}: {r:?}");
        assert_eq!(p.link_sizes("eth0"), Default::default(), "{lie}");
        assert_eq!(
            node.host.link_sizes(&host_veth(&result)),
            Default::default(),
            "{lie}"
        );
        node.call("DEL", "bt2", Some(&p)).run(&conf).ok();
    }

    // Not sizes at all: node.json is unreadable, ADD fails and leaves nothing.
    for garbage in [
        r#","bigTcp":"huge""#,
        r#","bigTcp":{"ipv4":-1,"ipv6":65536}"#,
        r#","bigTcp":{"ipv4":185000}"#,
        r#","bigTcp":{"ipv4":185000,"ipv6":185000,"ipv8":1}"#,
    ] {
        write(garbage);
        let p = pod();
        let r = node.call("ADD", "bt3", Some(&p)).run(&conf);
        assert_ne!(r.status, 0, "{garbage}: {r:?}");
        assert!(r.msg().contains("node.json"), "{garbage}: {r:?}");
        node.assert_nothing_made(&p, garbage);
    }
}
