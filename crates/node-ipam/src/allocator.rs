//! Choosing the next address: round-robin after the last one handed out, so that a
//! freed address is not reused until the pool has come round (a late packet for a dead
//! pod does not reach its successor).

use std::net::Ipv4Addr;

use crate::config::Pool;

/// The first free address after `last` (or from the start of the pool), wrapping once
/// round; never the gateway.
pub fn next_free(
    pool: &Pool,
    last: Option<Ipv4Addr>,
    is_used: impl Fn(Ipv4Addr) -> bool,
) -> Option<Ipv4Addr> {
    let (start, end) = (u32::from(pool.start), u32::from(pool.end));
    let size = end - start + 1;
    let first = match last {
        Some(l) if pool.contains(l) => {
            let l = u32::from(l);
            if l == end {
                start
            } else {
                l + 1
            }
        }
        _ => start,
    };
    (0..size)
        .map(|i| Ipv4Addr::from(start + (first - start + i) % size))
        .find(|&ip| ip != pool.gateway && !is_used(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IpamConf, Pool};
    use std::collections::BTreeSet;
    use std::path::Path;

    fn pool(subnet: &str) -> Pool {
        let c = IpamConf {
            subnet: Some(subnet.into()),
            ..Default::default()
        };
        Pool::resolve(&c, Path::new("/nonexistent")).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    // The cases of the reference host-local allocator's round-robin table.
    #[test]
    fn round_robin_table() {
        let p = pool("192.168.1.0/29");
        let none = |_| false;
        assert_eq!(next_free(&p, None, none), Some(ip("192.168.1.2")));
        let used: BTreeSet<_> = [ip("192.168.1.2")].into();
        assert_eq!(
            next_free(&p, None, |i| used.contains(&i)),
            Some(ip("192.168.1.3"))
        );
        assert_eq!(
            next_free(&p, Some(ip("192.168.1.5")), none),
            Some(ip("192.168.1.6"))
        );
        let used: BTreeSet<_> = [ip("192.168.1.4"), ip("192.168.1.5")].into();
        assert_eq!(
            next_free(&p, Some(ip("192.168.1.3")), |i| used.contains(&i)),
            Some(ip("192.168.1.6"))
        );
        let used: BTreeSet<_> = [ip("192.168.1.6")].into();
        assert_eq!(
            next_free(&p, Some(ip("192.168.1.5")), |i| used.contains(&i)),
            Some(ip("192.168.1.2"))
        );
        let used: BTreeSet<_> = [ip("192.168.1.2")].into();
        assert_eq!(
            next_free(&p, Some(ip("192.168.1.128")), |i| used.contains(&i)),
            Some(ip("192.168.1.3"))
        );
        let used: BTreeSet<_> = ["2", "4", "5", "6"]
            .iter()
            .map(|s| ip(&format!("192.168.1.{s}")))
            .collect();
        assert_eq!(
            next_free(&p, Some(ip("192.168.1.3")), |i| used.contains(&i)),
            Some(ip("192.168.1.3"))
        );
    }

    #[test]
    fn never_the_broadcast_and_exhausts() {
        let p = pool("192.168.1.0/29");
        let mut used = BTreeSet::new();
        let mut last = None;
        for _ in 0..5 {
            let a = next_free(&p, last, |i| used.contains(&i)).unwrap();
            assert!(used.insert(a));
            last = Some(a);
        }
        assert_eq!(next_free(&p, last, |i| used.contains(&i)), None);
        assert!(!used.contains(&ip("192.168.1.7")));
        assert!(!used.contains(&ip("192.168.1.1")));
    }

    #[test]
    fn freed_address_is_not_reused_at_once() {
        let p = pool("192.168.1.0/29");
        let a = next_free(&p, None, |_| false).unwrap();
        // `a` freed again: the next allocation still moves on.
        assert_eq!(next_free(&p, Some(a), |_| false), Some(ip("192.168.1.3")));
    }
}
