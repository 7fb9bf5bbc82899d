//! JSON Lines sink: one [`Record`](crate::events::record::Record) per line,
//! to stdout or appended to a file. Runs on its own thread so a slow disk
//! never blocks the async runtime; flushes after every batch.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::PathBuf,
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

/// Starts the sink; it ends, flushed, when every sender of `rx` is gone.
pub fn spawn(output: Output, mut rx: mpsc::Receiver<Batch>) -> io::Result<JoinHandle<io::Result<()>>> {
    let writer: Box<dyn Write + Send> =
        match &output {
            Output::Stdout => Box::new(io::stdout()),
            Output::File(path) => {
                Box::new(OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot open events file {}: {e}", path.display()))
                })?)
            }
        };
    let mut w = BufWriter::with_capacity(1 << 16, writer);
    std::thread::Builder::new().name("sink-jsonl".into()).spawn(move || {
        while let Some(batch) = rx.blocking_recv() {
            for record in batch.iter() {
                serde_json::to_writer(&mut w, record)?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
        }
        w.flush()
    })
}
