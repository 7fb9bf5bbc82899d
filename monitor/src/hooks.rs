//! The one place that says which kernel hook observes and enforces what.
//!
//! Every program the daemon loads is listed here with how it attaches:
//! [`HOOKS`] always, [`LSM_HOOKS`] when the kernel runs BPF LSM programs
//! (probed at startup by loading them and watching them run), and
//! [`OPEN_TRACEPOINTS`] otherwise, as the kill fallback for file rules.
//! [`PROTECTIONS`] lists the built-in tamper protection's hooks, each with
//! its BPF LSM hooks and its tracepoint fallback.

use monitor_common::names;

/// What a hook observes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookClass {
    Exec,
    Open,
    Connect,
    /// Built-in tamper protection ([`PROTECTIONS`]).
    Tamper,
    /// A policy's `limits:` holding (OOM kills).
    Limit,
}

impl HookClass {
    /// As `status` spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            HookClass::Exec => "exec",
            HookClass::Open => "open",
            HookClass::Connect => "connect",
            HookClass::Tamper => "tamper",
            HookClass::Limit => "limit",
        }
    }
}

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A tracepoint under tracefs `events/<category>/<name>`.
    Tracepoint { category: &'static str, name: &'static str },
    /// A raw tracepoint (`raw_tracepoint/<name>`): the kernel's own
    /// arguments, with no tracefs record format to depend on.
    RawTracepoint { name: &'static str },
    /// A cgroup sock_addr hook on the daemon's trajectory parent cgroup.
    CgroupSockAddr,
    /// The cgroup `sock_create` hook on the daemon's trajectory parent cgroup.
    CgroupSock,
    /// A BPF LSM hook (`security_<name>`).
    Lsm { name: &'static str },
}

#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// Name shown to operators, e.g. `open:openat`.
    pub name: &'static str,
    pub class: HookClass,
    /// Program symbol in the eBPF object.
    pub program: &'static str,
    pub attach: Attach,
    /// Missing on some architectures (`open`/`creat` do not exist on arm64);
    /// the daemon reports such a hook as unavailable instead of failing.
    pub optional: bool,
}

const fn syscall(
    name: &'static str,
    class: HookClass,
    program: &'static str,
    tp: &'static str,
    optional: bool,
) -> Hook {
    Hook { name, class, program, attach: Attach::Tracepoint { category: "syscalls", name: tp }, optional }
}

const fn lsm_path(name: &'static str, program: &'static str, hook: &'static str) -> Hook {
    Hook { name, class: HookClass::Open, program, attach: Attach::Lsm { name: hook }, optional: true }
}

const fn sock(name: &'static str, program: &'static str) -> Hook {
    Hook { name, class: HookClass::Connect, program, attach: Attach::CgroupSockAddr, optional: false }
}

/// Attached on every kernel.
pub const HOOKS: &[Hook] = &[
    Hook {
        name: "exec",
        class: HookClass::Exec,
        program: names::PROG_SCHED_PROCESS_EXEC,
        attach: Attach::Tracepoint { category: "sched", name: "sched_process_exec" },
        optional: false,
    },
    sock("connect:connect4", names::PROG_CONNECT4),
    sock("connect:connect6", names::PROG_CONNECT6),
    sock("connect:sendmsg4", names::PROG_SENDMSG4),
    sock("connect:sendmsg6", names::PROG_SENDMSG6),
    // DNS egress: a redirected socket sees the server it asked for.
    sock("connect:recvmsg4", names::PROG_RECVMSG4),
    sock("connect:getpeername4", names::PROG_GETPEERNAME4),
    // Which process the OOM killer killed at a trajectory's memory limit.
    Hook {
        name: "limit:oom",
        class: HookClass::Limit,
        program: names::PROG_OOM_MARK_VICTIM,
        attach: Attach::Tracepoint { category: "oom", name: "mark_victim" },
        optional: true,
    },
    // IPv4/IPv6 sockets the connect hooks cannot judge (raw, ICMP, SCTP).
    Hook {
        name: "socket:sock_create",
        class: HookClass::Connect,
        program: names::PROG_SOCK_CREATE,
        attach: Attach::CgroupSock,
        optional: false,
    },
];

/// BPF LSM enforcement of file and exec rules.
pub const LSM_HOOKS: &[Hook] = &[
    Hook {
        name: "lsm:file_open",
        class: HookClass::Open,
        program: names::PROG_LSM_FILE_OPEN,
        attach: Attach::Lsm { name: "file_open" },
        optional: true,
    },
    Hook {
        name: "lsm:bprm_check_security",
        class: HookClass::Exec,
        program: names::PROG_LSM_BPRM_CHECK,
        attach: Attach::Lsm { name: "bprm_check_security" },
        optional: true,
    },
    // A denied file gets no other name.
    Hook {
        name: "lsm:path_link",
        class: HookClass::Open,
        program: names::PROG_LSM_PATH_LINK,
        attach: Attach::Lsm { name: "path_link" },
        optional: true,
    },
    Hook {
        name: "lsm:path_rename",
        class: HookClass::Open,
        program: names::PROG_LSM_PATH_RENAME,
        attach: Attach::Lsm { name: "path_rename" },
        optional: true,
    },
    // Changing a file without opening it is a write of its path.
    lsm_path("lsm:path_unlink", names::PROG_LSM_PATH_UNLINK, "path_unlink"),
    lsm_path("lsm:path_rmdir", names::PROG_LSM_PATH_RMDIR, "path_rmdir"),
    lsm_path("lsm:path_mkdir", names::PROG_LSM_PATH_MKDIR, "path_mkdir"),
    lsm_path("lsm:path_mknod", names::PROG_LSM_PATH_MKNOD, "path_mknod"),
    lsm_path("lsm:path_symlink", names::PROG_LSM_PATH_SYMLINK, "path_symlink"),
    lsm_path("lsm:path_truncate", names::PROG_LSM_PATH_TRUNCATE, "path_truncate"),
    lsm_path("lsm:path_chmod", names::PROG_LSM_PATH_CHMOD, "path_chmod"),
    lsm_path("lsm:path_chown", names::PROG_LSM_PATH_CHOWN, "path_chown"),
    // Executable mappings are judged by the exec rules.
    Hook {
        name: "lsm:mmap_file",
        class: HookClass::Exec,
        program: names::PROG_LSM_MMAP_FILE,
        attach: Attach::Lsm { name: "mmap_file" },
        optional: true,
    },
    Hook {
        name: "lsm:file_mprotect",
        class: HookClass::Exec,
        program: names::PROG_LSM_FILE_MPROTECT,
        attach: Attach::Lsm { name: "file_mprotect" },
        optional: true,
    },
];

/// Open observation and kill enforcement where BPF LSM does not run:
/// entry records the request, exit judges the opened file (one exit
/// program, attached to the four exit tracepoints).
pub const OPEN_TRACEPOINTS: &[Hook] = &[
    syscall("open:openat", HookClass::Open, names::PROG_SYS_ENTER_OPENAT, "sys_enter_openat", false),
    syscall("open:openat2", HookClass::Open, names::PROG_SYS_ENTER_OPENAT2, "sys_enter_openat2", true),
    syscall("open:open", HookClass::Open, names::PROG_SYS_ENTER_OPEN, "sys_enter_open", true),
    syscall("open:creat", HookClass::Open, names::PROG_SYS_ENTER_CREAT, "sys_enter_creat", true),
    syscall("open:openat/exit", HookClass::Open, names::PROG_SYS_EXIT_OPEN_ANY, "sys_exit_openat", false),
    syscall("open:openat2/exit", HookClass::Open, names::PROG_SYS_EXIT_OPEN_ANY, "sys_exit_openat2", true),
    syscall("open:open/exit", HookClass::Open, names::PROG_SYS_EXIT_OPEN_ANY, "sys_exit_open", true),
    syscall("open:creat/exit", HookClass::Open, names::PROG_SYS_EXIT_OPEN_ANY, "sys_exit_creat", true),
];

/// Calls that change a file without opening it, where BPF LSM does not run:
/// the Landlock layer refuses them; entry keeps the paths, exit records the
/// refusals. Legacy calls (`unlink`, `rename`, ...) exist on x86-64 only.
pub const MUTATE_TRACEPOINTS: &[Hook] = &[
    mutate("mutate:unlink", names::PROG_SYS_ENTER_UNLINK, "sys_enter_unlink", true),
    mutate("mutate:unlinkat", names::PROG_SYS_ENTER_UNLINKAT, "sys_enter_unlinkat", false),
    mutate("mutate:rmdir", names::PROG_SYS_ENTER_RMDIR, "sys_enter_rmdir", true),
    mutate("mutate:mkdir", names::PROG_SYS_ENTER_MKDIR, "sys_enter_mkdir", true),
    mutate("mutate:mkdirat", names::PROG_SYS_ENTER_MKDIRAT, "sys_enter_mkdirat", false),
    mutate("mutate:mknod", names::PROG_SYS_ENTER_MKNOD, "sys_enter_mknod", true),
    mutate("mutate:mknodat", names::PROG_SYS_ENTER_MKNODAT, "sys_enter_mknodat", false),
    mutate("mutate:symlink", names::PROG_SYS_ENTER_SYMLINK, "sys_enter_symlink", true),
    mutate("mutate:symlinkat", names::PROG_SYS_ENTER_SYMLINKAT, "sys_enter_symlinkat", false),
    mutate("mutate:truncate", names::PROG_SYS_ENTER_TRUNCATE, "sys_enter_truncate", false),
    mutate("mutate:rename", names::PROG_SYS_ENTER_RENAME, "sys_enter_rename", true),
    mutate("mutate:renameat", names::PROG_SYS_ENTER_RENAMEAT, "sys_enter_renameat", true),
    mutate("mutate:renameat2", names::PROG_SYS_ENTER_RENAMEAT, "sys_enter_renameat2", false),
    mutate("mutate:link", names::PROG_SYS_ENTER_LINK, "sys_enter_link", true),
    mutate("mutate:linkat", names::PROG_SYS_ENTER_LINKAT, "sys_enter_linkat", false),
    mutate("mutate:unlink/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_unlink", true),
    mutate("mutate:unlinkat/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_unlinkat", false),
    mutate("mutate:rmdir/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_rmdir", true),
    mutate("mutate:mkdir/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_mkdir", true),
    mutate("mutate:mkdirat/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_mkdirat", false),
    mutate("mutate:mknod/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_mknod", true),
    mutate("mutate:mknodat/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_mknodat", false),
    mutate("mutate:symlink/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_symlink", true),
    mutate("mutate:symlinkat/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_symlinkat", false),
    mutate("mutate:truncate/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_truncate", false),
    mutate("mutate:rename/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_rename", true),
    mutate("mutate:renameat/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_renameat", true),
    mutate("mutate:renameat2/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_renameat2", false),
    mutate("mutate:link/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_link", true),
    mutate("mutate:linkat/exit", names::PROG_SYS_EXIT_MUTATE_ANY, "sys_exit_linkat", false),
];

const fn mutate(name: &'static str, program: &'static str, tp: &'static str, optional: bool) -> Hook {
    syscall(name, HookClass::Open, program, tp, optional)
}

/// Executable mappings where BPF LSM does not run: entry keeps what was
/// asked, exit judges the mapping the kernel made and kills.
pub const MAPPING_TRACEPOINTS: &[Hook] = &[
    syscall("mapping:mmap", HookClass::Exec, names::PROG_SYS_ENTER_MMAP, "sys_enter_mmap", false),
    syscall("mapping:mmap/exit", HookClass::Exec, names::PROG_SYS_EXIT_MMAP, "sys_exit_mmap", false),
    syscall("mapping:mprotect", HookClass::Exec, names::PROG_SYS_ENTER_MPROTECT, "sys_enter_mprotect", false),
    syscall("mapping:mprotect/exit", HookClass::Exec, names::PROG_SYS_EXIT_MPROTECT, "sys_exit_mprotect", false),
    syscall("mapping:pkey_mprotect", HookClass::Exec, names::PROG_SYS_ENTER_MPROTECT, "sys_enter_pkey_mprotect", true),
    syscall(
        "mapping:pkey_mprotect/exit",
        HookClass::Exec,
        names::PROG_SYS_EXIT_MPROTECT,
        "sys_exit_pkey_mprotect",
        true,
    ),
];

/// A built-in tamper protection (`monitor-ebpf/src/tamper.rs`) and the
/// hooks that carry it on each kind of kernel.
#[derive(Clone, Copy, Debug)]
pub struct Protection {
    /// Shown by `status` and in `docs/security.md`.
    pub name: &'static str,
    /// Attached when BPF LSM passed its self-test; empty when the file
    /// hooks already cover the protection there.
    pub lsm: &'static [Hook],
    /// What the LSM hooks refuse.
    pub lsm_scope: &'static str,
    /// Attached otherwise: syscall-entry tracepoints that kill.
    pub fallback: &'static [Hook],
    /// What the fallback stops, and what it does not.
    pub fallback_scope: &'static str,
}

const fn tamper_lsm(name: &'static str, program: &'static str, lsm: &'static str) -> Hook {
    Hook { name, class: HookClass::Tamper, program, attach: Attach::Lsm { name: lsm }, optional: true }
}

const fn tamper_tp(name: &'static str, program: &'static str, tp: &'static str) -> Hook {
    syscall(name, HookClass::Tamper, program, tp, true)
}

const fn tamper_raw_tp(name: &'static str, program: &'static str, tp: &'static str) -> Hook {
    Hook { name, class: HookClass::Tamper, program, attach: Attach::RawTracepoint { name: tp }, optional: false }
}

/// The built-in protections besides the file-write protection (which the
/// file hooks carry, see `crate::policy::builtin`).
pub const PROTECTIONS: &[Protection] = &[
    Protection {
        name: "bpf",
        lsm: &[tamper_lsm("tamper:lsm:bpf", names::PROG_LSM_BPF, "bpf")],
        lsm_scope: "the bpf() syscall (maps, programs, links, pins) fails with EPERM",
        fallback: &[tamper_tp("tamper:bpf", names::PROG_TP_BPF, "sys_enter_bpf")],
        fallback_scope: "a process calling bpf() is killed at syscall entry (the first call runs)",
    },
    Protection {
        name: "ptrace",
        lsm: &[tamper_lsm("tamper:lsm:ptrace_access_check", names::PROG_LSM_PTRACE, "ptrace_access_check")],
        lsm_scope: "ptrace, /proc/<pid>/mem|environ|fd|root, process_vm_*, pidfd_getfd of any process outside the \
                    trajectory fail with EPERM",
        fallback: &[
            tamper_tp("tamper:ptrace", names::PROG_TP_PTRACE, "sys_enter_ptrace"),
            tamper_tp("tamper:process_vm_readv", names::PROG_TP_PROCESS_VM_READV, "sys_enter_process_vm_readv"),
            tamper_tp("tamper:process_vm_writev", names::PROG_TP_PROCESS_VM_WRITEV, "sys_enter_process_vm_writev"),
            tamper_tp("tamper:pidfd_open", names::PROG_TP_PIDFD_OPEN, "sys_enter_pidfd_open"),
        ],
        fallback_scope: "a process that ptrace-attaches to, process_vm_*s or pidfd_opens the daemon is killed at \
                         syscall entry; other processes outside the trajectory are not protected",
    },
    Protection {
        name: "signals",
        lsm: &[tamper_lsm("tamper:lsm:task_kill", names::PROG_LSM_TASK_KILL, "task_kill")],
        lsm_scope: "signals to the daemon (kill, tkill, tgkill, pidfd_send_signal, rt_sigqueueinfo) fail with EPERM",
        fallback: &[],
        fallback_scope: "signals to the daemon cannot be refused without BPF LSM: a root agent can kill it, which \
                         stops the recording until it restarts; the pinned programs keep enforcing (continuity)",
    },
    Protection {
        name: "cgroup-escape",
        lsm: &[tamper_lsm("tamper:lsm:task_alloc", names::PROG_LSM_TASK_ALLOC, "task_alloc")],
        lsm_scope: "clone3(CLONE_INTO_CGROUP) fails with EPERM",
        fallback: &[
            tamper_tp("tamper:clone3", names::PROG_TP_CLONE3, "sys_enter_clone3"),
            tamper_raw_tp("tamper:fork", names::PROG_RAW_FORK, "sched_process_fork"),
            tamper_tp("tamper:clone3/exit", names::PROG_TP_ESCAPED_CHILD, "sys_exit_clone3"),
        ],
        fallback_scope: "clone3(CLONE_INTO_CGROUP) kills the caller before the child exists; a child that still \
                         lands outside the trajectory (flags changed after they were read) is killed on its way out \
                         of the fork, before its first instruction",
    },
    Protection {
        name: "sockets",
        lsm: &[tamper_lsm("tamper:lsm:socket_create", names::PROG_LSM_SOCKET_CREATE, "socket_create")],
        lsm_scope: "sockets of families the network rules cannot judge (packet, vsock, XDP, ...) fail with EPERM \
                    unless defaults.raw_sockets allows them; IPv4/IPv6 ones at the cgroup sock_create hook",
        fallback: &[tamper_tp("tamper:socket", names::PROG_TP_SOCKET, "sys_enter_socket")],
        fallback_scope: "socket(2) of a family the network rules cannot judge (packet, vsock, XDP, ...) kills the \
                         caller before the socket exists unless defaults.raw_sockets allows it; IPv4/IPv6 ones fail \
                         with EPERM at the cgroup sock_create hook",
    },
    Protection {
        name: "cgroup-mkdir",
        lsm: &[
            tamper_lsm("tamper:lsm:inode_mkdir", names::PROG_LSM_INODE_MKDIR, "inode_mkdir"),
            tamper_lsm("tamper:lsm:inode_rmdir", names::PROG_LSM_INODE_RMDIR, "inode_rmdir"),
        ],
        lsm_scope: "mkdir/rmdir in a cgroup or BPF filesystem fails with EPERM",
        fallback: &[],
        fallback_scope: "mkdir/rmdir of cgroups cannot be stopped without BPF LSM (moving a process into a new \
                         cgroup still is: cgroup files are read-only, clone3 into a cgroup kills)",
    },
    Protection {
        name: "mount",
        lsm: &[
            tamper_lsm("tamper:lsm:sb_mount", names::PROG_LSM_SB_MOUNT, "sb_mount"),
            tamper_lsm("tamper:lsm:move_mount", names::PROG_LSM_MOVE_MOUNT, "move_mount"),
        ],
        lsm_scope: "mount and move_mount fail with EPERM (no bind mount can alias a protected or denied path)",
        fallback: &[
            tamper_tp("tamper:mount", names::PROG_TP_MOUNT, "sys_enter_mount"),
            tamper_tp("tamper:move_mount", names::PROG_TP_MOVE_MOUNT, "sys_enter_move_mount"),
            tamper_tp("tamper:open_tree", names::PROG_TP_OPEN_TREE, "sys_enter_open_tree"),
            tamper_tp("tamper:fsmount", names::PROG_TP_FSMOUNT, "sys_enter_fsmount"),
        ],
        fallback_scope: "mount, move_mount, open_tree and fsmount kill the caller at syscall entry; the mount(2) \
                         that killed it has taken effect",
    },
    Protection {
        name: "compat-syscalls",
        lsm: &[],
        lsm_scope: "BPF LSM hooks judge 32-bit syscalls like any other",
        fallback: &[tamper_raw_tp("tamper:compat", names::PROG_RAW_COMPAT, "sys_enter")],
        fallback_scope: "under an enforcing policy, a 32-bit syscall (int 0x80, or a 32-bit program), which no \
                         syscall tracepoint sees, kills the caller at entry",
    },
    Protection {
        name: "unjudged-opens",
        lsm: &[],
        lsm_scope: "BPF LSM file_open judges opens made through io_uring and open_by_handle_at",
        fallback: &[
            tamper_tp("tamper:io_uring_setup", names::PROG_TP_IO_URING_SETUP, "sys_enter_io_uring_setup"),
            tamper_tp("tamper:io_uring_enter", names::PROG_TP_IO_URING_ENTER, "sys_enter_io_uring_enter"),
            tamper_tp("tamper:open_by_handle_at", names::PROG_TP_OPEN_BY_HANDLE_AT, "sys_enter_open_by_handle_at"),
        ],
        fallback_scope: "under an enforcing policy, io_uring_setup/io_uring_enter and open_by_handle_at kill the \
                         caller at syscall entry (their opens pass no open tracepoint)",
    },
];

impl Hook {
    /// The LSM hook name of an [`Attach::Lsm`] hook, else "".
    pub const fn lsm_name(&self) -> &'static str {
        match self.attach {
            Attach::Lsm { name } => name,
            _ => "",
        }
    }
}
