//! The pod's network namespace as `CNI_NETNS` names it, refused when it is the plugin's
//! own: an ADD there would put the pod's interface, address and default route on the host.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ferry_cni::{Code, Error};
use ferry_netlink::netns;

/// Opens `path` as a network namespace other than the one this process runs in.
pub fn open(path: &Path) -> Result<File, Error> {
    let ns = netns::open(path).map_err(|e| {
        Error::new(
            Code::InvalidEnv,
            format!("CNI_NETNS {} cannot be opened", path.display()),
        )
        .with_details(e.to_string())
    })?;
    let id = |m: std::fs::Metadata| (m.dev(), m.ino());
    let target = ns.metadata().map(id);
    let own = std::fs::metadata("/proc/self/ns/net").map(id);
    match (target, own) {
        (Ok(t), Ok(o)) if t == o => Err(Error::new(
            Code::InvalidEnv,
            format!(
                "CNI_NETNS {} is the plugin's own network namespace (the host's), not a pod's",
                path.display()
            ),
        )),
        (Ok(_), Ok(_)) => Ok(ns),
        (Err(e), _) | (_, Err(e)) => Err(Error::new(
            Code::InvalidEnv,
            format!(
                "CNI_NETNS {}: cannot tell it from the host's network namespace",
                path.display()
            ),
        )
        .with_details(e.to_string())),
    }
}
