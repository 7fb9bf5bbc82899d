//! The daemon's closed vocabularies: each word the stream, the metrics or a
//! state file uses for a reason or a kind, as an enum with its one spelling
//! (`as_str`, and serde for those that are written or read). An unknown
//! spelling read back is an error, never a guess.

use serde::{Deserialize, Serialize};

/// Why a trajectory ended: `trajectory_end`'s `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The cgroup has no process left.
    Exited,
    /// The process that opened it could not join it.
    StartFailed,
    /// An adopted cgroup was removed.
    CgroupRemoved,
    /// The daemon stopped and ended enforcement with it.
    DaemonShutdown,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Exited => "exited",
            EndReason::StartFailed => "start_failed",
            EndReason::CgroupRemoved => "cgroup_removed",
            EndReason::DaemonShutdown => "daemon_shutdown",
        }
    }
}

/// How a trajectory came to be: `trajectory_start`'s `origin`, and the
/// state file's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Created for a client of the control socket (`agent-monitor run`);
    /// its cgroup is removed at the end.
    Run,
    /// An existing cgroup that matched a configured pattern; not removed.
    Adopt,
}

impl Origin {
    #[cfg(test)]
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Run => "run",
            Origin::Adopt => "adopt",
        }
    }
}

/// Why part of a stream is missing: a `gap` record's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The kernel found the ring buffer full.
    RingbufFull,
    /// A restarted daemon's part of the stream begins.
    DaemonRestart,
}

/// Why records were lost: the `reason` label of
/// `agent_monitor_events_lost_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// The kernel found the ring buffer full.
    RingbufFull,
    /// A record the daemon could not decode.
    DecodeError,
    /// A record of a cgroup no open trajectory has.
    UnknownTrajectory,
    /// Records a previous map layout held that no daemon can read.
    LayoutChange,
    /// Records a daemon that died had numbered but not written.
    DaemonKilled,
}

impl Lost {
    pub const ALL: [Lost; 5] =
        [Lost::RingbufFull, Lost::DecodeError, Lost::UnknownTrajectory, Lost::LayoutChange, Lost::DaemonKilled];

    pub fn as_str(self) -> &'static str {
        match self {
            Lost::RingbufFull => "ringbuf_full",
            Lost::DecodeError => "decode_error",
            Lost::UnknownTrajectory => "unknown_trajectory",
            Lost::LayoutChange => "layout_change",
            Lost::DaemonKilled => "daemon_killed",
        }
    }
}

impl From<monitor_common::maps::LossReason> for Lost {
    fn from(r: monitor_common::maps::LossReason) -> Self {
        match r {
            monitor_common::maps::LossReason::RingbufFull => Lost::RingbufFull,
        }
    }
}

/// How a hook carries out a deny verdict: a record's `mechanism`, `status`,
/// the logs and the metrics' `mechanism` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// BPF LSM: the operation fails with `EPERM` before it happens.
    LsmDeny,
    /// The Landlock layer `run` applied: the operation fails with `EACCES`
    /// (`EXDEV` for a rename or link between directories) before it
    /// happens; the tracepoints record it.
    LandlockDeny,
    /// Tracepoint + `SIGKILL`: the process dies before it returns to user
    /// space.
    Kill,
    /// cgroup socket hook: the call fails with `EPERM`.
    CgroupDeny,
    /// Records decisions, cannot block.
    AuditOnly,
    /// Records only; another hook of the class enforces.
    Observe,
    Unavailable,
    /// Continuity: programs and maps pinned, the kernel enforces without
    /// the daemon.
    Pinned,
}

impl Mechanism {
    #[cfg(test)]
    pub const ALL: [Mechanism; 8] = [
        Mechanism::LsmDeny,
        Mechanism::LandlockDeny,
        Mechanism::Kill,
        Mechanism::CgroupDeny,
        Mechanism::AuditOnly,
        Mechanism::Observe,
        Mechanism::Unavailable,
        Mechanism::Pinned,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Mechanism::LsmDeny => "lsm-deny",
            Mechanism::LandlockDeny => "landlock-deny",
            Mechanism::Kill => "kill",
            Mechanism::CgroupDeny => "cgroup-deny",
            Mechanism::AuditOnly => "audit-only",
            Mechanism::Observe => "observe",
            Mechanism::Unavailable => "unavailable",
            Mechanism::Pinned => "pinned",
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule classes of a policy, one per kernel hook family: the `class`
/// label of the metrics, and the keys of `status`'s `enforcement`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleClass {
    File,
    Exec,
    Network,
}

impl RuleClass {
    /// In the order policies list them (`rules.file`, `.exec`, `.network`).
    pub const ALL: [RuleClass; 3] = [RuleClass::File, RuleClass::Exec, RuleClass::Network];

    pub const fn as_str(self) -> &'static str {
        match self {
            RuleClass::File => "file",
            RuleClass::Exec => "exec",
            RuleClass::Network => "network",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_unknown_words_are_errors() {
        for o in [Origin::Run, Origin::Adopt] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
            assert_eq!(serde_json::from_value::<Origin>(o.as_str().into()).unwrap(), o);
        }
        assert!(serde_json::from_str::<Origin>("\"runn\"").is_err());
        for r in [EndReason::Exited, EndReason::StartFailed, EndReason::CgroupRemoved, EndReason::DaemonShutdown] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(serde_json::to_value(GapReason::DaemonRestart).unwrap(), "daemon_restart");
        assert_eq!(serde_json::to_value(GapReason::RingbufFull).unwrap(), "ringbuf_full");
        let kernel = monitor_common::maps::LossReason::RingbufFull;
        assert_eq!(Lost::from(kernel).as_str(), kernel.as_str(), "one spelling for the kernel's reasons");
        let spellings: std::collections::HashSet<&str> = Lost::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(spellings.len(), Lost::ALL.len(), "one spelling per reason");
        for m in Mechanism::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.as_str());
            assert_eq!(serde_json::from_value::<Mechanism>(m.as_str().into()).unwrap(), m);
            assert_eq!(m.to_string(), m.as_str());
        }
        assert!(serde_json::from_str::<Mechanism>("\"lsm\"").is_err());
        for c in RuleClass::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            assert_eq!(serde_json::from_value::<RuleClass>(c.as_str().into()).unwrap(), c);
        }
        assert!(serde_json::from_str::<RuleClass>("\"tamper\"").is_err());
    }
}
