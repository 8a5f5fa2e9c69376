//! ferry the way kubelet drives it through containerd's CRI, on kind-like nodes
//! (`ferry_tests::kind`): ferry installed from the shipped manifests (its image, the
//! DaemonSet's containers run by each node's containerd), workload pods made by the
//! kubelet stand-in (RunPodSandbox with the pod spec's hostPorts; StopPodSandbox, then
//! RemovePodSandbox, when a pod is deleted). What ferry owes the runtime: pods reaching
//! each other and the outside, hostPort, the pod's identity from CNI_ARGS, a clean
//! teardown, no packet lost while containerd or ferry-overlayd restarts, and a working
//! network with every conflist version the ConfigMap may hold.
//!
//! That the runtime reports the network ready only once ferry-overlayd is (the daemon
//! writes the conflist once the node can add pods) is proven in kind_install.rs
//! (`without_prepare_node_the_daemon_says_why_and_publishes_nothing`,
//! `a_slow_start_waits_for_etcd_without_restarts_and_a_killed_daemon_is_back_at_once`) and
//! kind_lifecycle.rs (`install_from_nothing_makes_every_node_ready_and_pods_talk_and_obey_policy`).

use std::time::Duration;

use ferry_tests::cluster::OUTSIDE_IP;
use ferry_tests::kind::{image, Backend, Family, KindCluster};
use ferry_tests::netns::Netns;
use ferry_tests::proc::{assert_pods_talk, connect, echo_peer_server, wait_until};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

const PORT: u16 = 7000;
const READY: Duration = Duration::from_secs(120);

/// A control plane and `workers` workers, ferry installed from deploy/kubernetes and
/// every pod of it Ready.
fn cluster(workers: usize) -> KindCluster {
    let mut c = KindCluster::create(Family::Ipv4, workers, Backend::Nft);
    c.install(image::ferry(), READY);
    c
}

/// A workload pod on node `i`, Ready: its uid, network namespace and address.
fn pod(c: &mut KindCluster, i: usize, ns: &str, name: &str) -> (String, Netns, String) {
    let uid = c.run_pod(i, ns, name, &[]);
    let st = c.wait_ready(&uid, READY);
    (uid.clone(), c.pod_netns(&uid), st.ip)
}

/// Node `i`'s pod subnet, from the node state ferry-overlayd wrote.
fn subnet(c: &KindCluster, i: usize) -> String {
    let path = c.nodes[i].path("/run/ferry/node.json");
    let v: Value = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("node.json parses");
    v["podCIDR"].as_str().unwrap_or_default().to_string()
}

fn in_subnet(ip: &str, subnet: &str) -> bool {
    let net: ipnetwork::Ipv4Network = subnet.parse().expect("subnet");
    ip.parse().is_ok_and(|a| net.contains(a))
}

fn allocations(c: &KindCluster, i: usize) -> Vec<Value> {
    c.ferry_ipam_json(i, "show")["allocations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Node `i` holds no pod's address and no pod's host veth (ferry's own pods are on the
/// host network).
fn assert_released(c: &KindCluster, i: usize) {
    let n = &c.nodes[i];
    let clean = wait_until(Duration::from_secs(10), || {
        allocations(c, i).is_empty() && n.ferry_links().is_empty()
    });
    assert!(
        clean,
        "{}: {:?} / {:?}",
        n.name,
        allocations(c, i),
        n.ferry_links()
    );
}

/// Deletes each pod (its node, its uid), its node's address and veth freed after each;
/// then containerd (the control plane's) has logged no failed network teardown.
fn delete_cleanly(c: &mut KindCluster, pods: &[(usize, &str)]) {
    for (i, uid) in pods {
        c.delete_pod(uid);
        assert_released(c, *i);
    }
    let log = c.nodes[0].log("containerd");
    assert!(!log.contains("failed to destroy network"), "{log}");
}

#[test]
fn pods_made_through_the_cri_reach_each_other_and_the_outside() {
    ferry_tests::needs_root!();
    let mut c = cluster(2);
    let mut pods = Vec::new();
    for i in 0..c.nodes.len() {
        for k in 0..2 {
            let (_, ns, ip) = pod(&mut c, i, "default", &format!("p{i}{k}"));
            assert!(
                in_subnet(&ip, &subnet(&c, i)),
                "{ip} of p{i}{k} not in its node's lease {}",
                subnet(&c, i)
            );
            pods.push((i, ns, ip));
        }
    }
    let talking: Vec<(&Netns, &str)> = pods.iter().map(|(_, ns, ip)| (ns, ip.as_str())).collect();
    assert_pods_talk(&talking, PORT);
    let _outside = echo_peer_server(&c.outside, PORT);
    for (i, a, a_ip) in &pods {
        let node_ip = c.nodes[*i].ips[0].as_str();
        assert_eq!(
            connect(a, OUTSIDE_IP, PORT).as_deref(),
            Some(node_ip),
            "{a_ip} -> outside must be masqueraded to its node's address"
        );
    }
}

#[test]
fn host_port_stop_and_remove() {
    ferry_tests::needs_root!();
    let mut c = cluster(0);
    // A workload whose container asks for a hostPort: kubelet hands it to the runtime as
    // the sandbox's port mapping, which the conflist's portmap makes.
    let web: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{
            "name": "web",
            "image": ferry_tests::cri::image::IMAGE,
            "ports": [{"containerPort": PORT, "hostPort": 18080}]
        }]}
    }))
    .expect("pod");
    let uid = c.schedule(0, web);
    let st = c.wait_ready(&uid, READY);
    let ns = c.pod_netns(&uid);
    let _srv = echo_peer_server(&ns, PORT);
    let node_ip = c.nodes[0].ips[0].clone();
    let reached = wait_until(Duration::from_secs(10), || {
        connect(&c.outside, &node_ip, 18080).is_some()
    });
    assert!(
        reached,
        "hostPort 18080 of the pod spec does not reach the pod from outside the node"
    );

    // The pod's identity from CNI_ARGS is recorded with its address.
    let show = c.ferry_ipam_json(0, "show");
    let a = show["allocations"]
        .as_array()
        .and_then(|v| v.iter().find(|a| a["ip"] == st.ip.as_str()).cloned())
        .unwrap_or_else(|| panic!("{} not in {show}", st.ip));
    assert_eq!(a["pod"]["namespace"], "shop", "{a}");
    assert_eq!(a["pod"]["name"], "web", "{a}");
    assert_eq!(a["pod"]["uid"], uid.as_str(), "{a}");

    // Deleted: StopPodSandbox (DEL with the cached prevResult) frees the address and the
    // veth; RemovePodSandbox's second DEL (no netns, no prevResult) succeeds.
    drop(ns);
    delete_cleanly(&mut c, &[(0, uid.as_str())]);
}

#[test]
fn restarts_of_containerd_and_of_the_daemon_keep_pods_connected() {
    ferry_tests::needs_root!();
    let mut c = cluster(1);
    let (a_uid, a, _) = pod(&mut c, 0, "default", "a");
    let (b_uid, _, b_ip) = pod(&mut c, 1, "default", "b");

    // containerd restarted: the pods keep their network, and are torn down cleanly after.
    let (sent, got) =
        ferry_tests::proc::ping_through(&a, &b_ip, || c.nodes[0].restart_containerd());
    assert_eq!(sent, got, "packets lost across a containerd restart");

    // ferry-overlayd restarted on both nodes: each node's ferry pod deleted and the
    // DaemonSet's new one Ready before the next node (its RollingUpdate, same template).
    let old: Vec<String> = (0..c.nodes.len())
        .map(|i| c.ferry_pod(i).metadata.uid.unwrap_or_default())
        .collect();
    let ds = c.object("DaemonSet", "ferry");
    let mut took = Vec::new();
    let (sent, got) =
        ferry_tests::proc::ping_through(&a, &b_ip, || took = c.rolling_update(&ds, READY));
    eprintln!("ferry-overlayd restarts: {sent} pings sent, {got} received; per node {took:?}");
    assert_eq!(
        sent,
        got,
        "packets lost across ferry-overlayd restarts:\n{}",
        c.describe()
    );
    for (i, old) in old.iter().enumerate() {
        let new = c.ferry_pod(i).metadata.uid.unwrap_or_default();
        assert_ne!(
            &new, old,
            "{}: the ferry pod was not replaced",
            c.nodes[i].name
        );
    }

    drop(a);
    delete_cleanly(&mut c, &[(0, a_uid.as_str()), (1, b_uid.as_str())]);
}

/// The conflist versions the ConfigMap's `cni-conflist` is set to, each installed by
/// ferry-overlayd as 00-ferry.conflist and loaded by containerd: the shipped one (1.0.0)
/// and the same chain in the versions around it. A 1.1.0 conflist does not work with
/// containerd 1.6 and Debian's reference plugins 1.1.1: the runtime refuses ferry's 1.1.0
/// result, then portmap (which reads configs up to 1.0.0) fails the cleanup DEL, so
/// ferry's DEL is never run and the sandbox is left "unknown". Back on the shipped
/// conflist, the runtime's garbage collection (stop and remove every dead sandbox, as
/// kubelet's does) cleans it up.
#[test]
fn every_conflist_version_works_under_containerd() {
    ferry_tests::needs_root!();
    let mut c = cluster(0);
    let config = c.object("ConfigMap", "ferry-config");
    let shipped: Value = serde_json::from_str(
        config["data"]["cni-conflist"]
            .as_str()
            .expect("the ConfigMap's cni-conflist"),
    )
    .expect("cni-conflist is JSON");
    let old_runtime = c.nodes[0].log("containerd").contains("1.6.");
    let mut pods = Vec::new();
    for version in ["0.4.0", "1.1.0", "1.0.0"] {
        let mut conf = shipped.clone();
        conf["cniVersion"] = version.into();
        let text = serde_json::to_string_pretty(&conf).expect("conflist");
        c.update_config_map("kube-system", "ferry-config", |data| {
            data.insert("cni-conflist".into(), text.clone());
        });
        let node = &c.nodes[0];
        let installed = node.path("/etc/cni/net.d/00-ferry.conflist");
        let loaded = wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(&installed).is_ok_and(|t| t == text)
                && node
                    .cri()
                    .cni_network()
                    .is_some_and(|(name, v)| name == "ferry" && v == version)
        });
        assert!(
            loaded,
            "the {version} conflist was not installed and loaded: {:?} {:?}\n{}",
            std::fs::read_to_string(&installed),
            node.cri().cni_network(),
            c.describe()
        );
        let name = format!("v{}", version.replace('.', ""));
        let uid = c.run_pod(0, "default", &name, &[]);
        if version == "1.1.0" && old_runtime {
            let refused = wait_until(Duration::from_secs(30), || {
                c.status(&uid).is_some_and(|s| {
                    s.events
                        .iter()
                        .any(|e| e.contains("unsupported CNI result version"))
                })
            });
            assert!(
                refused,
                "containerd 1.6 cannot read a 1.1.0 result:\n{}\ncontainerd: {}",
                c.describe(),
                c.nodes[0].log("containerd")
            );
            assert!(c.status(&uid).is_some_and(|s| !s.ready()));
            c.delete_pod(&uid);
            continue;
        }
        let st = c.wait_ready(&uid, READY);
        assert!(
            in_subnet(&st.ip, &subnet(&c, 0)),
            "{version}: {} not in {}",
            st.ip,
            subnet(&c, 0)
        );
        pods.push(uid);
    }
    for uid in &pods {
        c.delete_pod(uid);
    }
    let cri = c.nodes[0].cri();
    for id in cri.not_ready_pods().expect("ListPodSandbox") {
        cri.stop_pod(&id).expect("StopPodSandbox");
        cri.remove_pod(&id).expect("RemovePodSandbox");
    }
    assert_released(&c, 0);
}
