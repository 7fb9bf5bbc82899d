//! BPF LSM enforcement: `file_open` and `bprm_check_security` refuse a
//! denied open or exec with `EPERM` before it happens, judged on the
//! kernel's resolved `struct file`. They cover every way to open or exec,
//! io_uring included.
//!
//! A kernel can accept and attach these programs and still never call them
//! (BPF LSM built but `bpf` missing from `lsm=`). Until enforcement is on
//! (`runtime::LSM_*`) each program only counts its invocations in
//! [`LSM_PROBE`]; the daemon turns enforcement on only after a self-test saw
//! the counters move, and otherwise unloads them and attaches the
//! tracepoint fallback.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use monitor_common::{
    event::{mechanism, EventKind, OpenEvent, OpenSyscall, AT_FDCWD},
    maps::{runtime, LsmProbe},
};

use crate::{
    exec::{self, write_path},
    file,
    kernel::{lsm_ret, read_u64, EPERM},
    maps::{offsets, runtime_flags, LSM_PROBE},
    pathres,
    policy::{Access, Verdict},
    record,
    trajectory::{self, Membership},
};

/// `__FMODE_EXEC` in `f_flags`: the open of a binary by exec itself, judged
/// by the exec rules instead.
const FMODE_EXEC_FLAG: u32 = 0o40;

#[inline(always)]
fn probe(which: LsmProbe) {
    if let Some(n) = LSM_PROBE.get_ptr_mut(which as u32) {
        unsafe { *n += 1 };
    }
}

/// How both hooks open: until the daemon turns enforcement on (`flag` in
/// the runtime flags) the hook only counts its call for the self-test
/// (once enforcing, the counter is not needed and costs nothing); then an
/// earlier LSM program's refusal stands, and only a trajectory member is
/// judged. `Err` holds what the hook returns.
#[inline(always)]
fn opening(ctx: &LsmContext, flag: u64, which: LsmProbe) -> Result<Membership, i32> {
    let prev: i32 = ctx.arg(1);
    if runtime_flags() & flag == 0 {
        probe(which);
        return Err(prev);
    }
    if prev != 0 {
        return Err(prev);
    }
    trajectory::current().ok_or(0)
}

#[lsm(hook = "file_open")]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    lsm_ret(match opening(&ctx, runtime::LSM_FILE, LsmProbe::FileOpen) {
        Ok(member) => on_file_open(&member, ctx.arg(0)),
        Err(ret) => ret,
    })
}

#[inline(always)]
fn on_file_open(member: &Membership, file: u64) -> i32 {
    let off = offsets();
    let f_flags: u32 =
        unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((file + off.file_f_flags) as *const u32) }.unwrap_or(0);
    if f_flags & FMODE_EXEC_FLAG != 0 {
        return 0;
    }
    let (verdict, resolved, by_inode) = file::judge(member, file, Access::of_flags(f_flags));
    let result = if verdict.blocks() { -EPERM } else { 0 };
    record_open(member, &verdict, OpenSyscall::Lsm, f_flags, result, &resolved, by_inode);
    result
}

/// An `open` record of a BPF LSM file hook: no `dfd`, `mode` or requested
/// string there.
#[inline(always)]
pub fn record_open(
    member: &Membership,
    verdict: &Verdict,
    syscall: OpenSyscall,
    open_flags: u32,
    result: i32,
    resolved: &Option<pathres::Resolved>,
    by_inode: bool,
) {
    let Some(mut rec) = record::reserve::<OpenEvent>(member) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    unsafe {
        record::fill_header(&raw mut (*ev).header, EventKind::Open, member, verdict, mechanism::LSM);
        if by_inode {
            (*ev).header.flags |= monitor_common::event::flags::BY_INODE;
        }
        (*ev).syscall = syscall as u32;
        (*ev).dfd = AT_FDCWD;
        (*ev).flags = open_flags;
        (*ev).mode = 0;
        (*ev).ret = result;
        (*ev)._pad = 0;
        write_path(&raw mut (*ev).header.flags, &raw mut (*ev).path_len, &raw mut (*ev).path, resolved);
        (*ev).requested_len = 0;
        (*ev).requested[0] = 0;
    }
    record::submit(rec);
}

#[lsm(hook = "bprm_check_security")]
pub fn lsm_bprm_check(ctx: LsmContext) -> i32 {
    lsm_ret(match opening(&ctx, runtime::LSM_EXEC, LsmProbe::BprmCheck) {
        Ok(member) => on_bprm_check(&member, ctx.arg(0)),
        Err(ret) => ret,
    })
}

#[inline(always)]
fn on_bprm_check(member: &Membership, bprm: u64) -> i32 {
    let file = read_u64(bprm + offsets().bprm_file);
    let (verdict, resolved) = file::judge_exec(member, file, true);
    if !verdict.blocks() {
        // Allowed: `sched_process_exec` records it, with its argv.
        return 0;
    }
    exec::record_without_image(member, &verdict, &resolved, mechanism::LSM, 0);
    -EPERM
}
