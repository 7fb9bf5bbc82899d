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
    /// Policy instance bound to this trajectory: the index into the policy
    /// config array and the head of every policy map key.
    pub policy: u32,
    /// The trajectory's current step (`agent-monitor step`), 0 before the
    /// first. Written together with `policy` in one map update, so every
    /// record carries the step in force when the kernel took it.
    pub step: u32,
}
assert_size!(TrajectoryValue, 8);

/// Runtime configuration, written by the daemon, read on every hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Bit `n` set: some trajectory cgroup sits at cgroup level `n`
    /// (the cgroup2 root is level 0).
    pub trajectory_levels: u64,
    /// [`runtime`] bits.
    pub flags: u64,
    /// The daemon's DNS resolver (`monitor/src/dns`): IPv4 address in
    /// network byte order. The socket hooks send a trajectory's DNS traffic
    /// (UDP and TCP to port 53) there; `dns_port` 0 means no resolver runs
    /// and port 53 is judged like any other destination.
    pub dns_addr: [u8; 4],
    /// The resolver's port, host byte order.
    pub dns_port: u16,
    /// Second octet of the loopback network `127.N.0.0/16` a redirected DNS
    /// socket's source address is taken from: the low 16 bits name the
    /// [`DnsSlot`] that tells the resolver who asked.
    pub dns_client_net: u8,
    pub _pad: u8,
}
assert_size!(RuntimeConfig, 24);

/// Slots of [`crate::names::MAP_DNS_SLOTS`]: each CPU writes its own
/// [`DNS_SLOTS_PER_CPU`] slots in turn, so a slot is rewritten only after
/// that many later DNS redirects on the same CPU.
pub const DNS_SLOT_COUNT: u32 = 1 << 12;
pub const DNS_SLOTS_PER_CPU: u32 = 1 << 8;

/// Who sent a redirected DNS packet, written by the socket hook before the
/// packet leaves and read by the resolver when it arrives. The slot's index
/// is the low 16 bits of the packet's source address.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsSlot {
    /// The process, trajectory, policy instance and step, as every record
    /// carries them (kind `Connect`).
    pub header: crate::event::EventHeader,
    /// Where the agent sent it (network byte order; IPv4 in the first 4
    /// bytes).
    pub orig_addr: [u8; 16],
    /// Its destination port, host byte order (53).
    pub orig_port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    /// [`crate::event::ConnectOp`].
    pub op: u8,
    /// Bumped with every write, so the resolver can tell a slot from its
    /// previous use.
    pub generation: u32,
}
assert_size!(DnsSlot, 96 + 24);

/// Key of [`crate::names::MAP_DNS_BOUND`]: protocol, source address
/// (network byte order; 0 for a socket bound to the wildcard address) and
/// source port of a redirected socket that was already bound, so its
/// source address could not name a slot: one the agent bound itself (dig
/// does), or one connected before (its source is an earlier slot's, which
/// this entry overrides).
pub const fn dns_bound_key(protocol: u8, addr: [u8; 4], port: u16) -> u64 {
    (protocol as u64) << 48 | (port as u64) << 32 | u32::from_ne_bytes(addr) as u64
}

/// The destination a redirected DNS socket asked for, by socket cookie:
/// what `recvmsg4` and `getpeername4` show the agent instead of the
/// resolver's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsPeer {
    /// Network byte order.
    pub addr: [u8; 4],
    /// Network byte order, as `user_port` holds it.
    pub port: u32,
}
assert_size!(DnsPeer, 8);

/// [`RuntimeConfig::flags`] bits, set by the daemon once the BPF LSM
/// programs passed their functional self-test.
pub mod runtime {
    /// `lsm_file_open` enforces file rules.
    pub const LSM_FILE: u64 = 1 << 0;
    /// `lsm_bprm_check` enforces exec rules; `sched_process_exec` then only
    /// records, it no longer kills.
    pub const LSM_EXEC: u64 = 1 << 1;
}

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
    pub mm_exe_file: u64,
    pub task_files: u64,
    pub files_fdt: u64,
    pub fdt_max_fds: u64,
    pub fdt_fd: u64,
    pub file_f_path: u64,
    pub file_f_flags: u64,
    pub path_mnt: u64,
    pub path_dentry: u64,
    pub dentry_d_parent: u64,
    pub dentry_d_name: u64,
    pub qstr_len: u64,
    pub qstr_name: u64,
    /// `struct mount` embeds the `struct vfsmount` a `path` points to.
    pub mount_mnt: u64,
    pub mount_mnt_parent: u64,
    pub mount_mnt_mountpoint: u64,
    pub vfsmount_mnt_root: u64,
    pub bprm_file: u64,
    pub task_group_leader: u64,
    /// `task_struct::start_boottime`: what `/proc/<pid>/stat` reports as the
    /// start time, so process ids from events and from `/proc` agree.
    pub task_start_boottime: u64,
    pub file_f_inode: u64,
    /// `inode::i_nlink`: 0 for a file no directory names (memfd,
    /// `O_TMPFILE`, deleted).
    pub inode_i_nlink: u64,
    pub inode_i_ino: u64,
    pub inode_i_sb: u64,
    pub sb_s_dev: u64,
    pub vma_vm_file: u64,
    pub vma_vm_end: u64,
    pub vma_vm_flags: u64,
    /// `task_struct::thread_info.status` (x86: `TS_COMPAT` marks a 32-bit
    /// syscall in progress); 0 where the kernel has no such field.
    pub task_ti_status: u64,
    /// `task_struct::fs` and `fs_struct::pwd`: the working directory a
    /// failed relative open is reported against.
    pub task_fs: u64,
    pub fs_pwd: u64,
}
assert_size!(KernelOffsets, 36 * 8);

/// Per-CPU counters of the BPF LSM programs' invocations, indexed by
/// [`LsmProbe`]: how the daemon tells an attached LSM program that runs from
/// one the kernel accepted but never calls (`bpf` missing from `lsm=`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LsmProbe {
    FileOpen = 0,
    BprmCheck = 1,
}

impl LsmProbe {
    pub const COUNT: u32 = 2;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::TrajectoryValue {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::RuntimeConfig {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::DnsSlot {}
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes left implicit.
    unsafe impl aya::Pod for super::DnsPeer {}
}
