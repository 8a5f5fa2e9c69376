//! The `ferry` plugin's keys, validated before anything on the node changes.

use std::path::PathBuf;

use ferry_cni::{Code, Dns, Error, NetConf};
use serde::Deserialize;
use serde_json::Value;

pub const DEFAULT_BRIDGE: &str = "ferry0";
pub const DEFAULT_MTU: u32 = 1500;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    bridge: Option<String>,
    mtu: Option<u32>,
    hairpin_mode: Option<bool>,
    state_dir: Option<PathBuf>,
    ipam: Option<Value>,
    dns: Option<Dns>,
    network_policy_wait_seconds: Option<u64>,
    rps_cpus: Option<String>,
}

/// Which CPUs may take over the host's work on what a pod sends: receive packet
/// steering on its host veth (`rpsCpus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steering {
    /// Unset: every online CPU, where the node lets ferry set it (a rootless node does
    /// not); a node where it cannot be set still runs pods, with a warning.
    Auto,
    /// `off`: the host veth is left as the kernel makes it (no steering).
    Off,
    /// `all`: every online CPU, or the ADD fails.
    All,
    /// A CPU list: those of them that are online, or the ADD fails.
    Cpus(std::collections::BTreeSet<u32>),
}

/// Where addresses come from.
#[derive(Debug, Clone)]
pub enum IpamKind {
    /// `ferry-ipam`, run in-process (the fast path).
    Ferry(ferry_node_ipam::ops::Config),
    /// Any other IPAM plugin, run by exec from `CNI_PATH`.
    Exec(String),
}

#[derive(Debug, Clone)]
pub struct PluginConf {
    pub bridge: String,
    /// `None`: the node state's MTU (or 1500 without a node state).
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub state_dir: PathBuf,
    pub ipam: IpamKind,
    pub dns: Option<Dns>,
    /// How long ADD waits for the daemon when the node enforces NetworkPolicy.
    pub policy_wait: std::time::Duration,
    pub steering: Steering,
    /// node.json, read at most once per call (the pools, the MTU and the policy switch
    /// all need it).
    node: std::cell::OnceCell<ferry_node_ipam::node_state::View>,
}

/// Where and how long ADD waits for `ferry-overlayd` to cover a new pod with the node's
/// NetworkPolicy rules.
#[derive(Debug, Clone)]
pub struct PolicyHook {
    pub socket: PathBuf,
    pub wait: std::time::Duration,
}

/// How long ADD waits for the daemon by default, and at most.
pub const DEFAULT_POLICY_WAIT_SECONDS: u64 = 5;
pub const MAX_POLICY_WAIT_SECONDS: u64 = 60;

impl PluginConf {
    pub fn parse(conf: &NetConf) -> Result<Self, Error> {
        let raw: Raw = conf.parse_as()?;
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        ferry_cni::env::validate_ifname(&bridge).map_err(|_| {
            Error::new(
                Code::InvalidConfig,
                format!("bridge {bridge:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)"),
            )
        })?;
        let mtu = match raw.mtu {
            None | Some(0) => None,
            Some(m) if (68..=65535).contains(&m) => Some(m),
            Some(m) => {
                return Err(Error::new(
                    Code::InvalidConfig,
                    format!("mtu {m} is out of range (68 to 65535, or 0 for the node's)"),
                ))
            }
        };
        let ipam_type = match &raw.ipam {
            None | Some(Value::Null) => "ferry-ipam".to_string(),
            Some(Value::Object(m)) => match m.get("type") {
                None => "ferry-ipam".to_string(),
                Some(Value::String(t)) if !t.is_empty() => t.clone(),
                Some(other) => {
                    return Err(
                        Error::new(Code::Decode, "ipam.type must be a non-empty string")
                            .with_details(other.to_string()),
                    )
                }
            },
            Some(other) => {
                return Err(Error::new(Code::Decode, "ipam must be an object")
                    .with_details(other.to_string()))
            }
        };
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from(ferry_node_ipam::node_state::DEFAULT_STATE_DIR));
        let ipam = if ipam_type == "ferry-ipam" {
            // stateDir is read once, above; the IPAM operations take it from here.
            let cfg = ferry_node_ipam::ops::Config::with_state_dir(conf, state_dir.clone())?;
            // Resolve a static pool now so that a bad CIDR is refused before any change.
            if cfg.ipam.is_static() {
                cfg.pools().map_err(Error::from)?;
            }
            IpamKind::Ferry(cfg)
        } else {
            IpamKind::Exec(ipam_type)
        };
        let wait = raw
            .network_policy_wait_seconds
            .unwrap_or(DEFAULT_POLICY_WAIT_SECONDS);
        if !(1..=MAX_POLICY_WAIT_SECONDS).contains(&wait) {
            return Err(Error::new(
                Code::InvalidConfig,
                format!("networkPolicyWaitSeconds {wait} is out of range (1 to {MAX_POLICY_WAIT_SECONDS})"),
            ));
        }
        let steering = match raw.rps_cpus.as_deref().map(str::trim) {
            None => Steering::Auto,
            Some("off") => Steering::Off,
            Some("all") => Steering::All,
            Some(list) => Steering::Cpus(ferry_netlink::rps::parse_cpu_list(list).map_err(|e| {
                Error::new(
                    Code::InvalidConfig,
                    format!("rpsCpus {list:?} is not \"all\", \"off\" or a CPU list like \"0-3,8\": {e}"),
                )
            })?),
        };
        Ok(PluginConf {
            bridge,
            mtu,
            hairpin: raw.hairpin_mode.unwrap_or(true),
            state_dir,
            ipam,
            dns: raw.dns,
            policy_wait: std::time::Duration::from_secs(wait),
            steering,
            node: std::cell::OnceCell::new(),
        })
    }

    /// Where ADD waits for NetworkPolicy to cover the pod, when the node's state says the
    /// node enforces it (`ferry-overlayd --network-policy`); None otherwise.
    pub fn policy_hook(&self) -> Option<PolicyHook> {
        let enforced = self.node_state().is_some_and(|s| s.network_policy);
        enforced.then(|| PolicyHook {
            socket: self.state_dir.join(ferry_policy_notice::SOCKET_NAME),
            wait: self.policy_wait,
        })
    }

    /// node.json as this call sees it (read once).
    pub fn node(&self) -> &ferry_node_ipam::node_state::View {
        self.node
            .get_or_init(|| ferry_node_ipam::node_state::View::read(&self.state_dir))
    }

    /// node.json, or None when it is absent or unreadable.
    fn node_state(&self) -> Option<&ferry_node_ipam::node_state::NodeState> {
        self.node().state()
    }

    /// The GSO and GRO sizes of the pod's veth pair (BIG TCP): the node state's, which
    /// `ferry-overlayd` copies from the underlay. Sizes the kernel would refuse are
    /// ignored, with a warning: the pod starts with the kernel's 64 KiB, which every
    /// underlay takes.
    pub fn big_tcp(&self) -> Option<ferry_netlink::BigTcp> {
        let b = self.node_state()?.big_tcp?;
        let big = ferry_netlink::BigTcp {
            ipv4: b.ipv4,
            ipv6: b.ipv6,
        };
        if big.valid() {
            return Some(big);
        }
        eprintln!(
            "ferry: node state's bigTcp ({big}) is outside {}..={} bytes; the pod keeps the kernel's sizes",
            ferry_netlink::big_tcp::LEGACY,
            ferry_netlink::big_tcp::MAX
        );
        None
    }

    /// The pod MTU: the config's, else the node state's, else 1500.
    pub fn effective_mtu(&self) -> u32 {
        self.mtu.unwrap_or_else(|| {
            self.node_state()
                .map(|s| s.mtu)
                .filter(|m| *m >= 68)
                .unwrap_or(DEFAULT_MTU)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<PluginConf, Error> {
        PluginConf::parse(&NetConf::parse(json.as_bytes()).unwrap())
    }

    #[test]
    fn defaults() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"n","type":"ferry","ipam":{"subnet":"10.1.0.0/24"}}"#,
        )
        .unwrap();
        assert_eq!(c.bridge, "ferry0");
        assert!(c.hairpin);
        assert!(matches!(c.ipam, IpamKind::Ferry(_)));
        assert_eq!(c.mtu, None);
    }

    #[test]
    fn errors() {
        let bad = |j: &str| parse(j).unwrap_err().code;
        assert_eq!(
            bad(r#"{"cniVersion":"1.0.0","name":"n","bridge":"a-very-long-bridge"}"#),
            7
        );
        assert_eq!(bad(r#"{"cniVersion":"1.0.0","name":"n","mtu":"x"}"#), 6);
        assert_eq!(bad(r#"{"cniVersion":"1.0.0","name":"n","mtu":10}"#), 7);
        assert_eq!(
            bad(r#"{"cniVersion":"1.0.0","name":"n","hairpinMode":"yes"}"#),
            6
        );
        assert_eq!(
            bad(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.1.0.0/33"}}"#),
            7
        );
        assert_eq!(
            bad(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":5}}"#),
            6
        );
        assert_eq!(bad(r#"{"cniVersion":"1.0.0","name":"n","ipam":[]}"#), 6);
        assert_eq!(bad(r#"{"cniVersion":"1.0.0","name":"n","rpsCpus":3}"#), 6);
        assert_eq!(
            bad(r#"{"cniVersion":"1.0.0","name":"n","rpsCpus":["0"]}"#),
            6
        );
        for list in ["", "none", "0-", "3-1", "99999", "0,,1", "ff"] {
            let conf = format!(r#"{{"cniVersion":"1.0.0","name":"n","rpsCpus":"{list}"}}"#);
            assert_eq!(bad(&conf), 7, "{list:?}");
        }
    }

    #[test]
    fn steering() {
        let with = |v: &str| {
            parse(&format!(
                r#"{{"cniVersion":"1.0.0","name":"n","ipam":{{"subnet":"10.1.0.0/24"}}{v}}}"#
            ))
            .unwrap()
            .steering
        };
        assert_eq!(with(""), Steering::Auto);
        assert_eq!(with(r#","rpsCpus":"off""#), Steering::Off);
        assert_eq!(with(r#","rpsCpus":"all""#), Steering::All);
        assert_eq!(
            with(r#","rpsCpus":"0-1,4""#),
            Steering::Cpus([0, 1, 4].into_iter().collect())
        );
    }

    #[test]
    fn other_ipam_is_exec() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"}}"#).unwrap();
        assert!(matches!(c.ipam, IpamKind::Exec(ref t) if t == "host-local"));
    }
}
