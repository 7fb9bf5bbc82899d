//! Taking over the trajectories a previous daemon left: what the kernel
//! and the filesystem say of each ([`Survey`]), the decisions drawn from
//! that alone ([`plan_resume`], pure, unit-tested case by case), and the
//! pipeline applying them ([`Pipeline::resume`]).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::Instant,
};

use monitor_common::maps::TrajectoryValue;

use super::{
    kernel::{Bindings, LossCounters},
    leftover::Leftover,
    pipeline::{Pipeline, Resumed, Trajectory},
    state::Found,
    summary::Tally,
};
use crate::{
    cgroup, clock,
    enforce::Binding,
    record::{Body, Process},
    vocab::{EndReason, GapReason, Lost, Origin},
};

/// The policy name a kept binding is adopted under when no state file
/// names it.
const UNREADABLE_STATE: &str = "(unreadable state)";

/// What the kernel and the filesystem hold of one saved trajectory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Survey {
    /// Its binding in the trajectory map (reused maps only).
    pub bound: Option<TrajectoryValue>,
    /// Its loss counter (reused maps only).
    pub counted: Option<u64>,
    /// Its cgroup still exists under the same id.
    pub exists: bool,
    /// Its cgroup has processes (asked only where it matters: an existing
    /// `run` cgroup, after it is watched).
    pub populated: Option<bool>,
}

impl Survey {
    /// Reads the kernel's side; the cgroup's side is filled in by the caller.
    fn kernel(bindings: &dyn Bindings, losses: &dyn LossCounters, cgroup_id: u64) -> Survey {
        Survey { bound: bindings.get(cgroup_id), counted: losses.trajectory(cgroup_id), exists: false, populated: None }
    }
}

/// How a resumed trajectory goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Alive: its stream goes on.
    Resume,
    /// Ended while no daemon read: its stream is closed after its gap.
    Close { reason: EndReason, remove_cgroup: bool },
}

/// The decisions for one saved trajectory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrajectoryPlan {
    pub fate: Fate,
    /// Compile its policy from the current set and bind it (its cgroup
    /// exists); otherwise it keeps what the kernel binds, if anything.
    pub rebind: bool,
    /// Its current step: the kernel's, or the last saved one on new maps.
    pub step: u32,
    pub next_seq: u64,
    /// Losses already reported in its stream, of the counter it has now.
    pub lost_reported: u64,
    /// Counted by the kernel since that report: opens the restart gap.
    pub lost_since: u64,
    /// The maps are new: a zeroed loss counter is started for it.
    pub new_counter: bool,
    /// On new maps, the previous layout's report of its drop counter.
    pub previous_reported: Option<u64>,
    /// Records the previous daemon numbered but did not write (known only
    /// when the sink reports what it wrote).
    pub unwritten: Option<u64>,
}

/// The decisions of a take-over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResumePlan {
    /// Bindings no state file explains, to remove with their counters.
    pub unbind: Vec<u64>,
    /// Instances the kernel binds that stay (id, policy, rules digest);
    /// every other instance in the maps goes.
    pub keep_instances: Vec<(u32, String, u64)>,
    /// One per saved trajectory, in order.
    pub trajectories: Vec<TrajectoryPlan>,
}

/// Decides a take-over from the saved state (`found`), what the kernel and
/// the cgroup tree hold of each (`surveys`, in the same order), the
/// bindings no state file explains (`unexplained`), whether some state file
/// could not be read, and what the sink wrote per trajectory, if it knows.
///
/// Bindings without a state file are removed (nothing would ever retire
/// them and their instance ids would be handed out again) unless a state
/// file could not be read: any of them may be its trajectory's, so they
/// stay, with their instances, judging as before, unrecorded.
pub fn plan_resume(
    found: &[Found],
    surveys: &[Survey],
    unexplained: &[(u64, Option<TrajectoryValue>)],
    unreadable_state: bool,
    written: Option<&HashMap<String, u64>>,
) -> ResumePlan {
    let mut plan = ResumePlan::default();
    for (f, s) in found.iter().zip(surveys) {
        if let Some(b) = s.bound {
            plan.keep_instances.push((b.policy, f.saved.policy.clone(), f.saved.rules_digest));
        }
    }
    for (cgroup_id, bound) in unexplained {
        match (unreadable_state, bound) {
            (true, Some(b)) => plan.keep_instances.push((b.policy, UNREADABLE_STATE.to_owned(), 0)),
            (true, None) => {}
            (false, _) => plan.unbind.push(*cgroup_id),
        }
    }
    plan.trajectories = found.iter().zip(surveys).map(|(f, s)| plan_one(f, s, written)).collect();
    plan
}

fn plan_one(f: &Found, s: &Survey, written: Option<&HashMap<String, u64>>) -> TrajectoryPlan {
    let Found { saved, progress, steps } = f;
    let fate = if !s.exists {
        Fate::Close { reason: EndReason::CgroupRemoved, remove_cgroup: false }
    } else if saved.origin == Origin::Run && s.populated == Some(false) {
        Fate::Close { reason: EndReason::Exited, remove_cgroup: true }
    } else {
        Fate::Resume
    };
    // The loss counter survives with the maps; on fresh maps it starts at
    // zero and so does what was reported of it.
    let lost_reported = if s.counted.is_some() { progress.lost_reported } else { 0 };
    let next_seq = progress.next_seq.max(1);
    TrajectoryPlan {
        fate,
        rebind: s.exists,
        step: s.bound.map_or_else(|| steps.last().map_or(0, |s| s.0), |b| b.step),
        next_seq,
        lost_reported,
        lost_since: s.counted.unwrap_or(0).saturating_sub(lost_reported),
        new_counter: s.exists && s.counted.is_none(),
        previous_reported: s.counted.is_none().then_some(progress.lost_reported),
        // Numbered before the saved progress, not in the file.
        unwritten: written.map(|w| next_seq.saturating_sub(1).saturating_sub(w.get(&saved.id).copied().unwrap_or(0))),
    }
}

/// A restart gap waiting for the previous layout's count.
struct RestartGap {
    cgroup_id: u64,
    alive_boot_ns: u64,
    lost: u64,
    unwritten: Option<u64>,
    previous_reported: Option<u64>,
}

impl Pipeline {
    /// Takes over the trajectories a previous daemon left (its state files),
    /// before anything else runs. Each still-alive one is rebound to its
    /// policy compiled from the current set (the kernel kept judging it by
    /// the previous daemon's instance until this very update, or, on fresh
    /// maps after a layout change, had no binding for the instant since
    /// the new programs were attached), gets a `gap` record with reason
    /// `daemon_restart`, then the records the kernel queued meanwhile.
    /// One whose cgroup is gone or empty is closed. `watch` registers a
    /// `run` trajectory's cgroup for the close-on-empty watcher;
    /// `previous_layouts` are pin directories of earlier map layouts, whose
    /// queues and counters are counted as lost; `written` is what the sink
    /// wrote per trajectory, if it knows.
    pub async fn resume(
        &mut self,
        found: Vec<Found>,
        default_policy: &str,
        watch: impl Fn(&Path, u64) -> std::io::Result<()>,
        previous_layouts: &[PathBuf],
        unreadable_state: bool,
        written: Option<&HashMap<String, u64>>,
    ) -> Vec<Resumed> {
        let now = clock::boottime_ns();
        let surveys = self.survey(&found, &watch);
        let known: HashSet<u64> = found.iter().map(|f| f.saved.cgroup_id).collect();
        let unexplained: Vec<(u64, Option<TrajectoryValue>)> = (self.kernel.bindings.cgroups().into_iter())
            .filter(|k| !known.contains(k))
            .map(|k| (k, self.kernel.bindings.get(k)))
            .collect();
        let plan = plan_resume(&found, &surveys, &unexplained, unreadable_state, written);
        self.unbind_unexplained(&plan, unexplained.len());
        // Every instance no resumed trajectory is bound to is deleted.
        self.enforcer.adopt_instances(&plan.keep_instances);
        let mut gaps = Vec::new();
        let mut bound_at = HashMap::new();
        let mut ended = Vec::new();
        let mut alive = Vec::new();
        for ((f, survey), p) in found.into_iter().zip(surveys).zip(plan.trajectories) {
            let Some(gap) = self.take_over(f, survey, &p, default_policy, &mut bound_at) else { continue };
            let t = &self.trajectories[&gap.cgroup_id];
            match p.fate {
                Fate::Close { reason, remove_cgroup } => ended.push((gap.cgroup_id, reason, remove_cgroup)),
                Fate::Resume => {
                    tracing::info!(trajectory = %t.id, cgroup = %t.cgroup.display(), "trajectory resumed");
                    alive.push(Resumed {
                        cgroup: t.cgroup.clone(),
                        cgroup_id: gap.cgroup_id,
                        origin: t.origin,
                        compartment: t.compartment.clone(),
                    });
                }
            }
            gaps.push(gap);
        }
        let leftover = self.count_leftover(previous_layouts, &bound_at);
        for g in gaps {
            self.push_restart_gap(g, &leftover, now);
        }
        if let Err(e) = self.write_levels() {
            tracing::error!("writing trajectory levels after the restart: {e}");
        }
        self.metrics.trajectories_active.set(self.trajectories.len() as i64);
        self.flush().await;
        self.drain().await;
        for (cgroup_id, reason, remove) in ended {
            self.close(cgroup_id, reason, remove).await;
        }
        alive
    }

    /// What the kernel and the cgroup tree hold of each saved trajectory.
    /// An existing `run` cgroup is watched before its emptiness is read, so
    /// one that empties afterwards is closed by the watcher.
    fn survey(&self, found: &[Found], watch: &impl Fn(&Path, u64) -> std::io::Result<()>) -> Vec<Survey> {
        let (bindings, losses) = (&*self.kernel.bindings, &*self.kernel.losses);
        found
            .iter()
            .map(|f| {
                let saved = &f.saved;
                let mut s = Survey::kernel(bindings, losses, saved.cgroup_id);
                s.exists = cgroup::cgroup_id(&saved.cgroup).ok() == Some(saved.cgroup_id);
                if s.exists && saved.origin == Origin::Run {
                    if let Err(e) = watch(&saved.cgroup, saved.cgroup_id) {
                        tracing::error!(trajectory = %saved.id, "cannot watch its cgroup, it will not be closed when it empties: {e}");
                    }
                    s.populated = cgroup::is_populated(&saved.cgroup).ok();
                }
                s
            })
            .collect()
    }

    fn unbind_unexplained(&mut self, plan: &ResumePlan, unexplained: usize) {
        for &cgroup_id in &plan.unbind {
            self.kernel.bindings.remove(cgroup_id);
            self.kernel.losses.stop(cgroup_id);
        }
        if unexplained > plan.unbind.len() {
            tracing::warn!(
                trajectories = unexplained - plan.unbind.len(),
                "bindings without a readable state file are kept: they stay judged, their records are counted as \
                 unknown_trajectory losses"
            );
        }
    }

    /// Rebinds one saved trajectory as planned and makes it open again;
    /// returns its restart gap, or `None` if it cannot be judged at all.
    fn take_over(
        &mut self,
        f: Found,
        survey: Survey,
        p: &TrajectoryPlan,
        default_policy: &str,
        bound_at: &mut HashMap<u64, u64>,
    ) -> Option<RestartGap> {
        let Found { saved, progress, steps } = f;
        let mut binding = Binding { policy: saved.policy.clone(), vars: saved.vars.clone() };
        let instance = if p.rebind {
            self.rebind(&saved.id, &mut binding, survey.bound, default_policy)
        } else {
            // Only closed: no instance of its own (a sentinel id no
            // instance has) unless the kernel still binds one.
            Some(survey.bound.map_or(u32::MAX, |b| b.policy))
        };
        let Some(instance) = instance else {
            if let Some(dir) = &self.state {
                dir.remove(&saved.id);
            }
            return None;
        };
        if p.rebind {
            if p.new_counter {
                let _ = self.kernel.losses.start(saved.cgroup_id);
            }
            bound_at.insert(saved.cgroup_id, clock::boottime_ns());
            let value = TrajectoryValue { policy: instance, step: p.step };
            if let Err(e) = self.kernel.bindings.set(saved.cgroup_id, value) {
                tracing::error!(trajectory = %saved.id, "cannot bind it in the kernel: {e}");
            }
        }
        let files = self.state.as_ref().and_then(|dir| dir.reopen(&saved.id, progress).ok());
        let t = Trajectory {
            id: saved.id.as_str().into(),
            binding,
            instance,
            cgroup: saved.cgroup,
            level: saved.level,
            next_seq: p.next_seq,
            started_boot_ns: saved.started_boot_ns,
            // The gap opens this daemon's part and reports what the kernel
            // counted meanwhile.
            lost_reported: p.lost_reported + p.lost_since,
            origin: saved.origin,
            step: p.step,
            steps: steps.into_iter().map(|(id, name)| (id, name.into())).collect(),
            tally: Tally::default(),
            files,
            dirty: true,
            agent: saved.agent,
            compartment: saved.compartment.unwrap_or_default(),
            layer: saved.landlock,
        };
        self.trajectories.insert(saved.cgroup_id, t);
        self.metrics.trajectories_started.inc();
        Some(RestartGap {
            cgroup_id: saved.cgroup_id,
            alive_boot_ns: progress.alive_boot_ns,
            lost: p.lost_since,
            unwritten: p.unwritten,
            previous_reported: p.previous_reported,
        })
    }

    /// Compiles a resumed trajectory's policy from the current set; keeps
    /// what the kernel has if that fails, and only binds the default policy
    /// where it has nothing. `None`: nothing can judge it.
    fn rebind(
        &mut self,
        id: &str,
        binding: &mut Binding,
        bound: Option<TrajectoryValue>,
        default: &str,
    ) -> Option<u32> {
        match self.enforcer.open(binding) {
            Ok(instance) => {
                if let Some(old) = bound {
                    self.enforcer.retire(old.policy, Instant::now());
                }
                Some(instance)
            }
            Err(e) => match bound {
                Some(old) => {
                    tracing::error!(trajectory = %id, "cannot recompile its policy, the previous daemon's instance keeps judging it: {e}");
                    Some(old.policy)
                }
                None => {
                    tracing::error!(trajectory = %id, policy = %binding.policy, "cannot compile its policy; binding the default policy {default:?}: {e}");
                    binding.policy = default.to_owned();
                    self.enforcer
                        .open(binding)
                        .map_err(|e| tracing::error!(trajectory = %id, "the default policy fails too, the trajectory is not judged: {e}"))
                        .ok()
                }
            },
        }
    }

    /// The `gap` record that opens a resumed trajectory's part of the
    /// stream, with what the previous layout's maps still held of it.
    fn push_restart_gap(&mut self, g: RestartGap, leftover: &Leftover, now: u64) {
        let mut lost = g.lost + leftover.queued.get(&g.cgroup_id).copied().unwrap_or(0);
        if let Some(reported) = g.previous_reported {
            let dropped = leftover.dropped.get(&g.cgroup_id).map_or(0, |d| d.saturating_sub(reported));
            self.metrics.lost(Lost::LayoutChange).inc_by(dropped);
            lost += dropped;
        }
        if let Some(n) = g.unwritten {
            self.metrics.lost(Lost::DaemonKilled).inc_by(n);
        }
        let gap = Body::Gap {
            lost,
            reason: GapReason::DaemonRestart,
            down_ns: Some(now.saturating_sub(g.alive_boot_ns)),
            unwritten: g.unwritten,
        };
        self.push(g.cgroup_id, g.alive_boot_ns, gap, Process::default());
    }

    /// Counts what the previous layouts' maps hold that this daemon cannot
    /// deliver ([`Leftover`]); the records into the loss metric here, the
    /// drop counters by the caller, against each trajectory's saved report.
    fn count_leftover(&self, previous_layouts: &[PathBuf], bound_at: &HashMap<u64, u64>) -> Leftover {
        if previous_layouts.is_empty() {
            return Leftover::default();
        }
        let leftover = Leftover::read(previous_layouts, bound_at);
        let queued = leftover.queued_total();
        self.metrics.lost(Lost::LayoutChange).inc_by(queued);
        if queued > 0 {
            tracing::warn!(
                records = queued,
                "records the kernel queued under the previous map layout cannot be delivered; counted as lost"
            );
        }
        leftover
    }
}
