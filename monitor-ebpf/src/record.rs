//! Reserving, filling and submitting ring-buffer records.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
            bpf_ktime_get_boot_ns,
        },
    },
    maps::ring_buf::RingBufEntry,
};
use monitor_common::{
    event::{EventHeader, EventKind, COMM_LEN},
    maps::LossReason,
};

use crate::{
    maps::{offsets, wakeup_bytes, EVENTS, LOSSES, TRAJECTORY_LOSSES},
    policy::Verdict,
    trajectory::Membership,
};

/// Reserves a record of type `T`, counting the loss when there is no room.
#[inline(always)]
pub fn reserve<T: 'static>(member: &Membership) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_loss(member, LossReason::RingbufFull);
    }
    entry
}

#[inline(always)]
fn count_loss(member: &Membership, reason: LossReason) {
    if let Some(total) = LOSSES.get_ptr_mut(reason as u32) {
        unsafe { *total += 1 };
    }
    // Per-CPU, so a plain increment is exact without atomics; the daemon sums
    // the CPUs. The entry exists from registration until after the daemon
    // has read it for the trajectory's last gap record.
    if let Some(lost) = TRAJECTORY_LOSSES.get_ptr_mut(&member.cgroup) {
        unsafe { *lost += 1 };
    }
}

/// Submits, waking the consumer only when a batch's worth of data waits.
#[inline(always)]
pub fn submit<T>(entry: RingBufEntry<T>) {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let flags = if pending >= wakeup_bytes() { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
    entry.submit(flags as u64);
}

/// Fills the common header for the current task, with the decision taken
/// and, for a denial, the `mechanism` that carried it out.
///
/// # Safety
/// `h` must point to writable memory for an `EventHeader`.
#[inline(always)]
pub unsafe fn fill_header(h: *mut EventHeader, kind: EventKind, member: &Membership, v: &Verdict, mechanism: u8) {
    unsafe {
        let pid_tgid = bpf_get_current_pid_tgid();
        let uid_gid = bpf_get_current_uid_gid();
        (*h).kind = kind as u32;
        (*h).flags = 0;
        (*h).ts_boot_ns = bpf_ktime_get_boot_ns();
        (*h).trajectory_cgroup = member.cgroup;
        (*h).pid = (pid_tgid >> 32) as u32;
        (*h).tid = pid_tgid as u32;
        let (ppid, start_ns, parent_start_ns) = current_identity();
        (*h).ppid = ppid;
        (*h).start_ns = start_ns;
        (*h).parent_start_ns = parent_start_ns;
        (*h).step = member.step;
        (*h)._pad2 = 0;
        (*h).uid = uid_gid as u32;
        (*h).gid = (uid_gid >> 32) as u32;
        v.write(h);
        (*h).mechanism = if v.blocks() { mechanism } else { 0 };
        (*h)._pad = 0;
        if bpf_get_current_comm((&raw mut (*h).comm).cast(), COMM_LEN as u32) != 0 {
            (*h).comm = [0; COMM_LEN];
        }
    }
}

/// `current->real_parent->tgid` and the `start_boottime` of the current and
/// the parent thread-group leaders; a field that cannot be read is 0.
#[inline(always)]
fn current_identity() -> (u32, u64, u64) {
    let off = offsets();
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let start_ns = leader_start(task, &off);
        let parent: u64 = match bpf_probe_read_kernel(task.wrapping_add(off.task_real_parent as usize) as *const u64) {
            Ok(p) => p,
            Err(_) => return (0, start_ns, 0),
        };
        let parent = parent as *const u8;
        let ppid = bpf_probe_read_kernel(parent.wrapping_add(off.task_tgid as usize) as *const u32).unwrap_or(0);
        (ppid, start_ns, leader_start(parent, &off))
    }
}

/// `task->group_leader->start_boottime`, 0 if unreadable.
#[inline(always)]
unsafe fn leader_start(task: *const u8, off: &monitor_common::maps::KernelOffsets) -> u64 {
    unsafe {
        let Ok(leader) = bpf_probe_read_kernel(task.wrapping_add(off.task_group_leader as usize) as *const u64) else {
            return 0;
        };
        bpf_probe_read_kernel((leader as *const u8).wrapping_add(off.task_start_boottime as usize) as *const u64)
            .unwrap_or(0)
    }
}
