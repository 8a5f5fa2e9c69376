//! "Trust nothing": the plugin's files, input and teardown under hostile conditions. Each
//! test reproduces a way the plugin was once made to misbehave (issue 10) and shows it
//! cannot happen any more. Everything runs the built binaries as a runtime does.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::cni::{
    exec, ferry_conf, hold_reaper_name, host_veth, ipam_conf, ipam_plugin, NameHold, Node, Reply,
};
use ferry_tests::netns::Netns;
use ferry_tests::{bin, needs_root};
use serde_json::{json, Value};

fn pod() -> Netns {
    Netns::new("fyt")
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o777
}

/// An IPAM ADD with the umask cleared, as a runtime started with a careless umask would.
fn ipam_add_umask0(conf: &str, cid: &str) -> Reply {
    let mut cmd = ipam_plugin("ADD", cid);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    exec(cmd, conf)
}

#[test]
fn store_files_are_private_whatever_the_umask() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("var/lib/ferry/ipam");
    let conf = ipam_conf(&data, "10.60.0.0/24");
    ipam_add_umask0(&conf, "c1").ok();
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&data.join("allocations.json")), 0o600);
    assert_eq!(mode(&data.join("lock")), 0o600);
    // A store an older ferry left open to everyone is made private by the next write.
    fs::set_permissions(&data, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(data.join("lock"), fs::Permissions::from_mode(0o666)).unwrap();
    ipam_add_umask0(&conf, "c2").ok();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("lock")), 0o600);
    // Nothing else (no temporary) is left beside the store and its lock.
    assert_eq!(fs::read_dir(&data).unwrap().count(), 2);
}

#[test]
fn planted_symlinks_are_never_followed() {
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    let data = d.path().join("ipam");
    fs::create_dir(&data).unwrap();
    let conf = ipam_conf(&data, "10.61.0.0/24");

    // The temporary file's old fixed name, pointing at another file: root used to write
    // the new store through it.
    symlink(&victim, data.join(".allocations.json.tmp")).unwrap();
    ipam_add_umask0(&conf, "t1").ok();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");

    // The store or its lock a link: refused, naming it; the target untouched.
    for (i, planted) in ["allocations.json", "lock"].into_iter().enumerate() {
        let dir = d.path().join(format!("ipam-{planted}"));
        fs::create_dir(&dir).unwrap();
        symlink(&victim, dir.join(planted)).unwrap();
        let r = ipam_add_umask0(&ipam_conf(&dir, &format!("10.61.{}.0/24", i + 1)), "t2");
        assert_eq!(r.err_code(), 102, "{r:?}");
        assert!(r.msg().contains(planted), "{r:?}");
        assert!(r.msg().contains("symbolic link"), "{r:?}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(mode(&victim), 0o644, "the link's target keeps its mode");
    }

    // The data directory a link to somewhere else: refused, nothing written there.
    let elsewhere = d.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let linked = d.path().join("linked");
    symlink(&elsewhere, &linked).unwrap();
    let r = ipam_add_umask0(&ipam_conf(&linked, "10.61.3.0/24"), "t4");
    assert_eq!(r.err_code(), 102, "{r:?}");
    assert!(r.msg().contains("symbolic link"), "{r:?}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn a_held_lock_costs_a_bounded_wait_and_code_11() {
    let d = tempfile::tempdir().unwrap();
    let conf = ipam_conf(d.path(), "10.62.0.0/24");
    ipam_add_umask0(&conf, "first").ok();
    // Anyone holding the lock (here: this test) used to stall every ADD forever.
    let lock = fs::File::open(d.path().join("lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let start = Instant::now();
    let mut child = ipam_plugin("ADD", "stalled")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let done = ferry_tests::proc::wait_until(Duration::from_secs(30), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !done {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    drop(held);
    assert!(done, "ADD still waiting for the lock after 30 s");
    let waited = start.elapsed();
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
    let r = Reply {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(r.err_code(), 11, "{r:?}");
    assert!(
        r.msg()
            .contains(&d.path().join("lock").display().to_string()),
        "the error names the lock file: {r:?}"
    );
    // The failed ADD took nothing; once the lock is free ADD works again.
    ipam_add_umask0(&conf, "after").ok();
    let store: Value =
        serde_json::from_slice(&fs::read(d.path().join("allocations.json")).unwrap()).unwrap();
    let holders: Vec<_> = store["allocations"]
        .as_object()
        .unwrap()
        .values()
        .map(|a| a["containerId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert!(!holders.contains(&"stalled".to_string()));
}

fn gc(node: &Node, extra: Value) -> Reply {
    let mut c: Value = serde_json::from_str(&node.conf).unwrap();
    ferry_tests::cni::merge(&mut c, extra);
    node.call("GC", "", None).run(&c.to_string())
}

#[test]
fn gc_without_a_valid_list_frees_nothing() {
    needs_root!();
    let node = Node::new("10.63.0.0/24");
    let p = pod();
    node.add("live", &p).ok();
    for (extra, code) in [
        (json!({}), 7),
        (
            json!({"cni.dev/valid-attachments": {"containerID": "live"}}),
            6,
        ),
        (
            json!({"cni.dev/valid-attachments": [{"containerID": 5}]}),
            6,
        ),
        (json!({"cni.dev/valid-attachments": "all"}), 6),
    ] {
        let r = gc(&node, extra.clone());
        assert_eq!(r.err_code(), code, "{extra}: {r:?}");
        assert_eq!(node.allocations().len(), 1, "{extra} freed an address");
        assert_eq!(node.host_veths().len(), 1, "{extra} deleted a veth");
        assert!(p.has_link("eth0"), "{extra} took the pod's eth0");
    }
    // The same through ferry-ipam as an IPAM plugin.
    let d = tempfile::tempdir().unwrap();
    let conf = ipam_conf(d.path(), "10.63.1.0/24");
    exec(ipam_plugin("ADD", "kept"), &conf).ok();
    let r = exec(ipam_plugin("GC", ""), &conf);
    assert_eq!(r.err_code(), 7, "{r:?}");
    let store = fs::read_to_string(d.path().join("allocations.json")).unwrap();
    assert!(store.contains("kept"), "{store}");
    // An empty list is a real answer: nothing is valid.
    gc(&node, json!({"cni.dev/valid-attachments": []})).ok();
    assert!(node.allocations().is_empty());
    assert!(node.reaped(Some(&p)));
}

/// An ADD that must be refused before any change: the error code, and nothing made.
fn refused(node: &Node, r: &Reply, code: u64, p: &Netns) {
    assert_eq!(r.err_code(), code, "{r:?}");
    assert!(r.stdout.len() < 2000, "an error is short: {r:?}");
    node.assert_nothing_made(p, &format!("code {code}"));
}

#[test]
fn unbounded_input_is_refused_before_anything() {
    needs_root!();
    let node = Node::new("10.64.0.0/24");
    let p = pod();
    // A 70 KB container ID used to panic in the netlink layer after the address and the
    // veth were made, and leave both.
    let huge = "a".repeat(70_000);
    refused(&node, &node.add(&huge, &p), 4, &p);
    refused(&node, &node.add(&"b".repeat(129), &p), 4, &p);
    refused(&node, &node.add("bad/id", &p), 4, &p);
    // Interface names as the kernel takes them.
    for ifname in ["a-name-too-long-", "a/b", "..", "e th0", ""] {
        let mut c = node.call("ADD", "ifn", Some(&p));
        c.ifname = ifname;
        refused(&node, &c.run(&node.conf), 4, &p);
    }
    // The 128-byte maximum itself works, alias and all.
    let max = "c".repeat(128);
    let r = node.add(&max, &p).ok();
    let veth = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    let shown = node.host.sh(&format!("ip -d link show dev {veth}"));
    assert!(shown.contains(&format!("alias ferry/ferrytest/{max}/eth0")));
    node.del(&max, Some(&p)).ok();
    assert!(node.reaped(Some(&p)));
    assert!(node.allocations().is_empty());

    // stdin is read up to 1 MiB.
    let mut big: Value = serde_json::from_str(&node.conf).unwrap();
    big["padding"] = json!("x".repeat(2 << 20));
    refused(
        &node,
        &node.call("ADD", "big", Some(&p)).run(&big.to_string()),
        7,
        &p,
    );
    // A network name longer than the alias can hold.
    let long = ferry_conf(
        "1.1.0",
        node.data.path(),
        json!({"subnet": "10.64.0.0/24"}),
        json!({"name": "n".repeat(101)}),
    );
    refused(&node, &node.call("ADD", "long", Some(&p)).run(&long), 7, &p);
    // A relative dataDir would be a different store for every working directory.
    let rel = ferry_conf(
        "1.1.0",
        Path::new("relative/ipam"),
        json!({"subnet": "10.64.0.0/24"}),
        json!({}),
    );
    let r = node.call("ADD", "rel", Some(&p)).run(&rel);
    refused(&node, &r, 7, &p);
    assert!(r.msg().contains("absolute"), "{r:?}");
    // CNI_NETNS naming the plugin's own namespace: the pod's eth0, its address and a
    // default route would land on the host.
    let mut c = node.call("ADD", "self", None);
    c.netns = Some(node.host.path());
    let r = c.run(&node.conf);
    refused(&node, &r, 4, &p);
    assert!(!node.host.has_link("eth0"), "eth0 made on the host");
    assert!(r.msg().contains("own network namespace"), "{r:?}");
}

#[test]
fn show_never_panics_on_a_hostile_store() {
    let d = tempfile::tempdir().unwrap();
    let huge = "a".repeat(70_000);
    let stores = [
        json!({"version": 1, "pool": {"subnet": "10.1.0.0/24", "gateway": "10.1.0.1",
               "rangeStart": "10.1.0.200", "rangeEnd": "10.1.0.3"},
               "allocations": {"10.1.0.2": {"containerId": huge, "ifname": "e\nth0",
                               "network": "n\u{1b}[2J", "since": u64::MAX}}}),
        json!({"version": 1, "pool": {"subnet": "0.0.0.0/0", "gateway": "255.255.255.255",
               "rangeStart": "0.0.0.0", "rangeEnd": "255.255.255.255"}, "allocations": {}}),
        json!({"version": 1, "pool": {"subnet": "10.1.0.0/30", "gateway": "10.1.0.9",
               "rangeStart": "10.1.0.1", "rangeEnd": "10.1.0.1"},
               "allocations": {"10.9.9.9": {"containerId": "", "ifname": "",
                               "network": "", "since": 0}}}),
    ];
    for store in stores {
        fs::write(d.path().join("allocations.json"), store.to_string()).unwrap();
        for output in ["table", "json"] {
            let out = Command::new(bin("ferry-ipam"))
                .args(["show", "-o", output, "--data-dir"])
                .arg(d.path())
                .env_remove("CNI_COMMAND")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{output}: {stderr}");
            assert!(
                out.status.code().is_some_and(|c| c <= 2),
                "{output}: {:?} {stderr}",
                out.status
            );
            if output == "table" {
                let widest = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(|l| l.chars().count())
                    .max()
                    .unwrap_or(0);
                assert!(widest < 400, "a {widest}-column table");
            }
        }
    }
}

#[test]
fn a_retried_del_finishes_a_killed_one() {
    needs_root!();
    let node = Node::new("10.65.0.0/24");
    // What a DEL killed right after retiring leaves: the host end down in the reaper's
    // group, the pod's eth0 still holding its address, and no reaper; and the same after
    // an ADD of the attachment renamed the retired veth to a tombstone.
    let killed_states = [
        format!("down group {}", ferry_tests::cni::TOMBSTONE_GROUP),
        "down nomaster name fz00000000000aa".to_string(),
    ];
    for state in &killed_states {
        let p = pod();
        let r = node.add("half", &p).ok();
        let live = r["interfaces"][1]["name"].as_str().unwrap().to_string();
        node.host.sh(&format!("ip link set {live} {state}"));
        node.del("half", Some(&p)).ok();
        assert!(
            node.reaped(Some(&p)),
            "the retried DEL after `{state}` left {:?} on the host, pod eth0 {}",
            node.host.links(),
            p.has_link("eth0")
        );
        assert!(node.allocations().is_empty());
    }
    // A tombstone of another attachment is not this DEL's to take.
    let q = pod();
    let r = node.add("other", &q).ok();
    let live = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    node.host.sh(&format!(
        "ip link set {live} down nomaster name fz00000000000bb"
    ));
    node.del("half", None).ok();
    std::thread::sleep(Duration::from_millis(300));
    assert!(node.host.has_link("fz00000000000bb"));
    node.del("other", Some(&q)).ok();
    assert!(node.reaped(Some(&q)));
}

#[test]
fn a_burst_of_dels_is_reaped_in_batches() {
    needs_root!();
    let node = Node::new("10.66.0.0/24");
    let pods = node.add_pods("fyt", "burst", 24);
    let start = Instant::now();
    std::thread::scope(|s| {
        for chunk in pods.chunks(6).enumerate() {
            let node = &node;
            s.spawn(move || {
                let (c, ps) = chunk;
                for (j, p) in ps.iter().enumerate() {
                    node.del(&format!("burst{}", c * 6 + j), Some(p)).ok();
                }
            });
        }
    });
    let gone = ferry_tests::proc::wait_until(Duration::from_secs(2), || {
        ferry_tests::cni::tombstones(&node.host).is_empty()
    });
    assert!(
        gone,
        "tombstones 2 s after the last DEL: {:?}",
        node.host.links()
    );
    assert!(node.allocations().is_empty());
    assert!(pods.iter().all(|p| !p.has_link("eth0")));
    eprintln!(
        "24 DELs, 4 at a time, all reaped after {:?}",
        start.elapsed()
    );
}

#[test]
fn a_squatter_on_the_reapers_name_keeps_no_veth() {
    needs_root!();
    let node = Node::new("10.67.0.0/24");
    let (uid, gid) = ferry_tests::cni::nobody();
    let name = format!(
        "@{}",
        String::from_utf8_lossy(ferry_tests::cni::REAPER_SOCKET)
    );
    // The datagram one first: how the name was squatted while the reaper's socket was a
    // datagram one (the veth stayed, down, in the group, on the bridge).
    for how in [NameHold::Datagram, NameHold::Listening, NameHold::Bound] {
        // No reaper still lingering on the name from the case before.
        assert!(
            ferry_tests::proc::wait_until(Duration::from_secs(5), || {
                !ferry_tests::cni::reaper_name_held(&node.host)
            }),
            "a reaper held on to its name"
        );
        let squatter = hold_reaper_name(&node.host, how, uid, gid);
        let p = pod();
        let veth = host_veth(&node.add("squat", &p).ok());
        let del = node.del("squat", Some(&p));
        del.ok();
        let said: Vec<&str> = del.stderr.lines().filter(|l| l.contains(&name)).collect();
        if how == NameHold::Datagram {
            // Another socket type's name: the reaper binds its own, and reaps.
            assert!(said.is_empty(), "{how:?}: {del:?}");
        } else {
            // Not trusted: the DEL deleted the veth itself before it returned, and said
            // so once, naming the squatter.
            assert!(
                !node.host.has_link(&veth),
                "{how:?}: {veth} outlived its DEL: {del:?}"
            );
            let named = format!("pid {} (uid {uid})", squatter.pid());
            assert!(
                said.len() == 1 && said[0].contains(&named) && said[0].contains("not trusted"),
                "{how:?}: expected one line naming {named}: {del:?}"
            );
        }
        let gone =
            ferry_tests::proc::wait_until(Duration::from_secs(1), || !node.host.has_link(&veth));
        assert!(
            gone,
            "{how:?}: {veth} still there 1 s after DEL: {:?}",
            node.host.links()
        );
        assert!(node.reaped(Some(&p)), "{how:?}");
        assert!(node.allocations().is_empty(), "{how:?}");
        drop(squatter);
    }
}
