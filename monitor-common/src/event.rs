//! Ring-buffer records. Each starts with an [`EventHeader`] whose `kind` says
//! which struct follows. Records are fixed-size per kind so the kernel can
//! reserve them in place and write straight into ring-buffer memory.

use crate::assert_size;

pub const COMM_LEN: usize = 16;
/// Bytes kept of a path passed to an open syscall (NUL included).
pub const PATH_LEN: usize = 512;
/// Bytes kept of the filename the kernel executed (NUL included).
pub const FILENAME_LEN: usize = 256;
/// Bytes kept of the NUL-separated argument block of an exec.
pub const ARGS_LEN: usize = 1024;

/// The `kind` tag at the head of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    Open = 2,
    Connect = 3,
    /// A refused tamper attempt (`crate::tamper::TamperEvent`).
    Tamper = 4,
    /// A cgroup limit held ([`LimitEvent`]).
    Limit = 5,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Exec),
            2 => Some(Self::Open),
            3 => Some(Self::Connect),
            4 => Some(Self::Tamper),
            5 => Some(Self::Limit),
            _ => None,
        }
    }
}

/// `EventHeader::flags` bits.
pub mod flags {
    /// The path/filename did not fit and was cut.
    pub const PATH_TRUNCATED: u32 = 1 << 0;
    /// The argument block did not fit and was cut.
    pub const ARGS_TRUNCATED: u32 = 1 << 1;
    /// Reading a user or kernel string failed; the field is empty.
    pub const READ_FAILED: u32 = 1 << 2;
    /// The kernel-resolved path (`path` of an open, `path` of an exec) is
    /// present. Without it the decision was taken on the requested string.
    pub const PATH_RESOLVED: u32 = 1 << 3;
    /// Resolving the path from the kernel's dentries stopped early (deeper
    /// than the walk's bound); `path` holds no usable value.
    pub const PATH_UNRESOLVED: u32 = 1 << 4;
    /// An exec record of an executable mapping (`mmap`/`mprotect` with
    /// `PROT_EXEC`) of the file, not of an `execve`.
    pub const EXEC_MAPPING: u32 = 1 << 5;
    /// An open judged by the file's identity: a read-deny rule names the
    /// same inode under another path (a hard link, a rename).
    pub const BY_INODE: u32 = 1 << 6;
    /// A failed open of a relative path: `path` holds the directory it
    /// resolves against (the working directory, or `dfd`'s), not a file.
    pub const BASE_DIR: u32 = 1 << 7;
}

/// `EventHeader::decision`: what happened to the operation.
pub mod decision {
    /// No policy judged the operation (none bound to the trajectory).
    pub const NONE: u8 = 0;
    /// Allowed by an `allow` rule or default.
    pub const ALLOW: u8 = 1;
    /// Allowed and recorded as a policy hit: an `audit` rule, or a `deny`
    /// verdict under a policy in `audit` mode.
    pub const AUDIT: u8 = 2;
    /// Blocked (see `EventHeader::mechanism`).
    pub const DENY: u8 = 3;
}

/// `EventHeader::mechanism`: how a denial was carried out.
pub mod mechanism {
    pub const NONE: u8 = 0;
    /// A BPF LSM hook returned `-EPERM`: the operation never happened.
    pub const LSM: u8 = 1;
    /// `bpf_send_signal(SIGKILL)` from a tracepoint: the process was killed
    /// before it returned to user space.
    pub const KILL: u8 = 2;
    /// A cgroup socket hook rejected the call with `EPERM`.
    pub const CGROUP: u8 = 3;
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns()`: CLOCK_BOOTTIME.
    pub ts_boot_ns: u64,
    /// The registered trajectory cgroup the task belongs to (itself or an
    /// ancestor of the task's cgroup).
    pub trajectory_cgroup: u64,
    /// Thread-group id (the user-visible pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread-group id of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Policy instance (`TrajectoryValue::policy`) that judged the event.
    pub policy: u32,
    /// Deciding rule ([`crate::policy::RULE_DEFAULT`] for the default).
    pub rule_id: u32,
    /// The verdict's action ([`crate::policy::action`]), 0 without a policy.
    pub action: u8,
    /// One of [`decision`].
    pub decision: u8,
    /// One of [`mechanism`].
    pub mechanism: u8,
    pub _pad: u8,
    pub comm: [u8; COMM_LEN],
    /// `start_boottime` (ns) of the process (its thread-group leader): with
    /// `pid` and the boot id, the process's stable identity (`exec_id`).
    pub start_ns: u64,
    /// `start_boottime` (ns) of the real parent's thread-group leader.
    pub parent_start_ns: u64,
    /// The trajectory's step when the kernel took the record (0: none yet).
    pub step: u32,
    pub _pad2: u32,
}
assert_size!(EventHeader, 96);

/// Bytes at the head of every record whose layout no map layout may change:
/// `kind`, `flags`, `ts_boot_ns`, `trajectory_cgroup`. A daemon taking over
/// from pins of another layout reads them from that layout's ring buffer to
/// count, per trajectory, the records it cannot deliver.
pub const STABLE_PREFIX_LEN: usize = 24;
const _: () = assert!(core::mem::offset_of!(EventHeader, ts_boot_ns) == 8);
const _: () = assert!(core::mem::offset_of!(EventHeader, trajectory_cgroup) == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Bytes of `filename` used, NUL excluded.
    pub filename_len: u32,
    /// Bytes of `args` used.
    pub args_len: u32,
    /// The filename the kernel executed (`bprm->filename`).
    pub filename: [u8; FILENAME_LEN],
    /// argv as the new program sees it: NUL-separated, from the new mm.
    pub args: [u8; ARGS_LEN],
    /// Bytes of `path` used, NUL excluded.
    pub path_len: u32,
    pub _pad: u32,
    /// The executable's path resolved from the kernel's dentries (valid with
    /// `flags::PATH_RESOLVED`): what the policy judged.
    pub path: [u8; PATH_LEN],
}
assert_size!(ExecEvent, 96 + 8 + FILENAME_LEN + ARGS_LEN + 8 + PATH_LEN);

/// Which syscall an [`OpenEvent`] came from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenSyscall {
    Openat = 1,
    Openat2 = 2,
    Open = 3,
    Creat = 4,
    /// The BPF LSM `file_open` hook: any open, whatever the syscall (or
    /// io_uring); `dfd`, `mode` and `requested` are not known there.
    Lsm = 5,
    /// BPF LSM `path_link`: a hard link made to the file (`path`), judged
    /// as a read-write access of it.
    Link = 6,
    /// BPF LSM `path_rename`: the file (`path`) renamed, judged as a
    /// read-write access of it; or the name it is renamed to, judged as a
    /// write (`RenameTo`).
    Rename = 7,
    /// BPF LSM `path_*` hooks of the calls that change a file without
    /// opening it, each judged as a write of the path it changes
    /// (`monitor-ebpf/src/mutate.rs`).
    Unlink = 8,
    Rmdir = 9,
    Mkdir = 10,
    Mknod = 11,
    Symlink = 12,
    Truncate = 13,
    Chmod = 14,
    Chown = 15,
    /// The new name of a hard link, judged as a write.
    LinkTo = 16,
    /// The name a file is renamed to (for `RENAME_EXCHANGE`, the other
    /// file), judged as a write.
    RenameTo = 17,
}

impl OpenSyscall {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Openat),
            2 => Some(Self::Openat2),
            3 => Some(Self::Open),
            4 => Some(Self::Creat),
            5 => Some(Self::Lsm),
            6 => Some(Self::Link),
            7 => Some(Self::Rename),
            8 => Some(Self::Unlink),
            9 => Some(Self::Rmdir),
            10 => Some(Self::Mkdir),
            11 => Some(Self::Mknod),
            12 => Some(Self::Symlink),
            13 => Some(Self::Truncate),
            14 => Some(Self::Chmod),
            15 => Some(Self::Chown),
            16 => Some(Self::LinkTo),
            17 => Some(Self::RenameTo),
            _ => None,
        }
    }
}

/// `AT_FDCWD` as the kernel passes it.
pub const AT_FDCWD: i32 = -100;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenEvent {
    pub header: EventHeader,
    pub syscall: u32,
    /// Directory fd the path is relative to (`AT_FDCWD` for the cwd).
    pub dfd: i32,
    /// Open flags (`O_*`); openat2's 64-bit flags truncated to 32 bits, which
    /// holds every flag the kernel defines.
    pub flags: u32,
    pub mode: u32,
    /// The syscall's result: a file descriptor or `-errno` (0 from LSM,
    /// which runs before the result exists).
    pub ret: i32,
    /// Bytes of `path` used, NUL excluded.
    pub path_len: u32,
    /// Bytes of `requested` used, NUL excluded.
    pub requested_len: u32,
    pub _pad: u32,
    /// The opened file's path resolved from the kernel's dentries (valid
    /// with `flags::PATH_RESOLVED`): what the policy judged.
    pub path: [u8; PATH_LEN],
    /// The path as the process passed it (syscall tracepoints only).
    pub requested: [u8; PATH_LEN],
}
assert_size!(OpenEvent, 96 + 32 + 2 * PATH_LEN);

/// Which cgroup socket hook a [`ConnectEvent`] came from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectOp {
    Connect = 1,
    Sendmsg = 2,
}

impl ConnectOp {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Connect),
            2 => Some(Self::Sendmsg),
            _ => None,
        }
    }
}

/// [`ConnectEvent::redirect`]: what the hook did with a DNS packet.
pub mod redirect {
    /// Not DNS, or no resolver: judged by the policy.
    pub const NONE: u8 = 0;
    /// Sent to the daemon's resolver instead of `addr`.
    pub const DNS: u8 = 1;
    /// DNS the hook could not redirect (a socket already bound, an IPv6
    /// nameserver): refused under an enforcing policy.
    pub const DNS_REFUSED: u8 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    pub header: EventHeader,
    pub op: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
    /// `IPPROTO_*` of the socket.
    pub protocol: u32,
    /// `SOCK_*` type of the socket.
    pub sock_type: u32,
    /// Destination port, host byte order.
    pub port: u16,
    /// One of [`redirect`].
    pub redirect: u8,
    pub _pad: u8,
    /// The daemon's id of the name whose learned address allowed the
    /// connect (`LearnedValue::name`), 0 for none.
    pub domain: u32,
    /// Destination address, network byte order; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
}
assert_size!(ConnectEvent, 96 + 24 + 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in [EventKind::Exec, EventKind::Open, EventKind::Connect] {
            assert_eq!(EventKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(EventKind::from_u32(0), None);
    }
}

/// `LimitEvent::limit`: the kernel's OOM killer chose a victim.
pub const LIMIT_OOM_KILL: u32 = 1;

/// A limit of the trajectory's cgroup held (`EventKind::Limit`). The
/// header is the task whose allocation hit the limit; its decision is
/// `NONE`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LimitEvent {
    pub header: EventHeader,
    /// [`LIMIT_OOM_KILL`].
    pub limit: u32,
    /// The process the kernel kills (thread-group id).
    pub victim_pid: u32,
}
assert_size!(LimitEvent, 96 + 8);
