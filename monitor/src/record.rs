//! The JSON Lines record model: one [`Record`] per line, documented field by
//! field in `docs/events.md`.
//!
//! Paths and argv are bytes on Linux. [`Bytes`] serialises them losslessly:
//! a JSON string when they are valid UTF-8 (the common case), otherwise an
//! object `{"base64": "..."}` holding the standard base64 of the raw bytes.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use serde::{Serialize, Serializer};

pub use crate::identity::ExecId;
use crate::vocab::{EndReason, GapReason, Mechanism, Origin};

/// Bumped on any incompatible change to the record format.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub v: u32,
    pub ts: Timestamp,
    pub trajectory: Arc<str>,
    /// Per trajectory, from 1, without gaps.
    pub seq: u64,
    #[serde(flatten)]
    pub body: Body,
    #[serde(flatten)]
    pub process: Process,
    /// Present on exec, open and connect records.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// The trajectory's step when the record was taken; `null` before the
    /// first `step` call.
    pub step: Option<Step>,
}

/// A step of a trajectory: one tool call of the agent, as its harness named
/// it (`agent-monitor step`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub id: u32,
    pub name: Arc<str>,
}

/// The policy's decision on an exec, open or connect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `allow`, `audit` (allowed and recorded as a policy hit) or `deny`
    /// (blocked); `null` when no policy judged the operation.
    pub decision: Option<&'static str>,
    /// The deciding rule's action; differs from `decision` in audit mode
    /// (`action: deny`, `decision: audit`).
    pub action: Option<&'static str>,
    pub policy: Option<Arc<str>>,
    /// `file:line` of the deciding rule, or `default`.
    pub rule: Option<Arc<str>>,
    /// How a denial was carried out: `lsm-deny`, `kill`, `cgroup-deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<Mechanism>,
}

/// The process a record is about; all fields are `null` for records no
/// process caused (`trajectory_end`, `gap`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Process {
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub ppid: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub comm: Option<Bytes>,
    /// The process's identity, unique for the host across pid reuse.
    pub exec_id: Option<ExecId>,
    /// `exec_id` of its parent: with it a consumer rebuilds the tree.
    pub parent_exec_id: Option<ExecId>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An address of a DNS answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsAddress {
    /// The record's owner: the question's name or the chain's last name.
    pub name: String,
    pub addr: String,
    pub ttl: u32,
}

/// An address the resolver removed from an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnsDropped {
    pub name: String,
    pub addr: String,
    /// `dns_rebinding` or `off_chain`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Exec {
        /// The filename the kernel executed, as the caller named it.
        filename: Bytes,
        /// The executable's path resolved from the kernel's dentries: what
        /// the policy judged. `null` when it could not be resolved.
        path: Option<Bytes>,
        argv: Vec<Bytes>,
        #[serde(skip_serializing_if = "is_false")]
        filename_truncated: bool,
        #[serde(skip_serializing_if = "is_false")]
        argv_truncated: bool,
        /// An executable mapping (`mmap`/`mprotect` with `PROT_EXEC`) of
        /// the file, judged by the exec rules, not an `execve`.
        #[serde(skip_serializing_if = "is_false")]
        mapping: bool,
    },
    Open {
        /// `openat`, `openat2`, `open`, `creat`, or `lsm` (BPF LSM
        /// `file_open`, whatever the syscall).
        syscall: &'static str,
        /// The opened file's path resolved from the kernel's dentries: what
        /// the policy judged. `null` when nothing was opened.
        path: Option<Bytes>,
        /// The path as the process passed it (syscall tracepoints); relative
        /// paths resolve against `dfd`. Absent from `lsm` records.
        #[serde(skip_serializing_if = "Option::is_none")]
        requested: Option<Bytes>,
        /// Directory fd of a relative path; absent for the cwd (`AT_FDCWD`).
        #[serde(skip_serializing_if = "Option::is_none")]
        dfd: Option<i32>,
        /// A failed open of a relative path: the directory it resolved
        /// against (`dfd`'s, or the working directory), from the kernel.
        #[serde(skip_serializing_if = "Option::is_none")]
        base: Option<Bytes>,
        flags: u32,
        /// `read`, `write` or `read_write`, from the access mode in `flags`.
        access: &'static str,
        mode: u32,
        /// The syscall's result: a descriptor or `-errno`; from `lsm`, 0 or
        /// `-1` (`-EPERM`) when refused.
        result: i32,
        #[serde(skip_serializing_if = "is_false")]
        path_truncated: bool,
        /// The file's path was deeper than the kernel walk's bound.
        #[serde(skip_serializing_if = "is_false")]
        path_unresolved: bool,
        /// The file's identity decided, not `path`: a read-deny rule names
        /// the same inode under another path (a hard link, or a rename).
        #[serde(skip_serializing_if = "is_false")]
        by_inode: bool,
    },
    Connect {
        /// `connect`, or `sendmsg` for a datagram sent to an explicit address.
        op: &'static str,
        /// `inet` or `inet6`.
        family: &'static str,
        addr: String,
        port: u16,
        /// `tcp`, `udp`, or the protocol number.
        protocol: String,
        /// `dns`: a DNS packet sent to the daemon's resolver instead of
        /// `addr` (the `dns` record that follows says what it answered);
        /// `dns_refused`: DNS that could not be sent there (an already
        /// bound socket, an IPv6 nameserver), refused under an enforcing
        /// policy. Absent for every other connect.
        #[serde(skip_serializing_if = "Option::is_none")]
        redirect: Option<&'static str>,
        /// The name the agent resolved whose answer held `addr`: the
        /// address was learned from the trajectory's own DNS answer for a
        /// name a `domain` rule allows, and that name's rules judged the
        /// connect (allowed, or denied on a port they do not allow).
        /// Absent otherwise.
        #[serde(skip_serializing_if = "Option::is_none")]
        domain: Option<Arc<str>>,
        /// The daemon's id of `domain`, as the kernel recorded it.
        #[serde(skip)]
        domain_id: u32,
    },
    /// A DNS question of the agent, answered by the daemon's resolver
    /// (`docs/policy.md`, "Domain rules").
    Dns {
        /// The question's name, lowercase, without the trailing dot.
        name: String,
        /// `A`, `AAAA`, `TXT`, ..., or `TYPE<n>`.
        qtype: String,
        /// `udp` or `tcp`.
        transport: &'static str,
        /// The nameserver the agent addressed, `addr:port`.
        server: String,
        /// The answer's code: `NOERROR`, `NXDOMAIN`, `SERVFAIL`, or, for a
        /// name the policy denies, `REFUSED` (or `NXDOMAIN` where the
        /// daemon is configured so) without asking upstream.
        rcode: String,
        /// Addresses given to the agent; for an allowed name each is
        /// learned for the TTL plus the grace.
        answers: Vec<DnsAddress>,
        /// The CNAME chain followed from `name`, in order.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        cnames: Vec<String>,
        /// Addresses removed from the answer: `dns_rebinding` (into an
        /// internal range the rule does not allow), `off_chain` (a record
        /// for a name not on the chain).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        dropped: Vec<DnsDropped>,
        /// Seconds each learned address stays allowed (TTL plus grace,
        /// clamped); absent when nothing was learned.
        #[serde(skip_serializing_if = "Option::is_none")]
        learned_for_s: Option<u64>,
        /// Time spent waiting for the upstream server, in microseconds;
        /// absent when it was not asked.
        #[serde(skip_serializing_if = "Option::is_none")]
        upstream_us: Option<u64>,
    },
    /// A refused tamper attempt (built-in protection, `docs/security.md`).
    Tamper {
        /// What was attempted: `bpf`, `ptrace`, `process_vm`, `pidfd_open`,
        /// `clone_into_cgroup`, `cgroup_mkdir`, `cgroup_rmdir`, `io_uring`,
        /// `open_by_handle_at`, `mount`, `signal`, `socket`, `clone_escape`,
        /// or `control` (a control socket request, refused by the daemon).
        op: &'static str,
        /// The target process of a ptrace-style access or a signal.
        #[serde(skip_serializing_if = "Option::is_none")]
        target_pid: Option<u32>,
        /// Per op: the bpf command, the ptrace request or access mode, the
        /// clone or mount flags, the signal number; 0 for `control`.
        arg: u64,
        /// `control`: the refused request's `op` (`open_trajectory`,
        /// `status`, `events`, `step`). Absent from kernel records.
        #[serde(skip_serializing_if = "Option::is_none")]
        request: Option<&'static str>,
        /// `control`: the trajectory the request named, when it named a
        /// valid trajectory id. Absent otherwise.
        #[serde(skip_serializing_if = "Option::is_none")]
        target_trajectory: Option<String>,
    },
    /// A limit of the policy's `limits:` held (`docs/events.md`).
    Limit {
        /// `memory` or `pids`.
        limit: &'static str,
        /// `oom_kill`: the kernel's OOM killer killed a process at the
        /// memory limit; `max`: forks were refused at the pids limit.
        event: &'static str,
        /// `oom_kill`: the process killed (its thread-group id). The
        /// record's process is the one whose allocation hit the limit, most
        /// often the same.
        #[serde(skip_serializing_if = "Option::is_none")]
        victim_pid: Option<u32>,
        /// `max`: forks refused since the trajectory's previous `max`
        /// record (at most one a second).
        #[serde(skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
    },
    TrajectoryStart {
        cgroup: String,
        command: Vec<Bytes>,
        /// The policy judging the trajectory.
        policy: String,
        /// `run` (opened by `agent-monitor run`) or `adopt` (an existing
        /// cgroup matching a configured pattern).
        origin: Origin,
        /// The uid, gid, groups, capabilities and `no_new_privs` the
        /// command starts with, as `run` set them up. Absent for adopted
        /// cgroups.
        #[serde(skip_serializing_if = "Option::is_none")]
        agent: Option<crate::account::AgentIdentity>,
        /// The policy's variables for this trajectory (`WORKSPACE`,
        /// `HOME`): with them a replay expands the rules as the kernel
        /// entries were.
        #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        vars: std::collections::BTreeMap<String, String>,
    },
    TrajectoryEnd {
        /// `exited` (the cgroup emptied), `cgroup_removed` (an adopted
        /// cgroup was deleted), `start_failed` or `daemon_shutdown`.
        reason: EndReason,
        duration_ns: u64,
        /// Records of this trajectory, this one excluded.
        records: u64,
        /// Records the kernel could not deliver (also reported by `gap`).
        lost: u64,
        summary: Box<Summary>,
    },
    Gap {
        /// Kernel records of this trajectory that were lost since the last
        /// gap record.
        lost: u64,
        /// `ringbuf_full`, or `daemon_restart`: the record opening a
        /// restarted daemon's part of the stream.
        reason: GapReason,
        /// `daemon_restart`: how long no daemon was reading, in ns (from
        /// the previous daemon's last state write to the restart).
        #[serde(skip_serializing_if = "Option::is_none")]
        down_ns: Option<u64>,
        /// `daemon_restart`: records the previous daemon had numbered and
        /// not written when it died (the `seq` numbers this gap skips);
        /// absent where that cannot be known (stdout output, no mark).
        #[serde(skip_serializing_if = "Option::is_none")]
        unwritten: Option<u64>,
    },
    /// The harness started a new step (tool call); records after this one
    /// carry it in `step`.
    Step {},
    /// A process already running in a cgroup when it was adopted, read from
    /// `/proc` once (`source: procfs`); later activity comes from the kernel.
    Process {
        source: &'static str,
        /// `/proc/<pid>/exe`.
        exe: Option<Bytes>,
        argv: Vec<Bytes>,
    },
}

/// What a trajectory did, in its `trajectory_end` record.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Records per kind, then per decision (`allow`, `audit`, `deny`, or
    /// `none` where no policy judged).
    pub counts: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Distinct processes seen (`exec_id`s).
    pub processes: u64,
    /// Distinct executables run (resolved paths), sorted.
    pub executables: Vec<Bytes>,
    /// Distinct files opened for writing (or created or truncated), sorted.
    pub files_written: Vec<Bytes>,
    /// Distinct remote endpoints contacted, `addr:port/protocol` (IPv6 in
    /// brackets), sorted.
    pub endpoints: Vec<String>,
    /// Distinct names the trajectory's DNS questions resolved (allowed or
    /// audited), sorted.
    pub domains_resolved: Vec<String>,
    /// Distinct names the policy refused to resolve, sorted.
    pub domains_denied: Vec<String>,
    /// A list above reached its bound (`SUMMARY_LIMIT` entries) and is
    /// incomplete.
    #[serde(skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// What the policy's `limits` did: OOM kills, forks refused, CPU
    /// throttling (absent without limits).
    #[serde(skip_serializing_if = "crate::limits::Counters::is_empty")]
    pub limits: crate::limits::Counters,
}

impl Body {
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Exec { .. } => "exec",
            Body::Open { .. } => "open",
            Body::Connect { .. } => "connect",
            Body::Dns { .. } => "dns",
            Body::Tamper { .. } => "tamper",
            Body::Limit { .. } => "limit",
            Body::TrajectoryStart { .. } => "trajectory_start",
            Body::TrajectoryEnd { .. } => "trajectory_end",
            Body::Gap { .. } => "gap",
            Body::Step { .. } => "step",
            Body::Process { .. } => "process",
        }
    }
}

/// Wall-clock time in ns since the Unix epoch, serialised as RFC 3339 with
/// nanoseconds in UTC (`2026-11-27T12:00:00.123456789Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub u64);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(self.0);
        s.collect_str(&humantime::format_rfc3339_nanos(t))
    }
}

/// Bytes from the kernel: a string when valid UTF-8, else `{"base64": ..}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl From<&[u8]> for Bytes {
    fn from(b: &[u8]) -> Self {
        Bytes(b.to_vec())
    }
}

impl From<&str> for Bytes {
    fn from(s: &str) -> Self {
        Bytes(s.as_bytes().to_vec())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("base64", &base64::engine::general_purpose::STANDARD.encode(&self.0))?;
                m.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_lossless() {
        assert_eq!(serde_json::to_string(&Bytes::from("/etc/hostname")).unwrap(), r#""/etc/hostname""#);
        let raw = Bytes(vec![b'/', b't', 0xff, b'\n']);
        assert_eq!(serde_json::to_string(&raw).unwrap(), r#"{"base64":"L3T/Cg=="}"#);
    }

    #[test]
    fn timestamp_has_nanoseconds() {
        let ts = Timestamp(1_700_000_000_123_456_789);
        assert_eq!(serde_json::to_string(&ts).unwrap(), r#""2023-11-14T22:13:20.123456789Z""#);
    }

    #[test]
    fn record_layout() {
        let r = Record {
            v: SCHEMA_VERSION,
            ts: Timestamp(0),
            trajectory: "t1".into(),
            seq: 3,
            body: Body::Gap { lost: 7, reason: GapReason::RingbufFull, down_ns: None, unwritten: None },
            process: Process::default(),
            verdict: None,
            step: None,
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "gap");
        assert_eq!(v["lost"], 7);
        assert_eq!(v["seq"], 3);
        assert!(v["pid"].is_null());
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000000000Z");
        assert!(v.get("decision").is_none(), "no verdict fields on a gap: {v}");

        let r = Record {
            verdict: Some(Verdict {
                decision: Some("deny"),
                action: Some("deny"),
                policy: Some("default".into()),
                rule: Some("policies/default.yaml:12".into()),
                mechanism: Some(Mechanism::Kill),
            }),
            ..r
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!((v["decision"].as_str(), v["rule"].as_str()), (Some("deny"), Some("policies/default.yaml:12")));
        assert_eq!(v["mechanism"], "kill");
    }
}
