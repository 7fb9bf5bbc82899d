//! Closes trajectories whose cgroup has emptied.
//!
//! The kernel signals a change of `cgroup.events` (its `populated` line) as a
//! modification, so one inotify instance watches every trajectory's file.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use futures_util::StreamExt;
use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::watch;

use crate::{cgroup, events::handle::PipelineHandle, vocab::EndReason};

#[derive(Clone)]
pub struct Watcher {
    watches: Arc<Mutex<Watches>>,
    targets: Arc<Mutex<HashMap<WatchDescriptor, (u64, PathBuf)>>>,
}

pub struct Events {
    stream: inotify::EventStream<[u8; 4096]>,
    targets: Arc<Mutex<HashMap<WatchDescriptor, (u64, PathBuf)>>>,
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
        self.targets.lock().expect("not poisoned").insert(wd, (cgroup_id, cgroup_path.to_owned()));
        Ok(())
    }
}

impl Events {
    /// Sends `Close` for every watched cgroup that becomes empty. An
    /// inotify failure is the service's error: without it no `run`
    /// trajectory would ever end, so the daemon ends instead.
    pub async fn run(mut self, pipeline: PipelineHandle, mut shutdown: watch::Receiver<bool>) -> io::Result<()> {
        loop {
            let event = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
                e = self.stream.next() => e,
            };
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Err(io::Error::new(e.kind(), format!("inotify on trajectory cgroups: {e}"))),
                None => return Err(io::Error::other("inotify on trajectory cgroups ended")),
            };
            let target = self.targets.lock().expect("not poisoned").get(&event.wd).cloned();
            let Some((cgroup_id, path)) = target else { continue };
            match cgroup::is_populated(&path) {
                Ok(true) => continue,
                Ok(false) => {}
                // Gone: someone removed it; close it all the same.
                Err(e) => tracing::debug!("reading {}: {e}", path.display()),
            }
            self.targets.lock().expect("not poisoned").remove(&event.wd);
            if pipeline.close(cgroup_id, EndReason::Exited).await.is_err() {
                // The pipeline has stopped: the daemon is ending.
                return Ok(());
            }
        }
    }
}
