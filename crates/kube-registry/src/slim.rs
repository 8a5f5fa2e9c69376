//! A Node as the watch decodes it: only what [`NodeEntry`](crate::NodeEntry) keeps, every
//! other field skipped while parsing. A real Node's status (images, conditions, nodeInfo)
//! and metadata (managed fields, other software's annotations) are kilobytes each, and the
//! watch decodes its listing 500 Nodes a page: decoded in full, a page of a 5,000-Node
//! cluster costs the daemon megabytes it never reads.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer};

use crate::annotations::PREFIX;

#[derive(Clone, Debug, Deserialize)]
pub struct SlimNode {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<SlimSpec>,
    #[serde(default)]
    pub status: Option<SlimStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimSpec {
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimStatus {
    #[serde(default)]
    pub addresses: Option<Vec<SlimAddress>>,
    #[serde(default)]
    pub conditions: Option<Vec<SlimCondition>>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SlimAddress {
    pub address: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SlimCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

/// The metadata the watch needs (name, resourceVersion) and ferry reads (creation time,
/// its own annotations).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<Time>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        uid: m.uid,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        annotations: m.annotations.map(|a| {
            a.into_iter()
                .filter(|(k, _)| k.starts_with(PREFIX))
                .collect()
        }),
        ..ObjectMeta::default()
    })
}

impl kube::Resource for SlimNode {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl From<&k8s_openapi::api::core::v1::Node> for SlimNode {
    fn from(n: &k8s_openapi::api::core::v1::Node) -> SlimNode {
        SlimNode {
            metadata: n.metadata.clone(),
            spec: n.spec.as_ref().map(|s| SlimSpec {
                pod_cidr: s.pod_cidr.clone(),
                pod_cidrs: s.pod_cidrs.clone(),
            }),
            status: n.status.as_ref().map(|s| SlimStatus {
                addresses: s.addresses.as_ref().map(|a| {
                    a.iter()
                        .map(|a| SlimAddress {
                            address: a.address.clone(),
                        })
                        .collect()
                }),
                conditions: s.conditions.as_ref().map(|c| {
                    c.iter()
                        .map(|c| SlimCondition {
                            type_: c.type_.clone(),
                            status: c.status.clone(),
                        })
                        .collect()
                }),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_node_decodes_to_what_ferry_reads() {
        let v = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "a", "resourceVersion": "7", "uid": "u",
                "creationTimestamp": "2026-12-07T10:00:00Z",
                "labels": {"x": "y"},
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
                "annotations": {"ferry.dev/public-ip": "192.0.2.1", "other.io/k": "v"}},
            "spec": {"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24"], "taints": []},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "images": [{"names": ["x"], "sizeBytes": 1}], "nodeInfo": {"kernelVersion": "6"}}
        });
        let slim: SlimNode = serde_json::from_value(v.clone()).unwrap();
        let full: k8s_openapi::api::core::v1::Node = serde_json::from_value(v).unwrap();
        let e = crate::NodeEntry::of_slim(&slim).unwrap();
        assert_eq!(Some(e.clone()), crate::NodeEntry::of(&full));
        assert_eq!(e.public_ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(e.ready, Some(true));
        assert_eq!(slim.metadata.resource_version.as_deref(), Some("7"));
        let kept = slim.metadata.annotations.unwrap_or_default();
        assert_eq!(kept.len(), 1, "only ferry's annotations are kept: {kept:?}");
    }
}
