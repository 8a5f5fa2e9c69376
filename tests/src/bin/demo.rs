//! `ferry-demo`: a 3-node cluster built out of namespaces on this machine, with a real
//! etcd, the kit's Kubernetes API stand-in, `ferry-overlayd --network-policy` on every node
//! and pods added through `ferry` (each known to the API first, as a kubelet makes it). It
//! shows the job an operator cares about, one line per check: localhost inside a pod, pod
//! to pod on one node and across, a Service's ClusterIP (hairpin included), a NodePort from
//! outside, a pod reaching outside masqueraded; then `ferry-ipam` as an operator would run
//! it; then isolation: ClusterNetworkPolicy's Admin tier keeping two tenants apart whatever
//! their NetworkPolicies say, its Baseline tier a default a namespace's NetworkPolicy
//! overrides, and `ferry-ipam explain` naming the deciding rule. It removes everything, or
//! with `--keep` leaves it running and says what to try by hand.
//! With `--cri` the cluster is a kind-like one (`ferry_tests::kind`): each node its own
//! containerd driven through the CRI by a kubelet stand-in, ferry's image built from
//! deploy/Dockerfile's recipe, ferry installed as users install it (`kubectl apply -k
//! deploy/kubernetes`: the DaemonSet, on the Kubernetes API as its datastore), every pod a
//! RunPodSandbox, the Service a real object whose rules the stand-in kube-proxy writes;
//! the same checks follow, then `ferry-ipam` exec'd in ferry's container and the
//! runtime's own view of the network, then the same isolation section.
//! Exit status: 0 when every check passed, 1 otherwise, 2 when it cannot run here, 130
//! when interrupted (after removing what it made).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use ferry_netpol::ClusterNetworkPolicy;
use ferry_tests::cluster::{Cluster, Datastore, Pod, Progress, ETCD_IP, HEALTH_ADDR, OUTSIDE_IP};
use ferry_tests::interrupt;
use ferry_tests::kapi::KubeApi;
use ferry_tests::kind::node::Leftovers;
use ferry_tests::kind::{image, Backend, Family, KindCluster};
use ferry_tests::netns::Netns;
use ferry_tests::proc::{connect, echo_peer_server_on};
use ferry_tests::services::Service;
use k8s_openapi::api::core::v1::{Namespace, Pod as PodObject};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

const CIDR: &str = "10.244.0.0/16";
const NODES: usize = 3;
const PODS_PER_NODE: usize = 2;
/// Where every pod's server (and the outside host's) listens.
const PORT: u16 = 7000;
/// The server of pod-00 bound to 127.0.0.1 only.
const LOCAL_PORT: u16 = 8080;
const CLUSTER_IP: &str = "10.96.0.10";
const SERVICE_PORT: u16 = 80;
const NODE_PORT: u16 = 30080;
const TROUBLESHOOTING: &str = "docs/troubleshooting.md";
/// The width of a progress line's label, so that the times line up.
const LABEL: usize = 60;

/// The tools the demo runs besides ferry's own binaries, and the Debian package of each.
const TOOLS: [(&str, &str); 7] = [
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("ss", "iproute2"),
    ("iptables", "iptables"),
    ("python3", "python3"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
];

/// What `--cri` runs besides: containerd and its runtime, the tools that enter a node,
/// the compiler of the pause image, the reference plugins a kind node ships, what builds
/// ferry's image (strip, and debootstrap for its base), what makes etcd's certificates.
const CRI_TOOLS: [(&str, &str); 10] = [
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("nsenter", "util-linux"),
    ("unshare", "util-linux"),
    ("sysctl", "procps"),
    ("cc", "gcc libc6-dev"),
    ("strip", "binutils"),
    ("openssl", "openssl"),
    ("/usr/lib/cni/portmap", "containernetworking-plugins"),
];
/// Needed only until the image's base is built once.
const BASE_TOOL: (&str, &str) = ("debootstrap", "debootstrap debian-archive-keyring");

/// The Kubernetes namespace of the demo's pods (a namespace of no tenant).
const POD_NAMESPACE: &str = "demo";
/// The tenants' namespaces and the tenant each belongs to (its label `tenant`).
const TENANT_NAMESPACES: [(&str, &str); 3] =
    [("blue", "blue"), ("blue-dev", "blue"), ("green", "green")];
/// The tenants' pods (namespace, name, node): blue's server on the second node, a pod of
/// blue's other namespace and one of green's on the third (the first node keeps two
/// pods, as `ferry-ipam show` shows them there).
const TENANT_PODS: [(&str, &str, usize); 3] = [
    ("blue", "web", 1),
    ("blue-dev", "app", 2),
    ("green", "app", 2),
];
/// How long `--cri` waits for ferry's pods, and for each workload pod, to be Ready.
const READY: Duration = Duration::from_secs(180);
/// ferry-overlayd's health address in the DaemonSet (on each node's loopback).
const KIND_HEALTH_ADDR: &str = "127.0.0.1:9797";

const USAGE: &str = "usage: ferry-demo [--keep] [--cri]   (as root)
  --keep  leave the cluster running and print what to try by hand
  --cri   a kind-like cluster instead: a containerd per node driven through the CRI, ferry
          installed from deploy/kubernetes (the first run debootstraps its image's base)";

fn main() {
    let mut keep = false;
    let mut cri = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--keep" => keep = true,
            "--cri" => cri = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            _ => {
                eprintln!("ferry-demo: unknown argument {a}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if !ferry_tests::is_root() {
        eprintln!("ferry-demo needs root (it makes network namespaces)");
        std::process::exit(2);
    }
    let base = (cri && !image::base_built()).then_some(BASE_TOOL);
    let tools: Vec<(&str, &str)> = TOOLS
        .iter()
        .chain(cri.then_some(&CRI_TOOLS).into_iter().flatten())
        .copied()
        .chain(base)
        .collect();
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(tool, _)| *tool)
        .collect();
    if !missing.is_empty() {
        let mut packages: Vec<&str> = tools
            .iter()
            .filter(|(tool, _)| missing.contains(tool))
            .map(|(_, pkg)| *pkg)
            .collect();
        packages.dedup();
        // containerd and the rest of --cri's are in install-deps.sh's test set.
        let set = if cri { "test" } else { "demo" };
        eprintln!(
            "ferry-demo: not found: {} (Debian: {}); deploy/install-deps.sh {set} installs them",
            missing.join(", "),
            packages.join(" ")
        );
        std::process::exit(2);
    }
    // The signal only sets a flag; the steps look at it, and unwinding removes the
    // namespaces and processes made so far (an interrupted demo leaves nothing behind).
    interrupt::install();
    // A harness step that cannot be done panics with what went wrong (and the log of the
    // part that failed): one message, no backtrace, then where to look.
    std::panic::set_hook(Box::new(|info| {
        if interrupt::interrupted() {
            // The steps that broke because their processes got the signal too.
            return;
        }
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("a step failed");
        eprintln!("\nferry-demo: {msg}");
    }));
    let start = Instant::now();
    let failed = match std::panic::catch_unwind(AssertUnwindSafe(|| run(keep, cri, start))) {
        Ok(failed) => failed,
        Err(_) if interrupt::interrupted() => {
            println!("Interrupted: everything the demo made is removed.");
            std::process::exit(130);
        }
        Err(_) => {
            println!(
                "\nFAIL the demo stopped: the message above says which step.\n     \
                 look at {TROUBLESHOOTING}, \"Running the demo\""
            );
            std::process::exit(1);
        }
    };
    if failed > 0 {
        std::process::exit(1);
    }
}

fn on_path(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What the sections need of a node, however its pods were made.
struct NodeView<'a> {
    name: &'a str,
    ip: &'a str,
    /// Its network namespace: where the kube-proxy-style rules go.
    host: &'a Netns,
}

/// What the sections need of a pod.
struct PodView<'a> {
    /// `pod-NK`: the K-th pod of node N.
    name: &'a str,
    /// Its node, an index into the nodes.
    node: usize,
    ip: &'a str,
    ns: &'a Netns,
}

/// A pod the kubelet stand-in made through its node's containerd.
struct KindPod {
    node: usize,
    name: String,
    uid: String,
    ip: String,
    ns: Netns,
}

impl KindPod {
    fn view(&self) -> PodView<'_> {
        PodView {
            name: &self.name,
            node: self.node,
            ip: &self.ip,
            ns: &self.ns,
        }
    }
}

/// The cluster and its pods: nodes of namespaces whose pods are added by exec'ing `ferry`,
/// or a kind-like cluster whose kubelets make them through containerd's CRI.
/// Each with the tenants' pods apart (named `namespace/pod`): the sections before the
/// isolation one do not see them.
enum Made {
    Plugin(Box<Cluster>, Vec<(usize, Pod)>, Vec<(usize, String, Pod)>),
    Kind(KindCluster, Vec<KindPod>, Vec<KindPod>),
}

impl Made {
    fn nodes(&self) -> Vec<NodeView<'_>> {
        match self {
            Made::Plugin(c, ..) => c
                .nodes
                .iter()
                .map(|n| NodeView {
                    name: &n.name,
                    ip: &n.ip,
                    host: &n.host,
                })
                .collect(),
            Made::Kind(c, ..) => c
                .nodes
                .iter()
                .map(|n| NodeView {
                    name: &n.name,
                    ip: &n.ips[0],
                    host: &n.host,
                })
                .collect(),
        }
    }

    fn pods(&self) -> Vec<PodView<'_>> {
        match self {
            Made::Plugin(_, pods, _) => pods
                .iter()
                .map(|(i, p)| PodView {
                    name: &p.id,
                    node: *i,
                    ip: &p.ip,
                    ns: &p.ns,
                })
                .collect(),
            Made::Kind(_, pods, _) => pods.iter().map(KindPod::view).collect(),
        }
    }

    /// The tenants' pods, in `TENANT_PODS`' order, named `namespace/pod`.
    fn tenants(&self) -> Vec<PodView<'_>> {
        match self {
            Made::Plugin(_, _, pods) => pods
                .iter()
                .map(|(i, name, p)| PodView {
                    name,
                    node: *i,
                    ip: &p.ip,
                    ns: &p.ns,
                })
                .collect(),
            Made::Kind(_, _, pods) => pods.iter().map(KindPod::view).collect(),
        }
    }

    /// The cluster's Kubernetes API (the kit's stand-in).
    fn api(&self) -> &KubeApi {
        match self {
            Made::Plugin(c, ..) => c.api(),
            Made::Kind(c, ..) => &c.api,
        }
    }

    /// `ferry-ipam explain FROM TO --port PORT` on node `i` as an operator runs it (as
    /// root on the node, with the daemon's state directory; kind: in ferry's container,
    /// as `kubectl exec` runs it): the command as shown, its exit code and output.
    fn explain(&self, i: usize, from: &str, to: &str) -> (String, i32, String, String) {
        let what = format!("explain {from} {to} --port {PORT}");
        match self {
            Made::Plugin(c, ..) => {
                let n = &c.nodes[i];
                let shown = format!(
                    "ferry-ipam {what} \\\n    --state-dir {}",
                    n.state_dir().display()
                );
                let out = n.host.try_sh(&format!(
                    "{} {what} --state-dir {}",
                    ferry_tests::bin("ferry-ipam").display(),
                    n.state_dir().display()
                ));
                (
                    shown,
                    out.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
            Made::Kind(c, ..) => {
                let ferry = c.ferry_pod(i);
                let name = ferry.metadata.name.clone().unwrap_or_default();
                let uid = ferry.metadata.uid.clone().unwrap_or_default();
                let shown =
                    format!("kubectl -n kube-system exec {name} -c ferry-overlayd -- \\\n    ferry-ipam {what}");
                let port = PORT.to_string();
                let (code, out, err) = c.exec(
                    &uid,
                    "ferry-overlayd",
                    &["ferry-ipam", "explain", from, to, "--port", &port],
                );
                (shown, code, out, err)
            }
        }
    }

    /// The host outside the cluster, on its switch.
    fn outside(&self) -> &Netns {
        match self {
            Made::Plugin(c, ..) => &c.outside,
            Made::Kind(c, ..) => &c.outside,
        }
    }

    /// The demo's Service, to the last pod: kube-proxy-style rules written on every node,
    /// or (kind) a Service object applied, whose rules the stand-in kube-proxy writes.
    fn add_service(&mut self, svc: &Service, backend: &str) {
        match self {
            Made::Plugin(c, ..) => step(
                &format!("kube-proxy-style rules: {CLUSTER_IP}:{SERVICE_PORT} -> {backend}"),
                || {
                    for n in &c.nodes {
                        n.host.sh(&svc.rules());
                    }
                },
            ),
            Made::Kind(c, ..) => step(
                &format!(
                    "a NodePort Service {CLUSTER_IP}:{SERVICE_PORT} -> {backend} (kubectl apply)"
                ),
                || {
                    c.apply(&[serde_json::json!({
                        "apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": "demo", "namespace": POD_NAMESPACE},
                        "spec": {
                            "type": "NodePort",
                            "clusterIP": svc.cluster_ip,
                            "selector": {"demo.ferry/pod": backend},
                            "ports": [{"protocol": "TCP", "port": svc.port,
                                       "targetPort": svc.endpoint_port,
                                       "nodePort": svc.node_port}]
                        }
                    })])
                },
            ),
        }
    }
}

/// Runs `f` on every item at once (each waits on the network or on another process, not
/// on the CPU), a panic in one carried on here; the results in order.
fn on_each<I, R>(items: I, f: impl Fn(I::Item) -> R + Sync) -> Vec<R>
where
    I: IntoIterator,
    I::Item: Send,
    R: Send,
{
    let f = &f;
    std::thread::scope(|s| {
        let started: Vec<_> = items
            .into_iter()
            .map(|item| s.spawn(move || f(item)))
            .collect();
        started
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Builds the cluster, runs every check, prints them; the number of failed checks.
fn run(keep: bool, cri: bool, start: Instant) -> usize {
    let mut made = if cri {
        kind_cluster()
    } else {
        plugin_cluster()
    };
    let servers = {
        let pods = made.pods();
        let tenants = made.tenants();
        step("starting a TCP server in each pod and outside", || {
            let mut at: Vec<(&Netns, &str, u16)> = pods
                .iter()
                .chain(&tenants)
                .map(|p| (p.ns, "0.0.0.0", PORT))
                .collect();
            at.push((made.outside(), "0.0.0.0", PORT));
            at.push((pods[0].ns, "127.0.0.1", LOCAL_PORT));
            // All at once: each one's start is mostly Python's.
            on_each(at, |(ns, addr, port)| echo_peer_server_on(ns, addr, port))
        })
    };
    let (backend, backend_ip) = {
        let pods = made.pods();
        let last = pods.last().expect("pods");
        (last.name.to_string(), last.ip.to_string())
    };
    let svc = Service {
        cluster_ip: CLUSTER_IP.into(),
        port: SERVICE_PORT,
        node_port: NODE_PORT,
        endpoint_ip: backend_ip,
        endpoint_port: PORT,
    };
    made.add_service(&svc, &backend);

    let nodes = made.nodes();
    let pods = made.pods();
    let names = Names::new(&nodes, &pods);
    let mut r = Report::default();
    localhost(&mut r, &names, &pods[0]);
    pod_to_pod(&mut r, &nodes, &pods);
    services(&mut r, &nodes, &pods, &names);
    outside(&mut r, made.outside(), &nodes, &pods, &names);
    match &made {
        Made::Plugin(c, ..) => operator(&mut r, c),
        Made::Kind(c, pods, _) => operator_kind(&mut r, c, pods),
    }
    isolation(&mut r, &made, &pods[0]);

    interrupt::stop_if_interrupted();
    let total = r.passed + r.failed;
    let secs = start.elapsed().as_secs_f64();
    if r.failed == 0 {
        println!("\nAll {total} checks passed ({secs:.1}s).");
    } else {
        println!(
            "\n{} of {total} checks FAILED ({secs:.1}s): see the FAIL lines above.",
            r.failed
        );
    }
    if keep {
        print_keep_hints(&made, &nodes, &pods);
        // Everything stays: the cleanup script the hints name removes it.
        std::mem::forget(servers);
        std::mem::forget(made);
    } else {
        step(
            "removing the cluster (--keep leaves it running)",
            move || {
                // The servers first (they run in the pods), then the pods, then the nodes
                // and the switch, etcd or API they hang on.
                drop(servers);
                match made {
                    Made::Plugin(c, pods, tenants) => {
                        drop((pods, tenants));
                        drop(c);
                    }
                    Made::Kind(mut c, pods, tenants) => {
                        drop((pods, tenants));
                        // The nodes at once: each waits for init to reap its killed pods.
                        on_each(c.nodes.iter_mut(), |n| n.power_off());
                        drop(c);
                    }
                }
            },
        );
    }
    r.failed
}

/// The cluster of namespaces: a switch, etcd, the kit's Kubernetes API stand-in (for
/// NetworkPolicy and ClusterNetworkPolicy, the pods and their namespaces), ferry-overlayd
/// on every node (`--network-policy`); then two pods per node and the tenants' pods, each
/// as a kubelet makes it: its object, then `ferry` exec'd as a runtime does, then its
/// status.
fn plugin_cluster() -> Made {
    println!("ferry demo: a {NODES}-node cluster of network namespaces on this machine");
    step_begin(&format!(
        "starting an underlay switch, etcd and an API ({ETCD_IP})"
    ));
    // The demo shows etcd (its endpoint, its keys): etcd is its datastore. The API serves
    // the policies; with --network-policy a pod it does not show starts closed.
    let mut etcd_time = 0.0;
    let c = Cluster::builder()
        .nodes(NODES)
        .cluster_cidr(CIDR)
        .datastore(Datastore::Etcd)
        .kube_api()
        .flags(["--network-policy"])
        .build_reporting(&mut |p| match p {
            Progress::Etcd(_, t) => etcd_time = t.as_secs_f64(),
            Progress::Api(_, t) => {
                step_end(etcd_time + t.as_secs_f64());
                println!(
                    "  starting ferry-overlayd on {NODES} nodes (each leases a subnet; \
                     --network-policy)"
                );
            }
            Progress::NodeReady(n, t) => {
                step_begin(&format!(
                    "{} {}: ferry-overlayd ready, lease {}",
                    n.name,
                    n.ip,
                    n.subnet()
                ));
                step_end(t.as_secs_f64());
            }
            Progress::Converged(t) => {
                step_begin("overlay converged: each node routes to the others");
                step_end(t.as_secs_f64());
            }
        });
    let (pods, tenants) = step(
        &format!(
            "adding {} pods and {} tenants' pods through ferry (CNI ADD)",
            NODES * PODS_PER_NODE,
            TENANT_PODS.len()
        ),
        || {
            make_namespaces(c.api());
            let pods = (0..NODES)
                .flat_map(|i| (0..PODS_PER_NODE).map(move |k| (i, format!("pod-{i}{k}"))))
                .map(|(i, name)| (i, api_pod(&c, i, POD_NAMESPACE, &name, &name)))
                .collect();
            let tenants = TENANT_PODS
                .iter()
                .map(|&(ns, name, i)| {
                    let pod = api_pod(&c, i, ns, name, &format!("{ns}-{name}"));
                    (i, format!("{ns}/{name}"), pod)
                })
                .collect();
            (pods, tenants)
        },
    );
    Made::Plugin(Box::new(c), pods, tenants)
}

fn k8s<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a well-formed object")
}

/// The demo's namespace and the tenants', labelled as `TENANT_NAMESPACES` says.
fn make_namespaces(api: &KubeApi) {
    let tenants = TENANT_NAMESPACES.iter().map(|&(ns, t)| (ns, Some(t)));
    for (ns, tenant) in [(POD_NAMESPACE, None)].into_iter().chain(tenants) {
        let mut labels = json!({ "kubernetes.io/metadata.name": ns });
        if let Some(t) = tenant {
            labels["tenant"] = json!(t);
        }
        api.create(k8s::<Namespace>(
            json!({"metadata": {"name": ns, "labels": labels}}),
        ))
        .unwrap_or_else(|e| panic!("create namespace {ns}: {e}"));
    }
}

/// Pod `ns/name` on node `i` as a kubelet makes it: the object, the ADD (container `id`)
/// naming it in CNI_ARGS, the status with its address.
fn api_pod(c: &Cluster, i: usize, ns: &str, name: &str, id: &str) -> Pod {
    let api = c.api();
    api.create(k8s::<PodObject>(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"nodeName": c.nodes[i].name,
                 "containers": [{"name": "serve", "image": "registry.k8s.io/pause:3.10"}]},
    })))
    .unwrap_or_else(|e| panic!("create pod {ns}/{name}: {e}"));
    let pod = c.nodes[i].add_pod_as(
        id,
        Some(&format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}")),
    );
    let mut object: PodObject = api.get(Some(ns), name).expect("the pod just made");
    object.status = Some(k8s(json!({
        "phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
    })));
    api.update(object)
        .unwrap_or_else(|e| panic!("the status of pod {ns}/{name}: {e}"));
    pod
}

/// The kind-like cluster, as a user brings one up: the nodes (`kind create cluster`),
/// ferry's image, the install from the manifests, each node Ready once its ferry pod is;
/// then two pods per node, each made by the node's kubelet through RunPodSandbox.
fn kind_cluster() -> Made {
    println!(
        "ferry demo: a {NODES}-node kind cluster on this machine (a containerd per node, \
         driven through the CRI), ferry installed from deploy/kubernetes"
    );
    let mut c = step(
        &format!("creating the cluster: {NODES} nodes, each its own containerd"),
        || KindCluster::create(Family::Ipv4, NODES - 1, Backend::Nft),
    );
    println!("  building ferry's image (deploy/Dockerfile's recipe, without Docker)");
    if !image::base_built() {
        println!(
            "  the first run debootstraps the image's Debian base: ~40 s, and network to a \
             Debian mirror (FERRY_IMAGE_MIRROR names another)"
        );
    }
    let t = Instant::now();
    let img = image::ferry();
    step_begin(&format!("ferry's image built: {}", img.name));
    step_end(t.elapsed().as_secs_f64());
    step("installing ferry: apply -k deploy/kubernetes", || {
        c.install_with(img, Default::default(), |_| {})
    });
    let t = Instant::now();
    for i in 0..NODES {
        let ready = wait_or_stop(READY, || {
            let uid = c
                .pod_on("ferry", i)
                .and_then(|p| p.metadata.uid)
                .unwrap_or_default();
            c.status(&uid).is_some_and(|s| s.ready()) && c.nodes[i].network_ready().0
        });
        let n = &c.nodes[i];
        assert!(
            ready,
            "{} not Ready after {READY:?} ({:?}):\n{}",
            n.name,
            n.network_ready(),
            c.describe()
        );
        step_begin(&format!(
            "{} {}: Ready, lease {}",
            n.name,
            n.ips[0],
            node_subnet(n)
        ));
        step_end(t.elapsed().as_secs_f64());
    }
    let (pods, tenants) = step(
        &format!(
            "adding {} pods and {} tenants' pods through containerd's CRI",
            NODES * PODS_PER_NODE,
            TENANT_PODS.len()
        ),
        || {
            make_namespaces(&c.api);
            // The nodes at once, and on each node pod-N0 before pod-N1, so that each
            // node's first pod has its first address, as in the demo without --cri.
            let mut pods: Vec<KindPod> = Vec::new();
            for k in 0..PODS_PER_NODE {
                let uids: Vec<(usize, String, String)> = (0..NODES)
                    .map(|i| {
                        let name = format!("pod-{i}{k}");
                        let labels = [("demo.ferry/pod", name.as_str())];
                        (i, c.run_pod(i, POD_NAMESPACE, &name, &labels), name)
                    })
                    .collect();
                pods.extend(kind_pods_ready(&c, uids));
            }
            pods.sort_by(|a, b| a.name.cmp(&b.name));
            let uids: Vec<(usize, String, String)> = TENANT_PODS
                .iter()
                .map(|&(ns, name, i)| {
                    (
                        i,
                        c.run_pod(i, ns, name, &[("app", name)]),
                        format!("{ns}/{name}"),
                    )
                })
                .collect();
            (pods, kind_pods_ready(&c, uids))
        },
    );
    Made::Kind(c, pods, tenants)
}

/// Each pod of `uids` (node, UID, name) once Ready.
fn kind_pods_ready(c: &KindCluster, uids: Vec<(usize, String, String)>) -> Vec<KindPod> {
    uids.into_iter()
        .map(|(node, uid, name)| {
            let ready = wait_or_stop(READY, || c.status(&uid).is_some_and(|s| s.ready()));
            assert!(ready, "{name} not Ready after {READY:?}:\n{}", c.describe());
            let st = c.status(&uid).expect("a Ready pod's status");
            KindPod {
                node,
                ns: c.pod_netns(&uid),
                ip: st.ip,
                name,
                uid,
            }
        })
        .collect()
}

/// Waits until `f` holds (true) or `timeout` passed (false); unwinds at once on SIGINT or
/// SIGTERM, whose signal may have ended what is waited for (the nodes' containerds).
fn wait_or_stop(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let ok = ferry_tests::proc::wait_until(timeout, || interrupt::interrupted() || f());
    interrupt::stop_if_interrupted();
    ok
}

/// A kind node's pod subnet, from the node state ferry-overlayd wrote.
fn node_subnet(n: &ferry_tests::kind::KindNode) -> String {
    std::fs::read(n.path("/run/ferry/node.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["podCIDR"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn step_begin(label: &str) {
    interrupt::stop_if_interrupted();
    print!("  {label:<LABEL$}");
    let _ = std::io::stdout().flush();
}

fn step_end(secs: f64) {
    println!("{secs:>5.1}s");
    interrupt::stop_if_interrupted();
}

/// Says what is being done, does it, says how long it took.
fn step<T>(label: &str, f: impl FnOnce() -> T) -> T {
    step_begin(label);
    let t = Instant::now();
    let v = f();
    step_end(t.elapsed().as_secs_f64());
    v
}

/// The checks' tally, and where to look when a section had a failure.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
    failed_in_section: bool,
}

impl Report {
    fn section(&mut self, title: &str) {
        interrupt::stop_if_interrupted();
        self.failed_in_section = false;
        println!("\n{title}");
    }

    /// One line: what was tried and whom the server saw; when that is not `want` (or
    /// nothing answered), what was expected on the next.
    fn probe(&mut self, names: &Names, tried: &str, seen: Option<String>, want: Option<&str>) {
        let ok = seen.is_some() && (want.is_none() || seen.as_deref() == want);
        self.count(ok);
        println!(
            "{} {tried}: {}",
            if ok { "ok  " } else { "FAIL" },
            names.saw(&seen)
        );
        if !ok {
            match want {
                Some(w) => println!("     expected {}", names.who(w)),
                None => println!("     expected an answer"),
            }
        }
    }

    fn count(&mut self, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failed_in_section = true;
        }
    }

    /// After a section: where to look if it had a failure.
    fn look_at(&self, doc: &str, section: &str) {
        if self.failed_in_section {
            println!("     look at {doc}, \"{section}\"");
        }
    }
}

/// What each address of the cluster is, to say who the server saw.
struct Names(HashMap<String, String>);

impl Names {
    fn new(nodes: &[NodeView], pods: &[PodView]) -> Names {
        let mut m: HashMap<String, String> = pods
            .iter()
            .map(|p| (p.ip.to_string(), p.name.to_string()))
            .collect();
        for n in nodes {
            // Every node has 127.0.0.1: it names nobody.
            for (dev, ip) in addresses(n.host).into_iter().filter(|(dev, _)| dev != "lo") {
                let what = if dev == "eth0" {
                    n.name.to_string()
                } else {
                    format!("{} {dev}", n.name)
                };
                m.insert(ip, what);
            }
        }
        Names(m)
    }

    /// "10.244.1.2 (pod-10)".
    fn who(&self, ip: &str) -> String {
        match self.0.get(ip) {
            Some(what) => format!("{ip} ({what})"),
            None => ip.to_string(),
        }
    }

    /// "server saw 10.244.1.2 (pod-10)", or that nothing answered.
    fn saw(&self, seen: &Option<String>) -> String {
        match seen {
            Some(ip) => format!("server saw {}", self.who(ip)),
            None => "no answer within 3s".into(),
        }
    }
}

/// The IPv4 addresses of a node's namespace, with their devices.
fn addresses(host: &Netns) -> Vec<(String, String)> {
    host.sh("ip -o -4 addr show")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev = f.get(1)?;
            let ip = f.get(3)?.split('/').next()?;
            Some((dev.to_string(), ip.to_string()))
        })
        .collect()
}

fn localhost(r: &mut Report, names: &Names, pod: &PodView) {
    r.section("1. Containers of one pod, over localhost");
    let seen = connect(pod.ns, "127.0.0.1", LOCAL_PORT);
    r.probe(
        names,
        &format!("{}: client -> server on 127.0.0.1:{LOCAL_PORT}", pod.name),
        seen,
        Some("127.0.0.1"),
    );
    r.look_at(TROUBLESHOOTING, "1. Container to container (localhost)");
}

fn pod_to_pod(r: &mut Report, nodes: &[NodeView], pods: &[PodView]) {
    r.section("2. Pod to pod, on one node and across nodes");
    // node0, node1, ...: "pod-NK is on nodeN"; kind's names are listed.
    let numbered = nodes
        .first()
        .map(|n| n.name.trim_end_matches(|c: char| c.is_ascii_digit()));
    let legend = match numbered {
        Some(prefix)
            if nodes
                .iter()
                .enumerate()
                .all(|(i, n)| n.name == format!("{prefix}{i}")) =>
        {
            format!("pod-NK is on {prefix}N")
        }
        _ => nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("pod-{i}K on {}", n.name))
            .collect::<Vec<_>>()
            .join(", "),
    };
    println!("   ok: the server saw the client's own pod IP; {legend}");
    // Every pair at once: each probe waits on the network, not on the CPU.
    let seen: Vec<Vec<Option<String>>> = on_each(pods, |a| {
        pods.iter()
            .map(|b| (a.name != b.name).then(|| connect(a.ns, b.ip, PORT))?)
            .collect()
    });
    let mut table = format!("   {:<20}", "from \\ to");
    for p in pods {
        let _ = write!(table, "{:<8}", p.name);
    }
    let (mut near, mut far, mut bad) = (0, 0, 0);
    for (a, row) in pods.iter().zip(&seen) {
        table = table.trim_end().to_string();
        let _ = write!(table, "\n   {:<20}", format!("{} {}", a.name, a.ip));
        for (b, s) in pods.iter().zip(row) {
            let cell = if a.name == b.name {
                "-"
            } else {
                let ok = s.as_deref() == Some(a.ip);
                r.count(ok);
                match (ok, a.node == b.node) {
                    (true, true) => near += 1,
                    (true, false) => far += 1,
                    (false, _) => bad += 1,
                }
                match s {
                    _ if ok => "ok",
                    Some(_) => "NAT",
                    None => "FAIL",
                }
            };
            let _ = write!(table, "{cell:<8}");
        }
    }
    interrupt::stop_if_interrupted();
    println!("{}", table.trim_end());
    let pairs = near + far + bad;
    if bad == 0 {
        println!("ok   {pairs} of {pairs} pairs: {near} on one node, {far} across nodes");
    } else {
        println!(
            "FAIL {} of {pairs} pairs ok (FAIL: no answer, NAT: saw another address)",
            near + far
        );
    }
    r.look_at(TROUBLESHOOTING, "2. Pod to pod");
}

fn services(r: &mut Report, nodes: &[NodeView], pods: &[PodView], names: &Names) {
    let backend = pods.last().expect("pods");
    let svc = format!("{CLUSTER_IP}:{SERVICE_PORT}");
    r.section(&format!(
        "3. Pod to Service: ClusterIP {svc}, backend {} on {}",
        backend.name, nodes[backend.node].name
    ));
    // From another node, and from the backend's own node (the reply crosses the bridge).
    let other = pods.iter().find(|p| p.node != backend.node);
    let same = pods
        .iter()
        .find(|p| p.node == backend.node && p.name != backend.name);
    for p in other.into_iter().chain(same) {
        let seen = connect(p.ns, CLUSTER_IP, SERVICE_PORT);
        let tried = format!("{} ({}) -> {svc}", p.name, nodes[p.node].name);
        r.probe(names, &tried, seen, Some(p.ip));
    }
    let seen = connect(backend.ns, CLUSTER_IP, SERVICE_PORT);
    let tried = format!("{} -> itself (hairpin)", backend.name);
    r.probe(names, &tried, seen, None);
    r.look_at(TROUBLESHOOTING, "3. Pod to Service");
}

fn outside(r: &mut Report, host: &Netns, nodes: &[NodeView], pods: &[PodView], names: &Names) {
    r.section(&format!(
        "4. Outside ({OUTSIDE_IP}) to NodePort {NODE_PORT}; pod to outside"
    ));
    // On a node without the backend (the reply must come back through it) and on its own.
    for n in [nodes.first(), nodes.last()].into_iter().flatten() {
        let seen = connect(host, n.ip, NODE_PORT);
        let tried = format!("outside -> {}:{NODE_PORT}", n.name);
        r.probe(names, &tried, seen, None);
    }
    // One pod per node: masqueraded to its node's address.
    for p in pods.iter().step_by(PODS_PER_NODE) {
        let seen = connect(p.ns, OUTSIDE_IP, PORT);
        let tried = format!("{} -> outside", p.name);
        r.probe(names, &tried, seen, Some(nodes[p.node].ip));
    }
    r.look_at(TROUBLESHOOTING, "4. Outside to Service, pod to outside");
}

/// Prints a command as typed and its real output; counts it as a check (exit 0).
fn typed(r: &mut Report, shown: &str, out: std::process::Output) {
    println!("$ {shown}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        print!("{}", String::from_utf8_lossy(&out.stderr));
        println!("FAIL {shown} exited with {}", out.status);
    }
    r.count(out.status.success());
}

/// `ferry-ipam leases` and `show`, run for real in node0, each shown as typed.
fn operator(r: &mut Report, c: &Cluster) {
    let n0 = &c.nodes[0];
    r.section(&format!("5. What an operator types next (on {})", n0.name));
    // Run exactly as shown: the shell takes the backslash-newline as a continuation.
    let args = [
        format!(
            "leases --etcd-endpoints {} \\\n    --etcd-prefix {}",
            c.etcd.endpoint(),
            c.prefix
        ),
        format!("show --data-dir {}", n0.dir.path().join("ipam").display()),
    ];
    for shown in &args {
        let out = n0.host.try_sh(&format!(
            "{} {shown}",
            ferry_tests::bin("ferry-ipam").display()
        ));
        typed(r, &format!("ferry-ipam {shown}"), out);
    }
    r.look_at("docs/ipam.md", "`ferry-ipam`: the operator CLI");
}

/// `ferry-ipam leases` and `show` in ferry-overlayd's container on the first node, as
/// `kubectl exec` runs them there (the CRI's ExecSync): the image's binary, the
/// DaemonSet's env and defaults (the datastore, the store). Then the
/// runtime's view: its `NetworkReady` condition, and the address it reports for pod-00,
/// which must be the one ferry recorded for that pod.
fn operator_kind(r: &mut Report, c: &KindCluster, pods: &[KindPod]) {
    let n0 = &c.nodes[0];
    let ferry = c.ferry_pod(0);
    let ferry_name = ferry.metadata.name.clone().unwrap_or_default();
    let ferry_uid = ferry.metadata.uid.clone().unwrap_or_default();
    r.section(&format!(
        "5. What an operator types next (in ferry's container on {})",
        n0.name
    ));
    for what in ["leases", "show"] {
        let shown = format!(
            "kubectl -n kube-system exec {ferry_name} -c ferry-overlayd -- ferry-ipam {what}"
        );
        let (code, out, err) = c.exec(&ferry_uid, "ferry-overlayd", &["ferry-ipam", what]);
        println!("$ {shown}");
        print!("{out}");
        if code != 0 {
            print!("{err}");
            println!("FAIL {shown} exited with {code}");
        }
        r.count(code == 0);
    }
    r.look_at("docs/ipam.md", "`ferry-ipam`: the operator CLI");

    let p0 = &pods[0];
    let pod = format!("{POD_NAMESPACE}/{}", p0.name);
    println!(
        "\nThe runtime's view (containerd's CRI, as kubelet asks it) on {}, containerd at {}:",
        n0.name,
        n0.sock().display()
    );
    let cri = n0.cri();
    let (ready, why) = cri
        .network_ready()
        .unwrap_or_else(|e| (false, format!("Status failed: {}", e.message())));
    r.count(ready);
    let why = why.trim_matches(|c: char| c == ':' || c.is_whitespace());
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    };
    println!(
        "{} Status: NetworkReady={ready}{why}",
        if ready { "ok  " } else { "FAIL" }
    );
    let sandbox = c
        .status(&p0.uid)
        .and_then(|s| s.sandbox)
        .unwrap_or_default();
    let reported = cri.pod_status(&sandbox).map(|(ip, _)| ip).ok();
    let (_, show, _) = c.exec(
        &ferry_uid,
        "ferry-overlayd",
        &["ferry-ipam", "show", "-o", "json"],
    );
    let recorded = serde_json::from_str::<serde_json::Value>(&show)
        .ok()
        .and_then(|v| {
            v["allocations"].as_array()?.iter().find_map(|a| {
                let mine =
                    a["pod"]["namespace"] == POD_NAMESPACE && a["pod"]["name"] == p0.name.as_str();
                mine.then(|| a["ip"].as_str().map(str::to_string))?
            })
        });
    let ok = reported.is_some() && reported == recorded;
    r.count(ok);
    let show = |ip: &Option<String>| ip.clone().unwrap_or_else(|| "none".into());
    println!(
        "{} PodSandboxStatus of {pod}: ip {}; ferry-ipam's for {pod}: {}",
        if ok { "ok  " } else { "FAIL" },
        show(&reported),
        show(&recorded)
    );
    r.look_at(TROUBLESHOOTING, "Running the demo");
}

/// How long the isolation section waits for a node to have a policy's verdict.
const SETTLE: Duration = Duration::from_secs(20);

/// An Admin-tier ClusterNetworkPolicy keeping tenant `t`'s namespaces from the other
/// tenants' (what a namespace's own NetworkPolicy cannot reopen), its own let in.
fn tenant_policy(t: &str) -> ClusterNetworkPolicy {
    k8s(json!({
        "metadata": {"name": format!("tenant-{t}")},
        "spec": {
            "tier": "Admin", "priority": 10,
            "subject": {"namespaces": {"matchLabels": {"tenant": t}}},
            "ingress": [
                {"name": "not-from-other-tenants", "action": "Deny",
                 "from": [{"namespaces": {"matchExpressions": [
                     {"key": "tenant", "operator": "Exists"},
                     {"key": "tenant", "operator": "NotIn", "values": [t]}]}}]},
                {"name": "own-tenant", "action": "Accept",
                 "from": [{"namespaces": {"matchLabels": {"tenant": t}}}]},
            ],
        },
    }))
}

/// The Baseline-tier default: the tenants' namespaces closed to the namespaces of no
/// tenant, until a namespace's own NetworkPolicy says otherwise.
fn baseline_policy() -> ClusterNetworkPolicy {
    k8s(json!({
        "metadata": {"name": "tenants-closed"},
        "spec": {
            "tier": "Baseline", "priority": 10,
            "subject": {"namespaces": {"matchExpressions": [
                {"key": "tenant", "operator": "Exists"}]}},
            "ingress": [
                {"name": "not-from-outside-tenants", "action": "Deny",
                 "from": [{"namespaces": {"matchExpressions": [
                     {"key": "tenant", "operator": "DoesNotExist"}]}}]},
            ],
        },
    }))
}

/// ClusterNetworkPolicy's tiers around NetworkPolicy, on the tenants' pods: the Admin
/// tier keeps the tenants apart, which blue's allow-all NetworkPolicy cannot undo, while
/// it does open blue to the namespaces of no tenant, which the Baseline tier closes by
/// default; then `ferry-ipam explain` names the rule that decided, on the server's node.
fn isolation(r: &mut Report, made: &Made, p0: &PodView) {
    let tenants = made.tenants();
    let [web, dev, green] = &tenants[..] else {
        unreachable!("TENANT_PODS holds three pods")
    };
    let on = made.nodes()[web.node].name.to_string();
    r.section(&format!(
        "6. Isolation: ClusterNetworkPolicy's tiers around NetworkPolicy (on {on})"
    ));
    println!("   tenants by namespace label: blue (blue, blue-dev), green (green); demo has none");
    println!("   Admin tier: tenant-blue, tenant-green; Baseline tier: tenants-closed");
    let api = made.api();
    for t in ["blue", "green"] {
        api.create(tenant_policy(t))
            .unwrap_or_else(|e| panic!("create ClusterNetworkPolicy tenant-{t}: {e}"));
    }
    api.create(baseline_policy())
        .unwrap_or_else(|e| panic!("create ClusterNetworkPolicy tenants-closed: {e}"));
    let p0_name = format!("{POD_NAMESPACE}/{}", p0.name);
    verdicts(
        r,
        made,
        web,
        &[
            (dev, dev.name, true, "one tenant: Admin Accept"),
            (green, green.name, false, "another tenant: Admin Deny"),
            (p0, &p0_name, false, "no tenant: Baseline Deny"),
        ],
    );
    println!("   blue adds NetworkPolicy allow-all (ingress from everyone):");
    api.create(k8s::<NetworkPolicy>(json!({
        "metadata": {"name": "allow-all", "namespace": "blue"},
        "spec": {"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]},
    })))
    .unwrap_or_else(|e| panic!("create NetworkPolicy blue/allow-all: {e}"));
    verdicts(
        r,
        made,
        web,
        &[
            (
                p0,
                &p0_name,
                true,
                "blue's NetworkPolicy overrides the Baseline",
            ),
            (
                green,
                green.name,
                false,
                "NetworkPolicy cannot reopen the Admin tier",
            ),
        ],
    );
    for (from, allowed) in [(green, false), (dev, true)] {
        let (shown, code, out, err) = made.explain(web.node, from.name, web.name);
        println!("$ {shown}");
        print!("{out}");
        let tier = if allowed {
            "allowed by the Admin tier"
        } else {
            "DENIED by the Admin tier"
        };
        let ok = code == i32::from(!allowed) && out.contains(tier);
        if !ok {
            print!("{err}");
            println!(
                "FAIL exit code {code}, expected {}: {tier}",
                i32::from(!allowed)
            );
        }
        r.count(ok);
    }
    r.look_at(TROUBLESHOOTING, "5. It is blocked (NetworkPolicy)");
}

/// Each case (the client, its `namespace/pod`, whether it may connect, why) probed to
/// `to`'s server, once `to`'s node has every case's verdict (its `explain` answers from
/// the state its table was last written from); all probes at once (a denied one waits
/// out its 3 s). One ok/FAIL line each.
fn verdicts(r: &mut Report, made: &Made, to: &PodView, cases: &[(&PodView, &str, bool, &str)]) {
    for &(_, from, allowed, _) in cases {
        wait_or_stop(SETTLE, || {
            made.explain(to.node, from, to.name).1 == i32::from(!allowed)
        });
    }
    let seen = on_each(cases, |(p, ..)| connect(p.ns, to.ip, PORT));
    for (&(p, from, allowed, why), seen) in cases.iter().zip(seen) {
        let word = if allowed { "allowed" } else { "denied" };
        // Allowed: the server saw the client's own address.
        let ok = if allowed {
            seen.as_deref() == Some(p.ip)
        } else {
            seen.is_none()
        };
        r.count(ok);
        if ok {
            println!("ok   {from} -> {}: {word} ({why})", to.name);
        } else {
            let got = seen.map_or("no answer within 3s".into(), |ip| {
                format!("server saw {ip}")
            });
            println!("FAIL {from} -> {}: {got}; expected {word} ({why})", to.name);
        }
    }
}

/// How to look around a kept cluster, and the script that removes it.
fn print_keep_hints(made: &Made, nodes: &[NodeView], pods: &[PodView]) {
    let path = std::env::temp_dir().join(format!("ferry-demo-cleanup-{}.sh", std::process::id()));
    let tenants = made.tenants();
    let script = match made {
        Made::Plugin(c, ..) => {
            let namespaces: Vec<&Netns> = [&c.switch.ns, &c.etcd.host, &c.outside]
                .into_iter()
                .chain(nodes.iter().map(|n| n.host))
                .chain(pods.iter().chain(&tenants).map(|p| p.ns))
                .collect();
            cleanup_script(&namespaces, &c.all_dirs(), &[])
        }
        Made::Kind(c, ..) => {
            let namespaces: Vec<&Netns> = [&c.switch.ns, &c.api_host, &c.outside]
                .into_iter()
                .chain(nodes.iter().map(|n| n.host))
                .chain(pods.iter().chain(&tenants).map(|p| p.ns))
                .collect();
            let kept: Vec<Leftovers> = c.nodes.iter().map(|n| n.leftovers()).collect();
            cleanup_script(&namespaces, &[], &kept)
        }
    };
    if let Err(e) = std::fs::write(&path, &script) {
        println!(
            "\nCould not write {}: {e}. It would run:\n{script}",
            path.display()
        );
    }
    let n0 = &nodes[0];
    let p0 = &pods[0];
    let ipam = ferry_tests::bin("ferry-ipam");
    let h = format!("ip netns exec {}", n0.host.name);
    // Where ferry-ipam finds the store and the leases: the harness's flags, or (--cri) the
    // installed binary and the DaemonSet's defaults inside the node (the Nodes, through
    // the API with the pod's service account).
    let (health, rest) = match made {
        Made::Plugin(c, ..) => {
            let ep = c.etcd.endpoint();
            (
                HEALTH_ADDR,
                format!(
                    "\x20 {h} {ipam} leases \\\n\
                     \x20     --etcd-endpoints {ep} --etcd-prefix {prefix}\n\
                     \x20 {h} {ipam} show \\\n\
                     \x20     --data-dir {data}\n\
                     \x20 ETCDCTL_API=3 ip netns exec {e} etcdctl \\\n\
                     \x20     --endpoints {ep} get {prefix}/ --prefix --keys-only\n\
                     \x20 {ipam} explain demo/pod-00 blue/web --port {PORT} \\\n\
                     \x20     --state-dir {state}   # blue/web's node\n",
                    ipam = ipam.display(),
                    prefix = c.prefix,
                    data = c.nodes[0].dir.path().join("ipam").display(),
                    state = c.nodes[TENANT_PODS[0].2].state_dir().display(),
                    e = c.etcd.host.name,
                ),
            )
        }
        Made::Kind(c, ..) => {
            let node = &c.nodes[0];
            let ferry = c.ferry_pod(0);
            let uid = ferry.metadata.uid.clone().unwrap_or_default();
            let daemon = c
                .status(&uid)
                .and_then(|s| s.containers.get("ferry-overlayd")?.id.clone())
                .unwrap_or_default();
            let sock = node.sock();
            (
                KIND_HEALTH_ADDR,
                format!(
                    "\x20 nsenter -t {holder} -m -n /opt/cni/bin/ferry-ipam show   # inside {name}\n\
                     \x20 nsenter -t {holder} -m -n cat /etc/cni/net.d/00-ferry.conflist\n\
                     \x20 ctr --address {sock} -n k8s.io containers ls   # the pods' sandboxes and containers\n\
                     \x20 nsenter -t {holder} -m -n ctr --address {sock} -n k8s.io tasks exec \\\n\
                     \x20     --exec-id hint {daemon} ferry-ipam leases   # kubectl exec, without the API\n",
                    holder = node.holder_pid(),
                    name = node.name,
                    sock = sock.display(),
                ),
            )
        }
    };
    let gone = match made {
        Made::Plugin(..) => {
            "\nThe API was the demo's own stand-in and ended with it: each node keeps its \
             policies as they were\n(its log says it cannot reach the API)."
        }
        Made::Kind(..) => {
            "\nThe API server, kubelets and kube-proxy were the demo's own stand-ins and \
             ended with it:\nthe nodes, containerd, ferry and the pods run on, kube-proxy's \
             rules stay as they were."
        }
    };
    println!(
        "\nKept running. Try by hand ({node} is namespace {n}, pod-00 {p}):\n\
         \x20 {h} ip route            # a route per other node\n\
         \x20 {h} bridge fdb show dev ferry.1   # their VTEPs\n\
         \x20 {h} iptables -t nat -S  # ferry's and kube-proxy's NAT\n\
         \x20 ip netns exec {p} bash -c 'cat </dev/tcp/{CLUSTER_IP}/{SERVICE_PORT}'\n\
         \x20 ip netns exec {o} bash -c 'cat </dev/tcp/{n0ip}/{NODE_PORT}'\n\
         \x20 {h} curl -s {health}/metrics | grep ^ferry_\n\
         {rest}\
         (each `cat </dev/tcp/...` prints the address the server saw){gone}\n\
         Remove it all: sh {cleanup}",
        node = n0.name,
        n = n0.host.name,
        p = p0.ns.name,
        o = made.outside().name,
        n0ip = n0.ip,
        cleanup = path.display(),
    );
}

/// Everything `--keep` leaves: the processes and namespaces of this demo only, its
/// directories, and the script itself. A kind node's processes (containerd, its shims,
/// the pods) are killed by the PID list written now, each only if its start time is still
/// the one written (a PID reused since is left alone); then their cgroups go.
fn cleanup_script(
    namespaces: &[&Netns],
    dirs: &[std::path::PathBuf],
    kept: &[Leftovers],
) -> String {
    let mut s = String::from("#!/bin/sh\n# Removes what ferry-demo --keep left running.\n");
    for k in kept {
        let list: Vec<String> = k
            .processes
            .iter()
            .map(|(p, t)| format!("{p}:{t}"))
            .collect();
        let _ = writeln!(
            s,
            "for pt in {}; do p=${{pt%:*}}; t=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f20); [ \"$t\" = \"${{pt#*:}}\" ] && kill -9 $p; done",
            list.join(" ")
        );
    }
    for ns in namespaces {
        let _ = writeln!(s, "for p in $(ip netns pids {}); do kill $p; done", ns.name);
    }
    // Init reaps the killed pods in a second or two; their cgroups are empty only then.
    s.push_str(if kept.is_empty() {
        "sleep 1\n"
    } else {
        "sleep 3\n"
    });
    for ns in namespaces {
        let _ = writeln!(s, "ip netns del {}", ns.name);
    }
    for cg in kept.iter().flat_map(|k| &k.cgroups) {
        let _ = writeln!(
            s,
            "for h in /sys/fs/cgroup /sys/fs/cgroup/*; do rmdir \"$h{cg}\" 2>/dev/null; done"
        );
    }
    let dirs = dirs
        .iter()
        .cloned()
        .chain(kept.iter().map(|k| k.dir.clone()));
    for d in dirs {
        let _ = writeln!(s, "rm -rf {}", d.display());
    }
    s.push_str("rm -f \"$0\"\necho \"ferry demo removed\"\n");
    s
}
