//! Refused lease records, told in a bounded number of log lines. Whoever can write etcd
//! can write thousands of bad records at once; one line each would drown the node's log
//! (and its disk) in what an attacker chose to write. So the first ones of each window
//! are named one by one (key and reason), and the rest are counted and summed up in one
//! line at most every `SUMMARY_EVERY`. `ferry_leases_refused` counts every refused record
//! whatever was logged.

use std::time::{Duration, Instant};

use ferry_registry::Refused;

/// Refused records named one by one per window.
pub const NAMED_PER_WINDOW: usize = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
/// The shortest time between two summaries.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// What to log.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A refused record, named.
    One(&'a Refused),
    /// `n` refused records not named one by one since the last summary.
    More(usize),
}

#[derive(Debug, Default)]
pub struct RefusalLog {
    window_start: Option<Instant>,
    named: usize,
    unnamed: usize,
    last_summary: Option<Instant>,
}

impl RefusalLog {
    /// The lines to log for the records `new`ly refused at `now`: each named while the
    /// window's budget lasts, the rest counted for a summary, which comes now when one is
    /// due (see `due`).
    pub fn refused<'a>(
        &mut self,
        now: Instant,
        new: impl IntoIterator<Item = &'a Refused>,
    ) -> Vec<Line<'a>> {
        if self
            .window_start
            .is_none_or(|s| now.duration_since(s) >= WINDOW)
        {
            self.window_start = Some(now);
            self.named = 0;
        }
        let mut lines = Vec::new();
        for r in new {
            if self.named < NAMED_PER_WINDOW {
                self.named += 1;
                lines.push(Line::One(r));
            } else {
                self.unnamed += 1;
            }
        }
        lines.extend(self.due(now));
        lines
    }

    /// The summary of the records not named, when there are any and the last summary is
    /// `SUMMARY_EVERY` old (asked again at each resync, so that it is never held back
    /// long).
    pub fn due<'a>(&mut self, now: Instant) -> Option<Line<'a>> {
        let quiet = self
            .last_summary
            .is_none_or(|t| now.duration_since(t) >= SUMMARY_EVERY);
        if self.unnamed == 0 || !quiet {
            return None;
        }
        self.last_summary = Some(now);
        Some(Line::More(std::mem::take(&mut self.unnamed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(n: usize) -> Vec<Refused> {
        (0..n)
            .map(|i| Refused {
                key: format!("/ferry/v1/leases/k{i}"),
                reason: "bad".into(),
            })
            .collect()
    }

    fn count(lines: &[Line]) -> (usize, usize) {
        let named = lines.iter().filter(|l| matches!(l, Line::One(_))).count();
        let more = lines
            .iter()
            .map(|l| match l {
                Line::More(n) => *n,
                Line::One(_) => 0,
            })
            .sum();
        (named, more)
    }

    #[test]
    fn a_few_are_named_each() {
        let mut log = RefusalLog::default();
        let t = Instant::now();
        let rs = refused(3);
        let lines = log.refused(t, &rs);
        assert_eq!(lines, rs.iter().map(Line::One).collect::<Vec<_>>());
        assert_eq!(log.due(t + WINDOW), None);
    }

    #[test]
    fn a_flood_is_named_up_to_the_budget_then_summed_up() {
        let mut log = RefusalLog::default();
        let t = Instant::now();
        let rs = refused(5000);
        // In batches, as listings during a flood see them.
        let mut lines = Vec::new();
        for (i, batch) in rs.chunks(500).enumerate() {
            let now = t + Duration::from_millis(200 * i as u64);
            lines.extend(log.refused(now, batch));
        }
        // The first batch's summary at once; the rest held until one is due.
        assert_eq!(count(&lines), (NAMED_PER_WINDOW, 500 - NAMED_PER_WINDOW));
        assert_eq!(lines.len(), NAMED_PER_WINDOW + 1);
        assert_eq!(log.due(t + Duration::from_secs(5)), None);
        let last = log.due(t + SUMMARY_EVERY);
        assert_eq!(last, Some(Line::More(4500)));
        // Every record told, in 22 lines.
        assert_eq!(log.due(t + 2 * SUMMARY_EVERY), None);
    }

    #[test]
    fn the_budget_comes_back_with_the_next_window() {
        let mut log = RefusalLog::default();
        let t = Instant::now();
        let rs = refused(2 * NAMED_PER_WINDOW);
        let first = log.refused(t, &rs[..NAMED_PER_WINDOW + 1]);
        assert_eq!(count(&first), (NAMED_PER_WINDOW, 1));
        let later = log.refused(t + WINDOW, &rs[NAMED_PER_WINDOW + 1..]);
        assert_eq!(count(&later), (NAMED_PER_WINDOW - 1, 0));
    }
}
