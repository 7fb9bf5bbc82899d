//! Decoding raw ring-buffer records into [`Body`] and [`Process`]. Pure: no
//! kernel, no clock, no trajectory state, so it is unit-tested and fuzzed
//! directly.

use std::net::{Ipv4Addr, Ipv6Addr};

use monitor_common::{
    event::{
        decision, flags, mechanism, redirect, ConnectEvent, ConnectOp, EventHeader, EventKind, ExecEvent, LimitEvent,
        OpenEvent, OpenSyscall, AT_FDCWD, LIMIT_OOM_KILL,
    },
    policy::action,
    tamper::{TamperEvent, TamperOp},
};

use super::process::ExecId;
use crate::{
    record::{Body, Bytes, Process},
    vocab::Mechanism,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its header")]
    Short { len: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("{kind:?} record of {len} bytes, expected {expected}")]
    Size { kind: EventKind, len: usize, expected: usize },
    #[error("field {field} has invalid value {value}")]
    Field { field: &'static str, value: u32 },
}

/// A decoded kernel record.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub ts_boot_ns: u64,
    pub trajectory_cgroup: u64,
    /// The trajectory's step id when the kernel took the record (0: none).
    pub step: u32,
    pub process: Process,
    pub body: Body,
    pub verdict: RawVerdict,
}

/// The kernel's decision on the operation, before the daemon names the
/// policy instance and rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawVerdict {
    /// Policy instance id; meaningless when `decision` is `None`.
    pub policy: u32,
    pub rule_id: u32,
    /// The rule's action (`allow`, `audit`, `deny`).
    pub action: Option<&'static str>,
    /// `allow`, `audit`, `deny`; `None` when no policy judged.
    pub decision: Option<&'static str>,
    /// How a denial was carried out.
    pub mechanism: Option<Mechanism>,
}

/// Actions and decisions share one encoding: 0 none, then allow, audit, deny.
fn verdict_word(field: &'static str, v: u8) -> Result<Option<&'static str>, DecodeError> {
    const _: () = assert!(decision::ALLOW == action::ALLOW && decision::AUDIT == action::AUDIT);
    const _: () = assert!(decision::DENY == action::DENY && decision::NONE == 0);
    match v {
        decision::NONE => Ok(None),
        decision::ALLOW => Ok(Some("allow")),
        decision::AUDIT => Ok(Some("audit")),
        decision::DENY => Ok(Some("deny")),
        other => Err(DecodeError::Field { field, value: other.into() }),
    }
}

fn verdict(h: &EventHeader) -> Result<RawVerdict, DecodeError> {
    let decision = verdict_word("decision", h.decision)?;
    let action = verdict_word("action", h.action)?;
    let mechanism = match h.mechanism {
        mechanism::NONE => None,
        mechanism::LSM => Some(Mechanism::LsmDeny),
        mechanism::KILL => Some(Mechanism::Kill),
        mechanism::CGROUP => Some(Mechanism::CgroupDeny),
        other => return Err(DecodeError::Field { field: "mechanism", value: other.into() }),
    };
    Ok(RawVerdict { policy: h.policy, rule_id: h.rule_id, action, decision, mechanism })
}

impl PartialEq for Process {
    fn eq(&self, o: &Self) -> bool {
        (self.pid, self.tid, self.ppid, self.uid, self.gid, &self.comm, self.exec_id, self.parent_exec_id)
            == (o.pid, o.tid, o.ppid, o.uid, o.gid, &o.comm, o.exec_id, o.parent_exec_id)
    }
}

pub fn decode(buf: &[u8]) -> Result<Decoded, DecodeError> {
    let header: EventHeader = read(buf).ok_or(DecodeError::Short { len: buf.len() })?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let body = match kind {
        EventKind::Exec => exec(&sized::<ExecEvent>(buf, kind)?),
        EventKind::Open => open(&sized::<OpenEvent>(buf, kind)?)?,
        EventKind::Connect => connect(&sized::<ConnectEvent>(buf, kind)?)?,
        EventKind::Tamper => tamper(&sized::<TamperEvent>(buf, kind)?)?,
        EventKind::Limit => limit(&sized::<LimitEvent>(buf, kind)?)?,
    };
    Ok(Decoded {
        ts_boot_ns: header.ts_boot_ns,
        trajectory_cgroup: header.trajectory_cgroup,
        step: header.step,
        process: process(&header),
        body,
        verdict: verdict(&header)?,
    })
}

/// The process a record header names.
pub fn process(header: &EventHeader) -> Process {
    Process {
        pid: Some(header.pid),
        tid: Some(header.tid),
        ppid: Some(header.ppid),
        uid: Some(header.uid),
        gid: Some(header.gid),
        comm: Some(Bytes::from(until_nul(&header.comm))),
        exec_id: ExecId::from_start_ns(header.pid, header.start_ns),
        parent_exec_id: ExecId::from_start_ns(header.ppid, header.parent_start_ns),
    }
}

fn read<T: Copy>(buf: &[u8]) -> Option<T> {
    (buf.len() >= size_of::<T>())
        // SAFETY: length checked; `T` is a `#[repr(C)]` plain-data ABI type
        // valid for any bit pattern, read unaligned.
        .then(|| unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

fn sized<T: Copy>(buf: &[u8], kind: EventKind) -> Result<T, DecodeError> {
    // The ring buffer rounds records up to 8 bytes; anything shorter than
    // the struct is corrupt.
    read(buf).ok_or(DecodeError::Size { kind, len: buf.len(), expected: size_of::<T>() })
}

fn until_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |n| &b[..n])
}

fn prefix(b: &[u8], len: u32) -> &[u8] {
    &b[..(len as usize).min(b.len())]
}

fn exec(e: &ExecEvent) -> Body {
    let args = prefix(&e.args, e.args_len);
    // The argument block is NUL-terminated strings back to back.
    let args = args.strip_suffix(&[0]).unwrap_or(args);
    let argv = if args.is_empty() { Vec::new() } else { args.split(|&c| c == 0).map(Bytes::from).collect() };
    Body::Exec {
        filename: Bytes::from(prefix(&e.filename, e.filename_len)),
        path: resolved(e.header.flags, &e.path, e.path_len),
        argv,
        filename_truncated: e.header.flags & flags::PATH_TRUNCATED != 0,
        argv_truncated: e.header.flags & flags::ARGS_TRUNCATED != 0,
        mapping: e.header.flags & flags::EXEC_MAPPING != 0,
    }
}

/// The kernel-resolved path, when the record has one.
fn resolved(header_flags: u32, path: &[u8], len: u32) -> Option<Bytes> {
    (header_flags & flags::PATH_RESOLVED != 0).then(|| Bytes::from(prefix(path, len)))
}

fn open(e: &OpenEvent) -> Result<Body, DecodeError> {
    let syscall = match OpenSyscall::from_u32(e.syscall) {
        Some(OpenSyscall::Openat) => "openat",
        Some(OpenSyscall::Openat2) => "openat2",
        Some(OpenSyscall::Open) => "open",
        Some(OpenSyscall::Creat) => "creat",
        Some(OpenSyscall::Lsm) => "lsm",
        Some(OpenSyscall::Link) => "link",
        Some(OpenSyscall::Rename) => "rename",
        Some(OpenSyscall::Unlink) => "unlink",
        Some(OpenSyscall::Rmdir) => "rmdir",
        Some(OpenSyscall::Mkdir) => "mkdir",
        Some(OpenSyscall::Mknod) => "mknod",
        Some(OpenSyscall::Symlink) => "symlink",
        Some(OpenSyscall::Truncate) => "truncate",
        Some(OpenSyscall::Chmod) => "chmod",
        Some(OpenSyscall::Chown) => "chown",
        Some(OpenSyscall::LinkTo) => "link_to",
        Some(OpenSyscall::RenameTo) => "rename_to",
        None => return Err(DecodeError::Field { field: "syscall", value: e.syscall }),
    };
    // LSM records carry no request; the calls that change a file share
    // their codes between the LSM hooks (no request) and the tracepoints
    // that record Landlock's refusals (a request).
    let lsm = e.syscall >= OpenSyscall::Lsm as u32 && e.requested_len == 0;
    Ok(Body::Open {
        syscall,
        path: resolved(e.header.flags, &e.path, e.path_len),
        requested: (!lsm && e.header.flags & flags::READ_FAILED == 0)
            .then(|| Bytes::from(prefix(&e.requested, e.requested_len))),
        dfd: (e.dfd != AT_FDCWD).then_some(e.dfd),
        base: (e.header.flags & flags::BASE_DIR != 0).then(|| Bytes::from(prefix(&e.path, e.path_len))),
        flags: e.flags,
        access: access_mode(e.flags),
        mode: e.mode,
        result: e.ret,
        path_truncated: e.header.flags & flags::PATH_TRUNCATED != 0,
        path_unresolved: e.header.flags & flags::PATH_UNRESOLVED != 0,
        by_inode: e.header.flags & flags::BY_INODE != 0,
    })
}

/// The access mode in open flags (`O_ACCMODE`).
pub fn access_mode(flags: u32) -> &'static str {
    match flags & 0o3 {
        0 => "read",
        1 => "write",
        _ => "read_write",
    }
}

fn connect(e: &ConnectEvent) -> Result<Body, DecodeError> {
    let op = match ConnectOp::from_u32(e.op) {
        Some(ConnectOp::Connect) => "connect",
        Some(ConnectOp::Sendmsg) => "sendmsg",
        None => return Err(DecodeError::Field { field: "op", value: e.op }),
    };
    let (family, addr) = match e.family {
        2 => ("inet", Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]).to_string()),
        10 => ("inet6", Ipv6Addr::from(e.addr).to_string()),
        other => return Err(DecodeError::Field { field: "family", value: other }),
    };
    let protocol = match e.protocol {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        n => n.to_string(),
    };
    let redirect = match e.redirect {
        redirect::NONE => None,
        redirect::DNS => Some("dns"),
        redirect::DNS_REFUSED => Some("dns_refused"),
        other => return Err(DecodeError::Field { field: "redirect", value: other.into() }),
    };
    Ok(Body::Connect { op, family, addr, port: e.port, protocol, redirect, domain: None, domain_id: e.domain })
}

fn limit(e: &LimitEvent) -> Result<Body, DecodeError> {
    match e.limit {
        LIMIT_OOM_KILL => {
            Ok(Body::Limit { limit: "memory", event: "oom_kill", victim_pid: Some(e.victim_pid), count: None })
        }
        other => Err(DecodeError::Field { field: "limit", value: other }),
    }
}

fn tamper(e: &TamperEvent) -> Result<Body, DecodeError> {
    let op = TamperOp::from_u32(e.op).ok_or(DecodeError::Field { field: "op", value: e.op })?;
    Ok(Body::Tamper {
        op: op.as_str(),
        target_pid: (e.target_pid != 0).then_some(e.target_pid),
        arg: e.arg,
        request: None,
        target_trajectory: None,
    })
}

#[cfg(test)]
mod tests {
    use monitor_common::event::{ARGS_LEN, FILENAME_LEN, PATH_LEN};

    use super::*;

    fn header(kind: EventKind) -> EventHeader {
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"cat");
        EventHeader {
            kind: kind as u32,
            flags: 0,
            ts_boot_ns: 42,
            trajectory_cgroup: 7,
            pid: 10,
            tid: 11,
            ppid: 9,
            uid: 1000,
            gid: 1000,
            policy: 3,
            rule_id: 5,
            action: 3,
            decision: 3,
            mechanism: 2,
            _pad: 0,
            comm,
            start_ns: 1_500_000_000,
            parent_start_ns: 20_000_000,
            step: 4,
            _pad2: 0,
        }
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-data value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_exec_with_argv() {
        let mut e = ExecEvent {
            header: header(EventKind::Exec),
            filename_len: 8,
            args_len: 0,
            filename: [0; FILENAME_LEN],
            args: [0; ARGS_LEN],
            path_len: 12,
            _pad: 0,
            path: [0; PATH_LEN],
        };
        e.filename[..8].copy_from_slice(b"/bin/cat");
        e.path[..12].copy_from_slice(b"/usr/bin/cat");
        e.header.flags = flags::PATH_RESOLVED;
        let args = b"cat\0/etc/hostname\0";
        e.args[..args.len()].copy_from_slice(args);
        e.args_len = args.len() as u32;
        let d = decode(&bytes_of(&e)).unwrap();
        assert_eq!(d.trajectory_cgroup, 7);
        assert_eq!(d.process.comm, Some(Bytes::from("cat")));
        assert_eq!(d.process.exec_id, Some(ExecId { start_ticks: 150, pid: 10 }));
        assert_eq!(d.process.parent_exec_id, Some(ExecId { start_ticks: 2, pid: 9 }));
        assert_eq!(d.step, 4);
        assert_eq!(
            d.verdict,
            RawVerdict {
                policy: 3,
                rule_id: 5,
                action: Some("deny"),
                decision: Some("deny"),
                mechanism: Some(Mechanism::Kill)
            }
        );
        assert_eq!(
            d.body,
            Body::Exec {
                filename: Bytes::from("/bin/cat"),
                path: Some(Bytes::from("/usr/bin/cat")),
                argv: vec![Bytes::from("cat"), Bytes::from("/etc/hostname")],
                filename_truncated: false,
                argv_truncated: false,
                mapping: false,
            }
        );
    }

    #[test]
    fn decodes_open() {
        let mut e = OpenEvent {
            header: header(EventKind::Open),
            syscall: OpenSyscall::Openat as u32,
            dfd: AT_FDCWD,
            flags: 0o1101,
            mode: 0o644,
            ret: 3,
            path_len: 4,
            requested_len: 3,
            _pad: 0,
            path: [0; PATH_LEN],
            requested: [0; PATH_LEN],
        };
        e.path[..4].copy_from_slice(b"/tmp");
        e.requested[..3].copy_from_slice(b"tmp");
        e.header.flags = flags::PATH_TRUNCATED | flags::PATH_RESOLVED;
        let d = decode(&bytes_of(&e)).unwrap();
        let Body::Open { path, requested, dfd, access, path_truncated, result, .. } = d.body else { panic!() };
        assert_eq!(
            (path, requested, dfd, access, path_truncated, result),
            (Some(Bytes::from("/tmp")), Some(Bytes::from("tmp")), None, "write", true, 3)
        );
        // Without PATH_RESOLVED there is no resolved path (a failed open).
        e.header.flags = 0;
        let Body::Open { path, .. } = decode(&bytes_of(&e)).unwrap().body else { panic!() };
        assert_eq!(path, None);
    }

    fn connect_event() -> ConnectEvent {
        ConnectEvent {
            header: header(EventKind::Connect),
            op: ConnectOp::Connect as u32,
            family: 2,
            protocol: 6,
            sock_type: 1,
            port: 9,
            redirect: 0,
            _pad: 0,
            domain: 0,
            addr: [0; 16],
        }
    }

    #[test]
    fn decodes_connect_v4_and_mapped_v6() {
        let mut e = connect_event();
        e.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let Body::Connect { addr, port, protocol, family, .. } = decode(&bytes_of(&e)).unwrap().body else { panic!() };
        assert_eq!((addr.as_str(), port, protocol.as_str(), family), ("127.0.0.1", 9, "tcp", "inet"));

        e.family = 10;
        e.protocol = 17;
        e.addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001).octets();
        let Body::Connect { addr, protocol, .. } = decode(&bytes_of(&e)).unwrap().body else { panic!() };
        assert_eq!((addr.as_str(), protocol.as_str()), ("::ffff:10.0.0.1", "udp"));
    }

    #[test]
    fn rejects_corrupt_records() {
        assert_eq!(decode(&[0; 8]), Err(DecodeError::Short { len: 8 }));
        let mut h = bytes_of(&header(EventKind::Exec));
        assert!(matches!(decode(&h), Err(DecodeError::Size { .. })));
        h[0] = 99;
        assert_eq!(decode(&h), Err(DecodeError::UnknownKind(99)));
        let mut c = connect_event();
        c.header.decision = 9;
        assert_eq!(decode(&bytes_of(&c)), Err(DecodeError::Field { field: "decision", value: 9 }));
    }

    #[test]
    fn decodes_tamper_records() {
        let mut e =
            TamperEvent { header: header(EventKind::Tamper), op: TamperOp::Ptrace as u32, target_pid: 77, arg: 2 };
        let d = decode(&bytes_of(&e)).unwrap();
        let tamper = |op, target_pid| Body::Tamper { op, target_pid, arg: 2, request: None, target_trajectory: None };
        assert_eq!(d.body, tamper("ptrace", Some(77)));
        e.op = TamperOp::Bpf as u32;
        e.target_pid = 0;
        assert_eq!(decode(&bytes_of(&e)).unwrap().body, tamper("bpf", None));
        e.op = 0;
        assert_eq!(decode(&bytes_of(&e)), Err(DecodeError::Field { field: "op", value: 0 }));
    }
}
