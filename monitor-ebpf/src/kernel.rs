//! Kernel constants and helpers shared by the hook families: the errno and
//! signal numbers the programs return or send, the layout of a syscall
//! tracepoint's record, the bound on an LSM program's return value, and a
//! kernel read that never fails. A leaf: it
//! imports no other module of this crate, so any hook module may use it.

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::TracePointContext};

/// An LSM program refuses with `-EPERM`.
pub const EPERM: i32 = 1;
/// What the tracepoint fallbacks send to stop a process before its syscall
/// or its new image runs.
pub const SIGKILL: u32 = 9;

/// Where a syscall tracepoint's record holds argument `n`: after the
/// 8-byte common header and `int __syscall_nr` (padded to 8), each argument
/// in an 8-byte slot.
pub const fn syscall_arg(n: usize) -> usize {
    16 + 8 * n
}
/// Syscall argument `n` of a syscall entry tracepoint's record; 0 if
/// unreadable.
#[inline(always)]
pub fn tp_arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: a read inside the tracepoint's record, checked by the helper.
    unsafe { ctx.read_at::<u64>(syscall_arg(n)) }.unwrap_or(0)
}

/// Where a syscall exit tracepoint's record holds `long ret`.
pub const SYSCALL_RET: usize = 16;
/// Where a syscall tracepoint's record holds `int __syscall_nr`.
pub const SYSCALL_NR: usize = 8;

/// Bounds an LSM program's return value where the verifier can see it.
/// Kernels since 6.9 reject an LSM program unless they can prove its return
/// value lies in [-4095, 0]; the compiler may derive `-EPERM`/0 with
/// arithmetic the verifier does not follow, so the value is reloaded
/// through a volatile stack slot (the compiler cannot fold what follows)
/// and clamped with comparisons the verifier tracks.
#[inline(always)]
pub fn lsm_ret(r: i32) -> i32 {
    let slot = r as i64;
    // SAFETY: a read of a live local through a reference to it.
    let r = unsafe { core::ptr::read_volatile(&slot) };
    if !(-4095..=0).contains(&r) {
        return 0;
    }
    r as i32
}

/// The `u64` at kernel address `addr`; 0 when it cannot be read.
#[inline(always)]
pub fn read_u64(addr: u64) -> u64 {
    // SAFETY: the helper checks the address; a fault is an error, not a crash.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.unwrap_or(0)
}
