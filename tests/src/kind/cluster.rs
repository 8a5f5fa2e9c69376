//! A kind cluster made of [`KindNode`]s, with ferry installed the way its users install
//! it: `kubectl apply -k` of the shipped kustomizations (read by [`kustomize`]), the images
//! "loaded" into every node; with the etcd component ([`Install`]), the etcd Secrets from
//! `deploy/etcd-certs.sh` too. No Kubernetes control plane can run on these machines, so
//! the test plays its part:
//!
//! - the API server is the stand-in ([`KubeApi`]) over HTTPS on a host of the switch,
//!   reached by in-cluster clients through the `kubernetes` Service's ClusterIP; it
//!   authenticates each service account's token and authorizes with the applied RBAC;
//!   it holds every Namespace and Pod (status included, as kubelet reports it), and a Node
//!   per node as kind's kubelets register them and its controller-manager allocates their
//!   pod CIDRs ([`node_object`]);
//! - the scheduler and the DaemonSet and Deployment controllers: one pod per node matching
//!   a DaemonSet's nodeSelector, one for a Deployment, a RollingUpdate with its
//!   `maxUnavailable` (a node's old pod deleted, its new one made Ready, then the next);
//! - kube-proxy: the ClusterIP Services' rules on every node, updated as endpoints become
//!   ready or go ([`proxy`]);
//! - the kubelets ([`crate::kind::kubelet`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, NodeAddress, NodeSpec, NodeStatus, Pod, PodCondition, PodIP,
    PodSpec, PodStatus as K8sPodStatus, PodTemplateSpec, Secret, Service,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::cluster::{Switch, OUTSIDE_IP, OUTSIDE_IP_V6};
use crate::kapi::KubeApi;
use crate::kind::image::{self, Image};
use crate::kind::kubelet::{Objects, PodStatus, Wiring};
use crate::kind::node::{Backend, KindNode};
use crate::kind::{kustomize, proxy};
use crate::manifest::repo;
use crate::netns::Netns;
use crate::proc::wait_until;

/// The address families of a kind cluster (`networking.ipFamily`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Dual,
    Ipv6,
}

impl Family {
    /// The kustomization `deploy/kind/up.sh` applies for this family: on the Kubernetes
    /// datastore (the default), or with the etcd component (`FERRY_KIND_DATASTORE=etcd`).
    pub fn kustomization(self, etcd: bool) -> &'static str {
        match (self, etcd) {
            (Family::Ipv4, false) => "deploy/kubernetes",
            (Family::Dual, false) => "deploy/kind/dual",
            (Family::Ipv6, false) => "deploy/kind/ipv6",
            (Family::Ipv4, true) => "deploy/kind/etcd",
            (Family::Dual, true) => "deploy/kind/dual-etcd",
            (Family::Ipv6, true) => "deploy/kind/ipv6-etcd",
        }
    }

    /// The `kubernetes` Service's ClusterIP (kind's serviceSubnet, first address).
    fn api_cluster_ip(self) -> &'static str {
        match self {
            Family::Ipv6 => "fd00:10:96::1",
            _ => "10.96.0.1",
        }
    }
}

/// Where the API stand-in listens, on the switch.
pub const API_IP: &str = "192.0.2.3";
pub const API_IP_V6: &str = "2001:db8::3";
pub const API_PORT: u16 = 6443;

/// kind's node names.
fn node_name(i: usize) -> String {
    match i {
        0 => "kind-control-plane".into(),
        1 => "kind-worker".into(),
        n => format!("kind-worker{n}"),
    }
}

/// A node's addresses on the switch, `status.hostIP` first: kind's Docker network gives
/// each node an IPv4 address and, with IPv6 on, an IPv6 one; an IPv6-only cluster's
/// kubelet uses the IPv6 one.
fn node_ips(family: Family, i: usize) -> Vec<String> {
    let v4 = format!("192.0.2.{}", 11 + i);
    let v6 = format!("2001:db8::{:x}", 0x11 + i);
    match family {
        Family::Ipv4 => vec![v4],
        Family::Dual => vec![v4, v6],
        Family::Ipv6 => vec![v6, v4],
    }
}

/// The addresses a node's kubelet reports as InternalIP (`--node-ip`, kind's Docker
/// network): each family's in a dual-stack cluster, the IPv6 one alone in an IPv6-only one.
fn internal_ips(family: Family, i: usize) -> Vec<String> {
    let ips = node_ips(family, i);
    match family {
        Family::Ipv6 => ips[..1].to_vec(),
        _ => ips,
    }
}

/// Node `i`'s `spec.podCIDRs` as kind's controller-manager allocates them
/// (`--allocate-node-cidrs`, `--cluster-cidr` = the kind config's podSubnet: 10.244.0.0/16
/// and fd00:10:244::/56): the nodes in the order they registered, the control plane first,
/// each the next /24 (IPv4) and /64 (IPv6, kubeadm's default mask), the primary family
/// first.
pub fn pod_cidrs(family: Family, i: usize) -> Vec<String> {
    let octet = u8::try_from(i).expect("at most 256 nodes in 10.244.0.0/16");
    let v4 = format!("{}/24", std::net::Ipv4Addr::new(10, 244, octet, 0));
    let v6 = format!(
        "{}/64",
        std::net::Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(octet), 0, 0, 0, 0)
    );
    match family {
        Family::Ipv4 => vec![v4],
        Family::Dual => vec![v4, v6],
        Family::Ipv6 => vec![v6],
    }
}

/// The Node object of node `i` named `name`, as kind's kubelet registers it and its
/// controller-manager completes it: kubelet's labels, `status.addresses` (its InternalIPs
/// and Hostname), `spec.podCIDR(s)`, kind's providerID. `metadata.creationTimestamp` and
/// `uid` are the API's.
pub fn node_object(
    family: Family,
    i: usize,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Node {
    let mut all = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
    ]);
    all.extend(labels.clone());
    let cidrs = pod_cidrs(family, i);
    let mut addresses: Vec<NodeAddress> = internal_ips(family, i)
        .into_iter()
        .map(|address| NodeAddress {
            type_: "InternalIP".into(),
            address,
        })
        .collect();
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: name.to_string(),
    });
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(all),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: cidrs.first().cloned(),
            pod_cidrs: Some(cidrs),
            provider_id: Some(format!("kind://docker/kind/{name}")),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(addresses),
            ..Default::default()
        }),
    }
}

/// How ferry is installed: on the Kubernetes datastore (the default, `Install::default()`),
/// or with the etcd component (`Install { etcd: true }`: its Secrets from
/// `deploy/etcd-certs.sh`, its image loaded, the family's `-etcd` kustomization).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Install {
    pub etcd: bool,
}

/// The objects the cluster holds, shared with the kubelets and their reports.
#[derive(Default)]
struct State {
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    services: Vec<Service>,
    tokens: BTreeMap<String, String>,
    ca: String,
    /// Every pod of the cluster, with its node and its last reported status.
    pods: BTreeMap<String, (Pod, Option<PodStatus>)>,
    /// Each node's namespace and iptables backend, for kube-proxy's rules.
    proxies: Vec<(String, Backend)>,
    /// The rules last written per node namespace.
    written: BTreeMap<String, String>,
    /// Image names as manifests say them, to what the nodes were loaded with.
    images: BTreeMap<String, String>,
    family: Option<Family>,
}

pub struct KindCluster {
    pub family: Family,
    pub switch: Switch,
    pub outside: Netns,
    pub api_host: Netns,
    pub api: Arc<KubeApi>,
    pub nodes: Vec<KindNode>,
    state: Arc<Mutex<State>>,
    /// The objects of the last install (`kubectl apply -k`).
    pub applied: Vec<Value>,
    /// How the last install was made.
    pub installed: Install,
}

static UIDS: AtomicU64 = AtomicU64::new(1);

fn new_uid() -> String {
    let n = UIDS.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), n)
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "{} {}: {e}",
            v["kind"].as_str().unwrap_or("?"),
            v["metadata"]["name"].as_str().unwrap_or("?")
        )
    })
}

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| o["kind"] == kind)
}

impl KindCluster {
    /// `kind create cluster` with `disableDefaultCNI`: a control plane and `workers`
    /// workers, the API up, no pod network (the nodes' runtimes report NetworkReady false).
    pub fn create(family: Family, workers: usize, backend: Backend) -> KindCluster {
        Self::create_with(family, &vec![backend; workers + 1])
    }

    /// With each node's iptables backend given (the first is the control plane's).
    pub fn create_with(family: Family, backends: &[Backend]) -> KindCluster {
        let switch = Switch::new();
        let outside = Netns::new("fyo");
        switch.plug(&outside, OUTSIDE_IP);
        outside.sh(&format!("ip -6 addr add {OUTSIDE_IP_V6}/64 dev eth0 nodad"));
        let api_host = Netns::new("fya");
        switch.plug(&api_host, API_IP);
        api_host.sh(&format!("ip -6 addr add {API_IP_V6}/64 dev eth0 nodad"));
        let sans: Vec<IpAddr> = ["10.96.0.1", "fd00:10:96::1", API_IP, API_IP_V6]
            .iter()
            .map(|s| s.parse().expect("an address"))
            .collect();
        let api = crate::inside::run(&api_host, move || {
            let addr: SocketAddr = format!("[::]:{API_PORT}").parse().expect("addr");
            KubeApi::bind_tls(addr, &sans).expect("the API stand-in")
        });
        let api = Arc::new(api);
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            api.create(namespace(ns)).expect("namespace");
        }
        let mut images = BTreeMap::new();
        images.insert(
            crate::cri::image::IMAGE.to_string(),
            crate::cri::image::IMAGE.to_string(),
        );
        let state = Arc::new(Mutex::new(State {
            ca: api.ca_pem(),
            family: Some(family),
            images,
            ..Default::default()
        }));
        let mut c = KindCluster {
            family,
            switch,
            outside,
            api_host,
            api,
            nodes: Vec::new(),
            state,
            applied: Vec::new(),
            installed: Install::default(),
        };
        for (i, b) in backends.iter().enumerate() {
            let mut node = KindNode::boot(&c.switch, &node_name(i), &node_ips(family, i), *b);
            if i == 0 {
                node.labels.insert(
                    "node-role.kubernetes.io/control-plane".into(),
                    String::new(),
                );
            }
            // Registered by its kubelet, its pod CIDRs given by the controller-manager.
            c.api
                .create(node_object(family, i, &node.name, &node.labels))
                .expect("the Node");
            c.nodes.push(node);
        }
        c.sync_proxies_list();
        for i in 0..c.nodes.len() {
            c.start_kubelet(i);
        }
        c.sync_services();
        c
    }

    fn wiring(&self) -> Wiring {
        let st = self.state.clone();
        let objects = Arc::new(move || {
            let s = st.lock().expect("state");
            Objects {
                config_maps: s.config_maps.clone(),
                secrets: s.secrets.clone(),
                tokens: s.tokens.clone(),
                ca: s.ca.clone(),
            }
        });
        let st = self.state.clone();
        let images = Arc::new(move || st.lock().expect("state").images.clone());
        let st = self.state.clone();
        let api = self.api.clone();
        let report = Arc::new(move |pod: &Pod, status: &PodStatus| {
            report(&st, &api, pod, status);
        });
        let (host, port) = (self.family.api_cluster_ip().to_string(), 443);
        Wiring {
            api_service: (host, port),
            images,
            objects,
            report,
        }
    }

    fn start_kubelet(&mut self, i: usize) {
        let w = self.wiring();
        self.nodes[i].start_kubelet(w);
    }

    fn sync_proxies_list(&self) {
        let mut s = self.state.lock().expect("state");
        s.proxies = self
            .nodes
            .iter()
            .map(|n| (n.host.name.clone(), n.backend))
            .collect();
        s.written.clear();
    }

    /// kube-proxy's rules on every node, from the Services and the ready endpoints.
    pub fn sync_services(&self) {
        sync_services(&self.state);
    }

    /// `kind load docker-image`: the image into every node's runtime, as `as_name` in the
    /// manifests (`ferry:dev`).
    pub fn load(&mut self, img: &Image, as_name: &str) {
        for n in &self.nodes {
            n.import(&img.tar.display().to_string());
        }
        self.state
            .lock()
            .expect("state")
            .images
            .insert(as_name.to_string(), img.name.clone());
    }

    /// The default install as docs/install.md gives it (the Kubernetes datastore, no
    /// etcd): `kubectl apply -k` of the family's kustomization with the image set to `img`.
    /// Returns once every pod it made is Ready (or panics after `timeout`, with the pods'
    /// events).
    pub fn install(&mut self, img: &Image, timeout: Duration) {
        self.install_as(img, Install::default(), timeout);
    }

    /// The install made `how`: with `Install { etcd: true }`, first the etcd Secrets
    /// (`deploy/etcd-certs.sh | kubectl apply -f -`), then the family's kustomization with
    /// the etcd component. Returns once every pod it made is Ready.
    pub fn install_as(&mut self, img: &Image, how: Install, timeout: Duration) {
        self.install_with(img, how, |_| {});
        self.wait_all_ready(timeout);
    }

    /// The install made `how`, with the kustomization's output changed by `edit` first (a
    /// user's own patch, or a broken manifest), not waiting for anything.
    pub fn install_with(&mut self, img: &Image, how: Install, edit: impl FnOnce(&mut Vec<Value>)) {
        self.load(img, "ferry:dev");
        if how.etcd {
            self.load(image::etcd(), "registry.k8s.io/etcd");
            let out = crate::run_ok(
                &mut std::process::Command::new(repo().join("deploy/etcd-certs.sh")),
                "deploy/etcd-certs.sh",
            );
            let secrets =
                kustomize::documents_of(&String::from_utf8_lossy(&out.stdout), "etcd-certs.sh");
            self.apply(&secrets);
        }
        let mut objects = kustomize::build(&repo().join(self.family.kustomization(how.etcd)));
        edit(&mut objects);
        self.apply(&objects);
        self.applied = objects;
        self.installed = how;
    }

    /// `kubectl edit configmap`: the stored ConfigMap `namespace/name` with its data changed
    /// by `edit`; then every kubelet brings its running pods' configMap volumes up to date
    /// within a tick, where a real kubelet takes up to its sync period (a minute or so).
    /// Environment variables taken from it stay as they were until a container starts
    /// again, as in Kubernetes. (`applied` keeps the install's copy.)
    pub fn update_config_map(
        &mut self,
        namespace: &str,
        name: &str,
        edit: impl FnOnce(&mut BTreeMap<String, String>),
    ) {
        {
            let mut s = self.state.lock().expect("state");
            let cm = s
                .config_maps
                .iter_mut()
                .find(|c| {
                    c.metadata.name.as_deref() == Some(name)
                        && c.metadata.namespace.as_deref().unwrap_or("default") == namespace
                })
                .unwrap_or_else(|| panic!("no ConfigMap {namespace}/{name} was applied"));
            let mut data = cm.data.take().unwrap_or_default();
            edit(&mut data);
            cm.data = Some(data);
        }
        for n in &self.nodes {
            if let Some(k) = n.kubelet.as_ref() {
                k.sync_volumes();
            }
        }
    }

    /// ExecSync of `cmd` in container `container` of pod `uid` (`kubectl exec`): exit
    /// code, stdout, stderr.
    pub fn exec(&self, uid: &str, container: &str, cmd: &[&str]) -> (i32, String, String) {
        let st = self.status(uid).unwrap_or_else(|| panic!("no pod {uid}"));
        let id = st
            .containers
            .get(container)
            .and_then(|c| c.id.clone())
            .unwrap_or_else(|| panic!("pod {uid} has no container {container}"));
        let node = self.node_of(uid);
        self.nodes[node]
            .cri()
            .exec(&id, cmd, 30)
            .unwrap_or_else(|e| panic!("exec {cmd:?}: {}", e.message()))
    }

    /// The index of the node pod `uid` is bound to.
    pub fn node_of(&self, uid: &str) -> usize {
        let s = self.state.lock().expect("state");
        let node = s
            .pods
            .get(uid)
            .and_then(|(p, _)| p.spec.as_ref()?.node_name.clone())
            .unwrap_or_default();
        self.nodes
            .iter()
            .position(|n| n.name == node)
            .unwrap_or_else(|| panic!("pod {uid} is on no node"))
    }

    /// etcdctl against ferry's etcd through its ClusterIP, from the control-plane node's
    /// host network, with the
    /// client certificate of the `ferry-etcd-client` Secret (as a daemon presents it).
    pub fn etcdctl(&self, args: &str) -> String {
        assert!(
            self.installed.etcd,
            "etcdctl: ferry was installed without the etcd component (Install {{ etcd: true }})"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = self.state.lock().expect("state");
            let sec = s
                .secrets
                .iter()
                .find(|x| x.metadata.name.as_deref() == Some("ferry-etcd-client"))
                .expect("the ferry-etcd-client Secret");
            for (k, v) in sec.data.clone().unwrap_or_default() {
                std::fs::write(dir.path().join(k), v.0).expect("write cert");
            }
        }
        let d = dir.path().display();
        // The Service's ClusterIP, which the server certificate names.
        let ep = match self.family {
            Family::Ipv6 => "[fd00:10:96::66]",
            _ => "10.96.0.66",
        };
        self.nodes[0].host.sh(&format!(
            "ETCDCTL_API=3 etcdctl --endpoints https://{ep}:6666 --cacert {d}/ca.crt \
             --cert {d}/client.crt --key {d}/client.key {args}"
        ))
    }

    /// `kubectl apply` of `objects`: kept, and acted on as the control plane would.
    pub fn apply(&mut self, objects: &[Value]) {
        {
            let mut s = self.state.lock().expect("state");
            for o in of_kind(objects, "ConfigMap") {
                let cm: ConfigMap = typed(o);
                s.config_maps
                    .retain(|c| c.metadata.name != cm.metadata.name);
                s.config_maps.push(cm);
            }
            for o in of_kind(objects, "Secret") {
                let sec: Secret = typed(o);
                s.secrets.retain(|c| c.metadata.name != sec.metadata.name);
                s.secrets.push(sec);
            }
            for o in of_kind(objects, "Service") {
                let svc: Service = typed(o);
                s.services.retain(|c| c.metadata.name != svc.metadata.name);
                s.services.push(svc);
            }
            for o in of_kind(objects, "ServiceAccount") {
                let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                let api = &self.api;
                s.tokens
                    .entry(format!("{ns}/{name}"))
                    .or_insert_with(|| api.service_account_token(ns, name));
            }
        }
        let roles: Vec<ClusterRole> = of_kind(objects, "ClusterRole").map(typed).collect();
        let bindings: Vec<ClusterRoleBinding> =
            of_kind(objects, "ClusterRoleBinding").map(typed).collect();
        if !roles.is_empty() || !bindings.is_empty() {
            self.api.set_rbac(roles, bindings);
        }
        self.sync_services();
        for o in of_kind(objects, "Deployment") {
            let d: Deployment = typed(o);
            let (owner, template) = workload(&d.metadata, d.spec.map(|s| s.template));
            if let Some(i) = self
                .nodes
                .iter()
                .position(|n| schedulable(n, template.spec.as_ref()))
            {
                self.run_from(i, &owner, &template, d.metadata.namespace.as_deref());
            }
        }
        for o in of_kind(objects, "DaemonSet") {
            let ds: DaemonSet = typed(o);
            let (owner, template) = workload(&ds.metadata, ds.spec.map(|s| s.template));
            for i in 0..self.nodes.len() {
                if schedulable(&self.nodes[i], template.spec.as_ref()) {
                    self.run_from(i, &owner, &template, ds.metadata.namespace.as_deref());
                }
            }
        }
    }

    /// A pod of `owner` (a DaemonSet or Deployment) from its template, on node `i`.
    fn run_from(
        &mut self,
        i: usize,
        owner: &str,
        template: &k8s_openapi::api::core::v1::PodTemplateSpec,
        namespace: Option<&str>,
    ) -> String {
        let uid = new_uid();
        let mut labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert("ferry.test/owner".into(), owner.into());
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("{owner}-{}", &uid[uid.len() - 5..])),
                namespace: Some(namespace.unwrap_or("default").to_string()),
                uid: Some(uid.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(self.nodes[i].name.clone()),
                ..template.spec.clone().unwrap_or_default()
            }),
            status: None,
        };
        self.schedule(i, pod);
        uid
    }

    /// Binds `pod` to node `i`: in the API, then run by the node's kubelet.
    pub fn schedule(&mut self, i: usize, mut pod: Pod) -> String {
        let uid = pod.metadata.uid.clone().unwrap_or_else(new_uid);
        pod.metadata.uid = Some(uid.clone());
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(self.nodes[i].name.clone());
        }
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        if self.api.get::<Namespace>(None, &ns).is_none() {
            let _ = self.api.create(namespace(&ns));
        }
        let _ = self.api.create(pod.clone());
        self.state
            .lock()
            .expect("state")
            .pods
            .insert(uid.clone(), (pod.clone(), None));
        self.nodes[i].kubelet().run(pod);
        uid
    }

    /// The pods of `owner` (a DaemonSet's or Deployment's name), with their node's index.
    pub fn pods_of(&self, owner: &str) -> Vec<(usize, Pod)> {
        let s = self.state.lock().expect("state");
        s.pods
            .values()
            .filter(|(p, _)| owner_of(p) == Some(owner))
            .filter_map(|(p, _)| {
                let node = p.spec.as_ref()?.node_name.clone()?;
                let i = self.nodes.iter().position(|n| n.name == node)?;
                Some((i, p.clone()))
            })
            .collect()
    }

    /// The last status kubelet reported for pod `uid`.
    pub fn status(&self, uid: &str) -> Option<PodStatus> {
        self.state
            .lock()
            .expect("state")
            .pods
            .get(uid)
            .and_then(|(_, s)| s.clone())
    }

    /// The pod `owner` runs on node `i`.
    pub fn pod_on(&self, owner: &str, i: usize) -> Option<Pod> {
        self.pods_of(owner)
            .into_iter()
            .find(|(n, _)| *n == i)
            .map(|(_, p)| p)
    }

    /// Deletes pod `uid` as the API's deletion does: its kubelet stops it (grace period),
    /// then it leaves the API.
    pub fn delete_pod(&mut self, uid: &str) {
        let entry = self.state.lock().expect("state").pods.remove(uid);
        let Some((pod, _)) = entry else {
            return;
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if let Some(n) = self.nodes.iter().find(|n| n.name == node) {
            if let Some(k) = n.kubelet.as_ref() {
                k.delete(uid);
            }
        }
        let ns = pod.metadata.namespace.as_deref();
        let _ = self
            .api
            .delete::<Pod>(ns, pod.metadata.name.as_deref().unwrap_or_default());
        self.sync_services();
    }

    /// `kubectl delete` of `objects`: their pods deleted, their Services' rules gone.
    pub fn delete(&mut self, objects: &[Value]) {
        for o in objects {
            let kind = o["kind"].as_str().unwrap_or_default();
            let name = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match kind {
                "DaemonSet" | "Deployment" => {
                    for (_, p) in self.pods_of(&name) {
                        let uid = p.metadata.uid.clone().unwrap_or_default();
                        self.delete_pod(&uid);
                    }
                }
                "Service" => {
                    let mut s = self.state.lock().expect("state");
                    s.services
                        .retain(|x| x.metadata.name.as_deref() != Some(&name));
                }
                "ConfigMap" => {
                    let mut s = self.state.lock().expect("state");
                    s.config_maps
                        .retain(|x| x.metadata.name.as_deref() != Some(&name));
                }
                "Secret" => {
                    let mut s = self.state.lock().expect("state");
                    s.secrets
                        .retain(|x| x.metadata.name.as_deref() != Some(&name));
                }
                _ => {}
            }
        }
        self.sync_services();
    }

    /// Waits until every pod of the cluster is Ready; panics after `timeout` naming the
    /// pods that are not, with their events.
    pub fn wait_all_ready(&self, timeout: Duration) {
        let ok = wait_until(timeout, || {
            let s = self.state.lock().expect("state");
            s.pods
                .values()
                .all(|(_, st)| st.as_ref().is_some_and(PodStatus::ready))
        });
        assert!(ok, "pods not ready after {timeout:?}:\n{}", self.describe());
    }

    /// Every pod's status and events, as `kubectl describe` would show them.
    pub fn describe(&self) -> String {
        let s = self.state.lock().expect("state");
        let mut out = String::new();
        for (p, st) in s.pods.values() {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            out += &format!(
                "pod {}/{} on {node}: ready {}\n",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default(),
                st.as_ref().is_some_and(PodStatus::ready)
            );
            if let Some(st) = st {
                for (name, c) in &st.containers {
                    out += &format!(
                        "  {name}: running {} ready {} restarts {} last exit {:?} {}\n",
                        c.running,
                        c.ready,
                        c.restarts,
                        c.last_exit,
                        c.waiting.as_deref().unwrap_or("")
                    );
                }
                for e in &st.events {
                    out += &format!("  {e}\n");
                }
            }
            let uid = p.metadata.uid.clone().unwrap_or_default();
            if let Some(n) = self.nodes.iter().find(|n| n.name == node) {
                for c in p
                    .spec
                    .iter()
                    .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
                {
                    let restarts = st
                        .as_ref()
                        .and_then(|st| st.containers.get(&c.name))
                        .map(|c| c.restarts)
                        .unwrap_or(0);
                    if let Some(k) = n.kubelet.as_ref() {
                        let log = k.log(&uid, &c.name, restarts);
                        let tail: Vec<&str> = log.lines().rev().take(15).collect();
                        if !tail.is_empty() {
                            out += &format!("  log of {} (last lines):\n", c.name);
                            for l in tail.into_iter().rev() {
                                out += &format!("    {l}\n");
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The log of container `name` of pod `uid` (its current restart).
    pub fn logs(&self, uid: &str, name: &str) -> String {
        let st = self.status(uid);
        let restarts = st
            .as_ref()
            .and_then(|s| s.containers.get(name))
            .map(|c| c.restarts)
            .unwrap_or(0);
        let s = self.state.lock().expect("state");
        let Some((p, _)) = s.pods.get(uid) else {
            return String::new();
        };
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        drop(s);
        self.nodes
            .iter()
            .find(|n| n.name == node)
            .and_then(|n| n.kubelet.as_ref())
            .map(|k| k.log(uid, name, restarts))
            .unwrap_or_default()
    }

    /// A workload pod (a sandbox, as every test pod here is) in `namespace` on node `i`,
    /// labelled; Ready once its sandbox has its network.
    pub fn run_pod(
        &mut self,
        i: usize,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> String {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: None,
        };
        self.schedule(i, pod)
    }

    /// Waits until pod `uid` is Ready; its status, or a panic with the events.
    pub fn wait_ready(&self, uid: &str, timeout: Duration) -> PodStatus {
        let ok = wait_until(timeout, || self.status(uid).is_some_and(|s| s.ready()));
        assert!(
            ok,
            "pod {uid} not ready after {timeout:?}:\n{}",
            self.describe()
        );
        self.status(uid).expect("status")
    }

    /// A name for pod `uid`'s network namespace (through its sandbox's process).
    pub fn pod_netns(&self, uid: &str) -> Netns {
        let pid = self.status(uid).map(|s| s.sandbox_pid).unwrap_or(0);
        assert!(pid > 0, "pod {uid} has no sandbox process");
        Netns::attach("fyq", pid)
    }

    /// Reboots node `i`: its processes and kernel state gone, `/run` emptied, the machine
    /// back with the same disk; kube-proxy's rules come back, and its kubelet runs the
    /// pods bound to it again.
    pub fn reboot(&mut self, i: usize) {
        let pods: Vec<Pod> = self.nodes[i]
            .kubelet
            .as_ref()
            .map(|k| k.pods())
            .unwrap_or_default();
        self.nodes[i].reboot(&self.switch);
        self.sync_proxies_list();
        self.sync_services();
        {
            let mut s = self.state.lock().expect("state");
            for p in &pods {
                if let Some((_, st)) = s
                    .pods
                    .get_mut(p.metadata.uid.as_deref().unwrap_or_default())
                {
                    *st = None;
                }
            }
        }
        self.start_kubelet(i);
        for p in pods {
            self.nodes[i].kubelet().run(p);
        }
    }

    /// A DaemonSet's RollingUpdate to the template of `ds` (as `kubectl apply` of a changed
    /// DaemonSet starts it): node by node, at most `maxUnavailable` (here 1) at a time, the
    /// old pod deleted, the new one Ready before the next node. Returns how long each node
    /// waited from the old pod's deletion to the new pod's readiness.
    pub fn rolling_update(&mut self, ds: &Value, per_node: Duration) -> Vec<Duration> {
        let ds_t: DaemonSet = typed(ds);
        let owner = ds_t.metadata.name.clone().unwrap_or_default();
        let template = ds_t
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let mut took = Vec::new();
        for i in 0..self.nodes.len() {
            let Some(old) = self.pod_on(&owner, i) else {
                continue;
            };
            let t0 = Instant::now();
            self.delete_pod(old.metadata.uid.as_deref().unwrap_or_default());
            let uid = self.run_from(i, &owner, &template, ds_t.metadata.namespace.as_deref());
            self.wait_ready(&uid, per_node);
            took.push(t0.elapsed());
        }
        took
    }

    /// The nodes' readiness as kubelet reports it (the runtime's NetworkReady).
    pub fn nodes_network_ready(&self) -> Vec<(String, bool, String)> {
        self.nodes
            .iter()
            .map(|n| {
                let (ok, why) = n.network_ready();
                (n.name.clone(), ok, why)
            })
            .collect()
    }

    /// The applied object of `kind` named `name`.
    pub fn object(&self, kind: &str, name: &str) -> Value {
        self.applied
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} {name} was applied"))
    }

    /// Starts trying a pod's RunPodSandbox on node `i` every 100 ms, as a kubelet with a
    /// pod waiting for the network would, until one succeeds (within `timeout`): the time
    /// of that first successful ADD. The pod is in the API first (as the scheduler leaves
    /// it), and removed with its sandbox after.
    pub fn probe_first_add(
        &self,
        i: usize,
        timeout: Duration,
    ) -> std::thread::JoinHandle<Result<Instant, String>> {
        let name = format!("first-add-{i}");
        let uid = new_uid();
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("default".into()),
                uid: Some(uid),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(self.nodes[i].name.clone()),
                ..Default::default()
            }),
            status: None,
        };
        let _ = self.api.create(pod.clone());
        let sock = self.nodes[i].sock();
        let api = self.api.clone();
        std::thread::spawn(move || {
            let cri = crate::cri::Cri::connect(&sock);
            let end = Instant::now() + timeout;
            let mut done = Err("never tried".to_string());
            // A new attempt number each time, as kubelet's: the runtime may still hold
            // a failed attempt's name.
            let mut attempt = 0;
            while Instant::now() < end {
                let config = crate::kind::spec::sandbox_config(&pod, attempt);
                attempt += 1;
                match cri.run_sandbox(config) {
                    Ok(id) => {
                        done = Ok(Instant::now());
                        let _ = cri.stop_pod(&id);
                        let _ = cri.remove_pod(&id);
                        break;
                    }
                    Err(e) => done = Err(e.message().to_string()),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = api.delete::<Pod>(Some("default"), &name);
            done
        })
    }

    /// When node `i`'s ferry-overlayd container last started.
    pub fn daemon_started(&self, i: usize) -> Option<Instant> {
        let uid = self.ferry_pod(i).metadata.uid.unwrap_or_default();
        self.status(&uid)?
            .containers
            .get("ferry-overlayd")?
            .started_at
    }

    /// `ferry-ipam <command> -o json` run in node `i`'s ferry-overlayd container, as
    /// docs/troubleshooting.md has an operator run it.
    pub fn ferry_ipam_json(&self, i: usize, command: &str) -> Value {
        let uid = self.ferry_pod(i).metadata.uid.unwrap_or_default();
        let (code, out, err) = self.exec(
            &uid,
            "ferry-overlayd",
            &["ferry-ipam", command, "-o", "json"],
        );
        assert_eq!(code, 0, "ferry-ipam {command} in the container: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{command} JSON ({e}): {out}"))
    }

    /// The node `i`'s ferry pod (DaemonSet `ferry`).
    pub fn ferry_pod(&self, i: usize) -> Pod {
        self.pod_on("ferry", i).unwrap_or_else(|| {
            panic!(
                "no ferry pod on {}:\n{}",
                self.nodes[i].name,
                self.describe()
            )
        })
    }
}

impl Drop for KindCluster {
    fn drop(&mut self) {
        // Kubelets first (their threads hold the nodes' namespaces), then the nodes.
        for n in self.nodes.iter_mut() {
            n.power_off();
        }
    }
}

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn owner_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get("ferry.test/owner")
        .map(String::as_str)
}

/// Whether the scheduler would place a pod of `spec` on `node` (nodeSelector; every
/// shipped pod tolerates every taint).
/// A Deployment's or DaemonSet's name (the owner of its pods) and its pod template (the
/// default when it has no spec).
fn workload(meta: &ObjectMeta, template: Option<PodTemplateSpec>) -> (String, PodTemplateSpec) {
    (
        meta.name.clone().unwrap_or_default(),
        template.unwrap_or_default(),
    )
}

fn schedulable(node: &KindNode, spec: Option<&PodSpec>) -> bool {
    spec.and_then(|s| s.node_selector.as_ref())
        .map(|sel| sel.iter().all(|(k, v)| node.labels.get(k) == Some(v)))
        .unwrap_or(true)
}

/// What kubelet's status update does: the pod's addresses, phase and readiness into the
/// API; and kube-proxy's rules follow a change of readiness.
fn report(state: &Mutex<State>, api: &KubeApi, pod: &Pod, st: &PodStatus) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let changed;
    {
        let mut s = state.lock().expect("state");
        let Some(entry) = s.pods.get_mut(&uid) else {
            return;
        };
        let before = entry.1.as_ref().map(PodStatus::ready);
        changed = before != Some(st.ready());
        entry.1 = Some(st.clone());
    }
    if st.gone {
        return;
    }
    let mut p = pod.clone();
    let ips: Vec<String> = st
        .ip
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    p.status = Some(K8sPodStatus {
        phase: Some(
            if st.sandbox.is_some() {
                "Running"
            } else {
                "Pending"
            }
            .into(),
        ),
        pod_ip: ips.first().cloned(),
        pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if st.ready() { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let _ = api.update(p);
    if changed {
        sync_services(state);
    }
}

/// kube-proxy: each Service's ready endpoints, written to every node when they changed.
fn sync_services(state: &Mutex<State>) {
    let mut s = state.lock().expect("state");
    let family = s.family.unwrap_or(Family::Ipv4);
    let mut svcs: Vec<proxy::Svc> = vec![proxy::Svc {
        cluster_ip: family.api_cluster_ip().into(),
        port: 443,
        node_port: None,
        endpoints: vec![(
            if family == Family::Ipv6 {
                API_IP_V6
            } else {
                API_IP
            }
            .into(),
            API_PORT,
        )],
    }];
    for svc in &s.services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let Some(cip) = spec.cluster_ip.clone().filter(|c| c != "None") else {
            continue;
        };
        let v6 = cip.contains(':');
        let selector = spec.selector.clone().unwrap_or_default();
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let external = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        for port in spec.ports.iter().flatten() {
            let target = match &port.target_port {
                Some(IntOrString::Int(n)) => *n as u16,
                _ => port.port as u16,
            };
            let endpoints = s
                .pods
                .values()
                .filter(|(p, _)| p.metadata.namespace.as_deref() == Some(ns.as_str()))
                .filter(|(p, _)| {
                    let labels = p.metadata.labels.clone().unwrap_or_default();
                    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                })
                .filter_map(|(_, st)| st.as_ref().filter(|st| st.ready() && !st.gone))
                .filter_map(|st| {
                    st.ip
                        .split(',')
                        .find(|ip| ip.contains(':') == v6)
                        .map(str::to_string)
                })
                .map(|ip| (ip, target))
                .collect();
            svcs.push(proxy::Svc {
                cluster_ip: cip.clone(),
                port: port.port as u16,
                node_port: port
                    .node_port
                    .filter(|_| external)
                    .and_then(|n| u16::try_from(n).ok()),
                endpoints,
            });
        }
    }
    let proxies = s.proxies.clone();
    for (ns, backend) in proxies {
        for v6 in [false, true] {
            let mine: Vec<proxy::Svc> = svcs
                .iter()
                .filter(|x| x.cluster_ip.contains(':') == v6)
                .cloned()
                .collect();
            // kind's podSubnet, which kube-proxy is given as its cluster CIDR.
            let pods = if v6 {
                "fd00:10:244::/56"
            } else {
                "10.244.0.0/16"
            };
            let input = proxy::restore_input(&mine, pods);
            let key = format!("{ns}/{v6}");
            if s.written.get(&key) == Some(&input) {
                continue;
            }
            let tool = backend.tool(v6);
            // The chains first: a jump to a chain that is not there yet fails.
            let script = format!(
                "set -e\n{tool}-restore -w --noflush <<'EOF'\n{input}EOF\n{}",
                proxy::jumps(&tool)
            );
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "sh", "-c", &script])
                .output()
                .expect("ip netns exec");
            if out.status.success() {
                s.written.insert(key, input);
            } else {
                eprintln!(
                    "kube-proxy rules on {ns}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnetwork::IpNetwork;

    /// The podSubnet of the kind config `deploy/kind/up.sh` creates the family's cluster
    /// from, one network per family.
    fn kind_pod_subnet(family: Family) -> Vec<IpNetwork> {
        let file = match family {
            Family::Ipv4 => "deploy/kind/kind-config.yaml",
            Family::Dual => "deploy/kind/kind-config-dual.yaml",
            Family::Ipv6 => "deploy/kind/kind-config-ipv6.yaml",
        };
        let config = &kustomize::documents_at(&repo().join(file))[0];
        config["networking"]["podSubnet"]
            .as_str()
            .expect("podSubnet")
            .split(',')
            .map(|n| n.parse().expect("a network"))
            .collect()
    }

    #[test]
    fn each_node_has_the_pod_cidrs_kinds_controller_manager_gives_it() {
        assert_eq!(pod_cidrs(Family::Ipv4, 0), ["10.244.0.0/24"]);
        assert_eq!(
            pod_cidrs(Family::Dual, 2),
            ["10.244.2.0/24", "fd00:10:244:2::/64"]
        );
        assert_eq!(pod_cidrs(Family::Ipv6, 0), ["fd00:10:244::/64"]);
        for family in [Family::Ipv4, Family::Dual, Family::Ipv6] {
            let subnet = kind_pod_subnet(family);
            // The ConfigMap's cluster CIDRs are the kind config's podSubnet.
            let objects = kustomize::build(&repo().join(family.kustomization(false)));
            let data = &objects
                .iter()
                .find(|o| o["kind"] == "ConfigMap")
                .expect("ConfigMap")["data"];
            let cidrs: Vec<IpNetwork> = ["cluster-cidr", "cluster-cidr-v6"]
                .iter()
                .filter_map(|k| data[k].as_str())
                .map(|n| n.parse().expect("a network"))
                .collect();
            assert_eq!(cidrs, subnet, "{family:?}");
            let mut seen: Vec<IpNetwork> = Vec::new();
            for i in 0..3 {
                let node = node_object(family, i, &node_name(i), &BTreeMap::new());
                let spec = node.spec.expect("spec");
                let got: Vec<IpNetwork> = spec
                    .pod_cidrs
                    .iter()
                    .flatten()
                    .map(|n| n.parse().expect("a network"))
                    .collect();
                assert_eq!(got.len(), subnet.len(), "{family:?}: one per family");
                for (n, s) in got.iter().zip(&subnet) {
                    assert!(
                        s.contains(n.network()) && n.prefix() > s.prefix(),
                        "{n} in {s}"
                    );
                    assert!(!seen.iter().any(|x| x.contains(n.network())), "{n} twice");
                    seen.push(*n);
                }
                assert_eq!(
                    spec.pod_cidr,
                    spec.pod_cidrs.and_then(|c| c.first().cloned())
                );
                let internal: Vec<String> = node
                    .status
                    .and_then(|s| s.addresses)
                    .into_iter()
                    .flatten()
                    .filter(|a| a.type_ == "InternalIP")
                    .map(|a| a.address)
                    .collect();
                // status.hostIP, the underlay address ferry publishes, is among them.
                assert_eq!(internal[0], node_ips(family, i)[0], "{family:?}");
                assert_eq!(internal.len(), subnet.len(), "{family:?}: {internal:?}");
            }
        }
    }
}
