//! The IPAM store under SIGKILL at random instants: every ADD that reported success is in
//! the store, the store always parses, no address is given twice, and the lock is never
//! left held. Plugin-mode `ferry-ipam` needs no root: the store is a temporary directory.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::bin;
use serde_json::Value;

fn add(dir: &std::path::Path, cid: &str) -> std::process::Child {
    let mut child = Command::new(bin("ferry-ipam"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry-ipam");
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"crash","type":"ferry","ipam":{{"type":"ferry-ipam","subnet":"10.90.0.0/20","dataDir":"{}"}}}}"#,
        dir.display()
    );
    use std::io::Write;
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes());
    child
}

#[test]
fn the_store_survives_sigkill_at_any_instant() {
    let dir = tempfile::tempdir().unwrap();
    let mut seed: u64 = 0x5eed;
    let mut completed = Vec::new();
    for i in 0..300 {
        let cid = format!("k{i}");
        let mut child = add(dir.path(), &cid);
        // A pseudo-random delay from 0 to ~3 ms: before, during and after the write.
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_micros((seed >> 33) % 3000));
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        if out.status.success() {
            let v: Value =
                serde_json::from_slice(&out.stdout).expect("a finished ADD prints its result");
            let ip = v["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string();
            completed.push((cid, ip));
        }
    }
    // Whatever instant each was killed at, the store parses...
    let store: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("allocations.json")).unwrap())
            .expect("allocations.json parses after the crashes");
    let allocs = store["allocations"].as_object().expect("allocations");
    // ...every ADD that reported success is in it with the address it reported...
    for (cid, ip) in &completed {
        assert_eq!(
            allocs.get(ip).map(|a| a["containerId"].as_str().unwrap()),
            Some(cid.as_str()),
            "{cid} {ip}"
        );
    }
    // ...no attachment holds two addresses (addresses are the map's keys: never shared)...
    let holders: HashSet<&str> = allocs
        .values()
        .map(|a| a["containerId"].as_str().unwrap())
        .collect();
    assert_eq!(holders.len(), allocs.len());
    // ...the lock is not left held: one more ADD completes...
    let out = add(dir.path(), "after").wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // ...and nothing accumulates beside the store but at most one stale temporary.
    let extra: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "allocations.json" && n != "lock")
        .collect();
    assert!(
        extra.len() <= 1 && extra.iter().all(|n| n == ".allocations.json.tmp"),
        "{extra:?}"
    );
    eprintln!(
        "{} of 300 ADDs finished before their SIGKILL; {} allocations in the store",
        completed.len(),
        allocs.len()
    );
}
