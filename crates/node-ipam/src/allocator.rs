//! Choosing the next address: round-robin after the last one handed out, so that a
//! freed address is not reused until the pool has come round (a late packet for a dead
//! pod does not reach its successor).
//!
//! An IPv6 pool holds up to 2^64 addresses, so the search never walks the range: at most
//! `used + 1` addresses of it are taken (the allocations and the gateway), so among
//! `used + 2` consecutive candidates one is free, and that bounds the walk.

use std::net::IpAddr;

use crate::config::Pool;
use ferry_family::{from_int, to_int, Family};

/// The first free address after `last` (or from the start of the pool), wrapping once
/// round; never the gateway. `used` is how many addresses `is_used` can say yes to.
pub fn next_free(
    pool: &Pool,
    last: Option<IpAddr>,
    used: usize,
    is_used: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let (start, end) = (to_int(pool.start), to_int(pool.end));
    let size = end - start + 1;
    let first = match last {
        Some(l) if pool.contains(l) => {
            let l = to_int(l);
            if l == end {
                start
            } else {
                l + 1
            }
        }
        _ => start,
    };
    let tries = size.min(used as u128 + 2);
    (0..tries)
        .map(|i| from_int(Family::of(pool.start), start + (first - start + i) % size))
        .find(|&ip| ip != pool.gateway && !is_used(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IpamConf, Pools};
    use std::collections::BTreeSet;
    use std::path::Path;

    fn pool(subnet: &str) -> Pool {
        let c = IpamConf {
            subnet: Some(subnet.into()),
            ..Default::default()
        };
        let ps = Pools::resolve(&c, Path::new("/nonexistent")).unwrap();
        ps.v4.or(ps.v6).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // The cases of the reference host-local allocator's round-robin table.
    #[test]
    fn round_robin_table() {
        let p = pool("192.168.1.0/29");
        let none = |_| false;
        assert_eq!(next_free(&p, None, 0, none), Some(ip("192.168.1.2")));
        let used: BTreeSet<_> = [ip("192.168.1.2")].into();
        assert_eq!(
            next_free(&p, None, used.len(), |i| used.contains(&i)),
            Some(ip("192.168.1.3"))
        );
        assert_eq!(
            next_free(&p, Some(ip("192.168.1.5")), 0, none),
            Some(ip("192.168.1.6"))
        );
        let used: BTreeSet<_> = [ip("192.168.1.4"), ip("192.168.1.5")].into();
        assert_eq!(
            next_free(&p, Some(ip("192.168.1.3")), used.len(), |i| used
                .contains(&i)),
            Some(ip("192.168.1.6"))
        );
        let used: BTreeSet<_> = [ip("192.168.1.6")].into();
        assert_eq!(
            next_free(&p, Some(ip("192.168.1.5")), used.len(), |i| used
                .contains(&i)),
            Some(ip("192.168.1.2"))
        );
        let used: BTreeSet<_> = [ip("192.168.1.2")].into();
        assert_eq!(
            next_free(&p, Some(ip("192.168.1.128")), used.len(), |i| used
                .contains(&i)),
            Some(ip("192.168.1.3"))
        );
        let used: BTreeSet<_> = ["2", "4", "5", "6"]
            .iter()
            .map(|s| ip(&format!("192.168.1.{s}")))
            .collect();
        assert_eq!(
            next_free(&p, Some(ip("192.168.1.3")), used.len(), |i| used
                .contains(&i)),
            Some(ip("192.168.1.3"))
        );
    }

    #[test]
    fn never_the_broadcast_and_exhausts() {
        let p = pool("192.168.1.0/29");
        let mut used = BTreeSet::new();
        let mut last = None;
        for _ in 0..5 {
            let a = next_free(&p, last, used.len(), |i| used.contains(&i)).unwrap();
            assert!(used.insert(a));
            last = Some(a);
        }
        assert_eq!(next_free(&p, last, used.len(), |i| used.contains(&i)), None);
        assert!(!used.contains(&ip("192.168.1.7")));
        assert!(!used.contains(&ip("192.168.1.1")));
    }

    #[test]
    fn freed_address_is_not_reused_at_once() {
        let p = pool("192.168.1.0/29");
        let a = next_free(&p, None, 0, |_| false).unwrap();
        // `a` freed again: the next allocation still moves on.
        assert_eq!(
            next_free(&p, Some(a), 0, |_| false),
            Some(ip("192.168.1.3"))
        );
    }

    #[test]
    fn an_ipv6_slash_64_is_never_walked() {
        let p = pool("fd00:1::/64");
        let calls = std::cell::Cell::new(0u32);
        let used: BTreeSet<_> = (2..1000u16)
            .map(|i| ip(&format!("fd00:1::{i:x}")))
            .collect();
        let a = next_free(&p, None, used.len(), |i| {
            calls.set(calls.get() + 1);
            used.contains(&i)
        });
        assert_eq!(a, Some(ip("fd00:1::3e8")));
        assert!(calls.get() <= 1000);
        // Round-robin from the last one, however far into the range.
        let far = ip("fd00:1::ffff:ffff:ffff:fffe");
        assert_eq!(
            next_free(&p, Some(far), 0, |_| false),
            Some(ip("fd00:1::ffff:ffff:ffff:ffff"))
        );
        let end = ip("fd00:1::ffff:ffff:ffff:ffff");
        assert_eq!(
            next_free(&p, Some(end), 0, |_| false),
            Some(ip("fd00:1::2"))
        );
    }

    #[test]
    fn a_small_ipv6_range_exhausts() {
        let p = pool("fd00:9::/124");
        let mut used = BTreeSet::new();
        let mut last = None;
        while let Some(a) = next_free(&p, last, used.len(), |i| used.contains(&i)) {
            assert!(used.insert(a));
            last = Some(a);
        }
        assert_eq!(used.len(), 14);
        assert!(!used.contains(&ip("fd00:9::1")));
    }
}
