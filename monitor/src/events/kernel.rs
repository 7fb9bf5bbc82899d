//! What the pipeline needs of the kernel, as three small traits: the
//! trajectory bindings (and the runtime config beside them), the loss
//! counters, and the ring buffer as a source of records. [`Kernel::maps`]
//! implements them with the loaded aya maps; the pipeline's unit tests use
//! in-memory fakes (`events::fake`), as the policy tests judge compiled
//! entries without a kernel (`policy::judge`).
//!
//! The traits are object-safe and the pipeline holds them boxed: every
//! call is a map syscall or a record decode, next to which a virtual call
//! costs nothing.

use std::{future::Future, io, os::fd::AsFd, pin::Pin};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
    sys::SyscallError,
};
use monitor_common::maps::{LossReason, RuntimeConfig, TrajectoryValue};
use tokio::io::{unix::AsyncFd, Interest};

use super::{
    decode::{decode, DecodeError, Decoded},
    ringpos::RingPositions,
};
use crate::loader::PipelineMaps;

/// The trajectory map (cgroup id → policy instance and step) and the
/// runtime config the kernel reads on every hook.
pub trait Bindings: Send {
    /// Binds or rebinds a trajectory cgroup: one map update, so the kernel
    /// sees the old value or the new one, never neither.
    fn set(&mut self, cgroup_id: u64, value: TrajectoryValue) -> Result<(), MapError>;
    fn get(&self, cgroup_id: u64) -> Option<TrajectoryValue>;
    fn remove(&mut self, cgroup_id: u64);
    /// Every bound cgroup id (after a restart, some may be a previous
    /// daemon's).
    fn cgroups(&self) -> Vec<u64>;
    fn configure(&mut self, config: RuntimeConfig) -> Result<(), MapError>;
}

/// What the kernel could not record: per trajectory, and per reason.
pub trait LossCounters: Send {
    /// Starts a trajectory's counter at zero (before it is bound, so the
    /// kernel can count from its first record).
    fn start(&mut self, cgroup_id: u64) -> Result<(), MapError>;
    /// The trajectory's count, or `None` if it has no counter.
    fn trajectory(&self, cgroup_id: u64) -> Option<u64>;
    fn stop(&mut self, cgroup_id: u64);
    /// Records lost for `reason` since the maps were created.
    fn total(&self, reason: LossReason) -> u64;
}

/// The ring buffer: records the kernel submitted, and its positions.
pub trait RecordSource: Send {
    /// Takes the next submitted record (advancing the consumer).
    fn next(&mut self) -> Option<Result<Decoded, DecodeError>>;
    /// Where the next reservation starts: everything below was reserved.
    fn producer(&self) -> u64;
    /// Where the consumer reads next.
    fn consumer(&self) -> u64;
    /// Resolves once the kernel has woken the consumer.
    fn readable(&mut self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>>;
}

/// The kernel as the pipeline sees it.
pub struct Kernel {
    pub bindings: Box<dyn Bindings>,
    pub losses: Box<dyn LossCounters>,
    pub ring: Box<dyn RecordSource>,
}

impl Kernel {
    /// The loaded maps. Registers the ring buffer with the runtime, so this
    /// runs inside it.
    pub fn maps(maps: PipelineMaps) -> io::Result<Kernel> {
        let positions = RingPositions::map(maps.events.as_fd())?;
        // SAFETY: the ring buffer's fd is owned by the value moved into the
        // AsyncFd and lives exactly as long as the registration.
        let ring = unsafe { AsyncFd::register_with_interest(maps.events, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Kernel {
            bindings: Box::new(MapBindings { trajectories: maps.trajectories, config: maps.config }),
            losses: Box::new(MapLosses { trajectory: maps.trajectory_losses, reasons: maps.losses }),
            ring: Box::new(Ring { ring, positions }),
        })
    }
}

struct MapBindings {
    trajectories: HashMap<MapData, u64, TrajectoryValue>,
    config: Array<MapData, RuntimeConfig>,
}

impl Bindings for MapBindings {
    fn set(&mut self, cgroup_id: u64, value: TrajectoryValue) -> Result<(), MapError> {
        self.trajectories.insert(cgroup_id, value, 0)
    }

    fn get(&self, cgroup_id: u64) -> Option<TrajectoryValue> {
        self.trajectories.get(&cgroup_id, 0).ok()
    }

    fn remove(&mut self, cgroup_id: u64) {
        let _ = self.trajectories.remove(&cgroup_id);
    }

    fn cgroups(&self) -> Vec<u64> {
        self.trajectories.keys().flatten().collect()
    }

    fn configure(&mut self, config: RuntimeConfig) -> Result<(), MapError> {
        self.config.set(0, config, 0)
    }
}

struct MapLosses {
    trajectory: PerCpuHashMap<MapData, u64, u64>,
    reasons: PerCpuArray<MapData, u64>,
}

impl LossCounters for MapLosses {
    fn start(&mut self, cgroup_id: u64) -> Result<(), MapError> {
        let cpus = aya::util::nr_cpus().map_err(|(call, io_error)| SyscallError { call, io_error })?;
        let zero = PerCpuValues::try_from(vec![0u64; cpus])
            .map_err(|io_error| SyscallError { call: "per-cpu values", io_error })?;
        self.trajectory.insert(cgroup_id, zero, 0)
    }

    fn trajectory(&self, cgroup_id: u64) -> Option<u64> {
        self.trajectory.get(&cgroup_id, 0).ok().map(|v| v.iter().sum())
    }

    fn stop(&mut self, cgroup_id: u64) {
        let _ = self.trajectory.remove(&cgroup_id);
    }

    fn total(&self, reason: LossReason) -> u64 {
        self.reasons.get(&(reason as u32), 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

struct Ring {
    ring: AsyncFd<RingBuf<MapData>>,
    positions: RingPositions,
}

impl RecordSource for Ring {
    fn next(&mut self) -> Option<Result<Decoded, DecodeError>> {
        // The item is dropped (and the consumer position advanced) before
        // the record is returned.
        self.ring.get_mut().next().map(|item| decode(&item))
    }

    fn producer(&self) -> u64 {
        self.positions.producer()
    }

    fn consumer(&self) -> u64 {
        self.positions.consumer()
    }

    fn readable(&mut self) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + '_>> {
        Box::pin(async move {
            self.ring.readable_mut().await?.clear_ready();
            Ok(())
        })
    }
}
