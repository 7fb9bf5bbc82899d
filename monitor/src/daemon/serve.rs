//! From a loaded kernel side to a serving daemon: the sink, the pipeline
//! taking over what a previous daemon left, then the services that take
//! requests, all in [`Services`].

use std::{
    collections::HashMap,
    io,
    path::Path,
    sync::{atomic::AtomicBool, Arc},
};

use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::watch,
};

use super::{
    error::DaemonError,
    report::Report,
    services::{Service, Services},
    start::{Listeners, Prepared, Previous},
};
use crate::{
    adopt::Adopter,
    cgroup::{self, Hierarchy},
    config::DaemonConfig,
    control::{
        self,
        server::Context,
        watcher::{self, Watcher},
    },
    events::{
        handle::PipelineHandle,
        pipeline::{Pipeline, Resumed},
    },
    limits::Controllers,
    metrics::{self, Metrics},
    pins::StartGuard,
    reload::{PolicyTable, Reloader},
    sinks::{jsonl, Bus, Hub},
    vocab::Origin,
};

/// SIGHUP's listeners: the policy reloader's and the sink's.
pub struct Hangups {
    reload: Signal,
    reopen: Signal,
}

impl Hangups {
    /// SIGHUP's default action ends the process: with these in place (the
    /// daemon's first step), a SIGHUP during start-up (a `systemctl
    /// reload`, a test's policy edit) is a reload and a reopen once
    /// running, not the daemon's end. A stream keeps a signal that comes
    /// before its first poll.
    pub fn listen() -> io::Result<Self> {
        Ok(Hangups { reload: signal(SignalKind::hangup())?, reopen: signal(SignalKind::hangup())? })
    }
}

/// The primary sink, started.
pub struct Sink {
    /// Which of the records a killed daemon had numbered reached the file,
    /// by trajectory (its trajectories' restart gaps count the others).
    pub written: Option<HashMap<String, u64>>,
    /// Set on SIGHUP: the sink reopens its file before its next batch.
    reopen: Arc<AtomicBool>,
}

/// Starts the JSON Lines sink as a service; the bus it returns, where the
/// pipeline publishes, holds the sink's only sender: the sink flushes and
/// ends once the pipeline is gone.
pub fn sink(
    config: &DaemonConfig,
    prepared: &Prepared,
    previous: &Previous,
    hub: Arc<Hub>,
    services: &mut Services,
) -> Result<(Bus, Sink), DaemonError> {
    let (bus, sink_rx) = Bus::new(hub);
    let reopen = Arc::new(AtomicBool::new(false));
    let (written, marking) = match &config.events {
        jsonl::Output::File(path) => {
            // Not a trajectory id: those never start with '.'.
            let mark = prepared.state.path().join(".sink-mark");
            let written = jsonl::recover(path, &mark);
            // Only the trajectories there are state files for can still
            // write; the others died with a daemon and stay closed.
            let mut last = written.clone().unwrap_or_default();
            last.retain(|id, _| previous.found.iter().any(|f| f.saved.id == *id));
            (written, Some(jsonl::Marking { path: mark, last }))
        }
        jsonl::Output::Stdout => (None, None),
    };
    let thread = jsonl::spawn(config.events.clone(), config.events_rotation, reopen.clone(), sink_rx, marking)?;
    services.spawn_thread(Service::Sink, thread);
    Ok((bus, Sink { written, reopen }))
}

/// Trajectories a previous daemon left: rebound, their streams resumed,
/// before the previous daemon's programs are detached. From here on this
/// start's pins stay whatever happens (`start_guard` disarmed).
pub async fn take_over(
    pipeline: &mut Pipeline,
    config: &DaemonConfig,
    prepared: &Prepared,
    previous: Previous,
    watcher: &Watcher,
    written: Option<&HashMap<String, u64>>,
    start_guard: Option<StartGuard>,
) -> Vec<Resumed> {
    let kept_bindings = !previous.unreadable.is_empty();
    let previous_layouts = prepared.pins.as_ref().map_or(&[][..], |p| &p.foreign[..]);
    let resumed = pipeline
        .resume(
            previous.found,
            &config.default_policy,
            |path, id| watcher.watch(path, id),
            previous_layouts,
            kept_bindings,
            written,
        )
        .await;
    if let Some(g) = start_guard {
        g.disarm();
    }
    if let Some(p) = &prepared.pins {
        // Another layout's pins may hold the bindings of the trajectories
        // whose state is unreadable: they stay until the files are fixed.
        let removed = p.retire_old(!kept_bindings);
        if removed > 0 || !resumed.is_empty() {
            tracing::info!(
                resumed = resumed.len(),
                old_links = removed,
                "took over from a previous daemon: its trajectories resumed, its programs detached"
            );
        }
    }
    sweep_stale(&prepared.parent, &resumed, kept_bindings);
    resumed
}

/// Removes empty trajectory cgroups a previous daemon left without state
/// to resume; populated ones without state are reported.
fn sweep_stale(parent: &Path, resumed: &[Resumed], kept_bindings: bool) {
    for child in cgroup::children(parent).unwrap_or_default() {
        if resumed.iter().any(|r| r.cgroup == child) {
            continue;
        }
        match cgroup::is_populated(&child) {
            Ok(false) => {
                if let Err(e) = cgroup::remove_tree(&child) {
                    tracing::warn!("cannot remove stale trajectory cgroup: {e}");
                }
            }
            _ if kept_bindings => tracing::warn!(
                "trajectory cgroup {} from a previous daemon still has processes but no readable state to resume; \
                 the previous binding, if any, keeps judging them, unrecorded",
                child.display()
            ),
            _ => tracing::warn!(
                "trajectory cgroup {} from a previous daemon still has processes but no state to resume; they are not \
                 monitored",
                child.display()
            ),
        }
    }
}

/// What the services around the pipeline start with.
pub struct Clients {
    pub hierarchy: Hierarchy,
    pub parent: std::path::PathBuf,
    pub pipeline: PipelineHandle,
    pub watcher: Watcher,
    pub watch_events: watcher::Events,
    pub report: Report,
    pub policies: PolicyTable,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    pub resumed: Vec<Resumed>,
    pub hangups: Hangups,
    pub sink: Sink,
    pub listeners: Listeners,
}

/// Starts the cgroup watcher, the policy reloader, the sink's reopener,
/// the adopter, the control server and /metrics.
pub fn spawn_clients(services: &mut Services, config: &DaemonConfig, c: Clients) {
    let stop = services.stop_signal();
    services.spawn(Service::Watcher, c.watch_events.run(c.pipeline.clone(), stop.clone()));
    let reloader = Reloader {
        dir: config.policy_dir.clone(),
        default_policy: config.default_policy.clone(),
        adopt: config.adopt.clone(),
        pipeline: c.pipeline.clone(),
        metrics: c.metrics.clone(),
        table: c.policies.clone(),
    };
    services.spawn(Service::Reload, reloader.run(c.hangups.reload, stop.clone()));
    services.spawn(Service::Reopen, reopen_on_hangup(c.sink.reopen, c.hangups.reopen, stop.clone()));
    let adopter = Adopter {
        rules: config.adopt.clone(),
        hierarchy: c.hierarchy.clone(),
        own_parent: c.parent.clone(),
        default_policy: config.default_policy.clone(),
        pipeline: c.pipeline.clone(),
        resumed: c
            .resumed
            .iter()
            .filter(|r| r.origin == Origin::Adopt)
            .map(|r| (r.cgroup.clone(), r.cgroup_id))
            .collect(),
    };
    services.spawn(Service::Adopt, adopter.run(stop.clone()));
    let controllers = limit_controllers(&c.hierarchy, &c.parent);
    for r in &c.resumed {
        if let Some(events) = r.compartment.pids_events() {
            if let Err(e) = c.watcher.watch_limit(&events, r.cgroup_id) {
                tracing::warn!("cannot watch {} of a resumed trajectory: {e}", events.display());
            }
        }
    }
    let ctx = Arc::new(Context {
        hierarchy: c.hierarchy,
        parent: c.parent,
        pipeline: c.pipeline,
        watcher: c.watcher,
        hooks: c.report.hooks,
        enforcement: c.report.enforcement,
        protections: c.report.protections,
        policies: c.policies,
        policy_dir: config.policy_dir.as_ref().map(|d| d.display().to_string()),
        default_policy: config.default_policy.clone(),
        hub: c.hub,
        dns: c.report.dns,
        dns_learned: c.metrics.dns.learned.clone(),
        controllers,
        callers: config.callers.clone(),
        landlock: c.report.landlock,
    });
    services.spawn(Service::Control, control::server::serve(c.listeners.control, ctx, stop.clone()));
    let mut metrics_stop = stop;
    let stopped = async move {
        let _ = metrics_stop.wait_for(|s| *s).await;
    };
    services.spawn(Service::Metrics, metrics::serve(c.listeners.metrics, c.metrics, stopped));
}

/// Finds where each `limits:` controller is, and says at start-up which
/// limits this host cannot apply.
fn limit_controllers(hierarchy: &Hierarchy, parent: &Path) -> Controllers {
    let controllers = Controllers::prepare(hierarchy, parent);
    for s in controllers.status() {
        if s.hierarchy == "unavailable" {
            tracing::warn!(controller = %s.controller, "{}", s.detail);
        } else {
            tracing::info!(controller = %s.controller, hierarchy = %s.hierarchy, "{}", s.detail);
        }
    }
    controllers
}

/// SIGHUP: the sink reopens its file before its next batch (the policy
/// reloader answers the same signal).
async fn reopen_on_hangup(reopen: Arc<AtomicBool>, mut hup: Signal, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = hup.recv() => reopen.store(true, std::sync::atomic::Ordering::Relaxed),
        }
    }
}
