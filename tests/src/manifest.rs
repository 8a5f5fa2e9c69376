//! The shipped Kubernetes manifests, read as the cluster would read them: the DaemonSet's
//! `ferry-overlayd` container (its args, and its env resolved against the ConfigMap and the
//! node's name) and the ConfigMap's conflist. Tests start ferry from these, so a drift
//! between manifest and binary fails a test.

use std::path::PathBuf;

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(rel: &str) -> Vec<Yaml> {
    let path = repo().join(rel);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
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
    let text = config_data("10-ferry.conflist").expect("10-ferry.conflist in the ConfigMap");
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
        .as_vec()
        .expect("containers");
    let c = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("ferry-overlayd"))
        .expect("the ferry-overlayd container");
    let args = c["args"]
        .as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut env = Vec::new();
    let mut env_names = Vec::new();
    for e in c["env"].as_vec().map(Vec::as_slice).unwrap_or_default() {
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
