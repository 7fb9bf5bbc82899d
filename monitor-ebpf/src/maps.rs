//! Every map and load-time global of the kernel side, in one place.
//! Names must match `monitor_common::names`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use monitor_common::{
    event::PATH_LEN,
    maps::{
        DnsPeer, DnsSlot, KernelOffsets, LossReason, LsmProbe, RuntimeConfig, TrajectoryValue, DNS_SLOT_COUNT,
        MAX_TRAJECTORIES,
    },
    policy::{
        ExecValue, FileValue, InodeKey, Learned4Key, Learned6Key, LearnedValue, NetValue, PolicyConfig, MAX_INODES,
        MAX_LEARNED, MAX_POLICIES, PATH_KEY_LEN,
    },
};

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

#[map]
pub static LSM_PROBE: PerCpuArray<u64> = PerCpuArray::with_max_entries(LsmProbe::COUNT, 0);

// Policy maps: keys and values in `monitor_common::policy`. The tries hold
// entries of every live policy instance, told apart by the instance id at the
// head of each key. LPM tries allocate on insert (the kernel requires
// BPF_F_NO_PREALLOC), so the capacities cost nothing until used.

#[map]
pub static POLICY_CONFIG: Array<PolicyConfig> = Array::with_max_entries(MAX_POLICIES, 0);

/// Data of a path key after `prefixlen`: policy id and path bytes.
pub type PathKeyData = [u8; 4 + PATH_KEY_LEN];

#[map]
pub static POLICY_FILE: LpmTrie<PathKeyData, FileValue> = LpmTrie::with_max_entries(1 << 18, BPF_F_NO_PREALLOC);

#[map]
pub static POLICY_EXEC: LpmTrie<PathKeyData, ExecValue> = LpmTrie::with_max_entries(1 << 16, BPF_F_NO_PREALLOC);

/// Files of read-deny rules by identity (`file::judge`): a hash, written
/// by the daemon per instance, capped per instance.
#[map]
pub static POLICY_INODES: HashMap<InodeKey, FileValue> = HashMap::with_max_entries(MAX_INODES, BPF_F_NO_PREALLOC);

#[map]
pub static POLICY_NET4: LpmTrie<[u8; 8], NetValue> = LpmTrie::with_max_entries(1 << 16, BPF_F_NO_PREALLOC);

#[map]
pub static POLICY_NET6: LpmTrie<[u8; 20], NetValue> = LpmTrie::with_max_entries(1 << 16, BPF_F_NO_PREALLOC);

// DNS egress (`dns.rs`): who sent each redirected query, what each
// redirected socket asked for, and the addresses learned from allowed names.

#[map]
pub static DNS_SLOTS: Array<DnsSlot> = Array::with_max_entries(DNS_SLOT_COUNT, 0);

#[map]
pub static DNS_NEXT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Slots of redirected sockets the agent had bound itself (or connected
/// before): `dns_bound_key` -> slot.
#[map]
pub static DNS_BOUND: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

#[map]
pub static DNS_PEERS: LruHashMap<u64, DnsPeer> = LruHashMap::with_max_entries(16384, 0);

#[map]
pub static LEARNED4: LruHashMap<Learned4Key, LearnedValue> = LruHashMap::with_max_entries(MAX_LEARNED, 0);

#[map]
pub static LEARNED6: LruHashMap<Learned6Key, LearnedValue> = LruHashMap::with_max_entries(MAX_LEARNED, 0);

/// Children a trajectory process created outside the trajectory's cgroup
/// (`tamper::sched_process_fork`), keyed by their `task_struct` address,
/// each killed on its way out of the fork (`tamper::escaped_child`).
#[map]
pub static ESCAPED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// An `mmap` (`[fd, 0]`) or `mprotect` (`[start, end]`) that asked for
/// `PROT_EXEC`, kept by thread for the syscall's exit (`mapping`).
#[map]
pub static MAPPING_INFLIGHT: LruHashMap<u32, [u64; 2]> = LruHashMap::with_max_entries(4096, 0);

/// What `sys_enter_open*` saw, kept for the matching `sys_exit_open*`.
#[repr(C)]
pub struct OpenEntry {
    pub syscall: u32,
    pub dfd: i32,
    pub flags: u32,
    pub mode: u32,
    pub requested_len: u32,
    pub requested_flags: u32,
    pub requested: [u8; PATH_LEN],
}

/// LRU: an entry whose exit never came (a killed thread) is evicted rather
/// than filling the map.
#[map]
pub static OPEN_INFLIGHT: LruHashMap<u32, OpenEntry> = LruHashMap::with_max_entries(16384, 0);

/// What a `sys_enter_*` of a call that changes a file saw (one entry per
/// path: key `tid << 1 | n`), kept for its exit (`mutate`), which records
/// the calls the Landlock layer refused.
#[map]
pub static MUTATE_INFLIGHT: LruHashMap<u64, OpenEntry> = LruHashMap::with_max_entries(8192, 0);

/// Logical size of the path build area; a path longer than this is
/// unresolved.
pub const PATH_BUF: usize = 1024;

/// Per-CPU scratch: the path under construction (built backwards from the
/// end of `buf[..PATH_BUF]`; the extra 256 bytes let the verifier see every
/// component copy in bounds) and a lookup key.
#[repr(C)]
pub struct Scratch {
    /// An in-flight open being built before it goes into [`OPEN_INFLIGHT`].
    pub entry: OpenEntry,
    /// Start of the path being built in `buf`. Kept in map memory, not in a
    /// register: the verifier then treats each reload as an unknown value
    /// bounded by the mask, instead of tracking every possible position
    /// through every iteration (which exhausts its instruction budget).
    pub pos: u32,
    /// A file verdict (`policy`, `rule_id`, `action | decision << 8 |
    /// by_inode << 16`) passed through map memory for the same reason:
    /// read back, it is one unknown value, not one verifier state per way
    /// it was reached (`file::judge`).
    pub judged: [u32; 3],
    pub buf: [u8; PATH_BUF + 256],
    pub key: monitor_common::policy::PathKey,
    /// Slack so a copy whose length the verifier knows only as `n & 0xff`
    /// stays inside the map value.
    pub _tail: [u8; 8],
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Field offsets from the running kernel's BTF, set by the daemon at load.
#[unsafe(no_mangle)]
pub static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    task_real_parent: 0,
    task_tgid: 0,
    task_mm: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    mm_exe_file: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_f_path: 0,
    file_f_flags: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    qstr_len: 0,
    qstr_name: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    vfsmount_mnt_root: 0,
    bprm_file: 0,
    task_group_leader: 0,
    task_start_boottime: 0,
    file_f_inode: 0,
    inode_i_nlink: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    sb_s_dev: 0,
    vma_vm_file: 0,
    vma_vm_end: 0,
    vma_vm_flags: 0,
    task_ti_status: 0,
    task_fs: 0,
    fs_pwd: 0,
};

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

/// [`RuntimeConfig::flags`], 0 until the daemon writes the config.
#[inline(always)]
pub fn runtime_flags() -> u64 {
    CONFIG.get(0).map_or(0, |c| c.flags)
}
