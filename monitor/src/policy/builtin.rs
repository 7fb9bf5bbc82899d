//! Built-in tamper protection: paths no trajectory may open for writing,
//! whatever its policy says.
//!
//! The daemon decides the list once at startup ([`Protected::for_daemon`]):
//! its control socket directory, its policy and configuration directories,
//! its event file, the cgroup and BPF filesystems, and its own `/proc/<pid>/`.
//! [`CompiledPolicy::protect`] then writes them into every compiled policy
//! instance as write-deny entries with the rule id [`RULE_BUILTIN_TAMPER`],
//! overriding the write verdict of every entry below them, so no `allow`
//! rule of the policy, however specific, can reopen them. The kernel treats
//! a deny with that rule id as a deny even under a policy in `audit` mode.
//!
//! Paths are what the kernel's dentry walk produces; an alias it cannot see
//! through (a bind mount made by a root agent) is the limit documented in
//! `docs/security.md`. The cgroup and BPF filesystems are additionally
//! recognised by their superblock in the kernel, whatever the path.

use std::path::{Component, Path, PathBuf};

use monitor_common::policy::{FileValue, PolicyVerdict, MAX_RULE_PATH_LEN, RULE_BUILTIN_TAMPER, RULE_DEFAULT};

use super::{
    compile::{CompiledPolicy, PathEntry},
    model::Action,
};

/// How events name a verdict of the built-in protection.
pub const TAMPER_RULE: &str = "builtin:tamper";

/// One protected path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProtectedPath {
    /// Absolute and lexically normal; a directory without its trailing `/`.
    pub path: String,
    /// A directory covers itself and everything below; otherwise the exact
    /// file only.
    pub directory: bool,
}

/// The paths no trajectory may open for writing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protected {
    paths: Vec<ProtectedPath>,
    /// Paths that cannot be encoded (too long for a kernel key, or `/`).
    skipped: Vec<String>,
}

impl Protected {
    /// From `(path, is_directory)` pairs: normalised lexically (`.`, `..`,
    /// repeated `/`), relative paths and `/` itself refused (listed in
    /// [`Self::skipped`]), and paths already covered by a protected
    /// directory dropped.
    pub fn new(paths: impl IntoIterator<Item = (PathBuf, bool)>) -> Protected {
        let mut out = Protected::default();
        let mut all: Vec<ProtectedPath> = Vec::new();
        for (p, directory) in paths {
            match normalise(&p) {
                Some(path) if !path.is_empty() && path.len() <= MAX_RULE_PATH_LEN => {
                    all.push(ProtectedPath { path, directory })
                }
                _ => out.skipped.push(p.display().to_string()),
            }
        }
        all.sort();
        all.dedup();
        for p in &all {
            let covered = all.iter().any(|d| d != p && d.directory && below(p.path.as_bytes(), d.path.as_bytes()));
            if !covered {
                out.paths.push(p.clone());
            }
        }
        out
    }

    /// What the daemon protects: its control socket's directory, its state
    /// directory, the
    /// policy directory, `/etc/agent-monitor`, the event file, the cgroup2
    /// mount and `/sys/fs/cgroup` (cgroup v1 controllers on hybrid hosts),
    /// `/sys/fs/bpf` (where the daemon pins), and `/proc/<daemon pid>/`.
    pub fn for_daemon(
        control_socket: &Path,
        state_dir: &Path,
        policy_dir: Option<&Path>,
        events_file: Option<&Path>,
        cgroup2_mount: &Path,
        daemon_pid: u32,
    ) -> Protected {
        let mut paths: Vec<(PathBuf, bool)> = vec![
            (PathBuf::from("/etc/agent-monitor"), true),
            (PathBuf::from("/sys/fs/cgroup"), true),
            (cgroup2_mount.to_path_buf(), true),
            (PathBuf::from(crate::mounts::BPFFS), true),
            (PathBuf::from(format!("/proc/{daemon_pid}")), true),
        ];
        if let Some(dir) = control_socket.parent() {
            paths.push((dir.to_path_buf(), true));
        }
        paths.push((state_dir.to_path_buf(), true));
        if let Some(dir) = policy_dir {
            paths.push((dir.to_path_buf(), true));
        }
        if let Some(f) = events_file {
            paths.push((f.to_path_buf(), false));
        }
        // The real locations too: a symlinked directory is judged by the
        // path the kernel resolves.
        let real: Vec<(PathBuf, bool)> =
            paths.iter().filter_map(|(p, d)| Some((std::fs::canonicalize(p).ok()?, *d))).collect();
        paths.extend(real);
        Protected::new(paths)
    }

    pub fn paths(&self) -> &[ProtectedPath] {
        &self.paths
    }

    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Whether a write to `path` (an absolute path, as the kernel resolves
    /// it) is refused.
    pub fn covers(&self, path: &str) -> bool {
        self.paths.iter().any(|p| {
            if p.directory {
                path == p.path || below(path.as_bytes(), p.path.as_bytes())
            } else {
                path == p.path
            }
        })
    }

    /// Whether the trie entry with prefix bytes `prefix` lies inside a
    /// protected path (see `monitor_common::policy` for the encoding).
    fn covers_entry(&self, prefix: &[u8]) -> bool {
        self.paths.iter().any(|p| {
            let dir = p.path.as_bytes();
            let exact = prefix.len() == dir.len() + 1 && prefix.starts_with(dir) && prefix[dir.len()] == 0;
            exact || (p.directory && prefix.len() > dir.len() && below(prefix, dir))
        })
    }
}

/// `path` lies strictly below directory `dir` (`dir/...`).
fn below(path: &[u8], dir: &[u8]) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

/// Lexical normalisation of an absolute path; `None` for a relative one.
fn normalise(p: &Path) -> Option<String> {
    if !p.is_absolute() {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().map(|s| format!("/{s}")).collect())
}

impl CompiledPolicy {
    /// Adds the built-in protection: every protected path gets its own
    /// entries (reads keep the verdict they inherited), and every entry at
    /// or below a protected path has its write verdict replaced by a deny of
    /// [`RULE_BUILTIN_TAMPER`].
    pub fn protect(&mut self, protected: &Protected) {
        let default = PolicyVerdict { rule_id: RULE_DEFAULT, action: self.config.file_default, _pad: [0; 3] };
        for p in protected.paths() {
            let ends: &[u8] = if p.directory { b"/\0" } else { b"\0" };
            for &end in ends {
                let mut prefix = p.path.as_bytes().to_vec();
                prefix.push(end);
                if self.file.iter().any(|e| e.prefix == prefix) {
                    continue;
                }
                // What a lookup landing here found before: the longest
                // existing entry that is a prefix of this one.
                let inherited = self
                    .file
                    .iter()
                    .filter(|e| prefix.starts_with(&e.prefix))
                    .max_by_key(|e| e.prefix.len())
                    .map_or(FileValue { read: default, write: default }, |e| e.value);
                self.file.push(PathEntry { prefix, value: inherited });
            }
        }
        let deny = PolicyVerdict { rule_id: RULE_BUILTIN_TAMPER, action: Action::Deny.to_abi(), _pad: [0; 3] };
        for e in &mut self.file {
            if protected.covers_entry(&e.prefix) {
                e.value.write = deny;
            }
        }
        self.file.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    }
}
