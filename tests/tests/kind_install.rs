//! What stood between ferry and its first users on kind, each proven on kind-like nodes
//! (`ferry_tests::kind`: the image, the DaemonSet's containers through containerd's CRI,
//! the manifests' capabilities, mounts, probes and RBAC):
//!
//! 1. bridge netfilter turned on by the privileged `prepare-node` init container (the
//!    nodes start with it off), and a node that cannot be made ready publishes nothing;
//! 3. ferry's etcd (the etcd component) refuses every client without a certificate of its
//!    CA, pods included;
//! 4. the underlay address is the kubelet's (`status.hostIP`), not a guess from the default
//!    route; an IPv6-only cluster runs its underlay over IPv6;
//! 5. /healthz answers through a slow start, a daemon waits for etcd (the etcd component)
//!    instead of crashing, and a daemon killed with SIGKILL is back at once;
//! 6. ferry's iptables chains follow the node's backend (legacy or nft);
//! 7. the CNI config sorts before any other CNI's leftovers and is written only once the
//!    daemon is ready.
//!
//! (2, the uninstall, and the lifecycle are in kind_lifecycle.rs; 8, the scripts and
//! manifests, in deploy.rs.)

use std::time::{Duration, Instant};

use ferry_tests::kind::{image, Backend, Family, Install, KindCluster};
use ferry_tests::proc::{echo_peer_server, seen_from, wait_until};
use serde_json::Value;

const PORT: u16 = 7000;
const READY: Duration = Duration::from_secs(120);

fn without_init_container(objects: &mut [Value], name: &str) {
    for o in objects.iter_mut().filter(|o| o["kind"] == "DaemonSet") {
        if let Some(list) = o["spec"]["template"]["spec"]["initContainers"].as_array_mut() {
            list.retain(|c| c["name"] != name);
        }
    }
}

const ETCD: Install = Install { etcd: true };

/// What the nodes published, in the datastore of the install: the lease keys in ferry's
/// etcd, or the Nodes that carry a `ferry.dev/` annotation.
fn published(c: &KindCluster) -> Vec<String> {
    if c.installed.etcd {
        return c
            .etcdctl("get --prefix --keys-only /ferry/v1/leases")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
    }
    c.nodes
        .iter()
        .filter_map(|n| c.api.get::<k8s_openapi::api::core::v1::Node>(None, &n.name))
        .filter(|node| {
            node.metadata
                .annotations
                .iter()
                .flatten()
                .any(|(k, _)| k.starts_with("ferry.dev/"))
        })
        .filter_map(|node| node.metadata.name)
        .collect()
}

fn readyz(c: &KindCluster, i: usize) -> (u16, String) {
    ferry_tests::cluster::http_get(&c.nodes[i].host, "127.0.0.1:9797", "/readyz")
}

#[test]
fn without_prepare_node_the_daemon_says_why_and_publishes_nothing() {
    ferry_tests::needs_root!();
    let mut c = KindCluster::create(Family::Ipv4, 1, Backend::Nft);
    c.install_with(image::ferry(), Install::default(), |o| {
        without_init_container(o, "prepare-node")
    });
    // The daemons run but cannot become ready: bridge netfilter is off on these nodes.
    let said = wait_until(Duration::from_secs(60), || {
        (0..c.nodes.len()).all(|i| readyz(&c, i).1.contains("bridge-nf-call-iptables"))
    });
    assert!(said, "/readyz must name the sysctl:\n{}", c.describe());
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        published(&c).is_empty(),
        "a node that is not ready published: {:?}",
        published(&c)
    );
    for n in &c.nodes {
        let routes = n.host.sh("ip route show proto 102");
        assert!(routes.trim().is_empty(), "{}: {routes}", n.name);
        assert!(
            !n.path("/etc/cni/net.d/00-ferry.conflist").exists(),
            "{}: the CNI config came before the node could add pods",
            n.name
        );
        assert!(!n.network_ready().0, "{} NetworkReady", n.name);
    }
    // Turned on by hand on the worker: that node, and only it, goes on.
    c.nodes[1].host.sh("sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 net.ipv4.ip_forward=1");
    let ready = wait_until(Duration::from_secs(30), || readyz(&c, 1).0 == 200);
    assert!(ready, "{:?}\n{}", readyz(&c, 1), c.describe());
    assert_eq!(published(&c).len(), 1, "{:?}", published(&c));
    for i in 0..c.nodes.len() {
        let uid = c.ferry_pod(i).metadata.uid.unwrap_or_default();
        assert_eq!(
            c.status(&uid).expect("status").restarts(),
            0,
            "{}",
            c.describe()
        );
    }
}

#[test]
fn a_pod_cannot_reach_ferrys_etcd_without_its_certificate() {
    ferry_tests::needs_root!();
    let mut c = KindCluster::create(Family::Ipv4, 1, Backend::Nft);
    c.install_as(image::ferry(), ETCD, READY);
    let uid = c.run_pod(1, "default", "intruder", &[]);
    c.wait_ready(&uid, READY);
    let pod = c.pod_netns(&uid);
    let cp = c.nodes[0].ips[0].clone();
    for ep in ["10.96.0.66:6666".to_string(), format!("{cp}:6666")] {
        for (how, flags) in [
            ("plain HTTP", format!("--endpoints http://{ep}")),
            (
                "TLS without a client certificate",
                format!("--endpoints https://{ep} --insecure-skip-tls-verify"),
            ),
        ] {
            let out = pod.try_sh(&format!(
                "ETCDCTL_API=3 timeout 10 etcdctl {flags} --dial-timeout 3s --command-timeout 5s get --prefix --keys-only /ferry"
            ));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                !out.status.success() && !text.contains("/ferry"),
                "{how} to {ep} from a pod read etcd: {text}"
            );
        }
    }
    // The daemons, with the Secret's certificate, did.
    assert_eq!(published(&c).len(), 2);
}

#[test]
fn the_underlay_is_the_kubelets_node_address_not_the_default_routes() {
    ferry_tests::needs_root!();
    let mut c = KindCluster::create(Family::Ipv4, 2, Backend::Nft);
    // As Vagrant makes VMs: every node's default route on a NAT interface with the same
    // address everywhere, the cluster's network on another.
    for n in &c.nodes {
        n.host.sh(
            "ip link add eth1 type veth peer name eth1nat && ip link set eth1nat up && \
             ip addr add 10.0.2.15/24 dev eth1 && ip link set eth1 up && \
             ip route replace default via 10.0.2.2 dev eth1",
        );
    }
    c.install(image::ferry(), READY);
    let json = c.ferry_ipam_json(1, "leases");
    let mut ips: Vec<String> = json["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| l["publicIp"].as_str().unwrap_or_default().to_string())
        .collect();
    ips.sort();
    let mut want: Vec<String> = c.nodes.iter().map(|n| n.ips[0].clone()).collect();
    want.sort();
    assert_eq!(ips, want, "{json}");
    let a = c.run_pod(1, "default", "a", &[]);
    let b = c.run_pod(2, "default", "b", &[]);
    let (a_st, b_st) = (c.wait_ready(&a, READY), c.wait_ready(&b, READY));
    let (a_ns, b_ns) = (c.pod_netns(&a), c.pod_netns(&b));
    let _srv = echo_peer_server(&b_ns, PORT);
    let seen = seen_from(&a_ns, &a_st.ip, &b_st.ip, PORT);
    assert!(seen, "pods on two nodes do not talk:\n{}", c.describe());
}

#[test]
fn an_ipv6_only_cluster_has_an_ipv6_underlay_and_its_mtu() {
    ferry_tests::needs_root!();
    let mut c = KindCluster::create(Family::Ipv6, 1, Backend::Nft);
    c.install(image::ferry(), READY);
    let json = c.ferry_ipam_json(0, "leases");
    for l in json["leases"].as_array().expect("leases") {
        let ip = l["publicIp"].as_str().unwrap_or_default();
        assert!(ip.contains(':'), "an IPv4 underlay address: {json}");
    }
    let state: Value = serde_json::from_slice(
        &std::fs::read(c.nodes[1].path("/run/ferry/node.json")).expect("node.json"),
    )
    .expect("node.json");
    let mtu = c.nodes[1].host.sh("cat /sys/class/net/eth0/mtu");
    let mtu: u64 = mtu.trim().parse().expect("mtu");
    assert_eq!(state["mtu"], mtu - 70, "{state}");
    assert!(
        state["podCIDR"].is_null() && state["podCIDRv6"].is_string(),
        "{state}"
    );
    let a = c.run_pod(0, "default", "a", &[]);
    let b = c.run_pod(1, "default", "b", &[]);
    let (a_st, b_st) = (c.wait_ready(&a, READY), c.wait_ready(&b, READY));
    assert!(
        a_st.ip.contains(':') && !a_st.ip.contains('.'),
        "{}",
        a_st.ip
    );
    let (a_ns, b_ns) = (c.pod_netns(&a), c.pod_netns(&b));
    let _srv = ferry_tests::proc::echo_peer_server_on(&b_ns, "::", PORT);
    let seen = seen_from(&a_ns, &a_st.ip, &b_st.ip, PORT);
    assert!(
        seen,
        "IPv6 pods on two nodes do not talk:\n{}",
        c.describe()
    );
}

#[test]
fn a_slow_start_waits_for_etcd_without_restarts_and_a_killed_daemon_is_back_at_once() {
    ferry_tests::needs_root!();
    let mut c = KindCluster::create(Family::Ipv4, 1, Backend::Nft);
    // etcd comes last: the daemons start with nothing to talk to.
    let mut held = Vec::new();
    c.install_with(image::ferry(), ETCD, |o| {
        held = o
            .iter()
            .filter(|x| x["kind"] == "Deployment")
            .cloned()
            .collect();
        o.retain(|x| x["kind"] != "Deployment");
    });
    // Three liveness periods and more: a daemon killed by its probe would show a restart.
    std::thread::sleep(Duration::from_secs(40));
    for i in 0..c.nodes.len() {
        let (code, body) = readyz(&c, i);
        assert!(code == 503 && body.contains("etcd"), "{code} {body}");
        assert!(!c.nodes[i].path("/etc/cni/net.d/00-ferry.conflist").exists());
        assert!(
            !c.nodes[i].network_ready().0,
            "NetworkReady without ferry ready"
        );
        let uid = c.ferry_pod(i).metadata.uid.unwrap_or_default();
        let st = c.status(&uid).expect("status");
        assert_eq!((st.restarts(), st.backoffs()), (0, 0), "{}", c.describe());
    }
    c.apply(&held);
    c.wait_all_ready(READY);
    assert!(c.nodes_network_ready().iter().all(|(_, r, _)| *r));

    // SIGKILL: the runtime starts it again at once, and it proves it is this node's own.
    let uid = c.ferry_pod(1).metadata.uid.unwrap_or_default();
    let pids: Vec<i32> = ferry_tests::cri::procs::of_node(c.nodes[1].holder_pid())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "ferry-overlayd")
        })
        .collect();
    assert_eq!(pids.len(), 1, "one daemon on the node: {pids:?}");
    let pid = pids[0];
    let t0 = Instant::now();
    c.nodes[1].sh(&format!("kill -KILL {pid}"));
    let restarted = wait_until(Duration::from_secs(10), || {
        c.status(&uid).is_some_and(|s| s.restarts() == 1)
    });
    assert!(restarted, "{}", c.describe());
    let back = wait_until(Duration::from_secs(20), || {
        readyz(&c, 1).0 == 200
            && c.status(&uid)
                .is_some_and(|s| s.containers["ferry-overlayd"].running)
    });
    let took = t0.elapsed();
    assert!(back, "{}", c.describe());
    eprintln!("SIGKILL -> restarted daemon ready: {took:?}");
    assert!(
        took < Duration::from_secs(8),
        "{took:?}: it waited for its own key to expire:\n{}",
        c.describe()
    );
    let probe = c.probe_first_add(1, Duration::from_secs(20));
    assert!(probe.join().expect("prober").is_ok());
}

#[test]
fn on_a_legacy_iptables_node_ferrys_chains_are_in_legacy() {
    ferry_tests::needs_root!();
    let mut c = KindCluster::create_with(
        Family::Ipv4,
        &[Backend::Legacy, Backend::Legacy, Backend::Nft],
    );
    c.install(image::ferry(), READY);
    for (i, n) in c.nodes.iter().enumerate() {
        let legacy = n.host.sh("iptables-legacy-save -t nat");
        let nft =
            String::from_utf8_lossy(&n.host.try_sh("iptables-nft-save -t nat").stdout).to_string();
        let (want, not) = match n.backend {
            Backend::Legacy => (&legacy, &nft),
            Backend::Nft => (&nft, &legacy),
        };
        assert!(
            want.contains("FERRY-POSTRTG"),
            "node {i} ({:?}): {want}",
            n.backend
        );
        assert!(
            !not.contains("FERRY-POSTRTG"),
            "node {i} ({:?}), other backend: {not}",
            n.backend
        );
    }
    // Masquerade to the outside works there (the chains are where kube-proxy's are).
    let uid = c.run_pod(1, "default", "out", &[]);
    c.wait_ready(&uid, READY);
    let ns = c.pod_netns(&uid);
    let _srv = echo_peer_server(&c.outside, PORT);
    let seen = seen_from(
        &ns,
        &c.nodes[1].ips[0],
        ferry_tests::cluster::OUTSIDE_IP,
        PORT,
    );
    assert!(seen, "pod -> outside not masqueraded on a legacy node");
}

#[test]
fn ferrys_config_sorts_before_other_cnis_leftovers() {
    ferry_tests::needs_root!();
    let mut c = KindCluster::create(Family::Ipv4, 1, Backend::Nft);
    // What another CNI, or containerd's own package, leaves behind: a bridge network on
    // 10.88.0.0/16 that would work, and configs of plugins that are not there.
    let leftovers = [
        (
            "05-cilium.conflist",
            r#"{"cniVersion":"0.3.1","name":"cilium","plugins":[{"type":"cilium-cni"}]}"#,
        ),
        (
            "10-calico.conflist",
            r#"{"cniVersion":"0.3.1","name":"k8s-pod-network","plugins":[{"type":"calico"}]}"#,
        ),
        (
            "10-containerd-net.conflist",
            r#"{"cniVersion":"1.0.0","name":"containerd-net","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16"}]]}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        ),
    ];
    for n in &c.nodes {
        for (name, text) in leftovers {
            std::fs::write(n.path(&format!("/etc/cni/net.d/{name}")), text).expect("leftover");
        }
    }
    c.install(image::ferry(), READY);
    for n in &c.nodes {
        let loaded = wait_until(Duration::from_secs(20), || {
            n.cri()
                .cni_network()
                .is_some_and(|(name, _)| name == "ferry")
        });
        assert!(
            loaded,
            "{}: the runtime uses {:?}",
            n.name,
            n.cri().cni_network()
        );
    }
    let uid = c.run_pod(1, "default", "p", &[]);
    let st = c.wait_ready(&uid, READY);
    assert!(
        st.ip.starts_with("10.244."),
        "a pod got {} from a leftover config",
        st.ip
    );
}
