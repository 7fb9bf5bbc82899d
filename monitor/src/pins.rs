//! Continuity: the kernel side outlives the daemon.
//!
//! Every attached program's link and every map that holds state (the
//! trajectory bindings, the policy instances, the loss counters, the ring
//! buffer) is pinned under bpffs, so when the daemon dies (SIGKILL, OOM, a
//! crash, or a clean stop) the kernel keeps judging and recording every
//! open trajectory. The layout:
//!
//! ```text
//! <pin dir>/<daemon key>/<layout>/maps/<MAP>
//! <pin dir>/<daemon key>/<layout>/links/<generation>/<hook>
//! ```
//!
//! The *daemon key* names the daemon instance by its cgroup parent, so two
//! daemons on one host never share pins. The *layout* is a digest of
//! [`LAYOUT_VERSION`] and every pinned map's type, key and value sizes,
//! entry count and flags as the embedded object defines them: a daemon
//! reuses maps only from a directory of exactly its own layout. A
//! *generation* is one daemon start.
//!
//! Start-up order, so that no operation goes unjudged: load (reusing the
//! maps of a matching layout), attach the new programs and pin their links,
//! re-register the trajectories (the daemon's part), and only then remove
//! the older generations' links and any other layout's directory
//! ([`PinDir::retire_old`]): for an instant both generations run, each
//! refusing what the policy refuses.

use std::{
    io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use monitor_common::names;

use crate::{
    hash::Fnv,
    mounts::{self, on_bpffs},
};

/// Bump when a pinned map keeps its sizes but changes meaning (a field
/// reordered within a value, a key encoded differently): the digest below
/// catches every change of size, type, entry count or flags by itself.
pub const LAYOUT_VERSION: u32 = 1;

/// The layout version this build pins with: [`LAYOUT_VERSION`], unless a
/// build overrode it before starting ([`build_with_layout_version`]).
static BUILD_LAYOUT_VERSION: AtomicU32 = AtomicU32::new(LAYOUT_VERSION);

/// Makes this build pin with layout `version`. Only the upgrade test's
/// older build (`tests/previous_layout`) calls it, before `app::main`:
/// that executable stands for a release whose layout differs, so that a
/// hand-over between two separately built daemons is tested end to end.
pub fn build_with_layout_version(version: u32) {
    BUILD_LAYOUT_VERSION.store(version, Ordering::Relaxed);
}

/// The maps that carry state from one daemon to the next. The others are
/// per-CPU scratch space or the LSM self-test's counters.
pub const PINNED_MAPS: &[&str] = &[
    names::MAP_EVENTS,
    names::MAP_TRAJECTORIES,
    names::MAP_TRAJECTORY_LOSSES,
    names::MAP_CONFIG,
    names::MAP_LOSSES,
    names::MAP_POLICY_CONFIG,
    names::MAP_POLICY_FILE,
    names::MAP_POLICY_EXEC,
    names::MAP_POLICY_NET4,
    names::MAP_POLICY_NET6,
    names::MAP_POLICY_INODES,
    names::MAP_OPEN_INFLIGHT,
];

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read the embedded eBPF object's maps: {0}")]
    Object(String),
    #[error("{path} is not on a BPF filesystem (mount bpffs there, e.g. `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io { path: path.display().to_string(), source }
}

/// The layout digest of `object` with the ring buffer sized `ringbuf_bytes`
/// (the one size the daemon overrides at load): 16 hex digits, FNV-1a.
pub fn layout_id(object: &[u8], ringbuf_bytes: u32) -> Result<String, PinError> {
    layout_digest(object, ringbuf_bytes, BUILD_LAYOUT_VERSION.load(Ordering::Relaxed))
}

fn layout_digest(object: &[u8], ringbuf_bytes: u32, version: u32) -> Result<String, PinError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| PinError::Object(e.to_string()))?;
    let mut h = Fnv::new();
    h.u32(version);
    for name in PINNED_MAPS {
        let m = obj.maps.get(*name).ok_or_else(|| PinError::Object(format!("no map {name}")))?;
        let entries = if *name == names::MAP_EVENTS { ringbuf_bytes } else { m.max_entries() };
        h.bytes(name.as_bytes());
        for v in [m.map_type(), m.key_size(), m.value_size(), entries, m.map_flags()] {
            h.u32(v);
        }
    }
    Ok(format!("{:016x}", h.0))
}

/// The directory name of a daemon instance: its cgroup parent with `/`
/// spelled `+` (cgroup names are plain components).
pub fn daemon_key(cgroup_parent: &Path) -> String {
    cgroup_parent.to_string_lossy().trim_matches('/').replace('/', "+")
}

/// One daemon's pins.
#[derive(Debug)]
pub struct PinDir {
    /// `<pin dir>/<daemon key>`: every layout of this daemon instance.
    root: PathBuf,
    /// `root/<layout>`.
    dir: PathBuf,
    generation: String,
    /// The maps were there before this start: a previous daemon of the same
    /// layout left them, with its trajectories' bindings and records.
    pub reused: bool,
    /// Layout directories of other layouts found at start.
    pub foreign: Vec<PathBuf>,
}

impl PinDir {
    /// Creates `<base>/<key>/<layout>/{maps,links/<generation>}`, mounting
    /// bpffs at `base` first if the path is not on one.
    pub fn prepare(base: &Path, key: &str, layout: &str) -> Result<PinDir, PinError> {
        if !on_bpffs(base) {
            if base.starts_with(mounts::BPFFS) {
                if let Err(e) = mounts::mount_bpffs() {
                    tracing::warn!("cannot mount bpffs at {}: {e}", mounts::BPFFS);
                }
            }
            if !on_bpffs(base) {
                return Err(PinError::NotBpffs { path: base.display().to_string() });
            }
        }
        let root = base.join(key);
        let dir = root.join(format!("layout-{layout}"));
        let reused = dir.join("maps").join(names::MAP_TRAJECTORIES).exists();
        let foreign = std::fs::read_dir(&root)
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| *p != dir).collect())
            .unwrap_or_default();
        let generation = format!("g{:020}", crate::clock::boottime_ns());
        for d in [dir.join("maps"), dir.join("links").join(&generation)] {
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(PinDir { root, dir, generation, reused, foreign })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map_path(&self, map: &str) -> PathBuf {
        self.dir.join("maps").join(map)
    }

    pub fn link_path(&self, hook: &str) -> PathBuf {
        let name: String = hook.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        self.dir.join("links").join(&self.generation).join(name)
    }

    /// Earlier generations of this layout: links a previous daemon left.
    pub fn older_generations(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.join("links"))
            .map(|rd| {
                rd.flatten().map(|e| e.path()).filter(|p| p.file_name() != Some(self.generation.as_ref())).collect()
            })
            .unwrap_or_default()
    }

    /// Detaches what earlier daemons left (their links: the kernel drops a
    /// link with its last pin), then deletes other layouts' maps, unless
    /// `!foreign_too`: those stay, programs and bindings. Call once this
    /// daemon's links are pinned and its trajectories registered. Returns
    /// the number of link pins removed.
    pub fn retire_old(&self, foreign_too: bool) -> usize {
        let mut removed = 0;
        for g in self.older_generations() {
            removed += remove_tree(&g);
        }
        if !foreign_too {
            return removed;
        }
        for old in &self.foreign {
            // Links first: the old programs stop before their maps go.
            removed += remove_tree(&old.join("links"));
            remove_tree(old);
        }
        removed
    }

    /// Undoes this start's pins if the start fails before it takes over
    /// (dropped armed): a daemon that refuses to start must not leave
    /// programs attached that nobody will ever detach.
    pub fn start_guard(&self) -> StartGuard {
        let created_alone = !self.reused && self.foreign.is_empty();
        StartGuard {
            generation: self.dir.join("links").join(&self.generation),
            created: created_alone.then(|| self.root.clone()),
            armed: true,
        }
    }

    /// `--stop-enforcement-on-exit`: removes every pin of this daemon
    /// instance; the programs detach when the daemon closes its last
    /// descriptors.
    pub fn remove_all(&self) {
        remove_tree(&self.root);
    }
}

/// See [`PinDir::start_guard`].
pub struct StartGuard {
    generation: PathBuf,
    /// The daemon's whole directory, when this start created it.
    created: Option<PathBuf>,
    armed: bool,
}

impl StartGuard {
    /// The daemon has taken over: its pins stay whatever happens next.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if self.armed {
            remove_tree(&self.generation);
            if let Some(root) = &self.created {
                remove_tree(root);
            }
        }
    }
}

/// Removes a directory tree on bpffs; returns the number of files removed.
fn remove_tree(path: &Path) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += remove_tree(&p);
            } else if std::fs::remove_file(&p).is_ok() {
                n += 1;
            } else {
                tracing::warn!(pin = %p.display(), "cannot remove pin");
            }
        }
        let _ = std::fs::remove_dir(path);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_follows_the_maps_and_the_ring_size() {
        let object = crate::loader::EBPF_OBJECT;
        let a = layout_id(object, 1 << 20).unwrap();
        assert_eq!(a.len(), 16);
        assert_eq!(a, layout_id(object, 1 << 20).unwrap());
        assert_ne!(a, layout_id(object, 1 << 21).unwrap());
        assert_eq!(a, layout_digest(object, 1 << 20, LAYOUT_VERSION).unwrap());
        assert_ne!(a, layout_digest(object, 1 << 20, LAYOUT_VERSION + 1).unwrap());
    }

    #[test]
    fn keys_name_the_cgroup_parent() {
        assert_eq!(daemon_key(Path::new("agent-monitor")), "agent-monitor");
        assert_eq!(daemon_key(Path::new("ops.service/trajectories")), "ops.service+trajectories");
    }
}
