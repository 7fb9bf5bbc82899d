//! JSON Lines sink: one [`Record`](crate::events::record::Record) per line,
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

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use tokio::sync::mpsc;

use super::Batch;

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

/// Starts the sink; it ends, flushed, when every sender of `rx` is gone.
/// Setting `reopen` makes it reopen its file before the next batch.
pub fn spawn(
    output: Output,
    rotation: Option<Rotation>,
    reopen: Arc<AtomicBool>,
    mut rx: mpsc::Receiver<Batch>,
) -> io::Result<JoinHandle<io::Result<()>>> {
    let mut out = match &output {
        Output::Stdout => Sink::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())),
        Output::File(path) => Sink::File(FileSink::open(path.clone(), rotation)?),
    };
    std::thread::Builder::new().name("sink-jsonl".into()).spawn(move || {
        let mut line = Vec::with_capacity(4096);
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
        }
        out.flush()
    })
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
}

impl FileSink {
    fn open(path: PathBuf, rotation: Option<Rotation>) -> io::Result<Self> {
        let (w, size) = open_append(&path)?;
        Ok(FileSink { path, rotation, w, size })
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
        let (w, size) = open_append(&self.path)?;
        self.w = w;
        self.size = size;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<(BufWriter<File>, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open events file {}: {e}", path.display())))?;
    let size = file.metadata()?.len();
    Ok((BufWriter::with_capacity(1 << 16, file), size))
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
    use crate::events::record::{Body, Process, Record, Timestamp, SCHEMA_VERSION};

    fn record(seq: u64) -> Record {
        Record {
            v: SCHEMA_VERSION,
            ts: Timestamp(0),
            trajectory: "t".into(),
            seq,
            body: Body::Gap { lost: 1, reason: "ringbuf_full", down_ns: None },
            process: Process::default(),
            verdict: None,
            step: None,
        }
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
            spawn(Output::File(path.clone()), Some(Rotation { max_bytes: 2000, keep: 3 }), reopen.clone(), rx).unwrap();
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
        let sink = spawn(Output::File(path.clone()), None, reopen.clone(), rx).unwrap();
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
