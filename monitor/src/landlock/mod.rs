//! The Landlock rung: a trajectory started by `run` restricts itself,
//! irrevocably, with a ruleset compiled from its policy's file and exec
//! rules, so on a kernel without BPF LSM the kernel refuses what the policy
//! denies with `EACCES` before the operation, for every way of changing a
//! file Landlock knows (create, remove, rename, link, truncate, write),
//! instead of the tracepoints killing the process after it.
//!
//! The daemon plans ([`plan`]: pure, it reads the filesystem through a
//! trait), `run` builds and applies ([`sys`]) right before `exec`. The eBPF
//! hooks keep judging everything: they record Landlock's refusals (the
//! pipeline names them `landlock-deny`) and enforce what the ruleset cannot
//! express ([`Plan::ebpf_only`]). Adopted trajectories have no layer.

pub mod plan;
pub mod sys;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use plan::{plan, Class, Disk, Plan};

/// The filesystem as process `pid` sees it (its mount namespace): where the
/// daemon plans and builds the ruleset that process will apply.
pub fn view_of(pid: u32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/{pid}/root"))
}

/// A layer to plan: the kernel's ABI and the classes no BPF LSM hook
/// enforces there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub abi: u32,
    pub classes: Vec<Class>,
}

/// What `status` and the record pipeline know of a trajectory's layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub abi: u32,
    /// The rule classes the ruleset decides.
    pub classes: Vec<Class>,
    /// Path rules of the ruleset.
    pub grants: usize,
    /// `signal` when the agent cannot signal processes outside its domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scoped: Vec<String>,
    /// Rules only the eBPF hooks judge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ebpf_only: Vec<String>,
}

impl Layer {
    pub fn of(plan: &Plan) -> Layer {
        let mut scoped = Vec::new();
        if plan.scoped & plan::scope::SIGNAL != 0 {
            scoped.push("signal".to_owned());
        }
        Layer {
            abi: plan.abi,
            classes: plan.classes.clone(),
            grants: plan.grants.len(),
            scoped,
            ebpf_only: plan.ebpf_only.clone(),
        }
    }

    pub fn covers(&self, class: Class) -> bool {
        self.classes.contains(&class)
    }
}
