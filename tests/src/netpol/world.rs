//! The world NetworkPolicy conformance cases run in: a 3-node cluster (the harness's
//! namespaces, either datastore) whose daemons enforce NetworkPolicy from the cluster's
//! Kubernetes API stand-in (`Cluster::api`, listening in the etcd host's namespace, reached
//! by every node over the underlay), and the model's namespaces x, y, z with pods a, b, c
//! each.
//!
//! Pods are made as a kubelet makes them: the Pod object first (labels `pod=<name>`,
//! `spec.nodeName`, a container with a port `serve-<port>-<proto>` for every port and
//! protocol served), then the plugin's ADD naming the pod in `CNI_ARGS` (which returns once
//! the node's rules cover the pod), then `status.podIPs` from the ADD's result. Each pod
//! has a ClusterIP Service (`s-<ns>-<pod>`) as kube-proxy-style rules on every node, and
//! servers for every port and protocol (see `probe`). The pods are spread so that every
//! node holds one pod of each namespace: same-node and cross-node pairs both occur.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use super::cases::{Case, PodRef, Protocol, NAMESPACES, POD_NAMES};
use super::probe::{self, Servers};
use crate::cluster::{self, Cluster, Progress};
use crate::kapi::{KubeApi, Served};
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
    /// The ClusterIP of its Service `s-<ns>-<pod>`.
    pub service_ip: Ipv4Addr,
}

/// The cluster, the API and the pods. Dropping it removes everything it made.
pub struct World {
    /// Declared (so dropped) before the cluster: servers stop, pods go, then the nodes.
    pods: BTreeMap<PodRef, WorldPod>,
    pub cluster: Cluster,
    policies: BTreeSet<(String, String)>,
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
        World::build(ports, protocols, daemon_args, &mut |_| {}, report)
    }

    /// The world of `new` serving TCP 80, `first` done to the API before any daemon
    /// starts: what the daemons must meet from their start, such as a CRD not installed
    /// (`KubeApi::set_cnp_served(false)`).
    pub fn with_api_first(first: &mut dyn FnMut(&KubeApi)) -> World {
        World::build(&[80], &[Protocol::Tcp], "", first, &mut |_| {})
    }

    fn build(
        ports: &[u16],
        protocols: &[Protocol],
        daemon_args: &str,
        first: &mut dyn FnMut(&KubeApi),
        report: &mut dyn FnMut(&str),
    ) -> World {
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
        let cluster = builder.flags(rest).build_reporting(&mut |p| match p {
            Progress::Etcd(_, t) => report(&format!("etcd ({t:.1?})")),
            Progress::Api(api, t) => {
                first(api);
                report(&format!("the API at {} ({t:.1?})", api.url()))
            }
            Progress::NodeReady(n, t) => report(&format!("{} ready ({t:.1?})", n.name)),
            Progress::Converged(t) => report(&format!("overlay converged ({t:.1?})")),
        });
        let mut world = World {
            pods: BTreeMap::new(),
            cluster,
            policies: BTreeSet::new(),
        };
        for ns in NAMESPACES {
            world
                .api()
                .create(k8s::<Namespace>(json!({"metadata": {
                    "name": ns, "labels": Case::initial_namespace_labels(ns)}})))
                .expect("create namespace");
        }
        let mut services = ClusterIps {
            services: Vec::new(),
            protocols: protocols
                .iter()
                .map(|p| p.as_str().to_ascii_lowercase())
                .collect(),
        };
        for (i, ns) in NAMESPACES.iter().enumerate() {
            for (j, name) in POD_NAMES.iter().enumerate() {
                let pod = PodRef {
                    ns: ns.to_string(),
                    name: name.to_string(),
                };
                let node = (i + j) % NODES;
                let service_ip = Ipv4Addr::new(10, 96, 0, (10 + 3 * i + j) as u8);
                let wp = world.add_pod(&pod, node, service_ip, ports, protocols);
                services
                    .services
                    .push((service_ip.to_string(), wp.ip.to_string()));
                report(&format!(
                    "pod {pod} on node{node}: {} (Service s-{}-{} {service_ip})",
                    wp.ip, pod.ns, pod.name
                ));
                world.pods.insert(pod, wp);
            }
        }
        for node in &world.cluster.nodes {
            services.install(node);
        }
        world
    }

    /// A pod as a kubelet makes it: the object, the ADD, the status.
    fn add_pod(
        &self,
        pod: &PodRef,
        node: usize,
        service_ip: Ipv4Addr,
        ports: &[u16],
        protocols: &[Protocol],
    ) -> WorldPod {
        let node_name = &self.cluster.nodes[node].name;
        let container_ports: Vec<Value> = protocols
            .iter()
            .flat_map(|proto| {
                ports.iter().map(move |port| {
                    json!({"name": proto.port_name(*port), "containerPort": port,
                           "protocol": proto.as_str()})
                })
            })
            .collect();
        let object: Pod = k8s(json!({
            "metadata": {"name": pod.name, "namespace": pod.ns,
                         "labels": Case::initial_pod_labels(pod)},
            "spec": {"nodeName": node_name, "containers": [{
                "name": "serve", "image": "registry.k8s.io/pause:3.10",
                "ports": container_ports}]},
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
        let servers = Servers::start(&made.ns, ports, protocols)
            .unwrap_or_else(|e| panic!("servers in pod {pod}: {e}"));
        WorldPod {
            servers,
            pod: made,
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
        let wp = self.add_pod(&pod, node, service_ip, ports, protocols);
        self.pods.entry(pod).or_insert(wp)
    }

    pub fn pod(&self, pod: &PodRef) -> &WorldPod {
        &self.pods[pod]
    }

    /// The cluster's API stand-in.
    pub fn api(&self) -> &KubeApi {
        self.cluster.api()
    }

    /// Every pod's IPv4 address, for `cases::substitute`.
    pub fn pod_ips(&self) -> BTreeMap<PodRef, Ipv4Addr> {
        self.pods.iter().map(|(k, p)| (k.clone(), p.ip)).collect()
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

    pub fn delete_all_policies(&mut self) -> Result<(), String> {
        for (ns, name) in std::mem::take(&mut self.policies) {
            self.api()
                .delete::<NetworkPolicy>(Some(&ns), &name)
                .map_err(|e| format!("delete policy {ns}/{name}: {e}"))?;
        }
        Ok(())
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
        for ns in NAMESPACES {
            self.set_namespace_labels(ns, Case::initial_namespace_labels(ns))?;
        }
        let pods: Vec<PodRef> = self.pods.keys().cloned().collect();
        for pod in pods {
            self.set_pod_labels(&pod, Case::initial_pod_labels(&pod))?;
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
        std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|job| s.spawn(move || self.probe_here(job, timeout)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(false))
                .collect()
        })
    }

    /// One probe from a fresh thread: enters the source pod's namespace first.
    fn probe_here(&self, job: &ProbeJob, timeout: Duration) -> bool {
        let Some(from) = self.pods.get(&job.from) else {
            return false;
        };
        if crate::inside::enter(&from.pod.ns).is_err() {
            return false;
        }
        match job.protocol {
            Protocol::Tcp => probe::tcp(job.to_ip, job.port, timeout),
            Protocol::Udp => probe::udp(job.to_ip, job.port, timeout),
            Protocol::Sctp => {
                // Only a pod of the world (by its address or its Service's) counts INITs.
                let Some(target) = self
                    .pods
                    .values()
                    .find(|p| p.ip == job.to_ip || p.service_ip == job.to_ip)
                else {
                    return false;
                };
                match probe::sctp_init(job.to_ip, job.port) {
                    Ok(tag) => target.servers.sctp.wait(job.port, tag, timeout),
                    Err(_) => false,
                }
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
