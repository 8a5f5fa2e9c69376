//! Flags; each can also come from the environment variable beside it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnetwork::Ipv4Network;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ferry-overlayd",
    version,
    about = "ferry's per-node daemon: leases the node's pod subnet in etcd, builds the VXLAN overlay to every other node and keeps it true, writes the node state the CNI plugin reads"
)]
pub struct Args {
    #[command(flatten)]
    pub etcd: registry::EtcdArgs,
    /// This node's name (default: the hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The underlay interface (default: the default route's).
    #[arg(long, env = "FERRY_IFACE")]
    pub iface: Option<String>,
    /// The address other nodes send VXLAN traffic to (default: the underlay's first).
    #[arg(long, env = "FERRY_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// Where node.json is written for the CNI plugin.
    #[arg(long, env = "FERRY_STATE_DIR", default_value = "/run/ferry")]
    pub state_dir: PathBuf,
    /// Serve /healthz, /readyz and /metrics here (HOST:PORT).
    #[arg(long, env = "FERRY_HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,
    /// The cluster's pod CIDR; creates the cluster config when etcd has none.
    #[arg(long, env = "FERRY_CLUSTER_CIDR")]
    pub cluster_cidr: Option<Ipv4Network>,
    /// Prefix length of node subnets (with --cluster-cidr; default 24).
    #[arg(long, env = "FERRY_SUBNET_LEN")]
    pub subnet_len: Option<u8>,
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
}
