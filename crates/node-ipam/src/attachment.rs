//! The names ferry derives from an attachment (container ID, ifname), so that DEL, GC and
//! the operator's `check` and `release` find what ADD made without the pod's namespace and
//! without any state of their own.

/// The host end of the veth: `fy` + 13 hex digits of a hash of (container ID, ifname).
/// FNV-1a is written out here because the name must not change between builds.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    let mut key = Vec::with_capacity(container_id.len() + ifname.len() + 1);
    key.extend_from_slice(container_id.as_bytes());
    key.push(0);
    key.extend_from_slice(ifname.as_bytes());
    format!("fy{:013x}", fnv1a(&key) >> 12)
}

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The host veth's alias: who owns it, readable with `ip link` and parsed by GC.
pub fn alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("ferry/{network}/{container_id}/{ifname}")
}

/// (network, container ID, ifname) of an alias made by `alias`.
pub fn parse_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let mut it = alias.strip_prefix("ferry/")?.split('/');
    let t = (it.next()?, it.next()?, it.next()?);
    it.next().is_none().then_some(t)
}

/// Whether a link of this name exists in the caller's network namespace (sysfs shows the
/// namespace sysfs was mounted in: the host's, for the plugin and the CLI).
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Why the attachment holding `a` is still there (its pod's namespace, or ferry's host
/// veth for it), or `None` when both are gone: an address a runtime leaked by losing a DEL.
pub fn alive(a: &crate::Allocation) -> Option<String> {
    if let Some(ns) = a
        .netns
        .as_deref()
        .filter(|p| std::path::Path::new(p).exists())
    {
        return Some(format!("its network namespace {ns} exists"));
    }
    let veth = host_veth(&a.container_id, &a.ifname);
    link_exists(&veth).then(|| format!("its host veth {veth} exists"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_is_stable_and_short() {
        let n = host_veth("abc", "eth0");
        assert_eq!(n.len(), 15);
        assert_eq!(n, host_veth("abc", "eth0"));
        assert_ne!(n, host_veth("abc", "eth1"));
        assert_ne!(host_veth("ab", "ceth0"), host_veth("abc", "eth0"));
        // Pinned: a change would orphan the veths of running pods across an upgrade.
        assert_eq!(
            host_veth("", ""),
            format!("fy{:013x}", 0xaf63_bd4c_8601_b7dfu64 >> 12)
        );
        assert_eq!(host_veth("c1", "eth0"), "fyf53f02b3bfe94");
    }

    #[test]
    fn alias_round_trip() {
        let a = alias("net", "c1", "eth0");
        assert_eq!(parse_alias(&a), Some(("net", "c1", "eth0")));
        assert_eq!(parse_alias("other"), None);
        assert_eq!(parse_alias("ferry/a/b/c/d"), None);
    }
}
