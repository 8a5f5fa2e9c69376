//! The overlay across nodes: a cluster of namespaces with a real etcd, `ferry-overlayd`
//! on every node, pods added through `ferry`.

use std::time::Duration;

use ferry_netlink::BigTcp;
use ferry_tests::cluster::{run_overlayd, Cluster, ClusterBuilder, Datastore, OUTSIDE_IP};
use ferry_tests::cni::host_veth;
use ferry_tests::needs_root;
use ferry_tests::netns::Netns;
use ferry_tests::proc::{connect, echo_peer_server, wait_until};
use ferry_tests::services::Service;
use ferry_tests::traffic::iperf;

#[test]
fn pods_reach_each_other_across_nodes_keeping_their_addresses() {
    needs_root!();
    // One segment: every node reaches the others by DirectRouting.
    every_traffic_kind(Cluster::builder());
}

#[test]
fn pods_reach_each_other_across_nodes_over_vxlan() {
    needs_root!();
    every_traffic_kind(Cluster::builder().direct_routing(false));
}

/// Pods of three nodes reach each other, their own node, localhost and the outside host,
/// with the daemons' `extra` flags.
fn every_traffic_kind(cluster: ClusterBuilder) {
    let c = cluster.nodes(3).build();
    // Distinct subnets, each node's gateway and MTU in its state.
    let subnets: Vec<String> = c.nodes.iter().map(|n| n.subnet()).collect();
    assert_eq!(
        subnets
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "{subnets:?}"
    );
    for n in &c.nodes {
        let st = n.node_state();
        assert_eq!(st["clusterCIDR"], c.cidr);
        assert_eq!(st["mtu"], 1450);
        assert_eq!(st["nodeName"], n.name.as_str());
    }
    // Two pods per node: one on each node pair, and two on one node.
    let pods: Vec<_> = c
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| (0..2).map(move |k| (i, n.add_pod(&format!("p{i}{k}")))))
        .collect();
    let servers: Vec<_> = pods
        .iter()
        .map(|(_, p)| echo_peer_server(&p.ns, 7000))
        .collect();
    for (i, a) in &pods {
        for (j, b) in &pods {
            if a.id == b.id {
                continue;
            }
            let seen = connect(&a.ns, &b.ip, 7000);
            assert_eq!(
                seen.as_deref(),
                Some(a.ip.as_str()),
                "{} (node{i}) -> {} (node{j}): the server must see the client's pod IP",
                a.id,
                b.id
            );
        }
    }
    // localhost inside a pod.
    let (_, p) = &pods[0];
    assert_eq!(
        connect(&p.ns, "127.0.0.1", 7000).as_deref(),
        Some("127.0.0.1")
    );
    // Node to pod, on its own node and across.
    for n in &c.nodes {
        for (_, p) in &pods {
            n.host.sh(&format!("ping -c1 -W2 {}", p.ip));
        }
    }
    // Pod to a host outside the cluster: masqueraded to its node's address.
    let _out = echo_peer_server(&c.outside, 7100);
    for (i, p) in &pods {
        assert_eq!(
            connect(&p.ns, OUTSIDE_IP, 7100).as_deref(),
            Some(c.nodes[*i].ip.as_str())
        );
    }
    // A full-size packet with DF set crosses nodes at the pod MTU.
    let (_, a) = &pods[0];
    let (_, b) = &pods[2];
    a.ns.sh(&format!("ping -c1 -W2 -M do -s {} {}", 1450 - 28, b.ip));
    drop(servers);
    // Metrics speak of what is there.
    let m = c.metrics(0);
    assert!(m.contains("ferry_leases_known 3"), "{m}");
    assert!(
        m.contains("ferry_entries_programmed{kind=\"route\"} 2"),
        "{m}"
    );
    assert!(m.contains("ferry_ready 1"), "{m}");
    for (i, p) in &pods {
        c.nodes[*i].del_pod(p);
    }
    // DEL takes each pod off the overlay: its interface is gone.
    let gone = wait_until(Duration::from_secs(1), || {
        pods.iter().all(|(_, p)| !p.ns.has_link("eth0"))
    });
    assert!(gone, "a pod kept its eth0 after DEL");
}

#[test]
fn services_through_kube_proxy_rules() {
    needs_root!();
    let c = Cluster::builder().nodes(2).build();
    let endpoint = c.nodes[0].add_pod("ep");
    let (same_node, other_node) = c.pods_across("near", "far");
    let _srv = echo_peer_server(&endpoint.ns, 7000);
    // ClusterIP 10.96.0.10:80 and NodePort 30080 to the one endpoint.
    let svc = Service::new("10.96.0.10", &endpoint.ip);
    svc.install_and_check(
        &c,
        (&other_node.ns, &other_node.ip),
        (&same_node.ns, &same_node.ip),
        &endpoint.ns,
    );
    for (n, p) in [(0, &endpoint), (0, &same_node), (1, &other_node)] {
        c.nodes[n].del_pod(p);
    }
}

#[test]
fn overlayd_restart_drops_no_packet_and_keeps_subnet_and_mac() {
    needs_root!();
    let mut c = Cluster::builder().nodes(2).build();
    let (a, b) = c.pods_across("ra", "rb");
    // 150 pings, 20 ms apart, while both daemons restart.
    let ping = std::thread::spawn({
        let ns = a.ns.name.clone();
        let ip = b.ip.clone();
        move || {
            std::process::Command::new("ip")
                .args([
                    "netns", "exec", &ns, "ping", "-q", "-i", "0.02", "-c", "150", "-W", "1", &ip,
                ])
                .output()
                .expect("ping")
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    c.restart_daemons_keeping_leases();
    let out = ping.join().expect("ping thread");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(" 0% packet loss"),
        "packets lost across the restart: {summary}"
    );
    c.nodes[0].del_pod(&a);
    c.nodes[1].del_pod(&b);
}

#[test]
fn etcd_outage_keeps_traffic_and_pods_starting() {
    needs_root!();
    // etcd itself goes down and comes back.
    let mut c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(2)
        .build();
    let (a, b) = c.pods_across("ea", "eb");
    c.etcd.stop();
    a.ns.sh(&format!("ping -c3 -i 0.2 -W2 {}", b.ip));
    // A new pod starts without etcd: the plugin needs only node.json.
    let late = c.nodes[1].add_pod("ec");
    a.ns.sh(&format!("ping -c1 -W2 {}", late.ip));
    // The daemon notices, keeps serving, and resyncs when etcd is back.
    assert!(wait_until(Duration::from_secs(30), || c
        .metrics(0)
        .contains("ferry_etcd_connected 0")));
    let (status, _) = ferry_tests::cluster::http_get(
        &c.nodes[0].host,
        ferry_tests::cluster::HEALTH_ADDR,
        "/healthz",
    );
    assert_eq!(status, 200);
    c.etcd.resume();
    assert!(
        wait_until(Duration::from_secs(30), || c
            .metrics(0)
            .contains("ferry_etcd_connected 1")),
        "{}",
        c.nodes[0].log()
    );
    // A node joining now is reached by everyone.
    c.add_node().wait_ready();
    c.wait_converged();
    let d = c.nodes[2].add_pod("ed");
    a.ns.sh(&format!("ping -c1 -W2 {}", d.ip));
    d.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
}

#[test]
fn a_node_joining_later_is_reached_by_all() {
    needs_root!();
    let mut c = Cluster::builder().nodes(2).build();
    let early: Vec<_> = (0..2)
        .map(|i| c.nodes[i].add_pod(&format!("j{i}")))
        .collect();
    c.add_node().wait_ready();
    c.wait_converged();
    let late = c.nodes[2].add_pod("j2");
    for p in &early {
        p.ns.sh(&format!("ping -c1 -W2 {}", late.ip));
        late.ns.sh(&format!("ping -c1 -W2 {}", p.ip));
    }
}

#[test]
fn hand_deleted_state_comes_back() {
    needs_root!();
    // About the VXLAN entries: the nodes share a segment, so DirectRouting is off.
    let c = Cluster::builder()
        .nodes(2)
        .cluster_cidr("10.65.0.0/16")
        .direct_routing(false)
        .build();
    let (a, b) = c.pods_across("ha", "hb");
    let n0 = &c.nodes[0];
    let remote = c.nodes[1].subnet();
    // A route, an FDB entry, a neighbour entry, then the whole device.
    n0.host.sh(&format!("ip route del {remote} dev ferry.1"));
    assert!(
        wait_until(Duration::from_secs(10), || n0
            .overlay_routes()
            .contains(&remote)),
        "route not mended"
    );
    n0.host.sh(&format!(
        "bridge fdb del {} dev ferry.1 dst {}",
        c.nodes[1].vtep_mac(),
        c.nodes[1].ip
    ));
    n0.host.sh(&format!(
        "ip neigh del {} dev ferry.1",
        remote.split('/').next().unwrap()
    ));
    assert!(wait_until(Duration::from_secs(10), || {
        n0.host
            .sh("bridge fdb show dev ferry.1")
            .contains(&c.nodes[1].ip)
            && n0
                .host
                .sh("ip neigh show dev ferry.1")
                .contains("PERMANENT")
    }));
    // A stale entry for a node that does not exist goes.
    n0.host
        .sh("ip route add 10.65.250.0/24 via 10.65.250.0 dev ferry.1 onlink");
    assert!(wait_until(Duration::from_secs(10), || !n0
        .overlay_routes()
        .contains("10.65.250.0")));
    n0.host.sh("ip link del ferry.1");
    assert!(
        wait_until(Duration::from_secs(10), || n0
            .overlay_routes()
            .contains(&remote)),
        "device not recreated:\n{}",
        n0.log()
    );
    a.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
    c.assert_metric_served(0, "ferry_repairs_total");
}

#[test]
fn vxlan_checksum_offload_can_be_turned_off_and_stays_off() {
    needs_root!();
    let c = Cluster::builder()
        .nodes(2)
        .direct_routing(false)
        .flags(["--vxlan-checksum-offload=false"])
        .build();
    for n in &c.nodes {
        let off = wait_until(Duration::from_secs(10), || !n.tx_checksum("ferry.1", None));
        assert!(
            off,
            "{}: tx checksum offload still on:\n{}",
            n.name,
            n.log()
        );
        // The underlay's own offloads are not touched.
        assert!(
            n.tx_checksum("eth0", None),
            "{}: eth0's offload changed",
            n.name
        );
    }
    // Traffic crosses with the inner checksums computed in software, TCP included.
    let (a, b) = c.pods_across("ka", "kb");
    let _srv = echo_peer_server(&b.ns, 7000);
    c.wait_reachable(&a.ns, &b.ip);
    assert_eq!(connect(&a.ns, &b.ip, 7000).as_deref(), Some(a.ip.as_str()));
    // Turned back on by hand: the next resync turns it off again.
    let n0 = &c.nodes[0];
    assert!(n0.tx_checksum("ferry.1", Some(true)));
    let off = wait_until(Duration::from_secs(10), || !n0.tx_checksum("ferry.1", None));
    assert!(off, "not mended:\n{}", n0.log());
    // Without the flag the kernel's default (on) is left alone.
    let d = Cluster::builder().direct_routing(false).build();
    std::thread::sleep(Duration::from_secs(3));
    assert!(d.nodes[0].tx_checksum("ferry.1", None));
    c.nodes[0].del_pod(&a);
    c.nodes[1].del_pod(&b);
}

#[test]
fn a_silent_node_keeps_its_subnet_for_the_grace_period() {
    needs_root!();
    // The lease grace is etcd's: with the Kubernetes datastore a node is a peer until its
    // Node is deleted (kube_datastore.rs).
    let mut c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(2)
        .flags(["--lease-grace", "10s"])
        .build();
    let gone = c.nodes[1].subnet();
    let silent = c.nodes[1].daemon.take().expect("daemon");
    assert_eq!(silent.stop(libc::SIGKILL, Duration::from_secs(5)), None);
    // Its routes stay for now...
    std::thread::sleep(Duration::from_secs(3));
    assert!(c.nodes[0].ferry_routes().contains(&gone));
    // ...and go when the grace period has passed.
    assert!(
        wait_until(Duration::from_secs(30), || !c.nodes[0]
            .ferry_routes()
            .contains(&gone)),
        "{}",
        c.nodes[0].log()
    );
}

#[test]
fn a_new_public_ip_is_followed_by_every_node() {
    needs_root!();
    let mut c = Cluster::builder().nodes(2).build();
    let (a, b) = c.pods_across("ma", "mb");
    let n1 = &mut c.nodes[1];
    n1.stop_daemon();
    n1.host.sh("ip addr flush dev eth0 && ip addr add 192.0.2.77/24 dev eth0 && ip route add default via 192.0.2.254");
    n1.ip = "192.0.2.77".into();
    // As its kubelet reports the new address (the Kubernetes datastore checks the published
    // one against it).
    c.set_node_addresses(1, &["192.0.2.77".to_string()]);
    let n1 = &mut c.nodes[1];
    n1.start_daemon();
    n1.wait_ready();
    assert!(
        wait_until(Duration::from_secs(10), || c.nodes[0]
            .host
            .sh("bridge fdb show dev ferry.1")
            .contains("192.0.2.77")),
        "{}",
        c.nodes[0].log()
    );
    let ok =
        a.ns.try_sh(&format!("ping -c1 -W2 {}", b.ip))
            .status
            .success();
    if !ok {
        for n in &c.nodes {
            eprintln!(
                "== {}\n{}\n{}\n{}\n{}\n{}",
                n.name,
                n.host.sh("ip -d link show ferry.1; ip addr show ferry.1"),
                n.host
                    .sh("bridge fdb show dev ferry.1; ip neigh show dev ferry.1; ip route"),
                n.host.sh("ip neigh show dev eth0"),
                n.host.sh("iptables -t nat -S; iptables -S"),
                n.log()
            );
        }
    }
    assert!(
        ok,
        "pods do not reach each other after the public IP change"
    );
}

#[test]
fn startup_errors_name_the_problem() {
    needs_root!();
    // The daemon is run against etcd's endpoint and prefix by hand.
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .cluster_cidr("10.68.0.0/16")
        .build();
    let n = &c.nodes[0];
    let dir = tempfile::tempdir().unwrap();
    let run_for = |secs: u32, args: &str| {
        run_overlayd(
            &n.host,
            &format!(
                "--node-name probe --state-dir {} {args}",
                dir.path().join("run").display()
            ),
            secs,
        )
    };
    let run = |args: &str| run_for(30, args);
    let prefix = format!("--etcd-prefix {}", c.prefix);
    // An etcd that does not answer is waited for (a rebooted node may reach its address
    // only seconds later), and said once, naming the endpoint.
    let (code, err) = run_for(
        6,
        "--etcd-endpoints http://192.0.2.99:2379 --etcd-timeout 1s",
    );
    assert_eq!(code, Some(124), "still waiting when killed: {err}");
    assert_eq!(
        err.matches("waiting for etcd at http://192.0.2.99:2379")
            .count(),
        1,
        "{err}"
    );
    let ep = c.etcd.endpoint();
    let (code, err) = run(&format!(
        "--etcd-endpoints {ep} {prefix} --cluster-cidr 10.69.0.0/16"
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--cluster-cidr 10.69.0.0/16 (stored 10.68.0.0/16)"),
        "{err}"
    );
    let (code, err) = run(&format!("--etcd-endpoints {ep} {prefix} --iface nope0"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("underlay interface nope0 does not exist"),
        "{err}"
    );
    let (code, err) = run(&format!(
        "--etcd-endpoints {ep} --etcd-prefix /ferry-empty-{}",
        std::process::id()
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no cluster config"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn etcd_with_tls_and_client_certificates() {
    needs_root!();
    // etcd over TLS, reached by hand.
    let c = ferry_tests::cluster::Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(2)
        .tls()
        .build();
    let (a, b) = c.pods_across("ta", "tb");
    a.ns.sh(&format!("ping -c1 -W2 {}", b.ip));
    // Without a client certificate etcd refuses, and the daemon says so.
    let d = c.etcd.dir.path().display();
    // A refused handshake is waited out like any unreachable etcd (a certificate may be
    // renewed meanwhile), and said, naming the endpoint.
    let state = tempfile::tempdir().unwrap();
    let (code, err) = run_overlayd(
        &c.nodes[0].host,
        &format!(
            "--node-name x --state-dir {} --etcd-timeout 3s --etcd-endpoints {} \
             --etcd-cacert {d}/ca.pem",
            state.path().display(),
            c.etcd.endpoint()
        ),
        8,
    );
    assert_eq!(code, Some(124), "still waiting when killed: {err}");
    assert!(
        err.contains("waiting for etcd at https://192.0.2.2:2379"),
        "{err}"
    );
}

/// Bytes per packet that `dev` in `ns` sent during `f`: above 64 KiB, GSO packets larger
/// than the legacy size crossed it whole (a veth counts a GSO packet once); near the MTU,
/// something on the way cut them in software.
fn bytes_per_packet_sent(ns: &Netns, dev: &str, f: impl FnOnce()) -> u64 {
    let read = || {
        (
            ns.link_stat(dev, "tx_bytes"),
            ns.link_stat(dev, "tx_packets"),
        )
    };
    let (b0, p0) = read();
    f();
    let (b1, p1) = read();
    (b1 - b0) / (p1 - p0).max(1)
}

/// TCP segments sent and retransmitted so far in `ns`.
fn tcp_sent_and_retransmitted(ns: &Netns) -> (u64, u64) {
    let out = ns.sh("nstat -az TcpOutSegs TcpRetransSegs");
    let count = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {out}"))
    };
    (count("TcpOutSegs"), count("TcpRetransSegs"))
}

#[test]
fn big_tcp_follows_the_underlay_when_asked() {
    needs_root!();
    let big = BigTcp {
        ipv4: 185_000,
        ipv6: 185_000,
    };
    let legacy = ferry_netlink::big_tcp::Sizes::default();

    // Without --big-tcp, a NIC's BIG TCP changes nothing of ferry's.
    let mut plain = Cluster::builder().build();
    plain.turn_big_tcp_on(big);
    let n = &plain.nodes[0];
    assert!(
        n.node_state().get("bigTcp").is_none(),
        "{} {}",
        n.node_state(),
        n.log()
    );
    let p = n.add_pod("bp");
    assert_eq!(p.ns.link_sizes("eth0"), legacy);
    n.del_pod(&p);
    drop(plain);

    for direct in [true, false] {
        let extra = if direct {
            "--big-tcp"
        } else {
            "--big-tcp --direct-routing=false"
        };
        let mut c = Cluster::builder()
            .nodes(2)
            .flags(["--big-tcp"])
            .direct_routing(direct)
            .build();
        // An underlay at the kernel's 64 KiB leaves nothing to follow.
        assert!(c.nodes[0].node_state().get("bigTcp").is_none());
        assert!(
            c.nodes[0].log().contains("pods keep them"),
            "{}",
            c.nodes[0].log()
        );
        c.turn_big_tcp_on(big);
        let (a, b) = c.pods_across("ba", "bb");
        for (n, p) in [(&c.nodes[0], &a), (&c.nodes[1], &b)] {
            assert_eq!(
                n.node_state()["bigTcp"],
                serde_json::json!({"ipv4": 185000, "ipv6": 185000}),
                "{}",
                n.log()
            );
            let bridge = p.result["interfaces"][0]["name"].as_str().expect("bridge");
            for (place, dev) in [
                (&n.host, bridge),
                (&n.host, host_veth(&p.result).as_str()),
                (&p.ns, "eth0"),
            ] {
                let have = place.link_sizes(dev);
                assert!(have.has(big), "{extra}: {dev} in {}: {have:?}", place.name);
            }
            // Never the VXLAN device: see below.
            assert_eq!(n.host.link_sizes("ferry.1"), legacy, "{extra}");
        }
        c.wait_reachable(&a.ns, &b.ip);
        let before = tcp_sent_and_retransmitted(&a.ns);
        let mut gbits = 0.0;
        let per_packet = bytes_per_packet_sent(&c.nodes[0].host, "eth0", || {
            gbits = iperf(&a.ns, &b.ns, &b.ip, 2);
        });
        let after = tcp_sent_and_retransmitted(&a.ns);
        let (sent, resent) = (after.0 - before.0, after.1 - before.1);
        let shown = format!(
            "{extra}: {per_packet} bytes per packet on the underlay, {gbits:.2} Gbit/s, \
             {resent} of {sent} segments resent"
        );
        eprintln!("{shown}");
        // Next to no loss (a busy machine may drop a little): a packet over 64 KiB that
        // left as one UDP packet would arrive truncated, and more would be resent than sent.
        assert!(resent * 20 <= sent, "{shown}");
        if !direct {
            // Over VXLAN the kernel cuts the pods' large packets to wire size first.
            assert!(per_packet < 9000, "{shown}");
            assert!(
                c.nodes[0].log().contains("reached over VXLAN"),
                "{}",
                c.nodes[0].log()
            );
        } else {
            // Directly routed, they cross the underlay whole, larger than 64 KiB.
            assert!(
                per_packet > u64::from(ferry_netlink::big_tcp::LEGACY),
                "{shown}"
            );
        }
        c.nodes[0].del_pod(&a);
        c.nodes[1].del_pod(&b);
    }
}
