//! What a daemon keeps on disk about each open trajectory, so that the next
//! daemon (after a crash, a SIGKILL or an upgrade) resumes its stream while
//! the kernel, through the pins, never stopped judging it.
//!
//! Per trajectory, in the state directory (`<state dir>/<daemon key>/`):
//!
//! * `<id>.json`: what it is (cgroup, policy and variables, origin, start),
//!   written once when it opens;
//! * `<id>.seq`: 24 bytes, rewritten in place before every batch that
//!   carries its records is published: the next `seq`, the kernel losses
//!   already reported in `gap` records, and when this was written. A
//!   restarted daemon continues at that `seq`, so no number is ever used
//!   twice; numbers the dead daemon had assigned to records it never wrote
//!   are skipped (the restart's `gap` record follows them and counts them,
//!   from the file sink's mark, `.sink-mark`, see `sinks::jsonl`);
//! * `<id>.steps`: one line per `step` call, so records keep their step
//!   names across a restart.
//!
//! Files are written with plain `write`, without `fsync`: they must outlive
//! the daemon's process, not the machine (trajectories do not survive a
//! reboot either).
//!
//! `<id>.json` names the format of all three ([`STATE_FORMAT`]). A daemon
//! reads only its own format: a release that changes one bumps it and
//! reads the formats before it. A file it cannot read (another format, a
//! torn or edited file) is reported by [`StateDir::load`], and the daemon
//! then leaves the previous daemon's bindings and pins in place, so that
//! trajectory stays judged though its stream is not resumed.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, BufRead, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::vocab::Origin;

/// The format of the state files this build writes and reads.
pub const STATE_FORMAT: u32 = 1;

fn format_1() -> u32 {
    1
}

/// `<id>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// [`STATE_FORMAT`] of the writer (absent: 1, the first).
    #[serde(default = "format_1")]
    pub format: u32,
    pub id: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub level: u32,
    /// `run` or `adopt`; anything else makes the file unreadable.
    pub origin: Origin,
    pub policy: String,
    pub vars: BTreeMap<String, String>,
    /// CLOCK_BOOTTIME at the trajectory's start.
    pub started_boot_ns: u64,
    /// Digest of the policy set's rule table when it opened: records the
    /// kernel took under that instance are named with the current set only
    /// if it still has the same table.
    pub rules_digest: u64,
    /// Who the agent started as (`run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<crate::account::AgentIdentity>,
    /// Its limits and where they are, when its policy set any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compartment: Option<crate::limits::Compartment>,
    /// Its Landlock layer, which names the refusals it causes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landlock: Option<crate::landlock::Layer>,
}

/// `<id>.seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub next_seq: u64,
    pub lost_reported: u64,
    /// CLOCK_BOOTTIME of the write: the daemon was alive then.
    pub alive_boot_ns: u64,
}

impl Progress {
    fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&self.next_seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.lost_reported.to_le_bytes());
        b[16..].copy_from_slice(&self.alive_boot_ns.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Progress> {
        let word = |i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
        Some(Progress { next_seq: word(0)?, lost_reported: word(8)?, alive_boot_ns: word(16)? })
    }
}

/// A trajectory found in the state directory.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    pub saved: Saved,
    pub progress: Progress,
    /// Step names in call order (the last is the current step).
    pub steps: Vec<(u32, String)>,
}

#[derive(Serialize, Deserialize)]
struct StepLine {
    id: u32,
    name: String,
}

/// The state directory of one daemon instance.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// Open handles of one trajectory's files.
#[derive(Debug)]
pub struct Files {
    seq: File,
    steps: File,
}

impl StateDir {
    pub fn create(dir: PathBuf) -> io::Result<StateDir> {
        std::fs::create_dir_all(&dir)?;
        Ok(StateDir { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    /// Writes a new trajectory's files.
    pub fn open(&self, saved: &Saved, progress: Progress) -> io::Result<Files> {
        let json = serde_json::to_vec(saved).map_err(io::Error::other)?;
        write_replace(&self.file(&saved.id, "json"), &json)?;
        self.files(&saved.id, progress, true)
    }

    /// Opens a resumed trajectory's files for writing.
    pub fn reopen(&self, id: &str, progress: Progress) -> io::Result<Files> {
        self.files(id, progress, false)
    }

    fn files(&self, id: &str, progress: Progress, new: bool) -> io::Result<Files> {
        let seq = OpenOptions::new().create(true).write(true).truncate(false).open(self.file(id, "seq"))?;
        seq.write_all_at(&progress.encode(), 0)?;
        let steps = self.file(id, "steps");
        if new {
            File::create(&steps)?;
        }
        let steps = OpenOptions::new().create(true).append(true).open(steps)?;
        Ok(Files { seq, steps })
    }

    /// Deletes a closed trajectory's files.
    pub fn remove(&self, id: &str) {
        for ext in ["json", "seq", "steps"] {
            let _ = std::fs::remove_file(self.file(id, ext));
        }
    }

    /// Every trajectory a previous daemon left, in start order, and the
    /// state files that could not be read (each logged with the reason).
    pub fn load(&self) -> (Vec<Found>, Vec<PathBuf>) {
        let (mut found, mut unreadable) = (Vec::new(), Vec::new());
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return (found, unreadable) };
        for e in rd.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match self.load_one(&path) {
                Ok(f) => found.push(f),
                Err(e) => {
                    tracing::error!(
                        file = %path.display(),
                        "unreadable trajectory state, its stream is not resumed; the previous daemon's bindings and \
                         pins are kept so that it stays judged: {e}"
                    );
                    unreadable.push(path);
                }
            }
        }
        found.sort_by_key(|f| f.saved.started_boot_ns);
        (found, unreadable)
    }

    fn load_one(&self, json: &Path) -> io::Result<Found> {
        let saved: Saved = serde_json::from_slice(&std::fs::read(json)?).map_err(io::Error::other)?;
        if saved.format != STATE_FORMAT {
            return Err(io::Error::other(format!(
                "state format {} is not this daemon's ({STATE_FORMAT}): written by another release of agent-monitor",
                saved.format
            )));
        }
        let progress = Progress::decode(&std::fs::read(self.file(&saved.id, "seq"))?)
            .ok_or_else(|| io::Error::other("truncated .seq file"))?;
        let mut steps = Vec::new();
        if let Ok(f) = File::open(self.file(&saved.id, "steps")) {
            // A line cut by the kill is the only one that can be torn.
            for line in io::BufReader::new(f).lines().map_while(Result::ok) {
                if let Ok(s) = serde_json::from_str::<StepLine>(&line) {
                    steps.push((s.id, s.name));
                }
            }
        }
        Ok(Found { saved, progress, steps })
    }
}

impl Files {
    pub fn progress(&self, p: Progress) -> io::Result<()> {
        self.seq.write_all_at(&p.encode(), 0)
    }

    pub fn step(&mut self, id: u32, name: &str) -> io::Result<()> {
        let mut line = serde_json::to_vec(&StepLine { id, name: name.to_owned() }).map_err(io::Error::other)?;
        line.push(b'\n');
        self.steps.write_all(&line)
    }
}

/// Writes `path` through a temporary file and a rename: a reader sees the
/// old or the new contents, never a torn file.
fn write_replace(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::create(dir.path().join("s")).unwrap();
        let saved = Saved {
            format: STATE_FORMAT,
            id: "t1".into(),
            cgroup: "/sys/fs/cgroup/x/t1".into(),
            cgroup_id: 42,
            level: 2,
            origin: Origin::Run,
            policy: "default".into(),
            vars: [("WORKSPACE".to_owned(), "/w".to_owned())].into(),
            started_boot_ns: 7,
            rules_digest: 9,
            agent: None,
            compartment: None,
            landlock: None,
        };
        let mut files = state.open(&saved, Progress { next_seq: 1, ..Default::default() }).unwrap();
        files.step(1, "build").unwrap();
        files.step(2, "test \"x\"").unwrap();
        files.progress(Progress { next_seq: 17, lost_reported: 3, alive_boot_ns: 99 }).unwrap();
        let (found, unreadable) = state.load();
        assert!(unreadable.is_empty());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].saved, saved);
        assert_eq!(found[0].progress, Progress { next_seq: 17, lost_reported: 3, alive_boot_ns: 99 });
        assert_eq!(found[0].steps, vec![(1, "build".to_owned()), (2, "test \"x\"".to_owned())]);
        // Reopening appends to the steps.
        let mut again = state.reopen("t1", found[0].progress).unwrap();
        again.step(3, "lint").unwrap();
        assert_eq!(state.load().0[0].steps.len(), 3);
        state.remove("t1");
        assert_eq!(state.load(), (Vec::new(), Vec::new()));
    }

    #[test]
    fn another_format_or_a_torn_file_is_reported_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::create(dir.path().join("s")).unwrap();
        let json = dir.path().join("s/t1.json");
        // The first format wrote no `format` field: it reads as 1.
        std::fs::write(
            &json,
            r#"{"id":"t1","cgroup":"/c","cgroup_id":1,"level":1,"origin":"run","policy":"p","vars":{},"started_boot_ns":1,"rules_digest":2}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("s/t1.seq"), [0u8; 24]).unwrap();
        assert_eq!(state.load().0.len(), 1);
        let newer = std::fs::read_to_string(&json).unwrap().replacen('{', r#"{"format":2,"#, 1);
        std::fs::write(&json, newer).unwrap();
        assert_eq!(state.load(), (Vec::new(), vec![json.clone()]));
        std::fs::write(&json, "{\"id\":").unwrap();
        assert_eq!(state.load(), (Vec::new(), vec![json]));
    }
}
