//! Node-to-node health: every peer probed over the path its pods take, from this node's
//! gateway address (its own address in its pod subnet, on the bridge) to the peer's, by
//! ICMP echo, plus a probe of the pod MTU with DF set.
//!
//! A probe crosses exactly what a pod's packet crosses: the route to the peer's subnet
//! (VXLAN or direct), the underlay, the peer's VXLAN-from-nodes filter (its inner source
//! is in this node's pod subnet, which the filter allows for this node) and the peer's
//! kernel, which answers from its gateway address. It goes to the peer's gateway, a
//! host address, never to a pod, so NetworkPolicy, which isolates pods, is neither
//! crossed nor bypassed; and it is sent from the gateway, which policy already treats as
//! the node.
//!
//! Its own task, fed the peers by the daemon through a watch channel (a send never
//! waits): a slow reconcile never delays a probe, and a probe never delays a reconcile.

pub mod publish;
mod sock;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_node_ipam::peer_paths::{PathKind, PeerHealth};
use tokio::sync::watch;

use crate::metrics::{Metrics, PeerSeries};
use publish::PeersFile;
use sock::IcmpSock;
use state::{Change, Health, Kind, Rates};

/// One path to probe: a peer's subnet of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub peer: String,
    pub public_ip: IpAddr,
    pub path: PathKind,
    /// This node's gateway address of the family.
    pub src: IpAddr,
    /// The peer's gateway address (the first host of its subnet).
    pub dst: IpAddr,
    /// The IPv6 subnet of a dual-stack peer (`healthV6` in peers.json).
    pub second: bool,
}

/// What the prober needs besides the peers.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub rates: Rates,
    /// The pod MTU: the MTU probe's size, IP header included.
    pub mtu: u32,
}

/// How often peers.json's health is written at most, and at least while it runs.
const WRITE_AT_MOST: Duration = Duration::from_secs(1);
const WRITE_AT_LEAST: Duration = Duration::from_secs(5);
/// How long a socket that could not be opened (no CAP_NET_RAW, the gateway address not
/// there yet) waits before it is tried again.
const REOPEN: Duration = Duration::from_secs(10);

/// Starts the prober; the daemon sends it the targets whenever they may have changed.
pub fn spawn(
    settings: Settings,
    metrics: Arc<Metrics>,
    file: Arc<PeersFile>,
) -> watch::Sender<Vec<Target>> {
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(run(settings, metrics, file, rx));
    tx
}

/// A target's key: a peer's gateway address of one family, by name.
type Key = (String, IpAddr);

struct Path {
    target: Target,
    health: Health,
}

/// A family's socket, or when it may be tried again.
#[derive(Default)]
struct Slot {
    sock: Option<IcmpSock>,
    src: Option<IpAddr>,
    retry_at: Option<Instant>,
    told: bool,
}

impl Slot {
    /// Opens (or re-binds) the socket for `src` unless it failed lately.
    fn ensure(&mut self, src: IpAddr, now: Instant) {
        if self.src == Some(src) && self.sock.is_some() {
            return;
        }
        if self.src == Some(src) && self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.src = Some(src);
        match IcmpSock::open(src) {
            Ok(s) => {
                self.sock = Some(s);
                self.retry_at = None;
                if self.told {
                    tracing::info!(source = %src, "peer health probes: socket open");
                }
                self.told = false;
            }
            Err(e) => {
                self.sock = None;
                self.retry_at = Some(now + REOPEN);
                if !self.told {
                    tracing::warn!(source = %src, "peer health probes: no raw ICMP socket ({e}); is CAP_NET_RAW granted? Retrying every {}s", REOPEN.as_secs());
                    self.told = true;
                }
            }
        }
    }
}

async fn run(
    settings: Settings,
    metrics: Arc<Metrics>,
    file: Arc<PeersFile>,
    mut rx: watch::Receiver<Vec<Target>>,
) {
    let mut rates = settings.rates;
    // Tells this process's replies from any other pinger's on the node (a raw socket
    // sees every echo reply to its address).
    let token: [u8; sock::TOKEN] =
        crate::datapath::random_bytes("a probe token").unwrap_or(*b"ferry-hp");
    let id = u16::from_be_bytes([token[0], token[1]]);
    let mut paths: BTreeMap<Key, Path> = BTreeMap::new();
    let mut seqs: HashMap<(bool, u16), (Key, Kind)> = HashMap::new();
    let mut seq: u16 = 0;
    let mut socks: [Slot; 2] = Default::default();
    let mut written: Option<(Instant, Vec<Shown>)> = None;
    // Something happened since the last publish: a probe went or came back.
    let mut dirty = true;
    let mut published_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let mut wake = now + WRITE_AT_LEAST;
        for p in paths.values() {
            wake = wake.min(p.health.wake_at());
        }
        if let Some(at) = published_at {
            wake = wake.min(at + if dirty { WRITE_AT_MOST } else { WRITE_AT_LEAST });
        }
        tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    return; // The daemon is gone.
                }
                let targets = rx.borrow_and_update().clone();
                rates = settings.rates.for_paths(targets.len());
                take(&mut paths, targets, rates.echo, Instant::now());
                dirty = true;
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
            r = readable(&socks[0].sock) => dirty |= read(r, &socks[0], false, id, &token, &mut seqs, &mut paths, rates),
            r = readable(&socks[1].sock) => dirty |= read(r, &socks[1], true, id, &token, &mut seqs, &mut paths, rates),
        }
        let now = Instant::now();
        for (key, p) in paths.iter_mut() {
            for kind in p.health.overdue(now) {
                dirty = true;
                let change = p.health.lost_one(kind, now, rates);
                tell(&p.target, change, settings.mtu);
                seqs.retain(|_, (k, kd)| !(k == key && *kd == kind));
            }
        }
        for (key, p) in paths.iter_mut() {
            let v6 = p.target.dst.is_ipv6();
            let slot = &mut socks[usize::from(v6)];
            for kind in [Kind::Echo, Kind::Mtu] {
                if !p.health.due(kind, now) {
                    continue;
                }
                slot.ensure(p.target.src, now);
                let Some(s) = &slot.sock else { break };
                seq = seq.wrapping_add(1);
                let len = match kind {
                    Kind::Echo => sock::ip_header(v6) + sock::ICMP_HEADER + sock::TOKEN,
                    Kind::Mtu => settings.mtu as usize,
                };
                p.health.sent(kind, seq, now);
                dirty = true;
                seqs.insert((v6, seq), (key.clone(), kind));
                match s.send(p.target.dst, id, seq, &token, len) {
                    Ok(()) => {}
                    // Bigger than the route's MTU (or the path MTU the kernel learnt):
                    // the MTU probe failed without leaving the node.
                    Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                        let change = p.health.lost_one(kind, now, rates);
                        tell(&p.target, change, settings.mtu);
                        seqs.remove(&(v6, seq));
                    }
                    // No route, no neighbour yet, a full buffer: the probe is lost, as
                    // its timeout will say.
                    Err(e) => {
                        tracing::debug!(peer = %p.target.peer, dst = %p.target.dst, "probe not sent: {e}")
                    }
                }
            }
        }
        // At most once a second however many probes come and go: a hundred peers'
        // replies are each their own wake-up, the health is not rebuilt for each.
        let since = published_at.map(|at| now.saturating_duration_since(at));
        let due = match since {
            None => true,
            Some(d) => d >= WRITE_AT_LEAST || (dirty && d >= WRITE_AT_MOST),
        };
        if due {
            publish(&paths, &metrics, &file, &mut written, settings.mtu);
            published_at = Some(now);
            dirty = false;
        }
    }
}

/// Ready to read, or never without a socket.
async fn readable(s: &Option<IcmpSock>) -> std::io::Result<()> {
    match s {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

#[allow(clippy::too_many_arguments)]
fn read(
    r: std::io::Result<()>,
    slot: &Slot,
    v6: bool,
    id: u16,
    token: &[u8; sock::TOKEN],
    seqs: &mut HashMap<(bool, u16), (Key, Kind)>,
    paths: &mut BTreeMap<Key, Path>,
    rates: Rates,
) -> bool {
    let (Ok(()), Some(s)) = (r, &slot.sock) else {
        return false;
    };
    let replies = match s.drain(id, token) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("peer health probes: read: {e}");
            return false;
        }
    };
    let any = !replies.is_empty();
    let now = Instant::now();
    for reply in replies {
        let Some((key, kind)) = seqs.get(&(v6, reply.seq)).cloned() else {
            continue;
        };
        let Some(p) = paths.get_mut(&key) else {
            continue;
        };
        // The answer must come from the address probed, to the probe still waited for.
        if reply.from != p.target.dst || !p.health.waits_for(kind, reply.seq) {
            continue;
        }
        seqs.remove(&(v6, reply.seq));
        let change = p.health.answered(kind, now, rates);
        tell(&p.target, change, 0);
    }
    any
}

/// Takes the daemon's targets: a path already probed keeps its state (its label may
/// change with the daemon's path), a new one starts, spread over the echo period so that
/// many peers are not probed in one burst; a gone one is forgotten.
fn take(paths: &mut BTreeMap<Key, Path>, targets: Vec<Target>, every: Duration, now: Instant) {
    let n = targets.len().max(1) as u32;
    let mut next: BTreeMap<Key, Path> = BTreeMap::new();
    for (i, t) in targets.into_iter().enumerate() {
        let key = (t.peer.clone(), t.dst);
        let p = match paths.remove(&key) {
            Some(mut p) => {
                p.target = t;
                p
            }
            None => Path {
                health: Health::new(now + every * i as u32 / n),
                target: t,
            },
        };
        next.insert(key, p);
    }
    *paths = next;
}

/// Logs a change of state, once (the state machine reports each change once).
fn tell(t: &Target, change: Option<Change>, mtu: u32) {
    let family = family(t.dst);
    let path = t.path;
    match change {
        None => {}
        Some(Change::Unreachable) => tracing::warn!(
            peer = %t.peer, %path, family, dst = %t.dst,
            "peer unreachable: {} probes in a row unanswered", state::LOST_IN_A_ROW
        ),
        Some(Change::Back(d)) => tracing::info!(
            peer = %t.peer, %path, family, dst = %t.dst,
            "peer reachable again after {}s", d.as_secs()
        ),
        Some(Change::MtuFails) => tracing::warn!(
            peer = %t.peer, %path, family, dst = %t.dst, mtu,
            "mtu fails: probes of the pod MTU with DF set go unanswered while small ones cross (pods' full-size packets to this node are dropped on the way)"
        ),
        Some(Change::MtuOk) => tracing::info!(
            peer = %t.peer, %path, family, dst = %t.dst, "mtu ok again"
        ),
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() {
        "ipv6"
    } else {
        "ipv4"
    }
}

/// One path as peers.json and the metrics show it, but its RTT: what a write is for.
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    key: Key,
    health: Option<PeerHealth>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The health of a path as peers.json has it; `None` before its first verdict.
fn as_json(p: &Path, mtu: u32, now: Instant) -> Option<PeerHealth> {
    let h = &p.health;
    let reachable = h.reachable?;
    let (lost, sent) = h.lost();
    let wall = SystemTime::now();
    Some(PeerHealth {
        family: family(p.target.dst).to_string(),
        path: p.target.path,
        reachable,
        lost,
        sent,
        rtt_seconds: h.rtt.map(|d| d.as_secs_f64()),
        mtu_ok: h.mtu_ok,
        mtu: Some(mtu),
        unreachable_since: h
            .unreachable_since
            .map(|t| unix(wall - now.saturating_duration_since(t))),
    })
}

/// Writes the health into the metrics (always: they are read when scraped) and into
/// peers.json when it changed (at most every `WRITE_AT_MOST`) or every `WRITE_AT_LEAST`
/// (the RTTs, and `healthAt` saying the prober is alive).
fn publish(
    paths: &BTreeMap<Key, Path>,
    metrics: &Metrics,
    file: &PeersFile,
    written: &mut Option<(Instant, Vec<Shown>)>,
    mtu: u32,
) {
    let now = Instant::now();
    let series: Vec<PeerSeries> = paths
        .values()
        .map(|p| PeerSeries {
            peer: p.target.peer.clone(),
            path: p.target.path.to_string(),
            family: family(p.target.dst),
            reachable: p.health.reachable,
            rtt: p.health.rtt,
            sent: p.health.sent_total,
            lost: p.health.lost_total,
            mtu_ok: p.health.mtu_ok,
        })
        .collect();
    if let Ok(mut m) = metrics.peer_health.lock() {
        *m = series;
    }
    let shown: Vec<Shown> = paths
        .iter()
        .map(|(k, p)| Shown {
            key: k.clone(),
            health: as_json(p, mtu, now).map(|mut h| {
                h.rtt_seconds = None;
                h
            }),
        })
        .collect();
    // Written when what it shows changed, else every WRITE_AT_LEAST for the RTTs and
    // `healthAt` (the caller calls at most every WRITE_AT_MOST).
    if let Some((at, before)) = written {
        if *before == shown && now.saturating_duration_since(*at) < WRITE_AT_LEAST {
            return;
        }
    }
    let mut by_peer: BTreeMap<(String, IpAddr), [Option<PeerHealth>; 2]> = BTreeMap::new();
    for p in paths.values() {
        let e = by_peer
            .entry((p.target.peer.clone(), p.target.public_ip))
            .or_default();
        e[usize::from(p.target.second)] = as_json(p, mtu, now);
    }
    match file.set_health(by_peer, unix(SystemTime::now())) {
        Ok(()) => *written = Some((now, shown)),
        Err(e) => {
            tracing::warn!("write {}: {e}", file.path().display());
            // Not again before WRITE_AT_LEAST: a full disk is not helped by retrying.
            *written = Some((now, shown));
        }
    }
}
