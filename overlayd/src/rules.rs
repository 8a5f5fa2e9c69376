//! Node-wide settings, installed once per node (never per pod) and kept true on resync.
//!
//! iptables, not a table of our own in nftables: where another table's FORWARD policy is
//! DROP (Docker sets it), an accept in a separate nftables table cannot override it, and
//! kube-proxy's iptables mode lives in these same tables (through Debian's iptables-nft).
//! Chains are replaced atomically with `iptables-restore --noflush`. An IPv6 cluster CIDR
//! gets the same chains, by the same names, in ip6tables.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use ipnetwork::IpNetwork;

const MASQ_CHAIN: &str = "FERRY-POSTRTG";
const FWD_CHAIN: &str = "FERRY-FWD";

/// kube-proxy marks packets it will masquerade itself with this bit.
const KUBE_MARK_MASQ: &str = "0x4000/0x4000";

/// `iptables` or `ip6tables`, for a cluster CIDR's family.
fn tool(cluster: IpNetwork) -> &'static str {
    match cluster {
        IpNetwork::V4(_) => "iptables",
        IpNetwork::V6(_) => "ip6tables",
    }
}

/// The chains' rules, as `iptables -S` (or `ip6tables -S`) prints them.
pub fn chain_rules(cluster: IpNetwork) -> (Vec<String>, Vec<String>) {
    let multicast = match cluster {
        IpNetwork::V4(_) => "224.0.0.0/4",
        IpNetwork::V6(_) => "ff00::/8",
    };
    let masq = vec![
        format!("-A {MASQ_CHAIN} -m mark --mark {KUBE_MARK_MASQ} -m comment --comment \"kube-proxy masquerades these\" -j RETURN"),
        format!("-A {MASQ_CHAIN} -s {cluster} -d {cluster} -m comment --comment \"pod to pod keeps its source\" -j RETURN"),
        format!("-A {MASQ_CHAIN} -s {cluster} -d {multicast} -j RETURN"),
        format!("-A {MASQ_CHAIN} -s {cluster} -m comment --comment \"pod to outside\" -j MASQUERADE --random-fully"),
    ];
    let fwd = vec![
        format!("-A {FWD_CHAIN} -s {cluster} -j ACCEPT"),
        format!("-A {FWD_CHAIN} -d {cluster} -j ACCEPT"),
    ];
    (masq, fwd)
}

fn restore_input(cluster: IpNetwork) -> String {
    let (masq, fwd) = chain_rules(cluster);
    format!(
        "*nat\n:{MASQ_CHAIN} - [0:0]\n{}\nCOMMIT\n*filter\n:{FWD_CHAIN} - [0:0]\n{}\nCOMMIT\n",
        masq.join("\n"),
        fwd.join("\n")
    )
}

fn iptables(tool: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new(tool)
        .arg("-w")
        .args(args)
        .output()
        .with_context(|| format!("run {tool} (is it installed?)"))
}

fn chain_is(tool: &str, table: &str, chain: &str, want: &[String]) -> bool {
    let Ok(out) = iptables(tool, &["-t", table, "-S", chain]) else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let have: Vec<&str> = text.lines().filter(|l| l.starts_with("-A ")).collect();
    out.status.success() && have == want.iter().map(String::as_str).collect::<Vec<_>>()
}

fn ensure_jump(tool: &str, table: &str, from: &str, to: &str, comment: &str) -> Result<()> {
    let rule = ["-m", "comment", "--comment", comment, "-j", to];
    let mut check = vec!["-t", table, "-C", from];
    check.extend(rule);
    if iptables(tool, &check)?.status.success() {
        return Ok(());
    }
    let mut insert = vec!["-t", table, "-I", from, "1"];
    insert.extend(rule);
    let out = iptables(tool, &insert)?;
    if !out.status.success() {
        bail!(
            "{tool} -t {table} -I {from} ... -j {to}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Installs (or repairs) the masquerade and forward rules; returns whether it changed
/// anything.
pub fn ensure_iptables(cluster: IpNetwork) -> Result<bool> {
    let tool = tool(cluster);
    let (masq, fwd) = chain_rules(cluster);
    let mut changed = false;
    if !chain_is(tool, "nat", MASQ_CHAIN, &masq) || !chain_is(tool, "filter", FWD_CHAIN, &fwd) {
        let mut child = Command::new(format!("{tool}-restore"))
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run {tool}-restore (is {tool} installed?)"))?;
        child
            .stdin
            .take()
            .with_context(|| format!("{tool}-restore stdin"))?
            .write_all(restore_input(cluster).as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{tool}-restore: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        changed = true;
    }
    ensure_jump(tool, "nat", "POSTROUTING", MASQ_CHAIN, "ferry masquerade")?;
    ensure_jump(tool, "filter", "FORWARD", FWD_CHAIN, "ferry forward")?;
    Ok(changed)
}

/// Forwarding, and bridged pod traffic through iptables (kube-proxy's Service rules must
/// see traffic between pods of one bridge, or a reply would skip the reverse NAT).
pub fn ensure_sysctls(ipv6: bool) -> Result<()> {
    netlink::sysctl::ensure("net/ipv4/ip_forward", "1")?;
    let key = "net/bridge/bridge-nf-call-iptables";
    if netlink::sysctl::read(key).is_err() {
        // Built as a module on most distributions: try to load it.
        let _ = Command::new("modprobe").arg("br_netfilter").status();
    }
    netlink::sysctl::ensure(key, "1")
        .context("enable bridge-nf-call-iptables (is the br_netfilter module available?)")?;
    if ipv6 {
        netlink::sysctl::ensure("net/ipv6/conf/all/forwarding", "1")?;
        netlink::sysctl::ensure("net/bridge/bridge-nf-call-ip6tables", "1")
            .context("enable bridge-nf-call-ip6tables")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_input_replaces_both_chains() {
        let t = restore_input("10.244.0.0/16".parse().unwrap());
        assert!(t.starts_with("*nat\n:FERRY-POSTRTG - [0:0]\n"));
        assert!(t.contains("-A FERRY-POSTRTG -s 10.244.0.0/16 -m comment --comment \"pod to outside\" -j MASQUERADE --random-fully"));
        assert!(t.contains("*filter\n:FERRY-FWD - [0:0]\n-A FERRY-FWD -s 10.244.0.0/16 -j ACCEPT"));
        assert_eq!(t.matches("COMMIT").count(), 2);
        let t6 = restore_input("fd00:10::/56".parse().unwrap());
        assert!(t6.contains("-A FERRY-POSTRTG -s fd00:10::/56 -d fd00:10::/56 -m comment --comment \"pod to pod keeps its source\" -j RETURN"));
        assert!(t6.contains("-s fd00:10::/56 -d ff00::/8 -j RETURN"));
        assert!(t6.contains("-A FERRY-FWD -d fd00:10::/56 -j ACCEPT"));
    }
}
