//! open: the `syscalls/sys_enter_open*` tracepoints. The path is the string
//! the process passed (possibly relative to `dfd`), read at syscall entry.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use monitor_common::event::{flags, EventKind, OpenEvent, OpenSyscall, AT_FDCWD, PATH_LEN};

use crate::{record, trajectory};

/// Syscall tracepoint records: 8-byte common header, `int __syscall_nr`, then
/// each argument as an 8-byte slot.
const fn arg(n: usize) -> usize {
    16 + 8 * n
}

const O_WRONLY: u32 = 0o1;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;

#[tracepoint]
pub fn sys_enter_openat(ctx: TracePointContext) -> u32 {
    let dfd: i64 = read(&ctx, arg(0));
    let path: u64 = read(&ctx, arg(1));
    let flags: u64 = read(&ctx, arg(2));
    let mode: u64 = read(&ctx, arg(3));
    on_open(OpenSyscall::Openat, dfd as i32, path, flags as u32, mode as u32);
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
    on_open(OpenSyscall::Openat2, dfd as i32, path, flags as u32, mode as u32);
    0
}

#[tracepoint]
pub fn sys_enter_open(ctx: TracePointContext) -> u32 {
    let path: u64 = read(&ctx, arg(0));
    let flags: u64 = read(&ctx, arg(1));
    let mode: u64 = read(&ctx, arg(2));
    on_open(OpenSyscall::Open, AT_FDCWD, path, flags as u32, mode as u32);
    0
}

#[tracepoint]
pub fn sys_enter_creat(ctx: TracePointContext) -> u32 {
    let path: u64 = read(&ctx, arg(0));
    let mode: u64 = read(&ctx, arg(1));
    on_open(OpenSyscall::Creat, AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode as u32);
    0
}

#[inline(always)]
fn read<T: Default>(ctx: &TracePointContext, offset: usize) -> T {
    unsafe { ctx.read_at::<T>(offset) }.unwrap_or_default()
}

#[inline(always)]
fn on_open(syscall: OpenSyscall, dfd: i32, path: u64, open_flags: u32, mode: u32) {
    let Some(member) = trajectory::current() else {
        return;
    };
    let Some(mut entry) = record::reserve::<OpenEvent>(&member) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        record::fill_header(&raw mut (*ev).header, EventKind::Open, &member);
        (*ev).syscall = syscall as u32;
        (*ev).dfd = dfd;
        (*ev).flags = open_flags;
        (*ev).mode = mode;
        (*ev)._pad = 0;
        (*ev).path_len = 0;
        let src = path as *const u8;
        match bpf_probe_read_user_str_bytes(src, &mut *(&raw mut (*ev).path)) {
            Ok(s) => {
                (*ev).path_len = s.len() as u32;
                // A full buffer means the string may continue: it does if the
                // byte the NUL displaced is not itself a NUL.
                if s.len() >= PATH_LEN - 1 {
                    let next: u8 = bpf_probe_read_user(src.wrapping_add(PATH_LEN - 1)).unwrap_or(0);
                    if next != 0 {
                        (*ev).header.flags |= flags::PATH_TRUNCATED;
                    }
                }
            }
            Err(_) => (*ev).header.flags |= flags::READ_FAILED,
        }
    }
    record::submit(entry);
}
