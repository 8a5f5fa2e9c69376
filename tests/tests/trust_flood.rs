//! A flood of lease records (issue 10, "Trust nothing", at scale): whoever can write etcd
//! can write thousands of records at once, valid and hostile mixed. Every daemon must
//! stay within bounded CPU and memory, give a refused record no route, neighbour or FDB
//! entry, log the flood in a bounded number of lines, and keep its pods talking.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ferry_tests::cluster::{Cluster, Datastore, Node};
use ferry_tests::needs_root;

/// Records written at once.
const FLOOD: usize = 5000;
/// Writers at once, each a stream of single puts: one revision (and one watch event) per
/// record, the hardest shape for a daemon that lists the leases again on each event.
const WRITERS: usize = 32;
/// CPU time one daemon may spend on the flood, its deletion and the settling after:
/// measured at 4.1 to 4.6 s per daemon on the 2-core test machine (debug build, the
/// machine busy): about 1 s for the flood (1,000 peers' routes, neighbours and FDB
/// entries made, listings of up to 5,000 records), 1 s for its deletion, the rest the
/// resyncs (every 2 s here) of a node with 1,000 more peers; 5 s at rest cost 0.02 s.
/// About four times that, for a busier machine; a daemon that listed every record again
/// for each one written would parse 12.5 million records (5,000 listings of 2,500 on
/// average), not one listing per batch of watch events.
const CPU_BOUND: Duration = Duration::from_secs(20);
/// Peak resident memory of one daemon: measured at 41 to 43 MiB (about 30 before the
/// flood: the runtime, the etcd and API clients, TLS). 5,000 records are under 1 MiB of
/// JSON; the bound leaves room for the allocator's slack and nothing like a copy of the
/// listing per record or per event.
const PEAK_RSS_BOUND_KIB: u64 = 96 * 1024;
/// Log lines about refused records one daemon may write for the whole flood, which
/// refuses 4,000: the daemon names 20 a minute one by one and sums up the rest in a line
/// at most every 10 s (`overlayd/src/refusals.rs`); the test lasts well under a minute.
const REFUSAL_LINES_BOUND: usize = 26;

/// The `i`th record's subnet: a /24 of 10.96.0.0/11 from 10.104.0.0 on, above the
/// subnets the nodes lease (they pick among the first free ones, 10.96.x).
fn s(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 104, 0, 0)) + ((i as u32) << 8))
}

fn mac(tag: u8, i: usize) -> String {
    format!(
        "0e:{tag:02x}:00:00:{:02x}:{:02x}",
        (i >> 8) & 0xff,
        i & 0xff
    )
}

fn record(node: &str, subnet: &str, ip: &str, mac: &str) -> String {
    format!(r#"{{"node":"{node}","subnet":"{subnet}","publicIp":"{ip}","vtepMac":"{mac}"}}"#)
}

/// The flood: (key, value) per record, and what a node may program for it: the valid
/// records' subnets and FDB entries (VTEP MAC, public IP).
struct Flood {
    records: Vec<(String, String)>,
    subnets: BTreeSet<String>,
    fdb: BTreeSet<(String, String)>,
}

/// Two in ten valid; the rest each of a kind of lie: a bad VTEP MAC, a public IP in the
/// cluster CIDR, a key that names another subnet than its value, a misaligned or
/// overlapping subnet, a live node's VTEP MAC or name, garbage, a reserved public IP, a
/// subnet outside the cluster CIDR or a node name that is none.
fn flood(c: &Cluster) -> Flood {
    let real: Vec<(String, String)> = c
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.vtep_mac()))
        .collect();
    let key = |subnet: &str| c.lease_key(subnet);
    let mut f = Flood {
        records: Vec::new(),
        subnets: BTreeSet::new(),
        fdb: BTreeSet::new(),
    };
    for i in 0..FLOOD {
        let sub = format!("{}/24", s(i));
        let stranger = format!("198.19.{}.{}", i >> 8, i & 0xff);
        let (k, v) = match i % 10 {
            0 | 1 => {
                let ip = format!("198.18.{}.{}", i >> 8, i & 0xff);
                let m = mac(0xf1, i);
                f.subnets.insert(sub.clone());
                f.fdb.insert((m.clone(), ip.clone()));
                (key(&sub), record(&format!("v{i}"), &sub, &ip, &m))
            }
            2 => {
                let bad = [
                    "zz:00:00:00:00:01",
                    "01:00:5e:00:00:01",
                    "00:00:00:00:00:00",
                    "0e:00:00:00:01",
                    "0e:bad",
                ][i / 10 % 5];
                (key(&sub), record(&format!("m{i}"), &sub, &stranger, bad))
            }
            3 => {
                // Inside the cluster CIDR: a live node's subnet, or the record's own.
                let ip = if i % 20 == 3 {
                    "10.96.0.1".to_string()
                } else {
                    s(i).to_string()
                };
                (
                    key(&sub),
                    record(&format!("c{i}"), &sub, &ip, &mac(0xe3, i)),
                )
            }
            4 => {
                // The next record's subnet (itself refused: see 5).
                let other = format!("{}/24", s(i + 1));
                (
                    key(&sub),
                    record(&format!("k{i}"), &other, &stranger, &mac(0xe4, i)),
                )
            }
            5 => {
                let odd = [
                    format!("{}/25", s(i)),
                    format!("{}/23", s(i)),
                    format!("{}/24", Ipv4Addr::from(u32::from(s(i)) + 5)),
                ][i / 10 % 3]
                    .clone();
                (
                    key(&odd),
                    record(&format!("o{i}"), &odd, &stranger, &mac(0xe5, i)),
                )
            }
            6 => {
                // A live node's MAC or name: the live node's record is older and wins.
                let (name, m) = &real[i / 10 % real.len()];
                let v = if i % 20 == 6 {
                    record(&format!("n{i}"), &sub, &stranger, m)
                } else {
                    record(name, &sub, &stranger, &mac(0xe6, i))
                };
                (key(&sub), v)
            }
            7 => {
                let garbage = [
                    "not json".to_string(),
                    r#"{"node":"#.to_string(),
                    "[]".to_string(),
                    "null".to_string(),
                    format!(r#"{{"node":"g{i}","subnet":"x"}}"#),
                    "{".repeat(900),
                ][i / 10 % 6]
                    .clone();
                // Under a key that names a free subnet (its entries "kept": none), or none.
                let k = if i % 20 == 7 {
                    key(&sub)
                } else {
                    format!("{}/v1/leases/junk-{i}", c.prefix)
                };
                (k, garbage)
            }
            8 => {
                let ip = [
                    "0.0.0.0",
                    "127.0.0.1",
                    "224.0.0.5",
                    "255.255.255.255",
                    "240.0.0.1",
                ][i / 10 % 5];
                (key(&sub), record(&format!("r{i}"), &sub, ip, &mac(0xe8, i)))
            }
            _ => {
                if i % 20 == 9 {
                    let out = format!("172.16.{}.0/24", i / 20 % 256);
                    (
                        key(&out),
                        record(&format!("x{i}"), &out, &stranger, &mac(0xe9, i)),
                    )
                } else {
                    let name = if i % 40 == 19 { "" } else { "a/b" };
                    (key(&sub), record(name, &sub, &stranger, &mac(0xe9, i)))
                }
            }
        };
        f.records.push((k, v));
    }
    f
}

/// Puts (or, with `delete`, deletes) every record, `WRITERS` streams of single requests
/// at once, from etcd's own namespace.
fn write_all(c: &Cluster, records: &[(String, String)], delete: bool) -> Duration {
    let ep = c.etcd.endpoint();
    let records = records.to_vec();
    let start = Instant::now();
    ferry_tests::inside::block_on(&c.etcd.host, move || async move {
        let client = etcd_client::Client::connect([ep.as_str()], None)
            .await
            .expect("connect to etcd");
        let chunk = records.len().div_ceil(WRITERS);
        let writers: Vec<_> = records
            .chunks(chunk)
            .map(|part| {
                let mut cl = client.clone();
                let part = part.to_vec();
                tokio::spawn(async move {
                    for (k, v) in part {
                        if delete {
                            cl.delete(k, None).await.expect("delete");
                        } else {
                            cl.put(k, v, None).await.expect("put");
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.expect("writer");
        }
    });
    start.elapsed()
}

/// A daemon's CPU time so far (user + system) and its peak and current resident memory
/// (KiB), from /proc.
#[derive(Debug, Clone, Copy)]
struct Usage {
    cpu: Duration,
    peak_kib: u64,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The fields after the command's closing parenthesis: state is field 3, utime 14,
    // stime 15.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        rest[11].parse::<u64>().expect("utime") + rest[12].parse::<u64>().expect("stime");
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        cpu: Duration::from_millis(ticks * 1000 / hz),
        peak_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
    }
}

fn pid(n: &Node) -> u32 {
    let pid = n.daemon.as_ref().expect("daemon running").pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "ferry-overlayd",
        "pid {pid} is the daemon itself"
    );
    pid
}

/// What `n` has programmed: route destinations (ferry's, and every route on the VXLAN
/// device), permanent neighbours and FDB entries (MAC, destination) on the VXLAN device.
struct Programmed {
    routes: BTreeSet<String>,
    neighs: BTreeSet<String>,
    fdb: BTreeSet<(String, String)>,
}

fn programmed(n: &Node) -> Programmed {
    let first = |out: String| -> BTreeSet<String> {
        out.lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    };
    let mut routes = first(n.ferry_routes());
    routes.extend(first(n.overlay_routes()));
    let neighs = first(
        n.host
            .sh("ip neigh show dev ferry.1 nud permanent 2>/dev/null || true"),
    );
    let fdb = n
        .overlay_fdb()
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let dst = w.iter().position(|x| *x == "dst")?;
            Some((w[0].to_string(), w.get(dst + 1)?.to_string()))
        })
        .collect();
    Programmed {
        routes,
        neighs,
        fdb,
    }
}

/// What node `i` may program: every other node's subnet, VTEP MAC and address, and the
/// valid records' (`valid`: whether the flood is in etcd).
fn allowed(c: &Cluster, i: usize, f: &Flood, valid: bool) -> Programmed {
    let mut routes = BTreeSet::new();
    let mut fdb = BTreeSet::new();
    for (_, n) in c.nodes.iter().enumerate().filter(|(j, _)| *j != i) {
        routes.insert(n.subnet());
        fdb.insert((n.vtep_mac(), n.ip.clone()));
    }
    if valid {
        routes.extend(f.subnets.iter().cloned());
        fdb.extend(f.fdb.iter().cloned());
    }
    let neighs = routes
        .iter()
        .map(|r| r.split('/').next().unwrap_or(r).to_string())
        .collect();
    Programmed {
        routes,
        neighs,
        fdb,
    }
}

/// Nothing beyond `may` (what node `i` may program), and with `want`, exactly that.
fn check(c: &Cluster, i: usize, may: &Programmed, want: Option<&Programmed>) -> Result<(), String> {
    let have = programmed(&c.nodes[i]);
    let name = &c.nodes[i].name;
    let extra = |what: &str, have: &BTreeSet<String>, may: &BTreeSet<String>| {
        let x: Vec<&String> = have.difference(may).take(5).collect();
        if x.is_empty() {
            Ok(())
        } else {
            Err(format!("{name}: {what} no valid record asks for: {x:?}"))
        }
    };
    extra("routes", &have.routes, &may.routes)?;
    extra("neighbours", &have.neighs, &may.neighs)?;
    let fdb: Vec<_> = have.fdb.difference(&may.fdb).take(5).collect();
    if !fdb.is_empty() {
        return Err(format!(
            "{name}: FDB entries no valid record asks for: {fdb:?}"
        ));
    }
    match want {
        Some(w) if have.routes != w.routes || have.neighs != w.neighs || have.fdb != w.fdb => {
            Err(format!(
                "{name}: not converged: {} routes for {}, {} neighbours for {}, {} FDB entries for {}",
                have.routes.len(),
                w.routes.len(),
                have.neighs.len(),
                w.neighs.len(),
                have.fdb.len(),
                w.fdb.len()
            ))
        }
        _ => Ok(()),
    }
}

/// Waits until every node has exactly what the flood's valid records (`valid`) and the
/// other nodes ask for, failing at once on anything no valid record asks for. Polled
/// every 250 ms: each look lists thousands of entries, on the daemons' CPUs.
fn wait_converged(c: &Cluster, f: &Flood, valid: bool, timeout: Duration) -> Duration {
    let start = Instant::now();
    for i in 0..c.nodes.len() {
        let (may, want) = (allowed(c, i, f, true), allowed(c, i, f, valid));
        loop {
            match check(c, i, &may, Some(&want)) {
                Ok(()) => break,
                Err(e) if e.contains("not converged") => {
                    assert!(start.elapsed() < timeout, "{e}\n{}", c.nodes[i].log());
                }
                Err(e) => panic!("{e}\n{}", c.nodes[i].log()),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    start.elapsed()
}

/// The daemon's log lines about refused records (one by one, or summed up).
fn refusal_lines(n: &Node) -> usize {
    n.log()
        .lines()
        .filter(|l| l.contains("lease record refused") || l.contains("lease records refused"))
        .count()
}

#[test]
fn a_flood_of_lease_records_costs_bounded_cpu_memory_and_log_lines() {
    needs_root!();
    // The flood is of etcd records, written past the daemons.
    let c = Cluster::builder()
        .datastore(Datastore::Etcd)
        .nodes(3)
        .cluster_cidr("10.96.0.0/11")
        .build();
    let pods: Vec<_> = (0..3)
        .map(|i| c.nodes[i].add_pod(&format!("f{i}")))
        .collect();
    for p in &pods {
        c.wait_reachable(&pods[0].ns, &p.ip);
    }
    let f = flood(&c);
    let pids: Vec<u32> = c.nodes.iter().map(pid).collect();
    // What a daemon spends at rest (resyncs every 2 s), for scale.
    let rest: Vec<Usage> = pids.iter().map(|p| usage(*p)).collect();
    std::thread::sleep(Duration::from_secs(5));
    let before: Vec<Usage> = pids.iter().map(|p| usage(*p)).collect();
    let lines_before: Vec<usize> = c.nodes.iter().map(refusal_lines).collect();

    let wrote = write_all(&c, &f.records, false);
    // Nothing refused is ever programmed, on the way either.
    for i in 0..c.nodes.len() {
        if let Err(e) = check(&c, i, &allowed(&c, i, &f, true), None) {
            panic!("{e}\n{}", c.nodes[i].log());
        }
    }
    let converged = wait_converged(&c, &f, true, Duration::from_secs(120));
    let during: Vec<Usage> = pids.iter().map(|p| usage(*p)).collect();
    for p in &pods {
        c.wait_reachable(&pods[1].ns, &p.ip);
    }
    // The daemons count what they refused: every record but the valid ones.
    let refused = (FLOOD - f.subnets.len()) as u64;
    for i in 0..c.nodes.len() {
        assert_eq!(
            c.metric(i, "ferry_leases_refused"),
            refused,
            "{}",
            c.metrics(i)
        );
    }

    // The flood deleted at once: back to the three nodes.
    let deleted = write_all(&c, &f.records, true);
    let back = wait_converged(&c, &f, false, Duration::from_secs(120));
    let gone: Vec<Usage> = pids.iter().map(|p| usage(*p)).collect();
    for p in &pods {
        c.wait_reachable(&pods[2].ns, &p.ip);
    }
    // Two resyncs at rest.
    std::thread::sleep(Duration::from_secs(5));
    let after: Vec<Usage> = pids.iter().map(|p| usage(*p)).collect();
    eprintln!(
        "{FLOOD} records written in {:.1} s, converged {:.1} s later; deleted in {:.1} s, \
         converged {:.1} s later",
        wrote.as_secs_f64(),
        converged.as_secs_f64(),
        deleted.as_secs_f64(),
        back.as_secs_f64()
    );
    for (i, n) in c.nodes.iter().enumerate() {
        let cpu = after[i].cpu - before[i].cpu;
        let lines = refusal_lines(n) - lines_before[i];
        eprintln!(
            "{}: CPU {:.2} s (flood {:.2} s; 5 s at rest before: {:.2} s; deletion {:.2} s); RSS {} KiB \
             before, {} KiB with the flood, {} KiB after, peak {} KiB; {lines} log lines \
             about refusals",
            n.name,
            cpu.as_secs_f64(),
            (during[i].cpu - before[i].cpu).as_secs_f64(),
            (before[i].cpu - rest[i].cpu).as_secs_f64(),
            (gone[i].cpu - during[i].cpu).as_secs_f64(),
            before[i].rss_kib,
            during[i].rss_kib,
            after[i].rss_kib,
            after[i].peak_kib,
        );
        assert!(cpu <= CPU_BOUND, "{}: {cpu:?} of CPU\n{}", n.name, n.log());
        assert!(
            after[i].peak_kib <= PEAK_RSS_BOUND_KIB,
            "{}: peak RSS {} KiB",
            n.name,
            after[i].peak_kib
        );
        assert!(
            lines <= REFUSAL_LINES_BOUND,
            "{}: {lines} log lines about refusals:\n{}",
            n.name,
            n.log()
        );
        // The rest are summed up, with how many.
        assert!(
            n.log().contains("lease records refused"),
            "{}: no summary:\n{}",
            n.name,
            n.log()
        );
    }
    let told: Vec<String> = c.nodes[0]
        .log()
        .lines()
        .filter(|l| l.contains("lease records refused"))
        .map(str::to_string)
        .collect();
    eprintln!("node0's summaries:\n{}", told.join("\n"));
    for (i, p) in pods.iter().enumerate() {
        c.nodes[i].del_pod(p);
    }
}
