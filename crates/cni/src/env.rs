//! The `CNI_*` environment a runtime sets, validated per command as the spec requires.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Code, Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            other => {
                return Err(Error::new(
                    Code::InvalidEnv,
                    format!("unknown CNI_COMMAND: {other}"),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// Whether this command acts on one attachment (container ID + ifname).
    fn per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// A validated CNI environment.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    /// Empty for GC, STATUS and VERSION.
    pub container_id: String,
    /// `None` when unset or empty (allowed for DEL).
    pub netns: Option<PathBuf>,
    /// Empty for GC, STATUS and VERSION.
    pub ifname: String,
    pub args: String,
    /// The pod that `CNI_ARGS` names (Kubernetes runtimes set it), validated.
    pub k8s_pod: Option<K8sPod>,
    pub path: Vec<PathBuf>,
}

/// The Kubernetes pod a runtime names in `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
/// `K8S_POD_UID`), as containerd and CRI-O pass it. Recorded with the pod's address, so an
/// operator finds an address by the pod's name and policy can map addresses to pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct K8sPod {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

impl K8sPod {
    /// Reads the pod from `CNI_ARGS` (`K=V;K=V`, other keys ignored). Names that Kubernetes
    /// could not have made are refused: the identity is trusted later (policy), so a lie
    /// here must not be stored.
    pub fn from_cni_args(args: &str) -> Result<Option<K8sPod>, Error> {
        let get = |key: &str| {
            args.split(';')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim())
        };
        let (Some(namespace), Some(name)) = (get("K8S_POD_NAMESPACE"), get("K8S_POD_NAME")) else {
            return Ok(None);
        };
        let uid = get("K8S_POD_UID").unwrap_or_default();
        let bad = |key: &str, v: &str, rule: &str| {
            Err(Error::new(
                Code::InvalidEnv,
                format!("CNI_ARGS {key} is not a Kubernetes {rule}"),
            )
            .with_details(v.chars().take(300).collect::<String>()))
        };
        if !is_dns_name(namespace, 63, false) {
            return bad("K8S_POD_NAMESPACE", namespace, "namespace name");
        }
        if !is_dns_name(name, 253, true) {
            return bad("K8S_POD_NAME", name, "pod name");
        }
        if uid.len() > 64 || !uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return bad("K8S_POD_UID", uid, "UID");
        }
        Ok(Some(K8sPod {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }))
    }
}

/// A DNS label (RFC 1123: lower-case alphanumerics and `-`, alphanumeric at both ends), or
/// with `dots` a subdomain of such labels, at most `max` bytes.
fn is_dns_name(s: &str, max: usize, dots: bool) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !s.is_empty()
        && s.len() <= max
        && if dots {
            s.split('.').all(label)
        } else {
            label(s)
        }
}

impl Env {
    /// `CNI_NETNS`, for the verbs that work in the pod's namespace.
    pub fn require_netns(&self) -> Result<&std::path::Path, Error> {
        self.netns.as_deref().ok_or_else(|| {
            Error::new(
                Code::InvalidEnv,
                "required env variables [CNI_NETNS] missing",
            )
        })
    }

    /// Reads the process environment.
    pub fn from_process() -> Result<Self, Error> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Validates the variables `get` returns, naming every missing or bad one.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let var = |k: &str| get(k).unwrap_or_default();
        let command = match get("CNI_COMMAND") {
            Some(c) if !c.is_empty() => Command::parse(&c)?,
            _ => {
                return Err(Error::new(
                    Code::InvalidEnv,
                    "required env variables [CNI_COMMAND] missing",
                ))
            }
        };
        let container_id = var("CNI_CONTAINERID").trim().to_string();
        let ifname = var("CNI_IFNAME");
        let netns = Some(var("CNI_NETNS"))
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let path = var("CNI_PATH")
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();

        if command.per_attachment() {
            let mut missing = Vec::new();
            if container_id.is_empty() {
                missing.push("CNI_CONTAINERID");
            }
            if netns.is_none() && command != Command::Del {
                missing.push("CNI_NETNS");
            }
            if ifname.is_empty() {
                missing.push("CNI_IFNAME");
            }
            if !missing.is_empty() {
                return Err(Error::new(
                    Code::InvalidEnv,
                    format!("required env variables [{}] missing", missing.join(",")),
                ));
            }
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            k8s_pod: K8sPod::from_cni_args(&var("CNI_ARGS"))?,
            args: var("CNI_ARGS"),
            path,
        })
    }
}

/// The longest container ID ferry accepts. Runtimes use 64 hex digits; the spec sets no
/// bound, and the ID goes into the host veth's alias (see `conf::MAX_NETWORK_NAME`).
pub const MAX_CONTAINER_ID: usize = 128;

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the spec's rule for container IDs and network
/// names, at most `max` bytes; `what` names the input in the error.
pub fn validate_spec_name(what: &str, s: &str, max: usize, code: Code) -> Result<(), Error> {
    if s.len() > max {
        return Err(Error::new(
            code,
            format!(
                "{what} is {} bytes, longer than the {max} ferry accepts",
                s.len()
            ),
        ));
    }
    let mut chars = s.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(code, format!("invalid characters in {what}")).with_details(s))
    }
}

/// The spec's characters, at most `MAX_CONTAINER_ID` bytes.
pub fn validate_container_id(id: &str) -> Result<(), Error> {
    validate_spec_name("CNI_CONTAINERID", id, MAX_CONTAINER_ID, Code::InvalidEnv)
}

/// A Linux interface name: 1 to 15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 15 {
        return Err(Error::new(
            Code::InvalidEnv,
            format!(
                "invalid CNI_IFNAME ({} bytes): must be 1 to 15 bytes",
                name.len()
            ),
        ));
    }
    let bad = |why: &str| {
        Err(Error::new(
            Code::InvalidEnv,
            format!("invalid CNI_IFNAME {name:?}: {why}"),
        ))
    };
    if name == "." || name == ".." {
        return bad("must not be . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("must not contain '/', ':' or whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, Error> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn add_needs_netns_del_does_not() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS"), "{}", e.msg);
        let d = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert!(d.netns.is_none());
    }

    #[test]
    fn names_all_missing_variables() {
        let e = env(&[("CNI_COMMAND", "ADD")]).unwrap_err();
        assert_eq!(
            e.msg,
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(env(&[("CNI_COMMAND", "FOO")]).unwrap_err().code, 4);
        assert!(validate_container_id("-x").is_err());
        assert!(validate_container_id("abc_1.2-3").is_ok());
        assert!(validate_container_id(&"a".repeat(128)).is_ok());
        assert_eq!(validate_container_id(&"a".repeat(129)).unwrap_err().code, 4);
        assert_eq!(
            validate_container_id(&"a".repeat(70_000))
                .unwrap_err()
                .details,
            ""
        );
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a-name-too-long-").is_err());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("..").is_err());
    }

    #[test]
    fn reads_the_pod_from_cni_args() {
        let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0.a;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=1f-2a";
        assert_eq!(
            K8sPod::from_cni_args(args).unwrap(),
            Some(K8sPod {
                namespace: "shop".into(),
                name: "web-0.a".into(),
                uid: "1f-2a".into()
            })
        );
        assert_eq!(K8sPod::from_cni_args("").unwrap(), None);
        assert_eq!(K8sPod::from_cni_args("K8S_POD_NAME=x").unwrap(), None);
        for bad in [
            "K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=web",
            "K8S_POD_NAMESPACE=a.b;K8S_POD_NAME=web",
            "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=we/b",
            "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=-web",
            "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_UID=a b",
        ] {
            assert_eq!(K8sPod::from_cni_args(bad).unwrap_err().code, 4, "{bad}");
        }
        let long = format!("K8S_POD_NAMESPACE=shop;K8S_POD_NAME={}", "a".repeat(70_000));
        assert_eq!(K8sPod::from_cni_args(&long).unwrap_err().code, 4);
    }

    #[test]
    fn gc_needs_no_attachment() {
        let g = env(&[
            ("CNI_COMMAND", "GC"),
            ("CNI_CONTAINERID", ""),
            ("CNI_PATH", "/a:/b"),
        ])
        .unwrap();
        assert_eq!(g.path.len(), 2);
    }
}
