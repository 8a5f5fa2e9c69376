//! ferry the way kubelet drives it: through containerd's CRI (RunPodSandbox,
//! StopPodSandbox, RemovePodSandbox, Status), on nodes made of namespaces, each with its
//! own containerd, ferry installed by the real install script with the shipped conflist
//! and `ferry-overlayd` run with the DaemonSet's args and env. Kubernetes itself cannot run
//! on these machines; the CRI client here makes the calls a kubelet makes.

use std::time::Duration;

use ferry_tests::cluster::{Cluster, OUTSIDE_IP};
use ferry_tests::cri::{wait_converged, CriNode, CriPod, PodSpec};
use ferry_tests::proc::{connect, echo_peer_server, wait_until, Bg};
use ferry_tests::root_or_skip;

macro_rules! needs_root {
    () => {
        if !root_or_skip(module_path!()) {
            return;
        }
    };
}

/// The ConfigMap's cluster CIDR.
const CIDR: &str = "10.244.0.0/16";
const PORT: u16 = 7000;

/// `n` CRI nodes with ferry installed and its daemon ready, on one cluster.
fn cri_cluster(n: usize) -> (Cluster, Vec<CriNode>) {
    let c = Cluster::new(0, CIDR);
    let nodes: Vec<CriNode> = (0..n)
        .map(|i| {
            let mut node = CriNode::start(&c, i);
            node.install_ferry();
            node.start_overlayd();
            node
        })
        .collect();
    wait_converged(&nodes);
    (c, nodes)
}

fn in_subnet(ip: &str, subnet: &str) -> bool {
    let net: ipnetwork::Ipv4Network = subnet.parse().expect("subnet");
    ip.parse().is_ok_and(|a| net.contains(a))
}

#[test]
fn network_ready_follows_the_install_and_the_daemon() {
    needs_root!();
    let c = Cluster::new(0, CIDR);
    let mut node = CriNode::start(&c, 0);
    let (ready, why) = node.wait_network_ready(false, Duration::from_secs(5));
    assert!(!ready, "NetworkReady before any CNI config: {why}");
    node.install_ferry();
    let (ready, why) = node.wait_network_ready(true, Duration::from_secs(15));
    assert!(ready, "NetworkReady never came after install-cni.sh: {why}");

    // containerd 1.6 does not call CNI STATUS, so a node whose daemon has not written its
    // state yet is "ready"; the pod's ADD then fails with ferry's message (code 11), which
    // is what kubelet shows in the pod's events.
    let err = node
        .run_pod(PodSpec::new("default", "early"))
        .err()
        .expect("a pod before ferry-overlayd is ready");
    assert!(
        err.message().contains("node state") && err.message().contains("ferry-overlayd"),
        "{err:?}"
    );

    node.start_overlayd();
    let pod = node
        .run_pod(PodSpec::new("default", "first"))
        .expect("RunPodSandbox");
    assert!(
        in_subnet(&pod.ip, &node.subnet()),
        "{} not in {}",
        pod.ip,
        node.subnet()
    );
}

#[test]
fn pods_made_through_the_cri_reach_each_other_and_the_outside() {
    needs_root!();
    let (c, nodes) = cri_cluster(3);
    let pods: Vec<(usize, CriPod)> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| {
            (0..2).map(move |k| {
                let p = n
                    .run_pod(PodSpec::new("default", &format!("p{i}{k}")))
                    .unwrap_or_else(|e| panic!("RunPodSandbox on {}: {e:?}", n.name));
                (i, p)
            })
        })
        .collect();
    for (i, p) in &pods {
        assert!(
            in_subnet(&p.ip, &nodes[*i].subnet()),
            "{} of {} not in its node's lease {}",
            p.ip,
            p.spec.name,
            nodes[*i].subnet()
        );
    }
    let _servers: Vec<Bg> = pods
        .iter()
        .map(|(_, p)| echo_peer_server(&p.ns, PORT))
        .collect();
    let _outside = echo_peer_server(&c.outside, PORT);
    for (i, a) in &pods {
        for (_, b) in &pods {
            if a.id == b.id {
                continue;
            }
            assert_eq!(
                connect(&a.ns, &b.ip, PORT).as_deref(),
                Some(a.ip.as_str()),
                "{} -> {}: the server must see the client's own pod IP",
                a.spec.name,
                b.spec.name
            );
        }
        assert_eq!(
            connect(&a.ns, OUTSIDE_IP, PORT).as_deref(),
            Some(nodes[*i].ip.as_str()),
            "{} -> outside must be masqueraded to its node's address",
            a.spec.name
        );
    }
}

#[test]
fn host_port_stop_and_remove() {
    needs_root!();
    let (c, nodes) = cri_cluster(1);
    let node = &nodes[0];
    let mut spec = PodSpec::new("shop", "web");
    spec.host_ports = vec![(18080, PORT)];
    let pod = node.run_pod(spec).expect("RunPodSandbox");
    let _srv = echo_peer_server(&pod.ns, PORT);
    assert!(
        connect(&c.outside, &node.ip, 18080).is_some(),
        "hostPort 18080 of the pod spec does not reach the pod from outside the node"
    );

    // The pod's identity from CNI_ARGS is recorded with its address.
    let show = node.ipam_show();
    let a = show["allocations"]
        .as_array()
        .and_then(|v| v.iter().find(|a| a["ip"] == pod.ip.as_str()).cloned())
        .unwrap_or_else(|| panic!("{} not in {show}", pod.ip));
    assert_eq!(a["pod"]["namespace"], "shop", "{a}");
    assert_eq!(a["pod"]["name"], "web", "{a}");
    assert_eq!(a["pod"]["uid"], "uid-shop-web", "{a}");

    // StopPodSandbox: DEL with the cached prevResult frees the address and the veth.
    node.cri.stop_pod(&pod.id).expect("StopPodSandbox");
    let freed = wait_until(Duration::from_secs(5), || {
        node.ipam_show()["allocations"]
            .as_array()
            .is_some_and(Vec::is_empty)
            && node.ferry_links().is_empty()
    });
    assert!(
        freed,
        "after StopPodSandbox: {} / {:?}",
        node.ipam_show(),
        node.ferry_links()
    );
    // RemovePodSandbox: the second DEL (no netns, no prevResult) succeeds.
    node.cri.remove_pod(&pod.id).expect("RemovePodSandbox");
    assert!(
        !node.log("containerd").contains("failed to destroy network"),
        "{}",
        node.log("containerd")
    );
}

/// A ping every 20 ms from `from` to `to` while `f` runs; (sent, received).
fn ping_through(from: &CriPod, to: &str, f: impl FnOnce()) -> (u32, u32) {
    let log = tempfile::NamedTempFile::new().expect("log");
    let ping = Bg::spawn_logged(&from.ns, &format!("ping -i 0.02 -W 1 {to}"), log.path());
    std::thread::sleep(Duration::from_millis(500));
    f();
    std::thread::sleep(Duration::from_millis(500));
    ping.stop(libc::SIGINT, Duration::from_secs(5));
    let out = std::fs::read_to_string(log.path()).unwrap_or_default();
    let stat = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {out}"));
    let n = |word: &str| -> u32 {
        stat.split(',')
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    (n("transmitted"), n("received"))
}

#[test]
fn restarts_of_containerd_and_of_the_daemon_keep_pods_connected() {
    needs_root!();
    let (_c, mut nodes) = cri_cluster(2);
    let a = nodes[0]
        .run_pod(PodSpec::new("default", "a"))
        .expect("RunPodSandbox a");
    let b = nodes[1]
        .run_pod(PodSpec::new("default", "b"))
        .expect("RunPodSandbox b");

    // containerd restarted: the pods keep their network, and are torn down cleanly after.
    let (sent, got) = ping_through(&a, &b.ip, || {
        nodes[0].stop_containerd();
        std::thread::sleep(Duration::from_millis(300));
        nodes[0].start_containerd();
    });
    assert_eq!(sent, got, "packets lost across a containerd restart");

    // ferry-overlayd restarted on both nodes: zero loss.
    let (sent, got) = ping_through(&a, &b.ip, || {
        for n in nodes.iter_mut() {
            assert_eq!(n.stop_overlayd(), Some(0));
            n.start_overlayd();
        }
    });
    assert_eq!(sent, got, "packets lost across ferry-overlayd restarts");

    for (n, p) in [(&nodes[0], &a), (&nodes[1], &b)] {
        n.cri.stop_pod(&p.id).expect("StopPodSandbox");
        n.cri.remove_pod(&p.id).expect("RemovePodSandbox");
        let clean = wait_until(Duration::from_secs(5), || n.ferry_links().is_empty());
        assert!(clean, "{}: {:?}", n.name, n.ferry_links());
        assert_eq!(
            n.ipam_show()["allocations"],
            serde_json::json!([]),
            "{}",
            n.name
        );
    }
}

/// The conflist versions containerd's CRI is run with here: the shipped one (1.0.0) and the
/// same chain in the versions around it. A 1.1.0 conflist does not work with containerd 1.6
/// and Debian's reference plugins 1.1.1: the runtime refuses ferry's 1.1.0 result, then
/// portmap (which reads configs up to 1.0.0) fails the cleanup DEL, so ferry's DEL is never
/// run and the sandbox is left "unknown". Back on the shipped conflist, the runtime's own
/// garbage collection (stop and remove every sandbox, as kubelet does) cleans it up.
#[test]
fn every_conflist_version_works_under_containerd() {
    needs_root!();
    let (_c, nodes) = cri_cluster(1);
    let node = &nodes[0];
    let shipped = ferry_tests::manifest::shipped_conflist();
    let old_runtime = node.log("containerd").contains("1.6.");
    for version in ["0.4.0", "1.1.0", "1.0.0"] {
        let mut conf = shipped.clone();
        conf["cniVersion"] = version.into();
        std::fs::write(
            node.path("/etc/cni/net.d/10-ferry.conflist"),
            conf.to_string(),
        )
        .expect("write conflist");
        let loaded = wait_until(Duration::from_secs(20), || {
            node.cri.cni_network().is_some_and(|(_, v)| v == version)
        });
        assert!(loaded, "containerd did not load the {version} conflist");
        let ran = node.run_pod(PodSpec::new(
            "default",
            &format!("v{}", version.replace('.', "")),
        ));
        if version == "1.1.0" && old_runtime {
            let e = ran
                .err()
                .expect("containerd 1.6 cannot read a 1.1.0 result");
            assert!(
                e.message().contains("unsupported CNI result version"),
                "{e:?}"
            );
            continue;
        }
        let pod = ran.unwrap_or_else(|e| panic!("RunPodSandbox with a {version} conflist: {e:?}"));
        assert!(in_subnet(&pod.ip, &node.subnet()), "{version}: {}", pod.ip);
    }
    for id in node.cri.list_pods().expect("ListPodSandbox") {
        node.cri.stop_pod(&id).expect("StopPodSandbox");
        node.cri.remove_pod(&id).expect("RemovePodSandbox");
    }
    let clean = wait_until(Duration::from_secs(5), || node.ferry_links().is_empty());
    assert!(clean, "{:?}", node.ferry_links());
    assert_eq!(node.ipam_show()["allocations"], serde_json::json!([]));
}
