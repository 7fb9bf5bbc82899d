//! Every map and load-time global of the kernel side, in one place.
//! Names must match `monitor_common::names`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use monitor_common::maps::{KernelOffsets, LossReason, RuntimeConfig, TrajectoryValue, MAX_TRAJECTORIES};

/// Default ring buffer size; the daemon may resize it before loading.
const EVENTS_BYTES: u32 = 16 << 20;

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static TRAJECTORIES: HashMap<u64, TrajectoryValue> = HashMap::with_max_entries(MAX_TRAJECTORIES, 0);

#[map]
pub static TRAJECTORY_LOSSES: PerCpuHashMap<u64, u64> = PerCpuHashMap::with_max_entries(MAX_TRAJECTORIES, 0);

#[map]
pub static CONFIG: Array<RuntimeConfig> = Array::with_max_entries(1, 0);

#[map]
pub static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LossReason::COUNT, 0);

/// Field offsets from the running kernel's BTF, set by the daemon at load.
#[unsafe(no_mangle)]
pub static KERNEL_OFFSETS: KernelOffsets =
    KernelOffsets { task_real_parent: 0, task_tgid: 0, task_mm: 0, mm_arg_start: 0, mm_arg_end: 0 };

/// Unconsumed bytes in [`EVENTS`] above which a submit wakes the daemon.
/// Below it records are submitted without a wakeup and the daemon collects
/// them on its next timer tick: one wakeup per batch, not per event.
#[unsafe(no_mangle)]
pub static WAKEUP_BYTES: u64 = 256 * 1024;

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // Volatile so the compiler keeps the load from .rodata, which the loader
    // rewrites, instead of folding in the zero initialiser.
    unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS) }
}

#[inline(always)]
pub fn wakeup_bytes() -> u64 {
    unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) }
}
