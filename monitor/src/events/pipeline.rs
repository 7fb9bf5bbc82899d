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

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf};
use monitor_common::maps::{LossReason, RuntimeConfig, TrajectoryValue};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot, watch},
};

use super::{
    decode::{decode, Decoded},
    record::{Body, Bytes, Process, Record, Timestamp, Verdict, SCHEMA_VERSION},
};
use crate::{
    cgroup,
    control::protocol::TrajectoryStatus,
    enforce::{Binding, EnforceError, Enforcer},
    loader::PipelineMaps,
    metrics::Metrics,
    policy::PolicySet,
    sinks::Bus,
};

/// Longest a record waits in the ring buffer when traffic is light.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Records per published batch.
const BATCH: usize = 4096;

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
    #[error("the event pipeline has stopped")]
    Stopped,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The cgroup has no process left.
    Exited,
    /// The process that opened it could not join it.
    StartFailed,
}

#[derive(Debug)]
pub enum Command {
    Open {
        spec: OpenSpec,
        reply: oneshot::Sender<Result<(), PipelineError>>,
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
}

struct Trajectory {
    id: Arc<str>,
    binding: Binding,
    /// The policy instance bound in the kernel.
    instance: u32,
    cgroup: PathBuf,
    level: u32,
    next_seq: u64,
    started_boot_ns: u64,
    lost_reported: u64,
}

/// Converts the kernel's CLOCK_BOOTTIME stamps to wall-clock time.
struct Clock {
    boot_to_wall_ns: i128,
}

impl Clock {
    fn sample() -> Self {
        Clock {
            boot_to_wall_ns: i128::from(clock_ns(libc::CLOCK_REALTIME)) - i128::from(clock_ns(libc::CLOCK_BOOTTIME)),
        }
    }

    fn wall(&self, boot_ns: u64) -> Timestamp {
        Timestamp((i128::from(boot_ns) + self.boot_to_wall_ns).max(0) as u64)
    }
}

pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct Pipeline {
    ring: AsyncFd<RingBuf<MapData>>,
    trajectory_map: HashMap<MapData, u64, TrajectoryValue>,
    trajectory_losses: PerCpuHashMap<MapData, u64, u64>,
    config: Array<MapData, RuntimeConfig>,
    losses: PerCpuArray<MapData, u64>,
    losses_reported: [u64; LossReason::COUNT as usize],
    trajectories: StdHashMap<u64, Trajectory>,
    clock: Clock,
    bus: Bus,
    metrics: Arc<Metrics>,
    pending: Vec<Record>,
    /// Kernel timestamps (CLOCK_BOOTTIME) of the kernel records in
    /// `pending`, for the pipeline latency histogram.
    pending_kernel_ts: Vec<u64>,
    enforcer: Enforcer,
    /// [`RuntimeConfig::flags`] chosen at load.
    runtime_flags: u64,
}

impl Pipeline {
    pub fn new(
        maps: PipelineMaps,
        enforcer: Enforcer,
        runtime_flags: u64,
        bus: Bus,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        Ok(Pipeline {
            // SAFETY: the ring buffer's fd is owned by the value moved into the
            // AsyncFd and lives exactly as long as the registration.
            ring: unsafe { AsyncFd::register_with_interest(maps.events, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?,
            trajectory_map: maps.trajectories,
            trajectory_losses: maps.trajectory_losses,
            config: maps.config,
            losses: maps.losses,
            losses_reported: [0; LossReason::COUNT as usize],
            trajectories: StdHashMap::new(),
            clock: Clock::sample(),
            bus,
            metrics,
            pending: Vec::with_capacity(BATCH),
            pending_kernel_ts: Vec::with_capacity(BATCH),
            enforcer,
            runtime_flags,
        })
    }

    /// Runs until `shutdown` turns true, then drains and closes every open
    /// trajectory with reason `daemon_shutdown`.
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
                ready = self.ring.readable_mut() => {
                    ready.map_err(PipelineError::Poll)?.clear_ready();
                    Wake::Data
                }
                _ = tick.tick() => Wake::Tick,
            };
            match wake {
                Wake::Command(Command::Open { spec, reply }) => {
                    // Publish what is pending first: their trajectories'
                    // records stay ahead of this one's start.
                    self.drain().await;
                    let _ = reply.send(self.open(spec).await);
                }
                Wake::Command(Command::Close { cgroup_id, reason }) => {
                    self.drain().await;
                    self.close(
                        cgroup_id,
                        match reason {
                            EndReason::Exited => "exited",
                            EndReason::StartFailed => "start_failed",
                        },
                        true,
                    )
                    .await;
                }
                Wake::Command(Command::List { reply }) => {
                    let mut list: Vec<TrajectoryStatus> = self
                        .trajectories
                        .values()
                        .map(|t| TrajectoryStatus {
                            trajectory: t.id.to_string(),
                            cgroup: t.cgroup.display().to_string(),
                            records: t.next_seq - 1,
                            lost: t.lost_reported,
                            policy: t.binding.policy.clone(),
                        })
                        .collect();
                    list.sort_by(|a, b| a.trajectory.cmp(&b.trajectory));
                    let _ = reply.send(list);
                }
                Wake::Command(Command::Reload { set, reply }) => {
                    self.drain().await;
                    let _ = reply.send(self.reload(set));
                }
                Wake::Data => self.drain().await,
                Wake::Tick => {
                    self.enforcer.tick(Instant::now());
                    self.clock = Clock::sample();
                    self.drain().await;
                    self.report_losses().await;
                }
                Wake::Stop => break,
            }
        }
        self.drain().await;
        let open: Vec<u64> = self.trajectories.keys().copied().collect();
        for cgroup_id in open {
            // The processes live on; their cgroups stay, the stream ends.
            self.close(cgroup_id, "daemon_shutdown", false).await;
        }
        Ok(())
    }

    async fn open(&mut self, spec: OpenSpec) -> Result<(), PipelineError> {
        if self.trajectories.values().any(|t| *t.id == *spec.id) || self.trajectories.contains_key(&spec.cgroup_id) {
            return Err(PipelineError::Duplicate(spec.id));
        }
        let instance = self.enforcer.open(&spec.binding)?;
        if let Err(e) = self.register(&spec, instance) {
            self.enforcer.retire(instance, Instant::now());
            return Err(e);
        }
        let now = clock_ns(libc::CLOCK_BOOTTIME);
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
            },
        );
        self.write_levels()?;
        self.metrics.trajectories_started.inc();
        self.metrics.trajectories_active.set(self.trajectories.len() as i64);
        let body = Body::TrajectoryStart {
            cgroup: spec.cgroup.display().to_string(),
            command: spec.command,
            policy: self.trajectories[&spec.cgroup_id].binding.policy.clone(),
        };
        self.push(spec.cgroup_id, now, body, spec.client);
        self.flush().await;
        Ok(())
    }

    /// Kernel side of opening: loss counters first, so the kernel can count
    /// from the first record, then the trajectory with its policy instance.
    fn register(&mut self, spec: &OpenSpec, instance: u32) -> Result<(), PipelineError> {
        let zero = PerCpuValues::try_from(vec![0u64; aya::util::nr_cpus().map_err(|(_, e)| PipelineError::Poll(e))?])
            .map_err(PipelineError::Poll)?;
        self.trajectory_losses.insert(spec.cgroup_id, zero, 0).map_err(PipelineError::MapFull)?;
        let value = TrajectoryValue { policy: instance, _pad: 0 };
        if let Err(e) = self.trajectory_map.insert(spec.cgroup_id, value, 0) {
            let _ = self.trajectory_losses.remove(&spec.cgroup_id);
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
            let value = TrajectoryValue { policy: instance, _pad: 0 };
            // Replacing an existing key cannot fail for lack of room.
            self.trajectory_map.insert(cgroup_id, value, 0).map_err(PipelineError::Map)?;
            let old = std::mem::replace(&mut t.instance, instance);
            self.enforcer.retire(old, now);
        }
        self.metrics.set_rule_counts(&self.enforcer.rule_counts());
        Ok(())
    }

    async fn close(&mut self, cgroup_id: u64, reason: &'static str, remove_cgroup: bool) {
        self.report_trajectory_loss(cgroup_id);
        let Some(t) = self.trajectories.get(&cgroup_id) else {
            return;
        };
        let now = clock_ns(libc::CLOCK_BOOTTIME);
        let body = Body::TrajectoryEnd {
            reason,
            duration_ns: now.saturating_sub(t.started_boot_ns),
            records: t.next_seq - 1,
            lost: t.lost_reported,
        };
        self.push(cgroup_id, now, body, Process::default());
        self.flush().await;
        let t = self.trajectories.remove(&cgroup_id).expect("present above");
        let _ = self.trajectory_map.remove(&cgroup_id);
        self.enforcer.retire(t.instance, Instant::now());
        let _ = self.trajectory_losses.remove(&cgroup_id);
        if let Err(e) = self.write_levels() {
            tracing::error!("updating trajectory levels after closing {}: {e}", t.id);
        }
        self.metrics.trajectories_ended.inc();
        self.metrics.trajectories_active.set(self.trajectories.len() as i64);
        if remove_cgroup {
            if let Err(e) = cgroup::remove_tree(&t.cgroup) {
                tracing::warn!("trajectory {} ended but its cgroup was not removed: {e}", t.id);
            }
        }
        tracing::info!(trajectory = %t.id, reason, "trajectory ended");
    }

    fn write_levels(&mut self) -> Result<(), PipelineError> {
        let levels = self.trajectories.values().fold(0u64, |m, t| m | 1u64.checked_shl(t.level).unwrap_or(0));
        self.config
            .set(0, RuntimeConfig { trajectory_levels: levels, flags: self.runtime_flags }, 0)
            .map_err(PipelineError::Map)
    }

    /// Reads everything the kernel has submitted and publishes it.
    async fn drain(&mut self) {
        loop {
            let ring = self.ring.get_mut();
            let mut n = 0;
            while n < BATCH {
                let Some(item) = ring.next() else { break };
                n += 1;
                match decode(&item) {
                    Ok(d) => match self.trajectories.get_mut(&d.trajectory_cgroup) {
                        Some(t) => {
                            let verdict = describe(&mut self.enforcer, &self.metrics, &d);
                            self.pending_kernel_ts.push(d.ts_boot_ns);
                            self.pending.push(make_record(&self.clock, t, d, verdict));
                        }
                        None => self.metrics.events_lost.with_label_values(&["unknown_trajectory"]).inc(),
                    },
                    Err(e) => {
                        tracing::warn!("dropping undecodable kernel record: {e}");
                        self.metrics.events_lost.with_label_values(&["decode_error"]).inc();
                    }
                }
            }
            self.flush().await;
            if n < BATCH {
                return;
            }
        }
    }

    fn push(&mut self, cgroup_id: u64, boot_ns: u64, body: Body, process: Process) {
        if let Some(t) = self.trajectories.get_mut(&cgroup_id) {
            let seq = t.next_seq;
            t.next_seq += 1;
            self.pending.push(Record {
                v: SCHEMA_VERSION,
                ts: self.clock.wall(boot_ns),
                trajectory: t.id.clone(),
                seq,
                body,
                process,
                verdict: None,
            });
        }
    }

    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        for r in &batch {
            self.metrics.count_event(r.body.kind(), r.verdict.as_ref().and_then(|v| v.decision));
        }
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
        let now = clock_ns(libc::CLOCK_BOOTTIME);
        let local = self.metrics.pipeline_latency.local();
        for ts in self.pending_kernel_ts.drain(..) {
            local.observe(now.saturating_sub(ts) as f64 / 1e9);
        }
        local.flush();
    }

    async fn report_losses(&mut self) {
        for reason in LossReason::ALL {
            let total: u64 = self.losses.get(&(reason as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
            let slot = &mut self.losses_reported[reason as usize];
            if total > *slot {
                self.metrics.events_lost.with_label_values(&[reason.as_str()]).inc_by(total - *slot);
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
        let Ok(per_cpu) = self.trajectory_losses.get(&cgroup_id, 0) else { return };
        let total: u64 = per_cpu.iter().sum();
        let Some(t) = self.trajectories.get_mut(&cgroup_id) else { return };
        if total > t.lost_reported {
            let lost = total - t.lost_reported;
            t.lost_reported = total;
            let now = clock_ns(libc::CLOCK_BOOTTIME);
            self.push(cgroup_id, now, Body::Gap { lost, reason: LossReason::RingbufFull.as_str() }, Process::default());
        }
    }
}

/// Names the policy and rule of a kernel record's verdict, and counts it.
fn describe(enforcer: &mut Enforcer, metrics: &Metrics, d: &Decoded) -> Verdict {
    let v = d.verdict;
    let named = v.decision.and_then(|_| enforcer.describe(v.policy, v.rule_id));
    let (policy, rule) = match named {
        Some(n) => (Some(n.policy), Some(n.rule)),
        None => (None, None),
    };
    if let (Some(decision), Some(policy)) = (v.decision, &policy) {
        let class = match d.body {
            Body::Exec { .. } => "exec",
            Body::Open { .. } => "file",
            Body::Tamper { .. } => "tamper",
            _ => "network",
        };
        metrics.count_decision(policy, class, decision, v.mechanism);
    }
    Verdict { decision: v.decision, action: v.action, policy, rule, mechanism: v.mechanism }
}

fn make_record(clock: &Clock, t: &mut Trajectory, d: Decoded, verdict: Verdict) -> Record {
    let seq = t.next_seq;
    t.next_seq += 1;
    Record {
        v: SCHEMA_VERSION,
        ts: clock.wall(d.ts_boot_ns),
        trajectory: t.id.clone(),
        seq,
        body: d.body,
        process: d.process,
        verdict: Some(verdict),
    }
}
