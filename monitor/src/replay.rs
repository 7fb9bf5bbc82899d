//! `agent-monitor policy replay`: judge recorded operations with a
//! candidate policy and report where its verdicts differ from the recorded
//! ones.
//!
//! The judge is the one the kernel maps are compiled from and
//! differential-tested against (`crate::policy::judge`): each recorded
//! open, exec and connect is judged on the path or address the kernel
//! judged, with the trajectory's own `${WORKSPACE}` and `${HOME}` (from its
//! `trajectory_start`). What a replay cannot reproduce exactly is counted
//! as unknown, never as allowed: a path the kernel cut or could not
//! resolve, an open decided by the file's identity (`by_inode`), a connect
//! allowed by a DNS answer (`domain`), an exec of an unnamed file, and any
//! record of a trajectory whose variables are not in the streams.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io::BufRead,
    net::IpAddr,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use monitor_common::policy::{protocol, RULE_DEFAULT};
use serde::Serialize;
use serde_json::Value;

use crate::policy::{judge_connect, judge_exec, judge_file, Access, Action, PolicyMaps, PolicySet, Vars};

/// The policy instance id the candidate is compiled under.
const ID: u32 = 1;

/// A candidate policy: `FILE_OR_DIR[:NAME]`.
pub struct Candidate {
    set: PolicySet,
    name: String,
}

/// Loads `FILE_OR_DIR[:NAME]`. Without `:NAME`, the file or directory must
/// define exactly one policy.
pub fn load_candidate(spec: &str) -> Result<Candidate, String> {
    let (path, name) = match spec.rsplit_once(':') {
        Some((p, n)) if !n.is_empty() && !n.contains('/') => (PathBuf::from(p), Some(n.to_owned())),
        _ => (PathBuf::from(spec), None),
    };
    let problems = |d: Vec<crate::policy::Diagnostic>| d.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    let set = if path.is_dir() {
        crate::policy::load_dir(&path).map_err(problems)?
    } else {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        PolicySet::from_sources(&[(path.clone(), text)]).map_err(problems)?
    };
    let name = match name {
        Some(n) if set.get(&n).is_some() => n,
        Some(n) => return Err(format!("{}: no policy named {n:?}", path.display())),
        None => match set.policies() {
            [one] => one.name.clone(),
            many => {
                let names: Vec<&str> = many.iter().map(|p| p.name.as_str()).collect();
                return Err(format!(
                    "{} defines {}: name one as {}:NAME",
                    path.display(),
                    names.join(", "),
                    path.display()
                ));
            }
        },
    };
    Ok(Candidate { set, name })
}

/// A verdict as records name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Named {
    pub action: String,
    pub rule: String,
}

/// One operation the candidate judges otherwise than the recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub trajectory: String,
    pub seq: u64,
    /// `open`, `exec` or `connect`.
    pub kind: &'static str,
    /// The path, or `addr:port/protocol`.
    pub object: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<&'static str>,
    /// `would_deny` (recorded allowed, the candidate denies), `would_allow`
    /// (recorded denied, the candidate allows), `rule_changed` (the same
    /// policy decides the same way by another rule, or allow and audit
    /// swapped).
    pub difference: &'static str,
    pub recorded: Named,
    pub candidate: Named,
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Report {
    /// Operations judged (the differences among them).
    pub judged: u64,
    /// Operations a replay cannot judge exactly, by reason.
    pub unknown: BTreeMap<&'static str, u64>,
    pub differences: Vec<Difference>,
}

impl Report {
    /// Whether something recorded as allowed would now be denied.
    pub fn denies_more(&self) -> bool {
        self.differences.iter().any(|d| d.difference == "would_deny")
    }
}

/// The candidate compiled for one trajectory's variables.
enum Compiled {
    Maps(Box<PolicyMaps>),
    /// It cannot be compiled for it (a variable its rules use is missing).
    Unknown,
}

/// Judges records one at a time, in stream order.
pub struct Replayer<'a> {
    candidate: &'a Candidate,
    /// Only these trajectories (all when empty).
    only: Vec<String>,
    compiled: HashMap<String, Compiled>,
    pub report: Report,
}

/// A record's bytes field: a string, or `{"base64": ...}`.
fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::String(s) => Some(s.as_bytes().to_vec()),
        Value::Object(o) => base64::engine::general_purpose::STANDARD.decode(o.get("base64")?.as_str()?).ok(),
        _ => None,
    }
}

/// A rule's `file:line` without the file's directory: the recording
/// daemon may have loaded the same file from elsewhere (`<embedded>/`).
fn base(rule: &str) -> &str {
    rule.rsplit_once('/').map_or(rule, |(_, b)| b)
}

fn flag(r: &Value, key: &str) -> bool {
    r[key].as_bool() == Some(true)
}

impl<'a> Replayer<'a> {
    pub fn new(candidate: &'a Candidate, only: Vec<String>) -> Self {
        Replayer { candidate, only, compiled: HashMap::new(), report: Report::default() }
    }

    fn unknown(&mut self, reason: &'static str) {
        *self.report.unknown.entry(reason).or_default() += 1;
    }

    /// The rule as records name it: `file:line`, or `default`.
    fn rule_name(&self, id: u32) -> String {
        match self.candidate.set.rule(id) {
            Some(o) if id != RULE_DEFAULT => format!("{}:{}", o.file.display(), o.line),
            _ => "default".to_owned(),
        }
    }

    /// Takes one record of a stream.
    pub fn record(&mut self, r: &Value) {
        let Some(trajectory) = r["trajectory"].as_str() else { return };
        if !self.only.is_empty() && !self.only.iter().any(|t| t == trajectory) {
            return;
        }
        let kind: &'static str = match r["kind"].as_str() {
            Some("trajectory_start") => return self.start(trajectory, r),
            Some("open") => "open",
            Some("exec") => "exec",
            Some("connect") => "connect",
            _ => return,
        };
        // Not judged by a policy (a relative path that failed, `O_PATH`),
        // or by the built-in protection, which no policy changes.
        let Some(action) = r["action"].as_str() else { return };
        let rule = r["rule"].as_str().unwrap_or("");
        if rule.starts_with("builtin:") {
            return;
        }
        let judged = match self.compiled.get(trajectory) {
            Some(Compiled::Maps(maps)) => match kind {
                "open" => open(r, maps),
                "exec" => exec(r, maps),
                _ => connect(r, maps),
            },
            Some(Compiled::Unknown) => Err(Some("variables")),
            None => Err(Some("no_trajectory_start")),
        };
        let (object, access, decision) = match judged {
            Ok(j) => j,
            Err(Some(reason)) => return self.unknown(reason),
            Err(None) => return,
        };
        self.report.judged += 1;
        let recorded = Named { action: action.to_owned(), rule: rule.to_owned() };
        let candidate = Named { action: decision.0.as_str().to_owned(), rule: self.rule_name(decision.1) };
        let (was_denied, is_denied) = (action == "deny", decision.0 == Action::Deny);
        let same_policy = r["policy"].as_str() == Some(self.candidate.name.as_str());
        let difference = match (was_denied, is_denied) {
            (false, true) => "would_deny",
            (true, false) => "would_allow",
            _ if recorded.action != candidate.action => "rule_changed",
            _ if same_policy && base(&recorded.rule) != base(&candidate.rule) => "rule_changed",
            _ => return,
        };
        let seq = r["seq"].as_u64().unwrap_or(0);
        let trajectory = trajectory.to_owned();
        self.report.differences.push(Difference {
            trajectory,
            seq,
            kind,
            object,
            access,
            difference,
            recorded,
            candidate,
        });
    }

    /// Compiles the candidate with the trajectory's variables.
    fn start(&mut self, trajectory: &str, r: &Value) {
        let vars: Option<Vars> = r["vars"]
            .as_object()
            .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect());
        let compiled = match vars.map(|v| self.candidate.set.open(&self.candidate.name, &v)) {
            Some(Ok(c)) => Compiled::Maps(Box::new(PolicyMaps::new(c.map_entries(ID)))),
            _ => Compiled::Unknown,
        };
        self.compiled.insert(trajectory.to_owned(), compiled);
    }
}

/// One judged operation: what, with which access, and the candidate's
/// action and rule.
type Judged = (String, Option<&'static str>, (Action, u32));

/// `Err(Some(reason))`: not replayable exactly; `Err(None)`: not a policy
/// decision to replay.
type Outcome = Result<Judged, Option<&'static str>>;

fn open(r: &Value, maps: &PolicyMaps) -> Outcome {
    for reason in ["path_truncated", "path_unresolved", "by_inode"] {
        if flag(r, reason) {
            return Err(Some(reason));
        }
    }
    // A failed open (nothing opened) was judged on the absolute path it
    // asked for, as written.
    let asked = bytes(&r["requested"]).filter(|p| p.starts_with(b"/") && r["dfd"].is_null());
    let path = bytes(&r["path"]).or(asked).ok_or(Some("no_path"))?;
    let (access, accesses): (&'static str, &[Access]) = match r["access"].as_str() {
        Some("read") => ("read", &[Access::Read]),
        Some("write") => ("write", &[Access::Write]),
        _ => ("read_write", &[Access::Read, Access::Write]),
    };
    // Both accesses of a read-write open: the stronger verdict, the first
    // access's rule on a tie, as the kernel takes it.
    let mut decision: Option<(Action, u32)> = None;
    for a in accesses {
        let d = judge_file(maps, ID, &path, *a).ok_or(None)?;
        if decision.is_none_or(|(act, _)| d.action > act) {
            decision = Some((d.action, d.rule_id));
        }
    }
    Ok((String::from_utf8_lossy(&path).into_owned(), Some(access), decision.ok_or(None)?))
}

fn exec(r: &Value, maps: &PolicyMaps) -> Outcome {
    if r["rule"].as_str().is_some_and(|rule| rule.starts_with("defaults.")) {
        return Err(Some("unnamed"));
    }
    let path = bytes(&r["path"]).ok_or(Some("no_path"))?;
    let d = judge_exec(maps, ID, &path).ok_or(None)?;
    Ok((String::from_utf8_lossy(&path).into_owned(), None, (d.action, d.rule_id)))
}

fn connect(r: &Value, maps: &PolicyMaps) -> Outcome {
    // A redirected DNS question is judged by the resolver, by name.
    if !r["redirect"].is_null() {
        return Err(None);
    }
    if !r["domain"].is_null() {
        return Err(Some("domain"));
    }
    let addr = r["addr"].as_str().and_then(|a| a.parse::<IpAddr>().ok()).ok_or(Some("no_address"))?;
    let port = r["port"].as_u64().and_then(|p| u16::try_from(p).ok()).ok_or(Some("no_address"))?;
    let (proto, number) = match r["protocol"].as_str() {
        Some("tcp") => ("tcp", protocol::TCP),
        Some("udp") => ("udp", protocol::UDP),
        _ => return Err(Some("protocol")),
    };
    let d = judge_connect(maps, ID, addr, port, number).ok_or(None)?;
    let object = match addr {
        IpAddr::V4(a) => format!("{a}:{port}/{proto}"),
        IpAddr::V6(a) => format!("[{a}]:{port}/{proto}"),
    };
    Ok((object, None, (d.action, d.rule_id)))
}

/// Reads every stream in order (rotated files as given: oldest first).
pub fn replay(candidate: &Candidate, files: &[PathBuf], only: Vec<String>) -> Result<Report, String> {
    let mut replayer = Replayer::new(candidate, only);
    for file in files {
        read_stream(file, |r| replayer.record(r))?;
    }
    Ok(replayer.report)
}

/// Calls `f` on every record of a JSON Lines file; a line that is not JSON
/// is an error naming the file and line.
pub fn read_stream(file: &Path, mut f: impl FnMut(&Value)) -> Result<(), String> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?,
    );
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("{}:{}: cannot read: {e}", file.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).map_err(|e| format!("{}:{}: not a JSON record: {e}", file.display(), i + 1))?;
        f(&value);
    }
    Ok(())
}

/// Human output: differences grouped by kind of difference and candidate
/// rule, with counts and up to three examples each.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let mut groups: BTreeMap<(&str, &str), Vec<&Difference>> = BTreeMap::new();
    for d in &report.differences {
        groups.entry((d.difference, d.candidate.rule.as_str())).or_default().push(d);
    }
    for ((difference, rule), list) in &groups {
        let _ = writeln!(out, "{difference} by {rule}: {} operation(s)", list.len());
        for d in list.iter().take(3) {
            let access = d.access.map(|a| format!(" ({a})")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} {}{access}  recorded {} by {}  [{} seq {}]",
                d.kind, d.object, d.recorded.action, d.recorded.rule, d.trajectory, d.seq
            );
        }
    }
    let unknown: u64 = report.unknown.values().sum();
    let reasons: Vec<String> = report.unknown.iter().map(|(r, n)| format!("{r} {n}")).collect();
    let _ = writeln!(
        out,
        "{} operation(s) judged, {} difference(s), {unknown} unknown{}",
        report.judged,
        report.differences.len(),
        if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(yaml: &str) -> Candidate {
        let set = PolicySet::from_sources(&[("c.yaml".into(), yaml.to_owned())]).unwrap();
        let name = set.policies()[0].name.clone();
        Candidate { set, name }
    }

    const CANDIDATE: &str =
        "name: cand\nmode: enforce\ndefaults: {file: allow, exec: allow, network: deny}\nrules:\n  \
                             file:\n    - {path: \"${WORKSPACE}/secret/\", action: deny}\n  network:\n    - {cidr: \
                             127.0.0.0/8, ports: [8080], protocol: tcp, action: allow}\n";

    fn start(t: &str) -> Value {
        serde_json::json!({"trajectory": t, "seq": 1, "kind": "trajectory_start", "vars": {"WORKSPACE": "/w", "HOME": "/h"}})
    }

    fn rec(t: &str, seq: u64, extra: Value) -> Value {
        let mut v = serde_json::json!({"trajectory": t, "seq": seq, "policy": "recorded", "rule": "default"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    }

    fn run(c: &Candidate, recs: &[Value]) -> Report {
        let mut r = Replayer::new(c, Vec::new());
        for v in recs {
            r.record(v);
        }
        r.report
    }

    #[test]
    fn differences_are_found_and_named() {
        let c = candidate(CANDIDATE);
        let report = run(
            &c,
            &[
                start("t"),
                // Allowed then, denied by the candidate's secret rule.
                rec(
                    "t",
                    2,
                    serde_json::json!({"kind": "open", "path": "/w/secret/key", "access": "read", "action": "allow"}),
                ),
                // Allowed both times.
                rec(
                    "t",
                    3,
                    serde_json::json!({"kind": "open", "path": "/w/src/a.rs", "access": "read_write", "action": "allow"}),
                ),
                // Denied then, allowed now.
                rec(
                    "t",
                    4,
                    serde_json::json!({"kind": "connect", "addr": "127.0.0.1", "port": 8080, "protocol": "tcp", "action": "deny"}),
                ),
                rec(
                    "t",
                    5,
                    serde_json::json!({"kind": "connect", "addr": "127.0.0.1", "port": 9, "protocol": "tcp", "action": "deny"}),
                ),
                // Audited then, plainly allowed now.
                rec("t", 6, serde_json::json!({"kind": "exec", "path": "/usr/bin/cat", "action": "audit"})),
                // A base64 path is decoded and judged.
                rec(
                    "t",
                    7,
                    serde_json::json!({"kind": "open", "path": {"base64": "L3cvc2VjcmV0L2s="}, "access": "read", "action": "allow"}),
                ),
                // A failed open, judged on the absolute path it asked for.
                rec(
                    "t",
                    8,
                    serde_json::json!({"kind": "open", "path": null, "requested": "/w/secret/x", "access": "read", "action": "allow"}),
                ),
            ],
        );
        assert_eq!(report.judged, 7);
        let got: Vec<(u64, &str, &str, &str)> = report
            .differences
            .iter()
            .map(|d| (d.seq, d.difference, d.object.as_str(), d.candidate.rule.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (2, "would_deny", "/w/secret/key", "c.yaml:6"),
                (4, "would_allow", "127.0.0.1:8080/tcp", "c.yaml:8"),
                (6, "rule_changed", "/usr/bin/cat", "default"),
                (7, "would_deny", "/w/secret/k", "c.yaml:6"),
                (8, "would_deny", "/w/secret/x", "c.yaml:6"),
            ]
        );
        assert!(report.denies_more());
        let text = render(&report);
        assert!(text.contains("would_deny by c.yaml:6: 3 operation(s)"), "{text}");
        assert!(text.ends_with("7 operation(s) judged, 5 difference(s), 0 unknown\n"), "{text}");
    }

    #[test]
    fn what_cannot_be_replayed_exactly_is_unknown_never_allowed() {
        let c = candidate(CANDIDATE);
        let report = run(
            &c,
            &[
                // No trajectory_start: no variables.
                rec("gone", 2, serde_json::json!({"kind": "open", "path": "/x", "access": "read", "action": "allow"})),
                start("t"),
                rec(
                    "t",
                    2,
                    serde_json::json!({"kind": "open", "path": "/w/a", "path_truncated": true, "access": "read", "action": "allow"}),
                ),
                rec(
                    "t",
                    3,
                    serde_json::json!({"kind": "open", "path": "/w/b", "by_inode": true, "access": "read", "action": "deny"}),
                ),
                rec(
                    "t",
                    4,
                    serde_json::json!({"kind": "connect", "addr": "192.0.2.10", "port": 443, "protocol": "tcp", "domain": "www.example.org", "action": "allow"}),
                ),
                rec(
                    "t",
                    5,
                    serde_json::json!({"kind": "exec", "path": "/memfd:x (deleted)", "action": "deny", "rule": "defaults.exec_unnamed"}),
                ),
                // Not policy decisions at all: skipped.
                rec(
                    "t",
                    6,
                    serde_json::json!({"kind": "open", "path": "/sys/fs/cgroup/x", "access": "write", "action": "deny", "rule": "builtin:tamper"}),
                ),
                rec("t", 7, serde_json::json!({"kind": "open", "path": null, "access": "read", "action": null})),
            ],
        );
        assert_eq!(report.judged, 0);
        let unknown: Vec<(&str, u64)> = report.unknown.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            unknown,
            [("by_inode", 1), ("domain", 1), ("no_trajectory_start", 1), ("path_truncated", 1), ("unnamed", 1)]
        );
        assert!(!report.denies_more());
        // A candidate needing a variable the stream lacks.
        let mut s = start("v");
        s["vars"] = serde_json::json!({"HOME": "/h"});
        let r = run(&c, &[s, rec("v", 2, serde_json::json!({"kind": "exec", "path": "/bin/x", "action": "allow"}))]);
        assert_eq!(r.unknown.get("variables"), Some(&1));
    }

    #[test]
    fn candidates_load_by_file_directory_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        std::fs::write(&a, CANDIDATE).unwrap();
        std::fs::write(dir.path().join("b.yaml"), CANDIDATE.replace("name: cand", "name: other")).unwrap();
        assert_eq!(load_candidate(a.to_str().unwrap()).unwrap().name, "cand");
        let d = dir.path().to_str().unwrap();
        assert!(load_candidate(d).err().unwrap().contains("defines cand, other: name one as"));
        assert_eq!(load_candidate(&format!("{d}:other")).unwrap().name, "other");
        assert!(load_candidate(&format!("{d}:nope")).err().unwrap().contains("no policy named \"nope\""));
    }
}
