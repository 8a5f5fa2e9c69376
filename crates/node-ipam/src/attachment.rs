//! The names ferry derives from an attachment (container ID, ifname), so that DEL, GC and
//! the operator's `check` and `release` find what ADD made without the pod's namespace and
//! without any state of their own.

/// Names of host veths: `fy` + 13 hex digits.
pub const HOST_VETH_PREFIX: &str = "fy";

/// Names of renamed tombstones: `fz` + 13 hex digits, never a live attachment's `fy` name.
pub const TOMBSTONE_PREFIX: &str = "fz";

/// The link group retired veths wait in for their deletion (0xfe77). ferry deletes
/// every link of this group in the host's network namespace: nothing else may use it.
/// Here, not in the plugin that retires them, because the uninstall removes them too.
pub const TOMBSTONE_GROUP: u32 = 65143;

/// The abstract unix socket name the one reaper of `TOMBSTONE_GROUP` in a host network
/// namespace listens on (a stream socket; DEL wakes it by connecting). Here, beside the
/// group, because the tests hold it too.
pub const REAPER_SOCKET: &[u8] = b"ferry-reaper-65143";

/// The host end of the veth: `fy` + 13 hex digits of a hash of (container ID, ifname).
/// FNV-1a because the name must not change between builds (std's hashers may).
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    let mut key = Vec::with_capacity(container_id.len() + ifname.len() + 1);
    key.extend_from_slice(container_id.as_bytes());
    key.push(0);
    key.extend_from_slice(ifname.as_bytes());
    format!("{HOST_VETH_PREFIX}{:013x}", fnv1a(&key) >> 12)
}

/// Whether `name` is one ferry gives a host veth or a tombstone: the prefix and exactly 13
/// lowercase hex digits (another CNI's `fy1` or `fzz…` is not ferry's).
pub fn is_ferry_link_name(name: &str) -> bool {
    let rest = name
        .strip_prefix(HOST_VETH_PREFIX)
        .or_else(|| name.strip_prefix(TOMBSTONE_PREFIX));
    rest.is_some_and(|r| {
        r.len() == 13
            && r.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// 64-bit FNV-1a of exactly `bytes`: `Hasher::write`, not `Hash::hash`, which would add
/// a length prefix and change every name.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
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
    fn fnv1a_is_pinned() {
        // Outputs of the hand-written FNV-1a this replaced: veth names (and the reaper's
        // tombstones) of running pods depend on them.
        for (bytes, want) in [
            (&b""[..], 0xcbf2_9ce4_8422_2325u64),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
            (b"c1\0eth0", 0xf53f_02b3_bfe9_4942),
            (b"fy0123456789abc", 0x4d37_86eb_387b_690d),
        ] {
            assert_eq!(fnv1a(bytes), want, "{bytes:?}");
        }
    }

    #[test]
    fn ferry_link_names_are_exactly_the_made_ones() {
        assert!(is_ferry_link_name(&host_veth("c1", "eth0")));
        assert!(is_ferry_link_name("fz0123456789abc"));
        for other in [
            "fy",
            "fy0123456789ab",
            "fy0123456789abcd",
            "fy0123456789ABC",
            "fx0123456789abc",
            "cali0123456789a",
            "fy012345678g9ab",
        ] {
            assert!(!is_ferry_link_name(other), "{other}");
        }
    }

    #[test]
    fn alias_round_trip() {
        let a = alias("net", "c1", "eth0");
        assert_eq!(parse_alias(&a), Some(("net", "c1", "eth0")));
        assert_eq!(parse_alias("other"), None);
        assert_eq!(parse_alias("ferry/a/b/c/d"), None);
    }
}
