//! Live subscriptions to the record stream, with backpressure that never
//! reaches the pipeline.
//!
//! Each subscriber has its own queue, bounded in records
//! ([`QUEUE_RECORDS`]). Publishing never waits on it: a batch that does not
//! fit is dropped for that subscriber only, and the records of it that match
//! the subscriber's filter are added to its `missed` count (and to
//! `agent_monitor_subscriber_dropped_total`). The subscriber's writer reports
//! the count in a `subscription_gap` line before the next records it sends,
//! so a consumer always knows where and how much it missed. The primary
//! sink and other subscribers are untouched.
//!
//! The hub also keeps the last [`HISTORY_RECORDS`] records so that
//! `agent-monitor events` without `--follow` has something to show, and
//! `--follow` starts with recent context. History and live registration
//! happen under one lock: no record is both replayed and delivered live, and
//! none falls between.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::mpsc;

use super::Batch;
use crate::record::Record;

/// Records a subscriber may have queued before new batches are dropped for
/// it.
pub const QUEUE_RECORDS: usize = 16_384;
/// Records kept for replay to new subscribers.
pub const HISTORY_RECORDS: usize = 4096;

/// Record kinds a subscription may filter on.
pub const KINDS: &[&str] = &[
    "exec",
    "open",
    "connect",
    "dns",
    "tamper",
    "limit",
    "trajectory_start",
    "trajectory_end",
    "gap",
    "step",
    "process",
];

/// Which records a subscriber wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub trajectory: Option<String>,
    /// Empty: every kind.
    pub kinds: Vec<String>,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        self.trajectory.as_deref().is_none_or(|t| *r.trajectory == *t)
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == r.body.kind()))
    }

    /// Checks the kinds against [`KINDS`].
    pub fn validate(&self) -> Result<(), String> {
        match self.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
            Some(k) => Err(format!("unknown record kind {k:?} (expected one of {})", KINDS.join(", "))),
            None => Ok(()),
        }
    }
}

/// What a subscriber's queue holds.
#[derive(Debug)]
pub enum Item {
    Batch(Batch),
    /// This many matching records were dropped for the subscriber here.
    Missed(u64),
}

struct Subscriber {
    filter: Filter,
    tx: mpsc::UnboundedSender<Item>,
    /// Records sent to `tx` and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
    missed: Arc<AtomicU64>,
}

/// The subscriber's end.
pub struct Subscription {
    /// Recent records matching the filter, oldest first.
    pub history: Vec<Batch>,
    pub filter: Filter,
    rx: mpsc::UnboundedReceiver<Item>,
    queued: Arc<AtomicUsize>,
    missed: Arc<AtomicU64>,
}

impl Subscription {
    /// The next batch, or the number of matching records dropped for this
    /// subscriber at this point of the stream. `None` when the daemon is
    /// shutting down.
    ///
    /// Drops happen only while the queue is full, so they come after
    /// everything queued: they are reported either by a marker queued
    /// before the next batch that fits, or, once the queue is empty, here.
    pub async fn next(&mut self) -> Option<Item> {
        if self.rx.is_empty() {
            let missed = self.missed.swap(0, Ordering::Relaxed);
            if missed > 0 {
                return Some(Item::Missed(missed));
            }
        }
        let item = self.rx.recv().await?;
        if let Item::Batch(b) = &item {
            self.queued.fetch_sub(b.len(), Ordering::Relaxed);
        }
        Some(item)
    }
}

pub struct Hub {
    inner: Mutex<Inner>,
    dropped: IntCounter,
    subscribers: IntGauge,
}

#[derive(Default)]
struct Inner {
    subscribers: Vec<Subscriber>,
    history: VecDeque<Batch>,
    history_len: usize,
}

impl Hub {
    pub fn new(dropped: IntCounter, subscribers: IntGauge) -> Self {
        Hub { inner: Mutex::new(Inner::default()), dropped, subscribers }
    }

    /// Registers a subscriber; with `live` false it gets the history only.
    pub fn subscribe(&self, filter: Filter, live: bool) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let missed = Arc::new(AtomicU64::new(0));
        let mut inner = self.inner.lock().expect("not poisoned");
        let history = inner.history.iter().filter(|b| b.iter().any(|r| filter.matches(r))).cloned().collect();
        if live {
            inner.subscribers.push(Subscriber {
                filter: filter.clone(),
                tx,
                queued: queued.clone(),
                missed: missed.clone(),
            });
            self.subscribers.set(inner.subscribers.len() as i64);
        }
        Subscription { history, filter, rx, queued, missed }
    }

    /// Offers `batch` to every subscriber without waiting; called by the
    /// pipeline for every published batch.
    pub fn publish(&self, batch: &Batch) {
        let mut inner = self.inner.lock().expect("not poisoned");
        let dropped = &self.dropped;
        inner.subscribers.retain(|s| {
            if s.tx.is_closed() {
                return false;
            }
            if !batch.iter().any(|r| s.filter.matches(r)) {
                return true;
            }
            if s.queued.load(Ordering::Relaxed) + batch.len() > QUEUE_RECORDS {
                let n = batch.iter().filter(|r| s.filter.matches(r)).count() as u64;
                s.missed.fetch_add(n, Ordering::Relaxed);
                dropped.inc_by(n);
                return true;
            }
            let missed = s.missed.swap(0, Ordering::Relaxed);
            if missed > 0 && s.tx.send(Item::Missed(missed)).is_err() {
                return false;
            }
            s.queued.fetch_add(batch.len(), Ordering::Relaxed);
            s.tx.send(Item::Batch(batch.clone())).is_ok()
        });
        self.subscribers.set(inner.subscribers.len() as i64);
        inner.history_len += batch.len();
        inner.history.push_back(batch.clone());
        while inner.history.front().is_some_and(|b| inner.history_len - b.len() >= HISTORY_RECORDS) {
            let old = inner.history.pop_front().expect("checked");
            inner.history_len -= old.len();
        }
    }

    /// Ends every subscription (their writers see the end of the stream).
    pub fn close(&self) {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.subscribers.clear();
        self.subscribers.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Body, Process, Timestamp, SCHEMA_VERSION};

    fn batch(trajectory: &str, n: usize) -> Batch {
        Arc::new(
            (0..n)
                .map(|i| Record {
                    v: SCHEMA_VERSION,
                    ts: Timestamp(0),
                    trajectory: trajectory.into(),
                    seq: i as u64 + 1,
                    body: Body::Gap {
                        lost: 1,
                        reason: crate::vocab::GapReason::RingbufFull,
                        down_ns: None,
                        unwritten: None,
                    },
                    process: Process::default(),
                    verdict: None,
                    step: None,
                })
                .collect(),
        )
    }

    fn hub() -> Hub {
        Hub::new(IntCounter::new("d", "d").unwrap(), IntGauge::new("s", "s").unwrap())
    }

    /// A subscriber that never reads loses what does not fit, learns how
    /// much, and never blocks the publisher.
    #[tokio::test]
    async fn slow_subscriber_is_told_what_it_missed() {
        let hub = hub();
        let mut slow = hub.subscribe(Filter { trajectory: Some("a".into()), kinds: vec![] }, true);
        let per = 1000;
        let rounds = QUEUE_RECORDS / per + 3;
        for _ in 0..rounds {
            hub.publish(&batch("a", per));
            hub.publish(&batch("b", per));
        }
        // Then the subscriber reads again, and more records come.
        let mut got = 0;
        let mut missed = 0;
        let mut seen_batch = false;
        let mut read = |item: Item, got: &mut u64, missed: &mut u64| match item {
            Item::Batch(b) => {
                seen_batch = true;
                *got += b.iter().filter(|r| *r.trajectory == *"a").count() as u64;
            }
            Item::Missed(n) => {
                assert!(seen_batch, "the queued batches came before the drops");
                *missed += n;
            }
        };
        while let Ok(Some(item)) = tokio::time::timeout(std::time::Duration::from_millis(50), slow.next()).await {
            read(item, &mut got, &mut missed);
        }
        hub.publish(&batch("a", per));
        while let Ok(Some(item)) = tokio::time::timeout(std::time::Duration::from_millis(50), slow.next()).await {
            read(item, &mut got, &mut missed);
        }
        assert_eq!(got + missed, ((rounds + 1) * per) as u64, "every matching record delivered or counted");
        assert!(missed > 0);
        // Records of the other trajectory that were dropped are not its loss.
        assert_eq!(hub.dropped.get(), missed);
    }

    #[test]
    fn history_is_bounded_and_filtered() {
        let hub = hub();
        for _ in 0..10 {
            hub.publish(&batch("a", 1000));
        }
        let s = hub.subscribe(Filter::default(), false);
        let n: usize = s.history.iter().map(|b| b.len()).sum();
        assert!((HISTORY_RECORDS..HISTORY_RECORDS + 1000).contains(&n), "{n}");
        assert!(hub.subscribe(Filter { trajectory: Some("zz".into()), kinds: vec![] }, false).history.is_empty());
        assert!(Filter { trajectory: None, kinds: vec!["exec".into()] }.validate().is_ok());
        assert!(Filter { trajectory: None, kinds: vec!["bogus".into()] }.validate().is_err());
    }
}
