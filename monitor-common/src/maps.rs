//! Keys and values of the maps shared by the kernel programs and the daemon.

use crate::assert_size;

/// Deepest cgroup level a trajectory cgroup may sit at. The kernel walks the
/// ancestors of the current cgroup only at levels present in
/// [`RuntimeConfig::trajectory_levels`], so this bounds that walk.
pub const MAX_CGROUP_LEVEL: u32 = 63;

/// Capacity of [`crate::names::MAP_TRAJECTORIES`].
pub const MAX_TRAJECTORIES: u32 = 4096;

/// Value of the trajectory map, keyed by the trajectory cgroup's id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrajectoryValue {
    /// Index of the policy bound to this trajectory (policy enforcement).
    pub policy: u32,
    pub _pad: u32,
}
assert_size!(TrajectoryValue, 8);

/// Runtime configuration, written by the daemon, read on every hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Bit `n` set: some trajectory cgroup sits at cgroup level `n`
    /// (the cgroup2 root is level 0).
    pub trajectory_levels: u64,
}
assert_size!(RuntimeConfig, 8);

/// Why the kernel side could not record an event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// `bpf_ringbuf_reserve` failed: the daemon is not keeping up.
    RingbufFull = 0,
}

impl LossReason {
    pub const ALL: [LossReason; 1] = [LossReason::RingbufFull];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn as_str(self) -> &'static str {
        match self {
            LossReason::RingbufFull => "ringbuf_full",
        }
    }
}

/// Byte offsets of the kernel structure fields the programs read, resolved by
/// the daemon from the running kernel's BTF before the programs load (the Rust
/// eBPF toolchain has no CO-RE field relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_real_parent: u64,
    pub task_tgid: u64,
    pub task_mm: u64,
    pub mm_arg_start: u64,
    pub mm_arg_end: u64,
}
assert_size!(KernelOffsets, 40);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::TrajectoryValue {}
    unsafe impl aya::Pod for super::RuntimeConfig {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}
