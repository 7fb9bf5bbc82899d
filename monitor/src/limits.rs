//! `limits:` of a policy on the trajectory's cgroup: memory, tasks, CPU.
//!
//! Hosts differ. On a unified (v2) host the controllers are enabled in
//! `cgroup.subtree_control` from the hierarchy's root down to the daemon's
//! parent, and each trajectory cgroup gets `memory.max`, `pids.max` and
//! `cpu.max`. On a hybrid host the cgroup2 mount has no controllers (they are
//! bound to v1 hierarchies): each controller a trajectory needs gets a
//! cgroup of the same relative path in its v1 hierarchy, which the `run`
//! client joins with the v2 one before the agent runs. cgroups-rs is not
//! used: its v2 support assumes the unified hierarchy at `/sys/fs/cgroup`,
//! and choosing per controller between the two layouts is the point here.
//!
//! A controller found nowhere is reported by `status`, and a trajectory
//! whose policy sets its limit is refused: never started unlimited.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    cgroup::{self, CgroupError, Hierarchy},
    policy::Limits,
};

/// A resource controller a policy can limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    pub const fn as_str(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }

    /// Whether `limits` sets this controller's limit.
    pub fn used_by(self, limits: &Limits) -> bool {
        match self {
            Controller::Memory => limits.memory.is_some(),
            Controller::Pids => limits.pids.is_some(),
            Controller::Cpu => limits.cpu_millicores.is_some(),
        }
    }
}

/// Where a controller lives on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// Enabled for the trajectory cgroups in the cgroup2 hierarchy.
    V2,
    /// A cgroup v1 hierarchy mounted here.
    V1(PathBuf),
    /// Nowhere usable, and why.
    Missing(String),
}

/// One row of `status`: where a controller's limit is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerStatus {
    pub controller: String,
    /// `cgroup2`, `cgroup1`, or `unavailable`.
    pub hierarchy: String,
    pub detail: String,
}

/// Where each controller is, found once at startup.
#[derive(Clone, Debug)]
pub struct Controllers {
    places: [Place; 3],
    v2_mount: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("policy {policy:?} sets limits.{controller}, but this host cannot apply it: {why}")]
    Unavailable { policy: String, controller: &'static str, why: String },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError::Io { op, path, source }
}

fn write_file(path: &Path, text: &str) -> Result<(), CgroupError> {
    let mut f = fs::OpenOptions::new().write(true).open(path).map_err(io_err("open", path))?;
    f.write_all(text.as_bytes()).map_err(io_err("write", path))
}

impl Controllers {
    /// Finds each controller: in cgroup2 if the hierarchy offers it (and
    /// enables it from the root down to `parent`), else in a v1 hierarchy.
    pub fn prepare(h: &Hierarchy, parent: &Path) -> Controllers {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let offered = fs::read_to_string(h.mount_point.join("cgroup.controllers")).unwrap_or_default();
        let places = Controller::ALL.map(|c| {
            let why_v2 = if offered.split_whitespace().any(|x| x == c.as_str()) {
                match enable_v2(&h.mount_point, parent, c) {
                    Ok(()) => return Place::V2,
                    Err(e) => format!("cgroup2 offers it but enabling it failed: {e}"),
                }
            } else {
                format!("the cgroup2 hierarchy at {} does not offer it", h.mount_point.display())
            };
            match v1_mount(&mountinfo, c) {
                Some(m) => Place::V1(m),
                None => Place::Missing(format!("{why_v2}, and no cgroup v1 hierarchy has it")),
            }
        });
        Controllers { places, v2_mount: h.mount_point.clone() }
    }

    pub fn place(&self, c: Controller) -> &Place {
        &self.places[c as usize]
    }

    pub fn status(&self) -> Vec<ControllerStatus> {
        Controller::ALL
            .iter()
            .map(|&c| {
                let (hierarchy, detail) = match self.place(c) {
                    Place::V2 => ("cgroup2", "enabled for the trajectory cgroups".to_owned()),
                    Place::V1(m) => ("cgroup1", format!("a cgroup per trajectory under {}", m.display())),
                    Place::Missing(why) => ("unavailable", format!("limits.{} is refused: {why}", c.as_str())),
                };
                ControllerStatus { controller: c.as_str().to_owned(), hierarchy: hierarchy.to_owned(), detail }
            })
            .collect()
    }

    /// The compartment of the trajectory cgroup `trajectory` (a cgroup2
    /// path) under `limits`: which files hold each limit. Nothing is
    /// created.
    pub fn compartment(&self, trajectory: &Path, limits: &Limits) -> Compartment {
        let rel = trajectory.strip_prefix(&self.v2_mount).unwrap_or(trajectory);
        let dir = |c: Controller| -> Option<Dir> {
            if !c.used_by(limits) {
                return None;
            }
            match self.place(c) {
                Place::V2 => Some(Dir { path: trajectory.to_owned(), v1: false }),
                Place::V1(m) => Some(Dir { path: m.join(rel), v1: true }),
                Place::Missing(_) => None,
            }
        };
        Compartment {
            limits: *limits,
            memory: dir(Controller::Memory),
            pids: dir(Controller::Pids),
            cpu: dir(Controller::Cpu),
        }
    }

    /// Refuses `limits` if one of them has no controller here.
    pub fn check(&self, policy: &str, limits: &Limits) -> Result<(), LimitError> {
        for c in Controller::ALL {
            if let (true, Place::Missing(why)) = (c.used_by(limits), self.place(c)) {
                return Err(LimitError::Unavailable {
                    policy: policy.to_owned(),
                    controller: c.as_str(),
                    why: why.clone(),
                });
            }
        }
        Ok(())
    }

    /// Creates the v1 cgroups of `trajectory` and writes every limit,
    /// before anyone joins. On failure what was created is removed.
    pub fn apply(&self, policy: &str, trajectory: &Path, limits: &Limits) -> Result<Compartment, LimitError> {
        self.check(policy, limits)?;
        let comp = self.compartment(trajectory, limits);
        comp.write().inspect_err(|_| comp.remove())?;
        Ok(comp)
    }
}

/// Enables `c` in `cgroup.subtree_control` of every cgroup from the mount
/// down to `parent` (the trajectories' parent), so each trajectory cgroup
/// has the controller's files.
fn enable_v2(mount: &Path, parent: &Path, c: Controller) -> Result<(), CgroupError> {
    let rel = parent.strip_prefix(mount).unwrap_or(Path::new(""));
    let mut dir = mount.to_owned();
    let mut chain = vec![dir.clone()];
    for part in rel.components() {
        dir.push(part);
        chain.push(dir.clone());
    }
    for d in chain {
        let file = d.join("cgroup.subtree_control");
        let on = fs::read_to_string(&file).map_err(io_err("read", &file))?;
        if !on.split_whitespace().any(|x| x == c.as_str()) {
            write_file(&file, &format!("+{}", c.as_str()))?;
        }
    }
    Ok(())
}

/// The mount point of the v1 hierarchy that has controller `c` (its name in
/// the super options: `rw,memory`, `rw,cpu,cpuacct`).
fn v1_mount(mountinfo: &str, c: Controller) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut post = post.split_whitespace();
        if post.next()? != "cgroup" {
            return None;
        }
        let options = post.nth(1)?;
        if !options.split(',').any(|o| o == c.as_str()) {
            return None;
        }
        Some(PathBuf::from(pre.split_whitespace().nth(4)?))
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
struct Dir {
    path: PathBuf,
    /// A cgroup v1 directory the daemon creates, joins and removes.
    v1: bool,
}

/// Where one trajectory's limits live.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Compartment {
    /// The limits written.
    pub limits: Limits,
    memory: Option<Dir>,
    pids: Option<Dir>,
    cpu: Option<Dir>,
}

/// What the limits did over a trajectory, for `trajectory_end`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counters {
    /// Processes the kernel's OOM killer killed at the memory limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
    /// Forks refused at the pids limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    /// Time the CPU limit held the trajectory back, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_throttled_us: Option<u64>,
}

impl Counters {
    pub fn is_empty(&self) -> bool {
        *self == Counters::default()
    }
}

/// The value of `key` in a flat-keyed cgroup file (`oom_kill 3`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Compartment {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.pids.is_none() && self.cpu.is_none()
    }

    fn dirs(&self) -> impl Iterator<Item = &Dir> {
        [&self.memory, &self.pids, &self.cpu].into_iter().flatten()
    }

    fn v1_dirs(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = self.dirs().filter(|d| d.v1).map(|d| d.path.as_path()).collect();
        out.dedup();
        out
    }

    fn write(&self) -> Result<(), CgroupError> {
        let limits = &self.limits;
        for dir in self.v1_dirs() {
            if let Some(p) = dir.parent() {
                cgroup::create_all(p)?;
            }
            cgroup::create_all(dir)?;
        }
        if let (Some(d), Some(bytes)) = (&self.memory, limits.memory) {
            if d.v1 {
                write_file(&d.path.join("memory.limit_in_bytes"), &bytes.to_string())?;
                // With swap accounting, swap counts toward the same limit.
                let memsw = d.path.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write_file(&memsw, &bytes.to_string())?;
                }
            } else {
                write_file(&d.path.join("memory.max"), &bytes.to_string())?;
                // Without this the limit only moves memory to swap.
                let swap = d.path.join("memory.swap.max");
                if swap.exists() {
                    write_file(&swap, "0")?;
                }
            }
        }
        if let (Some(d), Some(n)) = (&self.pids, limits.pids) {
            write_file(&d.path.join("pids.max"), &n.to_string())?;
        }
        if let (Some(d), Some(milli)) = (&self.cpu, limits.cpu_millicores) {
            // 100 ms periods; the quota in microseconds.
            let quota = u64::from(milli) * 100;
            if d.v1 {
                write_file(&d.path.join("cpu.cfs_period_us"), "100000")?;
                write_file(&d.path.join("cpu.cfs_quota_us"), &quota.to_string())?;
            } else {
                write_file(&d.path.join("cpu.max"), &format!("{quota} 100000"))?;
            }
        }
        Ok(())
    }

    /// Moves process `pid` into the v1 cgroups (the caller moves it into
    /// the cgroup2 one).
    pub fn join(&self, pid: u32) -> Result<(), CgroupError> {
        self.v1_dirs().into_iter().try_for_each(|d| cgroup::move_process(d, pid))
    }

    /// The file the kernel updates when a fork is refused at the limit.
    pub fn pids_events(&self) -> Option<PathBuf> {
        self.pids.as_ref().map(|d| d.path.join("pids.events"))
    }

    pub fn counters(&self) -> Counters {
        let read = |d: &Dir, file: &str| fs::read_to_string(d.path.join(file)).unwrap_or_default();
        Counters {
            oom_kills: self.memory.as_ref().map(|d| {
                let text = read(d, if d.v1 { "memory.oom_control" } else { "memory.events" });
                keyed(&text, "oom_kill").unwrap_or(0)
            }),
            pids_max: self.pids.as_ref().map(|d| keyed(&read(d, "pids.events"), "max").unwrap_or(0)),
            cpu_throttled_us: self.cpu.as_ref().map(|d| {
                let text = read(d, "cpu.stat");
                if d.v1 {
                    keyed(&text, "throttled_time").unwrap_or(0) / 1000
                } else {
                    keyed(&text, "throttled_usec").unwrap_or(0)
                }
            }),
        }
    }

    /// Removes the v1 cgroups (the cgroup2 one is the pipeline's), once
    /// empty. Best effort: a failure is logged.
    pub fn remove(&self) {
        for d in self.v1_dirs() {
            if let Err(e) = cgroup::remove_tree(d) {
                tracing::warn!("removing the cgroup v1 directory {}: {e}", d.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw
36 25 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:11 - cgroup cgroup rw,cpu,cpuacct
37 25 0:32 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory
38 25 0:33 / /sys/fs/cgroup/cpuset rw,nosuid shared:13 - cgroup cgroup rw,cpuset
";

    #[test]
    fn v1_hierarchies_are_found_by_their_options() {
        assert_eq!(v1_mount(HYBRID, Controller::Memory), Some("/sys/fs/cgroup/memory".into()));
        assert_eq!(v1_mount(HYBRID, Controller::Cpu), Some("/sys/fs/cgroup/cpu,cpuacct".into()));
        assert_eq!(v1_mount(HYBRID, Controller::Pids), None);
    }

    #[test]
    fn a_compartment_mirrors_the_trajectory_path_in_each_v1_hierarchy() {
        let c = Controllers {
            places: [Place::V1("/sys/fs/cgroup/memory".into()), Place::V2, Place::Missing("no".into())],
            v2_mount: "/sys/fs/cgroup/unified".into(),
        };
        let limits = Limits { memory: Some(64 << 20), pids: Some(64), cpu_millicores: None };
        let comp = c.compartment(Path::new("/sys/fs/cgroup/unified/am/t1"), &limits);
        assert_eq!(comp.v1_dirs(), [Path::new("/sys/fs/cgroup/memory/am/t1")]);
        assert_eq!(comp.pids_events(), Some("/sys/fs/cgroup/unified/am/t1/pids.events".into()));
        assert!(c.check("p", &limits).is_ok());
        let err = c.check("p", &Limits { cpu_millicores: Some(500), ..limits }).unwrap_err();
        assert_eq!(err.to_string(), "policy \"p\" sets limits.cpu, but this host cannot apply it: no");
        assert!(c.compartment(Path::new("/x"), &Limits::default()).is_empty());
    }

    #[test]
    fn keyed_files() {
        assert_eq!(keyed("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n", "oom_kill"), Some(1));
        assert_eq!(keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"), Some(2));
        assert_eq!(keyed("max 7\n", "max"), Some(7));
        assert_eq!(keyed("", "max"), None);
    }
}
