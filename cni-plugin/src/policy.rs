//! Telling `ferry-overlayd` which pod holds which addresses, when the node enforces
//! NetworkPolicy (node.json's `networkPolicy`, from `ferry-overlayd --network-policy`). ADD returns only once the daemon has the
//! pod covered by the node's rules; without that answer the attachment is undone and the
//! runtime retries (code 11), since a pod let out early could receive what a policy forbids.

use std::net::IpAddr;

use ferry_cni::{Code, Env, Error};
use ferry_policy_notice::Notice;

use crate::config::PolicyHook;

/// Waits until the daemon covers the pod holding `ips`.
pub fn attach(hook: &PolicyHook, env: &Env, ips: Vec<IpAddr>) -> Result<(), Error> {
    let (namespace, pod) = env
        .k8s_pod
        .as_ref()
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .unwrap_or_default();
    let notice = Notice::Attach {
        namespace,
        pod,
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        ips,
    };
    ferry_policy_notice::send(&hook.socket, &notice, hook.wait).map_err(|e| {
        Error::new(
            Code::TryAgainLater,
            format!("NetworkPolicy is enforced on this node and the pod is not covered yet: {e}"),
        )
    })
}

/// Tells the daemon the attachment's addresses are free. Best effort: the daemon also
/// learns it from the API, and a DEL must not fail for it.
pub fn detach(hook: &PolicyHook, env: &Env) {
    let notice = Notice::Detach {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    };
    if let Err(e) = ferry_policy_notice::send(&hook.socket, &notice, hook.wait.min(DETACH_WAIT)) {
        eprintln!("ferry: {e}");
    }
}

const DETACH_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
