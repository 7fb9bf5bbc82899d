//! Where records go. The [`Bus`] fans each batch out to the sinks; the JSON
//! Lines sink is one subscriber of it.

pub mod jsonl;

use std::sync::Arc;

use tokio::sync::mpsc;

use super::events::record::Record;

/// A batch of records, shared by every sink.
pub type Batch = Arc<Vec<Record>>;

/// Batches queued for the primary sink before the pipeline waits for it.
const PRIMARY_QUEUE: usize = 256;

/// Fan-out of record batches.
///
/// The primary sink is lossless: when it falls behind, the pipeline waits,
/// the ring buffer fills, and the kernel counts what it cannot store
/// (reported as `gap` records and in metrics). Nothing is dropped unseen.
#[derive(Clone)]
pub struct Bus {
    primary: mpsc::Sender<Batch>,
}

impl Bus {
    pub fn new() -> (Self, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(PRIMARY_QUEUE);
        (Bus { primary: tx }, rx)
    }

    pub async fn publish(&self, batch: Vec<Record>) {
        if self.primary.send(Arc::new(batch)).await.is_err() {
            tracing::error!("the event sink has stopped; records are being discarded");
        }
    }
}
