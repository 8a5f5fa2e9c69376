//! Flags; each can also come from the environment variable beside it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use clap::Parser;
use ipnetwork::{Ipv4Network, Ipv6Network};

/// Bounds of the durations: a resync in a tight loop would starve the daemon (and 0
/// panics a timer); a grace period shorter than the liveness TTL would end leases of
/// nodes that are merely restarting; an etcd request needs some time.
pub const MIN_RESYNC: Duration = Duration::from_secs(1);
pub const MIN_GRACE: Duration = Duration::from_secs(10);
pub const MIN_ETCD_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ferry-overlayd",
    version,
    about = "ferry's per-node daemon: leases the node's pod subnet in etcd, builds the VXLAN overlay to every other node and keeps it true, writes the node state the CNI plugin reads"
)]
pub struct Args {
    /// Without a command: run the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Where the cluster's node state lives: `etcd` (ferry's own etcd: subnets leased by
    /// ferry) or `kubernetes` (the API: subnets from each Node's spec.podCIDRs, the rest in
    /// `ferry.dev/` annotations on the Nodes; docs/config.md).
    #[arg(long, env = "FERRY_DATASTORE", value_enum, default_value = "etcd")]
    pub datastore: Datastore,
    #[command(flatten)]
    pub etcd: ferry_registry::EtcdArgs,
    /// This node's name (default: the hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The underlay interface (default: the default route's).
    #[arg(long, env = "FERRY_IFACE")]
    pub iface: Option<String>,
    /// The address other nodes send VXLAN traffic to, IPv4 or IPv6 (default: the
    /// underlay's first IPv4 address, else its first global IPv6 address).
    #[arg(long, env = "FERRY_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,
    /// Where node.json is written for the CNI plugin.
    #[arg(long, env = "FERRY_STATE_DIR", default_value = ferry_node_ipam::node_state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// This machine's secret (32 random bytes, mode 0600, made on first start): a
    /// restarted daemon knows its killed predecessor's liveness key by it and takes it
    /// over at once.
    #[arg(
        long,
        env = "FERRY_NODE_SECRET",
        value_name = "FILE",
        default_value = "/var/lib/ferry/node-secret"
    )]
    pub node_secret: PathBuf,
    /// The runtime's CNI config directory (e.g. /etc/cni/net.d): once ready, the daemon
    /// installs --cni-conflist there as 00-ferry.conflist and keeps it so.
    #[arg(
        long,
        env = "FERRY_CNI_CONF_DIR",
        value_name = "DIR",
        requires = "cni_conflist"
    )]
    pub cni_conf_dir: Option<PathBuf>,
    /// The network config to install in --cni-conf-dir (read again on every resync, so
    /// that a ConfigMap update reaches the node).
    #[arg(
        long,
        env = "FERRY_CNI_CONFLIST",
        value_name = "FILE",
        requires = "cni_conf_dir"
    )]
    pub cni_conflist: Option<PathBuf>,
    /// Serve /healthz, /readyz and /metrics here (HOST:PORT).
    #[arg(long, env = "FERRY_HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,
    /// The cluster's IPv4 pod CIDR; creates the cluster config when etcd has none (this,
    /// --cluster-cidr-v6, or both: IPv4-only, IPv6-only or dual-stack).
    #[arg(long, env = "FERRY_CLUSTER_CIDR")]
    pub cluster_cidr: Option<Ipv4Network>,
    /// Prefix length of node subnets (with --cluster-cidr; default 24).
    #[arg(long, env = "FERRY_SUBNET_LEN")]
    pub subnet_len: Option<u8>,
    /// The cluster's IPv6 pod CIDR: alone for an IPv6-only cluster, with --cluster-cidr
    /// for a dual-stack one.
    #[arg(long, env = "FERRY_CLUSTER_CIDR_V6", global = true)]
    pub cluster_cidr_v6: Option<Ipv6Network>,
    /// Prefix length of IPv6 node subnets (with --cluster-cidr-v6; default 64).
    #[arg(long, env = "FERRY_SUBNET_LEN_V6")]
    pub subnet_len_v6: Option<u8>,
    /// VXLAN network identifier (with --cluster-cidr; default 1).
    #[arg(long, env = "FERRY_VNI")]
    pub vni: Option<u32>,
    /// VXLAN UDP port (with --cluster-cidr; default 4789).
    #[arg(long, env = "FERRY_PORT")]
    pub port: Option<u16>,
    /// The CNI config's IPAM `dataDir`: how many addresses are used is published to etcd.
    #[arg(
        long,
        env = "FERRY_IPAM_DATA_DIR",
        default_value = "/var/lib/ferry/ipam"
    )]
    pub ipam_data_dir: PathBuf,
    /// The node bridge; the CNI config's `bridge` must name the same.
    #[arg(long, env = "FERRY_BRIDGE", default_value = "ferry0")]
    pub bridge: String,
    /// How long a silent node keeps its subnet (and its routes on other nodes).
    #[arg(long, env = "FERRY_LEASE_GRACE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub lease_grace: Duration,
    /// How often the whole data path is checked against the leases and mended.
    #[arg(long, env = "FERRY_RESYNC_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// Probe every peer's gateway over the pods' path (ICMP echo and a pod-MTU probe,
    /// needs CAP_NET_RAW) and report the health in peers.json and the metrics.
    /// `--peer-health=false`: no probes.
    #[arg(
        long,
        env = "FERRY_PEER_HEALTH",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub peer_health: bool,
    /// The peer health prober's echo period per healthy peer (docs/config.md, "Peer
    /// health"). Hidden: the default is what the cost figures there are for; tests
    /// shorten it.
    #[arg(long, env = "FERRY_HEALTH_PROBE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, hide = true)]
    pub health_probe_interval: Duration,
    /// The period of the probe at the pod MTU with DF set. Hidden, as above.
    #[arg(long, env = "FERRY_HEALTH_MTU_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration, hide = true)]
    pub health_mtu_interval: Duration,
    /// DirectRouting: a node whose underlay address this node reaches on-link (no
    /// gateway, on the underlay device) gets its pods' packets routed to that address
    /// unencapsulated; VXLAN for the rest. `--direct-routing=false`: VXLAN for all.
    #[arg(
        long,
        env = "FERRY_DIRECT_ROUTING",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub direct_routing: bool,
    /// Transmit checksum offload on the VXLAN device. `false` turns it off (kept off on
    /// every resync) where offloading the inner checksum corrupts packets; `true` leaves
    /// the kernel's default.
    #[arg(
        long,
        env = "FERRY_VXLAN_CHECKSUM_OFFLOAD",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub vxlan_checksum_offload: bool,

    /// BIG TCP for pods: their links (and the node bridge) take the underlay interface's
    /// GSO and GRO sizes when it has them above 64 KiB. For clusters whose nodes all
    /// route directly (one L2 segment): a pod's packets to a node reached over VXLAN are
    /// cut to wire size in software on the way, which is slower than without.
    #[arg(
        long,
        env = "FERRY_BIG_TCP",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub big_tcp: bool,
    /// Enforce Kubernetes NetworkPolicy on this node (watches the API; the CNI config
    /// must say `"networkPolicy": true` so that ADD waits for the pod to be covered).
    #[arg(long, env = "FERRY_NETWORK_POLICY")]
    pub network_policy: bool,
    /// The kubeconfig for the API (with --network-policy or --datastore kubernetes;
    /// default: in-cluster).
    #[arg(long, env = "FERRY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Where ferry's iptables chains go: the backend kubelet and kube-proxy use on this
    /// node. `auto` looks for kubelet's hint chains, then counts each backend's rules.
    #[arg(
        long,
        env = "FERRY_IPTABLES_BACKEND",
        value_enum,
        default_value = "auto"
    )]
    pub iptables_backend: crate::iptables::Choice,
}

/// Where the cluster's node state lives.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datastore {
    Etcd,
    Kubernetes,
}

/// One-shot jobs of the image, run by the DaemonSet's init container and the uninstall.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Turns on what the node's kernel must do for ferry (forwarding, bridge netfilter),
    /// loading br_netfilter where it is a module, then exits: the DaemonSet's privileged
    /// init container, since ferry-overlayd itself cannot write /proc/sys.
    PrepareNode,
    /// Removes everything ferry made on this node (links, routes, rules, tables, state,
    /// CNI files) and exits 0 only when nothing of it is left.
    Uninstall(crate::uninstall::UninstallArgs),
}

impl Args {
    /// What the flags say of the cluster config.
    pub fn config_flags(&self) -> ferry_registry::ConfigFlags {
        ferry_registry::ConfigFlags {
            cluster_cidr: self.cluster_cidr,
            subnet_len: self.subnet_len,
            cluster_cidr_v6: self.cluster_cidr_v6,
            subnet_len_v6: self.subnet_len_v6,
            vni: self.vni,
            port: self.port,
        }
    }

    /// Every check a flag needs on its own, before anything is read from or written to
    /// etcd or the kernel.
    pub fn validate(&self) -> Result<()> {
        let kube = self.datastore == Datastore::Kubernetes;
        if self.kubeconfig.is_some() && !self.network_policy && !kube {
            bail!("--kubeconfig is for --network-policy or --datastore kubernetes, neither of which is given");
        }
        if kube {
            ensure!(
                self.cluster_cidr.is_some() || self.cluster_cidr_v6.is_some(),
                "--datastore kubernetes needs the cluster's pod CIDR: --cluster-cidr, --cluster-cidr-v6 or both (the controller-manager's --cluster-cidr)"
            );
        }
        let show = |d: Duration| humantime::format_duration(d).to_string();
        ensure!(
            self.resync_interval >= MIN_RESYNC,
            "--resync-interval {} is too short: at least {}",
            show(self.resync_interval),
            show(MIN_RESYNC)
        );
        // A period under a second would keep a probe outstanding past the next one's
        // time (each waits up to a second for its answer).
        for (flag, d) in [
            ("--health-probe-interval", self.health_probe_interval),
            ("--health-mtu-interval", self.health_mtu_interval),
        ] {
            ensure!(
                d >= Duration::from_secs(1),
                "{flag} {} is too short: at least 1s",
                show(d)
            );
        }
        ensure!(
            self.lease_grace >= MIN_GRACE,
            "--lease-grace {} is too short: at least {}",
            show(self.lease_grace),
            show(MIN_GRACE)
        );
        ensure!(
            self.etcd.etcd_timeout >= MIN_ETCD_TIMEOUT,
            "--etcd-timeout {} is too short: at least {}",
            show(self.etcd.etcd_timeout),
            show(MIN_ETCD_TIMEOUT)
        );
        if let Some(name) = &self.node_name {
            ensure!(
                !name.is_empty() && !name.contains('/') && name.len() <= 253,
                "--node-name {name:?} is not a node name (non-empty, no '/', at most 253 bytes)"
            );
        }
        ensure!(
            !self.bridge.is_empty() && self.bridge.len() <= 15 && !self.bridge.contains('/'),
            "--bridge {:?} is not an interface name (1 to 15 bytes, no '/')",
            self.bridge
        );
        if let Some(c) = self.cluster_cidr {
            let cfg = ferry_registry::ClusterV4 {
                cluster_cidr: c,
                subnet_len: self
                    .subnet_len
                    .unwrap_or(ferry_registry::model::DEFAULT_SUBNET_LEN),
            };
            cfg.validate()
                .map_err(|e| anyhow::anyhow!("--cluster-cidr and its flags: {e}"))?;
        }
        if self.cluster_cidr.is_some() || self.cluster_cidr_v6.is_some() {
            ferry_registry::model::check_vxlan(
                self.vni.unwrap_or(ferry_registry::model::DEFAULT_VNI),
                self.port.unwrap_or(ferry_registry::model::DEFAULT_PORT),
            )
            .map_err(|e| anyhow::anyhow!("--vni and --port: {e}"))?;
        }
        if let Some(c) = self.cluster_cidr_v6 {
            let v6 = ferry_registry::ClusterV6 {
                cluster_cidr: c,
                subnet_len: self
                    .subnet_len_v6
                    .unwrap_or(ferry_registry::model::DEFAULT_SUBNET_LEN_V6),
            };
            v6.validate()
                .map_err(|e| anyhow::anyhow!("--cluster-cidr-v6 and its flags: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Args {
        let mut argv = vec!["ferry-overlayd", "--etcd-endpoints", "http://e:2379"];
        argv.extend(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn direct_routing_is_on_unless_turned_off() {
        assert!(parse(&[]).direct_routing);
        assert!(parse(&["--direct-routing"]).direct_routing);
        assert!(parse(&["--direct-routing=true"]).direct_routing);
        assert!(!parse(&["--direct-routing=false"]).direct_routing);
        assert!(parse(&[]).vxlan_checksum_offload);
        assert!(!parse(&["--vxlan-checksum-offload=false"]).vxlan_checksum_offload);
        assert!(!parse(&[]).big_tcp);
        assert!(parse(&["--big-tcp"]).big_tcp);
        assert!(!parse(&["--big-tcp=false"]).big_tcp);
        let argv = [
            "ferry-overlayd",
            "--etcd-endpoints",
            "e",
            "--direct-routing=maybe",
        ];
        let e = Args::try_parse_from(argv).unwrap_err().to_string();
        assert!(e.contains("--direct-routing"), "{e}");
    }

    #[test]
    fn the_iptables_backend_is_auto_unless_named() {
        use crate::iptables::Choice;
        assert_eq!(parse(&[]).iptables_backend, Choice::Auto);
        assert_eq!(
            parse(&["--iptables-backend", "legacy"]).iptables_backend,
            Choice::Legacy
        );
        assert_eq!(
            parse(&["--iptables-backend", "nft"]).iptables_backend,
            Choice::Nft
        );
        let argv = [
            "ferry-overlayd",
            "--etcd-endpoints",
            "e",
            "--iptables-backend",
            "iptables",
        ];
        let e = Args::try_parse_from(argv).unwrap_err().to_string();
        assert!(e.contains("--iptables-backend"), "{e}");
    }

    #[test]
    fn the_datastore_is_etcd_unless_named_and_kubernetes_needs_the_cluster_cidr() {
        assert_eq!(parse(&[]).datastore, Datastore::Etcd);
        let kube = Args::try_parse_from([
            "ferry-overlayd",
            "--datastore",
            "kubernetes",
            "--kubeconfig",
            "/k",
        ])
        .unwrap();
        assert_eq!(kube.datastore, Datastore::Kubernetes);
        let e = kube.validate().unwrap_err().to_string();
        assert!(e.contains("--cluster-cidr"), "{e}");
        let ok = Args::try_parse_from([
            "ferry-overlayd",
            "--datastore",
            "kubernetes",
            "--kubeconfig",
            "/k",
            "--cluster-cidr",
            "10.244.0.0/16",
        ])
        .unwrap();
        assert!(ok.validate().is_ok());
        let e = Args::try_parse_from(["ferry-overlayd", "--datastore", "consul"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--datastore"), "{e}");
        // A kubeconfig with neither use is a mistake worth naming.
        let e = parse(&["--kubeconfig", "/k"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kubeconfig"), "{e}");
    }

    #[test]
    fn flags_are_checked_before_anything_runs() {
        assert!(parse(&[]).validate().is_ok());
        // An IPv6-only cluster: no IPv4 cluster CIDR at all.
        assert!(parse(&[
            "--cluster-cidr-v6",
            "fd00:1::/56",
            "--public-ip",
            "2001:db8::1"
        ])
        .validate()
        .is_ok());
        for (flags, named) in [
            (&["--resync-interval", "0s"][..], "--resync-interval"),
            (&["--resync-interval", "10ms"], "--resync-interval"),
            (&["--lease-grace", "1s"], "--lease-grace"),
            (&["--etcd-timeout", "0s"], "--etcd-timeout"),
            (&["--node-name", "a/b"], "--node-name"),
            (&["--bridge", "a-very-long-bridge-name"], "--bridge"),
            (&["--cluster-cidr", "0.0.0.0/0"], "too short"),
            (&["--cluster-cidr", "127.0.0.0/16"], "loopback"),
            (&["--cluster-cidr", "10.0.0.0/16", "--vni", "0"], "VNI"),
            (&["--cluster-cidr-v6", "fe80::/16"], "link-local"),
            (&["--cluster-cidr-v6", "::/0"], "too short"),
            (&["--cluster-cidr-v6", "fd00::/56", "--vni", "0"], "VNI"),
            (
                &["--cluster-cidr-v6", "fd00::/56", "--subnet-len-v6", "48"],
                "longer",
            ),
        ] {
            let e = parse(flags).validate().unwrap_err().to_string();
            assert!(e.contains(named), "{flags:?}: {e}");
        }
    }
}
