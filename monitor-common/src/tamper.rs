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
    /// A socket the network rules cannot judge (raw, packet, ICMP, SCTP,
    /// vsock, ...; `docs/security.md` has the table) under a policy that
    /// does not allow them. `arg`: [`socket_arg`].
    Socket = 12,
    /// A child a trajectory process created outside the trajectory's
    /// cgroup (`clone3(CLONE_INTO_CGROUP)` whose flags changed after the
    /// entry check), killed before it ran. `target_pid`: the child.
    CloneEscape = 13,
    /// A control request from inside a trajectory other than its own
    /// `step` (written by the daemon, not a kernel hook).
    Control = 14,
    /// A 32-bit syscall (`int 0x80`, or a 32-bit program) where BPF LSM
    /// does not run: the syscall tracepoints never see one, so nothing it
    /// opens or creates would be judged (fallback hook). `arg`: its number.
    CompatSyscall = 15,
}

/// Socket families, types and protocols of [`judged_socket`].
pub mod sock {
    pub const AF_UNIX: u64 = 1;
    pub const AF_INET: u64 = 2;
    pub const AF_INET6: u64 = 10;
    pub const AF_NETLINK: u64 = 16;
    pub const AF_ALG: u64 = 38;
    pub const SOCK_STREAM: u64 = 1;
    pub const SOCK_DGRAM: u64 = 2;
    /// The type without `SOCK_NONBLOCK`/`SOCK_CLOEXEC`.
    pub const SOCK_TYPE_MASK: u64 = 0xf;
    pub const IPPROTO_TCP: u64 = 6;
    pub const IPPROTO_UDP: u64 = 17;
    pub const IPPROTO_MPTCP: u64 = 262;
}

/// Whether a socket of this family, type and protocol is one the policy
/// can judge or one that reaches nothing the network rules protect, and so
/// is created without asking `defaults.raw_sockets`: TCP (and MPTCP, whose
/// first subflow passes the connect hook) and UDP over IPv4/IPv6, judged by
/// the cgroup connect and sendmsg hooks; unix sockets (local IPC, judged
/// apart); netlink (the kernel's own configuration interface, which
/// `getaddrinfo` uses) and `AF_ALG` (kernel crypto). Everything else can put
/// bytes on a wire or reach a peer without passing a judged hook
/// (`docs/security.md`, "Sockets").
pub const fn judged_socket(family: u64, ty: u64, protocol: u64) -> bool {
    use sock::*;
    match family {
        AF_UNIX | AF_NETLINK | AF_ALG => true,
        AF_INET | AF_INET6 => match ty & SOCK_TYPE_MASK {
            SOCK_STREAM => protocol == 0 || protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP,
            SOCK_DGRAM => protocol == 0 || protocol == IPPROTO_UDP,
            _ => false,
        },
        _ => false,
    }
}

/// `TamperEvent::arg` of a [`TamperOp::Socket`] record: family, type (with
/// its flags) and protocol of the refused socket.
pub const fn socket_arg(family: u64, ty: u64, protocol: u64) -> u64 {
    (family & 0xffff) | (ty & 0xffff_ffff) << 16 | (protocol & 0xffff) << 48
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
            12 => Some(Self::Socket),
            13 => Some(Self::CloneEscape),
            14 => Some(Self::Control),
            15 => Some(Self::CompatSyscall),
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
            Self::Socket => "socket",
            Self::CloneEscape => "clone_escape",
            Self::Control => "control",
            Self::CompatSyscall => "compat_syscall",
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
