//! Changing a file without opening it, where BPF LSM runs: the `path_*`
//! hooks of removing, creating, truncating, and changing the mode or owner
//! of a path, each judged as a **write** of the path it changes and refused
//! with `EPERM` when the policy denies writing it. A refusal (or an audit
//! hit) is recorded as an `open` record whose `syscall` names the
//! operation; plain allows are not recorded (the opens that follow are).
//!
//! Without BPF LSM the Landlock layer `run` applies refuses the same calls
//! (except `chmod` and `chown`, which Landlock does not govern) before they
//! act, and the syscall tracepoints below record each refusal: entry keeps
//! the path strings, exit (`-EACCES`, `-EXDEV`) emits an `open` record per
//! path with the operation, the string and, for a relative one, the
//! directory it resolved against; the daemon names the rule.

use aya_ebpf::{
    macros::{lsm, tracepoint},
    programs::{LsmContext, TracePointContext},
};
use monitor_common::{
    event::{decision, OpenSyscall, AT_FDCWD},
    maps::runtime,
};

use crate::{
    kernel::{lsm_ret, read_u64, tp_arg, EPERM, SYSCALL_RET},
    lsm::record_open,
    maps::{offsets, runtime_flags, OpenEntry, MUTATE_INFLIGHT},
    open, pathres, policy,
    policy::Access,
    trajectory,
};

const O_WRONLY: u32 = 0o1;

/// Judges changing `dentry` (on mount `mnt`) as a write of its path.
#[inline(always)]
pub fn changing(mnt: u64, dentry: u64, op: OpenSyscall) -> i32 {
    if runtime_flags() & runtime::LSM_FILE == 0 {
        return 0;
    }
    let Some(member) = trajectory::current() else {
        return 0;
    };
    let resolved = pathres::dentry_path(mnt, dentry);
    let access = Access { read: false, write: true };
    let verdict = match &resolved {
        Some(r) => policy::file(member.policy, pathres::key_from_resolved(r, member.policy), access),
        None => policy::file_default(member.policy),
    };
    if verdict.decision == decision::ALLOW {
        return 0;
    }
    let result = if verdict.blocks() { -EPERM } else { 0 };
    record_open(&member, &verdict, op, O_WRONLY, result, &resolved, false);
    result
}

/// `security_path_link(old_dentry, new_dir, new_dentry)`: a hard link to a
/// file gives it a name no rule may cover, so linking a file the policy
/// denies (read or write) is refused. Both names are on one mount.
#[lsm(hook = "path_link")]
pub fn lsm_path_link(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(3);
    if prev != 0 {
        return lsm_ret(prev);
    }
    let (old, new_dir, new): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let mnt = read_u64(new_dir + offsets().path_mnt);
    lsm_ret(match aliasing(old, mnt, OpenSyscall::Link) {
        0 => changing(mnt, new, OpenSyscall::LinkTo),
        refused => refused,
    })
}

/// `security_path_rename(old_dir, old_dentry, new_dir, new_dentry, flags)`:
/// renaming a denied file moves it to a name no rule may cover.
#[lsm(hook = "path_rename")]
pub fn lsm_path_rename(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(5);
    if prev != 0 {
        return lsm_ret(prev);
    }
    let (old_dir, old, new_dir, new): (u64, u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    lsm_ret(match aliasing(old, read_u64(old_dir + offsets().path_mnt), OpenSyscall::Rename) {
        0 => changing(read_u64(new_dir + offsets().path_mnt), new, OpenSyscall::RenameTo),
        refused => refused,
    })
}

/// Judges giving `dentry` (on mount `mnt`) another name: refused when the
/// policy denies reading or writing it. Recorded as an `open` record of the
/// file with the `syscall` `link` or `rename`.
#[inline(always)]
fn aliasing(dentry: u64, mnt: u64, how: OpenSyscall) -> i32 {
    if runtime_flags() & runtime::LSM_FILE == 0 {
        return 0;
    }
    let Some(member) = trajectory::current() else {
        return 0;
    };
    let resolved = pathres::dentry_path(mnt, dentry);
    let access = Access { read: true, write: true };
    let verdict = match &resolved {
        Some(r) => policy::file(member.policy, pathres::key_from_resolved(r, member.policy), access),
        None => policy::file_default(member.policy),
    };
    if verdict.decision == decision::ALLOW {
        return 0;
    }
    let result = if verdict.blocks() { -EPERM } else { 0 };
    // Judged as reading and writing the file.
    record_open(&member, &verdict, how, O_RDWR, result, &resolved, false);
    result
}

/// `(dir, dentry)` hooks: the entry `dentry` in the directory `dir` (a
/// `struct path *`).
#[inline(always)]
fn in_dir(ctx: &LsmContext, prev_at: usize, op: OpenSyscall) -> i32 {
    let prev: i32 = ctx.arg(prev_at);
    if prev != 0 {
        return lsm_ret(prev);
    }
    let (dir, dentry): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    lsm_ret(changing(read_u64(dir + offsets().path_mnt), dentry, op))
}

/// `(path)` hooks: the file `path` (a `struct path *`) itself.
#[inline(always)]
fn at_path(ctx: &LsmContext, prev_at: usize, op: OpenSyscall) -> i32 {
    let prev: i32 = ctx.arg(prev_at);
    if prev != 0 {
        return lsm_ret(prev);
    }
    let path: u64 = ctx.arg(0);
    let off = offsets();
    lsm_ret(changing(read_u64(path + off.path_mnt), read_u64(path + off.path_dentry), op))
}

/// `security_path_unlink(dir, dentry)`.
#[lsm(hook = "path_unlink")]
pub fn lsm_path_unlink(ctx: LsmContext) -> i32 {
    in_dir(&ctx, 2, OpenSyscall::Unlink)
}

/// `security_path_rmdir(dir, dentry)`.
#[lsm(hook = "path_rmdir")]
pub fn lsm_path_rmdir(ctx: LsmContext) -> i32 {
    in_dir(&ctx, 2, OpenSyscall::Rmdir)
}

/// `security_path_mkdir(dir, dentry, mode)`.
#[lsm(hook = "path_mkdir")]
pub fn lsm_path_mkdir(ctx: LsmContext) -> i32 {
    in_dir(&ctx, 3, OpenSyscall::Mkdir)
}

/// `security_path_mknod(dir, dentry, mode, dev)`: also regular files made
/// by `mknod(2)` (an `open` with `O_CREAT` is judged by `file_open`).
#[lsm(hook = "path_mknod")]
pub fn lsm_path_mknod(ctx: LsmContext) -> i32 {
    in_dir(&ctx, 4, OpenSyscall::Mknod)
}

/// `security_path_symlink(dir, dentry, old_name)`.
#[lsm(hook = "path_symlink")]
pub fn lsm_path_symlink(ctx: LsmContext) -> i32 {
    in_dir(&ctx, 3, OpenSyscall::Symlink)
}

/// `security_path_truncate(path)`: `truncate(2)` and `ftruncate(2)`.
#[lsm(hook = "path_truncate")]
pub fn lsm_path_truncate(ctx: LsmContext) -> i32 {
    at_path(&ctx, 1, OpenSyscall::Truncate)
}

/// `security_path_chmod(path, mode)`.
#[lsm(hook = "path_chmod")]
pub fn lsm_path_chmod(ctx: LsmContext) -> i32 {
    at_path(&ctx, 2, OpenSyscall::Chmod)
}

/// `security_path_chown(path, uid, gid)`.
#[lsm(hook = "path_chown")]
pub fn lsm_path_chown(ctx: LsmContext) -> i32 {
    at_path(&ctx, 3, OpenSyscall::Chown)
}

const O_RDWR: u32 = 0o2;
const AT_REMOVEDIR: u64 = 0x200;
const EACCES: i64 = 13;
const EXDEV: i64 = 18;

/// Keeps path `n` (0 or 1) of the call, with the operation it names.
#[inline(always)]
fn keep(n: u64, op: OpenSyscall, dfd: u64, path: u64, flags: u32) {
    if let Some(e) = open::capture(op, dfd as i32, path, flags, 0) {
        let key = u64::from(open::tid()) << 1 | n;
        let _ = MUTATE_INFLIGHT.insert(&key, unsafe { &*e }, 0);
    }
}

/// One path changed: `op` on `path` (relative to `dfd`).
#[inline(always)]
fn one(op: OpenSyscall, dfd: u64, path: u64) -> u32 {
    if trajectory::current().is_some() {
        keep(0, op, dfd, path, O_WRONLY);
    }
    0
}

/// A file given another name: `from` (judged read-write, as the LSM hooks
/// do) and the new name `to` (a write).
#[inline(always)]
fn two(from_op: OpenSyscall, from_dfd: u64, from: u64, to_op: OpenSyscall, to_dfd: u64, to: u64) -> u32 {
    if trajectory::current().is_some() {
        keep(0, from_op, from_dfd, from, O_RDWR);
        keep(1, to_op, to_dfd, to, O_WRONLY);
    }
    0
}

const CWD: u64 = AT_FDCWD as u64;

#[tracepoint]
pub fn sys_enter_unlink(ctx: TracePointContext) -> u32 {
    one(OpenSyscall::Unlink, CWD, tp_arg(&ctx, 0))
}

#[tracepoint]
pub fn sys_enter_unlinkat(ctx: TracePointContext) -> u32 {
    let op = if tp_arg(&ctx, 2) & AT_REMOVEDIR != 0 { OpenSyscall::Rmdir } else { OpenSyscall::Unlink };
    one(op, tp_arg(&ctx, 0), tp_arg(&ctx, 1))
}

#[tracepoint]
pub fn sys_enter_rmdir(ctx: TracePointContext) -> u32 {
    one(OpenSyscall::Rmdir, CWD, tp_arg(&ctx, 0))
}

#[tracepoint]
pub fn sys_enter_mkdir(ctx: TracePointContext) -> u32 {
    one(OpenSyscall::Mkdir, CWD, tp_arg(&ctx, 0))
}

#[tracepoint]
pub fn sys_enter_mkdirat(ctx: TracePointContext) -> u32 {
    one(OpenSyscall::Mkdir, tp_arg(&ctx, 0), tp_arg(&ctx, 1))
}

#[tracepoint]
pub fn sys_enter_mknod(ctx: TracePointContext) -> u32 {
    one(OpenSyscall::Mknod, CWD, tp_arg(&ctx, 0))
}

#[tracepoint]
pub fn sys_enter_mknodat(ctx: TracePointContext) -> u32 {
    one(OpenSyscall::Mknod, tp_arg(&ctx, 0), tp_arg(&ctx, 1))
}

/// `symlink(target, linkpath)`: the link is what changes.
#[tracepoint]
pub fn sys_enter_symlink(ctx: TracePointContext) -> u32 {
    one(OpenSyscall::Symlink, CWD, tp_arg(&ctx, 1))
}

/// `symlinkat(target, newdirfd, linkpath)`.
#[tracepoint]
pub fn sys_enter_symlinkat(ctx: TracePointContext) -> u32 {
    one(OpenSyscall::Symlink, tp_arg(&ctx, 1), tp_arg(&ctx, 2))
}

#[tracepoint]
pub fn sys_enter_truncate(ctx: TracePointContext) -> u32 {
    one(OpenSyscall::Truncate, CWD, tp_arg(&ctx, 0))
}

#[tracepoint]
pub fn sys_enter_rename(ctx: TracePointContext) -> u32 {
    two(OpenSyscall::Rename, CWD, tp_arg(&ctx, 0), OpenSyscall::RenameTo, CWD, tp_arg(&ctx, 1))
}

/// `renameat` and `renameat2` (whose flags, `RENAME_EXCHANGE` included, do
/// not change what is judged: both names change).
#[tracepoint]
pub fn sys_enter_renameat(ctx: TracePointContext) -> u32 {
    let (a, b) = (tp_arg(&ctx, 1), tp_arg(&ctx, 3));
    two(OpenSyscall::Rename, tp_arg(&ctx, 0), a, OpenSyscall::RenameTo, tp_arg(&ctx, 2), b)
}

#[tracepoint]
pub fn sys_enter_link(ctx: TracePointContext) -> u32 {
    two(OpenSyscall::Link, CWD, tp_arg(&ctx, 0), OpenSyscall::LinkTo, CWD, tp_arg(&ctx, 1))
}

#[tracepoint]
pub fn sys_enter_linkat(ctx: TracePointContext) -> u32 {
    let (a, b) = (tp_arg(&ctx, 1), tp_arg(&ctx, 3));
    two(OpenSyscall::Link, tp_arg(&ctx, 0), a, OpenSyscall::LinkTo, tp_arg(&ctx, 2), b)
}

/// One program for every exit: records the paths of a call the Landlock
/// layer refused (`EACCES`, or `EXDEV` for a rename or link between
/// directories), and forgets the entries of every other.
#[tracepoint]
pub fn sys_exit_mutate_any(ctx: TracePointContext) -> u32 {
    let ret: i64 = unsafe { ctx.read_at::<i64>(SYSCALL_RET) }.unwrap_or(0);
    let tid = u64::from(open::tid());
    let member = trajectory::current();
    let mut n = 0u64;
    while n < 2 {
        let key = tid << 1 | n;
        if let Some(e) = MUTATE_INFLIGHT.get_ptr(&key) {
            if let Some(m) = &member {
                if ret == -EACCES || ret == -EXDEV {
                    refused(m, e, ret);
                }
            }
            let _ = MUTATE_INFLIGHT.remove(&key);
        }
        n += 1;
    }
    0
}

/// The record of one refused path: the kernel judges the string when it is
/// absolute; the daemon resolves it (with `base`) and names the rule.
#[inline(always)]
fn refused(member: &trajectory::Membership, e: *const OpenEntry, ret: i64) {
    let entry = Some(e);
    let access = Access::of_flags(unsafe { (*e).flags });
    let verdict = open::requested_verdict(member, entry, access);
    let base = open::base_dir(entry);
    let syscall = unsafe { (*e).syscall };
    open::emit(member, &verdict, false, syscall, ret, &base, entry);
}
