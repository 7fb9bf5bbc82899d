//! The one place that says which kernel hook observes and enforces what.
//!
//! Every program the daemon loads is listed here with how it attaches:
//! [`HOOKS`] always, [`LSM_HOOKS`] when the kernel runs BPF LSM programs
//! (probed at startup by loading them and watching them run), and
//! [`OPEN_TRACEPOINTS`] otherwise, as the kill fallback for file rules.

use monitor_common::names;

/// What a hook observes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookClass {
    Exec,
    Open,
    Connect,
}

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A tracepoint under tracefs `events/<category>/<name>`.
    Tracepoint { category: &'static str, name: &'static str },
    /// A cgroup sock_addr hook on the daemon's trajectory parent cgroup.
    CgroupSockAddr,
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
];

/// Open observation and kill enforcement where BPF LSM does not run:
/// entry records the request, exit judges the opened file.
pub const OPEN_TRACEPOINTS: &[Hook] = &[
    syscall("open:openat", HookClass::Open, names::PROG_SYS_ENTER_OPENAT, "sys_enter_openat", false),
    syscall("open:openat2", HookClass::Open, names::PROG_SYS_ENTER_OPENAT2, "sys_enter_openat2", true),
    syscall("open:open", HookClass::Open, names::PROG_SYS_ENTER_OPEN, "sys_enter_open", true),
    syscall("open:creat", HookClass::Open, names::PROG_SYS_ENTER_CREAT, "sys_enter_creat", true),
    syscall("open:openat/exit", HookClass::Open, names::PROG_SYS_EXIT_OPENAT, "sys_exit_openat", false),
    syscall("open:openat2/exit", HookClass::Open, names::PROG_SYS_EXIT_OPENAT2, "sys_exit_openat2", true),
    syscall("open:open/exit", HookClass::Open, names::PROG_SYS_EXIT_OPEN, "sys_exit_open", true),
    syscall("open:creat/exit", HookClass::Open, names::PROG_SYS_EXIT_CREAT, "sys_exit_creat", true),
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
