//! exec: `sched/sched_process_exec`, which fires after the new program image
//! is in place, so the argument block read here is the one the kernel copied
//! into the new process, not a user pointer another thread could rewrite.
//!
//! Exec rules are judged on the path of the new image's file
//! (`mm->exe_file`), resolved from dentries. Without BPF LSM a denied exec is
//! stopped here with `SIGKILL`: the exec has already replaced the process
//! image, but not one instruction of it runs. With BPF LSM,
//! [`crate::lsm::lsm_bprm_check`] refuses it before, and this hook only
//! records.

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user_buf,
        generated::{bpf_get_current_task, bpf_send_signal},
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use monitor_common::{
    event::{flags, mechanism, EventKind, ExecEvent, ARGS_LEN, FILENAME_LEN, PATH_LEN},
    maps::runtime,
};

use crate::{
    file,
    kernel::SIGKILL,
    maps::{offsets, runtime_flags},
    pathres,
    policy::{self, Verdict},
    record,
    trajectory::{self, Membership},
};

/// Offset of `__data_loc char[] filename` in the tracepoint record (after the
/// 8-byte common header); stable since the tracepoint was added.
const FILENAME_LOC_OFFSET: usize = 8;

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    on_exec(&ctx);
    0
}

#[inline(always)]
fn on_exec(ctx: &TracePointContext) {
    let Some(member) = trajectory::current() else {
        return;
    };
    let (verdict, resolved) = match exe_file() {
        Some(file) => file::judge_exec(&member, file, true),
        None => (policy::exec_default(member.policy), None),
    };
    let kill = verdict.blocks() && runtime_flags() & runtime::LSM_EXEC == 0;
    if kill {
        unsafe { bpf_send_signal(SIGKILL) };
    }
    let Some(mut entry) = record::reserve::<ExecEvent>(&member) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        record::fill_header(&raw mut (*ev).header, EventKind::Exec, &member, &verdict, mechanism::KILL);
        // With LSM enforcing, an exec this hook sees was allowed there.
        if verdict.blocks() && !kill {
            (*ev).header.mechanism = mechanism::LSM;
        }
        write_path(&raw mut (*ev).header.flags, &raw mut (*ev).path_len, &raw mut (*ev).path, &resolved);

        (*ev).filename_len = 0;
        let loc: u32 = ctx.read_at(FILENAME_LOC_OFFSET).unwrap_or(0);
        let src = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
        let dst = &mut *(&raw mut (*ev).filename);
        match bpf_probe_read_kernel_str_bytes(src, dst) {
            Ok(s) => {
                (*ev).filename_len = s.len() as u32;
                if s.len() >= FILENAME_LEN - 1 && ((loc >> 16) as usize) > FILENAME_LEN {
                    (*ev).header.flags |= flags::PATH_TRUNCATED;
                }
            }
            Err(_) => (*ev).header.flags |= flags::READ_FAILED,
        }

        (*ev).args_len = 0;
        match read_args(&mut *(&raw mut (*ev).args)) {
            Some((n, truncated)) => {
                (*ev).args_len = n as u32;
                if truncated {
                    (*ev).header.flags |= flags::ARGS_TRUNCATED;
                }
            }
            None => (*ev).header.flags |= flags::READ_FAILED,
        }
    }
    record::submit(entry);
}

/// Records an exec that got no new image: one BPF LSM refused, or an
/// executable mapping (`extra_flags`: `flags::EXEC_MAPPING`). No argv; the
/// filename is the resolved path.
#[inline(always)]
pub fn record_without_image(
    member: &Membership,
    verdict: &Verdict,
    resolved: &Option<pathres::Resolved>,
    how: u8,
    extra_flags: u32,
) {
    let Some(mut rec) = record::reserve::<ExecEvent>(member) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    unsafe {
        record::fill_header(&raw mut (*ev).header, EventKind::Exec, member, verdict, how);
        (*ev).header.flags |= extra_flags;
        write_path(&raw mut (*ev).header.flags, &raw mut (*ev).path_len, &raw mut (*ev).path, resolved);
        let n = (*ev).path_len as usize;
        let n = if n < FILENAME_LEN - 1 { n } else { FILENAME_LEN - 1 };
        bpf_probe_read_kernel_buf_raw((&raw mut (*ev).filename).cast(), n, (&raw const (*ev).path).cast());
        (*ev).filename[n & (FILENAME_LEN - 1)] = 0;
        (*ev).filename_len = n as u32;
        if n == FILENAME_LEN - 1 {
            (*ev).header.flags |= flags::PATH_TRUNCATED;
        }
        (*ev).args_len = 0;
    }
    record::submit(rec);
}

#[inline(always)]
unsafe fn bpf_probe_read_kernel_buf_raw(dst: *mut u8, n: usize, src: *const u8) {
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(dst.cast(), (n & (FILENAME_LEN - 1)) as u32, src.cast());
    }
}

/// Records a resolved path (or marks it unresolved) in a record.
#[inline(always)]
pub fn write_path(flags: *mut u32, len: *mut u32, dst: *mut [u8; PATH_LEN], r: &Option<pathres::Resolved>) {
    unsafe {
        match r {
            Some(r) => {
                *len = pathres::copy_out(r, dst) as u32;
                *flags |= flags::PATH_RESOLVED;
                if r.len() > PATH_LEN - 1 {
                    *flags |= flags::PATH_TRUNCATED;
                }
            }
            None => {
                *len = 0;
                (*dst)[0] = 0;
                *flags |= flags::PATH_UNRESOLVED;
            }
        }
    }
}

/// `current->mm->exe_file`.
#[inline(always)]
fn exe_file() -> Option<u64> {
    let off = offsets();
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let mm: u64 = bpf_probe_read_kernel(task.wrapping_add(off.task_mm as usize) as *const u64).ok()?;
        if mm == 0 {
            return None;
        }
        bpf_probe_read_kernel((mm as *const u8).wrapping_add(off.mm_exe_file as usize) as *const u64).ok()
    }
}

/// Copies `current->mm->arg_start .. arg_end` into `dst`.
#[inline(always)]
fn read_args(dst: &mut [u8; ARGS_LEN]) -> Option<(usize, bool)> {
    let off = offsets();
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let mm: u64 = bpf_probe_read_kernel(task.wrapping_add(off.task_mm as usize) as *const u64).ok()?;
        let mm = mm as *const u8;
        let start: u64 = bpf_probe_read_kernel(mm.wrapping_add(off.mm_arg_start as usize) as *const u64).ok()?;
        let end: u64 = bpf_probe_read_kernel(mm.wrapping_add(off.mm_arg_end as usize) as *const u64).ok()?;
        let total = end.wrapping_sub(start) as usize;
        let truncated = total > ARGS_LEN;
        let n = if truncated { ARGS_LEN } else { total };
        if n == 0 {
            return Some((0, false));
        }
        bpf_probe_read_user_buf(start as *const u8, dst.get_mut(..n)?).ok()?;
        Some((n, truncated))
    }
}
