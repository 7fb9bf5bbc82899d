//! cgroup v2: finding the hierarchy, and the trajectory cgroups the daemon
//! owns below one parent directory.
//!
//! The cgroup2 mount is discovered from `/proc/self/mountinfo` (hosts differ:
//! unified at `/sys/fs/cgroup`, hybrid at `/sys/fs/cgroup/unified`). A cgroup's
//! id, as `bpf_get_current_cgroup_id()` returns it, is the inode number of its
//! directory. Plain filesystem calls are enough here: cgroups-rs manages
//! controllers, which trajectories do not need, and assumes a fixed mount.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] io::Error),
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`")]
    NotMounted,
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError::Io { op, path, source }
}

/// The cgroup2 hierarchy as mounted in this mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Depth of the mount's root inside the hierarchy (0 unless only a
    /// subtree is mounted, e.g. inside a cgroup namespace).
    pub root_level: u32,
}

impl Hierarchy {
    pub fn discover() -> Result<Self, CgroupError> {
        let text = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
        parse_mountinfo(&text).ok_or(CgroupError::NotMounted)
    }

    /// The cgroup level of a directory below the mount point: the hierarchy
    /// root is 0.
    pub fn level_of(&self, path: &Path) -> Option<u32> {
        let rel = path.strip_prefix(&self.mount_point).ok()?;
        let depth = rel.components().filter(|c| matches!(c, Component::Normal(_))).count();
        Some(self.root_level + depth as u32)
    }
}

/// Finds the first cgroup2 mount. Fields: id parent dev root mount_point
/// options [optional...] - fstype source super_options.
fn parse_mountinfo(text: &str) -> Option<Hierarchy> {
    text.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = pre.split_whitespace();
        let root = unescape(fields.nth(3)?);
        let mount_point = PathBuf::from(unescape(fields.next()?));
        let root_level = Path::new(&root).components().filter(|c| matches!(c, Component::Normal(_))).count() as u32;
        Some(Hierarchy { mount_point, root_level })
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup id the kernel reports for the cgroup at `path`.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    Ok(fs::metadata(path).map_err(io_err("stat", path))?.ino())
}

/// Creates `path` (and missing parents) as cgroup directories.
pub fn create_all(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(path).map_err(io_err("mkdir", path))
}

/// Creates one new cgroup; fails if it already exists.
pub fn create(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir(path).map_err(io_err("mkdir", path))
}

/// Moves process `pid` (all its threads) into the cgroup at `path`.
pub fn move_process(path: &Path, pid: u32) -> Result<(), CgroupError> {
    let procs = path.join("cgroup.procs");
    let mut f = fs::OpenOptions::new().write(true).open(&procs).map_err(io_err("open", &procs))?;
    f.write_all(format!("{pid}\n").as_bytes()).map_err(io_err("write", &procs))
}

/// The cgroup2 directory of process `pid` (`0::` line of
/// `/proc/<pid>/cgroup`), `None` if the process is gone.
pub fn of_process(h: &Hierarchy, pid: u32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(h.mount_point.join(rel.trim_start_matches('/')))
}

/// Pids of every process in the cgroup at `path` and below it.
pub fn procs_tree(path: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for child in children(path).unwrap_or_default() {
        pids.extend(procs_tree(&child));
    }
    pids
}

/// Whether any process lives in the cgroup or below it (`cgroup.events`).
pub fn is_populated(path: &Path) -> Result<bool, CgroupError> {
    let events = path.join("cgroup.events");
    let text = fs::read_to_string(&events).map_err(io_err("read", &events))?;
    Ok(parse_populated(&text))
}

fn parse_populated(events: &str) -> bool {
    events.lines().any(|l| l.trim() == "populated 1")
}

/// Removes an empty cgroup and every (empty) cgroup below it, deepest first.
/// A trajectory may have created child cgroups of its own.
pub fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("readdir", path)(e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("rmdir", path)(e)),
        _ => Ok(()),
    }
}

/// Direct child cgroups of `path`.
pub fn children(path: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(path).map_err(io_err("readdir", path))?.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Locks the daemon's cgroup parent (`flock` on the directory), held while
/// the returned file is open: two daemons sharing a cgroup parent would
/// rebind each other's trajectories and retire each other's programs.
/// Fails at once if another process holds it.
pub fn lock_parent(parent: &Path) -> Result<std::fs::File, CgroupError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(parent).map_err(io_err("open", parent))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        let e = if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::other("another agent-monitor daemon runs with this cgroup parent (it holds the lock)")
        } else {
            e
        };
        return Err(io_err("lock", parent)(e));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let h = parse_mountinfo(HYBRID).unwrap();
        assert_eq!(h.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(h.root_level, 0);
        assert_eq!(h.level_of(Path::new("/sys/fs/cgroup/unified/agent-monitor/t1")), Some(2));
        assert_eq!(h.level_of(Path::new("/elsewhere")), None);
    }

    #[test]
    fn unified_layout_with_optional_fields_and_escapes() {
        let line = "29 23 0:26 /user.slice /sys/fs/cgroup\\040x rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = parse_mountinfo(line).unwrap();
        assert_eq!(h.mount_point, PathBuf::from("/sys/fs/cgroup x"));
        assert_eq!(h.root_level, 1);
    }

    #[test]
    fn no_cgroup2_mount() {
        assert_eq!(parse_mountinfo("40 31 0:37 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), None);
    }

    #[test]
    fn populated_flag() {
        assert!(parse_populated("populated 1\nfrozen 0\n"));
        assert!(!parse_populated("populated 0\nfrozen 0\n"));
    }
}
