//! A ClusterNetworkPolicy object to [`ClusterPolicy`], failing closed where it cannot be
//! read (see the parent module).

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Map, Value};

use super::{Action, ClusterPolicy, ClusterRule, NodeInfo, Subject, Tier};
use crate::api::ClusterNetworkPolicy;
use crate::model::{ModelError, PolicyPeer, PolicyPort, PolicyRule, PortSel, Protocol, Selector};

/// The API's limits on a list of rules, of peers and of protocols.
const MAX_RULES: usize = 25;
const MAX_PEERS: usize = 25;

type FieldError = (String, String);

impl ClusterPolicy {
    /// Converts one object. Returns the policy (absent only when it has no name) and every
    /// problem found, each naming the field.
    pub fn from_api(obj: &ClusterNetworkPolicy) -> (Option<ClusterPolicy>, Vec<ModelError>) {
        let name = obj.metadata.name.clone().unwrap_or_default();
        let mut errors = Vec::new();
        let err = |field: String, reason: String| ModelError {
            kind: "ClusterNetworkPolicy",
            object: name.clone(),
            field,
            reason,
        };
        if name.is_empty() {
            errors.push(err("metadata.name".into(), "required".into()));
            return (None, errors);
        }
        let empty = Map::new();
        let spec = obj.spec.as_object().unwrap_or(&empty);
        if !obj.spec.is_object() {
            errors.push(err("spec".into(), "missing or not an object".into()));
        }
        // What makes the policy's reach unknowable: then it fails closed as a whole.
        let mut broken = !obj.spec.is_object();
        let tier = match spec.get("tier").and_then(Value::as_str) {
            Some("Admin") => Tier::Admin,
            Some("Baseline") => Tier::Baseline,
            other => {
                errors.push(err(
                    "spec.tier".into(),
                    format!("{other:?} is not one of Admin, Baseline"),
                ));
                broken = true;
                Tier::Admin
            }
        };
        let priority = match spec.get("priority").and_then(Value::as_i64) {
            Some(p) if (0..=1000).contains(&p) => p as u32,
            other => {
                errors.push(err(
                    "spec.priority".into(),
                    format!("{other:?} is not an integer from 0 to 1000"),
                ));
                broken = true;
                0
            }
        };
        let subject = match subject(spec.get("subject")) {
            Ok(s) => s,
            Err((f, r)) => {
                errors.push(err(f, r));
                broken = true;
                Subject::Namespaces(Selector::default())
            }
        };
        let mut rules_of = |dir: &str, peers_key: &str| -> Vec<ClusterRule> {
            let list = match spec.get(dir) {
                None | Some(Value::Null) => return Vec::new(),
                Some(Value::Array(l)) => l.as_slice(),
                Some(_) => {
                    errors.push(err(format!("spec.{dir}"), "not a list".into()));
                    // Nothing of it can be read: one rule that denies everything.
                    return vec![deny_all(0, String::new())];
                }
            };
            if list.len() > MAX_RULES {
                errors.push(err(
                    format!("spec.{dir}"),
                    format!("{} rules, more than the API's {MAX_RULES}", list.len()),
                ));
            }
            let mut out = Vec::new();
            for (i, raw) in list.iter().enumerate() {
                let field = format!("spec.{dir}[{i}]");
                let (rule, problem) = rule(i, raw, &field, peers_key, dir == "egress");
                if let Some((f, r)) = problem {
                    errors.push(err(f, r));
                }
                out.extend(rule);
            }
            out
        };
        let ingress = rules_of("ingress", "from");
        let egress = rules_of("egress", "to");
        let (subject, ingress, egress) = if broken {
            let closed = |rules: Vec<ClusterRule>| -> Vec<ClusterRule> {
                rules
                    .into_iter()
                    .filter(|r| r.action != Action::Accept)
                    .map(|r| deny_all(r.rule.index, r.name))
                    .collect()
            };
            (
                Subject::Namespaces(Selector::default()),
                closed(ingress),
                closed(egress),
            )
        } else {
            (subject, ingress, egress)
        };
        let policy = ClusterPolicy {
            name,
            tier,
            priority,
            subject,
            ingress,
            egress,
        };
        (Some(policy), errors)
    }
}

/// The rule a `Deny` or `Pass` rule that cannot be read becomes.
fn deny_all(index: usize, name: String) -> ClusterRule {
    ClusterRule {
        name,
        action: Action::Deny,
        rule: PolicyRule {
            index,
            peers: Vec::new(),
            ports: Vec::new(),
        },
    }
}

fn selector(v: Option<&Value>, field: &str) -> Result<Selector, FieldError> {
    let v = v.ok_or_else(|| (field.to_string(), "required".to_string()))?;
    let sel: LabelSelector = serde_json::from_value(v.clone())
        .map_err(|e| (field.to_string(), format!("not a label selector: {e}")))?;
    Selector::from_k8s(&sel, field)
}

/// An object holding exactly one of `keys`: that key and its value.
fn one_of<'v>(
    v: Option<&'v Value>,
    field: &str,
    keys: &[&str],
) -> Result<(&'v str, &'v Value), FieldError> {
    let obj = v
        .and_then(Value::as_object)
        .ok_or_else(|| (field.to_string(), "missing or not an object".to_string()))?;
    let mut set = obj.iter().filter(|(_, v)| !v.is_null());
    match (set.next(), set.next()) {
        (Some((k, v)), None) if keys.contains(&k.as_str()) => Ok((k.as_str(), v)),
        (Some((k, _)), None) => Err((
            format!("{field}.{k}"),
            format!("not supported by ferry (known: {})", keys.join(", ")),
        )),
        (None, _) => Err((
            field.to_string(),
            format!("sets none of {}", keys.join(", ")),
        )),
        (Some(_), Some(_)) => Err((
            field.to_string(),
            format!("sets more than one of {}", keys.join(", ")),
        )),
    }
}

fn subject(v: Option<&Value>) -> Result<Subject, FieldError> {
    let f = "spec.subject";
    match one_of(v, f, &["namespaces", "pods"])? {
        ("namespaces", sel) => Ok(Subject::Namespaces(selector(
            Some(sel),
            "spec.subject.namespaces",
        )?)),
        (_, pods) => {
            let (namespaces, pods) = namespaced_pod(pods, "spec.subject.pods")?;
            Ok(Subject::Pods { namespaces, pods })
        }
    }
}

fn namespaced_pod(v: &Value, field: &str) -> Result<(Selector, Selector), FieldError> {
    // `namespaceSelector` is optional (absent: every namespace); `podSelector` required.
    let ns = match v.get("namespaceSelector") {
        None | Some(Value::Null) => Selector::default(),
        s => selector(s, &format!("{field}.namespaceSelector"))?,
    };
    let pods = selector(v.get("podSelector"), &format!("{field}.podSelector"))?;
    Ok((ns, pods))
}

/// One rule. Returns what it becomes (nothing for an `Accept` rule that cannot be read)
/// and the first problem found in it.
fn rule(
    index: usize,
    raw: &Value,
    field: &str,
    peers_key: &str,
    egress: bool,
) -> (Option<ClusterRule>, Option<FieldError>) {
    let name = raw
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .chars()
        .take(100)
        .collect::<String>();
    let action = match raw.get("action").and_then(Value::as_str) {
        Some("Accept") => Action::Accept,
        Some("Deny") => Action::Deny,
        Some("Pass") => Action::Pass,
        other => {
            let problem = (
                format!("{field}.action"),
                format!("{other:?} is not one of Accept, Deny, Pass: the rule denies everything (fail closed)"),
            );
            return (Some(deny_all(index, name)), Some(problem));
        }
    };
    match read_rule(index, raw, field, peers_key, egress) {
        Ok(rule) => (Some(ClusterRule { name, action, rule }), None),
        Err((f, r)) if action == Action::Accept => (
            None,
            Some((f, format!("{r}: the rule matches nothing (fail closed)"))),
        ),
        Err((f, r)) => (
            Some(deny_all(index, name)),
            Some((
                f,
                format!("{r}: the {action} rule denies everything (fail closed)"),
            )),
        ),
    }
}

fn read_rule(
    index: usize,
    raw: &Value,
    field: &str,
    peers_key: &str,
    egress: bool,
) -> Result<PolicyRule, FieldError> {
    let list = match raw.get(peers_key) {
        Some(Value::Array(l)) if !l.is_empty() => l,
        _ => {
            return Err((
                format!("{field}.{peers_key}"),
                "must be a list of at least one peer".into(),
            ))
        }
    };
    if list.len() > MAX_PEERS {
        return Err((
            format!("{field}.{peers_key}"),
            format!("{} peers, more than the API's {MAX_PEERS}", list.len()),
        ));
    }
    let keys: &[&str] = if egress {
        &["namespaces", "pods", "networks", "nodes"]
    } else {
        &["namespaces", "pods"]
    };
    let mut peers = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let f = format!("{field}.{peers_key}[{i}]");
        if p.get("domainNames").is_some_and(|d| !d.is_null()) {
            return Err((
                format!("{f}.domainNames"),
                "domainNames peers are not supported by ferry".into(),
            ));
        }
        match one_of(Some(p), &f, keys)? {
            ("namespaces", sel) => peers.push(PolicyPeer::Pods {
                pods: None,
                namespaces: Some(selector(Some(sel), &format!("{f}.namespaces"))?),
            }),
            ("pods", v) => {
                let (ns, pods) = namespaced_pod(v, &format!("{f}.pods"))?;
                peers.push(PolicyPeer::Pods {
                    pods: Some(pods),
                    namespaces: Some(ns),
                });
            }
            ("nodes", sel) => peers.push(PolicyPeer::Nodes(selector(
                Some(sel),
                &format!("{f}.nodes"),
            )?)),
            (_, nets) => {
                let nets = nets.as_array().filter(|n| !n.is_empty() && n.len() <= 25);
                let nets = nets.ok_or_else(|| {
                    (
                        format!("{f}.networks"),
                        "must be a list of 1 to 25 CIDRs".to_string(),
                    )
                })?;
                for (j, n) in nets.iter().enumerate() {
                    let nf = format!("{f}.networks[{j}]");
                    let s = n
                        .as_str()
                        .ok_or_else(|| (nf.clone(), "not a string".to_string()))?;
                    let cidr: IpNetwork = s
                        .parse()
                        .map_err(|e| (nf.clone(), format!("{s:?} is not a CIDR: {e}")))?;
                    // A CIDR with host bits set stands for its network.
                    let cidr = IpNetwork::new(cidr.network(), cidr.prefix())
                        .map_err(|e| (nf, e.to_string()))?;
                    peers.push(PolicyPeer::IpBlock {
                        cidr,
                        except: Vec::new(),
                    });
                }
            }
        }
    }
    let ports = match raw.get("protocols") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(l)) if !l.is_empty() && l.len() <= 25 => {
            let mut out = Vec::new();
            for (i, p) in l.iter().enumerate() {
                out.extend(protocol(p, &format!("{field}.protocols[{i}]"))?);
            }
            out
        }
        Some(_) => {
            return Err((
                format!("{field}.protocols"),
                "must be a list of 1 to 25 entries".into(),
            ))
        }
    };
    let named = ports.iter().any(|p| matches!(p.port, PortSel::Named(_)));
    if named
        && peers
            .iter()
            .any(|p| matches!(p, PolicyPeer::IpBlock { .. } | PolicyPeer::Nodes(_)))
    {
        return Err((
            format!("{field}.protocols"),
            "destinationNamedPort cannot be used with networks or nodes peers".into(),
        ));
    }
    Ok(PolicyRule {
        index,
        peers,
        ports,
    })
}

fn protocol(v: &Value, field: &str) -> Result<Vec<PolicyPort>, FieldError> {
    let (key, body) = one_of(
        Some(v),
        field,
        &["tcp", "udp", "sctp", "destinationNamedPort"],
    )?;
    let protocol = match key {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => {
            let name = body
                .as_str()
                .filter(|s| !s.is_empty() && s.len() <= 15)
                .ok_or_else(|| {
                    (
                        format!("{field}.destinationNamedPort"),
                        "not a port name (1 to 15 characters)".to_string(),
                    )
                })?;
            // A named port matches the port the destination pod names so, with that
            // port's own protocol.
            return Ok([Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                .into_iter()
                .map(|protocol| PolicyPort {
                    protocol,
                    port: PortSel::Named(name.to_string()),
                })
                .collect());
        }
    };
    let f = format!("{field}.{key}");
    let port = match body.get("destinationPort") {
        None | Some(Value::Null) => PortSel::All,
        Some(p) => {
            let pf = format!("{f}.destinationPort");
            let number = |v: Option<&Value>, name: &str| {
                v.and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        (
                            format!("{pf}.{name}"),
                            "not a port from 1 to 65535".to_string(),
                        )
                    })
            };
            match one_of(Some(p), &pf, &["number", "range"])? {
                ("number", n) => {
                    let n = number(Some(n), "number")?;
                    PortSel::Range(n, n)
                }
                (_, r) => {
                    let lo = number(r.get("start"), "range.start")?;
                    let hi = number(r.get("end"), "range.end")?;
                    if lo >= hi {
                        return Err((
                            format!("{pf}.range"),
                            format!("start {lo} must be less than end {hi}"),
                        ));
                    }
                    PortSel::Range(lo, hi)
                }
            }
        }
    };
    Ok(vec![PolicyPort { protocol, port }])
}

/// A Node's name, labels and IP addresses (`status.addresses` of every type that holds an
/// IP address: what a `nodes` peer matches).
pub fn node_from_k8s(node: &core::Node) -> Result<NodeInfo, ModelError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(ModelError {
            kind: "Node",
            object: String::new(),
            field: "metadata.name".into(),
            reason: "required".into(),
        });
    }
    let mut ips: Vec<std::net::IpAddr> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter_map(|a| a.address.parse().ok())
        .collect();
    ips.sort_unstable();
    ips.dedup();
    Ok(NodeInfo {
        name,
        labels: node.metadata.labels.clone().unwrap_or_default(),
        ips,
    })
}
