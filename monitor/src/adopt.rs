//! Adopting existing cgroups as trajectories.
//!
//! Agents started by something else (a systemd scope per session, a
//! container runtime) already have a cgroup of their own. Configured glob
//! patterns (`--adopt`, `adopt:` in the config file) name them, relative to
//! the cgroup2 mount. A scan every [`SCAN_INTERVAL`] opens a trajectory for
//! each new match, with the pattern's policy, and closes the trajectory of a
//! matched cgroup that is gone (`reason: cgroup_removed`).
//!
//! On adoption the kernel registration comes first, then the processes
//! already in the cgroup are read from `/proc` once (`process` records), so
//! every process is covered by one or the other. What those processes did
//! before adoption is not known. Adopted cgroups are never removed by the
//! daemon, and the daemon's own trajectory cgroups are never adopted.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use tokio::sync::watch;

use crate::{
    cgroup::{self, Hierarchy},
    enforce::Binding,
    events::{handle::PipelineHandle, pipeline::OpenSpec, process},
    policy::Vars,
    record::Process,
    trajectory,
    vocab::{EndReason, Origin},
};

pub const SCAN_INTERVAL: Duration = Duration::from_millis(500);

/// One `--adopt GLOB[=POLICY]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptRule {
    /// Relative to the cgroup2 mount; `*` and `?` match within a component.
    pub pattern: String,
    /// The daemon's default policy when `None`.
    pub policy: Option<String>,
}

impl AdoptRule {
    /// Parses `GLOB[=POLICY]`; messages start with the value.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (pattern, policy) = match s.split_once('=') {
            Some((p, "")) => return Err(format!("{s:?}: empty policy name after `=` in {p:?}")),
            Some((p, policy)) => (p, Some(policy.to_owned())),
            None => (s, None),
        };
        let plain = Path::new(pattern).components().all(|c| matches!(c, Component::Normal(_)));
        if pattern.is_empty() || !plain {
            return Err(format!(
                "{s:?}: expected a relative cgroup path pattern below the cgroup2 mount, e.g. system.slice/agent-*.scope"
            ));
        }
        Ok(AdoptRule { pattern: pattern.to_owned(), policy })
    }
}

pub struct Adopter {
    pub rules: Vec<AdoptRule>,
    pub hierarchy: Hierarchy,
    /// The daemon's own trajectory parent: never adopted from.
    pub own_parent: PathBuf,
    pub default_policy: String,
    pub pipeline: PipelineHandle,
    /// Adopted cgroups a previous daemon left, resumed at start: (path,
    /// cgroup id).
    pub resumed: Vec<(PathBuf, u64)>,
}

struct Adopted {
    cgroup_id: u64,
}

impl Adopter {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        if self.rules.is_empty() && self.resumed.is_empty() {
            return;
        }
        let mut adopted: HashMap<PathBuf, Adopted> =
            self.resumed.iter().map(|(path, cgroup_id)| (path.clone(), Adopted { cgroup_id: *cgroup_id })).collect();
        // Matches whose adoption failed: reported once, not retried until
        // they go away (a policy that cannot be instantiated stays so).
        let mut failed: HashSet<PathBuf> = HashSet::new();
        let mut tick = tokio::time::interval(SCAN_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            let found = self.scan();
            let gone: Vec<PathBuf> = adopted
                .iter()
                .filter(|(path, a)| !found.contains_key(*path) || cgroup::cgroup_id(path).ok() != Some(a.cgroup_id))
                .map(|(p, _)| p.clone())
                .collect();
            for path in gone {
                let a = adopted.remove(&path).expect("listed");
                if self.pipeline.close(a.cgroup_id, EndReason::CgroupRemoved).await.is_err() {
                    return;
                }
            }
            failed.retain(|p| found.contains_key(p));
            for (path, policy) in found {
                if adopted.contains_key(&path) || failed.contains(&path) {
                    continue;
                }
                match self.adopt(&path, policy).await {
                    Ok(a) => {
                        adopted.insert(path, a);
                    }
                    // An empty cgroup gives no variables yet: try again on
                    // the next scan rather than give up.
                    Err(_) if cgroup::procs_tree(&path).is_empty() => {}
                    Err(e) => {
                        tracing::error!(cgroup = %path.display(), "cannot adopt cgroup: {e}");
                        failed.insert(path);
                    }
                }
            }
        }
    }

    /// Every cgroup matching a rule, with the policy of the first rule that
    /// matches it.
    fn scan(&self) -> HashMap<PathBuf, String> {
        let mut found = HashMap::new();
        for rule in &self.rules {
            for path in expand(&self.hierarchy.mount_point, &rule.pattern) {
                if path.starts_with(&self.own_parent) {
                    continue;
                }
                found.entry(path).or_insert_with(|| rule.policy.clone().unwrap_or_else(|| self.default_policy.clone()));
            }
        }
        found
    }

    async fn adopt(&self, path: &Path, policy: String) -> Result<Adopted, String> {
        let cgroup_id = cgroup::cgroup_id(path).map_err(|e| e.to_string())?;
        let level = self.hierarchy.level_of(path).ok_or("outside the cgroup2 mount")?;
        let vars = vars_of(path);
        let id = trajectory::generate_id();
        let spec = OpenSpec {
            id: id.clone(),
            cgroup: path.to_owned(),
            cgroup_id,
            level,
            command: Vec::new(),
            client: Process::default(),
            binding: Binding { policy: policy.clone(), vars: vars.clone() },
            origin: Origin::Adopt,
            agent: None,
            // An adopted cgroup is someone else's: its limits are theirs.
            compartment: Box::default(),
            // Its processes were not started by `run`: nothing applies one.
            landlock: None,
        };
        self.pipeline.open(spec).await.map_err(|e| e.to_string())?;
        tracing::info!(trajectory = %id, cgroup = %path.display(), %policy, ?vars, "cgroup adopted");
        Ok(Adopted { cgroup_id })
    }
}

/// The policy variables of an adopted cgroup, from its oldest process (the
/// one its launcher started): `WORKSPACE` is its working directory, `HOME`
/// the `HOME` of its environment. Read at adoption, before the agent has
/// had much chance to change them; `docs/policy.md` says what that means.
fn vars_of(path: &Path) -> Vars {
    let mut vars = Vars::default();
    let oldest = cgroup::procs_tree(path)
        .into_iter()
        .filter_map(|pid| Some((process::read_proc(pid)?.process.exec_id?, pid)))
        .min();
    let Some((_, pid)) = oldest else { return vars };
    if let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) {
        vars.insert("WORKSPACE".to_owned(), cwd.to_string_lossy().into_owned());
    }
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    if let Some(home) = environ.split(|&b| b == 0).find_map(|kv| kv.strip_prefix(b"HOME=")) {
        if let Ok(home) = fs::canonicalize(String::from_utf8_lossy(home).as_ref()) {
            vars.insert("HOME".to_owned(), home.to_string_lossy().into_owned());
        }
    }
    vars
}

/// Directories below `root` matching `pattern` component by component.
pub fn expand(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let mut current = vec![root.to_path_buf()];
    for comp in pattern.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for dir in &current {
            if !comp.contains(['*', '?']) {
                let p = dir.join(comp);
                if p.is_dir() {
                    next.push(p);
                }
                continue;
            }
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir && wildmatch(comp.as_bytes(), entry.file_name().as_encoded_bytes()) {
                    next.push(entry.path());
                }
            }
        }
        current = next;
    }
    current
}

/// `*` (any run, possibly empty) and `?` (one byte); everything else is
/// literal.
fn wildmatch(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        for (p, s, m) in [
            ("agent-*.scope", "agent-42.scope", true),
            ("agent-*.scope", "agent-.scope", true),
            ("agent-*.scope", "agent-42.service", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*", "", true),
            ("*x*y", "axbxy", true),
            ("lit", "lit", true),
            ("lit", "lit2", false),
        ] {
            assert_eq!(wildmatch(p.as_bytes(), s.as_bytes()), m, "{p} ~ {s}");
        }
    }

    #[test]
    fn expands_directories_only() {
        let root = tempfile::tempdir().unwrap();
        for d in ["s/agent-1.scope/child", "s/agent-2.scope", "s/other.scope", "t/agent-3.scope"] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        fs::write(root.path().join("s/agent-file.scope"), "").unwrap();
        let mut got: Vec<PathBuf> = expand(root.path(), "s/agent-*.scope");
        got.sort();
        assert_eq!(got, vec![root.path().join("s/agent-1.scope"), root.path().join("s/agent-2.scope")]);
        assert_eq!(expand(root.path(), "*/agent-3.scope"), vec![root.path().join("t/agent-3.scope")]);
    }

    #[test]
    fn rule_syntax() {
        assert_eq!(
            AdoptRule::parse("system.slice/agent-*.scope=reviewer"),
            Ok(AdoptRule { pattern: "system.slice/agent-*.scope".into(), policy: Some("reviewer".into()) })
        );
        assert_eq!(AdoptRule::parse("x").unwrap().policy, None);
        for bad in ["", "/abs/*", "../x", "a/../b", "x="] {
            assert!(AdoptRule::parse(bad).is_err(), "{bad}");
        }
    }
}
