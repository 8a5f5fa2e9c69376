//! The world NetworkPolicy conformance cases run in: a 3-node cluster (the harness's
//! namespaces, either datastore) whose daemons enforce NetworkPolicy from the cluster's
//! Kubernetes API stand-in (`Cluster::api`, listening in the etcd host's namespace, reached
//! by every node over the underlay), and the namespaces and pods of a world
//! ([`WorldSpec`]): the model's x, y, z with pods a, b, c each ([`World::new`]), or a case
//! file's declared world ([`World::declared`]).
//!
//! Pods are made as a kubelet makes them: the Pod object first (its labels,
//! `spec.nodeName`, a container with a port for every named port it serves: the model's
//! `serve-<port>-<proto>`), then the plugin's ADD naming the pod in `CNI_ARGS` (which
//! returns once the node's rules cover the pod), then `status.podIPs` from the ADD's
//! result. A host-network pod (`host_network: true`) has no ADD: its object says
//! `hostNetwork`, its address is its node's and its servers run in the node's namespace.
//! Unless the world says `services: false`, each pod has a ClusterIP Service
//! (`s-<ns>-<pod>`) as kube-proxy-style rules on every node. Every pod serves each of
//! its ports (see `probe`). The pods of namespace i are spread from node i on, so that
//! same-node and cross-node pairs both occur; host-network pods go round the nodes in
//! turn.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ferry_netpol::ClusterNetworkPolicy;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use super::cases::{Case, PodRef, PortSpec, Protocol, WorldSpec};
use super::probe::{self, Seen, Servers};
use crate::cluster::{self, Cluster, Progress};
use crate::kapi::{KubeApi, Served};
use crate::netns::Netns;
use crate::services::ClusterIps;

pub const NODES: usize = 3;
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// One pod of the world.
pub struct WorldPod {
    /// Dropped first: no socket holds the pod's namespace when it is removed.
    pub servers: Servers,
    pub pod: cluster::Pod,
    pub node: usize,
    pub ip: Ipv4Addr,
    /// The ClusterIP of its Service `s-<ns>-<pod>` (reserved, no rules, without Services).
    pub service_ip: Ipv4Addr,
}

/// A host-network pod of the world: its servers run in its node's namespace.
pub struct HostPod {
    pub servers: Servers,
    pub node: usize,
    /// Its node's address.
    pub ip: Ipv4Addr,
    pub service_ip: Ipv4Addr,
}

/// The cluster, the API and the pods. Dropping it removes everything it made.
pub struct World {
    /// Declared (so dropped) before the cluster: servers stop, pods go, then the nodes.
    pods: BTreeMap<PodRef, WorldPod>,
    host_pods: BTreeMap<PodRef, HostPod>,
    pub cluster: Cluster,
    policies: BTreeSet<(String, String)>,
    cnps: BTreeSet<String>,
    /// What the world was made of (its first labels, its ports).
    spec: WorldSpec,
}

/// One probe: from a pod's namespace to an address, port and protocol.
#[derive(Debug, Clone)]
pub struct ProbeJob {
    pub from: PodRef,
    pub to_ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

fn k8s<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a well-formed object")
}

impl World {
    /// Builds the world; every pod serves every port of `ports` on every protocol of
    /// `protocols` (a case probes a subset). `report` hears of each step.
    pub fn new(ports: &[u16], protocols: &[Protocol], report: &mut dyn FnMut(&str)) -> World {
        World::with_args(ports, protocols, "", report)
    }

    /// A world serving TCP 80 whose pods have both families (an IPv6 cluster CIDR the kit
    /// picks), as the IPv6 NetworkPolicy tests want it.
    pub fn dual_stack() -> World {
        let (_, cidr6) = crate::cluster::next_cidrs();
        let flags = format!("--cluster-cidr-v6 {cidr6}");
        World::with_args(&[80], &[Protocol::Tcp], &flags, &mut |_| {})
    }

    /// `new`, with more daemon flags (`--cluster-cidr-v6 …` for a dual-stack world, whose
    /// pods then carry both addresses in `status.podIPs`).
    pub fn with_args(
        ports: &[u16],
        protocols: &[Protocol],
        daemon_args: &str,
        report: &mut dyn FnMut(&str),
    ) -> World {
        let cluster = build_cluster(daemon_args, &mut |_| {}, report);
        World::populate(cluster, WorldSpec::model(ports, protocols), false, report)
    }

    /// The world of `new` serving TCP 80, `first` done to the API before any daemon
    /// starts: what the daemons must meet from their start, such as a CRD not installed
    /// (`KubeApi::set_cnp_served(false)`).
    pub fn with_api_first(first: &mut dyn FnMut(&KubeApi)) -> World {
        let report = &mut |_: &str| {};
        let cluster = build_cluster("", first, report);
        let spec = WorldSpec::model(&[80], &[Protocol::Tcp]);
        World::populate(cluster, spec, false, report)
    }

    /// A case file's declared world: its namespaces, its pods (host-network ones in their
    /// nodes' namespaces), Services unless it says `services: false`, and a Node object
    /// for every node carrying `node_labels` and its address.
    pub fn declared(spec: &WorldSpec, report: &mut dyn FnMut(&str)) -> World {
        let cluster = build_cluster("", &mut |_| {}, report);
        World::populate(cluster, spec.clone(), true, report)
    }

    fn populate(
        cluster: Cluster,
        spec: WorldSpec,
        node_objects: bool,
        report: &mut dyn FnMut(&str),
    ) -> World {
        let mut world = World {
            pods: BTreeMap::new(),
            host_pods: BTreeMap::new(),
            cluster,
            policies: BTreeSet::new(),
            cnps: BTreeSet::new(),
            spec,
        };
        if node_objects {
            world.label_nodes(report);
        }
        for ns in world.spec.namespaces.keys() {
            world
                .api()
                .create(k8s::<Namespace>(json!({"metadata": {
                    "name": ns, "labels": world.spec.namespace_labels(ns)}})))
                .expect("create namespace");
        }
        let protocols: BTreeSet<Protocol> = world
            .spec
            .pods
            .values()
            .flat_map(|p| p.ports.iter().map(|s| s.protocol))
            .collect();
        let mut services = ClusterIps {
            services: Vec::new(),
            protocols: protocols
                .iter()
                .map(|p| p.as_str().to_ascii_lowercase())
                .collect(),
        };
        let namespaces: Vec<String> = world.spec.namespaces.keys().cloned().collect();
        let mut index = 0usize;
        let mut host_index = 0usize;
        for (i, ns) in namespaces.iter().enumerate() {
            let pods: Vec<(PodRef, super::cases::WorldPodSpec)> = world
                .spec
                .pods
                .iter()
                .filter(|(p, _)| p.ns == *ns)
                .map(|(p, s)| (p.clone(), s.clone()))
                .collect();
            for (j, (pod, ps)) in pods.into_iter().enumerate() {
                let n = u8::try_from(10 + index).expect("fewer than 246 pods");
                let service_ip = Ipv4Addr::new(10, 96, 0, n);
                index += 1;
                let (ip, node, how) = if ps.host_network {
                    let node = host_index % NODES;
                    host_index += 1;
                    let hp = world.add_host_pod(&pod, node, service_ip, &ps.labels, &ps.ports);
                    let ip = hp.ip;
                    world.host_pods.insert(pod.clone(), hp);
                    (ip, node, " (host network)")
                } else {
                    let node = (i + j) % NODES;
                    let wp = world.add_pod(&pod, node, service_ip, &ps.labels, &ps.ports);
                    let ip = wp.ip;
                    world.pods.insert(pod.clone(), wp);
                    (ip, node, "")
                };
                if world.spec.services {
                    services
                        .services
                        .push((service_ip.to_string(), ip.to_string()));
                    report(&format!(
                        "pod {pod} on node{node}{how}: {ip} (Service s-{}-{} {service_ip})",
                        pod.ns, pod.name
                    ));
                } else {
                    report(&format!("pod {pod} on node{node}{how}: {ip}"));
                }
            }
        }
        if world.spec.services {
            for node in &world.cluster.nodes {
                services.install(node);
            }
        }
        world
    }

    /// Every node's Node object carries the world's `node_labels` and its address in
    /// `status.addresses`: the kit's object (the Kubernetes datastore) gets the labels,
    /// and where there is none (etcd) one is made as the kubelet registers it.
    fn label_nodes(&self, report: &mut dyn FnMut(&str)) {
        for node in &self.cluster.nodes {
            let name = &node.name;
            match self.api().get::<Node>(None, name) {
                Some(mut object) => {
                    let labels = object.metadata.labels.get_or_insert_with(BTreeMap::new);
                    labels.extend(self.spec.node_labels.clone());
                    self.api()
                        .update(object)
                        .unwrap_or_else(|e| panic!("labelling Node {name}: {e}"));
                }
                None => {
                    let mut labels = self.spec.node_labels.clone();
                    labels.insert("kubernetes.io/hostname".into(), name.clone());
                    let object: Node = k8s(json!({
                        "metadata": {"name": name, "labels": labels},
                        "spec": {},
                        "status": {"addresses": [
                            {"type": "InternalIP", "address": node.ip},
                            {"type": "Hostname", "address": name},
                        ]},
                    }));
                    self.api()
                        .create(object)
                        .unwrap_or_else(|e| panic!("creating Node {name}: {e}"));
                }
            }
            report(&format!("Node {name} ({}) labelled", node.ip));
        }
    }

    /// A pod as a kubelet makes it: the object, the ADD, the status.
    fn add_pod(
        &self,
        pod: &PodRef,
        node: usize,
        service_ip: Ipv4Addr,
        labels: &BTreeMap<String, String>,
        ports: &[PortSpec],
    ) -> WorldPod {
        let node_name = &self.cluster.nodes[node].name;
        let object: Pod = k8s(json!({
            "metadata": {"name": pod.name, "namespace": pod.ns, "labels": labels},
            "spec": {"nodeName": node_name, "containers": [{
                "name": "serve", "image": "registry.k8s.io/pause:3.10",
                "ports": container_ports(ports, false)}]},
        }));
        self.api().create(object).expect("create pod");
        let id = crate::unique("np");
        let args = format!("K8S_POD_NAMESPACE={};K8S_POD_NAME={}", pod.ns, pod.name);
        let made = self.cluster.nodes[node].add_pod_as(&id, Some(&args));
        let ip: Ipv4Addr = made.ip.parse().expect("an IPv4 pod address");
        let all: Vec<Value> = made.result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["address"].as_str()?.split('/').next())
            .map(|a| json!({ "ip": a }))
            .collect();
        let mut object: Pod = self.api().get(Some(&pod.ns), &pod.name).expect("the pod");
        object.status = Some(k8s(json!({
            "phase": "Running", "podIP": ip.to_string(),
            "podIPs": all,
        })));
        self.api().update(object).expect("set the pod's status");
        let servers = Servers::start_each(&made.ns, &served(ports))
            .unwrap_or_else(|e| panic!("servers in pod {pod}: {e}"));
        WorldPod {
            servers,
            pod: made,
            node,
            ip,
            service_ip,
        }
    }

    /// A host-network pod: the object (`hostNetwork`, its node's address as its own), no
    /// ADD, its servers in the node's namespace.
    fn add_host_pod(
        &self,
        pod: &PodRef,
        node: usize,
        service_ip: Ipv4Addr,
        labels: &BTreeMap<String, String>,
        ports: &[PortSpec],
    ) -> HostPod {
        let n = &self.cluster.nodes[node];
        let ip: Ipv4Addr = n.ip.parse().expect("an IPv4 node address");
        let object: Pod = k8s(json!({
            "metadata": {"name": pod.name, "namespace": pod.ns, "labels": labels},
            "spec": {"nodeName": n.name, "hostNetwork": true, "containers": [{
                "name": "serve", "image": "registry.k8s.io/pause:3.10",
                "ports": container_ports(ports, true)}]},
        }));
        self.api().create(object).expect("create pod");
        let mut object: Pod = self.api().get(Some(&pod.ns), &pod.name).expect("the pod");
        object.status = Some(k8s(json!({
            "phase": "Running", "podIP": ip.to_string(), "hostIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
        })));
        self.api().update(object).expect("set the pod's status");
        let servers = Servers::start_each_at(&n.host, ip, &served(ports))
            .unwrap_or_else(|e| panic!("servers of host-network pod {pod} on {}: {e}", n.name));
        HostPod {
            servers,
            node,
            ip,
            service_ip,
        }
    }

    /// A pod made after the world (a kubelet's order again), serving `ports` on
    /// `protocols`; its Service address is reserved but no node has rules for it.
    pub fn add_late_pod(
        &mut self,
        pod: PodRef,
        node: usize,
        ports: &[u16],
        protocols: &[Protocol],
    ) -> &WorldPod {
        let n = u8::try_from(self.pods.len()).expect("fewer than 256 pods");
        let service_ip = Ipv4Addr::new(10, 96, 1, n);
        let spec = WorldSpec::model(ports, protocols);
        let ports = spec
            .pods
            .values()
            .next()
            .map(|p| p.ports.clone())
            .unwrap_or_default();
        let wp = self.add_pod(
            &pod,
            node,
            service_ip,
            &Case::initial_pod_labels(&pod),
            &ports,
        );
        self.pods.entry(pod).or_insert(wp)
    }

    pub fn pod(&self, pod: &PodRef) -> &WorldPod {
        &self.pods[pod]
    }

    /// A host-network pod of the world.
    pub fn host_pod(&self, pod: &PodRef) -> Option<&HostPod> {
        self.host_pods.get(pod)
    }

    /// Where each pod is: its node's index and its address.
    pub fn placement(&self) -> BTreeMap<PodRef, (usize, Ipv4Addr)> {
        self.pods
            .iter()
            .map(|(k, p)| (k.clone(), (p.node, p.ip)))
            .chain(
                self.host_pods
                    .iter()
                    .map(|(k, p)| (k.clone(), (p.node, p.ip))),
            )
            .collect()
    }

    /// What the world is made of.
    pub fn spec(&self) -> &WorldSpec {
        &self.spec
    }

    /// The address probes to `pod` go to (its node's for a host-network pod).
    pub fn ip_of(&self, pod: &PodRef) -> Option<Ipv4Addr> {
        self.pods
            .get(pod)
            .map(|p| p.ip)
            .or_else(|| self.host_pods.get(pod).map(|p| p.ip))
    }

    /// The ClusterIP of `pod`'s Service (with Services).
    pub fn service_ip_of(&self, pod: &PodRef) -> Option<Ipv4Addr> {
        self.pods
            .get(pod)
            .map(|p| p.service_ip)
            .or_else(|| self.host_pods.get(pod).map(|p| p.service_ip))
    }

    /// The network namespace `pod` runs in (its node's for a host-network pod).
    fn netns_of(&self, pod: &PodRef) -> Option<&Netns> {
        match self.pods.get(pod) {
            Some(p) => Some(&p.pod.ns),
            None => {
                let hp = self.host_pods.get(pod)?;
                Some(&self.cluster.nodes[hp.node].host)
            }
        }
    }

    /// The cluster's API stand-in.
    pub fn api(&self) -> &KubeApi {
        self.cluster.api()
    }

    /// Every pod's IPv4 address (a host-network pod's is its node's), for
    /// `cases::substitute`.
    pub fn pod_ips(&self) -> BTreeMap<PodRef, Ipv4Addr> {
        self.pods
            .iter()
            .map(|(k, p)| (k.clone(), p.ip))
            .chain(self.host_pods.iter().map(|(k, p)| (k.clone(), p.ip)))
            .collect()
    }

    /// Creates (or, with `replace`, replaces the spec of) policy `ns/name`.
    pub fn put_policy(
        &mut self,
        ns: &str,
        name: &str,
        spec: &Value,
        replace: bool,
    ) -> Result<(), String> {
        let policy: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .map_err(|e| format!("policy {ns}/{name}: {e}"))?;
        let r = if replace {
            self.api().update(policy)
        } else {
            self.api().create(policy)
        };
        r.map_err(|e| format!("policy {ns}/{name}: {e}"))?;
        self.policies.insert((ns.to_string(), name.to_string()));
        Ok(())
    }

    /// Deletes NetworkPolicy `ns/name`.
    pub fn delete_policy(&mut self, ns: &str, name: &str) -> Result<(), String> {
        self.api()
            .delete::<NetworkPolicy>(Some(ns), name)
            .map_err(|e| format!("delete policy {ns}/{name}: {e}"))?;
        self.policies.remove(&(ns.to_string(), name.to_string()));
        Ok(())
    }

    /// Creates (or, with `replace`, replaces the whole spec of) ClusterNetworkPolicy `name`.
    pub fn put_cnp(&mut self, name: &str, spec: &Value, replace: bool) -> Result<(), String> {
        let r = if replace {
            let mut object: ClusterNetworkPolicy = self
                .api()
                .get(None, name)
                .ok_or_else(|| format!("update ClusterNetworkPolicy {name}: not in the API"))?;
            object.spec = spec.clone();
            self.api().update(object)
        } else {
            self.api()
                .create(ClusterNetworkPolicy::new(name, spec.clone()))
        };
        r.map_err(|e| format!("ClusterNetworkPolicy {name}: {e}"))?;
        self.cnps.insert(name.to_string());
        Ok(())
    }

    /// Deletes ClusterNetworkPolicy `name`.
    pub fn delete_cnp(&mut self, name: &str) -> Result<(), String> {
        self.api()
            .delete::<ClusterNetworkPolicy>(None, name)
            .map_err(|e| format!("delete ClusterNetworkPolicy {name}: {e}"))?;
        self.cnps.remove(name);
        Ok(())
    }

    /// Deletes every ClusterNetworkPolicy made through this world.
    pub fn delete_all_cnps(&mut self) -> Result<(), String> {
        for name in std::mem::take(&mut self.cnps) {
            self.api()
                .delete::<ClusterNetworkPolicy>(None, &name)
                .map_err(|e| format!("delete ClusterNetworkPolicy {name}: {e}"))?;
        }
        Ok(())
    }

    /// Deletes every NetworkPolicy and ClusterNetworkPolicy made through this world.
    pub fn delete_all_policies(&mut self) -> Result<(), String> {
        for (ns, name) in std::mem::take(&mut self.policies) {
            self.api()
                .delete::<NetworkPolicy>(Some(&ns), &name)
                .map_err(|e| format!("delete policy {ns}/{name}: {e}"))?;
        }
        self.delete_all_cnps()
    }

    pub fn pod_labels(&self, pod: &PodRef) -> BTreeMap<String, String> {
        self.labels::<Pod>(Some(&pod.ns), &pod.name)
    }

    pub fn set_pod_labels(
        &self,
        pod: &PodRef,
        labels: BTreeMap<String, String>,
    ) -> Result<(), String> {
        self.set_labels::<Pod>(Some(&pod.ns), &pod.name, labels)
    }

    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.labels::<Namespace>(None, ns)
    }

    pub fn set_namespace_labels(
        &self,
        ns: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), String> {
        self.set_labels::<Namespace>(None, ns, labels)
    }

    fn labels<K: Served>(&self, ns: Option<&str>, name: &str) -> BTreeMap<String, String> {
        self.api()
            .get::<K>(ns, name)
            .and_then(|o| o.metadata().labels.clone())
            .unwrap_or_default()
    }

    /// Replaces the object's labels (no write, so no event, when they are the same).
    fn set_labels<K: Served>(
        &self,
        ns: Option<&str>,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), String> {
        let kind = K::KIND;
        let shown = ns.map_or(name.to_string(), |ns| format!("{ns}/{name}"));
        let mut object: K = self
            .api()
            .get(ns, name)
            .ok_or_else(|| format!("no {kind} {shown} in the API"))?;
        if object.metadata().labels.as_ref() == Some(&labels) {
            return Ok(());
        }
        object.metadata_mut().labels = Some(labels);
        self.api()
            .update(object)
            .map(drop)
            .map_err(|e| format!("label {kind} {shown}: {e}"))
    }

    /// Back to the start of a case: no policy, every label as first made.
    pub fn reset(&mut self) -> Result<(), String> {
        self.delete_all_policies()?;
        let namespaces: Vec<String> = self.spec.namespaces.keys().cloned().collect();
        for ns in namespaces {
            self.set_namespace_labels(&ns, self.spec.namespace_labels(&ns))?;
        }
        // The world's pods, and those added late (`add_late_pod`: the model's labels).
        let pods: Vec<(PodRef, BTreeMap<String, String>)> = self
            .pods
            .keys()
            .chain(self.host_pods.keys())
            .map(|p| {
                let labels = self
                    .spec
                    .pods
                    .get(p)
                    .map_or_else(|| Case::initial_pod_labels(p), |s| s.labels.clone());
                (p.clone(), labels)
            })
            .collect();
        for (pod, labels) in pods {
            self.set_pod_labels(&pod, labels)?;
        }
        Ok(())
    }

    /// One probe (see `probe` for what allowed means for each protocol).
    pub fn probe(&self, from: &PodRef, to_ip: Ipv4Addr, port: u16, protocol: Protocol) -> bool {
        let job = ProbeJob {
            from: from.clone(),
            to_ip,
            port,
            protocol,
        };
        self.probe_many(&[job], Duration::from_secs(1))[0]
    }

    /// The probes at once, each on a thread of its own inside its source pod; each waits
    /// at most `timeout` for its answer.
    pub fn probe_many(&self, jobs: &[ProbeJob], timeout: Duration) -> Vec<bool> {
        self.probe_many_seen(jobs, timeout)
            .into_iter()
            .map(Seen::allowed)
            .collect()
    }

    /// `probe_many`, telling a refusal from a timeout.
    pub fn probe_many_seen(&self, jobs: &[ProbeJob], timeout: Duration) -> Vec<Seen> {
        std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|job| s.spawn(move || self.probe_here(job, timeout)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Seen::TimedOut))
                .collect()
        })
    }

    /// One probe from a fresh thread: enters the source pod's namespace first.
    fn probe_here(&self, job: &ProbeJob, timeout: Duration) -> Seen {
        let Some(ns) = self.netns_of(&job.from) else {
            return Seen::TimedOut;
        };
        if crate::inside::enter(ns).is_err() {
            return Seen::TimedOut;
        }
        match job.protocol {
            Protocol::Tcp => probe::tcp_seen(job.to_ip, job.port, timeout),
            Protocol::Udp => probe::udp_seen(job.to_ip, job.port, timeout),
            Protocol::Sctp => {
                // Only a pod of the world (by its address or its Service's) counts INITs.
                let target = self
                    .pods
                    .values()
                    .find(|p| p.ip == job.to_ip || p.service_ip == job.to_ip)
                    .map(|p| &p.servers)
                    .or_else(|| {
                        self.host_pods
                            .values()
                            .find(|p| p.ip == job.to_ip || p.service_ip == job.to_ip)
                            .map(|p| &p.servers)
                    });
                let Some(target) = target else {
                    return Seen::TimedOut;
                };
                probe::sctp_seen(job.to_ip, job.port, |tag| {
                    target.sctp.wait(job.port, tag, timeout)
                })
            }
        }
    }

    /// The daemons' logs, for a report of what went wrong.
    pub fn logs(&self) -> String {
        self.cluster
            .nodes
            .iter()
            .map(|n| format!("--- {} ({})\n{}", n.name, n.log_path().display(), n.log()))
            .collect()
    }
}

/// The cluster a world runs in: `NODES` nodes, the API (`first` done to it before any
/// daemon starts), `--network-policy`, and `daemon_args` (`--cluster-cidr-v6 …` makes it
/// dual-stack).
fn build_cluster(
    daemon_args: &str,
    first: &mut dyn FnMut(&KubeApi),
    report: &mut dyn FnMut(&str),
) -> Cluster {
    let mut builder = Cluster::builder()
        .nodes(NODES)
        .cluster_cidr(CLUSTER_CIDR)
        .kube_api()
        .flags(["--network-policy"]);
    // The IPv6 cluster CIDR is the kit's to know (the Kubernetes datastore gives each
    // Node an IPv6 pod CIDR of it), not a flag the kit passes on unread.
    let mut words = daemon_args.split_whitespace();
    let mut rest = Vec::new();
    while let Some(w) = words.next() {
        let cidr6 = match w.strip_prefix("--cluster-cidr-v6") {
            Some("") => words.next(),
            Some(v) => v.strip_prefix('='),
            None => None,
        };
        match cidr6 {
            Some(c) => builder = builder.cluster_cidr_v6(c),
            None => rest.push(w),
        }
    }
    builder.flags(rest).build_reporting(&mut |p| match p {
        Progress::Etcd(_, t) => report(&format!("etcd ({t:.1?})")),
        Progress::Api(api, t) => {
            first(api);
            report(&format!("the API at {} ({t:.1?})", api.url()))
        }
        Progress::NodeReady(n, t) => report(&format!("{} ready ({t:.1?})", n.name)),
        Progress::Converged(t) => report(&format!("overlay converged ({t:.1?})")),
    })
}

/// The containerPorts of a pod serving `ports`: the named ones (a host-network pod's
/// with the same hostPort, as the API defaults it).
fn container_ports(ports: &[PortSpec], host_network: bool) -> Vec<Value> {
    ports
        .iter()
        .filter_map(|p| {
            let name = p.name.as_ref()?;
            let mut v = json!({"name": name, "containerPort": p.port,
                               "protocol": p.protocol.as_str()});
            if host_network {
                v["hostPort"] = json!(p.port);
            }
            Some(v)
        })
        .collect()
}

/// What a pod serving `ports` listens on.
fn served(ports: &[PortSpec]) -> Vec<(u16, Protocol)> {
    ports.iter().map(|p| (p.port, p.protocol)).collect()
}
