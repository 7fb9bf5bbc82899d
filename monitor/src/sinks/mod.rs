//! Where records go. The [`Bus`] hands each batch to the primary sink (the
//! JSON Lines file or stdout) and to the live subscribers of the control
//! socket (`agent-monitor events`).

pub mod jsonl;
pub mod subscribe;

use std::sync::Arc;

use tokio::sync::mpsc;

pub use self::subscribe::{Filter, Hub};
use crate::record::Record;

/// A batch of records, shared by every sink.
pub type Batch = Arc<Vec<Record>>;

/// Batches queued for the primary sink before the pipeline waits for it.
const PRIMARY_QUEUE: usize = 256;

/// Fan-out of record batches.
///
/// The primary sink is lossless: when it falls behind, the pipeline waits,
/// the ring buffer fills, and the kernel counts what it cannot store
/// (reported as `gap` records and in metrics). Nothing is dropped unseen.
/// Subscribers are the opposite: they never make the pipeline wait; what a
/// slow one cannot take is dropped for it alone, counted, and reported to
/// it (see [`subscribe`]).
#[derive(Clone)]
pub struct Bus {
    primary: mpsc::Sender<Batch>,
    hub: Arc<Hub>,
}

impl Bus {
    pub fn new(hub: Arc<Hub>) -> (Self, mpsc::Receiver<Batch>) {
        let (tx, rx) = mpsc::channel(PRIMARY_QUEUE);
        (Bus { primary: tx, hub }, rx)
    }

    pub async fn publish(&self, batch: Vec<Record>) {
        let batch = Arc::new(batch);
        self.hub.publish(&batch);
        if self.primary.send(batch).await.is_err() {
            tracing::error!("the event sink has stopped; records are being discarded");
        }
    }
}
