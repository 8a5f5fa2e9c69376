//! The structure-aware input generator the parser properties share: the seeds in
//! `fuzz/seeds/` as a corpus, each mutated as a JSON value (then, now and then, as bytes)
//! by a reproducible generator whose seed proptest draws, so that a failure is reported
//! (and shrunk) as the seed that made it. Included with `#[path]` by the tests of each
//! crate that owns a parser (`ferry-cni`, `ferry-node-ipam`, `ferry`): test code, not a crate.
//!
//! `PROPTEST_CASES=N` sets the cases per property (3000 by default, what CI runs);
//! `PROPTEST_RNG_SEED=N` replays a run. A failing input is printed: add it to
//! `fuzz/seeds/` once fixed.

#![allow(dead_code)]

use std::path::PathBuf;

use proptest::prelude::*;
use serde_json::{Map, Value};

#[path = "rng.rs"]
mod rng;
pub use rng::Rng;

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
pub fn mutate(v: &mut Value, rng: &mut Rng, depth: usize) {
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

/// The seeds named `prefix*`, in a stable order.
pub fn seeds(prefix: &str) -> Vec<Value> {
    let dir = seed_dir();
    let mut out: Vec<Value> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| {
            let bytes = std::fs::read(e.path())
                .unwrap_or_else(|err| panic!("seed {}: {err}", e.path().display()));
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|err| panic!("seed {}: {err}", e.path().display()))
        })
        .collect();
    assert!(!out.is_empty(), "no {prefix}* seeds in {}", dir.display());
    out.sort_by_key(|v| v.to_string());
    out
}

/// `fuzz/seeds` of the workspace, found upwards from the crate under test.
fn seed_dir() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|d| d.join("fuzz/seeds"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no fuzz/seeds above {}", here.display()))
}

/// One input made from the corpus by the generator seeded with `seed`.
pub fn input(corpus: &[Value], seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut v = rng.pick(corpus).clone();
    for _ in 0..=rng.below(4) {
        mutate(&mut v, &mut rng, 0);
    }
    let mut b = v.to_string().into_bytes();
    if rng.chance(15) {
        mutate_bytes(&mut b, &mut rng);
    }
    b
}

/// Inputs from the `prefix*` seeds: each seed unchanged, then mutations of them.
pub fn inputs(prefix: &str) -> impl Strategy<Value = Vec<u8>> {
    let corpus = seeds(prefix);
    let unchanged: Vec<Vec<u8>> = corpus.iter().map(|v| v.to_string().into_bytes()).collect();
    prop_oneof![
        1 => proptest::sample::select(unchanged),
        9 => any::<u64>().prop_map(move |seed| input(&corpus, seed)),
    ]
}

/// 3000 cases per property unless `PROPTEST_CASES` says otherwise; no failure files
/// written into the source tree.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every error is a CNI error a runtime can act on: a known code and a message.
pub fn check_error(e: &ferry_cni::Error) {
    assert!(
        matches!(e.code, 1..=7 | 11 | 50 | 100..=105),
        "unknown code {}: {e}",
        e.code
    );
    assert!(!e.msg.is_empty(), "empty message (code {})", e.code);
}
