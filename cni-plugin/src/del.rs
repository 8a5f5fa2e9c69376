//! DEL: take the host veth off the network (its pod end goes with it), free the address,
//! and leave the kernel's slow unregistration to the batch reaper (see `reap`), or do it
//! here when the reaper's name is held by a process ferry does not trust. Keeps going
//! past a failure and reports them all; nothing there is success.
//!
//! A DEL killed half-way leaves the veth retired but not deleted; the retried DEL finds
//! it by its name (or, renamed by a later ADD, by the attachment's alias) and finishes.

use ferry_cni::{Env, Error, NetConf};
use ferry_netlink::Netlink;

use crate::addressing::Addressing;
use crate::config::PluginConf;
use crate::kernel::{self, err};
use crate::reap;
use ferry_node_ipam::attachment;

pub fn run(conf: &NetConf, env: &Env) -> Result<(), Error> {
    let pc = PluginConf::parse(conf)?;
    let host_veth = attachment::host_veth(&env.container_id, &env.ifname);
    let alias = attachment::alias(&conf.name, &env.container_id, &env.ifname);
    let mut errors = Vec::new();
    let detached = kernel::runtime().and_then(|rt| {
        rt.block_on(async {
            let host = Netlink::open()?;
            // Retired again when a DEL that died after retiring it is retried: the
            // reaper must still be made sure of.
            if let Some(link) = host.get_link(&host_veth).await? {
                return host
                    .detach_index(link.index, &host_veth, None, reap::TOMBSTONE_GROUP)
                    .await;
            }
            // No veth by that name: an ADD of the same attachment may have renamed its
            // unreaped tombstone out of the way.
            let mut found = false;
            for link in host.list_links().await? {
                if reap::is_tombstone_of(&link, &alias) {
                    found |= host
                        .detach_index(link.index, &link.name, None, reap::TOMBSTONE_GROUP)
                        .await?;
                }
            }
            Ok(found)
        })
        .map_err(err)
    });
    let detached = match detached {
        Ok(d) => d,
        Err(e) => {
            errors.push(e);
            false
        }
    };
    if let Err(e) = Addressing::new(&pc.ipam, conf, env).del() {
        errors.push(e);
    }
    if let Some(hook) = &pc.policy_hook() {
        crate::policy::detach(hook, env);
    }
    if detached {
        if let Err(e) = reap::ensure() {
            errors.push(e);
        }
    }
    combine(errors)
}

/// One error from several: the first one's code, every message.
pub fn combine(errors: Vec<Error>) -> Result<(), Error> {
    let Some(first) = errors.first() else {
        return Ok(());
    };
    if errors.len() == 1 {
        return Err(first.clone());
    }
    let msg = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Err(Error {
        code: first.code,
        msg,
        details: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_cni::Code;

    #[test]
    fn combine_keeps_all_messages() {
        assert!(combine(vec![]).is_ok());
        let e = combine(vec![
            Error::new(Code::Kernel, "a"),
            Error::new(Code::Store, "b"),
        ])
        .unwrap_err();
        assert_eq!(e.code, 103);
        assert_eq!(e.msg, "a; b");
    }
}
