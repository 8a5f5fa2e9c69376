//! The names of the objects in the two tables: fixed ones, those derived from a policy
//! (readable, or hashed when they would not fit), and the chains of policy combinations.
//! They are read back from the kernel after a restart, so they must not change across
//! versions.

use std::hash::Hasher as _;

use crate::model::{ClusterPolicy, Direction, Policy};
use crate::nft::ChainRef;
use crate::ranges::Family;

/// The name of the two tables every node's policy state lives in (`inet` and `bridge`).
pub const TABLE: &str = "ferry_policy";

/// Longest nft object name (NFT_NAME_MAXLEN 256 with its NUL, checked on nft 1.0.6).
pub const MAX_NAME_LEN: usize = 255;
/// Longest rule comment nft accepts.
const MAX_COMMENT_LEN: usize = 128;

/// The verdict map from a local pod's address to its chain for `dir`: a pod isolated for
/// `dir` has an element, any other pod none.
pub fn pods_map(dir: Direction, family: Family) -> String {
    format!("{dir}_pods{}", family.digit())
}

pub fn denied_set(dir: Direction, family: Family) -> String {
    format!("denied_{dir}{}", family.digit())
}

pub const FORWARD_CHAIN: &str = "forward";
pub const INPUT_CHAIN: &str = "input";

/// The bridge table's verdict map from a local pod's port to the chain of the policies
/// that isolate it for ingress.
pub const PORTS_MAP: &str = "ingress_ports";

/// The bridge table's set of `<port> . <address>` of every local pod: a frame leaving on
/// a pod's port for one of the pod's own addresses is unicast to it, which the inet
/// table judges.
pub fn own_set(family: Family) -> String {
    format!("own{}", family.digit())
}

/// `<pod address> . <same address>` of every local pod: a pod reaching itself through a
/// Service (bridge hairpin) passes the forward hook and is allowed like any self traffic.
pub fn self_set(family: Family) -> String {
    format!("self{}", family.digit())
}

/// The addresses every peer of the ClusterNetworkPolicy rules of tier chain `chain` covers,
/// of `family`: a packet whose peer is not in it skips the tier's rules.
pub fn prefilter_set(chain: ChainRef, family: Family) -> String {
    format!("{}_peers{}", chain.name(), family.digit())
}

/// Which end of the packet a rule set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Src,
    Dst,
}

/// Whether every character keeps the name an nft identifier and unambiguous: Kubernetes
/// names are DNS labels/subdomains, so `_` never occurs in them and can separate parts.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// FNV-1a: a stable name for a policy whose readable name does not fit. The bytes go in
/// with `Hasher::write` alone: `Hash::hash` on a `str` appends a terminator byte, which
/// would change every name already applied.
fn fnv64(s: &str) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(s.as_bytes());
    h.finish()
}

/// `in_<ns>_<policy>_<rule>_<src|dst><4|6>` (`eg_` for egress), or with `h<hash>` in place
/// of `<ns>_<policy>` when that would be too long or hold unexpected characters.
pub(crate) fn rule_set_name(
    policy: &Policy,
    dir: Direction,
    index: usize,
    end: End,
    family: Family,
) -> String {
    let readable = format!("{}_{}", policy.namespace, policy.name);
    let plain = plain_name(&policy.namespace) && plain_name(&policy.name);
    let d = dir_prefix(dir);
    set_name(d, &readable, plain, &policy.id(), index, end, family)
}

/// `cin_<policy>_<rule>_<src|dst><4|6>` (`ceg_` for egress) for a rule of a
/// ClusterNetworkPolicy: no namespace holds it, and `cin`/`ceg` are no NetworkPolicy
/// prefix; `h<hash>` in place of the name as for a NetworkPolicy.
pub(crate) fn cluster_rule_set_name(
    policy: &ClusterPolicy,
    dir: Direction,
    index: usize,
    end: End,
    family: Family,
) -> String {
    let d = format!("c{}", dir_prefix(dir));
    let plain = plain_name(&policy.name);
    set_name(&d, &policy.name, plain, &policy.name, index, end, family)
}

/// `in` or `eg`: how a rule set's name says its direction.
fn dir_prefix(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    }
}

/// `<prefix>_<owner>_<rule>_<src|dst><4|6>`, with `h<hash of hashed>` for `<owner>` when
/// the owner's name is not `plain` or the whole would be too long.
fn set_name(
    prefix: &str,
    owner: &str,
    plain: bool,
    hashed: &str,
    index: usize,
    end: End,
    family: Family,
) -> String {
    let e = match end {
        End::Src => "src",
        End::Dst => "dst",
    };
    let tail = format!("{index}_{e}{}", family.digit());
    let readable = format!("{prefix}_{owner}_{tail}");
    if plain && readable.len() <= MAX_NAME_LEN {
        readable
    } else {
        format!("{prefix}_h{:016x}_{tail}", fnv64(hashed))
    }
}

/// `cnp <name> <dir>[<rule>] <rule name>`, when it fits and needs no quoting.
pub(crate) fn cluster_rule_comment(
    policy: &ClusterPolicy,
    dir: Direction,
    index: usize,
    rule_name: &str,
) -> Option<String> {
    let c = format!("cnp {} {dir}[{index}] {rule_name}", policy.name);
    let c = c.trim_end().to_string();
    let printable = rule_name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_. ".contains(&b));
    (plain_name(&policy.name) && printable && c.len() < MAX_COMMENT_LEN).then_some(c)
}

pub(crate) fn rule_comment(policy: &Policy, dir: Direction, index: usize) -> Option<String> {
    let c = format!("{} {dir}[{index}]", policy.id());
    (plain_name(&policy.namespace) && plain_name(&policy.name) && c.len() < MAX_COMMENT_LEN)
        .then_some(c)
}

impl ChainRef {
    /// The chain of a pod no policy is known for yet: everything denied.
    pub fn closed(dir: Direction) -> ChainRef {
        ChainRef { dir, sig: 0 }
    }

    /// The chain of the policies whose ids are `ids` (in any order).
    pub fn of_policies(dir: Direction, ids: &[&str]) -> ChainRef {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        // 0 names the closed chain; a hash that lands there moves aside.
        let sig = fnv64(&ids.join("\n")).max(1);
        ChainRef { dir, sig }
    }

    pub fn name(self) -> String {
        if self.sig == 0 {
            format!("{}_closed", self.dir)
        } else {
            format!("{}_{:016x}", self.dir, self.sig)
        }
    }

    /// The reference a chain's name stands for, if it is one.
    pub fn parse(name: &str) -> Option<ChainRef> {
        let (d, tail) = name.split_once('_')?;
        let dir = match d {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => return None,
        };
        if tail == "closed" {
            return Some(ChainRef::closed(dir));
        }
        if tail.len() != 16
            || !tail
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return None;
        }
        let sig = u64::from_str_radix(tail, 16).ok().filter(|s| *s != 0)?;
        Some(ChainRef { dir, sig })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chain and set names are derived from this hash and are read back from the kernel
    /// after a restart: a different hash would make every applied name unknown.
    #[test]
    fn names_hash_as_before() {
        for (s, h) in [
            ("", 0xcbf2_9ce4_8422_2325),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("default/deny-all", 0xe40e_e887_8137_04f7),
            ("ns-1/p\nns-2/q", 0x284e_645d_8e42_613b),
        ] {
            assert_eq!(fnv64(s), h, "{s:?}");
        }
        let chain = ChainRef::of_policies(Direction::Ingress, &["ns-2/q", "ns-1/p"]);
        assert_eq!(chain.name(), "ingress_284e645d8e42613b");
    }
}
