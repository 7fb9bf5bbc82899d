//! The daemon as a library function: [`run`] takes its configuration and a
//! shutdown future, so tests and `main` start it the same way.
//!
//! Start order: preflight checks → cgroup parent → load and attach every
//! hook → event pipeline and sink → control socket → /metrics. Nothing is
//! reachable by clients before the kernel side is in place. Shutdown stops
//! the clients first, then drains the pipeline, flushes the sink and detaches
//! the programs.

use std::{future::Future, io, sync::Arc};

use tokio::sync::{mpsc, watch};

use crate::{
    btf::{self, BtfError, VMLINUX_BTF},
    cgroup::{self, CgroupError, Hierarchy},
    config::DaemonConfig,
    control::{
        self,
        protocol::HookStatus,
        server::{Context, ControlError},
    },
    events::pipeline::{Pipeline, PipelineError},
    host::{self, HostError},
    loader::{self, LoadError, LoadOptions},
    metrics::{self, Metrics},
    sinks::{jsonl, Bus},
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
}

pub async fn run(config: DaemonConfig, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    host::require_root()?;
    host::require_btf()?;
    host::raise_memlock_limit();
    host::ensure_tracefs()?;
    let hierarchy = Hierarchy::discover()?;
    let offsets = btf::kernel_offsets(VMLINUX_BTF.as_ref())?;

    let parent = hierarchy.mount_point.join(&config.cgroup_parent);
    cgroup::create_all(&parent)?;
    sweep_stale(&parent);

    let (loaded, maps) = loader::load(&LoadOptions {
        offsets,
        ringbuf_bytes: config.ringbuf_bytes,
        wakeup_bytes: WAKEUP_BYTES.min(u64::from(config.ringbuf_bytes) / 4),
        cgroup_parent: &parent,
    })?;
    for h in &loaded.hooks {
        tracing::info!(hook = h.hook, mechanism = h.mechanism, "{}", h.detail);
    }

    let metrics = Metrics::new();
    let metrics_listener = metrics::bind(config.metrics_addr).await?;
    let (bus, sink_rx) = Bus::new();
    let sink = jsonl::spawn(config.events.clone(), sink_rx)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let pipeline = Pipeline::new(maps, bus, metrics.clone())?;
    let pipeline = tokio::spawn(pipeline.run(cmd_rx, stop_rx.clone()));

    let (watcher, watch_events) = control::watcher::new()?;
    let watch_task = tokio::spawn(watch_events.run(cmd_tx.clone(), stop_rx.clone()));
    let listener = control::server::bind(&config.control_socket)?;
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
    let ctx = Arc::new(Context { hierarchy, parent: parent.clone(), pipeline: cmd_tx, watcher, hooks });
    let control_task = tokio::spawn(control::server::serve(listener, ctx, stop_rx.clone()));

    let mut metrics_stop = stop_rx.clone();
    let metrics_task = tokio::spawn(metrics::serve(metrics_listener, metrics, async move {
        let _ = metrics_stop.wait_for(|s| *s).await;
    }));
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
    let _ = metrics_task.await;
    let result = if pipeline.is_finished() && result.is_err() { result } else { result.and(flatten(pipeline.await)) };
    // The pipeline held the last sender: the sink drains and flushes.
    match sink.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("event sink: {e}"),
        Err(_) => tracing::error!("event sink thread panicked"),
    }
    drop(loaded);
    let _ = std::fs::remove_file(&config.control_socket);
    result
}

fn flatten(r: Result<Result<(), PipelineError>, tokio::task::JoinError>) -> Result<(), DaemonError> {
    match r {
        Ok(inner) => inner.map_err(DaemonError::from),
        Err(e) => Err(DaemonError::Io(io::Error::other(format!("event pipeline task failed: {e}")))),
    }
}

/// Removes empty trajectory cgroups left by a previous daemon; populated
/// ones are reported (re-adopting them is not implemented yet).
fn sweep_stale(parent: &std::path::Path) {
    for child in cgroup::children(parent).unwrap_or_default() {
        match cgroup::is_populated(&child) {
            Ok(false) => {
                if let Err(e) = cgroup::remove_tree(&child) {
                    tracing::warn!("cannot remove stale trajectory cgroup: {e}");
                }
            }
            _ => tracing::warn!(
                "trajectory cgroup {} from a previous daemon still has processes; they are not monitored",
                child.display()
            ),
        }
    }
}
