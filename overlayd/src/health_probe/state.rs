//! One path's health as data: the window of the last probes, when the next ones are due,
//! and the changes of state worth one log line. No socket and no clock of its own (every
//! call is given `now`), so that every rule is tested as arithmetic.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Probes remembered for `lost/sent`.
pub const WINDOW: usize = 10;
/// Unanswered echo probes in a row that make a peer unreachable: one lost packet is
/// noise, three in a row (about 3 s apart, `RETRY`) is a path that drops.
pub const LOST_IN_A_ROW: u32 = 3;
/// Unanswered MTU probes in a row, while small ones are answered, that make `mtu fails`.
pub const MTU_LOST_IN_A_ROW: u32 = 2;
/// How long a probe waits for its answer. A node's pods answer in well under a
/// millisecond on a LAN; a second covers a congested or distant one.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// The next echo after an unanswered one: soon, so that an outage is told within about
/// `interval + LOST_IN_A_ROW * RETRY` rather than three whole intervals.
pub const RETRY: Duration = Duration::from_secs(1);
/// An unreachable peer's echo period: its return is told within this.
pub const UNREACHABLE_EVERY: Duration = Duration::from_secs(2);
/// The next MTU probe after an unanswered one, to confirm before telling.
pub const MTU_RETRY: Duration = Duration::from_secs(2);

/// How often probes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// Echo period of a healthy peer.
    pub echo: Duration,
    /// MTU probe period.
    pub mtu: Duration,
}

/// At most this many echo probes a second however many peers (at the default 5 s, the
/// first 100 peer paths are probed at full rate): a 5,000-node cluster must not cost each
/// node 1,000 probes a second. The MTU probe is slowed alike.
pub const MAX_ECHO_PER_SEC: u32 = 20;

impl Rates {
    /// The rates for `paths` peer paths: these, or slower so that the echo probes stay
    /// under [`MAX_ECHO_PER_SEC`] in all.
    pub fn for_paths(self, paths: usize) -> Rates {
        let floor = Duration::from_secs_f64(paths as f64 / f64::from(MAX_ECHO_PER_SEC));
        if floor <= self.echo {
            return self;
        }
        let scale = floor.as_secs_f64() / self.echo.as_secs_f64();
        Rates {
            echo: floor,
            mtu: self.mtu.mul_f64(scale),
        }
    }
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            echo: Duration::from_secs(5),
            mtu: Duration::from_secs(60),
        }
    }
}

/// A change of state, logged once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unreachable,
    /// Answered again after being unreachable, after this long.
    Back(Duration),
    MtuFails,
    MtuOk,
}

/// What a probe was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Echo,
    Mtu,
}

/// One path's state.
#[derive(Debug, Clone)]
pub struct Health {
    /// True for an answered probe, newest last.
    window: VecDeque<bool>,
    lost_in_a_row: u32,
    /// `None` until the first probe is answered or `LOST_IN_A_ROW` are not.
    pub reachable: Option<bool>,
    /// When the first unanswered probe of the current outage went.
    pub unreachable_since: Option<Instant>,
    pub rtt: Option<Duration>,
    pub mtu_ok: Option<bool>,
    mtu_lost_in_a_row: u32,
    pub sent_total: u64,
    pub lost_total: u64,
    /// The outstanding probe of each kind: its sequence number and when it went.
    pending: [Option<(u16, Instant)>; 2],
    /// When the next probe of each kind is due.
    next: [Instant; 2],
    /// When the first probe of the run of unanswered ones went.
    first_lost: Option<Instant>,
}

fn slot(k: Kind) -> usize {
    match k {
        Kind::Echo => 0,
        Kind::Mtu => 1,
    }
}

impl Health {
    /// A new path, first probed at `first` (spread over the period by the caller, so that
    /// a hundred peers are not probed in one burst).
    pub fn new(first: Instant) -> Health {
        Health {
            window: VecDeque::with_capacity(WINDOW),
            lost_in_a_row: 0,
            reachable: None,
            unreachable_since: None,
            rtt: None,
            mtu_ok: None,
            mtu_lost_in_a_row: 0,
            sent_total: 0,
            lost_total: 0,
            pending: [None, None],
            // The MTU probe follows the first answered echo (`answered`).
            next: [first, first + Duration::from_secs(86_400 * 365)],
            first_lost: None,
        }
    }

    /// Unanswered probes among the last ones, and how many those are.
    pub fn lost(&self) -> (u32, u32) {
        let lost = self.window.iter().filter(|ok| !**ok).count();
        (lost as u32, self.window.len() as u32)
    }

    /// The probe of `kind` that is due at `now`, if any: none while one of that kind is
    /// outstanding, nor an MTU probe while the peer is not known reachable.
    pub fn due(&self, kind: Kind, now: Instant) -> bool {
        self.pending[slot(kind)].is_none()
            && self.next[slot(kind)] <= now
            && (kind == Kind::Echo || self.reachable == Some(true))
    }

    /// The earliest instant something happens: a probe due, or an outstanding one
    /// timing out (a kind with a probe out is not due again before).
    pub fn wake_at(&self) -> Instant {
        let mut at: Option<Instant> = None;
        for kind in [Kind::Echo, Kind::Mtu] {
            let t = match self.pending[slot(kind)] {
                Some((_, sent)) => sent + TIMEOUT,
                None if kind == Kind::Echo || self.reachable == Some(true) => self.next[slot(kind)],
                None => continue,
            };
            at = Some(at.map_or(t, |a| a.min(t)));
        }
        at.unwrap_or(self.next[0])
    }

    /// A probe went.
    pub fn sent(&mut self, kind: Kind, seq: u16, now: Instant) {
        self.pending[slot(kind)] = Some((seq, now));
        if kind == Kind::Echo {
            self.sent_total += 1;
        }
    }

    /// Whether `seq` is the outstanding probe of `kind`.
    pub fn waits_for(&self, kind: Kind, seq: u16) -> bool {
        self.pending[slot(kind)].is_some_and(|(s, _)| s == seq)
    }

    /// The answer to the outstanding probe of `kind` came at `now`.
    pub fn answered(&mut self, kind: Kind, now: Instant, rates: Rates) -> Option<Change> {
        let (_, sent) = self.pending[slot(kind)].take()?;
        match kind {
            Kind::Echo => {
                self.push(true);
                self.rtt = Some(now.saturating_duration_since(sent));
                self.lost_in_a_row = 0;
                self.first_lost = None;
                self.next[0] = sent + rates.echo;
                let was = self.reachable.replace(true);
                if was != Some(true) {
                    // The MTU is probed as soon as the path is known to answer.
                    self.next[1] = now;
                }
                if was == Some(false) {
                    let since = self.unreachable_since.take().unwrap_or(sent);
                    return Some(Change::Back(now.saturating_duration_since(since)));
                }
                None
            }
            Kind::Mtu => {
                self.mtu_lost_in_a_row = 0;
                self.next[1] = sent + rates.mtu;
                let was = self.mtu_ok.replace(true);
                (was == Some(false)).then_some(Change::MtuOk)
            }
        }
    }

    /// The outstanding probe of `kind` is given up on at `now` (timed out, or the kernel
    /// refused to send it: a packet over the route's MTU with DF set).
    pub fn lost_one(&mut self, kind: Kind, now: Instant, rates: Rates) -> Option<Change> {
        let (_, sent) = self.pending[slot(kind)].take()?;
        match kind {
            Kind::Echo => {
                // Before the first answer a loss is no verdict yet: a peer that has just
                // joined may not route back to this node for a moment (it learns of it
                // by its own watch). Counted once it is one (`LOST_IN_A_ROW` of them).
                if self.reachable.is_some() {
                    self.push(false);
                }
                self.lost_total += 1;
                self.lost_in_a_row += 1;
                let first = *self.first_lost.get_or_insert(sent);
                if self.lost_in_a_row < LOST_IN_A_ROW {
                    self.next[0] = sent + RETRY;
                    return None;
                }
                self.next[0] = sent + UNREACHABLE_EVERY;
                if self.reachable == Some(false) {
                    return None;
                }
                if self.reachable.is_none() {
                    for _ in 0..self.lost_in_a_row {
                        self.push(false);
                    }
                }
                self.reachable = Some(false);
                self.unreachable_since = Some(first);
                // What the MTU probe said is about a path that answered; probed again
                // once it does.
                self.mtu_ok = None;
                self.mtu_lost_in_a_row = 0;
                self.pending[1] = None;
                Some(Change::Unreachable)
            }
            Kind::Mtu => {
                self.mtu_lost_in_a_row += 1;
                if self.mtu_lost_in_a_row < MTU_LOST_IN_A_ROW {
                    self.next[1] = now + MTU_RETRY;
                    return None;
                }
                self.next[1] = sent + rates.mtu;
                // Small probes must still cross: a peer going away is not an MTU problem.
                if self.reachable != Some(true) || self.lost_in_a_row > 0 {
                    return None;
                }
                let was = self.mtu_ok.replace(false);
                (was != Some(false)).then_some(Change::MtuFails)
            }
        }
    }

    /// Every outstanding probe whose answer is overdue at `now`.
    pub fn overdue(&self, now: Instant) -> Vec<Kind> {
        [Kind::Echo, Kind::Mtu]
            .into_iter()
            .filter(|k| self.pending[slot(*k)].is_some_and(|(_, sent)| sent + TIMEOUT <= now))
            .collect()
    }

    fn push(&mut self, ok: bool) {
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(ok);
    }
}

/// Bytes on the wire, per second, of one node's probes of `peers` peers in one family
/// (request and answer, both counted: what the node's probing puts on its link),
/// `overhead` being what the path adds to each IP packet (VXLAN over IPv4: 50 for the
/// inner Ethernet header and the outer IP, UDP and VXLAN headers, plus 14 for the outer
/// Ethernet header). The peers' probes of this node cost it as much again.
#[cfg(test)]
pub fn bytes_per_second(
    peers: u32,
    rates: Rates,
    echo_ip_bytes: u32,
    mtu_ip_bytes: u32,
    overhead: u32,
) -> f64 {
    let per = |ip: u32, every: Duration| 2.0 * f64::from(ip + overhead) / every.as_secs_f64();
    f64::from(peers) * (per(echo_ip_bytes, rates.echo) + per(mtu_ip_bytes, rates.mtu))
}

#[cfg(test)]
mod tests;
