//! Policy reload: on SIGHUP or a change in the policy directory, validate
//! the whole directory again and hand the new set to the pipeline, which
//! rebinds every open trajectory atomically (see `crate::enforce`). An
//! invalid directory is refused as a whole; the running policies keep
//! enforcing. [`admit`] is the check a set passes at start and on every
//! reload: each policy the daemon is configured to use is defined.

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
    adopt::AdoptRule,
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
    /// `session:`: the account the agent must run as.
    #[serde(default, skip_serializing_if = "crate::policy::Session::is_empty")]
    pub session: crate::policy::Session,
    /// `limits:` of its trajectories' cgroups.
    #[serde(default, skip_serializing_if = "crate::policy::Limits::is_empty")]
    pub limits: crate::policy::Limits,
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
            session: p.session.clone(),
            limits: p.limits,
        })
        .collect()
}

/// A policy set the daemon cannot run with: a policy its configuration
/// names is not in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("the default policy {policy:?} is not defined (--default-policy; loaded: {loaded})")]
    DefaultPolicy { policy: String, loaded: String },
    #[error("--adopt {pattern}: policy {policy:?} is not defined (loaded: {loaded})")]
    AdoptPolicy { pattern: String, policy: String, loaded: String },
}

/// Checks that `set` defines the default policy and the policy of every
/// `--adopt` rule (a rule without one uses the default). The daemon does
/// not start with a set that fails, and a reload to one is refused.
pub fn admit(set: &PolicySet, default_policy: &str, adopt: &[AdoptRule]) -> Result<(), AdmitError> {
    let loaded = || set.policies().iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
    if set.get(default_policy).is_none() {
        return Err(AdmitError::DefaultPolicy { policy: default_policy.to_owned(), loaded: loaded() });
    }
    for rule in adopt {
        let policy = rule.policy.as_deref().unwrap_or(default_policy);
        if set.get(policy).is_none() {
            return Err(AdmitError::AdoptPolicy {
                pattern: rule.pattern.clone(),
                policy: policy.to_owned(),
                loaded: loaded(),
            });
        }
    }
    Ok(())
}

pub struct Reloader {
    pub dir: Option<PathBuf>,
    pub default_policy: String,
    /// `--adopt` rules: a reload must keep their policies defined.
    pub adopt: Vec<AdoptRule>,
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
        if let Err(e) = admit(&set, &self.default_policy, &self.adopt) {
            return self.failed(trigger, &format!("{e}; the running policies stay in force"));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> PolicySet {
        let sources: Vec<(PathBuf, String)> = names
            .iter()
            .map(|n| {
                let yaml =
                    format!("name: {n}\nmode: enforce\ndefaults: {{file: allow, exec: allow, network: allow}}\n");
                (PathBuf::from(format!("{n}.yaml")), yaml)
            })
            .collect();
        PolicySet::from_sources(&sources).unwrap_or_else(|d| panic!("{d:#?}"))
    }

    fn rule(pattern: &str, policy: Option<&str>) -> AdoptRule {
        AdoptRule { pattern: pattern.into(), policy: policy.map(str::to_owned) }
    }

    #[test]
    fn admits_a_set_defining_every_configured_policy() {
        let set = set(&["default", "reviewer"]);
        assert_eq!(admit(&set, "default", &[]), Ok(()));
        let rules = [rule("a/*.scope", Some("reviewer")), rule("b/*.scope", None)];
        assert_eq!(admit(&set, "default", &rules), Ok(()));
        assert_eq!(admit(&set, "reviewer", &[rule("b/*.scope", None)]), Ok(()));
    }

    #[test]
    fn refuses_a_set_without_the_default_policy() {
        let err = admit(&set(&["reviewer"]), "default", &[]).unwrap_err();
        assert_eq!(err, AdmitError::DefaultPolicy { policy: "default".into(), loaded: "reviewer".into() });
        assert_eq!(
            err.to_string(),
            "the default policy \"default\" is not defined (--default-policy; loaded: reviewer)"
        );
        // Checked first: a rule using the default names the same gap.
        let err = admit(&set(&["reviewer"]), "default", &[rule("b/*", None)]).unwrap_err();
        assert!(matches!(err, AdmitError::DefaultPolicy { .. }), "{err}");
    }

    #[test]
    fn refuses_a_set_without_an_adopt_rules_policy() {
        let rules = [rule("a/*.scope", Some("default")), rule("b/*.scope", Some("gone"))];
        let err = admit(&set(&["default", "reviewer"]), "default", &rules).unwrap_err();
        assert_eq!(
            err,
            AdmitError::AdoptPolicy {
                pattern: "b/*.scope".into(),
                policy: "gone".into(),
                loaded: "default, reviewer".into()
            }
        );
        assert_eq!(err.to_string(), "--adopt b/*.scope: policy \"gone\" is not defined (loaded: default, reviewer)");
    }
}
