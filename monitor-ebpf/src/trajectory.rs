//! Is the current task part of a registered trajectory?
//!
//! A task belongs to a trajectory when its cgroup, or any ancestor of it, is
//! registered in [`TRAJECTORIES`]. The common case (the task sits directly in
//! the trajectory cgroup) costs one hash lookup; for tasks in child cgroups
//! the walk visits only the levels at which trajectories exist.

use aya_ebpf::helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};
use monitor_common::maps::{TrajectoryValue, MAX_CGROUP_LEVEL};

use crate::maps::{CONFIG, TRAJECTORIES};

/// The trajectory the current task belongs to.
pub struct Membership {
    /// Id of the registered trajectory cgroup (the map key).
    pub cgroup: u64,
    /// Policy instance bound to it, read once: every lookup of one
    /// operation uses this id, so a reload that rebinds the trajectory
    /// meanwhile cannot make one decision mix old and new rules.
    pub policy: u32,
    /// The trajectory's step, read with the policy from the same value.
    pub step: u32,
}

#[inline(always)]
fn member(cgroup: u64, value: *const TrajectoryValue) -> Membership {
    // SAFETY: a non-null pointer returned by a successful map lookup. One
    // 8-byte read: the daemon replaces the value as a whole, so policy and
    // step always come from the same update.
    let v = unsafe { core::ptr::read_volatile(value) };
    Membership { cgroup, policy: v.policy, step: v.step }
}

#[inline(always)]
pub fn current() -> Option<Membership> {
    let own = unsafe { bpf_get_current_cgroup_id() };
    if let Some(v) = TRAJECTORIES.get_ptr(&own) {
        return Some(member(own, v));
    }
    let levels = CONFIG.get(0)?.trajectory_levels;
    if levels == 0 {
        return None;
    }
    let mut level = 0u32;
    while level <= MAX_CGROUP_LEVEL {
        if levels & (1u64 << level) != 0 {
            let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
            if ancestor == 0 {
                // Deeper than the task's own cgroup: no further ancestors.
                return None;
            }
            if let Some(v) = TRAJECTORIES.get_ptr(&ancestor) {
                return Some(member(ancestor, v));
            }
        }
        level += 1;
    }
    None
}
