//! How a failed watch of the API is retried, for every kind ferry watches.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Retries of a failed watch: 0.2 s, doubling to at most 5 s, back to 0.2 s once the API
/// has answered. kube's default waits up to 30 s, so an API back from an outage could go
/// unseen that long; at most one attempt per watch every 5 s is still a light load.
///
/// kube resets a backoff on every item the watch yields, and every attempt yields `Init`
/// before it sends a request: reset that way, an API away for minutes would be asked five
/// times a second by each watch, each failure logged. So `reset` does nothing, and the
/// delays start again from 0.2 s only after the API sent something (`contact`).
pub(crate) struct Retry {
    next: std::time::Duration,
    pub(crate) contact: Arc<std::sync::atomic::AtomicBool>,
}

const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(200);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

impl Default for Retry {
    fn default() -> Self {
        Retry {
            next: RETRY_MIN,
            contact: Arc::default(),
        }
    }
}

impl Iterator for Retry {
    type Item = std::time::Duration;

    /// The wait before the next attempt, after a failure.
    fn next(&mut self) -> Option<Self::Item> {
        if self.contact.swap(false, Relaxed) {
            self.next = RETRY_MIN;
        }
        let d = self.next;
        self.next = (self.next * 2).min(RETRY_MAX);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for Retry {
    /// See the type: only contact with the API resets the delays.
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_until_the_api_answers() {
        use kube::runtime::utils::Backoff;
        let mut r = Retry::default();
        let mut waits = Vec::new();
        for _ in 0..7 {
            // What kube does on each attempt's `Init`: no reset.
            r.reset();
            waits.extend(r.next());
        }
        let ms: Vec<u128> = waits.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000]);
        // The API answered, then failed again: from the start.
        r.contact.store(true, Relaxed);
        assert_eq!(r.next(), Some(RETRY_MIN));
        assert_eq!(r.next(), Some(RETRY_MIN * 2));
    }
}
