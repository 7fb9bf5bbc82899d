//! A trajectory's file rules as a Landlock ruleset: which rights to handle
//! and which paths to grant them beneath (pure; the filesystem is read
//! through [`Tree`]).
//!
//! Landlock is an allow list: a handled right is refused everywhere except
//! beneath the paths a rule grants it on, and a grant covers everything
//! below its path. The policy is a longest-prefix match where a deny can
//! sit under an allow under a deny. The plan walks down from `/`, per class
//! (read, write, exec): a directory whose whole subtree has one outcome
//! (no entry below it decides otherwise) is granted, or not, as a whole; a
//! directory with a different outcome somewhere below ("split") is never
//! granted the class's directory rights, and each of its entries is
//! planned on its own, files with their own verdict. What that leaves:
//!
//! * Entries created in a split directory after the trajectory starts have
//!   no grant: reading, writing or executing them, and creating or removing
//!   entries directly in a split directory, are refused. That is stricter
//!   than the policy, the safe side, and the documented behaviour.
//! * Listing a directory needs `READ_DIR`, which Landlock grants beneath:
//!   a split directory the policy lets be read is granted it, so listing a
//!   read-denied directory below one is left to the eBPF open judge.
//! * procfs creates its entries per lookup (`/proc/<pid>` of a process
//!   started later, or of one whose dentry was dropped): a split directory
//!   there is granted as a whole, and the rules below it stay with the eBPF
//!   hooks ([`Plan::ebpf_only`]).
//! * A symbolic link is never granted: what it points to is judged where
//!   it is.
//!
//! The plan never grants a right on a path the policy denies it for,
//! except through those last three, each of which the eBPF hooks still
//! judge.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
};

use monitor_common::policy::{PolicyVerdict, RULE_DEFAULT};
use serde::{Deserialize, Serialize};

use crate::policy::{compile::PathEntry, Action, CompiledPolicy};

/// `LANDLOCK_ACCESS_FS_*` (`include/uapi/linux/landlock.h`).
pub mod fs {
    pub const EXECUTE: u64 = 1 << 0;
    pub const WRITE_FILE: u64 = 1 << 1;
    pub const READ_FILE: u64 = 1 << 2;
    pub const READ_DIR: u64 = 1 << 3;
    pub const REMOVE_DIR: u64 = 1 << 4;
    pub const REMOVE_FILE: u64 = 1 << 5;
    pub const MAKE_CHAR: u64 = 1 << 6;
    pub const MAKE_DIR: u64 = 1 << 7;
    pub const MAKE_REG: u64 = 1 << 8;
    pub const MAKE_SOCK: u64 = 1 << 9;
    pub const MAKE_FIFO: u64 = 1 << 10;
    pub const MAKE_BLOCK: u64 = 1 << 11;
    pub const MAKE_SYM: u64 = 1 << 12;
    /// ABI 2: link or rename a file between directories.
    pub const REFER: u64 = 1 << 13;
    /// ABI 3: `truncate(2)`, `ftruncate(2)`, `O_TRUNC`.
    pub const TRUNCATE: u64 = 1 << 14;

    /// The rights that make sense on a file (the rest are about a
    /// directory's entries).
    pub const FILE: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE;
}

/// `LANDLOCK_SCOPE_*` (ABI 6).
pub mod scope {
    pub const SIGNAL: u64 = 1 << 1;
}

/// A policy rule class as Landlock sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Read,
    Write,
    Exec,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Read, Class::Write, Class::Exec];

    /// The rights this class decides on kernels with Landlock ABI `abi`.
    pub fn rights(self, abi: u32) -> u64 {
        match self {
            Class::Read => fs::READ_FILE | fs::READ_DIR,
            Class::Write => {
                let mut r = fs::WRITE_FILE
                    | fs::REMOVE_DIR
                    | fs::REMOVE_FILE
                    | fs::MAKE_CHAR
                    | fs::MAKE_DIR
                    | fs::MAKE_REG
                    | fs::MAKE_SOCK
                    | fs::MAKE_FIFO
                    | fs::MAKE_BLOCK
                    | fs::MAKE_SYM;
                if abi >= 2 {
                    r |= fs::REFER;
                }
                if abi >= 3 {
                    r |= fs::TRUNCATE;
                }
                r
            }
            Class::Exec => fs::EXECUTE,
        }
    }

    /// The rights granted on a split directory the policy allows itself:
    /// only listing it (see the module docs).
    fn split_rights(self) -> u64 {
        match self {
            Class::Read => fs::READ_DIR,
            Class::Write | Class::Exec => 0,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Exec => "exec",
        }
    }
}

/// What a directory entry is, as far as planning goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Dir,
    /// Any other inode a rule can name: regular files, devices, sockets,
    /// FIFOs.
    File,
    Symlink,
}

/// The filesystem as the planner reads it.
pub trait Tree {
    /// The entries of directory `dir` (names only); empty when it cannot
    /// be read.
    fn entries(&self, dir: &Path) -> Vec<(OsString, Kind)>;
    /// Whether `dir` is on a filesystem whose entries come and go per
    /// lookup (procfs), so a grant on one of them may not outlive it.
    fn volatile(&self, dir: &Path) -> bool;
}

/// One rule of the ruleset: `access` beneath `path`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub path: PathBuf,
    pub access: u64,
    /// Planned as a directory: `run` refuses to add the rule if the path is
    /// something else by then.
    pub dir: bool,
}

/// The ruleset `run` applies to the agent right before `exec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The Landlock ABI planned for.
    pub abi: u32,
    /// Rights refused except beneath [`Plan::grants`].
    pub handled: u64,
    /// `LANDLOCK_SCOPE_*` restrictions (ABI 6 and later).
    pub scoped: u64,
    pub classes: Vec<Class>,
    pub grants: Vec<Grant>,
    /// Rule paths Landlock does not express, left to the eBPF hooks.
    pub ebpf_only: Vec<String>,
}

/// At most this many rules per ruleset: a class that needs more is left
/// to the eBPF hooks alone.
pub const MAX_GRANTS: usize = 4096;

/// Plans the ruleset for `policy` (after the built-in protection was
/// added) on a kernel with Landlock ABI `abi`, for the classes `wanted`
/// (those no BPF LSM hook enforces).
pub fn plan(policy: &CompiledPolicy, tree: &dyn Tree, abi: u32, wanted: &[Class]) -> Plan {
    let judge = Judge { policy };
    let mut grants: BTreeMap<PathBuf, (u64, bool)> = BTreeMap::new();
    let mut classes = Vec::new();
    let mut ebpf_only = Vec::new();
    for &class in wanted {
        let mut walk = Walk { judge: &judge, tree, class, abi, grants: Vec::new(), ebpf_only: Vec::new() };
        walk.dir(Path::new("/"));
        if walk.grants.len() > MAX_GRANTS {
            ebpf_only.push(format!("{}: more than {MAX_GRANTS} Landlock rules needed", class.as_str()));
            continue;
        }
        classes.push(class);
        ebpf_only.extend(walk.ebpf_only);
        for (path, access, dir) in walk.grants {
            let slot = grants.entry(path).or_insert((0, dir));
            slot.0 |= access;
        }
    }
    let handled = classes.iter().fold(0, |m, c| m | c.rights(abi));
    ebpf_only.sort();
    ebpf_only.dedup();
    Plan {
        abi,
        handled,
        scoped: if abi >= 6 { scope::SIGNAL } else { 0 },
        classes,
        grants: grants.into_iter().map(|(path, (access, dir))| Grant { path, access, dir }).collect(),
        ebpf_only,
    }
}

/// The compiled policy's verdicts, looked up as the kernel's tries do.
struct Judge<'a> {
    policy: &'a CompiledPolicy,
}

impl Judge<'_> {
    /// Whether the kernel lets `class` through for a lookup of `key` (the
    /// path bytes and, for a path itself, its NUL).
    fn allows(&self, class: Class, key: &[u8]) -> bool {
        let p = self.policy;
        let v = match class {
            Class::Read => lpm(&p.file, key).map_or(default(p.config.file_default), |v| v.read),
            Class::Write => lpm(&p.file, key).map_or(default(p.config.file_default), |v| v.write),
            Class::Exec => lpm(&p.exec, key).copied().unwrap_or(default(p.config.exec_default)),
        };
        p.decision(v) != Action::Deny
    }

    /// The class's entry prefixes strictly below directory `prefix` (which
    /// ends in `/`) whose outcome differs from `outcome`.
    fn differs_below(&self, class: Class, prefix: &[u8], outcome: bool) -> Vec<&[u8]> {
        let below = |e: &&[u8]| e.len() > prefix.len() && e.starts_with(prefix);
        let keys: Vec<&[u8]> = match class {
            Class::Read | Class::Write => self.policy.file.iter().map(|e| &e.prefix[..]).filter(below).collect(),
            Class::Exec => self.policy.exec.iter().map(|e| &e.prefix[..]).filter(below).collect(),
        };
        keys.into_iter().filter(|k| self.allows(class, k) != outcome).collect()
    }
}

fn default(action: u8) -> PolicyVerdict {
    PolicyVerdict { rule_id: RULE_DEFAULT, action, _pad: [0; 3] }
}

/// The value of the longest entry that is a prefix of `key`.
fn lpm<'a, V>(entries: &'a [PathEntry<V>], key: &[u8]) -> Option<&'a V> {
    entries.iter().filter(|e| key.starts_with(&e.prefix)).max_by_key(|e| e.prefix.len()).map(|e| &e.value)
}

struct Walk<'a> {
    judge: &'a Judge<'a>,
    tree: &'a dyn Tree,
    class: Class,
    abi: u32,
    grants: Vec<(PathBuf, u64, bool)>,
    ebpf_only: Vec<String>,
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Path) {
        // Stop early once over the bound: the class is dropped anyway.
        if self.grants.len() > MAX_GRANTS {
            return;
        }
        let below = below_prefix(dir);
        let subtree = self.judge.allows(self.class, &below);
        let itself = self.judge.allows(self.class, &nul_terminated(dir));
        let differs = self.judge.differs_below(self.class, &below, subtree);
        if differs.is_empty() && itself == subtree {
            if subtree {
                self.grants.push((dir.to_owned(), self.class.rights(self.abi), true));
            }
            return;
        }
        if self.tree.volatile(dir) && subtree {
            self.grants.push((dir.to_owned(), self.class.rights(self.abi), true));
            self.ebpf_only.extend(differs.iter().map(|k| display_key(k)));
            return;
        }
        if itself && self.class.split_rights() != 0 {
            self.grants.push((dir.to_owned(), self.class.split_rights(), true));
        }
        for (name, kind) in self.tree.entries(dir) {
            let path = dir.join(&name);
            match kind {
                Kind::Dir => self.dir(&path),
                Kind::File => {
                    let rights = self.class.rights(self.abi) & fs::FILE;
                    if rights != 0 && self.judge.allows(self.class, &nul_terminated(&path)) {
                        self.grants.push((path, rights, false));
                    }
                }
                Kind::Symlink => {}
            }
        }
    }
}

/// `"/a/b/"` for `/a/b`, `"/"` for `/`: the lookup key of what is below.
fn below_prefix(dir: &Path) -> Vec<u8> {
    let mut k = dir.as_os_str().as_bytes().to_vec();
    if k.last() != Some(&b'/') {
        k.push(b'/');
    }
    k
}

fn nul_terminated(path: &Path) -> Vec<u8> {
    let mut k = path.as_os_str().as_bytes().to_vec();
    k.push(0);
    k
}

/// An entry prefix as the path it names: `/a/b` for both `/a/b/` and
/// `/a/b\0`.
fn display_key(k: &[u8]) -> String {
    let k = k.strip_suffix(&[0]).or_else(|| k.strip_suffix(b"/")).unwrap_or(k);
    String::from_utf8_lossy(k).into_owned()
}

/// The real filesystem as the agent will see it: through `root`, the
/// `/proc/<pid>/root` of the `run` process (its mount namespace, not the
/// daemon's, which a service unit narrows with `ProtectHome=` and
/// `PrivateTmp=`).
pub struct Disk {
    pub root: PathBuf,
}

impl Disk {
    fn at(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }
}

impl Tree for Disk {
    fn entries(&self, dir: &Path) -> Vec<(OsString, Kind)> {
        let Ok(read) = std::fs::read_dir(self.at(dir)) else {
            return Vec::new();
        };
        let mut out: Vec<(OsString, Kind)> = read
            .filter_map(Result::ok)
            .filter_map(|e| {
                let t = e.file_type().ok()?;
                let kind = if t.is_symlink() {
                    Kind::Symlink
                } else if t.is_dir() {
                    Kind::Dir
                } else {
                    Kind::File
                };
                Some((e.file_name(), kind))
            })
            .collect();
        out.sort();
        out
    }

    fn volatile(&self, dir: &Path) -> bool {
        const PROC_SUPER_MAGIC: i64 = 0x9fa0;
        let Ok(c) = std::ffi::CString::new(self.at(dir).into_os_string().into_vec()) else {
            return false;
        };
        // SAFETY: all-zero is a valid `statfs`.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a buffer of the right type.
        unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == PROC_SUPER_MAGIC }
    }
}
