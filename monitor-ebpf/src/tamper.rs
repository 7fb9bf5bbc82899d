//! Built-in tamper protection: what no trajectory may do, whatever its
//! policy says. Every refusal is recorded as a `tamper` record with the
//! decision `deny` and the rule id `RULE_BUILTIN_TAMPER`.
//!
//! With BPF LSM (attached only after the LSM self-test passed):
//! * `bpf`: no `bpf()` syscall at all (maps, programs, links, pins);
//! * `ptrace_access_check`: no ptrace-style access (attach, `/proc/<pid>/mem`,
//!   `environ`, `fd/`, `process_vm_*`, `pidfd_getfd`, ...) to a process
//!   outside the trajectory;
//! * `task_alloc`: no `clone3(CLONE_INTO_CGROUP)`;
//! * `task_kill`: no signal to the daemon;
//! * `inode_mkdir`/`inode_rmdir`: no directories created or removed in a
//!   cgroup or BPF filesystem;
//! * `sb_mount`/`move_mount`: no mounts (a bind mount would give a protected
//!   or denied file a path no rule names).
//!
//! Without it, syscall-entry tracepoints kill the caller (`SIGKILL` is
//! pending before the syscall body runs): `bpf()`; ptrace attach,
//! `process_vm_*` and `pidfd_open` aimed at the daemon itself (a tracepoint
//! cannot look up another pid's task); `clone3(CLONE_INTO_CGROUP)` (the fork
//! aborts on the pending fatal signal); and, under an enforcing policy,
//! `io_uring_setup`/`io_uring_enter` and `open_by_handle_at`, whose opens the
//! open tracepoints never see; `mount`, `move_mount`, `open_tree`, `fsmount`
//! (the first `mount(2)` has taken effect when the caller dies). `docs/security.md` says what remains.
//!
//! [`protected_fs`] is checked by `file::judge`, the verdict both file-open
//! paths use: a write open of a file on a cgroup or BPF filesystem is
//! refused whatever path it was reached by (bind mounts, other mount
//! namespaces).

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task, bpf_get_current_task_btf, bpf_send_signal},
    },
    macros::{lsm, raw_tracepoint, tracepoint},
    programs::{LsmContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use monitor_common::{
    event::{decision, mechanism, EventKind},
    policy::{action, RULE_BUILTIN_TAMPER},
    tamper::{magic, TamperConfig, TamperEvent, TamperOp},
};

use crate::{
    kernel::{lsm_ret, read_u64, tp_arg, EPERM, SIGKILL, SYSCALL_RET},
    maps::{offsets, ESCAPED},
    policy::{self, Verdict},
    record,
    trajectory::{self, Membership},
};

const PTRACE_MODE_NOAUDIT: u32 = 0x04;
const PTRACE_ATTACH: i64 = 16;
const PTRACE_SEIZE: i64 = 0x4206;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// Bound on the walk up a task's cgroup ancestry.
const MAX_CGROUP_DEPTH: u32 = 64;

/// Set by the daemon at load time.
#[unsafe(no_mangle)]
pub static TAMPER_CONFIG: TamperConfig = TamperConfig {
    daemon_tgid: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    cgroup_parent: 0,
    kernfs_node_id: 0,
    dentry_d_sb: 0,
    inode_i_sb: 0,
    super_block_s_magic: 0,
};

#[inline(always)]
fn config() -> TamperConfig {
    // Volatile: the loader rewrites .rodata; the zero initialiser must not
    // be folded in.
    unsafe { core::ptr::read_volatile(&TAMPER_CONFIG) }
}

/// The verdict every tamper refusal carries.
#[inline(always)]
pub fn verdict(member: &Membership) -> Verdict {
    Verdict { policy: member.policy, rule_id: RULE_BUILTIN_TAMPER, action: action::DENY, decision: decision::DENY }
}

#[inline(always)]
fn record(member: &Membership, op: TamperOp, target_pid: u32, arg: u64, how: u8) {
    record_verdict(member, &verdict(member), op, target_pid, arg, how);
}

/// A `tamper` record of `op` with the verdict that decided it (the
/// built-in deny, or a policy default such as `defaults.raw_sockets`).
#[inline(always)]
pub fn record_verdict(member: &Membership, verdict: &Verdict, op: TamperOp, target_pid: u32, arg: u64, how: u8) {
    let Some(mut rec) = record::reserve::<TamperEvent>(member) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    unsafe {
        record::fill_header(&raw mut (*ev).header, EventKind::Tamper, member, verdict, how);
        (*ev).op = op as u32;
        (*ev).target_pid = target_pid;
        (*ev).arg = arg;
    }
    record::submit(rec);
}

/// Whether `file` lives on a cgroup (v1 or v2) or BPF filesystem.
#[inline(always)]
pub fn protected_fs(file: u64) -> bool {
    if file == 0 {
        return false;
    }
    let off = offsets();
    let dentry = read_u64(file + off.file_f_path + off.path_dentry);
    if dentry == 0 {
        return false;
    }
    sb_protected(read_u64(dentry + config().dentry_d_sb))
}

#[inline(always)]
fn sb_protected(sb: u64) -> bool {
    if sb == 0 {
        return false;
    }
    let m = read_u64(sb + config().super_block_s_magic) & 0xffff_ffff;
    m == magic::CGROUP || m == magic::CGROUP2 || m == magic::BPF_FS
}

/// The id of `task`'s cgroup v2 (0 if unreadable).
#[inline(always)]
fn cgroup_id_of(task: u64) -> u64 {
    let c = config();
    let css_set = read_u64(task + c.task_cgroups);
    let cgroup = if css_set == 0 { 0 } else { read_u64(css_set + c.css_set_dfl_cgrp) };
    let kn = if cgroup == 0 { 0 } else { read_u64(cgroup + c.cgroup_kn) };
    if kn == 0 {
        0
    } else {
        read_u64(kn + c.kernfs_node_id)
    }
}

/// Whether `task` sits in the cgroup `trajectory` or below it.
#[inline(always)]
fn task_in(task: u64, trajectory: u64) -> bool {
    let c = config();
    let css_set = read_u64(task + c.task_cgroups);
    if css_set == 0 {
        return false;
    }
    let mut cgroup = read_u64(css_set + c.css_set_dfl_cgrp);
    let mut i = 0;
    while i < MAX_CGROUP_DEPTH {
        if cgroup == 0 {
            return false;
        }
        let kn = read_u64(cgroup + c.cgroup_kn);
        if kn != 0 && read_u64(kn + c.kernfs_node_id) == trajectory {
            return true;
        }
        cgroup = read_u64(cgroup + c.cgroup_parent);
        i += 1;
    }
    false
}

#[inline(always)]
fn tgid_of(task: u64) -> u32 {
    unsafe { bpf_probe_read_kernel((task + offsets().task_tgid) as *const u32) }.unwrap_or(0)
}

// ---------------------------------------------------------------- BPF LSM

/// Runs `judge` in a tamper hook that receives the previous LSM program's
/// verdict in argument `prev_arg`: a refusal already made stands, and only
/// a trajectory member is judged. Each hook passes a closure of its own:
/// called from one place, it is inlined and the program stays one function
/// (a closure two hooks share is compiled as a BPF subprogram instead).
#[inline(always)]
fn judged(ctx: &LsmContext, prev_arg: usize, judge: impl FnOnce(&Membership) -> i32) -> i32 {
    let prev: i32 = ctx.arg(prev_arg);
    if prev != 0 {
        return lsm_ret(prev);
    }
    match trajectory::current() {
        Some(member) => judge(&member),
        None => 0,
    }
}

/// Records the refusal of `op` and refuses it.
#[inline(always)]
fn refuse(member: &Membership, op: TamperOp, target_pid: u32, arg: u64) -> i32 {
    record(member, op, target_pid, arg, mechanism::LSM);
    lsm_ret(-EPERM)
}

/// `security_bpf(cmd, attr, size[, kernel])`: the argument count changed
/// across kernels, so the previous program's verdict is not read here; a
/// trajectory member is refused, anyone else allowed.
#[lsm(hook = "bpf")]
pub fn lsm_bpf(ctx: LsmContext) -> i32 {
    let Some(member) = trajectory::current() else {
        return 0;
    };
    let cmd: u64 = ctx.arg(0);
    refuse(&member, TamperOp::Bpf, 0, cmd & 0xffff_ffff)
}

#[lsm(hook = "ptrace_access_check")]
pub fn lsm_ptrace_access_check(ctx: LsmContext) -> i32 {
    judged(&ctx, 2, |member| {
        let child: u64 = ctx.arg(0);
        let mode: u64 = ctx.arg(1);
        if task_in(child, member.cgroup) {
            return 0;
        }
        // `NOAUDIT` accesses (`ps` reading /proc/<pid>/stat) are refused
        // quietly: the caller gets less detail, and there is nothing to report.
        if mode as u32 & PTRACE_MODE_NOAUDIT != 0 {
            return lsm_ret(-EPERM);
        }
        refuse(member, TamperOp::Ptrace, tgid_of(child), mode & 0xffff_ffff)
    })
}

/// `security_task_kill(p, info, sig, cred)`: no signal from a trajectory
/// to the daemon (`kill -9` would stop the recording; the pinned programs
/// would go on enforcing). Signal 0 (does the process exist?) stays
/// allowed: it delivers nothing.
#[lsm(hook = "task_kill")]
pub fn lsm_task_kill(ctx: LsmContext) -> i32 {
    judged(&ctx, 4, |member| {
        let target: u64 = ctx.arg(0);
        let sig: u64 = ctx.arg(2);
        let tgid = tgid_of(target);
        if sig & 0xffff_ffff == 0 || u64::from(tgid) != config().daemon_tgid {
            return 0;
        }
        refuse(member, TamperOp::Signal, tgid, sig & 0xffff_ffff)
    })
}

#[lsm(hook = "task_alloc")]
pub fn lsm_task_alloc(ctx: LsmContext) -> i32 {
    // Not [`judged`]: every fork runs this, and the flags test is cheaper
    // than the membership lookup, so it comes first.
    let prev: i32 = ctx.arg(2);
    if prev != 0 {
        return lsm_ret(prev);
    }
    let flags: u64 = ctx.arg(1);
    if flags & CLONE_INTO_CGROUP == 0 {
        return 0;
    }
    let Some(member) = trajectory::current() else {
        return 0;
    };
    refuse(&member, TamperOp::CloneIntoCgroup, 0, flags)
}

#[lsm(hook = "inode_mkdir")]
pub fn lsm_inode_mkdir(ctx: LsmContext) -> i32 {
    judged(&ctx, 3, |member| dir_change(&ctx, member, TamperOp::CgroupMkdir))
}

#[lsm(hook = "inode_rmdir")]
pub fn lsm_inode_rmdir(ctx: LsmContext) -> i32 {
    judged(&ctx, 2, |member| dir_change(&ctx, member, TamperOp::CgroupRmdir))
}

#[inline(always)]
fn dir_change(ctx: &LsmContext, member: &Membership, op: TamperOp) -> i32 {
    let dir: u64 = ctx.arg(0);
    if !sb_protected(read_u64(dir + config().inode_i_sb)) {
        return 0;
    }
    refuse(member, op, 0, 0)
}

/// `security_sb_mount(dev_name, path, type, flags, data)`.
#[lsm(hook = "sb_mount")]
pub fn lsm_sb_mount(ctx: LsmContext) -> i32 {
    judged(&ctx, 5, |member| refuse(member, TamperOp::Mount, 0, ctx.arg(3)))
}

/// `security_move_mount(from_path, to_path)`: the new mount API's attach.
#[lsm(hook = "move_mount")]
pub fn lsm_move_mount(ctx: LsmContext) -> i32 {
    judged(&ctx, 2, |member| refuse(member, TamperOp::Mount, 0, 1))
}

// ---------------------------------------------------------------- fallback

#[inline(always)]
fn kill(member: &Membership, op: TamperOp, target_pid: u32, arg: u64) {
    unsafe { bpf_send_signal(SIGKILL) };
    record(member, op, target_pid, arg, mechanism::KILL);
}

#[tracepoint]
pub fn tamper_sys_enter_bpf(ctx: TracePointContext) -> u32 {
    if let Some(member) = trajectory::current() {
        kill(&member, TamperOp::Bpf, 0, tp_arg(&ctx, 0) & 0xffff_ffff);
    }
    0
}

/// The daemon as the target of a ptrace-style syscall.
#[inline(always)]
fn against_daemon(ctx: &TracePointContext, pid_arg: usize, op: TamperOp, arg: u64) {
    let Some(member) = trajectory::current() else {
        return;
    };
    let pid = tp_arg(ctx, pid_arg) as i64;
    let daemon = config().daemon_tgid;
    if daemon != 0 && pid as u64 == daemon {
        kill(&member, op, pid as u32, arg);
    }
}

#[tracepoint]
pub fn tamper_sys_enter_ptrace(ctx: TracePointContext) -> u32 {
    let request = tp_arg(&ctx, 0) as i64;
    if request == PTRACE_ATTACH || request == PTRACE_SEIZE {
        against_daemon(&ctx, 1, TamperOp::Ptrace, request as u64);
    }
    0
}

#[tracepoint]
pub fn tamper_sys_enter_process_vm_readv(ctx: TracePointContext) -> u32 {
    against_daemon(&ctx, 0, TamperOp::ProcessVm, 0);
    0
}

#[tracepoint]
pub fn tamper_sys_enter_process_vm_writev(ctx: TracePointContext) -> u32 {
    against_daemon(&ctx, 0, TamperOp::ProcessVm, 1);
    0
}

#[tracepoint]
pub fn tamper_sys_enter_pidfd_open(ctx: TracePointContext) -> u32 {
    against_daemon(&ctx, 0, TamperOp::PidfdOpen, 0);
    0
}

/// `clone3(struct clone_args *uargs, size_t size)`: `flags` is the first
/// field. Read from user memory before the kernel copies it, so another
/// thread could change it in between (see docs/security.md).
#[tracepoint]
pub fn tamper_sys_enter_clone3(ctx: TracePointContext) -> u32 {
    let Some(member) = trajectory::current() else {
        return 0;
    };
    let uargs = tp_arg(&ctx, 0);
    let flags: u64 = unsafe { bpf_probe_read_user(uargs as *const u64) }.unwrap_or(0);
    if flags & CLONE_INTO_CGROUP != 0 {
        kill(&member, TamperOp::CloneIntoCgroup, 0, flags);
    }
    0
}

/// `sched_process_fork(parent, child)`, in the parent, after the child was
/// placed in its cgroup and before it first runs. A child of a trajectory
/// process that is not in the trajectory got there by a
/// `clone3(CLONE_INTO_CGROUP)` whose flags changed after
/// [`tamper_sys_enter_clone3`] read them: it is recorded here and marked,
/// and [`escaped_child`] kills it before its first instruction.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let Some(member) = trajectory::current() else {
        return 0;
    };
    // SAFETY: the tracepoint's two arguments are task pointers.
    let child: u64 = unsafe { *(ctx.as_ptr() as *const u64).add(1) };
    if child == 0 || task_in(child, member.cgroup) {
        return 0;
    }
    let _ = ESCAPED.insert(&child, &member.cgroup, 0);
    record(&member, TamperOp::CloneEscape, tgid_of(child), cgroup_id_of(child), mechanism::KILL);
    0
}

/// `clone3`'s exit in the child (a new task leaves the fork through the
/// syscall exit path, with its parent's syscall number): a child
/// [`sched_process_fork`] marked dies here, before it returns to user space.
#[tracepoint]
pub fn escaped_child(ctx: TracePointContext) -> u32 {
    let ret = unsafe { ctx.read_at::<i64>(SYSCALL_RET) }.unwrap_or(-1);
    if ret != 0 {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() };
    if ESCAPED.get_ptr(&task).is_some() {
        let _ = ESCAPED.remove(&task);
        unsafe { bpf_send_signal(SIGKILL) };
    }
    0
}

/// `TS_COMPAT` in x86's `thread_info.status`: a 32-bit syscall is running.
const TS_COMPAT: u64 = 0x2;

/// Every syscall's entry (`raw_syscalls:sys_enter(regs, id)`), where BPF
/// LSM does not run. The `syscalls:*` tracepoints skip 32-bit syscalls
/// (`int 0x80` works from any x86-64 process), so an open, socket, mmap or
/// clone3 made that way would pass every fallback hook: under an enforcing
/// policy the caller is killed before the first one runs.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn compat_syscall(ctx: RawTracePointContext) -> i32 {
    let at = offsets().task_ti_status;
    if at == 0 {
        return 0;
    }
    // A typed load through the BTF task pointer, not a probe-read helper:
    // this runs on every syscall of the host. The offset comes from
    // read-only data, which the verifier reads as a constant.
    let status = unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        core::ptr::read_volatile(task.add(at as usize) as *const u32)
    };
    if u64::from(status) & TS_COMPAT == 0 {
        return 0;
    }
    let Some(member) = trajectory::current() else {
        return 0;
    };
    if policy::enforcing(member.policy) {
        // SAFETY: the tracepoint's second argument is the syscall number.
        let nr: u64 = unsafe { *(ctx.as_ptr() as *const u64).add(1) };
        kill(&member, TamperOp::CompatSyscall, 0, nr);
    }
    0
}

/// Opens through io_uring or by handle pass no open tracepoint: under an
/// enforcing policy the process is stopped before it can use them.
#[inline(always)]
fn unjudged_open_path(op: TamperOp, arg: u64) {
    let Some(member) = trajectory::current() else {
        return;
    };
    if policy::enforcing(member.policy) {
        kill(&member, op, 0, arg);
    }
}

#[tracepoint]
pub fn tamper_sys_enter_io_uring_setup(_ctx: TracePointContext) -> u32 {
    unjudged_open_path(TamperOp::IoUring, 0);
    0
}

#[tracepoint]
pub fn tamper_sys_enter_io_uring_enter(_ctx: TracePointContext) -> u32 {
    unjudged_open_path(TamperOp::IoUring, 1);
    0
}

#[tracepoint]
pub fn tamper_sys_enter_open_by_handle_at(_ctx: TracePointContext) -> u32 {
    unjudged_open_path(TamperOp::OpenByHandle, 0);
    0
}

#[inline(always)]
fn mount_attempt(arg: u64) {
    if let Some(member) = trajectory::current() {
        kill(&member, TamperOp::Mount, 0, arg);
    }
}

#[tracepoint]
pub fn tamper_sys_enter_mount(ctx: TracePointContext) -> u32 {
    // mount(dev_name, dir_name, type, flags, data): the flags.
    mount_attempt(tp_arg(&ctx, 3));
    0
}

#[tracepoint]
pub fn tamper_sys_enter_move_mount(_ctx: TracePointContext) -> u32 {
    mount_attempt(1);
    0
}

#[tracepoint]
pub fn tamper_sys_enter_open_tree(_ctx: TracePointContext) -> u32 {
    mount_attempt(2);
    0
}

#[tracepoint]
pub fn tamper_sys_enter_fsmount(_ctx: TracePointContext) -> u32 {
    mount_attempt(3);
    0
}
