//! DEL: take the host veth off the network (its pod end goes with it), free the address,
//! and leave the kernel's slow unregistration to a background reaper (see `reap`). Keeps
//! going past a failure and reports them all; nothing there is success.

use cni::{Env, Error, NetConf};
use netlink::Netlink;

use crate::addressing::Addressing;
use crate::config::PluginConf;
use crate::kernel::{self, err};
use crate::reap;
use node_ipam::attachment;

pub fn run(conf: &NetConf, env: &Env) -> Result<(), Error> {
    let pc = PluginConf::parse(conf)?;
    let host_veth = attachment::host_veth(&env.container_id, &env.ifname);
    let mut errors = Vec::new();
    let removed = kernel::runtime().and_then(|rt| {
        rt.block_on(async {
            let host = Netlink::open()?;
            let tomb = reap::tombstone(&host_veth);
            if host.detach_link(&host_veth, &tomb).await? && !reap::spawn(&tomb) {
                host.del_link(&tomb).await?;
            }
            Ok(())
        })
        .map_err(err)
    });
    if let Err(e) = removed {
        errors.push(e);
    }
    if let Err(e) = Addressing::new(&pc.ipam, conf, env).del() {
        errors.push(e);
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
    use cni::Code;

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
