//! JSON Lines sink: one [`Record`](crate::record::Record) per line,
//! to stdout or appended to a file. Runs on its own thread so a slow disk
//! never blocks the async runtime; flushes after every batch.
//!
//! A file rotates by size: when it has reached `max_bytes`, after a whole
//! record, it is renamed `FILE.1` (older ones shift to `FILE.2` .. `FILE.N`,
//! the oldest beyond `keep` is deleted) and a new `FILE` is started. A
//! record is never split across files, and none is lost in between: the
//! rotation happens on the sink thread between two writes. On SIGHUP the
//! file is reopened by name, for logrotate and friends that move it away
//! themselves.
//!
//! A file sink keeps a *mark* in the daemon's state directory, rewritten
//! after every batch it has written: how much of which file holds whole
//! records, and each open trajectory's last `seq` written. A daemon killed
//! mid-batch leaves records it had numbered but not written; the next one
//! reads the mark and what follows it in the file ([`recover`]), so it
//! knows exactly which, and cuts a line the kill tore.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Batch;
use crate::record::Body;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// Appended to, created if missing.
    File(PathBuf),
}

/// Size-based rotation of a file output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file has at least this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` .. `FILE.keep`).
    pub keep: u32,
}

/// The sink's mark: the file `ino` holds whole records up to `offset`, all
/// of them written; `last` is each open trajectory's last `seq` written.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub ino: u64,
    pub offset: u64,
    pub last: HashMap<String, u64>,
}

/// The mark a file sink keeps, at `path`, starting from `last` (what
/// [`recover`] found).
pub struct Marking {
    pub path: PathBuf,
    pub last: HashMap<String, u64>,
}

/// Starts the sink; it ends, flushed, when every sender of `rx` is gone.
/// Setting `reopen` makes it reopen its file before the next batch. With
/// `marking`, a file sink rewrites its mark after every batch.
pub fn spawn(
    output: Output,
    rotation: Option<Rotation>,
    reopen: Arc<AtomicBool>,
    mut rx: mpsc::Receiver<Batch>,
    marking: Option<Marking>,
) -> io::Result<JoinHandle<io::Result<()>>> {
    let mut out = match &output {
        Output::Stdout => Sink::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())),
        Output::File(path) => Sink::File(FileSink::open(path.clone(), rotation)?),
    };
    std::thread::Builder::new().name("sink-jsonl".into()).spawn(move || {
        let mut line = Vec::with_capacity(4096);
        let mut marking = marking;
        while let Some(batch) = rx.blocking_recv() {
            if reopen.swap(false, Ordering::Relaxed) {
                if let Sink::File(f) = &mut out {
                    f.reopen()?;
                }
            }
            for record in batch.iter() {
                line.clear();
                serde_json::to_writer(&mut line, record)?;
                line.push(b'\n');
                out.write_record(&line)?;
            }
            out.flush()?;
            if let (Some(m), Sink::File(f)) = (&mut marking, &out) {
                for r in batch.iter() {
                    if matches!(r.body, Body::TrajectoryEnd { .. }) {
                        m.last.remove(&*r.trajectory);
                    } else {
                        m.last.insert(r.trajectory.to_string(), r.seq);
                    }
                }
                let mark = Mark { ino: f.ino, offset: f.size, last: std::mem::take(&mut m.last) };
                let written = write_mark(&m.path, &mark);
                m.last = mark.last;
                if let Err(e) = written {
                    // The records are written; only the next daemon's
                    // count of a kill's unwritten records is at stake.
                    tracing::warn!(mark = %m.path.display(), "cannot write the events file mark: {e}");
                }
            }
        }
        out.flush()
    })
}

fn write_mark(path: &Path, mark: &Mark) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec(mark).map_err(io::Error::other)?)?;
    fs::rename(&tmp, path)
}

/// Before a file sink starts on `path`: reads the previous sink's mark and
/// the records written after it (in `FILE.1` too, if a rotation followed
/// the mark), cuts a trailing line a kill tore, and returns each open
/// trajectory's last `seq` in the file. `None` if that cannot be known:
/// no mark (a first start, or stdout before), or the marked file is
/// neither `FILE` nor `FILE.1` any more (moved away by another tool).
pub fn recover(path: &Path, mark_path: &Path) -> Option<HashMap<String, u64>> {
    let mark: Mark = serde_json::from_slice(&fs::read(mark_path).ok()?).ok()?;
    let ino = |p: &Path| fs::metadata(p).ok().map(|m| m.ino());
    let current = ino(path);
    let rotated = numbered(path, 1);
    let scans: Vec<(&Path, u64)> = if current == Some(mark.ino) {
        vec![(path, mark.offset)]
    } else if ino(&rotated) == Some(mark.ino) {
        vec![(&rotated, mark.offset), (path, 0)]
    } else {
        tracing::warn!(
            file = %path.display(),
            "the events file the sink's mark names is neither this file nor its .1 (moved by another tool, or \
             --events changed): records a killed daemon did not write cannot be counted"
        );
        return None;
    };
    let mut last = mark.last;
    for (file, from) in scans {
        if let Err(e) = scan(file, from, &mut last) {
            tracing::warn!(file = %file.display(), "cannot read the events file after its mark: {e}");
            return None;
        }
    }
    Some(last)
}

#[derive(Deserialize)]
struct Head {
    trajectory: String,
    seq: u64,
    kind: String,
}

/// Reads the whole lines of `file` from byte `from`, updating `last`;
/// truncates the file after its last whole line.
fn scan(file: &Path, from: u64, last: &mut HashMap<String, u64>) -> io::Result<()> {
    let Ok(f) = OpenOptions::new().read(true).write(true).open(file) else { return Ok(()) };
    let mut r = BufReader::with_capacity(1 << 16, &f);
    let mut at = r.seek(SeekFrom::Start(from))?;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        at += n as u64;
        if let Ok(h) = serde_json::from_slice::<Head>(&line) {
            if h.kind == "trajectory_end" {
                last.remove(&h.trajectory);
            } else {
                last.insert(h.trajectory, h.seq);
            }
        }
    }
    if f.metadata()?.len() > at {
        // A line the kill cut: its record counts as unwritten.
        f.set_len(at)?;
    }
    Ok(())
}

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File(FileSink),
}

impl Sink {
    fn write_record(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(w) => w.write_all(line),
            Sink::File(f) => f.write_record(line),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(w) => w.flush(),
            Sink::File(f) => f.w.flush(),
        }
    }
}

struct FileSink {
    path: PathBuf,
    rotation: Option<Rotation>,
    w: BufWriter<File>,
    /// Bytes in the current file.
    size: u64,
    /// Its inode.
    ino: u64,
}

impl FileSink {
    fn open(path: PathBuf, rotation: Option<Rotation>) -> io::Result<Self> {
        let (w, size, ino) = open_append(&path)?;
        Ok(FileSink { path, rotation, w, size, ino })
    }

    fn write_record(&mut self, line: &[u8]) -> io::Result<()> {
        if let Some(r) = self.rotation {
            if self.size >= r.max_bytes {
                self.rotate(r.keep)?;
            }
        }
        self.w.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self, keep: u32) -> io::Result<()> {
        self.w.flush()?;
        let _ = fs::remove_file(numbered(&self.path, keep));
        for n in (1..keep).rev() {
            let from = numbered(&self.path, n);
            if from.exists() {
                fs::rename(&from, numbered(&self.path, n + 1))?;
            }
        }
        fs::rename(&self.path, numbered(&self.path, 1))?;
        self.reopen()
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.w.flush()?;
        let (w, size, ino) = open_append(&self.path)?;
        self.w = w;
        self.size = size;
        self.ino = ino;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<(BufWriter<File>, u64, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open events file {}: {e}", path.display())))?;
    let meta = file.metadata()?;
    Ok((BufWriter::with_capacity(1 << 16, file), meta.len(), meta.ino()))
}

/// `FILE.n`.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::{Body, Process, Record, Timestamp, SCHEMA_VERSION};

    fn record(seq: u64) -> Record {
        Record {
            v: SCHEMA_VERSION,
            ts: Timestamp(0),
            trajectory: "t".into(),
            seq,
            body: Body::Gap { lost: 1, reason: crate::vocab::GapReason::RingbufFull, down_ns: None, unwritten: None },
            process: Process::default(),
            verdict: None,
            step: None,
        }
    }

    fn line(trajectory: &str, seq: u64, kind: &str) -> String {
        format!("{{\"v\":1,\"trajectory\":\"{trajectory}\",\"seq\":{seq},\"kind\":\"{kind}\"}}\n")
    }

    /// The mark after each batch, and what a restart finds after it: the
    /// records a killed sink wrote past its last mark, a line it tore (cut
    /// off), a rotation that followed the mark, a file moved away.
    #[test]
    fn the_mark_and_what_follows_it_give_the_last_seq_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mark = dir.path().join("sink.mark");
        assert_eq!(recover(&path, &mark), None, "no mark: unknown");
        let (tx, rx) = mpsc::channel(16);
        let marking = Marking { path: mark.clone(), last: HashMap::from([("idle".to_owned(), 9)]) };
        let sink =
            spawn(Output::File(path.clone()), None, Arc::new(AtomicBool::new(false)), rx, Some(marking)).unwrap();
        let rec = |t: &str, seq: u64| Record { trajectory: t.into(), ..record(seq) };
        tx.blocking_send(Arc::new(vec![rec("a", 1), rec("b", 1), rec("a", 2)])).unwrap();
        drop(tx);
        sink.join().unwrap().unwrap();
        let m: Mark = serde_json::from_slice(&fs::read(&mark).unwrap()).unwrap();
        assert_eq!(m.offset, fs::metadata(&path).unwrap().len());
        assert_eq!(m.last, HashMap::from([("a".to_owned(), 2), ("b".to_owned(), 1), ("idle".to_owned(), 9)]));

        // Killed after writing more than its mark says, one line torn.
        let whole = format!("{}{}", line("a", 3, "open"), line("b", 2, "trajectory_end"));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(whole.as_bytes()).unwrap();
        f.write_all(&line("a", 4, "open").as_bytes()[..10]).unwrap();
        let found = recover(&path, &mark).unwrap();
        assert_eq!(found, HashMap::from([("a".to_owned(), 3), ("idle".to_owned(), 9)]));
        assert_eq!(fs::metadata(&path).unwrap().len(), m.offset + whole.len() as u64, "the torn line is cut");
        assert!(fs::read_to_string(&path).unwrap().ends_with('\n'));

        // Rotated after the mark: the rest of FILE.1, then FILE.
        fs::rename(&path, numbered(&path, 1)).unwrap();
        fs::write(&path, line("a", 4, "open")).unwrap();
        assert_eq!(recover(&path, &mark).unwrap()["a"], 4);

        // Moved away by another tool: unknown.
        fs::rename(numbered(&path, 1), dir.path().join("elsewhere")).unwrap();
        assert_eq!(recover(&path, &mark), None);
    }

    fn seqs(path: &Path) -> Vec<u64> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap())
            .collect()
    }

    /// Rotation keeps `keep` files, each record whole in exactly one file,
    /// in order, and a reopen after an external move starts a new file.
    #[test]
    fn rotates_by_size_without_losing_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let reopen = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(16);
        let sink =
            spawn(Output::File(path.clone()), Some(Rotation { max_bytes: 2000, keep: 3 }), reopen.clone(), rx, None)
                .unwrap();
        let mut seq = 0;
        for _ in 0..6 {
            let batch: Vec<Record> = (0..5)
                .map(|_| {
                    record({
                        seq += 1;
                        seq
                    })
                })
                .collect();
            tx.blocking_send(Arc::new(batch)).unwrap();
        }
        drop(tx);
        sink.join().unwrap().unwrap();
        let mut all = Vec::new();
        for n in (1..=3).rev() {
            let part = seqs(&numbered(&path, n));
            assert!(!part.is_empty(), "file .{n} exists");
            all.extend(part);
        }
        all.extend(seqs(&path));
        assert!(!numbered(&path, 4).exists(), "only 3 rotated files are kept");
        // The oldest records went with the deleted file; the rest are
        // contiguous and end with the last one written.
        assert_eq!(all.last(), Some(&30));
        assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
        for n in 1..=3 {
            assert!(fs::metadata(numbered(&path, n)).unwrap().len() < 2000 + 300, "a file ends after one record");
        }

        // logrotate habit: move the file away, then SIGHUP (the flag).
        let moved = dir.path().join("moved.jsonl");
        fs::rename(&path, &moved).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let sink = spawn(Output::File(path.clone()), None, reopen.clone(), rx, None).unwrap();
        tx.blocking_send(Arc::new(vec![record(31)])).unwrap();
        // The sink flushes after each batch: wait until 31 is in the file.
        while fs::metadata(&path).unwrap().len() == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        fs::rename(&path, dir.path().join("moved2.jsonl")).unwrap();
        reopen.store(true, Ordering::Relaxed);
        tx.blocking_send(Arc::new(vec![record(32)])).unwrap();
        drop(tx);
        sink.join().unwrap().unwrap();
        assert_eq!(seqs(&dir.path().join("moved2.jsonl")), vec![31]);
        assert_eq!(seqs(&path), vec![32]);
    }
}
