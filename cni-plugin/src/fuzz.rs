//! Fuzzing the plugin's parsers: the network configuration (the CNI header, the plugin's
//! keys, the IPAM keys and the pool they resolve to), the `CNI_*` environment and the
//! IPAM store document. cargo-fuzz needs a nightly toolchain, so this is a plain test: a
//! structure-aware generator (mutating the seeds in `fuzz/seeds/` as JSON values, then
//! as bytes) with the properties checked after every case.
//!
//! CI runs a bounded number of cases; `FERRY_FUZZ_SECS=600 cargo test --release -p
//! cni-plugin fuzz -- --nocapture` runs each target for that long. `FERRY_FUZZ_SEED=N`
//! replays a run. A failing case is written to `target/fuzz-failure-*` and printed: add
//! it to `fuzz/seeds/` once fixed.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cni::{Env, Error, NetConf};
use serde_json::{Map, Value};

use crate::config::{IpamKind, PluginConf};

/// A small, fast, reproducible generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "ipam",
    "subnet",
    "rangeStart",
    "rangeEnd",
    "gateway",
    "routes",
    "dst",
    "gw",
    "dataDir",
    "stateDir",
    "bridge",
    "mtu",
    "hairpinMode",
    "rpsCpus",
    "dns",
    "nameservers",
    "prevResult",
    "interfaces",
    "ips",
    "address",
    "interface",
    "sandbox",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
    "containerID",
    "ifname",
    "version",
    "pool",
    "allocations",
    "lastReserved",
    "containerId",
    "network",
    "netns",
    "since",
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

const STRINGS: &[&str] = &[
    "",
    "off",
    "all",
    "0-1,3",
    "8191",
    "8192",
    "3-1",
    "0.3.0",
    "0.4.0",
    "1.0.0",
    "1.1.0",
    "9.9.9",
    "1.0",
    "ferry",
    "ferry-ipam",
    "host-local",
    "ADD",
    "DEL",
    "CHECK",
    "GC",
    "STATUS",
    "VERSION",
    "10.0.0.0/8",
    "10.1.2.0/24",
    "10.1.2.0/30",
    "10.1.2.0/31",
    "10.1.2.5/24",
    "0.0.0.0/0",
    "255.255.255.255/32",
    "1.2.3.4/-1",
    "1.2.3.4/33",
    "::/0",
    "fd00::/64",
    "10.1.2.1",
    "10.1.2.255",
    "10.1.2.0",
    "255.255.255.255",
    "0.0.0.0",
    "999.1.1.1",
    "/",
    "/run/ferry",
    "relative/dir",
    "../../etc",
    "/proc/self/ns/net",
    "eth0",
    ".",
    "..",
    "a/b",
    "e th0",
    "a-name-too-long-",
    "-x",
    "c1",
    "x\u{0}y",
    "\u{202e}rtl",
    "ünï",
];

fn random_string(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 | 1 => rng.pick(STRINGS).to_string(),
        2 => (0..rng.below(24))
            .map(|_| char::from(b' ' + rng.below(95) as u8))
            .collect(),
        3 => (0..rng.below(12))
            .filter_map(|_| char::from_u32(rng.below(0x11_0000) as u32))
            .collect(),
        4 => rng.pick(&["a", "9", "/", "x."]).repeat(rng.below(300)),
        _ => "a".repeat(
            rng.pick(&[15, 16, 100, 101, 128, 129, 256, 70_000])
                .to_owned(),
        ),
    }
}

fn random_number(rng: &mut Rng) -> Value {
    let n: Value = match rng.below(10) {
        0 => (-1).into(),
        1 => 68.into(),
        2 => 65535.into(),
        3 => 65536.into(),
        4 => u32::MAX.into(),
        5 => u64::MAX.into(),
        6 => i64::MIN.into(),
        7 => 0.5.into(),
        8 => 1e308.into(),
        _ => (rng.below(2000) as u64).into(),
    };
    n
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => random_number(rng),
        3 | 4 => Value::String(random_string(rng)),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| (rng.pick(KEYS).to_string(), random_value(rng, depth + 1)))
                .collect::<Map<_, _>>(),
        ),
    }
}

/// Changes one place of `v`: replaced, or a key or element added, removed or changed.
fn mutate(v: &mut Value, rng: &mut Rng, depth: usize) {
    match v {
        Value::Object(m) if !m.is_empty() && rng.chance(70) => {
            let key = m
                .keys()
                .nth(rng.below(m.len()))
                .cloned()
                .unwrap_or_default();
            match rng.below(4) {
                0 => {
                    m.remove(&key);
                }
                1 => {
                    m.insert(rng.pick(KEYS).to_string(), random_value(rng, depth + 1));
                }
                _ => {
                    if let Some(child) = m.get_mut(&key) {
                        mutate(child, rng, depth + 1);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() && rng.chance(70) => {
            let i = rng.below(a.len());
            match rng.below(4) {
                0 => {
                    a.remove(i);
                }
                1 => {
                    let dup = a[i].clone();
                    a.push(dup);
                }
                _ => mutate(&mut a[i], rng, depth + 1),
            }
        }
        _ => *v = random_value(rng, depth),
    }
}

/// A few byte-level changes, so that malformed JSON is exercised too.
fn mutate_bytes(b: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..=rng.below(3) {
        if b.is_empty() {
            b.push(b'{');
            continue;
        }
        let i = rng.below(b.len());
        match rng.below(4) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b.insert(i, rng.below(256) as u8),
            2 => b.truncate(i),
            _ => {
                let end = (i + rng.below(16)).min(b.len());
                let dup = b[i..end].to_vec();
                b.splice(i..i, dup);
            }
        }
    }
}

fn seeds(prefix: &str) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let mut out: Vec<Value> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|err| panic!("seed {}: {err}", e.path().display()))
        })
        .collect();
    assert!(!out.is_empty(), "no {prefix}* seeds in {}", dir.display());
    out.sort_by_key(|v| v.to_string());
    out
}

/// Budget per target: `FERRY_FUZZ_SECS` seconds, or a fixed number of cases for CI.
enum Budget {
    Cases(u64),
    Time(Duration),
}

fn budget() -> Budget {
    match std::env::var("FERRY_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(secs) => Budget::Time(Duration::from_secs(secs)),
        None => Budget::Cases(3000),
    }
}

/// Runs `check` on inputs made from the seeds until the budget is spent; a panic or a
/// broken property is saved and reported with the input that caused it.
fn fuzz(target: &str, seed_prefix: &str, check: impl Fn(&[u8])) {
    let seed = std::env::var("FERRY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    let mut rng = Rng(seed);
    let corpus = seeds(seed_prefix);
    let (start, budget) = (Instant::now(), budget());
    let mut cases = 0u64;
    // The seeds themselves first, unchanged.
    let mut inputs: Vec<Vec<u8>> = corpus.iter().map(|v| v.to_string().into_bytes()).collect();
    loop {
        let done = match budget {
            Budget::Cases(n) => cases >= n,
            Budget::Time(d) => start.elapsed() >= d,
        };
        if done {
            break;
        }
        let input = inputs.pop().unwrap_or_else(|| {
            let mut v = rng.pick(&corpus).clone();
            for _ in 0..=rng.below(4) {
                mutate(&mut v, &mut rng, 0);
            }
            let mut b = v.to_string().into_bytes();
            if rng.chance(15) {
                mutate_bytes(&mut b, &mut rng);
            }
            b
        });
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target")
                .join(format!("fuzz-failure-{target}-{seed}-{cases}.json"));
            let _ = std::fs::write(&file, &input);
            panic!(
                "{target}: case {cases} of seed {seed} failed: {why}\ninput saved to {}: {}",
                file.display(),
                String::from_utf8_lossy(&input[..input.len().min(2000)])
            );
        }
        cases += 1;
    }
    eprintln!(
        "fuzz {target}: {cases} cases in {:.1?} (FERRY_FUZZ_SEED={seed}), no failure",
        start.elapsed()
    );
}

/// Every error is a CNI error a runtime can act on: a known code and a message.
fn check_error(e: &Error) {
    assert!(
        matches!(e.code, 1..=7 | 11 | 50 | 100..=105),
        "unknown code {}: {e}",
        e.code
    );
    assert!(!e.msg.is_empty(), "empty message (code {})", e.code);
}

#[test]
fn fuzz_network_configuration() {
    fuzz("conf", "conf-", |bytes| {
        let conf = match NetConf::parse(bytes) {
            Ok(c) => c,
            Err(e) => return check_error(&e),
        };
        assert!(!conf.name.is_empty() && conf.name.len() <= cni::conf::MAX_NETWORK_NAME);
        assert!(cni::version::is_supported(&conf.cni_version));
        if let Err(e) = conf.valid_attachments() {
            check_error(&e);
        }
        if let Err(e) = conf.prev_result() {
            check_error(&e);
        }
        match PluginConf::parse(&conf) {
            Err(e) => check_error(&e),
            Ok(pc) => {
                assert!(
                    cni::env::validate_ifname(&pc.bridge).is_ok(),
                    "{}",
                    pc.bridge
                );
                assert!(pc.mtu.is_none_or(|m| (68..=65535).contains(&m)));
                if let IpamKind::Ferry(cfg) = &pc.ipam {
                    assert!(cfg.ipam.data_dir().is_absolute());
                    assert!(cfg.state_dir.is_absolute());
                }
            }
        }
        match node_ipam::ops::Config::from_netconf(&conf) {
            Err(e) => check_error(&e),
            // Only a static subnet: without one the pool comes from a file the
            // config names, which a fuzzer must not make the test read.
            Ok(cfg) if cfg.ipam.is_static() => match cfg.pools() {
                Err(e) => check_error(&cni::Error::from(e)),
                Ok(pools) => {
                    for pool in pools.iter() {
                        assert!(pool.start <= pool.end);
                        assert!(pool.capacity() >= 1);
                        assert!(pool.subnet.contains(pool.start) && pool.subnet.contains(pool.end));
                        let ip = node_ipam::allocator::next_free(pool, None, 0, |_| false)
                            .expect("a pool with capacity has a free address");
                        assert!(pool.contains(ip) && ip != pool.gateway);
                    }
                }
            },
            Ok(_) => {}
        }
    });
}

#[test]
fn fuzz_cni_environment() {
    fuzz("env", "env-", |bytes| {
        let Ok(Value::Object(vars)) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect();
        match Env::from_lookup(|k| vars.get(k).cloned()) {
            Err(e) => check_error(&e),
            Ok(env) => {
                if matches!(
                    env.command,
                    cni::Command::Add | cni::Command::Del | cni::Command::Check
                ) {
                    assert!(cni::env::validate_container_id(&env.container_id).is_ok());
                    assert!(env.container_id.len() <= cni::env::MAX_CONTAINER_ID);
                    assert!(cni::env::validate_ifname(&env.ifname).is_ok());
                }
            }
        }
    });
}

#[test]
fn fuzz_store_document() {
    fuzz("store", "store-", |bytes| {
        let path = Path::new("/fuzz/allocations.json");
        match node_ipam::store::parse(path, bytes) {
            Err(e) => check_error(&cni::Error::from(e)),
            Ok(data) => {
                for (ip, a) in &data.allocations {
                    assert!(data.find(&a.container_id, &a.ifname).contains(ip), "{ip}");
                }
                // What is written back reads back the same.
                let again = serde_json::to_vec(&data).unwrap();
                assert_eq!(node_ipam::store::parse(path, &again).unwrap(), data);
            }
        }
    });
}

#[test]
fn generator_is_reproducible() {
    let (mut a, mut b) = (Rng(7), Rng(7));
    let mut va = seeds("conf-")[0].clone();
    let mut vb = va.clone();
    for _ in 0..50 {
        mutate(&mut va, &mut a, 0);
        mutate(&mut vb, &mut b, 0);
    }
    assert_eq!(va, vb);
}
