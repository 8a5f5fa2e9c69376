//! NetworkPolicy conformance case files (format: `../shared/netpol/README.md`, copies of
//! the cases in `tests/netpol/`): parsing, validation, `${...}` substitution in policy specs,
//! and the expected reachability matrix of a probe.
//!
//! A file is read with yaml-rust2, turned into a `serde_json::Value` and typed with serde,
//! so a wrong type or an unknown key is reported with its path (`steps[0].actions[1]...`)
//! and the case it is in. Validation then checks what the types cannot: pods of the model,
//! pods the case has, policies that exist when updated, ports the pods serve.

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
    #[error("substitution in {text:?}: {msg}")]
    Substitution { text: String, msg: String },
}

/// A pod of the model, written `ns/name`.
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
        if !NAMESPACES.contains(&ns) {
            return Err(format!(
                "pod {s:?}: namespace {ns:?} is not one of {NAMESPACES:?}"
            ));
        }
        if !POD_NAMES.contains(&name) {
            return Err(format!(
                "pod {s:?}: pod {name:?} is not one of {POD_NAMES:?}"
            ));
        }
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
            if !NAMESPACES.contains(&ns) {
                return Err(format!(
                    "selector {s:?}: namespace {ns:?} is not one of {NAMESPACES:?}"
                ));
            }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    E2e,
    Cyclonus,
    Derived,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub source: Source,
    pub pods: Vec<PodRef>,
    #[serde(default = "default_ports")]
    pub server_ports: Vec<u16>,
    #[serde(default = "default_protocols")]
    pub server_protocols: Vec<Protocol>,
    #[serde(default)]
    pub note: Option<String>,
    pub steps: Vec<Step>,
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
    LabelPod(LabelPod),
    LabelNamespace(LabelNamespace),
    DeleteAllPolicies(Empty),
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
    pub expect: Vec<Expect>,
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
            "the file must be a mapping with one key, `cases`".into(),
        ));
    }
    let file: CaseFile =
        serde_path_to_error::deserialize(&value).map_err(|e| shape_error(&value, e))?;
    for (i, case) in file.cases.iter().enumerate() {
        case.validate().map_err(|(step, msg)| CaseError::Invalid {
            index: i + 1,
            name: case.name.clone(),
            step,
            msg,
        })?;
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
    /// Everything the types do not check. The error names the 1-based step, if any.
    fn validate(&self) -> Result<(), (Option<usize>, String)> {
        let whole = |msg: String| (None, msg);
        if self.name.trim().is_empty() {
            return Err(whole("the name is empty".into()));
        }
        if self.pods.is_empty() {
            return Err(whole("`pods` is empty".into()));
        }
        if let Some(dup) = first_duplicate(&self.pods) {
            return Err(whole(format!("pod {dup} is listed twice")));
        }
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
        if self.steps.is_empty() {
            return Err(whole("`steps` is empty".into()));
        }
        let pods: BTreeSet<&PodRef> = self.pods.iter().collect();
        // Policies that exist before each step: create needs a new name, update an old one.
        let mut policies: BTreeSet<(String, String)> = BTreeSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            let at = |msg: String| (Some(i + 1), msg);
            if step.actions.is_empty() && step.probes.is_empty() {
                return Err(at("the step has neither actions nor probes".into()));
            }
            for (j, action) in step.actions.iter().enumerate() {
                let at = |msg: String| (Some(i + 1), format!("action {}: {msg}", j + 1));
                match action {
                    Action::Create(p) | Action::Update(p) => {
                        check_namespace(&p.ns).map_err(at)?;
                        check_object_name(&p.name).map_err(at)?;
                        check_spec(&p.spec)
                            .map_err(|e| at(format!("policy {}/{}: {e}", p.ns, p.name)))?;
                        for pod in placeholders(&p.spec).map_err(|e| at(e.to_string()))? {
                            if !pods.contains(&pod) {
                                return Err(at(format!(
                                    "policy {}/{}: a placeholder names pod {pod}, which the case does not create",
                                    p.ns, p.name
                                )));
                            }
                        }
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
                    }
                    Action::LabelNamespace(l) => check_namespace(&l.ns).map_err(at)?,
                    Action::DeleteAllPolicies(_) => policies.clear(),
                }
            }
            for (j, probe) in step.probes.iter().enumerate() {
                let at = |msg: String| (Some(i + 1), format!("probe {}: {msg}", j + 1));
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
                for e in &probe.expect {
                    for sel in [&e.from, &e.to] {
                        if !self.pods.iter().any(|p| sel.matches(p)) {
                            return Err(at(format!(
                                "expect selector '{sel}' selects no pod of the case"
                            )));
                        }
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
            ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
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
    // Any address will do to check the shape.
    let ips = NAMESPACES
        .iter()
        .flat_map(|ns| {
            POD_NAMES.iter().map(move |p| PodRef {
                ns: ns.to_string(),
                name: p.to_string(),
            })
        })
        .map(|p| (p, Ipv4Addr::new(10, 0, 0, 1)))
        .collect();
    let spec = substitute(spec, &ips).map_err(|e| e.to_string())?;
    let typed: NetworkPolicySpec = serde_json::from_value(spec.clone())
        .map_err(|e| format!("spec is not a NetworkPolicySpec: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("spec: {e}"))?;
    match dropped_key(&spec, &back, "spec") {
        Some(path) => Err(format!("{path} is not a key of a NetworkPolicySpec")),
        None => Ok(()),
    }
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

fn check_namespace(ns: &str) -> Result<(), String> {
    if NAMESPACES.contains(&ns) {
        Ok(())
    } else {
        Err(format!("namespace {ns:?} is not one of {NAMESPACES:?}"))
    }
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
}

impl Matrix {
    /// Every pair allowed.
    pub fn all_allowed(pods: &[PodRef]) -> Matrix {
        Matrix {
            pods: pods.to_vec(),
            allowed: vec![vec![true; pods.len()]; pods.len()],
        }
    }

    /// The probe's expectation: all allowed, then each `expect` entry in order overwrites.
    pub fn expected(pods: &[PodRef], probe: &Probe) -> Matrix {
        let mut m = Matrix::all_allowed(pods);
        for e in &probe.expect {
            for (f, from) in pods.iter().enumerate() {
                for (t, to) in pods.iter().enumerate() {
                    if e.from.matches(from) && e.to.matches(to) {
                        m.allowed[f][t] = e.allow;
                    }
                }
            }
        }
        m
    }

    pub fn pods(&self) -> &[PodRef] {
        &self.pods
    }

    /// None for a pod to itself (ignored, as upstream does) or a pod not in the matrix.
    pub fn get(&self, from: &PodRef, to: &PodRef) -> Option<bool> {
        let f = self.pods.iter().position(|p| p == from)?;
        let t = self.pods.iter().position(|p| p == to)?;
        (f != t).then(|| self.allowed[f][t])
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

    /// Every ordered pair of distinct pods with its value.
    pub fn pairs(&self) -> impl Iterator<Item = (&PodRef, &PodRef, bool)> + '_ {
        self.pods.iter().enumerate().flat_map(move |(f, from)| {
            self.pods
                .iter()
                .enumerate()
                .filter(move |(t, _)| *t != f)
                .map(move |(t, to)| (from, to, self.allowed[f][t]))
        })
    }

    /// The pairs where `observed` differs from `self`: (from, to, expected).
    pub fn mismatches<'a>(&'a self, observed: &'a Matrix) -> Vec<(&'a PodRef, &'a PodRef, bool)> {
        self.pairs()
            .filter(|(f, t, want)| observed.get(f, t) != Some(*want))
            .collect()
    }
}

/// A table: rows are the clients, columns the servers; `.` allowed, `X` denied, `-` self.
impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:5}", "")?;
        for p in &self.pods {
            write!(f, " {:>4}", p.to_string())?;
        }
        writeln!(f)?;
        for (i, from) in self.pods.iter().enumerate() {
            write!(f, "{:5}", from.to_string())?;
            for j in 0..self.pods.len() {
                let c = match (i == j, self.allowed[i][j]) {
                    (true, _) => "-",
                    (false, true) => ".",
                    (false, false) => "X",
                };
                write!(f, " {c:>4}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
