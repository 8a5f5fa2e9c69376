//! Receive packet steering (RPS) on a pod's host veth.
//!
//! A veth hands every frame to the receiving side on the sender's own CPU, so without
//! steering the CPU that runs a pod's `send()` also runs everything the host does with
//! the frame: the bridge, netfilter, forwarding, encapsulation and, on a node where both
//! ends live, the receiving pod's TCP. Steering the host end's receive queue lets the
//! kernel hand that work to another CPU (chosen by flow hash), so one flow is worked on by
//! two CPUs in a pipeline. The kernel has no netlink request for it: the mask lives in
//! sysfs, `/sys/class/net/<link>/queues/rx-<n>/rps_cpus`.
//!
//! sysfs shows the links of the network namespace it was mounted in, not the caller's.
//! A runtime that enters the host's namespace with `setns` alone leaves the plugin a
//! `/sys` of some other namespace, where a link of the same name could be somebody
//! else's. So the link is identified by name, index and MAC; when `/sys` does not show
//! it, a thread mounts a sysfs of its own namespace in a private mount namespace and
//! writes there.

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::{Error, Result};

/// The highest CPU number a list may name (the kernel's NR_CPUS is at most 8192).
const MAX_CPU: u32 = 8191;

/// Parses a CPU list as the kernel prints one (`0-3,8`, as in `cpuset.cpus`,
/// `isolcpus` or the kubelet's `reservedSystemCPUs`).
pub fn parse_cpu_list(s: &str) -> std::result::Result<BTreeSet<u32>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the list is empty".into());
    }
    let num = |t: &str| -> std::result::Result<u32, String> {
        let n: u32 = t
            .trim()
            .parse()
            .map_err(|_| format!("{t:?} is not a CPU number"))?;
        if n > MAX_CPU {
            return Err(format!("CPU {n} is beyond {MAX_CPU}"));
        }
        Ok(n)
    };
    let mut cpus = BTreeSet::new();
    for item in s.split(',') {
        match item.split_once('-') {
            None => {
                cpus.insert(num(item)?);
            }
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("range {a}-{b} runs backwards"));
                }
                cpus.extend(a..=b);
            }
        }
    }
    Ok(cpus)
}

/// Prints a CPU set as a list (`0-3,8`), for messages.
pub fn format_cpu_list(cpus: &BTreeSet<u32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = cpus.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end += 1;
            it.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// The kernel's bitmap format for `rps_cpus`: hexadecimal in comma-separated groups of
/// 32 bits, most significant first (a group longer than 32 bits is refused).
pub fn cpu_mask(cpus: &BTreeSet<u32>) -> String {
    let Some(&top) = cpus.last() else {
        return "0".into();
    };
    let mut words = vec![0u32; top as usize / 32 + 1];
    for &c in cpus {
        if let Some(w) = words.get_mut(c as usize / 32) {
            *w |= 1 << (c % 32);
        }
    }
    let mut groups = words.iter().rev();
    let mut out = groups.next().map(|w| format!("{w:x}")).unwrap_or_default();
    for w in groups {
        out.push_str(&format!(",{w:08x}"));
    }
    out
}

/// The CPUs that are online (`/sys/devices/system/cpu/online`, the same in every
/// network namespace's sysfs).
pub fn online_cpus() -> Result<BTreeSet<u32>> {
    let path = "/sys/devices/system/cpu/online";
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: format!("read {path}"),
        source,
    })?;
    parse_cpu_list(&text).map_err(|e| Error::Io {
        what: format!("parse {path} ({text:?})"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// The link to steer, as the caller's netlink socket sees it.
#[derive(Debug, Clone, Copy)]
pub struct LinkId<'a> {
    pub name: &'a str,
    pub index: u32,
    pub mac: [u8; 6],
}

/// Steers the receive processing of every receive queue of `link` (in the calling
/// thread's network namespace) to `cpus`.
pub fn steer(link: LinkId<'_>, cpus: &BTreeSet<u32>) -> Result<()> {
    let mask = cpu_mask(cpus);
    let sys = Path::new("/sys");
    if shows(sys, link) {
        return write_queues(sys, link, &mask);
    }
    // Our /sys is another namespace's: write through a sysfs of our own, mounted where
    // only one short-lived thread sees it.
    std::thread::scope(|s| {
        s.spawn(|| in_private_sysfs(link, &mask))
            .join()
            .unwrap_or_else(|_| {
                Err(Error::Io {
                    what: format!("steer receive processing of {}", link.name),
                    source: std::io::Error::other("the sysfs thread panicked"),
                })
            })
    })
}

fn in_private_sysfs(link: LinkId<'_>, mask: &str) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    let io = |what: &str, e: nix::Error| Error::Io {
        what: format!("{what}, to reach the sysfs of {}", link.name),
        source: e.into(),
    };
    // A thread may leave its process's mount namespace alone; the copy dies with it.
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| io("unshare the mount namespace", e))?;
    // Nothing mounted here may propagate back to the host's mounts.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| io("make / a slave mount", e))?;
    // A new sysfs shows the network namespace of the thread that mounts it: ours.
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| io("mount a sysfs of this network namespace", e))?;
    let sys = Path::new("/sys");
    if !shows(sys, link) {
        return Err(Error::Io {
            what: format!(
                "steer receive processing of {}: this namespace's sysfs shows no such link with index {}",
                link.name, link.index
            ),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    write_queues(sys, link, mask)
}

/// Whether `sys` shows this very link: same name, index and MAC.
fn shows(sys: &Path, link: LinkId<'_>) -> bool {
    let dir = sys.join("class/net").join(link.name);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let index = read("ifindex").and_then(|s| s.trim().parse::<u32>().ok());
    let mac = read("address").map(|s| s.trim().to_ascii_lowercase());
    index == Some(link.index) && mac.as_deref() == Some(crate::format_mac(&link.mac).as_str())
}

fn write_queues(sys: &Path, link: LinkId<'_>, mask: &str) -> Result<()> {
    let queues = sys.join("class/net").join(link.name).join("queues");
    let io = |what: String, source| Error::Io { what, source };
    let entries = std::fs::read_dir(&queues)
        .map_err(|e| io(format!("list the receive queues of {}", link.name), e))?;
    let mut steered = 0;
    for entry in entries {
        let entry =
            entry.map_err(|e| io(format!("list the receive queues of {}", link.name), e))?;
        let name = entry.file_name();
        let Some(q) = name.to_str().filter(|n| n.starts_with("rx-")) else {
            continue;
        };
        std::fs::write(entry.path().join("rps_cpus"), mask).map_err(|e| {
            io(
                format!("set {}/queues/{q}/rps_cpus to {mask}", link.name),
                e,
            )
        })?;
        steered += 1;
    }
    if steered == 0 {
        return Err(io(
            format!(
                "steer receive processing of {}: it has no receive queue",
                link.name
            ),
            std::io::ErrorKind::NotFound.into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u32]) -> BTreeSet<u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0").unwrap(), set(&[0]));
        assert_eq!(parse_cpu_list("0-3,8\n").unwrap(), set(&[0, 1, 2, 3, 8]));
        assert_eq!(parse_cpu_list(" 2 , 1-1").unwrap(), set(&[1, 2]));
        for bad in [
            "",
            " ",
            "x",
            "0-",
            "-1",
            "3-1",
            "1,,2",
            "0x1",
            "1.5",
            "8192",
            "0-99999",
            "4294967296",
            "1-2-3",
        ] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn lists_print_back() {
        for s in ["0", "0-3,8", "1,3,5-7", "0-8191"] {
            assert_eq!(format_cpu_list(&parse_cpu_list(s).unwrap()), s);
        }
    }

    #[test]
    fn masks_in_the_kernels_groups() {
        assert_eq!(cpu_mask(&set(&[])), "0");
        assert_eq!(cpu_mask(&set(&[0, 1])), "3");
        assert_eq!(cpu_mask(&set(&[0, 1, 2, 3, 8])), "10f");
        assert_eq!(cpu_mask(&set(&[31])), "80000000");
        assert_eq!(cpu_mask(&set(&[32])), "1,00000000");
        assert_eq!(cpu_mask(&set(&[0, 64])), "1,00000000,00000001");
        let all = parse_cpu_list("0-8191").unwrap();
        let m = cpu_mask(&all);
        assert_eq!(m.split(',').count(), 256);
        assert!(m.split(',').all(|g| g == "ffffffff"));
    }
}
