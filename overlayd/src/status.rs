//! What the daemon waits for right now, in words: the body of `/readyz` while it is not
//! ready. Each start-up step and each later failure sets its own cause and clears it when
//! it is over, so that an operator reads why a node is not ready without its log.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why the daemon is not ready; the order is that of the body (the most telling first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// Another daemon holds this node's lock.
    Lock,
    /// etcd does not answer.
    Etcd,
    /// A sysctl ferry needs is off.
    Node,
    /// Another instance holds this node's liveness key.
    Name,
    /// The CNI config cannot be installed.
    CniConf,
    /// The start-up step under way, when nothing above holds it up.
    Starting,
}

struct Entry {
    text: String,
    since: Instant,
}

#[derive(Default)]
pub struct Status {
    causes: Mutex<BTreeMap<Cause, Entry>>,
}

impl Status {
    /// Sets `cause` with `text`; a cause already set keeps its start, so "since" counts
    /// from when the trouble began however often its details change.
    pub fn set(&self, cause: Cause, text: impl Into<String>) {
        let text = text.into();
        if let Ok(mut m) = self.causes.lock() {
            m.entry(cause)
                .and_modify(|e| e.text.clone_from(&text))
                .or_insert(Entry {
                    text,
                    since: Instant::now(),
                });
        }
    }

    /// The start-up step under way (its time counts from this step on).
    pub fn step(&self, text: impl Into<String>) {
        if let Ok(mut m) = self.causes.lock() {
            m.insert(
                Cause::Starting,
                Entry {
                    text: text.into(),
                    since: Instant::now(),
                },
            );
        }
    }

    pub fn clear(&self, cause: Cause) {
        if let Ok(mut m) = self.causes.lock() {
            m.remove(&cause);
        }
    }

    /// Nothing holds the daemon back.
    pub fn is_clear(&self) -> bool {
        self.causes.lock().is_ok_and(|m| m.is_empty())
    }

    /// One line per cause, each with how long it has held; the start-up step only when
    /// nothing else is waited for.
    pub fn render(&self) -> String {
        let Ok(m) = self.causes.lock() else {
            return String::new();
        };
        let waiting = m.keys().any(|c| *c != Cause::Starting);
        m.iter()
            .filter(|(c, _)| !waiting || **c != Cause::Starting)
            .map(|(_, e)| format!("{} (since {})\n", e.text, secs(e.since.elapsed())))
            .collect()
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_hides_the_step_and_keeps_its_start() {
        let s = Status::default();
        s.step("starting: connecting to etcd");
        assert_eq!(s.render(), "starting: connecting to etcd (since 0s)\n");
        s.set(Cause::Etcd, "waiting for etcd at e: refused");
        s.set(Cause::Etcd, "waiting for etcd at e: timed out");
        assert_eq!(s.render(), "waiting for etcd at e: timed out (since 0s)\n");
        s.set(Cause::Node, "node not prepared");
        assert_eq!(s.render().lines().count(), 2);
        s.clear(Cause::Etcd);
        s.clear(Cause::Node);
        s.clear(Cause::Starting);
        assert!(s.is_clear());
    }
}
