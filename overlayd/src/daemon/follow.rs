//! Following the leases: the etcd watch, its outages, and the resync timer.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_registry::{Registry, WatchResponse, WatchStream};

use super::view::log_refusal;
use super::Node;
use crate::cni_conf::CniConf;
use crate::etcd_retry::MAX_BACKOFF;

/// How often the CNI config is looked at while it waits for the daemon to be ready.
pub(super) const CNI_CONF_POLL: Duration = Duration::from_millis(200);

impl Node {
    /// Follows the leases until the process is stopped (`run` ends this on SIGTERM or
    /// SIGINT): watch events are applied as they come, the whole data path is checked on
    /// a timer, a lost etcd is retried with backoff and followed by a full resync.
    pub(super) async fn follow(&mut self, mut reg: Registry, rev: i64) -> Result<()> {
        let mut resync = tokio::time::interval(self.args.resync_interval);
        resync.tick().await;
        let mut cni_poll = tokio::time::interval(CNI_CONF_POLL);
        // etcd gone since the listing is one more outage, retried below.
        let mut watch = match reg.watch(&self.cfg, rev + 1).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("etcd: {e}; keeping the data path as it is and retrying");
                None
            }
        };
        let mut backoff = Duration::from_millis(100);
        let mut retry_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                msg = next(&mut watch) => match msg {
                    Ok(Some(resp)) if !resp.canceled() => {
                        // Any change is read whole: one record is only judged against
                        // all the others.
                        if !resp.events().is_empty() {
                            match self.refresh(&mut reg).await {
                                Ok(_) => self.apply_changes().await,
                                Err(e) => {
                                    tracing::warn!("etcd: {e:#}; keeping the data path as it is and retrying");
                                    self.metrics.etcd_errors.fetch_add(1, Relaxed);
                                    self.metrics.etcd_connected.store(false, Relaxed);
                                    watch = None;
                                    retry_at = tokio::time::Instant::now() + backoff;
                                }
                            }
                        }
                    }
                    other => {
                        let why = match other {
                            Ok(Some(r)) => format!("watch canceled: {}", r.cancel_reason()),
                            Ok(None) => "watch ended".to_string(),
                            Err(e) => e,
                        };
                        tracing::warn!("etcd: {why}; keeping the data path as it is and retrying");
                        self.metrics.etcd_errors.fetch_add(1, Relaxed);
                        self.metrics.etcd_connected.store(false, Relaxed);
                        watch = None;
                        retry_at = tokio::time::Instant::now() + backoff;
                    }
                },
                _ = tokio::time::sleep_until(retry_at), if watch.is_none() => {
                    match self.relist(&mut reg).await {
                        Ok(w) => {
                            tracing::info!("etcd is back: resynced");
                            watch = Some(w);
                            backoff = Duration::from_millis(100);
                            self.metrics.etcd_connected.store(true, Relaxed);
                        }
                        Err(e) => {
                            self.metrics.etcd_errors.fetch_add(1, Relaxed);
                            tracing::debug!("etcd still unreachable: {e:#}");
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            retry_at = tokio::time::Instant::now() + backoff;
                        }
                    }
                }
                _ = resync.tick() => {
                    if watch.is_some() {
                        if let Err(e) = self.defend(&mut reg).await {
                            self.metrics.etcd_errors.fetch_add(1, Relaxed);
                            tracing::warn!("resync: {e:#}");
                        }
                    }
                    if let Err(e) = self.full_reconcile().await {
                        tracing::warn!("resync: {e:#}");
                    }
                    // Refusals held back for a summary are told within a resync of it
                    // being due, flood over or not.
                    if let Some(line) = self.refusal_log.due(Instant::now()) {
                        log_refusal(line, self.refused.len());
                    }
                    self.keep_cni_conf();
                }
                // Until the first install: the policy may become ready between resyncs.
                _ = cni_poll.tick(), if self.cni.as_ref().is_some_and(CniConf::waiting) => {
                    self.keep_cni_conf();
                }
            }
        }
    }

    async fn relist(&mut self, reg: &mut Registry) -> Result<WatchStream> {
        let rev = self.refresh(reg).await?;
        self.full_reconcile().await?;
        Ok(reg.watch(&self.cfg, rev + 1).await?)
    }
}

async fn next(watch: &mut Option<WatchStream>) -> Result<Option<WatchResponse>, String> {
    match watch {
        Some(w) => w.message().await.map_err(|e| e.to_string()),
        None => std::future::pending().await,
    }
}
