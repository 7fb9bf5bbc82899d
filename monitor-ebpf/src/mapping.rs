//! Executable mappings are execs: a file mapped with `PROT_EXEC` (by
//! `mmap`, or made executable by `mprotect`/`pkey_mprotect`) is judged by
//! the exec rules like an `execve` of it, so running a denied binary
//! through the dynamic loader (`ld.so /path/denied`) or `dlopen` fails the
//! same way. Only mappings the policy does not plainly allow are recorded
//! (an `exec` record with `mapping: true`): every program maps its
//! libraries, and those records would drown the stream.
//!
//! With BPF LSM, `mmap_file` and `file_mprotect` refuse with `EPERM`
//! before the mapping exists, judged on the kernel's `struct file`.
//! Without it, the syscall's exit judges the mapping the kernel made, found
//! by address with `bpf_find_vma` (not the descriptor the caller named,
//! which another thread could swap), and kills the caller before it
//! returns to user space: the mapping exists, but no instruction of it runs.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_find_vma, bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_send_signal},
    macros::{lsm, tracepoint},
    programs::{LsmContext, TracePointContext},
};
use monitor_common::{
    event::{decision, flags, mechanism},
    maps::runtime,
};

use crate::{
    exec, file,
    kernel::{lsm_ret, read_u64, tp_arg, EPERM, SIGKILL, SYSCALL_RET},
    maps::{offsets, runtime_flags, MAPPING_INFLIGHT},
    open, policy, tamper,
    trajectory::{self, Membership},
};

const PROT_EXEC: u64 = 0x4;
const MAP_ANONYMOUS: u64 = 0x20;
const VM_EXEC: u64 = 0x4;
/// Mappings of one `mprotect` range the fallback judges; a range of more
/// is refused (no program makes that many mappings executable at once).
const MAX_RANGE_VMAS: u32 = 16;

/// Judges the executable mapping of `file` by `member`, recording it
/// unless plainly allowed; true when it must be stopped.
#[inline(always)]
fn blocked(member: &Membership, file: u64, how: u8) -> bool {
    // Every exec maps its libraries: skip the path walk where the path
    // cannot change the verdict.
    if policy::mapping_needs_no_path(member.policy) {
        return false;
    }
    let (verdict, resolved) = file::judge_exec(member, file, false);
    if verdict.decision != decision::ALLOW {
        exec::record_without_image(member, &verdict, &resolved, how, flags::EXEC_MAPPING);
    }
    verdict.blocks()
}

// ---------------------------------------------------------------- BPF LSM

/// `security_mmap_file(file, reqprot, prot, flags)`.
#[lsm(hook = "mmap_file")]
pub fn lsm_mmap_file(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(4);
    if prev != 0 {
        return lsm_ret(prev);
    }
    let (file, prot): (u64, u64) = (ctx.arg(0), ctx.arg(2));
    lsm_ret(lsm_judge(file, prot))
}

/// `security_file_mprotect(vma, reqprot, prot)`.
#[lsm(hook = "file_mprotect")]
pub fn lsm_file_mprotect(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(3);
    if prev != 0 {
        return lsm_ret(prev);
    }
    let (vma, prot): (u64, u64) = (ctx.arg(0), ctx.arg(2));
    lsm_ret(lsm_judge(read_u64(vma + offsets().vma_vm_file), prot))
}

#[inline(always)]
fn lsm_judge(file: u64, prot: u64) -> i32 {
    if file == 0 || prot & PROT_EXEC == 0 || runtime_flags() & runtime::LSM_EXEC == 0 {
        return 0;
    }
    match trajectory::current() {
        Some(member) if blocked(&member, file, mechanism::LSM) => -EPERM,
        _ => 0,
    }
}

// ---------------------------------------------------------------- fallback

#[inline(always)]
fn tid() -> u32 {
    unsafe { bpf_get_current_pid_tgid() as u32 }
}

/// `mmap(addr, len, prot, flags, fd, off)`: keeps the descriptor of an
/// executable file mapping for the exit.
#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    let (prot, map_flags, fd) = (tp_arg(&ctx, 2), tp_arg(&ctx, 3), tp_arg(&ctx, 4) as i64);
    if prot & PROT_EXEC == 0 || map_flags & MAP_ANONYMOUS != 0 || fd < 0 || trajectory::current().is_none() {
        return 0;
    }
    let _ = MAPPING_INFLIGHT.insert(&tid(), &[fd as u64, 0], 0);
    0
}

/// `mprotect(start, len, prot)` and `pkey_mprotect(start, len, prot, pkey)`:
/// keeps the range made executable for the exit.
#[tracepoint]
pub fn sys_enter_mprotect(ctx: TracePointContext) -> u32 {
    let (start, len, prot) = (tp_arg(&ctx, 0), tp_arg(&ctx, 1), tp_arg(&ctx, 2));
    if prot & PROT_EXEC == 0 || trajectory::current().is_none() {
        return 0;
    }
    let _ = MAPPING_INFLIGHT.insert(&tid(), &[start, start.wrapping_add(len)], 0);
    0
}

/// The syscall's result, and what its entry kept (taken out of the map).
#[inline(always)]
fn exiting(ctx: &TracePointContext) -> Option<(i64, [u64; 2])> {
    let tid = tid();
    let kept = *unsafe { MAPPING_INFLIGHT.get(&tid) }?;
    let _ = MAPPING_INFLIGHT.remove(&tid);
    let ret = unsafe { ctx.read_at::<i64>(SYSCALL_RET) }.unwrap_or(-1);
    Some((ret, kept))
}

#[inline(always)]
fn kill() {
    unsafe { bpf_send_signal(SIGKILL) };
}

#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    let Some((ret, [fd, _])) = exiting(&ctx) else {
        return 0;
    };
    if (-4095..0).contains(&ret) {
        return 0;
    }
    let Some(member) = trajectory::current() else {
        return 0;
    };
    // The mapping the kernel made; if its tree is busy, the descriptor.
    let file = match vma_at(ret as u64) {
        Some(v) => v.file,
        None => open::fd_file(fd as i64),
    };
    if blocked(&member, file, mechanism::KILL) {
        kill();
    }
    0
}

#[tracepoint]
pub fn sys_exit_mprotect(ctx: TracePointContext) -> u32 {
    let Some((ret, [start, end])) = exiting(&ctx) else {
        return 0;
    };
    if ret != 0 {
        return 0;
    }
    let Some(member) = trajectory::current() else {
        return 0;
    };
    // The one file the range maps executable (judging each mapping in the
    // loop would make the program too large for the verifier).
    let (mut addr, mut file, mut i, mut mixed) = (start, 0u64, 0, false);
    while i < MAX_RANGE_VMAS && addr < end {
        i += 1;
        let Some(v) = vma_at(addr) else { break };
        if v.file != 0 && v.flags & VM_EXEC != 0 {
            mixed |= file != 0 && file != v.file;
            file = v.file;
        }
        addr = v.end;
    }
    if (addr < end || mixed) && policy::enforcing(member.policy) {
        // More mappings than judged, a busy tree, or several files at
        // once: refuse what was not judged.
        let verdict = tamper::verdict(&member);
        exec::record_without_image(&member, &verdict, &None, mechanism::KILL, flags::EXEC_MAPPING);
        kill();
    } else if file != 0 && blocked(&member, file, mechanism::KILL) {
        kill();
    }
    0
}

/// What [`on_vma`] reads of the VMA `bpf_find_vma` found.
#[repr(C)]
struct Vma {
    file: u64,
    end: u64,
    flags: u64,
}

/// `bpf_find_vma`'s callback: runs with the task's mmap lock held.
unsafe extern "C" fn on_vma(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    let off = offsets();
    let v = vma as u64;
    let out = ctx as *mut Vma;
    unsafe {
        (*out).file = read_u64(v + off.vma_vm_file);
        (*out).end = read_u64(v + off.vma_vm_end);
        (*out).flags = read_u64(v + off.vma_vm_flags);
    }
    0
}

/// The current task's VMA containing `addr`; `None` when there is none or
/// the mmap lock was busy.
#[inline(always)]
fn vma_at(addr: u64) -> Option<Vma> {
    let mut found = Vma { file: 0, end: 0, flags: 0 };
    let r =
        unsafe { bpf_find_vma(bpf_get_current_task_btf(), addr, on_vma as *mut c_void, (&raw mut found).cast(), 0) };
    (r == 0 && found.end > addr).then_some(found)
}
