//! The start-up report: what the kernel side came up with, per hook, per
//! rule class and per built-in protection, logged for the operator,
//! exported as metrics, and kept for `status` as [`control::protocol`]
//! types (converted from the loader's with `From`).

use std::path::Path;

use super::start::Prepared;
use crate::{
    config::DaemonConfig,
    control::protocol::{ClassEnforcement, DnsStatus, HookStatus, ProtectionStatus},
    landlock::{Class, Wanted},
    loader::{Enforcement, HookState, Loaded, ProtectionState},
    metrics::Metrics,
    policy::{self, PolicySet, Protected},
    sinks::jsonl,
    vocab::{Mechanism, RuleClass},
};

impl From<&HookState> for HookStatus {
    fn from(h: &HookState) -> Self {
        HookStatus {
            hook: h.hook.to_owned(),
            class: h.class.as_str().into(),
            mechanism: h.mechanism.as_str().into(),
            detail: h.detail.clone(),
        }
    }
}

impl From<Enforcement> for ClassEnforcement {
    fn from(e: Enforcement) -> Self {
        ClassEnforcement {
            file: e.file.as_str().into(),
            exec: e.exec.as_str().into(),
            network: e.network.as_str().into(),
        }
    }
}

impl From<&ProtectionState> for ProtectionStatus {
    fn from(p: &ProtectionState) -> Self {
        ProtectionStatus {
            protection: p.protection.to_owned(),
            mechanism: p.mechanism.as_str().into(),
            detail: p.detail.clone(),
        }
    }
}

/// What `status` shows of the start.
pub struct Report {
    pub hooks: Vec<HookStatus>,
    pub enforcement: ClassEnforcement,
    pub protections: Vec<ProtectionStatus>,
    pub dns: Option<DnsStatus>,
    /// The Landlock layer trajectories started by `run` get.
    pub landlock: Option<Wanted>,
}

/// The rule classes a Landlock layer takes over on this kernel: the file
/// rules, where the tracepoints would otherwise enforce them by killing.
/// Where BPF LSM enforces them it stays the only mechanism: Landlock's hook
/// runs before it and would refuse without the LSM hook ever seeing (and
/// recording) the call. Exec rules stay with the exec tracepoint for now: a
/// refused `execve` passes no hook that records it.
pub fn landlock(e: Enforcement, abi: u32) -> Option<Wanted> {
    (abi > 0 && e.file == Mechanism::Kill).then(|| Wanted { abi, classes: vec![Class::Read, Class::Write] })
}

/// The class enforcement `status` shows: `landlock-deny` for the classes
/// the layer takes over.
fn class_enforcement(e: Enforcement, layer: Option<&Wanted>) -> ClassEnforcement {
    let mut shown = ClassEnforcement::from(e);
    if let Some(w) = layer {
        if w.classes.contains(&Class::Write) {
            shown.file = Mechanism::LandlockDeny.as_str().into();
        }
    }
    shown
}

/// A tamper protection as the Landlock layer strengthens it for the
/// trajectories `run` starts (adopted ones keep the row's mechanism, which
/// the detail says).
fn layered(mut p: ProtectionStatus, layer: Option<&Wanted>) -> ProtectionStatus {
    let Some(w) = layer else { return p };
    let landlock = Mechanism::LandlockDeny.as_str();
    match p.protection.as_str() {
        "signals" if w.abi >= 6 => {
            p.mechanism = landlock.into();
            p.detail = "trajectories started by `run`: a signal to the daemon, or to any process outside the \
                        trajectory, fails with EPERM (Landlock scoped signals); adopted trajectories: a root agent \
                        can kill the daemon"
                .into();
        }
        "cgroup-mkdir" => {
            p.mechanism = landlock.into();
            p.detail = "trajectories started by `run`: mkdir/rmdir in a cgroup or BPF filesystem fails with EACCES \
                        (both are write-protected, and the Landlock layer refuses creating and removing there); \
                        adopted trajectories: not stopped"
                .into();
        }
        "ptrace" => {
            p.detail += "; trajectories started by `run`: ptrace and process_vm_* of any other process outside the \
                         trajectory fail with EPERM (Landlock)";
        }
        "mount" => {
            p.detail += "; trajectories started by `run`: Landlock refuses every mount change with EPERM";
        }
        _ => {}
    }
    p
}

/// The `landlock` protection row: what the layer covers, and what is left
/// to the tracepoints; none where BPF LSM enforces file rules (the layer is
/// not used there).
fn landlock_row(e: Enforcement, layer: Option<&Wanted>, abi: u32) -> Option<ProtectionStatus> {
    let (mechanism, detail) = match layer {
        Some(w) => (
            Mechanism::LandlockDeny,
            format!(
                "Landlock ABI {abi}: each trajectory started by `run` restricts itself before exec: its file \
                 rules ({} of opens, creating, removing, renaming, linking{} files){}, mount changes, and \
                 ptrace of processes outside it; exec rules and adopted trajectories stay with the tracepoints \
                 (kill); chmod, chown, xattrs and timestamps are not judged without BPF LSM",
                w.classes.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" and "),
                if abi >= 3 { ", truncating" } else { "" },
                if abi >= 6 { ", signals to processes outside it" } else { "" },
            ),
        ),
        None if e.file == Mechanism::Kill => (
            Mechanism::Unavailable,
            "Landlock is not enabled on this kernel: file rules are enforced by killing the process".to_owned(),
        ),
        None => return None,
    };
    Some(ProtectionStatus { protection: "landlock".into(), mechanism: mechanism.as_str().into(), detail })
}

/// Logs and exports each hook's mechanism and each rule class's, and
/// names the policies in enforce mode whose rules this kernel can only
/// record.
pub fn kernel(loaded: &Loaded, set: &PolicySet, metrics: &Metrics, landlock_abi: u32) {
    for h in &loaded.hooks {
        let mechanism = h.mechanism.as_str();
        metrics.hook_mechanism.with_label_values(&[h.hook, mechanism]).set(1);
        if h.mechanism == Mechanism::Unavailable {
            tracing::warn!(hook = h.hook, mechanism, "{}", h.detail);
        } else {
            tracing::info!(hook = h.hook, mechanism, "{}", h.detail);
        }
    }
    let e = loaded.enforcement;
    let layer = landlock(e, landlock_abi);
    let shown = class_enforcement(e, layer.as_ref());
    tracing::info!(file = shown.file, exec = shown.exec, network = shown.network, "enforcement per rule class");
    for (class, m) in
        [(RuleClass::File, &shown.file), (RuleClass::Exec, &shown.exec), (RuleClass::Network, &shown.network)]
    {
        metrics.enforcement.with_label_values(&[class.as_str(), m.as_str()]).set(1);
    }
    for (class, m) in [(RuleClass::File, e.file), (RuleClass::Exec, e.exec)] {
        let class = class.as_str();
        if m == Mechanism::Kill && layer.is_some() {
            tracing::warn!(
                "{class} rules are enforced by the Landlock layer for trajectories started by `run` (EACCES before \
                 the operation) and by killing the process for adopted ones and for what Landlock cannot express \
                 (see docs/security.md)"
            );
        } else if m == Mechanism::Kill {
            tracing::warn!(
                "{class} rules are enforced by killing the process (no BPF LSM on this kernel): a denied {class} \
                 operation has already happened when the process dies (see docs/policy.md)"
            );
        }
    }
    let weak: Vec<&str> = e
        .per_class()
        .into_iter()
        .filter(|(_, m)| matches!(m, Mechanism::AuditOnly | Mechanism::Unavailable))
        .map(|(c, _)| c.as_str())
        .collect();
    for p in set.policies() {
        if p.mode == policy::Mode::Enforce && !weak.is_empty() {
            tracing::error!(
                policy = %p.name,
                "policy is in enforce mode but this kernel cannot enforce its {} rules: they are only recorded",
                weak.join(", ")
            );
        }
    }
}

/// The daemon's own files and sockets, closed to trajectories.
pub fn protected(config: &DaemonConfig, prepared: &Prepared, cgroup_mount: &Path) -> Protected {
    let protected = Protected::for_daemon(
        &config.control_socket,
        prepared.state.path(),
        config.policy_dir.as_deref(),
        match &config.events {
            jsonl::Output::File(f) => Some(f.as_path()),
            jsonl::Output::Stdout => None,
        },
        cgroup_mount,
        std::process::id(),
    );
    for p in protected.skipped() {
        tracing::warn!(path = %p, "cannot protect this path from trajectories (too long or not absolute)");
    }
    protected
}

impl Report {
    /// The report, its protections logged. `keep_on_exit`: the pins
    /// outlive the daemon (`--stop-enforcement-on-exit` not given).
    /// `landlock_abi`: the kernel's Landlock ABI, 0 without Landlock.
    pub fn new(loaded: &Loaded, protected: &Protected, prepared: &Prepared, keep_on_exit: bool, abi: u32) -> Self {
        let layer = landlock(loaded.enforcement, abi);
        let mut protections = vec![files(loaded.enforcement, layer.as_ref(), protected)];
        protections.extend(loaded.protections.iter().map(|p| layered(ProtectionStatus::from(p), layer.as_ref())));
        protections.extend(landlock_row(loaded.enforcement, layer.as_ref(), abi));
        protections.push(continuity(loaded, prepared, keep_on_exit));
        for p in &protections {
            if p.mechanism == Mechanism::Unavailable.as_str() {
                tracing::warn!(protection = %p.protection, mechanism = %p.mechanism, "{}", p.detail);
            } else {
                tracing::info!(protection = %p.protection, mechanism = %p.mechanism, "{}", p.detail);
            }
        }
        Report {
            hooks: loaded.hooks.iter().map(HookStatus::from).collect(),
            enforcement: class_enforcement(loaded.enforcement, layer.as_ref()),
            protections,
            dns: None,
            landlock: layer,
        }
    }
}

/// The daemon's files, protected by whatever enforces file rules.
fn files(e: Enforcement, layer: Option<&Wanted>, protected: &Protected) -> ProtectionStatus {
    let paths: Vec<String> =
        protected.paths().iter().map(|p| if p.directory { format!("{}/", p.path) } else { p.path.clone() }).collect();
    ProtectionStatus {
        protection: "files".into(),
        mechanism: class_enforcement(e, layer).file,
        detail: format!("opens for writing of {} and of any file on a cgroup or BPF filesystem", paths.join(", ")),
    }
}

/// Whether enforcement outlives the daemon: pinned, or not and why.
fn continuity(loaded: &Loaded, prepared: &Prepared, keep_on_exit: bool) -> ProtectionStatus {
    let pinned = prepared.pins.is_some();
    ProtectionStatus {
        protection: "continuity".into(),
        mechanism: if pinned && loaded.unpinned.is_empty() { Mechanism::Pinned } else { Mechanism::Unavailable }
            .as_str()
            .into(),
        detail: format!(
            "{}; {}",
            prepared.continuity,
            if keep_on_exit {
                "the kernel keeps enforcing when the daemon exits or is killed"
            } else if pinned {
                "--stop-enforcement-on-exit: a clean exit removes the pins; a killed daemon's pins stay"
            } else {
                "no pins"
            }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookClass;

    #[test]
    fn loader_states_convert_to_their_wire_form() {
        let hook = HookState {
            hook: "lsm:file_open",
            class: HookClass::Open,
            mechanism: Mechanism::LsmDeny,
            detail: "opens denied".into(),
        };
        assert_eq!(
            HookStatus::from(&hook),
            HookStatus {
                hook: "lsm:file_open".into(),
                class: "open".into(),
                mechanism: "lsm-deny".into(),
                detail: "opens denied".into()
            }
        );
        let e = Enforcement { file: Mechanism::Kill, exec: Mechanism::LsmDeny, network: Mechanism::CgroupDeny };
        assert_eq!(
            ClassEnforcement::from(e),
            ClassEnforcement { file: "kill".into(), exec: "lsm-deny".into(), network: "cgroup-deny".into() }
        );
        let p = ProtectionState { protection: "bpf", mechanism: Mechanism::Unavailable, detail: "no LSM".into() };
        assert_eq!(
            ProtectionStatus::from(&p),
            ProtectionStatus { protection: "bpf".into(), mechanism: "unavailable".into(), detail: "no LSM".into() }
        );
    }

    #[test]
    fn file_protection_lists_the_protected_paths() {
        let protected = Protected::new([("/run/agent-monitor".into(), true), ("/var/log/events.jsonl".into(), false)]);
        let e = Enforcement { file: Mechanism::LsmDeny, exec: Mechanism::LsmDeny, network: Mechanism::CgroupDeny };
        let p = files(e, None, &protected);
        assert_eq!((p.protection.as_str(), p.mechanism.as_str()), ("files", "lsm-deny"));
        assert!(p.detail.contains("/run/agent-monitor/, /var/log/events.jsonl"), "{}", p.detail);
    }
}
