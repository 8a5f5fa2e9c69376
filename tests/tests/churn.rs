//! Churn: thousands of ADD/DEL by parallel workers, with SIGKILL sent at random instants
//! into some plugin processes (the runtime then retries DEL, as kubelet does), some DELs
//! lost on purpose, then a GC with the list of the attachments still valid. Afterwards:
//! no address was ever live on two attachments, the store holds exactly the valid
//! attachments, and the host holds exactly their veths: nothing leaked, no tombstone.
//!
//! `FERRY_CHURN=N` sets the number of attachments (default 10,000, which took 2 min 41 s
//! on the 2-core development machine with other work running; set a smaller N where CI
//! is slower).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_tests::cni::{in_host, Node, Reply};
use ferry_tests::netns::Netns;
use ferry_tests::{bin, cni, needs_root};
use serde_json::{json, Value};

const WORKERS: usize = 8;
/// One attachment in this many is never DELed: the runtime "lost" it, GC must free it.
const LOST_EVERY: usize = 97;
/// One call in this many is killed at a random instant.
const KILL_EVERY: usize = 5;

/// What the workers saw: for each address, when it was live and for whom.
#[derive(Default)]
struct Log {
    /// (ip, container ID, ADD reported at, DEL started at)
    live: Vec<(String, String, Instant, Option<Instant>)>,
    /// SIGKILLs sent (a call may have finished before its signal arrived).
    killed: usize,
    calls: usize,
}

/// When an address was live for one attachment: (ADD reported, DEL started, container).
type Span<'a> = (Instant, Option<Instant>, &'a str);

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Who: the container ID and the interface name. A worker reuses its pod namespace with
/// a new interface name each time (a runtime gives each sandbox a new namespace; making
/// thousands would measure `ip netns`, and the last DEL's pod end may still be reaped).
type Who<'a> = (&'a str, &'a str);

/// One plugin call; with `kill`, SIGKILL after that many microseconds. `None` when killed.
fn call(
    node: &Node,
    host: &File,
    command: &str,
    (cid, ifname): Who<'_>,
    pod: &Netns,
    kill: Option<u64>,
) -> Option<Reply> {
    let mut cmd = in_host(host, &bin("ferry"));
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", cni::cni_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ferry");
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(node.conf.as_bytes());
    if let Some(us) = kill {
        std::thread::sleep(Duration::from_micros(us));
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait ferry");
    let reply = Reply {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // Killed before it finished: the runtime saw no reply.
    out.status.code().map(|_| reply)
}

/// DEL until one finishes, as a runtime retries it; the first try may be killed.
fn del_until_done(node: &Node, host: &File, who: Who<'_>, pod: &Netns, kill: Option<u64>) {
    let mut kill = kill;
    for _ in 0..5 {
        if let Some(r) = call(node, host, "DEL", who, pod, kill.take()) {
            r.ok();
            return;
        }
    }
    panic!("DEL {who:?} never finished");
}

#[test]
fn churn_with_sigkill_then_gc_leaves_exactly_the_valid_attachments() {
    needs_root!();
    let total: usize = std::env::var("FERRY_CHURN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let node = Node::new("10.70.0.0/20");
    let host = File::open(node.host.path()).expect("open host netns");
    let log = Mutex::new(Log::default());
    let lost = Mutex::new(Vec::<(String, String, Netns)>::new());
    let valid = Mutex::new(Vec::<(String, String, Netns)>::new());
    let start = Instant::now();

    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (node, host, log, lost, valid) = (&node, &host, &log, &lost, &valid);
            s.spawn(move || {
                let mut rng = Rng(0x5eed ^ ((w as u64 + 1) * 0x9e37_79b9));
                let mut pod = Netns::new("fyc");
                let mut i = w;
                while i < total {
                    let cid = format!("churn-{i}");
                    let ifname = format!("e{}", (i / WORKERS) % 1000);
                    let who = (cid.as_str(), ifname.as_str());
                    let kill_add = (rng.below(KILL_EVERY as u64) == 0).then(|| rng.below(6000));
                    let added = call(node, host, "ADD", who, &pod, kill_add);
                    let mut l = log.lock().unwrap();
                    l.calls += 1;
                    l.killed += usize::from(added.is_none());
                    let reported = added.as_ref().map(|r| cni::pod_ip(&r.ok()));
                    let entry = l.live.len();
                    if let Some(ip) = &reported {
                        l.live.push((ip.clone(), cid.clone(), Instant::now(), None));
                    }
                    drop(l);
                    let last = i + WORKERS >= total;
                    if last && reported.is_some() {
                        // Still running at the end: GC must keep it.
                        let pod = std::mem::replace(&mut pod, Netns::new("fyc"));
                        valid.lock().unwrap().push((cid, ifname, pod));
                        break;
                    }
                    if i % LOST_EVERY == 0 && reported.is_some() {
                        // The runtime lost this DEL: the pod's namespace stays as it is.
                        let pod = std::mem::replace(&mut pod, Netns::new("fyc"));
                        lost.lock().unwrap().push((cid, ifname, pod));
                        i += WORKERS;
                        continue;
                    }
                    if reported.is_some() {
                        log.lock().unwrap().live[entry].3 = Some(Instant::now());
                    }
                    let kill_del = (rng.below(KILL_EVERY as u64) == 0).then(|| rng.below(6000));
                    del_until_done(node, host, who, &pod, kill_del);
                    let mut l = log.lock().unwrap();
                    l.calls += 1;
                    l.killed += usize::from(kill_del.is_some());
                    drop(l);
                    i += WORKERS;
                }
            });
        }
    });
    let churned = start.elapsed();

    // No address was live on two attachments at once (as the runtime saw them).
    let log = log.into_inner().unwrap();
    let mut by_ip: BTreeMap<&str, Vec<Span<'_>>> = BTreeMap::new();
    for (ip, cid, from, to) in &log.live {
        by_ip
            .entry(ip.as_str())
            .or_default()
            .push((*from, *to, cid.as_str()));
    }
    for (ip, mut spans) in by_ip {
        spans.sort();
        for pair in spans.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                a.1.is_some_and(|end| end <= b.0),
                "{ip} was live on {} and {} at once",
                a.2,
                b.2
            );
        }
    }

    let valid = valid.into_inner().unwrap();
    let lost = lost.into_inner().unwrap();
    let mut conf: Value = serde_json::from_str(&node.conf).unwrap();
    conf["cni.dev/valid-attachments"] = json!(valid
        .iter()
        .map(|(cid, ifname, _)| json!({"containerID": cid, "ifname": ifname}))
        .collect::<Vec<_>>());
    node.call("GC", "", None).run(&conf.to_string()).ok();

    // The store holds exactly the valid attachments, each address once.
    let allocs = node.allocations();
    let holders: Vec<String> = allocs
        .iter()
        .map(|a| a["containerId"].as_str().unwrap().to_string())
        .collect();
    let want: HashSet<String> = valid.iter().map(|(c, _, _)| c.clone()).collect();
    assert_eq!(holders.len(), want.len(), "{holders:?}");
    assert_eq!(holders.iter().cloned().collect::<HashSet<_>>(), want);
    let ips: HashSet<&str> = allocs.iter().map(|a| a["ip"].as_str().unwrap()).collect();
    assert_eq!(ips.len(), allocs.len());
    // The host holds exactly their veths; no tombstone stays.
    let gone = ferry_tests::proc::wait_until(Duration::from_secs(2), || {
        ferry_tests::cni::tombstones(&node.host).is_empty()
    });
    assert!(gone, "tombstones left: {:?}", node.host.links());
    assert_eq!(
        node.host_veths().len(),
        valid.len(),
        "{:?}",
        node.host_veths()
    );
    // The valid pods keep their interface and their own distinct address; the lost
    // ones have been torn down.
    let mut seen = HashSet::new();
    for (cid, ifname, pod) in &valid {
        let a = pod.sh(&format!("ip -o -4 addr show dev {ifname}"));
        let ip = a.split_whitespace().nth(3).unwrap_or_default().to_string();
        assert!(seen.insert(ip.clone()), "{cid}: {ip} twice");
    }
    for (cid, ifname, pod) in &lost {
        assert!(
            !pod.has_link(ifname),
            "lost attachment {cid} kept its {ifname}"
        );
    }
    eprintln!(
        "churn: {total} attachments by {WORKERS} workers in {churned:.1?}: {} calls, {} SIGKILLs sent, {} lost DELs freed by GC, {} valid kept",
        log.calls,
        log.killed,
        lost.len(),
        valid.len()
    );
    for (cid, ifname, pod) in &valid {
        del_until_done(&node, &host, (cid, ifname), pod, None);
    }
}
