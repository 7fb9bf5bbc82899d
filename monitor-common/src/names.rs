//! Names of maps, programs and load-time globals, shared by both sides.
//!
//! In aya-ebpf a map or program is named after its Rust symbol, so the kernel
//! crate must use exactly these identifiers; the daemon looks them up by these
//! constants.

/// Ring buffer carrying every event record.
pub const MAP_EVENTS: &str = "EVENTS";
/// Registered trajectory cgroups: cgroup id -> [`crate::maps::TrajectoryValue`].
pub const MAP_TRAJECTORIES: &str = "TRAJECTORIES";
/// Runtime configuration, one [`crate::maps::RuntimeConfig`] at index 0.
pub const MAP_CONFIG: &str = "CONFIG";
/// Per-CPU loss counters per trajectory: cgroup id -> records lost.
/// The daemon inserts a zero entry when it registers the trajectory.
pub const MAP_TRAJECTORY_LOSSES: &str = "TRAJECTORY_LOSSES";
/// Per-CPU loss counters indexed by [`crate::maps::LossReason`].
pub const MAP_LOSSES: &str = "LOSSES";

/// Load-time constants (read-only data, fixed before the verifier runs).
pub const GLOBAL_OFFSETS: &str = "KERNEL_OFFSETS";
pub const GLOBAL_WAKEUP_BYTES: &str = "WAKEUP_BYTES";

pub const PROG_SCHED_PROCESS_EXEC: &str = "sched_process_exec";
pub const PROG_SYS_ENTER_OPENAT: &str = "sys_enter_openat";
pub const PROG_SYS_ENTER_OPENAT2: &str = "sys_enter_openat2";
pub const PROG_SYS_ENTER_OPEN: &str = "sys_enter_open";
pub const PROG_SYS_ENTER_CREAT: &str = "sys_enter_creat";
pub const PROG_CONNECT4: &str = "connect4";
pub const PROG_CONNECT6: &str = "connect6";
pub const PROG_SENDMSG4: &str = "sendmsg4";
pub const PROG_SENDMSG6: &str = "sendmsg6";
pub const PROG_RECVMSG4: &str = "recvmsg4";
pub const PROG_GETPEERNAME4: &str = "getpeername4";

// DNS egress (`monitor/src/dns`, `monitor-ebpf/src/dns.rs`).

/// Who sent each redirected DNS packet: slot -> [`crate::maps::DnsSlot`].
pub const MAP_DNS_SLOTS: &str = "DNS_SLOTS";
/// Per-CPU slot counter.
pub const MAP_DNS_NEXT: &str = "DNS_NEXT";
/// Redirected sockets that were already bound, LRU hash:
/// [`crate::maps::dns_bound_key`] -> slot index.
pub const MAP_DNS_BOUND: &str = "DNS_BOUND";
/// Redirected sockets, LRU hash: socket cookie -> [`crate::maps::DnsPeer`].
pub const MAP_DNS_PEERS: &str = "DNS_PEERS";
/// Learned IPv4 addresses, LRU hash: [`crate::policy::Learned4Key`] ->
/// [`crate::policy::LearnedValue`].
pub const MAP_LEARNED4: &str = "LEARNED4";
/// Learned IPv6 addresses, LRU hash: [`crate::policy::Learned6Key`] ->
/// [`crate::policy::LearnedValue`].
pub const MAP_LEARNED6: &str = "LEARNED6";

// Policy enforcement maps (keys and values in `crate::policy`).

/// Per-policy mode and default actions: policy id -> [`crate::policy::PolicyConfig`].
pub const MAP_POLICY_CONFIG: &str = "POLICY_CONFIG";
/// File rules, LPM trie: [`crate::policy::PathKey`] -> [`crate::policy::FileValue`].
pub const MAP_POLICY_FILE: &str = "POLICY_FILE";
/// Exec rules, LPM trie: [`crate::policy::PathKey`] -> [`crate::policy::ExecValue`].
pub const MAP_POLICY_EXEC: &str = "POLICY_EXEC";
/// IPv4 rules, LPM trie: [`crate::policy::Net4Key`] -> [`crate::policy::NetValue`].
pub const MAP_POLICY_NET4: &str = "POLICY_NET4";
/// IPv6 rules, LPM trie: [`crate::policy::Net6Key`] -> [`crate::policy::NetValue`].
pub const MAP_POLICY_NET6: &str = "POLICY_NET6";
/// Files of read-deny rules by identity, hash:
/// [`crate::policy::InodeKey`] -> [`crate::policy::FileValue`].
pub const MAP_POLICY_INODES: &str = "POLICY_INODES";

/// In-flight opens, LRU hash: thread id -> the open's entry state, from
/// `sys_enter_open*` to the matching `sys_exit_open*`.
pub const MAP_OPEN_INFLIGHT: &str = "OPEN_INFLIGHT";
/// Per-CPU scratch space for path resolution and lookup keys.
pub const MAP_SCRATCH: &str = "SCRATCH";
/// Per-CPU invocation counters of the LSM programs ([`crate::maps::LsmProbe`]).
pub const MAP_LSM_PROBE: &str = "LSM_PROBE";

/// Attached to every `sys_exit_open*` tracepoint (one program, verified once).
pub const PROG_SYS_EXIT_OPEN_ANY: &str = "sys_exit_open_any";
pub const PROG_LSM_FILE_OPEN: &str = "lsm_file_open";
pub const PROG_LSM_BPRM_CHECK: &str = "lsm_bprm_check";

// Built-in tamper protection (`monitor-ebpf/src/tamper.rs`).

/// Load-time [`crate::tamper::TamperConfig`].
pub const GLOBAL_TAMPER: &str = "TAMPER_CONFIG";
pub const PROG_LSM_BPF: &str = "lsm_bpf";
pub const PROG_LSM_PTRACE: &str = "lsm_ptrace_access_check";
pub const PROG_LSM_TASK_ALLOC: &str = "lsm_task_alloc";
pub const PROG_LSM_TASK_KILL: &str = "lsm_task_kill";
pub const PROG_LSM_INODE_MKDIR: &str = "lsm_inode_mkdir";
pub const PROG_LSM_INODE_RMDIR: &str = "lsm_inode_rmdir";
pub const PROG_TP_BPF: &str = "tamper_sys_enter_bpf";
pub const PROG_TP_PTRACE: &str = "tamper_sys_enter_ptrace";
pub const PROG_TP_PROCESS_VM_READV: &str = "tamper_sys_enter_process_vm_readv";
pub const PROG_TP_PROCESS_VM_WRITEV: &str = "tamper_sys_enter_process_vm_writev";
pub const PROG_TP_PIDFD_OPEN: &str = "tamper_sys_enter_pidfd_open";
pub const PROG_TP_CLONE3: &str = "tamper_sys_enter_clone3";
pub const PROG_RAW_FORK: &str = "sched_process_fork";
pub const PROG_OOM_MARK_VICTIM: &str = "oom_mark_victim";
pub const PROG_TP_ESCAPED_CHILD: &str = "escaped_child";
pub const PROG_RAW_COMPAT: &str = "compat_syscall";
pub const PROG_SOCK_CREATE: &str = "sock_create";
pub const PROG_LSM_SOCKET_CREATE: &str = "lsm_socket_create";
pub const PROG_TP_SOCKET: &str = "sys_enter_socket";
pub const PROG_TP_IO_URING_SETUP: &str = "tamper_sys_enter_io_uring_setup";
pub const PROG_TP_IO_URING_ENTER: &str = "tamper_sys_enter_io_uring_enter";
pub const PROG_TP_OPEN_BY_HANDLE_AT: &str = "tamper_sys_enter_open_by_handle_at";
pub const PROG_LSM_SB_MOUNT: &str = "lsm_sb_mount";
pub const PROG_LSM_MOVE_MOUNT: &str = "lsm_move_mount";
pub const PROG_TP_MOUNT: &str = "tamper_sys_enter_mount";
pub const PROG_TP_MOVE_MOUNT: &str = "tamper_sys_enter_move_mount";
pub const PROG_TP_OPEN_TREE: &str = "tamper_sys_enter_open_tree";
pub const PROG_TP_FSMOUNT: &str = "tamper_sys_enter_fsmount";

/// Executable mappings (`monitor-ebpf/src/mapping.rs`).
pub const PROG_LSM_MMAP_FILE: &str = "lsm_mmap_file";
pub const PROG_LSM_FILE_MPROTECT: &str = "lsm_file_mprotect";
pub const PROG_SYS_ENTER_MMAP: &str = "sys_enter_mmap";
pub const PROG_SYS_EXIT_MMAP: &str = "sys_exit_mmap";
pub const PROG_SYS_ENTER_MPROTECT: &str = "sys_enter_mprotect";
pub const PROG_SYS_EXIT_MPROTECT: &str = "sys_exit_mprotect";
pub const PROG_LSM_PATH_LINK: &str = "lsm_path_link";
pub const PROG_LSM_PATH_RENAME: &str = "lsm_path_rename";

/// Changing a file without opening it (`monitor-ebpf/src/mutate.rs`).
pub const PROG_LSM_PATH_UNLINK: &str = "lsm_path_unlink";
pub const PROG_LSM_PATH_RMDIR: &str = "lsm_path_rmdir";
pub const PROG_LSM_PATH_MKDIR: &str = "lsm_path_mkdir";
pub const PROG_LSM_PATH_MKNOD: &str = "lsm_path_mknod";
pub const PROG_LSM_PATH_SYMLINK: &str = "lsm_path_symlink";
pub const PROG_LSM_PATH_TRUNCATE: &str = "lsm_path_truncate";
pub const PROG_LSM_PATH_CHMOD: &str = "lsm_path_chmod";
pub const PROG_LSM_PATH_CHOWN: &str = "lsm_path_chown";
/// Their syscall tracepoints, which record what the Landlock layer refuses.
pub const PROG_SYS_ENTER_UNLINK: &str = "sys_enter_unlink";
pub const PROG_SYS_ENTER_UNLINKAT: &str = "sys_enter_unlinkat";
pub const PROG_SYS_ENTER_RMDIR: &str = "sys_enter_rmdir";
pub const PROG_SYS_ENTER_MKDIR: &str = "sys_enter_mkdir";
pub const PROG_SYS_ENTER_MKDIRAT: &str = "sys_enter_mkdirat";
pub const PROG_SYS_ENTER_MKNOD: &str = "sys_enter_mknod";
pub const PROG_SYS_ENTER_MKNODAT: &str = "sys_enter_mknodat";
pub const PROG_SYS_ENTER_SYMLINK: &str = "sys_enter_symlink";
pub const PROG_SYS_ENTER_SYMLINKAT: &str = "sys_enter_symlinkat";
pub const PROG_SYS_ENTER_TRUNCATE: &str = "sys_enter_truncate";
pub const PROG_SYS_ENTER_RENAME: &str = "sys_enter_rename";
pub const PROG_SYS_ENTER_RENAMEAT: &str = "sys_enter_renameat";
pub const PROG_SYS_ENTER_LINK: &str = "sys_enter_link";
pub const PROG_SYS_ENTER_LINKAT: &str = "sys_enter_linkat";
pub const PROG_SYS_EXIT_MUTATE_ANY: &str = "sys_exit_mutate_any";
