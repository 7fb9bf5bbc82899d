//! Policy reload: on SIGHUP or a change in the policy directory, validate
//! the whole directory again and hand the new set to the pipeline, which
//! rebinds every open trajectory atomically (see `crate::enforce`). An
//! invalid directory is refused as a whole; the running policies keep
//! enforcing.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use serde::{Deserialize, Serialize};
use tokio::{signal::unix::Signal, sync::watch};

use crate::{
    events::{handle::PipelineHandle, pipeline::PipelineError},
    metrics::Metrics,
    policy::{load_daemon_set, PolicySet},
};

/// Editors write a file in several steps; changes closer together than
/// this make one reload.
const SETTLE: Duration = Duration::from_millis(200);

/// A loaded policy as `status` shows it (`control::protocol`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyStatus {
    pub name: String,
    pub mode: String,
    pub file: String,
    /// Rules per class: file, exec, network.
    pub rules: [usize; 3],
}

/// The loaded policies as `status` shows them.
pub type PolicyTable = Arc<RwLock<Vec<PolicyStatus>>>;

pub fn table(set: &PolicySet) -> Vec<PolicyStatus> {
    set.policies()
        .iter()
        .map(|p| PolicyStatus {
            name: p.name.clone(),
            mode: p.mode.as_str().to_owned(),
            file: p.file.display().to_string(),
            rules: p.rule_counts(),
        })
        .collect()
}

pub struct Reloader {
    pub dir: Option<PathBuf>,
    pub default_policy: String,
    pub pipeline: PipelineHandle,
    pub metrics: Arc<Metrics>,
    pub table: PolicyTable,
}

impl Reloader {
    /// Reloads on each SIGHUP `hup` receives and on policy directory changes.
    pub async fn run(self, mut hup: Signal, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.dir.as_ref().and_then(|dir| {
            let inotify = Inotify::init().ok()?;
            let mask = WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM | WatchMask::DELETE;
            if let Err(e) = inotify.watches().add(dir, mask | WatchMask::CREATE) {
                tracing::warn!("cannot watch {} for changes (SIGHUP still reloads): {e}", dir.display());
                return None;
            }
            inotify.into_event_stream([0u8; 4096]).ok()
        });
        loop {
            let trigger = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = hup.recv() => "SIGHUP",
                Some(_) = async {
                    match changes.as_mut() {
                        Some(c) => c.next().await,
                        None => std::future::pending().await,
                    }
                } => "policy directory change",
            };
            if let Some(c) = changes.as_mut() {
                // Let a burst of writes settle, then drop what queued up.
                tokio::time::sleep(SETTLE).await;
                while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), c.next()).await {}
            }
            self.reload(trigger).await;
        }
    }

    async fn reload(&self, trigger: &str) {
        let dir = self.dir.clone();
        let loaded = tokio::task::spawn_blocking(move || load_daemon_set(dir.as_deref())).await;
        let set = match loaded {
            Ok(Ok(set)) => set,
            Ok(Err(diagnostics)) => {
                for d in &diagnostics {
                    tracing::error!("policy reload refused: {d}");
                }
                return self.failed(trigger, "invalid policy files; the running policies stay in force");
            }
            Err(e) => return self.failed(trigger, &format!("loader task failed: {e}")),
        };
        if set.get(&self.default_policy).is_none() {
            return self.failed(trigger, &format!("the default policy {:?} is no longer defined", self.default_policy));
        }
        let table = table(&set);
        match self.pipeline.reload(set).await {
            Ok(()) => {
                *self.table.write().expect("not poisoned") = table;
                self.metrics.policy_reloads.with_label_values(&["success"]).inc();
                tracing::info!(trigger, "policies reloaded");
            }
            // The daemon is stopping: nothing to report.
            Err(PipelineError::Stopped) => {}
            Err(e) => self.failed(trigger, &format!("{e}; the running policies stay in force")),
        }
    }

    fn failed(&self, trigger: &str, why: &str) {
        self.metrics.policy_reloads.with_label_values(&["failure"]).inc();
        tracing::error!(trigger, "policy reload failed: {why}");
    }
}
