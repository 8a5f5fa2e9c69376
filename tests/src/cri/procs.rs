//! The processes of a node made of namespaces: whatever runs in the node's mount
//! namespace (held by a sleeping "holder" process), and their descendants (pods'
//! processes, in mount namespaces of their own, whose parents are the runtime's shims).
//! Found and ended by PID, never by name: nothing else on the machine is touched.

use std::path::Path;
use std::time::Duration;

use crate::proc::wait_until;

/// Every process of the node whose mount namespace `holder` holds (but the holder).
pub fn of_node(holder: u32) -> Vec<i32> {
    let Ok(mine) = std::fs::read_link(format!("/proc/{holder}/ns/mnt")) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: Vec<(i32, i32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, parent(pid)?)))
        .collect();
    let mut found: Vec<i32> = all
        .iter()
        .map(|&(pid, _)| pid)
        .filter(|&pid| pid as u32 != holder)
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|l| l == mine))
        .collect();
    loop {
        let more: Vec<i32> = all
            .iter()
            .filter(|(pid, ppid)| found.contains(ppid) && !found.contains(pid))
            .map(|&(pid, _)| pid)
            .collect();
        if more.is_empty() {
            return found;
        }
        found.extend(more);
    }
}

/// SIGKILL to every process of the node at once (containerd, its shims and the pods
/// they hold, so that no shim is left to restart a pod), then the sandboxes' cgroups
/// removed. The holder is left to its owner.
pub fn end_node(holder: u32) {
    let cgroups = sandbox_cgroups(&of_node(holder));
    let mut killed: Vec<i32> = Vec::new();
    for _ in 0..50 {
        let left = of_node(holder);
        if left.is_empty() {
            break;
        }
        for pid in left {
            // SAFETY: a plain kill(2) of a process of this node.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed.push(pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The pods' processes, orphaned by their shims, are reaped by init: until then they
    // are zombies still in their cgroups. A short wait, so that the node is gone when
    // this returns.
    killed.sort_unstable();
    killed.dedup();
    wait_until(Duration::from_secs(3), || {
        killed
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    });
    // Killed, runc never removes the sandboxes' cgroups: empty now, they go here.
    remove_cgroups(&cgroups);
}

/// A process's start time, field 22 of /proc/PID/stat.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_field(pid, 22)
}

/// The parent PID, field 4 of /proc/PID/stat.
fn parent(pid: i32) -> Option<i32> {
    stat_field(pid, 4)
}

/// Field `n` (from 1, as proc(5) counts) of /proc/PID/stat, counted after the
/// parenthesised name (which may hold spaces).
fn stat_field<T: std::str::FromStr>(pid: i32, n: usize) -> Option<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// The cgroups (`/k8s.io/<sandbox ID>`, as containerd's runc names them) the given
/// processes are in.
pub fn sandbox_cgroups(pids: &[i32]) -> Vec<String> {
    let mut found: Vec<String> = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_string))
                .collect::<Vec<_>>()
        })
        .filter(|path| {
            path.strip_prefix("/k8s.io/")
                .is_some_and(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Removes each (empty) cgroup in every hierarchy that has it: cgroup v2's single one,
/// v1's per controller.
pub fn remove_cgroups(cgroups: &[String]) {
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        hierarchies.extend(entries.flatten().map(|e| e.path()));
    }
    for h in &hierarchies {
        for c in cgroups {
            let _ = std::fs::remove_dir(h.join(c.trim_start_matches('/')));
        }
    }
}
