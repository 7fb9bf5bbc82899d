//! Limits: `oom/mark_victim`, where the kernel's OOM killer picks the
//! process it kills. For a trajectory's memory limit that runs in a task of
//! the trajectory (the one whose allocation failed), so the record lands in
//! its stream, naming the victim. The cgroup's own `memory.events` count
//! the same kills but not who died.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use monitor_common::event::{decision, mechanism, EventKind, LimitEvent, LIMIT_OOM_KILL};

use crate::{policy::Verdict, record, trajectory};

/// Offset of `pid` in the tracepoint's record, after the common fields (the
/// same on every kernel: 6.8 added fields after it).
const MARK_VICTIM_PID: usize = 8;

#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    let Some(member) = trajectory::current() else {
        return 0;
    };
    let victim = unsafe { ctx.read_at::<i32>(MARK_VICTIM_PID) }.unwrap_or(0);
    let Some(mut rec) = record::reserve::<LimitEvent>(&member) else {
        return 0;
    };
    let ev = rec.as_mut_ptr();
    let verdict = Verdict { policy: member.policy, rule_id: 0, action: 0, decision: decision::NONE };
    unsafe {
        record::fill_header(&raw mut (*ev).header, EventKind::Limit, &member, &verdict, mechanism::NONE);
        (*ev).limit = LIMIT_OOM_KILL;
        (*ev).victim_pid = victim as u32;
    }
    record::submit(rec);
    0
}
