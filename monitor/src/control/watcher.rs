//! Closes trajectories whose cgroup has emptied, and reports forks their
//! pids limit refused.
//!
//! The kernel signals a change of `cgroup.events` (its `populated` line) and
//! of `pids.events` (its `max` count) as a modification, so one inotify
//! instance watches every trajectory's files. The kernel notifies at most
//! every 10 ms per file; `limit` records are held to one a second per
//! trajectory, each with the forks refused since the previous one. cgroup
//! v1's `pids.events` is never notified (measured on 6.18), so every
//! second the files are also read.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::watch;

use crate::{cgroup, events::handle::PipelineHandle, limits, record::Body, vocab::EndReason};

/// Fewest seconds between two pids `limit` records of a trajectory.
const LIMIT_RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// What a watched file says.
#[derive(Clone, Debug)]
enum Target {
    /// `cgroup.events` of a trajectory cgroup: its emptying ends it.
    Emptied { cgroup_id: u64, path: PathBuf },
    /// `pids.events` of its pids cgroup: forks refused at the limit, the
    /// count already reported, and when.
    PidsMax { cgroup_id: u64, file: PathBuf, reported: u64, at: Option<Instant> },
}

type Targets = Arc<Mutex<HashMap<WatchDescriptor, Target>>>;

#[derive(Clone)]
pub struct Watcher {
    watches: Arc<Mutex<Watches>>,
    targets: Targets,
}

pub struct Events {
    stream: inotify::EventStream<[u8; 4096]>,
    targets: Targets,
}

pub fn new() -> io::Result<(Watcher, Events)> {
    let inotify = Inotify::init()?;
    let watches = inotify.watches();
    let targets = Arc::new(Mutex::new(HashMap::new()));
    let stream = inotify.into_event_stream([0u8; 4096])?;
    Ok((Watcher { watches: Arc::new(Mutex::new(watches)), targets: targets.clone() }, Events { stream, targets }))
}

impl Watcher {
    pub fn watch(&self, cgroup_path: &Path, cgroup_id: u64) -> io::Result<()> {
        let wd =
            self.watches.lock().expect("not poisoned").add(cgroup_path.join("cgroup.events"), WatchMask::MODIFY)?;
        let target = Target::Emptied { cgroup_id, path: cgroup_path.to_owned() };
        self.targets.lock().expect("not poisoned").insert(wd, target);
        Ok(())
    }

    /// Watches the `pids.events` file of a trajectory's pids limit.
    pub fn watch_limit(&self, file: &Path, cgroup_id: u64) -> io::Result<()> {
        let wd = self.watches.lock().expect("not poisoned").add(file, WatchMask::MODIFY)?;
        let reported = limits::keyed(&std::fs::read_to_string(file).unwrap_or_default(), "max").unwrap_or(0);
        let target = Target::PidsMax { cgroup_id, file: file.to_owned(), reported, at: None };
        self.targets.lock().expect("not poisoned").insert(wd, target);
        Ok(())
    }
}

impl Events {
    /// Sends `Close` for every watched cgroup that becomes empty. An
    /// inotify failure is the service's error: without it no `run`
    /// trajectory would ever end, so the daemon ends instead.
    pub async fn run(mut self, pipeline: PipelineHandle, mut shutdown: watch::Receiver<bool>) -> io::Result<()> {
        let mut tick = tokio::time::interval(LIMIT_RECORD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
                _ = tick.tick() => None,
                e = self.stream.next() => Some(e),
            };
            let Some(event) = event else {
                self.poll_pids(&pipeline).await;
                continue;
            };
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Err(io::Error::new(e.kind(), format!("inotify on trajectory cgroups: {e}"))),
                None => return Err(io::Error::other("inotify on trajectory cgroups ended")),
            };
            let target = self.targets.lock().expect("not poisoned").get(&event.wd).cloned();
            let (cgroup_id, path) = match target {
                Some(Target::Emptied { cgroup_id, path }) => (cgroup_id, path),
                Some(Target::PidsMax { .. }) => {
                    self.pids_max(&event.wd, &pipeline, false).await;
                    continue;
                }
                None => continue,
            };
            match cgroup::is_populated(&path) {
                Ok(true) => continue,
                Ok(false) => {}
                // Gone: someone removed it; close it all the same.
                Err(e) => tracing::debug!("reading {}: {e}", path.display()),
            }
            // The trajectory's limit files go with it, their last count
            // reported first.
            let limits: Vec<WatchDescriptor> = {
                let targets = self.targets.lock().expect("not poisoned");
                let of_it = |t: &Target| matches!(t, Target::PidsMax { cgroup_id: c, .. } if *c == cgroup_id);
                targets.iter().filter(|(_, t)| of_it(t)).map(|(wd, _)| wd.clone()).collect()
            };
            for wd in &limits {
                self.pids_max(wd, &pipeline, true).await;
            }
            self.targets.lock().expect("not poisoned").retain(|wd, t| match t {
                Target::Emptied { .. } => *wd != event.wd,
                Target::PidsMax { cgroup_id: c, .. } => *c != cgroup_id,
            });
            if pipeline.close(cgroup_id, EndReason::Exited).await.is_err() {
                // The pipeline has stopped: the daemon is ending.
                return Ok(());
            }
        }
    }

    /// Every second: the `pids.events` files whose change inotify does not
    /// report (cgroup v1's), and counts held back by the one-a-second rule.
    async fn poll_pids(&self, pipeline: &PipelineHandle) {
        let wds: Vec<WatchDescriptor> = {
            let targets = self.targets.lock().expect("not poisoned");
            targets.iter().filter(|(_, t)| matches!(t, Target::PidsMax { .. })).map(|(wd, _)| wd.clone()).collect()
        };
        for wd in wds {
            self.pids_max(&wd, pipeline, false).await;
        }
    }

    /// A `pids.events` change: a `limit` record with the forks refused
    /// since the last one, unless one went out less than a second ago and
    /// this is not the trajectory's end (`last`): the count then waits for
    /// the next second.
    async fn pids_max(&self, wd: &WatchDescriptor, pipeline: &PipelineHandle, last: bool) {
        let (cgroup_id, count) = {
            let mut targets = self.targets.lock().expect("not poisoned");
            let Some(Target::PidsMax { cgroup_id, file, reported, at }) = targets.get_mut(wd) else { return };
            let now = Instant::now();
            if !last && at.is_some_and(|t| now.duration_since(t) < LIMIT_RECORD_INTERVAL) {
                return;
            }
            let total = limits::keyed(&std::fs::read_to_string(&*file).unwrap_or_default(), "max").unwrap_or(0);
            if total <= *reported {
                return;
            }
            let count = total - *reported;
            (*reported, *at) = (total, Some(now));
            (*cgroup_id, count)
        };
        let body = Body::Limit { limit: "pids", event: "max", victim_pid: None, count: Some(count) };
        pipeline.limit(cgroup_id, body).await;
    }
}
