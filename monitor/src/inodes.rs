//! Files of read-deny rules by identity.
//!
//! A path rule names a file by one of its names. A hard link gives the same
//! inode another name, a rename moves it, and under the new name the path
//! rules judge it as whatever that path is. So when an instance opens, the
//! daemon walks what its read-deny rules name and writes the identity
//! (device, inode number) of every file and directory they deny into the
//! inode map, with the verdicts of its path; the kernel's file check
//! (`monitor-ebpf/src/file.rs`) looks each opened inode up there when the
//! path it was opened by is allowed. Directories walked are watched with
//! inotify, so a file created in (or moved into) one later is added too.
//!
//! Bounded: at most [`MAX_INODES_PER_INSTANCE`] identities per instance, a
//! walk visits at most four times that many entries, and pseudo filesystems
//! (proc, sysfs, cgroup, bpf, ...) are not walked: their files have no
//! second name. Beyond the bound the rest is judged by path only, and the
//! daemon logs it.

use std::{
    collections::{HashMap, HashSet},
    ffi::{OsStr, OsString},
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use futures_util::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask};
use monitor_common::policy::{FileValue, InodeKey, MAX_INODES_PER_INSTANCE};

use crate::policy::{compile::CompiledPolicy, model::Action};

/// `statfs` magic numbers of filesystems not walked.
const PSEUDO_FS: &[i64] = &[
    0x9fa0,      // proc
    0x6265_6572, // sysfs
    0x6367_7270, // cgroup2
    0x0027_e0eb, // cgroup
    0xcafe_4a11, // bpf
    0x6462_6720, // debugfs
    0x7472_6163, // tracefs
    0x7363_6673, // securityfs
    0x1cd1,      // devpts
];

/// A file's identity as the kernel reads it: the superblock's `s_dev` in
/// the kernel's encoding (`major << 20 | minor`, not the `st_dev` of
/// `stat`), and the inode number.
pub fn identity(meta: &std::fs::Metadata) -> (u32, u64) {
    let dev = meta.dev();
    ((libc::major(dev) << 20) | libc::minor(dev), meta.ino())
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Found {
    pub inodes: Vec<((u32, u64), FileValue)>,
    /// Directories walked, to watch for new entries.
    pub dirs: Vec<PathBuf>,
    /// The bound stopped the walk.
    pub capped: bool,
}

impl Found {
    /// The inode map entries for instance `policy`.
    pub fn keyed(&self, policy: u32) -> Vec<(InodeKey, FileValue)> {
        self.inodes.iter().map(|&((dev, ino), v)| (InodeKey { policy, dev, ino }, v)).collect()
    }
}

/// Walks everything `policy`'s read-deny rules name.
pub fn read_denied(policy: &CompiledPolicy) -> Found {
    let mut walk = Walk::new(policy, MAX_INODES_PER_INSTANCE);
    for root in policy.read_denied() {
        walk.tree(Path::new(OsStr::from_bytes(root)));
    }
    walk.found
}

/// One instance's walk: what it found and what it has seen.
struct Walk<'a> {
    policy: &'a CompiledPolicy,
    cap: usize,
    budget: usize,
    seen: HashSet<(u32, u64)>,
    pseudo: HashMap<u64, bool>,
    found: Found,
}

impl<'a> Walk<'a> {
    fn new(policy: &'a CompiledPolicy, cap: usize) -> Self {
        Walk { policy, cap, budget: cap * 4, seen: HashSet::new(), pseudo: HashMap::new(), found: Found::default() }
    }

    /// Visits `root` and, for a directory, everything below it, without
    /// following symbolic links.
    fn tree(&mut self, root: &Path) {
        let mut stack = vec![root.to_path_buf()];
        while let Some(path) = stack.pop() {
            if self.found.capped {
                return;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.file_type().is_symlink() || !self.visit(&path, &meta) {
                continue;
            }
            if meta.is_dir() && !self.is_pseudo(&path, meta.dev()) {
                self.found.dirs.push(path.clone());
                if let Ok(entries) = std::fs::read_dir(&path) {
                    stack.extend(entries.flatten().map(|e| e.path()));
                }
            }
        }
    }

    /// Records `path` when its reads are denied; false when it was seen
    /// already (a second name, or a root under another root).
    fn visit(&mut self, path: &Path, meta: &std::fs::Metadata) -> bool {
        let id = identity(meta);
        if !self.seen.insert(id) {
            return false;
        }
        if self.budget == 0 {
            self.found.capped = true;
            return false;
        }
        self.budget -= 1;
        let value = self.policy.file_value(path.as_os_str().as_bytes());
        if value.read.action == Action::Deny.to_abi() {
            if self.found.inodes.len() >= self.cap {
                self.found.capped = true;
                return false;
            }
            self.found.inodes.push((id, value));
        }
        true
    }

    fn is_pseudo(&mut self, path: &Path, dev: u64) -> bool {
        *self.pseudo.entry(dev).or_insert_with(|| {
            let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return true };
            // SAFETY: `statfs` is plain data; all zeroes is a valid value.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: a valid C string and a buffer of the right type.
            if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
                return true;
            }
            #[allow(clippy::unnecessary_cast)]
            PSEUDO_FS.contains(&(st.f_type as i64))
        })
    }
}

/// Walks `path` (a new entry of a watched directory) for an instance that
/// already holds `held` identities.
pub fn read_denied_below(policy: &CompiledPolicy, path: &Path, held: usize) -> Found {
    let mut walk = Walk::new(policy, MAX_INODES_PER_INSTANCE.saturating_sub(held));
    walk.tree(path);
    walk.found
}

/// The inotify watches on walked directories: which instances each serves.
pub struct Watch {
    stream: EventStream<[u8; 4096]>,
    dirs: HashMap<WatchDescriptor, (PathBuf, Vec<u32>)>,
}

/// What a watched directory reported.
pub enum Change {
    /// A new entry (created, or moved in) and the instances watching.
    Created { path: PathBuf, instances: Vec<u32> },
    /// The kernel's queue overflowed: changes were lost, walk again.
    Overflow,
}

impl Watch {
    /// Needs a tokio runtime (the stream registers with its reactor).
    pub fn new() -> std::io::Result<Self> {
        Ok(Watch { stream: Inotify::init()?.into_event_stream([0u8; 4096])?, dirs: HashMap::new() })
    }

    /// Watches `dirs` for `instance`; a directory that cannot be watched
    /// (the watch limit) is logged and left to its path rules.
    pub fn add(&mut self, instance: u32, dirs: &[PathBuf]) {
        let mask = WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR | WatchMask::DONT_FOLLOW;
        for dir in dirs {
            match self.stream.watches().add(dir, mask) {
                Ok(wd) => {
                    let slot = self.dirs.entry(wd).or_insert_with(|| (dir.clone(), Vec::new()));
                    if !slot.1.contains(&instance) {
                        slot.1.push(instance);
                    }
                }
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    "cannot watch a read-denied directory for new files ({e}): files created there later are judged by path only"
                ),
            }
        }
    }

    /// Stops serving `instance`; drops watches no instance needs.
    pub fn remove(&mut self, instance: u32) {
        let mut unused = Vec::new();
        for (wd, (_, instances)) in self.dirs.iter_mut() {
            instances.retain(|&i| i != instance);
            if instances.is_empty() {
                unused.push(wd.clone());
            }
        }
        for wd in unused {
            self.dirs.remove(&wd);
            let _ = self.stream.watches().remove(wd);
        }
    }

    /// The next change; pending forever when nothing is watched.
    pub async fn next(&mut self) -> Change {
        loop {
            let Some(Ok(event)) = self.stream.next().await else {
                return std::future::pending().await;
            };
            if event.mask.contains(EventMask::Q_OVERFLOW) {
                return Change::Overflow;
            }
            if event.mask.contains(EventMask::IGNORED) {
                self.dirs.remove(&event.wd);
                continue;
            }
            let (Some((dir, instances)), Some(name)) = (self.dirs.get(&event.wd), event.name) else { continue };
            return Change::Created { path: dir.join::<OsString>(name), instances: instances.clone() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySet, Vars};

    fn compiled(dir: &Path) -> CompiledPolicy {
        let yaml = format!(
            "name: t\nmode: enforce\ndefaults: {{file: allow, exec: allow, network: allow}}\nrules:\n  file:\n    - {{path: {d}/secret/, access: read, action: deny}}\n    - {{path: {d}/secret/open/, access: read, action: allow}}\n",
            d = dir.display()
        );
        let set = PolicySet::from_sources(&[(PathBuf::from("t.yaml"), yaml)]).unwrap();
        set.open("t", &Vars::default()).unwrap()
    }

    #[test]
    fn the_walk_finds_denied_files_and_directories_but_not_allowed_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("secret");
        std::fs::create_dir_all(secret.join("sub")).unwrap();
        std::fs::create_dir_all(secret.join("open")).unwrap();
        std::fs::write(secret.join("key"), "k").unwrap();
        std::fs::write(secret.join("sub/deep"), "d").unwrap();
        std::fs::write(secret.join("open/fine"), "f").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", secret.join("link")).unwrap();
        let found = read_denied(&compiled(tmp.path()));
        let id = |p: &str| identity(&std::fs::symlink_metadata(secret.join(p)).unwrap());
        let ids: HashSet<(u32, u64)> = found.inodes.iter().map(|(i, _)| *i).collect();
        for denied in ["", "key", "sub", "sub/deep"] {
            assert!(ids.contains(&id(denied)), "{denied} missing: {found:?}");
        }
        for allowed in ["open", "open/fine", "link"] {
            assert!(!ids.contains(&id(allowed)), "{allowed} must not be there");
        }
        assert!(!found.capped);
        assert!(found.dirs.contains(&secret) && found.dirs.contains(&secret.join("sub")));
        // The kernel's encoding of the device: major << 20 | minor.
        let st_dev = std::fs::metadata(&secret).unwrap().dev();
        assert_eq!(id("").0, (libc::major(st_dev) << 20) | libc::minor(st_dev));
    }

    #[test]
    fn the_walk_stops_at_its_bound_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("secret");
        std::fs::create_dir_all(&secret).unwrap();
        for i in 0..10 {
            std::fs::write(secret.join(format!("f{i}")), "x").unwrap();
        }
        let policy = compiled(tmp.path());
        let found = read_denied_below(&policy, &secret, MAX_INODES_PER_INSTANCE - 4);
        assert_eq!(found.inodes.len(), 4);
        assert!(found.capped);
    }
}
