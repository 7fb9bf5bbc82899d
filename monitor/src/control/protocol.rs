//! Control socket requests and responses. One JSON object per line each way;
//! documented in `docs/architecture.md`.

use serde::{Deserialize, Serialize};

// Defined where they are made (the policy reloader, the pipeline); part
// of the wire format all the same.
pub use crate::{events::pipeline::TrajectoryStatus, reload::PolicyStatus};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Open a trajectory and move the requesting process into it.
    OpenTrajectory {
        /// Generated when absent.
        #[serde(default)]
        trajectory: Option<String>,
        /// The command about to run, for the `trajectory_start` record.
        #[serde(default)]
        command: Vec<String>,
        /// Policy name; the daemon's default policy when absent.
        #[serde(default)]
        policy: Option<String>,
        /// Policy variables (`WORKSPACE`, `HOME`), absolute paths.
        #[serde(default)]
        vars: std::collections::BTreeMap<String, String>,
        /// Who the command starts as (`run --user` drops to it), for the
        /// `trajectory_start` record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<crate::account::AgentIdentity>,
        /// `run --user` as given: a policy's `session.user` must agree.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// What the daemon enforces and observes, per hook, and what is open.
    Status,
    /// Start a new step of a trajectory. The one request a process inside a
    /// trajectory may make, and only for its own trajectory (then
    /// `trajectory` may be omitted).
    Step {
        #[serde(default)]
        trajectory: Option<String>,
        name: String,
        /// From 1; one more than the trajectory's highest when absent.
        #[serde(default)]
        id: Option<u32>,
    },
    /// Stream records: the answer line is followed by one record per line,
    /// recent ones first, then (with `follow`) live ones until either side
    /// closes. See `docs/events.md`, "Subscriptions".
    Events {
        #[serde(default)]
        trajectory: Option<String>,
        /// Record kinds; every kind when empty.
        #[serde(default)]
        kinds: Vec<String>,
        #[serde(default)]
        follow: bool,
    },
}

/// Answer to [`Request::Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub version: String,
    pub kernel: String,
    pub hooks: Vec<HookStatus>,
    /// The mechanism enforcing each rule class.
    pub enforcement: ClassEnforcement,
    /// The built-in tamper protections and the mechanism of each
    /// (`docs/security.md`).
    #[serde(default)]
    pub protections: Vec<ProtectionStatus>,
    /// The loaded policies.
    pub policies: Vec<PolicyStatus>,
    /// Where policies are loaded from (`null`: the embedded default only).
    pub policy_dir: Option<String>,
    pub trajectories: Vec<TrajectoryStatus>,
    /// The DNS egress resolver (`docs/policy.md`, "Domain rules").
    #[serde(default)]
    pub dns: Option<DnsStatus>,
    /// Where each `limits:` controller is applied, or why it cannot be.
    #[serde(default)]
    pub limits: Vec<crate::limits::ControllerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsStatus {
    /// Where the resolver listens (UDP and TCP), `addr:port`.
    pub listen: String,
    /// Where allowed questions go; `null`: nowhere (answered SERVFAIL).
    pub upstream: Option<String>,
    /// Addresses learned from allowed names, live in the kernel maps.
    pub learned: i64,
    /// `cgroup-redirect`: the cgroup socket hooks send the trajectories'
    /// DNS to the resolver and judge connects by what it learned.
    pub mechanism: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassEnforcement {
    pub file: String,
    pub exec: String,
    pub network: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectionStatus {
    /// `files`, `bpf`, `ptrace`, `cgroup-escape`, `cgroup-mkdir`, `unjudged-opens`.
    pub protection: String,
    /// `lsm-deny`, `kill` or `unavailable`.
    pub mechanism: String,
    /// What is stopped, and on fallback kernels what is not.
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookStatus {
    pub hook: String,
    pub class: String,
    /// `lsm-deny`, `kill`, `cgroup-deny`, `audit-only`, `observe` (records,
    /// another hook enforces) or `unavailable`.
    pub mechanism: String,
    pub detail: String,
}

/// A descriptor sent beside a response line, not in it.
#[derive(Clone, Debug, Default)]
pub struct Attached(pub Option<std::sync::Arc<std::os::fd::OwnedFd>>);

/// Responses compare by their text; the attachment is not part of it.
impl PartialEq for Attached {
    fn eq(&self, _: &Attached) -> bool {
        true
    }
}

impl Eq for Attached {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Opened {
        ok: monostate::True,
        trajectory: String,
        cgroup: String,
        policy: String,
        /// The account the policy's `session.user` names, for a `run`
        /// without `--user` to drop to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// Capabilities the agent keeps (`session.capabilities`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        capabilities: Vec<String>,
        /// The Landlock layer `run` must apply before `exec` (refusing to
        /// start the command if it cannot): its ruleset descriptor is
        /// attached to this line (`SCM_RIGHTS`), built by the daemon, whose
        /// own opens of the granted paths no trajectory records.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        landlock: Option<crate::landlock::Layer>,
        #[serde(skip)]
        ruleset: Attached,
    },
    Status {
        ok: monostate::True,
        status: Box<Status>,
    },
    Stepped {
        ok: monostate::True,
        trajectory: String,
        step: u32,
    },
    /// Records follow, one per line.
    Subscribed {
        ok: monostate::True,
        follow: bool,
    },
    Error {
        ok: monostate::False,
        error: String,
    },
}

/// Tiny stand-ins so `ok` is a literal `true`/`false` in both directions.
pub mod monostate {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct True;
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct False;

    macro_rules! literal {
        ($ty:ident, $v:expr) => {
            impl Serialize for $ty {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_bool($v)
                }
            }
            impl<'de> Deserialize<'de> for $ty {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    if bool::deserialize(d)? == $v {
                        Ok($ty)
                    } else {
                        Err(serde::de::Error::custom(concat!("expected ", stringify!($v))))
                    }
                }
            }
        };
    }
    literal!(True, true);
    literal!(False, false);
}

impl Request {
    /// Its `op` on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Request::OpenTrajectory { .. } => "open_trajectory",
            Request::Status => "status",
            Request::Step { .. } => "step",
            Request::Events { .. } => "events",
        }
    }

    /// The trajectory it names, if any.
    pub fn trajectory(&self) -> Option<&str> {
        match self {
            Request::OpenTrajectory { trajectory, .. }
            | Request::Step { trajectory, .. }
            | Request::Events { trajectory, .. } => trajectory.as_deref(),
            Request::Status => None,
        }
    }
}

impl Response {
    pub fn error(msg: impl Into<String>) -> Self {
        Response::Error { ok: monostate::False, error: msg.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r: Request =
            serde_json::from_str(r#"{"op":"open_trajectory","trajectory":"t1","command":["sh"]}"#).unwrap();
        assert_eq!(
            r,
            Request::OpenTrajectory {
                trajectory: Some("t1".into()),
                command: vec!["sh".into()],
                policy: None,
                vars: Default::default(),
                agent: None,
                user: None,
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"op":"open_trajectory","policy":"reviewer","vars":{"WORKSPACE":"/src/repo"}}"#)
                .unwrap();
        let Request::OpenTrajectory { policy, vars, .. } = r else { panic!() };
        assert_eq!((policy.as_deref(), vars["WORKSPACE"].as_str()), (Some("reviewer"), "/src/repo"));
        assert!(serde_json::from_str::<Request>(r#"{"op":"open_trajectory","bogus":1}"#).is_err());
        let ok = Response::Opened {
            ok: monostate::True,
            trajectory: "t1".into(),
            cgroup: "/cg".into(),
            policy: "default".into(),
            user: None,
            capabilities: vec![],
            landlock: None,
            ruleset: Attached::default(),
        };
        let text = serde_json::to_string(&ok).unwrap();
        assert_eq!(text, r#"{"ok":true,"trajectory":"t1","cgroup":"/cg","policy":"default"}"#);
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), ok);
        let status = Response::Status {
            ok: monostate::True,
            status: Box::new(Status {
                version: "0".into(),
                kernel: "6".into(),
                hooks: vec![],
                enforcement: ClassEnforcement {
                    file: "kill".into(),
                    exec: "kill".into(),
                    network: "cgroup-deny".into(),
                },
                protections: vec![],
                policies: vec![],
                policy_dir: None,
                trajectories: vec![],
                dns: None,
                limits: vec![],
            }),
        };
        let text = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), status);
        assert_eq!(serde_json::from_str::<Request>(r#"{"op":"status"}"#).unwrap(), Request::Status);
        let r: Request = serde_json::from_str(r#"{"op":"step","name":"run tests"}"#).unwrap();
        assert_eq!(r, Request::Step { trajectory: None, name: "run tests".into(), id: None });
        let r: Request = serde_json::from_str(r#"{"op":"events","trajectory":"t1","follow":true}"#).unwrap();
        assert_eq!(r, Request::Events { trajectory: Some("t1".into()), kinds: vec![], follow: true });
        for ok in [
            Response::Stepped { ok: monostate::True, trajectory: "t1".into(), step: 3 },
            Response::Subscribed { ok: monostate::True, follow: false },
        ] {
            let text = serde_json::to_string(&ok).unwrap();
            assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), ok, "{text}");
        }
        let err: Response = serde_json::from_str(r#"{"ok":false,"error":"no"}"#).unwrap();
        assert_eq!(err, Response::error("no"));
    }

    #[test]
    fn op_and_trajectory_are_the_wire_fields() {
        for line in [
            r#"{"op":"open_trajectory","trajectory":"t1"}"#,
            r#"{"op":"open_trajectory"}"#,
            r#"{"op":"status"}"#,
            r#"{"op":"step","trajectory":"t2","name":"x"}"#,
            r#"{"op":"events"}"#,
        ] {
            let wire: serde_json::Value = serde_json::from_str(line).unwrap();
            let r: Request = serde_json::from_str(line).unwrap();
            assert_eq!((Some(r.op()), r.trajectory()), (wire["op"].as_str(), wire["trajectory"].as_str()), "{line}");
        }
    }
}
