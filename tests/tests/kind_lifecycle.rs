//! The life of a ferry install as a cluster operator lives it, on kind-like nodes
//! (`ferry_tests::kind`): ferry's image built from the Dockerfile's recipe, the shipped
//! kustomizations applied as `kubectl apply -k` applies them, every init container and
//! container run through the node's containerd (CRI) with the manifest's command, env,
//! securityContext, mounts and probes, the API reached in-cluster with the manifest's
//! RBAC enforced. Install from nothing, a rolling upgrade, a node reboot, the uninstall and
//! a reinstall. Kubernetes' control plane is played by the test (no API server, kubelet
//! or kind runs on these machines): see tests/README or `ferry_tests::kind::cluster`.

use std::time::{Duration, Instant};

use ferry_tests::kind::{image, Backend, Family, KindCluster};
use ferry_tests::netns::Netns;
use ferry_tests::proc::{connect, echo_peer_server, seen_from, wait_until};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::NetworkPolicy;

const PORT: u16 = 7000;
const READY: Duration = Duration::from_secs(120);

/// Every node's ferry pod, with 0 restarts and no back-off: nothing crashed or was killed
/// by a probe.
fn assert_no_restarts(c: &KindCluster) {
    for i in 0..c.nodes.len() {
        let uid = c.ferry_pod(i).metadata.uid.unwrap_or_default();
        let st = c.status(&uid).expect("status");
        assert_eq!(
            (st.restarts(), st.backoffs()),
            (0, 0),
            "{}: ferry's containers restarted:\n{}",
            c.nodes[i].name,
            c.describe()
        );
    }
}

/// Every request ferry made to the API was allowed by its ClusterRole.
fn assert_api_allowed(c: &KindCluster) {
    let denied = c.api.denied_requests();
    assert!(
        denied.is_empty(),
        "requests outside ferry's RBAC: {denied:?}"
    );
    let users: Vec<String> = c
        .api
        .requests()
        .into_iter()
        .filter_map(|r| r.user)
        .collect();
    assert!(
        users
            .iter()
            .any(|u| u == "system:serviceaccount:kube-system:ferry"),
        "ferry never reached the API in-cluster: {users:?}"
    );
}

/// A workload pod on node `i`, Ready: its uid, namespace handle and first address.
fn pod(
    c: &mut KindCluster,
    i: usize,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> (String, Netns, String) {
    let uid = c.run_pod(i, ns, name, labels);
    let st = c.wait_ready(&uid, READY);
    let ip = st.ip.split(',').next().unwrap_or_default().to_string();
    (uid.clone(), c.pod_netns(&uid), ip)
}

/// Pods on every node reach each other, each seen with its own address.
fn assert_pods_talk(pods: &[(String, Netns, String)]) {
    let pods: Vec<(&Netns, &str)> = pods.iter().map(|(_, ns, ip)| (ns, ip.as_str())).collect();
    ferry_tests::proc::assert_pods_talk(&pods, PORT);
}

/// The `ferry.dev/` annotations of `node`.
fn ferry_annotations(node: &Node) -> Vec<String> {
    node.metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .filter(|k| k.starts_with("ferry.dev/"))
        .collect()
}

fn deny_all_ingress(ns: &str) -> NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-all", "namespace": ns},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    }))
    .expect("policy")
}

#[test]
fn install_from_nothing_makes_every_node_ready_and_pods_talk_and_obey_policy() {
    ferry_tests::needs_root!();
    let mut c = KindCluster::create(Family::Ipv4, 2, Backend::Nft);
    for (name, ready, why) in c.nodes_network_ready() {
        assert!(
            !ready,
            "{name} NetworkReady before ferry is installed: {why}"
        );
    }
    let img = image::ferry();
    let probes: Vec<_> = (0..c.nodes.len())
        .map(|i| c.probe_first_add(i, READY))
        .collect();
    c.install(img, READY);
    let mut firsts = Vec::new();
    for (i, p) in probes.into_iter().enumerate() {
        let added = p
            .join()
            .expect("prober")
            .unwrap_or_else(|e| panic!("no pod ADD after the install: {e}\n{}", c.describe()));
        let started = c.daemon_started(i).expect("daemon started");
        firsts.push(added.saturating_duration_since(started));
    }
    eprintln!("daemon container started -> first pod ADD succeeded, per node: {firsts:?}");
    let ok = wait_until(Duration::from_secs(10), || {
        c.nodes_network_ready().iter().all(|(_, ready, _)| *ready)
    });
    assert!(ok, "{:?}\n{}", c.nodes_network_ready(), c.describe());
    for n in &c.nodes {
        let sysctls = n
            .host
            .sh("sysctl -n net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables");
        assert_eq!(
            sysctls.split_whitespace().collect::<Vec<_>>(),
            ["1", "1"],
            "{}",
            n.name
        );
    }

    let pods: Vec<_> = (0..c.nodes.len())
        .map(|i| pod(&mut c, i, "default", &format!("p{i}"), &[("app", "p")]))
        .collect();
    assert_pods_talk(&pods);

    // NetworkPolicy, enforced from the API reached in-cluster.
    let (_, guarded_ns, guarded_ip) = pod(&mut c, 1, "guarded", "g", &[("app", "g")]);
    let _srv = echo_peer_server(&guarded_ns, PORT);
    let from = &pods[2].1;
    assert!(wait_until(Duration::from_secs(10), || connect(
        from,
        &guarded_ip,
        PORT
    )
    .is_some()));
    c.api.create(deny_all_ingress("guarded")).expect("policy");
    let closed = wait_until(Duration::from_secs(10), || {
        connect(from, &guarded_ip, PORT).is_none()
    });
    assert!(closed, "NetworkPolicy not enforced:\n{}", c.describe());
    assert_no_restarts(&c);
    assert_api_allowed(&c);
}

#[test]
fn a_rolling_upgrade_loses_no_ping() {
    ferry_tests::needs_root!();
    let mut c = KindCluster::create(Family::Ipv4, 2, Backend::Nft);
    c.install(image::ferry(), READY);
    let (_, a, _) = pod(&mut c, 1, "default", "a", &[]);
    let (_, _, b_ip) = pod(&mut c, 2, "default", "b", &[]);
    let next = image::ferry_next();
    c.load(next, "ferry:next");
    let mut ds = c.object("DaemonSet", "ferry");
    ferry_tests::kind::kustomize::set_image(
        std::slice::from_mut(&mut ds),
        "ferry",
        None,
        Some("next"),
    );
    let mut took = Vec::new();
    let (sent, got) = ferry_tests::proc::ping_through(&a, &b_ip, || {
        took = c.rolling_update(&ds, READY);
    });
    eprintln!("rolling upgrade: {sent} pings sent, {got} received; per node {took:?}");
    assert_eq!(
        sent,
        got,
        "pings lost in the rolling upgrade:\n{}",
        c.describe()
    );
    assert!(
        sent > 50,
        "the upgrade was too quick to prove anything: {sent}"
    );
    for i in 0..c.nodes.len() {
        let p = c.ferry_pod(i);
        let image = &p.spec.as_ref().expect("spec").containers[0].image;
        assert_eq!(image.as_deref(), Some("ferry:next"));
    }
    assert_no_restarts(&c);
    assert_api_allowed(&c);
}

#[test]
fn a_rebooted_node_has_its_pods_networked_within_seconds_of_the_daemon() {
    ferry_tests::needs_root!();
    let mut c = KindCluster::create(Family::Ipv4, 2, Backend::Nft);
    c.install(image::ferry(), READY);
    let (_, a, a_ip) = pod(&mut c, 1, "default", "a", &[]);
    let (b_uid, _, _) = pod(&mut c, 2, "default", "b", &[]);
    let t0 = Instant::now();
    c.reboot(2);
    let probe = c.probe_first_add(2, READY);
    let b = c.wait_ready(&b_uid, READY);
    let started = c
        .daemon_started(2)
        .expect("daemon started after the reboot");
    let first_add = probe
        .join()
        .expect("prober")
        .unwrap_or_else(|e| panic!("no ADD after the reboot: {e}\n{}", c.describe()));
    let to_add = first_add.saturating_duration_since(started);
    eprintln!(
        "reboot: daemon container started {:?} after power-on; first ADD {:?} after it; \
         the node's pod Ready {:?} after power-on",
        started - t0,
        to_add,
        t0.elapsed()
    );
    assert!(
        to_add < Duration::from_secs(10),
        "the first pod ADD came {to_add:?} after the daemon started:\n{}",
        c.describe()
    );
    let uid = c.ferry_pod(2).metadata.uid.unwrap_or_default();
    let st = c.status(&uid).expect("status");
    assert_eq!(
        st.backoffs(),
        0,
        "CrashLoopBackOff after the reboot:\n{}",
        c.describe()
    );
    // The rebooted node's pod (a new sandbox, a new address maybe) reaches the others.
    let b_ns = c.pod_netns(&b_uid);
    let _srv = echo_peer_server(&b_ns, PORT);
    let b_ip = b.ip.split(',').next().unwrap_or_default().to_string();
    let ok = seen_from(&a, &a_ip, &b_ip, PORT);
    assert!(ok, "a -> b after b's node rebooted:\n{}", c.describe());
    assert_api_allowed(&c);
}

#[test]
fn uninstall_leaves_nothing_and_a_reinstall_works() {
    ferry_tests::needs_root!();
    let mut c = KindCluster::create(Family::Dual, 2, Backend::Nft);
    c.install(image::ferry(), READY);
    let pods: Vec<_> = (0..c.nodes.len())
        .map(|i| pod(&mut c, i, "default", &format!("u{i}"), &[]))
        .collect();
    assert_pods_talk(&pods);
    c.api.create(deny_all_ingress("default")).expect("policy");
    let uids: Vec<String> = pods.iter().map(|(u, _, _)| u.clone()).collect();
    drop(pods);
    for u in &uids {
        c.delete_pod(u);
    }
    // docs/install.md, "Uninstall": delete the install and its Secrets, then the cleanup.
    let applied = c.applied.clone();
    c.delete(&applied);
    let cleanup = ferry_tests::kind::kustomize::build(
        &ferry_tests::manifest::repo().join("deploy/uninstall"),
    );
    c.apply(&cleanup);
    c.wait_all_ready(READY);
    for i in 0..c.nodes.len() {
        let uid = c
            .pod_on("ferry-cleanup", i)
            .and_then(|p| p.metadata.uid)
            .unwrap_or_default();
        let log = c.logs(&uid, "cleanup");
        assert!(
            log.contains("ferry removed from this node"),
            "{}: {log}\n{}",
            c.nodes[i].name,
            c.describe()
        );
        let left = c.nodes[i].ferry_leftovers();
        assert!(
            left.is_empty(),
            "{} after the uninstall: {left:#?}\n{log}",
            c.nodes[i].name
        );
    }
    c.delete(&cleanup);
    // The cleanup has no API access: ferry's Node annotations stay, inert, until the
    // command docs/install.md gives (`kubectl annotate node --all ferry.dev/public-ip- …`)
    // removes them; after it, no ferry.dev/ annotation is left.
    for n in &c.nodes {
        let node: Node = c.api.get(None, &n.name).expect("the Node");
        let ferry = ferry_annotations(&node);
        assert!(!ferry.is_empty(), "{}: nothing was published", n.name);
        let patch = serde_json::json!({"metadata": {"annotations": {
            "ferry.dev/public-ip": null, "ferry.dev/vtep-mac": null, "ferry.dev/usage": null}}});
        let node: Node = c.api.merge_patch(None, &n.name, &patch).expect("annotate");
        assert_eq!(ferry_annotations(&node), Vec::<String>::new(), "{}", n.name);
    }

    // A reinstall on the cleaned nodes.
    c.api
        .delete::<NetworkPolicy>(Some("default"), "deny-all")
        .expect("policy");
    c.install(image::ferry(), READY);
    let pods: Vec<_> = (0..c.nodes.len())
        .map(|i| pod(&mut c, i, "default", &format!("r{i}"), &[]))
        .collect();
    assert_pods_talk(&pods);
}
