//! Conversion from the Kubernetes API types, with the API's defaulting, and validation;
//! see the parent module for what a policy that fails it still does.

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

impl Selector {
    pub(crate) fn from_k8s(sel: &LabelSelector, field: &str) -> Result<Selector, (String, String)> {
        let mut requirements = Vec::new();
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            if e.key.is_empty() {
                return Err((format!("{f}.key"), "must not be empty".into()));
            }
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let operator = match e.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err((
                        format!("{f}.operator"),
                        format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
                    ))
                }
            };
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err((
                        format!("{f}.values"),
                        format!("must be non-empty for operator {}", e.operator),
                    ))
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err((
                        format!("{f}.values"),
                        format!("must be empty for operator {}", e.operator),
                    ))
                }
                _ => {}
            }
            requirements.push(Requirement {
                key: e.key.clone(),
                operator,
                values,
            });
        }
        let match_labels = sel.match_labels.clone().unwrap_or_default();
        if match_labels.keys().any(String::is_empty) {
            return Err((format!("{field}.matchLabels"), "empty key".into()));
        }
        Ok(Selector {
            match_labels,
            requirements,
        })
    }
}

impl Policy {
    /// Converts with the API's defaulting. Returns the policy (absent when it cannot be
    /// used at all) and every problem found; see the module doc for what a broken rule does.
    pub fn from_k8s(np: &net::NetworkPolicy) -> (Option<Policy>, Vec<ModelError>) {
        let namespace = np.metadata.namespace.clone().unwrap_or_default();
        let name = np.metadata.name.clone().unwrap_or_default();
        let object = format!("{namespace}/{name}");
        let err = |field: String, reason: String| ModelError {
            kind: "NetworkPolicy",
            object: object.clone(),
            field,
            reason,
        };
        let mut errors = Vec::new();
        if namespace.is_empty() || name.is_empty() {
            errors.push(err(
                "metadata".into(),
                "namespace and name are required".into(),
            ));
            return (None, errors);
        }
        let Some(spec) = np.spec.as_ref() else {
            errors.push(err("spec".into(), "missing".into()));
            return (None, errors);
        };
        let pod_selector = match Selector::from_k8s(
            spec.pod_selector
                .as_ref()
                .unwrap_or(&LabelSelector::default()),
            "spec.podSelector",
        ) {
            Ok(s) => Some(s),
            Err((f, r)) => {
                errors.push(err(f, r));
                None
            }
        };
        let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let (mut ingress_on, mut egress_on) = (true, has_egress);
        let mut types_known = true;
        if let Some(types) = spec.policy_types.as_ref().filter(|t| !t.is_empty()) {
            (ingress_on, egress_on) = (false, false);
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress_on = true,
                    "Egress" => egress_on = true,
                    other => {
                        errors.push(err(
                            format!("spec.policyTypes[{i}]"),
                            format!("{other:?} is not one of Ingress, Egress"),
                        ));
                        types_known = false;
                    }
                }
            }
        }
        let pod_selector = match (pod_selector, types_known) {
            (Some(sel), true) => sel,
            // Which pods it isolates, or for what, cannot be read: it isolates every pod
            // of its namespace (in both directions when its types are unreadable) and
            // allows nothing. Dropping it would open the pods it was written to isolate;
            // applying its rules to pods it may not select would open those.
            (_, known) => {
                let policy = Policy {
                    namespace,
                    name,
                    pod_selector: Selector::default(),
                    ingress: (ingress_on || !known).then(Vec::new),
                    egress: (egress_on || !known).then(Vec::new),
                };
                return (Some(policy), errors);
            }
        };
        // Both directions' rules: (index, peers, ports) with the field names of the API.
        let mut rules = |on: bool, dir: &str, peers_key: &str, list: Vec<RawRule<'_>>| {
            on.then(|| {
                list.into_iter()
                    .enumerate()
                    .filter_map(|(i, (peers, ports))| {
                        let f = format!("spec.{dir}[{i}]");
                        convert_rule(i, peers, ports, &f, peers_key)
                            .map_err(|(f, r)| errors.push(err(f, r)))
                            .ok()
                    })
                    .collect()
            })
        };
        let ingress = rules(
            ingress_on,
            "ingress",
            "from",
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_deref(), r.ports.as_deref()))
                .collect(),
        );
        let egress = rules(
            egress_on,
            "egress",
            "to",
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_deref(), r.ports.as_deref()))
                .collect(),
        );
        let policy = Policy {
            namespace,
            name,
            pod_selector,
            ingress,
            egress,
        };
        (Some(policy), errors)
    }
}

type FieldError = (String, String);

/// A rule's peers and ports as the API object holds them.
type RawRule<'a> = (
    Option<&'a [net::NetworkPolicyPeer]>,
    Option<&'a [net::NetworkPolicyPort]>,
);

fn convert_rule(
    index: usize,
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
    field: &str,
    peers_key: &str,
) -> Result<PolicyRule, FieldError> {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| convert_peer(p, &format!("{field}.{peers_key}[{i}]")))
        .collect::<Result<_, _>>()?;
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| convert_port(p, &format!("{field}.ports[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(PolicyRule {
        index,
        peers,
        ports,
    })
}

fn convert_peer(p: &net::NetworkPolicyPeer, field: &str) -> Result<PolicyPeer, FieldError> {
    if let Some(block) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err((
                field.into(),
                "ipBlock cannot be combined with podSelector or namespaceSelector".into(),
            ));
        }
        let cidr: IpNetwork = block.cidr.parse().map_err(|e| {
            (
                format!("{field}.ipBlock.cidr"),
                format!("{:?} is not a CIDR: {e}", block.cidr),
            )
        })?;
        let mut except = Vec::new();
        for (i, e) in block.except.iter().flatten().enumerate() {
            let f = format!("{field}.ipBlock.except[{i}]");
            let net: IpNetwork = e
                .parse()
                .map_err(|err| (f.clone(), format!("{e:?} is not a CIDR: {err}")))?;
            if net.is_ipv4() != cidr.is_ipv4() {
                return Err((f, format!("{e} is not of the family of cidr {cidr}")));
            }
            // As the API: a strict subset of the cidr.
            if !(net.prefix() > cidr.prefix() && cidr.contains(net.network())) {
                return Err((f, format!("{e} is not strictly inside cidr {cidr}")));
            }
            except.push(net);
        }
        return Ok(PolicyPeer::IpBlock { cidr, except });
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return Err((
            field.into(),
            "must set one of podSelector, namespaceSelector, ipBlock".into(),
        ));
    }
    let sel = |s: &Option<LabelSelector>, key: &str| {
        s.as_ref()
            .map(|s| Selector::from_k8s(s, &format!("{field}.{key}")))
            .transpose()
    };
    Ok(PolicyPeer::Pods {
        pods: sel(&p.pod_selector, "podSelector")?,
        namespaces: sel(&p.namespace_selector, "namespaceSelector")?,
    })
}

fn convert_port(p: &net::NetworkPolicyPort, field: &str) -> Result<PolicyPort, FieldError> {
    let protocol =
        Protocol::parse(p.protocol.as_deref()).map_err(|r| (format!("{field}.protocol"), r))?;
    let number = |n: i32, f: &str| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| (format!("{field}.{f}"), format!("{n} is not in 1..65535")))
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => PortSel::All,
        (None, Some(_)) => {
            return Err((format!("{field}.endPort"), "requires a numeric port".into()))
        }
        (Some(IntOrString::Int(n)), end) => {
            let lo = number(*n, "port")?;
            let hi = match end {
                None => lo,
                Some(e) => {
                    let hi = number(e, "endPort")?;
                    if hi < lo {
                        return Err((
                            format!("{field}.endPort"),
                            format!("{hi} is below port {lo}"),
                        ));
                    }
                    hi
                }
            };
            PortSel::Range(lo, hi)
        }
        (Some(IntOrString::String(s)), end) => {
            if end.is_some() {
                return Err((
                    format!("{field}.endPort"),
                    "requires a numeric port, not a named one".into(),
                ));
            }
            // The API accepts numbers written as strings in an IntOrString.
            match s.parse::<i32>() {
                Ok(n) => {
                    let n = number(n, "port")?;
                    PortSel::Range(n, n)
                }
                Err(_) if s.is_empty() || s.len() > 15 => {
                    return Err((
                        format!("{field}.port"),
                        format!("{s:?} is not a port name (1 to 15 characters)"),
                    ))
                }
                Err(_) => PortSel::Named(s.clone()),
            }
        }
    };
    Ok(PolicyPort { protocol, port })
}

/// A namespace's name and labels, with the `kubernetes.io/metadata.name` label the API
/// server always sets.
pub fn namespace_from_k8s(ns: &core::Namespace) -> Result<(String, Labels), ModelError> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(ModelError {
            kind: "Namespace",
            object: String::new(),
            field: "metadata.name".into(),
            reason: "missing".into(),
        });
    }
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
    Ok((name, labels))
}

impl Pod {
    /// Converts a pod: addresses from `status.podIPs` (or `status.podIP`), ports from
    /// `spec.containers[].ports`. A pod in phase Succeeded or Failed gets no addresses.
    ///
    /// A bad address or container port is reported and left out while the pod stays:
    /// dropping the pod would leave it unselected, so unisolated (fail open). The pod is
    /// absent only without a namespace or name.
    pub fn from_k8s(pod: &core::Pod) -> (Option<Pod>, Vec<ModelError>) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let err = |field: String, reason: String| ModelError {
            kind: "Pod",
            object: format!("{namespace}/{name}"),
            field,
            reason,
        };
        if namespace.is_empty() || name.is_empty() {
            let e = err("metadata".into(), "namespace and name are required".into());
            return (None, vec![e]);
        }
        let mut errors = Vec::new();
        let status = pod.status.as_ref();
        let terminal = status
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let mut raw: Vec<(String, &str)> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.as_str()))
            .collect();
        if raw.is_empty() {
            if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()) {
                raw.push(("status.podIP".into(), ip));
            }
        }
        let mut ips = Vec::new();
        if !terminal {
            for (field, s) in raw {
                match s.parse::<IpAddr>() {
                    Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                    Ok(_) => {}
                    Err(_) => errors.push(err(field, format!("{s:?} is not an IP address"))),
                }
            }
        }
        let spec = pod.spec.as_ref();
        let mut ports = Vec::new();
        for (ci, c) in spec
            .map(|s| &s.containers[..])
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let field = format!("spec.containers[{ci}].ports[{pi}]");
                let Some(port) = u16::try_from(p.container_port).ok().filter(|n| *n > 0) else {
                    errors.push(err(
                        format!("{field}.containerPort"),
                        format!("{} is not in 1..65535", p.container_port),
                    ));
                    continue;
                };
                match Protocol::parse(p.protocol.as_deref()) {
                    Ok(protocol) => ports.push(ContainerPort {
                        name: p.name.clone(),
                        port,
                        protocol,
                    }),
                    Err(r) => errors.push(err(format!("{field}.protocol"), r)),
                }
            }
        }
        let pod = Pod {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            node: spec.and_then(|s| s.node_name.clone()),
            ports,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            namespace,
            name,
        };
        (Some(pod), errors)
    }
}

fn duplicate(kind: &'static str, object: &str) -> ModelError {
    ModelError {
        kind,
        object: object.into(),
        field: "metadata.name".into(),
        reason: "a second object of this namespace and name; the first one is used".into(),
    }
}

impl Cluster {
    /// Converts a snapshot. Objects that fail conversion are left out (policies: see the
    /// module doc) and their problems returned beside the cluster.
    ///
    /// The objects are borrowed one by one, so a caller holding them behind `Arc`s (the
    /// daemon's reflector stores) need not copy them first: as k8s-openapi types 10,000
    /// pods take about 50 MB.
    pub fn from_k8s<'a>(
        namespaces: impl IntoIterator<Item = &'a core::Namespace>,
        pods: impl IntoIterator<Item = &'a core::Pod>,
        policies: impl IntoIterator<Item = &'a net::NetworkPolicy>,
    ) -> (Cluster, Vec<ModelError>) {
        let mut errors = Vec::new();
        let mut converted = Vec::new();
        for pod in pods {
            let (p, errs) = Pod::from_k8s(pod);
            errors.extend(errs);
            converted.extend(p);
        }
        let (cluster, more) = Cluster::assemble(namespaces, converted, policies);
        errors.extend(more);
        (cluster, errors)
    }

    /// [`Cluster::from_k8s`] with the pods already converted (the daemon converts each
    /// when the watch delivers it and keeps only that: a Pod object is kilobytes, a
    /// [`Pod`] about 200 bytes plus its labels).
    pub fn assemble<'a>(
        namespaces: impl IntoIterator<Item = &'a core::Namespace>,
        pods: impl IntoIterator<Item = Pod>,
        policies: impl IntoIterator<Item = &'a net::NetworkPolicy>,
    ) -> (Cluster, Vec<ModelError>) {
        let mut errors = Vec::new();
        let mut cluster = Cluster::default();
        for ns in namespaces {
            match namespace_from_k8s(ns) {
                Ok((name, labels)) => {
                    cluster.namespaces.insert(name, labels);
                }
                Err(e) => errors.push(e),
            }
        }
        // Checked by borrowed names: this runs every round over every pod of the cluster.
        let all: Vec<Pod> = pods.into_iter().collect();
        let mut seen = std::collections::HashSet::with_capacity(all.len());
        let dup: Vec<bool> = all
            .iter()
            .map(|p| !seen.insert((p.namespace.as_str(), p.name.as_str())))
            .collect();
        drop(seen);
        for (p, dup) in all.into_iter().zip(dup) {
            if dup {
                errors.push(duplicate("Pod", &p.key().to_string()));
            } else {
                cluster.pods.push(p);
            }
        }
        // Set names and explanations are keyed by `ns/name`: a second object of one key
        // (never sent by the API server) is reported and left out.
        let mut seen = BTreeSet::new();
        for np in policies {
            let (p, errs) = Policy::from_k8s(np);
            errors.extend(errs);
            if let Some(p) = p {
                if seen.insert(p.id()) {
                    cluster.policies.push(p);
                } else {
                    errors.push(duplicate("NetworkPolicy", &p.id()));
                }
            }
        }
        (cluster, errors)
    }
}
