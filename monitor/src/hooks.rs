//! The one place that says which kernel hook observes what.
//!
//! Every program the daemon loads is listed in [`HOOKS`] with how it attaches.
//! Switching the open/exec observation from syscall tracepoints to BPF LSM
//! hooks (on kernels where BPF LSM runs) is a change to this table and to
//! the programs it names, nothing else.

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

pub const HOOKS: &[Hook] = &[
    Hook {
        name: "exec",
        class: HookClass::Exec,
        program: names::PROG_SCHED_PROCESS_EXEC,
        attach: Attach::Tracepoint { category: "sched", name: "sched_process_exec" },
        optional: false,
    },
    syscall("open:openat", HookClass::Open, names::PROG_SYS_ENTER_OPENAT, "sys_enter_openat", false),
    syscall("open:openat2", HookClass::Open, names::PROG_SYS_ENTER_OPENAT2, "sys_enter_openat2", true),
    syscall("open:open", HookClass::Open, names::PROG_SYS_ENTER_OPEN, "sys_enter_open", true),
    syscall("open:creat", HookClass::Open, names::PROG_SYS_ENTER_CREAT, "sys_enter_creat", true),
    sock("connect:connect4", names::PROG_CONNECT4),
    sock("connect:connect6", names::PROG_CONNECT6),
    sock("connect:sendmsg4", names::PROG_SENDMSG4),
    sock("connect:sendmsg6", names::PROG_SENDMSG6),
];
