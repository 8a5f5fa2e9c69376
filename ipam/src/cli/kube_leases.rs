//! `ferry-ipam leases` against the Kubernetes datastore: every Node as the daemons judge
//! it, in the same table and JSON as etcd's leases.

use anyhow::Result;
use ferry_kube_registry::{client, judge_all, NodeEntry};
use ferry_registry::model::ConfigFlags;

use super::leases::{Args, Problem, Report, Row};

pub(super) async fn report(args: &Args) -> Result<Report> {
    let api = client::connect(args.kubeconfig.as_deref()).await?;
    let nodes = client::list(&api).await?;
    let flags = ConfigFlags {
        cluster_cidr: args.cluster_cidr,
        cluster_cidr_v6: args.cluster_cidr_v6,
        ..Default::default()
    };
    // The subnet lengths are the Nodes' own (one per family, the controller-manager's).
    let cfg = nodes
        .iter()
        .find(|n| !n.pod_cidrs.is_empty())
        .and_then(|n| ferry_kube_registry::entry::cluster_config(&flags, n).ok());
    let mut problems = Vec::new();
    let records: Vec<_> = match &cfg {
        Some(cfg) => {
            let judged = judge_all(cfg, &[], &nodes);
            for (node, why) in judged.pending {
                problems.push(Problem {
                    node: node.clone(),
                    detail: format!("Node {node} {why}"),
                });
            }
            for r in judged.view.refused {
                problems.push(Problem {
                    node: r.key.trim_start_matches("Node ").to_string(),
                    detail: format!("refused: {}", r.reason),
                });
            }
            judged.view.accepted
        }
        // Unchecked: every Node that has what a lease has.
        None => nodes
            .iter()
            .filter_map(|n| unchecked(n, &mut problems))
            .collect(),
    };
    let leases: Vec<Row> = records
        .into_iter()
        .map(|rec| {
            let e = nodes.iter().find(|n| n.name == rec.node);
            let usage = e.and_then(NodeEntry::usage);
            Row {
                alive: e.and_then(|e| e.ready).unwrap_or(false),
                used: usage.map(|u| u.used),
                capacity: usage.map(|u| u.capacity),
                used_at: usage.and_then(|u| u.at),
                expires_in: None,
                path: None,
                device: None,
                health: None,
                health_v6: None,
                health_stale_seconds: None,
                kept_because: Some("NotReady; its routes are kept until the Node is deleted"),
                node: rec.node,
                subnet: rec.subnet,
                subnet_v6: rec.subnet_v6,
                public_ip: rec.public_ip,
                vtep_mac: rec.vtep_mac,
            }
        })
        .collect();
    Ok(Report::new(cfg.as_ref(), leases, problems))
}

/// A Node's record without the daemons' checks (no cluster CIDR given to check against);
/// what it lacks is a problem.
fn unchecked(n: &NodeEntry, problems: &mut Vec<Problem>) -> Option<ferry_registry::LeaseRecord> {
    let mut problem = |detail: String| {
        problems.push(Problem {
            node: n.name.clone(),
            detail,
        });
        None
    };
    if n.pod_cidrs.is_empty() {
        return problem(format!(
            "Node {} {}",
            n.name,
            ferry_kube_registry::entry::NO_POD_CIDR
        ));
    }
    let (Some(ip), Some(mac)) = (&n.public_ip, &n.vtep_mac) else {
        return problem(format!(
            "Node {} {}",
            n.name,
            ferry_kube_registry::Pending::NotPublished
        ));
    };
    let Ok(public_ip) = ip.parse() else {
        return problem(format!(
            "{} {ip:?} is not an IP address",
            ferry_kube_registry::annotations::PUBLIC_IP
        ));
    };
    let mut rec = ferry_registry::LeaseRecord {
        node: n.name.clone(),
        subnet: None,
        public_ip,
        vtep_mac: mac.clone(),
        subnet_v6: None,
    };
    for c in &n.pod_cidrs {
        match c.parse() {
            Ok(ipnetwork::IpNetwork::V4(s)) => rec.subnet = Some(s),
            Ok(ipnetwork::IpNetwork::V6(s)) => rec.subnet_v6 = Some(s),
            Err(_) => return problem(format!("spec.podCIDRs {c:?} is not a CIDR")),
        }
    }
    Some(rec)
}
