//! The daemon as a library function: [`run`] takes its configuration and a
//! shutdown future (`main` passes SIGINT/SIGTERM). The integration tests
//! start the binary; nothing starts `run` in-process yet.
//!
//! A start is a few phases, each returning what the next needs
//! ([`start`]): preflight checks → policy admission → the cgroup parent
//! (locked: one daemon per parent), state and pin directories → load and
//! attach every hook, pinning the links → the start-up report
//! ([`report`]) → bind /metrics and the control socket → sink and pipeline
//! → resume the trajectories a previous daemon left, then retire its pins
//! → the services ([`services`]). Nothing is served before the kernel
//! side is in place. Shutdown stops the clients first, then drains the
//! pipeline and flushes the sink; the pinned programs stay attached (the
//! kernel keeps enforcing) unless `--stop-enforcement-on-exit` removes the
//! pins.

mod error;
mod report;
mod serve;
mod services;
mod start;

use std::{
    future::Future,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

pub use self::{error::DaemonError, services::Service};
use self::{
    report::Report,
    serve::{Clients, Hangups},
    services::Services,
    start::KernelSide,
};
use crate::{
    config::DaemonConfig,
    control,
    domains::Domains,
    enforce::Enforcer,
    events::{self, handle::PipelineHandle, pipeline::Pipeline},
    loader::Loaded,
    metrics::Metrics,
    pins::PinDir,
    reload,
    sinks::Hub,
};

pub async fn run(config: DaemonConfig, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let started = Instant::now();
    let hangups = Hangups::listen()?;
    let host = start::preflight(&config)?;
    let offsets_done = started.elapsed();
    let set = start::admit_policies(&config)?;
    let (mut prepared, previous) = start::prepare(&config, &host.hierarchy)?;
    let KernelSide { loaded, maps, policy_maps, dns_maps } = start::load(&config, &host, &mut prepared)?;
    // Until the take-over, a failed start undoes its pins.
    let start_guard = prepared.pins.as_ref().map(PinDir::start_guard);
    let metrics = Metrics::new();
    let landlock_abi = crate::landlock::sys::abi();
    report::kernel(&loaded, &set, &metrics, landlock_abi);
    let policies = Arc::new(RwLock::new(reload::table(&set)));
    let domains = Domains::default();
    let mut enforcer = Enforcer::new(policy_maps, set).sharing_domains(domains.clone());
    let protected = report::protected(&config, &prepared, &host.hierarchy.mount_point);
    let keep_on_exit = prepared.pins.is_some() && !config.stop_enforcement_on_exit;
    let mut report = Report::new(&loaded, &protected, &prepared, keep_on_exit, landlock_abi);
    enforcer.protect(protected);
    metrics.set_rule_counts(&enforcer.rule_counts());
    let listeners = start::bind(&config).await?;

    let mut services = Services::new();
    let hub = Arc::new(Hub::new(metrics.subscriber_dropped.clone(), metrics.subscribers.clone()));
    let (bus, sink) = serve::sink(&config, &prepared, &previous, hub.clone(), &mut services)?;
    let (pipeline, commands) = PipelineHandle::channel();
    let resolver = start::resolver(&config, dns_maps, domains.clone(), pipeline.clone(), metrics.clone()).await?;
    report.dns = Some(resolver.status());
    let state = Some(prepared.state.clone());
    let kernel = events::kernel::Kernel::maps(maps)?;
    let runtime = start::runtime(&loaded, &resolver);
    let mut core = Pipeline::new(kernel, enforcer, runtime, bus, metrics.clone(), state, keep_on_exit);
    core.name_domains(domains);
    let (watcher, watch_events) = control::watcher::new()?;
    let written = sink.written.as_ref();
    let resumed = serve::take_over(&mut core, &config, &prepared, previous, &watcher, written, start_guard).await;
    services.spawn(Service::Pipeline, core.run(commands, services.stop_signal()));
    services.spawn(Service::Dns, resolver.run(services.stop_signal()));
    let (hierarchy, parent) = (host.hierarchy, prepared.parent.clone());
    let clients = Clients {
        hierarchy,
        parent,
        pipeline,
        watcher,
        watch_events,
        report,
        policies,
        metrics,
        hub: hub.clone(),
        resumed,
        hangups,
        sink,
        listeners,
    };
    serve::spawn_clients(&mut services, &config, clients);
    log_start(started, offsets_done, &loaded);
    // Parsing the kernel's BTF and loading the programs leave some 20 MiB
    // of freed heap that glibc keeps mapped; hand it back once, now that
    // the daemon settles into its steady state (docs/performance.md).
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    tracing::info!(
        control_socket = %config.control_socket.display(),
        metrics = %config.metrics_addr,
        cgroup_parent = %prepared.parent.display(),
        "agent-monitor ready"
    );

    let ended = services.until(shutdown).await;
    tracing::info!("shutting down");
    let stopped = services.stop(&hub).await;
    if let (Some(p), true) = (&prepared.pins, config.stop_enforcement_on_exit) {
        p.remove_all();
        tracing::info!("pins removed (--stop-enforcement-on-exit): enforcement ends now");
    }
    drop(loaded);
    let _ = std::fs::remove_file(&config.control_socket);
    Ok(ended.and(stopped)?)
}

/// Where a start's time went (the kernel BTF parses and the verifier
/// dominate; under TCG, seconds).
fn log_start(started: Instant, offsets_done: Duration, loaded: &Loaded) {
    let phases: Vec<String> = std::iter::once(("offsets", offsets_done))
        .chain(loaded.timings.iter().copied())
        .map(|(name, d)| format!("{name}={}ms", d.as_millis()))
        .collect();
    tracing::info!(phases = %phases.join(" "), "started in {} ms", started.elapsed().as_millis());
}
