//! The daemon as a library function: [`run`] takes its configuration and a
//! shutdown future (`main` passes SIGINT/SIGTERM; the integration tests
//! start the binary, so a test of `run` in-process would pass its own).
//!
//! Start order: preflight checks → cgroup parent (locked: one daemon per
//! parent) → pin directory → load and attach every hook, pinning the links
//! → bind /metrics and the control socket → sink and pipeline → resume the
//! trajectories a previous daemon left, then retire its pins → serve
//! clients and /metrics. Nothing is served before the kernel side is in
//! place. Shutdown stops the clients first, then drains the pipeline and
//! flushes the sink; the pinned programs stay attached (the kernel keeps
//! enforcing) unless `--stop-enforcement-on-exit` removes the pins.

use std::{
    future::Future,
    io,
    sync::{atomic::AtomicBool, Arc},
    time::Instant,
};

use tokio::sync::watch;

use crate::{
    adopt::Adopter,
    btf::{self, BtfError, VMLINUX_BTF},
    cgroup::{self, CgroupError, Hierarchy},
    config::DaemonConfig,
    control::{
        self,
        protocol::{ClassEnforcement, HookStatus, ProtectionStatus},
        server::{Context, ControlError},
    },
    enforce::Enforcer,
    events::{
        handle::PipelineHandle,
        pipeline::{Pipeline, PipelineError},
        state::StateDir,
    },
    host::{self, HostError},
    loader::mechanism,
    loader::{self, LoadError, LoadOptions},
    metrics::{self, Metrics},
    pins::{self, PinDir},
    policy::{self, Diagnostic},
    reload::{self, Reloader},
    sinks::{jsonl, Bus, Hub},
    vocab::Origin,
};

/// Pending records (bytes) in the ring buffer that trigger a wakeup.
const WAKEUP_BYTES: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("invalid policies, not starting:\n{}", .0.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<Diagnostic>),
    #[error("the default policy {0:?} is not defined (--default-policy; loaded: {1})")]
    DefaultPolicy(String, String),
    #[error("--adopt {0}: policy {1:?} is not defined (loaded: {2})")]
    AdoptPolicy(String, String, String),
}

pub async fn run(config: DaemonConfig, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let started = Instant::now();
    // SIGHUP's default action ends the process: the listeners are in place
    // before anything else, so a SIGHUP during start-up (a `systemctl
    // reload`, a test's policy edit) is a reload and a reopen once running,
    // not the daemon's end. The streams keep a signal that comes before
    // their first poll.
    let hup = || tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let (hup_reload, hup_reopen) = (hup()?, hup()?);
    host::require_root()?;
    match &config.config_file {
        Some(file) => tracing::info!(file = %file.display(), "configuration file read"),
        None => tracing::info!("no configuration file; flags and built-in defaults apply"),
    }
    host::require_btf()?;
    host::raise_memlock_limit();
    host::ensure_tracefs()?;
    let hierarchy = Hierarchy::discover()?;
    let (offsets, tamper) = btf::all_offsets(VMLINUX_BTF.as_ref(), std::process::id())?;
    let offsets_done = started.elapsed();
    // Policies before anything is loaded: a broken policy stops the start.
    let set = policy::load_daemon_set(config.policy_dir.as_deref()).map_err(DaemonError::Policy)?;
    if set.get(&config.default_policy).is_none() {
        let names: Vec<&str> = set.policies().iter().map(|p| p.name.as_str()).collect();
        return Err(DaemonError::DefaultPolicy(config.default_policy.clone(), names.join(", ")));
    }
    for rule in &config.adopt {
        let policy = rule.policy.as_ref().unwrap_or(&config.default_policy);
        if set.get(policy).is_none() {
            let names: Vec<&str> = set.policies().iter().map(|p| p.name.as_str()).collect();
            return Err(DaemonError::AdoptPolicy(rule.pattern.clone(), policy.clone(), names.join(", ")));
        }
    }
    match &config.policy_dir {
        Some(dir) => tracing::info!(dir = %dir.display(), policies = set.policies().len(), "policies loaded"),
        None => tracing::info!("no policy directory; the embedded default policy is loaded"),
    }

    let parent = hierarchy.mount_point.join(&config.cgroup_parent);
    cgroup::create_all(&parent)?;
    let key = pins::daemon_key(&config.cgroup_parent);
    let state = StateDir::create(config.state_dir.join(&key))
        .map_err(|e| io::Error::other(format!("state directory {}: {e}", config.state_dir.join(&key).display())))?;
    let _lock = cgroup::lock_parent(&parent)?;
    let (pin_dir, mut continuity) = match &config.pin_dir {
        None => (None, "disabled (--pin-dir none): enforcement ends with the daemon".to_owned()),
        Some(base) => match pins::layout_id(loader::EBPF_OBJECT, config.ringbuf_bytes)
            .and_then(|layout| PinDir::prepare(base, &key, &layout))
        {
            Ok(p) => {
                let d = format!("links and maps pinned under {}", p.dir().display());
                (Some(p), d)
            }
            Err(e) => (None, format!("cannot pin: {e}; enforcement ends with the daemon")),
        },
    };
    // Trajectories a previous daemon left. A state file that cannot be
    // read keeps the previous bindings and pins in place (see resume).
    let (found, unreadable) = state.load();
    if !unreadable.is_empty() {
        continuity.push_str(&format!(
            "; {} unreadable trajectory state file(s) ({}): the previous daemon's bindings and pins are kept so \
             those trajectories stay judged, unrecorded; fix or remove the files and restart",
            unreadable.len(),
            unreadable.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
    }

    let (loaded, maps, policy_maps) = loader::load(&LoadOptions {
        offsets,
        ringbuf_bytes: config.ringbuf_bytes,
        wakeup_bytes: WAKEUP_BYTES.min(u64::from(config.ringbuf_bytes) / 4),
        cgroup_parent: &parent,
        tamper,
        pins: pin_dir.as_ref(),
    })?;
    let start_guard = pin_dir.as_ref().map(PinDir::start_guard);
    if let Some(p) = &pin_dir {
        if p.reused {
            continuity.push_str("; maps reused from a previous daemon of this layout");
        }
        for u in &loaded.unpinned {
            continuity.push_str(&format!("; {} not pinned: {}", u.hook, u.reason));
        }
    }
    let metrics = Metrics::new();
    for h in &loaded.hooks {
        metrics.hook_mechanism.with_label_values(&[h.hook, h.mechanism]).set(1);
        if h.mechanism == mechanism::UNAVAILABLE {
            tracing::warn!(hook = h.hook, mechanism = h.mechanism, "{}", h.detail);
        } else {
            tracing::info!(hook = h.hook, mechanism = h.mechanism, "{}", h.detail);
        }
    }
    let e = loaded.enforcement;
    tracing::info!(file = e.file, exec = e.exec, network = e.network, "enforcement per rule class");
    for (class, m) in [("file", e.file), ("exec", e.exec), ("network", e.network)] {
        metrics.enforcement.with_label_values(&[class, m]).set(1);
    }
    for (class, m) in [("file", e.file), ("exec", e.exec)] {
        if m == mechanism::KILL {
            tracing::warn!(
                "{class} rules are enforced by killing the process (no BPF LSM on this kernel): a denied {class} \
                 operation has already happened when the process dies (see docs/policy.md)"
            );
        }
    }
    for p in set.policies() {
        let weak: Vec<&str> = [("file", e.file), ("exec", e.exec), ("network", e.network)]
            .into_iter()
            .filter(|(_, m)| matches!(*m, mechanism::AUDIT_ONLY | mechanism::UNAVAILABLE))
            .map(|(c, _)| c)
            .collect();
        if p.mode == policy::Mode::Enforce && !weak.is_empty() {
            tracing::error!(
                policy = %p.name,
                "policy is in enforce mode but this kernel cannot enforce its {} rules: they are only recorded",
                weak.join(", ")
            );
        }
    }
    let policy_table = Arc::new(std::sync::RwLock::new(reload::table(&set)));
    let mut enforcer = Enforcer::new(policy_maps, set);
    let protected = policy::Protected::for_daemon(
        &config.control_socket,
        state.path(),
        config.policy_dir.as_deref(),
        match &config.events {
            jsonl::Output::File(f) => Some(f.as_path()),
            jsonl::Output::Stdout => None,
        },
        &hierarchy.mount_point,
        std::process::id(),
    );
    for p in protected.skipped() {
        tracing::warn!(path = %p, "cannot protect this path from trajectories (too long or not absolute)");
    }
    let mut protections = vec![ProtectionStatus {
        protection: "files".into(),
        mechanism: e.file.to_owned(),
        detail: format!(
            "opens for writing of {} and of any file on a cgroup or BPF filesystem",
            protected
                .paths()
                .iter()
                .map(|p| if p.directory { format!("{}/", p.path) } else { p.path.clone() })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }];
    protections.extend(loaded.protections.iter().map(|p| ProtectionStatus {
        protection: p.protection.to_owned(),
        mechanism: p.mechanism.to_owned(),
        detail: p.detail.clone(),
    }));
    let keep_on_exit = pin_dir.is_some() && !config.stop_enforcement_on_exit;
    protections.push(ProtectionStatus {
        protection: "continuity".into(),
        mechanism: if pin_dir.is_some() && loaded.unpinned.is_empty() {
            mechanism::PINNED.into()
        } else {
            mechanism::UNAVAILABLE.into()
        },
        detail: format!(
            "{continuity}; {}",
            if keep_on_exit {
                "the kernel keeps enforcing when the daemon exits or is killed"
            } else if pin_dir.is_some() {
                "--stop-enforcement-on-exit: a clean exit removes the pins; a killed daemon's pins stay"
            } else {
                "no pins"
            }
        ),
    });
    for p in &protections {
        if p.mechanism == mechanism::UNAVAILABLE {
            tracing::warn!(protection = %p.protection, mechanism = %p.mechanism, "{}", p.detail);
        } else {
            tracing::info!(protection = %p.protection, mechanism = %p.mechanism, "{}", p.detail);
        }
    }
    enforcer.protect(protected);
    metrics.set_rule_counts(&enforcer.rule_counts());

    let metrics_listener = metrics::bind(config.metrics_addr).await?;
    // Before taking over from a previous daemon: a start that fails here
    // (another daemon on the socket) still undoes its pins. Clients that
    // connect now wait until the server runs, below.
    let listener = control::server::bind(&config.control_socket)?;
    if !config.metrics_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %config.metrics_addr,
            "the metrics endpoint is reachable from other hosts; it has no authentication (policy names and counts)"
        );
    }
    let hub = Arc::new(Hub::new(metrics.subscriber_dropped.clone(), metrics.subscribers.clone()));
    let (bus, sink_rx) = Bus::new(hub.clone());
    let reopen = Arc::new(AtomicBool::new(false));
    // Which of the records a killed daemon had numbered reached the file
    // (its trajectories' restart gaps count the others).
    let (written, marking) = match &config.events {
        jsonl::Output::File(path) => {
            // Not a trajectory id: those never start with '.'.
            let mark = state.path().join(".sink-mark");
            let written = jsonl::recover(path, &mark);
            // Only the trajectories there are state files for can still
            // write; the others died with a daemon and stay closed.
            let mut last = written.clone().unwrap_or_default();
            last.retain(|id, _| found.iter().any(|f| f.saved.id == *id));
            (written, Some(jsonl::Marking { path: mark, last }))
        }
        jsonl::Output::Stdout => (None, None),
    };
    let sink = jsonl::spawn(config.events.clone(), config.events_rotation, reopen.clone(), sink_rx, marking)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (handle, cmd_rx) = PipelineHandle::channel();
    let mut pipeline =
        Pipeline::new(maps, enforcer, loaded.runtime_flags, bus, metrics.clone(), Some(state.clone()), keep_on_exit)?;
    let (watcher, watch_events) = control::watcher::new()?;
    // Trajectories a previous daemon left: rebound, their streams resumed,
    // before the previous daemon's programs are detached.
    let previous_layouts = pin_dir.as_ref().map_or(&[][..], |p| &p.foreign[..]);
    let resumed = pipeline
        .resume(
            found,
            &config.default_policy,
            |path, id| watcher.watch(path, id),
            previous_layouts,
            !unreadable.is_empty(),
            written.as_ref(),
        )
        .await;
    if let Some(g) = start_guard {
        g.disarm();
    }
    if let Some(p) = &pin_dir {
        // Another layout's pins may hold the bindings of the trajectories
        // whose state is unreadable: they stay until the files are fixed.
        let removed = p.retire_old(unreadable.is_empty());
        if removed > 0 || !resumed.is_empty() {
            tracing::info!(
                resumed = resumed.len(),
                old_links = removed,
                "took over from a previous daemon: its trajectories resumed, its programs detached"
            );
        }
    }
    sweep_stale(&parent, &resumed, !unreadable.is_empty());
    let pipeline = tokio::spawn(pipeline.run(cmd_rx, stop_rx.clone()));

    let watch_task = tokio::spawn(watch_events.run(handle.clone(), stop_rx.clone()));
    let hooks = loaded
        .hooks
        .iter()
        .map(|h| HookStatus {
            hook: h.hook.to_owned(),
            class: format!("{:?}", h.class).to_lowercase(),
            mechanism: h.mechanism.to_owned(),
            detail: h.detail.clone(),
        })
        .collect();
    let reloader = Reloader {
        dir: config.policy_dir.clone(),
        default_policy: config.default_policy.clone(),
        pipeline: handle.clone(),
        metrics: metrics.clone(),
        table: policy_table.clone(),
    };
    let reload_task = tokio::spawn(reloader.run(hup_reload, stop_rx.clone()));
    let reopen_task = tokio::spawn(reopen_on_hangup(reopen, hup_reopen, stop_rx.clone()));
    let adopter = Adopter {
        rules: config.adopt.clone(),
        hierarchy: hierarchy.clone(),
        own_parent: parent.clone(),
        default_policy: config.default_policy.clone(),
        pipeline: handle.clone(),
        resumed: resumed
            .iter()
            .filter(|r| r.origin == Origin::Adopt)
            .map(|r| (r.cgroup.clone(), r.cgroup_id))
            .collect(),
    };
    let adopt_task = tokio::spawn(adopter.run(stop_rx.clone()));
    let ctx = Arc::new(Context {
        hierarchy,
        parent: parent.clone(),
        pipeline: handle,
        watcher,
        hooks,
        enforcement: ClassEnforcement {
            file: e.file.to_owned(),
            exec: e.exec.to_owned(),
            network: e.network.to_owned(),
        },
        protections,
        policies: policy_table,
        policy_dir: config.policy_dir.as_ref().map(|d| d.display().to_string()),
        default_policy: config.default_policy.clone(),
        hub: hub.clone(),
    });
    let control_task = tokio::spawn(control::server::serve(listener, ctx, stop_rx.clone()));
    // Where a start's time goes (the kernel BTF parses and the verifier
    // dominate; under TCG, seconds).
    let phases: Vec<String> = std::iter::once(("offsets", offsets_done))
        .chain(loaded.timings.iter().copied())
        .map(|(name, d)| format!("{name}={}ms", d.as_millis()))
        .collect();
    tracing::info!(phases = %phases.join(" "), "started in {} ms", started.elapsed().as_millis());

    let mut metrics_stop = stop_rx.clone();
    let metrics_task = tokio::spawn(metrics::serve(metrics_listener, metrics, async move {
        let _ = metrics_stop.wait_for(|s| *s).await;
    }));
    // Parsing the kernel's BTF and loading the programs leave some 20 MiB
    // of freed heap that glibc keeps mapped; hand it back once, now that
    // the daemon settles into its steady state (docs/performance.md).
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    tracing::info!(
        control_socket = %config.control_socket.display(),
        metrics = %config.metrics_addr,
        cgroup_parent = %parent.display(),
        "agent-monitor ready"
    );

    tokio::pin!(shutdown);
    let mut pipeline = pipeline;
    let result = tokio::select! {
        _ = &mut shutdown => Ok(()),
        r = &mut pipeline => {
            // The pipeline only returns early on a fatal error.
            flatten(r)
        }
    };
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = control_task.await;
    let _ = watch_task.await;
    let _ = reload_task.await;
    let _ = reopen_task.await;
    let _ = adopt_task.await;
    hub.close();
    let _ = metrics_task.await;
    let result = if pipeline.is_finished() && result.is_err() { result } else { result.and(flatten(pipeline.await)) };
    // The pipeline held the last sender: the sink drains and flushes.
    match sink.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("event sink: {e}"),
        Err(_) => tracing::error!("event sink thread panicked"),
    }
    if let (Some(p), true) = (&pin_dir, config.stop_enforcement_on_exit) {
        p.remove_all();
        tracing::info!("pins removed (--stop-enforcement-on-exit): enforcement ends now");
    }
    drop(loaded);
    let _ = std::fs::remove_file(&config.control_socket);
    result
}

/// SIGHUP: the sink reopens its file before its next batch (the policy
/// reloader answers the same signal).
async fn reopen_on_hangup(
    reopen: Arc<AtomicBool>,
    mut hup: tokio::signal::unix::Signal,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = hup.recv() => reopen.store(true, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

fn flatten(r: Result<Result<(), PipelineError>, tokio::task::JoinError>) -> Result<(), DaemonError> {
    match r {
        Ok(inner) => inner.map_err(DaemonError::from),
        Err(e) => Err(DaemonError::Io(io::Error::other(format!("event pipeline task failed: {e}")))),
    }
}

/// Removes empty trajectory cgroups a previous daemon left without state
/// to resume; populated ones without state are reported.
fn sweep_stale(parent: &std::path::Path, resumed: &[crate::events::pipeline::Resumed], kept_bindings: bool) {
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
