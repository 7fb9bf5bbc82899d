//! The event pipeline: the one task that owns the ring buffer, the trajectory
//! maps and the per-trajectory sequence numbers.
//!
//! Because a single task assigns `seq` and opens and closes trajectories,
//! ordering guarantees hold by construction: a `trajectory_start` is
//! published before the first process joins the cgroup, and a
//! `trajectory_end` is published only after the ring buffer has been drained
//! once the cgroup is empty, so it follows the trajectory's last event.
//!
//! The kernel submits records without waking us until a batch's worth is
//! pending (see `WAKEUP_BYTES` in the kernel crate); a timer tick collects
//! smaller batches, bounding latency to [`POLL_INTERVAL`].

use std::{
    collections::HashMap as StdHashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use monitor_common::maps::{LossReason, RuntimeConfig, TrajectoryValue};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    decode::Decoded,
    kernel::Kernel,
    process,
    state::{self, Progress, Saved, StateDir},
    summary::Tally,
};
use crate::limits::Compartment;
use crate::record::{Body, Bytes, Process, Record, Step, Summary, Timestamp, Verdict, SCHEMA_VERSION};
use crate::{
    cgroup,
    clock::{self, BootToWall},
    domains::Domains,
    enforce::{Binding, EnforceError, Enforcer},
    metrics::Metrics,
    policy::PolicySet,
    sinks::Bus,
    vocab::{EndReason, GapReason, Lost, Origin},
};

/// Longest a record waits in the ring buffer when traffic is light.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Records per published batch.
const BATCH: usize = 4096;
/// Longest a `step` waits for a ring record reserved before its update to
/// be submitted (a BPF program submits within microseconds; this bounds a
/// kernel bug, not a normal case).
const STEP_PLACEMENT_WAIT: Duration = Duration::from_secs(1);

/// A `step` record waiting for its place in the trajectory's order.
#[derive(Clone, Copy)]
struct StepMarker {
    cgroup_id: u64,
    id: u32,
    /// CLOCK_BOOTTIME just before the map update.
    boot_ns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("trajectory {0} is already open")]
    Duplicate(String),
    #[error("too many open trajectories (kernel map full): {0}")]
    MapFull(#[source] aya::maps::MapError),
    #[error("kernel map update failed: {0}")]
    Map(#[source] aya::maps::MapError),
    #[error("ring buffer poll failed: {0}")]
    Poll(#[source] std::io::Error),
    #[error(transparent)]
    Policy(#[from] EnforceError),
    #[error("the daemon is shutting down")]
    Stopped,
    #[error("no open trajectory {0}")]
    UnknownTrajectory(String),
    #[error("invalid step: {0}")]
    Step(String),
}

/// Steps one trajectory may name; a harness that needs more is broken.
pub const MAX_STEPS: usize = 100_000;
/// Longest step name, in bytes.
pub const MAX_STEP_NAME: usize = 256;

/// An open trajectory as `status` shows it (`control::protocol`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrajectoryStatus {
    pub trajectory: String,
    pub cgroup: String,
    /// Records published so far.
    pub records: u64,
    /// Records the kernel could not deliver.
    pub lost: u64,
    pub policy: String,
    /// Who the agent started as (`run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<crate::account::AgentIdentity>,
    /// The limits on its cgroup, as its policy set them when it opened.
    #[serde(default, skip_serializing_if = "crate::policy::Limits::is_empty")]
    pub limits: crate::policy::Limits,
    /// Its Landlock layer (`run` on a kernel without BPF LSM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock: Option<crate::landlock::Layer>,
}

/// The open trajectory a cgroup belongs to ([`Command::Owner`]), with what
/// a record the daemon makes for it carries: its policy instance, to name
/// the verdict, and its current step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub id: String,
    pub cgroup_id: u64,
    pub instance: u32,
    pub step: u32,
}

/// A trajectory to open.
#[derive(Debug)]
pub struct OpenSpec {
    pub id: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub level: u32,
    pub command: Vec<Bytes>,
    /// The process that asked (it is the first to join).
    pub client: Process,
    /// The policy judging it.
    pub binding: Binding,
    /// `run` (created for a client) or `adopt` (an existing cgroup that
    /// matched a configured pattern; not removed at the end).
    pub origin: Origin,
    /// Who the command starts as, when the client said (`run`).
    pub agent: Option<Box<crate::account::AgentIdentity>>,
    /// Where its limits are (written already, before anyone joined).
    pub compartment: Box<Compartment>,
    /// Plan a Landlock layer for these classes (`run` on a kernel with
    /// Landlock where the tracepoints enforce them).
    pub landlock: Option<crate::landlock::Wanted>,
}

/// A trajectory a restarted daemon took over, still alive.
#[derive(Debug)]
pub struct Resumed {
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub origin: Origin,
    pub compartment: Compartment,
}

#[derive(Debug)]
pub enum Command {
    Open {
        spec: OpenSpec,
        reply: oneshot::Sender<Result<Option<crate::landlock::Plan>, PipelineError>>,
    },
    Close {
        cgroup_id: u64,
        reason: EndReason,
    },
    List {
        reply: oneshot::Sender<Vec<TrajectoryStatus>>,
    },
    /// Replace the policy set: every open trajectory is rebound to its
    /// policy compiled from `set`, or, if any fails, nothing changes.
    Reload {
        set: PolicySet,
        reply: oneshot::Sender<Result<(), PipelineError>>,
    },
    /// Start a new step of a trajectory; answers the step id.
    Step {
        trajectory: String,
        name: String,
        id: Option<u32>,
        reply: oneshot::Sender<Result<u32, PipelineError>>,
    },
    /// A record made outside the kernel for a trajectory's process (the
    /// DNS resolver's `dns` records, the control server's `tamper` records
    /// of refused requests), published like a kernel record.
    Publish(Box<Decoded>),
    /// A `limit` record the daemon made (from a cgroup events file), in
    /// the trajectory's current step.
    Limit {
        cgroup_id: u64,
        body: Body,
    },
    /// Which open trajectory contains this cgroup (itself or an ancestor)?
    Owner {
        cgroup: PathBuf,
        reply: oneshot::Sender<Option<Owner>>,
    },
}

pub(super) struct Trajectory {
    pub(super) id: Arc<str>,
    pub(super) binding: Binding,
    /// The policy instance bound in the kernel.
    pub(super) instance: u32,
    pub(super) cgroup: PathBuf,
    pub(super) level: u32,
    pub(super) next_seq: u64,
    pub(super) started_boot_ns: u64,
    pub(super) lost_reported: u64,
    pub(super) origin: Origin,
    /// The current step (0: none yet) and the name of every step so far:
    /// records carry the step id the kernel saw, named here.
    pub(super) step: u32,
    pub(super) steps: StdHashMap<u32, Arc<str>>,
    pub(super) tally: Tally,
    /// Its state files (see [`state`]); `None` if they could not be written.
    pub(super) files: Option<state::Files>,
    /// Records were sequenced since the last progress write.
    pub(super) dirty: bool,
    pub(super) agent: Option<crate::account::AgentIdentity>,
    /// Its limits and where they are.
    pub(super) compartment: Compartment,
    /// The Landlock layer `run` applies to it.
    pub(super) layer: Option<crate::landlock::Layer>,
}

impl Trajectory {
    fn value(&self) -> TrajectoryValue {
        TrajectoryValue { policy: self.instance, step: self.step }
    }

    fn step(&self, id: u32) -> Option<Step> {
        self.steps.get(&id).map(|name| Step { id, name: name.clone() })
    }

    fn status(&self) -> TrajectoryStatus {
        TrajectoryStatus {
            trajectory: self.id.to_string(),
            cgroup: self.cgroup.display().to_string(),
            records: self.next_seq - 1,
            lost: self.lost_reported,
            policy: self.binding.policy.clone(),
            agent: self.agent.clone(),
            limits: self.compartment.limits,
            landlock: self.layer.clone(),
        }
    }
}

pub struct Pipeline {
    /// The ring buffer, the trajectory bindings and the loss counters.
    pub(super) kernel: Kernel,
    /// A `step` record not yet placed in its trajectory's order.
    step_marker: Option<StepMarker>,
    losses_reported: [u64; LossReason::COUNT as usize],
    pub(super) trajectories: StdHashMap<u64, Trajectory>,
    clock: BootToWall,
    bus: Bus,
    pub(super) metrics: Arc<Metrics>,
    pending: Vec<Record>,
    /// Kernel timestamps (CLOCK_BOOTTIME) of the kernel records in
    /// `pending`, for the pipeline latency histogram.
    pending_kernel_ts: Vec<u64>,
    pub(super) enforcer: Enforcer,
    /// What [`RuntimeConfig`] holds besides the trajectory levels: the
    /// flags chosen at load and the DNS resolver's address.
    runtime: RuntimeConfig,
    pub(super) state: Option<StateDir>,
    /// The kernel keeps enforcing after this daemon exits (pinned), so its
    /// trajectories stay open for the next daemon instead of ending.
    keep_on_exit: bool,
    /// Names of the addresses learned from DNS answers.
    domains: Domains,
}

impl Pipeline {
    /// A pipeline on `kernel`: the loaded maps ([`Kernel::maps`]), or
    /// in-memory fakes in tests.
    pub fn new(
        kernel: Kernel,
        enforcer: Enforcer,
        runtime: RuntimeConfig,
        bus: Bus,
        metrics: Arc<Metrics>,
        state: Option<StateDir>,
        keep_on_exit: bool,
    ) -> Self {
        Pipeline {
            kernel,
            step_marker: None,
            losses_reported: [0; LossReason::COUNT as usize],
            trajectories: StdHashMap::new(),
            clock: BootToWall::sample(),
            bus,
            metrics,
            pending: Vec::with_capacity(BATCH),
            pending_kernel_ts: Vec::with_capacity(BATCH),
            enforcer,
            runtime,
            state,
            keep_on_exit,
            domains: Domains::default(),
        }
    }

    /// Names the `domain` of connect records from `domains`.
    pub fn name_domains(&mut self, domains: Domains) {
        self.domains = domains;
    }

    /// Runs until `shutdown` turns true, then drains. With the pins kept
    /// (the default) open trajectories stay open for the next daemon, their
    /// progress saved; with `--stop-enforcement-on-exit` each is closed
    /// with reason `daemon_shutdown`.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), PipelineError> {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // One value per loop turn, moved once: boxing the command would cost
        // an allocation per command for no gain.
        #[allow(clippy::large_enum_variant)]
        enum Wake {
            Command(Command),
            Data,
            Tick,
            Inodes(crate::inodes::Change),
            Stop,
        }
        loop {
            let wake = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => Wake::Stop,
                cmd = commands.recv() => match cmd {
                    Some(c) => Wake::Command(c),
                    None => Wake::Stop,
                },
                ready = self.kernel.ring.readable() => {
                    ready.map_err(PipelineError::Poll)?;
                    Wake::Data
                }
                _ = tick.tick() => Wake::Tick,
                change = self.enforcer.inode_change() => Wake::Inodes(change),
            };
            match wake {
                Wake::Command(command) => self.command(command).await,
                Wake::Data => self.drain().await,
                Wake::Tick => {
                    self.enforcer.tick(Instant::now());
                    self.clock = BootToWall::sample();
                    self.drain().await;
                    self.report_losses().await;
                }
                Wake::Inodes(change) => self.enforcer.on_inode_change(change),
                Wake::Stop => break,
            }
        }
        self.drain().await;
        if self.keep_on_exit {
            // The kernel goes on judging and recording them; the next
            // daemon resumes their streams where this one stops.
            self.report_losses().await;
            self.save_progress(true);
            if !self.trajectories.is_empty() {
                tracing::info!(
                    trajectories = self.trajectories.len(),
                    "open trajectories stay enforced by the pinned programs; the next daemon resumes their streams"
                );
            }
            return Ok(());
        }
        let open: Vec<u64> = self.trajectories.keys().copied().collect();
        for cgroup_id in open {
            // The processes live on; their cgroups stay, the stream ends.
            self.close(cgroup_id, EndReason::DaemonShutdown, false).await;
        }
        Ok(())
    }

    /// Answers one command. Those that change what the kernel records
    /// publish what is pending first: the records of other trajectories
    /// stay ahead of the change.
    async fn command(&mut self, command: Command) {
        match command {
            Command::Open { spec, reply } => {
                self.drain().await;
                let _ = reply.send(self.open(spec).await);
            }
            Command::Close { cgroup_id, reason } => {
                self.drain().await;
                self.close(cgroup_id, reason, true).await;
            }
            Command::Step { trajectory, name, id, reply } => {
                self.drain().await;
                let _ = reply.send(self.step(&trajectory, name, id).await);
            }
            Command::Publish(d) => {
                // The kernel's records of what led to it (the redirected
                // connect) come first.
                self.drain().await;
                self.take(*d);
            }
            Command::Limit { cgroup_id, body } => {
                if let Body::Limit { limit, event, count, .. } = &body {
                    self.count_limit(cgroup_id, limit, event, count.unwrap_or(1));
                }
                self.push(cgroup_id, clock::boottime_ns(), body, Process::default());
                self.flush().await;
            }
            Command::Owner { cgroup, reply } => {
                let owner = self.trajectories.iter().find(|(_, t)| cgroup.starts_with(&t.cgroup));
                let _ = reply.send(owner.map(|(&cgroup_id, t)| Owner {
                    id: t.id.to_string(),
                    cgroup_id,
                    instance: t.instance,
                    step: t.step,
                }));
            }
            Command::List { reply } => {
                let mut list: Vec<TrajectoryStatus> = self.trajectories.values().map(Trajectory::status).collect();
                list.sort_by(|a, b| a.trajectory.cmp(&b.trajectory));
                let _ = reply.send(list);
            }
            Command::Reload { set, reply } => {
                self.drain().await;
                let _ = reply.send(self.reload(set));
            }
        }
    }

    async fn open(&mut self, spec: OpenSpec) -> Result<Option<crate::landlock::Plan>, PipelineError> {
        if self.trajectories.values().any(|t| *t.id == *spec.id) || self.trajectories.contains_key(&spec.cgroup_id) {
            return Err(PipelineError::Duplicate(spec.id));
        }
        let instance = self.enforcer.open(&spec.binding)?;
        if let Err(e) = self.register(&spec, instance) {
            self.enforcer.retire(instance, Instant::now());
            return Err(e);
        }
        let plan = self.plan_layer(&spec, instance);
        let layer = plan.as_ref().map(crate::landlock::Layer::of);
        let now = clock::boottime_ns();
        let files = self.state.as_ref().and_then(|dir| {
            let saved = Saved {
                format: state::STATE_FORMAT,
                id: spec.id.clone(),
                cgroup: spec.cgroup.clone(),
                cgroup_id: spec.cgroup_id,
                level: spec.level,
                origin: spec.origin,
                policy: spec.binding.policy.clone(),
                vars: spec.binding.vars.clone(),
                started_boot_ns: now,
                rules_digest: self.enforcer.rules_digest(),
                agent: spec.agent.as_deref().cloned(),
                compartment: (!spec.compartment.is_empty()).then(|| (*spec.compartment).clone()),
                landlock: layer.clone(),
            };
            dir.open(&saved, Progress { next_seq: 1, lost_reported: 0, alive_boot_ns: now })
                .map_err(|e| tracing::error!(trajectory = %spec.id, "cannot write its state: a restarted daemon will not resume it: {e}"))
                .ok()
        });
        self.trajectories.insert(
            spec.cgroup_id,
            Trajectory {
                id: spec.id.into(),
                binding: spec.binding,
                instance,
                cgroup: spec.cgroup.clone(),
                level: spec.level,
                next_seq: 1,
                started_boot_ns: now,
                lost_reported: 0,
                origin: spec.origin,
                step: 0,
                steps: StdHashMap::new(),
                tally: Tally::default(),
                files,
                dirty: true,
                agent: spec.agent.as_deref().cloned(),
                compartment: *spec.compartment,
                layer,
            },
        );
        self.write_levels()?;
        self.metrics.trajectories_started.inc();
        self.metrics.trajectories_active.set(self.trajectories.len() as i64);
        let body = Body::TrajectoryStart {
            cgroup: spec.cgroup.display().to_string(),
            command: spec.command,
            policy: self.trajectories[&spec.cgroup_id].binding.policy.clone(),
            origin: spec.origin,
            agent: spec.agent.map(|a| *a),
            vars: self.trajectories[&spec.cgroup_id].binding.vars.clone(),
        };
        self.push(spec.cgroup_id, now, body, spec.client);
        if spec.origin == Origin::Adopt {
            // Registered above, so a process missing from this listing
            // started afterwards and is in the kernel's records.
            for p in cgroup::procs_tree(&spec.cgroup).into_iter().filter_map(process::read_proc) {
                let body = Body::Process { source: "procfs", exe: p.exe, argv: p.argv };
                self.push(spec.cgroup_id, now, body, p.process);
            }
        }
        self.flush().await;
        Ok(plan)
    }

    /// The Landlock ruleset of a trajectory `spec` asks one for. The walk
    /// reads the directories the rules split, on this task like the compile
    /// before it: a few directories for the shipped policies.
    fn plan_layer(&self, spec: &OpenSpec, instance: u32) -> Option<crate::landlock::Plan> {
        let wanted = spec.landlock.as_ref()?;
        let compiled = self.enforcer.compiled(instance)?;
        let disk = crate::landlock::Disk { root: crate::landlock::view_of(spec.client.pid?) };
        Some(crate::landlock::plan(&compiled, &disk, wanted.abi, &wanted.classes))
    }

    /// Makes `name` the trajectory's current step: the kernel map first, so
    /// every record the kernel takes from here on carries it, then the
    /// `step` record, which therefore precedes them in `seq`.
    async fn step(&mut self, trajectory: &str, name: String, id: Option<u32>) -> Result<u32, PipelineError> {
        if name.is_empty() || name.len() > MAX_STEP_NAME || name.chars().any(char::is_control) {
            return Err(PipelineError::Step(format!(
                "the name must be 1 to {MAX_STEP_NAME} bytes without control characters"
            )));
        }
        let (&cgroup_id, t) = self
            .trajectories
            .iter_mut()
            .find(|(_, t)| *t.id == *trajectory)
            .ok_or_else(|| PipelineError::UnknownTrajectory(trajectory.to_owned()))?;
        let id = match id {
            Some(0) => return Err(PipelineError::Step("step ids start at 1".into())),
            Some(id) => id,
            None => t
                .steps
                .keys()
                .max()
                .map_or(Some(1), |m| m.checked_add(1))
                .ok_or_else(|| PipelineError::Step("no step id left after 4294967295; pass --id".into()))?,
        };
        if t.steps.len() >= MAX_STEPS && !t.steps.contains_key(&id) {
            return Err(PipelineError::Step(format!("trajectory {trajectory} already has {MAX_STEPS} steps")));
        }
        if let Some(f) = t.files.as_mut() {
            if let Err(e) = f.step(id, &name) {
                tracing::warn!(trajectory = %t.id, "cannot save the step: {e}");
            }
        }
        t.steps.insert(id, name.into());
        let previous = std::mem::replace(&mut t.step, id);
        let value = t.value();
        // Stamped before the update: every record that read the new step
        // was stamped after it.
        let stamped = clock::boottime_ns();
        if let Err(e) = self.kernel.bindings.set(cgroup_id, value) {
            let t = self.trajectories.get_mut(&cgroup_id).expect("found above");
            t.step = previous;
            return Err(PipelineError::Map(e));
        }
        self.place_step(cgroup_id, id, previous, stamped).await;
        Ok(id)
    }

    /// Publishes the `step` record of an update just made, at the one place
    /// in the trajectory's order that docs/events.md promises: after every
    /// record reserved in the ring before the update, and before the first
    /// record that carries the new step. Either comes first: a record that
    /// read the new step was reserved after the update, and anything reserved
    /// before `reserved` (sampled after the update) is read once the
    /// consumer passes it. What can still follow with the old step is an
    /// operation whose hook read the old value and reserved its record after
    /// the update: in progress at that instant, so at most one per thread.
    async fn place_step(&mut self, cgroup_id: u64, id: u32, previous: u32, stamped: u64) {
        let reserved = self.kernel.ring.producer();
        if previous != id {
            // (The same id again: records carrying it are not new.)
            self.step_marker = Some(StepMarker { cgroup_id, id, boot_ns: stamped });
        }
        let deadline = Instant::now() + STEP_PLACEMENT_WAIT;
        loop {
            self.drain().await;
            // A reserved record the kernel has not submitted yet stops the
            // consumer; a BPF program submits or discards what it reserves
            // before it returns, so this wait is short.
            if self.step_marker.is_none() || self.kernel.ring.consumer() >= reserved {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    "a ring record reserved before step {id} stayed unsubmitted for {STEP_PLACEMENT_WAIT:?}; \
                     the step record is written without it"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        match self.step_marker.take() {
            Some(m) => self.push(m.cgroup_id, m.boot_ns, Body::Step {}, Process::default()),
            None if previous == id => self.push(cgroup_id, stamped, Body::Step {}, Process::default()),
            None => {}
        }
        self.flush().await;
    }

    /// The `step` record pending in [`Self::step_marker`], if `d` is the
    /// first record to carry its step: published right before it.
    fn place_step_before(&mut self, d: &Decoded) {
        if let Some(m) = self.step_marker.filter(|m| m.cgroup_id == d.trajectory_cgroup && m.id == d.step) {
            self.step_marker = None;
            self.push(m.cgroup_id, m.boot_ns, Body::Step {}, Process::default());
        }
    }

    /// Kernel side of opening: loss counters first, so the kernel can count
    /// from the first record, then the trajectory with its policy instance.
    fn register(&mut self, spec: &OpenSpec, instance: u32) -> Result<(), PipelineError> {
        self.kernel.losses.start(spec.cgroup_id).map_err(PipelineError::MapFull)?;
        let value = TrajectoryValue { policy: instance, step: 0 };
        if let Err(e) = self.kernel.bindings.set(spec.cgroup_id, value) {
            self.kernel.losses.stop(spec.cgroup_id);
            return Err(PipelineError::MapFull(e));
        }
        Ok(())
    }

    /// Rebinds every open trajectory to its policy compiled from `set`: all
    /// new instances are written first, then each binding flips in one map
    /// update, then the old instances retire.
    fn reload(&mut self, set: PolicySet) -> Result<(), PipelineError> {
        let ids: Vec<u64> = self.trajectories.keys().copied().collect();
        let bindings: Vec<Binding> = ids.iter().map(|id| self.trajectories[id].binding.clone()).collect();
        let instances = self.enforcer.open_all(set, &bindings)?;
        let now = Instant::now();
        for (cgroup_id, instance) in ids.into_iter().zip(instances) {
            let t = self.trajectories.get_mut(&cgroup_id).expect("listed above");
            let old = std::mem::replace(&mut t.instance, instance);
            // Replacing an existing key cannot fail for lack of room.
            if let Err(e) = self.kernel.bindings.set(cgroup_id, t.value()) {
                t.instance = old;
                return Err(PipelineError::Map(e));
            }
            self.enforcer.retire(old, now);
        }
        self.metrics.set_rule_counts(&self.enforcer.rule_counts());
        Ok(())
    }

    pub(super) async fn close(&mut self, cgroup_id: u64, reason: EndReason, remove_cgroup: bool) {
        self.report_trajectory_loss(cgroup_id);
        let Some(t) = self.trajectories.get(&cgroup_id) else {
            return;
        };
        let now = clock::boottime_ns();
        let body = Body::TrajectoryEnd {
            reason,
            duration_ns: now.saturating_sub(t.started_boot_ns),
            records: t.next_seq - 1,
            lost: t.lost_reported,
            summary: Box::new(Summary { limits: t.compartment.counters(), ..t.tally.summary() }),
        };
        self.push(cgroup_id, now, body, Process::default());
        self.flush().await;
        let t = self.trajectories.remove(&cgroup_id).expect("present above");
        if let Some(dir) = &self.state {
            dir.remove(&t.id);
        }
        self.kernel.bindings.remove(cgroup_id);
        self.enforcer.retire(t.instance, Instant::now());
        self.kernel.losses.stop(cgroup_id);
        if let Err(e) = self.write_levels() {
            tracing::error!("updating trajectory levels after closing {}: {e}", t.id);
        }
        self.metrics.trajectories_ended.inc();
        self.metrics.trajectories_active.set(self.trajectories.len() as i64);
        if remove_cgroup && t.origin == Origin::Run {
            if let Err(e) = cgroup::remove_tree(&t.cgroup) {
                tracing::warn!("trajectory {} ended but its cgroup was not removed: {e}", t.id);
            }
            t.compartment.remove();
        }
        tracing::info!(trajectory = %t.id, reason = reason.as_str(), "trajectory ended");
    }

    pub(super) fn write_levels(&mut self) -> Result<(), PipelineError> {
        let levels = self.trajectories.values().fold(0u64, |m, t| m | 1u64.checked_shl(t.level).unwrap_or(0));
        (self.kernel.bindings)
            .configure(RuntimeConfig { trajectory_levels: levels, ..self.runtime })
            .map_err(PipelineError::Map)
    }

    /// Reads everything the kernel has submitted and publishes it.
    pub(super) async fn drain(&mut self) {
        loop {
            let mut n = 0;
            while n < BATCH {
                let Some(decoded) = self.kernel.ring.next() else { break };
                n += 1;
                match decoded {
                    Ok(d) => {
                        self.place_step_before(&d);
                        self.take(d);
                    }
                    Err(e) => {
                        tracing::warn!("dropping undecodable kernel record: {e}");
                        self.metrics.lost(Lost::DecodeError).inc();
                    }
                }
            }
            self.flush().await;
            if n < BATCH {
                return;
            }
        }
    }

    /// A decoded kernel record into the batch of its trajectory.
    fn take(&mut self, mut d: Decoded) {
        if let Body::Connect { domain, domain_id, .. } = &mut d.body {
            if *domain_id != 0 {
                *domain = self.domains.name(*domain_id);
            }
        }
        match self.trajectories.get_mut(&d.trajectory_cgroup) {
            Some(t) => {
                // A limit that held is no policy decision.
                let verdict = match &d.body {
                    Body::Limit { limit, event, .. } => {
                        self.metrics.limit_events(&t.binding.policy, limit, event).inc();
                        None
                    }
                    _ => {
                        if let Some(layer) = &t.layer {
                            let enforcer = &self.enforcer;
                            super::refusal::name(layer, || enforcer.compiled(t.instance), t.instance, &mut d);
                        }
                        Some(describe(&mut self.enforcer, &d))
                    }
                };
                self.pending_kernel_ts.push(d.ts_boot_ns);
                let record = make_record(&self.clock, t, d, verdict);
                t.tally.add(&record);
                self.pending.push(record);
            }
            None => self.metrics.lost(Lost::UnknownTrajectory).inc(),
        }
    }

    fn count_limit(&self, cgroup_id: u64, limit: &str, event: &str, n: u64) {
        if let Some(t) = self.trajectories.get(&cgroup_id) {
            self.metrics.limit_events(&t.binding.policy, limit, event).inc_by(n);
        }
    }

    pub(super) fn push(&mut self, cgroup_id: u64, boot_ns: u64, body: Body, process: Process) {
        if let Some(t) = self.trajectories.get_mut(&cgroup_id) {
            let seq = t.next_seq;
            t.next_seq += 1;
            t.dirty = true;
            let record = Record {
                v: SCHEMA_VERSION,
                ts: Timestamp(self.clock.wall_ns(boot_ns)),
                trajectory: t.id.clone(),
                seq,
                body,
                process,
                verdict: None,
                step: t.step(t.step),
            };
            if !matches!(record.body, Body::TrajectoryEnd { .. }) {
                t.tally.add(&record);
            }
            self.pending.push(record);
        }
    }

    pub(super) async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // The next seq is on disk before any record of the batch leaves:
        // a daemon killed from here on never lets its successor reuse one.
        self.save_progress(false);
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        self.metrics.count_batch(&batch);
        self.bus.publish(batch).await;
        self.observe_latency();
    }

    /// Observes, for each kernel record just published, the time since the
    /// kernel stamped it. Measured when the batch enters the sink's queue
    /// (`publish` returned), not when the sink has written it: the sink is
    /// a thread of its own behind that queue. A sink that falls behind
    /// still shows here, because `publish` waits once the queue is full.
    fn observe_latency(&mut self) {
        if self.pending_kernel_ts.is_empty() {
            return;
        }
        let now = clock::boottime_ns();
        let local = self.metrics.pipeline_latency.local();
        for ts in self.pending_kernel_ts.drain(..) {
            local.observe(now.saturating_sub(ts) as f64 / 1e9);
        }
        local.flush();
    }

    /// Writes the progress of every trajectory with new records (`all`:
    /// of every trajectory).
    fn save_progress(&mut self, all: bool) {
        let now = clock::boottime_ns();
        for t in self.trajectories.values_mut() {
            if !(t.dirty || all) {
                continue;
            }
            t.dirty = false;
            if let Some(f) = &t.files {
                let p = Progress { next_seq: t.next_seq, lost_reported: t.lost_reported, alive_boot_ns: now };
                if let Err(e) = f.progress(p) {
                    tracing::warn!(trajectory = %t.id, "cannot save its progress: {e}");
                }
            }
        }
    }

    async fn report_losses(&mut self) {
        for reason in LossReason::ALL {
            let total = self.kernel.losses.total(reason);
            let slot = &mut self.losses_reported[reason as usize];
            if total > *slot {
                self.metrics.lost(reason.into()).inc_by(total - *slot);
                *slot = total;
            }
        }
        let ids: Vec<u64> = self.trajectories.keys().copied().collect();
        for id in ids {
            self.report_trajectory_loss(id);
        }
        self.flush().await;
    }

    /// Emits a `gap` record if the kernel lost records of this trajectory
    /// since the last report.
    fn report_trajectory_loss(&mut self, cgroup_id: u64) {
        let Some(total) = self.kernel.losses.trajectory(cgroup_id) else { return };
        let Some(t) = self.trajectories.get_mut(&cgroup_id) else { return };
        if total > t.lost_reported {
            let lost = total - t.lost_reported;
            t.lost_reported = total;
            let now = clock::boottime_ns();
            let gap = Body::Gap { lost, reason: GapReason::RingbufFull, down_ns: None, unwritten: None };
            self.push(cgroup_id, now, gap, Process::default());
        }
    }
}

/// Names the policy and rule of a kernel record's verdict.
fn describe(enforcer: &mut Enforcer, d: &Decoded) -> Verdict {
    let v = d.verdict;
    let named = v.decision.and_then(|_| enforcer.describe(v.policy, v.rule_id));
    let (policy, rule) = match named {
        Some(n) => (Some(n.policy), Some(n.rule)),
        None => (None, None),
    };
    Verdict { decision: v.decision, action: v.action, policy, rule, mechanism: v.mechanism }
}

fn make_record(clock: &BootToWall, t: &mut Trajectory, d: Decoded, verdict: Option<Verdict>) -> Record {
    let seq = t.next_seq;
    t.next_seq += 1;
    t.dirty = true;
    Record {
        v: SCHEMA_VERSION,
        ts: Timestamp(clock.wall_ns(d.ts_boot_ns)),
        trajectory: t.id.clone(),
        seq,
        step: if d.step == 0 { None } else { t.step(d.step) },
        body: d.body,
        process: d.process,
        verdict,
    }
}
