//! A case evaluated by ferry's reference evaluator (`ferry_netpol::verdict_at`) instead
//! of a kernel: the case's world as Kubernetes objects (namespaces, pods with their
//! containerPorts and addresses, Nodes with their labels and addresses), its actions
//! applied to them (NetworkPolicies, ClusterNetworkPolicies, labels), and each probe's
//! pairs judged. A case file and the evaluator are thereby checked against each other
//! without root.
//!
//! Addresses are made up as the runner's cluster would give them: node n at
//! 192.0.2.(11+n), its pods in 10.244.n.0/24, a host-network pod at its node's address;
//! pods are placed on nodes as `world` places them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ferry_netpol::model::node_from_k8s;
use ferry_netpol::{verdict_at, Cluster, ClusterNetworkPolicy, Endpoint};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use super::cases::{substitute, Action, Case, Matrix, PodRef, Protocol, WorldSpec};
use super::world::NODES;

/// The evaluator's answer for one probe of one step: the pairs the case checks, each
/// with the evaluator's verdict, and an explanation of every pair that differs from the
/// case's expectation.
pub struct Judged {
    pub step: usize,
    pub port: u16,
    pub protocol: Protocol,
    pub expected: Matrix,
    pub evaluated: Matrix,
    /// `(from, to, the evaluator's explanation)` of each pair where they differ.
    pub disagreements: Vec<(PodRef, PodRef, String)>,
    /// The evaluator's explanation of every pair.
    pub explanations: BTreeMap<(PodRef, PodRef), String>,
}

/// The addresses the oracle gives the world's pods, and the node each is on.
pub fn placement(world: &WorldSpec) -> BTreeMap<PodRef, (usize, Ipv4Addr)> {
    let mut out = BTreeMap::new();
    let mut host_index = 0usize;
    let mut on_node = [0u8; NODES];
    for (i, ns) in world.namespaces.keys().enumerate() {
        let pods = world.pods.iter().filter(|(p, _)| p.ns == *ns);
        for (j, (pod, spec)) in pods.enumerate() {
            let (node, ip) = if spec.host_network {
                let node = host_index % NODES;
                host_index += 1;
                (node, node_ip(node))
            } else {
                let node = (i + j) % NODES;
                on_node[node] += 1;
                (node, Ipv4Addr::new(10, 244, node as u8, 9 + on_node[node]))
            };
            out.insert(pod.clone(), (node, ip));
        }
    }
    out
}

fn node_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 11 + node as u8)
}

fn protocol(p: Protocol) -> ferry_netpol::Protocol {
    match p {
        Protocol::Tcp => ferry_netpol::Protocol::Tcp,
        Protocol::Udp => ferry_netpol::Protocol::Udp,
        Protocol::Sctp => ferry_netpol::Protocol::Sctp,
    }
}

fn object<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("{what}: {e}"))
}

/// The state of a case's objects as its steps change them.
struct State {
    world: WorldSpec,
    pods: Vec<PodRef>,
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
    pod_labels: BTreeMap<PodRef, BTreeMap<String, String>>,
    policies: BTreeMap<(String, String), Value>,
    cnps: BTreeMap<String, Value>,
    place: BTreeMap<PodRef, (usize, Ipv4Addr)>,
}

impl State {
    fn new(case: &Case, place: BTreeMap<PodRef, (usize, Ipv4Addr)>) -> State {
        let world = case.world();
        State {
            ns_labels: world
                .namespaces
                .keys()
                .map(|ns| (ns.clone(), world.namespace_labels(ns)))
                .collect(),
            pod_labels: world
                .pods
                .iter()
                .map(|(p, s)| (p.clone(), s.labels.clone()))
                .collect(),
            pods: case.pods.clone(),
            policies: BTreeMap::new(),
            cnps: BTreeMap::new(),
            place,
            world,
        }
    }

    fn ips(&self) -> BTreeMap<PodRef, Ipv4Addr> {
        self.place
            .iter()
            .map(|(p, (_, ip))| (p.clone(), *ip))
            .collect()
    }

    fn apply(&mut self, action: &Action) -> Result<(), String> {
        let ips = self.ips();
        let sub = |v: &Value| substitute(v, &ips).map_err(|e| e.to_string());
        match action {
            Action::Create(p) | Action::Update(p) => {
                self.policies
                    .insert((p.ns.clone(), p.name.clone()), sub(&p.spec)?);
            }
            Action::Delete(p) => {
                self.policies.remove(&(p.ns.clone(), p.name.clone()));
            }
            Action::CreateCnp(c) | Action::UpdateCnp(c) => {
                self.cnps.insert(c.name.clone(), sub(&c.spec)?);
            }
            Action::DeleteCnp(c) => {
                self.cnps.remove(&c.name);
            }
            Action::DeleteAllPolicies(_) => {
                self.policies.clear();
                self.cnps.clear();
            }
            Action::LabelPod(l) => {
                if let Some(labels) = self.pod_labels.get_mut(&l.pod) {
                    l.apply(labels);
                }
            }
            Action::LabelNamespace(l) => {
                if let Some(labels) = self.ns_labels.get_mut(&l.ns) {
                    l.apply(labels);
                }
            }
        }
        Ok(())
    }

    /// The objects as the API would hold them, converted as the daemon converts them.
    fn cluster(&self) -> Result<Cluster, String> {
        let namespaces: Vec<Namespace> = self
            .ns_labels
            .iter()
            .map(|(ns, labels)| {
                object(
                    &format!("namespace {ns}"),
                    json!({"metadata": {"name": ns, "labels": labels}}),
                )
            })
            .collect::<Result<_, _>>()?;
        let mut pods = Vec::new();
        for pod in &self.pods {
            let spec = self
                .world
                .pods
                .get(pod)
                .ok_or_else(|| format!("pod {pod} is not the world's"))?;
            let (node, ip) = *self
                .place
                .get(pod)
                .ok_or_else(|| format!("pod {pod} has no place"))?;
            let ports: Vec<Value> = spec
                .ports
                .iter()
                .filter_map(|p| {
                    let name = p.name.as_ref()?;
                    Some(json!({"name": name, "containerPort": p.port,
                                "protocol": p.protocol.as_str()}))
                })
                .collect();
            pods.push(object::<Pod>(
                &format!("pod {pod}"),
                json!({
                    "metadata": {"name": pod.name, "namespace": pod.ns,
                                 "labels": self.pod_labels.get(pod)},
                    "spec": {"nodeName": format!("node{node}"), "hostNetwork": spec.host_network,
                             "containers": [{"name": "serve", "ports": ports}]},
                    "status": {"phase": "Running", "podIP": ip.to_string(),
                               "podIPs": [{"ip": ip.to_string()}]},
                }),
            )?);
        }
        let policies: Vec<NetworkPolicy> = self
            .policies
            .iter()
            .map(|((ns, name), spec)| {
                object(
                    &format!("policy {ns}/{name}"),
                    json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
                )
            })
            .collect::<Result<_, _>>()?;
        let (mut cluster, errors) = Cluster::from_k8s(&namespaces, &pods, &policies);
        if let Some(e) = errors.first() {
            return Err(e.to_string());
        }
        let cnps: Vec<ClusterNetworkPolicy> = self
            .cnps
            .iter()
            .map(|(name, spec)| ClusterNetworkPolicy::new(name, spec.clone()))
            .collect();
        if let Some(e) = cluster.add_cluster_policies(&cnps).first() {
            return Err(e.to_string());
        }
        for n in 0..NODES {
            let name = format!("node{n}");
            let mut labels = self.world.node_labels.clone();
            labels.insert("kubernetes.io/hostname".into(), name.clone());
            let node: Node = object(
                &name,
                json!({"metadata": {"name": name, "labels": labels},
                       "status": {"addresses": [
                           {"type": "InternalIP", "address": node_ip(n).to_string()},
                           {"type": "Hostname", "address": name}]}}),
            )?;
            cluster
                .nodes
                .push(node_from_k8s(&node).map_err(|e| e.to_string())?);
        }
        Ok(cluster)
    }
}

/// Every probe of every step of `case`, judged by the evaluator. An error names what
/// could not be converted (a spec the evaluator refuses).
pub fn judge(case: &Case) -> Result<Vec<Judged>, String> {
    judge_placed(case, placement(&case.world()))
}

/// [`judge`] with the pods where `place` puts them (node index, address), e.g. where a
/// real cluster put them. Nodes are at 192.0.2.(11+n), as the test kit places them.
pub fn judge_placed(
    case: &Case,
    place: BTreeMap<PodRef, (usize, Ipv4Addr)>,
) -> Result<Vec<Judged>, String> {
    let mut state = State::new(case, place);
    let mut out = Vec::new();
    for (s, step) in case.steps.iter().enumerate() {
        for (j, action) in step.actions.iter().enumerate() {
            state
                .apply(action)
                .map_err(|e| format!("step {}: action {}: {e}", s + 1, j + 1))?;
        }
        if step.probes.is_empty() {
            continue;
        }
        let cluster = state
            .cluster()
            .map_err(|e| format!("step {}: {e}", s + 1))?;
        for probe in &step.probes {
            let expected = Matrix::expected(&case.pods, probe);
            let mut evaluated = expected.blank_like();
            let mut disagreements = Vec::new();
            let mut explanations = BTreeMap::new();
            for (from, to, want) in expected.pairs() {
                let endpoint = |p: &PodRef| Endpoint {
                    pod: cluster.pod(&p.ns, &p.name),
                    ip: state.place.get(p).map(|(_, ip)| IpAddr::V4(*ip)),
                };
                let v = verdict_at(
                    &cluster,
                    endpoint(from),
                    endpoint(to),
                    protocol(probe.protocol),
                    probe.port,
                );
                evaluated.set(from, to, v.allowed);
                if v.allowed != want {
                    disagreements.push((from.clone(), to.clone(), v.to_string()));
                }
                explanations.insert((from.clone(), to.clone()), v.to_string());
            }
            out.push(Judged {
                step: s + 1,
                port: probe.port,
                protocol: probe.protocol,
                expected,
                evaluated,
                disagreements,
                explanations,
            });
        }
    }
    Ok(out)
}
