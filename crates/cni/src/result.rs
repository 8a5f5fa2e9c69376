//! ADD results, held version-free and rendered in the version the config asked for.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::version;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR form, e.g. `10.1.2.5/24`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// Reads a result of any version from 0.3.0 on (`ips[].version` is ignored).
    pub fn from_value(v: Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(v)
    }

    /// Renders the result as `cni_version` wants it.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut v {
            map.insert("cniVersion".into(), Value::String(cni_version.to_string()));
            if self.interfaces.is_empty() {
                map.remove("interfaces");
            }
            if self.dns.is_empty() {
                map.remove("dns");
            }
            if version::ips_carry_version(cni_version) {
                if let Some(Value::Array(ips)) = map.get_mut("ips") {
                    for ip in ips.iter_mut() {
                        let family = match ip.get("address").and_then(Value::as_str) {
                            Some(a) if a.contains(':') => "6",
                            _ => "4",
                        };
                        if let Value::Object(o) = ip {
                            o.insert("version".into(), Value::String(family.into()));
                        }
                    }
                }
            }
        }
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "0a:58:0a:01:02:05".into(),
                mtu: None,
                sandbox: "/run/netns/x".into(),
            }],
            ips: vec![IpConfig {
                address: "10.1.2.5/24".into(),
                gateway: Some("10.1.2.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_ip_version() {
        let v: Value = serde_json::from_str(&sample().to_json("0.4.0")).unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["cniVersion"], "0.4.0");
        let v: Value = serde_json::from_str(&sample().to_json("1.1.0")).unwrap();
        assert!(v["ips"][0].get("version").is_none());
        assert!(v.get("dns").is_none());
    }

    #[test]
    fn round_trips_any_version() {
        let r = sample();
        for ver in version::SUPPORTED {
            let v: Value = serde_json::from_str(&r.to_json(ver)).unwrap();
            assert_eq!(CniResult::from_value(v).unwrap(), r);
        }
    }
}
