//! The shipped Kubernetes manifests, read as the cluster would read them: the DaemonSet's
//! `ferry-overlayd` container (its args, and its env resolved against the ConfigMap and the
//! node's name), the ConfigMap's conflist, and the RBAC the daemon is granted. Tests start
//! ferry from these, so a drift between manifest and binary fails a test.
//!
//! Every document is read as JSON ([`documents`]), the form the API server stores, so an
//! object can be typed through serde into k8s-openapi ([`objects`]) as the server would
//! decode it.

use std::path::PathBuf;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{rel} is not YAML: {source}")]
    Yaml {
        rel: String,
        source: yaml_rust2::ScanError,
    },
    #[error("{rel}, document {doc}: {msg}")]
    NotJson {
        rel: String,
        doc: usize,
        msg: String,
    },
    #[error("{rel}, {kind} {name:?}: {source}")]
    Decode {
        rel: String,
        kind: String,
        name: String,
        source: serde_path_to_error::Error<serde_json::Error>,
    },
}

/// Every YAML document of the repository file `rel` (e.g. `deploy/kubernetes/config.yaml`),
/// as JSON; an empty document is `null`.
pub fn documents(rel: &str) -> Result<Vec<Value>, ManifestError> {
    let path = repo().join(rel);
    let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
        path: path.clone(),
        source,
    })?;
    let docs = YamlLoader::load_from_str(&text).map_err(|source| ManifestError::Yaml {
        rel: rel.to_string(),
        source,
    })?;
    docs.iter()
        .enumerate()
        .map(|(i, d)| {
            yaml_to_json(d).map_err(|msg| ManifestError::NotJson {
                rel: rel.to_string(),
                doc: i + 1,
                msg,
            })
        })
        .collect()
}

/// A YAML node as JSON: strings, integers, floats, booleans, null, sequences and mappings
/// with string keys. Anything JSON cannot hold (a non-string key, `.inf`, an unresolved
/// alias) is an error naming where it is (`spec.rules[2]`).
pub fn yaml_to_json(y: &Yaml) -> Result<Value, String> {
    fn convert(y: &Yaml, at: &str) -> Result<Value, String> {
        let here = || if at.is_empty() { "the top" } else { at };
        Ok(match y {
            Yaml::Null => Value::Null,
            Yaml::Boolean(b) => Value::Bool(*b),
            Yaml::Integer(i) => Value::from(*i),
            Yaml::String(s) => Value::String(s.clone()),
            Yaml::Real(text) => y
                .as_f64()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("{}: {text} is no JSON number", here()))?,
            Yaml::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| convert(v, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Yaml::Hash(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    let Yaml::String(key) = k else {
                        return Err(format!("{}: key {k:?} is not a string", here()));
                    };
                    let path = if at.is_empty() {
                        key.clone()
                    } else {
                        format!("{at}.{key}")
                    };
                    out.insert(key.clone(), convert(v, &path)?);
                }
                Value::Object(out)
            }
            Yaml::Alias(_) | Yaml::BadValue => {
                return Err(format!("{}: {y:?} has no JSON form", here()))
            }
        })
    }
    convert(y, "")
}

/// Every object of `kind` in the repository file `rel`, typed. A field of the wrong shape is
/// an error naming the object and the field's path.
pub fn objects<T: DeserializeOwned>(rel: &str, kind: &str) -> Result<Vec<T>, ManifestError> {
    documents(rel)?
        .into_iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .map(|d| {
            let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
            serde_path_to_error::deserialize(d).map_err(|source| ManifestError::Decode {
                rel: rel.to_string(),
                kind: kind.to_string(),
                name,
                source,
            })
        })
        .collect()
}

/// The RBAC the DaemonSet's service account is granted: daemonset.yaml's ClusterRoles and
/// ClusterRoleBindings, for [`crate::kapi::KubeApi::set_rbac`].
pub fn rbac() -> (Vec<ClusterRole>, Vec<ClusterRoleBinding>) {
    const DAEMONSET: &str = "deploy/kubernetes/daemonset.yaml";
    let typed = objects(DAEMONSET, "ClusterRole")
        .and_then(|roles| Ok((roles, objects(DAEMONSET, "ClusterRoleBinding")?)));
    typed.unwrap_or_else(|e| panic!("the shipped RBAC: {e}"))
}

/// The documents of a shipped file; the file is part of the repository, so a failure to
/// read it is a broken checkout or manifest, and fails the test.
fn load(rel: &str) -> Vec<Value> {
    documents(rel).unwrap_or_else(|e| panic!("{e}"))
}

/// The ConfigMap `ferry-config`'s data.
pub fn config_data(key: &str) -> Option<String> {
    load("deploy/kubernetes/config.yaml")
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .and_then(|d| d["data"][key].as_str().map(str::to_string))
}

/// The conflist the install container puts on every node.
pub fn shipped_conflist() -> Value {
    let text = config_data("cni-conflist").expect("cni-conflist in the ConfigMap");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("shipped conflist is not JSON ({e}):\n{text}"))
}

/// How the DaemonSet runs `ferry-overlayd` on a node.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub args: Vec<String>,
    /// Every variable, resolved: `fieldRef spec.nodeName` to the node's name,
    /// `configMapKeyRef` to the ConfigMap's value.
    pub env: Vec<(String, String)>,
    /// The variables as the manifest names them, resolved or not.
    pub env_names: Vec<String>,
}

pub fn overlayd(node_name: &str) -> Daemon {
    let docs = load("deploy/kubernetes/daemonset.yaml");
    let ds = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .expect("a DaemonSet in daemonset.yaml");
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let c = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("ferry-overlayd"))
        .expect("the ferry-overlayd container");
    let args = c["args"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut env = Vec::new();
    let mut env_names = Vec::new();
    for e in c["env"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(name) = e["name"].as_str() else {
            continue;
        };
        env_names.push(name.to_string());
        let from = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            Some(v.to_string())
        } else if from["fieldRef"]["fieldPath"].as_str() == Some("spec.nodeName") {
            Some(node_name.to_string())
        } else if let Some(key) = from["configMapKeyRef"]["key"].as_str() {
            assert_eq!(
                from["configMapKeyRef"]["name"].as_str(),
                Some("ferry-config"),
                "{name} reads another ConfigMap"
            );
            // As the kubelet does: an optional key that is absent leaves the variable unset.
            let optional = from["configMapKeyRef"]["optional"].as_bool() == Some(true);
            match config_data(key) {
                Some(v) => Some(v),
                None if optional => None,
                None => panic!("{name}: no key {key} in the ConfigMap"),
            }
        } else {
            None
        };
        if let Some(v) = value {
            env.push((name.to_string(), v));
        }
    }
    Daemon {
        args,
        env,
        env_names,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(yaml: &str) -> Result<Value, String> {
        let docs = YamlLoader::load_from_str(yaml).expect("YAML");
        yaml_to_json(&docs[0])
    }

    #[test]
    fn yaml_becomes_the_json_it_means() {
        let v = json_of(
            "s: text\nq: \"8472\"\ni: -3\nf: 1.5\nb: true\nn: null\nt: ~\n\
             list: [1, a, {k: v}]\nnested: {a: {b: []}}\n",
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "s": "text", "q": "8472", "i": -3, "f": 1.5, "b": true, "n": null, "t": null,
                "list": [1, "a", {"k": "v"}], "nested": {"a": {"b": []}},
            })
        );
        // Several documents, an empty one among them.
        let docs = YamlLoader::load_from_str("a: 1\n---\n---\n- x\n").unwrap();
        let all: Vec<Value> = docs.iter().map(|d| yaml_to_json(d).unwrap()).collect();
        assert_eq!(
            all,
            vec![
                serde_json::json!({"a": 1}),
                Value::Null,
                serde_json::json!(["x"])
            ]
        );
    }

    #[test]
    fn what_json_cannot_hold_is_an_error_saying_where() {
        let e = json_of("spec:\n  rules:\n    - {1: x}\n").unwrap_err();
        assert!(e.starts_with("spec.rules[0]: key Integer(1)"), "{e}");
        let e = json_of("a: {b: .inf}\n").unwrap_err();
        assert!(e.starts_with("a.b: .inf"), "{e}");
    }

    #[test]
    fn the_shipped_rbac_reads_as_typed_objects() {
        let (roles, bindings) = rbac();
        assert_eq!(roles.len(), 1);
        assert_eq!(bindings.len(), 1);
        assert_eq!(
            bindings[0].role_ref.name,
            roles[0].metadata.name.clone().unwrap()
        );
        // A kind typed as another is refused with the object's name.
        let e = objects::<ClusterRoleBinding>("deploy/kubernetes/daemonset.yaml", "ClusterRole")
            .unwrap_err();
        assert!(matches!(e, ManifestError::Decode { .. }), "{e}");
    }
}
