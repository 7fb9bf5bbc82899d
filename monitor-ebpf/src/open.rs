//! open: the `syscalls/sys_enter_open*` / `sys_exit_open*` tracepoints, the
//! fallback where BPF LSM cannot run.
//!
//! Entry keeps what the process asked for (the path string, flags, mode, dfd)
//! in [`OPEN_INFLIGHT`]. Exit judges the file actually opened: the new
//! descriptor's `struct file`, its path resolved from dentries, so symlinks,
//! `..`, relative paths and a path rewritten by another thread between entry
//! and use all judge the real file. A denied open kills the process with
//! `SIGKILL` before the syscall returns: it never gets the descriptor. What
//! the open itself did (`O_CREAT`, `O_TRUNC`) has happened by then; only the
//! LSM backend prevents that.

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
        generated::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_send_signal},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use monitor_common::event::{flags, mechanism, EventKind, OpenEvent, OpenSyscall, AT_FDCWD, PATH_LEN};

use crate::{
    exec::write_path,
    file,
    kernel::{syscall_arg as arg, SIGKILL, SYSCALL_NR, SYSCALL_RET},
    maps::{offsets, OpenEntry, OPEN_INFLIGHT},
    pathres::{self, Resolved},
    policy::{self, Access, Verdict},
    record,
    trajectory::{self, Membership},
};

const O_WRONLY: u32 = 0o1;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
/// An `O_PATH` descriptor names a file without opening it for I/O; BPF LSM
/// `file_open` never sees such opens, so neither does the policy here.
const O_PATH: u32 = 0o10000000;

#[tracepoint]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    let dfd: i64 = read(&ctx, arg(0));
    let path: u64 = read(&ctx, arg(1));
    let flags: u64 = read(&ctx, arg(2));
    let mode: u64 = read(&ctx, arg(3));
    on_enter(OpenSyscall::Openat, dfd as i32, path, flags as u32, mode as u32);
    0
}

#[tracepoint]
pub fn sys_enter_openat2(ctx: TracePointContext) -> u32 {
    let dfd: i64 = read(&ctx, arg(0));
    let path: u64 = read(&ctx, arg(1));
    let how: u64 = read(&ctx, arg(2));
    // struct open_how { u64 flags; u64 mode; u64 resolve; }
    let flags: u64 = unsafe { bpf_probe_read_user(how as *const u64) }.unwrap_or(0);
    let mode: u64 = unsafe { bpf_probe_read_user((how as *const u64).wrapping_add(1)) }.unwrap_or(0);
    on_enter(OpenSyscall::Openat2, dfd as i32, path, flags as u32, mode as u32);
    0
}

#[tracepoint]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    let path: u64 = read(&ctx, arg(0));
    let flags: u64 = read(&ctx, arg(1));
    let mode: u64 = read(&ctx, arg(2));
    on_enter(OpenSyscall::Open, AT_FDCWD, path, flags as u32, mode as u32);
    0
}

#[tracepoint]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    let path: u64 = read(&ctx, arg(0));
    let mode: u64 = read(&ctx, arg(1));
    on_enter(OpenSyscall::Creat, AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode as u32);
    0
}

/// One program for every `sys_exit_open*` tracepoint: the daemon attaches
/// it to each, so the verifier checks it once instead of four times (most
/// of a daemon's start on a kernel without BPF LSM). The syscall is the one
/// the in-flight entry recorded, or, when the LRU map evicted the entry,
/// the tracepoint's `__syscall_nr`.
#[tracepoint]
pub fn sys_exit_open_any(ctx: TracePointContext) -> u32 {
    let nr: i32 = read(&ctx, SYSCALL_NR);
    on_exit(syscall_of_nr(nr), read(&ctx, SYSCALL_RET));
    0
}

/// The open syscall `nr` is, on x86-64 (where `open` and `creat` exist;
/// `openat2` has one number on every architecture, and elsewhere the only
/// other exit tracepoint is `openat`'s).
#[inline(always)]
fn syscall_of_nr(nr: i32) -> OpenSyscall {
    match nr {
        2 => OpenSyscall::Open,
        85 => OpenSyscall::Creat,
        437 => OpenSyscall::Openat2,
        _ => OpenSyscall::Openat,
    }
}

#[inline(always)]
fn read<T: Default>(ctx: &TracePointContext, offset: usize) -> T {
    unsafe { ctx.read_at::<T>(offset) }.unwrap_or_default()
}

#[inline(always)]
pub fn tid() -> u32 {
    unsafe { bpf_get_current_pid_tgid() as u32 }
}

#[inline(always)]
fn on_enter(syscall: OpenSyscall, dfd: i32, path: u64, open_flags: u32, mode: u32) {
    if trajectory::current().is_none() {
        return;
    }
    if let Some(e) = capture(syscall, dfd, path, open_flags, mode) {
        // On failure (cannot happen with LRU eviction) the exit still judges
        // the opened file, only without the requested string.
        let _ = OPEN_INFLIGHT.insert(&tid(), unsafe { &*e }, 0);
    }
}

/// Builds an in-flight entry in this CPU's scratch: what the process asked
/// for, the path string copied from its memory.
#[inline(always)]
pub fn capture(syscall: OpenSyscall, dfd: i32, path: u64, open_flags: u32, mode: u32) -> Option<*const OpenEntry> {
    let scratch = pathres::scratch()?;
    unsafe {
        let e = &raw mut (*scratch).entry;
        (*e).syscall = syscall as u32;
        (*e).dfd = dfd;
        (*e).flags = open_flags;
        (*e).mode = mode;
        (*e).requested_len = 0;
        (*e).requested_flags = 0;
        let src = path as *const u8;
        match bpf_probe_read_user_str_bytes(src, &mut *(&raw mut (*e).requested)) {
            Ok(s) => {
                (*e).requested_len = s.len() as u32;
                // A full buffer means the string may continue: it does if the
                // byte the NUL displaced is not itself a NUL.
                if s.len() >= PATH_LEN - 1 {
                    let next: u8 = bpf_probe_read_user(src.wrapping_add(PATH_LEN - 1)).unwrap_or(0);
                    if next != 0 {
                        (*e).requested_flags |= flags::PATH_TRUNCATED;
                    }
                }
            }
            Err(_) => (*e).requested_flags |= flags::READ_FAILED,
        }
        Some(e)
    }
}

/// `current->files->fdt->fd[fd]`, or 0.
#[inline(always)]
pub fn fd_file(fd: i64) -> u64 {
    let off = offsets();
    unsafe {
        let task = bpf_get_current_task();
        let Ok(files) = bpf_probe_read_kernel((task + off.task_files) as *const u64) else {
            return 0;
        };
        let Ok(fdt) = bpf_probe_read_kernel((files + off.files_fdt) as *const u64) else {
            return 0;
        };
        let max: u32 = bpf_probe_read_kernel((fdt + off.fdt_max_fds) as *const u32).unwrap_or(0);
        if fd < 0 || fd as u64 >= u64::from(max) {
            return 0;
        }
        let Ok(array) = bpf_probe_read_kernel((fdt + off.fdt_fd) as *const u64) else {
            return 0;
        };
        bpf_probe_read_kernel((array + 8 * fd as u64) as *const u64).unwrap_or(0)
    }
}

/// Judges and records the open that returned `ret`, and kills the caller
/// when the policy denies the file it got.
#[inline(always)]
fn on_exit(by_nr: OpenSyscall, ret: i64) {
    let Some(member) = trajectory::current() else {
        return;
    };
    let file = if ret >= 0 { fd_file(ret) } else { 0 };
    let tid = tid();
    let entry: Option<*const OpenEntry> = OPEN_INFLIGHT.get_ptr(&tid);
    // The path walk comes first (see `file::judge_walked`). A failed open of
    // a relative path reports the directory it resolves against instead,
    // for the daemon to name what was refused (the Landlock layer refuses
    // before anything is opened).
    let resolved = if ret >= 0 { pathres::file_path(file) } else { base_dir(entry) };
    let syscall = match entry {
        Some(e) => unsafe { (*e).syscall },
        None => by_nr as u32,
    };
    let (o_path, access) = access_of(entry, file);
    let (verdict, by_inode) = if o_path {
        (Verdict::NONE, false)
    } else if ret >= 0 {
        file::judge_walked(&member, file, access, &resolved)
    } else {
        (requested_verdict(&member, entry, access), false)
    };
    if ret >= 0 && verdict.blocks() {
        unsafe { bpf_send_signal(SIGKILL) };
    }
    emit(&member, &verdict, by_inode, syscall, ret, &resolved, entry);
    if entry.is_some() {
        let _ = OPEN_INFLIGHT.remove(&tid);
    }
}

/// Whether the open is an `O_PATH` one, and the access it asked for or
/// got. The opened file's own flags count as well: the in-flight entry is
/// in an LRU map, so another task's flood of opens can evict it, and a
/// write open must never be judged as a read for lack of it. (`f_flags` has
/// lost O_CREAT and O_TRUNC; the entry, when present, still has them.)
#[inline(always)]
fn access_of(entry: Option<*const OpenEntry>, file: u64) -> (bool, Access) {
    let requested_flags = match entry {
        Some(e) => unsafe { (*e).flags },
        None => 0,
    };
    let file_flags: u32 = if file != 0 {
        unsafe { bpf_probe_read_kernel((file + offsets().file_f_flags) as *const u32) }.unwrap_or(0)
    } else {
        0
    };
    let access = match (entry.is_some(), file != 0) {
        (true, true) => {
            let (asked, opened) = (Access::of_flags(requested_flags), Access::of_flags(file_flags));
            Access { read: asked.read || opened.read, write: asked.write || opened.write }
        }
        (false, true) => Access::of_flags(file_flags),
        _ => Access::of_flags(requested_flags),
    };
    ((requested_flags | file_flags) & O_PATH != 0, access)
}

/// The directory a relative request resolves against: `dfd`'s file, or
/// the working directory (`current->fs->pwd`). `None` for an absolute one.
#[inline(always)]
pub fn base_dir(entry: Option<*const OpenEntry>) -> Option<Resolved> {
    let e = entry?;
    let (first, dfd) = unsafe { ((*e).requested[0], (*e).dfd) };
    if first == b'/' || first == 0 {
        return None;
    }
    if dfd != AT_FDCWD {
        return pathres::file_path(fd_file(i64::from(dfd)));
    }
    let off = offsets();
    unsafe {
        let task = bpf_get_current_task();
        let fs: u64 = bpf_probe_read_kernel((task + off.task_fs) as *const u64).ok()?;
        if fs == 0 {
            return None;
        }
        let mnt: u64 = bpf_probe_read_kernel((fs + off.fs_pwd + off.path_mnt) as *const u64).ok()?;
        let dentry: u64 = bpf_probe_read_kernel((fs + off.fs_pwd + off.path_dentry) as *const u64).ok()?;
        pathres::dentry_path(mnt, dentry)
    }
}

/// A failed open opened nothing; what was asked for is judged when it is
/// absolute, so the record says what the policy thinks of it.
#[inline(always)]
pub fn requested_verdict(member: &Membership, entry: Option<*const OpenEntry>, access: Access) -> Verdict {
    match entry {
        Some(e) if unsafe { (*e).requested[0] } == b'/' => {
            let len = unsafe { (*e).requested_len } as usize;
            match pathres::key_from_str(unsafe { &(*e).requested }, len, member.policy) {
                Some(key) => policy::file(member.policy, key, access),
                None => Verdict::NONE,
            }
        }
        _ => Verdict::NONE,
    }
}

/// The open record: the opened file's path, and what the entry kept of
/// the request (`READ_FAILED` when the entry is gone). A blocked open
/// that opened a file was killed.
#[inline(always)]
pub fn emit(
    member: &Membership,
    verdict: &Verdict,
    by_inode: bool,
    syscall: u32,
    ret: i64,
    resolved: &Option<Resolved>,
    entry: Option<*const OpenEntry>,
) {
    let Some(mut rec) = record::reserve::<OpenEvent>(member) else {
        return;
    };
    let ev = rec.as_mut_ptr();
    unsafe {
        let how = if ret >= 0 && verdict.blocks() { mechanism::KILL } else { mechanism::NONE };
        record::fill_header(&raw mut (*ev).header, EventKind::Open, member, verdict, how);
        if by_inode {
            (*ev).header.flags |= flags::BY_INODE;
        }
        (*ev).syscall = syscall;
        (*ev).ret = ret as i32;
        (*ev)._pad = 0;
        if ret >= 0 {
            write_path(&raw mut (*ev).header.flags, &raw mut (*ev).path_len, &raw mut (*ev).path, resolved);
        } else if let Some(r) = resolved {
            (*ev).path_len = pathres::copy_out(r, &raw mut (*ev).path) as u32;
            (*ev).header.flags |= flags::BASE_DIR;
        } else {
            (*ev).path_len = 0;
            (*ev).path[0] = 0;
        }
        match entry {
            Some(e) => {
                (*ev).dfd = (*e).dfd;
                (*ev).flags = (*e).flags;
                (*ev).mode = (*e).mode;
                (*ev).requested_len = (*e).requested_len;
                (*ev).header.flags |= (*e).requested_flags;
                if bpf_probe_read_kernel_buf((*e).requested.as_ptr(), &mut *(&raw mut (*ev).requested)).is_err() {
                    (*ev).requested_len = 0;
                }
            }
            None => {
                (*ev).dfd = AT_FDCWD;
                (*ev).flags = 0;
                (*ev).mode = 0;
                (*ev).requested_len = 0;
                (*ev).requested[0] = 0;
                (*ev).header.flags |= flags::READ_FAILED;
            }
        }
    }
    record::submit(rec);
}
