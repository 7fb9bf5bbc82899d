//! The built-in tamper protection's ABI: the record its hooks write and the
//! load-time configuration they read.

use crate::{assert_size, event::EventHeader};

/// What a trajectory process attempted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TamperOp {
    /// The `bpf()` syscall (any command): maps, programs, links, pins.
    Bpf = 1,
    /// ptrace-style access to a process outside the trajectory (attach,
    /// `/proc/<pid>/mem`, `process_vm_*`, `pidfd_getfd`, ...).
    Ptrace = 2,
    /// `process_vm_readv`/`process_vm_writev` on the daemon (fallback hook).
    ProcessVm = 3,
    /// `pidfd_open` of the daemon (fallback hook).
    PidfdOpen = 4,
    /// `clone3(CLONE_INTO_CGROUP)`: a child started in another cgroup.
    CloneIntoCgroup = 5,
    /// `mkdir` in a cgroup or BPF filesystem.
    CgroupMkdir = 6,
    /// `rmdir` in a cgroup or BPF filesystem.
    CgroupRmdir = 7,
    /// `io_uring_setup`/`io_uring_enter` where opens through the ring would
    /// not be judged (fallback hook).
    IoUring = 8,
    /// `open_by_handle_at` where the open would not be judged (fallback hook).
    OpenByHandle = 9,
    /// `mount`, `move_mount` (and, on the fallback, `open_tree`, `fsmount`).
    Mount = 10,
    /// A signal to the daemon (`kill`, `tkill`, `tgkill`,
    /// `pidfd_send_signal`, `rt_sigqueueinfo`).
    Signal = 11,
}

impl TamperOp {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Bpf),
            2 => Some(Self::Ptrace),
            3 => Some(Self::ProcessVm),
            4 => Some(Self::PidfdOpen),
            5 => Some(Self::CloneIntoCgroup),
            6 => Some(Self::CgroupMkdir),
            7 => Some(Self::CgroupRmdir),
            8 => Some(Self::IoUring),
            9 => Some(Self::OpenByHandle),
            10 => Some(Self::Mount),
            11 => Some(Self::Signal),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bpf => "bpf",
            Self::Ptrace => "ptrace",
            Self::ProcessVm => "process_vm",
            Self::PidfdOpen => "pidfd_open",
            Self::CloneIntoCgroup => "clone_into_cgroup",
            Self::CgroupMkdir => "cgroup_mkdir",
            Self::CgroupRmdir => "cgroup_rmdir",
            Self::IoUring => "io_uring",
            Self::OpenByHandle => "open_by_handle_at",
            Self::Mount => "mount",
            Self::Signal => "signal",
        }
    }
}

/// A refused tamper attempt (`EventKind::Tamper`). Its header carries the
/// decision `deny` and the rule id `RULE_BUILTIN_TAMPER`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TamperEvent {
    pub header: EventHeader,
    /// One of [`TamperOp`].
    pub op: u32,
    /// The target process (thread-group id) of a ptrace-style access or a
    /// signal, else 0.
    pub target_pid: u32,
    /// Per op: the `bpf` command, the ptrace request or access mode, the
    /// clone or mount flags, the signal number.
    pub arg: u64,
}
assert_size!(TamperEvent, 96 + 16);

/// Load-time configuration of the tamper hooks: kernel field offsets (from
/// BTF) and the daemon's pid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TamperConfig {
    /// Thread-group id of the daemon, which the fallback ptrace hooks guard.
    pub daemon_tgid: u64,
    pub task_cgroups: u64,
    pub css_set_dfl_cgrp: u64,
    pub cgroup_kn: u64,
    /// `cgroup.self` + `cgroup_subsys_state.parent`: the parent cgroup.
    pub cgroup_parent: u64,
    pub kernfs_node_id: u64,
    pub dentry_d_sb: u64,
    pub inode_i_sb: u64,
    pub super_block_s_magic: u64,
}
assert_size!(TamperConfig, 9 * 8);

/// Superblock magics of the filesystems no trajectory may write to or
/// create directories in, whatever path they are reached by.
pub mod magic {
    pub const CGROUP: u64 = 0x0027_e0eb;
    pub const CGROUP2: u64 = 0x6367_7270;
    pub const BPF_FS: u64 = 0xcafe_4a11;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::TamperConfig {}
}
