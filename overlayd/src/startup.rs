//! The start-up steps before the node's name is claimed. Nothing of this node is written
//! to etcd here: a node that cannot run pods (its sysctls off) or that is not sure to be
//! the only daemon on the machine (its lock held) publishes nothing that other nodes
//! would route to. Each step says in `/readyz` what it waits for.

use std::sync::{Arc, OnceLock};

use anyhow::{ensure, Context, Result};
use netlink::Netlink;
use registry::{ClusterConfig, ConfigFlags, Liveness, Registry};

use crate::args::Args;
use crate::etcd_retry::{etcd, EtcdRetry};
use crate::identity::{self, NodeLock};
use crate::metrics::Metrics;
use crate::node_check::NodeCheck;
use crate::underlay::{self, Underlay};

pub struct Prepared {
    pub nl: Netlink,
    pub underlay: Underlay,
    pub reg: Registry,
    pub cfg: ClusterConfig,
    pub liveness: Liveness,
    /// Held for the life of the process.
    pub lock: NodeLock,
    pub retry: EtcdRetry,
    pub node_check: NodeCheck,
}

/// Identity, lock, underlay, etcd, cluster config and the node's sysctls, in this order;
/// `reg_slot` gets the etcd client as soon as there is one (to give the liveness key up
/// on the way out).
pub async fn prepare(
    args: &Args,
    metrics: &Arc<Metrics>,
    reg_slot: &OnceLock<Registry>,
) -> Result<Prepared> {
    let status = &metrics.status;
    status.step("starting: reading the node secret");
    let secret = identity::node_secret(&args.node_secret)?;
    let liveness = Liveness {
        instance: instance_id()?,
        machine: identity::machine_id(&secret),
    };
    status.step("starting: taking the node's lock");
    let lock = identity::lock(&args.state_dir, status).await?;

    status.step("starting: finding the underlay");
    let nl = Netlink::open().context("netlink")?;
    let underlay = underlay::find(&nl, args.iface.as_deref(), args.public_ip, &args.bridge).await?;
    ensure!(
        args.etcd.given(),
        "--etcd-endpoints (or FERRY_ETCD_ENDPOINTS) is required"
    );
    status.step(format!(
        "starting: connecting to etcd at {}",
        args.etcd.etcd_endpoints.join(",")
    ));
    let mut retry = EtcdRetry::new(&args.etcd.etcd_endpoints, metrics.clone());
    let mut reg = etcd!(retry, args.etcd.connect());
    let _ = reg_slot.set(reg.clone());

    let flags = ConfigFlags {
        cluster_cidr: args.cluster_cidr,
        subnet_len: args.subnet_len,
        cluster_cidr_v6: args.cluster_cidr_v6,
        subnet_len_v6: args.subnet_len_v6,
        vni: args.vni,
        port: args.port,
    };
    let mut node_check = NodeCheck::new();
    let cfg = loop {
        status.step("starting: reading the cluster config");
        // Read, not written: whether the cluster has IPv6 decides which sysctls it needs.
        let (planned, _) = etcd!(retry, reg.planned_config(&flags, &underlay.networks));
        let ipv6 = planned.ipv6.is_some();
        status.step("starting: checking the node's sysctls");
        node_check.wait(ipv6, status).await;
        status.step("starting: reading the cluster config");
        let cfg = etcd!(retry, reg.cluster_config(&flags, &underlay.networks));
        if cfg.ipv6.is_none() || ipv6 {
            break cfg;
        }
        // Another node stored a config with IPv6 meanwhile: its sysctls are needed too.
    };
    Ok(Prepared {
        nl,
        underlay,
        reg,
        cfg,
        liveness,
        lock,
        retry,
        node_check,
    })
}

/// A random ID of this process, held in the node's liveness key beside the machine's.
fn instance_id() -> Result<String> {
    let b: [u8; 8] = crate::datapath::random_bytes("an instance ID")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
