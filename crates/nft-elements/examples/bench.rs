//! One element added to (and deleted from) one set of a table of 4,000 interval sets:
//! `nft -f` against `apply`, wall time, in a network namespace of its own (removed at the
//! end). Needs root.
//!
//! `cargo run --release -p ferry-nft-elements --example bench [sets]`
//!
//! A deletion's commit waits in the kernel (about 10 ms on kernel 6.18, the same with nft
//! on a table of one set): that, not the messages, is what `apply`'s delete time shows.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_netpol::nft::{Element, Set, SetKind};
use ferry_netpol::ranges::Family;
use ferry_netpol::{Ruleset, SetChange, TableFamily};
use ferry_testns::netns::Netns;

fn nft(ns: &Netns, script: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn nft: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| format!("write to nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if !out.status.success() {
        return Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

fn v4(a: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), String> {
    if !ferry_testns::is_root() {
        return Err("needs root (it makes a network namespace)".into());
    }
    let sets: u32 = match std::env::args().nth(1) {
        Some(s) => s.parse().map_err(|e| format!("sets {s:?}: {e}"))?,
        None => 4000,
    };
    let ns = Netns::new("fynlb");
    let mut rs = Ruleset::default();
    for i in 0..sets {
        let base = 0x0a00_0000 + i * 256;
        let elements: BTreeSet<Element> = [
            Element::Range {
                lo: v4(base),
                hi: v4(base + 15),
            },
            Element::Range {
                lo: v4(base + 32),
                hi: v4(base + 32),
            },
        ]
        .into();
        rs.inet.sets.insert(
            format!("in_ns_pol_{i}_src4"),
            Set {
                kind: SetKind::Ranges(Family::V4),
                elements,
            },
        );
    }
    let t = Instant::now();
    nft(&ns, &rs.render_replace())?;
    println!("{sets} interval sets loaded by nft -f in {:?}", t.elapsed());

    let set = format!("in_ns_pol_{}_src4", sets / 2);
    let elem = Element::Range {
        lo: v4(0xc000_0201),
        hi: v4(0xc000_0201),
    };
    let (mut nft_add, mut nft_del) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for (script, out) in [
            (
                format!("add element inet ferry_policy {set} {{ 192.0.2.1 }}"),
                &mut nft_add,
            ),
            (
                format!("delete element inet ferry_policy {set} {{ 192.0.2.1 }}"),
                &mut nft_del,
            ),
        ] {
            let t = Instant::now();
            nft(&ns, &script)?;
            out.push(t.elapsed());
        }
    }
    let change = |removed: Vec<Element>, added: Vec<Element>| SetChange {
        family: TableFamily::Inet,
        set: set.clone(),
        kind: SetKind::Ranges(Family::V4),
        removed,
        added,
    };
    let (add, del) = (change(vec![], vec![elem]), change(vec![elem], vec![]));
    // Timed inside the namespace's thread: apply alone, no process start.
    let timed = ferry_testns::inside::run(&ns, move || {
        let (mut a, mut d) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let t = Instant::now();
            ferry_nft_elements::apply(std::slice::from_ref(&add)).map_err(|e| e.to_string())?;
            a.push(t.elapsed());
            let t = Instant::now();
            ferry_nft_elements::apply(std::slice::from_ref(&del)).map_err(|e| e.to_string())?;
            d.push(t.elapsed());
        }
        Ok::<_, String>((a, d))
    });
    let (apply_add, apply_del) = timed?;
    println!("one element, one set of {sets} (median of 5):");
    println!(
        "  nft -f (ip netns exec nft -f -): add {:?}, delete {:?}",
        median(nft_add),
        median(nft_del)
    );
    println!(
        "  apply:                           add {:?}, delete {:?}",
        median(apply_add),
        median(apply_del)
    );

    // Every set at once: one batch of `sets` messages and as many acks.
    let all: Vec<SetChange> = (0..sets)
        .map(|i| SetChange {
            family: TableFamily::Inet,
            set: format!("in_ns_pol_{i}_src4"),
            kind: SetKind::Ranges(Family::V4),
            removed: vec![],
            added: vec![elem],
        })
        .collect();
    let t = ferry_testns::inside::run(&ns, move || {
        let t = Instant::now();
        ferry_nft_elements::apply(&all).map(|()| t.elapsed())
    })
    .map_err(|e| e.to_string())?;
    let listed = ns.sh("nft list table inet ferry_policy | grep -c 192.0.2.1");
    println!(
        "  apply, one element to each of the {sets} sets in one batch: {t:?} ({} sets list it)",
        listed.trim()
    );
    Ok(())
}
