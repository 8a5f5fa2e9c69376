//! Which CNI versions ferry answers, and what each allows.

/// Every config version ferry accepts; results are rendered in the requested one.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version ferry implements.
pub const CURRENT: &str = "1.1.0";

fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}

pub fn is_supported(v: &str) -> bool {
    SUPPORTED.contains(&v)
}

/// True when `v` is at least `min` (both dotted triples); unparsable is false.
pub fn at_least(v: &str, min: &str) -> bool {
    match (parse(v), parse(min)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

/// 0.3.x and 0.4.0 results carry `"version"` in each `ips` entry; 1.x do not.
pub fn ips_carry_version(v: &str) -> bool {
    !at_least(v, "1.0.0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering() {
        assert!(at_least("1.1.0", "1.0.0"));
        assert!(at_least("0.4.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert!(!at_least("garbage", "0.1.0"));
        assert!(ips_carry_version("0.4.0"));
        assert!(!ips_carry_version("1.1.0"));
    }
}
