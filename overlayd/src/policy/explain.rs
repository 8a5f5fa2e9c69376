//! `ferry-ipam explain`: the verdict the node's policy state gives a connection, and why,
//! from the reference evaluator over the daemon's last view of the cluster.

use std::net::IpAddr;

use ferry_netpol::eval::{verdict_at, Endpoint};
use ferry_netpol::{Cluster, LocalPods, Pod, Protocol};
use ferry_policy_notice::Reply;

pub fn explain(
    cluster: &Cluster,
    local: &LocalPods,
    from: &str,
    to: &str,
    protocol: &str,
    port: u16,
) -> Reply {
    let protocol = match Protocol::parse(Some(protocol)) {
        Ok(p) => p,
        Err(e) => return Reply::refused(e),
    };
    let (src, dst) = match (endpoint(cluster, local, from), endpoint(cluster, local, to)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => return Reply::refused(e),
    };
    // A pod end without a given address takes the other end's family.
    let pick = |e: &(Option<&Pod>, Option<IpAddr>), like: Option<IpAddr>| {
        e.1.or_else(|| {
            let p = e.0?;
            like.and_then(|l| p.ip_like(l))
                .or_else(|| p.ips.first().copied())
        })
    };
    let dst_ip = pick(&dst, src.1);
    let src_ip = pick(&src, dst_ip);
    let v = verdict_at(
        cluster,
        Endpoint {
            pod: src.0,
            ip: src_ip,
        },
        Endpoint {
            pod: dst.0,
            ip: dst_ip,
        },
        protocol,
        port,
    );
    Reply {
        ok: true,
        error: String::new(),
        text: v.to_string(),
        detail: serde_json::to_value(&v).unwrap_or_default(),
    }
}

/// `namespace/pod` (a pod the API shows), an address (a pod's, its link-local one
/// included, or any other), or `namespace/pod@address`: the pod, sent to (or sending
/// from) that address, such as a multicast or broadcast address it receives.
fn endpoint<'a>(
    cluster: &'a Cluster,
    local: &LocalPods,
    spec: &str,
) -> Result<(Option<&'a Pod>, Option<IpAddr>), String> {
    if let Some((pod, at)) = spec.split_once('@') {
        let ip = at
            .parse::<IpAddr>()
            .map_err(|_| format!("{at:?} (in {spec:?}) is not an IP address"))?;
        if pod.parse::<IpAddr>().is_ok() {
            return Err(format!("{spec:?}: before the @ comes namespace/pod"));
        }
        return endpoint(cluster, local, pod).map(|(p, _)| (p, Some(ip)));
    }
    if let Ok(ip) = spec.parse::<IpAddr>() {
        let owner = local
            .pods
            .iter()
            .find(|(_, ips)| ips.contains(&ip))
            .and_then(|(k, _)| cluster.pod(&k.namespace, &k.name))
            .or_else(|| cluster.pods.iter().find(|p| p.ips.contains(&ip)));
        return Ok((owner, Some(ip)));
    }
    let Some((ns, name)) = spec.split_once('/') else {
        return Err(format!(
            "{spec:?} is neither namespace/pod nor an IP address"
        ));
    };
    cluster
        .pod(ns, name)
        .map(|p| (Some(p), None))
        .ok_or_else(|| format!("no pod {ns}/{name} in the API's view of the cluster"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tier_rule_that_decided_is_in_the_text_and_the_json() {
        use k8s_openapi::api::core::v1::{Namespace, Pod as K8sPod};
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b", "labels": {"tenant": "b"}}}))
        .unwrap();
        let pod = |name: &str, ip: &str| -> K8sPod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "b", "name": name},
                "status": {"podIPs": [{"ip": ip}]}}))
            .unwrap()
        };
        let (mut cluster, errors) =
            Cluster::from_k8s(&[ns], &[pod("x", "10.1.0.2"), pod("y", "10.1.0.3")], &[]);
        assert!(errors.is_empty(), "{errors:?}");
        let cnp = ferry_netpol::ClusterNetworkPolicy::new(
            "baseline-closed",
            serde_json::json!({"tier": "Baseline", "priority": 5,
                "subject": {"namespaces": {}},
                "ingress": [{"name": "nothing-in", "action": "Deny",
                    "from": [{"namespaces": {}}]}]}),
        );
        assert!(cluster.add_cluster_policies([&cnp]).is_empty());
        let reply = explain(&cluster, &LocalPods::default(), "b/x", "b/y", "TCP", 80);
        assert!(reply.ok, "{}", reply.error);
        assert!(
            reply.text.contains("Baseline tier")
                && reply.text.contains("baseline-closed")
                && reply.text.contains("nothing-in"),
            "{}",
            reply.text
        );
        assert_eq!(reply.detail["allowed"], false);
        let rule = &reply.detail["ingress"]["baseline"];
        assert_eq!(rule["tier"], "Baseline", "{}", reply.detail);
        assert_eq!(rule["policy"], "baseline-closed");
        assert_eq!(rule["name"], "nothing-in");
        assert_eq!(rule["action"], "Deny");
        assert!(reply.detail["ingress"].get("admin").is_none());
    }
}
