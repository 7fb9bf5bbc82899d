//! An in-memory kernel for the pipeline's unit tests: the maps as plain
//! collections, shared with the test through [`FakeKernel`] so it can queue
//! records and read the bindings the pipeline wrote.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
};

use aya::maps::MapError;
use monitor_common::maps::{LossReason, RuntimeConfig, TrajectoryValue, MAX_TRAJECTORIES};
use tokio::sync::Notify;

use super::{
    decode::{DecodeError, Decoded},
    kernel::{Bindings, Kernel, LossCounters, RecordSource},
};

/// The fake kernel's state.
#[derive(Debug, Default)]
pub struct State {
    pub bindings: HashMap<u64, TrajectoryValue>,
    pub config: RuntimeConfig,
    pub trajectory_losses: HashMap<u64, u64>,
    pub losses: HashMap<u32, u64>,
    /// Submitted records not yet consumed.
    pub ring: VecDeque<Decoded>,
    pub consumed: u64,
    pub produced: u64,
}

/// A handle on the fake kernel, cloned into each trait object.
#[derive(Clone, Default)]
pub struct FakeKernel {
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
}

impl FakeKernel {
    pub fn kernel(&self) -> Kernel {
        Kernel { bindings: Box::new(self.clone()), losses: Box::new(self.clone()), ring: Box::new(self.clone()) }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("no test panics while holding it")
    }

    /// Submits a record, as a BPF program does, and wakes the consumer.
    pub fn submit(&self, d: Decoded) {
        let mut s = self.state();
        s.ring.push_back(d);
        s.produced += 1;
        drop(s);
        self.ready.notify_one();
    }
}

fn full() -> MapError {
    MapError::SyscallError(aya::sys::SyscallError {
        call: "bpf_map_update_elem",
        io_error: io::Error::from_raw_os_error(libc::E2BIG),
    })
}

impl Bindings for FakeKernel {
    fn set(&mut self, cgroup_id: u64, value: TrajectoryValue) -> Result<(), MapError> {
        let mut s = self.state();
        if s.bindings.len() >= MAX_TRAJECTORIES as usize && !s.bindings.contains_key(&cgroup_id) {
            return Err(full());
        }
        s.bindings.insert(cgroup_id, value);
        Ok(())
    }

    fn get(&self, cgroup_id: u64) -> Option<TrajectoryValue> {
        self.state().bindings.get(&cgroup_id).copied()
    }

    fn remove(&mut self, cgroup_id: u64) {
        self.state().bindings.remove(&cgroup_id);
    }

    fn cgroups(&self) -> Vec<u64> {
        self.state().bindings.keys().copied().collect()
    }

    fn configure(&mut self, config: RuntimeConfig) -> Result<(), MapError> {
        self.state().config = config;
        Ok(())
    }
}

impl LossCounters for FakeKernel {
    fn start(&mut self, cgroup_id: u64) -> Result<(), MapError> {
        self.state().trajectory_losses.insert(cgroup_id, 0);
        Ok(())
    }

    fn trajectory(&self, cgroup_id: u64) -> Option<u64> {
        self.state().trajectory_losses.get(&cgroup_id).copied()
    }

    fn stop(&mut self, cgroup_id: u64) {
        self.state().trajectory_losses.remove(&cgroup_id);
    }

    fn total(&self, reason: LossReason) -> u64 {
        self.state().losses.get(&(reason as u32)).copied().unwrap_or(0)
    }
}

impl RecordSource for FakeKernel {
    fn next(&mut self) -> Option<Result<Decoded, DecodeError>> {
        let mut s = self.state();
        let d = s.ring.pop_front()?;
        s.consumed += 1;
        Some(Ok(d))
    }

    fn producer(&self) -> u64 {
        self.state().produced
    }

    fn consumer(&self) -> u64 {
        self.state().consumed
    }

    fn readable(&mut self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>> {
        let ready = self.ready.clone();
        Box::pin(async move {
            ready.notified().await;
            Ok(())
        })
    }
}
