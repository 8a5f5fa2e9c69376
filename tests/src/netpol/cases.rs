//! NetworkPolicy and ClusterNetworkPolicy conformance case files (format:
//! `tests/netpol/README.md`, the cases in `tests/netpol/`): parsing, validation, `${...}`
//! substitution in policy specs, the worlds cases run in (the x/y/z model, or a file's
//! declared `worlds`), and the expected reachability matrix of a probe (every pair, or with
//! `scope: listed` the pairs it lists).
//!
//! A file is read with yaml-rust2, turned into a `serde_json::Value` and typed with serde,
//! so a wrong type or an unknown key is reported with its path (`steps[0].actions[1]...`)
//! and the case it is in. Validation then checks what the types cannot: a world's own
//! consistency, pods and namespaces of the case's world, pods the case has, policies and
//! ClusterNetworkPolicies that exist when updated or deleted, ports the pods serve.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use k8s_openapi::api::networking::v1::NetworkPolicySpec;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// The namespaces and pod names of the model (upstream's x, y, z and a, b, c).
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CaseError {
    #[error("reading {path}: {msg}")]
    Read { path: String, msg: String },
    #[error("not YAML: {0}")]
    Yaml(String),
    #[error("{0}")]
    Shape(String),
    #[error("case {index} ({name:?}){}: {msg}", step.map(|s| format!(", step {s}")).unwrap_or_default())]
    Invalid {
        /// 1-based position of the case in its file.
        index: usize,
        name: String,
        /// 1-based step, when the problem is in one.
        step: Option<usize>,
        msg: String,
    },
    #[error("world {name:?}: {msg}")]
    World { name: String, msg: String },
    #[error("substitution in {text:?}: {msg}")]
    Substitution { text: String, msg: String },
}

/// A pod, written `ns/name`: of the model (x, y, z and a, b, c) or of a case's declared
/// world. Parsing checks the syntax only; a case's validation checks that the pod is its
/// world's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub ns: String,
    pub name: String,
}

impl FromStr for PodRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ns, name) = s
            .split_once('/')
            .ok_or_else(|| format!("pod {s:?} is not of the form ns/pod (e.g. x/a)"))?;
        check_dns_label(ns).map_err(|e| format!("pod {s:?}: namespace {ns:?} {e}"))?;
        check_dns_subdomain(name).map_err(|e| format!("pod {s:?}: pod name {name:?} {e}"))?;
        Ok(PodRef {
            ns: ns.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.name)
    }
}

impl<'de> Deserialize<'de> for PodRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An RFC 1123 label (a namespace's name): lower-case letters, digits and `-`, 1 to 63,
/// starting and ending with a letter or digit.
fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("is not a DNS label".into())
    }
}

/// An RFC 1123 subdomain (an object's name).
fn check_dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| check_dns_label(l).is_ok());
    if ok {
        Ok(())
    } else {
        Err("is not a DNS subdomain name".into())
    }
}

/// `'*'`, `'x/*'` or `'x/a'` in an `expect` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSelector {
    Any,
    Namespace(String),
    Pod(PodRef),
}

impl PodSelector {
    pub fn matches(&self, pod: &PodRef) -> bool {
        match self {
            PodSelector::Any => true,
            PodSelector::Namespace(ns) => pod.ns == *ns,
            PodSelector::Pod(p) => p == pod,
        }
    }
}

impl FromStr for PodSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(PodSelector::Any);
        }
        if let Some(ns) = s.strip_suffix("/*") {
            check_dns_label(ns).map_err(|e| format!("selector {s:?}: namespace {ns:?} {e}"))?;
            return Ok(PodSelector::Namespace(ns.to_string()));
        }
        s.parse()
            .map(PodSelector::Pod)
            .map_err(|e| format!("selector {s:?} is not '*', 'ns/*' or 'ns/pod': {e}"))
    }
}

impl fmt::Display for PodSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodSelector::Any => f.write_str("*"),
            PodSelector::Namespace(ns) => write!(f, "{ns}/*"),
            PodSelector::Pod(p) => p.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for PodSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// As Kubernetes spells it (`TCP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The container port name the pods use for `port` on this protocol (`serve-80-tcp`).
    pub fn port_name(self, port: u16) -> String {
        format!("serve-{port}-{}", self.as_str().to_ascii_lowercase())
    }
}

/// Where a case comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    E2e,
    Cyclonus,
    Derived,
    /// `npa-conformance <file>:<Test>/<subtest>`: the upstream ClusterNetworkPolicy suite.
    NpaConformance(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::E2e => f.write_str("e2e"),
            Source::Cyclonus => f.write_str("cyclonus"),
            Source::Derived => f.write_str("derived"),
            Source::NpaConformance(cite) => write!(f, "npa-conformance {cite}"),
        }
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "e2e" => Ok(Source::E2e),
            "cyclonus" => Ok(Source::Cyclonus),
            "derived" => Ok(Source::Derived),
            other => match other.strip_prefix("npa-conformance ").map(str::trim) {
                Some(cite) if !cite.is_empty() => Ok(Source::NpaConformance(cite.to_string())),
                _ => Err(serde::de::Error::custom(format!(
                    "unknown source {other:?}: e2e, cyclonus, derived or \
                     `npa-conformance <file>:<Test>/<subtest>`"
                ))),
            },
        }
    }
}

/// The upstream conformance features ferry claims (`features:` of a case).
pub const CLAIMED_FEATURES: [&str; 3] = [
    "ClusterNetworkPolicy",
    "ClusterNetworkPolicyNamedPorts",
    "ClusterNetworkPolicyEgressNodePeers",
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// Declared worlds, by name (`world: <name>` in a case).
    #[serde(default)]
    pub worlds: BTreeMap<String, WorldSpec>,
    pub cases: Vec<Case>,
}

/// A declared world: namespaces, pods and what they serve, instead of the x/y/z model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldSpec {
    /// One Service per pod, probed as well (default true).
    #[serde(default = "yes")]
    pub services: bool,
    #[serde(default)]
    pub denied: Denied,
    /// Labels every Node object carries (besides its own).
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    pub namespaces: BTreeMap<String, WorldNamespace>,
    pub pods: BTreeMap<PodRef, WorldPodSpec>,
}

fn yes() -> bool {
    true
}

/// What a probe expected to be denied must observe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Denied {
    /// Any failure to connect.
    #[default]
    Any,
    /// A timeout: a refusal (RST, ICMP unreachable, SCTP ABORT) is a failure.
    Timeout,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldNamespace {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldPodSpec {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// In its node's network namespace, at the node's address.
    #[serde(default)]
    pub host_network: bool,
    pub ports: Vec<PortSpec>,
}

impl WorldPodSpec {
    pub fn serves(&self, port: u16, protocol: Protocol) -> bool {
        self.ports
            .iter()
            .any(|p| p.port == port && p.protocol == protocol)
    }
}

/// A port a world pod serves; with a `name`, also a named containerPort.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    #[serde(default)]
    pub name: Option<String>,
}

impl WorldSpec {
    /// The x/y/z model as a world: namespaces x, y, z (`ns=<name>`), pods a, b, c in each
    /// (`pod=<name>`), each serving every port of `ports` on every protocol of
    /// `protocols`, named `serve-<port>-<protocol>`; Services; any failure is a denial.
    pub fn model(ports: &[u16], protocols: &[Protocol]) -> WorldSpec {
        let namespaces = NAMESPACES
            .iter()
            .map(|ns| {
                let labels = BTreeMap::from([("ns".to_string(), ns.to_string())]);
                (ns.to_string(), WorldNamespace { labels })
            })
            .collect();
        let served: Vec<PortSpec> = protocols
            .iter()
            .flat_map(|proto| {
                ports.iter().map(move |port| PortSpec {
                    port: *port,
                    protocol: *proto,
                    name: Some(proto.port_name(*port)),
                })
            })
            .collect();
        let pods = NAMESPACES
            .iter()
            .flat_map(|ns| POD_NAMES.iter().map(move |p| (ns, p)))
            .map(|(ns, p)| {
                let pod = PodRef {
                    ns: ns.to_string(),
                    name: p.to_string(),
                };
                let spec = WorldPodSpec {
                    labels: Case::initial_pod_labels(&pod),
                    host_network: false,
                    ports: served.clone(),
                };
                (pod, spec)
            })
            .collect();
        WorldSpec {
            services: true,
            denied: Denied::Any,
            node_labels: BTreeMap::new(),
            namespaces,
            pods,
        }
    }

    /// A namespace's labels as the API holds them: its own and `kubernetes.io/metadata.name`.
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .get(ns)
            .map(|n| n.labels.clone())
            .unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), ns.to_string());
        labels
    }

    /// Everything the types do not check.
    fn validate(&self) -> Result<(), String> {
        if self.namespaces.is_empty() {
            return Err("`namespaces` is empty".into());
        }
        if self.pods.is_empty() {
            return Err("`pods` is empty".into());
        }
        if self.pods.len() > MAX_WORLD_PODS {
            return Err(format!(
                "{} pods, more than the runner's {MAX_WORLD_PODS}",
                self.pods.len()
            ));
        }
        for (k, v) in &self.node_labels {
            check_label(k, v).map_err(|e| format!("node_labels: {e}"))?;
        }
        for (ns, spec) in &self.namespaces {
            check_dns_label(ns).map_err(|e| format!("namespace {ns:?} {e}"))?;
            for (k, v) in &spec.labels {
                check_label(k, v).map_err(|e| format!("namespace {ns}: labels: {e}"))?;
            }
            if let Some(v) = spec.labels.get(NAMESPACE_NAME_LABEL) {
                if v != ns {
                    return Err(format!(
                        "namespace {ns}: label {NAMESPACE_NAME_LABEL}={v}: the API server sets it to the namespace's name"
                    ));
                }
            }
        }
        // (port, protocol) -> how many host-network pods serve it.
        let mut host_ports: BTreeMap<(u16, Protocol), usize> = BTreeMap::new();
        for (pod, spec) in &self.pods {
            let at = |msg: String| format!("pod {pod}: {msg}");
            if !self.namespaces.contains_key(&pod.ns) {
                return Err(at(format!(
                    "namespace {:?} is not one of the world's namespaces",
                    pod.ns
                )));
            }
            for (k, v) in &spec.labels {
                check_label(k, v).map_err(|e| at(format!("labels: {e}")))?;
            }
            let mut served = BTreeSet::new();
            let mut names = BTreeSet::new();
            for (i, p) in spec.ports.iter().enumerate() {
                let at = |msg: String| at(format!("ports[{i}]: {msg}"));
                if p.port == 0 {
                    return Err(at("port 0 is not a port".into()));
                }
                if !served.insert((p.port, p.protocol)) {
                    return Err(at(format!(
                        "{}/{} is listed twice",
                        p.port,
                        p.protocol.as_str()
                    )));
                }
                if let Some(name) = &p.name {
                    check_port_name(name).map_err(at)?;
                    if !names.insert(name.as_str()) {
                        return Err(at(format!("port name {name:?} is used twice")));
                    }
                }
                if spec.host_network {
                    *host_ports.entry((p.port, p.protocol)).or_default() += 1;
                }
            }
        }
        if let Some(((port, proto), n)) = host_ports.iter().find(|(_, n)| **n > super::world::NODES)
        {
            return Err(format!(
                "{n} host-network pods serve {port}/{}: they must be on different nodes, and the cluster has {}",
                proto.as_str(),
                super::world::NODES
            ));
        }
        Ok(())
    }
}

/// The label every namespace carries, as the API server sets it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The most pods a world may have (each its Service address).
const MAX_WORLD_PODS: usize = 200;

/// A label key (an optional DNS-subdomain prefix and `/`, then a name of up to 63
/// characters) and value, as the API validates them.
fn check_label(key: &str, value: &str) -> Result<(), String> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if !name_ok(name) || prefix.is_some_and(|p| check_dns_subdomain(p).is_err()) {
        return Err(format!("{key:?} is not a label key"));
    }
    if !value.is_empty() && !name_ok(value) {
        return Err(format!("{key}={value:?}: not a label value"));
    }
    Ok(())
}

/// An IANA service name, as a containerPort's name must be: 1 to 15 lower-case letters,
/// digits and `-`, at least one letter, no `-` at either end or twice in a row.
fn check_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!("port name {name:?} is not an IANA service name"))
    }
}

/// `world:` of a case: a declared world's name, or a world inline.
#[derive(Debug, Clone, PartialEq)]
pub enum WorldRef {
    Named(String),
    Inline(Box<WorldSpec>),
}

impl<'de> Deserialize<'de> for WorldRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = WorldRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a world's name or a world (a mapping)")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<WorldRef, E> {
                Ok(WorldRef::Named(s.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<WorldRef, A::Error> {
                WorldSpec::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(|w| WorldRef::Inline(Box::new(w)))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "RawCase")]
pub struct Case {
    pub name: String,
    pub source: Source,
    /// `world:` as written; `None`: the x/y/z model.
    pub world: Option<WorldRef>,
    /// The world the case runs in, `world:` resolved (by `parse`); `None`: the model.
    pub world_spec: Option<WorldSpec>,
    pub pods: Vec<PodRef>,
    /// The model's (default `[80, 81]`); empty in a world.
    pub server_ports: Vec<u16>,
    /// The model's (default `[TCP]`); empty in a world.
    pub server_protocols: Vec<Protocol>,
    /// Upstream conformance features the case needs.
    pub features: Vec<String>,
    pub note: Option<String>,
    pub steps: Vec<Step>,
    /// `server_ports` or `server_protocols` written in a world case (an error).
    given_server_keys: Vec<&'static str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    source: Source,
    #[serde(default)]
    world: Option<WorldRef>,
    pods: Vec<PodRef>,
    #[serde(default)]
    server_ports: Option<Vec<u16>>,
    #[serde(default)]
    server_protocols: Option<Vec<Protocol>>,
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    note: Option<String>,
    steps: Vec<Step>,
}

impl From<RawCase> for Case {
    fn from(r: RawCase) -> Case {
        let mut given = Vec::new();
        if r.server_ports.is_some() {
            given.push("server_ports");
        }
        if r.server_protocols.is_some() {
            given.push("server_protocols");
        }
        let in_world = r.world.is_some();
        let (server_ports, server_protocols) = if in_world {
            (Vec::new(), Vec::new())
        } else {
            (
                r.server_ports.unwrap_or_else(default_ports),
                r.server_protocols.unwrap_or_else(default_protocols),
            )
        };
        Case {
            name: r.name,
            source: r.source,
            world: r.world,
            world_spec: None,
            pods: r.pods,
            server_ports,
            server_protocols,
            features: r.features,
            note: r.note,
            steps: r.steps,
            given_server_keys: given,
        }
    }
}

fn default_ports() -> Vec<u16> {
    vec![80, 81]
}

fn default_protocols() -> Vec<Protocol> {
    vec![Protocol::Tcp]
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub actions: Vec<Action>,
    #[serde(default)]
    pub probes: Vec<Probe>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Create(PolicyAction),
    Update(PolicyAction),
    /// Deletes one NetworkPolicy.
    Delete(PolicyName),
    LabelPod(LabelPod),
    LabelNamespace(LabelNamespace),
    /// Deletes the case's NetworkPolicies and ClusterNetworkPolicies.
    DeleteAllPolicies(Empty),
    CreateCnp(CnpAction),
    /// Replaces the whole spec of an existing ClusterNetworkPolicy.
    UpdateCnp(CnpAction),
    DeleteCnp(CnpName),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyAction {
    pub name: String,
    pub ns: String,
    /// A `networking.k8s.io/v1` NetworkPolicySpec, `${...}` placeholders not yet substituted.
    pub spec: Value,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyName {
    pub name: String,
    pub ns: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnpAction {
    pub name: String,
    /// A `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicySpec, `${...}`
    /// placeholders not yet substituted.
    pub spec: Value,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnpName {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelPod {
    pub pod: PodRef,
    #[serde(default)]
    pub set: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub add: Option<BTreeMap<String, String>>,
}

impl LabelPod {
    /// The pod's labels after this action.
    pub fn apply(&self, labels: &mut BTreeMap<String, String>) {
        if let Some(set) = &self.set {
            labels.clone_from(set);
        }
        if let Some(add) = &self.add {
            labels.extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelNamespace {
    pub ns: String,
    pub add: BTreeMap<String, String>,
}

impl LabelNamespace {
    /// The namespace's labels after this action.
    pub fn apply(&self, labels: &mut BTreeMap<String, String>) {
        labels.extend(self.add.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
}

/// `{}`: an action that takes no arguments.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    #[serde(default)]
    pub scope: Scope,
    pub expect: Vec<Expect>,
}

/// Which pairs a probe checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every ordered pair of the case's pods.
    #[default]
    All,
    /// Only the pairs some `expect` entry matches.
    Listed,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub from: PodSelector,
    pub to: PodSelector,
    pub allow: bool,
}

/// Reads, parses and validates a case file.
pub fn read(path: &std::path::Path) -> Result<CaseFile, CaseError> {
    let text = std::fs::read_to_string(path).map_err(|e| CaseError::Read {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    parse(&text)
}

/// Parses and validates a case file.
pub fn parse(text: &str) -> Result<CaseFile, CaseError> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| CaseError::Yaml(e.to_string()))?;
    let doc = match docs.as_slice() {
        [doc] => doc,
        [] => return Err(CaseError::Yaml("the file is empty".into())),
        _ => return Err(CaseError::Yaml("more than one YAML document".into())),
    };
    let value = yaml_to_json(doc).map_err(CaseError::Yaml)?;
    if !value.is_object() {
        return Err(CaseError::Shape(
            "the file must be a mapping with the key `cases` (and optionally `worlds`)".into(),
        ));
    }
    let mut file: CaseFile =
        serde_path_to_error::deserialize(&value).map_err(|e| shape_error(&value, e))?;
    for (name, world) in &file.worlds {
        world.validate().map_err(|msg| CaseError::World {
            name: name.clone(),
            msg,
        })?;
    }
    let worlds = file.worlds.clone();
    for (i, case) in file.cases.iter_mut().enumerate() {
        let invalid = |step, msg| CaseError::Invalid {
            index: i + 1,
            name: case.name.clone(),
            step,
            msg,
        };
        let spec = match &case.world {
            None => None,
            Some(WorldRef::Named(w)) => Some(worlds.get(w).cloned().ok_or_else(|| {
                invalid(None, format!("world {w:?} is not declared under `worlds`"))
            })?),
            Some(WorldRef::Inline(w)) => {
                w.validate()
                    .map_err(|e| invalid(None, format!("world: {e}")))?;
                Some((**w).clone())
            }
        };
        case.world_spec = spec;
        case.validate(i).map_err(|(step, msg)| invalid(step, msg))?;
    }
    Ok(file)
}

/// A serde error, with the name of the case it is in when the path leads into one.
fn shape_error(value: &Value, e: serde_path_to_error::Error<serde_json::Error>) -> CaseError {
    let path = e.path().to_string();
    let case = e.path().iter().nth(1).and_then(|seg| match seg {
        serde_path_to_error::Segment::Seq { index } => Some(*index),
        _ => None,
    });
    let named = case.and_then(|i| {
        let name = value.get("cases")?.get(i)?.get("name")?.as_str()?;
        Some(format!("case {} ({name:?}): ", i + 1))
    });
    CaseError::Shape(format!(
        "{}at {path}: {}",
        named.unwrap_or_default(),
        e.inner()
    ))
}

/// YAML as JSON; mapping keys must be scalars (they become strings).
fn yaml_to_json(y: &Yaml) -> Result<Value, String> {
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("{r:?} is not a finite number"))?,
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => {
            Value::Array(items.iter().map(yaml_to_json).collect::<Result<_, _>>()?)
        }
        Yaml::Hash(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("a mapping key must be a scalar, not {other:?}")),
                };
                if out.insert(key.clone(), yaml_to_json(v)?).is_some() {
                    return Err(format!("key {key:?} appears twice in one mapping"));
                }
            }
            Value::Object(out)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not supported".into()),
        Yaml::BadValue => return Err("a value yaml-rust2 could not read".into()),
    })
}

impl Case {
    /// The world the case runs in: its declared one, or the model serving its ports.
    pub fn world(&self) -> WorldSpec {
        match &self.world_spec {
            Some(w) => w.clone(),
            None => WorldSpec::model(&self.server_ports, &self.server_protocols),
        }
    }

    /// Whether the case runs in a declared world (not the x/y/z model).
    pub fn in_world(&self) -> bool {
        self.world.is_some()
    }

    /// The features of `features:` that `claimed` lacks.
    pub fn unclaimed_features<'a>(&'a self, claimed: &[String]) -> Vec<&'a str> {
        self.features
            .iter()
            .filter(|f| !claimed.contains(f))
            .map(String::as_str)
            .collect()
    }

    /// Whether `pod` is one of the case's world's (the model's when it has none).
    fn check_pod(&self, pod: &PodRef) -> Result<(), String> {
        match &self.world_spec {
            None => {
                if !NAMESPACES.contains(&pod.ns.as_str()) {
                    return Err(format!(
                        "pod \"{pod}\": namespace {:?} is not one of {NAMESPACES:?}",
                        pod.ns
                    ));
                }
                if !POD_NAMES.contains(&pod.name.as_str()) {
                    return Err(format!(
                        "pod \"{pod}\": pod {:?} is not one of {POD_NAMES:?}",
                        pod.name
                    ));
                }
                Ok(())
            }
            Some(w) if w.pods.contains_key(pod) => Ok(()),
            Some(_) => Err(format!("pod {pod} is not one of the world's pods")),
        }
    }

    /// Whether `ns` is one of the case's world's namespaces.
    fn check_namespace(&self, ns: &str) -> Result<(), String> {
        match &self.world_spec {
            None if NAMESPACES.contains(&ns) => Ok(()),
            None => Err(format!("namespace {ns:?} is not one of {NAMESPACES:?}")),
            Some(w) if w.namespaces.contains_key(ns) => Ok(()),
            Some(w) => Err(format!(
                "namespace {ns:?} is not one of the world's ({})",
                w.namespaces.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }

    fn check_selector(&self, sel: &PodSelector) -> Result<(), String> {
        match sel {
            PodSelector::Any => Ok(()),
            PodSelector::Namespace(ns) => self
                .check_namespace(ns)
                .map_err(|e| format!("expect selector '{sel}': {e}")),
            PodSelector::Pod(p) => self
                .check_pod(p)
                .map_err(|e| format!("expect selector '{sel}': {e}")),
        }
    }

    /// Everything the types do not check; `index` is the case's 0-based position. The
    /// error names the 1-based step, if any.
    fn validate(&self, index: usize) -> Result<(), (Option<usize>, String)> {
        let whole = |msg: String| (None, msg);
        if self.name.trim().is_empty() {
            return Err(whole("the name is empty".into()));
        }
        if self.pods.is_empty() {
            return Err(whole("`pods` is empty".into()));
        }
        for (k, pod) in self.pods.iter().enumerate() {
            self.check_pod(pod)
                .map_err(|e| whole(format!("at cases[{index}].pods[{k}]: {e}")))?;
        }
        if let Some(dup) = first_duplicate(&self.pods) {
            return Err(whole(format!("pod {dup} is listed twice")));
        }
        if let Some(key) = self.given_server_keys.first().filter(|_| self.in_world()) {
            return Err(whole(format!(
                "`{key}` is not allowed in a case with a world (the world says what each pod serves)"
            )));
        }
        if !self.in_world() {
            if self.server_ports.is_empty() || self.server_ports.contains(&0) {
                return Err(whole(format!(
                    "server_ports {:?} must be non-empty ports 1-65535",
                    self.server_ports
                )));
            }
            if let Some(dup) = first_duplicate(&self.server_ports) {
                return Err(whole(format!("server port {dup} is listed twice")));
            }
            if self.server_protocols.is_empty() {
                return Err(whole("server_protocols is empty".into()));
            }
            if let Some(dup) = first_duplicate(&self.server_protocols) {
                return Err(whole(format!("server protocol {dup:?} is listed twice")));
            }
        }
        for f in &self.features {
            let ok = f.starts_with(|c: char| c.is_ascii_uppercase())
                && f.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok {
                return Err(whole(format!(
                    "features: {f:?} is not a feature's name (e.g. ClusterNetworkPolicy)"
                )));
            }
        }
        if let Some(dup) = first_duplicate(&self.features) {
            return Err(whole(format!("features: {dup} is listed twice")));
        }
        if self.steps.is_empty() {
            return Err(whole("`steps` is empty".into()));
        }
        let world = self.world();
        let pods: BTreeSet<&PodRef> = self.pods.iter().collect();
        let placeholders_known = |spec: &Value, what: &str| -> Result<(), String> {
            for pod in placeholders(spec).map_err(|e| e.to_string())? {
                if !pods.contains(&pod) {
                    return Err(format!(
                        "{what}: a placeholder names pod {pod}, which the case does not create"
                    ));
                }
            }
            Ok(())
        };
        // Policies and ClusterNetworkPolicies that exist before each step: create needs a
        // new name, update and delete an old one.
        let mut policies: BTreeSet<(String, String)> = BTreeSet::new();
        let mut cnps: BTreeSet<String> = BTreeSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            let at = |msg: String| (Some(i + 1), msg);
            if step.actions.is_empty() && step.probes.is_empty() {
                return Err(at("the step has neither actions nor probes".into()));
            }
            for (j, action) in step.actions.iter().enumerate() {
                let at = |msg: String| (Some(i + 1), format!("action {}: {msg}", j + 1));
                match action {
                    Action::Create(p) | Action::Update(p) => {
                        self.check_namespace(&p.ns).map_err(at)?;
                        check_object_name(&p.name).map_err(at)?;
                        check_spec(&p.spec)
                            .map_err(|e| at(format!("policy {}/{}: {e}", p.ns, p.name)))?;
                        placeholders_known(&p.spec, &format!("policy {}/{}", p.ns, p.name))
                            .map_err(at)?;
                        let key = (p.ns.clone(), p.name.clone());
                        let known = policies.contains(&key);
                        match action {
                            Action::Create(_) if known => {
                                return Err(at(format!(
                                    "create: policy {}/{} exists already",
                                    p.ns, p.name
                                )))
                            }
                            Action::Update(_) if !known => {
                                return Err(at(format!(
                                    "update: there is no policy {}/{}",
                                    p.ns, p.name
                                )))
                            }
                            _ => {}
                        }
                        policies.insert(key);
                    }
                    Action::Delete(p) => {
                        self.check_namespace(&p.ns).map_err(at)?;
                        if !policies.remove(&(p.ns.clone(), p.name.clone())) {
                            return Err(at(format!(
                                "delete: there is no policy {}/{}",
                                p.ns, p.name
                            )));
                        }
                    }
                    Action::LabelPod(l) => {
                        if !pods.contains(&l.pod) {
                            return Err(at(format!("label_pod: the case has no pod {}", l.pod)));
                        }
                        if l.set.is_some() == l.add.is_some() {
                            return Err(at(format!(
                                "label_pod {}: give exactly one of `set` and `add`",
                                l.pod
                            )));
                        }
                        for (k, v) in l.set.iter().chain(&l.add).flatten() {
                            check_label(k, v)
                                .map_err(|e| at(format!("label_pod {}: {e}", l.pod)))?;
                        }
                    }
                    Action::LabelNamespace(l) => {
                        self.check_namespace(&l.ns).map_err(at)?;
                        for (k, v) in &l.add {
                            check_label(k, v)
                                .map_err(|e| at(format!("label_namespace {}: {e}", l.ns)))?;
                        }
                    }
                    Action::DeleteAllPolicies(_) => {
                        policies.clear();
                        cnps.clear();
                    }
                    Action::CreateCnp(c) | Action::UpdateCnp(c) => {
                        check_object_name(&c.name).map_err(at)?;
                        let what = format!("ClusterNetworkPolicy {}", c.name);
                        check_cnp_spec(&c.spec).map_err(|e| at(format!("{what}: {e}")))?;
                        placeholders_known(&c.spec, &what).map_err(at)?;
                        let known = cnps.contains(&c.name);
                        match action {
                            Action::CreateCnp(_) if known => {
                                return Err(at(format!("create_cnp: {what} exists already")))
                            }
                            Action::UpdateCnp(_) if !known => {
                                return Err(at(format!(
                                    "update_cnp: there is no ClusterNetworkPolicy {}",
                                    c.name
                                )))
                            }
                            _ => {}
                        }
                        cnps.insert(c.name.clone());
                    }
                    Action::DeleteCnp(c) => {
                        if !cnps.remove(&c.name) {
                            return Err(at(format!(
                                "delete_cnp: there is no ClusterNetworkPolicy {}",
                                c.name
                            )));
                        }
                    }
                }
            }
            for (j, probe) in step.probes.iter().enumerate() {
                let at = |msg: String| (Some(i + 1), format!("probe {}: {msg}", j + 1));
                if !self.in_world() {
                    if !self.server_ports.contains(&probe.port) {
                        return Err(at(format!(
                            "port {} is not in server_ports {:?}",
                            probe.port, self.server_ports
                        )));
                    }
                    if !self.server_protocols.contains(&probe.protocol) {
                        return Err(at(format!(
                            "protocol {} is not in server_protocols",
                            probe.protocol.as_str()
                        )));
                    }
                }
                for e in &probe.expect {
                    for sel in [&e.from, &e.to] {
                        self.check_selector(sel).map_err(at)?;
                        if !self.pods.iter().any(|p| sel.matches(p)) {
                            return Err(at(format!(
                                "expect selector '{sel}' selects no pod of the case"
                            )));
                        }
                    }
                }
                let expected = Matrix::expected(&self.pods, probe);
                if expected.pairs().next().is_none() {
                    return Err(at(
                        "no pair to probe (`scope: listed` probes only the pairs of `expect`)"
                            .into(),
                    ));
                }
                // Every server probed serves the port (an unserved one would refuse).
                for (_, to, _) in expected.pairs() {
                    let serves = world
                        .pods
                        .get(to)
                        .is_some_and(|w| w.serves(probe.port, probe.protocol));
                    if !serves {
                        return Err(at(format!(
                            "pod {to} does not serve {}/{}, and the probe goes to it",
                            probe.port,
                            probe.protocol.as_str()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every pod's labels before any step: `pod=<name>`.
    pub fn initial_pod_labels(pod: &PodRef) -> BTreeMap<String, String> {
        BTreeMap::from([("pod".to_string(), pod.name.clone())])
    }

    /// Every namespace's labels before any step.
    pub fn initial_namespace_labels(ns: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NAMESPACE_NAME_LABEL.to_string(), ns.to_string()),
            ("ns".to_string(), ns.to_string()),
        ])
    }
}

/// The spec is a NetworkPolicySpec, with no key k8s-openapi does not know (a misspelt key
/// would otherwise be dropped silently and the policy mean something else).
fn check_spec(spec: &Value) -> Result<(), String> {
    if !spec.is_object() {
        return Err("spec is not a mapping".into());
    }
    let spec = substitute_any(spec).map_err(|e| e.to_string())?;
    let typed: NetworkPolicySpec = serde_json::from_value(spec.clone())
        .map_err(|e| format!("spec is not a NetworkPolicySpec: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("spec: {e}"))?;
    match dropped_key(&spec, &back, "spec") {
        Some(path) => Err(format!("{path} is not a key of a NetworkPolicySpec")),
        None => Ok(()),
    }
}

/// The spec with every placeholder replaced by some address (to check its shape).
fn substitute_any(spec: &Value) -> Result<Value, CaseError> {
    map_strings(spec, &mut |s| {
        expand(s, |kind, _| {
            Ok(match kind {
                Placeholder::PodIp => "10.0.0.1".to_string(),
                Placeholder::Slash4Of => "0.0.0.0/4".to_string(),
            })
        })
    })
}

/// The shape of a ClusterNetworkPolicySpec: its keys, tier, priority, subject, and each
/// rule's keys and action. What a peer or a protocol says is the API's (and the
/// evaluator's) to judge.
fn check_cnp_spec(spec: &Value) -> Result<(), String> {
    let spec = substitute_any(spec).map_err(|e| e.to_string())?;
    let map = spec.as_object().ok_or("spec is not a mapping")?;
    let unknown = |m: &serde_json::Map<String, Value>, known: &[&str], path: &str| match m
        .keys()
        .find(|k| !known.contains(&k.as_str()))
    {
        Some(k) => Err(format!(
            "{path}.{k} is not a key of a ClusterNetworkPolicySpec (known here: {})",
            known.join(", ")
        )),
        None => Ok(()),
    };
    unknown(
        map,
        &["tier", "priority", "subject", "ingress", "egress"],
        "spec",
    )?;
    match map.get("tier").and_then(Value::as_str) {
        Some("Admin" | "Baseline") => {}
        other => return Err(format!("spec.tier {other:?} is not Admin or Baseline")),
    }
    match map.get("priority").and_then(Value::as_i64) {
        Some(p) if (0..=1000).contains(&p) => {}
        _ => return Err("spec.priority must be an integer from 0 to 1000".into()),
    }
    if !map.get("subject").is_some_and(Value::is_object) {
        return Err("spec.subject must be a mapping".into());
    }
    for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
        let Some(rules) = map.get(dir) else { continue };
        let rules = rules
            .as_array()
            .ok_or_else(|| format!("spec.{dir} is not a list"))?;
        for (i, rule) in rules.iter().enumerate() {
            let path = format!("spec.{dir}[{i}]");
            let r = rule
                .as_object()
                .ok_or_else(|| format!("{path} is not a mapping"))?;
            unknown(r, &["name", "action", peers, "protocols"], &path)?;
            match r.get("action").and_then(Value::as_str) {
                Some("Accept" | "Deny" | "Pass") => {}
                other => {
                    return Err(format!(
                        "{path}.action {other:?} is not Accept, Deny or Pass"
                    ))
                }
            }
            if !r.get(peers).is_some_and(Value::is_array) {
                return Err(format!("{path}.{peers} must be a list of peers"));
            }
        }
    }
    Ok(())
}

/// The path of the first key of `orig` that `back` lost.
fn dropped_key(orig: &Value, back: &Value, path: &str) -> Option<String> {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => o.iter().find_map(|(k, v)| match b.get(k) {
            None => Some(format!("{path}.{k}")),
            Some(bv) => dropped_key(v, bv, &format!("{path}.{k}")),
        }),
        (Value::Array(o), Value::Array(b)) => o
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (ov, bv))| dropped_key(ov, bv, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn first_duplicate<T: Ord>(items: &[T]) -> Option<&T> {
    let mut seen = BTreeSet::new();
    items.iter().find(|i| !seen.insert(*i))
}

/// An RFC 1123 DNS subdomain, as the API server demands of a policy's name.
fn check_object_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("policy name {name:?} is not a DNS subdomain name"))
    }
}

/// The placeholders a spec may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    /// `${POD_IP:ns/pod}`: the pod's IPv4 address.
    PodIp,
    /// `${SLASH4_OF:ns/pod}`: the /4 holding that address (upstream's makeLargeCIDRForIP).
    Slash4Of,
}

/// Calls `each` for every placeholder of one string, in order, and returns the string
/// with each replaced by what `each` returns.
fn expand(
    text: &str,
    mut each: impl FnMut(Placeholder, PodRef) -> Result<String, String>,
) -> Result<String, CaseError> {
    let err = |msg: String| CaseError::Substitution {
        text: text.to_string(),
        msg,
    };
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let body = &rest[start + 2..];
        let end = body
            .find('}')
            .ok_or_else(|| err("a `${` without its `}`".into()))?;
        let inner = &body[..end];
        let (kind, pod) = inner
            .split_once(':')
            .ok_or_else(|| err(format!("${{{inner}}} is not ${{KIND:ns/pod}}")))?;
        let kind = match kind {
            "POD_IP" => Placeholder::PodIp,
            "SLASH4_OF" => Placeholder::Slash4Of,
            other => {
                return Err(err(format!(
                    "unknown placeholder {other:?} (POD_IP or SLASH4_OF)"
                )))
            }
        };
        let pod: PodRef = pod.parse().map_err(err)?;
        out.push_str(&each(kind, pod).map_err(err)?);
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Applies `f` to every string of a JSON value (keys stay as they are).
fn map_strings(
    v: &Value,
    f: &mut impl FnMut(&str) -> Result<String, CaseError>,
) -> Result<Value, CaseError> {
    Ok(match v {
        Value::String(s) => Value::String(f(s)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| map_strings(i, f))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), map_strings(v, f)?)))
                .collect::<Result<_, CaseError>>()?,
        ),
        other => other.clone(),
    })
}

/// The pods a spec's placeholders name (checked for syntax).
fn placeholders(spec: &Value) -> Result<Vec<PodRef>, CaseError> {
    let mut pods = Vec::new();
    map_strings(spec, &mut |s| {
        expand(s, |_, pod| {
            pods.push(pod);
            Ok(String::new())
        })
    })?;
    Ok(pods)
}

/// The spec with `${POD_IP:ns/pod}` and `${SLASH4_OF:ns/pod}` replaced from `ips`.
pub fn substitute(spec: &Value, ips: &BTreeMap<PodRef, Ipv4Addr>) -> Result<Value, CaseError> {
    map_strings(spec, &mut |s| {
        expand(s, |kind, pod| {
            let ip = ips
                .get(&pod)
                .ok_or_else(|| format!("no address known for pod {pod}"))?;
            Ok(match kind {
                Placeholder::PodIp => ip.to_string(),
                Placeholder::Slash4Of => {
                    format!("{}/4", Ipv4Addr::from(u32::from(*ip) & 0xf000_0000))
                }
            })
        })
    })
}

/// The expected (or an observed) reachability of one probe over a case's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    pods: Vec<PodRef>,
    /// `allowed[from][to]`, indices into `pods`; the diagonal is meaningless.
    allowed: Vec<Vec<bool>>,
    /// `probed[from][to]`: the pair is in the probe's scope (all pairs unless
    /// `scope: listed`).
    probed: Vec<Vec<bool>>,
}

impl Matrix {
    /// Every pair allowed.
    pub fn all_allowed(pods: &[PodRef]) -> Matrix {
        Matrix {
            pods: pods.to_vec(),
            allowed: vec![vec![true; pods.len()]; pods.len()],
            probed: vec![vec![true; pods.len()]; pods.len()],
        }
    }

    /// The pairs `self` probes, every one allowed (an observation to fill in).
    pub fn blank_like(&self) -> Matrix {
        Matrix {
            pods: self.pods.clone(),
            allowed: vec![vec![true; self.pods.len()]; self.pods.len()],
            probed: self.probed.clone(),
        }
    }

    /// The probe's expectation: all allowed, then each `expect` entry in order overwrites;
    /// with `scope: listed`, only the pairs some entry matches are probed.
    pub fn expected(pods: &[PodRef], probe: &Probe) -> Matrix {
        let mut m = Matrix::all_allowed(pods);
        let listed = probe.scope == Scope::Listed;
        if listed {
            m.probed = vec![vec![false; pods.len()]; pods.len()];
        }
        for e in &probe.expect {
            for (f, from) in pods.iter().enumerate() {
                for (t, to) in pods.iter().enumerate() {
                    if e.from.matches(from) && e.to.matches(to) {
                        m.allowed[f][t] = e.allow;
                        m.probed[f][t] = true;
                    }
                }
            }
        }
        m
    }

    /// Adds `other`'s probed pairs (of the same pods) to this one's, allowed.
    pub fn merge_probed(&mut self, other: &Matrix) {
        for (from, to, _) in other.pairs() {
            let pos = |p: &PodRef| self.pods.iter().position(|q| q == p);
            if let (Some(f), Some(t)) = (pos(from), pos(to)) {
                self.probed[f][t] = true;
            }
        }
    }

    pub fn pods(&self) -> &[PodRef] {
        &self.pods
    }

    /// None for a pod to itself (ignored, as upstream does), a pod not in the matrix, or
    /// a pair the probe does not check.
    pub fn get(&self, from: &PodRef, to: &PodRef) -> Option<bool> {
        let f = self.pods.iter().position(|p| p == from)?;
        let t = self.pods.iter().position(|p| p == to)?;
        (f != t && self.probed[f][t]).then(|| self.allowed[f][t])
    }

    /// Records one observation; false when a pod is not in the matrix.
    pub fn set(&mut self, from: &PodRef, to: &PodRef, allowed: bool) -> bool {
        let pos = |p: &PodRef| self.pods.iter().position(|q| q == p);
        match (pos(from), pos(to)) {
            (Some(f), Some(t)) => {
                self.allowed[f][t] = allowed;
                true
            }
            _ => false,
        }
    }

    /// Every ordered pair of distinct pods the probe checks, with its value.
    pub fn pairs(&self) -> impl Iterator<Item = (&PodRef, &PodRef, bool)> + '_ {
        self.pods.iter().enumerate().flat_map(move |(f, from)| {
            self.pods
                .iter()
                .enumerate()
                .filter(move |(t, _)| *t != f && self.probed[f][*t])
                .map(move |(t, to)| (from, to, self.allowed[f][t]))
        })
    }

    /// The pairs where `observed` differs from `self`: (from, to, expected).
    pub fn mismatches<'a>(&'a self, observed: &'a Matrix) -> Vec<(&'a PodRef, &'a PodRef, bool)> {
        self.pairs()
            .filter(|(f, t, want)| observed.get(f, t) != Some(*want))
            .collect()
    }

    /// The width of a column: the longest pod name, at least 4.
    pub fn column_width(&self) -> usize {
        self.pods
            .iter()
            .map(|p| p.to_string().len())
            .max()
            .unwrap_or(0)
            .max(4)
    }
}

/// A table: rows are the clients, columns the servers; `.` allowed, `X` denied, `-` self,
/// blank a pair the probe does not check.
impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.column_width();
        let first = w.max(5);
        write!(f, "{:first$}", "")?;
        for p in &self.pods {
            write!(f, " {:>w$}", p.to_string())?;
        }
        writeln!(f)?;
        for (i, from) in self.pods.iter().enumerate() {
            write!(f, "{:first$}", from.to_string())?;
            for j in 0..self.pods.len() {
                let c = match (i == j, self.probed[i][j], self.allowed[i][j]) {
                    (true, _, _) => "-",
                    (false, false, _) => "",
                    (false, true, true) => ".",
                    (false, true, false) => "X",
                };
                write!(f, " {c:>w$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
