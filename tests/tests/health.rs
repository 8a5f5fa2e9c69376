//! Peer health: each daemon probes every peer's gateway over the pods' path, and
//! `ferry-ipam leases --state-dir` shows what it saw. Failures are injected on the
//! underlay (the switch's namespace, or a node's own), never in the root namespace.

use std::time::{Duration, Instant};

use ferry_tests::cluster::Cluster;
use ferry_tests::needs_root;
use ferry_tests::proc::wait_until;
use serde_json::Value;

/// How soon a change must show: the issue's bound.
const TOLD_WITHIN: Duration = Duration::from_secs(10);

/// Node `from`'s view of node `to`: its lease row of `ferry-ipam leases --state-dir -o
/// json`, with `health` as peers.json has it.
fn seen(c: &Cluster, from: usize, to: usize) -> Value {
    let out = c.nodes[from].host.sh(&format!(
        "{} leases {} --state-dir {} -o json",
        ferry_tests::bin("ferry-ipam").display(),
        c.datastore_flags(),
        c.nodes[from].state_dir().display()
    ));
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let name = &c.nodes[to].name;
    v["leases"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["node"] == name.as_str()).cloned())
        .unwrap_or(Value::Null)
}

/// The HEALTH cell of node `to`'s row in node `from`'s table.
fn cell(c: &Cluster, from: usize, to: usize) -> String {
    let out = c.nodes[from].host.sh(&format!(
        "{} leases {} --state-dir {}",
        ferry_tests::bin("ferry-ipam").display(),
        c.datastore_flags(),
        c.nodes[from].state_dir().display()
    ));
    let mut lines = out.lines().skip_while(|l| !l.starts_with("NODE"));
    let head = lines.next().unwrap_or_default();
    let at = head.find("HEALTH").unwrap_or(head.len());
    lines
        .find(|l| l.split_whitespace().next() == Some(c.nodes[to].name.as_str()))
        .map(|l| l.get(at..).unwrap_or_default().trim().to_string())
        .unwrap_or_default()
}

/// Waits up to `within` for `f`; how long it took, or a failure naming `what`.
fn told(c: &Cluster, what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    let ok = wait_until(within, &mut f);
    assert!(
        ok,
        "{what}: not within {within:?}\nnode0 sees node1: {}\nnode0 sees node2: {}\nnode1 sees node0: {}\n{}",
        seen(c, 0, 1),
        c.nodes.get(2).map_or(Value::Null, |_| seen(c, 0, 2)),
        seen(c, 1, 0),
        c.nodes[0].log()
    );
    t0.elapsed()
}

fn reachable(c: &Cluster, from: usize, to: usize) -> Option<bool> {
    seen(c, from, to)["health"]["reachable"].as_bool()
}

/// Node 1's port on the switch (the other end of its `eth0`).
fn switch_port_of(c: &Cluster, node: usize) -> String {
    let idx = c.nodes[node]
        .host
        .sh("cat /sys/class/net/eth0/iflink")
        .trim()
        .to_string();
    let links = c.switch.ns.sh("ip -o link show");
    links
        .lines()
        .find_map(|l| {
            let (i, rest) = l.split_once(": ")?;
            (i == idx).then(|| {
                rest.split(['@', ':'])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
        })
        .expect("node's switch port")
}

/// Every peer reads `ok` within 10 s of the cluster being up, in the table and the
/// JSON, and the metrics are served with a label per peer, path and family.
#[test]
fn a_healthy_cluster_reads_ok_for_every_peer() {
    needs_root!();
    let c = Cluster::builder().nodes(3).build();
    for from in 0..3 {
        for to in (0..3).filter(|t| *t != from) {
            let ok = wait_until(TOLD_WITHIN, || {
                let v = seen(&c, from, to);
                v["health"]["reachable"] == true && v["health"]["lost"] == 0
            });
            assert!(
                ok,
                "node{from} sees node{to}: {}\n{}",
                seen(&c, from, to),
                c.nodes[from].log()
            );
        }
    }
    assert_eq!(cell(&c, 0, 1), "ok");
    assert_eq!(cell(&c, 0, 2), "ok");
    assert_eq!(cell(&c, 0, 0), "-", "the node itself");
    let h = &seen(&c, 0, 1)["health"];
    for key in ["path", "reachable", "lost", "sent", "rttSeconds"] {
        assert!(h.get(key).is_some(), "{key} missing from {h}");
    }
    let m = c.metrics(0);
    let path = h["path"].as_str().unwrap_or_default();
    let labels = format!("{{peer=\"node1\",path=\"{path}\",family=\"ipv4\"}}");
    assert!(
        m.contains(&format!("ferry_peer_reachable{labels} 1")),
        "{m}"
    );
    for name in [
        "ferry_peer_rtt_seconds",
        "ferry_peer_probes_sent_total",
        "ferry_peer_probes_lost_total",
    ] {
        assert!(m.contains(&format!("{name}{labels} ")), "{name}:\n{m}");
    }
}

/// UDP 4789 dropped between node0 and node1 on the switch: node0 tells node1
/// unreachable (node2 stays ok) within 10 s, logged once, and reachable again within
/// 10 s of the rule going.
#[test]
fn vxlan_blocked_between_two_nodes_is_told_and_clears() {
    needs_root!();
    let c = Cluster::builder().nodes(3).direct_routing(false).build();
    told(&c, "all reachable first", TOLD_WITHIN, || {
        reachable(&c, 0, 1) == Some(true) && reachable(&c, 0, 2) == Some(true)
    });
    let (a, b) = (&c.nodes[0].ip, &c.nodes[1].ip);
    c.switch.ns.sh(&format!(
        "nft add table bridge fyblock && \
         nft add chain bridge fyblock blk '{{ type filter hook forward priority 0; }}' && \
         nft add rule bridge fyblock blk ip saddr {a} ip daddr {b} udp dport 4789 drop && \
         nft add rule bridge fyblock blk ip saddr {b} ip daddr {a} udp dport 4789 drop"
    ));
    let took = told(&c, "node1 unreachable", TOLD_WITHIN, || {
        cell(&c, 0, 1).starts_with("unreachable since")
    });
    eprintln!("unreachable told after {took:?}");
    // The table as a person sees it (docs/ipam.md quotes it).
    eprintln!(
        "{}",
        c.ipam_leases(&format!("--state-dir {}", c.nodes[0].state_dir().display()))
    );
    assert_eq!(reachable(&c, 0, 2), Some(true), "node2 is not blocked");
    assert_eq!(seen(&c, 0, 1)["health"]["path"], "vxlan");
    // The node doctor names it too, from the same health.
    let out = c.nodes[0].host.try_sh(&format!(
        "{} doctor --state-dir {} -o json",
        ferry_tests::bin("ferry-ipam").display(),
        c.nodes[0].state_dir().display()
    ));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    // As a person sees it (docs/troubleshooting.md quotes it).
    eprintln!(
        "{}",
        c.nodes[0]
            .host
            .try_sh(&format!(
                "{} doctor --state-dir {}",
                ferry_tests::bin("ferry-ipam").display(),
                c.nodes[0].state_dir().display()
            ))
            .stdout
            .iter()
            .map(|b| *b as char)
            .collect::<String>()
    );
    let named = doc["findings"].as_array().into_iter().flatten().any(|f| {
        f["check"] == "peer-health" && f["saw"].as_str().is_some_and(|s| s.contains("node1"))
    });
    assert!(named && out.status.code() == Some(1), "{doc}");
    assert!(c
        .metrics(0)
        .contains("ferry_peer_reachable{peer=\"node1\",path=\"vxlan\",family=\"ipv4\"} 0"));
    // Still down a few probes later: told once.
    std::thread::sleep(Duration::from_secs(4));
    let log = c.nodes[0].log();
    assert_eq!(log.matches("peer unreachable").count(), 1, "{log}");
    c.switch.ns.sh("nft delete table bridge fyblock");
    let took = told(&c, "node1 back", TOLD_WITHIN, || {
        reachable(&c, 0, 1) == Some(true)
    });
    eprintln!("back told after {took:?}");
    assert!(c.nodes[0].log().contains("peer reachable again"));
    // What was lost stays in the window: the table says so rather than `ok`.
    assert!(cell(&c, 0, 1).starts_with("lost "), "{}", cell(&c, 0, 1));
}

/// node1's switch port shrunk to 1400 bytes: full-size VXLAN packets to and from it are
/// dropped, small ones cross. node0 tells `mtu fails` within the MTU probe period (5 s
/// here) and a confirmation, and `ok` again once the port is mended.
#[test]
fn a_shrunk_underlay_mtu_is_told_as_mtu_fails() {
    needs_root!();
    let c = Cluster::builder()
        .nodes(3)
        .direct_routing(false)
        .flags(["--health-mtu-interval", "5s"])
        .build();
    told(&c, "mtu ok first", TOLD_WITHIN, || {
        seen(&c, 0, 1)["health"]["mtuOk"] == true
    });
    let port = switch_port_of(&c, 1);
    c.switch.ns.sh(&format!("ip link set {port} mtu 1400"));
    let took = told(&c, "mtu fails", Duration::from_secs(15), || {
        cell(&c, 0, 1) == "mtu fails"
    });
    eprintln!("mtu fails told after {took:?}");
    let h = seen(&c, 0, 1)["health"].clone();
    assert_eq!(
        (&h["reachable"], &h["mtuOk"]),
        (&true.into(), &false.into())
    );
    assert_eq!(
        seen(&c, 0, 2)["health"]["mtuOk"],
        true,
        "node2's port is whole"
    );
    assert!(c
        .metrics(0)
        .contains("ferry_peer_mtu_ok{peer=\"node1\",path=\"vxlan\",family=\"ipv4\"} 0"));
    assert!(c.nodes[0].log().contains("mtu fails"));
    c.switch.ns.sh(&format!("ip link set {port} mtu 1500"));
    told(&c, "mtu ok again", Duration::from_secs(15), || {
        seen(&c, 0, 1)["health"]["mtuOk"] == true
    });
}

/// The probes are answered by the peer's kernel: a stopped daemon leaves its node
/// reachable; a node whose underlay link is down is not.
#[test]
fn a_stopped_daemon_is_reachable_a_downed_link_is_not() {
    needs_root!();
    let mut c = Cluster::builder().nodes(2).build();
    told(&c, "reachable first", TOLD_WITHIN, || {
        reachable(&c, 0, 1) == Some(true)
    });
    assert_eq!(c.nodes[1].stop_daemon(), Some(0));
    // Long enough for three probes at the default rate to go unanswered, were they.
    std::thread::sleep(TOLD_WITHIN);
    let v = seen(&c, 0, 1);
    assert_eq!(v["health"]["reachable"], true, "{v}");
    assert_eq!(cell(&c, 0, 1), "ok");
    c.nodes[1].host.sh("ip link set eth0 down");
    told(&c, "a downed link unreachable", TOLD_WITHIN, || {
        reachable(&c, 0, 1) == Some(false)
    });
}

/// Dual-stack: the IPv6 subnets are probed too (from the IPv6 gateway, over VXLAN), as
/// `healthV6`; an IPv6-only cluster's only family is `health`.
#[test]
fn ipv6_subnets_are_probed_in_dual_stack_and_ipv6_only_clusters() {
    needs_root!();
    let c = Cluster::builder().nodes(2).dual_stack().build();
    told(&c, "both families reachable", TOLD_WITHIN, || {
        let v = seen(&c, 0, 1);
        v["health"]["reachable"] == true && v["healthV6"]["reachable"] == true
    });
    let v = seen(&c, 0, 1);
    assert_eq!(
        (&v["health"]["family"], &v["healthV6"]["family"]),
        (&"ipv4".into(), &"ipv6".into())
    );
    assert_eq!(
        v["healthV6"]["path"], "vxlan",
        "IPv6 pods cross an IPv4 underlay in VXLAN"
    );
    assert_eq!(cell(&c, 0, 1), "ok");
    assert!(c
        .metrics(0)
        .contains("ferry_peer_reachable{peer=\"node1\",path=\"vxlan\",family=\"ipv6\"} 1"));
    drop(c);
    let c = Cluster::builder().nodes(2).v6_only().build();
    told(&c, "IPv6-only reachable", TOLD_WITHIN, || {
        let v = seen(&c, 0, 1);
        v["health"]["reachable"] == true && v["health"]["family"] == "ipv6"
    });
}

/// What probing 100 peers costs a node (a benchmark, `#[ignore]`d): 100 lease records of
/// made-up nodes whose underlay addresses and gateways one stranger namespace holds
/// (direct routing sends the probes to it unencapsulated; its kernel answers as a
/// peer's would). Measured over 60 s at the default rates: the daemon's CPU time
/// (utime + stime from /proc/<pid>/stat, its resyncs of the 100 peers included) and the
/// bytes on node0's underlay link. The made-up peers do not probe node0 back: a real
/// node carries as much again for the peers' probes of it.
///
/// `sudo -E cargo test -p ferry-tests --test health -- --ignored --nocapture probe_cost`
#[test]
#[ignore]
fn probe_cost_at_100_peers() {
    needs_root!();
    // The same node with probes an hour apart: what the rest of the daemon costs.
    let (base_cpu, base_bps) = cost_at_100_peers(&[
        "--health-probe-interval",
        "1h",
        "--health-mtu-interval",
        "1h",
    ]);
    let (cpu, bps) = cost_at_100_peers(&[]);
    eprintln!(
        "100 peers: probes cost {:.3}% of a core ({cpu:.3}% - {base_cpu:.3}% without them, the daemon from {}) and {:.0} B/s on the underlay in+out ({bps:.0} - {base_bps:.0})",
        cpu - base_cpu,
        ferry_tests::bin_dir().display(),
        bps - base_bps
    );
    assert!(bps - base_bps < 10_000.0);
}

/// One node with 100 answering made-up peers, run with `flags`: the daemon's CPU in % of
/// a core and its underlay link's bytes per second, in and out, over 60 s.
fn cost_at_100_peers(flags: &[&str]) -> (f64, f64) {
    let c = Cluster::builder()
        .datastore(ferry_tests::cluster::Datastore::Etcd)
        .cluster_cidr("10.94.0.0/16")
        .flags(flags)
        .nodes(1)
        .build();
    let n0 = &c.nodes[0];
    let mine = n0.subnet();
    let thirds: Vec<u32> = (100..=250)
        .filter(|t| !mine.starts_with(&format!("10.94.{t}.")))
        .take(100)
        .collect();
    let stranger = c.stranger("192.0.2.150");
    let mut script = format!("ip link set lo up && ip route add {mine} via {}", n0.ip);
    for (i, t) in thirds.iter().enumerate() {
        script += &format!(
            " && ip addr add 192.0.2.{}/24 dev eth0 && ip addr add 10.94.{t}.1/32 dev lo",
            151 + i
        );
    }
    stranger.sh(&script);
    for (i, t) in thirds.iter().enumerate() {
        c.etcd_put(
            &c.lease_key(&format!("10.94.{t}.0/24")),
            &format!(
                r#"{{"node":"fake{i}","subnet":"10.94.{t}.0/24","publicIp":"192.0.2.{}","vtepMac":"0e:00:00:00:01:{i:02x}"}}"#,
                151 + i
            ),
        );
    }
    let all = wait_until(Duration::from_secs(30), || {
        c.metrics(0)
            .matches("ferry_peer_probes_sent_total{")
            .count()
            == 100
    });
    assert!(all, "{}\n{}", c.metrics(0), n0.log());
    // Every peer probed once at least, and answered, before the measure.
    std::thread::sleep(Duration::from_secs(6));
    let pid = n0.daemon_pid().expect("daemon runs");
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(") ").map_or("", |(_, a)| a);
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // utime and stime, fields 14 and 15 of stat, 12 and 13 after the name.
        f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)
    };
    let bytes = || {
        let r = |f: &str| -> u64 {
            n0.host
                .sh(&format!("cat /sys/class/net/eth0/statistics/{f}"))
                .trim()
                .parse()
                .unwrap_or(0)
        };
        r("tx_bytes") + r("rx_bytes")
    };
    let (c0, b0, t0) = (cpu(), bytes(), Instant::now());
    std::thread::sleep(Duration::from_secs(60));
    let (c1, b1, secs) = (cpu(), bytes(), t0.elapsed().as_secs_f64());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let core = (c1 - c0) as f64 / hz / secs * 100.0;
    let bps = (b1 - b0) as f64 / secs;
    eprintln!("100 peers, {flags:?}, {secs:.0}s: daemon CPU {core:.3}% of a core, underlay {bps:.0} B/s in+out");
    let m = c.metrics(0);
    assert!(
        !m.lines()
            .any(|l| l.starts_with("ferry_peer_reachable{") && l.ends_with(" 0")),
        "a made-up peer went unreachable:\n{m}"
    );
    (core, bps)
}
