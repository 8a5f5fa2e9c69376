//! Waiting out an etcd that does not answer at start. After a node reboots, etcd's address
//! (a ClusterIP) may need seconds before kube-proxy's rules are back: exiting then would
//! only put the daemon, and every pod of the node behind it, into CrashLoopBackOff. An
//! error that is an answer (a stored config that contradicts the flags, a name in use)
//! still ends the start.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_registry::LeaseError;

use crate::metrics::Metrics;
use crate::status::Cause;

pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A long outage is logged again this often, not at every retry.
pub const LOG_EVERY: Duration = Duration::from_secs(30);

pub struct EtcdRetry {
    endpoints: String,
    metrics: Arc<Metrics>,
    backoff: Duration,
    /// When the outage began, and when it was last logged.
    since: Option<Instant>,
    logged: Option<Instant>,
}

impl EtcdRetry {
    pub fn new(endpoints: &[String], metrics: Arc<Metrics>) -> EtcdRetry {
        EtcdRetry {
            endpoints: endpoints.join(","),
            metrics,
            backoff: FIRST_BACKOFF,
            since: None,
            logged: None,
        }
    }

    /// After a failed request: a transient failure is logged (the first, then at most
    /// every `LOG_EVERY`), shown by `/readyz` and slept off; any other is returned.
    pub async fn failed(&mut self, e: impl Into<anyhow::Error>) -> anyhow::Result<()> {
        let e: anyhow::Error = e.into();
        let why = match e.downcast_ref::<LeaseError>() {
            // Its message names the endpoints already.
            Some(LeaseError::Unreachable { detail, .. }) => detail.clone(),
            Some(l) if l.is_transient() => format!("{e:#}"),
            _ => return Err(e),
        };
        self.metrics.etcd_errors.fetch_add(1, Relaxed);
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        let text = format!("waiting for etcd at {}: {why}", self.endpoints);
        if self.logged.is_none_or(|at| now - at >= LOG_EVERY) {
            tracing::warn!(
                "{text} (for {}s; retrying with backoff up to {}s)",
                (now - since).as_secs(),
                MAX_BACKOFF.as_secs()
            );
            self.logged = Some(now);
        }
        self.metrics.status.set(Cause::Etcd, text);
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }

    /// After a request etcd answered: an outage is over.
    pub fn answered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                "etcd at {} answers after {}s",
                self.endpoints,
                since.elapsed().as_secs()
            );
            self.metrics.status.clear(Cause::Etcd);
        }
        self.logged = None;
        self.backoff = FIRST_BACKOFF;
    }
}

/// Runs an etcd request until it is answered: `etcd!(retry, reg.list(&cfg))` is the
/// answer, or returns the error from the enclosing function when it is not transient.
macro_rules! etcd {
    ($retry:expr, $call:expr) => {
        loop {
            match $call.await {
                Ok(v) => {
                    $retry.answered();
                    break v;
                }
                Err(e) => $retry.failed(e).await?,
            }
        }
    };
}
pub(crate) use etcd;
