//! The lease view: every stored record checked and conflicts settled (the same on every
//! node), made into the peers this node routes to.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use anyhow::Result;
use ferry_registry::model::{resolve, LeaseView};
use ferry_registry::{LeaseRecord, Refused, Registry, StoredLease};
use ipnetwork::IpNetwork;

use super::Node;
use crate::node_filter::Family;
use crate::peers::Peer;
use crate::refusals::Line;

/// The other nodes as this node routes to them, each keyed by the subnet its record's key
/// names (`LeaseRecord::primary`).
#[derive(Default)]
pub(super) struct PeerList {
    pub(super) peers: BTreeMap<IpNetwork, Peer>,
    /// Each peer's node name.
    pub(super) names: BTreeMap<IpNetwork, String>,
    /// Subnets whose lease cannot be read now and whose node was not known before: what
    /// the kernel has for them is kept.
    pub(super) held: BTreeSet<IpNetwork>,
}

/// The peers of `view`: every accepted record but this node's own (by `name`, and by its
/// subnet `mine` once it has one) whose VTEP is of the underlay's `family`. One start-up
/// and every later listing make it alike, so that the first routes are the later ones.
pub(super) fn peer_list(
    view: &LeaseView,
    name: &str,
    mine: Option<IpNetwork>,
    family: Family,
    before: &PeerList,
) -> PeerList {
    let others = || {
        view.accepted
            .iter()
            .filter(|l| l.node != name && l.primary() != mine)
    };
    let mut list = PeerList {
        peers: others()
            .filter_map(|l| Some((l.primary()?, peer(l, family)?)))
            .collect(),
        names: others()
            .filter_map(|l| Some((l.primary()?, l.node.clone())))
            .collect(),
        held: BTreeSet::new(),
    };
    for s in view.unreadable.iter().copied().filter(|s| Some(*s) != mine) {
        // The last valid view of that node stays in force.
        match before.peers.get(&s) {
            Some(p) => {
                list.peers.insert(s, *p);
                if let Some(n) = before.names.get(&s) {
                    list.names.insert(s, n.clone());
                }
            }
            None => {
                list.held.insert(s);
            }
        }
    }
    list
}

impl Node {
    /// Lists the leases, makes them this node's view, and defends its own lease; the
    /// revision read at.
    pub(super) async fn refresh(&mut self, reg: &mut Registry) -> Result<i64> {
        let (stored, rev) = reg.list(&self.cfg).await?;
        self.set_view(&stored);
        self.defend(reg).await?;
        Ok(rev)
    }

    /// Writes this node's lease back when it was deleted or damaged.
    pub(super) async fn defend(&mut self, reg: &mut Registry) -> Result<()> {
        if reg.restore_own(&self.me, self.grace_lease).await? {
            let key = self.me.primary().map(|p| reg.layout().record_key(p));
            tracing::warn!(
                key = ?key,
                "this node's lease was deleted or changed in etcd; written back"
            );
        }
        Ok(())
    }

    /// The peers from every stored record, checked and with conflicts settled (the same
    /// on every node), this node's own subnet left out.
    fn set_view(&mut self, stored: &[StoredLease]) {
        self.take_view(resolve(&self.cfg, &self.underlay.networks, stored));
    }

    /// The peers from records already checked and settled (`view`), whichever datastore
    /// they came from.
    pub(super) fn take_view(&mut self, mut view: LeaseView) {
        let refused: BTreeSet<Refused> = std::mem::take(&mut view.refused).into_iter().collect();
        let lines = self
            .refusal_log
            .refused(Instant::now(), refused.difference(&self.refused));
        for line in lines {
            log_refusal(line, refused.len());
        }
        self.metrics
            .leases_refused
            .store(refused.len() as u64, Relaxed);
        self.refused = refused;
        self.metrics
            .leases_known
            .store(view.accepted.len() as u64, Relaxed);
        let family = Family::of(self.underlay.ip);
        for l in view
            .accepted
            .iter()
            .filter(|l| Family::of(l.public_ip) != family)
        {
            tracing::debug!(node = %l.node, public_ip = %l.public_ip, "another underlay family than this node's: unreachable over VXLAN");
        }
        let list = peer_list(&view, &self.name, self.me.primary(), family, &self.view);
        for (s, p) in &list.peers {
            if !self.view.peers.contains_key(s) {
                tracing::info!(subnet = %s, public_ip = %p.public_ip, leases = list.peers.len() + 1, "node joined");
            }
        }
        for s in self
            .view
            .peers
            .keys()
            .filter(|s| !list.peers.contains_key(s))
        {
            tracing::info!(subnet = %s, "node lease gone");
        }
        self.view = list;
    }
}

/// Logs a line about refused lease records; `now`: how many are refused now (a summary
/// may come after the records it counts are gone).
pub(super) fn log_refusal(line: Line, now: usize) {
    match line {
        Line::One(r) => tracing::warn!(key = %r.key, "lease record refused: {}", r.reason),
        Line::More(n) => tracing::warn!(
            more = n,
            refused_now = now,
            "lease records refused: {n} more, not named one by one (at most {} a minute are); ferry_leases_refused counts them all",
            crate::refusals::NAMED_PER_WINDOW
        ),
    }
}

/// The peer a record makes, when its VTEP is of this node's underlay `family` (a VXLAN
/// device speaks one family).
fn peer(l: &LeaseRecord, family: Family) -> Option<Peer> {
    if Family::of(l.public_ip) != family {
        return None;
    }
    Some(Peer {
        subnet: l.subnet,
        public_ip: l.public_ip,
        mac: l.vtep_mac_bytes()?,
        subnet_v6: l.subnet_v6,
    })
}
